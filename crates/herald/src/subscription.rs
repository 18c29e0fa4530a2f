//! Subscriptions: a node's ordered stream of events from one or more topics.
//!
//! A subscription runs as a background task that merges two sources per topic:
//! - **live notifications**, each carrying freshly appended entries, and
//! - **history reads**, used whenever the live feed cannot be trusted to be complete: at
//!   start, after a reconnect, after a notification that skips ahead or changes epoch, when
//!   the consumer is slow, and on a periodic check.
//!
//! For each topic it keeps `(epoch, next)`: the epoch it is reading and the next offset to
//! deliver. An entry is delivered only when its offset equals `next`, so nothing is delivered
//! twice; anything that cannot be delivered becomes an explicit [`Event::Gap`] or
//! [`Event::Reset`], so nothing is skipped silently.
//!
//! Memory is bounded by the consumer-facing channel (`buffer` events): when it is full, live
//! notifications wait in a *backlog* of at most `buffer` more events (all topics together),
//! handed over in order as the consumer frees room, so that a burst does not cost a history
//! read. Past that bound (or on anything the backlog cannot continue exactly) the topic is
//! marked *behind*; it catches up from history, one channel-full at a time.
//!
//! Topics are isolated from each other's trouble: history reads and head checks run
//! concurrently with the task's loop (at most one per topic, a bounded number at once), their
//! results coming back to the loop, so a topic whose shard is down or migrating delays only
//! itself; a topic whose reads fail is retried on its own backoff.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::broker::history::History;
use crate::broker::{Broker, LiveEvent, LiveFeed, ReadResult, Slot};
use crate::cursor::CursorCommit;
use crate::envelope::Notification;
use crate::error::{at_least, Error, ErrorKind, Result};
use crate::message::{Delivery, Entry};
use crate::position::{Epoch, Position};
use crate::retry::Backoff;
use crate::topic::{validate_cursor, validate_topic};

/// Where a subscription starts reading each topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// The oldest message still in history.
    Earliest,
    /// Only messages published after the subscription starts.
    Latest,
    /// From this offset on (a [`Event::Gap`] first if it was already trimmed). Offsets
    /// start at 1: `Offset(0)` is refused when the subscription starts.
    Offset(u64),
}

/// Why a [`Event::Gap`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GapReason {
    /// Retention (maximum length or age) trimmed the messages before they were read.
    Retention,
    /// The entries exist but could not be decoded, or were deleted from the middle of history
    /// by something other than Herald.
    Unreadable,
    /// The offsets were acknowledged to a publisher or delivered to a subscriber, then lost
    /// by Redis (a failover or a crash that lost its newest writes): the topic's log continues
    /// under a new epoch after the last offset that survived, and someone who saw the lost
    /// ones reported them. Reported to every subscriber that reads past the end of the
    /// epoch that lost them.
    Lost,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The next message of a topic.
    Message(Delivery),
    /// Offsets `from..=to` of the topic's current epoch cannot be delivered.
    Gap {
        /// The topic.
        topic: String,
        /// The epoch the gap belongs to.
        epoch: Epoch,
        /// The first offset not delivered.
        from: u64,
        /// The last offset not delivered.
        to: u64,
        /// Why.
        reason: GapReason,
    },
    /// Messages this subscription delivered (or its durable cursor committed) were lost by
    /// Redis: offsets `lost_from ..= last_delivered.offset` of `last_delivered.epoch` are
    /// gone. The topic continues under the new `epoch`, always a different (larger) one.
    ///
    /// - When Redis lost only the newest writes (a failover with asynchronous replication, a
    ///   restart without `appendfsync always`), the log continues from the last offset that
    ///   survived: delivery resumes at `lost_from` in `epoch`, with the messages published
    ///   after the loss. Nothing is redelivered.
    /// - When the whole log was lost (or its epoch is no longer in the topic's epoch history),
    ///   `lost_from` is 1 and delivery starts over from the oldest retained offset of `epoch`.
    Reset {
        /// The topic.
        topic: String,
        /// The last position delivered (or committed) in the epoch that lost writes, its
        /// offset 0 when nothing of it had been delivered.
        last_delivered: Position,
        /// The epoch delivery continues in.
        epoch: Epoch,
        /// The first lost offset of `last_delivered.epoch`: `lost_from ..= last_delivered.offset`
        /// were lost (empty when `lost_from > last_delivered.offset`).
        lost_from: u64,
    },
}

impl Event {
    /// The topic this event is about.
    pub fn topic(&self) -> &str {
        match self {
            Event::Message(d) => &d.topic,
            Event::Gap { topic, .. } | Event::Reset { topic, .. } => topic,
        }
    }
}

/// Builds a subscription; `.await` it (or call [`SubscribeBuilder::start`]) to start.
#[must_use = "a subscription starts only when awaited"]
pub struct SubscribeBuilder {
    broker: Broker,
    poll_interval: Duration,
    topics: Vec<String>,
    start: Start,
    durable: Option<String>,
    buffer: usize,
}

impl SubscribeBuilder {
    pub(crate) fn new(
        broker: Broker,
        poll_interval: Duration,
        topics: Vec<String>,
        buffer: usize,
    ) -> Self {
        SubscribeBuilder {
            broker,
            poll_interval,
            topics,
            start: Start::Latest,
            durable: None,
            buffer,
        }
    }

