//! The benchmark's cases and the measuring machinery every system shares.
//!
//! A *case* is a workload (fan-out to N subscribers at full speed or at a fixed rate, or a
//! catch-up read); a *run* is one case on one system. Every run has the same process layout:
//! one publisher task, and subscriber tasks each on its own Redis connection, all in this
//! process. Payloads carry a 16-byte stamp (nanoseconds since the run's shared base
//! [`Instant`], then a sequence number, both little-endian) padded with zeros to the payload
//! size; subscribers turn it into an end-to-end latency and check order. [`drive_fan_out`]
//! publishes, waits for the deliveries within a deadline, and counts what never arrived as
//! lost; the system modules only supply a [`Publisher`] and subscriber tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::BenchError;

/// Size of the stamp at the start of every payload.
pub(crate) const STAMP_LEN: usize = 16;
/// Messages per batch at full speed: one pipeline of PUBLISH/XADD, one `publish_batch`.
pub(crate) const FULL_SPEED_BATCH: usize = 64;
/// Messages per batch when filling history for a catch-up case.
pub(crate) const PREFILL_BATCH: usize = 1000;
/// Entries per XRANGE / XREAD call of the raw Streams baseline.
pub(crate) const READ_COUNT: usize = 1024;
/// Most messages sent in one burst at a fixed rate (after a stall).
const MAX_BURST: u64 = 256;
/// The fan-outs measured.
const FAN_OUTS: [usize; 3] = [1, 4, 16];
/// The payload sizes measured.
const PAYLOADS: [usize; 2] = [128, 4096];
/// The payload size of the catch-up case.
const CATCH_UP_PAYLOAD: usize = 128;
/// Primaries of the private cluster of the cluster case (no replicas).
pub(crate) const CLUSTER_PRIMARIES: usize = 3;
/// Topics (channels) of the cluster case, spread over the primaries by hash slot.
pub(crate) const CLUSTER_TOPICS: usize = 16;
/// Subscribers of the cluster case, each subscribed to every topic.
const CLUSTER_SUBSCRIBERS: usize = 4;
/// The payload size of the cluster case.
const CLUSTER_PAYLOAD: usize = 128;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum System {
    /// Raw PUBLISH / SUBSCRIBE.
    #[value(name = "redis-pubsub")]
    RedisPubsub,
    /// Raw XADD / XREAD BLOCK (XRANGE for catch-up).
    #[value(name = "redis-streams")]
    RedisStreams,
    /// Herald.
    #[value(name = "herald")]
    Herald,
}

impl System {
    /// The name used in the table and the JSON output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::RedisPubsub => "redis-pubsub",
            System::RedisStreams => "redis-streams",
            System::Herald => "herald",
        }
    }
}

/// How fast the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rate {
    /// As fast as it can, in batches of [`FULL_SPEED_BATCH`], one batch in flight.
    Max,
    /// This many messages per second, each sent on its own.
    PerSecond(u64),
}

/// The shape of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Live fan-out: subscribers first, then the publisher.
    FanOut {
        /// Subscribers, each on its own connection.
        subscribers: usize,
        /// Publishing rate.
        rate: Rate,
    },
    /// One subscriber `messages` behind reads to the end.
    CatchUp,
    /// Live fan-out at full speed over a private Redis Cluster: each batch goes to the next
    /// of `topics` topics in turn, every subscriber receives all of them.
    Cluster {
        /// Subscribers, each with connections of its own.
        subscribers: usize,
        /// Topics published to.
        topics: usize,
    },
}

/// One workload, run once per system.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// Its name, e.g. `fan4-128B-max`.
    pub(crate) name: String,
    /// Fan-out or catch-up.
    pub(crate) shape: Shape,
    /// Payload size in bytes.
    pub(crate) payload: usize,
    /// Messages published.
    pub(crate) messages: u64,
}

