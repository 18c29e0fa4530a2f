//! Work group primitives of the Redis broker: `lua/work.lua` (see `docs/PROTOCOL.md`, "Work
//! groups (v1)") over the keys `<ns>:{<topic>}:work:<group>[:jobs|:due|:holders]` and
//! `<ns>:{<topic>}:groups`, all with the topic's hash tag.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::read::{as_bytes, as_u64};
use super::RedisBroker;
use crate::broker::work::{ClaimArgs, Claimed, Grant, GroupRecord, JobRecord, Op, OpResult};
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
        let keys = self.work_keys(topic, group);
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
        let mut grants = Vec::new();
        let mut i = 5;
        while i + 3 < items.len() {
            let (Some(offset), Some(attempt), Some(kind)) = (num(i), num(i + 1), text(i + 2))
            else {
                return Err(bad());
            };
            grants.push(Grant {
                offset,
                attempt: u32::try_from(attempt).map_err(|_| bad())?,
                dead: kind == "dead",
                error: text(i + 3).unwrap_or_default().to_string(),
            });
            i += 4;
        }
        Ok(Claimed::Granted {
            now_ms,
            reset: reset == 1,
            lost,
            next,
            grants,
        })
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

fn corrupt(topic: &str, detail: &str) -> Error {
    Error::Corrupt {
        topic: topic.to_string(),
        detail: detail.to_string(),
    }
}
