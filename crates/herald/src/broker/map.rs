//! Replicated maps at the broker (`crate::map`; `docs/PROTOCOL.md`, "Replicated maps (v1)"):
//! one change (check, append to the map's topic, state write) as one atomic step, and atomic
//! reads of the state.

use super::Broker;
use crate::error::Result;
use crate::map::{Change, MapLimits, MapSnapshot, Outcome, Versioned};

impl Broker {
    /// Applies one change to the map whose topic is `topic`.
    pub(crate) async fn map_change(
        &self,
        topic: &str,
        node: &str,
        change: &Change<'_>,
    ) -> Result<Outcome> {
        match self {
            Broker::Redis(b) => b.map_change(topic, node, change).await,
            Broker::Embedded(b) => b.map_change(topic, node, change),
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
