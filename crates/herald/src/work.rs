//! Work groups (task scheduling): each message of a topic handed to **one** live member of a
//! group at a time, under a lease, with retries and a dead-letter topic.
//!
//! ```
//! use futures::StreamExt;
//! use herald::{Herald, WorkEvent, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! let node = Herald::builder().node_id("worker-1").connect().await?;
//! node.publish("jobs", "resize image 17").await?;
//! let mut worker = node.work("jobs").group("resizers").start().await?;
//! if let Some(Ok(WorkEvent::Job(job))) = worker.next().await {
//!     assert_eq!(job.attempt(), 1);
//!     assert_eq!(job.ack().await?, Outcome::Acked);
//! }
//! worker.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Semantics
//! - A group `G` on topic `T` starts at its start position (the first member's
//!   [`WorkBuilder::from`]; later members join the existing group) and hands every later
//!   message of `T` to one member at a time. Other groups and plain subscribers of `T` still
//!   receive every message: a group never writes the topic's log, only its own state.
//! - A delivery ([`Job`]) is leased to one **holder** (an incarnation of a member) until its
//!   lease runs out. Its outcome is one of [`Job::ack`] (done), [`Job::nak`] (retry after a
//!   delay), [`Job::fail`] (retry after the group's backoff, recording the error),
//!   [`Job::in_progress`] (extend the lease) and [`Job::term`] (give up: dead letter).
//! - **Fencing**: every delivery carries its attempt (1 for the first). An outcome for an
//!   attempt that is no longer current (the lease ran out and the message went to another
//!   member, the member was reaped, or the topic was reset) is refused with
//!   [`Outcome::Stale`]: it changes nothing. A late outcome is still accepted while nobody
//!   has taken the message again.
//! - **Retries**: after `max_deliveries` deliveries without an ack (naks, failures, leases
//!   that ran out), the message is published on the group's dead-letter topic (by default
//!   `__dead/<topic>/<group>`, an ordinary topic) with the original payload and headers plus
//!   `herald-dead-topic`, `herald-dead-group`, `herald-dead-epoch`, `herald-dead-offset`,
//!   `herald-dead-attempts` and `herald-dead-error` (the last error a member gave, or why the
//!   last lease ended). Its idempotency key is
//!   `dead:<topic>:<group>:<epoch>:<offset>`, so dead-lettering twice appends once.
//! - **Delays**: a message published with [`Message::delay`] (the header `herald-delay-ms`)
//!   is not handed out before its publish time plus the delay, by the broker's clock. When a
//!   claim hands out such a message early, the member defers it (`DEFER`: it waits, and
//!   that delivery does not count as an attempt). A message waiting for its delay or a retry,
//!   or being dead-lettered, never blocks later messages.
//! - **Members**: a [`Worker`] registers as a new incarnation of its member id (the node id
//!   unless [`WorkBuilder::member`] says otherwise) and heartbeats every third of its time to
//!   live. A member that stops heartbeating is reaped by the next claim of any member after
//!   its time to live: its leases are released at once, without waiting for them to run
//!   out. A member restarted under the same id is a new incarnation: registering releases
//!   its predecessor's leases (the jobs are delivered again, as a new attempt, to whoever
//!   claims next) and the predecessor's late outcomes are `Stale`.
//!   [`Worker::close`] releases the worker's leases at once; dropping a worker is a crash
//!   (its leases are released when its time to live passes).
//! - **Per-key order** ([`WorkBuilder::key_order`], [`Message::order_key`], the header
//!   `herald-order-key`): messages with the same key are handed out one at a time in offset
//!   order; a key passes to its next message when the previous one is acked, dead-lettered or
//!   lost (retries keep it). Different keys, and messages without a key, go in parallel.
//! - **Idempotent handlers**: a delivery's [`Position`] (topic, epoch, offset) is the same for
//!   every attempt; a handler whose side effects are keyed by it is safe under redelivery.
//! - **Retention**: a group does not hold back trimming. Offsets trimmed before the group
//!   handed them out are skipped, counted (`lost` in [`GroupInfo`]) and reported to the
//!   member that noticed as [`WorkEvent::Lost`]; a leased or waiting offset whose message was
//!   trimmed is dropped the same way.
//! - **Reset**: when the topic's epoch changes (its log was lost), the group drops its state
//!   for the old epoch (outcomes for old deliveries are `Stale`), reports
//!   [`WorkEvent::Reset`] and starts the new epoch at its first retained offset (every
//!   message of a new epoch is new to the group, whatever its start rule). If the group's own
//!   state was lost with the log, a member that had seen the old epoch reports the `Reset`.
//! - Visible state: [`Herald::work_groups`] ([`GroupInfo`]).
//!
//! ## How it works
//! The state of group `G` on topic `T` lives beside the topic (in Redis under the same
//! `{T}` hash tag, so one script can change it atomically on Cluster; see `docs/PROTOCOL.md`,
//! "Work groups (v1)"): a cursor `next` (the first offset never handed out), a hash of the
//! offsets handed out and not finished (state, holder, attempt, deadline, last error), a
//! sorted set of when each becomes due again (lease deadline or retry time) and a sorted set
//! of live holders. Each step (register, heartbeat, claim, outcome) is one script call timed
//! by the Redis clock. A stream entry holds a whole publish call, so Redis Streams consumer
//! groups are not used: single messages are leased by offset. A claim hands out what is due
//! first, then fresh offsets from `next`; the member then reads those messages from history.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::broker::work::{ClaimArgs, Claimed, Grant, Op, OpResult, Taken};
use crate::broker::{LiveFeed, ReadResult};
use crate::client::Herald;
use crate::error::{Error, Result};
use crate::message::{Delivery, Message};
use crate::position::{Epoch, Position};
use crate::subscription::Start;
use crate::topic::validate_topic;

