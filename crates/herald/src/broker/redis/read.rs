//! Reading history on Redis: a topic's state and a slice of its stream in one atomic step
//! (a MULTI/EXEC transaction, or with a cluster one call of `lua/read.lua`), the reply's
//! parsing, and the decoding of stream entries into messages.

use bytes::Bytes;
use redis::Value;

use super::RedisBroker;
use crate::broker::history::{EpochStart, History};
use crate::broker::{ReadResult, Slot};
use crate::envelope;
use crate::error::{Error, Result};
use crate::message::Entry;

/// The atomic history read.
pub(crate) const READ_SCRIPT: &str = include_str!("../lua/read.lua");
/// The loss report.
/// `lua/lost.lua` as written, before the epoch procedures are inlined.
const LOST_LUA: &str = include_str!("../lua/lost.lua");

/// The loss report as installed: `lua/lost.lua` with the epoch procedures it shares with
/// `lua/publish.lua` (that file's lines from `-- >>> epoch procedures` up to the `-- <<<`
/// line) in place of its line `--@EPOCHS@`.
pub(crate) fn lost_script() -> String {
    let publish = super::PUBLISH_SCRIPT;
    let shared = publish
        .find("-- >>> epoch procedures")
        .and_then(|start| {
            let len = publish[start..].find("-- <<<")?;
            Some(&publish[start..start + len])
        })
        .unwrap_or_default();
    LOST_LUA.replacen("--@EPOCHS@\n", shared, 1)
}

impl RedisBroker {
    /// Reads the topic's state and at least `limit` messages from `from` (whole entries, so
    /// possibly more), in one MULTI/EXEC transaction. Entries go straight from the stream to the
    /// client (no Lua round trip), which matters for catch-up speed.
    pub(crate) async fn read(&self, topic: &str, from: u64, limit: usize) -> Result<ReadResult> {
        let from = from.max(1);
        let meta = self.inner.keys.meta(topic);
        let log = self.inner.keys.log(topic);
        let epochs = self.inner.keys.epochs(topic);
        let entries_wanted = if limit == 0 {
            0
        } else {
            let per_entry = self
                .entry_size(topic)
                .unwrap_or(limit as f64 / 8.0)
                .max(1.0);
            ((limit as f64 / per_entry).ceil() as usize).clamp(1, 1024)
        };
        #[cfg(feature = "cluster")]
        if self.is_cluster() {
            // The cluster client does not follow MOVED/ASK inside a transaction: read with the
            // script, whose EVALSHA it routes and redirects like any keyed command.
            let reply = self
                .read_by_script(topic, &meta, &log, &epochs, from, entries_wanted)
                .await?;
            return self.finish_read(topic, reply, from, entries_wanted);
        }
        let start = format!("{from}-0");
        let reply: Vec<Value> = self
            .retry("read", topic, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe.cmd("HMGET").arg(&meta).arg("epoch").arg("last");
                pipe.cmd("HGETALL").arg(&epochs);
                pipe.cmd("XRANGE")
                    .arg(&log)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
                if entries_wanted > 0 {
                    pipe.cmd("XREVRANGE")
                        .arg(&log)
                        .arg(&start)
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                    pipe.cmd("XRANGE")
                        .arg(&log)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(entries_wanted);
                }
                Box::pin(async move { pipe.query_async(&mut conn).await })
            })
            .await?;
        self.finish_read(topic, reply, from, entries_wanted)
    }

    /// Reports a loss with `lua/lost.lua` (see `Broker::report_lost`).
    pub(crate) async fn report_lost(
        &self,
        topic: &str,
        seen: crate::position::Position,
    ) -> Result<bool> {
        use redis::Script;
        static LOST: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(&crate::broker::LOST_SCRIPT));
        let meta = self.inner.keys.meta(topic);
        let epochs = self.inner.keys.epochs(topic);
        let reply: Vec<Value> = self
            .retry("report a loss", topic, |mut conn| {
                let mut inv = LOST.prepare_invoke();
                inv.key(&meta)
                    .key(&epochs)
                    .arg("3")
                    .arg(seen.epoch)
                    .arg(seen.offset);
                Box::pin(async move { inv.invoke_async(&mut conn).await })
            })
            .await?;
        Ok(reply.first().and_then(as_u64) == Some(1))
    }

    /// Parses the read's reply and remembers how many messages its entries held.
    fn finish_read(
        &self,
        topic: &str,
        reply: Vec<Value>,
        from: u64,
        entries_wanted: usize,
    ) -> Result<ReadResult> {
        let (result, avg) = parse_read_reply(topic, reply, from, entries_wanted)?;
        if let Some(avg) = avg {
            self.set_entry_size(topic, avg);
        }
        Ok(result)
    }

    /// The read as one EVALSHA of `lua/read.lua`, its reply reshaped like the transaction's
    /// (`[epoch, last]`, head entry, no separate entry at `from`, entries).
    #[cfg(feature = "cluster")]
    async fn read_by_script(
        &self,
        topic: &str,
        meta: &str,
        log: &str,
        epochs: &str,
        from: u64,
        entries_wanted: usize,
    ) -> Result<Vec<Value>> {
        use redis::Script;
        static READ: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(READ_SCRIPT));
        let reply: Vec<Value> = self
            .retry("read", topic, |mut conn| {
                let mut inv = READ.prepare_invoke();
                inv.key(meta)
                    .key(log)
                    .key(epochs)
                    .arg(from)
                    .arg(entries_wanted);
                Box::pin(async move { inv.invoke_async(&mut conn).await })
            })
            .await?;
        let mut it = reply.into_iter();
        let (Some(epoch), Some(last), Some(first), Some(entries), Some(_at_end), Some(history)) = (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        ) else {
            return Err(Error::Corrupt {
                topic: topic.to_string(),
                detail: "unexpected read script reply".into(),
            });
        };
        let epoch = match epoch {
            Value::Boolean(false) => Value::Nil,
            v => v,
        };
        let head = match as_u64(&first) {
            Some(f) if f > 0 => vec![Value::Array(vec![Value::BulkString(
                format!("{f}-0").into_bytes(),
            )])],
            _ => Vec::new(),
        };
        let mut out = vec![Value::Array(vec![epoch, last]), history, Value::Array(head)];
        if entries_wanted > 0 {
            out.push(Value::Array(Vec::new()));
            out.push(entries);
        }
        Ok(out)
    }

    /// The average number of messages per stream entry last seen on `topic`.
    fn entry_size(&self, topic: &str) -> Option<f64> {
        let sizes = self
            .inner
            .entry_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sizes.get(topic).copied()
    }

    fn set_entry_size(&self, topic: &str, avg: f64) {
        let mut sizes = self
            .inner
            .entry_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if sizes.len() > 10_000 {
            sizes.clear(); // a cache, not state: keep it bounded
        }
        sizes.insert(topic.to_string(), avg);
    }
}

