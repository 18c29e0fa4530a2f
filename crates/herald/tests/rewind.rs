//! A log that goes back within one epoch (Redis lost its newest writes, as after a failover
//! with asynchronous replication) must never be skipped silently: subscribers get a `Reset`.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::time::Duration;

use herald::{Event, GapReason, Herald, Position, Start};
use support::{maybe_event, messages, next_event, Backend, RedisServer};

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
    let mut old = 0;
    for i in 1..=3 {
        old = node
            .publish("t", format!("old{i}"))
            .await
            .unwrap()
            .position
            .epoch;
    }
    assert_eq!(messages(&mut sub, 3).await.len(), 3);
    lose_tail(&server, "t", 1, 3);
    // The publisher was acknowledged at (old, 3): its next publish, in the same atomic call,
    // records 2..=3 as lost and opens a new epoch from offset 2 before writing. So new2..new4
    // get offsets 2..4 of the new epoch, never a second message at (old, 2) or (old, 3).
    let mut receipts = Vec::new();
    for i in 2..=4 {
        receipts.push(node.publish("t", format!("new{i}")).await.unwrap().position);
    }
    let new = receipts[0].epoch;
    assert!(new > old, "a new epoch: {receipts:?} after {old}");
    assert_eq!(
        receipts,
        (2..=4).map(|o| Position::new(new, o)).collect::<Vec<_>>()
    );
    let history: String = server.cmd(&["HGET", "herald:{t}:epochs", &old.to_string()]);
    assert_eq!(
        history, "1:3",
        "the old epoch ends at 1, its offsets up to 3 lost"
    );

    // The subscriber had delivered (old, 3): the old epoch ended at 1, so 2..=3 were lost.
    // old1 lies in the surviving prefix and is not redelivered (docs/DESIGN.md, "Lost writes
    // and resets"): delivery continues at offset 2 of the new epoch.
    match next_event(&mut sub).await {
        Event::Reset {
            last_delivered,
            epoch,
            lost_from,
            ..
        } => assert_eq!(
            (last_delivered, epoch, lost_from),
            (Position::new(old, 3), new, 2)
        ),
        other => panic!("expected a reset, got {other:?}"),
    }
    let again = messages(&mut sub, 3).await;
    assert_eq!(
        again,
        [
            (2, "new2".to_string()),
            (3, "new3".to_string()),
            (4, "new4".to_string())
        ]
    );
    if let Some(e) = maybe_event(&mut sub, Duration::from_millis(500)).await {
        panic!("unexpected event {e:?}");
    }
}

/// The log of `topic` goes back to `keep` under the same epoch and writer.
fn rewind(backend: &Backend, topic: &str, keep: u64, last: u64) {
    match backend {
        Backend::Embedded(broker) => broker.lose_tail(topic, keep),
        Backend::Redis(server) => lose_tail(server, topic, keep, last),
    }
}

