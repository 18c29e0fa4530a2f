//! Failover soak (issue 14): a primary and its replica behind one address (a proxy that is
//! pointed at whichever server is primary), publishers with idempotency keys and retries,
//! durable and live subscribers (one of them offline across every crash), and a seeded
//! schedule of failovers:
//! - **planned**: `FAILOVER` on the primary (Redis pauses writes, waits for the replica to
//!   catch up, then switches roles), after which the proxy follows the new primary. It must
//!   lose no acknowledged message.
//! - **crash**: the replica is frozen (`kill -STOP`) and cut off, the primary acknowledges
//!   writes for a while that the replica never gets, the primary is killed (`kill -9`), the
//!   replica is promoted (`REPLICAOF NO ONE`), the proxy follows it, and the old primary comes
//!   back empty as the new replica. Those writes are lost: every subscriber that owed them must
//!   be told (a `Reset` or a `Lost` gap), and no (topic, epoch, offset) may name two messages.
//!
//! At the end a fresh reader reads every topic from the start; the acknowledged publishes it
//! does not find are the lost ones, fed with everything else to the history checker.
//!
//! Length: `HERALD_SOAK_SECS` (default 20). Seed: `HERALD_SOAK_SEED` (default: from the
//! clock), always printed:
//!
//! HERALD_SOAK_SECS=300 HERALD_SOAK_SEED=42 cargo test -p herald --test soak_failover -- --nocapture

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Event, Herald, Message, Position, Start};
use support::checker::{check_losses, History, Published, Record, Retained};
use support::proxy::FaultProxy;
use support::RedisServer;
use tokio::sync::watch;

const TOPICS: [&str; 2] = ["fa", "fb"];
const PUBLISHERS: usize = 2;
const MAX_ATTEMPTS: u32 = 60;

/// splitmix64: a tiny seeded generator, enough for a schedule.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.range(1, 100) <= percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

async fn soak_node(url: &str, id: &str, operation: Duration) -> herald::Result<Herald> {
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

/// One command on a server directly (not through the proxy).
fn direct<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut conn)
}

fn info_field(port: u16, section: &str, field: &str) -> String {
    let info: String = direct(port, &["INFO", section]).unwrap_or_default();
    support::info_field(&info, field)
}

