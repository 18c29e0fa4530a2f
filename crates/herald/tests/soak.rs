//! Randomized soak: publishers (batches, coalesced concurrent singles, keyless messages) with
//! idempotency keys and retries, subscribers of every kind
//! (durable, `Latest`, slow), and a seeded schedule of faults (proxy cuts, stalls, delays and
//! refusals, `CLIENT KILL`, Redis kill -9 and restart with `appendfsync always`, subscriber
//! restarts from a durable cursor, a pause longer than retention), and a work group on one
//! topic whose members are killed and restarted. Every subscriber records what it received
//! and every work-group member each outcome it reported; the history checker (`herald_testkit::checker`) then verifies the
//! guarantees of docs/DESIGN.md: nothing acknowledged is lost without a `Gap`/`Reset`, nothing
//! duplicated, everything in order, and one message per offset across nodes; and each
//! acknowledged publish of the work group's topic acked exactly once by the group.
//!
//! Length: `HERALD_SOAK_SECS` (default 60). Seed: `HERALD_SOAK_SEED` (default: from the clock);
//! the seed is always printed, so a failure can be replayed:
//!
//! ```text
//! HERALD_SOAK_SECS=600 HERALD_SOAK_SEED=42 cargo test -p herald --test soak -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Event, Herald, Message, Position, SettingsChange, Start};
use support::checker::{check_with_retention, History, Published, Record, Retained};
use support::checker::{check_work, WorkAck, WorkOutcome, WorkReport};
use support::proxy::{Direction, FaultProxy};
use support::RedisServer;
use tokio::sync::watch;

/// splitmix64: a tiny seeded generator, enough for a fault schedule.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// The fault proxy does what it says.
// ---------------------------------------------------------------------------------------

/// Sends PING over `conn` and waits (at most `wait`) for `+PONG`.
async fn ping(conn: &mut tokio::net::TcpStream, wait: Duration) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    conn.write_all(b"PING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    read_pong(conn, wait).await
}

async fn read_pong(conn: &mut tokio::net::TcpStream, wait: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 7];
    match tokio::time::timeout(wait, conn.read_exact(&mut buf)).await {
        Ok(Ok(_)) if &buf == b"+PONG\r\n" => Ok(()),
        Ok(Ok(_)) => Err(format!("unexpected reply {buf:?}")),
        Ok(Err(e)) => Err(format!("closed: {e}")),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cuts_refuses_stalls_and_delays() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()));
    let long = Duration::from_secs(5);

    let mut c = connect().await.unwrap();
    ping(&mut c, long).await.unwrap();
    assert_eq!(proxy.open(), 1);

    // Cut: the open connection closes.
    assert_eq!(proxy.cut(), 1);
    assert!(
        ping(&mut c, long).await.is_err(),
        "a cut connection still answers"
    );

    // Refuse: new connections are closed at once; then accepted again.
    proxy.refuse(true);
    let mut c = connect().await.unwrap();
    assert!(
        ping(&mut c, long).await.is_err(),
        "a refused connection answered"
    );
    assert_eq!(proxy.refused(), 1);
    proxy.refuse(false);
    let mut c = connect().await.unwrap();
    ping(&mut c, long).await.unwrap();

    // Stall either direction: no answer, the connection stays open; pass: the answer comes.
    for dir in [Direction::Up, Direction::Down] {
        proxy.stall(dir);
        assert_eq!(
            ping(&mut c, Duration::from_millis(300)).await,
            Err("timed out".to_string()),
            "{dir:?}"
        );
        proxy.pass();
        read_pong(&mut c, long).await.unwrap();
    }

    // Delay: each chunk waits at least the delay.
    proxy.delay(Direction::Down, Duration::from_millis(1000));
    assert!(ping(&mut c, Duration::from_millis(100)).await.is_err());
    read_pong(&mut c, long).await.unwrap();
    proxy.pass();
    ping(&mut c, long).await.unwrap();

    // A Herald node works through the proxy and recovers from a cut.
    let node = soak_node(&proxy.url(), "through-proxy").await.unwrap();
    node.publish("p", "one").await.unwrap();
    proxy.cut();
    assert_eq!(node.publish("p", "two").await.unwrap().position.offset, 2);
    assert!(proxy.accepted() >= 4);
}

// ---------------------------------------------------------------------------------------
// The soak.
// ---------------------------------------------------------------------------------------

const TOPIC_A: &str = "soak.a";
/// A topic with a tiny retention, so that a paused subscriber gets a `Gap`.
const TOPIC_B: &str = "soak.b";
const TOPICS: [&str; 2] = [TOPIC_A, TOPIC_B];
const B_MAX_LEN: u64 = 40;
/// Publishers; the first one bypasses the proxy.
const PUBLISHERS: usize = 3;
const MAX_ATTEMPTS: u32 = 8;

/// A node with short timeouts, so that faults surface as errors the callers must handle;
/// `operation_timeout` bounds each publish attempt (publishers retry above it).
async fn soak_node(url: &str, id: &str) -> herald::Result<Herald> {
    soak_node_with(url, id, Duration::from_secs(3)).await
}

async fn soak_node_with(url: &str, id: &str, operation: Duration) -> herald::Result<Herald> {
    Herald::builder()
        .node_id(id)
        .redis(url)
        .poll_interval(Duration::from_millis(250))
        .response_timeout(Duration::from_millis(1000))
        .operation_timeout(operation)
        .connect_timeout(Duration::from_secs(20))
        .connect()
        .await
}

