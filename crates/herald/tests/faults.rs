#![allow(clippy::unwrap_used)]
//! Fault and bad-input tests against real Redis (docs/DESIGN.md, Guarantees and Failure
//! behaviour): dropped connections, slow subscribers, Redis crashes and restarts, durable
//! cursors, retention, unreachable Redis, bad URLs, invalid topics, oversized messages, wrong
//! key types and foreign entries.
//!
//! Every test owns its `redis-server` on a free 127.0.0.1 port; every wait is bounded.

use herald_testkit as support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{
    Delivery, Error, ErrorKind, Event, GapReason, Herald, Message, Position, Receipt,
    SettingsChange, Start, Subscription,
};
use support::{free_port, maybe_event, next_event, RedisServer, EVENT_WAIT};

/// A node on `server` with a fast safety-net poll.
async fn node(server: &RedisServer, id: &str) -> Herald {
    Herald::builder()
        .node_id(id)
        .redis(server.url())
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap()
}

/// Receives exactly the messages `from..=to` of `topic`, in order; anything else (a gap, a
/// reset, another offset, an error, a timeout) fails the test.
async fn expect_offsets(sub: &mut Subscription, topic: &str, from: u64, to: u64) -> Vec<Delivery> {
    let mut out = Vec::new();
    for expected in from..=to {
        match next_event(sub).await {
            Event::Message(d) if d.topic == topic && d.position.offset == expected => out.push(d),
            other => panic!("expected message {expected} of {topic:?}, got {other:?}"),
        }
    }
    out
}

/// Asserts that nothing more arrives for a while: no duplicate, no stray event.
async fn expect_quiet(sub: &mut Subscription, wait: Duration) {
    if let Some(e) = maybe_event(sub, wait).await {
        panic!("expected no further event, got {e:?}");
    }
}

