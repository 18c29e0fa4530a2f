//! Durable cursors: a named position committed to the broker, so that a restarted node
//! resumes where it left off (see docs/DESIGN.md, "Durable cursors").

use serde::Serialize;

use crate::position::Position;

/// A durable cursor's last commit: the position its owner has processed, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CursorCommit {
    /// The last position the cursor's owner has processed.
    #[serde(flatten)]
    pub position: Position,
    /// When it was committed, in milliseconds since the Unix epoch (the committer's clock).
    pub committed_at_ms: u64,
}

impl CursorCommit {
    pub(crate) fn new(position: Position) -> Self {
        CursorCommit {
            position,
            committed_at_ms: crate::clock::now_ms(),
        }
    }

    /// Encodes the commit as stored: `<epoch>:<offset>:<committed_at_ms>`.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.position.epoch, self.position.offset, self.committed_at_ms
        )
    }

    /// Decodes a stored commit; `None` when it is not in Herald's format.
    pub(crate) fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let epoch = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let committed_at_ms = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(CursorCommit {
            position: Position::new(epoch, offset),
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
    /// Its last commit.
    #[serde(flatten)]
    pub commit: CursorCommit,
    /// Messages published after the committed offset (in the topic's current epoch); when the
    /// cursor belongs to an older epoch, every message of the current epoch counts.
    pub lag: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = CursorCommit {
            position: Position::new(17, 42),
            committed_at_ms: 99,
        };
        assert_eq!(CursorCommit::decode(&p.encode()), Some(p));
        assert_eq!(CursorCommit::decode("x:1:2"), None);
        assert_eq!(CursorCommit::decode("1:2:3:4"), None);
    }

    #[test]
    fn serialises_flat() {
        let info = CursorInfo {
            name: "a".into(),
            commit: CursorCommit {
                position: Position::new(17, 42),
                committed_at_ms: 99,
            },
            lag: 3,
        };
        assert_eq!(
            serde_json::to_string(&info).ok().as_deref(),
            Some(r#"{"name":"a","epoch":17,"offset":42,"committed_at_ms":99,"lag":3}"#)
        );
    }
}
