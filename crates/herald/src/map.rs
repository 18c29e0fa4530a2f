//! Replicated maps: a key-value map that every node holds the same, with compare-and-set and a
//! watch stream (`docs/PROTOCOL.md`, "Replicated maps (v1)").
//!
//! A map `M` is built on the ordinary topic `__map/M`: every change (a put or a delete of one
//! key) is one message of that topic (ordered, deduplicated, recoverable, visible to
//! `herald tail __map/M`), and the map's current state, one value and revision per key, lives
//! next to the topic (same `{topic}` hash tag in Redis) and is written in the same atomic
//! step as the change's append. So a snapshot read at revision R and the topic's messages after
//! R are always consistent, and of two compare-and-set calls on the same expected revision
//! exactly one wins.
//!
//! ## Revisions are positions
//! The **revision** of a change is the [`Position`] (epoch and offset) of its message, and a
//! map's revision is that of the last change applied. Offsets alone are not enough: when Redis
//! loses its newest writes (a failover, a restart without `appendfsync always`) the topic
//! continues under a new epoch from the last surviving offset + 1, so one offset could name a
//! lost state and a new one; a restart without persistence starts over at offset 1. A position
//! names exactly one state, always.
//!
//! Every change message also carries the map's revision just before it (its *base*). A watcher
//! applies a change only when its base is the revision the watcher holds; anything else (a
//! change it cannot connect to its state, a `Gap`, a `Reset`) makes it read a fresh snapshot,
//! so a watcher never holds a state that the map never had.
//!
//! ## Keys and values
//! Keys are 1-[`MAX_MAP_KEY_LEN`] bytes of UTF-8 without control characters (U+0000-U+001F,
//! U+007F); values are bytes, at most the topic's `max_size` and the map's
//! [`MapLimits::max_value`]. Map names follow the topic alphabet (`__map/` + name is a topic).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Herald;
use crate::error::{Error, Result};
use crate::position::Position;
use crate::subscription::{Event, Start};
use crate::topic::validate_topic;

mod coalesce;
mod wait;
pub(crate) use coalesce::MapCoalescer;
pub use wait::{DeleteAndWait, PutAndWait};

/// The revision of a change or of a map: the position of the change's message.
pub type Revision = Position;

/// Longest accepted map key, in bytes.
pub const MAX_MAP_KEY_LEN: usize = 512;

/// The prefix of a map's topic.
pub const MAP_TOPIC_PREFIX: &str = "__map/";

/// The header that marks a message as a map change, and its version.
pub(crate) const MARK: &str = "herald-map";

/// What a compare-and-set expects of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key's current revision is this one.
    Revision(Revision),
    /// The key does not exist.
    Absent,
}

/// A key's value and the revision at which it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The revision of the change that wrote it.
    pub revision: Revision,
}

/// A map's whole state, read in one atomic step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapSnapshot {
    /// Every key with its value and revision.
    pub entries: BTreeMap<String, Versioned>,
    /// The map's revision (its last change); `None` for a map that never changed (or whose
    /// state Redis lost).
    pub revision: Option<Revision>,
}

/// Optional limits of one map, stored with it so that every node applies the same ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapLimits {
    /// Most keys the map may hold; a put of a new key beyond it is refused.
    pub max_keys: Option<u64>,
    /// Largest value, in bytes (the topic's `max_size` applies as well).
    pub max_value: Option<u64>,
}

/// Why a watch sent a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SnapshotReason {
    /// The watch started.
    Initial,
    /// The watcher could not follow the changes (it fell behind retention, missed changes
    /// across a reconnect, or met a change it could not connect to its state): this snapshot
    /// replaces its state.
    Resync,
    /// Redis lost writes (see [`MapEvent::Reset`]): this is the state after the loss.
    Reset,
}

