#![allow(clippy::unwrap_used)]
//! Least privilege (issue 5): Herald works as a Redis ACL user that may touch only its
//! namespace's keys (`~herald:*`) and channels (`&herald:*`) and run only the commands Herald
//! needs, the exact line the README shows. Anything outside the namespace is refused.
//!
//! One `redis-server` on a free 127.0.0.1 port; every wait is bounded.

use herald_testkit as support;

use std::time::Duration;

use futures::StreamExt;

use herald::{Event, Herald, Message, SettingsChange, Start};
use support::{messages, next_event, RedisServer};

/// The rules of the README's ACL line after `ACL SETUSER herald on >password`, for the
/// namespace `herald`. Keep the two in sync.
const HERALD_ACL: &str = "resetkeys ~herald:* resetchannels &herald:* -@all \
    +evalsha +eval +script|load +multi +exec +hget +hmget +hset +hsetnx +hgetall +hlen +hkeys +info +xrange +xrevrange \
    +type +scan +ping +wait +subscribe +unsubscribe +ssubscribe +sunsubscribe \
    +publish +spublish +xadd +xtrim +xlen +exists +del +hdel +rename +pexpire +time \
    +zadd +zrem +zscore +zrangebyscore +zrange +zremrangebyscore +sadd +smembers +hexists +hincrby \
    +cluster|slots +cluster|shards +readonly +asking +hello +role";

#[test]
fn readme_shows_this_acl_line() {
    let readme = include_str!("../../../README.md");
    let rules = HERALD_ACL.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = format!("ACL SETUSER herald on >PASSWORD {rules}");
    assert!(readme.contains(&line), "README lacks: {line}");
}

async fn next_job(w: &mut herald::Worker) -> herald::Job {
    match tokio::time::timeout(support::EVENT_WAIT, w.next()).await {
        Ok(Some(Ok(herald::WorkEvent::Job(j)))) => j,
        other => panic!("expected a job, got {other:?}"),
    }
}

