//! The replicated-map cases (`map-*`): Herald's [`herald::Map`] against the raw Redis
//! commands an application would use without it.
//!
//! - `map-put1-128B`, `map-put4-128B`: 1 or 4 writers, each its own Herald handle (raw: its
//!   own connection), put 128-byte values over [`PUT_KEYS`] keys as fast as they can, with
//!   [`IN_FLIGHT`] calls in flight per writer: Herald `Map::put` called that many times
//!   concurrently on the handle, raw one pipeline of that many `HSET` + `PUBLISH` pairs.
//!   Measured: puts/s (acknowledged).
//! - `map-watch16-128B`: one writer as above while [`WATCHERS`] watchers (each its own handle,
//!   `Map::watch`; raw: its own Pub/Sub connection `SUBSCRIBE`d to the channel) receive every
//!   change. Measured: changes delivered/s over all watchers, and put-to-watcher latency from
//!   a timestamp in the value.
//! - `map-snapshot-100000`: a map of 100 000 keys of 128 bytes is written first (through
//!   Herald puts, outside the timed part), then `Map::snapshot` is timed against a raw
//!   `HGETALL` of the same hash (the map's state), decoded into pairs of byte strings. Each
//!   system takes [`SNAPSHOT_REPEATS`] snapshots per round; the row reports their median.
//!
//! Every case runs `--rounds` rounds, each round the raw baseline first and Herald last;
//! Herald's ratios are to the baseline of the same round, and with several rounds a summary
//! per case gives their median, minimum and maximum.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Herald, MapEvent, SnapshotReason};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::sync::watch;

use super::cases::{
    drive_fan_out, size_label, stamp, Case, FanOutRun, Measured, Publisher, RunCounters, Shape,
    Tally, Tasks,
};
use super::report::{self, Spread};
use super::{BenchError, Ctx};

/// Calls in flight per writer: concurrent `Map::put`s, or `HSET` + `PUBLISH` pairs in one
/// pipeline.
pub(crate) const IN_FLIGHT: usize = 64;
/// Keys the put and watch cases write, in turn.
pub(crate) const PUT_KEYS: u64 = 1_000;
/// Watchers of the watch case.
pub(crate) const WATCHERS: usize = 16;
/// Keys of the snapshot case.
pub(crate) const SNAPSHOT_KEYS: u64 = 100_000;
/// Snapshots each system takes per round of the snapshot case (the row reports the median).
pub(crate) const SNAPSHOT_REPEATS: usize = 5;
/// The value size of every map case.
const VALUE: usize = 128;
/// Puts in flight while the snapshot case's map is written.
const LOAD_IN_FLIGHT: usize = 256;

/// What a map case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapShape {
    /// Puts of `writers` writers, nobody watching.
    Put {
        /// Writers, each its own handle or connection.
        writers: usize,
    },
    /// One writer, `watchers` watchers.
    Watch {
        /// Watchers, each its own handle or Pub/Sub connection.
        watchers: usize,
    },
    /// Snapshots of a map of `keys` keys.
    Snapshot {
        /// Keys in the map.
        keys: u64,
    },
}

/// One map case.
#[derive(Debug, Clone)]
pub(crate) struct MapCase {
    /// `map-put1-128B`, ...
    pub(crate) name: String,
    /// What it measures.
    pub(crate) shape: MapShape,
    /// Puts of the put and watch cases (all writers together).
    pub(crate) puts: u64,
}

impl MapCase {
    fn writers(&self) -> usize {
        match self.shape {
            MapShape::Put { writers } => writers,
            MapShape::Watch { .. } => 1,
            MapShape::Snapshot { .. } => 0,
        }
    }

    fn watchers(&self) -> usize {
        match self.shape {
            MapShape::Watch { watchers } => watchers,
            _ => 0,
        }
    }

    fn keys(&self) -> u64 {
        match self.shape {
            MapShape::Snapshot { keys } => keys,
            _ => PUT_KEYS,
        }
    }

