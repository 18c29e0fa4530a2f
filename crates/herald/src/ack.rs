//! Acknowledgement through durable cursors, and lag (see docs/DESIGN.md, "Acknowledgements
//! and lag").
//!
//! A member acknowledges a topic's messages by committing a durable cursor named after its
//! member id on that topic (see [`membership`](crate::membership)). A publisher then waits
//! until every live member of a group (or `n` of them) has committed at least its message's
//! offset:
//!
//! ```
//! use herald::{Acks, Herald, Start};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! let node = Herald::builder().node_id("web-1").connect().await?;
//! let member = node.join("web").await?;
//! let mut config = node.subscribe(["config"]).durable(member.id()).from(Start::Earliest).await?;
//!
//! let receipt = node.publish("config", "v2").await?;
//! // The member applies the configuration, then commits its cursor.
//! if let Some(Ok(herald::Event::Message(d))) = config.next_event().await {
//!     config.commit(&d).await?;
//! }
//! let report = node
//!     .wait_for_acks(&receipt, "web")
//!     .acks(Acks::All)
//!     .timeout(Duration::from_secs(5))
//!     .await?;
//! assert!(report.complete);
//! assert_eq!(report.acked, ["web-1"]);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::broker::Slot;
use crate::client::Herald;
use crate::clock;
use crate::error::{at_least, Result};
use crate::membership::{members_topic, validate_group};
use crate::message::{Message, Receipt};
use crate::position::Position;
use crate::topic::validate_topic;

/// The shortest accepted [`AckWait::poll_interval`].
const MIN_ACK_POLL: Duration = Duration::from_millis(10);

/// How many acknowledgements to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acks {
    /// Every member that was live when the message was published and still is when the wait
    /// starts (members that expire meanwhile are reported in [`AckReport::expired`], not
    /// waited for).
    All,
    /// At least this many members.
    Count(usize),
}

/// The outcome of [`Herald::wait_for_acks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AckReport {
    /// The topic of the message.
    pub topic: String,
    /// The message's position.
    #[serde(flatten)]
    pub position: Position,
    /// The group whose members were waited for.
    pub group: String,
    /// True when the requested acknowledgements arrived before the timeout.
    pub complete: bool,
    /// Members that committed at or past the offset, sorted.
    pub acked: Vec<String>,
    /// Members that had not when the wait ended (the laggards), sorted.
    pub pending: Vec<String>,
    /// Members that expired or left before acknowledging, sorted.
    pub expired: Vec<String>,
    /// How long the wait took, in milliseconds.
    pub waited_ms: u64,
}

/// Builds a wait for acknowledgements; `.await` it. See [`Herald::wait_for_acks`].
#[must_use = "the wait happens only when awaited"]
#[derive(Debug)]
pub struct AckWait {
    herald: Herald,
    topic: String,
    position: Position,
    group: String,
    acks: Acks,
    timeout: Duration,
    poll: Duration,
}

