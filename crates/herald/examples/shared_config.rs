//! Shared configuration with a replicated map: three nodes join the member group `web` and
//! watch the map `config` as members (`Map::watch_as`), each holding its own copy; an operator
//! changes the configuration with `put_and_wait` / `delete_and_wait`, which return once every
//! node's watcher has applied the change, and prints who did. Then one node stops applying
//! (it keeps its watch but no longer reads it): the next change reports it as not applied.
//!
//! Embedded broker (no Redis needed): `cargo run -p herald --example shared_config`.
//! Real Redis: `cargo run -p herald --example shared_config -- redis://127.0.0.1:6379`.

mod common;
use common::Nodes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use herald::AckReport;

type Config = Arc<Mutex<BTreeMap<String, Bytes>>>;

fn show(config: &Config) -> String {
    let config = config.lock().map(|c| c.clone()).unwrap_or_default();
    let parts: Vec<String> = config
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn print_report(what: &str, report: &AckReport) {
    println!(
        "operator: {what} at revision {}: applied by {:?}, not applied by {:?} ({} ms){}",
        report.position,
        report.acked,
        report.pending,
        report.waited_ms,
        if report.complete {
            ""
        } else {
            "  <- incomplete"
        }
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let place = Nodes::from_args();
    let (group, name) = ("web", "config");

    let operator = place.node("operator").await?.map(name)?;
    operator.put("log-level", "info").await?;

    // Each node: join the group, watch the map as that member, apply every event to its copy.
    let mut nodes = Vec::new();
    for id in ["web-1", "web-2", "web-3"] {
        let herald = place.node(id).await?;
        let membership = herald.join(group).ttl(Duration::from_secs(5)).await?;
        let mut watch = herald.map(name)?.watch_as(membership.id()).await?;
        let config: Config = Arc::default();
        let copy = config.clone();
        let (pause, paused) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let _membership = membership; // heartbeats while the node runs
            let mut paused = paused;
            while let Some(event) = watch.next().await {
                // A paused node keeps its watch but stops applying.
                while *paused.borrow_and_update() {
                    if paused.changed().await.is_err() {
                        return;
                    }
                }
                match event {
                    // Asking for the next event reports this one as applied.
                    Ok(event) => {
                        if let Ok(mut c) = copy.lock() {
                            herald::map::apply(&mut c, &event);
                        }
                    }
                    Err(e) => eprintln!("watch failed: {e}"),
                }
            }
        });
        println!("{id}: joined {group} and watches map {name:?}");
        nodes.push((id, config, pause, task));
    }

    for (key, value) in [("log-level", "debug"), ("feature/dark-mode", "on")] {
        let report = operator
            .put_and_wait(key, value, group)
            .timeout(Duration::from_secs(10))
            .await?;
        print_report(&format!("put {key}={value}"), &report);
        for (id, config, _, _) in &nodes {
            println!("  {id} holds {}", show(config));
        }
    }
    if let Some(report) = operator
        .delete_and_wait("feature/dark-mode", group)
        .timeout(Duration::from_secs(10))
        .await?
    {
        print_report("delete feature/dark-mode", &report);
    }

    // web-3 stops applying: the next change is reported as not applied by it.
    let _ = nodes[2].2.send(true);
    tokio::task::yield_now().await;
    let report = operator
        .put_and_wait("log-level", "warn", group)
        .timeout(Duration::from_secs(2))
        .await?;
    print_report("put log-level=warn", &report);
    for (id, config, _, _) in &nodes {
        println!("  {id} holds {}", show(config));
    }
    // It resumes and catches up.
    let _ = nodes[2].2.send(false);
    let report = operator
        .wait_applied(report.position, group)
        .timeout(Duration::from_secs(10))
        .await?;
    print_report("web-3 resumed; log-level=warn", &report);
    println!("  web-3 holds {}", show(&nodes[2].1));

    for (_, _, _, task) in nodes {
        task.abort();
    }
    Ok(())
}
