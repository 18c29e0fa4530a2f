//! Failover consistency (protocol 3): an (epoch, offset) never names two messages, and writes
//! lost in a failover are reported to every subscriber that crosses the loss.
//!
//! The Redis tests reproduce a crash failover with two plain servers: a primary P and its
//! replica R; R is frozen (`kill -STOP`) and cut off, P acknowledges writes R never gets, P is
//! killed, and R is promoted (`REPLICAOF NO ONE`).

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::time::Duration;

use herald::{EmbeddedBroker, Event, GapReason, Herald, Position, Receipt, Start, Subscription};
use support::{maybe_event, next_event, signal, wait_until, RedisServer};

async fn node(url: String, id: &str) -> Herald {
    Herald::builder()
        .node_id(id)
        .redis(url)
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap()
}

/// P with m1..m5 replicated to R, then lost6..lost8 acknowledged by P alone, P killed, R
/// promoted. Returns R and the receipts of lost6..lost8.
async fn crash_failover() -> (RedisServer, Vec<Receipt>) {
    let mut p = RedisServer::start();
    let r = RedisServer::start();
    let _: () = r.cmd(&["REPLICAOF", "127.0.0.1", &p.port.to_string()]);
    wait_until("the replica is in sync", Duration::from_secs(10), || {
        r.info_field("replication", "master_link_status") == "up"
    });
    let hp = node(p.url(), "on-p").await;
    for i in 1..=5 {
        hp.publish("t", format!("m{i}")).await.unwrap();
    }
    wait_until("m5 reaches the replica", Duration::from_secs(10), || {
        let last: Option<String> = r.cmd(&["HGET", "herald:{t}:meta", "last"]);
        last.as_deref() == Some("5")
    });
    let r_pid = r.info_field("server", "process_id");
    signal(&r_pid, "-STOP");
    let _: u64 = p.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    let mut lost = Vec::new();
    for i in 6..=8 {
        lost.push(hp.publish("t", format!("lost{i}")).await.unwrap());
    }
    drop(hp);
    p.kill9();
    signal(&r_pid, "-CONT");
    let _: () = r.cmd(&["REPLICAOF", "NO", "ONE"]);
    (r, lost)
}

/// Sets the durable cursor `name` of topic `t` on `node` to `at`.
async fn commit_cursor(node: &Herald, name: &str, at: Position) {
    let sub = node
        .subscribe(["t"])
        .durable(name)
        .from(Start::Latest)
        .await
        .unwrap();
    sub.commit_position("t", at).await.unwrap();
}

async fn expect_messages(sub: &mut Subscription, want: &[(&str, u64, u64)]) {
    for &(payload, epoch, offset) in want {
        match next_event(sub).await {
            Event::Message(d) => assert_eq!(
                (String::from_utf8_lossy(&d.payload).as_ref(), d.position),
                (payload, Position::new(epoch, offset))
            ),
            other => panic!("expected {payload}, got {other:?}"),
        }
    }
}

async fn expect_quiet(sub: &mut Subscription) {
    if let Some(e) = maybe_event(sub, Duration::from_millis(500)).await {
        panic!("unexpected event {e:?}");
    }
}

