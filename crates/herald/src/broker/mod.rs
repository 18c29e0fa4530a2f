//! Brokers: where topics live. `Broker` is either Redis (the distributed engine) or the
//! embedded in-process broker; both give the same semantics, so everything above this
//! module (publishing, subscriptions, cursors) is written once against `Broker`.
//!
//! A broker offers five primitives (and, in `members`, the member records of groups):
//! - `publish`: the atomic step of `docs/PROTOCOL.md` §6.2 (dedup, offsets, epoch, append,
//!   trim, notify);
//! - `read`: a topic's epoch, retained range and a slice of history, read atomically;
//! - `live`: a feed of notifications for some topics (each carries the appended entries);
//! - cursors: `get_cursor` and `commit`;
//! - settings and `inspect`.

pub(crate) mod embedded;
pub(crate) mod history;
pub(crate) mod map;
pub(crate) mod members;
pub(crate) mod redis;
pub(crate) mod work;

use crate::cursor::{CursorCommit, CursorInfo};
use crate::envelope::Notification;
use crate::error::Result;
use crate::inspect::TopicInfo;
use crate::message::{Entry, Message};
use crate::position::Epoch;
use crate::topic::{SettingsChange, TopicSettings};

pub use embedded::EmbeddedBroker;

/// The publish procedure (Lua), as installed in Redis; see `docs/PROTOCOL.md`.
pub const PUBLISH_SCRIPT: &str = redis::PUBLISH_SCRIPT;
/// The atomic history read (Lua); see `docs/PROTOCOL.md`.
pub const READ_SCRIPT: &str = redis::READ_SCRIPT;
/// The membership procedure (Lua); see `docs/PROTOCOL.md`, "Membership".
pub const MEMBERS_SCRIPT: &str = redis::members::MEMBERS_SCRIPT;
/// The loss report (Lua, with the epoch procedures of the publish procedure inlined); see
/// `docs/PROTOCOL.md`, "Epochs".
pub static LOST_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(redis::lost_script);
/// The work group procedure (Lua); see `docs/PROTOCOL.md`, "Work groups (v1)".
pub const WORK_SCRIPT: &str = redis::work::WORK_SCRIPT;
/// The replicated map change procedure (Lua, with the publish procedure inlined); see
/// `docs/PROTOCOL.md`, "Replicated maps (v1)".
pub static MAP_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(redis::map::map_script);

/// One slot of history: an entry, or something at that offset that could not be decoded.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Entry(Entry),
    Corrupt { offset: u64, reason: String },
}

/// A topic's state and a slice of its history, read in one atomic step.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadResult {
    /// Current epoch; `None` when the topic has no log.
    pub(crate) epoch: Option<Epoch>,
    /// Last offset assigned in this epoch.
    pub(crate) last: u64,
    /// First retained offset, 0 when history is empty.
    pub(crate) first: u64,
    /// Entries from the requested offset on, in offset order.
    pub(crate) slots: Vec<Slot>,
    /// True when the read reached the end of history (fewer entries than asked for).
    pub(crate) complete: bool,
    /// Where the topic's epochs begin (see `history`), read with the rest.
    pub(crate) history: history::History,
}

impl Slot {
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Slot::Entry(e) => e.offset,
            Slot::Corrupt { offset, .. } => *offset,
        }
    }
}

/// What a live feed yields.
#[derive(Debug)]
pub(crate) enum LiveEvent {
    /// Entries just appended to a topic.
    Notification(Notification),
    /// Some notifications may have been dropped: every topic must be checked against history.
    Lost,
    /// Notifications of this topic may have been dropped (its shard stopped serving it, then
    /// the feed subscribed again): this topic must be checked against history.
    Stale(String),
}

/// The outcome of one message of a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The offset the message has in the topic's log.
    pub(crate) offset: u64,
    /// True when its idempotency key was already published within the dedup window: nothing
    /// was appended, and `offset` is that of the earlier publish.
    pub(crate) duplicate: bool,
    /// For a duplicate whose offset belongs to an older epoch than the publish's (the log
    /// changed writer since it was published): that epoch.
    pub(crate) epoch: Option<Epoch>,
}

impl Placed {
    /// A message appended at `offset` (not a duplicate).
    pub(crate) const fn new(offset: u64) -> Self {
        Placed {
            offset,
            duplicate: false,
            epoch: None,
        }
    }
}

/// A broker: Redis or embedded.
#[derive(Clone)]
pub(crate) enum Broker {
    Redis(redis::RedisBroker),
    Embedded(EmbeddedBroker),
}

/// A feed of live notifications for a fixed set of topics. `next` returns `None` when the
/// feed's connection is gone and a new feed must be opened.
pub(crate) enum LiveFeed {
    Redis(redis::RedisFeed),
    Embedded(embedded::EmbeddedFeed),
}

impl LiveFeed {
    pub(crate) async fn next(&mut self) -> Option<LiveEvent> {
        match self {
            LiveFeed::Redis(f) => f.next().await,
            LiveFeed::Embedded(f) => f.next().await,
        }
    }
}

