//! The behavioural (conformance) suite: every test runs against the embedded broker and
//! against a real Redis started by the test, and both must behave the same (docs/DESIGN.md,
//! Guarantees and Retention).

#![allow(clippy::unwrap_used)]

use herald_testkit as support;
use support::on_both_backends;

use std::collections::HashSet;
use std::time::Duration;

use herald::{Error, Event, GapReason, Message, Position, SettingsChange, Start};
use support::{maybe_event, messages, next_event, Backend};

on_both_backends!(
    offsets_are_dense_across_concurrent_publishers,
    concurrent_publishes_on_one_handle_each_get_their_receipt,
    a_cancelled_publish_does_not_strand_the_ones_it_gathered,
    a_publish_cancelled_while_sending_still_sends_what_it_gathered,
    all_subscribers_see_one_order,
    idempotent_publish_returns_the_original_offset,
    dedup_window_expires,
    batch_publish_is_one_step,
    large_batch_with_duplicates_spans_entries,
    start_positions,
    durable_cursor_resumes_after_last_commit,
    retention_by_length_becomes_a_gap,
    retention_by_age_trims_history,
    retention_by_age_stops_at_the_first_entry_within_the_age,
    slow_subscriber_catches_up_without_loss,
    catching_up_does_not_wait_for_the_safety_poll,
    lost_log_becomes_a_reset,
    multi_topic_subscription_keeps_order_per_topic,
    headers_and_binary_payloads_round_trip,
    inspect_reports_state_and_lag,
    bad_input_is_rejected_and_loses_nothing,
);

async fn offsets_are_dense_across_concurrent_publishers(b: Backend) {
    let mut tasks = Vec::new();
    for n in 0..4 {
        let node = b.node(&format!("p{n}")).await;
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50 {
                let r = node.publish("dense", format!("{n}-{i}")).await.unwrap();
                assert!(!r.duplicate);
                offsets.push(r.position.offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let offsets = t.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one publisher's offsets increase"
        );
        all.extend(offsets);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>());
}

/// Single publishes that run concurrently on one handle travel together (one broker call),
/// yet each caller gets its own receipt: a message that is too large fails alone, a known key
/// is a duplicate alone, and every other message lands exactly once at the offset its receipt
/// names.
async fn concurrent_publishes_on_one_handle_each_get_their_receipt(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.max_size = Some(100);
    node.configure("merged", change).await.unwrap();
    let mut sub = node
        .subscribe(["merged"])
        .from(Start::Earliest)
        .await
        .unwrap();
    node.publish("merged", Message::new("known").key("known"))
        .await
        .unwrap();
    let sends = (0..40).map(|i| {
        let message = match i {
            7 => Message::new(vec![b'x'; 101]),
            13 => Message::new("again").key("known"),
            21 => Message::new("m21").key("own-21"),
            _ => Message::new(format!("m{i}")),
        };
        node.publish("merged", message)
    });
    let results = futures::future::join_all(sends).await;
    let mut landed = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match (i, r) {
            (7, Err(Error::MessageTooLarge { size: 101, .. })) => {}
            (7, other) => panic!("message 7 is too large, got {other:?}"),
            (13, Ok(r)) => assert_eq!((r.position.offset, r.duplicate), (1, true)),
            (_, Ok(r)) => {
                assert!(!r.duplicate, "message {i}");
                landed.push((r.position.offset, format!("m{i}")));
            }
            (_, Err(e)) => panic!("message {i} failed: {e}"),
        }
    }
    landed.sort();
    let offsets: Vec<u64> = landed.iter().map(|l| l.0).collect();
    assert_eq!(offsets, (2..=39).collect::<Vec<u64>>(), "dense, once each");
    let mut expected = vec![(1, "known".to_string())];
    expected.extend(landed);
    assert_eq!(messages(&mut sub, expected.len()).await, expected);
    assert!(maybe_event(&mut sub, Duration::from_millis(200))
        .await
        .is_none());
    if let Backend::Redis(server) = &b {
        // One stream entry per broker call: the 40 publishes took far fewer calls.
        let entries: u64 = server.cmd(&["XLEN", "herald:{merged}:log"]);
        assert!(
            entries <= 5,
            "40 concurrent publishes made {entries} entries"
        );
    }
}

