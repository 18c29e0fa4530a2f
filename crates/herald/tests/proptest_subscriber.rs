//! Property tests of the subscriber's state machine (the merge of live notifications with
//! history reads, gap detection, cursor resume), driven against the embedded broker with
//! arbitrary interleavings of single and batch publishes, republished idempotency keys,
//! dropped live feeds, retention trims (a tiny `max_len`), slow consumption (a tiny buffer)
//! and restarts of a durable subscriber from its cursor.
//!
//! The property, per subscriber incarnation and topic: events are contiguous from where the
//! incarnation had to start (its cursor + 1, or the oldest retained offset without a cursor),
//! each offset exactly once as a message or inside a `Gap`; every message carries what was
//! published at its offset; every gap covers only offsets retention has trimmed; no `Reset`
//! and no error; and at the end every subscriber reaches the last offset of every topic.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use herald::{
    EmbeddedBroker, Event, Herald, Message, Position, Start, Subscription, TopicSettings,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

const TOPICS: [&str; 2] = ["t0", "t1"];
const DURABLE: &str = "a";

#[derive(Debug, Clone)]
enum Op {
    /// Publish `n` new messages to a topic: one `publish`, or one `publish_batch` when n > 1.
    Publish { topic: usize, n: usize },
    /// Publish again a key that was already published (a client retry): appends nothing.
    Republish { topic: usize, which: Index },
    /// Every live feed ends, as if its connection dropped.
    DropFeeds,
    /// Subscriber `sub` takes up to `n` events (only what is ready).
    Consume { sub: usize, n: usize },
    /// The durable subscriber is dropped and restarted from its cursor.
    Restart,
    /// Let background tasks run.
    Settle,
    /// Wait past the subscriptions' periodic check (10 ms).
    Sleep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2usize, 1..6usize).prop_map(|(topic, n)| Op::Publish { topic, n }),
        1 => (0..2usize, any::<Index>()).prop_map(|(topic, which)| Op::Republish { topic, which }),
        1 => Just(Op::DropFeeds),
        4 => (0..2usize, 1..10usize).prop_map(|(sub, n)| Op::Consume { sub, n }),
        1 => Just(Op::Restart),
        1 => Just(Op::Settle),
        1 => Just(Op::Sleep),
    ]
}

/// One subscriber under test.
struct Sub {
    name: &'static str,
    sub: Subscription,
    durable: bool,
    /// Per topic: the next offset this incarnation must deliver (message or gap).
    next: BTreeMap<&'static str, u64>,
}

/// What was published, per topic: offset -> key (offsets start at 1).
type Model = BTreeMap<&'static str, Vec<String>>;

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Handles one event of `s`, checking it against the model; commits if durable.
async fn on_event(
    s: &mut Sub,
    item: herald::Result<Event>,
    model: &Model,
    gapped: &mut Vec<(&'static str, u64, u64)>,
) -> Result<(), TestCaseError> {
    let event = item.map_err(|e| TestCaseError::fail(format!("{}: error {e}", s.name)))?;
    let topic = TOPICS
        .into_iter()
        .find(|t| *t == event.topic())
        .ok_or_else(|| TestCaseError::fail(format!("unknown topic in {event:?}")))?;
    let next = s.next[topic];
    let (epoch, last) = match &event {
        Event::Message(d) => {
            prop_assert_eq!(
                d.position.offset,
                next,
                "{}: {:?} instead of offset {}",
                s.name,
                event,
                next
            );
            let published = &model[topic];
            let expected = published.get(d.position.offset as usize - 1);
            prop_assert_eq!(
                Some(&d.key),
                expected,
                "{}: offset {} carries another message",
                s.name,
                d.position.offset
            );
            prop_assert_eq!(&d.payload[..], d.key.as_bytes());
            (d.position.epoch, d.position.offset)
        }
        Event::Gap {
            epoch, from, to, ..
        } => {
            prop_assert_eq!(
                *from,
                next,
                "{}: {:?} does not start at {}",
                s.name,
                event,
                next
            );
            prop_assert!(from <= to);
            gapped.push((topic, *from, *to));
            (*epoch, *to)
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "{}: unexpected {other:?}",
                s.name
            )))
        }
    };
    s.next.insert(topic, last + 1);
    if s.durable {
        s.sub
            .commit_position(topic, Position::new(epoch, last))
            .await
            .unwrap();
    }
    Ok(())
}

async fn subscribe(
    node: &Herald,
    durable: bool,
    buffer: usize,
) -> (Subscription, BTreeMap<&'static str, u64>) {
    // Where the subscription must start: nothing is published meanwhile (one thread).
    let mut next = BTreeMap::new();
    for t in TOPICS {
        let from = match node.cursor(t, DURABLE).await.unwrap() {
            Some(c) if durable => c.position.offset + 1,
            _ => {
                let info = node.inspect(t).await.unwrap();
                if durable && info.first_offset > 0 {
                    info.first_offset
                } else {
                    info.last_offset + 1
                }
            }
        };
        next.insert(t, from);
    }
    let b = node.subscribe(TOPICS).buffer(buffer);
    let b = if durable {
        b.durable(DURABLE).from(Start::Earliest)
    } else {
        b.from(Start::Latest)
    };
    (b.await.unwrap(), next)
}