fn epoch_history(server: &RedisServer) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = server.cmd(&["HGETALL", "herald:{t}:epochs"]);
    h.sort();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_failover_gives_new_writes_a_new_epoch_and_resets_who_saw_the_lost_ones() {
    let (r, lost) = crash_failover().await;
    let e1 = lost[0].position.epoch;
    assert_eq!(
        lost.iter().map(|x| x.position).collect::<Vec<_>>(),
        (6..=8).map(|o| Position::new(e1, o)).collect::<Vec<_>>()
    );
    let hr = node(r.url(), "on-r").await;
    // A consumer had committed lost8 (its commit reached R: e.g. it commits late, after the
    // failover).
    commit_cursor(&hr, "late", Position::new(e1, 8)).await;

    let mut fresh = Vec::new();
    for i in 6..=8 {
        fresh.push(hr.publish("t", format!("new{i}")).await.unwrap());
    }
    let e2 = fresh[0].position.epoch;
    assert!(e2 > e1, "new writes get a new epoch: {e1} then {e2}");
    assert_eq!(
        fresh.iter().map(|x| x.position).collect::<Vec<_>>(),
        (6..=8).map(|o| Position::new(e2, o)).collect::<Vec<_>>(),
        "the log continues after the last offset that survived"
    );

    // A subscriber that never saw the lost writes: 1..5, then the new ones, no Reset.
    let mut plain = hr.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    let before: Vec<(String, u64, u64)> = (1..=5).map(|i| (format!("m{i}"), e1, i)).collect();
    let before: Vec<(&str, u64, u64)> = before
        .iter()
        .map(|(p, e, o)| (p.as_str(), *e, *o))
        .collect();
    expect_messages(&mut plain, &before).await;
    expect_messages(
        &mut plain,
        &[("new6", e2, 6), ("new7", e2, 7), ("new8", e2, 8)],
    )
    .await;
    expect_quiet(&mut plain).await;

    // The durable cursor at lost8, resumed: a Reset naming 6..=8 of e1, then the new ones.
    let mut late = hr.subscribe(["t"]).durable("late").await.unwrap();
    match next_event(&mut late).await {
        Event::Reset {
            last_delivered,
            epoch,
            lost_from,
            ..
        } => assert_eq!(
            (last_delivered, epoch, lost_from),
            (Position::new(e1, 8), e2, 6)
        ),
        other => panic!("expected a Reset, got {other:?}"),
    }
    expect_messages(
        &mut late,
        &[("new6", e2, 6), ("new7", e2, 7), ("new8", e2, 8)],
    )
    .await;
    expect_quiet(&mut late).await;

    // The resumed cursor reported the loss: a later reader crossing from e1 into e2 learns
    // that e1's offsets 6..=8 were acknowledged and lost.
    let mut later = hr.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    expect_messages(&mut later, &before).await;
    match next_event(&mut later).await {
        Event::Gap {
            epoch,
            from,
            to,
            reason,
            ..
        } => assert_eq!((epoch, from, to, reason), (e1, 6, 8, GapReason::Lost)),
        other => panic!("expected a Lost gap, got {other:?}"),
    }
    expect_messages(
        &mut later,
        &[("new6", e2, 6), ("new7", e2, 7), ("new8", e2, 8)],
    )
    .await;
    expect_quiet(&mut later).await;
    assert_eq!(
        epoch_history(&r),
        vec![
            (e1.to_string(), "1:8".to_string()),
            (e2.to_string(), "6".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_detecting_one_loss_at_once_make_one_record() {
    let (r, lost) = crash_failover().await;
    let e1 = lost[0].position.epoch;
    let (a, b) = (node(r.url(), "a").await, node(r.url(), "b").await);
    commit_cursor(&a, "ca", Position::new(e1, 8)).await;
    commit_cursor(&b, "cb", Position::new(e1, 7)).await;
    // Both resume before anything is published on R: both see the log end at 5 under e1.
    let (sa, sb) = tokio::join!(
        a.subscribe(["t"]).durable("ca").start(),
        b.subscribe(["t"]).durable("cb").start()
    );
    let (mut sa, mut sb) = (sa.unwrap(), sb.unwrap());
    let (ra, rb) = tokio::join!(next_event(&mut sa), next_event(&mut sb));
    let (
        Event::Reset {
            last_delivered: la,
            epoch: ea,
            lost_from: fa,
            ..
        },
        Event::Reset {
            last_delivered: lb,
            epoch: eb,
            lost_from: fb,
            ..
        },
    ) = (ra, rb)
    else {
        panic!("expected two Resets");
    };
    assert_eq!(
        (la, fa, lb, fb),
        (Position::new(e1, 8), 6, Position::new(e1, 7), 6)
    );
    assert_eq!(ea, eb, "one epoch change");
    assert!(ea > e1);
    let history = epoch_history(&r);
    assert_eq!(
        history,
        vec![
            (e1.to_string(), "1:8".to_string()),
            (ea.to_string(), "6".to_string())
        ],
        "one boundary, one record of the loss"
    );
    // New writes continue the new epoch (R opened it: no further change).
    let new6 = a.publish("t", "new6").await.unwrap();
    assert_eq!(new6.position, Position::new(ea, 6));
    expect_messages(&mut sa, &[("new6", ea, 6)]).await;
    expect_messages(&mut sb, &[("new6", ea, 6)]).await;
    assert_eq!(epoch_history(&r).len(), 2);
}

/// The same boundary cases on the embedded broker, with a subscriber live across the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_fail_over_resets_only_who_saw_the_lost_writes() {
    let broker = EmbeddedBroker::new();
    let n = Herald::builder()
        .embedded(broker.clone())
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut saw_all = n.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    let mut receipts = Vec::new();
    for i in 1..=8 {
        receipts.push(n.publish("t", format!("m{i}")).await.unwrap());
    }
    let e1 = receipts[0].position.epoch;
    for i in 1..=8u64 {
        expect_messages(&mut saw_all, &[(&format!("m{i}"), e1, i)]).await;
    }
    broker.fail_over("t", 5);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new6 = n.publish("t", "new6").await.unwrap();
    let e2 = new6.position.epoch;
    assert!(e2 > e1);
    assert_eq!(new6.position.offset, 6);
    match next_event(&mut saw_all).await {
        Event::Reset {
            last_delivered,
            epoch,
            lost_from,
            ..
        } => assert_eq!(
            (last_delivered, epoch, lost_from),
            (Position::new(e1, 8), e2, 6)
        ),
        other => panic!("expected a Reset, got {other:?}"),
    }
    expect_messages(&mut saw_all, &[("new6", e2, 6)]).await;
    // A reader from the start crosses e1 -> e2: the loss the live subscriber reported is a
    // Lost gap, no Reset.
    let mut from_start = n.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=5u64 {
        expect_messages(&mut from_start, &[(&format!("m{i}"), e1, i)]).await;
    }
    match next_event(&mut from_start).await {
        Event::Gap {
            epoch,
            from,
            to,
            reason,
            ..
        } => assert_eq!((epoch, from, to, reason), (e1, 6, 8, GapReason::Lost)),
        other => panic!("expected a Lost gap, got {other:?}"),
    }
    expect_messages(&mut from_start, &[("new6", e2, 6)]).await;
    expect_quiet(&mut from_start).await;
    expect_quiet(&mut saw_all).await;
}

/// A map change sent again after the topic changed writer (a failover; the Sentinel fence
/// re-sends changes whose reply came back while the sentinels replaced the primary) is
/// answered with the revision it was given, in the epoch that wrote it, not the epoch the
/// topic runs under now. The script is called directly, so that the retry repeats the
/// change's idempotency key; the change of writer is what a promoted replica does to `writer`.
#[test]
fn a_map_change_sent_again_keeps_its_revision_across_an_epoch_change() {
    let server = RedisServer::start();
    let script = redis::Script::new(&herald::broker::MAP_SCRIPT);
    let topic = "__map/m";
    let key = |what: &str| format!("herald:{{{topic}}}:{what}");
    let mut conn = server.conn();
    let mut change = |k: &str, v: &str, idem: &str| -> (String, String, u64, u64) {
        let mut inv = script.prepare_invoke();
        for what in [
            "meta",
            "log",
            "settings",
            "dedup",
            "dedup-old",
            "epochs",
            "map",
            "map-limits",
        ] {
            inv.key(key(what));
        }
        inv.arg("2").arg(key("live")).arg("node");
        inv.arg(10_000).arg(86_400_000).arg(120_000).arg(1_048_576);
        inv.arg("PUBLISH").arg(1);
        inv.arg("PUT").arg(k).arg(v).arg("").arg(idem);
        let mut replies: Vec<(String, String, u64, u64)> = inv.invoke(&mut conn).unwrap();
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    };
    let (ok, first_epoch, offset, dup) = change("a", "1", "i1");
    assert_eq!((ok.as_str(), offset, dup), ("ok", 1, 0));
    let _: () = server.cmd(&["HSET", &key("meta"), "writer", "another-server"]);
    let (_, later_epoch, offset, dup) = change("b", "2", "i2");
    assert_eq!((offset, dup), (2, 0));
    assert!(
        later_epoch.parse::<u64>().unwrap() > first_epoch.parse::<u64>().unwrap(),
        "the change of writer opened a new epoch"
    );
    let again = change("a", "1", "i1");
    assert_eq!(
        again,
        ("ok".to_string(), first_epoch.clone(), 1, 1),
        "the change sent again names its own revision"
    );
    let stored: String = server.cmd(&["HGET", &key("map"), "a"]);
    assert_eq!(stored, format!("{first_epoch}:1:1"));
}

/// A batch of map changes (map protocol 2) on a topic without an epoch: the first append
/// opens the epoch alone, the rest follow it in that epoch, each checked against the state
/// the ones before it left; the whole call sent again gets every applied change back as a
/// duplicate, and the refused ones (which left no record) are checked again.
#[test]
fn a_batch_of_map_changes_opens_the_epoch_once_and_a_retry_gets_it_back() {
    let server = RedisServer::start();
    let script = redis::Script::new(&herald::broker::MAP_SCRIPT);
    let topic = "__map/b";
    let key = |what: &str| format!("herald:{{{topic}}}:{what}");
    let mut conn = server.conn();
    let changes = [
        ("PUT", "a", "1", "", "i1"),
        ("PUT", "a", "2", "absent", "i2"),
        ("PUT", "b", "3", "", "i3"),
        ("DEL", "a", "", "", "i4"),
        ("DEL", "a", "", "", "i5"),
    ];
    let mut call = || -> redis::Value {
        let mut inv = script.prepare_invoke();
        for what in [
            "meta",
            "log",
            "settings",
            "dedup",
            "dedup-old",
            "epochs",
            "map",
            "map-limits",
        ] {
            inv.key(key(what));
        }
        inv.arg("2").arg(key("live")).arg("node");
        inv.arg(10_000).arg(86_400_000).arg(120_000).arg(1_048_576);
        inv.arg("PUBLISH").arg(changes.len());
        for (op, k, v, expect, idem) in changes {
            inv.arg(op).arg(k).arg(v).arg(expect).arg(idem);
        }
        inv.invoke(&mut conn).unwrap()
    };
    let text = |v: &redis::Value| -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
            redis::Value::Int(n) => n.to_string(),
            other => panic!("{other:?}"),
        }
    };
    let flat = |reply: redis::Value| -> Vec<Vec<String>> {
        match reply {
            redis::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    redis::Value::Array(parts) => parts.iter().map(text).collect(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    let first = flat(call());
    let epoch = first[0][1].clone();
    let s = |x: &str| x.to_string();
    assert_eq!(
        first,
        vec![
            vec![s("ok"), epoch.clone(), s("1"), s("0")],
            vec![s("conflict"), format!("{epoch}:1")],
            vec![s("ok"), epoch.clone(), s("2"), s("0")],
            vec![s("ok"), epoch.clone(), s("3"), s("0")],
            vec![s("absent")],
        ]
    );
    let state: Vec<(String, String)> = server.cmd(&["HGETALL", &key("map")]);
    let mut state = state;
    state.sort();
    assert_eq!(
        state,
        vec![
            (s(""), format!("{epoch}:3")),
            (s("b"), format!("{epoch}:2:3")),
        ]
    );
    let last: String = server.cmd(&["HGET", &key("meta"), "last"]);
    assert_eq!(last, "3");
    let again = flat(call());
    assert_eq!(again[0], vec![s("ok"), epoch.clone(), s("1"), s("1")]);
    assert_eq!(again[2], vec![s("ok"), epoch.clone(), s("2"), s("1")]);
    assert_eq!(again[3], vec![s("ok"), epoch.clone(), s("3"), s("1")]);
    // `a` is absent now: the put-if-absent and the delete after it apply this time.
    assert_eq!(again[1], vec![s("ok"), epoch.clone(), s("4"), s("0")]);
    assert_eq!(again[4], vec![s("ok"), epoch.clone(), s("5"), s("0")]);
    let last: String = server.cmd(&["HGET", &key("meta"), "last"]);
    assert_eq!(last, "5", "the duplicates appended nothing");
}
