//! Publishing on Redis: one call of `lua/publish.lua` (protocol 4, `docs/PROTOCOL.md` §6.1)
//! per publish, its arguments ([`PublishCall`], then the handle's floor) and its reply, then
//! `WAIT` when the handle asks for replicas.

use redis::{Script, Value};

use super::read::as_u64;
use super::RedisBroker;
use crate::broker::Placed;
use crate::envelope;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::position::{Epoch, Position};

/// The publish procedure, installed in Redis with SCRIPT LOAD / EVALSHA.
pub(crate) const PUBLISH_SCRIPT: &str = include_str!("../lua/publish.lua");

/// How many messages one stream entry holds at most.
const ENTRY_MESSAGES: usize = 1000;

impl RedisBroker {
    pub(crate) async fn publish(
        &self,
        topic: &str,
        node: &str,
        messages: &[(String, &Message)],
        floor: Option<Position>,
    ) -> Result<(Epoch, Vec<Placed>)> {
        let keys = &self.inner.keys;
        let d = self.inner.opts.defaults;
        let mut key_names = vec![keys.meta(topic), keys.log(topic), keys.settings(topic)];
        key_names.push(keys.dedup(topic));
        key_names.push(keys.dedup_old(topic));
        key_names.push(keys.epochs(topic));
        let call = PublishCall::new(messages);
        let channel = keys.live(topic);
        let wanted = self.inner.opts.min_replicas;
        let wait_ms = u64::try_from(self.inner.opts.replica_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // Replies discarded because a Sentinel failover began while they were under way: a
        // message is a duplicate only if every attempt found it already published.
        let discarded: std::sync::Mutex<Vec<(Value, usize)>> = Default::default();
        // Behind the Sentinel fence (`fenced.rs`): a reply that comes back after the
        // sentinels began replacing the primary is sent again on the primary that stays (same
        // idempotency keys: found there, or written anew).
        let (reply, acked): (Value, usize) = self
            .retry_write("publish", topic, Some(&discarded), |mut conn| {
                let mut inv = self.inner.publish.prepare_invoke();
                for k in &key_names {
                    inv.key(k);
                }
                inv.arg("4").arg(&channel).arg(node);
                inv.arg(d.max_len)
                    .arg(d.max_age_ms)
                    .arg(d.dedup_window_ms)
                    .arg(d.max_size);
                inv.arg(self.inner.notify);
                call.add_args(&mut inv);
                match floor {
                    Some(p) => inv.arg(p.epoch).arg(p.offset),
                    None => inv.arg("").arg(""),
                };
                let meta = &key_names[0];
                Box::pin(async move {
                    let reply = inv.invoke_async(&mut conn).await?;
                    // With `min_replicas`, WAIT on the server that ran the script. If this
                    // fails, the whole attempt is retried: the script then finds the
                    // idempotency keys (on this server, or on a new primary that has the
                    // write) or writes them anew, and WAIT runs where the write is.
                    let acked = match wanted {
                        0 => 0,
                        n => conn.wait(n, wait_ms, meta).await?,
                    };
                    Ok((reply, acked))
                })
            })
            .await?;
        let mut placed = parse_publish_reply(topic, reply, messages.len())?;
        for (earlier, _) in discarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if let Ok((_, earlier)) = parse_publish_reply(topic, earlier, messages.len()) {
                for (p, e) in placed.1.iter_mut().zip(earlier) {
                    p.duplicate &= e.duplicate;
                }
            }
        }
        if acked < wanted {
            return Err(self.not_replicated(topic, &placed, acked));
        }
        Ok(placed)
    }

    /// Fewer replicas than `min_replicas` confirmed a publish within `replica_timeout`. The
    /// publish itself stands on the primary; publishing again with the same idempotency keys
    /// waits again without duplicating.
    fn not_replicated(&self, topic: &str, placed: &(Epoch, Vec<Placed>), acked: usize) -> Error {
        let wanted = self.inner.opts.min_replicas;
        let timeout = self.inner.opts.replica_timeout;
        let offsets = placed.1.iter().map(|p| p.offset);
        Error::NotReplicated {
            topic: topic.to_string(),
            epoch: placed.0,
            first: offsets.clone().min().unwrap_or(0),
            last: offsets.max().unwrap_or(0),
            acked,
            wanted,
            waited: timeout,
        }
    }
}

/// The publish script, loaded once per broker.
pub(super) fn script() -> Script {
    Script::new(PUBLISH_SCRIPT)
}

