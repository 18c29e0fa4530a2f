//! `inspect`: a topic's state as one serialisable value.

use serde::Serialize;

use crate::cursor::CursorInfo;
use crate::position::Epoch;
use crate::topic::TopicSettings;

/// A topic's state: epoch, retained range, settings and durable cursors with their lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// The current epoch; `None` when the topic has no log (never published, or lost).
    pub epoch: Option<Epoch>,
    /// The oldest offset still in history (0 when history is empty).
    pub first_offset: u64,
    /// The newest offset ever assigned in this epoch (0 when none).
    pub last_offset: u64,
    /// How many messages history holds.
    pub length: u64,
    /// The settings in force (the defaults when the topic was never configured).
    pub settings: TopicSettings,
    /// True when the settings were stored with the topic (configured or created).
    pub configured: bool,
    /// The durable cursors, with their lag.
    pub cursors: Vec<CursorInfo>,
}
