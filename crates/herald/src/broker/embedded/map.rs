//! Replicated maps on the embedded broker: the same semantics as `lua/map.lua` (check, append
//! the change to the map's topic, write the state) under the broker's one lock.

use std::collections::BTreeMap;

use super::EmbeddedBroker;
use crate::error::Result;
use crate::map::Revision;
use crate::map::{change_headers, Change, Expect, MapLimits, MapSnapshot, Outcome, Versioned};
use crate::message::Message;
use crate::position::Position;

/// A map's state, kept with its topic.
#[derive(Debug, Clone, Default)]
pub(super) struct MapState {
    entries: BTreeMap<String, Versioned>,
    revision: Option<Revision>,
    limits: MapLimits,
}

impl EmbeddedBroker {
    pub(crate) fn map_change(&self, topic: &str, node: &str, change: &Change) -> Result<Outcome> {
        let mut topics = self.topics();
        let log = topics.entry(topic.to_string()).or_default();
        // A retry of a change that was applied gets the earlier change back.
        if let Some((offset, _)) = log.dedup.get(&change.idem) {
            return Ok(Outcome::Applied(Position::new(
                log.epoch.unwrap_or(0),
                *offset,
            )));
        }
        let state = &log.map;
        let current = state.entries.get(&change.key).map(|v| v.revision);
        match change.expect {
            Some(Expect::Absent) if current.is_some() => return Ok(Outcome::Conflict(current)),
            Some(Expect::Revision(r)) if current != Some(r) => {
                return Ok(Outcome::Conflict(current))
            }
            _ => {}
        }
        let Some(value) = change.value.as_deref() else {
            if current.is_none() {
                return Ok(Outcome::Absent);
            }
            return self.append(&mut topics, topic, node, change, &[]);
        };
        if let Some(max) = state.limits.max_value {
            if value.len() as u64 > max {
                return Ok(Outcome::Limit("value", value.len() as u64, max));
            }
        }
        if let Some(max) = state.limits.max_keys {
            let count = state.entries.len() as u64;
            if current.is_none() && count >= max {
                return Ok(Outcome::Limit("keys", count + 1, max));
            }
        }
        self.append(&mut topics, topic, node, change, value)
    }

    /// Appends the change to the topic and writes the state (the topics are locked).
    fn append(
        &self,
        topics: &mut std::collections::HashMap<String, super::TopicLog>,
        topic: &str,
        node: &str,
        change: &Change,
        value: &[u8],
    ) -> Result<Outcome> {
        let base = topics.get(topic).and_then(|l| l.map.revision);
        let mut message = Message::new(bytes::Bytes::copy_from_slice(value)).key(&change.idem);
        message.headers = change_headers(&change.key, change.value.is_none(), base);
        let (epoch, placed) = self.publish_in(
            topics,
            topic,
            node,
            &[(change.idem.clone(), &message)],
            None,
        )?;
        let Some(p) = placed.first() else {
            return Ok(Outcome::Absent);
        };
        let rev = Position::new(p.epoch.unwrap_or(epoch), p.offset);
        if p.duplicate {
            return Ok(Outcome::Applied(rev));
        }
        let log = topics.entry(topic.to_string()).or_default();
        match &change.value {
            Some(v) => {
                log.map.entries.insert(
                    change.key.clone(),
                    Versioned {
                        value: v.clone(),
                        revision: rev,
                    },
                );
            }
            None => {
                log.map.entries.remove(&change.key);
            }
        }
        log.map.revision = Some(rev);
        Ok(Outcome::Applied(rev))
    }

    pub(crate) fn map_get(&self, topic: &str, key: &str) -> Option<Versioned> {
        self.topics()
            .get(topic)
            .and_then(|l| l.map.entries.get(key).cloned())
    }

    pub(crate) fn map_snapshot(&self, topic: &str) -> MapSnapshot {
        let topics = self.topics();
        match topics.get(topic) {
            Some(l) => MapSnapshot {
                entries: l.map.entries.clone(),
                revision: l.map.revision,
            },
            None => MapSnapshot::default(),
        }
    }

    pub(crate) fn map_set_limits(&self, topic: &str, limits: MapLimits) {
        self.topics()
            .entry(topic.to_string())
            .or_default()
            .map
            .limits = limits;
    }
}