impl Case {
    /// The systems that run this case, baselines first (the Herald row needs their figures).
    pub(crate) fn systems(&self) -> &'static [System] {
        match self.shape {
            Shape::FanOut { .. } => &[System::RedisPubsub, System::RedisStreams, System::Herald],
            // Pub/Sub keeps no history, so it has no catch-up.
            Shape::CatchUp => &[System::RedisStreams, System::Herald],
            // The cluster baseline is sharded Pub/Sub (SPUBLISH / SSUBSCRIBE).
            Shape::Cluster { .. } => &[System::RedisPubsub, System::Herald],
        }
    }

    /// Subscribers of this case.
    pub(crate) fn subscribers(&self) -> usize {
        match self.shape {
            Shape::FanOut { subscribers, .. } | Shape::Cluster { subscribers, .. } => subscribers,
            Shape::CatchUp => 1,
        }
    }

    /// Publishing rate of this case (catch-up fills history at full speed).
    pub(crate) fn rate(&self) -> Rate {
        match self.shape {
            Shape::FanOut { rate, .. } => rate,
            Shape::CatchUp | Shape::Cluster { .. } => Rate::Max,
        }
    }
}

/// `128B`, `4KiB`, ...
pub(crate) fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// All cases, in running order, filtered by name (`filters` empty: all). A case is kept when
/// its name contains one of the filters.
pub(crate) fn plan(messages: u64, catch_up: u64, rate: u64, filters: &[String]) -> Vec<Case> {
    let mut cases = Vec::new();
    for rate in [Rate::Max, Rate::PerSecond(rate)] {
        for payload in PAYLOADS {
            for subscribers in FAN_OUTS {
                let rate_label = match rate {
                    Rate::Max => "max".to_string(),
                    Rate::PerSecond(r) => format!("{r}/s"),
                };
                cases.push(Case {
                    name: format!("fan{subscribers}-{}-{rate_label}", size_label(payload)),
                    shape: Shape::FanOut { subscribers, rate },
                    payload,
                    messages,
                });
            }
        }
    }
    cases.push(Case {
        name: format!("catchup-{}", size_label(CATCH_UP_PAYLOAD)),
        shape: Shape::CatchUp,
        payload: CATCH_UP_PAYLOAD,
        messages: catch_up,
    });
    cases.push(Case {
        name: format!(
            "cluster-{CLUSTER_TOPICS}topics-{}-max",
            size_label(CLUSTER_PAYLOAD)
        ),
        shape: Shape::Cluster {
            subscribers: CLUSTER_SUBSCRIBERS,
            topics: CLUSTER_TOPICS,
        },
        payload: CLUSTER_PAYLOAD,
        messages,
    });
    cases.retain(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())));
    cases
}

/// Nanoseconds from `base` to now.
fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A payload of `size` bytes (at least [`STAMP_LEN`]) stamped with now and `seq`.
pub(crate) fn stamp(base: Instant, seq: u64, size: usize) -> Vec<u8> {
    let mut payload = vec![0u8; size.max(STAMP_LEN)];
    payload[..8].copy_from_slice(&nanos_since(base).to_le_bytes());
    payload[8..STAMP_LEN].copy_from_slice(&seq.to_le_bytes());
    payload
}

/// `(sent_at_ns, seq)` from a stamped payload; `None` if it is too short.
fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(8..STAMP_LEN)?.try_into().ok()?);
    Some((sent, seq))
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Internal(format!("cannot create a histogram: {e}")))
}

/// Live counters of one run, read by the progress bar and the drain loop.
#[derive(Debug, Default)]
pub(crate) struct RunCounters {
    /// Messages the publisher has sent (and Redis acknowledged).
    pub(crate) published: AtomicU64,
    /// Distinct deliveries, all subscribers together.
    pub(crate) delivered: AtomicU64,
}