/// The next stream item, errors included, failing the test after `EVENT_WAIT`.
async fn next_item(sub: &mut Subscription) -> herald::Result<Event> {
    match tokio::time::timeout(EVENT_WAIT, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// A payload of exactly `size` bytes that starts with the number `i`.
fn payload(i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{i:08}:").into_bytes();
    p.resize(size, b'x');
    p
}

/// Publishes messages `m<first>`..=`m<last>` one by one (small pause between them) and
/// returns their receipts.
fn spawn_publisher(
    herald: Herald,
    topic: &'static str,
    first: u64,
    last: u64,
) -> tokio::task::JoinHandle<Vec<Receipt>> {
    tokio::spawn(async move {
        let mut receipts = Vec::new();
        for i in first..=last {
            let r = herald
                .publish(topic, format!("m{i}"))
                .await
                .unwrap_or_else(|e| panic!("publish {i} failed: {e}"));
            receipts.push(r);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        receipts
    })
}

/// Collects `n` events of a subscription in a task, so that it is read while faults happen.
fn spawn_reader(
    mut sub: Subscription,
    n: u64,
) -> tokio::task::JoinHandle<(Vec<u64>, Subscription)> {
    tokio::spawn(async move {
        let mut offsets = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match next_event(&mut sub).await {
                Event::Message(d) => offsets.push(d.position.offset),
                other => panic!("expected a message, got {other:?} after {offsets:?}"),
            }
        }
        (offsets, sub)
    })
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// Kills the clients of `kind` a few times while publishing runs; returns how many were killed.
async fn kill_repeatedly(server: &RedisServer, kind: &str, times: usize, every: Duration) -> i64 {
    let mut killed = 0;
    for _ in 0..times {
        tokio::time::sleep(every).await;
        killed += server.cmd::<i64>(&["CLIENT", "KILL", "TYPE", kind]);
    }
    killed
}

// 1. Connection dropped mid-stream: reconnect, recover from history, no loss, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connection_killed_mid_stream() {
    const N: u64 = 400;
    let server = RedisServer::start();
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let reader = spawn_reader(sub, N);
    let publishing = spawn_publisher(publisher, "t", 1, N);

    let killed = kill_repeatedly(&server, "pubsub", 6, Duration::from_millis(150)).await;
    assert!(
        !publishing.is_finished(),
        "publishing ended before the last kill"
    );
    assert!(killed >= 1, "no Pub/Sub connection was killed");

    let receipts = bounded("publishing", publishing).await.unwrap();
    eprintln!("killed {killed} Pub/Sub connections");
    let offsets: Vec<u64> = receipts.iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    let (received, mut sub) = bounded("reading", reader).await.unwrap();
    assert_eq!(
        received,
        (1..=N).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    expect_quiet(&mut sub, Duration::from_millis(600)).await;
}

// 2. Idempotent publish: command connections of publisher and subscriber killed; the publisher's
// retries reuse their idempotency keys, so nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_connections_killed_mid_stream() {
    const N: u64 = 400;
    let server = RedisServer::start();
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let reader = spawn_reader(sub, N);
    let publishing = spawn_publisher(publisher.clone(), "t", 1, N);

    let killed = kill_repeatedly(&server, "normal", 30, Duration::from_millis(25)).await;
    assert!(
        !publishing.is_finished(),
        "publishing ended before the last kill"
    );
    assert!(killed >= 1, "no command connection was killed");

    let receipts = bounded("publishing", publishing).await.unwrap();
    let retried = receipts.iter().filter(|r| r.duplicate).count();
    eprintln!("killed {killed} command connections; {retried} publishes were answered by a retry");
    let offsets: Vec<u64> = receipts.iter().map(|r| r.position.offset).collect();
    assert_eq!(
        offsets,
        (1..=N).collect::<Vec<_>>(),
        "offsets dense, no second copy"
    );
    let (received, mut sub) = bounded("reading", reader).await.unwrap();
    assert_eq!(
        received,
        (1..=N).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    expect_quiet(&mut sub, Duration::from_millis(600)).await;
    let info = publisher.inspect("t").await.unwrap();
    assert_eq!((info.last_offset, info.length), (N, N));
}

// 3. Bounded memory, a subscriber slower than the publish rate: Redis disconnects the Pub/Sub
// client for exceeding its output buffer limit; the subscriber catches up from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_disconnected_by_output_buffer_limit() {
    const N: u64 = 3000;
    const SIZE: usize = 1024;
    let server = RedisServer::start_with(&[
        "--client-output-buffer-limit",
        "pubsub",
        "65536",
        "32768",
        "1",
    ]);
    let limits: Vec<String> = server.cmd(&["CONFIG", "GET", "client-output-buffer-limit"]);
    assert!(limits[1].contains("pubsub 65536 32768 1"), "{limits:?}");
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .buffer(8)
        .await
        .unwrap();

    // Not reading meanwhile. The first half one by one, the second in batches of 100: a
    // notification of 100 KiB alone overflows the 64 KiB hard limit.
    let started = Instant::now();
    for i in 1..=N / 2 {
        publisher.publish("t", payload(i, SIZE)).await.unwrap();
    }
    let singles = server.log().matches("output buffer limits").count();
    eprintln!("disconnects while publishing one by one: {singles}");
    for chunk in (N / 2 + 1..=N).collect::<Vec<_>>().chunks(100) {
        let receipts = publisher
            .publish_batch("t", chunk.iter().map(|&i| payload(i, SIZE)))
            .await
            .unwrap();
        assert_eq!(
            receipts.last().unwrap().position.offset,
            *chunk.last().unwrap()
        );
    }
    eprintln!("published {N} messages in {:?}", started.elapsed());

    // Redis logged the disconnect.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("output buffer limits") {
        assert!(
            Instant::now() < deadline,
            "Redis never disconnected the subscriber:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let disconnects = server.log().matches("output buffer limits").count();
    eprintln!("Redis disconnected the subscriber {disconnects} times");

    for expected in 1..=N {
        match next_event(&mut sub).await {
            Event::Message(d) => {
                assert_eq!(d.position.offset, expected);
                assert_eq!(d.payload.len(), SIZE);
                assert!(d.payload.starts_with(format!("{expected:08}:").as_bytes()));
            }
            other => panic!("expected message {expected}, got {other:?}"),
        }
    }
    expect_quiet(&mut sub, Duration::from_millis(600)).await;
}

// 4. Redis restarted with persistence (appendfsync always): no loss, no duplicate, no Reset.
// The restarted server is another process (a new run_id), so the log continues under a new
// epoch from the next offset (protocol 3; it kept its epoch before): one boundary per restart,
// every position named once, subscribers cross the boundary without a Reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_with_aof_loses_nothing() {
    let mut server = RedisServer::start_persistent();
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();

    let mut epochs = Vec::new();
    for i in 1..=20u64 {
        let r = publisher.publish("t", format!("m{i}")).await.unwrap();
        assert_eq!(r.position.offset, i);
        epochs.push(r.position.epoch);
    }
    expect_offsets(&mut sub, "t", 1, 10).await; // the rest is read after the crash

    server.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    for i in 21..=40u64 {
        let r = publisher.publish("t", format!("m{i}")).await.unwrap();
        assert_eq!((r.position.offset, r.duplicate), (i, false));
        epochs.push(r.position.epoch);
    }
    assert!(epochs[..20].iter().all(|&e| e == epochs[0]), "{epochs:?}");
    assert!(
        epochs[20] > epochs[0],
        "a restart opens a new epoch: {epochs:?}"
    );
    assert!(epochs[20..].iter().all(|&e| e == epochs[20]), "{epochs:?}");

    // A crash in the middle of a stream of publishes: the ones in flight are retried (with
    // their idempotency keys) until Redis is back; every acknowledged one survives.
    let publishing = spawn_publisher(publisher.clone(), "t", 41, 140);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !publishing.is_finished(),
        "publishing ended before the crash"
    );
    server.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let receipts = bounded("publishing", publishing).await.unwrap();
    let offsets: Vec<u64> = receipts.iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, (41..=140).collect::<Vec<_>>());
    epochs.extend(receipts.iter().map(|r| r.position.epoch));
    let boundaries = epochs.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]) && boundaries <= 2,
        "epochs increase, at most one boundary per restart: {epochs:?}"
    );

    let got = expect_offsets(&mut sub, "t", 11, 140).await;
    // Each message is delivered under the epoch of its receipt.
    assert!(got
        .iter()
        .all(|d| d.position.epoch == epochs[d.position.offset as usize - 1]));
    assert!(got
        .iter()
        .all(|d| d.payload == format!("m{}", d.position.offset).as_bytes()));
    expect_quiet(&mut sub, Duration::from_millis(600)).await;

    let late = node(&server, "late").await;
    let mut sub2 = late.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    let all = expect_offsets(&mut sub2, "t", 1, 140).await;
    assert!(all
        .iter()
        .all(|d| d.position.epoch == epochs[d.position.offset as usize - 1]));
    expect_quiet(&mut sub2, Duration::from_millis(300)).await;
}

