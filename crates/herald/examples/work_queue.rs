//! A work queue: three workers in the group `resizers` share the jobs of the topic `images`
//! (each job to one worker at a time, under a lease); one job always fails and lands on the
//! dead-letter topic after three deliveries, with its error; one job is delayed. A plain
//! subscriber still sees every message. Finally the group's state is printed.
//!
//! Embedded broker (no Redis needed): `cargo run -p herald --example work_queue`.
//! Real Redis: `cargo run -p herald --example work_queue -- redis://127.0.0.1:6379`.

mod common;
use common::Nodes;

use std::time::Duration;

use futures::StreamExt;
use herald::work::{dead_letter_topic, Backoff};
use herald::{Event, Message, Outcome, Start, WorkEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let place = Nodes::from_args();
    let (topic, group) = ("images", "resizers");
    let publisher = place.node("publisher").await?;
    let mut audit = publisher.subscribe([topic]).from(Start::Latest).await?;
    let dead_topic = dead_letter_topic(topic, group);
    let mut dead = publisher
        .subscribe([dead_topic.as_str()])
        .from(Start::Latest)
        .await?;

    let jobs = 10;
    let mut workers = Vec::new();
    for id in ["worker-1", "worker-2", "worker-3"] {
        let herald = place.node(id).await?;
        let mut worker = herald
            .work(topic)
            .group(group)
            .from(Start::Latest)
            .lease(Duration::from_secs(10))
            .concurrency(2)
            .max_deliveries(3)
            .backoff(Backoff::List(vec![Duration::from_millis(100)]))
            .start()
            .await?;
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(3), worker.next()).await
            {
                let WorkEvent::Job(job) = event? else {
                    continue;
                };
                let text = String::from_utf8_lossy(job.payload()).into_owned();
                // Side effects keyed by the position stay correct under redelivery.
                let outcome = if text.contains("corrupt") {
                    job.fail(format!("cannot decode {text}")).await?
                } else {
                    job.ack().await?
                };
                if outcome == Outcome::Acked {
                    println!("{id} did {text}");
                    done += 1;
                }
            }
            worker.close().await?;
            Ok::<_, herald::Error>((id, done))
        }));
    }

    for i in 1..=jobs {
        let name = if i == 4 {
            "corrupt.png".to_string()
        } else {
            format!("img-{i}.png")
        };
        let mut message = Message::new(name);
        if i == 1 {
            message = message.delay(Duration::from_millis(500));
        }
        publisher.publish(topic, message).await?;
    }

    let mut total = 0;
    for w in workers {
        let (id, done) = w.await??;
        println!("{id}: {done} jobs");
        total += done;
    }
    println!("{total} of {jobs} jobs done");
    if let Some(Ok(Event::Message(d))) = dead.next().await {
        println!(
            "dead letter: {} after {} deliveries: {}",
            String::from_utf8_lossy(&d.payload),
            d.headers["herald-dead-attempts"],
            d.headers["herald-dead-error"],
        );
    }
    let mut seen = 0;
    while seen < jobs {
        if let Some(Ok(Event::Message(_))) = audit.next().await {
            seen += 1;
        }
    }
    println!("the plain subscriber saw all {seen} messages");
    for info in publisher.work_groups(topic).await? {
        println!("{}", serde_json::to_string(&info)?);
    }
    Ok(())
}