    /// The raw baseline's name in the rows.
    fn baseline(&self) -> &'static str {
        match self.shape {
            MapShape::Put { .. } | MapShape::Watch { .. } => "redis-hset-publish",
            MapShape::Snapshot { .. } => "redis-hgetall",
        }
    }

    /// The case as the shared fan-out driver sees it: `writers` publishers on one topic,
    /// `watchers` subscribers.
    fn as_fan_out(&self) -> Case {
        Case {
            name: self.name.clone(),
            shape: Shape::Publishers {
                publishers: self.writers(),
                topics: 1,
                subscribers: self.watchers(),
            },
            payload: VALUE,
            messages: self.puts,
        }
    }
}

/// The map cases whose name contains one of `patterns` (all with none); `puts` puts per put
/// or watch case.
pub(crate) fn plan(patterns: &[String], puts: u64) -> Vec<MapCase> {
    let size = size_label(VALUE);
    let all = [
        (format!("map-put1-{size}"), MapShape::Put { writers: 1 }),
        (format!("map-put4-{size}"), MapShape::Put { writers: 4 }),
        (
            format!("map-watch{WATCHERS}-{size}"),
            MapShape::Watch { watchers: WATCHERS },
        ),
        (
            format!("map-snapshot-{SNAPSHOT_KEYS}"),
            MapShape::Snapshot {
                keys: SNAPSHOT_KEYS,
            },
        ),
    ];
    all.into_iter()
        .filter(|(name, _)| patterns.is_empty() || patterns.iter().any(|p| name.contains(p)))
        .map(|(name, shape)| MapCase { name, shape, puts })
        .collect()
}

/// The result of one run of a map case.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MapRow {
    /// The case's name.
    pub(crate) case: String,
    /// `herald`, `redis-hset-publish` or `redis-hgetall`.
    pub(crate) system: &'static str,
    /// The round (1-based).
    pub(crate) round: u32,
    /// Writers, each its own handle or connection (0 for the snapshot case).
    pub(crate) writers: usize,
    /// Watchers (subscribers), each its own handle or connection.
    pub(crate) subscribers: usize,
    /// Keys written (put, watch) or in the map (snapshot).
    pub(crate) keys: u64,
    /// Value size in bytes.
    pub(crate) payload_bytes: usize,
    /// Calls in flight per writer.
    pub(crate) publisher_batch: usize,
    /// Puts acknowledged.
    pub(crate) published: u64,
    /// Puts acknowledged per second (all writers).
    pub(crate) published_per_s: f64,
    /// Deliveries expected (puts × watchers; snapshot: keys).
    pub(crate) expected: u64,
    /// Distinct deliveries (snapshot: keys read).
    pub(crate) delivered: u64,
    /// Distinct deliveries per second, all watchers (snapshot: keys read per second).
    pub(crate) delivered_per_s: f64,
    /// Median put-to-watcher latency, µs.
    pub(crate) p50_us: Option<u64>,
    /// 99th percentile, µs.
    pub(crate) p99_us: Option<u64>,
    /// 99.9th percentile, µs.
    pub(crate) p999_us: Option<u64>,
    /// Expected minus delivered.
    pub(crate) lost: u64,
    /// Deliveries repeated.
    pub(crate) duplicates: u64,
    /// Deliveries after a later put (across concurrent puts informative only).
    pub(crate) reordered: u64,
    /// Problems (errors, resyncs, resets, closed connections, wrong snapshots).
    pub(crate) errors: u64,
    /// The first problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
    /// Snapshot case: the median time of one snapshot, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot_ms: Option<f64>,
    /// Snapshot case: the fastest snapshot, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot_min_ms: Option<f64>,
    /// Peak resident memory of this process during the run, KiB.
    pub(crate) peak_rss_kib: Option<u64>,
    /// Herald rows: the baseline the ratios are to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<&'static str>,
    /// Herald rows: throughput ÷ the baseline's of the same round (puts/s; watch: changes
    /// delivered/s; snapshot: keys/s, i.e. the baseline's time ÷ Herald's). Higher is better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<Option<f64>>,
    /// Herald rows of the watch case: p99 ÷ the baseline's. Lower is better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ratio: Option<Option<f64>>,
}