impl Broker {
    /// Publishes `messages` (with their idempotency keys resolved) to `topic` atomically.
    /// `floor` is the highest position the publishing handle was acknowledged on `topic`: if
    /// the log went back below it under its epoch, the loss is recorded and the messages are
    /// written under a new epoch, never at a reused (epoch, offset).
    pub(crate) async fn publish(
        &self,
        topic: &str,
        node: &str,
        messages: &[(String, &Message)],
        floor: Option<crate::position::Position>,
    ) -> Result<(Epoch, Vec<Placed>)> {
        match self {
            Broker::Redis(b) => b.publish(topic, node, messages, floor).await,
            Broker::Embedded(b) => b.publish(topic, node, messages, floor),
        }
    }

    /// Reads the topic's state and up to `limit` entries from offset `from`.
    pub(crate) async fn read(&self, topic: &str, from: u64, limit: usize) -> Result<ReadResult> {
        match self {
            Broker::Redis(b) => b.read(topic, from, limit).await,
            Broker::Embedded(b) => Ok(b.read(topic, from, limit)),
        }
    }

    /// The head of each of `topics` (`read(topic, 1, 0)` each), in order, read in as few
    /// round trips as the broker allows.
    pub(crate) async fn read_heads(&self, topics: &[String]) -> Vec<Result<ReadResult>> {
        match self {
            Broker::Redis(b) => b.read_heads(topics).await,
            Broker::Embedded(b) => topics.iter().map(|t| Ok(b.read(t, 1, 0))).collect(),
        }
    }

    /// True when [`read_heads`](Self::read_heads) reads many topics in a few round trips
    /// and they all live on one server (so that one topic's trouble is everyone's anyway).
    pub(crate) fn reads_heads_together(&self) -> bool {
        match self {
            Broker::Redis(b) => b.reads_heads_together(),
            Broker::Embedded(_) => false,
        }
    }

    /// Opens a live feed for `topics`; once this returns, every later publish is notified.
    pub(crate) async fn live(&self, topics: &[String]) -> Result<LiveFeed> {
        match self {
            Broker::Redis(b) => Ok(LiveFeed::Redis(b.live(topics).await?)),
            Broker::Embedded(b) => Ok(LiveFeed::Embedded(b.live(topics))),
        }
    }

    /// Reports that `seen` existed in the topic's log (a subscriber delivered it, a cursor
    /// committed it) but the log went back before it: records the loss once, opening a new
    /// epoch if the log still runs under `seen.epoch` (`lua/lost.lua`). True when it changed
    /// something.
    pub(crate) async fn report_lost(
        &self,
        topic: &str,
        seen: crate::position::Position,
    ) -> Result<bool> {
        match self {
            Broker::Redis(b) => b.report_lost(topic, seen).await,
            Broker::Embedded(b) => Ok(b.report_lost(topic, seen)),
        }
    }

    pub(crate) async fn get_cursor(&self, topic: &str, name: &str) -> Result<Option<CursorCommit>> {
        match self {
            Broker::Redis(b) => b.get_cursor(topic, name).await,
            Broker::Embedded(b) => Ok(b.get_cursor(topic, name)),
        }
    }

    pub(crate) async fn commit(&self, topic: &str, name: &str, pos: CursorCommit) -> Result<()> {
        match self {
            Broker::Redis(b) => b.commit(topic, name, pos).await,
            Broker::Embedded(b) => {
                b.commit(topic, name, pos);
                Ok(())
            }
        }
    }

    pub(crate) async fn configure(
        &self,
        topic: &str,
        change: &SettingsChange,
    ) -> Result<TopicSettings> {
        match self {
            Broker::Redis(b) => b.configure(topic, change).await,
            Broker::Embedded(b) => b.configure(topic, change),
        }
    }

    /// Whether the broker can serve: Redis answers and holds Herald's scripts.
    pub(crate) async fn ready(&self) -> Result<()> {
        match self {
            Broker::Redis(b) => b.ready().await,
            Broker::Embedded(_) => Ok(()),
        }
    }

    pub(crate) async fn inspect(&self, topic: &str) -> Result<TopicInfo> {
        match self {
            Broker::Redis(b) => b.inspect(topic).await,
            Broker::Embedded(b) => Ok(b.inspect(topic)),
        }
    }
}

/// Builds `inspect`'s cursor list: lag is measured in the current epoch.
pub(crate) fn cursor_infos(
    epoch: Option<Epoch>,
    last: u64,
    cursors: impl IntoIterator<Item = (String, CursorCommit)>,
) -> Vec<CursorInfo> {
    let mut out: Vec<CursorInfo> = cursors
        .into_iter()
        .map(|(name, commit)| {
            let lag = if Some(commit.position.epoch) == epoch {
                last.saturating_sub(commit.position.offset)
            } else {
                last
            };
            CursorInfo { name, commit, lag }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
