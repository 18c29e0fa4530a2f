//! Membership, acknowledgement through cursors and lag (docs/DESIGN.md, issue 6): the behaviours
//! run against the embedded broker and a real Redis; restarts run against real Redis only.
//! Every wait is bounded.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;
use support::on_both_backends;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald::{Acks, Event, Herald, MemberEvent, MemberWatch, Membership, Position, Start};
use support::{Backend, RedisServer};

/// The longest any single expected thing may take.
const WAIT: Duration = Duration::from_secs(15);

on_both_backends!(
    join_list_watch_leave,
    dropped_member_expires_once,
    wait_for_all_and_laggard,
    expiring_member_is_reported_not_waited_for,
    members_are_rebuilt_by_heartbeats_after_loss,
    lag_reports_cursors,
    bad_names_are_rejected,
);

/// The next membership event, failing the test after [`WAIT`].
async fn next(watch: &mut MemberWatch) -> MemberEvent {
    match tokio::time::timeout(WAIT, watch.next_event()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no membership event within {WAIT:?}"),
    }
}

/// Waits (bounded) until `group` has exactly the members `ids`.
async fn until_members(node: &Herald, group: &str, ids: &[&str]) -> Vec<herald::Member> {
    let want: BTreeSet<&str> = ids.iter().copied().collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let members = node.members(group).await.unwrap();
        let got: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
        if got == want {
            return members;
        }
        assert!(
            Instant::now() < deadline,
            "members of {group}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn join_list_watch_leave(b: Backend) {
    let a = b.node("node-a").await;
    let c = b.node("node-c").await;
    let mut watch = c.watch_members("web").await.unwrap();
    assert_eq!(next(&mut watch).await, MemberEvent::Snapshot(Vec::new()));

    let ma = a
        .join("web")
        .meta("address", "10.0.0.1:80")
        .meta("version", "2.3")
        .await
        .unwrap();
    assert_eq!(ma.id(), "node-a");
    let mc = c.join("web").id("custom-id").await.unwrap();
    let members = c.members("web").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].id, "custom-id");
    assert_eq!(members[1].id, "node-a");
    assert_eq!(members[1].meta["address"], "10.0.0.1:80");
    assert_eq!(members[1].meta["version"], "2.3");
    assert_eq!(a.member_groups().await.unwrap(), ["web"]);

    match next(&mut watch).await {
        MemberEvent::Joined(m) => assert_eq!((m.id.as_str(), m.meta.len()), ("node-a", 2)),
        other => panic!("expected Joined, got {other:?}"),
    }
    assert!(matches!(next(&mut watch).await, MemberEvent::Joined(m) if m.id == "custom-id"));

    ma.leave().await.unwrap();
    assert!(matches!(next(&mut watch).await, MemberEvent::Left(m) if m.id == "node-a"));
    until_members(&c, "web", &["custom-id"]).await;

    // A late watcher learns the current membership from its snapshot, not from history.
    let mut late = a.watch_members("web").await.unwrap();
    match next(&mut late).await {
        MemberEvent::Snapshot(m) => assert_eq!(m.len(), 1),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    mc.leave().await.unwrap();
    assert!(matches!(next(&mut late).await, MemberEvent::Left(m) if m.id == "custom-id"));
    assert!(c.members("web").await.unwrap().is_empty());
}