#[derive(Default)]
struct PublishStats {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
    duplicate_receipts: AtomicU64,
    retries: AtomicU64,
    abandoned: AtomicU64,
}

/// One publisher. Each round publishes 1-4 messages, in one of three ways:
/// - a batch with idempotency keys (`publish_batch`), retried with the same keys until
///   acknowledged or `MAX_ATTEMPTS` failed;
/// - the same messages as concurrent single publishes (joined futures, which the handle
///   coalesces into one call), the failed ones retried likewise;
/// - keyless messages (a batch, or concurrent singles): Herald's own retries must not
///   duplicate them (the call key), and a failed call is not retried (its outcome is unknown),
///   so such messages are abandoned rather than published twice. A keyless message's payload is
///   unique and stands in for its key in the history (see [`identity`]).
async fn publisher(
    id: usize,
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Published>>>,
    stats: Arc<PublishStats>,
) {
    let mut rng = Rng::new(seed);
    let node = soak_node_with(&url, &format!("pub{id}"), Duration::from_millis(1200))
        .await
        .unwrap_or_else(|e| panic!("publisher {id} cannot connect: {e}"));
    let record = |topic: &str, receipts: &[herald::Receipt], ids: &[String]| {
        let mut acked = acked.lock().unwrap();
        for (r, k) in receipts.iter().zip(ids) {
            if r.duplicate {
                stats.duplicate_receipts.fetch_add(1, Ordering::SeqCst);
            }
            acked.push(Published {
                topic: topic.to_string(),
                epoch: r.position.epoch,
                offset: r.position.offset,
                key: k.clone(),
            });
        }
        stats
            .acknowledged
            .fetch_add(receipts.len() as u64, Ordering::SeqCst);
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) && seq < 10_000_000 {
        let topic = if rng.chance(60) { TOPIC_A } else { TOPIC_B };
        let n = if rng.chance(20) { rng.range(2, 5) } else { 1 };
        let concurrent = rng.chance(30);
        let keyless = rng.chance(20);
        let ids: Vec<String> = (0..n)
            .map(|_| {
                seq += 1;
                if keyless {
                    format!("{KEYLESS}p{id}-{seq}")
                } else {
                    format!("p{id}-{seq}")
                }
            })
            .collect();
        stats.attempted.fetch_add(n, Ordering::SeqCst);
        let message = |k: &String| {
            let m = Message::new(format!("payload of {k}"));
            if keyless {
                m
            } else {
                m.key(k.clone())
            }
        };
        let mut pending = ids.clone();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let failure = if concurrent {
                let sends = pending.iter().map(|k| node.publish(topic, message(k)));
                let outcomes = futures::future::join_all(sends).await;
                let mut failed = Vec::new();
                let mut failure = None;
                for (k, outcome) in pending.iter().zip(outcomes) {
                    match outcome {
                        Ok(r) => record(topic, &[r], std::slice::from_ref(k)),
                        Err(e) => {
                            failed.push(k.clone());
                            failure = Some(e);
                        }
                    }
                }
                pending = failed;
                failure
            } else {
                match node.publish_batch(topic, pending.iter().map(message)).await {
                    Ok(receipts) => {
                        record(topic, &receipts, &pending);
                        pending.clear();
                        None
                    }
                    Err(e) => Some(e),
                }
            };
            let Some(e) = failure else { break };
            if keyless || attempt >= MAX_ATTEMPTS {
                if !keyless {
                    eprintln!(
                        "publisher {id}: giving up on {pending:?} after {attempt} attempts: {e}"
                    );
                }
                stats
                    .abandoned
                    .fetch_add(pending.len() as u64, Ordering::SeqCst);
                break;
            }
            tracing::debug!(publisher = id, attempt, error = %e, "publish failed; retrying");
            stats.retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(rng.millis(50, 300)).await;
        }
        tokio::time::sleep(rng.millis(3, 15)).await;
    }
}

/// Payloads of keyless messages start with this.
const KEYLESS: &str = "keyless:";

/// What identifies a delivered message in the history: its idempotency key, or for a keyless
/// message (whose key Herald generated) its unique payload's id.
fn identity(d: &herald::Delivery) -> String {
    match d.payload.strip_prefix(b"payload of ") {
        Some(rest) if rest.starts_with(KEYLESS.as_bytes()) => {
            String::from_utf8_lossy(rest).into_owned()
        }
        _ => d.key.clone(),
    }
}

/// How a subscriber is told to behave.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    stop: bool,
    paused: bool,
    /// Bumped to kill the current incarnation and start a new one (from the durable cursor).
    incarnation: u64,
    /// Per-message processing time of a slow subscriber.
    slow: Option<Duration>,
}

#[derive(Debug, Clone)]
struct SubSpec {
    name: &'static str,
    durable: bool,
    latest: bool,
    buffer: usize,
    /// Commit every n messages (durable only).
    commit_every: u64,
}

#[derive(Default)]
struct SubStats {
    errors: AtomicU64,
    /// The first few distinct errors the stream yielded.
    first_errors: Mutex<Vec<String>>,
    commits: AtomicU64,
    commit_failures: AtomicU64,
}

