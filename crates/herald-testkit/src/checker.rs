//! A history checker for soak runs: compares what publishers had acknowledged with what every
//! subscriber recorded, against the guarantees of docs/DESIGN.md.
//!
//! Publishers record each acknowledged publish as a [`Published`] (topic, epoch, offset,
//! idempotency key). Each logical subscriber records, per topic, a sequence of [`Record`]s:
//! a `Start` for each incarnation (the first one, and each restart from a durable cursor),
//! then the `Message`, `Gap` and `Reset` events it received, in order.
//!
//! Per subscriber the checker reports:
//! - **delivered**: messages received;
//! - **lost**: acknowledged publishes the subscriber owed (at or after its first start
//!   position) that it never received and that no `Gap` or `Reset` covers;
//! - **duplicated**: a message received twice by one incarnation within one epoch, or, after a
//!   restart from a durable cursor, at or below the committed offset;
//! - **out of order**: a message (or gap) at an offset not above the last one received;
//! - **conflicts**: an offset whose key differs from what a publisher or another subscriber
//!   saw there (counted once per offset, globally, and per subscriber that saw the odd key):
//!   no (topic, epoch, offset) may name two messages across all receipts and deliveries;
//! - **unreported losses** ([`check_losses`], given the acknowledged publishes the log no
//!   longer holds): a lost message the subscriber owed and did not receive that no `Reset` or
//!   `Gap` with reason `Lost` covers (a retention gap does not explain a loss), or a lost
//!   message it received and then read past (into a later epoch) without a `Reset` naming it.
//!
//! For work groups, [`check_work`] checks the outcomes members reported: every acknowledged
//! publish the group owed is acked exactly once, none twice, and `Stale` outcomes never count.

// Test-only (feature `test`): the record types' fields name themselves.
#![allow(missing_docs)]
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

mod map;
pub use map::{check_map, MapReport, MapRevision, MapWatcherFinal, MapWrite};
mod work;
pub use work::{check_work, WorkAck, WorkOutcome, WorkReport};

/// A topic's epoch (see `herald::Epoch`).
pub type Epoch = u64;

/// An acknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub epoch: Epoch,
    pub offset: u64,
    pub key: String,
}

/// What a subscriber recorded for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An incarnation started. It owes every acknowledged publish at or after
    /// (`epoch`, `from`) — `epoch: None` meaning "from the very beginning" — and, when it
    /// resumed from a durable cursor, must not deliver anything at or below `floor`.
    /// Only the first `Start` of a subscriber defines what it owes.
    Start {
        epoch: Option<Epoch>,
        from: u64,
        floor: Option<(Epoch, u64)>,
    },
    Message {
        epoch: Epoch,
        offset: u64,
        key: String,
    },
    Gap {
        epoch: Epoch,
        from: u64,
        to: u64,
    },
    /// A `Gap` with reason `Lost`: offsets acknowledged or delivered, then lost by Redis.
    LostGap {
        epoch: Epoch,
        from: u64,
        to: u64,
    },
    /// `lost_from ..= last_delivered` of `previous_epoch` were lost; delivery continues in
    /// `epoch` from `lost_from` (from 1 when the whole log was lost).
    Reset {
        previous_epoch: Epoch,
        epoch: Epoch,
        last_delivered: u64,
        lost_from: u64,
    },
}

impl Record {
    /// What a subscription's event says, as a record of its topic: `(topic, record)`.
    /// `key` names a delivered message (usually its idempotency key). `None` for events the
    /// checker does not model.
    pub fn of_event(
        event: herald::Event,
        key: impl FnOnce(&herald::Delivery) -> String,
    ) -> Option<(String, Record)> {
        match event {
            herald::Event::Message(d) => {
                let key = key(&d);
                let record = Record::Message {
                    epoch: d.position.epoch,
                    offset: d.position.offset,
                    key,
                };
                Some((d.topic, record))
            }
            herald::Event::Gap {
                topic,
                epoch,
                from,
                to,
                reason,
            } => {
                let record = if reason == herald::GapReason::Lost {
                    Record::LostGap { epoch, from, to }
                } else {
                    Record::Gap { epoch, from, to }
                };
                Some((topic, record))
            }
            herald::Event::Reset {
                topic,
                last_delivered,
                epoch,
                lost_from,
            } => Some((
                topic,
                Record::Reset {
                    previous_epoch: last_delivered.epoch,
                    epoch,
                    last_delivered: last_delivered.offset,
                    lost_from,
                },
            )),
            _ => None,
        }
    }