// 5. Redis restarted without persistence: a Reset, never a silent loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_resets() {
    let mut server = RedisServer::start();
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let mut old_epoch = 0;
    for i in 1..=5u64 {
        old_epoch = publisher
            .publish("t", format!("old{i}"))
            .await
            .unwrap()
            .position
            .epoch;
    }
    expect_offsets(&mut sub, "t", 1, 5).await;

    server.restart();
    // Nothing to say until a publish creates the new epoch.
    expect_quiet(&mut sub, Duration::from_millis(500)).await;

    let mut new_epoch = 0;
    for i in 1..=3u64 {
        let r = publisher.publish("t", format!("new{i}")).await.unwrap();
        assert_eq!(r.position.offset, i);
        new_epoch = r.position.epoch;
    }
    assert_ne!(new_epoch, old_epoch);
    match next_event(&mut sub).await {
        Event::Reset {
            topic,
            last_delivered:
                Position {
                    epoch: previous_epoch,
                    offset: last_delivered,
                },
            epoch,
            lost_from,
            ..
        } => {
            assert_eq!(topic, "t");
            assert_eq!(lost_from, 1, "the whole log was lost");
            assert_eq!(previous_epoch, old_epoch);
            assert_eq!(epoch, new_epoch);
            assert_eq!(last_delivered, 5);
        }
        other => panic!("expected a Reset, got {other:?}"),
    }
    let got = expect_offsets(&mut sub, "t", 1, 3).await;
    assert!(got.iter().all(|d| d.position.epoch == new_epoch));
    assert_eq!(&got[0].payload[..], b"new1");
    expect_quiet(&mut sub, Duration::from_millis(600)).await;
}