/// Prefix of default dead-letter topics: `__dead/<topic>/<group>`.
pub const DEAD_LETTER_PREFIX: &str = "__dead/";
/// The longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 100;
/// The shortest accepted lease.
pub const MIN_LEASE: Duration = Duration::from_millis(100);
/// The shortest accepted member time to live.
pub const MIN_WORKER_TTL: Duration = Duration::from_millis(300);

/// The header that delays a message for work groups: milliseconds after its publish time
/// (broker clock) before any group hands it out (see [`Message::delay`]).
pub const DELAY_HEADER: &str = "herald-delay-ms";

/// The header carrying a message's order key (see [`WorkBuilder::key_order`]).
pub const ORDER_KEY_HEADER: &str = "herald-order-key";

/// How many messages past the group's cursor an ordered claim looks at.
const ORDER_WINDOW: u64 = 64;

/// The most acks sent in one call.
const MAX_ACKS: usize = 256;

impl Message {
    /// Delays this message for work groups: no group hands it out before `delay` has passed
    /// since it was published (by the broker's clock). Plain subscribers receive it at once.
    /// Carried as the header [`DELAY_HEADER`].
    pub fn delay(self, delay: Duration) -> Self {
        self.header(DELAY_HEADER, ms(delay).to_string())
    }

    /// Sets the order key: work groups with [`WorkBuilder::key_order`] process the messages
    /// of one key one at a time, in offset order. Carried as the header [`ORDER_KEY_HEADER`].
    pub fn order_key(self, key: impl Into<String>) -> Self {
        self.header(ORDER_KEY_HEADER, key.into())
    }
}

/// The default dead-letter topic of `group` on `topic`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{topic}/{group}")
}

/// Checks a work group name: 1-100 bytes of `A-Z a-z 0-9 . _ - /`.
pub fn validate_work_group(group: &str) -> Result<()> {
    let ok = !group.is_empty()
        && group.len() <= MAX_GROUP_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            name: "work group name",
            reason: format!(
                "must be 1-{MAX_GROUP_LEN} bytes of A-Z a-z 0-9 . _ - /, got {group:?}"
            ),
        })
    }
}

/// How long a message waits before its next delivery after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backoff {
    /// The n-th retry waits the n-th delay; the last one repeats.
    List(Vec<Duration>),
    /// `base`, doubling with each attempt, at most `cap`.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The longest delay.
        cap: Duration,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after the failure of delivery `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let n = attempt.max(1) - 1;
        match self {
            Backoff::List(list) => list
                .get(n as usize)
                .or(list.last())
                .copied()
                .unwrap_or_default(),
            Backoff::Exponential { base, cap } => base
                .checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
                .unwrap_or(*cap)
                .min(*cap),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

impl Herald {
    /// Starts building a worker of a work group on `topic` (see [`crate::work`]).
    pub fn work(&self, topic: impl Into<String>) -> WorkBuilder {
        WorkBuilder {
            herald: self.clone(),
            topic: topic.into(),
            group: None,
            start: Start::Earliest,
            lease: Duration::from_secs(30),
            concurrency: 1,
            max_deliveries: 5,
            backoff: Backoff::default(),
            dead_letter: None,
            member: None,
            ttl: Duration::from_secs(5),
            poll: Duration::from_millis(100),
            ordered: false,
        }
    }

    /// The state of every work group of `topic`, by group name.
    pub async fn work_groups(&self, topic: &str) -> Result<Vec<GroupInfo>> {
        validate_topic(topic)?;
        let mut out = Vec::new();
        for group in self.broker().work_groups(topic).await? {
            if let Some(info) = self.work_group(topic, &group).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The state of work group `group` of `topic`; `None` when it does not exist.
    pub async fn work_group(&self, topic: &str, group: &str) -> Result<Option<GroupInfo>> {
        validate_topic(topic)?;
        validate_work_group(group)?;
        let Some(rec) = self.broker().work_state(topic, group).await? else {
            return Ok(None);
        };
        let head = self.broker().read(topic, 1, 0).await?;
        let now = rec.now_ms;
        let mut in_flight = Vec::new();
        let (mut waiting, mut dead_pending, mut blocked) = (0, 0, 0);
        for (offset, r) in &rec.jobs {
            match r.s.as_str() {
                "run" => in_flight.push(LeaseInfo {
                    offset: *offset,
                    holder: r.h.clone(),
                    attempt: r.a,
                    expires_in_ms: i64::try_from(r.d).unwrap_or(i64::MAX)
                        - i64::try_from(now).unwrap_or(i64::MAX),
                }),
                "wait" => waiting += 1,
                "blocked" => blocked += 1,
                _ => dead_pending += 1,
            }
        }
        let oldest = rec
            .jobs
            .iter()
            .map(|(_, r)| r.t)
            .filter(|t| *t > 0)
            .min()
            .map(|t| now.saturating_sub(t));
        let behind = if head.epoch.is_some() && head.epoch == rec.epoch {
            (head.last + 1).saturating_sub(rec.next)
        } else {
            head.last
        };
        Ok(Some(GroupInfo {
            topic: topic.to_string(),
            group: group.to_string(),
            epoch: rec.epoch,
            next_offset: rec.next,
            in_flight,
            waiting_retries: waiting,
            dead_pending,
            blocked_by_key: blocked,
            acked: rec.acked,
            dead_lettered: rec.dead,
            lost: rec.lost,
            resets: rec.resets,
            oldest_unfinished_age_ms: oldest,
            lag: behind + rec.jobs.len() as u64,
            dead_letter_topic: rec.dlq,
            members: rec
                .holders
                .iter()
                .filter(|(_, exp)| *exp >= now)
                .map(|(h, _)| h.clone())
                .collect(),
        }))
    }
}

/// One offset handed out and not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The offset.
    pub offset: u64,
    /// Its holder (`<member id>#<incarnation>`; empty when released and not yet taken again).
    pub holder: String,
    /// Its attempt.
    pub attempt: u32,
    /// How long its lease has left (negative: it ran out), by the broker's clock.
    pub expires_in_ms: i64,
}

