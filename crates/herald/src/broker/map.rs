//! Replicated maps at the broker (`crate::map`; `docs/PROTOCOL.md`, "Replicated maps (v1)"):
//! one change (check, append to the map's topic, state write) as one atomic step, and atomic
//! reads of the state.

use super::Broker;
use crate::error::Result;
use crate::map::{Change, MapLimits, MapSnapshot, Outcome, Versioned};

/// Most changes in one [`Broker::map_changes`] call.
pub(crate) const MAX_MAP_CHANGES: usize = super::redis::map::MAX_CHANGES;

impl Broker {
    /// Applies `changes` (at most [`MAX_MAP_CHANGES`]) to the map whose topic is `topic`, in
    /// order, each checked against the state the ones before it left; one outcome per change.
    /// On Redis they are one script call.
    pub(crate) async fn map_changes(
        &self,
        topic: &str,
        node: &str,
        changes: &[Change],
    ) -> Result<Vec<Result<Outcome>>> {
        match self {
            Broker::Redis(b) => b.map_changes(topic, node, changes).await,
            Broker::Embedded(b) => Ok(changes
                .iter()
                .map(|c| b.map_change(topic, node, c))
                .collect()),
        }
    }

    /// One key of the map.
    pub(crate) async fn map_get(&self, topic: &str, key: &str) -> Result<Option<Versioned>> {
        match self {
            Broker::Redis(b) => b.map_get(topic, key).await,
            Broker::Embedded(b) => Ok(b.map_get(topic, key)),
        }
    }

    /// The whole map, read atomically.
    pub(crate) async fn map_snapshot(&self, topic: &str) -> Result<MapSnapshot> {
        match self {
            Broker::Redis(b) => b.map_snapshot(topic).await,
            Broker::Embedded(b) => Ok(b.map_snapshot(topic)),
        }
    }

    /// Stores the map's limits.
    pub(crate) async fn map_set_limits(&self, topic: &str, limits: MapLimits) -> Result<()> {
        match self {
            Broker::Redis(b) => b.map_set_limits(topic, limits).await,
            Broker::Embedded(b) => {
                b.map_set_limits(topic, limits);
                Ok(())
            }
        }
    }
}