// 6. A subscriber killed and restarted with a durable cursor resumes after its last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_cursor_resumes_after_last_commit() {
    let server = RedisServer::start();
    let publisher = node(&server, "pub").await;
    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .durable("worker")
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=5u64 {
        publisher.publish("t", format!("m{i}")).await.unwrap();
    }
    let got = expect_offsets(&mut sub, "t", 1, 5).await;
    sub.commit(&got[2]).await.unwrap(); // 4 and 5 delivered but not committed
    drop(sub);

    for i in 6..=8u64 {
        publisher.publish("t", format!("m{i}")).await.unwrap();
    }
    let restarted = node(&server, "sub").await;
    let mut sub = restarted
        .subscribe(["t"])
        .durable("worker")
        .from(Start::Latest) // applies only when the cursor does not exist
        .await
        .unwrap();
    let got = expect_offsets(&mut sub, "t", 4, 8).await;
    assert_eq!(&got[0].payload[..], b"m4");
    sub.commit(&got[4]).await.unwrap();
    expect_quiet(&mut sub, Duration::from_millis(400)).await;
    let info = publisher.inspect("t").await.unwrap();
    assert_eq!(info.cursors.len(), 1);
    assert_eq!(
        (info.cursors[0].commit.position.offset, info.cursors[0].lag),
        (8, 0)
    );
}

// 7. Retention exceeded while a durable subscriber is away gives one Gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_exceeded_while_away_gives_gap() {
    let server = RedisServer::start();
    let publisher = node(&server, "pub").await;
    let mut change = SettingsChange::default();
    change.max_len = Some(10);
    assert_eq!(publisher.configure("t", change).await.unwrap().max_len, 10);

    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .durable("away")
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=5u64 {
        publisher.publish("t", format!("m{i}")).await.unwrap();
    }
    let got = expect_offsets(&mut sub, "t", 1, 5).await;
    sub.commit(&got[4]).await.unwrap();
    drop(sub);

    for i in 6..=55u64 {
        publisher.publish("t", format!("m{i}")).await.unwrap();
    }
    let info = publisher.inspect("t").await.unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (46, 55, 10)
    );

    let mut sub = subscriber.subscribe(["t"]).durable("away").await.unwrap();
    match next_event(&mut sub).await {
        Event::Gap {
            topic,
            from,
            to,
            reason,
            epoch,
        } => {
            assert_eq!(
                (topic.as_str(), from, to, reason),
                ("t", 6, 45, GapReason::Retention)
            );
            assert_eq!(epoch, got[0].position.epoch);
        }
        other => panic!("expected a retention Gap, got {other:?}"),
    }
    expect_offsets(&mut sub, "t", 46, 55).await;
    expect_quiet(&mut sub, Duration::from_millis(400)).await;
}

