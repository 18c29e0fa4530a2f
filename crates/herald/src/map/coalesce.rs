//! Map changes, coalesced: the changes of one handle to one map that are in progress at the
//! same moment travel in one broker call (on Redis one run of `lua/map.lua`, map protocol 2),
//! as single publishes do (`crate::publish`).
//!
//! The first caller leads: it lets the runtime run once ([`tokio::task::yield_now`]), so that
//! whoever else is changing the map joins it, then sends everyone's changes as one call, in
//! the order they joined, from its own task. The broker applies them in that order, each
//! checked against the state the ones before it left (a compare-and-set that follows a change
//! of its key in the same call sees that change's revision, and loses), and each caller gets
//! its own outcome. A caller alone sends at once; sequential changes from one task are never
//! merged, so their order is the order of the calls.
//!
//! Each change keeps its own idempotency key, so a retry of the call after a lost reply gets
//! every applied change back. Cancelling a leader does not cancel the others: what it
//! gathered is sent, or finishes sending, in a task of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::{Change, Outcome};
use crate::broker::map::MAX_MAP_CHANGES;
use crate::broker::Broker;
use crate::error::{Error, Result};

/// Most value bytes in one call (a call may exceed it by one change).
const MAX_CALL_BYTES: usize = 4 << 20;

/// Where one coalesced change's outcome goes.
type Reply = oneshot::Sender<Result<Outcome>>;

/// A change waiting for its map's leader to send it.
struct Waiting {
    change: Change,
    reply: Reply,
}

/// The changes of one handle waiting to be sent, per map topic. A topic is in the map while
/// its leader gathers changes; the leader takes the list and sends it.
#[derive(Default)]
pub(crate) struct MapCoalescer {
    gathering: Mutex<HashMap<String, Vec<Waiting>>>,
}

impl MapCoalescer {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        // Every update is a single insert or remove: consistent even after a panic.
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to the map whose topic is `topic`, together with whatever other
    /// changes of this handle to it are in progress.
    pub(crate) async fn change(
        self: &Arc<Self>,
        broker: &Broker,
        node: &Arc<str>,
        topic: &str,
        change: Change,
    ) -> Result<Outcome> {
        let joined = {
            let mut gathering = self.lock();
            if let Some(list) = gathering.get_mut(topic) {
                let (reply, outcome) = oneshot::channel();
                list.push(Waiting { change, reply });
                Err(outcome)
            } else {
                gathering.insert(topic.to_string(), Vec::new());
                Ok(change)
            }
        };
        let change = match joined {
            Ok(mine) => mine,
            Err(outcome) => return outcome.await.unwrap_or(Err(Error::Closed)),
        };

        // This caller leads: give the others a chance to join, then take the list.
        let mut lead = Lead {
            coalescer: self,
            broker,
            node,
            topic,
            taken: false,
            sending: None,
        };
        tokio::task::yield_now().await;
        let others = lead.take();
        if others.is_empty() {
            let mut outcomes = broker
                .map_changes(topic, node, std::slice::from_ref(&change))
                .await?;
            return outcomes.pop().unwrap_or(Err(Error::Closed));
        }
        let (reply, outcome) = oneshot::channel();
        let mut all = Vec::with_capacity(others.len() + 1);
        all.push(Waiting { change, reply });
        all.extend(others);
        // Sent from here, without a task hop; if this caller is cancelled meanwhile, `Lead`
        // hands the unfinished send to a task of its own.
        let sending = lead.sending.insert(Box::pin(send(
            broker.clone(),
            Arc::clone(node),
            topic.to_string(),
            all,
        )));
        sending.await;
        lead.sending = None;
        outcome.await.unwrap_or(Err(Error::Closed))
    }
}

/// A coalesced call being sent.
type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The leader of a map's gathering; see `crate::publish`'s: if the leader is cancelled
/// before it took the list, dropping this sends what others had joined; if it is cancelled
/// while sending, dropping this lets the send finish in a task of its own.
struct Lead<'a> {
    coalescer: &'a Arc<MapCoalescer>,
    broker: &'a Broker,
    node: &'a Arc<str>,
    topic: &'a str,
    taken: bool,
    sending: Option<Sending>,
}

impl Lead<'_> {
    fn take(&mut self) -> Vec<Waiting> {
        self.taken = true;
        self.coalescer.lock().remove(self.topic).unwrap_or_default()
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let unfinished = match self.sending.take() {
            Some(sending) => sending,
            None if self.taken => return,
            None => {
                let others = self.take();
                if others.is_empty() {
                    return;
                }
                Box::pin(send(
                    self.broker.clone(),
                    Arc::clone(self.node),
                    self.topic.to_string(),
                    others,
                ))
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(unfinished);
        }
        // Without a runtime the replies are dropped and the callers get `Error::Closed`.
    }
}

/// Sends `all` in order, as few calls as the limits allow, and hands each its outcome.
async fn send(broker: Broker, node: Arc<str>, topic: String, all: Vec<Waiting>) {
    let mut rest = all.into_iter().peekable();
    // Bounded: every turn takes at least one change.
    while rest.peek().is_some() {
        let (mut changes, mut replies) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        while changes.is_empty() || (changes.len() < MAX_MAP_CHANGES && bytes < MAX_CALL_BYTES) {
            let Some(w) = rest.next() else { break };
            bytes += w.change.value.as_ref().map_or(0, |v| v.len()) + w.change.key.len();
            changes.push(w.change);
            replies.push(w.reply);
        }
        match broker.map_changes(&topic, &node, &changes).await {
            Ok(outcomes) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(Error::Corrupt {
                        topic: topic.clone(),
                        detail: "the map reply does not match the changes sent".into(),
                    }));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