/// An integer reply, or a string holding one.
pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The bytes of a string reply.
pub(super) fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Parses the read transaction's replies: `HMGET meta epoch last`, `HGETALL epochs`, the first
/// entry, and when
/// entries were asked for, the entry at or before `from` and the entries from `from` on.
/// Returns the result and the average number of messages per entry read.
pub(super) fn parse_read_reply(
    topic: &str,
    reply: Vec<Value>,
    from: u64,
    entries_wanted: usize,
) -> Result<(ReadResult, Option<f64>)> {
    let bad = |what: &str| Error::Corrupt {
        topic: topic.to_string(),
        detail: format!("unexpected read reply: {what}"),
    };
    let expected = if entries_wanted > 0 { 5 } else { 3 };
    if reply.len() != expected {
        return Err(bad("wrong length"));
    }
    let mut reply = reply.into_iter();
    let state = match reply.next() {
        Some(Value::Array(v)) if v.len() == 2 => v,
        _ => return Err(bad("meta")),
    };
    let epoch = match &state[0] {
        Value::Nil => None,
        v => Some(as_u64(v).ok_or_else(|| Error::Corrupt {
            topic: topic.to_string(),
            detail: "meta field \"epoch\" is not a number".into(),
        })?),
    };
    let last = match &state[1] {
        Value::Nil => 0,
        v => as_u64(v).ok_or_else(|| Error::Corrupt {
            topic: topic.to_string(),
            detail: "meta field \"last\" is not a number".into(),
        })?,
    };
    let history = match reply.next() {
        Some(v) => parse_history(topic, v)?,
        None => return Err(bad("epochs")),
    };
    let first = match reply.next() {
        Some(Value::Array(head)) => head.first().and_then(entry_offset).unwrap_or(0),
        _ => return Err(bad("head")),
    };
    let mut raw_entries = Vec::new();
    let mut at_end = true;
    if entries_wanted > 0 {
        // The entry holding `from` starts before it when `from` is inside a batch.
        if let Some(Value::Array(mut at)) = reply.next() {
            if let Some(e) = at.pop() {
                if entry_offset(&e).is_some_and(|o| o < from) {
                    raw_entries.push(e);
                }
            }
        }
        match reply.next() {
            Some(Value::Array(rest)) => {
                at_end = rest.len() < entries_wanted;
                raw_entries.extend(rest);
            }
            _ => return Err(bad("entries")),
        }
    }
    let entry_count = raw_entries.len();
    let mut slots = Vec::new();
    for raw in raw_entries {
        decode_entry(topic, raw, last, &mut slots);
    }
    let avg = (entry_count > 0).then(|| slots.len().max(1) as f64 / entry_count as f64);
    slots.retain(|s| s.offset() >= from);
    Ok((
        ReadResult {
            epoch,
            last,
            first,
            slots,
            complete: at_end,
            history,
        },
        avg,
    ))
}