// 8a. Redis unreachable at start: retries, then a clear error after the deadline
// (never before it; 1.2 s once made the library give up at 1.13 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_after_deadline() {
    let port = free_port(); // nothing listens there
    let url = format!("redis://127.0.0.1:{port}");
    for deadline in [Duration::from_millis(1000), Duration::from_millis(1200)] {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            Herald::builder()
                .node_id("lonely")
                .redis(url.as_str())
                .connect_timeout(deadline)
                .connect(),
        )
        .await
        .expect("connect must give up by itself");
        let waited = started.elapsed();
        let err = result.unwrap_err();
        eprintln!("deadline {deadline:?}: gave up after {waited:?}: {err}");
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(
            waited >= deadline,
            "gave up after {waited:?}, before the {deadline:?} deadline"
        );
    }
}

// 8b. Redis that comes up while connect is retrying is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coming_up_during_connect_retries_is_used() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let connecting = tokio::spawn(async move {
        Herald::builder()
            .node_id("patient")
            .redis(url)
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !connecting.is_finished(),
        "connect returned before Redis was up"
    );
    let server = tokio::task::spawn_blocking(move || RedisServer::start_on(port, &[]))
        .await
        .unwrap();
    let herald = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("connect did not finish")
        .unwrap()
        .unwrap();
    let r = herald.publish("t", "hello").await.unwrap();
    assert_eq!(r.position.offset, 1);
    let len: i64 = server.cmd(&["XLEN", "herald:{t}:log"]);
    assert_eq!(len, 1);
}

// 9. Bad URLs: a clear BadInput error, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_bad_input() {
    for url in [
        "http://x",
        "redis://",
        "not a url",
        "redis://127.0.0.1:notaport",
        "",
    ] {
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            Herald::builder()
                .node_id("n")
                .redis(url)
                .connect_timeout(Duration::from_secs(1))
                .connect(),
        )
        .await
        .unwrap_or_else(|_| panic!("connect({url:?}) hung"));
        let err = result
            .err()
            .unwrap_or_else(|| panic!("connect({url:?}) succeeded"));
        assert_eq!(err.kind(), ErrorKind::BadInput, "{url:?}: {err}");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url:?}: {err:?}");
        let text = err.to_string();
        eprintln!("{url:?}: {text}");
        assert!(text.contains("invalid Redis URL"), "{url:?}: {text}");
        assert!(
            text.contains(&format!("{url:?}")),
            "the message names the URL: {text}"
        );
        if url.starts_with("http:") {
            assert!(text.contains("unsupported scheme \"http\""), "{text}");
        }
    }
}

// 10a. Invalid topic names are rejected before anything reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_are_rejected() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    let long = "a".repeat(201);
    for name in ["", long.as_str(), "a b", "a{b}", "é"] {
        let err = herald.publish(name, "x").await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic { .. }),
            "publish {name:?}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::BadInput);
        let err = herald
            .subscribe([name])
            .from(Start::Earliest)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic { .. }),
            "subscribe {name:?}: {err:?}"
        );
        let err = herald.subscribe(["ok", name]).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic { .. }),
            "subscribe ok+{name:?}: {err:?}"
        );
        let err = herald.inspect(name).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic { .. }),
            "inspect {name:?}: {err:?}"
        );
        let err = herald.publish_batch(name, ["x", "y"]).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic { .. }),
            "publish_batch {name:?}: {err:?}"
        );
    }
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.is_empty(), "nothing may be written: {keys:?}");
    // The longest valid name works.
    assert_eq!(
        herald
            .publish(&"a".repeat(200), "x")
            .await
            .unwrap()
            .position
            .offset,
        1
    );
}