    /// Where to start (default [`Start::Latest`]). With [`durable`](Self::durable), this applies
    /// only to topics whose cursor does not exist yet.
    pub fn from(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Resumes each topic right after the durable cursor `name` (and commits to it); topics
    /// without that cursor yet start where [`from`](Self::from) says.
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.durable = Some(name.into());
        self
    }

    /// How many events may wait for the consumer (default 1024, at least 1: `start` refuses
    /// 0). A consumer that falls further behind is caught up from history rather than
    /// buffered in memory.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// Starts the subscription: opens the live feed, then positions every topic.
    pub async fn start(self) -> Result<Subscription> {
        let mut topics = self.topics;
        let mut seen = std::collections::HashSet::new();
        topics.retain(|t| seen.insert(t.clone()));
        if topics.is_empty() {
            return Err(Error::InvalidTopic {
                name: String::new(),
                reason: "no topic given".into(),
            });
        }
        for t in &topics {
            validate_topic(t)?;
        }
        if let Some(name) = &self.durable {
            validate_cursor(name)?;
        }
        at_least("subscription buffer", self.buffer, 1)?;
        if let Start::Offset(n) = self.start {
            at_least("start offset", n, 1)?;
        }
        let broker = self.broker;
        // Subscribe to notifications first, so that nothing published from now on is missed.
        let feed = broker.live(&topics).await?;
        // The heads are read in batches (on Redis a few pipelined transactions for thousands
        // of topics), the durable cursors concurrently.
        let heads = broker.read_heads(&topics).await;
        let cursors: Vec<Result<Option<CursorCommit>>> = match self.durable.as_deref() {
            Some(name) => {
                let reads: Vec<_> = topics.iter().map(|t| broker.get_cursor(t, name)).collect();
                futures::stream::iter(reads)
                    .buffered(START_READS_IN_FLIGHT)
                    .collect()
                    .await
            }
            None => topics.iter().map(|_| Ok(None)).collect(),
        };
        let mut states = Vec::with_capacity(topics.len());
        for ((name, head), cursor) in topics.into_iter().zip(heads).zip(cursors) {
            // A topic whose keys hold foreign data must not stop the others: it starts from
            // offset 1 of whatever log it gets once repaired, and the engine reports the
            // problem on the stream and keeps retrying.
            let (head, readable) = match head {
                Ok(head) => (head, true),
                Err(Error::WrongType { .. } | Error::Corrupt { .. }) => {
                    (ReadResult::default(), false)
                }
                Err(e) => return Err(e),
            };
            let cursor = cursor?;
            let from_cursor = cursor.is_some();
            let (epoch, next) = match cursor {
                Some(commit) => (Some(commit.position.epoch), commit.position.offset + 1),
                None => {
                    let next = match self.start {
                        Start::Earliest if head.first > 0 => head.first,
                        Start::Earliest | Start::Latest => head.last + 1,
                        Start::Offset(n) => n,
                    };
                    // Offsets before the newest epoch's first belong to older epochs (and
                    // wholly lost epochs just before the start are crossed, reporting them).
                    let epoch = head.epoch.map(|c| head.history.start_epoch(next, c));
                    (epoch, next)
                }
            };
            let vouched = from_cursor || (head.epoch.is_some() && next - 1 <= head.last);
            // A topic whose head was just read and that starts right after it (or has no log
            // yet) has no history to read: the live feed, open since before the head read,
            // carries everything after it.
            let current = match head.epoch {
                None => true,
                Some(c) => epoch == Some(c) && next == head.last + 1,
            };
            states.push(TopicState {
                name,
                epoch,
                next,
                behind: !(readable && !from_cursor && current),
                vouched,
                anchor: None,
                readahead: None,
                busy: false,
                unchanged_by_report: None,
                retry_at: None,
                backoff: FAILURE_BACKOFF,
            });
        }
        let (tx, rx) = mpsc::channel(self.buffer);
        let engine_broker = broker.clone();
        let index = states
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let engine = Engine {
            broker,
            topics: states,
            index,
            idle: false,
            tx,
            poll_interval: self.poll_interval,
            chunk: 1024,
            last_error: None,
            first_to_catch_up: 0,
            ops: FuturesUnordered::new(),
            reads: 0,
            suspect_reads: 0,
            backlog: 0,
        };
        let task = tokio::spawn(engine.run(Some(feed)));
        Ok(Subscription {
            rx,
            durable: self.durable,
            broker: engine_broker,
            task,
        })
    }
}

/// How many topic heads a starting subscription reads at once.
const START_READS_IN_FLIGHT: usize = 256;

impl IntoFuture for SubscribeBuilder {
    type Output = Result<Subscription>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Subscription>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.start())
    }
}