/// Herald's ratios over the rounds of one map case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MapSummary {
    /// The case's name.
    pub(crate) case: String,
    /// Always `herald`.
    pub(crate) system: &'static str,
    /// Always `rounds`.
    pub(crate) summary: &'static str,
    /// Herald rows covered.
    pub(crate) rounds: usize,
    /// The baseline.
    pub(crate) baseline: &'static str,
    /// Spread of `ratio`.
    pub(crate) ratio: Option<Spread>,
    /// Spread of `p99_ratio`.
    pub(crate) p99_ratio: Option<Spread>,
}

impl MapSummary {
    fn of(case: &MapCase, rows: &[MapRow]) -> Option<Self> {
        let herald: Vec<&MapRow> = rows
            .iter()
            .filter(|r| r.case == case.name && r.system == "herald")
            .collect();
        if herald.is_empty() {
            return None;
        }
        Some(MapSummary {
            case: case.name.clone(),
            system: "herald",
            summary: "rounds",
            rounds: herald.len(),
            baseline: case.baseline(),
            ratio: report::spread(herald.iter().map(|r| r.ratio.flatten())),
            p99_ratio: report::spread(herald.iter().map(|r| r.p99_ratio.flatten())),
        })
    }
}

/// Per second, rounded to 0.1.
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// `a / b` rounded to 0.001.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

/// What one run measured, before it becomes a row.
enum Outcome {
    /// Put and watch cases.
    Flow(Measured),
    /// Snapshot case: the time of each snapshot and the problems seen.
    Snapshots {
        times: Vec<Duration>,
        errors: Vec<String>,
    },
}

impl MapRow {
    fn new(
        case: &MapCase,
        system: &'static str,
        round: u32,
        outcome: Outcome,
        baseline: Option<&MapRow>,
    ) -> Self {
        let mut row = MapRow {
            case: case.name.clone(),
            system,
            round,
            writers: case.writers(),
            subscribers: case.watchers(),
            keys: case.keys(),
            payload_bytes: VALUE,
            publisher_batch: IN_FLIGHT,
            published: 0,
            published_per_s: 0.0,
            expected: 0,
            delivered: 0,
            delivered_per_s: 0.0,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            errors: 0,
            first_error: None,
            snapshot_ms: None,
            snapshot_min_ms: None,
            peak_rss_kib: report::peak_rss_kib(),
            baseline: None,
            ratio: None,
            p99_ratio: None,
        };
        match outcome {
            Outcome::Flow(m) => {
                let quantile = |q: f64| m.latency.as_ref().map(|h| h.value_at_quantile(q));
                row.p50_us = quantile(0.5);
                row.p99_us = quantile(0.99);
                row.p999_us = quantile(0.999);
                row.published = m.published;
                row.published_per_s = per_second(m.published, m.publish_elapsed);
                row.expected = m.expected;
                row.delivered = m.delivered;
                row.delivered_per_s = per_second(m.delivered, m.deliver_elapsed);
                row.lost = m.expected.saturating_sub(m.delivered);
                row.duplicates = m.duplicates;
                row.reordered = m.reordered;
                row.errors = m.errors;
                row.first_error = m.first_error;
            }
            Outcome::Snapshots { mut times, errors } => {
                times.sort_unstable();
                let ms = |d: &Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
                let median = times.get(times.len() / 2).copied();
                row.publisher_batch = 0;
                row.expected = case.keys();
                row.delivered = if errors.is_empty() { case.keys() } else { 0 };
                row.delivered_per_s = median.map_or(0.0, |d| per_second(case.keys(), d));
                row.lost = row.expected - row.delivered;
                row.snapshot_ms = median.as_ref().map(ms);
                row.snapshot_min_ms = times.first().map(ms);
                row.errors = errors.len() as u64;
                row.first_error = errors.into_iter().next();
            }
        }
        if system == "herald" {
            let throughput = |r: &MapRow| match case.shape {
                MapShape::Put { .. } => r.published_per_s,
                MapShape::Watch { .. } | MapShape::Snapshot { .. } => r.delivered_per_s,
            };
            row.baseline = Some(case.baseline());
            row.ratio = Some(ratio(Some(throughput(&row)), baseline.map(throughput)));
            if matches!(case.shape, MapShape::Watch { .. }) {
                row.p99_ratio = Some(ratio(
                    row.p99_us.map(|v| v as f64),
                    baseline.and_then(|b| b.p99_us).map(|v| v as f64),
                ));
            }
        }
        row
    }