/// Two handles publish after the log went back: `a`, acknowledged past the surviving prefix
/// (its floor), and `b`, which never published to the topic (no floor). Once `a` has
/// published, no receipt of either, nor any earlier receipt of `a`, shares an (epoch, offset)
/// with another, and a reader from the start gets every surviving or new message at the
/// position of its receipt, with the lost offsets reported.
async fn two_publishers_after_a_rewind_never_share_a_receipt(backend: Backend) {
    let a = backend.node("a").await;
    let b = backend.node("b").await;
    let mut receipts: Vec<(Position, String)> = Vec::new();
    for i in 1..=3 {
        let payload = format!("old{i}");
        let r = a.publish("t", payload.clone()).await.unwrap();
        receipts.push((r.position, payload));
    }
    let old = receipts[0].0.epoch;
    rewind(&backend, "t", 1, 3);
    let r = a.publish("t", "a0").await.unwrap();
    assert!(r.position.epoch > old, "a new epoch: {r:?}");
    assert_eq!(r.position.offset, 2);
    receipts.push((r.position, "a0".to_string()));
    // Then both at once, each message on its own and in batches.
    let burst = |h: Herald, name: &'static str| async move {
        let mut out = Vec::new();
        for i in 1..=5 {
            let payload = format!("{name}{i}");
            let r = h.publish("t", payload.clone()).await.unwrap();
            out.push((r.position, payload));
        }
        let batch: Vec<String> = (6..=8).map(|i| format!("{name}{i}")).collect();
        for (r, payload) in h
            .publish_batch("t", batch.clone())
            .await
            .unwrap()
            .into_iter()
            .zip(batch)
        {
            out.push((r.position, payload));
        }
        out
    };
    let (from_a, from_b) = tokio::join!(burst(a.clone(), "a"), burst(b.clone(), "b"));
    receipts.extend(from_a);
    receipts.extend(from_b);
    let mut seen = std::collections::HashMap::new();
    for (position, payload) in &receipts {
        if let Some(other) = seen.insert(*position, payload.clone()) {
            panic!("{position:?} names both {other} and {payload}: {receipts:?}");
        }
    }

    // A reader from the start: old1, the Lost gap 2..=3 of the old epoch, then every new
    // message at its receipt's position.
    let reader = backend.node("reader").await;
    let mut sub = reader.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    match next_event(&mut sub).await {
        Event::Message(d) => assert_eq!(
            (d.position, String::from_utf8_lossy(&d.payload).into_owned()),
            receipts[0]
        ),
        other => panic!("expected old1, got {other:?}"),
    }
    match next_event(&mut sub).await {
        Event::Gap {
            epoch,
            from,
            to,
            reason,
            ..
        } => assert_eq!((epoch, from, to, reason), (old, 2, 3, GapReason::Lost)),
        other => panic!("expected a Lost gap naming 2..=3, got {other:?}"),
    }
    let new = receipts.len() - 3;
    for _ in 0..new {
        match next_event(&mut sub).await {
            Event::Message(d) => {
                let payload = String::from_utf8_lossy(&d.payload).into_owned();
                assert_eq!(seen.get(&d.position), Some(&payload), "{d:?}");
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

support::on_both_backends!(two_publishers_after_a_rewind_never_share_a_receipt);

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

/// `publish.lua` called directly: a version-3 call (no floor) is still accepted; a version-4
/// floor of the current epoch above `last` opens a new epoch in the same call, and when the
/// writer changed too, the floor is recorded as the old epoch's lost maximum in that call
/// (before any loss report); a malformed floor is refused before anything is written.
#[test]
fn the_publish_script_applies_the_floor_in_the_same_call() {
    let server = RedisServer::start();
    let script = ::redis::Script::new(herald::broker::PUBLISH_SCRIPT);
    let mut conn = server.conn();
    let key = |what: &str| format!("herald:{{t}}:{what}");
    let mut publish = |version: &str, payload: &str, floor: Option<(&str, &str)>| {
        let mut inv = script.prepare_invoke();
        for what in ["meta", "log", "settings", "dedup", "dedup-old", "epochs"] {
            inv.key(key(what));
        }
        let call_key = format!("k-{payload}");
        let field = |x: &str| format!("{}:{x}", x.len());
        let piece = format!("{}{}{}", field(&call_key), field(""), field(payload));
        inv.arg(version).arg(key("live")).arg("node");
        inv.arg(10_000).arg(0).arg(120_000).arg(1_048_576);
        inv.arg("PUBLISH")
            .arg(1)
            .arg(&call_key)
            .arg(payload.len())
            .arg(0);
        inv.arg(piece);
        if let Some((e, o)) = floor {
            inv.arg(e).arg(o);
        }
        inv.invoke::<Vec<::redis::Value>>(&mut conn)
    };
    let reply = |r: ::redis::RedisResult<Vec<::redis::Value>>| -> (u64, u64) {
        let r = r.unwrap();
        let n = |v: &::redis::Value| -> u64 {
            match v {
                ::redis::Value::Int(i) => *i as u64,
                ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        };
        (n(&r[0]), n(&r[1]))
    };
    let (e1, _) = reply(publish("3", "m1", None));
    for i in 2..=3 {
        assert_eq!(
            reply(publish("4", &format!("m{i}"), Some(("", "")))),
            (e1, i)
        );
    }
    let e1s = e1.to_string();
    // A floor at or below `last` changes nothing.
    assert_eq!(reply(publish("4", "m4", Some((&e1s, "3")))), (e1, 4));
    lose_tail(&server, "t", 2, 4);
    let bad = publish("4", "x", Some((&e1s, "three"))).unwrap_err();
    assert!(bad.to_string().contains("HERALD_ARGS"), "{bad}");
    let last: String = server.cmd(&["HGET", &key("meta"), "last"]);
    assert_eq!(last, "2", "nothing written");
    // Same writer: the floor (e1, 4) is above `last` = 2.
    let (e2, o) = reply(publish("4", "m3b", Some((&e1s, "4"))));
    assert!(e2 > e1);
    assert_eq!(o, 3);
    let old: String = server.cmd(&["HGET", &key("epochs"), &e1s]);
    let new: String = server.cmd(&["HGET", &key("epochs"), &e2.to_string()]);
    assert_eq!((old.as_str(), new.as_str()), ("1:4", "3"));
    // Writer changed and went back: one epoch change, with the floor recorded.
    let e2s = e2.to_string();
    assert_eq!(reply(publish("4", "m4b", Some((&e2s, "3")))), (e2, 4));
    lose_tail(&server, "t", 3, 4);
    let _: () = server.cmd(&["HSET", &key("meta"), "writer", "another-server"]);
    let (e3, o) = reply(publish("4", "m4c", Some((&e2s, "4"))));
    assert!(e3 > e2);
    assert_eq!(o, 4);
    let old: String = server.cmd(&["HGET", &key("epochs"), &e2s]);
    assert_eq!(old, "3:4");
    let epochs: u64 = server.cmd(&["HLEN", &key("epochs")]);
    assert_eq!(epochs, 3);
}
