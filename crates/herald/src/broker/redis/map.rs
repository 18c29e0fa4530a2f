//! Replicated maps on Redis: `lua/map.lua` (map protocol 2, `docs/PROTOCOL.md`, "Replicated
//! maps") with `lua/publish.lua` inlined, over the topic's keys and
//! `<ns>:{__map/<name>}:map` (the state) and `...:map-limits`. One script call applies a
//! batch of changes (`crate::map` coalesces the concurrent changes of a handle).

use std::sync::LazyLock;

use bytes::Bytes;
use redis::{Script, Value};

use super::read::{as_bytes, as_u64};
use super::RedisBroker;
use crate::error::{Error, Result};
use crate::map::{Change, Expect, MapLimits, MapSnapshot, Outcome, Versioned};
use crate::position::Position;

/// `lua/map.lua` as written, before the publish procedure is inlined.
const MAP_LUA: &str = include_str!("../lua/map.lua");

/// The publish procedure's read of `INFO server`; inlined, it reads map.lua's copy instead
/// (one `INFO` per call, however many appends).
const PUBLISH_INFO: &str = "redis.call('INFO', 'server')";

/// Most changes in one script call (`ARGV[9]` of map protocol 2).
pub(crate) const MAX_CHANGES: usize = 1000;

/// The map script as installed: `lua/map.lua` with `lua/publish.lua` inlined as the local
/// function `publish(KEYS, ARGV)`, its `INFO server` read replaced by map.lua's
/// `server_info()`.
pub(crate) fn map_script() -> String {
    let publish = format!(
        "local function publish(KEYS, ARGV)\n{}\nend\n",
        super::PUBLISH_SCRIPT.replacen(PUBLISH_INFO, "server_info()", 1)
    );
    MAP_LUA.replacen("--@PUBLISH@\n", &publish, 1)
}

static MAP: LazyLock<Script> = LazyLock::new(|| Script::new(&map_script()));

fn corrupt(topic: &str, detail: String) -> Error {
    Error::Corrupt {
        topic: topic.to_string(),
        detail,
    }
}

/// Parses a state field's value `<epoch>:<offset>:<value>`, keeping the value in `raw`'s
/// buffer (no copy: a snapshot of a large map holds every value once).
fn parse_entry(raw: Vec<u8>) -> Option<Versioned> {
    let first = raw.iter().position(|b| *b == b':')?;
    let second = first + 1 + raw.get(first + 1..)?.iter().position(|b| *b == b':')?;
    let epoch = std::str::from_utf8(&raw[..first]).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(&raw[first + 1..second])
        .ok()?
        .parse()
        .ok()?;
    Some(Versioned {
        value: Bytes::from(raw).slice(second + 1..),
        revision: Position::new(epoch, offset),
    })
}

/// The first 8 bytes of `key` as a big-endian integer (zero-padded): when two keys' prefixes
/// differ, they order as the keys do (equal prefixes need the whole keys compared).
fn sort_prefix(key: &str) -> u64 {
    let mut first = [0u8; 8];
    let n = key.len().min(8);
    first[..n].copy_from_slice(&key.as_bytes()[..n]);
    u64::from_be_bytes(first)
}

fn parse_rev(raw: &[u8]) -> Option<Position> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

impl RedisBroker {
    fn map_keys(&self, topic: &str) -> [String; 2] {
        [
            self.inner.keys.key(topic, "map"),
            self.inner.keys.key(topic, "map-limits"),
        ]
    }

