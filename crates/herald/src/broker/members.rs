//! Broker primitives for membership (docs/DESIGN.md, Membership): the member records of a
//! group, kept under the group's event topic `__members/<group>` (so that, in Redis, they share
//! its hash tag).
//!
//! Four primitives, each one atomic step on the broker (in Redis, one call of
//! `lua/members.lua`), all timed by the broker's clock:
//! - `member_join`: creates or refreshes a member (a heartbeat is a join of a live member);
//! - `member_expired`: the members whose heartbeat has expired, not yet removed;
//! - `member_remove`: removes one incarnation of a member (identified by `joined_at_ms`);
//! - `member_list`: every record and the broker's clock.
//!
//! The cursors of a topic are read here too (`all_cursors`), for acknowledgements.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Broker;
use crate::cursor::CursorCommit;
use crate::error::Result;

/// A member's record as stored (the JSON value of the members hash in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct MemberRecord {
    /// When this incarnation joined (broker clock, ms since the Unix epoch).
    pub(crate) joined_at_ms: u64,
    /// The last heartbeat.
    pub(crate) heartbeat_ms: u64,
    /// When the member expires unless it heartbeats again.
    pub(crate) expires_at_ms: u64,
    /// The time to live the member asked for.
    pub(crate) ttl_ms: u64,
    /// The member's metadata.
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
}

impl MemberRecord {
    /// Decodes a stored record; `None` when it is not in Herald's format.
    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        serde_json::from_slice(raw).ok()
    }
}

/// What `member_join` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinStatus {
    /// No record existed: a new incarnation was written.
    Created,
    /// The record was live and was refreshed.
    Alive,
    /// The record has expired (not reaped yet); nothing was written.
    Expired,
}

/// Every member record of a group and the broker's clock when they were read.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberList {
    /// The broker's clock, ms since the Unix epoch.
    pub(crate) now_ms: u64,
    /// Member id and record, expired ones included.
    pub(crate) members: Vec<(String, MemberRecord)>,
}

impl Broker {
    /// Creates or refreshes member `id` of the group whose event topic is `topic`.
    pub(crate) async fn member_join(
        &self,
        topic: &str,
        id: &str,
        meta_json: &str,
        ttl_ms: u64,
    ) -> Result<(JoinStatus, MemberRecord)> {
        match self {
            Broker::Redis(b) => b.member_join(topic, id, meta_json, ttl_ms).await,
            Broker::Embedded(b) => b.member_join(topic, id, meta_json, ttl_ms),
        }
    }

    /// Up to `limit` expired members that are still recorded.
    pub(crate) async fn member_expired(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<(String, MemberRecord)>> {
        match self {
            Broker::Redis(b) => b.member_expired(topic, limit).await,
            Broker::Embedded(b) => Ok(b.member_expired(topic, limit)),
        }
    }

    /// Removes the incarnation `joined_at_ms` of member `id`; false when it was not there.
    pub(crate) async fn member_remove(
        &self,
        topic: &str,
        id: &str,
        joined_at_ms: u64,
    ) -> Result<bool> {
        match self {
            Broker::Redis(b) => b.member_remove(topic, id, joined_at_ms).await,
            Broker::Embedded(b) => Ok(b.member_remove(topic, id, joined_at_ms)),
        }
    }

    /// Every member record and the broker's clock.
    pub(crate) async fn member_list(&self, topic: &str) -> Result<MemberList> {
        match self {
            Broker::Redis(b) => b.member_list(topic).await,
            Broker::Embedded(b) => Ok(b.member_list(topic)),
        }
    }

    /// The topics starting with `prefix` that have member records (expired ones included):
    /// the event topics of groups, whose naming belongs to the layer above.
    pub(crate) async fn member_topics(&self, prefix: &str) -> Result<Vec<String>> {
        match self {
            Broker::Redis(b) => b.member_topics(prefix).await,
            Broker::Embedded(b) => Ok(b.member_topics(prefix)),
        }
    }

    /// Every durable cursor of `topic` (cursors Herald did not write are skipped).
    pub(crate) async fn all_cursors(&self, topic: &str) -> Result<Vec<(String, CursorCommit)>> {
        match self {
            Broker::Redis(b) => b.all_cursors(topic).await,
            Broker::Embedded(b) => Ok(b.all_cursors(topic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_decodes() {
        let r = MemberRecord::decode(
            br#"{"joined_at_ms":1,"heartbeat_ms":2,"expires_at_ms":3,"ttl_ms":1,"meta":{"a":"b"}}"#,
        );
        assert_eq!(r.map(|r| r.meta.get("a").cloned()), Some(Some("b".into())));
        assert_eq!(MemberRecord::decode(b"{}"), None);
    }
}
