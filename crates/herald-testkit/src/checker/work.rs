//! The work-group half of the history checker ([`check_work`]): every acknowledged publish a
//! group owed is acked exactly once by the group, none twice, and `Stale` outcomes never
//! count.
//!
//! Members record every outcome they reported as a [`WorkAck`]. A delivery is matched to the
//! publish at its offset (and must carry the same key): the epoch is recorded but not used to
//! match, since a continued log (a new epoch that carries on after the last offset, e.g. after
//! a Redis restart with AOF) keeps each message's offset. A topic `Reset` (the log lost) is
//! not modelled: the soak asserts there is none.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Epoch, Published};

/// What reporting an outcome for a delivery returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOutcome {
    /// The ack was applied: the message is done for the group.
    Acked,
    /// Refused: the attempt was no longer the current one. Never counts as an ack.
    Stale,
    /// A nak or failure was applied: the message will be delivered again.
    Retry,
    /// Dead-lettered (out of deliveries, or terminated).
    DeadLettered,
    /// The call failed (its effect unknown: the ack may or may not have been applied).
    Failed(String),
}

/// One outcome a member reported for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkAck {
    pub topic: String,
    pub epoch: Epoch,
    pub offset: u64,
    /// The delivered message's identity (as in [`Published::key`]).
    pub key: String,
    pub group: String,
    pub member: String,
    pub attempt: u32,
    pub outcome: WorkOutcome,
}

/// The findings for one group on one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkReport {
    pub topic: String,
    pub group: String,
    /// Acknowledged publishes the group owed (from its start, and still retained at the end).
    pub owed: u64,
    /// Offsets with (exactly one or more) `Acked` outcome.
    pub acked: u64,
    /// Owed offsets without an `Acked` outcome and without a failed call that may have acked
    /// them. A violation.
    pub missing: u64,
    /// Offsets with two or more `Acked` outcomes. A violation.
    pub acked_twice: u64,
    /// `Acked` deliveries whose key differs from the publish at that offset. A violation.
    pub conflicts: u64,
    /// `Stale` outcomes (counted, never as acks).
    pub stale: u64,
    /// `Retry` outcomes.
    pub retries: u64,
    /// Dead-lettered offsets (an owed one counts as missing too).
    pub dead_lettered: u64,
    /// Owed offsets never seen `Acked` whose ack call failed: it may have been applied (the
    /// group then never delivers the message again), so not counted as missing.
    pub unconfirmed: u64,
    /// Failed outcome calls.
    pub failed_calls: u64,
    /// The first few problems, described.
    pub examples: Vec<String>,
}

impl WorkReport {
    /// Missing + acked twice + conflicts.
    pub fn violations(&self) -> u64 {
        self.missing + self.acked_twice + self.conflicts
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 8 {
            self.examples.push(what);
        }
    }

    /// The report as a few lines.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "work group {} on {}: owed {}, acked {}, missing {}, acked twice {}, conflicts {}, stale {}, retries {}, dead-lettered {}, unconfirmed {}, failed calls {}",
            self.group,
            self.topic,
            self.owed,
            self.acked,
            self.missing,
            self.acked_twice,
            self.conflicts,
            self.stale,
            self.retries,
            self.dead_lettered,
            self.unconfirmed,
            self.failed_calls
        );
        for e in &self.examples {
            let _ = writeln!(out, "  {e}");
        }
        out
    }
}