// 10b. Oversized messages: MessageTooLarge, nothing appended; a batch is all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_append_nothing() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    let mut change = SettingsChange::default();
    change.max_size = Some(100);
    herald.configure("t", change).await.unwrap();
    herald.publish("t", vec![b'a'; 100]).await.unwrap();
    herald.publish("t", vec![b'b'; 50]).await.unwrap();
    let mut sub = herald.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    expect_offsets(&mut sub, "t", 1, 2).await;

    let err = herald.publish("t", vec![b'c'; 101]).await.unwrap_err();
    match &err {
        Error::MessageTooLarge { topic, size, limit } => {
            assert_eq!((topic.as_str(), *size, *limit), ("t", 101, 100));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::BadInput);
    assert!(
        err.to_string().contains("raise the topic's max_size"),
        "says what to do: {err}"
    );

    // One message too large in a batch: none of them is appended.
    let batch = vec![
        vec![b'd'; 10],
        vec![b'e'; 10],
        vec![b'f'; 101],
        vec![b'g'; 10],
    ];
    let err = herald.publish_batch("t", batch).await.unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { size: 101, .. }),
        "{err:?}"
    );

    let info = herald.inspect("t").await.unwrap();
    assert_eq!((info.last_offset, info.length), (2, 2));
    let len: i64 = server.cmd(&["XLEN", "herald:{t}:log"]);
    assert_eq!(len, 2);
    expect_quiet(&mut sub, Duration::from_millis(500)).await;

    // The topic and a healthy one still work.
    assert_eq!(herald.publish("t", "ok").await.unwrap().position.offset, 3);
    expect_offsets(&mut sub, "t", 3, 3).await;
    assert_eq!(
        herald
            .publish("u", vec![b'h'; 1000])
            .await
            .unwrap()
            .position
            .offset,
        1
    );
}

// 11. Wrong key types: a clear error naming the key, nothing written, other topics intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_types_are_refused() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    herald.publish("u", "u1").await.unwrap();

    // meta is a string.
    let _: () = server.cmd(&["SET", "herald:{t}:meta", "x"]);
    let err = herald.publish("t", "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    assert!(
        err.to_string().contains("herald:{t}:meta"),
        "names the key: {err}"
    );
    for key in ["herald:{t}:log", "herald:{t}:settings"] {
        let exists: i64 = server.cmd(&["EXISTS", key]);
        assert_eq!(exists, 0, "{key} was written");
    }
    let stored: String = server.cmd(&["GET", "herald:{t}:meta"]);
    assert_eq!(stored, "x");
    let err = herald.inspect("t").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");

    // log is a string (meta absent: a topic that was never published).
    let _: () = server.cmd(&["SET", "herald:{v}:log", "x"]);
    let err = herald.publish("v", "x").await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    assert!(
        err.to_string().contains("herald:{v}:log"),
        "names the key: {err}"
    );
    for key in ["herald:{v}:meta", "herald:{v}:settings"] {
        let exists: i64 = server.cmd(&["EXISTS", key]);
        assert_eq!(exists, 0, "{key} was written");
    }

    // log is a string under a valid meta.
    herald.publish("w", "w1").await.unwrap();
    let _: () = server.cmd(&["DEL", "herald:{w}:log"]);
    let _: () = server.cmd(&["SET", "herald:{w}:log", "x"]);
    let err = herald.publish("w", "x").await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    assert!(
        err.to_string().contains("herald:{w}:log"),
        "names the key: {err}"
    );
    let last: String = server.cmd(&["HGET", "herald:{w}:meta", "last"]);
    assert_eq!(last, "1");

    // "u" on the same Redis is intact.
    let r = herald.publish("u", "u2").await.unwrap();
    assert_eq!((r.position.offset, r.duplicate), (2, false));
    let info = herald.inspect("u").await.unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (1, 2, 2)
    );

    // A subscription to a broken topic and a healthy one: an Err item, and "u" keeps delivering.
    let subscriber = node(&server, "sub").await;
    let mut sub = tokio::time::timeout(
        Duration::from_secs(20),
        subscriber.subscribe(["t", "u"]).from(Start::Earliest),
    )
    .await
    .expect("subscribe hung")
    .unwrap();
    let mut saw_error = false;
    let mut u_offsets = Vec::new();
    let mut published = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while u_offsets.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "u stalled at {u_offsets:?} (error seen: {saw_error})"
        );
        match next_item(&mut sub).await {
            Ok(Event::Message(d)) => {
                assert_eq!(d.topic, "u");
                u_offsets.push(d.position.offset);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
                assert!(e.to_string().contains("herald:{t}:meta"), "{e}");
                saw_error = true;
            }
        }
        if !published && u_offsets.len() == 2 {
            herald.publish("u", "u3").await.unwrap();
            herald.publish("u", "u4").await.unwrap();
            published = true;
        }
    }
    assert_eq!(u_offsets, vec![1, 2, 3, 4]);
    // The error is reported (once), whenever the engine first met it.
    if !saw_error {
        match next_item(&mut sub).await {
            Err(e) => assert!(matches!(e, Error::WrongType { .. }), "{e:?}"),
            Ok(other) => panic!("expected the wrong-type error, got {other:?}"),
        }
    }

    // Repairing the topic makes it usable again, and the subscription delivers it.
    let _: () = server.cmd(&["DEL", "herald:{t}:meta"]);
    assert_eq!(herald.publish("t", "t1").await.unwrap().position.offset, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the repaired topic never delivered"
        );
        match next_item(&mut sub).await {
            Ok(Event::Message(d)) if d.topic == "t" => {
                assert_eq!(d.position.offset, 1);
                break;
            }
            Err(e) if e.kind() == ErrorKind::Refused => {} // an old report
            other => panic!("unexpected {other:?}"),
        }
    }
}