async fn dropped_member_expires_once(b: Backend) {
    let watcher = b.node("watcher").await;
    let mut watch = watcher.watch_members("cache").await.unwrap();
    next(&mut watch).await; // snapshot
                            // Two live members reap concurrently: the expiry must still be announced once.
    let keep1 = b
        .node("keep-1")
        .await
        .join("cache")
        .ttl(Duration::from_secs(3))
        .await
        .unwrap();
    let keep2 = b
        .node("keep-2")
        .await
        .join("cache")
        .ttl(Duration::from_secs(3))
        .await
        .unwrap();
    let doomed_node = b.node("doomed").await;
    let doomed = doomed_node
        .join("cache")
        .ttl(Duration::from_millis(400))
        .await
        .unwrap();
    let joined_at = doomed.joined_at_ms();
    for _ in 0..3 {
        assert!(matches!(next(&mut watch).await, MemberEvent::Joined(_)));
    }
    drop(doomed); // as kill -9 would: no leave
    match next(&mut watch).await {
        MemberEvent::Expired(m) => {
            assert_eq!(m.id, "doomed");
            assert_eq!(m.joined_at_ms, joined_at);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    until_members(&watcher, "cache", &["keep-1", "keep-2"]).await;
    // No second Expired (nor anything else) for the same incarnation.
    if let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(1500), watch.next_event()).await
    {
        panic!("unexpected event after the expiry: {e:?}");
    }
    drop((keep1, keep2));
}

/// A member that applies every message of `topic` and commits its cursor, unless paused.
fn applier(
    node: Herald,
    member: &Membership,
    topic: &'static str,
    paused: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let id = member.id().to_string();
    tokio::spawn(async move {
        let mut sub = node
            .subscribe([topic])
            .durable(id)
            .from(Start::Earliest)
            .await
            .unwrap();
        while let Some(Ok(Event::Message(d))) = sub.next_event().await {
            let mut paused = paused.clone();
            while *paused.borrow_and_update() {
                if paused.changed().await.is_err() {
                    return;
                }
            }
            sub.commit(&d).await.unwrap();
        }
    })
}

async fn wait_for_all_and_laggard(b: Backend) {
    let publisher = b.node("publisher").await;
    let (run_tx, run_rx) = tokio::sync::watch::channel(false);
    let (pause_tx, pause_rx) = tokio::sync::watch::channel(false);
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for id in ["web-1", "web-2", "web-3"] {
        let node = b.node(id).await;
        let m = node.join("web").ttl(Duration::from_secs(10)).await.unwrap();
        let rx = if id == "web-3" {
            pause_rx.clone()
        } else {
            run_rx.clone()
        };
        tasks.push(applier(node, &m, "config", rx));
        members.push(m);
    }

    let v1 = publisher.publish("config", "v1").await.unwrap();
    let report = publisher
        .wait_for_acks(&v1, "web")
        .timeout(WAIT)
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.acked, ["web-1", "web-2", "web-3"]);
    assert!(report.pending.is_empty() && report.expired.is_empty());

    // web-3 is paused: the wait times out and names it.
    pause_tx.send(true).unwrap();
    let v2 = publisher.publish("config", "v2").await.unwrap();
    let started = Instant::now();
    let report = publisher
        .wait_for_acks(&v2, "web")
        .acks(Acks::All)
        .timeout(Duration::from_millis(800))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!report.complete, "{report:?}");
    assert_eq!(report.acked, ["web-1", "web-2"]);
    assert_eq!(report.pending, ["web-3"]);
    // Two out of three is enough when asked for two.
    let report = publisher
        .wait_for_acks(&v2, "web")
        .acks(Acks::Count(2))
        .timeout(WAIT)
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    let report = publisher
        .publish_and_wait("config", "v2b", "web")
        .wait_for(Acks::Count(2))
        .timeout(WAIT)
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.position.offset, v2.position.offset + 1);
    assert!(!report.acked.contains(&"web-3".to_string()));

    // Members joining after the publish are not waited for, whether they join before the
    // wait starts or during it.
    let v3 = publisher.publish("config", "v3").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let early = b.node("web-early").await.join("web").await.unwrap();
    let waiting = tokio::spawn({
        let publisher = publisher.clone();
        async move { publisher.wait_for_acks(&v3, "web").timeout(WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = b.node("web-late").await.join("web").await.unwrap();
    pause_tx.send(false).unwrap();
    let report = tokio::time::timeout(WAIT * 2, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.acked, ["web-1", "web-2", "web-3"]);
    drop((early, late, members, run_tx));
    for t in tasks {
        t.abort();
    }
}

async fn expiring_member_is_reported_not_waited_for(b: Backend) {
    let publisher = b.node("publisher").await;
    let live = publisher
        .join("ops")
        .ttl(Duration::from_secs(3))
        .await
        .unwrap();
    let dying = b
        .node("dying")
        .await
        .join("ops")
        .ttl(Duration::from_millis(400))
        .await
        .unwrap();
    let receipt = publisher.publish("flush", "all").await.unwrap();
    publisher
        .commit("flush", live.id(), receipt.position)
        .await
        .unwrap();
    drop(dying);
    let started = Instant::now();
    let report = publisher
        .wait_for_acks(&receipt, "ops")
        .timeout(WAIT)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{report:?}");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.acked, ["publisher"]);
    assert_eq!(report.expired, ["dying"]);
    assert!(report.pending.is_empty());
    drop(live);
}

async fn members_are_rebuilt_by_heartbeats_after_loss(mut b: Backend) {
    let node = b.node("survivor").await;
    let m = node
        .join("grp")
        .ttl(Duration::from_millis(900))
        .await
        .unwrap();
    let before = m.joined_at_ms();
    b.lose_everything();
    let deadline = Instant::now() + WAIT;
    loop {
        let members = node.members("grp").await.unwrap();
        if let Some(s) = members.iter().find(|s| s.id == "survivor") {
            assert!(s.joined_at_ms >= before);
            break;
        }
        assert!(Instant::now() < deadline, "the member was not rebuilt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The rejoin is announced on the (new epoch of the) event topic, after the report of the
    // lost epoch (the handle had published the first join there: it reports the loss).
    let mut sub = node
        .subscribe(["__members/grp"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let mut event = support::next_event(&mut sub).await;
    if let Event::Gap { reason, .. } = &event {
        assert_eq!(*reason, herald::GapReason::Lost, "{event:?}");
        event = support::next_event(&mut sub).await;
    }
    match event {
        Event::Message(d) => assert!(matches!(
            MemberEvent::from_delivery(&d),
            Some(MemberEvent::Joined(j)) if j.id == "survivor"
        )),
        other => panic!("expected the Joined event, got {other:?}"),
    }
    m.leave().await.unwrap();
}

async fn lag_reports_cursors(b: Backend) {
    let node = b.node("n").await;
    for i in 0..5 {
        node.publish("t", format!("{i}")).await.unwrap();
    }
    let r = node.publish("t", "last").await.unwrap();
    node.commit("t", "slow", Position::new(r.position.epoch, 2))
        .await
        .unwrap();
    node.commit("t", "fast", r.position).await.unwrap();
    let lag = node.lag("t").await.unwrap();
    assert_eq!(lag.len(), 2);
    assert_eq!((lag[0].cursor.as_str(), lag[0].lag), ("fast", 0));
    assert_eq!(
        (lag[1].cursor.as_str(), lag[1].lag, lag[1].position.offset),
        ("slow", 4, 2)
    );
    assert_eq!(lag[1].last_offset, 6);
    assert!(lag[1].age_ms < 60_000);
    assert!(node.lag("empty").await.unwrap().is_empty());
}

async fn bad_names_are_rejected(b: Backend) {
    let node = b.node("n").await;
    assert!(node.join("bad group").await.is_err());
    assert!(node.join("").await.is_err());
    assert!(node.join("g").id("bad id").await.is_err());
    assert!(node.join("g").ttl(Duration::from_millis(1)).await.is_err());
    assert!(node.members("a*b").await.is_err());
    assert!(node.join("g".repeat(191)).await.is_err());
    assert!(node.members("g").await.unwrap().is_empty());
}

/// A member on a Redis that is killed and restarted: with persistence the same incarnation
/// is still listed right after the restart; without it, heartbeats rebuild it as a new one.
async fn restart(persistent: bool) {
    let mut server = if persistent {
        RedisServer::start_persistent()
    } else {
        RedisServer::start()
    };
    let node = Herald::builder()
        .node_id("member")
        .redis(server.url())
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    // A long time to live, heartbeats far apart: what is listed right after the restart
    // comes from Redis's persistence, not from a heartbeat.
    let m = node
        .join("cluster")
        .ttl(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_secs(3))
        .await
        .unwrap();
    let joined_at = m.joined_at_ms();
    server.kill9();
    server.restart();
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        match node.members("cluster").await {
            Ok(members) if persistent || !members.is_empty() => break members,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no members listed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "member");
    if persistent {
        assert_eq!(
            listed[0].joined_at_ms, joined_at,
            "the same incarnation survived"
        );
        assert_eq!(m.joined_at_ms(), joined_at);
    } else {
        let rebuilt = listed[0].joined_at_ms;
        assert!(rebuilt > joined_at, "a new incarnation was rebuilt");
        // The listing may show the record the heartbeat wrote before its reply reaches the
        // heartbeat; the handle then names that incarnation, and no other rebuild follows.
        until_handle_names(&m, rebuilt).await;
        let again = node.members("cluster").await.unwrap();
        assert_eq!(
            again.iter().map(|m| m.joined_at_ms).collect::<Vec<_>>(),
            [rebuilt],
            "one rebuild"
        );
    }
    m.leave().await.unwrap();
    assert!(node.members("cluster").await.unwrap().is_empty());
}

/// Waits (bounded) until the handle names the incarnation `joined_at_ms`.
async fn until_handle_names(m: &Membership, joined_at_ms: u64) {
    let deadline = Instant::now() + WAIT;
    while m.joined_at_ms() != joined_at_ms {
        assert!(
            Instant::now() < deadline,
            "the handle names incarnation {}, the broker holds {joined_at_ms}",
            m.joined_at_ms()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node with member `member` of group `g` on `server`, heartbeating every 50 ms.
async fn fast_heartbeating_member(server: &RedisServer) -> (Herald, Membership) {
    let node = Herald::builder()
        .node_id("member")
        .redis(server.url())
        .connect()
        .await
        .unwrap();
    let m = node
        .join("g")
        .ttl(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_millis(50))
        .await
        .unwrap();
    (node, m)
}

/// A heartbeat that re-creates a lost record but cannot announce it (here the event topic
/// holds a foreign key, so publishing fails): the handle still names the record the broker
/// lists, and `leave` removes that record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_names_a_rebuilt_record_even_if_its_announcement_fails() {
    let server = RedisServer::start();
    let (node, m) = fast_heartbeating_member(&server).await;
    let first = m.joined_at_ms();
    let _: () = server.cmd(&["SET", "herald:{__members/g}:settings", "foreign"]);
    let _: () = server.cmd(&["HDEL", "herald:{__members/g}:members", "member"]);
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let members = node.members("g").await.unwrap();
        if let Some(l) = members.iter().find(|l| l.joined_at_ms != first) {
            break l.joined_at_ms;
        }
        assert!(Instant::now() < deadline, "the record was not rebuilt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    until_handle_names(&m, listed).await;
    let _: () = server.cmd(&["DEL", "herald:{__members/g}:settings"]);
    m.leave().await.unwrap();
    assert!(node.members("g").await.unwrap().is_empty());
}

/// A heartbeat whose JOIN finds a live record of another incarnation (an earlier attempt
/// created it, but its reply was lost, so the retry found it alive; here the test writes
/// it): the member adopts it and announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_announces_an_incarnation_created_by_a_lost_attempt() {
    let server = RedisServer::start();
    let (node, m) = fast_heartbeating_member(&server).await;
    let other = m.joined_at_ms() + 1;
    let record = format!(
        r#"{{"joined_at_ms":{other},"heartbeat_ms":{other},"expires_at_ms":{},"ttl_ms":30000,"meta":{{}}}}"#,
        other + 30_000
    );
    let _: () = server.cmd(&["HSET", "herald:{__members/g}:members", "member", &record]);
    let _: () = server.cmd(&[
        "ZADD",
        "herald:{__members/g}:expiry",
        &(other + 30_000).to_string(),
        "member",
    ]);
    until_handle_names(&m, other).await;
    let mut sub = node
        .subscribe(["__members/g"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "incarnation {other} was not announced"
        );
        if let Event::Message(d) = support::next_event(&mut sub).await {
            if matches!(MemberEvent::from_delivery(&d), Some(MemberEvent::Joined(j)) if j.joined_at_ms == other)
            {
                break;
            }
        }
    }
    m.leave().await.unwrap();
    assert!(node.members("g").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_survives_a_restart_with_persistence() {
    restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_is_rebuilt_after_a_restart_without_persistence() {
    restart(false).await;
}