    /// The position a durable subscriber may commit after this record: a message's own, or
    /// the end of a gap. A reset commits nothing (the next message does).
    pub fn commit_position(&self) -> Option<(Epoch, u64)> {
        match self {
            Record::Message { epoch, offset, .. } => Some((*epoch, *offset)),
            Record::Gap { epoch, to, .. } | Record::LostGap { epoch, to, .. } => {
                Some((*epoch, *to))
            }
            Record::Start { .. } | Record::Reset { .. } => None,
        }
    }
}

/// One logical subscriber's recorded history, per topic.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub name: String,
    pub topics: BTreeMap<String, Vec<Record>>,
}

impl History {
    /// The last position this history reached on `topic` (a message, or the end of a gap).
    pub fn reached(&self, topic: &str) -> Option<(Epoch, u64)> {
        self.topics
            .get(topic)?
            .iter()
            .rev()
            .find_map(Record::commit_position)
    }

    /// What this history still lacks of `heads` (`(topic, epoch, last offset)` as the topics
    /// stand now), one line per topic; empty when it has caught up. A topic with no log is owed
    /// nothing.
    pub fn behind<T: AsRef<str>>(&self, heads: &[(T, Option<Epoch>, u64)]) -> Vec<String> {
        heads
            .iter()
            .filter(|(t, epoch, last)| match (epoch, self.reached(t.as_ref())) {
                (None, _) => false,
                (Some(e), Some((re, ro))) => re != *e || ro < *last,
                (Some(_), None) => true,
            })
            .map(|(t, _, last)| {
                let t = t.as_ref();
                format!("{} on {t} (head {last}): {:?}", self.name, self.reached(t))
            })
            .collect()
    }

    pub fn new(name: impl Into<String>) -> Self {
        History {
            name: name.into(),
            topics: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, topic: &str, record: Record) {
        self.topics
            .entry(topic.to_string())
            .or_default()
            .push(record);
    }
}

/// The checker's findings for one subscriber (summed over its topics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberReport {
    pub name: String,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub conflicts: u64,
    pub gaps: u64,
    pub gap_offsets: u64,
    /// Gaps over offsets that retention never trimmed (still retained at the end).
    pub unjustified_gaps: u64,
    pub resets: u64,
    pub restarts: u64,
    /// Lost messages owed but neither received nor covered by a `Reset` or a `Lost` gap, or
    /// received and read past without a `Reset`.
    pub unreported_losses: u64,
    /// The first few problems, described.
    pub examples: Vec<String>,
}

impl SubscriberReport {
    fn note(&mut self, what: String) {
        if self.examples.len() < 8 {
            self.examples.push(what);
        }
    }
}

/// The checker's findings.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub subscribers: Vec<SubscriberReport>,
    /// Offsets seen with two different keys (publish receipts and deliveries together).
    pub conflicts: u64,
    /// Idempotency keys found at two different offsets of one epoch.
    pub key_duplicates: u64,
    pub examples: Vec<String>,
}

impl Report {
    /// Lost + duplicated + out of order + conflicts, over everything.
    pub fn violations(&self) -> u64 {
        self.conflicts
            + self.key_duplicates
            + self
                .subscribers
                .iter()
                .map(|s| {
                    s.lost
                        + s.duplicated
                        + s.out_of_order
                        + s.conflicts
                        + s.unjustified_gaps
                        + s.unreported_losses
                })
                .sum::<u64>()
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>6} {:>6} {:>8} {:>6}",
            "subscriber",
            "delivered",
            "lost",
            "dup",
            "order",
            "confl",
            "gaps",
            "gap-offs",
            "unjust",
            "resets",
            "restarts",
            "unrep"
        );
        for s in &self.subscribers {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>6} {:>6} {:>8} {:>6}",
                s.name,
                s.delivered,
                s.lost,
                s.duplicated,
                s.out_of_order,
                s.conflicts,
                s.gaps,
                s.gap_offsets,
                s.unjustified_gaps,
                s.resets,
                s.restarts,
                s.unreported_losses
            );
        }
        let _ = writeln!(
            out,
            "offsets with conflicting keys: {}; keys at two offsets: {}",
            self.conflicts, self.key_duplicates
        );
        for s in &self.subscribers {
            for e in &s.examples {
                let _ = writeln!(out, "  {}: {e}", s.name);
            }
        }
        for e in &self.examples {
            let _ = writeln!(out, "  {e}");
        }
        out
    }
}