    /// The progress line of a finished run.
    fn summary(&self) -> String {
        let what = match (self.snapshot_ms, self.subscribers) {
            (Some(ms), _) => format!("snapshot of {} keys in {ms} ms", self.keys),
            (None, 0) => format!("{:.0} puts/s", self.published_per_s),
            (None, _) => format!(
                "{:.0} delivered/s, p99 {} µs",
                self.delivered_per_s,
                self.p99_us.map_or("-".into(), |v| v.to_string())
            ),
        };
        let ratio = match self.ratio.flatten() {
            Some(r) => format!(", {r:.2}x {}", self.baseline.unwrap_or("-")),
            None => String::new(),
        };
        format!(
            "{} {} (round {}): {what}, lost {}, errors {}{ratio}",
            self.case, self.system, self.round, self.lost, self.errors
        )
    }
}

/// The map's name in a run.
fn map_name(case: &MapCase, round: u32) -> String {
    format!("bench-{}-r{round}", case.name)
}

/// The Redis hash that holds the state of the map whose topic is `topic` (`docs/PROTOCOL.md`,
/// replicated maps, keys).
fn state_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{{{topic}}}:map")
}

/// The key of a put of sequence number `seq` (in the stamp of its value).
fn key_of(payload: &[u8]) -> String {
    let seq = payload
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    format!("k{:04}", seq % PUT_KEYS)
}

/// A handle of its own.
async fn connect(ctx: &Ctx, node_id: String) -> Result<Herald, BenchError> {
    let mut defaults = herald::TopicSettings::default();
    // The map's topic keeps a whole case, like the fan-out cases' topics.
    defaults.max_len = defaults.max_len.max(ctx.herald_max_len);
    Herald::builder()
        .redis(ctx.url.clone())
        .namespace(ctx.prefix.clone())
        .node_id(node_id)
        .topic_defaults(defaults)
        .connect()
        .await
        .map_err(|e| BenchError::herald("connect", e))
}

/// A raw connection (no response timeout for the snapshot's large reply).
async fn raw_connection(ctx: &Ctx) -> Result<MultiplexedConnection, BenchError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    ctx.client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| BenchError::redis("connect to Redis", e))
}

/// Herald puts: each payload a `Map::put` of its own, all concurrently on one handle.
struct MapWriter {
    map: herald::Map,
}

impl Publisher for MapWriter {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        self.send_each(payloads).await
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let map = &self.map;
        let puts = payloads.into_iter().map(|p| async move {
            let key = key_of(&p);
            map.put(&key, p).await
        });
        futures::future::try_join_all(puts)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::herald("map put", e))
    }
}

/// Raw puts: one pipeline of `HSET hash key value` + `PUBLISH channel value` per payload.
struct RawWriter {
    conn: MultiplexedConnection,
    hash: String,
    channel: String,
}

impl Publisher for RawWriter {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        self.send_each(payloads).await
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("HSET")
                .arg(&self.hash)
                .arg(key_of(p))
                .arg(p)
                .ignore();
            pipe.cmd("PUBLISH").arg(&self.channel).arg(p).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BenchError::redis("HSET + PUBLISH", e))
    }
}

