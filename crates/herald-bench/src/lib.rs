//! `herald bench`: Herald side by side with raw Redis, in one run on one machine (README,
//! Performance).
//!
//! The benchmark starts its own `redis-server` on a free loopback port (with
//! [`herald_testkit::RedisServer`], in its own process group) unless
//! given the URL of one (loopback only), then runs every case ([`cases`]) on each system:
//! raw Pub/Sub and raw Streams ([`baseline`]) first, Herald ([`herald_case`]) last, so that
//! Herald's row carries its ratios to both. A progress bar runs on standard error; the
//! results ([`report`]) are a table on standard output at the end, or with `--json` one JSON
//! object per run as each finishes. With `--rounds N` each case runs N rounds back to back,
//! each round every system once in the usual order; Herald's ratios are paired with the
//! baselines of the same round, and (for N > 1) a summary per case gives their median,
//! minimum and maximum over the rounds. Every run is bounded in count and time and counts the
//! messages that never arrived as lost. On Ctrl-C the runs stop, the private server is killed
//! (or, on a given Redis, the benchmark's keys are deleted) and the results so far are shown.
//!
//! Besides fan-out to 1 to 256 subscribers and the payload curve at fan-out 4, there are
//! cases of several publishers on one or 16 topics and of one subscription over 1 000 or
//! 10 000 topics (its time to ready and memory too), against raw Pub/Sub; `--quick` runs
//! today's cases and one case of each new family. With `--charts DIR`, [`chart`] draws each
//! curve (delivered/s, p99 and time to ready against subscribers, publishers, topics,
//! payload) as an SVG file, a line per system.
//!
//! The replicated-map cases ([`map_case`]: puts, watch fan-out, snapshot of 100 000 keys) run
//! on their own, after the gateway cases, against the raw commands of the same work.
//!
//! The cluster case (many topics over the 3 primaries of a Redis Cluster) runs on a private
//! cluster started for it ([`herald_testkit::RedisCluster`], same cleanup); it is skipped, with a
//! note, when `--redis` names an existing server.

mod baseline;
mod cases;
mod chart;
mod gateway_case;
mod herald_case;
mod map_case;
mod report;
mod work_case;

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use redis::ConnectionAddr;
use tokio::task::JoinHandle;

use cases::{Case, FanOutRun, RunCounters, Shape, System};
use herald_testkit::{Options, RedisCluster, RedisServer};
use report::Row;

/// Options of `herald bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Messages published per fan-out case [default: 50000, or 2000 with --quick]
    #[arg(long, value_name = "N")]
    pub(crate) messages: Option<u64>,
    /// How far behind the catch-up subscriber starts, in messages [default: 1000000, or 20000
    /// with --quick]
    #[arg(long, value_name = "N")]
    pub(crate) catchup: Option<u64>,
    /// A short smoke run: 2000 messages per case and a catch-up of 20000
    #[arg(long)]
    pub(crate) quick: bool,
    /// The fixed publishing rate of the latency cases, in messages per second
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 10_000)]
    pub(crate) rate: u64,
    /// Run only the cases whose name contains one of these, e.g. `fan16-128B-max,catchup`
    /// (names: fan{1,4,16,64,256}-{128B,4KiB}-{max,RATE/s}, fan4-{16B,1KiB,64KiB}-max,
    /// pubs{4,16}-{1topic,16topics}-128B-max, topics{1000,10000}-128B, catchup-128B,
    /// cluster-16topics-128B-max, work{1,4,16}-128B-max, work4-128B-1000/s (a work group
    /// against a raw Streams consumer group), map-put{1,4}-128B, map-watch16-128B,
    /// map-snapshot-100000 (`map` selects the map cases); with --quick too, any case can be
    /// chosen
    #[arg(long, value_name = "PATTERN,...", value_delimiter = ',')]
    pub(crate) cases: Vec<String>,
    /// Run only these systems (Herald's ratios need the baselines in the same run)
    #[arg(long, value_name = "SYSTEM,...", value_delimiter = ',', value_enum)]
    pub(crate) systems: Vec<System>,
    /// Longest publishing phase of one run, and longest catch-up read, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub(crate) run_timeout: u64,
    /// How long to wait for deliveries after publishing ends before counting the rest as lost,
    /// in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub(crate) drain_timeout: u64,
    /// Run each case N times back to back (1 to 20), each round running every system of the
    /// case once in turn, so that the systems share the machine's conditions; Herald's ratios
    /// are to the baselines of the same round, and with N > 1 their median, min and max over
    /// the rounds are printed per case (a second table, or with --json one extra object per
    /// case: "summary": "rounds")
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) rounds: u32,
    /// Print one JSON object per run (as each finishes) instead of the table
    #[arg(long)]
    pub(crate) json: bool,
    /// Write one SVG chart per curve and measure into this directory (created if missing):
    /// delivered/s and p99 against subscribers, publishers, topics and payload, one line per
    /// system
    #[arg(long, value_name = "DIR")]
    pub(crate) charts: Option<PathBuf>,
    /// The redis-server program to start when no Redis URL is given
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub(crate) redis_server: PathBuf,
}

