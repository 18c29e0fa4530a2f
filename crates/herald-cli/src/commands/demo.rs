//! `herald demo [--nodes N] [--messages M]`: several nodes in one process broadcast to each
//! other and a short human-readable report shows that every node received the same sequence.
//!
//! The nodes share an in-process [`EmbeddedBroker`] unless `--redis` (or `HERALD_REDIS_URL`)
//! is given explicitly, in which case each node connects to that Redis on its own and the
//! demo uses a fresh topic `demo-<unix millis>`, so reruns never mix.
//!
//! Steps: every node subscribes from the earliest offset *before* anything is published;
//! then all nodes publish M messages each, concurrently, each with an idempotency key; then
//! every node collects exactly N×M messages (bounded by [`COLLECT_WAIT`]). The report gives,
//! per node, the count, the offset range, whether the offsets were exactly 1..=N×M, and a
//! fingerprint (64-bit FNV-1a over the sequence of offsets and payloads): equal fingerprints
//! mean the same messages in the same order. It also checks every message landed at the
//! offset its publisher was told, and shows idempotency: a re-published key comes back as a
//! duplicate with the original offset and appends nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::StreamExt;
use herald::{EmbeddedBroker, Event, Herald, Message, Receipt, Start, Subscription};
use tokio::task::JoinSet;

use super::{connect_builder, GlobalArgs};
use crate::exit::{Failure, FAILURE};

/// How long the nodes may take to receive every message.
const COLLECT_WAIT: Duration = Duration::from_secs(30);

/// Arguments of `herald demo`.
#[derive(Debug, Args)]
#[command(
    long_about = "Run several nodes in this process, let them all publish to one topic \
concurrently, and show that every node received the same messages in the same order, each \
once, and that re-publishing an idempotency key appends nothing.\n\n\
The nodes share an in-process broker, unless --redis URL (or HERALD_REDIS_URL) is given: then \
each node connects to that Redis and the demo uses a new topic demo-<unix millis>.\n\n\
Exit status 0 when every check passed (the last line starts with OK:), 1 when one failed \
(FAIL:)."
)]
pub(crate) struct DemoArgs {
    /// How many nodes
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,

    /// How many messages each node publishes
    #[arg(long, value_name = "M", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    messages: u32,
}

/// Where the nodes' topic lives.
enum Backend {
    Embedded(EmbeddedBroker),
    Redis(String),
}

/// What one node received.
#[derive(Debug, Default)]
struct Received {
    /// (offset, payload) in delivery order.
    messages: Vec<(u64, Vec<u8>)>,
    /// Gap and reset events and subscription errors, described.
    problems: Vec<String>,
    /// True when [`COLLECT_WAIT`] passed before every message arrived.
    timed_out: bool,
}

