//! Quick start: three nodes on the embedded broker publish and all receive the same sequence.
//!
//! Run with `cargo run -p herald --example quickstart`. Pass a Redis URL as the first argument
//! (`cargo run -p herald --example quickstart -- redis://127.0.0.1:6379`) to use Redis instead.

use futures::StreamExt;
use herald::{EmbeddedBroker, Event, Herald, Message, Start};

#[tokio::main]
async fn main() -> Result<(), herald::Error> {
    let redis = std::env::args().nth(1);
    let broker = EmbeddedBroker::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let builder = Herald::builder().node_id(format!("node-{i}"));
        let builder = match &redis {
            Some(url) => builder.redis(url.clone()),
            None => builder.embedded(broker.clone()),
        };
        nodes.push(builder.connect().await?);
    }
    let topic = format!("quickstart-{}", std::process::id());

    // Every node subscribes before anyone publishes.
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(
            node.subscribe([topic.as_str()])
                .from(Start::Earliest)
                .await?,
        );
    }

    // Each node publishes two messages; the idempotency key makes retries harmless.
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..2 {
            let m = Message::new(format!("hello {n} from node-{}", i + 1))
                .key(format!("node-{}-{n}", i + 1));
            let receipt = node.publish(&topic, m).await?;
            println!(
                "node-{} published at offset {}",
                i + 1,
                receipt.position.offset
            );
        }
    }

    for (i, sub) in subs.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < 6 {
            match sub.next().await {
                Some(Ok(Event::Message(d))) => seen.push(d.position.offset),
                Some(Ok(other)) => println!("node-{} event: {other:?}", i + 1),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        println!("node-{} received offsets {seen:?}", i + 1);
    }
    Ok(())
}
