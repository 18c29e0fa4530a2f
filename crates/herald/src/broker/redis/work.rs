//! Work group primitives of the Redis broker: `lua/work.lua` (see `docs/PROTOCOL.md`, "Work
//! groups (v1)") over the keys `<ns>:{<topic>}:work:<group>[:jobs|:due|:holders]` and
//! `<ns>:{<topic>}:groups`, all with the topic's hash tag.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::read::{as_bytes, as_u64, decode_entry};
use super::RedisBroker;
use crate::broker::work::{ClaimArgs, Claimed, Grant, GroupRecord, JobRecord, Op, OpResult, Taken};
use crate::error::{Error, Result};
use crate::position::Epoch;

/// The work group procedure, installed in Redis with SCRIPT LOAD / EVALSHA.
pub(crate) const WORK_SCRIPT: &str = include_str!("../lua/work.lua");

static WORK: LazyLock<Script> = LazyLock::new(|| Script::new(WORK_SCRIPT));

impl RedisBroker {
    fn work_keys(&self, topic: &str, group: &str) -> [String; 7] {
        let k = &self.inner.keys;
        [
            k.key(topic, &format!("work:{group}")),
            k.key(topic, &format!("work:{group}:jobs")),
            k.key(topic, &format!("work:{group}:due")),
            k.key(topic, &format!("work:{group}:holders")),
            k.key(topic, "groups"),
            k.key(topic, &format!("work:{group}:done")),
            k.key(topic, &format!("work:{group}:keys")),
        ]
    }

    async fn work_call(
        &self,
        operation: &'static str,
        topic: &str,
        group: &str,
        args: Vec<String>,
    ) -> Result<Value> {
        let keys = self.work_keys(topic, group).to_vec();
        self.work_invoke(operation, topic, keys, args).await
    }

