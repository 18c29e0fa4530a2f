//! The benchmark's cases and the measuring machinery every system shares.
//!
//! A *case* is a workload (fan-out to N subscribers at full speed or at a fixed rate, over a
//! range of payloads; several publishers on one or 16 topics; one subscription over many
//! topics; or a catch-up read); a *run* is one case on one system. Every run has the same
//! process layout: the publishers (one, or those of a several-publishers case, each with its
//! own connection or handle, driven concurrently), and subscriber tasks each on its own Redis
//! connection, all in this process. Payloads carry a 16-byte stamp (nanoseconds since the run's shared base
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
/// The fan-outs measured, at every payload of [`PAYLOADS`] and both rates.
const FAN_OUTS: [usize; 5] = [1, 4, 16, 64, 256];
/// The payload sizes of the fan-out cases.
const PAYLOADS: [usize; 2] = [128, 4096];
/// The payload curve: fan-out 4 at full speed over these sizes (128 B and 4 KiB are among
/// the fan-out cases already).
const CURVE_PAYLOADS: [usize; 5] = [16, 128, 1024, 4096, 65_536];
/// The fan-out of the payload curve.
const CURVE_FAN_OUT: usize = 4;
/// Publishers of the several-publishers cases, each with its own handle or connection.
pub(crate) const PUBLISHERS: [usize; 2] = [4, 16];
/// Topics the several publishers share: one, or this many.
pub(crate) const PUBLISHER_TOPICS: usize = 16;
/// Subscribers of the several-publishers cases, each subscribed to every topic.
pub(crate) const PUBLISHER_SUBSCRIBERS: usize = 4;
/// Topics of the many-topics cases, all in one subscription.
const MANY_TOPICS: [usize; 2] = [1_000, 10_000];
/// The payload of the several-publishers and many-topics cases.
const WIDE_PAYLOAD: usize = 128;
/// Cases that `--quick` runs besides today's (one of each new family).
const QUICK_EXTRA: [&str; 5] = [
    "fan64-128B-max",
    "pubs4-1topic-128B-max",
    "topics1000-128B",
    "fan4-64KiB-max",
    "work4-128B-max",
];
/// Workers of the work-group cases at full speed.
const WORKERS: [usize; 3] = [1, 4, 16];
/// Workers of the fixed-rate work-group case.
const RATE_WORKERS: usize = 4;
/// The fixed rate of the work-group latency case, in messages per second.
const WORK_RATE: u64 = 1_000;
/// The payload of the work-group cases.
const WORK_PAYLOAD: usize = 128;
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
    /// Live fan-out at full speed from several publishers (each its own handle or
    /// connection), each sending its batches to the `topics` in turn.
    Publishers {
        /// Publishers.
        publishers: usize,
        /// Topics published to; every subscriber receives all of them.
        topics: usize,
        /// Subscribers, each on its own connection.
        subscribers: usize,
    },
    /// One subscriber, one subscription over `topics` topics; each message of a batch goes to
    /// the next topic in turn, so that every topic is published to.
    ManyTopics {
        /// Topics in the subscription.
        topics: usize,
    },
    /// Live fan-out at full speed over a private Redis Cluster: each batch goes to the next
    /// of `topics` topics in turn, every subscriber receives all of them.
    Cluster {
        /// Subscribers, each with connections of its own.
        subscribers: usize,
        /// Topics published to.
        topics: usize,
    },
    /// A work group (`work_case`): `workers`, each with a connection or handle of its own,
    /// share one topic's messages, each processed (and acked) by one of them.
    Work {
        /// Workers.
        workers: usize,
        /// Publishing rate.
        rate: Rate,
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
            // The cluster baseline is sharded Pub/Sub (SPUBLISH / SSUBSCRIBE); the cases of
            // several publishers and many topics are measured against raw Pub/Sub.
            Shape::Cluster { .. } | Shape::Publishers { .. } | Shape::ManyTopics { .. } => {
                &[System::RedisPubsub, System::Herald]
            }
            // The work-group baseline is a Streams consumer group.
            Shape::Work { .. } => &[System::RedisStreams, System::Herald],
        }
    }

    /// Workers of a work-group case.
    pub(crate) fn workers(&self) -> Option<usize> {
        match self.shape {
            Shape::Work { workers, .. } => Some(workers),
            _ => None,
        }
    }

    /// How many deliveries each message makes: one per subscriber, one in a work group.
    pub(crate) fn deliveries_per_message(&self) -> u64 {
        match self.shape {
            Shape::Work { .. } => 1,
            _ => self.subscribers() as u64,
        }
    }

    /// Publishers of this case, each with its own handle or connection.
    pub(crate) fn publishers(&self) -> usize {
        match self.shape {
            Shape::Publishers { publishers, .. } => publishers,
            _ => 1,
        }
    }

    /// Topics (channels, streams) of this case.
    pub(crate) fn topics(&self) -> usize {
        match self.shape {
            Shape::Publishers { topics, .. }
            | Shape::ManyTopics { topics }
            | Shape::Cluster { topics, .. } => topics,
            Shape::FanOut { .. } | Shape::CatchUp | Shape::Work { .. } => 1,
        }
    }

    /// True when each message goes to its own topic in turn (rather than each batch).
    pub(crate) fn spreads_messages(&self) -> bool {
        matches!(self.shape, Shape::ManyTopics { .. })
    }

    /// The curves of the charts this case is a point of.
    pub(crate) fn curve_points(&self) -> Vec<CurvePoint> {
        let rate = match self.rate() {
            Rate::Max => "max".to_string(),
            Rate::PerSecond(r) => format!("{r}/s"),
        };
        let size = size_label(self.payload);
        match self.shape {
            Shape::FanOut { subscribers, .. } => {
                // The payload curve's other sizes have no subscriber curve of their own.
                let mut points = Vec::new();
                if PAYLOADS.contains(&self.payload) {
                    points.push(CurvePoint {
                        curve: format!("subscribers-{size}-{rate}"),
                        axis: Axis::Subscribers,
                        x: subscribers as f64,
                    });
                }
                if subscribers == CURVE_FAN_OUT && self.rate() == Rate::Max {
                    points.push(CurvePoint {
                        curve: format!("payload-fan{CURVE_FAN_OUT}-max"),
                        axis: Axis::Payload,
                        x: self.payload as f64,
                    });
                }
                points
            }
            Shape::Publishers {
                publishers, topics, ..
            } => vec![CurvePoint {
                curve: format!("publishers-{}-{size}-max", topics_label(topics)),
                axis: Axis::Publishers,
                x: publishers as f64,
            }],
            Shape::ManyTopics { topics } => vec![CurvePoint {
                curve: format!("topics-{size}"),
                axis: Axis::Topics,
                x: topics as f64,
            }],
            Shape::CatchUp | Shape::Cluster { .. } | Shape::Work { .. } => Vec::new(),
        }
    }

    /// Subscribers of this case (a work-group case: its workers).
    pub(crate) fn subscribers(&self) -> usize {
        match self.shape {
            Shape::Work { workers, .. } => workers,
            Shape::FanOut { subscribers, .. }
            | Shape::Cluster { subscribers, .. }
            | Shape::Publishers { subscribers, .. } => subscribers,
            Shape::CatchUp | Shape::ManyTopics { .. } => 1,
        }
    }

    /// Publishing rate of this case (catch-up fills history at full speed).
    pub(crate) fn rate(&self) -> Rate {
        match self.shape {
            Shape::FanOut { rate, .. } | Shape::Work { rate, .. } => rate,
            Shape::CatchUp
            | Shape::Cluster { .. }
            | Shape::Publishers { .. }
            | Shape::ManyTopics { .. } => Rate::Max,
        }
    }
}

