//! The work-group cases (`work{1,4,16}-128B-max`, `work4-128B-1000/s`): N workers, each with
//! its own connection or handle, share the messages of one topic in one group; every message
//! is processed once and acked. Reported: processed messages/s (acked jobs/s, all workers
//! together: `delivered_per_s`, expected = published) and publish-to-start latency (from the
//! publish call to the job reaching a worker: `p50_us`, `p99_us`).
//!
//! - `redis-streams` (the raw baseline of these cases) is a Redis Streams consumer group: the
//!   publisher XADDs one entry per message (pipelined, as in the fan-out cases), the group is
//!   created before (`XGROUP CREATE key g 0 MKSTREAM`), and each worker loops on
//!   `XREADGROUP GROUP g w<i> COUNT 16 BLOCK 1000 STREAMS key >` and then XACKs each entry it
//!   read with a command of its own (all of one read at once, pipelined on its connection),
//!   waiting for the acks before reading again.
//! - `herald`: each worker is a Herald handle of its own running
//!   `work(topic).group("bench").concurrency(16)` (leases, heartbeats and fencing as in any
//!   deployment: 30 s lease, 5 s member time to live), started before publishing; each job
//!   is acked as it arrives (`Job::ack`, the acks of one worker concurrently, at most 16 out).
//!
//! The same publisher as the fan-out cases: `publish_batch` of 64 at full speed, one
//! `publish` per message at a fixed rate. A message processed by two workers is counted once
//! per worker (duplicates are only seen within one worker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use herald::{Outcome, WorkEvent};
use redis::Value;
use tokio::sync::watch;

use super::baseline::{connection, walk_entry_ids, xread_entries, StreamPublisher};
use super::cases::{drive_fan_out, FanOutRun, Measured, Tally, Tasks};
use super::herald_case::{connect, HeraldPublisher};
use super::{BenchError, Ctx};

/// Jobs a worker holds at once: Herald's concurrency, the baseline's `COUNT`.
pub(crate) const WORK_BATCH: usize = 16;
/// The group of both systems.
const GROUP: &str = "bench";
/// How long one XREADGROUP blocks waiting for entries, in milliseconds.
const BLOCK_MS: u64 = 1000;

/// The raw baseline: a Redis Streams consumer group on `key`.
pub(crate) async fn groups(ctx: &Ctx, run: &FanOutRun, key: &str) -> Result<Measured, BenchError> {
    let mut admin = connection(ctx, Some(Duration::from_secs(10))).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(&mut admin)
        .await
        .map_err(|e| BenchError::redis("XGROUP CREATE", e))?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for w in 0..run.case.subscribers() {
        let mut conn = connection(ctx, Some(Duration::from_millis(BLOCK_MS + 5000))).await?;
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let consumer = format!("w{w}");
            loop {
                let read = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(WORK_BATCH)
                    .arg("BLOCK")
                    .arg(BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .to_owned();
                let reply = tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    reply = read.query_async::<Value>(&mut conn) => reply,
                };
                let entries = match reply.map_err(|e| e.to_string()).and_then(xread_entries) {
                    Ok(entries) => entries,
                    Err(e) => {
                        tally.error(format!("XREADGROUP failed: {e}"));
                        break;
                    }
                };
                let started = Instant::now();
                let mut jobs = Vec::with_capacity(entries.len());
                if let Err(e) = walk_entry_ids(entries, |id, payload| {
                    jobs.push((id.to_vec(), payload.to_vec()));
                }) {
                    tally.error(e);
                    break;
                }
                let acks = jobs.iter().map(|(id, _)| {
                    let mut conn = conn.clone();
                    let cmd = redis::cmd("XACK").arg(&key).arg(GROUP).arg(id).to_owned();
                    async move { cmd.query_async::<u64>(&mut conn).await }
                });
                let acked = futures::future::join_all(acks).await;
                for ((_, payload), ack) in jobs.iter().zip(acked) {
                    match ack {
                        Ok(1) => tally.message_started(payload, started),
                        Ok(n) => tally.error(format!("XACK acknowledged {n} entries, not 1")),
                        Err(e) => tally.error(format!("XACK failed: {e}")),
                    }
                }
            }
            tally
        }));
    }
    let publisher = StreamPublisher {
        conn: connection(ctx, Some(Duration::from_secs(5))).await?,
        key: key.to_string(),
    };
    drive_fan_out(run, &mut [publisher], &mut tasks, &stop).await
}

/// An ack in flight: its outcome, the job's payload and when the job reached the worker.
type AckFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (herald::Result<Outcome>, Vec<u8>, Instant)> + Send>,
>;

/// Herald: a work group on `topic`, each worker a handle of its own.
pub(crate) async fn herald(
    ctx: &Ctx,
    run: &FanOutRun,
    topic: &str,
) -> Result<Measured, BenchError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for w in 0..run.case.subscribers() {
        let node = connect(ctx, format!("bench-worker-{w}")).await?;
        let mut worker = node
            .work(topic)
            .group(GROUP)
            .concurrency(WORK_BATCH)
            .start()
            .await
            .map_err(|e| BenchError::herald("start a worker", e))?;
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    Some((outcome, payload, started)) = acks.next(), if !acks.is_empty() => {
                        match outcome {
                            Ok(Outcome::Acked) => tally.message_started(payload.as_slice(), started),
                            Ok(other) => tally.error(format!("an ack answered {other:?}")),
                            Err(e) => tally.error(format!("an ack failed: {e}")),
                        }
                    }
                    event = worker.next() => match event {
                        Some(Ok(WorkEvent::Job(job))) => {
                            let started = Instant::now();
                            let payload = job.payload().to_vec();
                            acks.push(Box::pin(async move { (job.ack().await, payload, started) }));
                        }
                        Some(Ok(other)) => tally.error(format!("unexpected event {other:?}")),
                        Some(Err(e)) => tally.error(e.to_string()),
                        None => {
                            tally.error("the worker ended");
                            break;
                        }
                    },
                }
            }
            drop(acks);
            let _ = worker.close().await;
            drop(node);
            tally
        }));
    }
    let mut publisher = HeraldPublisher::new(
        connect(ctx, "bench-pub".into()).await?,
        vec![topic.to_string()],
    );
    drive_fan_out(run, std::slice::from_mut(&mut publisher), &mut tasks, &stop).await
}
