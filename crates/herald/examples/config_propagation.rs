//! Configuration propagation: three nodes join the member group `web`, follow the topic
//! `config` with a durable cursor named after their member id, apply each configuration
//! version and commit. The publisher publishes the next version and waits until every member
//! of `web` has applied it, then prints who did; finally the nodes leave the group.
//!
//! Embedded broker (no Redis needed): `cargo run -p herald --example config_propagation`.
//! Real Redis: `cargo run -p herald --example config_propagation -- redis://127.0.0.1:6379`.

mod common;
use common::Nodes;

use std::time::Duration;

use herald::{Acks, Event, Message, Start};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let place = Nodes::from_args();
    let (group, topic) = ("web", "config");
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let mut nodes = Vec::new();
    for id in ["web-1", "web-2", "web-3"] {
        let herald = place.node(id).await?;
        // Follow the topic first, then join: once the member is visible, it acknowledges.
        let mut config = herald
            .subscribe([topic])
            .durable(id)
            .from(Start::Earliest)
            .await?;
        let membership = herald
            .join(group)
            .meta("role", "web")
            .ttl(Duration::from_secs(5))
            .await?;
        println!("{id}: joined {group}");
        let mut stopped = stopped.clone();
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stopped.changed() => break,
                    event = config.next_event() => match event {
                        Some(event) => event,
                        None => break,
                    },
                };
                match event {
                    Ok(Event::Message(d)) => {
                        let version = String::from_utf8_lossy(&d.payload).into_owned();
                        // "Apply" the configuration, then acknowledge it by committing.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        println!(
                            "{}: applied config {version} (offset {})",
                            membership.id(),
                            d.position.offset
                        );
                        if let Err(e) = config.commit(&d).await {
                            eprintln!("{}: commit failed: {e}", membership.id());
                        }
                    }
                    Ok(other) => println!("{}: {other:?}", membership.id()),
                    Err(e) => eprintln!("{}: {e}", membership.id()),
                }
            }
            let id = membership.id().to_string();
            match membership.leave().await {
                Ok(()) => println!("{id}: left {group}"),
                Err(e) => eprintln!("{id}: leave failed: {e}"),
            }
        });
        nodes.push(task);
    }

    let publisher = place.node("operator").await?;
    let members = publisher.members(group).await?;
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    println!("operator: members of {group}: {ids:?}");
    let version = format!("v{}", publisher.inspect(topic).await?.last_offset + 1);
    let receipt = publisher
        .publish(topic, Message::new(version.clone()))
        .await?;
    println!(
        "operator: published config {version} at offset {}",
        receipt.position.offset
    );
    let report = publisher
        .wait_for_acks(&receipt, group)
        .acks(Acks::All)
        .timeout(Duration::from_secs(10))
        .await?;
    if report.complete {
        println!(
            "operator: config {version} applied by all {} members in {} ms: {:?}",
            report.acked.len(),
            report.waited_ms,
            report.acked
        );
    } else {
        println!(
            "operator: timed out; applied by {:?}, not by {:?}, expired {:?}",
            report.acked, report.pending, report.expired
        );
    }
    let _ = stop.send(true);
    for task in nodes {
        task.await?;
    }
    if report.complete {
        Ok(())
    } else {
        Err("not every member applied the configuration".into())
    }
}
