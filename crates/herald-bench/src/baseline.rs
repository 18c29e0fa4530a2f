//! The raw Redis baselines Herald is compared with, in the same process layout.
//!
//! - `redis-pubsub`: the publisher PUBLISHes (pipelined in batches of 64 at full speed), each
//!   subscriber SUBSCRIBEs on its own connection. Pub/Sub keeps no history, so it has no
//!   catch-up case; a subscriber Redis disconnects (e.g. past `client-output-buffer-limit`)
//!   simply loses messages, which are counted as lost (and the disconnect as a problem).
//!   Several publishers each have their own connection and send each batch to the next of
//!   the case's channels in turn; in a many-topics case the one subscriber SUBSCRIBEs every
//!   channel in one command and then reads one key per channel in a pipeline (the least a
//!   client positioning itself in each topic must read), and each message of a batch goes to
//!   the next channel.
//! - `redis-streams`: the publisher XADDs (pipelined likewise), each subscriber loops on
//!   `XREAD COUNT 1024 BLOCK 1000` on its own connection; catch-up reads the stream with
//!   `XRANGE ... COUNT 1024` from the start to the end.
//! - in the cluster case, `redis-pubsub` is sharded Pub/Sub: the publisher SPUBLISHes
//!   (pipelined in batches of 64, each batch to the next channel, routed to the primary of its
//!   slot) over a cluster connection; each subscriber has a RESP3 cluster connection of its
//!   own and SSUBSCRIBEs every channel.
//!
//! Replies are walked as raw [`Value`]s and only the payload field is looked at, which is the
//! least a real consumer does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use super::cases::{
    drive_fan_out, prefill, FanOutRun, InTurn, Measured, Publisher, RunCounters, Tally, Tasks,
    READ_COUNT,
};
use super::{report, BenchError, Ctx};

/// How long one XREAD blocks waiting for entries, in milliseconds.
const BLOCK_MS: u64 = 1000;

/// A connection whose commands may take `response_timeout` (None: no limit).
pub(crate) async fn connection(
    ctx: &Ctx,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, BenchError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(response_timeout);
    ctx.client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| BenchError::redis("connect to Redis", e))
}

/// Publishes with PUBLISH on one connection, each call (or, spread, each message) to the next
/// of its channels in turn.
struct PubsubPublisher {
    conn: MultiplexedConnection,
    channels: InTurn,
}

impl Publisher for PubsubPublisher {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let channel = self.channels.next()?;
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("PUBLISH").arg(channel).arg(p).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BenchError::redis("PUBLISH", e))
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let channel = self.channels.next()?;
        let sends = payloads.iter().map(|p| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PUBLISH").arg(channel).arg(p).to_owned();
            async move { cmd.query_async::<i64>(&mut conn).await }
        });
        futures::future::try_join_all(sends)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::redis("PUBLISH", e))
    }

    async fn send_spread(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("PUBLISH")
                .arg(self.channels.next()?)
                .arg(p)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BenchError::redis("PUBLISH", e))
    }
}

/// Publishes with XADD on one connection.
pub(crate) struct StreamPublisher {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) key: String,
}

impl Publisher for StreamPublisher {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg("d")
                .arg(p)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BenchError::redis("XADD", e))
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let sends = payloads.iter().map(|p| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg("d")
                .arg(p)
                .to_owned();
            async move { cmd.query_async::<Value>(&mut conn).await }
        });
        futures::future::try_join_all(sends)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::redis("XADD", e))
    }
}