// 12a. A foreign entry beyond the last offset: publish refuses with Corrupt, writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entry_beyond_last_is_corrupt() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    herald.publish("t", "m1").await.unwrap();
    herald.publish("t", "m2").await.unwrap();
    let _: String = server.cmd(&["XADD", "herald:{t}:log", "3-0", "foo", "bar"]);

    let err = herald
        .publish("t", Message::new("m3").key("k3"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("topic \"t\"") && text.contains("did not write"),
        "{text}"
    );
    let last: String = server.cmd(&["HGET", "herald:{t}:meta", "last"]);
    assert_eq!(last, "2");
    let len: i64 = server.cmd(&["XLEN", "herald:{t}:log"]);
    assert_eq!(len, 3);
    let dedup: i64 = server.cmd(&["HEXISTS", "herald:{t}:dedup", "k3"]);
    assert_eq!(dedup, 0);

    // A subscriber still reads what Herald wrote, skipping the foreign entry.
    let mut sub = herald.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    expect_offsets(&mut sub, "t", 1, 2).await;
    expect_quiet(&mut sub, Duration::from_millis(500)).await;
}

// 12b. An entry at a valid offset with missing fields becomes Gap{Unreadable}, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entry_becomes_unreadable_gap() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    herald.publish("t", "m1").await.unwrap();
    herald.publish("t", "m2").await.unwrap();
    let _: String = server.cmd(&["XADD", "herald:{t}:log", "3-0", "foo", "bar"]);
    let _: i64 = server.cmd(&["HSET", "herald:{t}:meta", "last", "3"]);
    let r = herald.publish("t", "m4").await.unwrap();
    assert_eq!(r.position.offset, 4);

    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap();
    expect_offsets(&mut sub, "t", 1, 2).await;
    match next_event(&mut sub).await {
        Event::Gap {
            from, to, reason, ..
        } => assert_eq!((from, to, reason), (3, 3, GapReason::Unreadable)),
        other => panic!("expected Gap 3..3 Unreadable, got {other:?}"),
    }
    let got = expect_offsets(&mut sub, "t", 4, 4).await;
    assert_eq!(&got[0].payload[..], b"m4");
    herald.publish("t", "m5").await.unwrap();
    expect_offsets(&mut sub, "t", 5, 5).await;
    expect_quiet(&mut sub, Duration::from_millis(500)).await;
}

