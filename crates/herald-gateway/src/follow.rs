//! One client's ordered view of one topic.
//!
//! A [`Follower`] keeps the client's own `(epoch, next)`: it emits an event only when it is
//! the next one for the client, so nothing is sent twice and nothing is skipped silently.
//! It reads live events from the topic's shared [`Feed`](crate::hub::Feed); when the client
//! is behind (it resumed from an older position, or was too slow and the shared channel
//! overflowed), it catches up through a private, bounded history subscription until it
//! reaches the head it saw when catching up began, then goes back to the shared feed.
//!
//! Resuming from a position `E:O`:
//! - `E` is the topic's current epoch and `O` at most its last offset: delivery continues at
//!   `O + 1` (a `gap` first if retention trimmed some of what follows).
//! - `E` is another epoch (the log was lost since): a `reset` (`previous_epoch` E,
//!   `last_delivered` O, `epoch` the current one), then the current epoch from its oldest
//!   retained message on.
//! - `E` is `0`: the client had no position; delivery starts at `O + 1` of the current epoch.
//! - `O` is past the current epoch's last offset, or the id cannot be parsed at all: a
//!   `reset` (with `previous_epoch` and `last_delivered` from the id, 0 when unparseable), then
//!   live delivery from the next new message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald::{Epoch, Event, Herald, Position, Start, Subscription};
use tokio::sync::broadcast;

use crate::api_error::ApiError;
use crate::hub::{Feed, Hub};
use crate::wire::Outgoing;

/// Where a client asks to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartAt {
    Earliest,
    Latest,
    Offset(u64),
    /// Right after this position (a resume id).
    Resume(Position),
    /// An id that could not be understood: `reset`, then live.
    Bogus,
}

impl StartAt {
    /// `earliest`, `latest` or an offset.
    pub(crate) fn parse(s: &str) -> Result<StartAt, ApiError> {
        match s {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            n => match n.parse::<u64>() {
                Ok(n) => Ok(StartAt::Offset(n)),
                Err(_) => match n.parse::<Position>() {
                    Ok(p) => Ok(StartAt::Resume(p)),
                    Err(_) => Err(ApiError::bad_input(format!(
                        "invalid start {s:?}: expected earliest, latest, an offset or EPOCH:OFFSET"
                    ))),
                },
            },
        }
    }
}

enum Mode {
    /// Inspect the topic and decide (after a start, a lag, an epoch change).
    Check,
    Live,
    /// Reading history privately until `next` passes `until`.
    CatchUp {
        sub: Subscription,
        until: u64,
    },
}

enum Source {
    Live,
    History,
}

pub(crate) struct Follower {
    herald: Herald,
    topic: String,
    _feed: Arc<Feed>,
    rx: broadcast::Receiver<Arc<Outgoing>>,
    epoch: Option<Epoch>,
    next: u64,
    /// A position of a lost epoch to report in a `reset` once the new epoch is known.
    lost: Option<Position>,
    mode: Mode,
    pending: VecDeque<Arc<Outgoing>>,
    buffer: usize,
}

impl Follower {
    /// Starts following `topic` (a valid name) from `from`. Fails when Redis cannot tell the
    /// topic's state.
    pub(crate) async fn start(
        hub: &Hub,
        topic: &str,
        from: StartAt,
        buffer: usize,
    ) -> Result<Follower, ApiError> {
        let feed = hub.feed(topic);
        let rx = feed.receiver().await;
        let herald = hub.herald().clone();
        let info = herald.inspect(topic).await?;
        let head_next = info.last_offset + 1;
        let oldest = if info.length > 0 && info.first_offset > 0 {
            info.first_offset
        } else {
            head_next
        };
        let mut f = Follower {
            herald,
            topic: topic.to_string(),
            _feed: feed,
            rx,
            epoch: info.epoch,
            next: head_next,
            lost: None,
            mode: Mode::Live,
            pending: VecDeque::new(),
            buffer,
        };
        match from {
            StartAt::Latest => {}
            StartAt::Earliest => {
                f.next = oldest;
                f.mode = Mode::Check;
            }
            StartAt::Offset(n) => {
                f.next = n.max(1);
                f.mode = Mode::Check;
            }
            StartAt::Resume(p) if p.epoch == 0 => {
                f.next = p.offset + 1;
                f.mode = Mode::Check;
            }
            StartAt::Resume(p) => match info.epoch {
                Some(cur) if cur == p.epoch && p.offset <= info.last_offset => {
                    f.next = p.offset + 1;
                    f.mode = Mode::Check;
                }
                Some(cur) if cur == p.epoch => f.reset(p, cur),
                Some(cur) => {
                    f.reset(p, cur);
                    f.next = oldest;
                    f.mode = Mode::Check;
                }
                None => {
                    // No log now: the new epoch, when it comes, starts at 1.
                    f.epoch = None;
                    f.next = 1;
                    f.lost = Some(p);
                }
            },
            StartAt::Bogus => f.reset(Position::new(0, 0), info.epoch.unwrap_or(0)),
        }
        Ok(f)
    }

    /// The topic.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// The client's position: the last event it was sent (epoch 0 while none is known).
    pub(crate) fn position(&self) -> Position {
        Position::new(self.epoch.unwrap_or(0), self.next.saturating_sub(1))
    }

    fn reset(&mut self, last: Position, epoch: Epoch) {
        self.pending.push_back(Outgoing::new(Event::Reset {
            topic: self.topic.clone(),
            last_delivered: last,
            epoch,
            // The client's position is not in the topic's history: it starts over.
            lost_from: 1,
        }));
        self.epoch = Some(epoch);
    }