/// What one subscriber saw.
///
/// Deliveries are counted once per sequence number (a bit set of those seen), so a message
/// delivered twice is a duplicate, not two deliveries. A message arriving after one published
/// later is *reordered*: with one batch in flight (full speed) that breaks the publisher's
/// order; at a fixed rate, messages sent concurrently have no defined order, so it is only
/// informative there.
#[derive(Debug)]
pub(crate) struct Tally {
    base: Instant,
    counters: Arc<RunCounters>,
    latency: Option<Histogram<u64>>,
    /// Sequence numbers are below this (the messages of the run).
    limit: u64,
    /// One bit per sequence number seen.
    seen: Vec<u64>,
    /// One past the highest sequence number seen.
    next_seq: u64,
    /// Distinct messages delivered.
    pub(crate) delivered: u64,
    /// Messages delivered again (not counted in `delivered`).
    pub(crate) duplicates: u64,
    /// Messages delivered after one published later.
    pub(crate) reordered: u64,
    /// Problems reported while receiving (errors, gaps, closed connections).
    pub(crate) errors: u64,
    /// The first of them, for the report.
    pub(crate) first_error: Option<String>,
    /// When the last new message arrived.
    pub(crate) last_at: Option<Instant>,
}

impl Tally {
    /// A tally for a run of `messages` messages that records latencies when `latency` is true.
    pub(crate) fn new(
        base: Instant,
        counters: Arc<RunCounters>,
        messages: u64,
        latency: bool,
    ) -> Result<Self, BenchError> {
        Ok(Tally {
            base,
            counters,
            latency: if latency {
                Some(new_histogram()?)
            } else {
                None
            },
            limit: messages,
            seen: Vec::new(),
            next_seq: 0,
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            errors: 0,
            first_error: None,
            last_at: None,
        })
    }

    /// Records one received payload.
    pub(crate) fn message(&mut self, payload: &[u8]) {
        let now = Instant::now();
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        let Some((sent_ns, seq)) = read_stamp(payload) else {
            self.error(format!(
                "received a payload of {} bytes, shorter than the {STAMP_LEN}-byte stamp",
                payload.len()
            ));
            return;
        };
        if seq >= self.limit {
            self.error(format!(
                "received sequence number {seq}, but only {} messages are published",
                self.limit
            ));
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if seq < self.next_seq {
            self.reordered += 1;
        } else {
            self.next_seq = seq + 1;
        }
        self.delivered += 1;
        self.last_at = Some(now);
        if let Some(h) = &mut self.latency {
            h.saturating_record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a problem; the first one is kept for the report.
    pub(crate) fn error(&mut self, what: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what.into());
        }
    }
}

/// The figures of one run.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Messages published.
    pub(crate) published: u64,
    /// From the first send to the last acknowledgement.
    pub(crate) publish_elapsed: Duration,
    /// Deliveries expected: published × subscribers.
    pub(crate) expected: u64,
    /// Distinct deliveries, all subscribers together.
    pub(crate) delivered: u64,
    /// From the start of publishing (fan-out) or reading (catch-up) to the last delivery.
    pub(crate) deliver_elapsed: Duration,
    /// End-to-end latencies, all subscribers merged (fan-out only).
    pub(crate) latency: Option<Histogram<u64>>,
    /// Deliveries repeated (not counted in `delivered`).
    pub(crate) duplicates: u64,
    /// Deliveries after a message published later.
    pub(crate) reordered: u64,
    /// Problems seen by subscribers.
    pub(crate) errors: u64,
    /// The first of them.
    pub(crate) first_error: Option<String>,
}

impl Measured {
    /// Merges subscriber tallies into the figures of a run.
    pub(crate) fn from_tallies(
        published: u64,
        publish_elapsed: Duration,
        expected: u64,
        started: Instant,
        tallies: Vec<Tally>,
    ) -> Result<Self, BenchError> {
        let mut m = Measured {
            published,
            publish_elapsed,
            expected,
            delivered: 0,
            deliver_elapsed: Duration::ZERO,
            latency: None,
            duplicates: 0,
            reordered: 0,
            errors: 0,
            first_error: None,
        };
        for t in tallies {
            m.delivered += t.delivered;
            m.duplicates += t.duplicates;
            m.reordered += t.reordered;
            m.errors += t.errors;
            if m.first_error.is_none() {
                m.first_error = t.first_error;
            }
            if let Some(last) = t.last_at {
                m.deliver_elapsed = m
                    .deliver_elapsed
                    .max(last.saturating_duration_since(started));
            }
            if let Some(h) = t.latency {
                match &mut m.latency {
                    None => m.latency = Some(h),
                    Some(all) => all.add(&h).map_err(|e| {
                        BenchError::Internal(format!("cannot merge histograms: {e}"))
                    })?,
                }
            }
        }
        Ok(m)
    }
}