/// What a chart's x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Axis {
    /// Subscribers of a fan-out.
    Subscribers,
    /// Publishers.
    Publishers,
    /// Topics in one subscription.
    Topics,
    /// Payload size in bytes.
    Payload,
}

impl Axis {
    /// The axis's caption.
    pub(crate) fn caption(self) -> &'static str {
        match self {
            Axis::Subscribers => "subscribers",
            Axis::Publishers => "publishers",
            Axis::Topics => "topics in one subscription",
            Axis::Payload => "payload bytes",
        }
    }
}

/// Where a case sits on a chart: the curve (one chart per curve and measure) and its x.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CurvePoint {
    /// The curve's name, e.g. `subscribers-128B-max`; also the chart's file name stem.
    pub(crate) curve: String,
    /// What x counts.
    pub(crate) axis: Axis,
    /// The case's x.
    pub(crate) x: f64,
}

/// `1topic`, `16topics`.
fn topics_label(topics: usize) -> String {
    if topics == 1 {
        "1topic".into()
    } else {
        format!("{topics}topics")
    }
}

/// Messages of a case whose fan-out or payload makes each message costlier: 1/2 of `n` at 64
/// subscribers, 1/5 at 256, 1/10 at 64 KiB (at least 1).
pub(crate) fn scaled_messages(n: u64, subscribers: usize, payload: usize) -> u64 {
    let divisor = match subscribers {
        0..=16 => 1,
        17..=64 => 2,
        _ => 5,
    } * if payload >= 65_536 { 10 } else { 1 };
    (n / divisor).max(1)
}