async fn node(url: &str, id: &str, ns: &str) -> herald::Result<Herald> {
    Herald::builder()
        .node_id(id)
        .namespace(ns)
        .redis(url)
        .poll_interval(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(2))
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_runs_with_least_privilege() {
    let server = RedisServer::start();
    let mut setuser = vec!["ACL", "SETUSER", "herald", "reset", "on", ">s3cret"];
    setuser.extend(HERALD_ACL.split_whitespace());
    let _: () = server.cmd(&setuser);
    // Nobody else may do anything: the default user is switched off for this test's clients.
    let url = format!("redis://herald:s3cret@127.0.0.1:{}", server.port);

    let a = node(&url, "a", "herald").await.unwrap();
    let b = node(&url, "b", "herald").await.unwrap();

    // Settings (HSET/HMGET), a short dedup window so the window rotates (RENAME), an age
    // limit (XTRIM MINID) and a length limit (XTRIM MAXLEN).
    let mut change = SettingsChange::default();
    change.max_len = Some(50);
    change.max_age_ms = Some(60_000);
    change.dedup_window_ms = Some(50);
    a.configure("t", change).await.unwrap();

    let mut live = b.subscribe(["t"]).from(Start::Latest).await.unwrap();
    let mut durable = b.subscribe(["t"]).durable("c").await.unwrap();

    let first = a.publish("t", Message::new("m1").key("k1")).await.unwrap();
    let again = a.publish("t", Message::new("m1").key("k1")).await.unwrap();
    assert_eq!(
        first.position.offset, again.position.offset,
        "dedup within the window"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    a.publish_batch("t", (2..=60).map(|i| format!("m{i}")))
        .await
        .unwrap();

    // Live delivery (SUBSCRIBE, PUBLISH from the script) and catch-up reads (MULTI/EXEC).
    let got = messages(&mut live, 60).await;
    assert_eq!(got.first().map(|m| m.0), Some(1));
    assert_eq!(got.last().map(|m| m.1.as_str()), Some("m60"));

    // A durable subscription from the earliest retained message, and its cursor.
    let mut last = None;
    for _ in 0..60 {
        match next_event(&mut durable).await {
            Event::Message(d) => {
                let done = d.payload.as_ref() == b"m60";
                last = Some(d);
                if done {
                    break;
                }
            }
            Event::Gap { .. } => {} // trimmed to 50 before the subscription read them
            other => panic!("unexpected {other:?}"),
        }
    }
    let last = last.unwrap();
    durable.commit(&last).await.unwrap();
    let pos = b.cursor("t", "c").await.unwrap().unwrap();
    assert_eq!(pos.position.offset, 60);

    // Inspect (HGETALL of cursors), membership (its script: ZADD, ZRANGEBYSCORE, ...).
    let info = a.inspect("t").await.unwrap();
    assert_eq!(info.last_offset, 60);
    assert!(info.length >= 1);
    let m = a.join("g").id("x").await.unwrap();
    assert_eq!(a.members("g").await.unwrap().len(), 1);
    assert_eq!(a.member_groups().await.unwrap(), vec!["g".to_string()]);
    m.leave().await.unwrap();
    assert!(a.members("g").await.unwrap().is_empty());

    // Work groups (their script: claims, leases, retries, the dead-letter topic) and the
    // group state `herald groups` prints.
    let mut w = a
        .work("jobs")
        .group("g")
        .max_deliveries(2)
        .start()
        .await
        .unwrap();
    a.publish("jobs", "j1").await.unwrap();
    let job = next_job(&mut w).await;
    assert!(matches!(
        job.nak(Duration::ZERO).await.unwrap(),
        herald::Outcome::Retry { .. }
    ));
    let job = next_job(&mut w).await;
    assert!(matches!(
        job.fail("boom").await.unwrap(),
        herald::Outcome::DeadLettered { .. }
    ));
    a.publish("jobs", "j2").await.unwrap();
    assert_eq!(
        next_job(&mut w).await.ack().await.unwrap(),
        herald::Outcome::Acked
    );
    let groups = a.work_groups("jobs").await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].acked, groups[0].dead_lettered), (1, 1));
    drop(w);

    // Replicated maps: puts, compare-and-set, snapshot and a watch.
    let map = a.map("config").unwrap();
    let mut watch = b.map("config").unwrap().watch().await.unwrap();
    let rev = map.put("k", "v1").await.unwrap();
    let lost = map
        .put_if("k", "v2", herald::Expect::Absent)
        .await
        .unwrap_err();
    assert!(matches!(lost, herald::Error::Conflict { .. }), "{lost}");
    map.put_if("k", "v2", herald::Expect::Revision(rev))
        .await
        .unwrap();
    let snap = map.snapshot().await.unwrap();
    assert_eq!(
        snap.entries.get("k").map(|e| e.value.as_ref()),
        Some(&b"v2"[..])
    );
    let mut seen = 0;
    for _ in 0..10 {
        let e = tokio::time::timeout(support::EVENT_WAIT, watch.next())
            .await
            .expect("a map event")
            .expect("the watch goes on")
            .unwrap();
        if let herald::MapEvent::Changed { value, .. } = e {
            seen += 1;
            if value.as_ref() == b"v2" {
                break;
            }
        }
    }
    assert!(seen >= 1, "the watch saw the changes");

    // Outside the namespace, Redis refuses, and Herald says so (not a timeout).
    let other = node(&url, "o", "other").await.unwrap();
    let err = other.publish("t", "x").await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");

    // A foreign key or command stays refused for this user.
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let r: redis::RedisResult<()> = redis::cmd("SET").arg("herald:x").arg("1").query(&mut c);
    assert!(r.is_err(), "SET is not among Herald's commands");
    let r: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut c);
    assert!(r.is_err());
}