/// Spawned tasks that are aborted if the run is abandoned (error or Ctrl-C).
#[derive(Debug)]
pub(crate) struct Tasks<T>(Vec<JoinHandle<T>>);

impl<T> Tasks<T> {
    /// No tasks yet.
    pub(crate) fn new() -> Self {
        Tasks(Vec::new())
    }

    /// Adds a task.
    pub(crate) fn push(&mut self, task: JoinHandle<T>) {
        self.0.push(task);
    }

    /// True when every task has ended.
    fn all_finished(&self) -> bool {
        self.0.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every task (each at most `deadline`).
    async fn join(&mut self, deadline: Duration) -> Result<Vec<T>, BenchError> {
        let mut out = Vec::with_capacity(self.0.len());
        for task in &mut self.0 {
            match tokio::time::timeout(deadline, task).await {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => {
                    return Err(BenchError::Internal(format!(
                        "a subscriber task failed: {e}"
                    )))
                }
                Err(_) => {
                    return Err(BenchError::Internal(format!(
                        "a subscriber task did not stop within {deadline:?}"
                    )))
                }
            }
        }
        Ok(out)
    }
}

impl<T> Drop for Tasks<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Sends messages for one system.
pub(crate) trait Publisher {
    /// Sends the payloads as one batch (one pipeline, one `publish_batch`) and waits for it.
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError>;
    /// Sends each payload as its own command, all at once (the connection pipelines them),
    /// and waits for all.
    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError>;
}

/// The shared settings of a fan-out run.
#[derive(Debug, Clone)]
pub(crate) struct FanOutRun {
    /// The case.
    pub(crate) case: Case,
    /// The run's latency base.
    pub(crate) base: Instant,
    /// Live counters.
    pub(crate) counters: Arc<RunCounters>,
    /// Longest publishing phase.
    pub(crate) publish_timeout: Duration,
    /// How long to wait for deliveries after publishing ends.
    pub(crate) drain_timeout: Duration,
}

/// The topics (or channels) of a publisher, one per call in turn.
pub(crate) struct InTurn {
    names: Vec<String>,
    next: usize,
}

impl InTurn {
    pub(crate) fn new(names: Vec<String>) -> Self {
        InTurn { names, next: 0 }
    }

    /// The name for the next call.
    pub(crate) fn next(&mut self) -> Result<&str, BenchError> {
        let i = self.next % self.names.len().max(1);
        self.next = self.next.wrapping_add(1);
        self.names
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| BenchError::Internal("no topic or channel to publish to".into()))
    }
}

