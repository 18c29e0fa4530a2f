//! A log that goes back within one epoch (Redis lost its newest writes, as after a failover
//! with asynchronous replication) must never be skipped silently: subscribers get a `Reset`.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::time::Duration;

use herald::{Event, Herald, Position, Start};
use support::{messages, next_event, RedisServer};

/// Simulates the loss of every entry after `keep`: what a replica promoted before it received
/// them would hold.
fn lose_tail(server: &RedisServer, topic: &str, keep: u64, last: u64) {
    for o in keep + 1..=last {
        let _: u64 = server.cmd(&[
            "XDEL",
            &format!("herald:{{{topic}}}:log"),
            &format!("{o}-0"),
        ]);
    }
    // XDEL leaves the stream's last ID where it was; a replica that never saw the entries has
    // a lower one.
    let _: () = server.cmd(&[
        "XSETID",
        &format!("herald:{{{topic}}}:log"),
        &format!("{keep}-0"),
    ]);
    let _: u64 = server.cmd(&[
        "HSET",
        &format!("herald:{{{topic}}}:meta"),
        "last",
        &keep.to_string(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_offsets_become_a_reset_not_a_silent_skip() {
    let server = RedisServer::start();
    let node = Herald::builder()
        .redis(server.url())
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut sub = node.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=3 {
        node.publish("t", format!("old{i}")).await.unwrap();
    }
    assert_eq!(messages(&mut sub, 3).await.len(), 3);
    lose_tail(&server, "t", 1, 3);
    // New messages reuse offsets 2, 3, 4: the subscriber had delivered other messages at 2, 3.
    for i in 2..=4 {
        assert_eq!(
            node.publish("t", format!("new{i}"))
                .await
                .unwrap()
                .position
                .offset,
            i
        );
    }
    match next_event(&mut sub).await {
        Event::Reset {
            last_delivered:
                Position {
                    epoch: previous_epoch,
                    offset: last_delivered,
                },
            epoch,
            ..
        } => {
            assert_eq!(previous_epoch, epoch);
            assert_eq!(last_delivered, 3);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    let again = messages(&mut sub, 4).await;
    let payloads: Vec<&str> = again.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, ["old1", "new2", "new3", "new4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_shorter_than_what_was_delivered_is_a_reset() {
    let server = RedisServer::start();
    let node = Herald::builder()
        .redis(server.url())
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let mut sub = node.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=5 {
        node.publish("t", format!("m{i}")).await.unwrap();
    }
    assert_eq!(messages(&mut sub, 5).await.len(), 5);
    lose_tail(&server, "t", 2, 5);
    // No publish needed: the periodic check sees the log end below what was delivered, and
    // reports the loss, which continues the log under a new epoch from offset 3 (protocol 3).
    let (old_epoch, new_epoch) = match next_event(&mut sub).await {
        Event::Reset {
            last_delivered,
            epoch,
            lost_from,
            ..
        } => {
            assert_eq!((last_delivered.offset, lost_from), (5, 3));
            assert!(epoch > last_delivered.epoch, "a new epoch");
            (last_delivered.epoch, epoch)
        }
        other => panic!("expected a reset, got {other:?}"),
    };
    // Nothing is redelivered: the next message is the next publish, at offset 3 of the new
    // epoch, never a second message at (old epoch, 3).
    let r = node.publish("t", "m3 again").await.unwrap();
    assert_eq!(r.position, Position::new(new_epoch, 3));
    assert_ne!(old_epoch, new_epoch);
    assert_eq!(messages(&mut sub, 1).await, [(3, "m3 again".to_string())]);
}
