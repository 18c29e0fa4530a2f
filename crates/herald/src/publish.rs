//! Publishing one message at a time, coalesced.
//!
//! A publish is one atomic broker call whatever its size, and most of its cost is per call,
//! not per message. So single publishes to one topic that are in progress at the same moment
//! (from concurrent tasks, or futures joined in one task) travel together: the first caller
//! leads; it lets the runtime run once ([`tokio::task::yield_now`]), so that whoever else is
//! publishing to the topic joins it, then sends everyone's messages as one call, in the order
//! they joined, from its own task. Each caller still gets its own receipt. A caller alone
//! sends at once, as before; sequential publishes from one task are never merged, so their order is
//! the order of the calls.
//!
//! Coalescing does not weaken anything: each message keeps its idempotency key, a retry of the
//! call after a lost reply is recognised by the call's key (`docs/PROTOCOL.md` §6), and when
//! one message of a merged call is too large for the topic (nothing is written then), the
//! messages over the limit get the error and the others are sent again. Cancelling a
//! leader does not cancel the others: what it gathered is sent, or finishes sending, in a task
//! of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::broker::{Broker, Placed};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::position::{Epoch, Position};

/// Where one coalesced message's outcome goes.
type Reply = oneshot::Sender<Result<(Epoch, Placed)>>;

/// A message waiting for its topic's leader to send it.
struct Waiting {
    key: String,
    message: Message,
    reply: Reply,
}

/// The single publishes of one handle that are waiting to be sent, per topic. A topic is in
/// the map while its leader gathers messages; the leader takes the list and sends it.
#[derive(Default)]
pub(crate) struct Coalescer {
    gathering: Mutex<HashMap<String, Vec<Waiting>>>,
}

impl Coalescer {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        // The map stays consistent even if a holder panicked: every update is a single insert
        // or remove.
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes one message (its idempotency key resolved) to `topic`, together with whatever
    /// other single publishes to `topic` are in progress on this handle.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        broker: &Broker,
        node: &Arc<str>,
        topic: &str,
        key: String,
        message: Message,
        floor: Option<Position>,
    ) -> Result<(Epoch, Placed)> {
        let joined = {
            let mut gathering = self.lock();
            if let Some(list) = gathering.get_mut(topic) {
                let (reply, outcome) = oneshot::channel();
                list.push(Waiting {
                    key,
                    message,
                    reply,
                });
                Err(outcome)
            } else {
                gathering.insert(topic.to_string(), Vec::new());
                Ok((key, message))
            }
        };
        let (key, message) = match joined {
            Ok(mine) => mine,
            Err(outcome) => return outcome.await.unwrap_or(Err(Error::Closed)),
        };

        // This caller leads: give the others a chance to join, then take the list.
        let mut lead = Lead {
            coalescer: self,
            broker,
            node,
            topic,
            floor,
            taken: false,
            sending: None,
        };
        tokio::task::yield_now().await;
        let others = lead.take();
        if others.is_empty() {
            let (epoch, placed) = broker
                .publish(topic, node, &[(key, &message)], floor)
                .await?;
            let first = placed.first().copied().ok_or(Error::Closed)?;
            return Ok((epoch, first));
        }
        let (reply, outcome) = oneshot::channel();
        let mut all = Vec::with_capacity(others.len() + 1);
        all.push(Waiting {
            key,
            message,
            reply,
        });
        all.extend(others);
        // Sent from here, without a task hop; if this caller is cancelled meanwhile, `Lead`
        // hands the unfinished send to a task of its own.
        let sending = lead.sending.insert(Box::pin(send(
            broker.clone(),
            Arc::clone(node),
            topic.to_string(),
            all,
            floor,
        )));
        sending.await;
        lead.sending = None;
        outcome.await.unwrap_or(Err(Error::Closed))
    }
}

/// A coalesced call being sent.
type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The leader of a topic's gathering. If the leader is cancelled before it took the list,
/// dropping this sends what others had joined; if it is cancelled while sending, dropping
/// this lets the send finish in a task of its own. So nobody waits forever.
struct Lead<'a> {
    coalescer: &'a Arc<Coalescer>,
    broker: &'a Broker,
    node: &'a Arc<str>,
    topic: &'a str,
    /// The leader's floor (see `Broker::publish`), sent with everyone's messages: they are
    /// all this handle's.
    floor: Option<Position>,
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
                    self.floor,
                ))
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(unfinished);
        }
        // Without a runtime the replies are dropped and the callers get `Error::Closed`.
    }
}

/// Sends `all` as one call and hands each its outcome. When a message is too large for the
/// topic the call wrote nothing: the messages over the limit get the error, the others are
/// sent again (each round removes at least the message the broker named).
async fn send(
    broker: Broker,
    node: Arc<str>,
    topic: String,
    mut all: Vec<Waiting>,
    floor: Option<Position>,
) {
    while !all.is_empty() {
        let outcome = {
            let messages: Vec<(String, &Message)> =
                all.iter().map(|w| (w.key.clone(), &w.message)).collect();
            broker.publish(&topic, &node, &messages, floor).await
        };
        match outcome {
            Ok((epoch, placed)) if placed.len() == all.len() => {
                for (w, p) in all.into_iter().zip(placed) {
                    let _ = w.reply.send(Ok((epoch, p)));
                }
                return;
            }
            Ok(_) => {
                for w in all {
                    let _ = w.reply.send(Err(Error::Corrupt {
                        topic: topic.clone(),
                        detail: "the publish reply does not match the messages sent".into(),
                    }));
                }
                return;
            }
            Err(Error::MessageTooLarge { limit, .. }) => {
                let (over, fit): (Vec<Waiting>, Vec<Waiting>) = all
                    .into_iter()
                    .partition(|w| w.message.payload.len() > limit);
                if over.is_empty() {
                    // The broker named no message of this call: nothing can be sent safely.
                    for w in fit {
                        let _ = w.reply.send(Err(Error::MessageTooLarge {
                            topic: topic.clone(),
                            size: w.message.payload.len(),
                            limit,
                        }));
                    }
                    return;
                }
                for w in over {
                    let _ = w.reply.send(Err(Error::MessageTooLarge {
                        topic: topic.clone(),
                        size: w.message.payload.len(),
                        limit,
                    }));
                }
                all = fit;
            }
            Err(e) => {
                for w in all {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}