/// A running subscription: a [`Stream`] of events, in offset order per topic.
///
/// The stream yields `Err` for problems that need attention (a topic whose keys hold
/// foreign data, a refused command); it keeps running and retrying after them. Dropping
/// the subscription stops it.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Event>>,
    durable: Option<String>,
    /// Where the durable cursor is committed.
    broker: Broker,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event; `None` only if the subscription's task ended.
    pub async fn next_event(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }

    /// The durable cursor's name, if this subscription has one.
    pub fn cursor_name(&self) -> Option<&str> {
        self.durable.as_deref()
    }

    /// Commits the durable cursor of the delivery's topic at the delivery's position: a
    /// restarted subscription with the same cursor name resumes right after it.
    pub async fn commit(&self, delivery: &Delivery) -> Result<()> {
        self.commit_position(&delivery.topic, delivery.position)
            .await
    }

    /// Commits the durable cursor of `topic` at `position` (e.g. the end of a `Gap`, to
    /// acknowledge it).
    pub async fn commit_position(&self, topic: &str, position: Position) -> Result<()> {
        let name = self.durable.as_deref().ok_or(Error::NotDurable)?;
        self.broker
            .commit(topic, name, CursorCommit::new(position))
            .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The subscription's view of one topic.
#[derive(Debug)]
struct TopicState {
    name: String,
    /// The epoch being read; `None` until the topic's log is first seen.
    epoch: Option<Epoch>,
    /// The next offset to deliver.
    next: u64,
    /// True when live notifications cannot be trusted and history must be read.
    behind: bool,
    /// True when offset `next - 1` is known to have existed in this epoch (delivered, skipped
    /// by a gap, or committed): if the log's last offset falls below it, writes were lost.
    vouched: bool,
    /// A hash of the idempotency key of the entry at `next - 1`, when this subscription
    /// delivered it: if history holds another entry there, the log was rewritten.
    anchor: Option<u64>,
    /// History read but not yet handed to the consumer (at most one chunk).
    readahead: Option<Readahead>,
    /// True while a read (or loss report) of this topic is in flight.
    busy: bool,
    /// A loss report of this position changed nothing (another reader may have made the
    /// epoch change meanwhile): if the next read still shows the log went back under the same
    /// epoch, it was rewritten rather than truncated.
    unchanged_by_report: Option<Position>,
    /// After a failed read: not before this instant again.
    retry_at: Option<Instant>,
    /// Paces this topic's retries.
    backoff: Backoff,
}

impl TopicState {
    /// True when what is read ahead is a live backlog (not a chunk of history).
    fn has_backlog(&self) -> bool {
        self.readahead.as_ref().is_some_and(|r| r.live)
    }
}

/// A chunk of history being delivered, or a backlog of live entries (`live`) that did not fit
/// in the consumer's channel.
#[derive(Debug)]
struct Readahead {
    /// Entries from live notifications, contiguous from the topic's `next`: when they are all
    /// handed over and the topic is not behind, it is current.
    live: bool,
    epoch: Epoch,
    first: u64,
    last: u64,
    complete: bool,
    slots: std::collections::VecDeque<Slot>,
    /// The epoch history read with the chunk, to deliver each offset under its epoch.
    history: History,
}

/// The hash kept to recognise an entry again.
fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The background task of one subscription.
struct Engine {
    broker: Broker,
    topics: Vec<TopicState>,
    /// Each topic's place in `topics`.
    index: std::collections::HashMap<String, usize>,
    /// True when no topic is behind (so that, with thousands of topics, a live notification
    /// does not cost a look at every topic): set by a round of catch-up that found none,
    /// cleared by anything that may send a topic behind.
    idle: bool,
    tx: mpsc::Sender<Result<Event>>,
    poll_interval: Duration,
    /// Most entries read from history at once.
    chunk: usize,
    /// The last problem reported to the consumer, to report each one once.
    last_error: Option<String>,
    /// Where the search for a topic to catch up starts, so that topics take turns.
    first_to_catch_up: usize,
    /// Reads and loss reports in flight, each with the topic it is for.
    ops: FuturesUnordered<BoxFuture<'static, (usize, Done)>>,
    /// Catch-up reads in flight, and how many of them are for topics whose last read failed.
    reads: usize,
    suspect_reads: usize,
    /// Entries waiting in live backlogs, all topics together (at most the channel's size).
    backlog: usize,
}

/// Most catch-up reads in flight at once (each up to `chunk` entries). At most half of them
/// go to topics whose last read failed, so that a shard that is down cannot hold them all.
const CATCH_UP_READS: usize = 32;

/// A finished operation of the engine, for one topic.
enum Done {
    /// A catch-up read (`suspect`: the topic's previous read had failed).
    Read {
        suspect: bool,
        result: Result<ReadResult>,
    },
    /// A head check, started when the topic's next offset was `next`.
    Head {
        next: u64,
        result: Result<ReadResult>,
    },
    /// Head checks of several topics read together: (topic, `next`, head) each; the
    /// operation's own topic index is unused.
    Heads(Vec<(usize, u64, Result<ReadResult>)>),
    /// A report that the log went back below `seen` under its epoch.
    Reported {
        seen: Position,
        result: Result<bool>,
    },
    /// A loss report whose outcome changes nothing here.
    Noted,
}

/// How the engine paces its retries after a failure (opening the live feed, reading history):
/// it retries for as long as the consumer listens, so there is no deadline.
const FAILURE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Whether an event could be handed to the consumer.
enum Sent {
    Yes,
    Full,
    Closed,
}

impl Engine {
    async fn run(mut self, mut feed: Option<LiveFeed>) {
        let names: Vec<String> = self.topics.iter().map(|t| t.name.clone()).collect();
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = FAILURE_BACKOFF;
        loop {
            if self.tx.is_closed() {
                return;
            }
            let Some(live) = feed.as_mut() else {
                match self.broker.live(&names).await {
                    Ok(f) => {
                        tracing::info!(topics = ?names, "live feed re-established; catching up from history");
                        crate::telemetry::reconnected();
                        feed = Some(f);
                        self.topics.iter_mut().for_each(|t| t.behind = true);
                        backoff.reset();
                    }
                    Err(e) => {
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %e, retry_in = ?pause, "cannot open the live feed");
                        if !self.pause(pause).await {
                            return;
                        }
                    }
                }
                continue;
            };
            // Topics behind: hand over what was read ahead, start history reads.
            let (wants_room, retry_at) = if self.idle {
                (false, None)
            } else {
                (self.catch_up(), self.next_retry())
            };
            let room = self.room();
            let tx = self.tx.clone();
            let mut lost = false;
            let mut calm = false;
            tokio::select! {
                _ = tx.closed() => return,
                ev = live.next() => match ev {
                    Some(ev) => calm = self.on_live(ev),
                    None => lost = true,
                },
                Some((i, done)) = self.ops.next(), if !self.ops.is_empty() => self.on_done(i, done),
                _ = tick.tick() => self.check_heads(),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
                permits = tx.reserve_many(room), if wants_room => drop(permits),
            }
            self.idle &= calm;
            if lost {
                tracing::warn!(topics = ?names, "live feed lost; reconnecting");
                feed = None;
            }
        }
    }

    /// Moves the topics that are behind forward while the consumer has room: hands over what
    /// was read ahead and starts history reads (bounded, see [`CATCH_UP_READS`]), each topic
    /// in turn. True when a topic waits only for room in the consumer's channel.
    fn catch_up(&mut self) -> bool {
        let n = self.topics.len();
        let now = Instant::now();
        let start = self.first_to_catch_up;
        self.first_to_catch_up = (start + 1) % n;
        for k in 0..n {
            let i = (start + k) % n;
            let t = &self.topics[i];
            // A live backlog is handed over even while a head check is out (whose outcome
            // is ignored once the topic moved on); a chunk of history is not read twice.
            let live = t.has_backlog();
            if !(live || (t.behind && !t.busy)) {
                continue;
            }
            if t.readahead.is_some() {
                if self.tx.capacity() < self.room() {
                    return true;
                }
                if let Some(r) = self.topics[i].readahead.take() {
                    self.deliver_readahead(i, r);
                }
            }
            // A topic whose read-ahead is used up (or that had none) reads its next chunk in
            // the same round: nothing else would wake the loop for it before the next tick.
            if self.may_read(i, now) {
                if self.tx.capacity() < self.room() {
                    return true;
                }
                let suspect = self.topics[i].retry_at.is_some();
                self.start_read(i, suspect);
            }
        }
        // What was read ahead and not handed over waits for room in the consumer's channel:
        // wake up when there is some, not at the next tick.
        let mut any_behind = false;
        let mut waits = false;
        for t in &self.topics {
            let live = t.has_backlog();
            any_behind |= t.behind || live;
            waits |= live || (t.behind && !t.busy && t.readahead.is_some());
        }
        self.idle = !any_behind;
        waits
    }

    /// Whether topic `i` may start a history read now: it is behind, has nothing read ahead
    /// or in flight, is not waiting out a failure, and the bound on reads in flight (and on
    /// those of topics whose last read failed) leaves room.
    fn may_read(&self, i: usize, now: Instant) -> bool {
        let t = &self.topics[i];
        if !t.behind || t.busy || t.readahead.is_some() || self.reads >= CATCH_UP_READS {
            return false;
        }
        match t.retry_at {
            Some(at) => at <= now && self.suspect_reads < CATCH_UP_READS / 2,
            None => true,
        }
    }

    /// When the earliest topic waiting out a failure may be read again.
    fn next_retry(&self) -> Option<Instant> {
        self.topics
            .iter()
            .filter(|t| t.behind && !t.busy && t.readahead.is_none())
            .filter_map(|t| t.retry_at)
            .min()
    }

    /// Starts reading the next chunk of topic `i`'s history. With an anchor, it reads one
    /// entry more (`next - 1`) to check that history still holds the entry this subscription
    /// delivered there.
    fn start_read(&mut self, i: usize, suspect: bool) {
        let t = &mut self.topics[i];
        let anchored = t.anchor.is_some() && t.next > 1;
        let from = if anchored { t.next - 1 } else { t.next };
        let limit = self.chunk + usize::from(anchored);
        let (broker, name) = (self.broker.clone(), t.name.clone());
        t.busy = true;
        self.reads += 1;
        crate::telemetry::history_read();
        self.suspect_reads += usize::from(suspect);
        self.ops.push(
            async move {
                let result = broker.read(&name, from, limit).await;
                (i, Done::Read { suspect, result })
            }
            .boxed(),
        );
    }

    /// Runs `report` as topic `i`'s operation; `done` makes its outcome an event for the loop.
    fn start_report(
        &mut self,
        i: usize,
        seen: Position,
        done: impl FnOnce(Result<bool>) -> Done + Send + 'static,
    ) {
        let (broker, name) = (self.broker.clone(), self.topics[i].name.clone());
        self.topics[i].busy = true;
        self.ops.push(
            async move {
                let result = broker.report_lost(&name, seen).await;
                (i, done(result))
            }
            .boxed(),
        );
    }

    /// Takes in the outcome of one of topic `i`'s operations.
    fn on_done(&mut self, i: usize, done: Done) {
        let done = match done {
            Done::Heads(heads) => {
                for (i, next, result) in heads {
                    self.on_done(i, Done::Head { next, result });
                }
                return;
            }
            done => done,
        };
        self.topics[i].busy = false;
        match done {
            Done::Read { suspect, result } => {
                self.reads -= 1;
                self.suspect_reads -= usize::from(suspect);
                match result {
                    Ok(r) => {
                        self.succeeded(i);
                        if let Some(r) = self.read_ahead(i, r) {
                            self.deliver_readahead(i, r);
                        }
                    }
                    Err(e) => self.failed(i, e),
                }
            }
            Done::Head { next, result } => match result {
                Ok(head) => {
                    let t = &mut self.topics[i];
                    // Deliveries since the check started prove the topic live; and a topic
                    // already behind is being read anyway.
                    if t.behind || t.next != next {
                        return;
                    }
                    if head.epoch.is_some() && head.epoch == t.epoch {
                        crate::telemetry::lag((head.last + 1).saturating_sub(t.next));
                    }
                    if let Some(epoch) = head.epoch {
                        let went_back = t.vouched && head.last + 1 < t.next;
                        // What the live backlog holds is not missing.
                        let known = match &t.readahead {
                            Some(r) if r.live => r.last + 1,
                            _ => t.next,
                        };
                        if t.epoch != Some(epoch) || head.last >= known || went_back {
                            t.behind = true;
                        }
                    }
                }
                Err(e) => self.report(e),
            },
            Done::Reported { seen, result } => match result {
                // A new epoch continues the log: the next read validates the position.
                Ok(true) => self.succeeded(i),
                // Nothing changed: maybe another reader recorded the loss first; read again,
                // and start over only if the log still went back under the same epoch.
                Ok(false) => {
                    self.succeeded(i);
                    self.topics[i].unchanged_by_report = Some(seen);
                }
                Err(e) => self.failed(i, e),
            },
            Done::Noted | Done::Heads(_) => {} // (heads were taken apart above)
        }
    }

    fn succeeded(&mut self, i: usize) {
        let t = &mut self.topics[i];
        t.retry_at = None;
        t.backoff.reset();
    }

    /// Reports a failed operation of topic `i`, which is retried after its backoff.
    fn failed(&mut self, i: usize, e: Error) {
        self.report(e);
        let t = &mut self.topics[i];
        t.retry_at = Some(Instant::now() + t.backoff.next_pause());
    }

    /// How much free room in the consumer's channel is worth a round of catch-up: half of it,
    /// so that catching up moves events in batches rather than waking per event.
    fn room(&self) -> usize {
        (self.tx.max_capacity() / 2).max(1)
    }

    /// Sleeps, unless the consumer goes away first; false when it did.
    fn pause(&self, d: Duration) -> impl Future<Output = bool> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            tokio::select! {
                _ = tx.closed() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    }

    fn send(&self, event: Event) -> Sent {
        let handed = crate::telemetry::Handed::of(&event);
        match self.tx.try_send(Ok(event)) {
            Ok(()) => {
                handed.count();
                Sent::Yes
            }
            Err(mpsc::error::TrySendError::Full(_)) => Sent::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Reports a problem to the consumer once; transient ones are only logged.
    fn report(&mut self, e: Error) {
        let text = e.to_string();
        if e.kind() == ErrorKind::Unreachable {
            tracing::warn!(error = %text, "subscription: Redis unavailable, retrying");
            return;
        }
        if self.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(error = %text, "subscription problem, retrying");
            self.last_error = Some(text);
            let _ = self.tx.try_send(Err(e));
        }
    }

    /// Takes in a live event; true when it sent no topic behind.
    fn on_live(&mut self, ev: LiveEvent) -> bool {
        match ev {
            LiveEvent::Lost => self.topics.iter_mut().for_each(|t| t.behind = true),
            LiveEvent::Stale(topic) => {
                if let Some(&i) = self.index.get(topic.as_str()) {
                    self.topics[i].behind = true;
                }
            }
            LiveEvent::Notification(n) => {
                let i = self.index.get(n.topic.as_str()).copied();
                self.on_notification(n);
                return i
                    .is_none_or(|i| !self.topics[i].behind && self.topics[i].readahead.is_none());
            }
        }
        false
    }

    /// Delivers a notification's entries when they continue the topic exactly (what does not
    /// fit in the consumer's channel waits in the live backlog); anything else (a skip ahead,
    /// another epoch, a full backlog) sends the topic to history.
    fn on_notification(&mut self, n: Notification) {
        let Some(i) = self.index.get(n.topic.as_str()).copied() else {
            return;
        };
        if self.topics[i].behind {
            return;
        }
        if self.topics[i].readahead.is_some() {
            self.extend_backlog(i, n.epoch, n.entries);
            return;
        }
        if self.topics[i].epoch != Some(n.epoch) {
            // A topic that had no log when its head was read (after the feed opened): the
            // first notification is of the publish that created it. When it starts exactly
            // at `next`, it is what a read would find (a new log has one epoch, from 1).
            let t = &self.topics[i];
            let created = t.epoch.is_none()
                && !t.vouched
                && n.entries.first().map(|e| e.offset) == Some(t.next)
                && t.next == 1;
            if !created {
                self.topics[i].behind = true;
                return;
            }
            self.topics[i].epoch = Some(n.epoch);
        }
        let mut entries = n.entries.into_iter();
        while let Some(entry) = entries.next() {
            let t = &self.topics[i];
            if entry.offset < t.next {
                // Already delivered, unless history was rewritten there (checked via history).
                let replaced = entry.offset + 1 == t.next
                    && t.anchor.is_some_and(|a| a != key_hash(&entry.key));
                if replaced {
                    self.topics[i].behind = true;
                    return;
                }
                continue;
            }
            if entry.offset > t.next {
                self.topics[i].behind = true;
                return;
            }
            if self.tx.capacity() == 0 {
                // No room (this task is the only sender, so room stays room): the rest waits.
                let rest = std::iter::once(entry).chain(entries).collect();
                self.start_backlog(i, n.epoch, rest);
                return;
            }
            let anchor = key_hash(&entry.key);
            match self.send(Event::Message(Delivery::from_entry(
                &n.topic, n.epoch, entry,
            ))) {
                Sent::Yes => {
                    let t = &mut self.topics[i];
                    t.next += 1;
                    t.vouched = true;
                    t.anchor = Some(anchor);
                }
                Sent::Full => {
                    self.topics[i].behind = true;
                    return;
                }
                Sent::Closed => return,
            }
        }
    }

    /// How many more entries the live backlogs may hold.
    fn backlog_room(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.backlog)
    }

    /// Keeps `entries` of topic `i` (the first at its `next`) for when the consumer has room;
    /// sends the topic to history instead if they do not fit in the backlog's bound or do not
    /// follow each other exactly.
    fn start_backlog(&mut self, i: usize, epoch: Epoch, entries: Vec<Entry>) {
        let contiguous = entries.windows(2).all(|w| w[1].offset == w[0].offset + 1);
        let Some(last) = entries.last().map(|e| e.offset) else {
            return;
        };
        if !contiguous || entries.len() > self.backlog_room() {
            self.topics[i].behind = true;
            return;
        }
        self.backlog += entries.len();
        self.topics[i].readahead = Some(Readahead {
            live: true,
            epoch,
            first: 0,
            last,
            complete: false,
            slots: entries.into_iter().map(Slot::Entry).collect(),
            history: History::default(),
        });
    }

    /// Appends a notification's entries to topic `i`'s live backlog when they continue it
    /// exactly and fit; otherwise the topic goes behind (the backlog is still handed over,
    /// then history is read from where it ends).
    fn extend_backlog(&mut self, i: usize, epoch: Epoch, entries: Vec<Entry>) {
        let room = self.backlog_room();
        let Some(r) = self.topics[i].readahead.as_mut().filter(|r| r.live) else {
            self.topics[i].behind = true;
            return;
        };
        let fits = r.epoch == epoch
            && entries.len() <= room
            && entries
                .iter()
                .enumerate()
                .all(|(k, e)| e.offset == r.last + 1 + k as u64);
        if !fits {
            self.topics[i].behind = true;
            return;
        }
        self.backlog += entries.len();
        if let Some(e) = entries.last() {
            r.last = e.offset;
        }
        r.slots.extend(entries.into_iter().map(Slot::Entry));
    }

    /// Validates a chunk of topic `i`'s history, just read, against the topic's position and
    /// the epoch history: a position past the end of its epoch (writes this subscription
    /// delivered were lost) becomes a `Reset`, and `None` is returned (the topic stays behind
    /// and is read again from its new position).
    fn read_ahead(&mut self, i: usize, r: ReadResult) -> Option<Readahead> {
        let (name, next) = (self.topics[i].name.clone(), self.topics[i].next);
        let Some(current) = r.epoch else {
            // No log at all: nothing to deliver until a publish creates one (a new epoch,
            // which then shows up as a Reset if we were reading an older one).
            self.topics[i].behind = false;
            return None;
        };
        if self.topics[i].epoch.is_none() {
            self.topics[i].epoch = Some(r.history.start_epoch(next, current));
        }
        // Walk the epoch history from the topic's epoch towards the current one.
        for _ in 0..=r.history.0.len() {
            let t = &self.topics[i];
            let epoch = t.epoch.unwrap_or(current);
            if epoch == current {
                break;
            }
            let Some(succ) = r.history.successor(epoch).copied() else {
                // The epoch is not in the history: the whole log was lost (or the history no
                // longer reaches back to it).
                let seen = Position::new(epoch, t.next.saturating_sub(1));
                let handed = self.reset_to_oldest(i, &r, current, seen);
                if handed && seen.offset > 0 {
                    // So that readers who had not gone that far learn of the loss, too.
                    let topic = name.clone();
                    self.start_report(i, seen, move |result| {
                        if let Err(e) = result {
                            tracing::warn!(%topic, error = %e, "cannot record the loss");
                        }
                        Done::Noted
                    });
                }
                return None;
            };
            if t.next > succ.first {
                // Delivered (or committed) past the end of its epoch: those writes were lost.
                let seen = Position::new(epoch, t.next - 1);
                tracing::warn!(topic = %name, epoch, lost_from = succ.first, delivered = seen.offset,
                    "the log lost writes this subscription had read (a failover or a crash without fsync); continuing after the last surviving offset");
                let reset = Event::Reset {
                    topic: name.clone(),
                    last_delivered: seen,
                    epoch: succ.epoch,
                    lost_from: succ.first,
                };
                if let Sent::Yes = self.send(reset) {
                    self.drop_backlog(i);
                    let t = &mut self.topics[i];
                    t.epoch = Some(succ.epoch);
                    t.next = succ.first;
                    t.vouched = false;
                    t.anchor = None;
                    t.readahead = None;
                    // So that readers who had not gone that far learn of the loss, too.
                    let topic = name.clone();
                    self.start_report(i, seen, move |result| {
                        if let Err(e) = result {
                            tracing::warn!(%topic, error = %e, "cannot record the loss");
                        }
                        Done::Noted
                    });
                }
                return None; // read again from the new position
            }
            if t.next < succ.first || !self.cross(i, &r.history, t.next) {
                break; // offsets of its epoch remain to be delivered, or no room
            }
        }
        if self.topics[i].epoch == Some(current) && self.went_back(i, &r) {
            let seen = Position::new(current, self.topics[i].next - 1);
            let reported = self.topics[i].unchanged_by_report.take() == Some(seen);
            if r.last + 1 < self.topics[i].next && !reported {
                // The log went back under its epoch: report it, which continues the log under
                // a new epoch from `last + 1` (then the next read validates the position
                // against it); if the report changes nothing, the log was rewritten.
                self.start_report(i, seen, move |result| Done::Reported { seen, result });
                return None;
            }
            // Rewritten in place (by something other than Herald): start over.
            tracing::warn!(topic = %name, epoch = current, last = r.last, delivered = seen.offset,
                "the log was rewritten under this subscription; restarting from its oldest retained offset");
            self.reset_to_oldest(i, &r, current, seen);
            return None;
        }
        Some(Readahead {
            live: false,
            epoch: current,
            first: r.first,
            last: r.last,
            complete: r.complete,
            slots: r.slots.into(),
            history: r.history,
        })
    }

    /// Emits a `Reset` that starts topic `i` over from the oldest retained offset; false if
    /// it could not be handed over.
    fn reset_to_oldest(
        &mut self,
        i: usize,
        r: &ReadResult,
        current: Epoch,
        seen: Position,
    ) -> bool {
        let reset = Event::Reset {
            topic: self.topics[i].name.clone(),
            last_delivered: seen,
            epoch: current,
            lost_from: 1,
        };
        if let Sent::Yes = self.send(reset) {
            self.restart(i, r.history.epoch_at(1, current));
            return true;
        }
        false
    }

    /// Moves topic `i` into the epoch that offset `next` belongs to, across the ends of the
    /// epochs before it; at each end, offsets of the ending epoch that were reported lost
    /// become a `Gap` (`GapReason::Lost`). False if an event could not be handed over.
    fn cross(&mut self, i: usize, history: &History, next: u64) -> bool {
        for _ in 0..history.0.len() {
            let Some(epoch) = self.topics[i].epoch else {
                return true;
            };
            let Some(succ) = history.successor(epoch).copied() else {
                return true;
            };
            if next < succ.first {
                return true;
            }
            let lost = history.get(epoch).map_or(0, |s| s.lost);
            if lost >= succ.first {
                let gap = Event::Gap {
                    topic: self.topics[i].name.clone(),
                    epoch,
                    from: succ.first,
                    to: lost,
                    reason: GapReason::Lost,
                };
                if !matches!(self.send(gap), Sent::Yes) {
                    return false;
                }
            }
            self.topics[i].epoch = Some(succ.epoch);
        }
        true
    }

    /// Delivers what the consumer has room for from a chunk of history, with `Gap` events for
    /// offsets it lacks; what does not fit is kept for the next round. Each offset is
    /// delivered under the epoch it belongs to.
    fn deliver_readahead(&mut self, i: usize, r: Readahead) {
        let (live, before) = (r.live, r.slots.len());
        self.deliver_chunk(i, r);
        if live {
            let after = self.topics[i]
                .readahead
                .as_ref()
                .map_or(0, |r| r.slots.len());
            self.backlog -= before.saturating_sub(after);
        }
    }

    /// [`Engine::deliver_readahead`]'s work.
    fn deliver_chunk(&mut self, i: usize, mut r: Readahead) {
        let name = self.topics[i].name.clone();
        while let Some(slot) = r.slots.pop_front() {
            let offset = slot.offset();
            let next = self.topics[i].next;
            if offset < next {
                continue;
            }
            if !self.cross(i, &r.history, next) {
                r.slots.push_front(slot);
                self.topics[i].readahead = Some(r);
                return;
            }
            let epoch = self.topics[i].epoch.unwrap_or(r.epoch);
            if offset > next {
                let reason = if r.first == 0 || offset <= r.first {
                    GapReason::Retention
                } else {
                    GapReason::Unreadable
                };
                // A gap stays within one epoch; the rest follows after crossing.
                let to = match r.history.end_of(epoch) {
                    Some(end) if end >= next => (offset - 1).min(end),
                    _ => offset - 1,
                };
                let handed = self.gap(i, epoch, to, reason);
                r.slots.push_front(slot);
                if !handed {
                    self.topics[i].readahead = Some(r);
                    return;
                }
                continue;
            }
            if self.tx.capacity() == 0 {
                // No room: keep the slot (this task is the only sender, so room stays room).
                r.slots.push_front(slot);
                self.topics[i].readahead = Some(r);
                return;
            }
            let anchor = match &slot {
                Slot::Entry(e) => Some(key_hash(&e.key)),
                Slot::Corrupt { .. } => None,
            };
            let event = match slot {
                Slot::Entry(e) => Event::Message(Delivery::from_entry(&name, epoch, e)),
                Slot::Corrupt { reason, .. } => {
                    tracing::warn!(topic = %name, offset, %reason, "skipping an undecodable entry");
                    Event::Gap {
                        topic: name.clone(),
                        epoch,
                        from: offset,
                        to: offset,
                        reason: GapReason::Unreadable,
                    }
                }
            };
            match self.send(event) {
                Sent::Yes => {
                    let t = &mut self.topics[i];
                    t.next = offset + 1;
                    t.vouched = true;
                    t.anchor = anchor;
                }
                Sent::Full | Sent::Closed => return,
            }
        }
        if r.complete {
            // History ends before `last`: the rest was trimmed or deleted.
            for _ in 0..=r.history.0.len() {
                let next = self.topics[i].next;
                if next > r.last {
                    break;
                }
                if !self.cross(i, &r.history, next) {
                    self.topics[i].readahead = Some(r);
                    return;
                }
                let epoch = self.topics[i].epoch.unwrap_or(r.epoch);
                let reason = if r.first == 0 || next < r.first {
                    GapReason::Retention
                } else {
                    GapReason::Unreadable
                };
                let to = match r.history.end_of(epoch) {
                    Some(end) if end >= next => r.last.min(end),
                    _ => r.last,
                };
                if !self.gap(i, epoch, to, reason) {
                    self.topics[i].readahead = Some(r);
                    return;
                }
            }
            if !self.cross(i, &r.history, self.topics[i].next) {
                self.topics[i].readahead = Some(r);
                return;
            }
            self.topics[i].behind = false;
        }
    }

    /// Forgets topic `i`'s live backlog, if it has one, in the count of backlogged entries.
    fn drop_backlog(&mut self, i: usize) {
        if let Some(r) = self.topics[i].readahead.as_ref().filter(|r| r.live) {
            self.backlog -= r.slots.len().min(self.backlog);
            self.topics[i].readahead = None;
        }
    }

    /// Starts topic `i` over at offset 1, in `epoch` (after a `Reset`).
    fn restart(&mut self, i: usize, epoch: Epoch) {
        self.drop_backlog(i);
        let t = &mut self.topics[i];
        t.epoch = Some(epoch);
        t.next = 1;
        t.vouched = false;
        t.anchor = None;
        t.readahead = None;
    }

    /// Whether the log went back under this subscription within one epoch: its last offset
    /// is below what was delivered, or the delivered entry at `next - 1` was replaced.
    fn went_back(&self, i: usize, r: &ReadResult) -> bool {
        let t = &self.topics[i];
        if t.vouched && r.last + 1 < t.next {
            return true;
        }
        let Some(anchor) = t.anchor else { return false };
        r.slots.iter().any(|slot| match slot {
            Slot::Entry(e) => e.offset + 1 == t.next && key_hash(&e.key) != anchor,
            Slot::Corrupt { .. } => false,
        })
    }

    /// Emits a gap from the topic's `next` to `to` and moves past it; false if not handed over.
    fn gap(&mut self, i: usize, epoch: Epoch, to: u64, reason: GapReason) -> bool {
        let t = &self.topics[i];
        let event = Event::Gap {
            topic: t.name.clone(),
            epoch,
            from: t.next,
            to,
            reason,
        };
        match self.send(event) {
            Sent::Yes => {
                let t = &mut self.topics[i];
                t.next = to + 1;
                t.vouched = true;
                t.anchor = None;
                true
            }
            Sent::Full | Sent::Closed => false,
        }
    }

    /// The periodic check: a topic whose head moved past what was delivered, or whose epoch
    /// changed, goes to history (covers notifications lost without the connection dropping).
    /// The heads are read concurrently; a topic whose check is still running is skipped.
    fn check_heads(&mut self) {
        if self.broker.reads_heads_together() {
            return self.check_heads_together();
        }
        for (i, t) in self.topics.iter_mut().enumerate() {
            if t.behind || t.busy {
                continue;
            }
            t.busy = true;
            let (broker, name, next) = (self.broker.clone(), t.name.clone(), t.next);
            self.ops.push(
                async move {
                    let result = broker.read(&name, 1, 0).await;
                    (i, Done::Head { next, result })
                }
                .boxed(),
            );
        }
    }

    /// The periodic check where one server holds every topic: the heads are read in chunks
    /// of [`HEAD_CHECK_CHUNK`] topics, each a few pipelined commands rather than one read per
    /// topic.
    fn check_heads_together(&mut self) {
        let due: Vec<(usize, String, u64)> = self
            .topics
            .iter_mut()
            .enumerate()
            .filter(|(_, t)| !t.behind && !t.busy)
            .map(|(i, t)| {
                t.busy = true;
                (i, t.name.clone(), t.next)
            })
            .collect();
        for chunk in due.chunks(HEAD_CHECK_CHUNK) {
            let (broker, chunk) = (self.broker.clone(), chunk.to_vec());
            self.ops.push(
                async move {
                    let names: Vec<String> = chunk.iter().map(|(_, n, _)| n.clone()).collect();
                    let results = broker.read_heads(&names).await;
                    let heads = chunk
                        .into_iter()
                        .zip(results)
                        .map(|((i, _, next), result)| (i, next, result))
                        .collect();
                    (usize::MAX, Done::Heads(heads))
                }
                .boxed(),
            );
        }
    }
}

/// Topics per operation of a periodic check that reads heads together.
const HEAD_CHECK_CHUNK: usize = 1024;