/// What a [`MapWatch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapEvent {
    /// The whole state at `revision`: replace what you hold with it.
    Snapshot {
        /// Every key.
        entries: BTreeMap<String, Versioned>,
        /// The map's revision.
        revision: Option<Revision>,
        /// Why it was sent.
        reason: SnapshotReason,
    },
    /// `key` now holds `value`, written at `revision`.
    Changed {
        /// The key.
        key: String,
        /// Its new value.
        value: Bytes,
        /// The change's revision, the map's revision from now on.
        revision: Revision,
    },
    /// `key` was deleted at `revision`.
    Deleted {
        /// The key.
        key: String,
        /// The change's revision.
        revision: Revision,
    },
    /// Redis lost changes this watcher had applied (`last` is the revision it held): a
    /// snapshot of the new state follows.
    Reset {
        /// The revision the watcher held.
        last: Option<Revision>,
    },
}

/// The outcome of one change at the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied at this revision (`duplicate`: by an earlier attempt of the same call).
    Applied(Revision),
    /// The expectation did not hold; the key's current revision.
    Conflict(Option<Revision>),
    /// A delete of a key that does not exist: nothing appended.
    Absent,
    /// A limit refused it: (which, size, max).
    Limit(&'static str, u64, u64),
}

/// One change, as the broker applies it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) key: String,
    /// `None` for a delete.
    pub(crate) value: Option<Bytes>,
    pub(crate) expect: Option<Expect>,
    /// The change's idempotency key.
    pub(crate) idem: String,
}

/// A change decoded from a message of the map's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) key: String,
    /// `None` for a delete.
    pub(crate) value: Option<Bytes>,
    /// The map's revision before the change.
    pub(crate) base: Option<Revision>,
}

/// The text form of a revision in the map's keys and headers: `<epoch>:<offset>`.
pub(crate) fn rev_text(r: Option<Revision>) -> String {
    r.map(|r| r.to_string()).unwrap_or_default()
}

/// The headers of a change (the embedded broker's; `lua/map.lua` writes the same).
pub(crate) fn change_headers(key: &str, delete: bool, base: Option<Revision>) -> crate::Headers {
    let mut h = crate::Headers::new();
    h.insert(MARK.into(), "1".into());
    h.insert("op".into(), if delete { "del" } else { "put" }.into());
    h.insert("key".into(), key.into());
    h.insert("base".into(), rev_text(base));
    h
}

/// Decodes a map change; `None` for a message that is not one (someone published to the
/// map's topic directly): watchers skip those.
pub(crate) fn decode_change(d: &crate::Delivery) -> Option<Decoded> {
    if d.headers.get(MARK).map(String::as_str) != Some("1") {
        return None;
    }
    let key = d.headers.get("key")?.clone();
    let base = match d.headers.get("base").map(String::as_str) {
        None => return None,
        Some("") => None,
        Some(b) => Some(b.parse().ok()?),
    };
    let value = match d.headers.get("op").map(String::as_str) {
        Some("put") => Some(d.payload.clone()),
        Some("del") => None,
        _ => return None,
    };
    Some(Decoded { key, value, base })
}