/// Parses `HGETALL epochs` (a flat array, or a map under RESP3).
fn parse_history(topic: &str, v: Value) -> Result<History> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        Value::Map(m) => m,
        Value::Nil => Vec::new(),
        _ => {
            return Err(Error::Corrupt {
                topic: topic.to_string(),
                detail: "the epoch history is not a hash".into(),
            })
        }
    };
    let mut starts = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let k = as_bytes(&k).and_then(|b| std::str::from_utf8(b).ok());
        let v = as_bytes(&v).and_then(|b| std::str::from_utf8(b).ok());
        match k.zip(v).and_then(|(k, v)| EpochStart::parse(k, v)) {
            Some(s) => starts.push(s),
            None => {
                return Err(Error::Corrupt {
                    topic: topic.to_string(),
                    detail: format!(
                        "epoch history entry {:?} is not <epoch> -> <first>[:<lost>]",
                        k.unwrap_or("?")
                    ),
                })
            }
        }
    }
    Ok(History::new(starts))
}

/// The offset in an entry's ID (`<offset>-0`), if it has that form.
fn entry_offset(entry: &Value) -> Option<u64> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = std::str::from_utf8(as_bytes(parts.first()?)?).ok()?;
    id.strip_suffix("-0")?.parse().ok()
}

/// Decodes one XRANGE entry (`<first offset>-0`, fields `n <node> t <ms> m <pieces>`) into
/// `out`. Entries that do not sit at a Herald offset, or lack Herald's fields, are skipped with
/// a warning (their offsets then show up as a gap); a message that cannot be decoded becomes
/// `Slot::Corrupt`.
pub(super) fn decode_entry(topic: &str, raw: Value, last: u64, out: &mut Vec<Slot>) {
    let Value::Array(mut parts) = raw else {
        tracing::warn!(topic, "skipping a history entry that is not an array");
        return;
    };
    let mut fields = match parts.pop() {
        Some(Value::Array(f)) => f,
        _ => Vec::new(),
    };
    let id = parts
        .first()
        .and_then(as_bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let first = match id.strip_suffix("-0").and_then(|o| o.parse::<u64>().ok()) {
        Some(o) if o >= 1 && o <= last => o,
        _ => {
            tracing::warn!(topic, id, "skipping a history entry Herald did not write");
            return;
        }
    };
    let field = |i: usize| fields.get(i).and_then(as_bytes);
    let node = field(1)
        .filter(|_| field(0) == Some(b"n"))
        .and_then(|b| std::str::from_utf8(b).ok());
    let time = field(3)
        .filter(|_| field(2) == Some(b"t"))
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse::<u64>().ok());
    let has_blob = field(4) == Some(b"m") && fields.len() == 6;
    let (Some(node), Some(published_at_ms), true) = (node.map(str::to_string), time, has_blob)
    else {
        tracing::warn!(
            topic,
            id,
            "skipping a history entry without Herald's fields"
        );
        return;
    };
    let blob = match fields.pop() {
        Some(Value::BulkString(b)) => Bytes::from(b),
        _ => Bytes::new(),
    };
    for (i, piece) in envelope::decode_pieces(blob).into_iter().enumerate() {
        let offset = first + i as u64;
        if offset > last {
            tracing::warn!(
                topic,
                id,
                "history entry holds messages past the last offset"
            );
            return;
        }
        out.push(match piece {
            Ok((key, headers, payload)) => Slot::Entry(Entry {
                offset,
                key,
                node: node.clone(),
                published_at_ms,
                headers,
                payload,
            }),
            Err(reason) => {
                tracing::warn!(topic, offset, %reason, "history entry cannot be decoded");
                Slot::Corrupt { offset, reason }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_report_inlines_the_epoch_procedures_of_publish() {
        let lost = lost_script();
        assert!(
            !lost.lines().any(|l| l == "--@EPOCHS@"),
            "placeholder replaced"
        );
        for f in [
            "next_epoch_id",
            "server_id",
            "trim_history",
            "parse_epoch",
            "continue_epoch",
        ] {
            assert!(
                lost.contains(&format!("local function {f}(")),
                "{f} inlined"
            );
        }
        // Only the shared part: none of the publish procedure itself.
        assert!(!lost.contains("local function hmget("));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// A stream entry as XRANGE returns it, holding one message per key.
    fn entry(first: u64, keys: &[&str]) -> Value {
        let mut blob = Vec::new();
        for k in keys {
            envelope::put_piece(&mut blob, k, "", b"data");
        }
        Value::Array(vec![
            bulk(&format!("{first}-0")),
            Value::Array(vec![
                bulk("n"),
                bulk("node-1"),
                bulk("t"),
                bulk("1764070000000"),
                bulk("m"),
                Value::BulkString(blob),
            ]),
        ])
    }

    #[test]
    fn read_reply_with_entries() {
        let reply = vec![
            Value::Array(vec![bulk("42"), bulk("5")]),
            Value::Array(vec![bulk("42"), bulk("1:7"), bulk("30"), bulk("1")]),
            Value::Array(vec![entry(2, &["a"])]),
            // The entry holding `from` = 3 starts before it.
            Value::Array(vec![entry(2, &["a", "b"])]),
            Value::Array(vec![entry(4, &["c", "d"]), bulk("not an entry")]),
        ];
        let Ok((r, avg)) = parse_read_reply("t", reply, 3, 8) else {
            panic!("the reply parses");
        };
        assert_eq!(
            (r.epoch, r.last, r.first, r.complete),
            (Some(42), 5, 2, true)
        );
        let offsets: Vec<u64> = r.slots.iter().map(Slot::offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(r.history.end_of(30), Some(0));
        assert_eq!(r.history.get(42).map(|s| s.lost), Some(7));
        // Three entries read (the foreign one included) held four messages.
        assert_eq!(avg, Some(4.0 / 3.0));
    }

    #[test]
    fn read_reply_of_a_topic_without_log() {
        let reply = vec![
            Value::Array(vec![Value::Nil, Value::Nil]),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ];
        let Ok((r, avg)) = parse_read_reply("t", reply, 1, 0) else {
            panic!("the reply parses");
        };
        assert_eq!((r.epoch, r.last, r.first), (None, 0, 0));
        assert!(r.slots.is_empty() && avg.is_none());
        let bad = vec![
            Value::Array(vec![bulk("x"), Value::Nil]),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ];
        assert!(matches!(
            parse_read_reply("t", bad, 1, 0),
            Err(Error::Corrupt { .. })
        ));
        let bad_history = vec![
            Value::Array(vec![bulk("1"), bulk("1")]),
            Value::Array(vec![bulk("1"), bulk("one")]),
            Value::Array(vec![]),
        ];
        assert!(matches!(
            parse_read_reply("t", bad_history, 1, 0),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn entries_past_the_last_offset_or_not_herald_are_skipped() {
        let mut out = Vec::new();
        decode_entry("t", entry(9, &["a"]), 5, &mut out);
        decode_entry(
            "t",
            Value::Array(vec![bulk("3-1"), Value::Array(vec![])]),
            5,
            &mut out,
        );
        decode_entry("t", entry(4, &["a", "b", "c"]), 5, &mut out);
        let offsets: Vec<u64> = out.iter().map(Slot::offset).collect();
        assert_eq!(offsets, [4, 5]);
    }
}
