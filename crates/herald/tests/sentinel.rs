#![allow(clippy::unwrap_used)]
//! Redis Sentinel (issue 5; docs/DESIGN.md, Deployments): Herald connects through Sentinel
//! (`redis+sentinel://host:port,.../<name>`), follows the primary through `SENTINEL FAILOVER`
//! and through a kill -9 of the primary, re-subscribes and recovers; `min_replicas` makes an
//! acknowledged publish survive the failover, and fails clearly when replicas do not confirm.
//!
//! Harness: 1 primary, 2 replicas and 3 sentinels (`redis-server --sentinel`), all real
//! processes on 127.0.0.1 free ports; every wait is bounded.

use herald_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use herald::{Error, Event, Herald, Message, Start};
use support::{wait_until, RedisServer, Sentinel, EVENT_WAIT};

const MASTER: &str = "herald-primary";

/// 1 primary, 2 replicas, 3 sentinels.
struct Group {
    nodes: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl Group {
    fn start() -> Group {
        let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replicaof = primary.port.to_string();
        let mut nodes = vec![primary];
        for _ in 0..2 {
            nodes.push(RedisServer::start_with(&[
                "--replicaof",
                "127.0.0.1",
                &replicaof,
                "--repl-diskless-sync-delay",
                "0",
            ]));
        }
        // Replicas in sync before the sentinels start watching.
        wait_until("replicas in sync", Duration::from_secs(15), || {
            online_replicas(&nodes[0]) == 2
        });
        let sentinels = (0..3)
            .map(|_| Sentinel::start(nodes[0].port, MASTER))
            .collect();
        let g = Group { nodes, sentinels };
        // Every sentinel knows the replicas and the other sentinels.
        wait_until(
            "sentinels discover the group",
            Duration::from_secs(20),
            || {
                g.sentinels.iter().all(|s| {
                    let m: redis::RedisResult<Vec<(String, String)>> = s
                        .cmd::<Vec<String>>(&["SENTINEL", "MASTER", MASTER])
                        .map(|v| v.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect());
                    m.is_ok_and(|m| {
                        let get = |k: &str| {
                            m.iter()
                                .find(|(a, _)| a == k)
                                .map(|(_, b)| b.clone())
                                .unwrap_or_default()
                        };
                        get("num-slaves") == "2" && get("num-other-sentinels") == "2"
                    })
                })
            },
        );
        g
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The primary's port as the sentinels agree on it.
    fn primary_port(&self) -> Option<u16> {
        let ports: BTreeSet<Option<u16>> = self.sentinels.iter().map(|s| s.primary()).collect();
        match ports.into_iter().collect::<Vec<_>>()[..] {
            [Some(p)] => Some(p),
            _ => None,
        }
    }

    fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }

    /// The primary a majority of the sentinels name (a sentinel busy on a loaded machine may
    /// answer late or not at all; the majority is what Sentinel itself goes by).
    fn majority_primary(&self) -> Option<u16> {
        let mut votes: BTreeMap<u16, usize> = BTreeMap::new();
        for p in self.sentinels.iter().filter_map(|s| s.primary()) {
            *votes.entry(p).or_default() += 1;
        }
        votes
            .into_iter()
            .find(|(_, n)| *n * 2 > self.sentinels.len())
            .map(|(p, _)| p)
    }

    /// Waits until a majority of the sentinels name a primary other than `old` that is a
    /// master.
    fn wait_new_primary(&self, old: u16) -> u16 {
        let mut found = 0;
        wait_until("a new primary", Duration::from_secs(60), || {
            match self.majority_primary() {
                Some(p) if p != old => {
                    let role: redis::RedisResult<Vec<redis::Value>> =
                        redis::Client::open(format!("redis://127.0.0.1:{p}"))
                            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                            .and_then(|mut c| redis::cmd("ROLE").query(&mut c));
                    let master = matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master");
                    found = p;
                    master
                }
                _ => false,
            }
        });
        found
    }
}

/// How many replicas acknowledge a fresh write within 100 ms (SET then WAIT on one
/// connection): right after their initial sync, replicas do not stream until their first ACK.
fn online_replicas(primary: &RedisServer) -> usize {
    let (acked,): (usize,) = redis::pipe()
        .cmd("SET")
        .arg("sync-check")
        .arg(1)
        .ignore()
        .cmd("WAIT")
        .arg(2)
        .arg(100)
        .query(&mut primary.conn())
        .unwrap();
    acked
}

async fn node(url: &str, id: &str, min_replicas: usize) -> Herald {
    Herald::builder()
        .node_id(id)
        .redis(url)
        .poll_interval(Duration::from_millis(200))
        .operation_timeout(Duration::from_secs(20))
        .min_replicas(min_replicas, Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

/// Publishes `m<i>` with idempotency key `k<i>` until acknowledged (bounded); a failed
/// attempt may or may not have been written, the retry never duplicates it.
async fn publish_acked(h: &Herald, i: u64) -> u64 {
    let mut last = None;
    for _ in 0..20 {
        match h
            .publish("t", Message::new(format!("m{i}")).key(format!("k{i}")))
            .await
        {
            Ok(r) => return r.position.offset,
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("publish m{i} never acknowledged: {last:?}");
}

/// Receives until every payload `m<from>..=m<n>` was delivered. Offsets increase between resets;
/// a gap fails the test (nothing is trimmed here); payload order follows publish order.
async fn receive_all(sub: &mut herald::Subscription, from: u64, n: u64) {
    let mut seen = BTreeSet::new();
    let mut last_offset = 0;
    let mut last_i = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < (n + 1 - from) as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} delivered",
            seen.len()
        );
        let ev = match tokio::time::timeout(EVENT_WAIT, futures::StreamExt::next(sub)).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("subscription error: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!(
                "no event within {EVENT_WAIT:?}; have {} of {n}: {:?}",
                seen.len(),
                (from..=n).filter(|i| !seen.contains(i)).collect::<Vec<_>>()
            ),
        };
        match ev {
            Event::Message(d) => {
                assert!(
                    d.position.offset > last_offset,
                    "offset {} after {last_offset}",
                    d.position.offset
                );
                last_offset = d.position.offset;
                let i: u64 = std::str::from_utf8(&d.payload).unwrap()[1..]
                    .parse()
                    .unwrap();
                if i >= from && seen.insert(i) {
                    assert!(i > last_i, "m{i} after m{last_i}");
                    last_i = i;
                }
            }
            Event::Reset { .. } => {
                // Only unacknowledged writes may be lost; deliveries start over.
                last_offset = 0;
                last_i = 0;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_primary_through_failover_and_kill() {
    let mut g = Group::start();
    let url = g.url();
    // Acknowledged only once on both replicas: whichever Sentinel promotes has it, even when
    // the old primary keeps accepting writes for a moment during a manual failover.
    let publisher = node(&url, "pub", 2).await;
    let subscriber = node(&url, "sub", 0).await;
    let mut sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();

    for i in 1..=20 {
        publish_acked(&publisher, i).await;
    }
    receive_all(&mut sub, 1, 20).await;

    // 1. A manual failover while publishing.
    let first = g.primary_port().unwrap();
    let p = publisher.clone();
    let background = tokio::spawn(async move {
        for i in 21..=60 {
            publish_acked(&p, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: () = g.sentinels[0]
        .cmd(&["SENTINEL", "FAILOVER", MASTER])
        .unwrap();
    let second = tokio::task::block_in_place(|| g.wait_new_primary(first));
    background.await.unwrap();
    receive_all(&mut sub, 21, 60).await;
    let info = publisher.inspect("t").await.unwrap();
    assert_eq!(info.last_offset, 60, "acknowledged publishes all survived");

    // 2. kill -9 of the new primary while publishing. Two nodes remain, so acknowledged once
    // on one replica: Sentinel promotes the most up-to-date replica, and the dead primary
    // accepts nothing more.
    let p = node(&url, "pub2", 1).await;
    let background = tokio::spawn(async move {
        for i in 61..=100 {
            publish_acked(&p, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    g.node(second).kill9();
    tokio::task::block_in_place(|| g.wait_new_primary(second));
    background.await.unwrap();
    receive_all(&mut sub, 61, 100).await;

    // A new handle connects to the new primary through the same URL, and the history holds
    // every acknowledged publish once, in order.
    let late = node(&url, "late", 0).await;
    let info = late.inspect("t").await.unwrap();
    assert_eq!(info.last_offset, 100, "{info:?}");
    let mut all = late.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    // Writes a subscriber had delivered but the failover lost (never acknowledged: the
    // publisher waits for a replica) were reported by it: a `Lost` gap, no message.
    let mut got = Vec::new();
    for _ in 0..200 {
        if got.len() == 100 {
            break;
        }
        match support::next_event(&mut all).await {
            Event::Message(d) => got.push((
                d.position.offset,
                String::from_utf8_lossy(&d.payload).into_owned(),
            )),
            Event::Gap {
                reason: herald::GapReason::Lost,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for (i, (offset, payload)) in got.iter().enumerate() {
        assert_eq!(
            (*offset, payload.as_str()),
            (i as u64 + 1, format!("m{}", i + 1).as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_fails_clearly_without_replicas() {
    let server = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let h = Herald::builder()
        .redis(server.url())
        .min_replicas(1, Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let err = h
        .publish("t", Message::new("x").key("k"))
        .await
        .unwrap_err();
    match &err {
        Error::NotReplicated {
            acked: 0,
            wanted: 1,
            first: 1,
            last: 1,
            ..
        } => {}
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    assert!(err.to_string().contains("0 of the 1 replicas"), "{err}");
    // The write stands on the primary; publishing it again does not duplicate it.
    let _ = h
        .publish("t", Message::new("x").key("k"))
        .await
        .unwrap_err();
    assert_eq!(h.inspect("t").await.unwrap().last_offset, 1);

    // With a replica, the same publish succeeds.
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &server.port.to_string()]);
    wait_until("replica in sync", Duration::from_secs(15), || {
        online_replicas(&server) == 1
    });
    let r = h.publish("t", Message::new("y").key("k2")).await.unwrap();
    assert_eq!(r.position.offset, 2);
}

/// The role (`master`, `slave`) of the node on `port`, if it answers.
fn role(port: u16) -> Option<String> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
    match v.first() {
        Some(redis::Value::BulkString(r)) => Some(String::from_utf8_lossy(r).into_owned()),
        _ => None,
    }
}

/// Publishes `p<who>-<i>` (key the same) until acknowledged, retrying failed attempts with the
/// same key (bounded): returns the acknowledged offset.
async fn publish_until_acked(h: &Herald, who: usize, i: u64) -> u64 {
    let payload = format!("p{who}-{i}");
    let mut last = None;
    for _ in 0..100 {
        match h
            .publish("t", Message::new(payload.clone()).key(payload.clone()))
            .await
        {
            Ok(r) => return r.position.offset,
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("{payload} never acknowledged: {last:?}");
}

/// Planned failovers under publish load lose nothing acknowledged (issue 14, defect 3).
///
/// Three publishers (own handles, own keys) publish continuously with default durability
/// (`min_replicas` 0) while `SENTINEL FAILOVER` moves the primary twice; each time the test
/// waits until the old primary has been demoted and resynchronised (when writes it accepted
/// after the promotion would be discarded). Then a live subscriber from earliest and a fresh
/// handle's subscription from earliest each deliver every acknowledged message exactly once,
/// at the offset its receipt named, in offset order, with no `Reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_failover_under_load_loses_nothing_acknowledged() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let g = Group::start();
    let url = g.url();
    let subscriber = node(&url, "sub", 0).await;
    let mut live = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut publishers = Vec::new();
    for who in 0..3 {
        let h = node(&url, &format!("pub{who}"), 0).await;
        let (stop, acked) = (stop.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let mut i = 0;
            let mut slowest = Duration::ZERO;
            // Bounded: at most 200 000 messages per publisher.
            while !stop.load(Ordering::SeqCst) && i < 200_000 {
                i += 1;
                let started = Instant::now();
                let offset = publish_until_acked(&h, who, i).await;
                slowest = slowest.max(started.elapsed());
                acked.lock().unwrap().insert(format!("p{who}-{i}"), offset);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // For information (publishes wait while a failover is under way).
            eprintln!("publisher {who}: {i} publishes, slowest {slowest:?}");
        }));
    }

    for _round in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = g.primary_port().unwrap();
        let before = acked.lock().unwrap().len();
        let _: () = g.sentinels[0]
            .cmd(&["SENTINEL", "FAILOVER", MASTER])
            .unwrap();
        let new = tokio::task::block_in_place(|| g.wait_new_primary(old));
        // Publishing goes on until the old primary is a replica of the new one and in sync.
        tokio::task::block_in_place(|| {
            wait_until("the old primary demoted", Duration::from_secs(40), || {
                role(old).as_deref() == Some("slave")
            });
            let new_primary = g.nodes.iter().find(|n| n.port == new).unwrap();
            wait_until("replicas in sync", Duration::from_secs(20), || {
                online_replicas(new_primary) == 2
            });
        });
        let after = acked.lock().unwrap().len();
        assert!(after > before, "publishing went on during the failover");
    }
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged message, exactly once, at its receipt's offset, in offset order, no
    // Reset; both subscribers are counted before anything is asserted.
    let count = |name: &str, got: &[(u64, String)], resets: usize| {
        let delivered: BTreeMap<&str, u64> = got.iter().map(|(o, p)| (p.as_str(), *o)).collect();
        let missing = acked
            .keys()
            .filter(|p| !delivered.contains_key(p.as_str()))
            .count();
        let moved = acked
            .iter()
            .filter(|(p, o)| delivered.get(p.as_str()).is_some_and(|d| d != *o))
            .count();
        let twice = got.len() - delivered.len();
        let unordered = got.windows(2).filter(|w| w[0].0 >= w[1].0).count();
        let extra = delivered
            .keys()
            .filter(|p| !acked.contains_key(**p))
            .count();
        eprintln!(
            "{name}: acknowledged {} delivered {} missing {missing} at another offset {moved} \
             twice {twice} out of order {unordered} unacknowledged {extra} resets {resets}",
            acked.len(),
            got.len()
        );
        (missing, moved, twice, unordered, extra, resets)
    };
    let (got, resets) = collect(&mut live, acked.len()).await;
    let live_counts = count("live subscriber", &got, resets);
    let late = node(&url, "late", 0).await;
    let mut all = late.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    let (got, resets) = collect(&mut all, acked.len()).await;
    let late_counts = count("late subscriber", &got, resets);
    assert_eq!(late_counts, (0, 0, 0, 0, 0, 0), "late subscriber");
    assert_eq!(live_counts, (0, 0, 0, 0, 0, 0), "live subscriber");
}

/// Collects up to `want` deliveries (and counts resets) until nothing comes for 5 s (bounded).
async fn collect(sub: &mut herald::Subscription, want: usize) -> (Vec<(u64, String)>, usize) {
    let mut got = Vec::new();
    let mut resets = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(sub)).await {
            Ok(Some(Ok(Event::Message(d)))) => got.push((
                d.position.offset,
                String::from_utf8(d.payload.to_vec()).unwrap(),
            )),
            Ok(Some(Ok(Event::Reset { .. }))) => resets += 1,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(e))) => panic!("subscription error: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => break, // nothing more comes
        }
    }
    (got, resets)
}

/// Retries `op` until it succeeds (bounded: 100 attempts, 100 ms apart); panics with the last
/// error otherwise. Every write retried here is idempotent or rewrites the same value.
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = herald::Result<T>>,
{
    let mut last = None;
    for _ in 0..100 {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("{what} never acknowledged: {last:?}");
}

/// Planned failovers lose no acknowledged write of any kind, not only publishes (issue 14):
/// the Sentinel fence covers durable cursor commits, membership heartbeats and map writes.
///
/// While `SENTINEL FAILOVER` moves the primary twice (each time until the old primary is
/// demoted and resynchronised, when writes it accepted after the promotion are discarded):
/// a durable subscriber commits every delivery of a topic being published to, and also
/// commits one cursor of its own name per delivery (so that no commit can hide behind a later
/// one); a member heartbeats every 50 ms; a writer puts a new map key at a time. Afterwards, a
/// fresh handle (on the new primary) finds every cursor committed with an acknowledgement at
/// its position (the durable cursor at least at the last acknowledged commit), every
/// acknowledged put with its value and revision, and the member alive as the same incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_failover_loses_no_acknowledged_commit_heartbeat_or_put() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use herald::Position;

    // Herald's warnings are shown when the test fails (`HERALD_TEST_LOG` to change).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("herald=info")),
        )
        .with_test_writer()
        .try_init();
    let g = Group::start();
    let url = g.url();
    let stop = Arc::new(AtomicBool::new(false));

    // Publisher of the topic the durable subscriber reads.
    let publisher = node(&url, "pub", 0).await;
    let published = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                i += 1;
                publish_until_acked(&publisher, 0, i).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };

    // Durable subscriber: commits its cursor at every delivery, and a cursor per delivery.
    let committer = node(&url, "dur", 0).await;
    let mut sub = committer
        .subscribe(["t"])
        .from(Start::Earliest)
        .durable("dur")
        .await
        .unwrap();
    let commits: Arc<Mutex<BTreeMap<String, Position>>> = Arc::default();
    let committing = {
        let (stop, commits) = (stop.clone(), commits.clone());
        tokio::spawn(async move {
            let mut last = None;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 100_000 {
                let ev = tokio::time::timeout(Duration::from_millis(500), sub.next_event()).await;
                let d = match ev {
                    Err(_) => continue, // nothing yet: look at `stop` again
                    Ok(Some(Ok(Event::Message(d)))) => d,
                    Ok(Some(Ok(Event::Reset { .. }))) => panic!("a planned failover reset"),
                    Ok(other) => panic!("unexpected {other:?}"),
                };
                n += 1;
                until_ok("commit", || sub.commit(&d)).await;
                last = Some(d.position);
                let name = format!("at-{}-{}", d.position.epoch, d.position.offset);
                until_ok("commit", || committer.commit("t", &name, d.position)).await;
                commits.lock().unwrap().insert(name, d.position);
            }
            last
        })
    };

    // A member heartbeating often.
    let member_node = node(&url, "member", 0).await;
    let member = member_node
        .join("g")
        .id("m1")
        .ttl(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();

    // A map writer: one new key per put.
    let writer = node(&url, "writer", 0).await;
    let map = writer.map("cfg").unwrap();
    let puts: Arc<Mutex<BTreeMap<String, Position>>> = Arc::default();
    let putting = {
        let (stop, puts) = (stop.clone(), puts.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                i += 1;
                let key = format!("k{i}");
                let rev = until_ok("put", || map.put(&key, format!("v{i}"))).await;
                puts.lock().unwrap().insert(key, rev);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    for _round in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = g.primary_port().unwrap();
        let before = (commits.lock().unwrap().len(), puts.lock().unwrap().len());
        let _: () = g.sentinels[0]
            .cmd(&["SENTINEL", "FAILOVER", MASTER])
            .unwrap();
        let new = tokio::task::block_in_place(|| g.wait_new_primary(old));
        tokio::task::block_in_place(|| {
            wait_until("the old primary demoted", Duration::from_secs(40), || {
                role(old).as_deref() == Some("slave")
            });
            let new_primary = g.nodes.iter().find(|n| n.port == new).unwrap();
            wait_until("replicas in sync", Duration::from_secs(20), || {
                online_replicas(new_primary) == 2
            });
        });
        let after = (commits.lock().unwrap().len(), puts.lock().unwrap().len());
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "commits and puts went on during the failover: {before:?} -> {after:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let published = published.await.unwrap();
    let last_commit = committing.await.unwrap().unwrap();
    putting.await.unwrap();
    let commits = commits.lock().unwrap().clone();
    let puts = puts.lock().unwrap().clone();

    // Everything is read through a fresh handle, on the primary the sentinels name now.
    let check = node(&url, "check", 0).await;
    let mut missing_commits = Vec::new();
    for (name, pos) in &commits {
        match check.cursor("t", name).await.unwrap() {
            Some(c) if c.position == *pos => {}
            other => missing_commits.push((name.clone(), other.map(|c| c.position))),
        }
    }
    let durable = check.cursor("t", "dur").await.unwrap().map(|c| c.position);
    let snapshot = check.map("cfg").unwrap().snapshot().await.unwrap();
    let missing_puts: Vec<_> =
        puts.iter()
            .filter(|(k, rev)| {
                snapshot.entries.get(k.as_str()).is_none_or(|e| {
                    e.revision < **rev || e.value != format!("v{}", &k[1..]).as_bytes()
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
    let members = check.members("g").await.unwrap();
    // The member's handle still heartbeats on the new primary: its record moves on (bounded).
    let beat = |ms: &[herald::Member]| ms.iter().find(|m| m.id == "m1").map(|m| m.heartbeat_ms);
    let first_beat = beat(&members);
    let mut beating = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if beat(&check.members("g").await.unwrap()) > first_beat {
            beating = true;
            break;
        }
    }
    eprintln!(
        "published {published}, commits {} (missing {}), durable cursor {durable:?} (last \
         acknowledged {last_commit:?}), puts {} (missing {}), members {:?}",
        commits.len(),
        missing_commits.len(),
        puts.len(),
        missing_puts.len(),
        members
            .iter()
            .map(|m| (&m.id, m.joined_at_ms))
            .collect::<Vec<_>>()
    );
    assert!(
        missing_commits.is_empty(),
        "commits lost: {missing_commits:?}"
    );
    assert!(
        durable.is_some_and(|d| d >= last_commit),
        "durable cursor {durable:?} behind the last acknowledged commit {last_commit:?}"
    );
    assert!(missing_puts.is_empty(), "puts lost: {missing_puts:?}");
    assert!(
        members
            .iter()
            .any(|m| m.id == "m1" && m.joined_at_ms == member.joined_at_ms()),
        "the member is alive as the incarnation that joined: {members:?}"
    );
    assert!(
        beating,
        "the member's heartbeats stopped reaching the primary"
    );
    let started = Instant::now();
    let left = member.leave().await;
    assert!(
        left.is_ok(),
        "leave failed after {:?}: {left:?}",
        started.elapsed()
    );
}
