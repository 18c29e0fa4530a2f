//! Herald's one retry mechanism: an exponential [`Backoff`] and [`while_transient`], which
//! repeats an operation while it fails for a reason that may pass, until a deadline.
//!
//! Every retry loop of the crate goes through here: connecting to Redis, each Redis command
//! (publish, read, cursors, settings, membership), and a subscription re-opening its live
//! feed or re-reading history (which uses [`Backoff`] alone: it retries for as long as the
//! consumer listens, not until a deadline).
//!
//! Written by hand rather than taken from a crate (`backon`, `tokio-retry`): Herald's loops
//! measure the deadline from the start of the operation (attempts included, not only the
//! sleeps), bound each attempt by what is left of it, and run an async step between attempts
//! (with Sentinel, following a failover); a crate would need as much glue as this module.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// Exponential backoff without jitter: `initial`, then doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff that starts at `initial` and doubles up to `max`.
    pub(crate) const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The pause before the next attempt; each call doubles the following one, up to `max`.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Starts over from `initial` (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Why [`while_transient`] gave up.
#[derive(Debug)]
pub(crate) enum GaveUp<E> {
    /// The operation failed for good: retrying cannot help.
    Permanent(E),
    /// It kept failing transiently until the deadline; `last` is the last failure.
    Deadline { last: E, waited: Duration },
}

/// Runs `attempt` until it succeeds, fails permanently (per `is_transient`), or `deadline`
/// (measured from the first attempt) has passed, pausing by `backoff` between attempts and
/// never past the deadline. It never gives up before the deadline.
///
/// `attempt` receives what is left of the deadline (at least `MIN_ATTEMPT`), to bound an
/// attempt that could otherwise hang. After each transient failure, `between` runs before
/// the pause (e.g. to follow a failover); its time counts towards the deadline.
pub(crate) async fn while_transient<T, E, A, Fut, B, BFut>(
    what: &'static str,
    deadline: Duration,
    mut backoff: Backoff,
    is_transient: impl Fn(&E) -> bool,
    mut between: B,
    mut attempt: A,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    A: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    B: FnMut(&E) -> BFut,
    BFut: Future<Output = ()>,
{
    let started = Instant::now();
    loop {
        let left = deadline.saturating_sub(started.elapsed()).max(MIN_ATTEMPT);
        let e = match attempt(left).await {
            Ok(v) => return Ok(v),
            Err(e) if !is_transient(&e) => return Err(GaveUp::Permanent(e)),
            Err(e) => e,
        };
        between(&e).await;
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            return Err(GaveUp::Deadline {
                last: e,
                waited: elapsed,
            });
        }
        let pause = backoff.next_pause().min(deadline - elapsed);
        tracing::debug!(operation = what, error = %e, retry_in = ?pause, "transient failure, retrying");
        tokio::time::sleep(pause).await;
    }
}

/// The least time an attempt is given, even when the deadline is (nearly) reached.
const MIN_ATTEMPT: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// No step between attempts.
    fn nothing<E>(_: &E) -> std::future::Ready<()> {
        std::future::ready(())
    }

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let pauses: Vec<u128> = (0..5).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(50));
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let calls = AtomicU32::new(0);
        let between = AtomicU32::new(0);
        let out: Result<u32, GaveUp<String>> = while_transient(
            "test",
            Duration::from_secs(5),
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            |e: &String| e == "transient",
            |_| {
                between.fetch_add(1, Ordering::SeqCst);
                std::future::ready(())
            },
            |_| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(if n < 3 {
                    Err("transient".to_string())
                } else {
                    Ok(n)
                })
            },
        )
        .await;
        assert!(matches!(out, Ok(3)), "{out:?}");
        assert_eq!(between.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn stops_at_a_permanent_failure() {
        let calls = AtomicU32::new(0);
        let out: Result<(), GaveUp<String>> = while_transient(
            "test",
            Duration::from_secs(5),
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            |e: &String| e == "transient",
            nothing,
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err("refused".to_string()))
            },
        )
        .await;
        assert!(matches!(out, Err(GaveUp::Permanent(ref e)) if e == "refused"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_not_before() {
        let deadline = Duration::from_millis(60);
        let started = Instant::now();
        let out: Result<(), GaveUp<String>> = while_transient(
            "test",
            deadline,
            Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
            |_: &String| true,
            nothing,
            |left| {
                assert!(left >= MIN_ATTEMPT && left <= deadline);
                std::future::ready(Err("transient".to_string()))
            },
        )
        .await;
        let Err(GaveUp::Deadline { waited, .. }) = out else {
            panic!("expected the deadline, got {out:?}");
        };
        assert!(waited >= deadline, "gave up after {waited:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