impl AckWait {
    /// How many acknowledgements to wait for (default [`Acks::All`]).
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// How long to wait at most (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often to read the cursors (default 50 ms, at least 10 ms: a shorter interval is
    /// refused when the wait starts).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Waits; returns the report when the acknowledgements arrived or the timeout passed.
    /// Fails only when the broker cannot be read.
    pub async fn wait(self) -> Result<AckReport> {
        validate_topic(&self.topic)?;
        validate_group(&self.group)?;
        at_least("acknowledgement poll interval", self.poll, MIN_ACK_POLL)?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let broker = self.herald.broker();
        // Members that joined after the message was published are not waited for: both times
        // are the broker's clock. (When the message is no longer readable, every live member
        // is waited for.)
        let published_at = match broker
            .read(&self.topic, self.position.offset, 1)
            .await?
            .slots
            .first()
        {
            Some(Slot::Entry(e)) if e.offset == self.position.offset => Some(e.published_at_ms),
            _ => None,
        };
        let mut pending: BTreeSet<String> = self
            .herald
            .members(&self.group)
            .await?
            .into_iter()
            .filter(|m| published_at.is_none_or(|t| m.joined_at_ms <= t))
            .map(|m| m.id)
            .collect();
        let mut acked = BTreeSet::new();
        let mut expired = BTreeSet::new();
        loop {
            let cursors = broker.all_cursors(&self.topic).await?;
            for (name, commit) in cursors {
                let acks = commit.position.epoch == self.position.epoch
                    && commit.position.offset >= self.position.offset;
                if acks && pending.remove(&name) {
                    acked.insert(name);
                }
            }
            if !pending.is_empty() {
                let list = broker.member_list(&members_topic(&self.group)).await?;
                let live: BTreeSet<&str> = list
                    .members
                    .iter()
                    .filter(|(_, r)| r.expires_at_ms >= list.now_ms)
                    .map(|(id, _)| id.as_str())
                    .collect();
                let gone: Vec<String> = pending
                    .iter()
                    .filter(|id| !live.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    pending.remove(&id);
                    expired.insert(id);
                }
            }
            let complete = match self.acks {
                Acks::All => pending.is_empty(),
                Acks::Count(n) => acked.len() >= n,
            };
            let now = Instant::now();
            if complete || now >= deadline {
                return Ok(AckReport {
                    topic: self.topic,
                    position: self.position,
                    group: self.group,
                    complete,
                    acked: acked.into_iter().collect(),
                    pending: pending.into_iter().collect(),
                    expired: expired.into_iter().collect(),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            tokio::time::sleep(self.poll.min(deadline - now)).await;
        }
    }
}

impl IntoFuture for AckWait {
    type Output = Result<AckReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<AckReport>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

/// Publishes a message and waits for its acknowledgements; `.await` it. See
/// [`Herald::publish_and_wait`].
#[must_use = "nothing is published until awaited"]
#[derive(Debug)]
pub struct PublishAndWait {
    herald: Herald,
    topic: String,
    message: Message,
    group: String,
    acks: Acks,
    timeout: Duration,
    poll: Duration,
}

impl PublishAndWait {
    /// How many acknowledgements to wait for (default [`Acks::All`]).
    pub fn wait_for(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// How long to wait for them at most (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often to read the cursors (default 50 ms, at least 10 ms: a shorter interval is
    /// refused when the wait starts).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Publishes, then waits as [`Herald::wait_for_acks`] does.
    pub async fn run(self) -> Result<AckReport> {
        validate_group(&self.group)?;
        let receipt = self.herald.publish(&self.topic, self.message).await?;
        self.herald
            .wait_for_acks(&receipt, self.group)
            .acks(self.acks)
            .timeout(self.timeout)
            .poll_interval(self.poll)
            .await
    }
}

impl IntoFuture for PublishAndWait {
    type Output = Result<AckReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<AckReport>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// One durable cursor's lag, as [`Herald::lag`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CursorLag {
    /// The topic.
    pub topic: String,
    /// The cursor's name (a member id, by the acknowledgement convention).
    pub cursor: String,
    /// The committed position.
    #[serde(flatten)]
    pub position: Position,
    /// The topic's last offset (in its current epoch).
    pub last_offset: u64,
    /// Messages published after the committed offset; every message of the current epoch
    /// when the cursor belongs to an older one.
    pub lag: u64,
    /// When the cursor was last committed (committer's clock, ms since the Unix epoch).
    pub committed_at_ms: u64,
    /// How long ago that was, in milliseconds (this node's clock).
    pub age_ms: u64,
}

impl Herald {
    /// Waits until members of `group` have committed durable cursors, named after their
    /// member ids, at or past `receipt`'s offset on its topic (see [`AckWait`]).
    ///
    /// The members waited for are those live when the wait starts that had joined before the
    /// message was published (by the broker's clock): members joining later are not waited
    /// for, and members that expire or leave meanwhile are reported in
    /// [`AckReport::expired`]. A timeout is not an error: the
    /// report says `complete: false` and names the `pending` members.
    pub fn wait_for_acks(&self, receipt: &Receipt, group: impl Into<String>) -> AckWait {
        AckWait {
            herald: self.clone(),
            topic: receipt.topic.clone(),
            position: receipt.position,
            group: group.into(),
            acks: Acks::All,
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        }
    }

    /// Publishes `message` to `topic`, then waits until the members of `group` have
    /// acknowledged it (see [`wait_for_acks`](Self::wait_for_acks)); the report carries the
    /// message's epoch and offset.
    ///
    /// ```no_run
    /// # use herald::{Acks, Herald};
    /// # use std::time::Duration;
    /// # async fn f(node: Herald) -> Result<(), herald::Error> {
    /// let report = node
    ///     .publish_and_wait("config", "v2", "web")
    ///     .wait_for(Acks::All)
    ///     .timeout(Duration::from_secs(5))
    ///     .await?;
    /// if !report.complete {
    ///     eprintln!("not applied by {:?}", report.pending);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_and_wait(
        &self,
        topic: impl Into<String>,
        message: impl Into<Message>,
        group: impl Into<String>,
    ) -> PublishAndWait {
        PublishAndWait {
            herald: self.clone(),
            topic: topic.into(),
            message: message.into(),
            group: group.into(),
            acks: Acks::All,
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        }
    }

    /// Every durable cursor of `topic` with its committed offset, lag in messages and the
    /// age of its last commit, sorted by cursor name.
    pub async fn lag(&self, topic: &str) -> Result<Vec<CursorLag>> {
        let info = self.inspect(topic).await?;
        let now = clock::now_ms();
        Ok(info
            .cursors
            .into_iter()
            .map(|c| CursorLag {
                topic: info.topic.clone(),
                cursor: c.name,
                position: c.commit.position,
                last_offset: info.last_offset,
                lag: c.lag,
                committed_at_ms: c.commit.committed_at_ms,
                age_ms: now.saturating_sub(c.commit.committed_at_ms),
            })
            .collect())
    }
}
