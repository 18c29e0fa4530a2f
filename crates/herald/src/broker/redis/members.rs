//! Membership primitives of the Redis broker: `lua/members.lua` (see `docs/PROTOCOL.md`,
//! "Membership") over the keys `<ns>:{__members/<group>}:members` and `...:expiry`.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::read::{as_bytes, as_u64};
use super::RedisBroker;
use crate::broker::members::{JoinStatus, MemberList, MemberRecord};
use crate::error::{Error, Result};

/// The membership procedure, installed in Redis with SCRIPT LOAD / EVALSHA.
pub(crate) const MEMBERS_SCRIPT: &str = include_str!("../lua/members.lua");

static MEMBERS: LazyLock<Script> = LazyLock::new(|| Script::new(MEMBERS_SCRIPT));

impl RedisBroker {
    /// The members hash and expiry sorted set of the group whose event topic is `topic`.
    fn member_keys(&self, topic: &str) -> [String; 2] {
        [
            self.inner.keys.key(topic, "members"),
            self.inner.keys.key(topic, "expiry"),
        ]
    }

    /// Runs one operation of the membership script.
    async fn members_call(
        &self,
        operation: &'static str,
        topic: &str,
        args: &[&[u8]],
    ) -> Result<Value> {
        let keys = self.member_keys(topic);
        self.retry_write(operation, topic, None, |mut conn| {
            let mut inv = MEMBERS.prepare_invoke();
            inv.key(&keys[0]).key(&keys[1]);
            for a in args {
                inv.arg(*a);
            }
            Box::pin(async move { inv.invoke_async(&mut conn).await })
        })
        .await
    }

    pub(crate) async fn member_join(
        &self,
        topic: &str,
        id: &str,
        meta_json: &str,
        ttl_ms: u64,
    ) -> Result<(JoinStatus, MemberRecord)> {
        let ttl = ttl_ms.to_string();
        let reply = self
            .members_call(
                "join",
                topic,
                &[b"JOIN", id.as_bytes(), meta_json.as_bytes(), ttl.as_bytes()],
            )
            .await?;
        let bad = |what: &str| corrupt(topic, format!("unexpected join reply: {what}"));
        let Value::Array(items) = reply else {
            return Err(bad("not an array"));
        };
        let (Some(status), Some(record)) = (
            items.first().and_then(as_bytes),
            items.get(1).and_then(as_bytes),
        ) else {
            return Err(bad("wrong shape"));
        };
        let status = match status {
            b"created" => JoinStatus::Created,
            b"alive" => JoinStatus::Alive,
            b"expired" => JoinStatus::Expired,
            _ => return Err(bad("unknown status")),
        };
        let record = MemberRecord::decode(record).ok_or_else(|| {
            corrupt(
                topic,
                format!("member {id:?} has a record Herald cannot read"),
            )
        })?;
        Ok((status, record))
    }

    pub(crate) async fn member_expired(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<(String, MemberRecord)>> {
        let limit = limit.to_string();
        let reply = self
            .members_call("reap members", topic, &[b"EXPIRED", limit.as_bytes()])
            .await?;
        let Value::Array(items) = reply else {
            return Err(corrupt(topic, "unexpected reap reply".into()));
        };
        Ok(pairs(topic, &items))
    }

    pub(crate) async fn member_remove(
        &self,
        topic: &str,
        id: &str,
        joined_at_ms: u64,
    ) -> Result<bool> {
        let joined = joined_at_ms.to_string();
        let reply = self
            .members_call(
                "remove member",
                topic,
                &[b"REMOVE", id.as_bytes(), joined.as_bytes()],
            )
            .await?;
        Ok(as_u64(&reply) == Some(1))
    }

    pub(crate) async fn member_list(&self, topic: &str) -> Result<MemberList> {
        let reply = self.members_call("list members", topic, &[b"LIST"]).await?;
        let Value::Array(items) = reply else {
            return Err(corrupt(topic, "unexpected list reply".into()));
        };
        let now_ms = items
            .first()
            .and_then(as_u64)
            .ok_or_else(|| corrupt(topic, "list reply without the clock".into()))?;
        Ok(MemberList {
            now_ms,
            members: pairs(topic, items.get(1..).unwrap_or_default()),
        })
    }

    /// Scans the namespace for the members hashes of topics that start with `prefix` (with
    /// Redis Cluster, on every primary).
    pub(crate) async fn member_topics(&self, prefix: &str) -> Result<Vec<String>> {
        let ns_prefix = format!("{}:{{", self.inner.keys.ns());
        let pattern = format!("{ns_prefix}{}*}}:members", glob_escape(prefix));
        let keys = self
            .retry("list groups", "", |mut conn| {
                let pattern = pattern.clone();
                Box::pin(async move { conn.scan_keys(&pattern).await })
            })
            .await?;
        let found: std::collections::BTreeSet<String> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(&ns_prefix)?.strip_suffix("}:members"))
            .filter(|topic| topic.starts_with(prefix))
            .map(str::to_string)
            .collect();
        Ok(found.into_iter().collect())
    }
}

/// `text` with the characters that SCAN's MATCH treats specially escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn corrupt(topic: &str, detail: String) -> Error {
    Error::Corrupt {
        topic: topic.to_string(),
        detail,
    }
}

/// Decodes `{id1, record1, ...}`, skipping (with a warning) what Herald did not write.
fn pairs(topic: &str, items: &[Value]) -> Vec<(String, MemberRecord)> {
    items
        .chunks(2)
        .filter_map(|pair| {
            let id = pair
                .first()
                .and_then(as_bytes)
                .and_then(|b| std::str::from_utf8(b).ok())?;
            match pair
                .get(1)
                .and_then(as_bytes)
                .and_then(MemberRecord::decode)
            {
                Some(r) => Some((id.to_string(), r)),
                None => {
                    tracing::warn!(
                        topic,
                        member = id,
                        "skipping a member record Herald did not write"
                    );
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_matched_literally() {
        assert_eq!(glob_escape("__members/"), "__members/");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