/// A put or watch case on Herald.
async fn herald_flow(ctx: &Ctx, case: &MapCase, round: u32) -> Result<Measured, BenchError> {
    let run = fan_out_run(ctx, case);
    let name = map_name(case, round);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for w in 0..case.watchers() {
        let node = connect(ctx, format!("bench-map-watcher-{w}")).await?;
        let map = node.map(&name).map_err(|e| BenchError::herald("map", e))?;
        let mut watch = map
            .watch()
            .await
            .map_err(|e| BenchError::herald("map watch", e))?;
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), case.puts, true)?;
        let mut stopped = stopped.clone();
        let until = case.puts;
        tasks.push(tokio::spawn(async move {
            let _node = node; // keeps the watcher's connections
            while tally.delivered < until {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    event = watch.next() => match event {
                        Some(Ok(MapEvent::Changed { value, .. })) => tally.message(&value),
                        Some(Ok(MapEvent::Snapshot { reason: SnapshotReason::Initial, .. })) => {}
                        Some(Ok(other)) => tally.error(format!("unexpected watch event {other:?}")),
                        Some(Err(e)) => tally.error(e.to_string()),
                        None => {
                            tally.error("the watch ended");
                            break;
                        }
                    },
                }
            }
            tally
        }));
    }
    let mut writers = Vec::with_capacity(case.writers());
    for w in 0..case.writers() {
        let node = connect(ctx, format!("bench-map-writer-{w}")).await?;
        let map = node.map(&name).map_err(|e| BenchError::herald("map", e))?;
        writers.push(MapWriter { map });
    }
    drive_fan_out(&run, &mut writers, &mut tasks, &stop).await
}

/// A put or watch case on raw Redis.
async fn raw_flow(ctx: &Ctx, case: &MapCase, round: u32) -> Result<Measured, BenchError> {
    let run = fan_out_run(ctx, case);
    let hash = format!("{}:raw:{}:r{round}", ctx.prefix, case.name);
    let channel = format!("{hash}:live");
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for _ in 0..case.watchers() {
        let pubsub = ctx
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| BenchError::redis("open a Pub/Sub connection", e))?;
        let (mut sink, mut stream) = pubsub.split();
        sink.subscribe(&channel)
            .await
            .map_err(|e| BenchError::redis("SUBSCRIBE", e))?;
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), case.puts, true)?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _sink = sink;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    msg = stream.next() => match msg {
                        Some(msg) => tally.message(msg.get_payload_bytes()),
                        None => {
                            tally.error(super::baseline::PUBSUB_DISCONNECTED);
                            break;
                        }
                    },
                }
            }
            tally
        }));
    }
    wait_subscribed(ctx, &channel, case.watchers()).await?;
    let mut writers = Vec::with_capacity(case.writers());
    for _ in 0..case.writers() {
        writers.push(RawWriter {
            conn: raw_connection(ctx).await?,
            hash: hash.clone(),
            channel: channel.clone(),
        });
    }
    drive_fan_out(&run, &mut writers, &mut tasks, &stop).await
}