/// Checks `histories` against the acknowledged publishes `acked`.
pub fn check(acked: &[Published], histories: &[History]) -> Report {
    check_with_retention(acked, histories, &[])
}

/// The oldest offset a topic's log still retained at the end of the run, in its epoch:
/// retention only ever trims below it, so a `Gap` reaching it or beyond is unjustified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub epoch: Epoch,
    pub first: u64,
}

/// [`check`], and also flags gaps over offsets that `retained` shows were never trimmed.
pub fn check_with_retention(
    acked: &[Published],
    histories: &[History],
    retained: &[Retained],
) -> Report {
    check_losses(acked, histories, retained, &[])
}

/// [`check_with_retention`], and also checks that every message of `lost` (acknowledged
/// publishes the topic's log no longer holds at the end, e.g. after a failover) was reported
/// to every subscriber that owed it: by a `Reset` or a `Gap` with reason `Lost`.
pub fn check_losses(
    acked: &[Published],
    histories: &[History],
    retained: &[Retained],
    lost: &[Published],
) -> Report {
    let mut report = Report::default();

    // Every (topic, epoch, offset) -> the keys seen there, by whom.
    let mut seen: BTreeMap<(String, Epoch, u64), BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for p in acked {
        seen.entry((p.topic.clone(), p.epoch, p.offset))
            .or_default()
            .entry(p.key.clone())
            .or_default()
            .push("publisher".into());
    }
    for h in histories {
        for (topic, records) in &h.topics {
            for r in records {
                if let Record::Message { epoch, offset, key } = r {
                    let who = seen
                        .entry((topic.clone(), *epoch, *offset))
                        .or_default()
                        .entry(key.clone())
                        .or_default();
                    if who.last() != Some(&h.name) {
                        who.push(h.name.clone());
                    }
                }
            }
        }
    }
    // The key most witnesses agree on (publishers first) is taken as the truth.
    let mut truth: HashMap<(String, Epoch, u64), String> = HashMap::new();
    let mut keys_at: HashMap<(String, Epoch, String), BTreeSet<u64>> = HashMap::new();
    for ((topic, epoch, offset), keys) in &seen {
        let best = keys
            .iter()
            .max_by_key(|(_, who)| (who.iter().any(|w| w == "publisher"), who.len()))
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        if keys.len() > 1 {
            report.conflicts += 1;
            if report.examples.len() < 8 {
                report
                    .examples
                    .push(format!("conflict at {topic}@{epoch}:{offset}: {:?}", keys));
            }
        }
        for k in keys.keys() {
            keys_at
                .entry((topic.clone(), *epoch, k.clone()))
                .or_default()
                .insert(*offset);
        }
        truth.insert((topic.clone(), *epoch, *offset), best);
    }
    for ((topic, epoch, key), offsets) in &keys_at {
        if offsets.len() > 1 {
            report.key_duplicates += 1;
            if report.examples.len() < 8 {
                report.examples.push(format!(
                    "key {key:?} at several offsets of {topic}@{epoch}: {offsets:?}"
                ));
            }
        }
    }

    let mut acked_by_topic: HashMap<&str, Vec<&Published>> = HashMap::new();
    for p in acked {
        acked_by_topic.entry(&p.topic).or_default().push(p);
    }

    for h in histories {
        let mut s = SubscriberReport {
            name: h.name.clone(),
            ..SubscriberReport::default()
        };
        for (topic, records) in &h.topics {
            let first = retained
                .iter()
                .filter(|r| &r.topic == topic)
                .map(|r| (r.epoch, r.first))
                .collect::<Vec<_>>();
            let lost: Vec<&Published> = lost.iter().filter(|p| &p.topic == topic).collect();
            check_topic(topic, records, &truth, &acked_by_topic, &first, &mut s);
            check_reported(topic, records, &lost, &mut s);
        }
        report.subscribers.push(s);
    }
    report
}

