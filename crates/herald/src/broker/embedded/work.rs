//! Work group primitives of the embedded broker: the same state machine as `lua/work.lua`,
//! kept beside the topic (so that [`EmbeddedBroker::clear`] loses it, as a Redis restart
//! without persistence would).

use std::collections::BTreeMap;

use super::EmbeddedBroker;
use crate::broker::work::{ClaimArgs, Claimed, Grant, GroupRecord, JobRecord, Op, OpResult};
use crate::clock;
use crate::position::Epoch;

/// One group's state.
#[derive(Debug, Default)]
pub(super) struct GroupState {
    epoch: Option<Epoch>,
    /// The epoch this group continued from and the current epoch's first offset (see
    /// `ClaimArgs::continues`): outcomes of that epoch below the boundary still count.
    continued: Option<(Epoch, u64)>,
    next: u64,
    acked: u64,
    dead: u64,
    lost: u64,
    resets: u64,
    dlq: String,
    /// Offset to record; a record is due (may be handed out) once its `d` has passed.
    jobs: BTreeMap<u64, JobRecord>,
    /// Holder to expiry.
    holders: BTreeMap<String, u64>,
    /// (offset, holder, attempt) acked or dead-lettered recently, to when (see `work.lua`).
    done: BTreeMap<(u64, String, u32), u64>,
    /// Order key to the offset holding it.
    keys: BTreeMap<String, u64>,
}

/// How long a finished attempt is remembered.
const DONE_KEEP_MS: u64 = 600_000;

impl GroupState {
    fn alive(&self, holder: &str, now: u64) -> bool {
        self.holders.get(holder).is_some_and(|exp| *exp >= now)
    }

    fn release(&mut self, holder: &str, why: &str, now: u64) {
        self.holders.remove(holder);
        for r in self.jobs.values_mut() {
            if r.h == holder && (r.s == "run" || r.s == "dead") {
                r.h.clear();
                if r.s == "run" {
                    r.e = why.to_string();
                }
                r.d = now;
            }
        }
    }

    /// Removes a finished record; its order key passes to the lowest offset blocked on it.
    fn drop_job(&mut self, offset: u64, now: u64) {
        let Some(r) = self.jobs.remove(&offset) else {
            return;
        };
        if r.k.is_empty() || self.keys.get(&r.k) != Some(&offset) {
            return;
        }
        let next = self
            .jobs
            .iter_mut()
            .find(|(_, b)| b.s == "blocked" && b.k == r.k);
        match next {
            Some((o, b)) => {
                b.s = "wait".into();
                b.d = now;
                self.keys.insert(r.k, *o);
            }
            None => {
                self.keys.remove(&r.k);
            }
        }
    }

    fn reap(&mut self, now: u64) {
        let gone: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, exp)| **exp < now)
            .map(|(h, _)| h.clone())
            .take(100)
            .collect();
        for h in gone {
            self.release(&h, &format!("member {h} expired"), now);
        }
    }
}

impl EmbeddedBroker {
    fn with_group<T>(&self, topic: &str, group: &str, f: impl FnOnce(&mut GroupState) -> T) -> T {
        let mut topics = self.topics();
        let g = topics
            .entry(topic.to_string())
            .or_default()
            .groups
            .entry(group.to_string())
            .or_default();
        f(g)
    }

    pub(crate) fn work_register(
        &self,
        topic: &str,
        group: &str,
        id: &str,
        ttl_ms: u64,
        dlq: &str,
    ) -> String {
        let now = clock::now_ms();
        let holder = format!("{id}#{}", clock::now_us());
        self.with_group(topic, group, |g| {
            let prefix = format!("{id}#");
            let old: Vec<String> = g
                .holders
                .keys()
                .filter(|h| h.starts_with(&prefix))
                .cloned()
                .collect();
            for h in old {
                g.release(&h, &format!("member {h} restarted"), now);
            }
            g.holders.insert(holder.clone(), now + ttl_ms);
            g.dlq = dlq.to_string();
        });
        holder
    }