/// Runs `herald demo`.
pub(crate) async fn run(global: &GlobalArgs, args: DemoArgs) -> Result<(), Failure> {
    let nodes = args.nodes;
    let per_node = args.messages;
    let total = u64::from(nodes) * u64::from(per_node);
    let (backend, topic) = match &global.redis {
        Some(url) => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            (Backend::Redis(url.clone()), format!("demo-{millis}"))
        }
        None => (Backend::Embedded(EmbeddedBroker::new()), "demo".to_string()),
    };
    let mut report = Report::default();
    report.line(format_args!(
        "herald demo: {nodes} nodes publish {per_node} messages each to topic {topic:?} ({})",
        match &backend {
            Backend::Embedded(_) => "in-process embedded broker".to_string(),
            Backend::Redis(_) => format!("Redis, namespace {:?}", global.namespace),
        }
    ))?;

    // Connect every node and subscribe it from the earliest offset, before anyone publishes.
    let mut handles = Vec::new();
    let mut subs = Vec::new();
    for i in 1..=nodes {
        let builder = Herald::builder().node_id(format!("node-{i}"));
        let herald = match &backend {
            Backend::Embedded(broker) => builder.embedded(broker.clone()).connect().await?,
            Backend::Redis(url) => {
                let builder = builder
                    .redis(url.as_str())
                    .namespace(global.namespace.as_str());
                connect_builder(builder, global.connect_timeout).await?
            }
        };
        subs.push(
            herald
                .subscribe([topic.as_str()])
                .from(Start::Earliest)
                .await?,
        );
        handles.push(herald);
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + COLLECT_WAIT;
    let mut collectors = JoinSet::new();
    for (i, sub) in subs.into_iter().enumerate() {
        collectors.spawn(async move { (i, collect(sub, total, deadline).await) });
    }

    // All nodes publish concurrently.
    let mut publishers = JoinSet::new();
    for (i, herald) in handles.iter().enumerate() {
        let (herald, topic) = (herald.clone(), topic.clone());
        publishers.spawn(async move {
            let mut receipts = Vec::new();
            for j in 1..=per_node {
                let message =
                    Message::new(format!("node-{} #{j}", i + 1)).key(format!("node-{}-{j}", i + 1));
                receipts.push((j, herald.publish(&topic, message).await?));
            }
            Ok::<_, herald::Error>((i, receipts))
        });
    }
    // payload -> the offset its publisher was told; node-1's first receipt for the replay.
    let mut placed: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut first_of_node_1: Option<Receipt> = None;
    while let Some(joined) = publishers.join_next().await {
        let (i, receipts) =
            joined.map_err(|e| Failure::other(format!("a publisher failed: {e}")))??;
        for (j, receipt) in receipts {
            placed.insert(
                format!("node-{} #{j}", i + 1).into_bytes(),
                receipt.position.offset,
            );
            if i == 0 && j == 1 {
                first_of_node_1 = Some(receipt);
            }
        }
    }
    let published_in = started.elapsed();

    let mut received: Vec<Received> = (0..nodes).map(|_| Received::default()).collect();
    while let Some(joined) = collectors.join_next().await {
        let (i, r) = joined.map_err(|e| Failure::other(format!("a subscriber failed: {e}")))?;
        if let Some(slot) = received.get_mut(i) {
            *slot = r;
        }
    }
    let received_in = started.elapsed();
    report.line(format_args!(
        "published {} messages in {} ms; every node had them after {} ms",
        placed.len(),
        published_in.as_millis(),
        received_in.as_millis()
    ))?;
    report.line(format_args!(""))?;

    // Per node: count, offset range, density, fingerprint.
    let mut failures: Vec<String> = Vec::new();
    report.line(format_args!(
        "{:<8} {:>8}  {:<16} {:<6} {}",
        "node", "received", "offsets", "dense", "fingerprint"
    ))?;
    let mut fingerprints = Vec::new();
    for (i, r) in received.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let dense = r.messages.iter().map(|(o, _)| *o).eq(1..=total);
        let range = match (r.messages.first(), r.messages.last()) {
            (Some((first, _)), Some((last, _))) => format!("{first}..={last}"),
            _ => "-".to_string(),
        };
        let fp = fingerprint(&r.messages);
        fingerprints.push(fp);
        report.line(format_args!(
            "{name:<8} {:>8}  {range:<16} {:<6} {fp:016x}",
            r.messages.len(),
            if dense { "yes" } else { "NO" },
        ))?;
        if r.timed_out {
            failures.push(format!(
                "{name} received only {} of {total} messages within {} s",
                r.messages.len(),
                COLLECT_WAIT.as_secs()
            ));
        } else if !dense {
            failures.push(format!("{name}'s offsets were not exactly 1..={total}"));
        }
        for p in &r.problems {
            failures.push(format!("{name}: {p}"));
        }
        let misplaced = r
            .messages
            .iter()
            .filter(|(o, p)| placed.get(p) != Some(o))
            .count();
        if misplaced > 0 {
            failures.push(format!(
                "{name} received {misplaced} messages at an offset other than their publisher was told"
            ));
        }
    }
    if fingerprints.windows(2).any(|w| w[0] != w[1]) {
        failures.push("the nodes' fingerprints differ: they saw different sequences".into());
    }

    // Idempotency: node-1 publishes its first key again.
    report.line(format_args!(""))?;
    match (handles.first(), first_of_node_1) {
        (Some(node_1), Some(original)) => {
            let again = node_1
                .publish(&topic, Message::new("node-1 #1").key("node-1-1"))
                .await?;
            let last = node_1.inspect(&topic).await?.last_offset;
            report.line(format_args!(
                "idempotency: node-1 re-published key \"node-1-1\": duplicate: {}, offset {} \
                 (original offset {}); the topic still ends at offset {last}",
                again.duplicate, again.position.offset, original.position.offset
            ))?;
            if !again.duplicate
                || again.position.offset != original.position.offset
                || last != total
            {
                failures.push("re-publishing an idempotency key was not a clean duplicate".into());
            }
        }
        _ => failures.push("node-1 published nothing".into()),
    }

    if failures.is_empty() {
        report.line(format_args!(
            "OK: all {nodes} nodes received the same {total} messages in the same order"
        ))?;
        Ok(())
    } else {
        report.line(format_args!("FAIL: {}", failures.join("; ")))?;
        Err(Failure::new(FAILURE, "demo failed; see the report above"))
    }
}

/// Reads `sub` until it delivered `total` messages or `deadline` passed.
async fn collect(mut sub: Subscription, total: u64, deadline: tokio::time::Instant) -> Received {
    let mut r = Received::default();
    while (r.messages.len() as u64) < total {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => {
                r.timed_out = true;
                break;
            }
            Ok(None) => {
                r.problems.push("the subscription ended".into());
                break;
            }
            Ok(Some(Err(e))) => r.problems.push(e.to_string()),
            Ok(Some(Ok(Event::Message(d)))) => {
                r.messages.push((d.position.offset, d.payload.to_vec()))
            }
            Ok(Some(Ok(other))) => r.problems.push(format!("unexpected event {other:?}")),
        }
    }
    r
}

/// 64-bit FNV-1a over each (offset, payload length, payload), in order.
fn fingerprint(messages: &[(u64, Vec<u8>)]) -> u64 {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = BASIS;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for (offset, payload) in messages {
        eat(&offset.to_le_bytes());
        eat(&(payload.len() as u64).to_le_bytes());
        eat(payload);
    }
    hash
}

/// The human-readable report, printed line by line as it is written.
#[derive(Default)]
struct Report {
    line: String,
}

impl Report {
    /// Prints one line and flushes it.
    fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
        self.line.clear();
        let _ = self.line.write_fmt(args);
        self.line.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(self.line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Failure::stdout(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_order_and_content() {
        let a = vec![(1, b"x".to_vec()), (2, b"y".to_vec())];
        let b = vec![(1, b"y".to_vec()), (2, b"x".to_vec())];
        let c = vec![(1, b"xy".to_vec()), (2, Vec::new())];
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