/// Why `herald bench` failed.
#[derive(Debug)]
pub enum BenchError {
    /// Bad options.
    Usage(String),
    /// The private `redis-server` could not be started.
    Server(String),
    /// A Redis command failed.
    Redis {
        /// What was being done.
        context: String,
        /// Redis's error.
        source: redis::RedisError,
    },
    /// A Herald operation failed.
    Herald {
        /// The operation.
        context: String,
        /// Herald's error.
        source: herald::Error,
    },
    /// Redis answered something unexpected.
    Protocol(String),
    /// The benchmark itself failed.
    Internal(String),
    /// The results could not be written.
    Output(std::io::Error),
    /// Ctrl-C.
    Interrupted,
}

impl BenchError {
    /// A Redis error during `context`.
    pub(crate) fn redis(context: &str, source: redis::RedisError) -> Self {
        BenchError::Redis {
            context: context.to_string(),
            source,
        }
    }

    /// A Herald error during `context`.
    pub(crate) fn herald(context: &str, source: herald::Error) -> Self {
        BenchError::Herald {
            context: context.to_string(),
            source,
        }
    }

    /// The exit status of the `herald` command for this error (see `exit.rs`): 2 bad usage,
    /// 3 Redis unreachable or too slow, 4 Redis refused, 1 anything else.
    pub fn exit_status(&self) -> u8 {
        match self {
            BenchError::Usage(_) => 2,
            BenchError::Redis { source, .. } => {
                if source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_refusal()
                    || source.is_connection_dropped()
                {
                    3
                } else {
                    4
                }
            }
            BenchError::Herald { source, .. } => match source.kind() {
                herald::ErrorKind::BadInput => 2,
                herald::ErrorKind::Unreachable => 3,
                herald::ErrorKind::Refused => 4,
                _ => 1,
            },
            BenchError::Server(_)
            | BenchError::Protocol(_)
            | BenchError::Internal(_)
            | BenchError::Output(_)
            | BenchError::Interrupted => 1,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(m) => write!(f, "{m}"),
            BenchError::Server(m) => write!(f, "benchmark Redis: {m}"),
            BenchError::Redis { context, source } => write!(
                f,
                "benchmark: Redis failed to {context}: {source}; check that Redis is running \
                 and not out of memory"
            ),
            BenchError::Herald { context, source } => {
                write!(f, "benchmark: Herald {context} failed: {source}")
            }
            BenchError::Protocol(m) => write!(f, "benchmark: unexpected answer from Redis: {m}"),
            BenchError::Internal(m) => write!(f, "benchmark: {m}"),
            BenchError::Output(e) => write!(f, "cannot write the benchmark results: {e}"),
            BenchError::Interrupted => write!(f, "benchmark interrupted"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Redis { source, .. } => Some(source),
            BenchError::Herald { source, .. } => Some(source),
            BenchError::Output(e) => Some(e),
            _ => None,
        }
    }
}

/// What every run shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The Redis URL.
    pub(crate) url: String,
    /// A client for the raw baselines.
    pub(crate) client: redis::Client,
    /// Prefix of every key the benchmark writes, and Herald's namespace.
    pub(crate) prefix: String,
    /// The base of the timestamps in payloads.
    pub(crate) base: Instant,
    /// Longest publishing phase / catch-up read.
    pub(crate) run_timeout: Duration,
    /// How long deliveries are waited for after publishing.
    pub(crate) drain_timeout: Duration,
    /// Herald's topic history length: enough for a whole case.
    pub(crate) herald_max_len: u64,
    /// True for the benchmark's own server (cleaned with FLUSHDB).
    private: bool,
}

/// The most rounds `--rounds` accepts.
const MAX_ROUNDS: u32 = 20;

