//! Membership (docs/DESIGN.md, Membership): nodes join named groups with metadata, heartbeat in
//! the background, and expire when they stop; any node lists the live members and watches
//! `Joined`, `Left` and `Expired` events.
//!
//! ```
//! use futures::StreamExt;
//! use herald::{Herald, MemberEvent};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! let node = Herald::builder().node_id("web-1").connect().await?;
//! let mut watch = node.watch_members("web").await?;
//! let member = node
//!     .join("web")
//!     .meta("address", "10.0.0.1:8080")
//!     .ttl(Duration::from_secs(5))
//!     .await?;
//! assert_eq!(node.members("web").await?.len(), 1);
//! // The first event of a watch is the membership it started with, then the changes.
//! assert!(matches!(watch.next().await, Some(Ok(MemberEvent::Snapshot(_)))));
//! assert!(matches!(watch.next().await, Some(Ok(MemberEvent::Joined(m))) if m.id == "web-1"));
//! member.leave().await?;
//! assert!(node.members("web").await?.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! ## How it works
//! - The records of group `G` live in the broker beside the topic `__members/G` (in Redis:
//!   the hash `<ns>:{__members/G}:members` and the sorted set `<ns>:{__members/G}:expiry`,
//!   changed only by `lua/members.lua`, timed by the Redis server's clock; see
//!   `docs/PROTOCOL.md`). Listing reads them, so a node that was away learns the current
//!   membership, not a replay of history.
//! - Every change is also published on the ordinary topic `__members/G`, so membership events
//!   have the ordering and no-silent-loss guarantees of any topic. Each incarnation of a
//!   member (identified by its `joined_at_ms`) is announced with the idempotency key
//!   `join:<id>:<joined_at_ms>` and ended with `gone:<id>:<joined_at_ms>`: however many nodes
//!   notice an expiry, and whether the member also left, watchers see one `Joined` and one
//!   `Left` or `Expired` per incarnation.
//! - Expiry: every member's heartbeat task also reaps the group: it publishes `Expired` for
//!   each expired member first and removes the record afterwards (conditionally on the
//!   incarnation), so a crash in between only repeats the publish, which dedup absorbs.
//! - A member whose record vanished (Redis restarted without persistence, or it was reaped
//!   after a long pause) joins again at its next heartbeat, as a new incarnation.
//!
//! ## Acknowledgement convention
//! A member acknowledges messages of a topic by committing a durable cursor **named after its
//! member id** on that topic (subscribe with `.durable(member.id())`); see
//! [`Herald::wait_for_acks`](crate::Herald::wait_for_acks).

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broker::members::{JoinStatus, MemberRecord};
use crate::client::Herald;
use crate::error::{Error, Result};
use crate::message::{Delivery, Message};
use crate::subscription::{Event, Start, Subscription};
use crate::topic::{validate_topic, MAX_TOPIC_LEN};

/// Prefix of the topic that carries a group's membership events: `__members/<group>`.
pub const MEMBERS_TOPIC_PREFIX: &str = "__members/";
/// A member's default time to live: it expires this long after its last heartbeat.
pub const DEFAULT_MEMBER_TTL: Duration = Duration::from_secs(5);
/// The shortest accepted time to live.
pub const MIN_MEMBER_TTL: Duration = Duration::from_millis(100);
/// The shortest accepted heartbeat interval.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// How many expired members one reaping pass handles at most.
const REAP_BATCH: usize = 100;

/// The topic carrying the membership events of `group`.
pub fn members_topic(group: &str) -> String {
    format!("{MEMBERS_TOPIC_PREFIX}{group}")
}

/// Checks a group name: 1-190 bytes of the topic alphabet (`A-Z a-z 0-9 . _ - / :`).
pub fn validate_group(group: &str) -> Result<()> {
    let max = MAX_TOPIC_LEN - MEMBERS_TOPIC_PREFIX.len();
    let invalid = || Error::InvalidGroup {
        name: group.to_string(),
        max,
    };
    if group.is_empty() || group.len() > max {
        return Err(invalid());
    }
    validate_topic(&members_topic(group)).map_err(|_| invalid())
}

/// Checks a member id: 1-200 bytes of the topic alphabet (it names the member's cursors).
pub fn validate_member_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_TOPIC_LEN || !id.bytes().all(crate::topic::is_name_byte) {
        return Err(Error::InvalidMemberId { id: id.to_string() });
    }
    Ok(())
}

/// A live (or, in events, a former) member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The group.
    pub group: String,
    /// The member's id (also the name of its durable cursors).
    pub id: String,
    /// Its metadata (address, version, ...).
    pub meta: BTreeMap<String, String>,
    /// When this incarnation joined (broker clock, milliseconds since the Unix epoch).
    pub joined_at_ms: u64,
    /// Its last heartbeat (broker clock).
    pub heartbeat_ms: u64,
    /// When it expires unless it heartbeats again (broker clock).
    pub expires_at_ms: u64,
}