/// Publishes the case's messages, waits for the subscribers (until all arrived, all
/// subscribers ended, or the drain deadline), stops them and merges what they saw.
pub(crate) async fn drive_fan_out<P: Publisher>(
    run: &FanOutRun,
    publisher: &mut P,
    subscribers: &mut Tasks<Tally>,
    stop: &watch::Sender<bool>,
) -> Result<Measured, BenchError> {
    let n = run.case.messages;
    let size = run.case.payload;
    let started = Instant::now();
    let publish_deadline = started + run.publish_timeout;
    let mut published = 0u64;
    match run.case.rate() {
        Rate::Max => {
            while published < n && Instant::now() < publish_deadline {
                let k = (n - published).min(FULL_SPEED_BATCH as u64);
                let batch = (published..published + k)
                    .map(|seq| stamp(run.base, seq, size))
                    .collect();
                publisher.send_batch(batch).await?;
                published += k;
                run.counters.published.store(published, Ordering::Relaxed);
            }
        }
        Rate::PerSecond(rate) => {
            let rate = rate.max(1);
            while published < n && Instant::now() < publish_deadline {
                // Message i is due at i / rate seconds after the start.
                let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(n);
                if due > published {
                    let k = (due - published).min(MAX_BURST);
                    let batch = (published..published + k)
                        .map(|seq| stamp(run.base, seq, size))
                        .collect();
                    publisher.send_each(batch).await?;
                    published += k;
                    run.counters.published.store(published, Ordering::Relaxed);
                } else {
                    let next = started + Duration::from_secs_f64(published as f64 / rate as f64);
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        }
    }
    let publish_elapsed = started.elapsed();
    let expected = published * run.case.subscribers() as u64;
    let drain_deadline = Instant::now() + run.drain_timeout;
    while run.counters.delivered.load(Ordering::Relaxed) < expected
        && Instant::now() < drain_deadline
        && !subscribers.all_finished()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(true);
    let tallies = subscribers.join(Duration::from_secs(10)).await?;
    Measured::from_tallies(published, publish_elapsed, expected, started, tallies)
}

/// Fills history for a catch-up case: `n` messages in batches of [`PREFILL_BATCH`]. Returns
/// the time it took.
pub(crate) async fn prefill<P: Publisher>(
    publisher: &mut P,
    base: Instant,
    n: u64,
    size: usize,
    counters: &RunCounters,
    deadline: Duration,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut published = 0u64;
    while published < n {
        if started.elapsed() > deadline {
            return Err(BenchError::Internal(format!(
                "filling history for the catch-up case took longer than {deadline:?} \
                 ({published} of {n} published); use a smaller --catchup or a longer --run-timeout"
            )));
        }
        let k = (n - published).min(PREFILL_BATCH as u64);
        let batch = (published..published + k)
            .map(|seq| stamp(base, seq, size))
            .collect();
        publisher.send_batch(batch).await?;
        published += k;
        counters.published.store(published, Ordering::Relaxed);
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let base = Instant::now();
        let p = stamp(base, 42, 128);
        assert_eq!(p.len(), 128);
        let (_, seq) = read_stamp(&p).unwrap();
        assert_eq!(seq, 42);
        assert!(read_stamp(&p[..10]).is_none());
    }

    #[test]
    fn tally_counts_duplicates_and_reorders() {
        let base = Instant::now();
        let counters = Arc::new(RunCounters::default());
        let mut t = Tally::new(base, counters.clone(), 100, true).unwrap();
        for seq in [0, 1, 3, 3, 2, 70, 99] {
            t.message(&stamp(base, seq, 32));
        }
        t.message(b"short");
        t.message(&stamp(base, 100, 32));
        assert_eq!(t.delivered, 6); // 0 1 3 2 70 99
        assert_eq!(t.duplicates, 1); // the second 3
        assert_eq!(t.reordered, 1); // 2 after 3
        assert_eq!(t.errors, 2); // too short, out of range
        assert_eq!(counters.delivered.load(Ordering::Relaxed), 6);
        assert_eq!(t.latency.as_ref().map(Histogram::len), Some(6));
    }

    #[test]
    fn plan_and_filter() {
        let all = plan(10, 20, 10_000, &[]);
        assert_eq!(all.len(), 14);
        assert_eq!(all[13].name, "cluster-16topics-128B-max");
        assert_eq!(all[0].name, "fan1-128B-max");
        assert!(all.iter().any(|c| c.name == "fan16-4KiB-10000/s"));
        let some = plan(10, 20, 10_000, &["fan16-128B".into(), "catchup".into()]);
        let names: Vec<&str> = some.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["fan16-128B-max", "fan16-128B-10000/s", "catchup-128B"]
        );
        let cluster = plan(10, 20, 10_000, &["cluster".into()]);
        assert_eq!(cluster.len(), 1);
        assert_eq!(cluster[0].subscribers(), 4);
        assert_eq!(cluster[0].systems(), [System::RedisPubsub, System::Herald]);
    }
}