/// The visible state of a work group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// The epoch the group works in (`None` before its first claim).
    pub epoch: Option<Epoch>,
    /// The first offset it has never handed out.
    pub next_offset: u64,
    /// Leased offsets, with holders and attempts.
    pub in_flight: Vec<LeaseInfo>,
    /// Offsets waiting for a retry.
    pub waiting_retries: usize,
    /// Offsets out of deliveries, not yet on the dead-letter topic.
    pub dead_pending: usize,
    /// Offsets waiting for an earlier message of their order key to finish.
    pub blocked_by_key: usize,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages trimmed by retention before the group finished them.
    pub lost: u64,
    /// How many times the topic's epoch changed under the group.
    pub resets: u64,
    /// How long ago the oldest unfinished message was first handed out.
    pub oldest_unfinished_age_ms: Option<u64>,
    /// Messages not finished: not yet handed out, in flight, waiting or dead-pending.
    pub lag: u64,
    /// Where messages go after their last delivery.
    pub dead_letter_topic: String,
    /// Live holders.
    pub members: Vec<String>,
}

/// Builds a [`Worker`]; from [`Herald::work`].
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct WorkBuilder {
    herald: Herald,
    topic: String,
    group: Option<String>,
    start: Start,
    lease: Duration,
    concurrency: usize,
    max_deliveries: u32,
    backoff: Backoff,
    dead_letter: Option<String>,
    member: Option<String>,
    ttl: Duration,
    poll: Duration,
    ordered: bool,
}

impl WorkBuilder {
    /// Per-key order: messages with the same order key ([`Message::order_key`]) are handed
    /// out one at a time, in offset order (the next only once the previous was acked or
    /// dead-lettered; retries keep the key), different keys and messages without one in
    /// parallel. Every member of the group must use the same setting.
    pub fn key_order(mut self, yes: bool) -> Self {
        self.ordered = yes;
        self
    }

    /// The group (required).
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Where a new group starts (default [`Start::Earliest`]); ignored when it exists.
    /// [`Start::Latest`] means the messages published after this worker started (all of a
    /// topic that had no log yet).
    pub fn from(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// How long a delivery is leased (default 30 s, at least 100 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many deliveries this worker holds at once (default 1, 1-1000).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Deliveries of one message before it is dead-lettered (default 5, at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// The delay before a retry after [`Job::fail`] (default exponential, 1 s to 5 min).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The dead-letter topic (default [`dead_letter_topic`]).
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// The member id (default the node id).
    pub fn member(mut self, id: impl Into<String>) -> Self {
        self.member = Some(id.into());
        self
    }

    /// The member's time to live: without a heartbeat for this long, its leases are
    /// released (default 5 s, at least 300 ms).
    pub fn member_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often an idle worker looks for due retries and expired leases (default 100 ms;
    /// new messages wake it at once).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Registers the member and starts taking work.
    pub async fn start(self) -> Result<Worker> {
        validate_topic(&self.topic)?;
        let group = self.group.clone().ok_or_else(|| Error::InvalidSetting {
            name: "work group name",
            reason: "a worker needs a group".into(),
        })?;
        validate_work_group(&group)?;
        let member = self
            .member
            .clone()
            .unwrap_or_else(|| self.herald.node_id().to_string());
        crate::membership::validate_member_id(&member)?;
        if member.contains('#') {
            return Err(Error::InvalidMemberId { id: member });
        }
        let dlq = self
            .dead_letter
            .clone()
            .unwrap_or_else(|| dead_letter_topic(&self.topic, &group));
        validate_topic(&dlq)?;
        let check = |ok: bool, name: &'static str, reason: String| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidSetting { name, reason })
            }
        };
        check(
            self.lease >= MIN_LEASE,
            "lease",
            format!("must be at least {MIN_LEASE:?}, got {:?}", self.lease),
        )?;
        check(
            (1..=1000).contains(&self.concurrency),
            "concurrency",
            format!("must be 1-1000, got {}", self.concurrency),
        )?;
        check(
            self.max_deliveries >= 1,
            "max deliveries",
            "must be at least 1, got 0".into(),
        )?;
        check(
            !matches!(&self.backoff, Backoff::List(l) if l.is_empty()),
            "backoff",
            "a backoff list needs at least one delay".into(),
        )?;
        check(
            self.ttl >= MIN_WORKER_TTL,
            "member time to live",
            format!("must be at least {MIN_WORKER_TTL:?}, got {:?}", self.ttl),
        )?;
        check(
            self.poll >= Duration::from_millis(5),
            "poll interval",
            format!("must be at least 5ms, got {:?}", self.poll),
        )?;
        let ttl_ms = ms(self.ttl);
        // The claim loop sends the acks (with its claims); once it stops taking work, until
        // the worker and all its jobs are gone (the last sender with them).
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        // `Latest` means after this point: the topic's head now (or, for a topic without a log
        // yet, its whole first epoch).
        let head = self.herald.broker().read(&self.topic, 1, 0).await?;
        let start = match self.start {
            Start::Latest => Begin::After(head.epoch, head.last),
            Start::Earliest => Begin::Earliest,
            Start::Offset(o) => Begin::Offset(o.max(1)),
        };
        let holder = self
            .herald
            .broker()
            .work_register(&self.topic, &group, &member, ttl_ms, &dlq)
            .await?;
        let shared = Arc::new(Shared {
            herald: self.herald.clone(),
            topic: self.topic.clone(),
            group,
            member,
            dlq,
            lease_ms: ms(self.lease),
            max_deliveries: self.max_deliveries,
            backoff: self.backoff.clone(),
            ttl_ms,
            ordered: self.ordered,
            holder: Mutex::new(holder),
            registering: tokio::sync::Mutex::new(()),
            acks: acks_tx,
        });
        let (tx, rx) = mpsc::channel(self.concurrency + 16);
        let (stop_tx, stop_rx) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let feeder = tokio::spawn(feed(
            shared.clone(),
            tx,
            permits,
            self.concurrency,
            start,
            self.poll,
            stop_rx,
            acks_rx,
        ));
        let beat = tokio::spawn(heartbeat(shared.clone(), self.ttl / 3));
        Ok(Worker {
            shared,
            rx,
            stop: Some(stop_tx),
            tasks: vec![feeder, beat],
        })
    }
}