impl Member {
    fn from_record(group: &str, id: &str, r: MemberRecord) -> Self {
        Member {
            group: group.to_string(),
            id: id.to_string(),
            meta: r.meta,
            joined_at_ms: r.joined_at_ms,
            heartbeat_ms: r.heartbeat_ms,
            expires_at_ms: r.expires_at_ms,
        }
    }
}

/// What a membership watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// The live members right now. The first event of every watch, and again whenever
    /// events may have been missed (a `Gap` or `Reset` of the event topic): it replaces
    /// everything the watcher knew.
    Snapshot(Vec<Member>),
    /// A member joined (a new incarnation: a new `joined_at_ms`).
    Joined(Member),
    /// A member left explicitly.
    Left(Member),
    /// A member stopped heartbeating and expired.
    Expired(Member),
}

/// How an event is published on `__members/<group>`: `{"event":"joined","member":{..}}`.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent {
    event: String,
    member: Member,
}

impl MemberEvent {
    /// Decodes an event published on a members topic; `None` for anything else.
    pub fn from_delivery(d: &Delivery) -> Option<MemberEvent> {
        let w: WireEvent = serde_json::from_slice(&d.payload).ok()?;
        match w.event.as_str() {
            "joined" => Some(MemberEvent::Joined(w.member)),
            "left" => Some(MemberEvent::Left(w.member)),
            "expired" => Some(MemberEvent::Expired(w.member)),
            _ => None,
        }
    }
}

/// The kinds of published membership events.
#[derive(Debug, Clone, Copy)]
enum Change {
    Joined,
    Left,
    Expired,
}

/// Publishes a membership event with its deterministic idempotency key.
async fn announce(herald: &Herald, change: Change, member: &Member) -> Result<()> {
    let (event, key) = match change {
        Change::Joined => ("joined", "join"),
        Change::Left => ("left", "gone"),
        Change::Expired => ("expired", "gone"),
    };
    let payload = serde_json::to_vec(&WireEvent {
        event: event.to_string(),
        member: member.clone(),
    })
    .map_err(|e| Error::InvalidMetadata {
        reason: format!("cannot encode a membership event: {e}"),
    })?;
    let message = Message::new(payload)
        .key(format!("{key}:{}:{}", member.id, member.joined_at_ms))
        .header("herald-event", event);
    herald
        .publish(&members_topic(&member.group), message)
        .await?;
    Ok(())
}

