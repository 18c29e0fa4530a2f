//! Membership primitives of the embedded broker: the same semantics as `lua/members.lua`,
//! with the records kept beside the group's event topic.

use super::EmbeddedBroker;
use crate::broker::members::{JoinStatus, MemberList, MemberRecord};
use crate::clock;
use crate::cursor::CursorCommit;
use crate::error::{Error, Result};

impl EmbeddedBroker {
    pub(crate) fn member_join(
        &self,
        topic: &str,
        id: &str,
        meta_json: &str,
        ttl_ms: u64,
    ) -> Result<(JoinStatus, MemberRecord)> {
        if ttl_ms == 0 {
            return Err(Error::InvalidTtl {
                ttl: std::time::Duration::ZERO,
                min: std::time::Duration::from_millis(1),
            });
        }
        let meta = serde_json::from_str(meta_json).map_err(|e| Error::InvalidMetadata {
            reason: format!("not a JSON object of strings: {e}"),
        })?;
        let now = clock::now_ms();
        let mut topics = self.topics();
        let members = &mut topics.entry(topic.to_string()).or_default().members;
        let (status, joined) = match members.get(id) {
            Some(old) if old.expires_at_ms >= now => (JoinStatus::Alive, old.joined_at_ms),
            Some(old) => return Ok((JoinStatus::Expired, old.clone())),
            None => (JoinStatus::Created, now),
        };
        let record = MemberRecord {
            joined_at_ms: joined,
            heartbeat_ms: now,
            expires_at_ms: now + ttl_ms,
            ttl_ms,
            meta,
        };
        members.insert(id.to_string(), record.clone());
        Ok((status, record))
    }

    pub(crate) fn member_expired(&self, topic: &str, limit: usize) -> Vec<(String, MemberRecord)> {
        let now = clock::now_ms();
        self.topics().get(topic).map_or_else(Vec::new, |log| {
            log.members
                .iter()
                .filter(|(_, r)| r.expires_at_ms < now)
                .take(limit)
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect()
        })
    }

    pub(crate) fn member_remove(&self, topic: &str, id: &str, joined_at_ms: u64) -> bool {
        let mut topics = self.topics();
        let Some(log) = topics.get_mut(topic) else {
            return false;
        };
        if log
            .members
            .get(id)
            .is_some_and(|r| r.joined_at_ms == joined_at_ms)
        {
            log.members.remove(id);
            true
        } else {
            false
        }
    }

    pub(crate) fn member_list(&self, topic: &str) -> MemberList {
        MemberList {
            now_ms: clock::now_ms(),
            members: self.topics().get(topic).map_or_else(Vec::new, |log| {
                log.members
                    .iter()
                    .map(|(id, r)| (id.clone(), r.clone()))
                    .collect()
            }),
        }
    }

    pub(crate) fn member_topics(&self, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .topics()
            .iter()
            .filter(|(t, log)| t.starts_with(prefix) && !log.members.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        out.sort();
        out
    }

    pub(crate) fn all_cursors(&self, topic: &str) -> Vec<(String, CursorCommit)> {
        self.topics().get(topic).map_or_else(Vec::new, |log| {
            log.cursors.iter().map(|(n, p)| (n.clone(), *p)).collect()
        })
    }
}