async fn run(max_len: u64, buffers: [usize; 2], ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut defaults = TopicSettings::default();
    defaults.max_len = max_len;
    let broker = EmbeddedBroker::with_defaults(defaults);
    let node = |id: &str| {
        Herald::builder()
            .node_id(id)
            .embedded(broker.clone())
            .poll_interval(Duration::from_millis(10))
            .connect()
    };
    let publisher = node("pub").await.unwrap();
    let sub_node = node("sub").await.unwrap();

    let (a, next_a) = subscribe(&sub_node, true, buffers[0]).await;
    let (b, next_b) = subscribe(&sub_node, false, buffers[1]).await;
    let mut subs = [
        Sub {
            name: "durable",
            sub: a,
            durable: true,
            next: next_a,
        },
        Sub {
            name: "latest",
            sub: b,
            durable: false,
            next: next_b,
        },
    ];
    let mut model: Model = TOPICS.iter().map(|t| (*t, Vec::new())).collect();
    let mut gapped = Vec::new();
    let mut seq = 0u64;

    for op in ops {
        match op {
            Op::Publish { topic, n } => {
                let t = TOPICS[topic];
                let keys: Vec<String> = (0..n)
                    .map(|_| {
                        seq += 1;
                        format!("k{seq}")
                    })
                    .collect();
                let receipts = if n == 1 {
                    vec![publisher
                        .publish(t, Message::new(keys[0].clone()).key(keys[0].clone()))
                        .await
                        .unwrap()]
                } else {
                    let batch = keys.iter().map(|k| Message::new(k.clone()).key(k.clone()));
                    publisher.publish_batch(t, batch).await.unwrap()
                };
                for (r, k) in receipts.iter().zip(keys) {
                    prop_assert!(!r.duplicate);
                    model.get_mut(t).unwrap().push(k);
                    prop_assert_eq!(r.position.offset as usize, model[t].len());
                }
            }
            Op::Republish { topic, which } => {
                let t = TOPICS[topic];
                if !model[t].is_empty() {
                    let i = which.index(model[t].len());
                    let k = model[t][i].clone();
                    let r = publisher
                        .publish(t, Message::new(k.clone()).key(k))
                        .await
                        .unwrap();
                    prop_assert!(r.duplicate);
                    prop_assert_eq!(r.position.offset as usize, i + 1);
                }
            }
            Op::DropFeeds => broker.drop_live_feeds(),
            Op::Consume { sub, n } => {
                let s = &mut subs[sub];
                for _ in 0..n {
                    settle().await;
                    match s.sub.next().now_or_never() {
                        Some(Some(item)) => on_event(s, item, &model, &mut gapped).await?,
                        Some(None) => return Err(TestCaseError::fail("subscription ended")),
                        None => break,
                    }
                }
            }
            Op::Restart => {
                let (a, next) = subscribe(&sub_node, true, buffers[0]).await;
                // The old incarnation is dropped (replaced) only now, as a killed process.
                subs[0].sub = a;
                subs[0].next = next;
            }
            Op::Settle => settle().await,
            Op::Sleep => tokio::time::sleep(Duration::from_millis(12)).await,
        }
    }

    // Every subscriber must reach the end of every topic, contiguously.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &mut subs {
        while TOPICS.iter().any(|t| s.next[t] <= model[t].len() as u64) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.sub.next()).await {
                Ok(Some(item)) => on_event(s, item, &model, &mut gapped).await?,
                Ok(None) => return Err(TestCaseError::fail("subscription ended")),
                Err(_) => {
                    return Err(TestCaseError::fail(format!(
                        "{} stuck at {:?}; published {:?}",
                        s.name,
                        s.next,
                        model.iter().map(|(t, m)| (*t, m.len())).collect::<Vec<_>>()
                    )))
                }
            }
        }
        // And nothing more (no duplicate at the end).
        settle().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        if let Some(Some(item)) = s.sub.next().now_or_never() {
            return Err(TestCaseError::fail(format!(
                "{}: unexpected extra event {item:?}",
                s.name
            )));
        }
    }
    // Gaps only where retention trimmed.
    for (t, from, to) in gapped {
        let first = publisher.inspect(t).await.unwrap().first_offset;
        prop_assert!(
            to < first,
            "gap {}..={} on {} but the oldest retained offset is {}",
            from,
            to,
            t,
            first
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config({
        // 48 cases in CI (a few seconds); PROPTEST_CASES=N for a longer hunt.
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(48);
        let mut c = ProptestConfig::with_cases(cases);
        c.failure_persistence = None;
        c
    })]

    #[test]
    fn subscriber_state_machine(
        max_len in 2u64..12,
        buffer_a in 1usize..6,
        buffer_b in prop_oneof![Just(1usize), Just(3), Just(1024)],
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(run(max_len, [buffer_a, buffer_b], ops))?;
    }
}
