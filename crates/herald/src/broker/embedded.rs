//! The embedded broker: topics kept in this process's memory, with the same semantics as
//! Redis (offsets, epochs, dedup window, retention, cursors, live notifications).
//!
//! Several [`Herald`](crate::Herald) handles built on clones of one [`EmbeddedBroker`] behave
//! like several nodes sharing one Redis.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

mod map;
mod members;
mod work;

use super::history::{EpochStart, History};
use super::{cursor_infos, LiveEvent, Placed, ReadResult, Slot};
use crate::clock;
use crate::cursor::CursorCommit;
use crate::envelope::Notification;
use crate::error::{Error, Result};
use crate::inspect::TopicInfo;
use crate::message::{Entry, Message};
use crate::position::{Epoch, Position};
use crate::topic::{SettingsChange, TopicSettings};

/// How many notifications a live feed may fall behind before it is told it lost some.
const LIVE_CAPACITY: usize = 4096;

/// An in-process broker. Cheap to clone: clones share the same topics.
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Mutex<HashMap<String, TopicLog>>,
    live: broadcast::Sender<Arc<Notification>>,
    /// Bumped by [`EmbeddedBroker::drop_live_feeds`]: every feed opened before ends.
    feeds_dropped: watch::Sender<u64>,
    defaults: TopicSettings,
}

#[derive(Default)]
struct TopicLog {
    epoch: Option<Epoch>,
    last: u64,
    log: VecDeque<Entry>,
    settings: Option<TopicSettings>,
    dedup: HashMap<String, (u64, Instant)>,
    dedup_expiry: VecDeque<(Instant, String)>,
    cursors: BTreeMap<String, CursorCommit>,
    /// Member records of the group whose event topic this is (see `broker::members`).
    members: BTreeMap<String, super::members::MemberRecord>,
    /// Where the epochs begin, oldest first (at most `HISTORY_LEN`).
    history: Vec<EpochStart>,
    /// Set by [`EmbeddedBroker::fail_over`]: the next publish is by another "server" and
    /// continues the log under a new epoch, as on Redis.
    writer_changed: bool,
    /// Work groups of this topic (see `broker::work`).
    groups: BTreeMap<String, work::GroupState>,
    /// The replicated map whose topic this is (see `crate::map`).
    map: map::MapState,
}

/// How many epochs a topic's history keeps.
const HISTORY_LEN: usize = 64;

impl TopicLog {
    /// Drops the entries after `surviving_last` (and their dedup keys).
    fn truncate(&mut self, surviving_last: u64) {
        if surviving_last < self.last {
            self.last = surviving_last;
            while self.log.back().is_some_and(|e| e.offset > surviving_last) {
                self.log.pop_back();
            }
            self.dedup.retain(|_, (o, _)| *o <= surviving_last);
        }
    }

    /// Opens a new epoch continuing the log from `last + 1`.
    fn continue_log(&mut self, lost: Option<u64>) -> Epoch {
        let old = self.epoch.unwrap_or(0);
        if !self.history.iter().any(|s| s.epoch == old) {
            self.history.push(EpochStart {
                epoch: old,
                first: 1,
                lost: 0,
            });
        }
        if let Some(lost) = lost {
            if let Some(s) = self.history.iter_mut().find(|s| s.epoch == old) {
                s.lost = s.lost.max(lost);
            }
        }
        let e = clock::now_us().max(old + 1);
        self.history.push(EpochStart {
            epoch: e,
            first: self.last + 1,
            lost: 0,
        });
        if self.history.len() > HISTORY_LEN {
            let extra = self.history.len() - HISTORY_LEN;
            self.history.drain(..extra);
        }
        self.epoch = Some(e);
        self.writer_changed = false;
        e
    }
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// A new, empty broker with the default topic settings.
    pub fn new() -> Self {
        Self::with_defaults(TopicSettings::default())
    }