    pub(crate) fn work_heartbeat(&self, topic: &str, group: &str, holder: &str, ttl: u64) -> bool {
        let now = clock::now_ms();
        self.with_group(topic, group, |g| {
            if g.alive(holder, now) {
                g.holders.insert(holder.to_string(), now + ttl);
                return true;
            }
            if g.holders.contains_key(holder) {
                g.release(holder, &format!("member {holder} expired"), now);
            }
            false
        })
    }

    pub(crate) fn work_leave(&self, topic: &str, group: &str, holder: &str) {
        let now = clock::now_ms();
        self.with_group(topic, group, |g| {
            g.release(holder, &format!("member {holder} left"), now)
        });
    }

    pub(crate) fn work_claim(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        a: ClaimArgs,
    ) -> Claimed {
        let now = clock::now_ms();
        self.with_group(topic, group, |g| {
            if !g.alive(holder, now) {
                return Claimed::Gone;
            }
            g.holders.insert(holder.to_string(), now + a.ttl_ms);
            let mut reset = false;
            match g.epoch {
                None => {
                    g.epoch = Some(a.epoch);
                    g.next = a.start;
                }
                Some(cur) if a.epoch > cur && a.continues.is_some_and(|(prev, _)| prev == cur) => {
                    let boundary = a.continues.map_or(0, |(_, b)| b);
                    let lost: Vec<u64> = g.jobs.range(boundary..).map(|(o, _)| *o).collect();
                    reset = !lost.is_empty() || g.next > boundary;
                    for o in lost {
                        g.drop_job(o, now);
                    }
                    g.next = g.next.min(boundary);
                    g.epoch = Some(a.epoch);
                    g.continued = Some((cur, boundary));
                    if reset {
                        g.resets += 1;
                    }
                }
                Some(cur) if a.epoch > cur => {
                    g.continued = None;
                    g.jobs.clear();
                    g.done.clear();
                    g.keys.clear();
                    g.epoch = Some(a.epoch);
                    g.next = a.first;
                    g.resets += 1;
                    reset = true;
                }
                Some(cur) if a.epoch < cur => return Claimed::OldEpoch,
                Some(_) => {}
            }
            g.reap(now);
            let mut ready: Vec<(u64, u64)> = g
                .jobs
                .iter()
                .filter(|(_, r)| r.d <= now)
                .map(|(o, r)| (r.d, *o))
                .collect();
            ready.sort_unstable();
            let mut grants = Vec::new();
            for (_, offset) in ready.into_iter().take(a.max) {
                let Some(r) = g.jobs.get_mut(&offset) else {
                    continue;
                };
                if r.s == "run" && !r.h.is_empty() {
                    r.e = "lease expired".into();
                }
                if r.s != "dead" && r.a >= a.max_deliveries {
                    r.s = "dead".into();
                }
                r.h = holder.to_string();
                r.d = now + a.lease_ms;
                let dead = r.s == "dead";
                if !dead {
                    r.s = "run".into();
                    r.a += 1;
                }
                grants.push(Grant {
                    offset,
                    attempt: r.a,
                    dead,
                    error: r.e.clone(),
                });
            }
            let mut lost = 0;
            if g.next < a.first {
                lost = a.first - g.next;
                g.lost += lost;
                g.next = a.first;
            }
            let upto = match &a.ordered {
                None => Some(a.last),
                Some((from, _)) if g.next < *from => None,
                Some((from, keys)) => {
                    Some(a.last.min((from + keys.len() as u64).saturating_sub(1)))
                }
            };
            while grants.len() < a.max && upto.is_some_and(|u| g.next <= u) {
                let o = g.next;
                g.next += 1;
                let key = match &a.ordered {
                    Some((from, keys)) => keys
                        .get(usize::try_from(o - from).unwrap_or(usize::MAX))
                        .cloned()
                        .unwrap_or_default(),
                    None => String::new(),
                };
                let mut r = JobRecord {
                    s: "run".into(),
                    a: 1,
                    h: holder.to_string(),
                    d: now + a.lease_ms,
                    t: now,
                    e: String::new(),
                    k: key.clone(),
                };
                if !key.is_empty() && g.keys.contains_key(&key) {
                    r.s = "blocked".into();
                    r.a = 0;
                    r.h.clear();
                    r.d = u64::MAX;
                    g.jobs.insert(o, r);
                    continue;
                }
                if !key.is_empty() {
                    g.keys.insert(key, o);
                }
                g.jobs.insert(o, r);
                grants.push(Grant {
                    offset: o,
                    attempt: 1,
                    dead: false,
                    error: String::new(),
                });
            }
            Claimed::Granted {
                now_ms: now,
                reset,
                lost,
                next: g.next,
                grants,
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn work_outcome(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        epoch: Epoch,
        offset: u64,
        attempt: u32,
        op: &Op,
    ) -> OpResult {
        let now = clock::now_ms();
        self.with_group(topic, group, |g| {
            let continued = g
                .continued
                .is_some_and(|(prev, boundary)| prev == epoch && offset < boundary);
            if g.epoch != Some(epoch) && !continued {
                return OpResult::Stale;
            }
            let tag = (offset, holder.to_string(), attempt);
            if matches!(op, Op::Ack | Op::DeadDone) && g.done.contains_key(&tag) {
                return OpResult::Ok;
            }
            let finished = |g: &mut GroupState| {
                g.done.retain(|_, at| *at + DONE_KEEP_MS >= now);
                g.done.insert(tag.clone(), now);
            };
            let Some(r) = g.jobs.get_mut(&offset) else {
                return OpResult::Stale;
            };
            if r.h != holder || r.a != attempt {
                return OpResult::Stale;
            }
            match op {
                Op::DeadDone => {
                    if r.s != "dead" {
                        return OpResult::Stale;
                    }
                    g.drop_job(offset, now);
                    g.dead += 1;
                    finished(g);
                    return OpResult::Ok;
                }
                Op::Lost => {
                    g.drop_job(offset, now);
                    g.lost += 1;
                    return OpResult::Ok;
                }
                _ => {}
            }
            if r.s != "run" {
                return OpResult::Stale;
            }
            match op {
                Op::Ack => {
                    g.drop_job(offset, now);
                    g.acked += 1;
                    finished(g);
                    OpResult::Ok
                }
                Op::Nak {
                    delay_ms,
                    max_deliveries,
                    lease_ms,
                    error,
                } => {
                    r.e = error.clone();
                    if r.a >= *max_deliveries {
                        r.s = "dead".into();
                        r.d = now + lease_ms;
                        return OpResult::Dead;
                    }
                    r.s = "wait".into();
                    r.h.clear();
                    r.d = now + delay_ms;
                    OpResult::Ok
                }
                Op::Progress { lease_ms } => {
                    r.d = now + lease_ms;
                    OpResult::Ok
                }
                Op::Defer { until_ms } => {
                    r.s = "wait".into();
                    r.h.clear();
                    r.a = r.a.saturating_sub(1);
                    r.d = *until_ms;
                    OpResult::Ok
                }
                Op::Term { lease_ms, error } => {
                    r.s = "dead".into();
                    r.e = error.clone();
                    r.d = now + lease_ms;
                    OpResult::Dead
                }
                Op::DeadDone | Op::Lost => OpResult::Stale,
            }
        })
    }

    pub(crate) fn work_state(&self, topic: &str, group: &str) -> Option<GroupRecord> {
        let topics = self.topics();
        let g = topics.get(topic)?.groups.get(group)?;
        Some(GroupRecord {
            now_ms: clock::now_ms(),
            epoch: g.epoch,
            next: g.next,
            acked: g.acked,
            dead: g.dead,
            lost: g.lost,
            resets: g.resets,
            dlq: g.dlq.clone(),
            jobs: g.jobs.iter().map(|(o, r)| (*o, r.clone())).collect(),
            holders: g.holders.iter().map(|(h, e)| (h.clone(), *e)).collect(),
        })
    }

    pub(crate) fn work_groups(&self, topic: &str) -> Vec<String> {
        self.topics()
            .get(topic)
            .map(|t| t.groups.keys().cloned().collect())
            .unwrap_or_default()
    }
}
