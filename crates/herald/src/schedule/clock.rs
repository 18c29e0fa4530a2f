//! The clock a schedule runs by: this machine's clock, or a manual one for tests and
//! simulations ([`ManualClock`]), which moves only when told to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// What a schedule reads the time from and sleeps by; [`Clock::system`] by default.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<watch::Sender<u64>>>,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(t) => write!(f, "Clock::manual({})", *t.borrow()),
        }
    }
}

impl Clock {
    /// This machine's clock (the default).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// Milliseconds since the Unix epoch, by this clock.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            None => crate::clock::now_ms(),
            Some(t) => *t.borrow(),
        }
    }

    /// Waits until this clock reads `at_ms` or later.
    pub(crate) async fn sleep_until(&self, at_ms: u64) {
        match &self.manual {
            None => loop {
                let now = crate::clock::now_ms();
                if now >= at_ms {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
            },
            Some(t) => {
                let mut rx = t.subscribe();
                // The sender lives as long as this clock: waiting ends only when it is reached.
                let _ = rx.wait_for(|&now| now >= at_ms).await;
            }
        }
    }
}

/// A clock that reads what it was last set to, for tests and simulations: a schedule run by
/// it ([`ScheduleBuilder::clock`](super::ScheduleBuilder::clock)) publishes a tick when the
/// clock is moved into it, and sleeps until the clock is moved on.
///
/// ```
/// use herald::schedule::ManualClock;
///
/// let manual = ManualClock::new(1_000);
/// let clock = manual.clock();
/// manual.set(61_000);
/// assert_eq!(clock.now_ms(), 61_000);
/// manual.set(5); // never backwards
/// assert_eq!(clock.now_ms(), 61_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    /// A clock reading `start_ms` (ms since the Unix epoch).
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            time: Arc::new(watch::Sender::new(start_ms)),
        }
    }

    /// Moves the clock to `at_ms`; a time before the current one is ignored (the clock never
    /// runs backwards).
    pub fn set(&self, at_ms: u64) {
        self.time.send_if_modified(|now| {
            if at_ms > *now {
                *now = at_ms;
                true
            } else {
                false
            }
        });
    }

    /// The current time, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        *self.time.borrow()
    }

    /// A [`Clock`] reading this manual clock, for
    /// [`ScheduleBuilder::clock`](super::ScheduleBuilder::clock).
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.time.clone()),
        }
    }
}