fn check_topic(
    topic: &str,
    records: &[Record],
    truth: &HashMap<(String, Epoch, u64), String>,
    acked: &HashMap<&str, Vec<&Published>>,
    retained: &[(Epoch, u64)],
    s: &mut SubscriberReport,
) {
    // What the subscriber owes: from its first start on.
    let owed_from = records.iter().find_map(|r| match r {
        Record::Start { epoch, from, .. } => Some((*epoch, *from)),
        _ => None,
    });
    // Everything received or explicitly given up, per epoch.
    let mut covered: HashMap<Epoch, BTreeSet<u64>> = HashMap::new();
    let mut gaps: Vec<(Epoch, u64, u64)> = Vec::new();
    let mut resets: Vec<(Epoch, u64)> = Vec::new();

    // The current incarnation's position: epoch and last offset received (or gapped).
    let mut epoch: Option<Epoch> = None;
    let mut last: u64 = 0;
    let mut received: BTreeSet<u64> = BTreeSet::new();
    let mut floor: Option<(Epoch, u64)> = None;
    let mut starts = 0u64;
    // After a `Lost` gap (which ends its epoch): where the next epoch's offsets begin.
    let mut crossing: Option<u64> = None;

    for r in records {
        match r {
            Record::Start {
                epoch: e,
                from,
                floor: f,
            } => {
                starts += 1;
                epoch = *e;
                last = from.saturating_sub(1);
                if f.is_some() {
                    // A resume from a durable cursor: its floor is where it starts.
                    if let Some((fe, fo)) = f {
                        epoch = Some(*fe);
                        last = *fo;
                    }
                }
                floor = *f;
                received.clear();
            }
            Record::Message {
                epoch: e,
                offset,
                key,
            } => {
                s.delivered += 1;
                if let Some(from) = crossing.take().filter(|_| epoch != Some(*e)) {
                    // The log continues in the next epoch where the lost offsets began.
                    epoch = Some(*e);
                    last = from.saturating_sub(1);
                    received.clear();
                }
                // A later epoch that continues the log right after the last offset read (a
                // change of writing server that lost nothing this reader had) needs no event.
                let continues = epoch.is_some_and(|cur| *e > cur) && *offset == last + 1;
                if continues {
                    epoch = Some(*e);
                }
                if epoch != Some(*e) {
                    // Entering another epoch without a Reset is allowed only for the first
                    // epoch an incarnation sees (it started before the topic existed), or
                    // when it continues the log (above).
                    if epoch.is_some() {
                        s.out_of_order += 1;
                        s.note(format!(
                            "{topic}: message at {e}:{offset} after epoch {epoch:?} without a Reset"
                        ));
                    }
                    epoch = Some(*e);
                    last = 0;
                    received.clear();
                }
                if floor.is_some_and(|(fe, fo)| fe == *e && *offset <= fo) {
                    s.duplicated += 1;
                    s.note(format!(
                        "{topic}: {e}:{offset} redelivered after a resume from cursor {floor:?}"
                    ));
                } else if received.contains(offset) {
                    s.duplicated += 1;
                    s.note(format!("{topic}: {e}:{offset} delivered twice"));
                } else if *offset <= last {
                    s.out_of_order += 1;
                    s.note(format!(
                        "{topic}: {e}:{offset} delivered after offset {last}"
                    ));
                }
                received.insert(*offset);
                last = last.max(*offset);
                covered.entry(*e).or_default().insert(*offset);
                let expected = truth.get(&(topic.to_string(), *e, *offset));
                if expected.is_some_and(|k| k != key) {
                    s.conflicts += 1;
                    s.note(format!(
                        "{topic}: {e}:{offset} delivered with key {key:?}, elsewhere {expected:?}"
                    ));
                }
            }
            Record::Gap { epoch: e, from, to } => {
                s.gaps += 1;
                s.gap_offsets += to + 1 - from;
                if retained
                    .iter()
                    .any(|&(re, first)| re == *e && first > 0 && *to >= first)
                {
                    s.unjustified_gaps += 1;
                    s.note(format!(
                        "{topic}: gap {e}:{from}..={to} over offsets still retained"
                    ));
                }
                // A gap at the start of a later epoch that continues the log is fine too.
                let continues = epoch.is_some_and(|cur| *e > cur) && *from == last + 1;
                if epoch.is_some() && epoch != Some(*e) && !continues {
                    s.out_of_order += 1;
                    s.note(format!("{topic}: gap in epoch {e} while reading {epoch:?}"));
                }
                if *from <= last && epoch == Some(*e) {
                    s.out_of_order += 1;
                    s.note(format!("{topic}: gap {from}..={to} after offset {last}"));
                }
                epoch = Some(*e);
                last = last.max(*to);
                gaps.push((*e, *from, *to));
            }
            Record::LostGap { epoch: e, from, to } => {
                s.gaps += 1;
                s.gap_offsets += to + 1 - from;
                // A wholly lost epoch, recorded empty at the boundary another Lost gap just
                // crossed (or at the start), is reported right after it.
                let chained = epoch.is_some_and(|cur| *e > cur) && crossing == Some(*from);
                if epoch.is_some() && epoch != Some(*e) && !chained {
                    s.out_of_order += 1;
                    s.note(format!("{topic}: gap in epoch {e} while reading {epoch:?}"));
                }
                if *from <= last && epoch == Some(*e) {
                    s.out_of_order += 1;
                    s.note(format!("{topic}: gap {from}..={to} after offset {last}"));
                }
                epoch = Some(*e);
                last = last.max(*to);
                gaps.push((*e, *from, *to));
                crossing = Some(*from);
            }
            Record::Reset {
                previous_epoch,
                epoch: e,
                last_delivered,
                lost_from,
            } => {
                s.resets += 1;
                resets.push((*previous_epoch, (*lost_from).min(last_delivered + 1)));
                epoch = Some(*e);
                last = lost_from.saturating_sub(1);
                received.clear();
                floor = None;
            }
        }
    }
    // Every topic of a subscriber sees the same restarts.
    s.restarts = s.restarts.max(starts.saturating_sub(1));

    let Some((owed_epoch, owed_offset)) = owed_from else {
        return;
    };
    for p in acked.get(topic).map(Vec::as_slice).unwrap_or_default() {
        let owed = match owed_epoch {
            None => true,
            Some(e) => p.epoch > e || (p.epoch == e && p.offset >= owed_offset),
        };
        if !owed {
            continue;
        }
        let received = covered.get(&p.epoch).is_some_and(|c| c.contains(&p.offset));
        let gapped = gaps
            .iter()
            .any(|&(e, from, to)| e == p.epoch && (from..=to).contains(&p.offset));
        let reset = resets
            .iter()
            .any(|&(e, lost_from)| e == p.epoch && p.offset >= lost_from);
        if !(received || gapped || reset) {
            s.lost += 1;
            s.note(format!(
                "{topic}: acknowledged {}:{} (key {:?}) never delivered nor covered",
                p.epoch, p.offset, p.key
            ));
        }
    }
}

