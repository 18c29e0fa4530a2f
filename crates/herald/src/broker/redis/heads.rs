//! Many topics' heads at once, for a subscription that starts over many topics: on one
//! server the heads are read in chunks, each chunk one MULTI/EXEC of the same three commands
//! per topic as a single head read (`HMGET meta epoch last`, `HGETALL epochs`, the first
//! entry), so that 10 000 topics cost a few dozen pipelined round trips. A topic whose
//! commands fail (foreign data in its keys) is read again on its own, which reports the
//! problem as a single read does. With a cluster the topics live on different shards: their
//! heads are read one call each, concurrently.

use futures::StreamExt;
use redis::Value;

use super::read::parse_read_reply;
use super::RedisBroker;
use crate::broker::ReadResult;
use crate::error::Result;

/// Topics per MULTI/EXEC: about 0.5 ms of server time each, so that other clients wait little.
const CHUNK: usize = 256;
/// Chunks (or, with a cluster, single reads) in flight at once.
const IN_FLIGHT: usize = 8;
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

    async fn read_chunk(&self, topics: &[String]) -> Vec<Result<ReadResult>> {
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
            // The chunk as a whole failed (or came back malformed): each topic on its own.
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
