//! Recurring schedules: "publish this every N seconds (or on this cron expression), once per
//! tick, however many nodes run the schedule" — with a work group on the topic, each tick runs
//! on exactly one node.
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
//! - **Cron schedules** ([`ScheduleBuilder::cron`], syntax in [`cron`]): times are UTC; tick
//!   `k` is the minute `k` since the Unix epoch, and exists only when the expression fires
//!   then. It is published during that minute with the key `schedule:<name>:<k>` and the same
//!   headers (`herald-schedule-due` = `k × 60000`), so the rules above hold unchanged: one
//!   message per tick however many schedulers run (clocks agreeing within the dedup window);
//!   a fire minute during which no scheduler ran is skipped, not run late; a scheduler that
//!   starts during a fire minute publishes that tick at once. (A cron `* * * * *` and an
//!   `every` of 60 s name the same ticks.)
//! - The clock is this machine's by default; [`ScheduleBuilder::clock`] takes another one
//!   (a [`ManualClock`] in tests and simulations).
//! - A publish that fails transiently is retried until its tick is over, then given up (and
//!   logged); a permanent failure (bad input, refused) ends the schedule with the error.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::client::Herald;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::topic::validate_topic;

pub mod clock;
pub mod cron;

pub use clock::{Clock, ManualClock};
pub use cron::{Cron, CronError, CronField};

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
            cron: None,
            clock: Clock::system(),
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
    cron: Option<std::result::Result<Cron, CronError>>,
    clock: Clock,
    message: Message,
    ticks: Option<RangeInclusive<u64>>,
}

/// How a schedule cuts time into ticks.
enum Period {
    /// Tick `k` is `[k × ms, (k + 1) × ms)`.
    Every(u64),
    /// Tick `k` is the minute `k` (since the Unix epoch) when the expression fires then.
    Cron(Cron),
}

impl Period {
    /// The first tick from `first` on whose window has not ended at `now`.
    fn current_or_next(&self, now: u64, first: u64) -> Option<u64> {
        match self {
            Period::Every(ms) => Some((now / ms).max(first)),
            Period::Cron(c) => c.next_from((now / cron::MINUTE_MS).max(first)),
        }
    }

    /// The tick's window: (due, end), ms since the Unix epoch.
    fn window(&self, tick: u64) -> (u64, u64) {
        let ms = match self {
            Period::Every(ms) => *ms,
            Period::Cron(_) => cron::MINUTE_MS,
        };
        let due = tick.saturating_mul(ms);
        (due, due.saturating_add(ms))
    }
}

impl ScheduleBuilder {
    /// The period (at least 10 ms); a schedule has either a period or a
    /// [cron expression](Self::cron).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = Some(every);
        self
    }

    /// Fires on a cron expression (five fields, in UTC; see [`Cron`]) instead of a period:
    /// tick `k` is minute `k` since the Unix epoch, published when the expression fires
    /// then. An invalid expression makes [`run`](Self::run) fail with
    /// [`Error::InvalidCron`], naming the field at fault.
    pub fn cron(mut self, expression: impl AsRef<str>) -> Self {
        self.cron = Some(Cron::parse(expression.as_ref()));
        self
    }

    /// The clock the schedule reads and sleeps by (default [`Clock::system`]); a
    /// [`ManualClock`] lets a test or simulation move time itself.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The message published at each tick (its idempotency key is replaced by the tick's).
    pub fn message(mut self, message: impl Into<Message>) -> Self {
        self.message = message.into();
        self
    }

    /// Runs only the ticks in `ticks` (see [`tick_of`], or minutes since the Unix epoch for
    /// a cron schedule), then ends; by default it runs until dropped.
    pub fn ticks(mut self, ticks: RangeInclusive<u64>) -> Self {
        self.ticks = Some(ticks);
        self
    }

    /// Runs the schedule (until its last tick, or forever).
    pub async fn run(self) -> Result<()> {
        self.run_with(|_| {}).await
    }

    fn period(&self) -> Result<Period> {
        match (&self.every, &self.cron) {
            (Some(_), Some(_)) => Err(Error::InvalidSetting {
                name: "schedule period",
                reason: "a schedule has either a period or a cron expression, not both".into(),
            }),
            (None, None) => Err(Error::InvalidSetting {
                name: "schedule period",
                reason: "a schedule needs a period or a cron expression".into(),
            }),
            (None, Some(Ok(cron))) => Ok(Period::Cron(cron.clone())),
            (None, Some(Err(e))) => Err(Error::InvalidCron(e.clone())),
            (Some(every), None) => {
                if *every < MIN_EVERY {
                    return Err(Error::InvalidSetting {
                        name: "schedule period",
                        reason: format!("must be at least {MIN_EVERY:?}, got {every:?}"),
                    });
                }
                Ok(Period::Every(
                    u64::try_from(every.as_millis()).unwrap_or(u64::MAX / 4),
                ))
            }
        }
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
        let period = self.period()?;
        let clock = &self.clock;
        let (first, last) = match &self.ticks {
            Some(r) => (*r.start(), Some(*r.end())),
            None => (0, None),
        };
        loop {
            let now = clock.now_ms();
            let Some(tick) = period.current_or_next(now, first) else {
                return Err(Error::InvalidSetting {
                    name: "cron expression",
                    reason: "does not fire in the next 9 years".into(),
                });
            };
            if last.is_some_and(|l| tick > l) {
                return Ok(());
            }
            let (due, end) = period.window(tick);
            if due > now {
                clock.sleep_until(due).await;
                continue;
            }
            let message = self
                .message
                .clone()
                .key(format!("schedule:{}:{tick}", self.name))
                .header("herald-schedule", self.name.clone())
                .header("herald-schedule-tick", tick.to_string())
                .header("herald-schedule-due", due.to_string());
            match self.herald.publish(&self.topic, message).await {
                Ok(receipt) => published(Tick { tick, receipt }),
                Err(e) if e.kind() == ErrorKind::BadInput || e.kind() == ErrorKind::Refused => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::warn!(schedule = %self.name, tick, error = %e, "publishing a tick failed");
                    if clock.now_ms() < end {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            if last == Some(tick) {
                return Ok(());
            }
            clock.sleep_until(end).await;
        }
    }
}