    /// A new, empty broker whose new topics take `defaults`.
    pub fn with_defaults(defaults: TopicSettings) -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        EmbeddedBroker {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                live,
                feeds_dropped: watch::Sender::new(0),
                defaults,
            }),
        }
    }

    /// Forgets every topic, as a Redis restart without persistence would: the next publish
    /// to a topic starts a new epoch and its subscribers receive a `Reset`.
    pub fn clear(&self) {
        self.topics().clear();
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, TopicLog>> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn publish(
        &self,
        topic: &str,
        node: &str,
        messages: &[(String, &Message)],
        floor: Option<Position>,
    ) -> Result<(Epoch, Vec<Placed>)> {
        let mut topics = self.topics();
        self.publish_in(&mut topics, topic, node, messages, floor)
    }

    /// `publish` with the topics already locked (a map change publishes under the same lock).
    fn publish_in(
        &self,
        topics: &mut HashMap<String, TopicLog>,
        topic: &str,
        node: &str,
        messages: &[(String, &Message)],
        floor: Option<Position>,
    ) -> Result<(Epoch, Vec<Placed>)> {
        let log = topics.entry(topic.to_string()).or_default();
        let settings = *log.settings.get_or_insert(self.inner.defaults);
        if let Some((_, m)) = messages
            .iter()
            .find(|(_, m)| m.payload.len() as u64 > settings.max_size)
        {
            return Err(Error::MessageTooLarge {
                topic: topic.to_string(),
                size: m.payload.len(),
                limit: settings.max_size as usize,
            });
        }
        // The publisher's floor: a log that went back below it under its epoch continues under
        // a new one, the floor recorded as lost (as `lua/publish.lua` does).
        let floor_lost = floor
            .filter(|f| log.epoch == Some(f.epoch) && log.last < f.offset)
            .map(|f| f.offset);
        let epoch = match log.epoch {
            Some(_) if log.writer_changed || floor_lost.is_some() => log.continue_log(floor_lost),
            Some(e) => e,
            None => {
                let e = clock::now_us();
                log.epoch = Some(e);
                log.last = 0;
                log.log.clear();
                log.dedup.clear();
                log.dedup_expiry.clear();
                log.history = vec![EpochStart {
                    epoch: e,
                    first: 1,
                    lost: 0,
                }];
                log.writer_changed = false;
                e
            }
        };
        let now = Instant::now();
        while log.dedup_expiry.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((t, key)) = log.dedup_expiry.pop_front() {
                if log.dedup.get(&key).is_some_and(|(_, exp)| *exp == t) {
                    log.dedup.remove(&key);
                }
            }
        }
        let window = Duration::from_millis(settings.dedup_window_ms);
        let published_at_ms = clock::now_ms();
        let mut placed = Vec::with_capacity(messages.len());
        let mut fresh = Vec::new();
        for (key, message) in messages {
            if let Some((offset, _)) = log.dedup.get(key) {
                let epoch = History::new(log.history.clone()).epoch_at(*offset, epoch);
                placed.push(Placed {
                    offset: *offset,
                    duplicate: true,
                    epoch: (epoch != log.epoch.unwrap_or(epoch)).then_some(epoch),
                });
                continue;
            }
            log.last += 1;
            let entry = Entry {
                offset: log.last,
                key: key.clone(),
                node: node.to_string(),
                published_at_ms,
                headers: message.headers.clone(),
                payload: message.payload.clone(),
            };
            log.log.push_back(entry.clone());
            fresh.push(entry);
            let expiry = now + window;
            log.dedup.insert(key.clone(), (log.last, expiry));
            log.dedup_expiry.push_back((expiry, key.clone()));
            placed.push(Placed::new(log.last));
        }
        while log.log.len() as u64 > settings.max_len {
            log.log.pop_front();
        }
        if settings.max_age_ms > 0 {
            let cutoff = published_at_ms.saturating_sub(settings.max_age_ms);
            while log.log.front().is_some_and(|e| e.published_at_ms < cutoff) {
                log.log.pop_front();
            }
        }
        if !fresh.is_empty() {
            // No receivers is fine: nobody is subscribed.
            let _ = self.inner.live.send(Arc::new(Notification {
                topic: topic.to_string(),
                epoch,
                entries: fresh,
            }));
        }
        Ok((epoch, placed))
    }

    pub(crate) fn read(&self, topic: &str, from: u64, limit: usize) -> ReadResult {
        let topics = self.topics();
        let Some(log) = topics.get(topic).filter(|l| l.epoch.is_some()) else {
            return ReadResult {
                complete: true,
                ..ReadResult::default()
            };
        };
        let first = log.log.front().map_or(0, |e| e.offset);
        let skip = from.saturating_sub(first.max(1)) as usize;
        let slots: Vec<Slot> = log
            .log
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .map(Slot::Entry)
            .collect();
        let complete = slots.len() < limit;
        ReadResult {
            epoch: log.epoch,
            last: log.last,
            first,
            slots,
            complete,
            history: History::new(log.history.clone()),
        }
    }

    /// Test hook: what a failover to a replica that had received the topic's log up to
    /// offset `surviving_last` does (the partial sibling of [`clear`](Self::clear)): the later
    /// entries are gone, and the next publish, by another "server", continues the log under a
    /// new epoch from `surviving_last + 1`, as `lua/publish.lua` does on Redis.
    #[doc(hidden)]
    pub fn fail_over(&self, topic: &str, surviving_last: u64) {
        let mut topics = self.topics();
        let Some(log) = topics.get_mut(topic).filter(|l| l.epoch.is_some()) else {
            return;
        };
        log.truncate(surviving_last);
        log.writer_changed = true;
    }

    /// Test hook: the log loses its entries after `surviving_last` but keeps its epoch and
    /// writer (on Redis: the log went back under one writer). Only a party that saw a lost
    /// offset can tell: the next publish of a handle acknowledged past `surviving_last`
    /// continues the log under a new epoch, other publishes reuse the offsets.
    #[doc(hidden)]
    pub fn lose_tail(&self, topic: &str, surviving_last: u64) {
        let mut topics = self.topics();
        if let Some(log) = topics.get_mut(topic).filter(|l| l.epoch.is_some()) {
            log.truncate(surviving_last);
        }
    }

    /// Records a loss, as `lua/lost.lua` does on Redis.
    pub(crate) fn report_lost(&self, topic: &str, seen: Position) -> bool {
        let mut topics = self.topics();
        let Some(log) = topics.get_mut(topic).filter(|l| l.epoch.is_some()) else {
            return false;
        };
        if log.epoch == Some(seen.epoch) {
            if log.last >= seen.offset {
                return false;
            }
            log.continue_log(Some(seen.offset));
            return true;
        }
        let history = History::new(log.history.clone());
        if history.get(seen.epoch).is_none() {
            // An epoch the history does not hold, older than one it holds: none of its
            // offsets survived; recorded as an empty epoch right before that one.
            let Some(next) = history.0.iter().find(|s| s.epoch > seen.epoch).copied() else {
                return false;
            };
            if seen.offset < next.first {
                return false;
            }
            log.history.push(EpochStart {
                epoch: seen.epoch,
                first: next.first,
                lost: seen.offset,
            });
            log.history.sort_by_key(|s| s.epoch);
            if log.history.len() > HISTORY_LEN {
                let extra = log.history.len() - HISTORY_LEN;
                log.history.drain(..extra);
            }
            return true;
        }
        match history.end_of(seen.epoch) {
            Some(end) if seen.offset > end => {
                match log.history.iter_mut().find(|s| s.epoch == seen.epoch) {
                    Some(s) if s.lost < seen.offset => {
                        s.lost = seen.offset;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// Test hook: every live feed open now ends, as if its Redis connection dropped;
    /// notifications not yet taken from it are lost with it. Subscriptions reconnect and
    /// catch up from history.
    #[doc(hidden)]
    pub fn drop_live_feeds(&self) {
        self.inner.feeds_dropped.send_modify(|n| *n += 1);
    }

    pub(crate) fn live(&self, topics: &[String]) -> EmbeddedFeed {
        EmbeddedFeed {
            dropped: self.inner.feeds_dropped.subscribe(),
            rx: self.inner.live.subscribe(),
            topics: topics.iter().cloned().collect(),
        }
    }

    pub(crate) fn get_cursor(&self, topic: &str, name: &str) -> Option<CursorCommit> {
        self.topics()
            .get(topic)
            .and_then(|l| l.cursors.get(name).copied())
    }

    pub(crate) fn commit(&self, topic: &str, name: &str, pos: CursorCommit) {
        self.topics()
            .entry(topic.to_string())
            .or_default()
            .cursors
            .insert(name.to_string(), pos);
    }

    pub(crate) fn configure(&self, topic: &str, change: &SettingsChange) -> Result<TopicSettings> {
        let mut topics = self.topics();
        let log = topics.entry(topic.to_string()).or_default();
        let settings = change.apply(log.settings.unwrap_or(self.inner.defaults));
        settings.validate()?;
        log.settings = Some(settings);
        Ok(settings)
    }

    pub(crate) fn inspect(&self, topic: &str) -> TopicInfo {
        let topics = self.topics();
        let log = topics.get(topic);
        let epoch = log.and_then(|l| l.epoch);
        let last = if epoch.is_some() {
            log.map_or(0, |l| l.last)
        } else {
            0
        };
        TopicInfo {
            topic: topic.to_string(),
            epoch,
            first_offset: log.and_then(|l| l.log.front()).map_or(0, |e| e.offset),
            last_offset: last,
            length: log.map_or(0, |l| l.log.len() as u64),
            settings: log.and_then(|l| l.settings).unwrap_or(self.inner.defaults),
            configured: log.is_some_and(|l| l.settings.is_some()),
            cursors: cursor_infos(
                epoch,
                last,
                log.map(|l| l.cursors.clone()).unwrap_or_default(),
            ),
        }
    }
}

/// A live feed from the embedded broker.
pub(crate) struct EmbeddedFeed {
    rx: broadcast::Receiver<Arc<Notification>>,
    topics: HashSet<String>,
    /// Changes when [`EmbeddedBroker::drop_live_feeds`] ends this feed.
    dropped: watch::Receiver<u64>,
}

impl EmbeddedFeed {
    pub(crate) async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            if self.dropped.has_changed().unwrap_or(true) {
                return None;
            }
            let received = tokio::select! {
                biased;
                _ = self.dropped.changed() => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(n) if self.topics.contains(&n.topic) => {
                    return Some(LiveEvent::Notification((*n).clone()))
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(LiveEvent::Lost),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