/// Fan-out over raw Pub/Sub: every subscriber SUBSCRIBEs all of `channels` (one command) on
/// its own connection; the case's publishers, each on its own connection, send each batch to
/// the next channel in turn (spread: each message). In a many-topics case the subscriber's
/// readiness also includes a pipelined GET of one key per channel ([`read_heads`]): the least
/// a client that positions itself in each topic's log must read.
pub(crate) async fn pubsub_fan_out(
    ctx: &Ctx,
    run: &FanOutRun,
    channels: &[String],
) -> Result<Measured, BenchError> {
    let subscribers = run.case.subscribers();
    let last = channels
        .last()
        .ok_or_else(|| BenchError::Internal("a Pub/Sub run without a channel".into()))?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    let mut admin = connection(ctx, Some(Duration::from_secs(30))).await?;
    let rss_before = report::rss_kib();
    let mut ready = None;
    for i in 0..subscribers {
        let pubsub = ctx
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| BenchError::redis("open a Pub/Sub connection", e))?;
        let started = Instant::now();
        let (mut sink, mut stream) = pubsub.split();
        sink.subscribe(channels)
            .await
            .map_err(|e| BenchError::redis("SUBSCRIBE", e))?;
        if run.case.spreads_messages() {
            // Redis handles a SUBSCRIBE's channels in order: the last one counts them all.
            wait_subscribed(&mut admin, last, i + 1).await?;
            read_heads(&mut admin, &ctx.prefix, channels).await?;
            ready = Some(started.elapsed());
        }
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _sink = sink; // keeps the subscription open
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    msg = stream.next() => match msg {
                        Some(msg) => tally.message(msg.get_payload_bytes()),
                        None => {
                            tally.error(PUBSUB_DISCONNECTED);
                            break;
                        }
                    },
                }
            }
            tally
        }));
    }
    let subscriber_rss_kib = match (ready, rss_before, report::rss_kib()) {
        (Some(_), Some(before), Some(after)) => Some(after as i64 - before as i64),
        _ => None,
    };
    wait_subscribed(&mut admin, last, subscribers).await?;
    let mut publishers = Vec::with_capacity(run.case.publishers());
    for p in 0..run.case.publishers() {
        publishers.push(PubsubPublisher {
            conn: connection(ctx, Some(Duration::from_secs(5))).await?,
            channels: InTurn::starting_at(channels.to_vec(), p),
        });
    }
    let mut m = drive_fan_out(run, &mut publishers, &mut tasks, &stop).await?;
    m.ready = ready;
    m.subscriber_rss_kib = subscriber_rss_kib;
    Ok(m)
}

/// The problem a raw Pub/Sub subscriber reports when Redis closes its connection.
pub(crate) const PUBSUB_DISCONNECTED: &str = "Redis closed a Pub/Sub connection (a slow \
     subscriber past client-output-buffer-limit is disconnected)";

/// Reads one key per channel (`GET`, pipelined 1000 at a time): the position lookup of a
/// Herald-like client done as cheaply as Redis allows.
async fn read_heads(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    channels: &[String],
) -> Result<(), BenchError> {
    for chunk in channels.chunks(1000) {
        let mut pipe = redis::pipe();
        for channel in chunk {
            pipe.cmd("GET").arg(format!("{prefix}:head:{channel}"));
        }
        pipe.query_async::<Vec<Option<Vec<u8>>>>(conn)
            .await
            .map_err(|e| BenchError::redis("GET (pipelined heads)", e))?;
    }
    Ok(())
}

/// Publishes with SPUBLISH over a cluster connection, each call to the next channel in turn
/// (a batch is one pipeline to the primary of that channel's slot).
struct ShardedPublisher {
    conn: ClusterConnection,
    channels: InTurn,
}

impl Publisher for ShardedPublisher {
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let channel = self.channels.next()?;
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("SPUBLISH").arg(channel).arg(p).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BenchError::redis("SPUBLISH", e))
    }

    async fn send_each(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), BenchError> {
        let channel = self.channels.next()?;
        let sends = payloads.iter().map(|p| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("SPUBLISH").arg(channel).arg(p).to_owned();
            async move { cmd.query_async::<i64>(&mut conn).await }
        });
        futures::future::try_join_all(sends)
            .await
            .map(|_| ())
            .map_err(|e| BenchError::redis("SPUBLISH", e))
    }
}

