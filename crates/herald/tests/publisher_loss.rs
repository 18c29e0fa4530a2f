//! Publisher-side loss detection (issue 14): a publisher that alone saw writes the broker then
//! lost makes the loss known, so a durable subscriber that was offline meanwhile is told.
//!
//! Redis: the two-server reproduction (primary P with replica R; R frozen and cut off; P
//! acknowledges lost6..lost8; P killed; R promoted) with one publishing handle that follows
//! the switch through one address (a proxy pointed at P, then at R), and no subscriber reading
//! during the loss. Embedded: the same with `EmbeddedBroker::fail_over`.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::time::Duration;

use herald::{EmbeddedBroker, Event, GapReason, Herald, Position, Start, Subscription};
use support::proxy::FaultProxy;
use support::{maybe_event, next_event, signal, wait_until, RedisServer};

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

/// A reader from `sub`'s start, at m5 of `e1`: the Lost gap 6..=8 of `e1`, then new6.
async fn expect_reported_loss(sub: &mut Subscription, e1: u64, e2: u64) {
    match next_event(sub).await {
        Event::Gap {
            epoch,
            from,
            to,
            reason,
            ..
        } => assert_eq!((epoch, from, to, reason), (e1, 6, 8, GapReason::Lost)),
        other => panic!("expected a Lost gap naming 6..=8, got {other:?}"),
    }
    expect_messages(sub, &[("new6", e2, 6)]).await;
    if let Some(e) = maybe_event(sub, Duration::from_millis(500)).await {
        panic!("unexpected event {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publisher_alone_saw_the_lost_writes_and_reports_them() {
    let mut p = RedisServer::start();
    let r = RedisServer::start();
    let _: () = r.cmd(&["REPLICAOF", "127.0.0.1", &p.port.to_string()]);
    wait_until("the replica is in sync", Duration::from_secs(10), || {
        r.info_field("replication", "master_link_status") == "up"
    });
    let proxy = FaultProxy::start(p.port).await;
    let node = |id: &'static str| {
        Herald::builder()
            .node_id(id)
            .redis(proxy.url())
            .poll_interval(Duration::from_millis(100))
            .operation_timeout(Duration::from_secs(10))
            .connect()
    };
    let publisher = node("pub").await.unwrap();

    // A durable subscriber reads m1..m5, commits m5, goes offline.
    {
        let reader = node("reader").await.unwrap();
        let mut sub = reader
            .subscribe(["t"])
            .durable("d")
            .from(Start::Latest)
            .await
            .unwrap();
        for i in 1..=5 {
            publisher.publish("t", format!("m{i}")).await.unwrap();
        }
        let mut at = None;
        for _ in 1..=5 {
            if let Event::Message(d) = next_event(&mut sub).await {
                at = Some(d.position);
            }
        }
        sub.commit_position("t", at.unwrap()).await.unwrap();
    }
    wait_until(
        "m5 and the cursor reach the replica",
        Duration::from_secs(10),
        || {
            let last: Option<String> = r.cmd(&["HGET", "herald:{t}:meta", "last"]);
            let cursors: u64 = r.cmd(&["DBSIZE"]);
            last.as_deref() == Some("5") && cursors > 0
        },
    );
    let r_pid = r.info_field("server", "process_id");
    signal(&r_pid, "-STOP");
    let _: u64 = p.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    let mut lost = Vec::new();
    for i in 6..=8 {
        lost.push(publisher.publish("t", format!("lost{i}")).await.unwrap());
    }
    let e1 = lost[0].position.epoch;
    assert_eq!(lost[2].position, Position::new(e1, 8));
    p.kill9();
    signal(&r_pid, "-CONT");
    let _: () = r.cmd(&["REPLICAOF", "NO", "ONE"]);
    proxy.retarget(r.port);

    // The same handle publishes again: the log continues on R under a new epoch from 6, and
    // the handle, acknowledged up to 8 of e1, reports 6..=8 of e1 as lost.
    let new6 = publisher.publish("t", "new6").await.unwrap();
    let e2 = new6.position.epoch;
    assert!(e2 > e1);
    assert_eq!(new6.position, Position::new(e2, 6));
    let mut history: Vec<(String, String)> = r.cmd(&["HGETALL", "herald:{t}:epochs"]);
    history.sort();
    assert_eq!(
        history,
        vec![
            (e1.to_string(), "1:8".to_string()),
            (e2.to_string(), "6".to_string())
        ],
        "the loss is recorded once"
    );

    // The durable subscriber, resumed at m5, is told.
    let reader = node("reader-again").await.unwrap();
    let mut sub = reader.subscribe(["t"]).durable("d").await.unwrap();
    expect_reported_loss(&mut sub, e1, e2).await;
    // A second publish changes nothing more.
    publisher.publish("t", "new7").await.unwrap();
    let after: u64 = r.cmd(&["HLEN", "herald:{t}:epochs"]);
    assert_eq!(after, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_publisher_alone_saw_the_lost_writes_and_reports_them() {
    let broker = EmbeddedBroker::new();
    let n = Herald::builder()
        .embedded(broker.clone())
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 1..=8 {
        receipts.push(n.publish("t", format!("m{i}")).await.unwrap());
    }
    let e1 = receipts[0].position.epoch;
    // Nobody reads; the broker keeps 1..=5 and changes writer.
    broker.fail_over("t", 5);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new6 = n.publish("t", "new6").await.unwrap();
    let e2 = new6.position.epoch;
    assert!(e2 > e1);
    assert_eq!(new6.position.offset, 6);
    let mut sub = n.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=5u64 {
        expect_messages(&mut sub, &[(&format!("m{i}"), e1, i)]).await;
    }
    expect_reported_loss(&mut sub, e1, e2).await;
}

/// Two servers: P with a replica R that is frozen and cut off before the topic exists, so R
/// never receives any of it (nor the cursor committed on P). `prepare` runs on P before the
/// writes that R will miss.
struct Unreplicated {
    p: RedisServer,
    r: RedisServer,
    proxy: FaultProxy,
    r_pid: String,
}

impl Unreplicated {
    async fn start() -> Self {
        let p = RedisServer::start();
        let r = RedisServer::start();
        let _: () = r.cmd(&["REPLICAOF", "127.0.0.1", &p.port.to_string()]);
        wait_until("the replica is in sync", Duration::from_secs(10), || {
            r.info_field("replication", "master_link_status") == "up"
        });
        let proxy = FaultProxy::start(p.port).await;
        let r_pid = r.info_field("server", "process_id");
        Unreplicated { p, r, proxy, r_pid }
    }

    fn cut_off(&self) {
        signal(&self.r_pid, "-STOP");
        let _: u64 = self.p.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    }

    /// kill -9 P, promote R, point the proxy at R.
    fn fail_over(&mut self) {
        self.p.kill9();
        signal(&self.r_pid, "-CONT");
        let _: () = self.r.cmd(&["REPLICAOF", "NO", "ONE"]);
        self.proxy.retarget(self.r.port);
    }

    async fn node(&self, id: &str) -> Herald {
        Herald::builder()
            .node_id(id)
            .redis(self.proxy.url())
            .poll_interval(Duration::from_millis(100))
            .operation_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    }

    fn history(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self.r.cmd(&["HGETALL", "herald:{t}:epochs"]);
        h.sort();
        h
    }
}

async fn expect_lost_gap(sub: &mut Subscription, epoch: u64, from: u64, to: u64) {
    match next_event(sub).await {
        Event::Gap {
            epoch: e,
            from: f,
            to: t,
            reason,
            ..
        } => assert_eq!((e, f, t, reason), (epoch, from, to, GapReason::Lost)),
        other => panic!("expected a Lost gap naming {epoch}:{from}..={to}, got {other:?}"),
    }
}

async fn expect_quiet(sub: &mut Subscription) {
    if let Some(e) = maybe_event(sub, Duration::from_millis(500)).await {
        panic!("unexpected event {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_promoted_replica_that_never_had_the_topic_still_reports_the_lost_epoch() {
    let mut s = Unreplicated::start().await;
    s.cut_off();
    let publisher = s.node("pub").await;
    let mut receipts = Vec::new();
    for i in 1..=5 {
        receipts.push(publisher.publish("t", format!("m{i}")).await.unwrap());
    }
    let e1 = receipts[0].position.epoch;
    assert_eq!(receipts[4].position, Position::new(e1, 5));
    // A durable subscriber reads them all and commits (on P only: the cursor is lost too).
    {
        let reader = s.node("reader").await;
        let mut sub = reader
            .subscribe(["t"])
            .durable("d")
            .from(Start::Earliest)
            .await
            .unwrap();
        for i in 1..=5u64 {
            expect_messages(&mut sub, &[(&format!("m{i}"), e1, i)]).await;
        }
        sub.commit_position("t", Position::new(e1, 5))
            .await
            .unwrap();
    }
    s.fail_over();

    // R has no log: the same handle's publish starts a fresh epoch at offset 1, and the
    // handle, acknowledged up to 5 of e1, reports e1 as lost from 1 to 5.
    let new1 = publisher.publish("t", "new1").await.unwrap();
    let e2 = new1.position.epoch;
    assert_eq!(new1.position.offset, 1);
    assert!(e2 > e1);
    assert_eq!(
        s.history(),
        vec![
            (e1.to_string(), "1:5".to_string()),
            (e2.to_string(), "1".to_string())
        ],
        "the lost epoch is recorded, empty, before the new one"
    );

    // A fresh reader from the start, and the durable subscriber (its cursor gone), are told.
    let reader = s.node("fresh").await;
    let mut fresh = reader.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    expect_lost_gap(&mut fresh, e1, 1, 5).await;
    expect_messages(&mut fresh, &[("new1", e2, 1)]).await;
    expect_quiet(&mut fresh).await;
    let mut durable = reader
        .subscribe(["t"])
        .durable("d")
        .from(Start::Earliest)
        .await
        .unwrap();
    expect_lost_gap(&mut durable, e1, 1, 5).await;
    expect_messages(&mut durable, &[("new1", e2, 1)]).await;

    // Reporting again (another publish, another handle) changes nothing.
    publisher.publish("t", "new2").await.unwrap();
    let other = s.node("pub-2").await;
    other.publish("t", "new3").await.unwrap();
    assert_eq!(s.history().len(), 2);
    expect_messages(&mut fresh, &[("new2", e2, 2), ("new3", e2, 3)]).await;
    expect_quiet(&mut fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_epoch_opened_by_the_old_primary_alone_is_reported_between_the_known_ones() {
    let mut s = Unreplicated::start().await;
    let publisher = s.node("pub").await;
    let mut receipts = Vec::new();
    for i in 1..=5 {
        receipts.push(publisher.publish("t", format!("m{i}")).await.unwrap());
    }
    let e1 = receipts[0].position.epoch;
    wait_until("m5 reaches the replica", Duration::from_secs(10), || {
        let last: Option<String> = s.r.cmd(&["HGET", "herald:{t}:meta", "last"]);
        last.as_deref() == Some("5")
    });
    s.cut_off();
    // P opens an epoch R never sees (as a writer change on P would), and acknowledges 6, 7.
    let _: u64 =
        s.p.cmd(&["HSET", "herald:{t}:meta", "writer", "another-process"]);
    let lost6 = publisher.publish("t", "lost6").await.unwrap();
    let lost7 = publisher.publish("t", "lost7").await.unwrap();
    let e2 = lost6.position.epoch;
    assert!(e2 > e1);
    assert_eq!(lost7.position, Position::new(e2, 7));
    s.fail_over();

    // R continues e1's log from 6 under e3; the handle reports (e2, 7), which R never held.
    let new6 = publisher.publish("t", "new6").await.unwrap();
    let e3 = new6.position.epoch;
    assert!(e3 > e2);
    assert_eq!(new6.position.offset, 6);
    assert_eq!(
        s.history(),
        vec![
            (e1.to_string(), "1".to_string()),
            (e2.to_string(), "6:7".to_string()),
            (e3.to_string(), "6".to_string())
        ]
    );
    let reader = s.node("fresh").await;
    let mut sub = reader.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=5u64 {
        expect_messages(&mut sub, &[(&format!("m{i}"), e1, i)]).await;
    }
    expect_lost_gap(&mut sub, e2, 6, 7).await;
    expect_messages(&mut sub, &[("new6", e3, 6)]).await;
    expect_quiet(&mut sub).await;
    // A reader starting at 6 begins in the lost epoch, and is told too.
    let mut at6 = reader
        .subscribe(["t"])
        .from(Start::Offset(6))
        .await
        .unwrap();
    expect_lost_gap(&mut at6, e2, 6, 7).await;
    expect_messages(&mut at6, &[("new6", e3, 6)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_lost_entirely_the_publisher_reports_the_lost_epoch() {
    let broker = EmbeddedBroker::new();
    let n = Herald::builder()
        .embedded(broker.clone())
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 1..=5 {
        receipts.push(n.publish("t", format!("m{i}")).await.unwrap());
    }
    let e1 = receipts[0].position.epoch;
    // Nobody reads; the broker forgets everything (a restart without persistence).
    broker.clear();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new1 = n.publish("t", "new1").await.unwrap();
    let e2 = new1.position.epoch;
    assert!(e2 > e1);
    assert_eq!(new1.position.offset, 1);
    let mut sub = n.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    expect_lost_gap(&mut sub, e1, 1, 5).await;
    expect_messages(&mut sub, &[("new1", e2, 1)]).await;
    expect_quiet(&mut sub).await;
}
