//! Herald under the same workloads as the baselines.
//!
//! In the cluster case the handles connect with `redis+cluster://` to the private cluster,
//! every subscriber subscribes to all the case's topics at once, and the publisher sends each
//! batch of 64 to the next topic in turn.
//!
//! Each publisher is its own Herald handle (one, or those of a several-publishers case); each
//! subscriber is its own Herald handle (its own Redis connections, as a separate node would
//! have; a subscription has no connection of its own within a handle) with `subscribe([topic])
//! .from(Start::Earliest)` and the default buffer. At full speed the publisher calls
//! `publish_batch` with 64 messages at a time (the baselines pipeline 64 commands); at a
//! fixed rate it calls `publish` once per message, concurrently (the handle coalesces the
//! publishes of one tick into one call). Catch-up publishes the
//! history with `publish_batch` (1000 at a time), then a new subscriber reads it from the
//! earliest message to the end. In a many-topics case the one subscriber subscribes to every
//! topic at once, its readiness is the time the `subscribe` call takes, and each message of a
//! batch goes to the next topic by a `publish` call of its own, all concurrently. Gap, reset
//! and error events count as errors, and whatever they hide is counted as lost.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use herald::{Event, Herald, Start, Subscription};
use tokio::sync::watch;

use super::cases::{
    drive_fan_out, prefill, FanOutRun, InTurn, Measured, Publisher, RunCounters, Tally, Tasks,
};
use super::{report, BenchError, Ctx};

/// Publishes through one handle, each call to the next of its topics in turn.
pub(crate) struct HeraldPublisher {
    node: Herald,
    topics: InTurn,
}

impl HeraldPublisher {
    pub(crate) fn new(node: Herald, topics: Vec<String>) -> Self {
        HeraldPublisher {
            node,
            topics: InTurn::new(topics),
        }
    }
}

impl Publisher for HeraldPublisher {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let topic = self.topics.next()?;
        self.node
            .publish_batch(topic, payloads)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::herald("publish_batch", e))
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let topic = self.topics.next()?;
        let sends = payloads.into_iter().map(|p| self.node.publish(topic, p));
        futures::future::try_join_all(sends)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::herald("publish", e))
    }

    async fn send_spread(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let mut topics = Vec::with_capacity(payloads.len());
        for _ in 0..payloads.len() {
            topics.push(self.topics.next()?.to_string());
        }
        let sends = topics
            .iter()
            .zip(payloads)
            .map(|(topic, p)| self.node.publish(topic, p));
        futures::future::try_join_all(sends)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::herald("publish", e))
    }
}

/// A handle of its own for `node_id`.
pub(crate) async fn connect(ctx: &Ctx, node_id: String) -> Result<Herald, BenchError> {
    let mut defaults = herald::TopicSettings::default();
    // History must hold a whole case, so that a subscriber that falls behind can catch up
    // rather than lose messages to retention (the baselines keep everything too).
    defaults.max_len = defaults.max_len.max(ctx.herald_max_len);
    Herald::builder()
        .redis(ctx.url.clone())
        .namespace(ctx.prefix.clone())
        .node_id(node_id)
        .topic_defaults(defaults)
        .connect()
        .await
        .map_err(|e| BenchError::herald("connect", e))
}

/// Receives events into `tally` until it has `until` messages, `stop` fires, or the
/// subscription ends.
async fn consume(
    sub: &mut Subscription,
    tally: &mut Tally,
    until: u64,
    stop: &mut watch::Receiver<bool>,
) {
    while tally.delivered < until {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            event = sub.next() => match event {
                Some(Ok(Event::Message(d))) => tally.message(&d.payload),
                Some(Ok(Event::Gap { from, to, reason, .. })) => {
                    tally.error(format!("gap {from}..={to} ({reason:?})"));
                }
                Some(Ok(Event::Reset { last_delivered, epoch, .. })) => {
                    tally.error(format!("reset from {last_delivered} to epoch {epoch}"));
                }
                Some(Ok(other)) => tally.error(format!("unexpected event {other:?}")),
                Some(Err(e)) => tally.error(e.to_string()),
                None => {
                    tally.error("the subscription ended");
                    return;
                }
            },
        }
    }
}

/// Fan-out through Herald: every subscriber subscribes to all of `topics`, the case's
/// publishers (each its own handle) send each batch to the next topic in turn (spread: each
/// message); one topic for the fan-out cases, several for the several-publishers cases, many
/// for the many-topics and cluster cases (`ctx` says where Redis is).
pub(crate) async fn fan_out(
    ctx: &Ctx,
    run: &FanOutRun,
    topics: &[String],
) -> Result<Measured, BenchError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    let rss_before = report::rss_kib();
    let mut ready = None;
    for i in 0..run.case.subscribers() {
        let node = connect(ctx, format!("bench-sub-{i}")).await?;
        let started = Instant::now();
        let mut sub = node
            .subscribe(topics.iter().cloned())
            .from(Start::Earliest)
            .await
            .map_err(|e| BenchError::herald("subscribe", e))?;
        ready = Some(started.elapsed());
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            consume(&mut sub, &mut tally, u64::MAX, &mut stopped).await;
            drop(sub);
            drop(node);
            tally
        }));
    }
    let rss_after = report::rss_kib();
    let mut publishers = Vec::with_capacity(run.case.publishers());
    for p in 0..run.case.publishers() {
        let node = connect(ctx, format!("bench-pub-{p}")).await?;
        publishers.push(HeraldPublisher {
            node,
            topics: InTurn::starting_at(topics.to_vec(), p),
        });
    }
    let mut m = drive_fan_out(run, &mut publishers, &mut tasks, &stop).await?;
    if run.case.spreads_messages() {
        m.ready = ready;
        m.subscriber_rss_kib = match (rss_before, rss_after) {
            (Some(before), Some(after)) => Some(after as i64 - before as i64),
            _ => None,
        };
    }
    Ok(m)
}

/// Catch-up through Herald: publish `n` messages, then one new subscriber reads them all.
pub(crate) async fn catch_up(
    ctx: &Ctx,
    n: u64,
    payload: usize,
    topic: &str,
    counters: &Arc<RunCounters>,
) -> Result<Measured, BenchError> {
    let mut publisher = HeraldPublisher::new(
        connect(ctx, "bench-pub".into()).await?,
        vec![topic.to_string()],
    );
    let publish_elapsed = prefill(
        &mut publisher,
        ctx.base,
        n,
        payload,
        counters,
        ctx.run_timeout,
    )
    .await?;
    let node = connect(ctx, "bench-catchup".into()).await?;
    let mut tally = Tally::new(ctx.base, Arc::clone(counters), n, false)?;
    let (_stop, mut stopped) = watch::channel(false);
    let started = Instant::now();
    let mut sub = node
        .subscribe([topic])
        .from(Start::Earliest)
        .await
        .map_err(|e| BenchError::herald("subscribe", e))?;
    let read = consume(&mut sub, &mut tally, n, &mut stopped);
    if tokio::time::timeout(ctx.run_timeout, read).await.is_err() {
        tally.error(format!(
            "reading did not finish within {:?}",
            ctx.run_timeout
        ));
    }
    Measured::from_tallies(n, publish_elapsed, n, started, vec![tally])
}
