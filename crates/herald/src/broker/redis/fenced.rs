//! Writes behind the Sentinel fence ([`RedisBroker::retry_write`]).
//!
//! Every write whose acknowledgement the caller relies on goes through one helper: publishes
//! (`publish.rs`), durable cursor commits (`cursors.rs`), membership operations
//! (`members.rs`), map changes (`map.rs`) and work group operations (`work.rs`). With
//! Sentinel, an attempt
//!
//! - does not start while the fence is closed (the sentinels are replacing the primary): it
//!   waits up to [`FENCE_SLICE`](super::failover) for the switch and is retried on the
//!   primary that stays;
//! - is not acknowledged when the fence closed, or the primary in use changed, while it ran:
//!   its reply may come from a primary the sentinels replaced, so the write may be missing on
//!   the new one. It is sent again there instead. The reply is handed to the caller's
//!   `discarded` list, for writes that need it (a publish merges its duplicate flags).
//!
//! Sending a write again is only safe because each of them is idempotent or fenced on its
//! own: publishes and map changes carry idempotency keys, a cursor commit sets the same value
//! again, a membership JOIN of a live record refreshes it (and the caller announces a record
//! it did not create), REMOVE names the incarnation, and work group outcomes are fenced by
//! (epoch, holder, attempt) with ACK/DEADDONE remembered for a retry; a CLAIM sent again
//! grants afresh, and what the discarded grant had leased comes back when its lease ends.
//!
//! Without the `sentinel` feature, or with another topology, this is [`RedisBroker::retry`].

use std::sync::Mutex;

use super::{BoxFuture, Conn, RedisBroker};
use crate::error::Result;

impl RedisBroker {
    /// Runs the write `attempt` like [`RedisBroker::retry`], behind the Sentinel fence (see
    /// the module's documentation). Replies discarded because a failover began while they
    /// were under way are pushed to `discarded` when given.
    pub(super) async fn retry_write<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        topic: &str,
        discarded: Option<&'a Mutex<Vec<T>>>,
        attempt: impl FnMut(Conn) -> BoxFuture<'a, redis::RedisResult<T>>,
    ) -> Result<T> {
        #[cfg(not(feature = "sentinel"))]
        {
            let _ = discarded;
            self.retry(operation, topic, attempt).await
        }
        #[cfg(feature = "sentinel")]
        {
            use super::failover::{failing_over, FENCE_SLICE};
            let mut attempt = attempt;
            let fence = &self.inner.fence;
            self.retry(operation, topic, |_| {
                // In this order, before the connection is taken: a switch of primary after
                // `era` is read changes it, and one before it left the new connection in
                // place (the connection is replaced before the fence opens).
                let era = fence.era();
                let closed = fence.is_closed();
                let write = (!closed).then(|| attempt(self.conn()));
                Box::pin(async move {
                    let Some(write) = write else {
                        fence.wait_open(FENCE_SLICE).await;
                        return Err(failing_over());
                    };
                    let reply = write.await?;
                    if fence.is_closed() || fence.era() != era {
                        if let Some(d) = discarded {
                            d.lock().unwrap_or_else(|p| p.into_inner()).push(reply);
                        }
                        return Err(failing_over());
                    }
                    Ok(reply)
                })
            })
            .await
        }
    }
}