/// One run of the plan: a system on a case, in a round (1-based).
#[derive(Debug, Clone)]
struct PlannedRun {
    case: Case,
    round: u32,
    system: System,
}

/// Runs the benchmark. `redis` is the URL of an existing Redis to use instead of starting a
/// private one (the command line's `--redis`, only when given explicitly); it must be on
/// this machine.
pub async fn run(args: BenchArgs, redis: Option<String>) -> Result<(), BenchError> {
    let messages = args
        .messages
        .unwrap_or(if args.quick { 2_000 } else { 50_000 });
    let catch_up = args
        .catchup
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    if messages == 0 || catch_up == 0 || args.rate == 0 {
        return Err(BenchError::Usage(
            "--messages, --catchup and --rate must be at least 1".into(),
        ));
    }
    if !(1..=MAX_ROUNDS).contains(&args.rounds) {
        return Err(BenchError::Usage(format!(
            "--rounds must be from 1 to {MAX_ROUNDS}, not {}",
            args.rounds
        )));
    }
    // Rounds of a case run back to back, each round every selected system in turn.
    let mut runs: Vec<PlannedRun> = Vec::new();
    // The gateway cases (`gateway_case`) run on their own, before the others.
    let (gateway_patterns, other_patterns): (Vec<String>, Vec<String>) = args
        .cases
        .iter()
        .cloned()
        .partition(|p| p.contains("gateway"));
    // So do the replicated-map cases (`map_case`), after the gateway's.
    let (map_patterns, other_patterns): (Vec<String>, Vec<String>) =
        other_patterns.into_iter().partition(|p| p.contains("map"));
    let map_cases = if args.cases.is_empty() || !map_patterns.is_empty() {
        map_case::plan(&map_patterns, messages)
    } else {
        Vec::new()
    };
    let gateway_cases = if args.cases.is_empty() || !gateway_patterns.is_empty() {
        gateway_case::plan(&gateway_patterns, args.quick)
    } else {
        Vec::new()
    };
    let planned = if !args.cases.is_empty() && other_patterns.is_empty() {
        Vec::new()
    } else {
        cases::plan(messages, catch_up, args.rate, &other_patterns, args.quick)
    };
    for case in planned {
        let systems: Vec<System> = case
            .systems()
            .iter()
            .filter(|s| args.systems.is_empty() || args.systems.contains(s))
            .copied()
            .collect();
        for round in 1..=args.rounds {
            for system in &systems {
                runs.push(PlannedRun {
                    case: case.clone(),
                    round,
                    system: *system,
                });
            }
        }
    }
    if runs.is_empty() && gateway_cases.is_empty() && map_cases.is_empty() {
        return Err(BenchError::Usage(format!(
            "no case matches --cases {} with --systems {}; case names are \
             fan{{1,4,16,64,256}}-{{128B,4KiB}}-{{max,{}/s}}, fan4-{{16B,1KiB,64KiB}}-max, \
             pubs{{4,16}}-{{1topic,16topics}}-128B-max, topics{{1000,10000}}-128B, \
             catchup-128B, cluster-16topics-128B-max, work{{1,4,16}}-128B-max, \
             work4-128B-1000/s, map-put{{1,4}}-128B, map-watch16-128B and \
             map-snapshot-100000",
            args.cases.join(","),
            if args.systems.is_empty() {
                "(all)".to_string()
            } else {
                args.systems
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            args.rate
        )));
    }

    // The cluster case needs a private cluster: it is skipped on a given Redis.
    let is_cluster = |case: &Case| matches!(case.shape, Shape::Cluster { .. });
    let skipped_cluster = redis.is_some() && runs.iter().any(|r| is_cluster(&r.case));
    if skipped_cluster {
        runs.retain(|r| !is_cluster(&r.case));
        eprintln!("herald bench: {SKIPPED_CLUSTER}");
        if runs.is_empty() {
            return Ok(());
        }
    }

    let server = match &redis {
        Some(url) => {
            check_loopback(url)?;
            None
        }
        None => Some(start_server(&args.redis_server).await?),
    };
    let url = match (&redis, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => format!("{}/", s.url()),
        (None, None) => return Err(BenchError::Internal("no Redis to use".into())),
    };
    let client = redis::Client::open(url.as_str())
        .map_err(|e| BenchError::Usage(format!("invalid Redis URL {url:?}: {e}")))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let ctx = Ctx {
        url,
        client,
        prefix: format!("herald-bench-{}-{stamp:x}", std::process::id()),
        base: Instant::now(),
        run_timeout: Duration::from_secs(args.run_timeout.max(1)),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        herald_max_len: messages.max(catch_up).saturating_add(1),
        private: server.is_some(),
    };
    let version = redis_version(&ctx).await?;
    if !gateway_cases.is_empty() {
        gateway_case::run(
            &gateway_cases,
            &ctx.url,
            &ctx.prefix,
            ctx.drain_timeout.max(Duration::from_secs(5)),
            args.json,
        )
        .await?;
        if runs.is_empty() && map_cases.is_empty() {
            cleanup(&ctx).await?;
            return Ok(());
        }
    }
    if !map_cases.is_empty() {
        tokio::select! {
            r = map_case::run(&ctx, &map_cases, args.rounds, args.json) => { r?; }
            () = interrupted() => return Err(BenchError::Interrupted),
        }
        if runs.is_empty() {
            cleanup(&ctx).await?;
            return Ok(());
        }
    }
    let cluster = if redis.is_none() && runs.iter().any(|r| is_cluster(&r.case)) {
        // Starting may take seconds: Ctrl-C drops the nodes started so far (killing them).
        let cluster = start_cluster(&args.redis_server).await?;
        let first = cluster.node_urls().into_iter().next().unwrap_or_default();
        let cluster_ctx = Ctx {
            url: cluster.url(),
            client: redis::Client::open(first.as_str())
                .map_err(|e| BenchError::redis("open a cluster node's URL", e))?,
            prefix: ctx.prefix.clone(),
            base: ctx.base,
            run_timeout: ctx.run_timeout,
            drain_timeout: ctx.drain_timeout,
            herald_max_len: ctx.herald_max_len,
            private: true,
        };
        Some((cluster_ctx, cluster))
    } else {
        None
    };

    let progress = Progress::new(runs.len());
    let mut rows = Vec::new();
    let outcome = tokio::select! {
        r = run_all(&ctx, cluster.as_ref(), &runs, &args, &progress, &mut rows) => r,
        () = interrupted() => Err(BenchError::Interrupted),
    };
    progress.clear();
    if !ctx.private {
        // Best effort: a given Redis keeps none of the benchmark's keys.
        let _ = tokio::time::timeout(Duration::from_secs(60), cleanup(&ctx)).await;
    }
    drop(server);
    drop(cluster);

    let peak = rows
        .iter()
        .filter_map(|r| r.peak_rss_kib)
        .chain(report::peak_rss_kib())
        .max();
    let written = if args.json {
        if let Some(kib) = peak {
            eprintln!(
                "herald bench: peak RSS of the process (publisher and all subscribers): {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
        Ok(())
    } else {
        let notes = Notes {
            version: &version,
            private: ctx.private,
            url: &ctx.url,
            messages,
            catch_up,
            args: &args,
            peak,
            skipped_cluster,
        };
        write_results(&rows, &notes)
    };
    let written = written.and_then(|()| match &args.charts {
        Some(dir) if !rows.is_empty() => {
            let files = chart::write_charts(dir, &rows)?;
            eprintln!(
                "herald bench: {} chart(s) written to {}",
                files.len(),
                dir.display()
            );
            Ok(())
        }
        _ => Ok(()),
    });
    match (outcome, written) {
        (Err(BenchError::Output(e)), _) | (Ok(()), Err(e))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(()) // the reader of our output is gone: stop quietly, like other filters
        }
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(BenchError::Output(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Runs every planned run in order, appending to `rows`; with `--json`, prints each row as it
/// finishes and, with several rounds, each case's [`report::RoundsSummary`] after its last run.
async fn run_all(
    ctx: &Ctx,
    cluster: Option<&(Ctx, RedisCluster)>,
    runs: &[PlannedRun],
    args: &BenchArgs,
    progress: &Progress,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let (json, rounds) = (args.json, args.rounds);
    for (i, planned) in runs.iter().enumerate() {
        let PlannedRun {
            case,
            round,
            system,
        } = planned;
        let counters = Arc::new(RunCounters::default());
        let label = if rounds > 1 {
            format!("{} {} #{round}", case.name, system.name())
        } else {
            format!("{} {}", case.name, system.name())
        };
        let _bar = progress.run_bar(label, case, &counters);
        report::reset_peak_rss();
        let key = format!("{}:raw:{i}", ctx.prefix);
        let topic = format!("run-{i}");
        let run = FanOutRun {
            case: case.clone(),
            base: ctx.base,
            counters: Arc::clone(&counters),
            publish_timeout: ctx.run_timeout,
            drain_timeout: ctx.drain_timeout,
        };
        // One channel or topic keeps the run's name; several are numbered after it.
        let (channels, topics): (Vec<String>, Vec<String>) = match case.topics() {
            1 => (vec![key.clone()], vec![topic.clone()]),
            n => (0..n)
                .map(|t| (format!("{key}:t{t}"), format!("{topic}-t{t}")))
                .unzip(),
        };
        let m = match (case.shape, system) {
            (
                Shape::FanOut { .. } | Shape::Publishers { .. } | Shape::ManyTopics { .. },
                System::RedisPubsub,
            ) => baseline::pubsub_fan_out(ctx, &run, &channels).await?,
            (Shape::FanOut { .. }, System::RedisStreams) => {
                baseline::streams_fan_out(ctx, &run, &key).await?
            }
            (
                Shape::FanOut { .. } | Shape::Publishers { .. } | Shape::ManyTopics { .. },
                System::Herald,
            ) => herald_case::fan_out(ctx, &run, &topics).await?,
            (Shape::Publishers { .. } | Shape::ManyTopics { .. }, System::RedisStreams) => {
                return Err(BenchError::Internal(
                    "the cases of several publishers and many topics have no Streams baseline"
                        .into(),
                ))
            }
            (Shape::Cluster { .. }, System::RedisPubsub) => {
                let (_, nodes) = private_cluster(cluster)?;
                baseline::sharded_fan_out(&nodes.node_urls(), &run, &channels).await?
            }
            (Shape::Cluster { .. }, System::Herald) => {
                let (cluster_ctx, _) = private_cluster(cluster)?;
                herald_case::fan_out(cluster_ctx, &run, &topics).await?
            }
            (Shape::Cluster { .. }, System::RedisStreams) => {
                return Err(BenchError::Internal(
                    "the cluster case has no Streams baseline".into(),
                ))
            }
            (Shape::CatchUp, System::RedisStreams) => {
                baseline::streams_catch_up(ctx, case.messages, case.payload, &key, &counters)
                    .await?
            }
            (Shape::CatchUp, System::Herald) => {
                herald_case::catch_up(ctx, case.messages, case.payload, &topic, &counters).await?
            }
            (Shape::Work { .. }, System::RedisStreams) => {
                work_case::groups(ctx, &run, &key).await?
            }
            (Shape::Work { .. }, System::Herald) => work_case::herald(ctx, &run, &topic).await?,
            (Shape::Work { .. }, System::RedisPubsub) => {
                return Err(BenchError::Internal(
                    "the work-group cases have no Pub/Sub baseline".into(),
                ))
            }
            (Shape::CatchUp, System::RedisPubsub) => {
                return Err(BenchError::Internal(
                    "Pub/Sub keeps no history, so it has no catch-up case".into(),
                ))
            }
        };
        let rss = report::peak_rss_kib();
        // Paired: Herald's ratios are to the baselines of the same case and round.
        let baselines: Vec<Row> = rows
            .iter()
            .filter(|r| r.case == case.name && r.round == *round)
            .cloned()
            .collect();
        let row = Row::new(case, *system, *round, &m, rss, &baselines);
        progress.println(&row.summary(rounds));
        if json {
            progress
                .suspend(|| report::write_json(&mut std::io::stdout().lock(), &row))
                .map_err(BenchError::Output)?;
        }
        rows.push(row);
        let last_of_case = runs
            .get(i + 1)
            .is_none_or(|next| next.case.name != case.name);
        if json && rounds > 1 && last_of_case {
            if let Some(summary) = report::RoundsSummary::of(&case.name, rows) {
                progress
                    .suspend(|| report::write_json(&mut std::io::stdout().lock(), &summary))
                    .map_err(BenchError::Output)?;
            }
        }
        match (case.shape, cluster) {
            (Shape::Cluster { .. }, Some((_, nodes))) => flush_cluster(nodes).await?,
            _ => cleanup(ctx).await?,
        }
        progress.overall.inc(1);
    }
    Ok(())
}

/// The note printed when `--redis` is given and the cluster case is skipped.
const SKIPPED_CLUSTER: &str = "the cluster case (cluster-16topics-128B-max) was skipped: it \
     needs the benchmark's own private cluster, and --redis names an existing Redis";

/// The private cluster of the cluster case.
fn private_cluster(
    cluster: Option<&(Ctx, RedisCluster)>,
) -> Result<(&Ctx, &RedisCluster), BenchError> {
    cluster
        .map(|(c, n)| (c, n))
        .ok_or_else(|| BenchError::Internal("the cluster case has no private cluster".into()))
}

/// The options of the benchmark's private servers: `binary`, nothing on disk, a free loopback
/// port, and their own process group, so that a Ctrl-C at the terminal reaches the benchmark
/// (which then drops, and so kills, them) rather than the servers.
fn server_options(binary: &Path) -> Options {
    Options::new().binary(binary).own_process_group(true)
}

/// Starts the private `redis-server` (a blocking start, off the runtime's workers).
async fn start_server(binary: &Path) -> Result<RedisServer, BenchError> {
    let options = server_options(binary);
    tokio::task::spawn_blocking(move || RedisServer::try_start(&options))
        .await
        .map_err(|e| BenchError::Internal(format!("the server start failed: {e}")))?
        .map_err(server_error)
}

/// Starts the private cluster. Starting may take seconds; on Ctrl-C meanwhile, the start is
/// let finish (it is bounded) and the nodes are then dropped, which kills them, before the
/// benchmark reports the interruption.
async fn start_cluster(binary: &Path) -> Result<RedisCluster, BenchError> {
    let options = server_options(binary);
    let mut start = tokio::task::spawn_blocking(move || {
        RedisCluster::try_start(&options, cases::CLUSTER_PRIMARIES)
    });
    let started = tokio::select! {
        r = &mut start => r,
        () = interrupted() => {
            drop(start.await);
            return Err(BenchError::Interrupted);
        }
    };
    started
        .map_err(|e| BenchError::Internal(format!("the cluster start failed: {e}")))?
        .map_err(server_error)
}

/// The kit's error as the benchmark's, with the hints for its options.
fn server_error(e: herald_testkit::Error) -> BenchError {
    BenchError::Server(format!(
        "{e}; pass --redis-server PATH, or use an existing Redis with --redis URL"
    ))
}

/// Deletes every key on every node of the private cluster (FLUSHALL).
async fn flush_cluster(cluster: &RedisCluster) -> Result<(), BenchError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    for url in cluster.node_urls() {
        let client = redis::Client::open(url.as_str())
            .map_err(|e| BenchError::redis("open a cluster node's URL", e))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BenchError::redis("connect to a cluster node", e))?;
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BenchError::redis("FLUSHALL on a cluster node", e))?;
    }
    Ok(())
}

/// Resolves when Ctrl-C is pressed (never, if it cannot be listened for).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Refuses a Redis that is not on this machine: the benchmark floods its target.
fn check_loopback(url: &str) -> Result<(), BenchError> {
    let client = redis::Client::open(url)
        .map_err(|e| BenchError::Usage(format!("invalid Redis URL {url:?}: {e}")))?;
    let host = match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, _) => host.clone(),
        ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => return Ok(()), // a Unix socket is local
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(BenchError::Usage(format!(
            "herald bench only runs against a Redis on this machine (127.0.0.1, ::1 or \
             localhost), not {host:?}; omit --redis to let it start its own"
        )))
    }
}

/// A connection for housekeeping (slow commands allowed).
async fn admin_connection(ctx: &Ctx) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    ctx.client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| BenchError::redis("connect to Redis", e))
}

