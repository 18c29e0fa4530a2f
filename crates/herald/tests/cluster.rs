#![allow(clippy::unwrap_used)]
//! Redis Cluster (issue 5; docs/DESIGN.md, Deployments): Herald over `redis+cluster://`, topics
//! spread over shards, live notifications over sharded Pub/Sub; one subscription spanning
//! shards keeps per-topic order through a slot migration of a live topic (the server's
//! unsolicited SUNSUBSCRIBE: re-subscribe and recover from history, MOVED/ASK/TRYAGAIN while
//! keys move) and through a primary killed and replaced by its replica; a write the replica
//! never got and that dies with its primary surfaces as `Reset` (never a silent skip); and the
//! README's least-privilege ACL user works on a cluster.
//!
//! Harness: 3 primaries with 1 replica each (`redis-server --cluster-enabled yes`, joined
//! by `redis-cli --cluster create`), on 127.0.0.1, one cluster for this whole file; every wait
//! is bounded.

use herald_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use herald::{Event, Herald, Message, Position, Start};
use support::{cluster_port, create_cluster, wait_until, RedisServer, EVENT_WAIT};

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Cluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            "--repl-diskless-sync-delay",
            "0",
        ];
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_on(cluster_port(), &args))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        create_cluster(&addrs, 1, &[]);
        let c = Cluster { nodes };
        c.wait_ok(&[]);
        c
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .take(3)
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every live node reports `cluster_state:ok` and agrees on 3 primaries.
    fn wait_ok(&self, dead: &[u16]) {
        wait_until("cluster_state:ok", Duration::from_secs(30), || {
            self.nodes
                .iter()
                .filter(|n| !dead.contains(&n.port))
                .all(|n| {
                    let info: redis::RedisResult<String> = query(n.port, &["CLUSTER", "INFO"]);
                    info.is_ok_and(|i| i.contains("cluster_state:ok"))
                        && self.owner_map(n.port).is_some_and(|m| {
                            m.values().collect::<BTreeSet<_>>().len() == 3
                                && m.values().all(|p| !dead.contains(p))
                        })
                })
        });
    }

    /// Slot ranges to primary port, as node `port` sees them.
    fn owner_map(&self, port: u16) -> Option<BTreeMap<(u16, u16), u16>> {
        let slots: Vec<redis::Value> = query(port, &["CLUSTER", "SLOTS"]).ok()?;
        let mut out = BTreeMap::new();
        for s in slots {
            let redis::Value::Array(s) = s else {
                return None;
            };
            let num = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i as u16),
                _ => None,
            };
            let from = num(s.first()?)?;
            let to = num(s.get(1)?)?;
            let redis::Value::Array(primary) = s.get(2)? else {
                return None;
            };
            out.insert((from, to), num(primary.get(1)?)?);
        }
        Some(out)
    }

    /// The port of a replica of the primary owning `slot`.
    fn replica_of(&self, slot: u16) -> u16 {
        let slots: Vec<Vec<redis::Value>> = query(self.any_live(), &["CLUSTER", "SLOTS"]).unwrap();
        for s in slots {
            let num = |v: &redis::Value| match v {
                redis::Value::Int(i) => *i as u16,
                _ => panic!("CLUSTER SLOTS: {v:?}"),
            };
            if (num(&s[0])..=num(&s[1])).contains(&slot) {
                let redis::Value::Array(replica) = &s[3] else {
                    panic!("no replica for slot {slot}");
                };
                return num(&replica[1]);
            }
        }
        panic!("slot {slot} not served");
    }

    /// The primary port owning `slot`.
    fn owner(&self, slot: u16) -> u16 {
        let m = self.owner_map(self.any_live()).unwrap();
        *m.iter()
            .find(|((a, b), _)| (*a..=*b).contains(&slot))
            .unwrap()
            .1
    }

    fn any_live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| query::<String>(n.port, &["PING"]).is_ok())
            .unwrap()
            .port
    }

    fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }

    /// Moves `slot` (and its keys) to the primary at `to`, the way `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE of the keys, then SETSLOT NODE everywhere.
    fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        assert_ne!(from, to);
        let id = |port: u16| query::<String>(port, &["CLUSTER", "MYID"]).unwrap();
        let (from_id, to_id) = (id(from), id(to));
        let slot_s = slot.to_string();
        let _: () = query(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]).unwrap();
        let _: () = query(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]).unwrap();
        for _ in 0..1000 {
            let keys: Vec<String> =
                query(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "10"]).unwrap();
            if keys.is_empty() {
                break;
            }
            let to_s = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: () = query(from, &args).unwrap();
            std::thread::sleep(Duration::from_millis(50)); // let publishes interleave
        }
        for port in [to, from] {
            let _: () = query(port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]).unwrap();
        }
        wait_until("slot moved everywhere", Duration::from_secs(20), || {
            self.nodes
                .iter()
                .filter(|n| query::<String>(n.port, &["PING"]).is_ok())
                .all(|n| {
                    self.owner_map(n.port).is_some_and(|m| {
                        m.iter()
                            .any(|((a, b), p)| (*a..=*b).contains(&slot) && *p == to)
                    })
                })
        });
    }
}

fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(2))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}

fn slot_of(topic: &str) -> u16 {
    // CRC16 (XMODEM) of the hash tag, as Redis Cluster computes it.
    let mut crc: u16 = 0;
    for b in topic.bytes() {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

async fn node(url: &str, id: &str) -> Herald {
    Herald::builder()
        .node_id(id)
        .redis(url)
        .poll_interval(Duration::from_millis(200))
        .operation_timeout(Duration::from_secs(20))
        .min_replicas(1, Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

/// Publishes `<topic>:<i>` with key `<topic>-<i>` until acknowledged (bounded).
async fn publish_acked(h: &Herald, topic: &str, i: u64) {
    let mut last = None;
    for _ in 0..20 {
        match h
            .publish(
                topic,
                Message::new(format!("{topic}:{i}")).key(format!("{topic}-{i}")),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("publish {topic}:{i} never acknowledged: {last:?}");
}

/// Receives until each topic delivered `from..=to`; per topic, offsets and message numbers
/// increase (between resets); a gap fails the test.
async fn receive_all(sub: &mut herald::Subscription, topics: &[String], from: u64, to: u64) {
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let want = topics.len() * (to + 1 - from) as usize;
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.values().map(BTreeSet::len).sum::<usize>() < want {
        assert!(
            Instant::now() < deadline,
            "not everything delivered: {seen:?}"
        );
        let ev = match tokio::time::timeout(EVENT_WAIT, futures::StreamExt::next(sub)).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("subscription error: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!("no event within {EVENT_WAIT:?}; have {seen:?}"),
        };
        match ev {
            Event::Message(d) => {
                let (t, i) = std::str::from_utf8(&d.payload)
                    .unwrap()
                    .split_once(':')
                    .unwrap();
                assert_eq!(t, d.topic);
                let i: u64 = i.parse().unwrap();
                let l = last.entry(d.topic.clone()).or_default();
                assert!(
                    d.position.offset > l.0,
                    "{}: offset {} after {}",
                    d.topic,
                    d.position.offset,
                    l.0
                );
                assert!(i > l.1, "{}: message {i} after {}", d.topic, l.1);
                *l = (d.position.offset, i);
                if i >= from {
                    seen.entry(d.topic).or_default().insert(i);
                }
            }
            Event::Reset { topic, .. } => {
                last.insert(topic, (0, 0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Publishes `from..=to` on every topic, interleaved, in the background.
fn spawn_publisher(
    h: Herald,
    topics: Vec<String>,
    from: u64,
    to: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in from..=to {
            for t in &topics {
                publish_acked(&h, t, i).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spans_shards_and_survives_migration_and_failover() {
    let mut cluster = Cluster::start();
    let url = cluster.url();
    let publisher = node(&url, "pub").await;
    let subscriber = node(&url, "sub").await;

    // Topics on every shard.
    let topics: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let owners: BTreeSet<u16> = topics.iter().map(|t| cluster.owner(slot_of(t))).collect();
    assert!(owners.len() >= 2, "topics spread over shards: {owners:?}");

    let mut sub = subscriber
        .subscribe(topics.clone())
        .from(Start::Earliest)
        .await
        .unwrap();
    for t in &topics {
        publisher
            .configure(t, herald::SettingsChange::default())
            .await
            .unwrap();
    }
    spawn_publisher(publisher.clone(), topics.clone(), 1, 10)
        .await
        .unwrap();
    receive_all(&mut sub, &topics, 1, 10).await;
    let info = publisher.inspect("t0").await.unwrap();
    assert_eq!(info.last_offset, 10);

    // Membership groups live on several shards; listing the groups finds every one.
    let groups: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    let group_owners: BTreeSet<u16> = groups
        .iter()
        .map(|g| cluster.owner(slot_of(&format!("__members/{g}"))))
        .collect();
    assert!(
        group_owners.len() >= 2,
        "groups spread over shards: {group_owners:?}"
    );
    let mut members = Vec::new();
    for g in &groups {
        members.push(subscriber.join(g.as_str()).id("m").await.unwrap());
    }
    assert_eq!(subscriber.member_groups().await.unwrap(), groups);
    for m in members {
        m.leave().await.unwrap();
    }

    // 1. The slot of a live topic moves to another primary while messages flow.
    let slot = slot_of("t0");
    let from = cluster.owner(slot);
    let to = *owners.iter().find(|p| **p != from).unwrap();
    // A handle whose slot map goes stale: it learned the map before the migration and does
    // not use t0 until after it.
    let stale = node(&url, "stale").await;
    let background = spawn_publisher(publisher.clone(), topics.clone(), 11, 30);
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| cluster.migrate_slot(slot, to));
    background.await.unwrap();
    receive_all(&mut sub, &topics, 11, 30).await;
    assert_eq!(publisher.inspect("t0").await.unwrap().last_offset, 30);
    // A transaction (configure) sent to t0's former primary is redirected, not refused.
    let mut change = herald::SettingsChange::default();
    change.max_len = Some(5000);
    let settings = stale.configure("t0", change).await.unwrap();
    assert_eq!(settings.max_len, 5000);

    // 2. The primary of t0 is killed; its replica takes over. The killed node then comes back
    // as the new primary's replica, so that publishes of that shard can again be confirmed
    // by a replica (`min_replicas(1)`).
    let victim = cluster.owner(slot);
    let background = spawn_publisher(publisher.clone(), topics.clone(), 31, 50);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.node(victim).kill9();
    tokio::task::block_in_place(|| {
        cluster.wait_ok(&[victim]);
        cluster.node(victim).restart();
        cluster.wait_ok(&[]);
    });
    background.await.unwrap();
    receive_all(&mut sub, &topics, 31, 50).await;

    // Every acknowledged publish is in history, once, in order.
    let late = node(&url, "late").await;
    for t in &topics {
        let info = late.inspect(t).await.unwrap();
        assert_eq!(info.last_offset, 50, "{info:?}");
    }
    let mut all = late.subscribe(["t0"]).from(Start::Earliest).await.unwrap();
    let got = support::messages(&mut all, 50).await;
    for (i, (offset, payload)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64 + 1);
        assert_eq!(payload, &format!("t0:{}", i + 1));
    }

    // Cursors (HSET/HGET routed by the topic's slot).
    let epoch = late.inspect("t0").await.unwrap().epoch.unwrap();
    late.commit("t0", "c", Position::new(epoch, 50))
        .await
        .unwrap();
    assert_eq!(
        late.cursor("t0", "c")
            .await
            .unwrap()
            .unwrap()
            .position
            .offset,
        50
    );
    assert_eq!(late.inspect("t0").await.unwrap().cursors.len(), 1);

    // 3. A write lost in a failover (the replica never got it) surfaces as `Reset`, never as
    // a silent skip: what the subscriber delivered since its last reset matches history.
    let topic = "t1";
    let owner = cluster.owner(slot_of(topic));
    let plain = Herald::builder()
        .node_id("plain")
        .redis(&url)
        .poll_interval(Duration::from_millis(200))
        .operation_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let mut watch = plain.subscribe([topic]).from(Start::Latest).await.unwrap();
    // The replica is frozen (SIGSTOP) and the primary drops its link to it: the next write
    // exists on the primary only, which then dies before the replica can resync.
    let replica = cluster.replica_of(slot_of(topic));
    let info: String = query(replica, &["INFO", "server"]).unwrap();
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string();
    support::signal(&pid, "-STOP");
    let _: () = query(owner, &["CLIENT", "KILL", "TYPE", "replica"]).unwrap();
    let lost = plain.publish(topic, "lost").await.unwrap();
    let mut delivered: BTreeMap<u64, String> = BTreeMap::new();
    match support::next_event(&mut watch).await {
        Event::Message(d) if d.position.offset == lost.position.offset => {
            delivered.insert(
                d.position.offset,
                String::from_utf8_lossy(&d.payload).into_owned(),
            );
        }
        other => panic!("expected the write, got {other:?}"),
    }
    cluster.node(owner).kill9();
    support::signal(&pid, "-CONT");
    tokio::task::block_in_place(|| {
        cluster.wait_ok(&[owner]);
        cluster.node(owner).restart();
        cluster.wait_ok(&[]);
    });
    for i in 0..3 {
        let mut ok = false;
        for _ in 0..50 {
            if plain.publish(topic, format!("after{i}")).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(ok, "publish after{i}");
    }
    let mut resets = 0;
    loop {
        match support::next_event(&mut watch).await {
            Event::Message(d) => {
                let payload = String::from_utf8_lossy(&d.payload).into_owned();
                let done = payload == "after2";
                assert!(
                    delivered.insert(d.position.offset, payload).is_none(),
                    "offset {} delivered twice without a reset",
                    d.position.offset
                );
                if done {
                    break;
                }
            }
            Event::Reset { .. } => {
                resets += 1;
                delivered.clear();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The live subscriber records the loss beside its Reset (concurrently with its reads):
    // wait, bounded, until the topic's epoch history holds it.
    let epochs = format!("herald:{{{topic}}}:epochs");
    let field = lost.position.epoch.to_string();
    let recorded = format!(":{}", lost.position.offset);
    let mut seen_record = false;
    for _ in 0..200 {
        seen_record = cluster.nodes.iter().any(|n| {
            query::<Option<String>>(n.port, &["HGET", &epochs, &field])
                .ok()
                .flatten()
                .is_some_and(|v| v.ends_with(&recorded))
        });
        if seen_record {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_record, "the loss was recorded in {epochs}");
    let mut history = plain
        .subscribe([topic])
        .from(Start::Earliest)
        .await
        .unwrap();
    let info = plain.inspect(topic).await.unwrap();
    let n = (info.last_offset - info.first_offset + 1) as usize;
    // The late reader crosses the end of the epoch that lost the write: a `Gap` (reason
    // `Lost`) over it, reported by the subscriber that delivered it, then the new epoch.
    let mut stored: BTreeMap<u64, String> = BTreeMap::new();
    let mut lost_gaps = 0;
    for _ in 0..n + 10 {
        if stored.len() == n {
            break;
        }
        match support::next_event(&mut history).await {
            Event::Message(d) => {
                let payload = String::from_utf8_lossy(&d.payload).into_owned();
                stored.insert(d.position.offset, payload);
            }
            Event::Gap {
                from,
                to,
                reason: herald::GapReason::Lost,
                ..
            } if (from..=to).contains(&lost.position.offset) => lost_gaps += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored.len(), n, "history read completely");
    assert_eq!(lost_gaps, 1, "the late reader is told of the lost write");
    for (offset, payload) in &delivered {
        assert_eq!(
            stored.get(offset),
            Some(payload),
            "offset {offset} delivered as {payload:?} but history holds another message \
             (resets seen: {resets})"
        );
    }
    assert_ne!(
        stored.get(&lost.position.offset).map(String::as_str),
        Some("lost"),
        "the write was meant to be lost"
    );
    assert!(resets >= 1, "the lost write surfaced as a Reset");

    // 4. Least privilege on a cluster: the README's ACL user (CLUSTER SLOTS, SSUBSCRIBE,
    // SPUBLISH from the script, WAIT).
    let readme = include_str!("../../../README.md");
    let rules: Vec<&str> = readme
        .lines()
        .find_map(|l| l.strip_prefix("ACL SETUSER herald on >PASSWORD "))
        .unwrap()
        .split_whitespace()
        .collect();
    for n in &cluster.nodes {
        let mut args = vec!["ACL", "SETUSER", "herald", "reset", "on", ">pw"];
        args.extend(&rules);
        let _: () = query(n.port, &args).unwrap();
    }
    let url = url.replace("redis+cluster://", "redis+cluster://herald:pw@");
    let limited = node(&url, "limited").await;
    let two = vec!["t4".to_string(), "t5".to_string()];
    let mut sub = limited
        .subscribe(two.clone())
        .from(Start::Offset(51))
        .await
        .unwrap();
    spawn_publisher(limited.clone(), two.clone(), 51, 52)
        .await
        .unwrap();
    receive_all(&mut sub, &two, 51, 52).await;
}

/// The pid of the redis-server on `port` (from `INFO server`).
fn pid_of(port: u16) -> String {
    let info: String = query(port, &["INFO", "server"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string()
}

/// Per topic: offsets and message numbers only increase; no gap, no reset.
#[derive(Default)]
struct Order {
    last: BTreeMap<String, (u64, u64)>,
}

impl Order {
    /// Checks one event; returns (topic, message number) of a message.
    fn check(&mut self, ev: Event) -> (String, u64) {
        let Event::Message(d) = ev else {
            panic!("unexpected {ev:?}");
        };
        let (t, i) = std::str::from_utf8(&d.payload)
            .unwrap()
            .split_once(':')
            .unwrap();
        assert_eq!(t, d.topic);
        let i: u64 = i.parse().unwrap();
        let l = self.last.entry(d.topic.clone()).or_default();
        assert!(
            d.position.offset > l.0,
            "{}: offset {} after {}",
            t,
            d.position.offset,
            l.0
        );
        assert!(i == l.1 + 1, "{}: message {i} after {}", t, l.1);
        *l = (d.position.offset, i);
        (d.topic, i)
    }

    /// Receives until every topic of `topics` delivered message `upto` (bounded).
    async fn until(&mut self, sub: &mut herald::Subscription, topics: &[&str], upto: u64) {
        for _ in 0..10_000 {
            if topics
                .iter()
                .all(|t| self.last.get(*t).is_some_and(|l| l.1 >= upto))
            {
                return;
            }
            let ev = support::next_event(sub).await;
            self.check(ev);
        }
        panic!("not delivered: {:?}", self.last);
    }
}

/// While one shard's primary is stopped (SIGSTOP: requests to it time out) and then killed
/// (kill -9: connections refused; no replica takes over), a subscription spanning three shards
/// keeps delivering the topics of the two healthy shards, in order, before the troubled shard
/// comes back; afterwards its topic continues, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_down_does_not_stop_the_others() {
    let options = support::Options::new()
        .persistence(support::Persistence::Aof)
        .args(&["--cluster-require-full-coverage", "no"]);
    let mut cluster = support::RedisCluster::try_start(&options, 3).unwrap();
    let url = cluster.url();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port).collect();
    // One topic per shard; the one on the last node gets into trouble.
    let owner = |t: &str| {
        let slot = slot_of(t) as usize;
        (0..3).find(|i| slot < 16384 * (i + 1) / 3).unwrap()
    };
    let mut by_node: BTreeMap<usize, String> = BTreeMap::new();
    for k in 0..100 {
        let t = format!("s{k}");
        by_node.entry(owner(&t)).or_insert(t);
    }
    let (a, b, c) = (
        by_node[&0].clone(),
        by_node[&1].clone(),
        by_node[&2].clone(),
    );
    let healthy = [a.as_str(), b.as_str()];
    let all = [a.as_str(), b.as_str(), c.as_str()];
    // No replicas here: no `min_replicas`.
    let publisher = Herald::builder()
        .node_id("pub")
        .redis(&url)
        .operation_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let subscriber = Herald::builder()
        .node_id("sub")
        .redis(&url)
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut sub = subscriber
        .subscribe(all.map(String::from))
        .from(Start::Earliest)
        .await
        .unwrap();
    let mut order = Order::default();
    let mut n = 0;
    for _ in 0..5 {
        n += 1;
        for t in all {
            publish_acked(&publisher, t, n).await;
        }
    }
    order.until(&mut sub, &all, n).await;

    for trouble in ["SIGSTOP", "kill -9"] {
        let pid = pid_of(ports[2]);
        if trouble == "SIGSTOP" {
            support::signal(&pid, "-STOP");
        } else {
            cluster.node_mut(2).unwrap().kill9();
        }
        // Messages to the healthy shards are all delivered while the shard is in trouble.
        let mut slowest = Duration::ZERO;
        let first = n + 1;
        for _ in 0..20 {
            n += 1;
            for t in healthy {
                publish_acked(&publisher, t, n).await;
                let sent = Instant::now();
                order.until(&mut sub, &[t], n).await;
                slowest = slowest.max(sent.elapsed());
            }
        }
        println!(
            "{trouble}: healthy-shard messages {first}..={n} delivered while the shard was \
             down, slowest {slowest:?} after its publish"
        );
        // The troubled shard comes back; its topic continues, complete and in order.
        if trouble == "SIGSTOP" {
            support::signal(&pid, "-CONT");
        } else {
            tokio::task::block_in_place(|| cluster.node_mut(2).unwrap().restart());
        }
        let before = order.last[c.as_str()].1;
        for i in before + 1..=n {
            publish_acked(&publisher, &c, i).await;
        }
        order.until(&mut sub, &[c.as_str()], n).await;
    }
}