/// The loss reports of one subscriber's topic: see [`check_losses`].
fn check_reported(topic: &str, records: &[Record], lost: &[&Published], s: &mut SubscriberReport) {
    let owed_from = records.iter().find_map(|r| match r {
        Record::Start { epoch, from, .. } => Some((*epoch, *from)),
        _ => None,
    });
    let Some((owed_epoch, owed_offset)) = owed_from else {
        return;
    };
    for p in lost {
        let owed = match owed_epoch {
            None => true,
            Some(e) => p.epoch > e || (p.epoch == e && p.offset >= owed_offset),
        };
        // Where it was received, and whether a record of a later epoch follows.
        let got = records.iter().position(|r| {
            matches!(r, Record::Message { epoch, offset, key }
                if *epoch == p.epoch && *offset == p.offset && *key == p.key)
        });
        let covers = |r: &Record| match r {
            Record::Reset {
                previous_epoch,
                lost_from,
                last_delivered,
                ..
            } => {
                *previous_epoch == p.epoch && (p.offset >= *lost_from || p.offset > *last_delivered)
            }
            Record::LostGap { epoch, from, to } => {
                *epoch == p.epoch && (*from..=*to).contains(&p.offset)
            }
            _ => false,
        };
        let later_epoch = |r: &Record| match r {
            Record::Message { epoch, .. } | Record::Gap { epoch, .. } => *epoch != p.epoch,
            _ => false,
        };
        let unreported = match got {
            // Received: reading on into another epoch needs a Reset naming it.
            Some(at) => {
                let rest = &records[at + 1..];
                let reset_at = rest
                    .iter()
                    .position(|r| matches!(r, Record::Reset { .. }) && covers(r));
                let moved_on = rest.iter().position(later_epoch);
                match (moved_on, reset_at) {
                    (Some(_), None) => true,
                    (Some(m), Some(r)) => m < r,
                    _ => false,
                }
            }
            None => owed && !records.iter().any(covers),
        };
        if unreported {
            s.unreported_losses += 1;
            s.note(format!(
                "{topic}: lost {}:{} (key {:?}) not reported by a Reset or a Lost gap",
                p.epoch, p.offset, p.key
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 7;

    fn acked(n: u64) -> Vec<Published> {
        (1..=n)
            .map(|o| Published {
                topic: "t".into(),
                epoch: E,
                offset: o,
                key: format!("k{o}"),
            })
            .collect()
    }

    fn msg(o: u64) -> Record {
        Record::Message {
            epoch: E,
            offset: o,
            key: format!("k{o}"),
        }
    }

    fn history(name: &str, records: Vec<Record>) -> History {
        let mut h = History::new(name);
        for r in records {
            h.push("t", r);
        }
        h
    }

    fn from_start() -> Record {
        Record::Start {
            epoch: None,
            from: 1,
            floor: None,
        }
    }

    fn clean() -> Vec<Record> {
        std::iter::once(from_start())
            .chain((1..=10).map(msg))
            .collect()
    }

    #[test]
    fn checker_accepts_a_correct_history() {
        let r = check(&acked(10), &[history("a", clean()), history("b", clean())]);
        assert_eq!(r.violations(), 0, "{}", r.table());
        assert_eq!(r.subscribers[0].delivered, 10);

        // A gap or a reset explains what was not delivered.
        let mut gapped = clean();
        gapped.retain(|r| !matches!(r, Record::Message { offset: 4..=6, .. }));
        gapped.insert(
            4,
            Record::Gap {
                epoch: E,
                from: 4,
                to: 6,
            },
        );
        let mut reset = clean();
        reset.truncate(8); // delivered 1..=7
        reset.push(Record::Reset {
            previous_epoch: E,
            epoch: E + 1,
            last_delivered: 7,
            lost_from: 8,
        });
        // A Latest subscriber that started after offset 5 owes only 6..=10.
        let mut latest = vec![Record::Start {
            epoch: Some(E),
            from: 6,
            floor: None,
        }];
        latest.extend((6..=10).map(msg));
        // A durable subscriber restarted from its cursor at 4 may redeliver 5..=8.
        let mut resumed = clean();
        resumed.truncate(9); // 1..=8
        resumed.push(Record::Start {
            epoch: None,
            from: 1,
            floor: Some((E, 4)),
        });
        resumed.extend((5..=10).map(msg));
        let r = check(
            &acked(10),
            &[
                history("gapped", gapped),
                history("reset", reset),
                history("latest", latest),
                history("resumed", resumed),
            ],
        );
        assert_eq!(r.violations(), 0, "{}", r.table());
        assert_eq!(r.subscribers[0].gap_offsets, 3);
        assert_eq!(r.subscribers[1].resets, 1);
        assert_eq!(r.subscribers[3].restarts, 1);
    }

    #[test]
    fn checker_flags_corrupted_histories() {
        let good = || history("good", clean());

        // A dropped message.
        let mut dropped = clean();
        dropped.remove(5);
        let r = check(&acked(10), &[good(), history("dropped", dropped)]);
        assert_eq!(r.subscribers[1].lost, 1, "{}", r.table());
        assert!(r.violations() > 0);

        // A dropped message at the end (nothing after it to reveal it).
        let mut tail = clean();
        tail.pop();
        let r = check(&acked(10), &[history("tail", tail)]);
        assert_eq!(r.subscribers[0].lost, 1, "{}", r.table());

        // A duplicate.
        let mut dup = clean();
        dup.insert(6, msg(5));
        let r = check(&acked(10), &[good(), history("dup", dup)]);
        assert_eq!(r.subscribers[1].duplicated, 1, "{}", r.table());
        assert_eq!(r.subscribers[1].lost, 0);

        // A swap.
        let mut swapped = clean();
        swapped.swap(5, 6);
        let r = check(&acked(10), &[good(), history("swapped", swapped)]);
        assert_eq!(r.subscribers[1].out_of_order, 1, "{}", r.table());
        assert_eq!(r.subscribers[1].lost, 0);

        // An offset that maps to another key on another node.
        let mut conflicting = clean();
        conflicting[3] = Record::Message {
            epoch: E,
            offset: 3,
            key: "intruder".into(),
        };
        let r = check(&acked(10), &[good(), history("conflicting", conflicting)]);
        assert_eq!(r.conflicts, 1, "{}", r.table());
        assert_eq!(r.subscribers[1].conflicts, 1);
        assert_eq!(r.subscribers[0].conflicts, 0);

        // An idempotency key appended twice (at two offsets).
        let mut twice = acked(10);
        twice[9].key = "k9".into();
        let r = check(&twice, &[]);
        assert_eq!(r.key_duplicates, 1, "{}", r.table());

        // A redelivery at or below the committed cursor after a restart.
        let mut below_floor = clean();
        below_floor.truncate(9);
        below_floor.push(Record::Start {
            epoch: None,
            from: 1,
            floor: Some((E, 6)),
        });
        below_floor.extend((6..=10).map(msg));
        let r = check(&acked(10), &[history("below_floor", below_floor)]);
        assert_eq!(r.subscribers[0].duplicated, 1, "{}", r.table());

        // A gap that does not cover the missing offset.
        let mut short_gap = clean();
        short_gap.retain(|r| !matches!(r, Record::Message { offset: 4..=6, .. }));
        short_gap.insert(
            4,
            Record::Gap {
                epoch: E,
                from: 4,
                to: 5,
            },
        );
        let r = check(&acked(10), &[history("short_gap", short_gap)]);
        assert_eq!(r.subscribers[0].lost, 1, "{}", r.table());

        // Messages of a new epoch without a Reset.
        let mut no_reset = clean();
        no_reset.push(Record::Message {
            epoch: E + 1,
            offset: 1,
            key: "n1".into(),
        });
        let r = check(&acked(10), &[history("no_reset", no_reset)]);
        assert_eq!(r.subscribers[0].out_of_order, 1, "{}", r.table());

        // A gap over offsets retention never trimmed (the log still holds 3..=10 at the end).
        let mut unjustified = clean();
        unjustified.retain(|r| !matches!(r, Record::Message { offset: 4..=6, .. }));
        unjustified.insert(
            4,
            Record::Gap {
                epoch: E,
                from: 4,
                to: 6,
            },
        );
        let retained = |first| {
            vec![Retained {
                topic: "t".into(),
                epoch: E,
                first,
            }]
        };
        let h = [history("unjustified", unjustified)];
        let r = check_with_retention(&acked(10), &h, &retained(3));
        assert_eq!(r.subscribers[0].unjustified_gaps, 1, "{}", r.table());
        let r = check_with_retention(&acked(10), &h, &retained(7));
        assert_eq!(r.violations(), 0, "{}", r.table());
    }

    /// A failover lost 8..=10 of epoch E (acknowledged); the log continues in E + 1 from 8.
    fn after_loss() -> (Vec<Published>, Vec<Published>) {
        let mut acked = acked(10);
        let lost: Vec<Published> = acked[7..].to_vec();
        acked.extend((8..=9).map(|o| Published {
            topic: "t".into(),
            epoch: E + 1,
            offset: o,
            key: format!("new{o}"),
        }));
        (acked, lost)
    }

    fn new_msg(o: u64) -> Record {
        Record::Message {
            epoch: E + 1,
            offset: o,
            key: format!("new{o}"),
        }
    }

    #[test]
    fn checker_accepts_a_continued_log_and_flags_a_skip_into_a_new_epoch() {
        // Offsets 1..=10 of E, then the log continues in E + 1 from 11: no event needed.
        let next = |o: u64| Record::Message {
            epoch: E + 1,
            offset: o,
            key: format!("k{o}"),
        };
        let mut acked12 = acked(10);
        acked12.extend((11..=12).map(|o| Published {
            topic: "t".into(),
            epoch: E + 1,
            offset: o,
            key: format!("k{o}"),
        }));
        let mut continued = clean();
        continued.extend((11..=12).map(next));
        let r = check(&acked12, &[history("continued", continued)]);
        assert_eq!(r.violations(), 0, "{}", r.table());
        // Jumping into E + 1 past the next offset without any event is a skip.
        let mut skipped = clean();
        skipped.push(next(12));
        let r = check(&acked12, &[history("skipped", skipped)]);
        assert!(r.violations() > 0, "{}", r.table());
    }

    #[test]
    fn checker_accepts_reported_losses() {
        let (acked, lost) = after_loss();
        // Delivered 1..=10, then a Reset naming 8..=10, then the new epoch from 8.
        let mut saw = clean();
        saw.push(Record::Reset {
            previous_epoch: E,
            epoch: E + 1,
            last_delivered: 10,
            lost_from: 8,
        });
        saw.extend((8..=9).map(new_msg));
        // Offline during the loss, resumed from its cursor at 5: a Lost gap over 8..=10.
        let mut resumed: Vec<Record> = std::iter::once(from_start())
            .chain((1..=5).map(msg))
            .collect();
        resumed.push(Record::Start {
            epoch: None,
            from: 1,
            floor: Some((E, 5)),
        });
        resumed.extend((6..=7).map(msg));
        resumed.push(Record::LostGap {
            epoch: E,
            from: 8,
            to: 10,
        });
        resumed.extend((8..=9).map(new_msg));
        let h = [history("saw", saw), history("resumed", resumed)];
        let r = check_losses(&acked, &h, &[], &lost);
        assert_eq!(r.violations(), 0, "{}", r.table());
    }

    #[test]
    fn checker_flags_unreported_losses_and_reused_positions() {
        let (acked, lost) = after_loss();
        // Resumed after the loss and crossed into the new epoch with no report at all.
        let mut silent: Vec<Record> = std::iter::once(from_start())
            .chain((1..=7).map(msg))
            .collect();
        silent.extend((8..=9).map(new_msg));
        let r = check_losses(&acked, &[history("silent", silent.clone())], &[], &lost);
        assert_eq!(r.subscribers[0].unreported_losses, 3, "{}", r.table());
        // Without the list of lost messages, the plain check also sees them missing.
        assert!(check(&acked, &[history("silent", silent)]).violations() > 0);

        // A retention gap is no report of a loss.
        let mut retention: Vec<Record> = std::iter::once(from_start())
            .chain((1..=7).map(msg))
            .collect();
        retention.push(Record::Gap {
            epoch: E,
            from: 8,
            to: 10,
        });
        retention.extend((8..=9).map(new_msg));
        let r = check_losses(&acked, &[history("retention", retention)], &[], &lost);
        assert_eq!(r.subscribers[0].unreported_losses, 3, "{}", r.table());

        // Delivered the lost messages, then read on in the new epoch without a Reset.
        let mut no_reset = clean();
        no_reset.extend((8..=9).map(new_msg));
        let r = check_losses(&acked, &[history("no_reset", no_reset)], &[], &lost);
        assert_eq!(r.subscribers[0].unreported_losses, 3, "{}", r.table());

        // A Reset that names too little (lost_from 10: 8 and 9 unreported).
        let mut short = clean();
        short.push(Record::Reset {
            previous_epoch: E,
            epoch: E + 1,
            last_delivered: 10,
            lost_from: 10,
        });
        short.extend((10..=11).map(new_msg));
        let r = check_losses(&acked, &[history("short", short)], &[], &lost);
        assert_eq!(r.subscribers[0].unreported_losses, 2, "{}", r.table());

        // An (epoch, offset) reused: two publishers got receipts for E:8 with two messages.
        let mut reused = acked.clone();
        reused.push(Published {
            topic: "t".into(),
            epoch: E,
            offset: 8,
            key: "other8".into(),
        });
        let r = check(&reused, &[]);
        assert_eq!(r.conflicts, 1, "{}", r.table());
        // And one subscriber delivered E:9 as yet another message.
        let mut odd = clean();
        odd[9] = Record::Message {
            epoch: E,
            offset: 9,
            key: "odd9".into(),
        };
        let r = check(&reused, &[history("good", clean()), history("odd", odd)]);
        assert_eq!(r.conflicts, 2, "{}", r.table());
        assert_eq!(r.subscribers[1].conflicts, 1);
    }
}