/// The first of several concurrent publishes gathers the others; if it is cancelled while
/// gathering, the others are still sent.
async fn a_cancelled_publish_does_not_strand_the_ones_it_gathered(b: Backend) {
    let node = b.node("n").await;
    let mut leader = Box::pin(node.publish("gathered", "cancelled"));
    assert!(
        futures::poll!(&mut leader).is_pending(),
        "the leader gathers"
    );
    let mut joiner = Box::pin(node.publish("gathered", "joined"));
    assert!(
        futures::poll!(&mut joiner).is_pending(),
        "the second one waits"
    );
    drop(leader);
    let receipt = tokio::time::timeout(Duration::from_secs(10), joiner)
        .await
        .expect("the gathered publish was sent")
        .unwrap();
    let mut sub = node
        .subscribe(["gathered"])
        .from(Start::Earliest)
        .await
        .unwrap();
    assert_eq!(
        messages(&mut sub, 1).await,
        vec![(receipt.position.offset, "joined".to_string())]
    );
    assert!(maybe_event(&mut sub, Duration::from_millis(200))
        .await
        .is_none());
}

/// A leader cancelled while its merged call is in flight: the call still completes (in a
/// task of its own), so the caller that joined gets its receipt, and both messages land once.
async fn a_publish_cancelled_while_sending_still_sends_what_it_gathered(b: Backend) {
    let node = b.node("n").await;
    let mut leader = Box::pin(node.publish("inflight", "leader"));
    assert!(
        futures::poll!(&mut leader).is_pending(),
        "the leader gathers"
    );
    let mut joiner = Box::pin(node.publish("inflight", "joined"));
    assert!(
        futures::poll!(&mut joiner).is_pending(),
        "the second one waits"
    );
    // Redis: the merged call is now in flight (the embedded broker may already be done).
    let _ = futures::poll!(&mut leader);
    drop(leader);
    let receipt = tokio::time::timeout(Duration::from_secs(10), joiner)
        .await
        .expect("the merged call finished")
        .unwrap();
    let mut sub = node
        .subscribe(["inflight"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let got = messages(&mut sub, 2).await;
    assert_eq!(got.len(), 2);
    assert!(
        got.contains(&(receipt.position.offset, "joined".to_string())),
        "{got:?}"
    );
    assert!(got.iter().any(|(_, m)| m == "leader"), "{got:?}");
    assert!(maybe_event(&mut sub, Duration::from_millis(200))
        .await
        .is_none());
}

async fn all_subscribers_see_one_order(b: Backend) {
    let mut subs = Vec::new();
    for n in 0..3 {
        let node = b.node(&format!("s{n}")).await;
        subs.push(
            node.subscribe(["order"])
                .from(Start::Earliest)
                .await
                .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for n in 0..4 {
        let node = b.node(&format!("p{n}")).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                node.publish("order", format!("{n}-{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let first = messages(&mut subs[0], 200).await;
    assert_eq!(
        first.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<u64>>()
    );
    for sub in &mut subs[1..] {
        assert_eq!(
            messages(sub, 200).await,
            first,
            "every subscriber sees the same sequence"
        );
    }
    for sub in &mut subs {
        assert_eq!(
            maybe_event(sub, Duration::from_millis(300)).await,
            None,
            "nothing more"
        );
    }
}

async fn idempotent_publish_returns_the_original_offset(b: Backend) {
    let node = b.node("n").await;
    let mut sub = node
        .subscribe(["idem"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let a = node
        .publish("idem", Message::new("one").key("k-1"))
        .await
        .unwrap();
    let other = b.node("other").await;
    let again = other
        .publish("idem", Message::new("one, retried").key("k-1"))
        .await
        .unwrap();
    let c = node
        .publish("idem", Message::new("two").key("k-2"))
        .await
        .unwrap();
    assert_eq!((a.position.offset, a.duplicate), (1, false));
    assert_eq!(
        (again.position.offset, again.duplicate, again.position.epoch),
        (1, true, a.position.epoch)
    );
    assert_eq!((c.position.offset, c.duplicate), (2, false));
    assert_eq!(
        messages(&mut sub, 2).await,
        vec![(1, "one".to_string()), (2, "two".to_string())]
    );
    assert_eq!(
        maybe_event(&mut sub, Duration::from_millis(300)).await,
        None
    );
}

async fn dedup_window_expires(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.dedup_window_ms = Some(300);
    node.configure("window", change).await.unwrap();
    let a = node
        .publish("window", Message::new("x").key("same"))
        .await
        .unwrap();
    assert!(
        node.publish("window", Message::new("x").key("same"))
            .await
            .unwrap()
            .duplicate
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = node
        .publish("window", Message::new("x").key("same"))
        .await
        .unwrap();
    assert!(!c.duplicate, "the key was forgotten after the window");
    assert_eq!(c.position.offset, a.position.offset + 1);
}

async fn batch_publish_is_one_step(b: Backend) {
    let node = b.node("n").await;
    let mut sub = node
        .subscribe(["batch"])
        .from(Start::Earliest)
        .await
        .unwrap();
    node.publish("batch", Message::new("before").key("dup"))
        .await
        .unwrap();
    let batch = vec![
        Message::new("a").key("a"),
        Message::new("again").key("dup"),
        Message::new("b").key("b"),
        Message::new("a twice").key("a"),
        Message::new("c"),
    ];
    let receipts = node.publish_batch("batch", batch).await.unwrap();
    let got: Vec<(u64, bool)> = receipts
        .iter()
        .map(|r| (r.position.offset, r.duplicate))
        .collect();
    assert_eq!(
        got,
        vec![(2, false), (1, true), (3, false), (2, true), (4, false)]
    );
    let expected: Vec<(u64, String)> = [(1, "before"), (2, "a"), (3, "b"), (4, "c")]
        .iter()
        .map(|(o, s)| (*o, s.to_string()))
        .collect();
    assert_eq!(messages(&mut sub, 4).await, expected);
    assert!(node
        .publish_batch("batch", Vec::<Message>::new())
        .await
        .unwrap()
        .is_empty());
}

/// A batch of more than one stream entry's worth (1000 messages), mixing messages with their
/// own keys (some already published, one repeated within the batch) and keyless ones: every
/// receipt is right and exactly the new messages are delivered, in order.
async fn large_batch_with_duplicates_spans_entries(b: Backend) {
    let node = b.node("n").await;
    let mut sub = node.subscribe(["big"]).from(Start::Earliest).await.unwrap();
    node.publish_batch(
        "big",
        [
            Message::new("old-5").key("k5"),
            Message::new("old-1500").key("k1500"),
        ],
    )
    .await
    .unwrap();
    // Messages 0..2500: every 500th has its own key; k5 and k1500 are already known, k2000
    // repeats k1000 within the batch.
    let batch: Vec<Message> = (0..2500)
        .map(|i| {
            let m = Message::new(format!("m{i}"));
            match i {
                5 => m.key("k5"),
                1500 => m.key("k1500"),
                2000 => m.key("k1000"),
                _ if i % 500 == 0 => m.key(format!("k{i}")),
                _ => m,
            }
        })
        .collect();
    let receipts = node.publish_batch("big", batch).await.unwrap();
    assert_eq!(receipts.len(), 2500);
    let mut expected = vec![(1, "old-5".to_string()), (2, "old-1500".to_string())];
    let mut next = 3;
    for (i, r) in receipts.iter().enumerate() {
        let want = match i {
            5 => (1, true),
            1500 => (2, true),
            2000 => (expected.iter().find(|e| e.1 == "m1000").unwrap().0, true),
            _ => {
                expected.push((next, format!("m{i}")));
                next += 1;
                (next - 1, false)
            }
        };
        assert_eq!(
            (r.position.offset, r.duplicate),
            want,
            "receipt of message {i}"
        );
    }
    assert_eq!(expected.len(), 2 + 2497);
    assert_eq!(messages(&mut sub, expected.len()).await, expected);
    let info = node.inspect("big").await.unwrap();
    assert_eq!(info.last_offset, 2499);
}

async fn start_positions(b: Backend) {
    let node = b.node("n").await;
    for i in 1..=5 {
        node.publish("pos", format!("m{i}")).await.unwrap();
    }
    let mut earliest = node.subscribe(["pos"]).from(Start::Earliest).await.unwrap();
    let mut latest = node.subscribe(["pos"]).from(Start::Latest).await.unwrap();
    let mut offset = node
        .subscribe(["pos"])
        .from(Start::Offset(4))
        .await
        .unwrap();
    let mut missing = node
        .subscribe(["never-published"])
        .from(Start::Earliest)
        .await
        .unwrap();
    node.publish("pos", "m6").await.unwrap();
    node.publish("never-published", "first").await.unwrap();
    assert_eq!(
        messages(&mut earliest, 6)
            .await
            .iter()
            .map(|m| m.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(messages(&mut latest, 1).await, vec![(6, "m6".to_string())]);
    assert_eq!(
        messages(&mut offset, 3)
            .await
            .iter()
            .map(|m| m.0)
            .collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(
        messages(&mut missing, 1).await,
        vec![(1, "first".to_string())]
    );
}

async fn durable_cursor_resumes_after_last_commit(b: Backend) {
    let node = b.node("n").await;
    for i in 1..=5 {
        node.publish("dur", format!("m{i}")).await.unwrap();
    }
    {
        let mut sub = node
            .subscribe(["dur"])
            .durable("worker")
            .from(Start::Earliest)
            .await
            .unwrap();
        for expected in 1..=3 {
            match next_event(&mut sub).await {
                Event::Message(d) => {
                    assert_eq!(d.position.offset, expected);
                    sub.commit(&d).await.unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        // Offsets 4 and 5 are delivered but not committed: they come again after a restart.
        assert_eq!(messages(&mut sub, 2).await.len(), 2);
    }
    node.publish("dur", "m6").await.unwrap();
    let restarted = b.node("n").await;
    let mut sub = restarted
        .subscribe(["dur"])
        .from(Start::Latest)
        .durable("worker")
        .await
        .unwrap();
    assert_eq!(
        messages(&mut sub, 3)
            .await
            .iter()
            .map(|m| m.0)
            .collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    let pos = restarted.cursor("dur", "worker").await.unwrap().unwrap();
    assert_eq!(pos.position.offset, 3);
    // Commit without a cursor name is a clear error.
    let plain = node.subscribe(["dur"]).await.unwrap();
    let d = herald::Receipt::clone(&node.publish("dur", "m7").await.unwrap());
    assert!(matches!(
        plain.commit_position("dur", d.position).await,
        Err(Error::NotDurable)
    ));
}

async fn retention_by_length_becomes_a_gap(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.max_len = Some(5);
    node.configure("short", change).await.unwrap();
    for i in 1..=20 {
        node.publish("short", format!("m{i}")).await.unwrap();
    }
    let info = node.inspect("short").await.unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (16, 20, 5)
    );
    let mut sub = node
        .subscribe(["short"])
        .from(Start::Offset(3))
        .await
        .unwrap();
    match next_event(&mut sub).await {
        Event::Gap {
            from, to, reason, ..
        } => assert_eq!((from, to, reason), (3, 15, GapReason::Retention)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(
        messages(&mut sub, 5)
            .await
            .iter()
            .map(|m| m.0)
            .collect::<Vec<_>>(),
        vec![16, 17, 18, 19, 20]
    );
    // From Earliest, trimmed history is not a gap: it starts at the oldest message kept.
    let mut earliest = node
        .subscribe(["short"])
        .from(Start::Earliest)
        .await
        .unwrap();
    assert_eq!(messages(&mut earliest, 1).await[0].0, 16);
}

async fn retention_by_age_trims_history(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.max_age_ms = Some(300);
    node.configure("aged", change).await.unwrap();
    for i in 1..=3 {
        node.publish("aged", format!("old{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    node.publish("aged", "new").await.unwrap();
    let info = node.inspect("aged").await.unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (4, 4, 1)
    );
    let mut sub = node
        .subscribe(["aged"])
        .from(Start::Offset(1))
        .await
        .unwrap();
    match next_event(&mut sub).await {
        Event::Gap {
            from, to, reason, ..
        } => assert_eq!((from, to, reason), (1, 3, GapReason::Retention)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(messages(&mut sub, 1).await, vec![(4, "new".to_string())]);
}

/// Ten expired entries go in one publish (more than the script's first reads of the log's
/// head hold), and trimming stops at the oldest entry within the age, which is not the one
/// just published: everything from it on stays.
async fn retention_by_age_stops_at_the_first_entry_within_the_age(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.max_age_ms = Some(2000);
    node.configure("aged2", change).await.unwrap();
    for i in 1..=10 {
        node.publish("aged2", format!("old{i}")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mid: Vec<Message> = (1..=3).map(|i| Message::new(format!("mid{i}"))).collect();
    node.publish_batch("aged2", mid).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    node.publish("aged2", "new").await.unwrap();
    let info = node.inspect("aged2").await.unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (11, 14, 4)
    );
    let mut sub = node
        .subscribe(["aged2"])
        .from(Start::Offset(1))
        .await
        .unwrap();
    match next_event(&mut sub).await {
        Event::Gap {
            from, to, reason, ..
        } => assert_eq!((from, to, reason), (1, 10, GapReason::Retention)),
        other => panic!("expected a gap, got {other:?}"),
    }
    let expected: Vec<(u64, String)> = ["mid1", "mid2", "mid3", "new"]
        .iter()
        .enumerate()
        .map(|(i, m)| (11 + i as u64, m.to_string()))
        .collect();
    assert_eq!(messages(&mut sub, 4).await, expected);
}

async fn slow_subscriber_catches_up_without_loss(b: Backend) {
    let node = b.node("n").await;
    let mut slow = node
        .subscribe(["flood"])
        .from(Start::Earliest)
        .buffer(4)
        .await
        .unwrap();
    let publisher = b.node("p").await;
    let n = 2000;
    for chunk in 0..(n / 100) {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(format!("m{}", chunk * 100 + i + 1)))
            .collect();
        publisher.publish_batch("flood", batch).await.unwrap();
    }
    let mut seen = 0;
    for expected in 1..=n as u64 {
        match next_event(&mut slow).await {
            Event::Message(d) => {
                assert_eq!(d.position.offset, expected);
                assert_eq!(&d.payload[..], format!("m{expected}").as_bytes());
                seen += 1;
            }
            other => panic!("expected message {expected}, got {other:?}"),
        }
        if expected % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await; // be slow now and then
        }
    }
    assert_eq!(seen, n);
    assert_eq!(
        maybe_event(&mut slow, Duration::from_millis(300)).await,
        None
    );
}

/// A subscriber far behind reads history chunk after chunk as its consumer frees room: each
/// next read starts when the previous chunk is handed over, not at the safety poll (set to an
/// hour here, so a catch-up that waited for it would never finish).
async fn catching_up_does_not_wait_for_the_safety_poll(b: Backend) {
    let publisher = b.node("p").await;
    // Batches of 10: more entries than a first read takes on Redis (it guesses 8 messages
    // per entry and reads 128 entries), so that catching up needs several reads there too.
    let n = 3000u64;
    for chunk in 0..(n / 10) {
        let batch: Vec<Message> = (1..=10)
            .map(|i| Message::new(format!("m{}", chunk * 10 + i)))
            .collect();
        publisher.publish_batch("far-behind", batch).await.unwrap();
    }
    let node = b
        .builder("n")
        .poll_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    let mut sub = node
        .subscribe(["far-behind"])
        .from(Start::Earliest)
        .buffer(64)
        .await
        .unwrap();
    for expected in 1..=n {
        match next_event(&mut sub).await {
            Event::Message(d) => assert_eq!(d.position.offset, expected),
            other => panic!("expected message {expected}, got {other:?}"),
        }
    }
    assert_eq!(
        maybe_event(&mut sub, Duration::from_millis(300)).await,
        None
    );
}

async fn lost_log_becomes_a_reset(mut b: Backend) {
    let node = b.node("n").await;
    let first = node.publish("fragile", "a").await.unwrap();
    node.publish("fragile", "b").await.unwrap();
    let mut sub = node
        .subscribe(["fragile"])
        .from(Start::Earliest)
        .await
        .unwrap();
    assert_eq!(messages(&mut sub, 2).await.len(), 2);
    b.lose_everything();
    tokio::time::sleep(Duration::from_millis(5)).await; // a new epoch is a new microsecond
    let after = node.publish("fragile", "c").await.unwrap();
    assert_eq!(after.position.offset, 1);
    assert_ne!(after.position.epoch, first.position.epoch);
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
            assert_eq!(
                (previous_epoch, epoch, last_delivered),
                (first.position.epoch, after.position.epoch, 2)
            );
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    match next_event(&mut sub).await {
        Event::Message(d) => assert_eq!(
            (d.position.epoch, d.position.offset, &d.payload[..]),
            (after.position.epoch, 1, &b"c"[..])
        ),
        other => panic!("{other:?}"),
    }
}

async fn multi_topic_subscription_keeps_order_per_topic(b: Backend) {
    let node = b.node("n").await;
    let mut sub = node
        .subscribe(["left", "right"])
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=30 {
        let topic = if i % 3 == 0 { "right" } else { "left" };
        node.publish(topic, format!("{topic}{i}")).await.unwrap();
    }
    let mut next =
        std::collections::HashMap::from([("left".to_string(), 1u64), ("right".to_string(), 1u64)]);
    for _ in 0..30 {
        match next_event(&mut sub).await {
            Event::Message(d) => {
                let expected = next.get_mut(&d.topic).unwrap();
                assert_eq!(d.position.offset, *expected, "order within {}", d.topic);
                *expected += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((next["left"], next["right"]), (21, 11));
}

async fn headers_and_binary_payloads_round_trip(b: Backend) {
    let node = b.node("node-7").await;
    let sub = node.subscribe(["bin"]).from(Start::Earliest).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).chain([b':', b'1', b':']).collect();
    let m = Message::new(payload.clone())
        .header("content-type", "application/octet-stream")
        .header("x", "a:b");
    let r = node.publish("bin", m).await.unwrap();
    let history = b
        .node("reader")
        .await
        .subscribe(["bin"])
        .from(Start::Earliest)
        .await
        .unwrap();
    for mut s in [sub, history] {
        match next_event(&mut s).await {
            Event::Message(d) => {
                assert_eq!(&d.payload[..], &payload[..]);
                assert_eq!(d.headers.get("x").map(String::as_str), Some("a:b"));
                assert_eq!(d.headers.len(), 2);
                assert_eq!(d.node, "node-7");
                assert_eq!(
                    (d.position.epoch, d.position.offset),
                    (r.position.epoch, r.position.offset)
                );
                assert!(d.published_at_ms > 1_600_000_000_000);
            }
            other => panic!("{other:?}"),
        }
    }
}

async fn inspect_reports_state_and_lag(b: Backend) {
    let node = b.node("n").await;
    let empty = node.inspect("fresh").await.unwrap();
    assert_eq!(
        (
            empty.epoch,
            empty.last_offset,
            empty.length,
            empty.configured
        ),
        (None, 0, 0, false)
    );
    for i in 1..=10 {
        node.publish("watched", format!("m{i}")).await.unwrap();
    }
    let r = node.publish("watched", "m11").await.unwrap();
    node.commit("watched", "fast", Position::new(r.position.epoch, 11))
        .await
        .unwrap();
    node.commit("watched", "slow", Position::new(r.position.epoch, 4))
        .await
        .unwrap();
    let info = node.inspect("watched").await.unwrap();
    assert_eq!(info.epoch, Some(r.position.epoch));
    assert_eq!(
        (info.first_offset, info.last_offset, info.length),
        (1, 11, 11)
    );
    assert!(info.configured);
    let lags: Vec<(String, u64)> = info
        .cursors
        .iter()
        .map(|c| (c.name.clone(), c.lag))
        .collect();
    assert_eq!(lags, vec![("fast".to_string(), 0), ("slow".to_string(), 7)]);
    let mut change = SettingsChange::default();
    change.max_len = Some(1000);
    let s = node.configure("watched", change).await.unwrap();
    assert_eq!(s.max_len, 1000);
    assert_eq!(
        node.inspect("watched").await.unwrap().settings.max_len,
        1000
    );
    let json = serde_json::to_value(node.inspect("watched").await.unwrap()).unwrap();
    assert_eq!(json["cursors"][1]["lag"], 7);
}

async fn bad_input_is_rejected_and_loses_nothing(b: Backend) {
    let node = b.node("n").await;
    node.publish("healthy", "keep me").await.unwrap();
    for bad in ["", "a b", "a{b}", "é", &"x".repeat(201)] {
        assert!(
            matches!(
                node.publish(bad, "x").await,
                Err(Error::InvalidTopic { .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(node.subscribe([bad]).await, Err(Error::InvalidTopic { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(node.inspect(bad).await, Err(Error::InvalidTopic { .. })),
            "{bad:?}"
        );
    }
    let mut change = SettingsChange::default();
    change.max_size = Some(100);
    node.configure("small", change).await.unwrap();
    node.publish("small", vec![b'x'; 100]).await.unwrap();
    let err = node.publish("small", vec![b'x'; 101]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                size: 101,
                limit: 100,
                ..
            }
        ),
        "{err}"
    );
    // The library says what to change; the command line adds its own flag as a hint.
    assert!(err.to_string().contains("max_size"), "{err}");
    assert!(!err.to_string().contains("herald configure"), "{err}");
    let batch = vec![Message::new("ok"), Message::new(vec![b'y'; 500])];
    assert!(matches!(
        node.publish_batch("small", batch).await,
        Err(Error::MessageTooLarge { .. })
    ));
    assert_eq!(
        node.inspect("small").await.unwrap().last_offset,
        1,
        "a failed batch appends nothing"
    );
    let mut zero = SettingsChange::default();
    zero.max_len = Some(0);
    assert!(matches!(
        node.configure("small", zero).await,
        Err(Error::InvalidSetting {
            name: "max_len",
            ..
        })
    ));
    assert!(matches!(
        node.publish("x", Message::new("k").key("")).await,
        Err(Error::InvalidKey { len: 0, .. })
    ));
    // Options out of range are refused, naming the option, never clamped.
    assert!(matches!(
        node.subscribe(["healthy"]).buffer(0).await,
        Err(Error::InvalidSetting {
            name: "subscription buffer",
            ..
        })
    ));
    assert!(matches!(
        node.subscribe(["healthy"]).from(Start::Offset(0)).await,
        Err(Error::InvalidSetting {
            name: "start offset",
            ..
        })
    ));
    assert!(matches!(
        node.join("g")
            .heartbeat_interval(Duration::from_secs(60))
            .await,
        Err(Error::InvalidSetting {
            name: "heartbeat interval",
            ..
        })
    ));
    assert!(matches!(
        node.join("g").ttl(Duration::from_millis(5)).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        node.join("bad group").await,
        Err(Error::InvalidGroup { .. })
    ));
    for builder in [
        herald::Herald::builder().subscription_buffer(0),
        herald::Herald::builder().poll_interval(Duration::from_millis(1)),
    ] {
        assert!(matches!(
            builder.connect().await,
            Err(Error::InvalidSetting { .. })
        ));
    }
    let too_many = vec![Message::new("x"); herald::client::MAX_BATCH + 1];
    assert!(matches!(
        node.publish_batch("healthy", too_many).await,
        Err(Error::BatchTooLarge { .. })
    ));
    let keys: HashSet<u64> = [node.inspect("healthy").await.unwrap().last_offset].into();
    assert_eq!(keys, HashSet::from([1]));
}