/// A cluster connection to the seed `nodes`; with `pushes`, RESP3 and server pushes (sharded
/// Pub/Sub messages) sent to that channel.
async fn cluster_connection(
    nodes: &[String],
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<ClusterConnection, BenchError> {
    let mut builder = ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(5))
        .retries(2);
    if let Some(tx) = pushes {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    builder
        .build()
        .map_err(|e| BenchError::redis("open the cluster's URLs", e))?
        .get_async_connection()
        .await
        .map_err(|e| BenchError::redis("connect to the cluster", e))
}

/// Fan-out over raw sharded Pub/Sub on a cluster (seed `nodes`): each subscriber has a
/// cluster connection of its own (RESP3) and SSUBSCRIBEs every channel at the primary of its
/// slot; the publisher SPUBLISHes each batch to the next channel in turn.
pub(crate) async fn sharded_fan_out(
    nodes: &[String],
    run: &FanOutRun,
    channels: &[String],
) -> Result<Measured, BenchError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for _ in 0..run.case.subscribers() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut conn = cluster_connection(nodes, Some(tx)).await?;
        for channel in channels {
            conn.ssubscribe(channel)
                .await
                .map_err(|e| BenchError::redis("SSUBSCRIBE", e))?;
        }
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _conn = conn; // keeps the subscriptions open
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    push = rx.recv() => match push {
                        Some(push) => match push.kind {
                            PushKind::SMessage => match push.data.get(1) {
                                Some(Value::BulkString(payload)) => tally.message(payload),
                                other => tally.error(format!(
                                    "a sharded message without a payload: {other:?}"
                                )),
                            },
                            PushKind::SUnsubscribe | PushKind::Disconnection => {
                                tally.error(format!(
                                    "the cluster ended a sharded subscription ({:?})",
                                    push.kind
                                ));
                                break;
                            }
                            _ => {}
                        },
                        None => {
                            tally.error("the cluster connection's pushes ended");
                            break;
                        }
                    },
                }
            }
            tally
        }));
    }
    let publisher = ShardedPublisher {
        conn: cluster_connection(nodes, None).await?,
        channels: InTurn::new(channels.to_vec()),
    };
    drive_fan_out(run, &mut [publisher], &mut tasks, &stop).await
}

