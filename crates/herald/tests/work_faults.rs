//! Work groups under Redis faults (real Redis only): `kill -9` with AOF `always` and a
//! restart, `CLIENT KILL` of every connection. No job is lost (the group finishes every
//! message) and none is acked twice (no confirmed ack is followed by another delivery of
//! the same message, and the group's own `acked` counter equals the number of messages).

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{Herald, Message, Outcome, WorkEvent};
use support::RedisServer;

const N: u64 = 300;

async fn node(url: &str, id: &str) -> Herald {
    Herald::builder()
        .redis(url)
        .node_id(id)
        .operation_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap()
}

/// What the workers saw, per offset: deliveries and confirmed acks, in order.
type Seen = Arc<Mutex<HashMap<u64, Vec<&'static str>>>>;

/// Runs two workers over `N` messages; calls `disrupt` once 100 have been acked; returns
/// when the group has finished every message.
async fn process_all(server: &mut RedisServer, disrupt: impl FnOnce(&mut RedisServer)) {
    let url = server.url();
    let publisher = node(&url, "pub").await;
    for chunk in 0..(N / 100) {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(format!("m{}", chunk * 100 + i)))
            .collect();
        publisher.publish_batch("faulty", batch).await.unwrap();
    }
    let seen: Seen = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..2 {
        let h = node(&url, &format!("w{w}")).await;
        let (seen, stop) = (seen.clone(), stop.clone());
        let mut worker = h
            .work("faulty")
            .group("g")
            .concurrency(4)
            .lease(Duration::from_secs(3))
            .start()
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let job =
                    match tokio::time::timeout(Duration::from_millis(300), worker.next()).await {
                        Ok(Some(Ok(WorkEvent::Job(job)))) => job,
                        _ => continue,
                    };
                let offset = job.position().offset;
                seen.lock()
                    .unwrap()
                    .entry(offset)
                    .or_default()
                    .push("delivered");
                if let Ok(Outcome::Acked) = job.ack().await {
                    seen.lock()
                        .unwrap()
                        .entry(offset)
                        .or_default()
                        .push("acked");
                }
            }
        }));
    }
    let acked = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .values()
            .filter(|v| v.contains(&"acked"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(&seen) < 100 {
        assert!(Instant::now() < deadline, "100 acks before the fault");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disrupt(server);
    let checker = node(&url, "check").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(info)) = checker.work_group("faulty", "g").await {
            if info.lag == 0 && info.next_offset == N + 1 {
                assert_eq!(info.acked, N, "the group counted one ack per message");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group finishes every message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    for o in 1..=N {
        let events = seen.get(&o).cloned().unwrap_or_default();
        assert!(
            events.first() == Some(&"delivered"),
            "offset {o}: {events:?}"
        );
        let acks = events.iter().filter(|e| **e == "acked").count();
        assert!(acks <= 1, "offset {o} acked twice: {events:?}");
        if let Some(at) = events.iter().position(|e| *e == "acked") {
            assert_eq!(
                at,
                events.len() - 1,
                "offset {o} delivered after its ack: {events:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_with_aof_loses_no_job_and_acks_none_twice() {
    let mut server = RedisServer::start_persistent();
    process_all(&mut server, |s| {
        s.kill9();
        std::thread::sleep(Duration::from_millis(300));
        s.restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_loses_no_job_and_acks_none_twice() {
    let mut server = RedisServer::start();
    process_all(&mut server, |s| {
        let _: redis::Value = s.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    })
    .await;
}

/// A member written against `docs/PROTOCOL.md` alone (raw script calls): claims, acks, and a
/// retried ack whose first reply was lost is answered `ok` again, never `stale`; an outcome
/// for another attempt or holder is `stale`.
#[test]
fn the_script_speaks_the_documented_protocol() {
    let server = RedisServer::start();
    let node = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = node(&server.url(), "pub").await;
        h.publish("raw", "one").await.unwrap()
    });
    let keys: Vec<String> = ["", ":jobs", ":due", ":holders"]
        .iter()
        .map(|s| format!("herald:{{raw}}:work:g{s}"))
        .chain([
            "herald:{raw}:groups".to_string(),
            "herald:{raw}:work:g:done".to_string(),
        ])
        .collect();
    let mut conn = server.conn();
    let script = redis::Script::new(herald::broker::WORK_SCRIPT);
    let call = |conn: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        inv.invoke(conn).unwrap()
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let holder = text(&call(
        &mut conn,
        &["REGISTER", "m", "5000", "__dead/raw/g", "g"],
    ));
    assert!(holder.starts_with("m#"), "{holder}");
    let epoch = node.position.epoch.to_string();
    let claim = call(
        &mut conn,
        &[
            "CLAIM", &holder, "10", "30000", "3", "5000", &epoch, "1", "1", "1",
        ],
    );
    let redis::Value::Array(items) = claim else {
        panic!("claim reply {claim:?}");
    };
    let items: Vec<String> = items.iter().map(text).collect();
    assert_eq!(items[0], "ok");
    assert_eq!(
        &items[2..],
        ["0", "0", "2", "1", "1", "job", ""],
        "{items:?}"
    );
    let ack = |conn: &mut redis::Connection, holder: &str, attempt: &str| {
        text(&call(conn, &["ACK", holder, &epoch, "1", attempt]))
    };
    assert_eq!(ack(&mut conn, &holder, "2"), "stale");
    assert_eq!(ack(&mut conn, "other#1", "1"), "stale");
    assert_eq!(ack(&mut conn, &holder, "1"), "ok");
    assert_eq!(
        ack(&mut conn, &holder, "1"),
        "ok",
        "a retried ack is not stale"
    );
    let state: String = server.cmd(&["HGET", "herald:{raw}:work:g", "acked"]);
    assert_eq!(state, "1");
}

/// `ACKS` (protocol 1.1, `docs/PROTOCOL.md`): several acks in one call, each answered as an
/// `ACK` alone: a wrong attempt or holder is `stale`, a repeated pair `ok`, and only the
/// deliveries it finished are counted.
#[test]
fn several_acks_in_one_call_are_each_answered_as_an_ack() {
    let server = RedisServer::start();
    let receipts = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = node(&server.url(), "pub").await;
        h.publish_batch("raw2", ["a", "b", "c"]).await.unwrap()
    });
    let epoch = receipts[0].position.epoch.to_string();
    let keys: Vec<String> = ["", ":jobs", ":due", ":holders"]
        .iter()
        .map(|s| format!("herald:{{raw2}}:work:g{s}"))
        .chain([
            "herald:{raw2}:groups".to_string(),
            "herald:{raw2}:work:g:done".to_string(),
            "herald:{raw2}:work:g:keys".to_string(),
        ])
        .collect();
    let mut conn = server.conn();
    let script = redis::Script::new(herald::broker::WORK_SCRIPT);
    let call = |conn: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        inv.invoke(conn).unwrap()
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let texts = |v: redis::Value| match v {
        redis::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>(),
        other => panic!("not an array: {other:?}"),
    };
    let holder = text(&call(
        &mut conn,
        &["REGISTER", "m", "5000", "__dead/raw2/g", "g"],
    ));
    let claim = texts(call(
        &mut conn,
        &[
            "CLAIM", &holder, "10", "30000", "3", "5000", &epoch, "1", "3", "1", "0", "0",
        ],
    ));
    assert_eq!(
        &claim[4..],
        ["4", "1", "1", "job", "", "2", "1", "job", "", "3", "1", "job", ""],
        "{claim:?}"
    );
    let acks = texts(call(
        &mut conn,
        &[
            "ACKS", &holder, &epoch, "1", "1", "2", "2", "3", "1", "1", "1",
        ],
    ));
    assert_eq!(acks, ["ok", "stale", "ok", "ok"]);
    let acks = texts(call(&mut conn, &["ACKS", "other#1", &epoch, "2", "1"]));
    assert_eq!(acks, ["stale"]);
    let other_epoch = format!("{epoch}9");
    let old_epoch = texts(call(&mut conn, &["ACKS", &holder, &other_epoch, "2", "1"]));
    assert_eq!(old_epoch, ["stale"]);
    let acked: String = server.cmd(&["HGET", "herald:{raw2}:work:g", "acked"]);
    assert_eq!(acked, "2");
    let left: Vec<String> = server.cmd(&["HKEYS", "herald:{raw2}:work:g:jobs"]);
    assert_eq!(left, ["2"]);
    assert_eq!(
        texts(call(&mut conn, &["ACKS", &holder, &epoch, "2", "1"])),
        ["ok"]
    );
}

/// `TAKE` (protocol 1.2, `docs/PROTOCOL.md`): acks, the claim on the topic's own state and the
/// entries holding the granted offsets in one call; an epoch the topic is not in is `head`
/// (after the acks were applied).
#[test]
fn take_acks_claims_and_returns_the_messages_in_one_call() {
    let server = RedisServer::start();
    let receipts = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let h = node(&server.url(), "pub").await;
        h.publish_batch("raw3", ["a", "b", "c"]).await.unwrap()
    });
    let epoch = receipts[0].position.epoch.to_string();
    let keys: Vec<String> = ["", ":jobs", ":due", ":holders"]
        .iter()
        .map(|s| format!("herald:{{raw3}}:work:g{s}"))
        .chain(
            ["groups", "work:g:done", "work:g:keys", "meta", "log"]
                .iter()
                .map(|s| format!("herald:{{raw3}}:{s}")),
        )
        .collect();
    let mut conn = server.conn();
    let script = redis::Script::new(herald::broker::WORK_SCRIPT);
    let call = |conn: &mut redis::Connection, args: &[&str]| -> Vec<redis::Value> {
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        match inv.invoke(conn).unwrap() {
            redis::Value::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let texts = |v: &redis::Value| match v {
        redis::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>(),
        other => panic!("not an array: {other:?}"),
    };
    let holder = {
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        let reply: String = inv
            .arg("REGISTER")
            .arg("m")
            .arg("5000")
            .arg("__dead/raw3/g")
            .arg("g")
            .invoke(&mut conn)
            .unwrap();
        reply
    };
    let take = |conn: &mut redis::Connection, n: &str, epoch: &str, acks: &[&str]| {
        let nacks = (acks.len() / 2).to_string();
        let mut args = vec![
            "TAKE", &holder, n, "30000", "3", "5000", epoch, "0", "0", "0", &nacks,
        ];
        args.extend_from_slice(acks);
        call(conn, &args)
    };
    let first = take(&mut conn, "2", &epoch, &[]);
    assert_eq!(text(&first[0]), "ok");
    assert!(texts(&first[1]).is_empty());
    // now, reset, lost, next, first, last
    assert_eq!(
        first[3..8].iter().map(text).collect::<Vec<_>>(),
        ["0", "0", "3", "1", "3"]
    );
    let redis::Value::Array(entries) = &first[8] else {
        panic!("entries {:?}", first[8]);
    };
    assert_eq!(entries.len(), 1, "one publish call, one entry: {entries:?}");
    let redis::Value::Array(entry) = &entries[0] else {
        panic!("entry {:?}", entries[0]);
    };
    assert_eq!(text(&entry[0]), "1-0");
    assert_eq!(
        first[9..].iter().map(text).collect::<Vec<_>>(),
        ["1", "1", "job", "", "2", "1", "job", ""]
    );
    let second = take(&mut conn, "5", &epoch, &["1", "1", "2", "2", "2", "1"]);
    assert_eq!(texts(&second[1]), ["ok", "stale", "ok"]);
    assert_eq!(text(&second[5]), "4", "next");
    assert_eq!(
        second[9..].iter().map(text).collect::<Vec<_>>(),
        ["3", "1", "job", ""]
    );
    let other_epoch = format!("{epoch}9");
    let moved = take(&mut conn, "5", &other_epoch, &["3", "1"]);
    assert_eq!(text(&moved[0]), "head");
    assert_eq!(texts(&moved[1]), ["stale"], "acked in the epoch given");
    let acked = take(&mut conn, "5", &epoch, &["3", "1"]);
    assert_eq!(texts(&acked[1]), ["ok"]);
    assert_eq!(acked.len(), 9, "nothing more to hand out: {acked:?}");
    let count: String = server.cmd(&["HGET", "herald:{raw3}:work:g", "acked"]);
    assert_eq!(count, "3");
}

/// A `TAKE` (protocol 1.2) whose reply is lost after Redis applied it (the proxy holds the
/// replies, then cuts the connection): the member's retry carries the same ack, which the
/// `done` set answers `ok` again, so the job's ack returns `Acked` and the group counts it
/// once; the delivery the lost reply granted is never yielded (its attempt is spent) and comes
/// back after its lease. No message is lost or acked twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_reply_is_lost_after_its_ack_was_applied_acks_once() {
    use support::proxy::{Direction, FaultProxy};
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port).await;
    let publisher = node(&server.url(), "pub").await;
    publisher
        .publish_batch("lostreply", ["m1", "m2", "m3"].map(Message::new))
        .await
        .unwrap();
    let h = Herald::builder()
        .redis(proxy.url())
        .node_id("w")
        .response_timeout(Duration::from_millis(500))
        .operation_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let mut worker = h
        .work("lostreply")
        .group("g")
        .concurrency(1)
        .lease(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    async fn next_job(worker: &mut herald::Worker) -> herald::Job {
        match tokio::time::timeout(Duration::from_secs(30), worker.next()).await {
            Ok(Some(Ok(WorkEvent::Job(job)))) => job,
            other => panic!("expected a job, got {other:?}"),
        }
    }
    let first = next_job(&mut worker).await;
    assert_eq!(
        (first.position().offset, first.attempt()),
        (1, 1),
        "the first job"
    );
    // Replies stop; the ack goes in the next TAKE, which also claims the place it frees.
    proxy.stall(Direction::Down);
    let ack = tokio::spawn(first.ack());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acked: Option<String> = server.cmd(&["HGET", "herald:{lostreply}:work:g", "acked"]);
        if acked.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TAKE with the ack is applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Applied in one step with the ack: offset 2 was granted, in the reply now lost.
    let granted: Option<String> = server.cmd(&["HGET", "herald:{lostreply}:work:g:jobs", "2"]);
    assert!(
        granted.as_deref().is_some_and(|r| r.contains("\"a\":1")),
        "offset 2 granted by the lost reply: {granted:?}"
    );
    proxy.cut();
    proxy.pass();
    let outcome = tokio::time::timeout(Duration::from_secs(30), ack)
        .await
        .expect("the ack returns")
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Acked,
        "the retried TAKE's ack is ok again"
    );
    // The rest: offset 2 only after its lease (its attempt 1 was in the lost reply), and 3.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let job = next_job(&mut worker).await;
        seen.push((job.position().offset, job.attempt()));
        assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    }
    seen.sort();
    assert_eq!(seen[1].0, 3, "{seen:?}");
    assert!(
        seen[0].0 == 2 && seen[0].1 >= 2,
        "offset 2 is delivered again with a later attempt: {seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = h.work_group("lostreply", "g").await.unwrap().unwrap();
        if info.lag == 0 && info.in_flight.is_empty() {
            assert_eq!((info.acked, info.next_offset), (3, 4), "{info:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the group finishes: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.close().await.unwrap();
}
