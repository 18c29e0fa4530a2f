//! Durable cursors: a named position (epoch, offset) committed to the broker, so that a
//! restarted node resumes where it left off (docs/DESIGN.md, Durable cursors).

use serde::Serialize;

use crate::message::Epoch;

/// A committed cursor position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CursorPosition {
    /// The epoch the offset belongs to.
    pub epoch: Epoch,
    /// The last offset the cursor's owner has processed.
    pub offset: u64,
    /// When it was committed, in milliseconds since the Unix epoch (the committer's clock).
    pub committed_at_ms: u64,
}

impl CursorPosition {
    pub(crate) fn new(epoch: Epoch, offset: u64) -> Self {
        CursorPosition {
            epoch,
            offset,
            committed_at_ms: crate::clock::now_ms(),
        }
    }

    /// Encodes the position as stored: `<epoch>:<offset>:<committed_at_ms>`.
    pub(crate) fn encode(&self) -> String {
        format!("{}:{}:{}", self.epoch, self.offset, self.committed_at_ms)
    }

    /// Decodes a stored position; `None` when it is not in Herald's format.
    pub(crate) fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let epoch = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let committed_at_ms = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(CursorPosition {
            epoch,
            offset,
            committed_at_ms,
        })
    }
}

/// A durable cursor of a topic, as shown by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CursorInfo {
    /// The cursor's name.
    pub name: String,
    /// Its committed position.
    #[serde(flatten)]
    pub position: CursorPosition,
    /// Messages published after the committed offset (in the topic's current epoch); when the
    /// cursor belongs to an older epoch, every message of the current epoch counts.
    pub lag: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = CursorPosition {
            epoch: 17,
            offset: 42,
            committed_at_ms: 99,
        };
        assert_eq!(CursorPosition::decode(&p.encode()), Some(p));
        assert_eq!(CursorPosition::decode("x:1:2"), None);
        assert_eq!(CursorPosition::decode("1:2:3:4"), None);
    }
}