/// Publishes `Expired` for every expired member of `group`, then removes them.
async fn reap(herald: &Herald, group: &str) -> Result<usize> {
    let topic = members_topic(group);
    let expired = herald.broker().member_expired(&topic, REAP_BATCH).await?;
    let mut n = 0;
    for (id, record) in expired {
        let member = Member::from_record(group, &id, record);
        announce(herald, Change::Expired, &member).await?;
        if herald
            .broker()
            .member_remove(&topic, &id, member.joined_at_ms)
            .await?
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Joins (or refreshes) `id`; ends an expired incarnation first. Returns the live record.
///
/// `current` is the incarnation the member's handle names: it takes the record's
/// `joined_at_ms` as soon as the broker returns it, before `Joined` is announced, so that the
/// handle names the record the broker lists even if the announcement fails (and `leave`
/// removes that record). A live record of another incarnation is announced too: an earlier
/// attempt of this JOIN created it, but its reply was lost and the retry found it alive.
async fn join_once(
    herald: &Herald,
    group: &str,
    id: &str,
    meta_json: &str,
    ttl_ms: u64,
    current: &AtomicU64,
    announce_alive: bool,
) -> Result<Member> {
    let topic = members_topic(group);
    for _ in 0..3 {
        let (status, record) = herald
            .broker()
            .member_join(&topic, id, meta_json, ttl_ms)
            .await?;
        let member = Member::from_record(group, id, record);
        match status {
            JoinStatus::Created | JoinStatus::Alive => {
                let before = current.swap(member.joined_at_ms, Ordering::Relaxed);
                if status == JoinStatus::Created || before != member.joined_at_ms || announce_alive
                {
                    // Idempotent: repeating it (after a previous attempt created the record
                    // but could not publish) is absorbed by dedup.
                    announce(herald, Change::Joined, &member).await?;
                }
                return Ok(member);
            }
            JoinStatus::Expired => {
                announce(herald, Change::Expired, &member).await?;
                herald
                    .broker()
                    .member_remove(&topic, id, member.joined_at_ms)
                    .await?;
            }
        }
    }
    Err(Error::Timeout {
        operation: "join",
        waited: Duration::ZERO,
        reason: format!("member {id:?} of group {group:?} kept expiring while joining"),
    })
}

impl Herald {
    /// Starts building a membership of `group` (see [`JoinBuilder`]); `.await` it to join.
    pub fn join(&self, group: impl Into<String>) -> JoinBuilder {
        JoinBuilder {
            herald: self.clone(),
            group: group.into(),
            id: None,
            meta: BTreeMap::new(),
            ttl: DEFAULT_MEMBER_TTL,
            heartbeat: None,
        }
    }

    /// The live members of `group`, sorted by id (expired members not yet reaped are left out).
    pub async fn members(&self, group: &str) -> Result<Vec<Member>> {
        validate_group(group)?;
        let list = self.broker().member_list(&members_topic(group)).await?;
        let mut out: Vec<Member> = list
            .members
            .into_iter()
            .filter(|(_, r)| r.expires_at_ms >= list.now_ms)
            .map(|(id, r)| Member::from_record(group, &id, r))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The groups that have members (live or expired but not yet reaped), sorted.
    ///
    /// With Redis this scans the namespace (`SCAN`), with Redis Cluster on every primary.
    pub async fn member_groups(&self) -> Result<Vec<String>> {
        Ok(self
            .broker()
            .member_topics(MEMBERS_TOPIC_PREFIX)
            .await?
            .into_iter()
            .filter_map(|t| t.strip_prefix(MEMBERS_TOPIC_PREFIX).map(str::to_string))
            .collect())
    }

    /// Publishes `Expired` for, and removes, every expired member of `group` now; returns how
    /// many were removed. Heartbeating members do this on their own at every heartbeat.
    pub async fn reap_members(&self, group: &str) -> Result<usize> {
        validate_group(group)?;
        reap(self, group).await
    }

    /// Watches the membership of `group`: first a [`MemberEvent::Snapshot`] of the live
    /// members, then every `Joined`, `Left` and `Expired` in the order all nodes see them,
    /// and a new `Snapshot` whenever events may have been missed.
    ///
    /// The watch subscribes before it reads the snapshot, so an event may describe a change
    /// the snapshot already shows (a `Joined` of a listed member); applying events to a map
    /// keyed by member id is idempotent.
    pub async fn watch_members(&self, group: &str) -> Result<MemberWatch> {
        validate_group(group)?;
        let sub = self
            .subscribe([members_topic(group)])
            .from(Start::Latest)
            .await?;
        let snapshot = self.members(group).await?;
        Ok(MemberWatch {
            herald: self.clone(),
            group: group.to_string(),
            sub,
            pending: VecDeque::from([MemberEvent::Snapshot(snapshot)]),
            refresh: None,
        })
    }
}

/// Builds a [`Membership`]; `.await` it (or call [`JoinBuilder::start`]) to join.
#[must_use = "joining happens only when awaited"]
#[derive(Debug)]
pub struct JoinBuilder {
    herald: Herald,
    group: String,
    id: Option<String>,
    meta: BTreeMap<String, String>,
    ttl: Duration,
    heartbeat: Option<Duration>,
}

impl JoinBuilder {
    /// The member id (default: the node id). It also names the member's durable cursors.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds a metadata entry (address, version, ...).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Adds several metadata entries.
    pub fn metadata<K, V>(mut self, entries: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.meta
            .extend(entries.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// How long after its last heartbeat the member expires (default 5 s, at least
    /// [`MIN_MEMBER_TTL`], else joining fails with [`Error::InvalidTtl`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often to heartbeat (default a third of the time to live; between 10 ms and the
    /// time to live, else joining fails with [`Error::InvalidSetting`]).
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// Joins, announces `Joined`, and starts heartbeating in the background.
    pub async fn start(self) -> Result<Membership> {
        validate_group(&self.group)?;
        let id = self.id.unwrap_or_else(|| self.herald.node_id().to_string());
        validate_member_id(&id)?;
        if self.ttl < MIN_MEMBER_TTL {
            return Err(Error::InvalidTtl {
                ttl: self.ttl,
                min: MIN_MEMBER_TTL,
            });
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX / 4);
        let every = self.heartbeat.unwrap_or(self.ttl / 3);
        if every < MIN_HEARTBEAT || every > self.ttl {
            return Err(Error::InvalidSetting {
                name: "heartbeat interval",
                reason: format!(
                    "must be between {MIN_HEARTBEAT:?} and the time to live ({:?}), got {every:?}",
                    self.ttl
                ),
            });
        }
        let meta_json = serde_json::to_string(&self.meta).map_err(|e| Error::InvalidMetadata {
            reason: format!("cannot encode member metadata: {e}"),
        })?;
        let joined_at = Arc::new(AtomicU64::new(0));
        let member = join_once(
            &self.herald,
            &self.group,
            &id,
            &meta_json,
            ttl_ms,
            &joined_at,
            true,
        )
        .await?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(heartbeat(
            self.herald.clone(),
            self.group.clone(),
            id.clone(),
            meta_json,
            ttl_ms,
            every,
            joined_at.clone(),
            stop_rx,
        ));
        Ok(Membership {
            herald: self.herald,
            member,
            joined_at,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

impl IntoFuture for JoinBuilder {
    type Output = Result<Membership>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Membership>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.start())
    }
}

/// The heartbeat loop: refreshes the member, rejoins it if its record vanished or expired,
/// and reaps the group's expired members.
#[allow(clippy::too_many_arguments)]
async fn heartbeat(
    herald: Herald,
    group: String,
    id: String,
    meta_json: String,
    ttl_ms: u64,
    every: Duration,
    joined_at: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate: the join just happened
    let mut announced = true;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let before = joined_at.load(Ordering::Relaxed);
        match join_once(
            &herald, &group, &id, &meta_json, ttl_ms, &joined_at, !announced,
        )
        .await
        {
            Ok(m) => {
                if before != m.joined_at_ms {
                    tracing::info!(group, member = %id, "member joined again as a new incarnation");
                }
                announced = true;
            }
            Err(e) => {
                announced = false;
                tracing::warn!(group, member = %id, error = %e, "heartbeat failed; retrying");
                continue;
            }
        }
        if let Err(e) = reap(&herald, &group).await {
            tracing::warn!(group, error = %e, "reaping expired members failed; retrying");
        }
    }
}

/// A membership of a group: heartbeats in the background while it lives.
///
/// [`leave`](Self::leave) ends it cleanly (`Left`). Dropping it stops heartbeating without
/// leaving, as a crash would: the member expires after its time to live (`Expired`).
#[derive(Debug)]
pub struct Membership {
    herald: Herald,
    member: Member,
    joined_at: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Membership {
    /// The member id.
    pub fn id(&self) -> &str {
        &self.member.id
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.member.group
    }

    /// The member as it joined (metadata and first incarnation's times).
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// When the current incarnation joined (it changes if the member had to join again: as
    /// soon as the heartbeat gets the new record from the broker, before announcing it).
    pub fn joined_at_ms(&self) -> u64 {
        self.joined_at.load(Ordering::Relaxed)
    }

    /// Stops heartbeating, announces `Left` and removes the member.
    pub async fn leave(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Let an ongoing heartbeat finish, so that it cannot re-create the record.
            let _ = task.await;
        }
        let mut member = self.member.clone();
        member.joined_at_ms = self.joined_at.load(Ordering::Relaxed);
        announce(&self.herald, Change::Left, &member).await?;
        self.herald
            .broker()
            .member_remove(
                &members_topic(&member.group),
                &member.id,
                member.joined_at_ms,
            )
            .await?;
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A watch of a group's membership: a [`Stream`](futures::Stream) of [`MemberEvent`]s; see
/// [`Herald::watch_members`].
///
/// Errors are those of the underlying subscription (it keeps retrying after them); the
/// stream ends only if that subscription ends.
pub struct MemberWatch {
    herald: Herald,
    group: String,
    sub: Subscription,
    pending: VecDeque<MemberEvent>,
    /// A re-read of the member list after events were missed, while it runs.
    refresh: Option<MemberListFuture>,
}

/// A pending read of a group's live members.
type MemberListFuture = Pin<Box<dyn Future<Output = Result<Vec<Member>>> + Send>>;

impl std::fmt::Debug for MemberWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberWatch")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl MemberWatch {
    /// The next membership event; `None` only if the underlying subscription ended.
    pub async fn next_event(&mut self) -> Option<Result<MemberEvent>> {
        futures::StreamExt::next(self).await
    }

    /// The group watched.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl futures::Stream for MemberWatch {
    type Item = Result<MemberEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if let Some(refresh) = this.refresh.as_mut() {
                let members = ready!(refresh.as_mut().poll(cx));
                this.refresh = None;
                return Poll::Ready(Some(members.map(MemberEvent::Snapshot)));
            }
            match ready!(Pin::new(&mut this.sub).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(Event::Message(d))) => match MemberEvent::from_delivery(&d) {
                    Some(e) => return Poll::Ready(Some(Ok(e))),
                    None => {
                        tracing::warn!(group = %this.group, offset = d.position.offset, "skipping a message that is not a membership event");
                    }
                },
                Some(Ok(_)) => {
                    // A Gap or a Reset: events were missed; the list is the truth.
                    let (herald, group) = (this.herald.clone(), this.group.clone());
                    this.refresh = Some(Box::pin(async move { herald.members(&group).await }));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}