/// Checks a map key: 1-[`MAX_MAP_KEY_LEN`] bytes of UTF-8 without control characters.
pub fn validate_map_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("it is empty".to_string())
    } else if key.len() > MAX_MAP_KEY_LEN {
        Some(format!("it is {} bytes long", key.len()))
    } else {
        key.char_indices()
            .find(|(_, c)| c.is_control() && (*c as u32) < 0x80)
            .map(|(i, c)| format!("byte {i} is the control character {c:?}"))
    };
    match reason {
        Some(reason) => Err(Error::InvalidMapKey {
            key: key.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A handle to one replicated map; see the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Map {
    herald: Herald,
    name: String,
    topic: String,
}

impl Herald {
    /// The replicated map `name` (its changes are the topic `__map/<name>`).
    pub fn map(&self, name: &str) -> Result<Map> {
        let topic = format!("{MAP_TOPIC_PREFIX}{name}");
        validate_topic(name)?;
        validate_topic(&topic)?;
        Ok(Map {
            herald: self.clone(),
            name: name.to_string(),
            topic,
        })
    }
}

impl Map {
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic that carries its changes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn change(&self, change: Change) -> Result<Outcome> {
        validate_map_key(&change.key)?;
        let key = change.key.clone();
        // Concurrent changes of this handle to this map travel in one broker call.
        let outcome = self.herald.map_change(&self.topic, change).await?;
        match outcome {
            Outcome::Conflict(current) => Err(Error::Conflict {
                map: self.name.clone(),
                key,
                current,
            }),
            Outcome::Limit(what, size, max) => Err(Error::MapLimit {
                map: self.name.clone(),
                what,
                size,
                max,
            }),
            other => Ok(other),
        }
    }

    fn put_change(&self, key: &str, value: &[u8], expect: Option<Expect>) -> Change {
        Change {
            key: key.to_string(),
            value: Some(Bytes::copy_from_slice(value)),
            expect,
            idem: self.herald.next_key(),
        }
    }

    /// Sets `key` to `value`; returns the change's revision.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<Revision> {
        let change = self.put_change(key, value.as_ref(), None);
        self.applied(self.change(change).await?)
    }

    /// Sets `key` to `value` only if `expect` holds; a lost race is [`Error::Conflict`] with
    /// the key's current revision.
    pub async fn put_if(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        expect: Expect,
    ) -> Result<Revision> {
        let change = self.put_change(key, value.as_ref(), Some(expect));
        self.applied(self.change(change).await?)
    }

    /// Deletes `key`; returns the change's revision, `None` when the key did not exist
    /// (nothing is appended then).
    pub async fn delete(&self, key: &str) -> Result<Option<Revision>> {
        self.delete_change(key, None).await
    }

    /// Deletes `key` only if its current revision is `revision`; else [`Error::Conflict`].
    pub async fn delete_if(&self, key: &str, revision: Revision) -> Result<Revision> {
        match self
            .delete_change(key, Some(Expect::Revision(revision)))
            .await?
        {
            Some(r) => Ok(r),
            None => Err(Error::Conflict {
                map: self.name.clone(),
                key: key.to_string(),
                current: None,
            }),
        }
    }

    async fn delete_change(&self, key: &str, expect: Option<Expect>) -> Result<Option<Revision>> {
        let change = Change {
            key: key.to_string(),
            value: None,
            expect,
            idem: self.herald.next_key(),
        };
        match self.change(change).await? {
            Outcome::Applied(r) => Ok(Some(r)),
            _ => Ok(None),
        }
    }

    fn applied(&self, outcome: Outcome) -> Result<Revision> {
        match outcome {
            Outcome::Applied(r) => Ok(r),
            other => Err(Error::Corrupt {
                topic: self.topic.clone(),
                detail: format!("unexpected map reply {other:?}"),
            }),
        }
    }

    /// `key`'s value and revision, `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_map_key(key)?;
        self.herald.broker().map_get(&self.topic, key).await
    }

    /// The whole map and its revision, read in one atomic step.
    pub async fn snapshot(&self) -> Result<MapSnapshot> {
        self.herald.broker().map_snapshot(&self.topic).await
    }

    /// The map's keys, in order.
    pub async fn keys(&self) -> Result<Vec<String>> {
        Ok(self.snapshot().await?.entries.into_keys().collect())
    }

    /// Stores the map's limits (every node applies them to later puts).
    pub async fn set_limits(&self, limits: MapLimits) -> Result<()> {
        self.herald
            .broker()
            .map_set_limits(&self.topic, limits)
            .await
    }

    /// Watches the map: a [`MapEvent::Snapshot`] first, then every change after it in order;
    /// never a gap (see [`MapEvent`]).
    pub async fn watch(&self) -> Result<MapWatch> {
        let snapshot = self.snapshot().await?;
        let (tx, rx) = mpsc::channel(256);
        let map = self.clone();
        let task = tokio::spawn(async move { map.run_watch(snapshot, tx).await });
        Ok(MapWatch {
            rx,
            task,
            applied: None,
        })
    }

    async fn run_watch(self, first: MapSnapshot, tx: mpsc::Sender<Result<MapEvent>>) {
        let mut snapshot = first;
        let mut reason = SnapshotReason::Initial;
        // Bounded by the watch's life: each turn starts a subscription after a snapshot.
        loop {
            let mut current = snapshot.revision;
            let start = Start::Offset(current.map_or(1, |r| r.offset + 1));
            let sub = self
                .herald
                .subscribe([self.topic.clone()])
                .from(start)
                .await;
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let event = MapEvent::Snapshot {
                entries: std::mem::take(&mut snapshot.entries),
                revision: current,
                reason,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
            // Follow the topic until it cannot be followed: then a fresh snapshot.
            let next = loop {
                let event = tokio::select! {
                    e = sub.next() => e,
                    _ = tx.closed() => return,
                };
                let out = match event {
                    Some(Ok(Event::Message(d))) => {
                        let Some(change) = decode_change(&d) else {
                            continue; // not a map change
                        };
                        if current.is_some_and(|c| d.position <= c) {
                            continue; // in the snapshot already
                        }
                        if change.base != current {
                            break SnapshotReason::Resync;
                        }
                        current = Some(d.position);
                        match change.value {
                            Some(value) => MapEvent::Changed {
                                key: change.key,
                                value,
                                revision: d.position,
                            },
                            None => MapEvent::Deleted {
                                key: change.key,
                                revision: d.position,
                            },
                        }
                    }
                    Some(Ok(Event::Gap { .. })) => {
                        // Only changes count: a gap over foreign messages changes nothing.
                        match self.snapshot().await {
                            Ok(s) if s.revision == current => continue,
                            _ => break SnapshotReason::Resync,
                        }
                    }
                    Some(Ok(Event::Reset { .. })) => {
                        let reset = MapEvent::Reset { last: current };
                        if tx.send(Ok(reset)).await.is_err() {
                            return;
                        }
                        break SnapshotReason::Reset;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    None => return,
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            };
            drop(sub);
            reason = next;
            snapshot = match self.read_snapshot_retrying(&tx).await {
                Some(s) => s,
                None => return,
            };
        }
    }

    /// A snapshot for a resync, retried while the broker fails transiently; `None` when the
    /// watcher is gone or the failure is permanent (then sent to the watcher).
    async fn read_snapshot_retrying(
        &self,
        tx: &mpsc::Sender<Result<MapEvent>>,
    ) -> Option<MapSnapshot> {
        let mut backoff = crate::retry::Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(1),
        );
        let mut attempt = 0u32;
        loop {
            match self.snapshot().await {
                Ok(s) => return Some(s),
                Err(e) if matches!(e.kind(), crate::ErrorKind::Unreachable) && attempt < 600 => {
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_pause()) => {}
                        _ = tx.closed() => return None,
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return None;
                }
            }
        }
    }
}

/// The stream of a map's [`MapEvent`]s; see [`Map::watch`]. Dropping it stops the watch.
pub struct MapWatch {
    rx: mpsc::Receiver<Result<MapEvent>>,
    task: JoinHandle<()>,
    /// Set by [`Map::watch_as`]: reports what the consumer applied.
    applied: Option<wait::AppliedReporter>,
}

impl std::fmt::Debug for MapWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapWatch").finish_non_exhaustive()
    }
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(a) = &self.applied {
            a.stop();
        }
    }
}

