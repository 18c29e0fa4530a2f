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
//!   saw there (counted once per offset, globally, and per subscriber that saw the odd key).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

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
    Reset {
        previous_epoch: Epoch,
        epoch: Epoch,
        last_delivered: u64,
    },
}

/// One logical subscriber's recorded history, per topic.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub name: String,
    pub topics: BTreeMap<String, Vec<Record>>,
}

impl History {
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
                .map(|s| s.lost + s.duplicated + s.out_of_order + s.conflicts + s.unjustified_gaps)
                .sum::<u64>()
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>6} {:>6} {:>8}",
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
            "restarts"
        );
        for s in &self.subscribers {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>6} {:>6} {:>8}",
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
                s.restarts
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
            check_topic(topic, records, &truth, &acked_by_topic, &first, &mut s);
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
                if epoch != Some(*e) {
                    // Entering another epoch without a Reset is allowed only for the first
                    // epoch an incarnation sees (it started before the topic existed).
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
                if epoch.is_some() && epoch != Some(*e) {
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
            Record::Reset {
                previous_epoch,
                epoch: e,
                last_delivered,
            } => {
                s.resets += 1;
                resets.push((*previous_epoch, *last_delivered));
                epoch = Some(*e);
                last = 0;
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
            .any(|&(e, last)| e == p.epoch && p.offset > last);
        if !(received || gapped || reset) {
            s.lost += 1;
            s.note(format!(
                "{topic}: acknowledged {}:{} (key {:?}) never delivered nor covered",
                p.epoch, p.offset, p.key
            ));
        }
    }
}