/// The arguments of one call of the publish script (protocol 3, `docs/PROTOCOL.md` §6.1):
/// the pieces concatenated in groups of up to [`ENTRY_MESSAGES`], the messages that carry an
/// idempotency key of their own (with where their piece lies, so that the script can leave a
/// duplicate out), and the call key that covers every message without one.
struct PublishCall<'a> {
    count: usize,
    call_key: &'a str,
    /// (size, index) of the largest payload: the first of that size
    largest: (usize, usize),
    groups: Vec<Vec<u8>>,
    /// (index, key, start of the piece in its group, length of the piece)
    keyed: Vec<(usize, &'a str, usize, usize)>,
}

impl<'a> PublishCall<'a> {
    /// Builds the call for `messages`, each with its resolved idempotency key: a key the
    /// caller gave (`Message::key`) is deduplicated on its own, generated keys are covered by
    /// the call key, the first of them.
    fn new(messages: &'a [(String, &'a Message)]) -> Self {
        let mut call = PublishCall {
            count: messages.len(),
            call_key: "",
            largest: (0, 0),
            groups: Vec::with_capacity(messages.len().div_ceil(ENTRY_MESSAGES)),
            keyed: Vec::new(),
        };
        for chunk in messages.chunks(ENTRY_MESSAGES) {
            let size = chunk
                .iter()
                .map(|(k, m)| k.len() + m.payload.len() + 32)
                .sum();
            call.groups.push(Vec::with_capacity(size));
        }
        for (i, (key, m)) in messages.iter().enumerate() {
            if m.payload.len() > call.largest.0 {
                call.largest = (m.payload.len(), i);
            }
            let Some(group) = call.groups.get_mut(i / ENTRY_MESSAGES) else {
                continue;
            };
            let start = group.len();
            envelope::put_piece(
                group,
                key,
                &envelope::encode_headers(&m.headers),
                &m.payload,
            );
            if m.key.is_some() {
                call.keyed.push((i, key, start, group.len() - start));
            } else if call.call_key.is_empty() {
                call.call_key = key;
            }
        }
        call
    }

    /// Appends ARGV[9..] to a script invocation.
    fn add_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(self.count)
            .arg(self.call_key)
            .arg(self.largest.0)
            .arg(self.largest.1);
        for g in &self.groups {
            inv.arg(g.as_slice());
        }
        for (index, key, start, len) in &self.keyed {
            inv.arg(index).arg(key).arg(start).arg(len);
        }
    }
}

/// Parses `{epoch, first}` (all `n` messages appended from `first` on) or
/// `{epoch, offset_1, dup_1, ...}`.
fn parse_publish_reply(topic: &str, reply: Value, n: usize) -> Result<(Epoch, Vec<Placed>)> {
    let bad = |what: &str| Error::Corrupt {
        topic: topic.to_string(),
        detail: format!("unexpected publish reply: {what}"),
    };
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let epoch = items.first().and_then(as_u64).ok_or_else(|| bad("epoch"))?;
    let placed = if items.len() == 2 {
        let first = as_u64(&items[1]).ok_or_else(|| bad("first offset"))?;
        (first..).take(n).map(Placed::new).collect()
    } else if items.len() == 1 + 2 * n {
        items[1..]
            .chunks(2)
            .map(|pair| {
                // 0: appended, 1: a duplicate in the reply's epoch, else a duplicate in that
                // older epoch.
                let flag = as_u64(&pair[1])?;
                Some(Placed {
                    offset: as_u64(&pair[0])?,
                    duplicate: flag != 0,
                    epoch: (flag > 1).then_some(flag),
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("offsets"))?
    } else {
        return Err(bad("wrong length"));
    };
    Ok((epoch, placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replies() {
        let dense = Value::Array(vec![Value::Int(7), Value::Int(10)]);
        let (epoch, placed) = parse_publish_reply("t", dense, 3).unwrap_or_default();
        assert_eq!(epoch, 7);
        assert_eq!(placed, [Placed::new(10), Placed::new(11), Placed::new(12)]);
        let each = Value::Array(vec![
            Value::Int(7),
            Value::Int(4),
            Value::Int(1),
            Value::Int(12),
            Value::Int(0),
        ]);
        let (_, placed) = parse_publish_reply("t", each, 2).unwrap_or_default();
        assert_eq!(
            placed,
            [
                Placed {
                    offset: 4,
                    duplicate: true,
                    epoch: None,
                },
                Placed {
                    offset: 12,
                    duplicate: false,
                    epoch: None,
                }
            ]
        );
        assert!(parse_publish_reply("t", Value::Array(vec![Value::Int(7)]), 2).is_err());
        assert!(parse_publish_reply("t", Value::Nil, 1).is_err());
    }
}