/// One logical subscriber: incarnations one after the other, each recording what it receives.
async fn subscriber(
    spec: SubSpec,
    url: String,
    mut control: watch::Receiver<Control>,
    record: Arc<Mutex<History>>,
    stats: Arc<SubStats>,
) {
    let topics: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    let mut first = true;
    'incarnations: loop {
        if control.borrow().stop {
            return;
        }
        let incarnation = control.borrow().incarnation;
        // Connect, read the cursors (durable), subscribe: each retried (bounded) while faults
        // are injected.
        let mut tries = 0;
        let (node, mut sub, floors) = loop {
            tries += 1;
            assert!(
                tries < 200,
                "{}: cannot subscribe after {tries} tries",
                spec.name
            );
            let attempt = async {
                let node = soak_node(&url, spec.name).await?;
                let mut floors = Vec::new();
                if spec.durable {
                    for t in &topics {
                        floors.push(node.cursor(t, spec.name).await?);
                    }
                }
                let builder = node.subscribe(topics.clone()).buffer(spec.buffer);
                let builder = if spec.durable {
                    builder.durable(spec.name).from(Start::Earliest)
                } else if spec.latest {
                    builder.from(Start::Latest)
                } else {
                    builder.from(Start::Earliest)
                };
                let sub = builder.await?;
                Ok::<_, herald::Error>((node, sub, floors))
            };
            match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                Ok(Ok(x)) => break x,
                Ok(Err(e)) => {
                    tracing::debug!(subscriber = spec.name, error = %e, "subscribe failed; retrying");
                }
                Err(_) => eprintln!("{}: subscribe attempt timed out", spec.name),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Where this incarnation starts: what it owes (first one only) and its floor.
        for (k, t) in topics.iter().enumerate() {
            let start = if spec.durable {
                let floor = floors[k].map(|c| (c.position.epoch, c.position.offset));
                Record::Start {
                    epoch: None,
                    from: 1,
                    floor,
                }
            } else if spec.latest {
                // Everything published after this inspection is owed (the subscription was
                // already listening before it).
                let mut tries = 0;
                let info = loop {
                    tries += 1;
                    match node.inspect(t).await {
                        Ok(info) => break info,
                        Err(e) if tries < 100 => {
                            tracing::debug!(error = %e, "inspect failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("{}: inspect keeps failing: {e}", spec.name),
                    }
                };
                Record::Start {
                    epoch: info.epoch,
                    from: info.last_offset + 1,
                    floor: None,
                }
            } else {
                Record::Start {
                    epoch: None,
                    from: 1,
                    floor: None,
                }
            };
            assert!(first || spec.durable, "only durable subscribers restart");
            record.lock().unwrap().push(t, start);
        }
        first = false;
        let mut received = 0u64;
        loop {
            let now = *control.borrow_and_update();
            if now.stop {
                return;
            }
            if now.incarnation != incarnation {
                // Killed: the subscription and its node are dropped between two events.
                drop(sub);
                drop(node);
                continue 'incarnations;
            }
            let item = tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                item = sub.next(), if !now.paused => item,
            };
            let event = match item {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    stats.errors.fetch_add(1, Ordering::SeqCst);
                    let mut first = stats.first_errors.lock().unwrap();
                    let text = e.to_string();
                    if first.len() < 3 && !first.contains(&text) {
                        first.push(text);
                    }
                    continue;
                }
                None => {
                    eprintln!("{}: subscription ended; restarting it", spec.name);
                    continue 'incarnations;
                }
            };
            let is_message = matches!(event, Event::Message(_));
            let Some((topic, r)) = Record::of_event(event, identity) else {
                panic!("{}: an event the checker does not model", spec.name);
            };
            let commit_at = if is_message {
                received += 1;
                r.commit_position()
                    .filter(|_| received % spec.commit_every.max(1) == 0)
            } else {
                r.commit_position()
            };
            record.lock().unwrap().push(&topic, r);
            if let (true, Some((epoch, offset))) = (spec.durable, commit_at) {
                let commit = sub.commit_position(&topic, Position::new(epoch, offset));
                match tokio::time::timeout(Duration::from_secs(5), commit).await {
                    Ok(Ok(())) => stats.commits.fetch_add(1, Ordering::SeqCst),
                    _ => stats.commit_failures.fetch_add(1, Ordering::SeqCst),
                };
            }
            if let Some(d) = now.slow {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Runs one command on Redis directly (not through the proxy); `None` if it failed.
fn redis_cmd(port: u16, args: &[&str]) -> Option<i64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut conn).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_SOAK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_test_writer()
        .try_init();
    let secs = env_u64("HERALD_SOAK_SECS").unwrap_or(60);
    let seed = env_u64("HERALD_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let banner = format!("soak: HERALD_SOAK_SEED={seed} HERALD_SOAK_SECS={secs}");
    println!("{banner}");
    let mut rng = Rng::new(seed);

    let server = RedisServer::start_persistent();
    let port = server.port;
    let server = Arc::new(Mutex::new(server));
    let proxy = FaultProxy::start(port).await;
    let url = proxy.url();
    let direct = format!("redis://127.0.0.1:{port}");

    let admin = soak_node(&direct, "admin").await.unwrap();
    let mut change = SettingsChange::default();
    change.max_len = Some(B_MAX_LEN);
    admin.configure(TOPIC_B, change).await.unwrap();

    // Subscribers first, so that the Earliest and durable ones owe everything.
    let specs = [
        SubSpec {
            name: "durable-1",
            durable: true,
            latest: false,
            buffer: 256,
            commit_every: 1,
        },
        SubSpec {
            name: "durable-10",
            durable: true,
            latest: false,
            buffer: 64,
            commit_every: 10,
        },
        SubSpec {
            name: "latest",
            durable: false,
            latest: true,
            buffer: 1024,
            commit_every: 0,
        },
        SubSpec {
            name: "slow",
            durable: false,
            latest: false,
            buffer: 16,
            commit_every: 0,
        },
    ];
    let mut controls = Vec::new();
    let mut histories = Vec::new();
    let mut sub_stats = Vec::new();
    let mut sub_tasks = Vec::new();
    for spec in &specs {
        let (tx, rx) = watch::channel(Control {
            slow: (spec.name == "slow").then_some(Duration::from_millis(2)),
            ..Control::default()
        });
        let h = Arc::new(Mutex::new(History::new(spec.name)));
        let st = Arc::new(SubStats::default());
        sub_tasks.push(tokio::spawn(subscriber(
            spec.clone(),
            url.clone(),
            rx,
            h.clone(),
            st.clone(),
        )));
        controls.push(tx);
        histories.push(h);
        sub_stats.push(st);
    }
    // Wait (bounded) until every subscriber has started.
    let deadline = Instant::now() + Duration::from_secs(30);
    while histories
        .iter()
        .any(|h| h.lock().unwrap().topics.len() < TOPICS.len())
    {
        assert!(Instant::now() < deadline, "subscribers did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let work = start_work_group(url.clone(), seed ^ 0x9e37_79b9_7f4a_7c15);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let pub_stats = Arc::new(PublishStats::default());
    // Publisher 0 talks to Redis directly: it keeps publishing while the proxy cuts, stalls
    // or refuses the others and every subscriber (who then fall behind and catch up).
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            tokio::spawn(publisher(
                id,
                if id == 0 { direct.clone() } else { url.clone() },
                rng.next_u64(),
                stop.clone(),
                acked.clone(),
                pub_stats.clone(),
            ))
        })
        .collect();
    let maps = map_soak_start(&url, &direct, rng.next_u64(), stop.clone()).await;

    // The fault schedule.
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    let run_for = Duration::from_secs(secs);
    let mut count = |kind: &'static str| *faults.entry(kind).or_default() += 1;
    let slow = specs.iter().position(|s| s.name == "slow").unwrap();
    let durables: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].durable).collect();
    let mut rounds = 0u64;
    while started.elapsed() < run_for && rounds < 100_000 {
        rounds += 1;
        tokio::time::sleep(rng.millis(300, 1500)).await;
        if started.elapsed() >= run_for {
            break;
        }
        match rng.range(0, 10) {
            0 => {
                proxy.cut();
                count("proxy cut");
            }
            1 => {
                let dir = if rng.chance(50) {
                    Direction::Up
                } else {
                    Direction::Down
                };
                proxy.stall(dir);
                tokio::time::sleep(rng.millis(300, 2500)).await;
                proxy.pass();
                count(if dir == Direction::Up {
                    "proxy stall up"
                } else {
                    "proxy stall down"
                });
            }
            2 => {
                let dir = if rng.chance(50) {
                    Direction::Up
                } else {
                    Direction::Down
                };
                proxy.delay(dir, rng.millis(5, 60));
                tokio::time::sleep(rng.millis(500, 3000)).await;
                proxy.pass();
                count("proxy delay");
            }
            3 => {
                proxy.refuse(true);
                proxy.cut();
                tokio::time::sleep(rng.millis(300, 2000)).await;
                proxy.refuse(false);
                count("proxy refuse");
            }
            4 => {
                if redis_cmd(port, &["CLIENT", "KILL", "TYPE", "pubsub"]).is_some() {
                    count("client kill pubsub");
                }
            }
            5 => {
                if redis_cmd(port, &["CLIENT", "KILL", "TYPE", "normal"]).is_some() {
                    count("client kill normal");
                }
            }
            6 => {
                let down = rng.millis(100, 1500);
                let server = server.clone();
                tokio::task::spawn_blocking(move || {
                    let mut s = server.lock().unwrap();
                    s.kill9();
                    std::thread::sleep(down);
                    s.restart();
                })
                .await
                .unwrap();
                count("redis kill -9 + restart");
            }
            7 | 8 => {
                let i = durables[rng.range(0, durables.len() as u64 - 1) as usize];
                controls[i].send_modify(|c| c.incarnation += 1);
                count("subscriber restart");
            }
            _ => {
                // Longer than retention of TOPIC_B at the publish rate.
                controls[slow].send_modify(|c| c.paused = true);
                tokio::time::sleep(rng.millis(1500, 4000)).await;
                controls[slow].send_modify(|c| c.paused = false);
                count("subscriber pause");
            }
        }
    }
    proxy.pass();
    let fault_secs = started.elapsed().as_secs_f64();

    // Stop publishing; let every subscriber catch up with the heads.
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("publisher did not stop within 60 s")
            .unwrap();
    }
    let map_report = map_soak_finish(maps, &admin).await;
    for c in &controls {
        c.send_modify(|c| {
            c.paused = false;
            c.slow = None;
        });
    }
    let mut heads = Vec::new();
    let mut retained = Vec::new();
    for t in TOPICS {
        let info = admin.inspect(t).await.unwrap();
        heads.push((t, info.epoch, info.last_offset));
        if let Some(epoch) = info.epoch {
            retained.push(Retained {
                topic: t.to_string(),
                epoch,
                first: info.first_offset,
            });
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind: Vec<String> = histories
            .iter()
            .flat_map(|h| h.lock().unwrap().behind(&heads))
            .collect();
        if behind.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("not caught up after 120 s: {behind:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (work, work_wait) = finish_work_group(work, &acked, &retained, port).await;
    for c in &controls {
        c.send_modify(|c| c.stop = true);
    }
    for t in sub_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    // Check.
    let acked = acked.lock().unwrap().clone();
    let histories: Vec<History> = histories
        .iter()
        .map(|h| h.lock().unwrap().clone())
        .collect();
    let report = check_with_retention(&acked, &histories, &retained);

    let mut table = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(table, "\n=== Herald soak report ===");
    let _ = writeln!(
        table,
        "{banner}; faults injected for {fault_secs:.0} s; proxy: {} connections, {} cut, {} refused",
        proxy.accepted(),
        proxy.cut_count(),
        proxy.refused()
    );
    let _ = writeln!(table, "faults injected:");
    for (kind, n) in &faults {
        let _ = writeln!(table, "  {kind:<26} {n:>6}");
    }
    let _ = writeln!(
        table,
        "  {:<26} {:>6}",
        "total",
        faults.values().sum::<u64>()
    );
    let _ = writeln!(
        table,
        "publishes: attempted {}, acknowledged {} ({} after a retry returned a duplicate receipt), retries {}, abandoned {}",
        pub_stats.attempted.load(Ordering::SeqCst),
        pub_stats.acknowledged.load(Ordering::SeqCst),
        pub_stats.duplicate_receipts.load(Ordering::SeqCst),
        pub_stats.retries.load(Ordering::SeqCst),
        pub_stats.abandoned.load(Ordering::SeqCst),
    );
    for (t, epoch, last) in &heads {
        let first = retained
            .iter()
            .find(|r| r.topic == *t)
            .map_or(0, |r| r.first);
        let _ = writeln!(
            table,
            "topic {t}: epoch {epoch:?}, offsets {first}..={last} retained"
        );
    }
    for (spec, st) in specs.iter().zip(&sub_stats) {
        let _ = writeln!(
            table,
            "{}: stream errors {}, commits {} ({} failed)",
            spec.name,
            st.errors.load(Ordering::SeqCst),
            st.commits.load(Ordering::SeqCst),
            st.commit_failures.load(Ordering::SeqCst)
        );
        for e in st.first_errors.lock().unwrap().iter() {
            let _ = writeln!(table, "  stream error: {e}");
        }
    }
    let _ = write!(table, "{}", report.table());
    let _ = write!(table, "{}", work.table());
    let _ = write!(table, "{}", work_wait.notes);
    let _ = writeln!(
        table,
        "work members restarted {}, stream/start errors {}; the group finished {:.1} s after the subscribers caught up",
        work_wait.restarts,
        work_wait.errors,
        work_wait.waited.as_secs_f64()
    );
    let _ = writeln!(table, "violations: {}", report.violations());
    let _ = write!(table, "{}", map_report.table());
    println!("{table}");

    assert!(
        pub_stats.acknowledged.load(Ordering::SeqCst) > 0,
        "nothing was published ({banner})"
    );
    assert!(
        report.subscribers.iter().all(|s| s.delivered > 0),
        "a subscriber received nothing ({banner})"
    );
    assert_eq!(
        report.violations(),
        0,
        "the history checker found violations; replay with {banner}"
    );
    assert_eq!(
        map_report.violations(),
        0,
        "the map checker found violations; replay with {banner}"
    );
    assert!(
        map_report.acknowledged > 0,
        "no map write was acknowledged ({banner})"
    );
    assert!(work.acked > 0, "the work group acked nothing ({banner})");
    assert_eq!(
        work.violations(),
        0,
        "the work-group checker found violations; replay with {banner}"
    );
    assert_eq!(
        work_wait.held, 0,
        "jobs whose ack call failed were never finished by the group; replay with {banner}"
    );
    let resets: u64 = report.subscribers.iter().map(|s| s.resets).sum();
    assert_eq!(
        resets, 0,
        "with appendfsync always no log may be lost; replay with {banner}"
    );
}

// ---- A replicated map under the same faults: 2 writers, 2 watchers. ----

const SOAK_MAP: &str = "soak-map";

type MapState = Arc<Mutex<BTreeMap<String, bytes::Bytes>>>;

/// The map part of the soak, running.
struct MapSoak {
    writes: Arc<Mutex<Vec<support::checker::MapWrite>>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<(String, MapState, tokio::task::JoinHandle<()>)>,
}

/// Starts the map's watchers (through the proxy) and writers (one direct, one through the
/// proxy); the writers stop with `stop`.
async fn map_soak_start(proxied: &str, direct: &str, seed: u64, stop: Arc<AtomicBool>) -> MapSoak {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for i in 0..2 {
        let name = format!("map-watcher-{i}");
        let state = MapState::default();
        let task = tokio::spawn(map_watcher(
            proxied.to_string(),
            name.clone(),
            state.clone(),
        ));
        watchers.push((name, state, task));
    }
    let writers = (0..2)
        .map(|i| {
            let url = if i == 0 { direct } else { proxied }.to_string();
            tokio::spawn(map_writer(i, url, seed ^ i, stop.clone(), writes.clone()))
        })
        .collect();
    MapSoak {
        writes,
        writers,
        watchers,
    }
}

/// Puts and deletes random keys until `stop`, recording every attempt.
async fn map_writer(
    id: u64,
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<support::checker::MapWrite>>>,
) {
    use support::checker::MapWrite;
    let mut rng = Rng::new(seed);
    let mut map = None;
    for n in 0..1_000_000u64 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(rng.millis(2, 15)).await;
        if map.is_none() {
            map = soak_node(&url, &format!("map-writer-{id}"))
                .await
                .ok()
                .and_then(|h| h.map(SOAK_MAP).ok());
        }
        let Some(m) = &map else { continue };
        let key = format!("k{}", rng.range(0, 19));
        let rev = |r: Position| (r.epoch, r.offset);
        let write = if rng.chance(15) {
            match m.delete(&key).await {
                Ok(None) => continue, // nothing to delete: nothing happened
                Ok(Some(r)) => MapWrite {
                    key,
                    value: None,
                    revision: Some(rev(r)),
                },
                Err(_) => MapWrite {
                    key,
                    value: None,
                    revision: None,
                },
            }
        } else {
            let value = format!("w{id}-{n}");
            let revision = m.put(&key, &value).await.ok().map(rev);
            MapWrite {
                key,
                value: Some(value.into_bytes()),
                revision,
            }
        };
        writes.lock().unwrap().push(write);
    }
}

/// Watches the map, applying every event; reopens the watch when it ends with an error.
async fn map_watcher(url: String, name: String, state: MapState) {
    for _ in 0..100_000u32 {
        let watch = match soak_node(&url, &name).await {
            Ok(h) => match h.map(SOAK_MAP) {
                Ok(m) => m.watch().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let Ok(mut watch) = watch else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(Ok(e)) = watch.next().await {
            herald::map::apply(&mut state.lock().unwrap(), &e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the writers (`stop` must be set), waits (bounded) until the watchers hold the final
/// snapshot, and checks the run.
async fn map_soak_finish(m: MapSoak, admin: &Herald) -> support::checker::MapReport {
    for w in m.writers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("map writer did not stop within 60 s")
            .unwrap();
    }
    let snap = admin.map(SOAK_MAP).unwrap().snapshot().await.unwrap();
    let values: BTreeMap<String, bytes::Bytes> = snap
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while m
        .watchers
        .iter()
        .any(|(_, s, _)| *s.lock().unwrap() != values)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finals: Vec<support::checker::MapWatcherFinal> = m
        .watchers
        .iter()
        .map(|(name, s, task)| {
            task.abort();
            support::checker::MapWatcherFinal {
                name: name.clone(),
                entries: s
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_vec()))
                    .collect(),
            }
        })
        .collect();
    let snapshot = snap
        .entries
        .into_iter()
        .map(|(k, v)| (k, (v.value.to_vec(), (v.revision.epoch, v.revision.offset))))
        .collect();
    let writes = m.writes.lock().unwrap().clone();
    support::checker::check_map(&snapshot, &writes, &finals)
}

// ---- A work group under the same faults. ----

/// The soak's work group on [`TOPIC_A`].
const WORK_GROUP: &str = "soak-workers";
const WORK_MEMBERS: usize = 3;
const WORK_LEASE: Duration = Duration::from_secs(2);

/// A work group of [`WORK_MEMBERS`] members on [`TOPIC_A`] (through the fault proxy), one of
/// which a supervisor kills (drops mid-work, leases held) and restarts under the same name
/// every few seconds. Members ack most jobs, nak some, and sometimes work past their lease
/// and ack late (`Stale`, or `Acked` when nobody took the job meanwhile). Every outcome is
/// recorded for [`check_work`].
struct WorkGroup {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<WorkAck>>>,
    supervisor: tokio::task::JoinHandle<(u64, u64)>,
}

fn start_work_group(url: String, seed: u64) -> WorkGroup {
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicBool::new(true));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let (s, k, a) = (stop.clone(), kills.clone(), acks.clone());
    let supervisor = tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let errors = Arc::new(AtomicU64::new(0));
        let spawn = |i: usize, seed: u64| {
            tokio::spawn(work_member(
                url.clone(),
                i,
                seed,
                s.clone(),
                a.clone(),
                errors.clone(),
            ))
        };
        let mut members: Vec<_> = (0..WORK_MEMBERS)
            .map(|i| spawn(i, rng.next_u64()))
            .collect();
        let mut restarts = 0u64;
        let mut rounds = 0u64;
        while !s.load(Ordering::SeqCst) && rounds < 100_000 {
            rounds += 1;
            tokio::time::sleep(rng.millis(2000, 6000)).await;
            if !k.load(Ordering::SeqCst) {
                continue;
            }
            let i = rng.range(0, WORK_MEMBERS as u64 - 1) as usize;
            members[i].abort();
            members[i] = spawn(i, rng.next_u64());
            restarts += 1;
        }
        for m in members {
            let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
        }
        (restarts, errors.load(Ordering::SeqCst))
    });
    WorkGroup {
        stop,
        kills,
        acks,
        supervisor,
    }
}

async fn work_member(
    url: String,
    i: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<WorkAck>>>,
    errors: Arc<AtomicU64>,
) {
    use herald::WorkEvent;
    let mut rng = Rng::new(seed);
    let member = format!("worker-{i}");
    let mut attempts = 0u32;
    while !stop.load(Ordering::SeqCst) && attempts < 10_000 {
        attempts += 1;
        let started = async {
            soak_node(&url, &member)
                .await?
                .work(TOPIC_A)
                .group(WORK_GROUP)
                .from(Start::Earliest)
                .lease(WORK_LEASE)
                .concurrency(4)
                .max_deliveries(1000)
                .start()
                .await
        };
        let mut worker = match started.await {
            Ok(w) => w,
            Err(_) => {
                errors.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut jobs = tokio::task::JoinSet::new();
        while !stop.load(Ordering::SeqCst) {
            let job = match tokio::time::timeout(Duration::from_millis(300), worker.next()).await {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    errors.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Ok(Some(Ok(WorkEvent::Job(job)))) => job,
                Ok(Some(Ok(_))) => continue,
            };
            // Each job in its own task (the worker's concurrency bounds them), so that a slow
            // one does not hold back the others; killing the member (dropping this future)
            // drops them all mid-call.
            while jobs.try_join_next().is_some() {}
            jobs.spawn(handle_job(
                job,
                member.clone(),
                rng.range(0, 99),
                acks.clone(),
            ));
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), worker.close()).await;
    }
}

/// The outcome recorded for a job whose outcome call has not returned yet: it may still
/// end `Stale` or `Retry`, so the wait for the group ([`finish_work_group`]) does not count
/// it as a call that may have acked (the checker, which sees a `Failed` outcome, does).
const IN_FLIGHT: &str = "call in flight";

fn in_flight(a: &WorkAck) -> bool {
    matches!(&a.outcome, WorkOutcome::Failed(e) if e == IN_FLIGHT)
}

/// Marks the record `at` of a job whose handling was dropped (its member killed) mid-call as
/// failed: the call may or may not have been applied, and will never return.
struct Killed {
    acks: Arc<Mutex<Vec<WorkAck>>>,
    at: usize,
}

impl Drop for Killed {
    fn drop(&mut self) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight(&acks[self.at]) {
            acks[self.at].outcome = WorkOutcome::Failed("killed during the call".into());
        }
    }
}

/// Reports one job's outcome (`roll` out of 100: under 4 naks it, 4 works past the lease
/// first), recorded before the call as in flight (then as failed, effect unknown, should the
/// member be killed meanwhile) and then as what the call returned.
async fn handle_job(job: herald::Job, member: String, roll: u64, acks: Arc<Mutex<Vec<WorkAck>>>) {
    use herald::Outcome;
    let record = WorkAck {
        topic: TOPIC_A.to_string(),
        epoch: job.position().epoch,
        offset: job.position().offset,
        key: identity(job.delivery()),
        group: WORK_GROUP.to_string(),
        member,
        attempt: job.attempt(),
        outcome: WorkOutcome::Failed(IN_FLIGHT.into()),
    };
    let at = {
        let mut acks = acks.lock().unwrap();
        acks.push(record);
        acks.len() - 1
    };
    let _killed = Killed {
        acks: acks.clone(),
        at,
    };
    let outcome = if roll < 4 {
        job.nak(Duration::from_millis(50)).await
    } else {
        if roll < 5 {
            tokio::time::sleep(WORK_LEASE + Duration::from_millis(500)).await;
        }
        job.ack().await
    };
    acks.lock().unwrap()[at].outcome = match outcome {
        Ok(Outcome::Acked) => WorkOutcome::Acked,
        Ok(Outcome::Stale) => WorkOutcome::Stale,
        Ok(Outcome::Retry { .. }) => WorkOutcome::Retry,
        Ok(Outcome::DeadLettered { .. }) => WorkOutcome::DeadLettered,
        Ok(other) => WorkOutcome::Failed(format!("unexpected {other:?}")),
        Err(e) => WorkOutcome::Failed(e.to_string()),
    };
}

/// The owed offsets of [`TOPIC_A`] (acknowledged publishes at or after `floor`) that `acks`
/// neither acked nor may have acked (a failed call): what [`check_work`] counts as missing.
fn unfinished(published: &[Published], acks: &[WorkAck], floor: u64) -> Vec<u64> {
    let covered: BTreeSet<u64> = acks
        .iter()
        .filter(|a| a.topic == TOPIC_A && a.group == WORK_GROUP)
        .filter(|a| matches!(a.outcome, WorkOutcome::Acked | WorkOutcome::Failed(_)))
        .map(|a| a.offset)
        .collect();
    let owed: BTreeSet<u64> = published
        .iter()
        .filter(|p| p.topic == TOPIC_A && p.offset >= floor)
        .map(|p| p.offset)
        .collect();
    owed.difference(&covered).copied().collect()
}

/// The owed offsets never `Acked` whose ack call failed (unconfirmed) that the group still
/// holds a job record for in Redis: that call was not applied, the job is not finished.
fn held_unconfirmed(port: u16, published: &[Published], acks: &[WorkAck], floor: u64) -> Vec<u64> {
    let confirmed: Vec<WorkAck> = acks
        .iter()
        .filter(|a| !matches!(a.outcome, WorkOutcome::Failed(_)))
        .cloned()
        .collect();
    let uncovered = unfinished(published, acks, floor);
    let jobs = format!("herald:{{{TOPIC_A}}}:work:{WORK_GROUP}:jobs");
    unfinished(published, &confirmed, floor)
        .into_iter()
        .filter(|o| !uncovered.contains(o))
        .filter(|o| redis_cmd(port, &["HEXISTS", &jobs, &o.to_string()]) == Some(1))
        .collect()
}

/// A Redis reply, for diagnostics.
fn redis_show(port: u16, args: &[&str]) -> String {
    let query = || -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut conn)
    };
    match query() {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// What the group's keys in Redis (PROTOCOL "Work groups") and the members' records say about
/// the owed offsets `missing`.
fn work_diagnostics(port: u16, missing: &[u64], acks: &[WorkAck]) -> String {
    let key = |suffix: &str| format!("herald:{{{TOPIC_A}}}:work:{WORK_GROUP}{suffix}");
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "  missing offsets: {missing:?}");
    let _ = writeln!(
        out,
        "  state {}; holders {}; {} jobs, {} due",
        redis_show(port, &["HGETALL", &key("")]),
        redis_show(port, &["ZRANGE", &key(":holders"), "0", "-1", "WITHSCORES"]),
        redis_show(port, &["HLEN", &key(":jobs")]),
        redis_show(port, &["ZCARD", &key(":due")]),
    );
    for o in missing.iter().take(20) {
        let o = o.to_string();
        let _ = writeln!(
            out,
            "  offset {o}: job {}, due {}, done {}",
            redis_show(port, &["HGET", &key(":jobs"), &o]),
            redis_show(port, &["ZSCORE", &key(":due"), &o]),
            redis_show(
                port,
                &[
                    "ZSCAN",
                    &key(":done"),
                    "0",
                    "MATCH",
                    &format!("{o}:*"),
                    "COUNT",
                    "100000"
                ]
            ),
        );
        for a in acks.iter().filter(|a| a.offset.to_string() == o) {
            let _ = writeln!(
                out,
                "    {} attempt {} (epoch {}): {:?}",
                a.member, a.attempt, a.epoch, a.outcome
            );
        }
    }
    out
}

/// Stops the kills, waits (bounded) until the group has acked every acknowledged publish of
/// [`TOPIC_A`] (or failed a call that may have acked it: a call still in flight does not
/// count, it may end `Stale` or `Retry`), stops the members and checks their outcomes.
/// Also returns a few lines on the wait, and on the group's state in Redis when the check
/// finds offsets missing.
async fn finish_work_group(
    wg: WorkGroup,
    acked: &Mutex<Vec<Published>>,
    retained: &[Retained],
    port: u16,
) -> (WorkReport, WorkWait) {
    use std::fmt::Write as _;
    let waited = Instant::now();
    wg.kills.store(false, Ordering::SeqCst);
    let first = retained
        .iter()
        .find(|r| r.topic == TOPIC_A)
        .map_or(1, |r| r.first);
    let floor = first.max(1);
    let settled = |acks: &[WorkAck]| -> Vec<WorkAck> {
        acks.iter().filter(|a| !in_flight(a)).cloned().collect()
    };
    // When a wait that counted calls in flight as possibly acked would have ended: after how
    // long, the records then, and the owed offsets only calls in flight covered.
    let mut eager: Option<(Duration, usize, Vec<u64>)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let published = acked.lock().unwrap().clone();
        let acks = wg.acks.lock().unwrap().clone();
        let open = unfinished(&published, &settled(&acks), floor);
        if eager.is_none() && unfinished(&published, &acks, floor).is_empty() {
            eager = Some((waited.elapsed(), acks.len(), open.clone()));
        }
        if open.is_empty() && held_unconfirmed(port, &published, &acks, floor).is_empty()
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = waited.elapsed();
    wg.stop.store(true, Ordering::SeqCst);
    let (restarts, errors) = tokio::time::timeout(Duration::from_secs(60), wg.supervisor)
        .await
        .expect("the work group stops")
        .unwrap();
    let published = acked.lock().unwrap().clone();
    let acks = wg.acks.lock().unwrap().clone();
    let report = check_work(&published, &acks, TOPIC_A, WORK_GROUP, 1, first);
    let mut notes = String::new();
    if let Some((after, n, only)) = eager {
        // What the check would have found had the members stopped then: the records of that
        // moment, with the outcomes their calls returned.
        let would = unfinished(&published, &acks[..n], floor);
        let _ = writeln!(
            notes,
            "work wait: calls in flight alone covered {} owed offsets {:?} after {:.1} s ({} of them then not acked by those calls: {:?}); settled after {:.1} s",
            only.len(),
            &only[..only.len().min(12)],
            after.as_secs_f64(),
            would.len(),
            &would[..would.len().min(12)],
            waited.as_secs_f64()
        );
        for o in would.iter().take(8) {
            let records: Vec<String> = acks
                .iter()
                .filter(|a| a.offset == *o)
                .map(|a| format!("{} #{}: {:?}", a.member, a.attempt, a.outcome))
                .collect();
            let _ = writeln!(notes, "  offset {o}: {}", records.join("; "));
        }
    }
    let held = held_unconfirmed(port, &published, &acks, floor);
    let held_count = held.len();
    if !held.is_empty() {
        let _ = writeln!(
            notes,
            "work: unconfirmed offsets the group still holds (never finished): {held:?}"
        );
    }
    let missing = unfinished(&published, &acks, floor);
    if !missing.is_empty() || !held.is_empty() {
        let missing: Vec<u64> = missing.into_iter().chain(held).collect();
        let _ = write!(notes, "{}", work_diagnostics(port, &missing, &acks));
    }
    let wait = WorkWait {
        restarts,
        errors,
        waited,
        held: held_count,
        notes,
    };
    (report, wait)
}

/// How [`finish_work_group`] went.
struct WorkWait {
    restarts: u64,
    /// Stream and start errors of the members.
    errors: u64,
    waited: Duration,
    /// Unconfirmed offsets the group still held a job for at the end (never finished).
    held: usize,
    notes: String,
}
