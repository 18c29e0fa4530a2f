//! A topic's epoch history: where each epoch of its log begins, and which of its offsets are
//! known to have been lost (`docs/PROTOCOL.md`, "Epochs").
//!
//! An epoch is a log incarnation written by one Redis server process. When another process
//! takes the log over (a promoted replica, a restart), the log continues under a new epoch
//! from `last + 1`: epoch `E` covers the offsets from its first up to the next epoch's first
//! minus one. A reader positioned in `E` past that end had read writes that were lost.

use crate::position::Epoch;

/// Where one epoch begins, and the largest of its offsets reported lost (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochStart {
    pub(crate) epoch: Epoch,
    pub(crate) first: u64,
    pub(crate) lost: u64,
}

impl EpochStart {
    /// Parses a history hash entry: field `epoch`, value `<first>` or `<first>:<lost>`.
    pub(crate) fn parse(epoch: &str, value: &str) -> Option<Self> {
        let epoch = epoch.parse().ok()?;
        let (first, lost) = match value.split_once(':') {
            Some((f, l)) => (f.parse().ok()?, l.parse().ok()?),
            None => (value.parse().ok()?, 0),
        };
        Some(EpochStart { epoch, first, lost })
    }
}

/// A topic's epoch history, oldest first (sorted by epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct History(pub(crate) Vec<EpochStart>);

impl History {
    pub(crate) fn new(mut starts: Vec<EpochStart>) -> Self {
        starts.sort_by_key(|s| s.epoch);
        History(starts)
    }

    /// The entry of `epoch`, if the history holds it.
    pub(crate) fn get(&self, epoch: Epoch) -> Option<&EpochStart> {
        self.0.iter().find(|s| s.epoch == epoch)
    }

    /// The epoch after `epoch`, if `epoch` is in the history and not its newest.
    pub(crate) fn successor(&self, epoch: Epoch) -> Option<&EpochStart> {
        let i = self.0.iter().position(|s| s.epoch == epoch)?;
        self.0.get(i + 1)
    }

    /// The epoch that offset `offset` belongs to: the newest one beginning at or before it
    /// (`current` when the history is empty or begins after it).
    pub(crate) fn epoch_at(&self, offset: u64, current: Epoch) -> Epoch {
        self.0
            .iter()
            .rev()
            .find(|s| s.first <= offset)
            .map_or(current, |s| s.epoch)
    }

    /// Where a reader without a position that starts at `offset` begins: the epoch `offset`
    /// belongs to ([`History::epoch_at`]), or, when `offset` is that epoch's first, the oldest
    /// of the empty epochs just before it (epochs recorded as wholly lost, which share their
    /// successor's first offset), so that crossing them reports their losses as `Lost` gaps.
    pub(crate) fn start_epoch(&self, offset: u64, current: Epoch) -> Epoch {
        let at = self.epoch_at(offset, current);
        let Some(mut i) = self.0.iter().position(|s| s.epoch == at) else {
            return at;
        };
        if self.0[i].first != offset {
            return at;
        }
        while i > 0 && self.0[i - 1].first == offset {
            i -= 1;
        }
        self.0[i].epoch
    }

    /// The epoch before `epoch` and `epoch`'s first offset, when `epoch` continues an earlier
    /// epoch's log (a change of writing server) rather than starting one from offset 1. Empty
    /// epochs in between (wholly lost, see [`History::start_epoch`]) are passed over.
    pub(crate) fn continues(&self, epoch: Epoch) -> Option<(Epoch, u64)> {
        let i = self.0.iter().position(|s| s.epoch == epoch)?;
        let start = self.0.get(i)?;
        let prev = self.0[..i].iter().rev().find(|s| s.first < start.first)?;
        (start.first > 1).then_some((prev.epoch, start.first))
    }

    /// The last offset of `epoch` (the next epoch's first minus one), `None` for the newest.
    pub(crate) fn end_of(&self, epoch: Epoch) -> Option<u64> {
        self.successor(epoch).map(|s| s.first.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_ranges() {
        let h = History::new(vec![
            EpochStart::parse("30", "10").unwrap_or_else(|| unreachable!()),
            EpochStart::parse("10", "1:8").unwrap_or_else(|| unreachable!()),
            EpochStart::parse("20", "6").unwrap_or_else(|| unreachable!()),
        ]);
        // 5 and 15 were wholly lost (recorded empty, before 10 and before 20).
        let lost = History::new(vec![
            EpochStart::parse("5", "1:4").unwrap_or_else(|| unreachable!()),
            EpochStart::parse("10", "1:8").unwrap_or_else(|| unreachable!()),
            EpochStart::parse("15", "6:9").unwrap_or_else(|| unreachable!()),
            EpochStart::parse("20", "6").unwrap_or_else(|| unreachable!()),
        ]);
        assert_eq!(lost.start_epoch(1, 20), 5);
        assert_eq!(lost.start_epoch(3, 20), 10);
        assert_eq!(lost.start_epoch(6, 20), 15);
        assert_eq!(lost.epoch_at(6, 20), 20);
        assert_eq!(lost.epoch_at(1, 20), 10);
        assert_eq!(lost.end_of(5), Some(0));
        assert_eq!(lost.end_of(15), Some(5));
        assert_eq!(lost.continues(20), Some((10, 6)));
        assert_eq!(h.get(10).map(|s| s.lost), Some(8));
        assert_eq!(h.end_of(10), Some(5));
        assert_eq!(h.end_of(20), Some(9));
        assert_eq!(h.end_of(30), None);
        assert_eq!(h.epoch_at(5, 30), 10);
        assert_eq!(h.epoch_at(6, 30), 20);
        assert_eq!(h.epoch_at(12, 30), 30);
        assert_eq!(History::default().epoch_at(3, 7), 7);
        assert_eq!(h.start_epoch(1, 30), 10);
        assert_eq!(h.start_epoch(6, 30), 20);
        assert_eq!(h.continues(20), Some((10, 6)));
        assert!(EpochStart::parse("x", "1").is_none());
        assert!(EpochStart::parse("1", "1:").is_none());
    }
}