/// Waits until Redis counts `n` subscribers of `channel`, so that nothing is published
/// before every subscriber listens.
async fn wait_subscribed(
    conn: &mut MultiplexedConnection,
    channel: &str,
    n: usize,
) -> Result<(), BenchError> {
    let started = Instant::now();
    loop {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(conn)
            .await
            .map_err(|e| BenchError::redis("PUBSUB NUMSUB", e))?;
        if count >= n as u64 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::Protocol(format!(
                "only {count} of {n} subscribers of {channel} registered within 10 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Fan-out over raw Streams.
pub(crate) async fn streams_fan_out(
    ctx: &Ctx,
    run: &FanOutRun,
    key: &str,
) -> Result<Measured, BenchError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks::new();
    for _ in 0..run.case.subscribers() {
        let mut conn = connection(ctx, Some(Duration::from_millis(BLOCK_MS + 5000))).await?;
        let mut tally = Tally::new(run.base, Arc::clone(&run.counters), run.case.messages, true)?;
        let mut stopped = stopped.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut last_id = b"0-0".to_vec();
            loop {
                let read = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last_id)
                    .to_owned();
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    reply = read.query_async::<Value>(&mut conn) => match reply {
                        Ok(v) => match xread_entries(v) {
                            Ok(entries) => {
                                match walk_entries(entries, |p| tally.message(p)) {
                                    Ok(Some(id)) => last_id = id,
                                    Ok(None) => {}
                                    Err(e) => { tally.error(e); break; }
                                }
                            }
                            Err(e) => { tally.error(e); break; }
                        },
                        Err(e) => { tally.error(format!("XREAD failed: {e}")); break; }
                    },
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

/// Catch-up over raw Streams: XADD `n` entries, then read them all with XRANGE.
pub(crate) async fn streams_catch_up(
    ctx: &Ctx,
    n: u64,
    payload: usize,
    key: &str,
    counters: &Arc<RunCounters>,
) -> Result<Measured, BenchError> {
    let mut publisher = StreamPublisher {
        conn: connection(ctx, Some(Duration::from_secs(10))).await?,
        key: key.to_string(),
    };
    let publish_elapsed = prefill(
        &mut publisher,
        ctx.base,
        n,
        payload,
        counters,
        ctx.run_timeout,
    )
    .await?;
    let mut conn = connection(ctx, Some(Duration::from_secs(10))).await?;
    let mut tally = Tally::new(ctx.base, Arc::clone(counters), n, false)?;
    let started = Instant::now();
    let mut start = b"-".to_vec();
    while tally.delivered < n {
        if started.elapsed() > ctx.run_timeout {
            tally.error(format!(
                "reading did not finish within {:?}",
                ctx.run_timeout
            ));
            break;
        }
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query_async(&mut conn)
            .await
            .map_err(|e| BenchError::redis("XRANGE", e))?;
        let Value::Array(entries) = reply else {
            return Err(BenchError::Protocol(format!(
                "XRANGE answered {reply:?}, not an array"
            )));
        };
        let Some(last) =
            walk_entries(entries, |p| tally.message(p)).map_err(BenchError::Protocol)?
        else {
            break; // the end of the stream
        };
        start = Vec::with_capacity(last.len() + 1);
        start.push(b'(');
        start.extend_from_slice(&last);
    }
    Measured::from_tallies(n, publish_elapsed, n, started, vec![tally])
}

/// The entries of an XREAD reply for one stream (RESP2 array or RESP3 map); none on timeout.
pub(crate) fn xread_entries(reply: Value) -> Result<Vec<Value>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.remove(1)),
                other => Err(format!("XREAD answered a stream as {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(format!("XREAD answered {other:?}")),
    };
    let mut entries = Vec::new();
    for s in streams {
        match s {
            Value::Array(e) => entries.extend(e),
            other => return Err(format!("XREAD answered entries as {other:?}")),
        }
    }
    Ok(entries)
}

/// Calls `on_payload` with the `d` field of each `[id, [field, value, ...]]` entry and returns
/// the last entry's id (`None` when there were no entries).
fn walk_entries(
    entries: Vec<Value>,
    mut on_payload: impl FnMut(&[u8]),
) -> Result<Option<Vec<u8>>, String> {
    walk_entry_ids(entries, |_, d| on_payload(d))
}

/// Calls `on_entry` with the id and the `d` field of each `[id, [field, value, ...]]` entry
/// and returns the last entry's id (`None` when there were no entries).
pub(crate) fn walk_entry_ids(
    entries: Vec<Value>,
    mut on_entry: impl FnMut(&[u8], &[u8]),
) -> Result<Option<Vec<u8>>, String> {
    let mut last = None;
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(format!("a stream entry is {entry:?}, not an array"));
        };
        let (Some(Value::Array(fields)), Some(Value::BulkString(id))) = (parts.pop(), parts.pop())
        else {
            return Err("a stream entry is not [id, fields]".into());
        };
        let data = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(value)] if name == b"d" => Some(value),
            _ => None,
        });
        match data {
            Some(d) => on_entry(&id, d),
            None => return Err("a stream entry has no field \"d\"".into()),
        }
        last = Some(id);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &[u8], data: &[u8]) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk(b"d"), bulk(data)])])
    }

    #[test]
    fn walks_xread_and_xrange_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"key"),
            Value::Array(vec![entry(b"1-0", b"a"), entry(b"2-0", b"bc")]),
        ])]);
        let mut seen = Vec::new();
        let last = walk_entries(xread_entries(reply).unwrap(), |p| seen.push(p.to_vec()));
        assert_eq!(last.unwrap(), Some(b"2-0".to_vec()));
        assert_eq!(seen, [b"a".to_vec(), b"bc".to_vec()]);
        assert!(xread_entries(Value::Nil).unwrap().is_empty());
        assert!(walk_entries(vec![bulk(b"x")], |_| {}).is_err());
    }
}