/// The server's `redis_version`.
async fn redis_version(ctx: &Ctx) -> Result<String, BenchError> {
    let mut conn = admin_connection(ctx).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|e| BenchError::redis("INFO server", e))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("(unknown version)")
        .trim()
        .to_string())
}

/// Deletes what a run wrote: FLUSHDB on the private server, otherwise every key under the
/// benchmark's prefix.
async fn cleanup(ctx: &Ctx) -> Result<(), BenchError> {
    let mut conn = admin_connection(ctx).await?;
    if ctx.private {
        return redis::cmd("FLUSHDB")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BenchError::redis("FLUSHDB", e));
    }
    let pattern = format!("{}:*", ctx.prefix);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| BenchError::redis("SCAN", e))?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| BenchError::redis("UNLINK", e))?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// What the notes under the table say.
struct Notes<'a> {
    version: &'a str,
    private: bool,
    url: &'a str,
    messages: u64,
    catch_up: u64,
    args: &'a BenchArgs,
    peak: Option<u64>,
    skipped_cluster: bool,
}

/// The table, the errors seen and the notes, on standard output.
fn write_results(rows: &[Row], n: &Notes<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        return Ok(());
    }
    let rounds = n.args.rounds;
    report::write_table(&mut out, rows, rounds > 1)?;
    writeln!(out)?;
    let summaries = if rounds > 1 {
        report::RoundsSummary::all(rows)
    } else {
        Vec::new()
    };
    if !summaries.is_empty() {
        writeln!(out, "Herald ratios, median over {rounds} rounds (min–max)")?;
        report::write_rounds_table(&mut out, &summaries)?;
        writeln!(out)?;
    }
    for r in rows
        .iter()
        .filter(|r| r.errors > 0 || r.duplicates > 0 || r.reordered > 0)
    {
        writeln!(
            out,
            "{} {}: {} problem(s), {} duplicate(s), {} reordered; first problem: {}",
            r.case,
            r.system,
            r.errors,
            r.duplicates,
            r.reordered,
            r.first_error.as_deref().unwrap_or("-")
        )?;
    }
    let server = if n.private {
        format!(
            "a private redis-server {} on 127.0.0.1 (no persistence)",
            n.version
        )
    } else {
        format!("Redis {} at {}", n.version, n.url)
    };
    writeln!(
        out,
        "Redis: {server}. {} messages per fan-out case; catch-up {} messages behind.",
        n.messages, n.catch_up
    )?;
    writeln!(
        out,
        "Full speed (rate max): the publisher sends batches of {} messages, one batch in flight: \
         PUBLISH or XADD pipelined {0} at a time, Herald publish_batch of {0}.",
        cases::FULL_SPEED_BATCH
    )?;
    writeln!(
        out,
        "Fixed rate: each message is sent on its own (PUBLISH, XADD, Herald publish), those due \
         in the same tick concurrently on one connection (Herald coalesces concurrent single \
         publishes to a topic into one call, as it does for any application)."
    )?;
    writeln!(
        out,
        "Each subscriber has its own Redis connection; deliv/s counts every subscriber's \
         deliveries. Latency: publish to delivery, from a timestamp in the payload, all \
         subscribers merged (HDR histogram)."
    )?;
    writeln!(
        out,
        "Catch-up: history written in batches of {}, then one subscriber reads it all (Herald \
         subscribe from Earliest; raw XRANGE COUNT {}); deliv/s is the read rate.",
        cases::PREFILL_BATCH,
        cases::READ_COUNT
    )?;
    writeln!(
        out,
        "lost = published x subscribers - distinct messages delivered; reordered = delivered after a \
         later-published message (at a fixed rate, concurrent sends have no defined order). Each run: publishing at most {} s, \
         deliveries awaited at most {} s after it. Ratios: Herald / baseline of the same case.",
        n.args.run_timeout, n.args.drain_timeout
    )?;
    if rounds > 1 {
        writeln!(
            out,
            "Rounds: each case ran {rounds} rounds back to back, each round every system once in \
             the usual order (baselines first, Herald last), so that they share the machine's \
             conditions; each Herald row's ratios are to the baselines of the same round \
             (paired). The second table gives, per case, the median of Herald's ratios over the \
             rounds (for an even count, the mean of the two middle values) with their min and \
             max; `rounds` counts the Herald runs it covers."
        )?;
    }
    if rows.iter().any(|r| r.case.starts_with("cluster-")) {
        writeln!(
            out,
            "Cluster case: a private Redis Cluster of {} primaries (no replicas) on 127.0.0.1; \
             {} topics spread over its slots; each batch of {} goes to the next topic in turn; \
             every subscriber (its own connections) receives all topics. redis-pubsub is sharded \
             Pub/Sub there: SPUBLISH pipelined per batch to the primary of the channel's slot, \
             SSUBSCRIBE over a RESP3 cluster connection per subscriber; Herald uses \
             redis+cluster:// (publish_batch per topic, one subscription to all topics). \
             Across topics there is no defined order, so `reordered` is only informative there.",
            cases::CLUSTER_PRIMARIES,
            cases::CLUSTER_TOPICS,
            cases::FULL_SPEED_BATCH
        )?;
    }
    let has = |prefix: &str| rows.iter().any(|r| r.case.starts_with(prefix));
    if rows
        .iter()
        .any(|r| r.subscribers > 16 || r.payload_bytes > 4096)
    {
        writeln!(
            out,
            "Wide fan-outs and large payloads publish fewer messages, each costlier: 1/2 of \
             the fan-out count at 64 subscribers, 1/5 at 256, 1/10 at 64 KiB (the `published` \
             column). Subscriber rule, as in every fan-out: each raw subscriber has its own \
             connection, each Herald subscriber its own Herald handle (a Herald subscription \
             has no connection of its own within a handle, so one handle per subscriber is \
             what makes it one connection set per subscriber). Redis's \
             client-output-buffer-limit (pubsub, default 32mb hard, 8mb for 60 s) disconnects \
             raw Pub/Sub subscribers that fall that far behind: their missing messages are in \
             `lost` and each disconnect is a problem listed above; Herald and Streams \
             subscribers read from history and do not lose messages that way."
        )?;
    }
    if has("pubs") {
        writeln!(
            out,
            "Several publishers (pubs*): {} and {} publishers, each its own connection (raw) or \
             Herald handle, together publish the case's messages once each (each takes the next \
             batch of {} in turn), each batch to the next of the case's topics (1 or {}); {} \
             subscribers receive every topic. Baseline: raw Pub/Sub with the same publishers. \
             Across publishers there is no defined order, so `reordered` is only informative.",
            cases::PUBLISHERS[0],
            cases::PUBLISHERS[1],
            cases::FULL_SPEED_BATCH,
            cases::PUBLISHER_TOPICS,
            cases::PUBLISHER_SUBSCRIBERS
        )?;
    }
    if has("topics") {
        writeln!(
            out,
            "Many topics (topics*): one subscriber, one subscription over every topic; each \
             message of a batch of {} goes to the next topic in turn (Herald: one publish call \
             per message, concurrently; raw: PUBLISH pipelined), with at least one message per \
             topic (1/5 of the fan-out count, at least the topic count). ready ms: from the \
             subscribe call until the subscriber is ready (Herald: the subscribe future; raw: \
             one SUBSCRIBE of every channel until Redis counts the last one, then one GET per \
             channel pipelined 1000 at a time, the least a client positioning itself in each \
             topic must read). sub RSS Δ: this process's VmRSS when the subscriber was ready \
             minus before it connected (a delta, not a peak; nothing published yet; memory that an \
             earlier run freed is reused without showing, so these cases run first and a \
             small delta may read 0). \
             `reordered` is only informative across topics.",
            cases::FULL_SPEED_BATCH
        )?;
    }
    if n.skipped_cluster {
        writeln!(out, "Note: {SKIPPED_CLUSTER}.")?;
    }
    if let Some(kib) = n.peak {
        writeln!(
            out,
            "Peak RSS of this process (publisher and all subscribers): {:.1} MiB.",
            kib as f64 / 1024.0
        )?;
    }
    out.flush()
}