/// Polls `ok` every 50 ms for at most `limit`; false if it never held.
fn poll(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Makes `replica` a replica of `primary` and waits (bounded) until it is in sync and streams.
fn attach(replica: u16, primary: u16) {
    let _: () = direct(replica, &["REPLICAOF", "127.0.0.1", &primary.to_string()]).unwrap();
    let synced = poll(Duration::from_secs(30), || {
        info_field(replica, "replication", "master_link_status") == "up"
            && direct::<i64>(primary, &["WAIT", "1", "100"]).unwrap_or(0) >= 1
    });
    assert!(synced, "replica {replica} did not sync with {primary}");
}

#[derive(Default)]
struct PublishStats {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
    retries: AtomicU64,
    abandoned: AtomicU64,
}

/// An acknowledged publish and the failover phases it may belong to: the write happened
/// between the phase read before the call and the one read after its reply.
#[derive(Debug, Clone)]
struct Acked {
    published: Published,
    phases: (u64, u64),
}

/// One publisher: 1-4 messages per round (one batch or concurrent singles), every message
/// with its own idempotency key, retried with the same keys until acknowledged.
async fn publisher(
    id: usize,
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<Acked>>>,
    stats: Arc<PublishStats>,
) {
    let mut rng = Rng(seed);
    let node = soak_node(&url, &format!("pub{id}"), Duration::from_millis(1500))
        .await
        .unwrap_or_else(|e| panic!("publisher {id} cannot connect: {e}"));
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) && seq < 10_000_000 {
        let topic = TOPICS[rng.range(0, 1) as usize];
        let n = if rng.chance(20) { rng.range(2, 4) } else { 1 };
        let concurrent = rng.chance(30);
        let mut pending: Vec<String> = (0..n)
            .map(|_| {
                seq += 1;
                format!("p{id}-{seq}")
            })
            .collect();
        stats.attempted.fetch_add(n, Ordering::SeqCst);
        let message = |k: &String| Message::new(format!("payload of {k}")).key(k.clone());
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let before = phase.load(Ordering::SeqCst);
            let outcomes: Vec<(String, herald::Result<herald::Receipt>)> = if concurrent {
                let sends = pending.iter().map(|k| node.publish(topic, message(k)));
                let outcomes = futures::future::join_all(sends).await;
                pending.iter().cloned().zip(outcomes).collect()
            } else {
                match node.publish_batch(topic, pending.iter().map(message)).await {
                    Ok(receipts) => pending
                        .iter()
                        .cloned()
                        .zip(receipts.into_iter().map(Ok))
                        .collect(),
                    Err(e) => pending
                        .iter()
                        .map(|k| (k.clone(), Err(e.clone())))
                        .collect(),
                }
            };
            let after = phase.load(Ordering::SeqCst);
            let mut failed = Vec::new();
            let mut failure = None;
            for (k, outcome) in outcomes {
                match outcome {
                    Ok(r) => {
                        stats.acknowledged.fetch_add(1, Ordering::SeqCst);
                        acked.lock().unwrap().push(Acked {
                            published: Published {
                                topic: topic.to_string(),
                                epoch: r.position.epoch,
                                offset: r.position.offset,
                                key: k,
                            },
                            phases: (before, after),
                        });
                    }
                    Err(e) => {
                        failed.push(k);
                        failure = Some(e);
                    }
                }
            }
            pending = failed;
            let Some(e) = failure else { break };
            if attempt >= MAX_ATTEMPTS {
                eprintln!("publisher {id}: giving up on {pending:?} after {attempt} attempts: {e}");
                stats
                    .abandoned
                    .fetch_add(pending.len() as u64, Ordering::SeqCst);
                break;
            }
            stats.retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(rng.millis(50, 250)).await;
        }
        tokio::time::sleep(rng.millis(5, 20)).await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Control {
    stop: bool,
    /// While true the subscriber has no subscription and no node (it resumes from its durable
    /// cursor afterwards).
    offline: bool,
}

#[derive(Debug, Clone, Copy)]
struct SubSpec {
    name: &'static str,
    durable: bool,
    /// Commit every n messages (durable only).
    commit_every: u64,
}

/// One logical subscriber: incarnations one after the other, each recording what it receives.
async fn subscriber(
    spec: SubSpec,
    url: String,
    mut control: watch::Receiver<Control>,
    record: Arc<Mutex<History>>,
    errors: Arc<AtomicU64>,
) {
    let topics: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    for _incarnation in 0..10_000 {
        // Offline: wait until told otherwise.
        loop {
            let now = *control.borrow_and_update();
            if now.stop {
                return;
            }
            if !now.offline {
                break;
            }
            if control.changed().await.is_err() {
                return;
            }
        }
        let mut tries = 0;
        let (node, mut sub, floors) = loop {
            tries += 1;
            assert!(
                tries < 200,
                "{}: cannot subscribe after {tries} tries",
                spec.name
            );
            let attempt = async {
                let node = soak_node(&url, spec.name, Duration::from_secs(3)).await?;
                let mut floors = Vec::new();
                if spec.durable {
                    for t in &topics {
                        floors.push(node.cursor(t, spec.name).await?);
                    }
                }
                let builder = node.subscribe(topics.clone()).buffer(256);
                let builder = if spec.durable {
                    builder.durable(spec.name).from(Start::Earliest)
                } else {
                    builder.from(Start::Earliest)
                };
                let sub = builder.await?;
                Ok::<_, herald::Error>((node, sub, floors))
            };
            match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                Ok(Ok(x)) => break x,
                Ok(Err(e)) => {
                    tracing::debug!(subscriber = spec.name, error = %e, "subscribe failed")
                }
                Err(_) => eprintln!("{}: subscribe attempt timed out", spec.name),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (k, t) in topics.iter().enumerate() {
            let floor = if spec.durable {
                floors[k].map(|c| (c.position.epoch, c.position.offset))
            } else {
                None
            };
            record.lock().unwrap().push(
                t,
                Record::Start {
                    epoch: None,
                    from: 1,
                    floor,
                },
            );
        }
        let mut received = 0u64;
        loop {
            let now = *control.borrow_and_update();
            if now.stop {
                return;
            }
            if now.offline {
                break;
            }
            let item = tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                item = sub.next() => item,
            };
            let event = match item {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    errors.fetch_add(1, Ordering::SeqCst);
                    tracing::debug!(subscriber = spec.name, error = %e, "stream error");
                    continue;
                }
                None => {
                    eprintln!("{}: subscription ended; restarting it", spec.name);
                    break;
                }
            };
            let is_message = matches!(event, Event::Message(_));
            let Some((topic, r)) = Record::of_event(event, |d: &herald::Delivery| d.key.clone())
            else {
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
                let _ = tokio::time::timeout(Duration::from_secs(5), commit).await;
            }
        }
        drop(sub);
        drop(node);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Planned,
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_failover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_SOAK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_test_writer()
        .try_init();
    let secs = env_u64("HERALD_SOAK_SECS").unwrap_or(20);
    let seed = env_u64("HERALD_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let banner = format!("soak_failover: HERALD_SOAK_SEED={seed} HERALD_SOAK_SECS={secs}");
    println!("{banner}");
    let mut rng = Rng(seed);

    let opts = ["--repl-diskless-sync-delay", "0"];
    let servers = Arc::new(Mutex::new([
        RedisServer::start_with(&opts),
        RedisServer::start_with(&opts),
    ]));
    let ports = {
        let s = servers.lock().unwrap();
        [s[0].port, s[1].port]
    };
    tokio::task::spawn_blocking(move || attach(ports[1], ports[0]))
        .await
        .unwrap();
    let mut primary = 0usize;
    let proxy = FaultProxy::start(ports[0]).await;
    let url = proxy.url();

    let specs = [
        SubSpec {
            name: "live",
            durable: false,
            commit_every: 0,
        },
        SubSpec {
            name: "durable-1",
            durable: true,
            commit_every: 1,
        },
        SubSpec {
            name: "offline-10",
            durable: true,
            commit_every: 10,
        },
    ];
    let offline = 2;
    let mut controls = Vec::new();
    let mut histories = Vec::new();
    let mut errors = Vec::new();
    let mut tasks = Vec::new();
    for spec in specs {
        let (tx, rx) = watch::channel(Control::default());
        let h = Arc::new(Mutex::new(History::new(spec.name)));
        let e = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(subscriber(
            spec,
            url.clone(),
            rx,
            h.clone(),
            e.clone(),
        )));
        controls.push(tx);
        histories.push(h);
        errors.push(e);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while histories
        .iter()
        .any(|h| h.lock().unwrap().topics.len() < TOPICS.len())
    {
        assert!(Instant::now() < deadline, "subscribers did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(PublishStats::default());
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            tokio::spawn(publisher(
                id,
                url.clone(),
                rng.next_u64(),
                stop.clone(),
                phase.clone(),
                acked.clone(),
                stats.clone(),
            ))
        })
        .collect();

    // The schedule. `ended[k]` is how phase k (the time between failover k and k+1) ended.
    let mut ended: Vec<Kind> = Vec::new();
    let mut aborted = 0u64;
    let started = Instant::now();
    let run_for = Duration::from_secs(secs);
    for _round in 0..1000 {
        tokio::time::sleep(rng.millis(800, 2000)).await;
        if started.elapsed() >= run_for {
            break;
        }
        let (p, r) = (ports[primary], ports[1 - primary]);
        if rng.chance(50) {
            // Planned: FAILOVER on the primary, then follow the new one.
            let switched = tokio::task::spawn_blocking(move || {
                if direct::<()>(p, &["FAILOVER", "TIMEOUT", "5000"]).is_err() {
                    return false;
                }
                poll(Duration::from_secs(10), || {
                    info_field(r, "replication", "role") == "master"
                        && info_field(p, "replication", "role") == "slave"
                })
            })
            .await
            .unwrap();
            if !switched {
                aborted += 1;
                continue;
            }
            proxy.retarget(r);
            ended.push(Kind::Planned);
            phase.fetch_add(1, Ordering::SeqCst);
            primary = 1 - primary;
            tokio::task::spawn_blocking(move || {
                let ok = poll(Duration::from_secs(30), || {
                    info_field(p, "replication", "master_link_status") == "up"
                        && direct::<i64>(r, &["WAIT", "1", "100"]).unwrap_or(0) >= 1
                });
                assert!(ok, "the old primary did not follow the new one");
            })
            .await
            .unwrap();
        } else {
            // Crash: the durable subscriber goes offline, the replica is cut off, the
            // primary acknowledges writes alone, dies, and the replica takes over.
            controls[offline].send_modify(|c| c.offline = true);
            let alone = rng.millis(200, 800);
            let servers = servers.clone();
            let from = primary;
            let r_pid = info_field(r, "server", "process_id");
            support::signal(&r_pid, "-STOP");
            let _: redis::RedisResult<i64> = direct(p, &["CLIENT", "KILL", "TYPE", "replica"]);
            tokio::time::sleep(alone).await;
            tokio::task::spawn_blocking({
                let servers = servers.clone();
                move || servers.lock().unwrap()[from].kill9()
            })
            .await
            .unwrap();
            support::signal(&r_pid, "-CONT");
            let promoted = tokio::task::spawn_blocking(move || {
                poll(Duration::from_secs(10), || {
                    direct::<()>(r, &["REPLICAOF", "NO", "ONE"]).is_ok()
                })
            })
            .await
            .unwrap();
            assert!(promoted, "the replica could not be promoted");
            proxy.retarget(r);
            ended.push(Kind::Crash);
            phase.fetch_add(1, Ordering::SeqCst);
            primary = 1 - primary;
            tokio::task::spawn_blocking(move || {
                servers.lock().unwrap()[from].restart();
                attach(p, r);
            })
            .await
            .unwrap();
            tokio::time::sleep(rng.millis(300, 1000)).await;
            controls[offline].send_modify(|c| c.offline = false);
        }
    }
    let fault_secs = started.elapsed().as_secs_f64();

    // Stop publishing; let everyone catch up with the heads.
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(120), p)
            .await
            .expect("publisher did not stop within 120 s")
            .unwrap();
    }
    for c in &controls {
        c.send_modify(|c| c.offline = false);
    }
    let admin = soak_node(&url, "admin", Duration::from_secs(5))
        .await
        .unwrap();
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
    // A fresh reader of every topic from the start: what the log holds at the end.
    let final_history = Arc::new(Mutex::new(History::new("final-reader")));
    let (final_tx, final_rx) = watch::channel(Control::default());
    let final_errors = Arc::new(AtomicU64::new(0));
    tasks.push(tokio::spawn(subscriber(
        SubSpec {
            name: "final-reader",
            durable: false,
            commit_every: 0,
        },
        url.clone(),
        final_rx,
        final_history.clone(),
        final_errors.clone(),
    )));
    controls.push(final_tx);
    histories.push(final_history.clone());
    errors.push(final_errors);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind: Vec<String> = histories
            .iter()
            .flat_map(|h| h.lock().unwrap().behind(&heads))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up after 120 s: {behind:?} ({banner})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &controls {
        c.send_modify(|c| c.stop = true);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    // What the log holds at the end, and so what was lost.
    let held: BTreeSet<(String, u64, u64, String)> = final_history
        .lock()
        .unwrap()
        .topics
        .iter()
        .flat_map(|(t, records)| {
            records.iter().filter_map(move |r| match r {
                Record::Message { epoch, offset, key } => {
                    Some((t.clone(), *epoch, *offset, key.clone()))
                }
                _ => None,
            })
        })
        .collect();
    let acked_all = acked.lock().unwrap().clone();
    let lost: Vec<&Acked> = acked_all
        .iter()
        .filter(|a| {
            let p = &a.published;
            !held.contains(&(p.topic.clone(), p.epoch, p.offset, p.key.clone()))
        })
        .collect();
    // A lost message was written in one of the phases its call spanned; its loss is a planned
    // failover's when every one of those phases ended in a planned failover.
    let planned_lost = lost
        .iter()
        .filter(|a| {
            (a.phases.0..=a.phases.1)
                .all(|k| ended.get(k as usize).is_some_and(|&e| e == Kind::Planned))
        })
        .count();
    let acked_list: Vec<Published> = acked_all.iter().map(|a| a.published.clone()).collect();
    let lost_list: Vec<Published> = lost.iter().map(|a| a.published.clone()).collect();
    let histories: Vec<History> = histories
        .iter()
        .map(|h| h.lock().unwrap().clone())
        .collect();
    let report = check_losses(&acked_list, &histories, &retained, &lost_list);
    let unreported: u64 = report.subscribers.iter().map(|s| s.unreported_losses).sum();

    let mut by_topic: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &lost {
        *by_topic.entry(a.published.topic.as_str()).or_default() += 1;
    }
    use std::fmt::Write as _;
    let mut table = String::new();
    let _ = writeln!(table, "\n=== Herald failover soak report ===");
    let _ = writeln!(table, "{banner}; failovers for {fault_secs:.0} s");
    let _ = writeln!(
        table,
        "failovers: planned {}, crash {}, planned aborted by Redis {aborted}",
        ended.iter().filter(|&&k| k == Kind::Planned).count(),
        ended.iter().filter(|&&k| k == Kind::Crash).count(),
    );
    let _ = writeln!(
        table,
        "publishes: attempted {}, acknowledged {}, retries {}, abandoned {}",
        stats.attempted.load(Ordering::SeqCst),
        stats.acknowledged.load(Ordering::SeqCst),
        stats.retries.load(Ordering::SeqCst),
        stats.abandoned.load(Ordering::SeqCst),
    );
    let _ = writeln!(
        table,
        "acknowledged and lost: {} ({by_topic:?}); in planned failovers: {planned_lost}; lost and unreported (subscriber-topics): {unreported}",
        lost.len()
    );
    for (t, epoch, last) in &heads {
        let _ = writeln!(table, "topic {t}: epoch {epoch:?}, last offset {last}");
    }
    for (h, e) in histories.iter().zip(&errors) {
        let _ = writeln!(
            table,
            "{}: stream errors {}",
            h.name,
            e.load(Ordering::SeqCst)
        );
    }
    let _ = write!(table, "{}", report.table());
    let _ = writeln!(table, "violations: {}", report.violations());
    println!("{table}");

    assert!(
        stats.acknowledged.load(Ordering::SeqCst) > 0,
        "nothing was published ({banner})"
    );
    assert!(!ended.is_empty(), "no failover happened ({banner})");
    assert!(
        report.subscribers.iter().all(|s| s.delivered > 0),
        "a subscriber received nothing ({banner})"
    );
    assert_eq!(
        planned_lost, 0,
        "a planned failover lost acknowledged messages; replay with {banner}"
    );
    assert_eq!(
        report.violations(),
        0,
        "the history checker found violations; replay with {banner}"
    );
}