    /// The next event for this client, `None` when the topic's feed ended.
    pub(crate) async fn next(&mut self) -> Option<Arc<Outgoing>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            match &mut self.mode {
                Mode::Check => self.check().await,
                Mode::Live => match self.rx.recv().await {
                    Ok(event) => self.apply(&event, Source::Live),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.mode = Mode::Check,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                Mode::CatchUp { sub, .. } => {
                    tokio::select! {
                        biased;
                        item = sub.next() => match item {
                            Some(Ok(event)) => self.apply(&Outgoing::new(event), Source::History),
                            Some(Err(e)) => {
                                tracing::debug!(topic = self.topic, error = %e, "catch-up failed; checking again");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                self.mode = Mode::Check;
                            }
                            None => self.mode = Mode::Check,
                        },
                        live = self.rx.recv() => match live {
                            // The next one arrived live first: take it and go live.
                            Ok(event) => if let Event::Message(d) = event.event() {
                                if Some(d.position.epoch) == self.epoch && d.position.offset == self.next {
                                    self.apply(&event, Source::Live);
                                }
                            },
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    }
                    if let Mode::CatchUp { until, .. } = self.mode {
                        if self.next > until {
                            self.mode = Mode::Live;
                        }
                    }
                }
            }
        }
    }

    /// Reads the topic's state and chooses between live and catching up.
    async fn check(&mut self) {
        let mut backoff = Duration::from_millis(100);
        let info = loop {
            match self.herald.inspect(&self.topic).await {
                Ok(info) => break info,
                Err(e) => {
                    tracing::debug!(topic = self.topic, error = %e, "cannot inspect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let oldest = if info.length > 0 && info.first_offset > 0 {
            info.first_offset
        } else {
            info.last_offset + 1
        };
        let Some(cur) = info.epoch else {
            // The log is gone; the next epoch starts at 1 and gets a `reset` first.
            if let Some(e) = self.epoch.take() {
                self.lost = Some(Position::new(e, self.next.saturating_sub(1)));
            }
            self.next = 1;
            self.mode = Mode::Live;
            return;
        };
        match self.epoch {
            None => {
                self.epoch = Some(cur);
                if let Some(lost) = self.lost.take() {
                    self.reset(lost, cur);
                }
            }
            Some(e) if e != cur => {
                self.reset(Position::new(e, self.next.saturating_sub(1)), cur);
                self.next = oldest;
            }
            Some(_) if self.next > info.last_offset + 1 => {
                // Offsets this client saw are gone (the newest writes were lost).
                self.reset(Position::new(cur, self.next - 1), cur);
                self.next = info.last_offset + 1;
            }
            Some(_) => {}
        }
        if self.next > info.last_offset {
            self.mode = Mode::Live;
            return;
        }
        match self
            .herald
            .subscribe([self.topic.as_str()])
            .from(Start::Offset(self.next))
            .buffer(self.buffer)
            .await
        {
            Ok(sub) => {
                self.mode = Mode::CatchUp {
                    sub,
                    until: info.last_offset,
                }
            }
            Err(e) => {
                tracing::debug!(topic = self.topic, error = %e, "cannot read history; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.mode = Mode::Check;
            }
        }
    }

    /// Whether a live event of a newer epoch at `offset` continues this client's view: the
    /// client is live (it got every event of the shared subscription since it went live) and
    /// the event is its next offset. The shared subscription is one library subscription,
    /// which sends a `reset` (or a `gap`) when a new epoch does not continue the old one, so
    /// an event at the next offset of a newer epoch, without a `reset` before it, is the log
    /// continuing after Redis restarted with its data (AOF) or a replica took over with it.
    fn continues(&self, source: &Source, offset: u64) -> bool {
        matches!(source, Source::Live) && matches!(self.mode, Mode::Live) && offset == self.next
    }

    /// Takes `event` if it is the next one for this client.
    fn apply(&mut self, shared: &Arc<Outgoing>, source: Source) {
        match shared.event() {
            Event::Message(d) => {
                let epoch = d.position.epoch;
                match self.epoch {
                    None => {
                        if let Some(lost) = self.lost.take() {
                            self.reset(lost, epoch);
                        }
                        self.epoch = Some(epoch);
                    }
                    Some(e) if e > epoch => return, // stale
                    Some(e) if e < epoch => {
                        if !self.continues(&source, d.position.offset) {
                            self.mode = Mode::Check;
                            return;
                        }
                        // The log continues under a new epoch (Redis restarted with its data).
                        self.epoch = Some(epoch);
                    }
                    Some(_) => {}
                }
                let offset = d.position.offset;
                if offset < self.next {
                    return;
                }
                if offset > self.next {
                    self.mode = Mode::Check;
                    return;
                }
                self.next = offset + 1;
                self.pending.push_back(shared.clone());
                if matches!(source, Source::Live) {
                    self.mode = Mode::Live;
                }
            }
            Event::Gap {
                epoch,
                from,
                to,
                reason,
                ..
            } => {
                if self.epoch.is_some_and(|e| e < *epoch)
                    && *from <= self.next
                    && *to >= self.next
                    && self.continues(&source, self.next)
                {
                    self.epoch = Some(*epoch);
                }
                if self.epoch.is_some_and(|e| e != *epoch) || *to < self.next {
                    if self.epoch.is_some_and(|e| e < *epoch) {
                        self.mode = Mode::Check;
                    }
                    return;
                }
                if *from > self.next {
                    self.mode = Mode::Check;
                    return;
                }
                self.epoch = Some(*epoch);
                self.pending.push_back(Outgoing::new(Event::Gap {
                    topic: self.topic.clone(),
                    epoch: *epoch,
                    from: self.next,
                    to: *to,
                    reason: *reason,
                }));
                self.next = to + 1;
            }
            // A reset (or anything new): look at the topic again.
            _ => self.mode = Mode::Check,
        }
    }
}