/// Waits until `n` connections are subscribed to `channel` (at most 10 s).
async fn wait_subscribed(ctx: &Ctx, channel: &str, n: usize) -> Result<(), BenchError> {
    let mut conn = raw_connection(ctx).await?;
    for _ in 0..2000 {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .map_err(|e| BenchError::redis("PUBSUB NUMSUB", e))?;
        if count >= n as u64 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(BenchError::Protocol(format!(
        "fewer than {n} subscribers of {channel} registered within 10 s"
    )))
}

fn fan_out_run(ctx: &Ctx, case: &MapCase) -> FanOutRun {
    FanOutRun {
        case: case.as_fan_out(),
        base: ctx.base,
        counters: Arc::new(RunCounters::default()),
        publish_timeout: ctx.run_timeout,
        drain_timeout: ctx.drain_timeout,
    }
}

/// Writes the snapshot case's map (`keys` keys of [`VALUE`] bytes) through Herald puts.
async fn load_snapshot_map(ctx: &Ctx, name: &str, keys: u64) -> Result<herald::Map, BenchError> {
    let node = connect(ctx, "bench-map-loader".into()).await?;
    let map = node.map(name).map_err(|e| BenchError::herald("map", e))?;
    let started = Instant::now();
    let mut next = 0u64;
    while next < keys {
        if started.elapsed() > ctx.run_timeout {
            return Err(BenchError::Internal(format!(
                "writing the snapshot case's map took longer than {:?} ({next} of {keys} \
                 keys); use a longer --run-timeout",
                ctx.run_timeout
            )));
        }
        let end = (next + LOAD_IN_FLIGHT as u64).min(keys);
        let puts = (next..end).map(|i| {
            let map = &map;
            async move {
                map.put(&format!("k{i:06}"), stamp(ctx.base, i, VALUE))
                    .await
            }
        });
        futures::future::try_join_all(puts)
            .await
            .map_err(|e| BenchError::herald("map put", e))?;
        next = end;
    }
    Ok(map)
}

/// Times [`SNAPSHOT_REPEATS`] Herald snapshots, checking each has every key.
async fn herald_snapshots(map: &herald::Map, keys: u64) -> Outcome {
    let (mut times, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..SNAPSHOT_REPEATS {
        let started = Instant::now();
        match map.snapshot().await {
            Ok(s) => {
                times.push(started.elapsed());
                if s.entries.len() as u64 != keys || s.revision.is_none() {
                    errors.push(format!(
                        "a snapshot had {} keys (revision {:?}), not {keys}",
                        s.entries.len(),
                        s.revision
                    ));
                }
            }
            Err(e) => errors.push(format!("map snapshot: {e}")),
        }
    }
    Outcome::Snapshots { times, errors }
}

/// Times [`SNAPSHOT_REPEATS`] raw `HGETALL`s of the map's state (its keys and the revision
/// field).
async fn raw_snapshots(ctx: &Ctx, hash: &str, keys: u64) -> Result<Outcome, BenchError> {
    let mut conn = raw_connection(ctx).await?;
    let (mut times, mut errors) = (Vec::new(), Vec::new());
    for _ in 0..SNAPSHOT_REPEATS {
        let started = Instant::now();
        let reply: Result<Vec<(Vec<u8>, Vec<u8>)>, _> =
            redis::cmd("HGETALL").arg(hash).query_async(&mut conn).await;
        match reply {
            Ok(pairs) => {
                times.push(started.elapsed());
                if pairs.len() as u64 != keys + 1 {
                    errors.push(format!(
                        "HGETALL returned {} fields, not {}",
                        pairs.len(),
                        keys + 1
                    ));
                }
            }
            Err(e) => errors.push(format!("HGETALL: {e}")),
        }
    }
    Ok(Outcome::Snapshots { times, errors })
}

/// Runs the map cases, `rounds` rounds each (baseline, then Herald), printing each row as it
/// finishes (`json`) or a table at the end, and each case's summary over the rounds.
pub(crate) async fn run(
    ctx: &Ctx,
    cases: &[MapCase],
    rounds: u32,
    json: bool,
) -> Result<Vec<MapRow>, BenchError> {
    let mut rows: Vec<MapRow> = Vec::new();
    let mut summaries = Vec::new();
    for case in cases {
        // The snapshot case's map is written once, outside the timed part; every round reads it.
        let snapshot_map = match case.shape {
            MapShape::Snapshot { keys } => {
                let name = map_name(case, 0);
                eprintln!("herald bench: {}: writing a map of {keys} keys", case.name);
                Some(load_snapshot_map(ctx, &name, keys).await?)
            }
            _ => None,
        };
        for round in 1..=rounds {
            for system in [case.baseline(), "herald"] {
                report::reset_peak_rss();
                let outcome = match (&snapshot_map, system) {
                    (Some(map), "redis-hgetall") => {
                        let hash = state_key(&ctx.prefix, map.topic());
                        raw_snapshots(ctx, &hash, case.keys()).await?
                    }
                    (Some(map), _) => herald_snapshots(map, case.keys()).await,
                    (None, "herald") => Outcome::Flow(herald_flow(ctx, case, round).await?),
                    (None, _) => Outcome::Flow(raw_flow(ctx, case, round).await?),
                };
                let baseline = rows
                    .iter()
                    .find(|r| r.case == case.name && r.round == round && r.system != "herald");
                let row = MapRow::new(case, system, round, outcome, baseline);
                eprintln!("herald bench: {}", row.summary());
                if json {
                    report::write_json(&mut std::io::stdout().lock(), &row)
                        .map_err(BenchError::Output)?;
                }
                rows.push(row);
                if snapshot_map.is_none() {
                    super::cleanup(ctx).await?;
                }
            }
        }
        if let Some(summary) = MapSummary::of(case, &rows).filter(|_| rounds > 1) {
            if json {
                report::write_json(&mut std::io::stdout().lock(), &summary)
                    .map_err(BenchError::Output)?;
            }
            summaries.push(summary);
        }
        if snapshot_map.is_some() {
            super::cleanup(ctx).await?;
        }
    }
    if !json {
        write_table(&rows, &summaries, rounds).map_err(BenchError::Output)?;
    }
    Ok(rows)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn times_of(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => format!("{:.2}x", s.median),
        Some(s) => format!("{:.2}x ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// The table of the map runs, their summaries and notes.
fn write_table(rows: &[MapRow], summaries: &[MapSummary], rounds: u32) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<18} {:>5} {:>7} {:>8} {:>7} {:>10} {:>12} {:>8} {:>9} {:>6} {:>7} {:>6}",
        "case",
        "system",
        "round",
        "writers",
        "watchers",
        "keys",
        "puts/s",
        "delivered/s",
        "p99 µs",
        "snap ms",
        "lost",
        "ratio",
        "p99 r"
    )?;
    for r in rows {
        let x = |v: Option<Option<f64>>| v.flatten().map_or("".into(), |v| format!("{v:.2}x"));
        writeln!(
            out,
            "{:<20} {:<18} {:>5} {:>7} {:>8} {:>7} {:>10.0} {:>12.0} {:>8} {:>9} {:>6} {:>7} {:>6}",
            r.case,
            r.system,
            r.round,
            r.writers,
            r.subscribers,
            r.keys,
            r.published_per_s,
            r.delivered_per_s,
            opt(r.p99_us),
            opt(r.snapshot_ms),
            r.lost,
            x(r.ratio),
            x(r.p99_ratio)
        )?;
    }
    for r in rows.iter().filter(|r| r.errors > 0 || r.duplicates > 0) {
        writeln!(
            out,
            "{} {} round {}: {} problem(s), {} duplicate(s); first problem: {}",
            r.case,
            r.system,
            r.round,
            r.errors,
            r.duplicates,
            r.first_error.as_deref().unwrap_or("-")
        )?;
    }
    if !summaries.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "Herald map ratios, median over {rounds} rounds (min–max)"
        )?;
        writeln!(
            out,
            "{:<20} {:<18} {:>6} {:>24} {:>24}",
            "case", "baseline", "rounds", "ratio", "p99 ratio"
        )?;
        for s in summaries {
            writeln!(
                out,
                "{:<20} {:<18} {:>6} {:>24} {:>24}",
                s.case,
                s.baseline,
                s.rounds,
                times_of(s.ratio),
                times_of(s.p99_ratio)
            )?;
        }
    }
    writeln!(
        out,
        "Map cases: values of {VALUE} B over {PUT_KEYS} keys; each writer its own handle (raw: \
         connection) with {IN_FLIGHT} calls in flight (Herald: concurrent Map::put; raw: one \
         pipeline of {IN_FLIGHT} HSET + PUBLISH pairs). Watch: {WATCHERS} watchers, each its own \
         handle (Map::watch) or Pub/Sub connection; latency put-to-watcher. Snapshot: a map of \
         {SNAPSHOT_KEYS} keys written first (untimed); Map::snapshot against a raw HGETALL of the \
         same hash, median of {SNAPSHOT_REPEATS} per round. ratio: Herald ÷ baseline of the \
         same round (puts/s, delivered/s, keys/s); p99 r: Herald's p99 ÷ the baseline's."
    )?;
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_cases_are_named_in_the_scheme_and_selected_by_map() {
        let names = |p: &[&str]| -> Vec<String> {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            plan(&p, 10).into_iter().map(|c| c.name).collect()
        };
        let all = [
            "map-put1-128B",
            "map-put4-128B",
            "map-watch16-128B",
            "map-snapshot-100000",
        ];
        assert_eq!(names(&[]), all);
        assert_eq!(names(&["map"]), all);
        assert_eq!(names(&["map-put"]), ["map-put1-128B", "map-put4-128B"]);
        assert_eq!(names(&["map-snapshot"]), ["map-snapshot-100000"]);
        assert!(names(&["fan16"]).is_empty());
    }

    #[test]
    fn cases_have_their_writers_watchers_and_keys() {
        let cases = plan(&[], 500);
        let shape = |c: &MapCase| (c.writers(), c.watchers(), c.keys(), c.baseline());
        assert_eq!(shape(&cases[0]), (1, 0, PUT_KEYS, "redis-hset-publish"));
        assert_eq!(shape(&cases[1]), (4, 0, PUT_KEYS, "redis-hset-publish"));
        assert_eq!(shape(&cases[2]), (1, 16, PUT_KEYS, "redis-hset-publish"));
        assert_eq!(shape(&cases[3]), (0, 0, 100_000, "redis-hgetall"));
        let fan = cases[1].as_fan_out();
        assert_eq!(
            (fan.publishers(), fan.subscribers(), fan.messages),
            (4, 0, 500)
        );
    }

    #[test]
    fn rows_pair_herald_with_the_baseline_of_its_round() {
        let case = &plan(&["map-snapshot".into()], 1)[0];
        let ms = Duration::from_millis;
        let snaps = |t: [u64; 3]| Outcome::Snapshots {
            times: t.map(ms).to_vec(),
            errors: Vec::new(),
        };
        let raw = MapRow::new(case, "redis-hgetall", 2, snaps([50, 40, 60]), None);
        assert_eq!(
            (raw.snapshot_ms, raw.snapshot_min_ms),
            (Some(50.0), Some(40.0))
        );
        assert_eq!(raw.ratio, None);
        let herald = MapRow::new(case, "herald", 2, snaps([100, 90, 80]), Some(&raw));
        assert_eq!(herald.snapshot_ms, Some(90.0));
        assert_eq!(herald.ratio, Some(Some(0.556)));
        assert_eq!(herald.lost, 0);
        let broken = Outcome::Snapshots {
            times: vec![ms(1)],
            errors: vec!["short".into()],
        };
        let bad = MapRow::new(case, "herald", 3, broken, Some(&raw));
        assert_eq!((bad.errors, bad.lost), (1, 100_000));
        let summary = MapSummary::of(case, &[raw, herald, bad]).unwrap();
        assert_eq!(summary.rounds, 2);
        assert_eq!(summary.baseline, "redis-hgetall");
    }

    #[test]
    fn puts_go_to_the_key_of_their_sequence_number() {
        let base = Instant::now();
        assert_eq!(key_of(&stamp(base, 3, VALUE)), "k0003");
        assert_eq!(key_of(&stamp(base, PUT_KEYS + 7, VALUE)), "k0007");
        assert_eq!(state_key("ns", "__map/m"), "ns:{__map/m}:map");
    }
}
