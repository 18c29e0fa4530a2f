//! Many topics' heads at once, for a subscription that starts over many topics. On one
//! server the topics go in chunks: one pipeline of `EXISTS meta epochs log` per topic finds
//! those that have no keys at all (their head is "no log", what a head read would find at that
//! moment), then one MULTI/EXEC reads the others' heads with the same three commands per topic
//! as a single head read (`HMGET meta epoch last`, `HGETALL epochs`, the first entry). So
//! 10 000 topics cost a few dozen pipelined round trips. A topic whose commands fail (foreign
//! data in its keys) is read again on its own, which reports the problem as a single read
//! does. With a cluster the topics live on different shards: their heads are read one call
//! each, concurrently.

use futures::StreamExt;
use redis::Value;

use super::read::{as_u64, parse_read_reply};
use super::RedisBroker;
use crate::broker::ReadResult;
use crate::error::{Error, Result};

/// Topics per MULTI/EXEC: about 0.5 ms of server time each, so that other clients wait little.
const CHUNK: usize = 256;
/// Chunks (or, with a cluster, single reads) in flight at once.
const IN_FLIGHT: usize = 8;
/// From how many topics a chunk checks which topics have keys first (below, the one extra
/// round trip is not worth it).
const EXISTS_FIRST_FROM: usize = 16;
/// Single head reads in flight at once with a cluster.
const SINGLE_IN_FLIGHT: usize = 256;

impl RedisBroker {
    /// The head (state, epoch history, first retained offset; no entries) of each of
    /// `topics`, in order; the same as `read(topic, 1, 0)` for each.
    pub(crate) async fn read_heads(&self, topics: &[String]) -> Vec<Result<ReadResult>> {
        #[cfg(feature = "cluster")]
        if self.is_cluster() {
            // Collected first: a stream over a borrowing closure is not `Send` enough.
            let reads: Vec<_> = topics.iter().map(|t| self.read(t, 1, 0)).collect();
            return futures::stream::iter(reads)
                .buffered(SINGLE_IN_FLIGHT)
                .collect()
                .await;
        }
        let chunks: Vec<_> = topics.chunks(CHUNK).map(|c| self.read_chunk(c)).collect();
        let mut out = Vec::with_capacity(topics.len());
        let mut done = futures::stream::iter(chunks).buffered(IN_FLIGHT);
        while let Some(part) = done.next().await {
            out.extend(part);
        }
        out
    }

    /// The heads of one chunk of topics: first whether each topic has any key at all (one
    /// EXISTS each, so that topics without a log cost one command), then the full head read
    /// of those that have one.
    /// True unless with a cluster (see `Broker::reads_heads_together`).
    pub(crate) fn reads_heads_together(&self) -> bool {
        #[cfg(feature = "cluster")]
        if self.is_cluster() {
            return false;
        }
        true
    }

    async fn read_chunk(&self, topics: &[String]) -> Vec<Result<ReadResult>> {
        if topics.len() < EXISTS_FIRST_FROM {
            return self.read_full(topics).await;
        }
        let keys = &self.inner.keys;
        let names: Vec<(String, String, String)> = topics
            .iter()
            .map(|t| (keys.meta(t), keys.epochs(t), keys.log(t)))
            .collect();
        let first = topics.first().map(String::as_str).unwrap_or_default();
        let names = &names;
        let exists: Result<Vec<Value>> = self
            .retry("read", first, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (meta, epochs, log) in names {
                    pipe.cmd("EXISTS").arg(meta).arg(epochs).arg(log);
                }
                Box::pin(async move { pipe.query_async(&mut conn).await })
            })
            .await;
        // Which topics have keys (all of them when the check failed otherwise than by
        // running out of time, which reading them again would only repeat).
        let present: Vec<bool> = match exists {
            Ok(v) if v.len() == topics.len() => v.iter().map(|n| as_u64(n) != Some(0)).collect(),
            Err(e @ (Error::Timeout { .. } | Error::Unreachable { .. })) => {
                return topics.iter().map(|_| Err(e.clone())).collect()
            }
            _ => vec![true; topics.len()],
        };
        let wanted: Vec<usize> = (0..topics.len()).filter(|&i| present[i]).collect();
        let mut full = if wanted.is_empty() {
            Vec::new()
        } else {
            let some: Vec<String> = wanted.iter().map(|&i| topics[i].clone()).collect();
            self.read_full(&some).await
        }
        .into_iter();
        // A topic without any key: what a head read finds then (no log, nothing retained).
        present
            .into_iter()
            .map(|p| match p {
                true => full.next().unwrap_or_else(|| Ok(ReadResult::default())),
                false => Ok(ReadResult::default()),
            })
            .collect()
    }

    /// The full head reads of `topics`, one MULTI/EXEC.
    async fn read_full(&self, topics: &[String]) -> Vec<Result<ReadResult>> {
        let keys = &self.inner.keys;
        let names: Vec<(String, String, String)> = topics
            .iter()
            .map(|t| (keys.meta(t), keys.epochs(t), keys.log(t)))
            .collect();
        let first = topics.first().map(String::as_str).unwrap_or_default();
        let names = &names;
        let reply: Result<Vec<Value>> = self
            .retry("read", first, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.atomic().ignore_errors();
                for (meta, epochs, log) in names {
                    pipe.cmd("HMGET").arg(meta).arg("epoch").arg("last");
                    pipe.cmd("HGETALL").arg(epochs);
                    pipe.cmd("XRANGE")
                        .arg(log)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(1);
                }
                Box::pin(async move { pipe.query_async(&mut conn).await })
            })
            .await;
        let mut out = Vec::with_capacity(topics.len());
        let mut values = match reply {
            Ok(v) if v.len() == 3 * topics.len() => v.into_iter(),
            // Redis did not answer in time: so for every topic of the chunk.
            Err(e @ (Error::Timeout { .. } | Error::Unreachable { .. })) => {
                return topics.iter().map(|_| Err(e.clone())).collect()
            }
            // The chunk as a whole was refused (or came back malformed): each topic on its
            // own, which names the problem of each.
            _ => {
                for t in topics {
                    out.push(self.read(t, 1, 0).await);
                }
                return out;
            }
        };
        for t in topics {
            let three: Vec<Value> = values.by_ref().take(3).collect();
            let failed = three.iter().any(|v| matches!(v, Value::ServerError(_)));
            out.push(if failed {
                self.read(t, 1, 0).await
            } else {
                parse_read_reply(t, three, 1, 0).map(|(r, _)| r)
            });
        }
        out
    }
}