// 12c. Garbage on the live channel: the subscriber re-reads history, no duplicate, no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_live_notification_is_survived() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    let subscriber = node(&server, "sub").await;
    let mut sub = subscriber
        .subscribe(["t", "u"])
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=3u64 {
        herald.publish("t", format!("m{i}")).await.unwrap();
    }
    expect_offsets(&mut sub, "t", 1, 3).await;

    for garbage in ["garbage", "2:h1", "2:h15:99999", "2:h11:11:11:1", ""] {
        let receivers: i64 = server.cmd(&["PUBLISH", "herald:{t}:live", garbage]);
        assert_eq!(receivers, 1);
    }
    // A well-formed notification that skips ahead and lies about the epoch.
    let _: i64 = server.cmd(&[
        "PUBLISH",
        "herald:{t}:live",
        "2:h13:9991:91:11:k1:n3:1230:1:x",
    ]);
    expect_quiet(&mut sub, Duration::from_millis(500)).await;

    for i in 4..=6u64 {
        herald.publish("t", format!("m{i}")).await.unwrap();
    }
    herald.publish("u", "u1").await.unwrap();
    let mut t = Vec::new();
    let mut u = Vec::new();
    for _ in 0..4 {
        match next_event(&mut sub).await {
            Event::Message(d) if d.topic == "t" => t.push(d.position.offset),
            Event::Message(d) if d.topic == "u" => u.push(d.position.offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((t, u), (vec![4, 5, 6], vec![1]));
    expect_quiet(&mut sub, Duration::from_millis(600)).await;
}

// 13. Idempotent publish: a retried publish with the same key across a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_across_dropped_connection() {
    let server = RedisServer::start();
    let herald = node(&server, "n").await;
    herald.publish("t", "before").await.unwrap();
    let first = herald
        .publish("t", Message::new("once").key("op-42"))
        .await
        .unwrap();
    assert_eq!((first.position.offset, first.duplicate), (2, false));

    let killed: i64 = server.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(killed >= 1, "the publisher's connection was not killed");

    let again = herald
        .publish("t", Message::new("once").key("op-42"))
        .await
        .unwrap();
    assert!(again.duplicate, "{again:?}");
    assert_eq!(
        (again.position.offset, again.position.epoch),
        (first.position.offset, first.position.epoch)
    );
    let info = herald.inspect("t").await.unwrap();
    assert_eq!((info.last_offset, info.length), (2, 2));

    let mut sub = herald.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    let got = expect_offsets(&mut sub, "t", 1, 2).await;
    assert_eq!(got[1].key, "op-42");
    expect_quiet(&mut sub, Duration::from_millis(400)).await;
}

// 2b. Herald's own retries of a publish (after a timeout) never create a second copy: writes
// are paused longer than the response timeout, so the publish times out and is retried while
// the first attempt still waits in Redis; both run once the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retried_after_timeout_is_not_duplicated() {
    let server = RedisServer::start();
    let herald = Herald::builder()
        .node_id("impatient")
        .redis(server.url())
        .response_timeout(Duration::from_millis(200))
        .operation_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut sub = herald.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    assert_eq!(herald.publish("t", "m1").await.unwrap().position.offset, 1);

    let before = script_calls(&server);
    let _: () = server.cmd(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let started = Instant::now();
    let r = bounded("publish", herald.publish("t", "m2")).await.unwrap();
    eprintln!(
        "publish during the pause took {:?}: {r:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the publish was not held up by the pause"
    );
    assert_eq!(r.position.offset, 2);
    assert!(
        !r.duplicate,
        "the caller published m2 once: its own retry must not be reported as a duplicate"
    );
    let runs = script_calls(&server) - before;
    assert!(
        runs >= 2,
        "the publish script ran {runs} times: the publish was not retried"
    );

    let info = herald.inspect("t").await.unwrap();
    assert_eq!(
        (info.last_offset, info.length),
        (2, 2),
        "a retry created a second copy"
    );
    expect_offsets(&mut sub, "t", 1, 2).await;
    expect_quiet(&mut sub, Duration::from_millis(500)).await;
}

/// How many times Redis ran a script (EVAL and EVALSHA), from INFO commandstats.
fn script_calls(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
