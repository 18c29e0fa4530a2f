//! Publisher-side loss detection: a handle remembers, per topic, the highest position it was
//! acknowledged, sends it with every later publish as the call's *floor*, and checks the
//! reply against it.
//!
//! The floor does the main work inside the publish itself (`lua/publish.lua`, protocol 4; the
//! embedded broker alike): when the topic still runs under the floor's epoch but its `last`
//! is below the floor's offset (the log went back under one writer), the same atomic call
//! records the loss and opens a new epoch before writing, so the receipt is in the new epoch
//! and no (epoch, offset) is ever reused. What is left here are the cases the script cannot
//! see, reported after the publish:
//!
//! A publish's reply names the epoch the topic runs under and the offsets it appended. Against
//! the highest position acknowledged before the call was sent (so publishes that complete out
//! of order never look like a loss):
//! - same epoch, but the call appended at or below that offset: the log went back under one
//!   epoch;
//! - a later epoch: the topic changed writing server since (a failover, a restart); whether
//!   the acknowledged offset survived is for the epoch history to say.
//!
//! (The first case is what the floor now handles inside the publish, with the same position
//! and the same comparison; it stays as a guard.) The second covers what the script cannot
//! see: the topic already runs under an epoch newer than the floor's (another party changed
//! it, or the history lacks the floor's epoch). Either way the handle
//! reports the acknowledged position through the loss report
//! (`Broker::report_lost`, `lua/lost.lua`), which is idempotent and changes nothing when the
//! position survived; when it did not, the loss is recorded (and, under one epoch, a new epoch
//! opens), so every reader crossing it gets a `Reset` or a `Lost` gap. The check costs one
//! map lookup per publish and one extra call per epoch change.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::broker::Broker;
use crate::position::{Epoch, Position};

/// The highest acknowledged position per topic of one handle.
#[derive(Debug, Default)]
pub(crate) struct Acked {
    highest: Mutex<HashMap<String, Position>>,
}

impl Acked {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Position>> {
        // Every update is a single insert or assignment: the map stays consistent.
        self.highest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The highest position acknowledged so far on `topic`; read before sending a publish.
    pub(crate) fn before(&self, topic: &str) -> Option<Position> {
        self.lock().get(topic).copied()
    }

    /// Checks a publish to `topic` that appended `appended` (lowest, highest offset; `None`
    /// when every message was a duplicate) under `epoch`, given what [`Acked::before`] said
    /// before it was sent; reports the earlier acknowledged position if the log may have gone
    /// back, then remembers the new highest. A failed report is tried again at the next
    /// publish (the highest position is kept until a report succeeds).
    pub(crate) async fn published(
        &self,
        broker: &Broker,
        topic: &str,
        before: Option<Position>,
        epoch: Epoch,
        appended: Option<(u64, u64)>,
    ) {
        let Some((first, last)) = appended else {
            return;
        };
        if let Some(seen) = before {
            let went_back = (seen.epoch == epoch && first <= seen.offset) || seen.epoch < epoch;
            if went_back {
                match broker.report_lost(topic, seen).await {
                    Ok(changed) => {
                        if changed {
                            tracing::warn!(
                                topic,
                                epoch = seen.epoch,
                                offset = seen.offset,
                                "acknowledged messages of this topic were lost by the broker; reported"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "could not check the topic's log for lost messages; will try again at the next publish");
                        return;
                    }
                }
            }
        }
        let now = Position::new(epoch, last);
        let mut map = self.lock();
        match map.get_mut(topic) {
            Some(h) if *h >= now => {}
            Some(h) => *h = now,
            None => {
                map.insert(topic.to_string(), now);
            }
        }
    }
}