/// Messages of a many-topics case: 1/5 of `n`, but at least one per topic.
pub(crate) fn many_topics_messages(n: u64, topics: usize) -> u64 {
    (n / 5).max(topics as u64)
}

/// `128B`, `4KiB`, ...
pub(crate) fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// All cases, in running order, filtered by name: a case is kept when its name contains one
/// of `filters`; with no filter, all of them, or with `quick` today's cases and
/// [`QUICK_EXTRA`].
pub(crate) fn plan(
    messages: u64,
    catch_up: u64,
    rate: u64,
    filters: &[String],
    quick: bool,
) -> Vec<Case> {
    let mut cases = Vec::new();
    // The many-topics cases run first, while this process has not yet grown: their subscriber
    // memory is a VmRSS delta, which memory freed by earlier runs (and reused) would hide.
    for topics in MANY_TOPICS {
        cases.push(Case {
            name: format!("topics{topics}-{}", size_label(WIDE_PAYLOAD)),
            shape: Shape::ManyTopics { topics },
            payload: WIDE_PAYLOAD,
            messages: many_topics_messages(messages, topics),
        });
    }
    for rate in [Rate::Max, Rate::PerSecond(rate)] {
        let rate_label = match rate {
            Rate::Max => "max".to_string(),
            Rate::PerSecond(r) => format!("{r}/s"),
        };
        for payload in PAYLOADS {
            for subscribers in FAN_OUTS {
                cases.push(Case {
                    name: format!("fan{subscribers}-{}-{rate_label}", size_label(payload)),
                    shape: Shape::FanOut { subscribers, rate },
                    payload,
                    messages: scaled_messages(messages, subscribers, payload),
                });
            }
        }
    }
    for payload in CURVE_PAYLOADS.into_iter().filter(|p| !PAYLOADS.contains(p)) {
        cases.push(Case {
            name: format!("fan{CURVE_FAN_OUT}-{}-max", size_label(payload)),
            shape: Shape::FanOut {
                subscribers: CURVE_FAN_OUT,
                rate: Rate::Max,
            },
            payload,
            messages: scaled_messages(messages, CURVE_FAN_OUT, payload),
        });
    }
    for topics in [1, PUBLISHER_TOPICS] {
        for publishers in PUBLISHERS {
            cases.push(Case {
                name: format!(
                    "pubs{publishers}-{}-{}-max",
                    topics_label(topics),
                    size_label(WIDE_PAYLOAD)
                ),
                shape: Shape::Publishers {
                    publishers,
                    topics,
                    subscribers: PUBLISHER_SUBSCRIBERS,
                },
                payload: WIDE_PAYLOAD,
                messages,
            });
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
    let work_rate = Rate::PerSecond(WORK_RATE);
    let work = WORKERS
        .into_iter()
        .map(|w| (w, Rate::Max))
        .chain([(RATE_WORKERS, work_rate)]);
    for (workers, rate) in work {
        let (rate_label, messages) = match rate {
            Rate::Max => ("max".to_string(), messages),
            // Five seconds of publishing at most.
            Rate::PerSecond(r) => (format!("{r}/s"), messages.min(5 * r)),
        };
        cases.push(Case {
            name: format!("work{workers}-{}-{rate_label}", size_label(WORK_PAYLOAD)),
            shape: Shape::Work { workers, rate },
            payload: WORK_PAYLOAD,
            messages,
        });
    }
    if filters.is_empty() {
        if quick {
            cases.retain(|c| c.in_quick());
        }
    } else {
        cases.retain(|c| filters.iter().any(|f| c.name.contains(f.as_str())));
    }
    cases
}

impl Case {
    /// True for the cases of `--quick`: today's (fan-out 1 to 16 at 128 B and 4 KiB, catch-up,
    /// cluster) and one of each new family ([`QUICK_EXTRA`]).
    fn in_quick(&self) -> bool {
        match self.shape {
            Shape::FanOut { subscribers, .. } => {
                (subscribers <= 16 && PAYLOADS.contains(&self.payload))
                    || QUICK_EXTRA.contains(&self.name.as_str())
            }
            Shape::CatchUp | Shape::Cluster { .. } => true,
            Shape::Publishers { .. } | Shape::ManyTopics { .. } | Shape::Work { .. } => {
                QUICK_EXTRA.contains(&self.name.as_str())
            }
        }
    }
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
        self.record(payload, now, now_ns);
    }

    /// Records `payload`, arrived at `now` (`now_ns` after the base, the end of its latency).
    fn record(&mut self, payload: &[u8], now: Instant, now_ns: u64) {
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

    /// Records one payload whose processing started at `started` (a work-group job, counted
    /// when its ack succeeded): its latency is from the publish call to `started`.
    pub(crate) fn message_started(&mut self, payload: &[u8], started: Instant) {
        let at = u64::try_from(started.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX);
        self.record(payload, Instant::now(), at);
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
    /// Many-topics cases: from the subscribe call until the subscriber was ready.
    pub(crate) ready: Option<Duration>,
    /// Many-topics cases: the process's resident memory when the subscriber was ready minus
    /// before it connected, KiB (the subscriber's own memory, publishing not yet started).
    pub(crate) subscriber_rss_kib: Option<i64>,
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
            ready: None,
            subscriber_rss_kib: None,
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
    /// Sends the payloads as one batch (one pipeline, one `publish_batch`) to the next of its
    /// topics, and waits for it.
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError>;
    /// Sends each payload as its own command, all at once (the connection pipelines them),
    /// and waits for all.
    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError>;
    /// Sends each payload to the next of its topics in turn, all at once (one pipeline of
    /// PUBLISH to as many channels; Herald: concurrent `publish` calls), and waits for all.
    async fn send_spread(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let _ = payloads;
        Err(BenchError::Internal(
            "this system has no case that spreads a batch over topics".into(),
        ))
    }
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

    /// Starting at the `first`-th name (modulo their count), so that several publishers do
    /// not all begin with the same topic.
    pub(crate) fn starting_at(names: Vec<String>, first: usize) -> Self {
        InTurn { names, next: first }
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
///
/// At full speed every publisher (one, or those of a several-publishers case, all driven
/// concurrently) takes the next batch of sequence numbers in turn, so that together they
/// publish the case's messages once each; at a fixed rate, the first publisher sends them all.
pub(crate) async fn drive_fan_out<P: Publisher>(
    run: &FanOutRun,
    publishers: &mut [P],
    subscribers: &mut Tasks<Tally>,
    stop: &watch::Sender<bool>,
) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let publish_deadline = started + run.publish_timeout;
    let published = match run.case.rate() {
        Rate::Max => {
            let claimed = AtomicU64::new(0);
            let sends = publishers
                .iter_mut()
                .map(|p| publish_share(run, p, &claimed, publish_deadline));
            futures::future::try_join_all(sends)
                .await?
                .into_iter()
                .sum()
        }
        Rate::PerSecond(rate) => {
            let publisher = publishers
                .first_mut()
                .ok_or_else(|| BenchError::Internal("a run without a publisher".into()))?;
            publish_at_rate(run, publisher, rate, started, publish_deadline).await?
        }
    };
    let publish_elapsed = started.elapsed();
    let expected = published * run.case.deliveries_per_message();
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

/// One publisher's part at full speed: takes the next [`FULL_SPEED_BATCH`] sequence numbers
/// from `claimed` and sends them, until all are taken or the deadline; returns how many it
/// sent.
async fn publish_share<P: Publisher>(
    run: &FanOutRun,
    publisher: &mut P,
    claimed: &AtomicU64,
    deadline: Instant,
) -> Result<u64, BenchError> {
    let (n, size) = (run.case.messages, run.case.payload);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let first = claimed.fetch_add(FULL_SPEED_BATCH as u64, Ordering::Relaxed);
        if first >= n {
            break;
        }
        let k = (n - first).min(FULL_SPEED_BATCH as u64);
        let batch = (first..first + k)
            .map(|seq| stamp(run.base, seq, size))
            .collect();
        if run.case.spreads_messages() {
            publisher.send_spread(batch).await?;
        } else {
            publisher.send_batch(batch).await?;
        }
        sent += k;
        run.counters.published.fetch_add(k, Ordering::Relaxed);
    }
    Ok(sent)
}

/// Publishes the case's messages at `rate` per second, each on its own; returns how many.
async fn publish_at_rate<P: Publisher>(
    run: &FanOutRun,
    publisher: &mut P,
    rate: u64,
    started: Instant,
    deadline: Instant,
) -> Result<u64, BenchError> {
    let (n, size) = (run.case.messages, run.case.payload);
    let rate = rate.max(1);
    let mut published = 0u64;
    while published < n && Instant::now() < deadline {
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
    Ok(published)
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
        let all = plan(10, 20, 10_000, &[], false);
        assert_eq!(all.len(), 35);
        assert_eq!(all[30].name, "cluster-16topics-128B-max");
        assert_eq!(all[0].name, "topics1000-128B");
        assert_eq!(all[2].name, "fan1-128B-max");
        assert!(all.iter().any(|c| c.name == "fan16-4KiB-10000/s"));
        let some = plan(
            10,
            20,
            10_000,
            &["fan16-128B".into(), "catchup".into()],
            false,
        );
        let names: Vec<&str> = some.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["fan16-128B-max", "fan16-128B-10000/s", "catchup-128B"]
        );
        let cluster = plan(10, 20, 10_000, &["cluster".into()], false);
        assert_eq!(cluster.len(), 1);
        assert_eq!(cluster[0].subscribers(), 4);
        assert_eq!(cluster[0].systems(), [System::RedisPubsub, System::Herald]);
    }

    fn names(cases: &[Case]) -> Vec<&str> {
        cases.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn new_case_names_follow_the_scheme() {
        let all = plan(50_000, 20, 10_000, &[], false);
        let all = names(&all);
        for name in [
            "fan64-128B-max",
            "fan256-128B-max",
            "fan64-4KiB-max",
            "fan256-4KiB-max",
            "fan64-128B-10000/s",
            "fan256-4KiB-10000/s",
            "fan4-16B-max",
            "fan4-1KiB-max",
            "fan4-64KiB-max",
            "pubs4-1topic-128B-max",
            "pubs16-1topic-128B-max",
            "pubs4-16topics-128B-max",
            "pubs16-16topics-128B-max",
            "topics1000-128B",
            "topics10000-128B",
        ] {
            assert!(all.contains(&name), "{name} missing from {all:?}");
        }
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "duplicate case names");
    }

    #[test]
    fn filters_select_single_new_cases() {
        let filters: Vec<String> = [
            "fan64-128B-max",
            "pubs4-1topic-128B-max",
            "topics1000-128B",
            "fan4-64KiB-max",
        ]
        .map(String::from)
        .to_vec();
        let some = plan(5_000, 20, 10_000, &filters, false);
        assert_eq!(
            names(&some),
            [
                "topics1000-128B",
                "fan64-128B-max",
                "fan4-64KiB-max",
                "pubs4-1topic-128B-max"
            ]
        );
        // --quick does not restrict an explicit --cases.
        let quick = plan(5_000, 20, 10_000, &["fan256".into()], true);
        assert_eq!(quick.len(), 4);
        let topics = plan(5_000, 20, 10_000, &["topics10000".into()], false);
        assert_eq!(names(&topics), ["topics10000-128B"]);
    }

    #[test]
    fn quick_runs_todays_cases_and_one_of_each_new_family() {
        let quick = plan(2_000, 20, 10_000, &[], true);
        let quick = names(&quick);
        assert_eq!(quick.len(), 14 + QUICK_EXTRA.len());
        for extra in QUICK_EXTRA {
            assert!(quick.contains(&extra), "{extra}");
        }
        assert!(quick.contains(&"fan16-4KiB-10000/s"));
        assert!(quick.contains(&"catchup-128B"));
        assert!(!quick.iter().any(|n| n.starts_with("fan256")));
        assert!(!quick.contains(&"topics10000-128B"));
    }

    #[test]
    fn shapes_and_messages_of_the_new_cases() {
        let all = plan(50_000, 20, 10_000, &[], false);
        let case = |name: &str| {
            all.iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(case("fan16-128B-max").messages, 50_000);
        assert_eq!(case("fan64-128B-max").messages, 25_000);
        assert_eq!(case("fan256-4KiB-10000/s").messages, 10_000);
        assert_eq!(case("fan256-4KiB-10000/s").rate(), Rate::PerSecond(10_000));
        assert_eq!(case("fan4-64KiB-max").messages, 5_000);
        assert_eq!(case("fan4-64KiB-max").payload, 65_536);
        assert_eq!(case("fan4-16B-max").payload, 16);
        let pubs = case("pubs16-16topics-128B-max");
        assert_eq!(
            (pubs.publishers(), pubs.topics(), pubs.subscribers()),
            (16, 16, 4)
        );
        assert_eq!(pubs.systems(), [System::RedisPubsub, System::Herald]);
        assert!(!pubs.spreads_messages());
        let topics = case("topics10000-128B");
        assert_eq!((topics.topics(), topics.subscribers()), (10_000, 1));
        assert_eq!(topics.messages, 10_000);
        assert!(topics.spreads_messages());
        assert_eq!(case("topics1000-128B").messages, 10_000);
        assert_eq!(many_topics_messages(2_000, 1_000), 1_000);
        assert_eq!(scaled_messages(3, 256, 65_536), 1);
    }

    #[test]
    fn cases_are_points_of_their_curves() {
        let all = plan(10, 20, 10_000, &[], false);
        let case = |name: &str| all.iter().find(|c| c.name == name).unwrap();
        let fan4 = case("fan4-128B-max").curve_points();
        assert_eq!(fan4.len(), 2);
        assert_eq!(fan4[0].curve, "subscribers-128B-max");
        assert_eq!((fan4[0].axis, fan4[0].x), (Axis::Subscribers, 4.0));
        assert_eq!(fan4[1].curve, "payload-fan4-max");
        assert_eq!((fan4[1].axis, fan4[1].x), (Axis::Payload, 128.0));
        let slow = case("fan256-4KiB-10000/s").curve_points();
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0].curve, "subscribers-4KiB-10000/s");
        let pubs = case("pubs16-1topic-128B-max").curve_points();
        assert_eq!(pubs[0].curve, "publishers-1topic-128B-max");
        assert_eq!((pubs[0].axis, pubs[0].x), (Axis::Publishers, 16.0));
        let topics = case("topics1000-128B").curve_points();
        assert_eq!((topics[0].axis, topics[0].x), (Axis::Topics, 1000.0));
        assert!(case("catchup-128B").curve_points().is_empty());
        let big = case("fan4-64KiB-max").curve_points();
        assert_eq!(big.len(), 1);
        assert_eq!(
            (big[0].curve.as_str(), big[0].x),
            ("payload-fan4-max", 65_536.0)
        );
    }

    #[test]
    fn work_cases_have_workers_and_one_delivery_per_message() {
        let all = plan(50_000, 20, 10_000, &["work".into()], false);
        assert_eq!(
            names(&all),
            [
                "work1-128B-max",
                "work4-128B-max",
                "work16-128B-max",
                "work4-128B-1000/s"
            ]
        );
        let w16 = &all[2];
        assert_eq!((w16.workers(), w16.subscribers()), (Some(16), 16));
        assert_eq!(w16.deliveries_per_message(), 1);
        assert_eq!(w16.messages, 50_000);
        assert_eq!(w16.systems(), [System::RedisStreams, System::Herald]);
        let slow = &all[3];
        assert_eq!(slow.rate(), Rate::PerSecond(1_000));
        assert_eq!(slow.messages, 5_000);
        assert!(slow.curve_points().is_empty());
        let fan = plan(10, 20, 10_000, &["fan4-128B-max".into()], false);
        assert_eq!(fan[0].workers(), None);
        assert_eq!(fan[0].deliveries_per_message(), 4);
    }

    #[test]
    fn in_turn_starts_where_asked() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut t = InTurn::starting_at(names, 4);
        let got: Vec<String> = (0..4).map(|_| t.next().unwrap().to_string()).collect();
        assert_eq!(got, ["b", "c", "a", "b"]);
    }
}