    /// Applies `changes` (at most [`MAX_CHANGES`]) to the map whose topic is `topic`, in
    /// order, in one script call; one outcome per change.
    pub(crate) async fn map_changes(
        &self,
        topic: &str,
        node: &str,
        changes: &[Change],
    ) -> Result<Vec<Result<Outcome>>> {
        let keys = &self.inner.keys;
        let [state, limits] = self.map_keys(topic);
        let key_names = [
            keys.meta(topic),
            keys.log(topic),
            keys.settings(topic),
            keys.dedup(topic),
            keys.dedup_old(topic),
            keys.epochs(topic),
            state,
            limits,
        ];
        let channel = keys.live(topic);
        let d = self.inner.opts.defaults;
        let expects: Vec<String> = changes
            .iter()
            .map(|c| match c.expect {
                None => String::new(),
                Some(Expect::Absent) => "absent".to_string(),
                Some(Expect::Revision(r)) => r.to_string(),
            })
            .collect();
        let reply: Value = self
            .retry_write("map change", topic, None, |mut conn| {
                let mut inv = MAP.prepare_invoke();
                for k in &key_names {
                    inv.key(k);
                }
                inv.arg("2").arg(&channel).arg(node);
                inv.arg(d.max_len)
                    .arg(d.max_age_ms)
                    .arg(d.dedup_window_ms)
                    .arg(d.max_size);
                inv.arg(self.inner.notify).arg(changes.len());
                for (c, expect) in changes.iter().zip(&expects) {
                    let op = if c.value.is_some() { "PUT" } else { "DEL" };
                    inv.arg(op)
                        .arg(&c.key)
                        .arg(c.value.as_deref().unwrap_or_default())
                        .arg(expect)
                        .arg(&c.idem);
                }
                Box::pin(async move { inv.invoke_async(&mut conn).await })
            })
            .await?;
        let bad = || corrupt(topic, format!("unexpected map reply {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(bad());
        };
        if items.len() != changes.len() {
            return Err(bad());
        }
        items
            .iter()
            .map(|item| parse_change_reply(topic, item))
            .collect()
    }

    pub(crate) async fn map_get(&self, topic: &str, key: &str) -> Result<Option<Versioned>> {
        let [state, _] = self.map_keys(topic);
        let raw: Option<Vec<u8>> = self
            .retry("map get", topic, |mut conn| {
                let (state, key) = (state.clone(), key.to_string());
                Box::pin(async move {
                    redis::cmd("HGET")
                        .arg(state)
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => parse_entry(raw)
                .map(Some)
                .ok_or_else(|| corrupt(topic, format!("map key {key:?} has no revision"))),
        }
    }

    pub(crate) async fn map_snapshot(&self, topic: &str) -> Result<MapSnapshot> {
        let [state, _] = self.map_keys(topic);
        let raw: Value = self
            .retry("map snapshot", topic, |mut conn| {
                let state = state.clone();
                Box::pin(async move {
                    redis::cmd("HGETALL")
                        .arg(state)
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        // The reply's strings are moved out as they are (no copy, no intermediate pairs).
        let items = match raw {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => {
                return Err(corrupt(
                    topic,
                    format!("unexpected HGETALL reply {other:?}"),
                ))
            }
        };
        let mut revision = None;
        let mut entries = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(field), Some(value)) = (items.next(), items.next()) {
            let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
                return Err(corrupt(topic, "a map field is not a string".into()));
            };
            if field.is_empty() {
                revision =
                    Some(parse_rev(&value).ok_or_else(|| {
                        corrupt(topic, "the map's revision is unreadable".into())
                    })?);
                continue;
            }
            let key = String::from_utf8(field)
                .map_err(|_| corrupt(topic, "a map key is not UTF-8".into()))?;
            let entry = parse_entry(value)
                .ok_or_else(|| corrupt(topic, format!("map key {key:?} has no revision")))?;
            entries.push((sort_prefix(&key), key, entry));
        }
        // Built in one go (sorted, then bulk-loaded): faster than inserting in hash order. The
        // keys are distinct, so an unstable sort does, and most comparisons are decided by the
        // keys' first bytes as one integer; `collect` then finds them in order.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Ok(MapSnapshot {
            entries: entries.into_iter().map(|(_, k, v)| (k, v)).collect(),
            revision,
        })
    }

    pub(crate) async fn map_set_limits(&self, topic: &str, limits: MapLimits) -> Result<()> {
        let [_, key] = self.map_keys(topic);
        self.retry_write("map limits", topic, None, |mut conn| {
            let key = key.clone();
            Box::pin(async move {
                let mut pipe = redis::pipe();
                pipe.atomic().cmd("DEL").arg(&key).ignore();
                if let Some(n) = limits.max_keys {
                    pipe.cmd("HSET").arg(&key).arg("max_keys").arg(n).ignore();
                }
                if let Some(n) = limits.max_value {
                    pipe.cmd("HSET").arg(&key).arg("max_value").arg(n).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
        })
        .await
    }
}

/// Parses one change's reply: `{"ok", epoch, offset, dup}`, `{"conflict", rev}`, `{"absent"}`,
/// `{"limit", what, size, max}` or `{"too_large", size, max}` (the inner result: that change's
/// own error).
fn parse_change_reply(topic: &str, reply: &Value) -> Result<Result<Outcome>> {
    let bad = || corrupt(topic, format!("unexpected map reply {reply:?}"));
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let word = items.first().and_then(as_bytes).ok_or_else(bad)?;
    let num = |i: usize| items.get(i).and_then(as_u64).ok_or_else(bad);
    match word {
        b"ok" => Ok(Ok(Outcome::Applied(Position::new(num(1)?, num(2)?)))),
        b"conflict" => {
            let rev = items.get(1).and_then(as_bytes).ok_or_else(bad)?;
            Ok(Ok(Outcome::Conflict(if rev.is_empty() {
                None
            } else {
                Some(parse_rev(rev).ok_or_else(bad)?)
            })))
        }
        b"absent" => Ok(Ok(Outcome::Absent)),
        b"too_large" => Ok(Err(Error::MessageTooLarge {
            topic: topic.to_string(),
            size: usize::try_from(num(1)?).map_err(|_| bad())?,
            limit: usize::try_from(num(2)?).map_err(|_| bad())?,
        })),
        b"limit" => {
            let what = match items.get(1).and_then(as_bytes) {
                Some(b"keys") => "keys",
                Some(b"value") => "value",
                _ => return Err(bad()),
            };
            Ok(Ok(Outcome::Limit(what, num(2)?, num(3)?)))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_prefixes_order_like_their_keys() {
        let keys = [
            "",
            "a",
            "a\0",
            "ab",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgi",
            "b",
            "k000001",
            "é",
        ];
        for a in keys {
            for b in keys {
                if sort_prefix(a) != sort_prefix(b) {
                    assert_eq!(sort_prefix(a).cmp(&sort_prefix(b)), a.cmp(b), "{a:?} {b:?}");
                }
            }
        }
        assert_eq!(sort_prefix("abcdefgh"), sort_prefix("abcdefgh0"));
        assert_eq!(sort_prefix("a"), sort_prefix("a\0"));
    }

    #[test]
    fn entries_and_replies_parse() {
        let e = parse_entry(b"7:12:a:b".to_vec()).unwrap_or_else(|| panic!("parse"));
        assert_eq!(
            (e.revision, &e.value[..]),
            (Position::new(7, 12), &b"a:b"[..])
        );
        let empty = parse_entry(b"7:12:".to_vec()).unwrap_or_else(|| panic!("parse"));
        assert!(empty.value.is_empty());
        assert!(parse_entry(b"7:x:a".to_vec()).is_none());
        assert!(parse_entry(b"7:12".to_vec()).is_none());
        let ok = Value::Array(vec![
            Value::BulkString(b"ok".to_vec()),
            Value::BulkString(b"7".to_vec()),
            Value::Int(3),
            Value::Int(0),
        ]);
        assert_eq!(
            parse_change_reply("t", &ok).ok().and_then(Result::ok),
            Some(Outcome::Applied(Position::new(7, 3)))
        );
        let conflict = Value::Array(vec![
            Value::BulkString(b"conflict".to_vec()),
            Value::BulkString(b"".to_vec()),
        ]);
        assert_eq!(
            parse_change_reply("t", &conflict).ok().and_then(Result::ok),
            Some(Outcome::Conflict(None))
        );
        let too_large = Value::Array(vec![
            Value::BulkString(b"too_large".to_vec()),
            Value::Int(2000),
            Value::Int(1000),
        ]);
        assert!(matches!(
            parse_change_reply("t", &too_large),
            Ok(Err(Error::MessageTooLarge {
                size: 2000,
                limit: 1000,
                ..
            }))
        ));
        let script = map_script();
        assert!(script.contains("local function publish(KEYS, ARGV)"));
        // The inlined publish reads map.lua's INFO: one per call.
        assert!(super::super::PUBLISH_SCRIPT.contains(PUBLISH_INFO));
        assert_eq!(script.matches("redis.call('INFO'").count(), 1);
    }
}
