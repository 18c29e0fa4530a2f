//! Where a message sits in a topic's log: its [`Epoch`] and its offset, together a
//! [`Position`].
//!
//! Receipts, deliveries, durable cursors, resets and lag all speak in positions, so that an
//! epoch and an offset never travel as two loose numbers that could be swapped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An epoch identifies one incarnation of a topic's log. When Redis loses a log, the next
/// publish starts a new epoch and subscribers receive a `Reset`. Epochs are created from the
/// broker's clock, so a later epoch is a larger number.
pub type Epoch = u64;

/// A message's place in a topic: the epoch of the log and the offset within it.
///
/// Offsets are dense and start at 1 in every epoch; the same offset in two epochs names two
/// different messages. Positions order by epoch first, then offset. Written as
/// `epoch:offset` (its [`Display`](fmt::Display) and [`FromStr`] forms).
///
/// ```
/// use herald::Position;
/// let p = Position::new(1764070000123, 42);
/// assert_eq!(p.to_string(), "1764070000123:42");
/// assert_eq!("1764070000123:42".parse::<Position>().ok(), Some(p));
/// assert_eq!(p.next().offset, 43);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position {
    /// The epoch of the topic's log.
    pub epoch: Epoch,
    /// The offset within that epoch (1 is the first message of an epoch).
    pub offset: u64,
}

impl Position {
    /// The position at `offset` of `epoch`.
    pub const fn new(epoch: Epoch, offset: u64) -> Self {
        Position { epoch, offset }
    }

    /// The position right after this one, in the same epoch.
    pub const fn next(self) -> Self {
        Position {
            epoch: self.epoch,
            offset: self.offset + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Why a string is not a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {input:?}: expected EPOCH:OFFSET, two unsigned integers")]
pub struct ParsePositionError {
    input: String,
}

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError {
            input: s.to_string(),
        };
        let (epoch, offset) = s.split_once(':').ok_or_else(err)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(offset) {
            return Err(err());
        }
        Ok(Position {
            epoch: epoch.parse().map_err(|_| err())?,
            offset: offset.parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let p = Position::new(7, 9);
        assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        for bad in [
            "",
            "7",
            "7:",
            ":9",
            "7:9:1",
            "-7:9",
            "7:+9",
            "a:9",
            "7:99999999999999999999",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_by_epoch_then_offset() {
        assert!(Position::new(1, 100) < Position::new(2, 1));
        assert!(Position::new(2, 1) < Position::new(2, 2));
    }
}