impl IntoFuture for WorkBuilder {
    type Output = Result<Worker>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Worker>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.start())
    }
}

/// What a worker and its jobs share.
#[derive(Debug)]
struct Shared {
    herald: Herald,
    topic: String,
    group: String,
    member: String,
    dlq: String,
    lease_ms: u64,
    max_deliveries: u32,
    backoff: Backoff,
    ttl_ms: u64,
    /// Per-key order (see [`WorkBuilder::key_order`]).
    ordered: bool,
    /// The current incarnation's holder name.
    holder: Mutex<String>,
    /// Held while registering a new incarnation.
    registering: tokio::sync::Mutex<()>,
    /// Acks waiting to be sent (by [`feed`] with its next claim, then [`send_acks`]).
    acks: mpsc::UnboundedSender<AckRequest>,
}

/// An ack waiting to be sent.
#[derive(Debug)]
struct AckRequest {
    holder: String,
    pos: Position,
    attempt: u32,
    reply: oneshot::Sender<Result<OpResult>>,
    /// The job's place: free once the ack is on its way (the ack goes before the claim that
    /// reuses the place, in the same call).
    permit: Option<OwnedSemaphorePermit>,
}

impl AckRequest {
    fn answer(self, result: Result<OpResult>) {
        let _ = self.reply.send(result);
    }
}

/// Sends the acks of a worker's jobs: every ack queued while the previous call was out goes
/// in the next call (`ACKS`), so that jobs finishing together cost one call. Ends when every
/// sender is gone.
async fn send_acks(
    herald: Herald,
    topic: String,
    group: String,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_ACKS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        send_ack_batch(&herald, &topic, &group, batch).await;
    }
}