impl Stream for MapWatch {
    type Item = Result<MapEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Asking for the next event means the previous one was applied.
        if let Some(a) = &mut self.applied {
            a.consumer_returned();
        }
        let polled = self.rx.poll_recv(cx);
        if let (Some(a), Poll::Ready(Some(Ok(event)))) = (&mut self.applied, &polled) {
            a.delivered(event);
        }
        polled
    }
}

/// Applies a watch event to a map held by the caller (a helper for applications and tests).
pub fn apply(state: &mut BTreeMap<String, Bytes>, event: &MapEvent) -> Option<Option<Revision>> {
    match event {
        MapEvent::Snapshot {
            entries, revision, ..
        } => {
            *state = entries
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect();
            Some(*revision)
        }
        MapEvent::Changed {
            key,
            value,
            revision,
        } => {
            state.insert(key.clone(), value.clone());
            Some(Some(*revision))
        }
        MapEvent::Deleted { key, revision } => {
            state.remove(key);
            Some(Some(*revision))
        }
        MapEvent::Reset { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keys() {
        assert!(validate_map_key("feature/dark-mode").is_ok());
        assert!(validate_map_key("ключ ✓").is_ok());
        assert!(validate_map_key("").is_err());
        assert!(validate_map_key("a\nb").is_err());
        assert!(validate_map_key(&"k".repeat(MAX_MAP_KEY_LEN + 1)).is_err());
    }
}
