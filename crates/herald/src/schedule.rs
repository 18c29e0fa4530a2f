//! Recurring schedules: "publish this every N seconds, once per tick, however many nodes run
//! the schedule" — with a work group on the topic, each tick runs on exactly one node.
//!
//! ```
//! use herald::Herald;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! let node = Herald::builder().node_id("node-1").connect().await?;
//! let tick = herald::schedule::tick_of(herald::schedule::now_ms(), Duration::from_millis(50));
//! // Every node may run the same schedule: each tick is published once.
//! node.schedule("compact", "maintenance")
//!     .every(Duration::from_millis(50))
//!     .message("compact the database")
//!     .ticks(tick + 1..=tick + 2)
//!     .run()
//!     .await?;
//! assert_eq!(node.inspect("maintenance").await?.last_offset, 2);
//! # Ok(())
//! # }
//! ```
//!
//! ## Rules
//! - Time is cut into ticks of `every`: tick `k` is the period starting at `k × every`
//!   milliseconds after the Unix epoch (the scheduler's clock). During tick `k`, every running
//!   scheduler publishes the message with the idempotency key `schedule:<name>:<k>` and the
//!   headers `herald-schedule` (the name), `herald-schedule-tick` (`k`) and
//!   `herald-schedule-due` (`k × every`, ms since the Unix epoch). The topic's dedup window
//!   makes that **one message per tick**, however many schedulers run, provided their clocks
//!   agree within the topic's dedup window (default 2 minutes). Clocks that differ by a
//!   fraction of `every` may move a tick's publish by that much; they never duplicate it.
//! - **Missed ticks** (no scheduler was running during the tick) are not run late: they are
//!   skipped, and show as gaps in `herald-schedule-tick`. A scheduler that starts publishes
//!   the current tick at once (a no-op when another scheduler already did).
//! - A publish that fails transiently is retried until its tick is over, then given up (and
//!   logged); a permanent failure (bad input, refused) ends the schedule with the error.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::client::Herald;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::topic::validate_topic;

/// The shortest accepted period.
pub const MIN_EVERY: Duration = Duration::from_millis(10);

/// Milliseconds since the Unix epoch, by this machine's clock (the schedulers' clock).
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// The tick that `at_ms` falls in, for a period of `every`.
pub fn tick_of(at_ms: u64, every: Duration) -> u64 {
    at_ms / u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Herald {
    /// Starts building the recurring schedule `name`, published on `topic`.
    pub fn schedule(&self, name: impl Into<String>, topic: impl Into<String>) -> ScheduleBuilder {
        ScheduleBuilder {
            herald: self.clone(),
            name: name.into(),
            topic: topic.into(),
            every: None,
            message: Message::new(""),
            ticks: None,
        }
    }
}

/// One published tick.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tick {
    /// The tick's number.
    pub tick: u64,
    /// What the publish returned (`duplicate`: another scheduler published this tick first).
    pub receipt: crate::message::Receipt,
}

/// Builds and runs a schedule; from [`Herald::schedule`].
#[derive(Debug)]
#[must_use = "a schedule does nothing until run"]
pub struct ScheduleBuilder {
    herald: Herald,
    name: String,
    topic: String,
    every: Option<Duration>,
    message: Message,
    ticks: Option<RangeInclusive<u64>>,
}

impl ScheduleBuilder {
    /// The period (required, at least 10 ms).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = Some(every);
        self
    }

    /// The message published at each tick (its idempotency key is replaced by the tick's).
    pub fn message(mut self, message: impl Into<Message>) -> Self {
        self.message = message.into();
        self
    }

    /// Runs only the ticks in `ticks` (see [`tick_of`]), then ends; by default it runs
    /// until dropped.
    pub fn ticks(mut self, ticks: RangeInclusive<u64>) -> Self {
        self.ticks = Some(ticks);
        self
    }

    /// Runs the schedule (until its last tick, or forever).
    pub async fn run(self) -> Result<()> {
        self.run_with(|_| {}).await
    }

    /// Runs the schedule, calling `published` after each tick it published (or found
    /// published).
    pub async fn run_with(self, mut published: impl FnMut(Tick)) -> Result<()> {
        validate_topic(&self.topic)?;
        if self.name.is_empty() || !self.name.bytes().all(crate::topic::is_name_byte) {
            return Err(Error::InvalidSetting {
                name: "schedule name",
                reason: format!(
                    "must be 1 or more bytes of A-Z a-z 0-9 . _ - / :, got {:?}",
                    self.name
                ),
            });
        }
        let every = self.every.ok_or_else(|| Error::InvalidSetting {
            name: "schedule period",
            reason: "a schedule needs a period".into(),
        })?;
        if every < MIN_EVERY {
            return Err(Error::InvalidSetting {
                name: "schedule period",
                reason: format!("must be at least {MIN_EVERY:?}, got {every:?}"),
            });
        }
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX / 4);
        let (first, last) = match &self.ticks {
            Some(r) => (*r.start(), Some(*r.end())),
            None => (0, None),
        };
        loop {
            let now = now_ms();
            let tick = tick_of(now, every).max(first);
            if last.is_some_and(|l| tick > l) {
                return Ok(());
            }
            let due = tick.saturating_mul(every_ms);
            if due > now {
                tokio::time::sleep(Duration::from_millis(due - now)).await;
                continue;
            }
            let message = self
                .message
                .clone()
                .key(format!("schedule:{}:{tick}", self.name))
                .header("herald-schedule", self.name.clone())
                .header("herald-schedule-tick", tick.to_string())
                .header("herald-schedule-due", due.to_string());
            let end = due.saturating_add(every_ms);
            match self.herald.publish(&self.topic, message).await {
                Ok(receipt) => published(Tick { tick, receipt }),
                Err(e) if e.kind() == ErrorKind::BadInput || e.kind() == ErrorKind::Refused => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::warn!(schedule = %self.name, tick, error = %e, "publishing a tick failed");
                    if now_ms() < end {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let now = now_ms();
            if end > now {
                tokio::time::sleep(Duration::from_millis(end - now)).await;
            }
        }
    }
}