/// Sends `batch` in `ACKS` calls, one per holder and epoch (nearly always one), and answers
/// each request.
async fn send_ack_batch(herald: &Herald, topic: &str, group: &str, mut batch: Vec<AckRequest>) {
    while !batch.is_empty() {
        let (holder, epoch) = (batch[0].holder.clone(), batch[0].pos.epoch);
        let (same, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| r.holder == holder && r.pos.epoch == epoch);
        batch = rest;
        for chunk in chunks(same, MAX_ACKS) {
            let pairs: Vec<(u64, u32)> = chunk.iter().map(|r| (r.pos.offset, r.attempt)).collect();
            match herald
                .broker()
                .work_acks(topic, group, &holder, epoch, &pairs)
                .await
            {
                Ok(results) => {
                    for (r, res) in chunk.into_iter().zip(results) {
                        r.answer(Ok(res));
                    }
                }
                Err(e) => {
                    for r in chunk {
                        r.answer(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// `items` in groups of at most `n`.
fn chunks<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some(last) if last.len() < n => last.push(item),
            _ => out.push(vec![item]),
        }
    }
    out
}

impl Shared {
    fn holder(&self) -> String {
        self.holder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers a new incarnation because `gone` is gone (unless another task already did).
    async fn register_again(&self, gone: &str) -> Result<()> {
        let _one_at_a_time = self.registering.lock().await;
        if self.holder() != gone {
            return Ok(());
        }
        let holder = self
            .herald
            .broker()
            .work_register(
                &self.topic,
                &self.group,
                &self.member,
                self.ttl_ms,
                &self.dlq,
            )
            .await?;
        tracing::info!(topic = %self.topic, group = %self.group, holder = %holder, "work group member registered again as a new incarnation");
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = holder;
        Ok(())
    }

    /// Acks `attempt` of `pos`: queued for the claim loop (which frees `permit` when it
    /// takes the ack), or sent alone when it is gone.
    async fn ack(
        &self,
        holder: &str,
        pos: Position,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) -> Result<OpResult> {
        let (reply, answer) = oneshot::channel();
        let request = AckRequest {
            holder: holder.to_string(),
            pos,
            attempt,
            reply,
            permit: Some(permit),
        };
        if self.acks.send(request).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        // A retried ack whose first call was applied answers `ok` again.
        self.outcome(holder, pos, attempt, &Op::Ack).await
    }

    async fn outcome(
        &self,
        holder: &str,
        pos: Position,
        attempt: u32,
        op: &Op,
    ) -> Result<OpResult> {
        self.herald
            .broker()
            .work_outcome(
                &self.topic,
                &self.group,
                holder,
                pos.epoch,
                pos.offset,
                attempt,
                op,
            )
            .await
    }

    /// Publishes a message whose deliveries are spent on the dead-letter topic, then
    /// finishes it. `Stale` when another member finished it first.
    async fn dead_letter(
        &self,
        holder: &str,
        delivery: &Delivery,
        attempt: u32,
        error: &str,
    ) -> Result<Outcome> {
        let pos = delivery.position;
        let mut message = Message::new(delivery.payload.clone()).key(format!(
            "dead:{}:{}:{}:{}",
            self.topic, self.group, pos.epoch, pos.offset
        ));
        for (k, v) in &delivery.headers {
            message = message.header(k.clone(), v.clone());
        }
        let message = message
            .header("herald-dead-topic", self.topic.clone())
            .header("herald-dead-group", self.group.clone())
            .header("herald-dead-epoch", pos.epoch.to_string())
            .header("herald-dead-offset", pos.offset.to_string())
            .header("herald-dead-attempts", attempt.to_string())
            .header("herald-dead-error", error.to_string());
        let receipt = self.herald.publish(&self.dlq, message).await?;
        match self.outcome(holder, pos, attempt, &Op::DeadDone).await? {
            OpResult::Stale => Ok(Outcome::Stale),
            _ => Ok(Outcome::DeadLettered {
                position: receipt.position,
            }),
        }
    }
}

/// What a worker yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum WorkEvent {
    /// A delivery to process.
    Job(Job),
    /// `count` messages were trimmed by retention before the group finished them.
    Lost {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The epoch they were in.
        epoch: Epoch,
        /// How many.
        count: u64,
    },
    /// The topic's epoch changed: the group's deliveries of the old one are void and it
    /// starts the new epoch at its first retained offset.
    Reset {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The new epoch.
        epoch: Epoch,
    },
}

/// What an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the message is finished for the group.
    Acked,
    /// It will be delivered again after `after`.
    Retry {
        /// The delay before it is due.
        after: Duration,
    },
    /// The lease was extended by the group's lease time.
    Extended,
    /// Out of deliveries (or terminated): published on the dead-letter topic at `position`.
    DeadLettered {
        /// Where on the dead-letter topic.
        position: Position,
    },
    /// Refused: this delivery's attempt is no longer the current one (its lease ran out and
    /// the message went elsewhere, this member was reaped or restarted, or the topic was
    /// reset). Nothing changed.
    Stale,
}

/// One delivery of a work group, leased to this worker. Report an outcome before the lease
/// runs out; a job dropped without one keeps its lease until it runs out.
#[derive(Debug)]
pub struct Job {
    delivery: Delivery,
    attempt: u32,
    last_error: String,
    holder: String,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    /// The message (its position is the same for every attempt).
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.delivery.payload
    }

    /// Where the message is.
    pub fn position(&self) -> Position {
        self.delivery.position
    }

    /// Which delivery this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// Why the previous delivery did not finish (the error given, or how its lease ended).
    pub fn last_error(&self) -> Option<&str> {
        (!self.last_error.is_empty()).then_some(self.last_error.as_str())
    }

    async fn report(&self, op: Op) -> Result<OpResult> {
        self.shared
            .outcome(&self.holder, self.delivery.position, self.attempt, &op)
            .await
    }

    /// Done.
    pub async fn ack(self) -> Result<Outcome> {
        let Job {
            delivery,
            attempt,
            holder,
            shared,
            _permit: permit,
            ..
        } = self;
        let acked = shared
            .ack(&holder, delivery.position, attempt, permit)
            .await?;
        Ok(match acked {
            OpResult::Stale => Outcome::Stale,
            _ => Outcome::Acked,
        })
    }

    /// Deliver again after `delay` (a delivery spent: after the last one, dead letter).
    pub async fn nak(self, delay: Duration) -> Result<Outcome> {
        self.retry(delay, "nak").await
    }

    /// Failed with `error`: deliver again after the group's backoff for this attempt, or,
    /// after the last one, dead-letter with `error`.
    pub async fn fail(self, error: impl Into<String>) -> Result<Outcome> {
        let delay = self.shared.backoff.delay(self.attempt);
        self.retry(delay, &error.into()).await
    }

    async fn retry(self, delay: Duration, error: &str) -> Result<Outcome> {
        let op = Op::Nak {
            delay_ms: ms(delay),
            max_deliveries: self.shared.max_deliveries,
            lease_ms: self.shared.lease_ms,
            error: error.to_string(),
        };
        match self.report(op).await? {
            OpResult::Stale => Ok(Outcome::Stale),
            OpResult::Ok => Ok(Outcome::Retry { after: delay }),
            OpResult::Dead => {
                self.shared
                    .dead_letter(&self.holder, &self.delivery, self.attempt, error)
                    .await
            }
        }
    }

    /// Still working: extends the lease by the group's lease time from now.
    pub async fn in_progress(&self) -> Result<Outcome> {
        Ok(
            match self
                .report(Op::Progress {
                    lease_ms: self.shared.lease_ms,
                })
                .await?
            {
                OpResult::Stale => Outcome::Stale,
                _ => Outcome::Extended,
            },
        )
    }

    /// Give up now: dead-letter with `reason`.
    pub async fn term(self, reason: impl Into<String>) -> Result<Outcome> {
        let reason = reason.into();
        let op = Op::Term {
            lease_ms: self.shared.lease_ms,
            error: reason.clone(),
        };
        match self.report(op).await? {
            OpResult::Stale => Ok(Outcome::Stale),
            _ => {
                self.shared
                    .dead_letter(&self.holder, &self.delivery, self.attempt, &reason)
                    .await
            }
        }
    }
}

/// A member of a work group: a `Stream` of [`WorkEvent`]s. At most `concurrency` jobs are
/// out at once; a job frees its place when its outcome is reported or it is dropped.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Result<WorkEvent>>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    /// The current incarnation's holder name (`<member id>#<incarnation>`).
    pub fn holder(&self) -> String {
        self.shared.holder()
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        &self.shared.dlq
    }

    /// Stops taking work and leaves: this worker's leases are released at once (outcomes of
    /// its jobs still out become `Stale`).
    pub async fn close(mut self) -> Result<()> {
        self.halt().await;
        let holder = self.shared.holder();
        self.shared
            .herald
            .broker()
            .work_leave(&self.shared.topic, &self.shared.group, &holder)
            .await
    }

    /// Stops taking new work but keeps heartbeating, so the jobs out can still finish; the
    /// stream ends once what was claimed has been yielded.
    pub fn stop_taking(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn halt(&mut self) {
        self.stop_taking();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl futures::Stream for Worker {
    type Item = Result<WorkEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Keeps the holder live; registers a new incarnation when it was reaped.
async fn heartbeat(shared: Arc<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let holder = shared.holder();
        match shared
            .herald
            .broker()
            .work_heartbeat(&shared.topic, &shared.group, &holder, shared.ttl_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = shared.register_again(&holder).await {
                    tracing::warn!(error = %e, "work group member cannot register again; retrying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "work group heartbeat failed; retrying"),
        }
    }
}

/// Where a group created by this worker starts.
#[derive(Debug, Clone, Copy)]
enum Begin {
    Earliest,
    /// After this offset of this epoch (the head when the worker started); from the start
    /// of any other epoch.
    After(Option<Epoch>, u64),
    Offset(u64),
}

/// The claim loop: claims as many deliveries as there are free places and yields them,
/// sending the acks queued since its previous call with each claim (one call, `TAKE`, which
/// also returns the messages); waits for new messages, the poll interval or an ack when
/// there is nothing. One call is out at a time: what finishes meanwhile goes in the next.
/// Once stopped it only sends acks ([`send_acks`]).
#[allow(clippy::too_many_arguments)]
async fn feed(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<WorkEvent>>,
    places: Arc<Semaphore>,
    concurrency: usize,
    start: Begin,
    poll: Duration,
    mut stop: oneshot::Receiver<()>,
    mut acks: mpsc::UnboundedReceiver<AckRequest>,
) {
    let mut known_epoch: Option<Epoch> = None;
    let mut hint: u64 = 0;
    let mut live: Option<LiveFeed> = None;
    let mut head: Option<ReadResult> = None;
    let mut queued: Vec<AckRequest> = Vec::new();
    let mut idle = false;
    loop {
        if idle {
            // Nothing to hand out: wait for a new message, the poll interval (due retries,
            // expired leases) or an ack to send.
            if live.is_none() {
                live = shared
                    .herald
                    .broker()
                    .live(std::slice::from_ref(&shared.topic))
                    .await
                    .ok();
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(poll) => {}
                r = acks.recv() => queued.extend(r),
                ended = async {
                    match live.as_mut() {
                        Some(f) => f.next().await.is_none(),
                        None => std::future::pending().await,
                    }
                } => if ended { live = None; },
            }
        } else if queued.is_empty() && places.available_permits() == 0 {
            tokio::select! {
                _ = &mut stop => break,
                p = places.clone().acquire_owned() => if p.is_err() { return },
                r = acks.recv() => queued.extend(r),
            }
        }
        // Let the jobs finishing now queue their acks, to send them all in this call.
        tokio::task::yield_now().await;
        while queued.len() < MAX_ACKS {
            match acks.try_recv() {
                Ok(r) => queued.push(r),
                Err(_) => break,
            }
        }
        for r in &mut queued {
            r.permit = None;
        }
        let mut permits = Vec::new();
        while permits.len() < concurrency {
            match places.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let batch = std::mem::take(&mut queued);
        let round = if shared.ordered || permits.is_empty() {
            send_ack_batch(&shared.herald, &shared.topic, &shared.group, batch).await;
            if permits.is_empty() {
                idle = false;
                continue;
            }
            claim_round(
                &shared,
                &tx,
                &mut permits,
                (&mut known_epoch, &mut hint),
                &mut head,
                start,
            )
            .await
            .map(|r| r.map(|n| (n, n == 0)))
        } else {
            take_round(
                &shared,
                &tx,
                &mut permits,
                batch,
                &mut known_epoch,
                &mut head,
                start,
            )
            .await
        };
        drop(permits);
        idle = match round {
            Ok(Some((_, idle))) => idle,
            Ok(None) => return,
            Err(e) => {
                if tx.send(Err(e)).await.is_err() {
                    return;
                }
                true
            }
        };
    }
    // Stopped: the jobs out may still finish; their acks are sent until the worker and the
    // last of them are gone.
    drop(tx);
    let (herald, topic, group) = (
        shared.herald.clone(),
        shared.topic.clone(),
        shared.group.clone(),
    );
    drop(shared);
    send_ack_batch(&herald, &topic, &group, queued).await;
    send_acks(herald, topic, group, acks).await;
}

/// One take: the queued `acks` and a claim in one call, with the messages granted.
/// `Ok(None)`: the worker is gone; otherwise how many grants it handled and whether there is
/// nothing more to hand out now (wait before the next).
///
/// `cached`: the topic's head as last read (its epoch and epoch history; the call reads the
/// offsets itself and says when the epoch is no longer the one given).
async fn take_round(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<WorkEvent>>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    acks: Vec<AckRequest>,
    known_epoch: &mut Option<Epoch>,
    cached: &mut Option<ReadResult>,
    start: Begin,
) -> Result<Option<(usize, bool)>> {
    let broker = shared.herald.broker();
    let head = match cached.take() {
        Some(h) => h,
        None => match broker.read(&shared.topic, 1, 0).await {
            Ok(h) => h,
            Err(e) => {
                send_ack_batch(&shared.herald, &shared.topic, &shared.group, acks).await;
                return Err(e);
            }
        },
    };
    let holder = shared.holder();
    let Some(epoch) = head.epoch else {
        send_ack_batch(&shared.herald, &shared.topic, &shared.group, acks).await;
        return Ok(Some((0, true)));
    };
    // As in `claim_round`; `0` is the first retained offset, as the call sees it.
    let continues = head.history.continues(epoch);
    let continued = continues.is_some_and(|(prev, _)| *known_epoch == Some(prev));
    let changed = known_epoch.is_some_and(|e| e != epoch) && !continued;
    let start = if changed {
        0
    } else {
        match start {
            Begin::Earliest => 0,
            Begin::After(e, last) if e == Some(epoch) => last + 1,
            Begin::After(..) => 0,
            Begin::Offset(o) => o,
        }
    };
    let (mine, others): (Vec<_>, Vec<_>) = acks
        .into_iter()
        .partition(|r| r.holder == holder && r.pos.epoch == epoch);
    send_ack_batch(&shared.herald, &shared.topic, &shared.group, others).await;
    let pairs: Vec<(u64, u32)> = mine.iter().map(|r| (r.pos.offset, r.attempt)).collect();
    let args = ClaimArgs {
        max: permits.len(),
        lease_ms: shared.lease_ms,
        max_deliveries: shared.max_deliveries,
        ttl_ms: shared.ttl_ms,
        epoch,
        first: 0,
        last: 0,
        start,
        continues,
        ordered: None,
    };
    let taken = match broker
        .work_take(&shared.topic, &shared.group, &holder, args, &pairs)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            for r in mine {
                r.answer(Err(e.clone()));
            }
            return Err(e);
        }
    };
    let Taken {
        acks: results,
        claimed,
        slots,
        ..
    } = taken;
    for (r, res) in mine.into_iter().zip(results) {
        r.answer(Ok(res));
    }
    let Some(claimed) = claimed else {
        // The topic moved to another epoch: read its head again, at once.
        return Ok(Some((0, false)));
    };
    let (now_ms, reset, lost, grants) = match claimed {
        Claimed::Gone => {
            *cached = Some(head);
            shared.register_again(&holder).await?;
            return Ok(Some((0, false)));
        }
        Claimed::OldEpoch => return Ok(Some((0, false))),
        Claimed::Granted {
            now_ms,
            reset,
            lost,
            grants,
            ..
        } => (now_ms, reset, lost, grants),
    };
    *cached = Some(head);
    let event = |e: WorkEvent| async { tx.send(Ok(e)).await.is_ok() };
    if reset || changed {
        let ev = WorkEvent::Reset {
            topic: shared.topic.clone(),
            group: shared.group.clone(),
            epoch,
        };
        if !event(ev).await {
            return Ok(None);
        }
    }
    *known_epoch = Some(epoch);
    let asked = permits.len();
    let n = grants.len();
    let mut entries = BTreeMap::new();
    for slot in slots {
        if let crate::broker::Slot::Entry(e) = slot {
            entries.insert(e.offset, Delivery::from_entry(&shared.topic, epoch, e));
        }
    }
    if !hand_out(
        shared, tx, permits, &holder, epoch, now_ms, lost, grants, entries,
    )
    .await?
    {
        return Ok(None);
    }
    Ok(Some((n, n < asked)))
}

/// One claim. `Ok(None)`: the worker is gone; otherwise how many grants it handled.
///
/// `cached`: the topic's head as the previous round's read of its messages saw it, when that
/// claim handed out all it asked for (work keeps coming): this claim uses it instead of
/// reading the head again. A claim on a cached head that hands out less than it asks for
/// makes the next round read the head at once.
async fn claim_round(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<WorkEvent>>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    (known_epoch, hint): (&mut Option<Epoch>, &mut u64),
    cached: &mut Option<ReadResult>,
    start: Begin,
) -> Result<Option<usize>> {
    let broker = shared.herald.broker();
    let (head, from_cache) = match cached.take() {
        Some(h) => (h, true),
        None => (broker.read(&shared.topic, 1, 0).await?, false),
    };
    let Some(epoch) = head.epoch else {
        return Ok(Some(0));
    };
    let first = if head.first == 0 {
        head.last + 1
    } else {
        head.first
    };
    // A new epoch that continues the log of the one this member knew (a change of writing
    // server) is no reset: the group keeps its place (see `ClaimArgs::continues`).
    let continues = head.history.continues(epoch);
    let continued = continues.is_some_and(|(prev, _)| *known_epoch == Some(prev));
    let changed = known_epoch.is_some_and(|e| e != epoch) && !continued;
    let start = if changed {
        first
    } else {
        match start {
            Begin::Earliest => first,
            Begin::After(e, last) if e == Some(epoch) => last + 1,
            Begin::After(..) => first,
            Begin::Offset(o) => o,
        }
    };
    // Ordered: the order keys of the messages from the group's cursor (as last seen) on.
    let mut prefetched = BTreeMap::new();
    let mut ordered = None;
    if shared.ordered {
        let from = if *hint == 0 || changed {
            start.max(first)
        } else {
            *hint
        };
        let to = head.last.min(from + ORDER_WINDOW - 1);
        if from <= to {
            match read_runs(shared, epoch, vec![(from, to)]).await? {
                Some(m) => prefetched = m,
                None => return Ok(Some(0)),
            }
        }
        let keys = (from..=to)
            .map(|o| {
                prefetched
                    .get(&o)
                    .and_then(|d| d.headers.get(ORDER_KEY_HEADER))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>();
        ordered = Some((from, keys));
    }
    let asked = ordered.as_ref().map(|(f, _)| *f);
    let holder = shared.holder();
    let args = ClaimArgs {
        max: permits.len(),
        lease_ms: shared.lease_ms,
        max_deliveries: shared.max_deliveries,
        ttl_ms: shared.ttl_ms,
        epoch,
        first,
        last: head.last,
        start,
        continues,
        ordered,
    };
    let (now_ms, reset, lost, next, grants) = match broker
        .work_claim(&shared.topic, &shared.group, &holder, args)
        .await?
    {
        Claimed::Gone => {
            shared.register_again(&holder).await?;
            return Ok(Some(1));
        }
        Claimed::OldEpoch => return Ok(Some(0)),
        Claimed::Granted {
            now_ms,
            reset,
            lost,
            next,
            grants,
        } => (now_ms, reset, lost, next, grants),
    };
    let moved = *hint != next;
    *hint = next;
    let event = |e: WorkEvent| async { tx.send(Ok(e)).await.is_ok() };
    if reset || changed {
        let ev = WorkEvent::Reset {
            topic: shared.topic.clone(),
            group: shared.group.clone(),
            epoch,
        };
        if !event(ev).await {
            return Ok(None);
        }
    }
    *known_epoch = Some(epoch);
    let mut n = grants.len();
    let full = n == permits.len();
    if from_cache && !full {
        // The cached head may be behind: look again at once, with a fresh one.
        n = n.max(1);
    }
    if n == 0 && moved && (asked.is_some_and(|f| next < f) || next <= head.last) {
        // Ordered: the group's cursor was not where this member looked, or moved past
        // messages blocked on their keys with more to look at: look again at once.
        n = 1;
    }
    let missing: Vec<Grant> = grants
        .iter()
        .filter(|g| !prefetched.contains_key(&g.offset))
        .cloned()
        .collect();
    let Some((mut entries, seen)) = read_grants(shared, epoch, &missing).await? else {
        return Ok(Some(0));
    };
    if full && !shared.ordered {
        *cached = seen;
    }
    entries.append(&mut prefetched);
    if !hand_out(
        shared, tx, permits, &holder, epoch, now_ms, lost, grants, entries,
    )
    .await?
    {
        return Ok(None);
    }
    Ok(Some(n))
}

/// Reports `lost` offsets, then handles each grant with its message from `entries`: a job
/// for each place in `permits`; a missing message is `LOST`, a dead one is dead-lettered, a
/// delayed one deferred. False when the worker is gone.
#[allow(clippy::too_many_arguments)]
async fn hand_out(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<WorkEvent>>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    holder: &str,
    epoch: Epoch,
    now_ms: u64,
    lost: u64,
    grants: Vec<Grant>,
    mut entries: BTreeMap<u64, Delivery>,
) -> Result<bool> {
    let event = |e: WorkEvent| async { tx.send(Ok(e)).await.is_ok() };
    let lost_event = |count| WorkEvent::Lost {
        topic: shared.topic.clone(),
        group: shared.group.clone(),
        epoch,
        count,
    };
    if lost > 0 && !event(lost_event(lost)).await {
        return Ok(false);
    }
    for g in grants {
        let Some(delivery) = entries.remove(&g.offset) else {
            let pos = Position::new(epoch, g.offset);
            if shared.outcome(holder, pos, g.attempt, &Op::Lost).await? == OpResult::Ok
                && !event(lost_event(1)).await
            {
                return Ok(false);
            }
            continue;
        };
        if g.dead {
            if let Err(e) = shared
                .dead_letter(holder, &delivery, g.attempt, &g.error)
                .await
            {
                tracing::warn!(error = %e, offset = g.offset, "dead-lettering failed; another member will retry after the lease");
            }
            continue;
        }
        if let Some(until_ms) = not_before(&delivery).filter(|t| *t > now_ms) {
            let pos = delivery.position;
            shared
                .outcome(holder, pos, g.attempt, &Op::Defer { until_ms })
                .await?;
            continue;
        }
        let Some(permit) = permits.pop() else {
            break;
        };
        let job = Job {
            delivery,
            attempt: g.attempt,
            last_error: g.error,
            holder: holder.to_string(),
            shared: shared.clone(),
            _permit: permit,
        };
        if !event(WorkEvent::Job(job)).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// When a delayed message may be handed out: its publish time plus its
/// [`DELAY_HEADER`] (broker clock).
fn not_before(d: &Delivery) -> Option<u64> {
    let delay: u64 = d.headers.get(DELAY_HEADER)?.parse().ok()?;
    Some(d.published_at_ms.saturating_add(delay))
}

/// Reads the messages of `grants`, in runs of consecutive offsets, and the topic's head as
/// the last read saw it (without its entries; `None` when nothing was read). `None` when the
/// topic is no longer in `epoch`.
async fn read_grants(
    shared: &Shared,
    epoch: Epoch,
    grants: &[Grant],
) -> Result<Option<(BTreeMap<u64, Delivery>, Option<ReadResult>)>> {
    let mut offsets: Vec<u64> = grants.iter().map(|g| g.offset).collect();
    offsets.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for o in offsets {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == o => *end = o,
            _ => runs.push((o, o)),
        }
    }
    read_runs_head(shared, epoch, runs).await
}

/// [`read_runs_head`] without the head.
async fn read_runs(
    shared: &Shared,
    epoch: Epoch,
    runs: Vec<(u64, u64)>,
) -> Result<Option<BTreeMap<u64, Delivery>>> {
    Ok(read_runs_head(shared, epoch, runs).await?.map(|(m, _)| m))
}

/// Reads the messages at offsets `from..=to` of each run, and the head as the last read saw
/// it. `None` when the topic is no longer in `epoch`.
async fn read_runs_head(
    shared: &Shared,
    epoch: Epoch,
    runs: Vec<(u64, u64)>,
) -> Result<Option<(BTreeMap<u64, Delivery>, Option<ReadResult>)>> {
    let mut out = BTreeMap::new();
    let mut head = None;
    for (from, to) in runs {
        let mut at = from;
        // Each read returns at least one message from `at` unless history ends: bounded by
        // the run's length.
        while at <= to {
            let want = usize::try_from(to - at + 1).unwrap_or(usize::MAX);
            let mut r = shared.herald.broker().read(&shared.topic, at, want).await?;
            if r.epoch != Some(epoch) {
                return Ok(None);
            }
            let mut progressed = false;
            let slots = std::mem::take(&mut r.slots);
            head = Some(r);
            for slot in slots {
                let o = slot.offset();
                if o < at || o > to {
                    continue;
                }
                progressed = true;
                at = o + 1;
                if let crate::broker::Slot::Entry(e) = slot {
                    out.insert(o, Delivery::from_entry(&shared.topic, epoch, e));
                }
            }
            if !progressed {
                break;
            }
        }
    }
    Ok(Some((out, head)))
}