    async fn work_invoke(
        &self,
        operation: &'static str,
        topic: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value> {
        self.retry_write(operation, topic, None, |mut conn| {
            let mut inv = WORK.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in &args {
                inv.arg(a);
            }
            Box::pin(async move { inv.invoke_async(&mut conn).await })
        })
        .await
    }

    pub(crate) async fn work_register(
        &self,
        topic: &str,
        group: &str,
        id: &str,
        ttl_ms: u64,
        dlq: &str,
    ) -> Result<String> {
        let args = vec![
            "REGISTER".into(),
            id.into(),
            ttl_ms.to_string(),
            dlq.into(),
            group.into(),
        ];
        let reply = self
            .work_call("join work group", topic, group, args)
            .await?;
        as_bytes(&reply)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
            .ok_or_else(|| corrupt(topic, "unexpected register reply"))
    }

    pub(crate) async fn work_heartbeat(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<bool> {
        let args = vec!["HEARTBEAT".into(), holder.into(), ttl_ms.to_string()];
        let reply = self.work_call("work heartbeat", topic, group, args).await?;
        Ok(as_u64(&reply) == Some(1))
    }

    pub(crate) async fn work_leave(&self, topic: &str, group: &str, holder: &str) -> Result<()> {
        let args = vec!["LEAVE".into(), holder.into()];
        self.work_call("leave work group", topic, group, args)
            .await?;
        Ok(())
    }

    pub(crate) async fn work_claim(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        a: ClaimArgs,
    ) -> Result<Claimed> {
        let mut args = vec![
            "CLAIM".into(),
            holder.into(),
            a.max.to_string(),
            a.lease_ms.to_string(),
            a.max_deliveries.to_string(),
            a.ttl_ms.to_string(),
            a.epoch.to_string(),
            a.first.to_string(),
            a.last.to_string(),
            a.start.to_string(),
            a.continues.map_or(0, |(prev, _)| prev).to_string(),
            a.continues.map_or(0, |(_, boundary)| boundary).to_string(),
        ];
        if let Some((from, keys)) = &a.ordered {
            args.push(from.to_string());
            args.extend(keys.iter().cloned());
        }
        let reply = self.work_call("claim work", topic, group, args).await?;
        let bad = || corrupt(topic, "unexpected claim reply");
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        let text = |i: usize| {
            items
                .get(i)
                .and_then(as_bytes)
                .and_then(|b| std::str::from_utf8(b).ok())
        };
        let num = |i: usize| items.get(i).and_then(as_u64);
        match text(0) {
            Some("gone") => return Ok(Claimed::Gone),
            Some("epoch") => return Ok(Claimed::OldEpoch),
            Some("ok") => {}
            _ => return Err(bad()),
        }
        let (Some(now_ms), Some(reset), Some(lost), Some(next)) = (num(1), num(2), num(3), num(4))
        else {
            return Err(bad());
        };
        let grants = parse_grants(&items[5..]).ok_or_else(bad)?;
        Ok(Claimed::Granted {
            now_ms,
            reset: reset == 1,
            lost,
            next,
            grants,
        })
    }

    /// `TAKE` (protocol 1.2): acks, then a claim on the topic's state as the script reads it,
    /// with the stream entries holding the granted offsets, in one call.
    pub(crate) async fn work_take(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        a: ClaimArgs,
        acks: &[(u64, u32)],
    ) -> Result<Taken> {
        let mut keys = self.work_keys(topic, group).to_vec();
        keys.push(self.inner.keys.meta(topic));
        keys.push(self.inner.keys.log(topic));
        let mut args = Vec::with_capacity(11 + 2 * acks.len());
        args.extend([
            "TAKE".to_string(),
            holder.to_string(),
            a.max.to_string(),
            a.lease_ms.to_string(),
            a.max_deliveries.to_string(),
            a.ttl_ms.to_string(),
            a.epoch.to_string(),
            a.start.to_string(),
            a.continues.map_or(0, |(prev, _)| prev).to_string(),
            a.continues.map_or(0, |(_, boundary)| boundary).to_string(),
            acks.len().to_string(),
        ]);
        for (offset, attempt) in acks {
            args.push(offset.to_string());
            args.push(attempt.to_string());
        }
        let reply = self.work_invoke("claim work", topic, keys, args).await?;
        let bad = || corrupt(topic, "unexpected take reply");
        let Value::Array(mut items) = reply else {
            return Err(bad());
        };
        let kind = items
            .first()
            .and_then(as_bytes)
            .map(<[u8]>::to_vec)
            .ok_or_else(bad)?;
        let acked = parse_acks(items.get(1), acks.len()).ok_or_else(bad)?;
        let mut taken = Taken {
            acks: acked,
            claimed: None,
            first: 0,
            last: 0,
            slots: Vec::new(),
        };
        let num = |items: &[Value], i: usize| items.get(i).and_then(as_u64).ok_or_else(bad);
        match kind.as_slice() {
            b"head" => return Ok(taken),
            b"gone" => {
                taken.claimed = Some(Claimed::Gone);
                return Ok(taken);
            }
            b"epoch" => {
                taken.claimed = Some(Claimed::OldEpoch);
                return Ok(taken);
            }
            b"ok" if items.len() >= 9 => {}
            _ => return Err(bad()),
        }
        let (now_ms, reset, lost, next) = (
            num(&items, 2)?,
            num(&items, 3)?,
            num(&items, 4)?,
            num(&items, 5)?,
        );
        taken.first = num(&items, 6)?;
        taken.last = num(&items, 7)?;
        let grants = parse_grants(&items[9..]).ok_or_else(bad)?;
        let entries = match std::mem::replace(&mut items[8], Value::Nil) {
            Value::Array(e) => e,
            _ => return Err(bad()),
        };
        for raw in entries {
            decode_entry(topic, raw, taken.last, &mut taken.slots);
        }
        taken.claimed = Some(Claimed::Granted {
            now_ms,
            reset: reset == 1,
            lost,
            next,
            grants,
        });
        Ok(taken)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn work_outcome(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        epoch: Epoch,
        offset: u64,
        attempt: u32,
        op: &Op,
    ) -> Result<OpResult> {
        let mut args = vec![
            op.name().to_string(),
            holder.into(),
            epoch.to_string(),
            offset.to_string(),
            attempt.to_string(),
        ];
        match op {
            Op::Ack | Op::DeadDone | Op::Lost => {}
            Op::Nak {
                delay_ms,
                max_deliveries,
                lease_ms,
                error,
            } => args.extend([
                delay_ms.to_string(),
                max_deliveries.to_string(),
                lease_ms.to_string(),
                error.clone(),
            ]),
            Op::Progress { lease_ms } => args.push(lease_ms.to_string()),
            Op::Defer { until_ms } => args.push(until_ms.to_string()),
            Op::Term { lease_ms, error } => args.extend([lease_ms.to_string(), error.clone()]),
        }
        let reply = self
            .work_call("report work outcome", topic, group, args)
            .await?;
        match as_bytes(&reply) {
            Some(b"ok") => Ok(OpResult::Ok),
            Some(b"dead") => Ok(OpResult::Dead),
            Some(b"stale") => Ok(OpResult::Stale),
            _ => Err(corrupt(topic, "unexpected outcome reply")),
        }
    }

    /// `ACKS`: acks several deliveries of `holder` in `epoch` in one call.
    pub(crate) async fn work_acks(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        epoch: Epoch,
        acks: &[(u64, u32)],
    ) -> Result<Vec<OpResult>> {
        let mut args = Vec::with_capacity(3 + 2 * acks.len());
        args.extend(["ACKS".to_string(), holder.to_string(), epoch.to_string()]);
        for (offset, attempt) in acks {
            args.push(offset.to_string());
            args.push(attempt.to_string());
        }
        let reply = self
            .work_call("report work outcomes", topic, group, args)
            .await?;
        let bad = || corrupt(topic, "unexpected reply to several acks");
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        if items.len() != acks.len() {
            return Err(bad());
        }
        items
            .iter()
            .map(|v| match as_bytes(v) {
                Some(b"ok") => Ok(OpResult::Ok),
                Some(b"stale") => Ok(OpResult::Stale),
                _ => Err(bad()),
            })
            .collect()
    }

    pub(crate) async fn work_state(&self, topic: &str, group: &str) -> Result<Option<GroupRecord>> {
        let reply = self
            .work_call("read work group", topic, group, vec!["STATE".into()])
            .await?;
        let bad = || corrupt(topic, "unexpected work group state reply");
        let Value::Array(items) = reply else {
            return Err(bad());
        };
        let now_ms = items.first().and_then(as_u64).ok_or_else(bad)?;
        let flat = |i: usize| -> Vec<(String, Vec<u8>)> {
            match items.get(i) {
                Some(Value::Array(v)) => v
                    .chunks(2)
                    .filter_map(|p| {
                        let k = std::str::from_utf8(p.first().and_then(as_bytes)?).ok()?;
                        Some((k.to_string(), p.get(1).and_then(as_bytes)?.to_vec()))
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let fields = flat(1);
        if fields.is_empty() {
            return Ok(None);
        }
        let mut rec = GroupRecord {
            now_ms,
            ..GroupRecord::default()
        };
        for (k, v) in fields {
            let text = String::from_utf8_lossy(&v).into_owned();
            let n = text.parse::<u64>().unwrap_or(0);
            match k.as_str() {
                "epoch" => rec.epoch = Some(n),
                "next" => rec.next = n,
                "acked" => rec.acked = n,
                "dead" => rec.dead = n,
                "lost" => rec.lost = n,
                "resets" => rec.resets = n,
                "dlq" => rec.dlq = text,
                _ => {}
            }
        }
        for (k, v) in flat(2) {
            match (k.parse::<u64>(), serde_json::from_slice::<JobRecord>(&v)) {
                (Ok(offset), Ok(job)) => rec.jobs.push((offset, job)),
                _ => {
                    tracing::warn!(topic, group, offset = %k, "skipping a job record Herald did not write")
                }
            }
        }
        rec.jobs.sort_by_key(|(o, _)| *o);
        for (holder, score) in flat(3) {
            let expiry = String::from_utf8_lossy(&score)
                .parse::<f64>()
                .unwrap_or(0.0);
            rec.holders.push((holder, expiry as u64));
        }
        Ok(Some(rec))
    }

    pub(crate) async fn work_groups(&self, topic: &str) -> Result<Vec<String>> {
        let key = self.inner.keys.key(topic, "groups");
        let mut names: Vec<String> = self
            .retry("list work groups", topic, |mut conn| {
                let key = key.clone();
                Box::pin(
                    async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await },
                )
            })
            .await?;
        names.sort();
        Ok(names)
    }
}

/// The grants of a claim reply: `offset, attempt, kind, error` for each.
fn parse_grants(items: &[Value]) -> Option<Vec<Grant>> {
    let mut grants = Vec::with_capacity(items.len() / 4);
    for g in items.chunks(4) {
        let [offset, attempt, kind, error] = g else {
            return None;
        };
        grants.push(Grant {
            offset: as_u64(offset)?,
            attempt: u32::try_from(as_u64(attempt)?).ok()?,
            dead: as_bytes(kind)? == b"dead",
            error: as_bytes(error)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        });
    }
    Some(grants)
}

/// The replies to the acks of a call: `ok` or `stale` for each of `n`.
fn parse_acks(v: Option<&Value>, n: usize) -> Option<Vec<OpResult>> {
    let Some(Value::Array(items)) = v else {
        // An empty Lua table comes back as an empty array; anything else is wrong.
        return None;
    };
    if items.len() != n {
        return None;
    }
    items
        .iter()
        .map(|v| match as_bytes(v) {
            Some(b"ok") => Some(OpResult::Ok),
            Some(b"stale") => Some(OpResult::Stale),
            _ => None,
        })
        .collect()
}

fn corrupt(topic: &str, detail: &str) -> Error {
    Error::Corrupt {
        topic: topic.to_string(),
        detail: detail.to_string(),
    }
}