/// The progress display on standard error (hidden when it is not a terminal).
struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
}

/// A style from a template, or the default one.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    fn new(runs: usize) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(runs as u64));
        overall.set_style(style("herald bench [{elapsed_precise}] run {pos}/{len}"));
        overall.tick();
        Progress { multi, overall }
    }

    /// A bar for one run, updated from its counters until dropped.
    fn run_bar(&self, label: String, case: &Case, counters: &Arc<RunCounters>) -> RunBar {
        let expected = case.messages * case.deliveries_per_message();
        let bar = self.multi.add(ProgressBar::new(expected));
        bar.set_style(style("{prefix:32} [{bar:30}] {pos}/{len} delivered, {msg}"));
        bar.set_prefix(label);
        let (b, c, n) = (bar.clone(), Arc::clone(counters), case.messages);
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                b.set_position(c.delivered.load(Ordering::Relaxed));
                b.set_message(format!(
                    "{}/{n} published",
                    c.published.load(Ordering::Relaxed)
                ));
            }
        });
        RunBar { bar, ticker }
    }

    /// Prints a line above the bars.
    fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    /// Runs `f` with the bars hidden.
    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    /// Removes the bars.
    fn clear(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// The bar of the current run; removed when dropped.
struct RunBar {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Drop for RunBar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_redis() {
        assert!(check_loopback("redis://127.0.0.1:6379").is_ok());
        assert!(check_loopback("redis://localhost").is_ok());
        assert!(check_loopback("redis://[::1]:6380/0").is_ok());
        let e = check_loopback("redis://10.0.0.5:6379").unwrap_err();
        assert_eq!(e.exit_status(), 2);
        assert!(check_loopback("redis://example.com").is_err());
    }
}
