//! One subscription over many topics (more than one batch of head reads on Redis): each topic
//! starts where it was asked to, whether it has history or no log yet, on both backends.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;
use support::on_both_backends;

use std::collections::HashMap;

use herald::{Event, Start};
use support::{next_event, Backend};

on_both_backends!(
    a_subscription_over_many_topics_starts_each_where_asked,
    a_durable_subscription_over_many_topics_resumes_each_cursor,
);

/// More topics than one batch of head reads holds (256 on Redis), so that several batches run.
const TOPICS: usize = 600;

fn topic(i: usize) -> String {
    format!("many-{i}")
}

/// Every third topic holds two messages before the subscriptions start.
fn has_history(i: usize) -> bool {
    i % 3 == 0
}

/// Receives `count` messages and returns the offsets per topic, in delivery order.
async fn offsets(sub: &mut herald::Subscription, count: usize) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..count {
        match next_event(sub).await {
            Event::Message(d) => seen.entry(d.topic).or_default().push(d.position.offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

async fn a_subscription_over_many_topics_starts_each_where_asked(b: Backend) {
    let node = b.node("n").await;
    let names: Vec<String> = (0..TOPICS).map(topic).collect();
    for (i, t) in names.iter().enumerate() {
        if has_history(i) {
            node.publish(t, "old-1").await.unwrap();
            node.publish(t, "old-2").await.unwrap();
        }
    }
    let mut earliest = node
        .subscribe(names.clone())
        .from(Start::Earliest)
        .buffer(4 * TOPICS)
        .await
        .unwrap();
    let mut latest = node
        .subscribe(names.clone())
        .from(Start::Latest)
        .buffer(4 * TOPICS)
        .await
        .unwrap();
    let publishes = names.iter().map(|t| node.publish(t, "new"));
    for r in futures::future::join_all(publishes).await {
        r.unwrap();
    }
    let with_history = (0..TOPICS).filter(|&i| has_history(i)).count();
    let all = offsets(&mut earliest, TOPICS + 2 * with_history).await;
    let new = offsets(&mut latest, TOPICS).await;
    for (i, t) in names.iter().enumerate() {
        if has_history(i) {
            assert_eq!(all[t], vec![1, 2, 3], "{t} from the earliest");
            assert_eq!(new[t], vec![3], "{t} from the latest");
        } else {
            assert_eq!(
                all[t],
                vec![1],
                "{t} (no log at the start) from the earliest"
            );
            assert_eq!(new[t], vec![1], "{t} (no log at the start) from the latest");
        }
    }
}

async fn a_durable_subscription_over_many_topics_resumes_each_cursor(b: Backend) {
    let node = b.node("n").await;
    let names: Vec<String> = (0..TOPICS).map(topic).collect();
    for (i, t) in names.iter().enumerate() {
        if has_history(i) {
            node.publish(t, "old-1").await.unwrap();
            node.publish(t, "old-2").await.unwrap();
        }
    }
    {
        let mut sub = node
            .subscribe(names.clone())
            .from(Start::Earliest)
            .durable("c")
            .buffer(4 * TOPICS)
            .await
            .unwrap();
        // Commit the first message of each topic with history.
        let with_history = (0..TOPICS).filter(|&i| has_history(i)).count();
        let mut committed = 0;
        for _ in 0..2 * with_history {
            match next_event(&mut sub).await {
                Event::Message(d) if d.position.offset == 1 => {
                    sub.commit(&d).await.unwrap();
                    committed += 1;
                }
                Event::Message(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(committed, with_history);
    }
    let mut sub = node
        .subscribe(names.clone())
        .from(Start::Latest)
        .durable("c")
        .buffer(4 * TOPICS)
        .await
        .unwrap();
    let publishes = names.iter().map(|t| node.publish(t, "new"));
    for r in futures::future::join_all(publishes).await {
        r.unwrap();
    }
    let with_history = (0..TOPICS).filter(|&i| has_history(i)).count();
    let seen = offsets(&mut sub, TOPICS + with_history).await;
    for (i, t) in names.iter().enumerate() {
        if has_history(i) {
            assert_eq!(seen[t], vec![2, 3], "{t} resumes after its cursor");
        } else {
            assert_eq!(seen[t], vec![1], "{t} (no cursor, no log) from the latest");
        }
    }
}