/// Checks the outcomes `acks` of group `group` on `topic` against the acknowledged publishes
/// `published`: every publish at an offset at or after `from` (the group's start) and
/// `retained_first` (the oldest offset the log still held at the end: retention may have
/// trimmed older ones before the group took them, and then reported them lost) is acked
/// exactly once; no offset is acked twice; `Stale` outcomes do not count.
pub fn check_work(
    published: &[Published],
    acks: &[WorkAck],
    topic: &str,
    group: &str,
    from: u64,
    retained_first: u64,
) -> WorkReport {
    let mut r = WorkReport {
        topic: topic.to_string(),
        group: group.to_string(),
        ..WorkReport::default()
    };
    // offset -> key, from the acknowledged publishes (a retried publish may be recorded twice).
    let mut keys: BTreeMap<u64, &str> = BTreeMap::new();
    for p in published.iter().filter(|p| p.topic == topic) {
        keys.insert(p.offset, &p.key);
    }
    // offset -> (acked, failed calls)
    let mut seen: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for a in acks.iter().filter(|a| a.topic == topic && a.group == group) {
        let entry = seen.entry(a.offset).or_default();
        match &a.outcome {
            WorkOutcome::Acked => {
                entry.0 += 1;
                if entry.0 == 2 {
                    r.acked_twice += 1;
                    r.note(format!(
                        "offset {} acked twice (again by {} at attempt {})",
                        a.offset, a.member, a.attempt
                    ));
                }
                if let Some(k) = keys.get(&a.offset) {
                    if *k != a.key {
                        r.conflicts += 1;
                        r.note(format!(
                            "offset {} acked with key {:?}, published with {k:?}",
                            a.offset, a.key
                        ));
                    }
                }
            }
            WorkOutcome::Stale => r.stale += 1,
            WorkOutcome::Retry => r.retries += 1,
            WorkOutcome::DeadLettered => r.dead_lettered += 1,
            WorkOutcome::Failed(_) => {
                r.failed_calls += 1;
                entry.1 += 1;
            }
        }
    }
    r.acked = seen.values().filter(|v| v.0 > 0).count() as u64;
    let floor = from.max(retained_first);
    for (&offset, key) in keys.range(floor..) {
        r.owed += 1;
        match seen.get(&offset) {
            Some((n, _)) if *n > 0 => {}
            Some((_, failed)) if *failed > 0 => r.unconfirmed += 1,
            _ => {
                r.missing += 1;
                r.note(format!("offset {offset} ({key:?}) never acked"));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(n: u64) -> Vec<Published> {
        (1..=n)
            .map(|o| Published {
                topic: "t".into(),
                epoch: 7,
                offset: o,
                key: format!("k{o}"),
            })
            .collect()
    }

    fn ack(offset: u64, attempt: u32, outcome: WorkOutcome) -> WorkAck {
        WorkAck {
            topic: "t".into(),
            epoch: 7,
            offset,
            key: format!("k{offset}"),
            group: "g".into(),
            member: format!("m{}", attempt % 2),
            attempt,
            outcome,
        }
    }

    fn all_acked(n: u64) -> Vec<WorkAck> {
        (1..=n).map(|o| ack(o, 1, WorkOutcome::Acked)).collect()
    }

    #[test]
    fn accepts_each_message_acked_once() {
        let mut acks = all_acked(10);
        // Retried, stale, then acked elsewhere; other groups and topics do not count.
        acks.push(ack(3, 1, WorkOutcome::Retry));
        acks.push(ack(4, 1, WorkOutcome::Stale));
        acks.push(WorkAck {
            group: "other".into(),
            ..ack(5, 1, WorkOutcome::Acked)
        });
        acks.push(WorkAck {
            topic: "u".into(),
            ..ack(6, 1, WorkOutcome::Acked)
        });
        // A continued log: a later epoch, same offsets.
        acks[6].epoch = 8;
        let r = check_work(&published(10), &acks, "t", "g", 1, 1);
        assert_eq!(r.violations(), 0, "{}", r.table());
        assert_eq!((r.owed, r.acked, r.stale, r.retries), (10, 10, 1, 1));
        // A publish recorded twice (a retried publish's duplicate receipt) is owed once.
        let mut twice = published(10);
        twice.push(twice[2].clone());
        let r = check_work(&twice, &all_acked(10), "t", "g", 1, 1);
        assert_eq!((r.owed, r.violations()), (10, 0), "{}", r.table());
    }

    #[test]
    fn flags_missing_twice_and_conflicting_acks() {
        let mut acks = all_acked(10);
        acks.remove(4); // offset 5 never acked
        acks.push(ack(2, 2, WorkOutcome::Acked)); // offset 2 acked twice
        acks.push(WorkAck {
            key: "other".into(),
            ..ack(11, 1, WorkOutcome::Acked)
        });
        let mut p = published(11);
        p[10].key = "k11".into();
        let r = check_work(&p, &acks, "t", "g", 1, 1);
        assert_eq!(
            (r.missing, r.acked_twice, r.conflicts),
            (1, 1, 1),
            "{}",
            r.table()
        );
        assert_eq!(r.violations(), 3);
        assert!(r.examples.iter().any(|e| e.contains("offset 5")));
    }

    #[test]
    fn stale_never_counts_as_an_ack() {
        let mut acks = all_acked(10);
        acks[3].outcome = WorkOutcome::Stale;
        acks[4].outcome = WorkOutcome::DeadLettered;
        let r = check_work(&published(10), &acks, "t", "g", 1, 1);
        assert_eq!(
            (r.missing, r.stale, r.dead_lettered),
            (2, 1, 1),
            "{}",
            r.table()
        );
    }

    #[test]
    fn start_and_retention_bound_what_is_owed_and_failed_acks_are_unconfirmed() {
        let acks: Vec<WorkAck> = (4..=10).map(|o| ack(o, 1, WorkOutcome::Acked)).collect();
        // Started at 3: offset 3 is owed and missing.
        let r = check_work(&published(10), &acks, "t", "g", 3, 1);
        assert_eq!((r.owed, r.missing), (8, 1), "{}", r.table());
        // Offsets below 4 trimmed before the group took them.
        let r = check_work(&published(10), &acks, "t", "g", 1, 4);
        assert_eq!((r.owed, r.violations()), (7, 0), "{}", r.table());
        // An ack whose call failed may have been applied: unconfirmed, not missing.
        let mut acks = all_acked(10);
        acks[0].outcome = WorkOutcome::Failed("timed out".into());
        let r = check_work(&published(10), &acks, "t", "g", 1, 1);
        assert_eq!((r.unconfirmed, r.missing, r.failed_calls), (1, 0, 1));
    }
}
