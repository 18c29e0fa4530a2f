//! Live feeds on Redis: a Pub/Sub connection of its own per subscription (SUBSCRIBE, or with
//! a cluster SSUBSCRIBE at each channel's shard), yielding decoded notifications.

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::RedisError;

use super::classify::is_transient;
use super::keys::KeySpace;
use super::RedisBroker;
use crate::broker::LiveEvent;
use crate::envelope::{self, Frame, FrameHeader};
use crate::error::{Error, Result};

/// A live feed over a dedicated Pub/Sub connection.
pub(crate) struct RedisFeed {
    feed: Feed,
    keys: KeySpace,
    /// Headers of split notifications whose pieces are still to come, per channel.
    split: HashMap<String, FrameHeader>,
    /// With Sentinel: changes when Herald moves to a new primary, which ends the feed (the
    /// subscription then re-subscribes there).
    #[cfg(feature = "sentinel")]
    switches: tokio::sync::watch::Receiver<u64>,
}

enum Feed {
    /// SUBSCRIBE on one server (or the primary Sentinel named).
    PubSub {
        _sink: PubSubSink,
        stream: PubSubStream,
    },
    /// SSUBSCRIBE over a cluster connection of its own.
    #[cfg(feature = "cluster")]
    Sharded(sharded::Sharded),
}

impl RedisBroker {
    /// Opens a live feed for `topics`; once this returns, every later publish is notified.
    pub(crate) async fn live(&self, topics: &[String]) -> Result<RedisFeed> {
        let channels: Vec<String> = topics.iter().map(|t| self.inner.keys.live(t)).collect();
        let timeout = self.inner.opts.response_timeout;
        // With Sentinel, subscribe at the primary it names now (the feed of a demoted or dead
        // primary has just ended).
        self.follow_primary().await;
        #[cfg(feature = "sentinel")]
        let mut switches = self.inner.fence.switches();
        #[cfg(feature = "sentinel")]
        switches.mark_unchanged();
        let attempt = async {
            #[cfg(feature = "cluster")]
            if let Some(cluster) = self.cluster() {
                return Ok(Feed::Sharded(
                    sharded::Sharded::open(cluster, &channels, timeout).await?,
                ));
            }
            let client = self.pubsub_client();
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&channels).await?;
            Ok::<_, RedisError>(Feed::PubSub {
                _sink: sink,
                stream,
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(feed)) => Ok(RedisFeed {
                feed,
                keys: self.inner.keys.clone(),
                split: HashMap::new(),
                #[cfg(feature = "sentinel")]
                switches,
            }),
            Ok(Err(e)) if is_transient(&e) => Err(Error::Unreachable {
                target: self.inner.target.clone(),
                waited: timeout,
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(Error::Refused {
                operation: "subscribe",
                source: e.into(),
            }),
            Err(_) => Err(Error::Unreachable {
                target: self.inner.target.clone(),
                waited: timeout,
                reason: "subscribe timed out".into(),
            }),
        }
    }
}

impl RedisFeed {
    /// The next notification; `None` when the feed ended (connection lost, or a shard stopped
    /// serving a channel), after which the subscription catches up from history and opens a
    /// new feed.
    pub(crate) async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            let (channel, payload) = match &mut self.feed {
                Feed::PubSub { stream, .. } => {
                    #[cfg(feature = "sentinel")]
                    let msg = tokio::select! {
                        msg = stream.next() => msg?,
                        _ = self.switches.changed() => return None,
                    };
                    #[cfg(not(feature = "sentinel"))]
                    let msg = stream.next().await?;
                    let channel = msg.get_channel_name().to_string();
                    (channel, Bytes::copy_from_slice(msg.get_payload_bytes()))
                }
                #[cfg(feature = "cluster")]
                Feed::Sharded(feed) => match feed.next().await? {
                    sharded::Pushed::Message(channel, payload) => (channel, payload),
                    sharded::Pushed::Lost => return Some(LiveEvent::Lost),
                    sharded::Pushed::Resubscribed(channel) => {
                        match self.keys.topic_of_channel(&channel) {
                            Some(topic) => return Some(LiveEvent::Stale(topic.to_string())),
                            None => return Some(LiveEvent::Lost),
                        }
                    }
                },
            };
            let Some(topic) = self.keys.topic_of_channel(&channel) else {
                tracing::warn!(channel, "notification on an unexpected channel");
                return Some(LiveEvent::Lost);
            };
            // The pieces of a split notification: the message after its header on this channel.
            let decoded = match self.split.remove(&channel) {
                Some(header) => envelope::decode_split(topic, &header, payload),
                None => match envelope::decode_frame(topic, payload) {
                    Ok(Frame::Whole(n)) => Ok(n),
                    Ok(Frame::Header(header)) => {
                        self.split.insert(channel, header);
                        continue;
                    }
                    Err(reason) => Err(reason),
                },
            };
            return match decoded {
                Ok(n) => Some(LiveEvent::Notification(n)),
                Err(reason) => {
                    tracing::warn!(topic, %reason, "undecodable live notification; reading history instead");
                    Some(LiveEvent::Lost)
                }
            };
        }
    }
}

#[cfg(feature = "cluster")]
mod sharded {
    //! The sharded feed of a cluster: one connection of its own, each channel SSUBSCRIBEd at
    //! its shard's primary. The channels fail independently: when a shard stops serving a
    //! channel (its slot moved, or it became a replica) or a shard's connection drops, the
    //! feed subscribes those channels again in the background, retrying while the shard is
    //! down, and keeps delivering the other shards' notifications meanwhile.

    use std::collections::HashSet;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use futures::stream::FuturesUnordered;
    use futures::{FutureExt, StreamExt};
    use redis::cluster_async::ClusterConnection;
    use redis::{PushInfo, PushKind, RedisResult, Value};
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::super::classify::is_transient;
    use super::super::timed_out;
    use super::super::topology::ClusterTarget;
    use crate::retry::Backoff;

    /// How a channel's subscription is retried while its shard is unavailable.
    const SUBSCRIBE_BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

    pub(super) struct Sharded {
        conn: ClusterConnection,
        rx: UnboundedReceiver<PushInfo>,
        channels: Vec<String>,
        timeout: Duration,
        /// Channels being subscribed (again) in the background.
        pending: HashSet<String>,
        subscribing: FuturesUnordered<BoxFuture<'static, (String, RedisResult<()>)>>,
    }

    /// What the sharded feed yields.
    pub(super) enum Pushed {
        /// A message on a channel.
        Message(String, Bytes),
        /// A message of an unexpected shape, or a shard connection that dropped: any channel
        /// may have missed messages.
        Lost,
        /// The channel is subscribed again after an interruption: it may have missed messages.
        Resubscribed(String),
    }

    impl Sharded {
        /// Opens the connection and subscribes every channel at once; channels whose shard is
        /// unavailable now are subscribed in the background (see [`Pushed::Resubscribed`]).
        /// Fails if the connection cannot be made or a subscription is refused.
        pub(super) async fn open(
            cluster: &ClusterTarget,
            channels: &[String],
            timeout: Duration,
        ) -> RedisResult<Sharded> {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let conn = cluster
                .builder()
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()?
                .get_async_connection()
                .await?;
            let mut feed = Sharded {
                conn,
                rx,
                channels: channels.to_vec(),
                timeout,
                pending: HashSet::new(),
                subscribing: FuturesUnordered::new(),
            };
            // One command per channel, all at once: the channels may live on different
            // shards, and one unavailable shard must not hold up the others.
            let attempts = channels.iter().map(|channel| {
                let mut conn = feed.conn.clone();
                async move {
                    let r = tokio::time::timeout(timeout, conn.ssubscribe(channel)).await;
                    (
                        channel,
                        r.unwrap_or_else(|_| Err(timed_out("ssubscribe timed out"))),
                    )
                }
            });
            for (channel, result) in futures::future::join_all(attempts).await {
                match result {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => {
                        tracing::info!(channel, error = %e, "shard unavailable; subscribing in the background");
                        feed.resubscribe(channel.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(feed)
        }

        /// Subscribes `channel` again in the background, retrying while its shard is
        /// unavailable (for as long as the feed lives).
        fn resubscribe(&mut self, channel: String) {
            if !self.pending.insert(channel.clone()) {
                return;
            }
            let (mut conn, timeout) = (self.conn.clone(), self.timeout);
            self.subscribing.push(
                async move {
                    let mut backoff = SUBSCRIBE_BACKOFF;
                    loop {
                        let r = tokio::time::timeout(timeout, conn.ssubscribe(&channel)).await;
                        match r.unwrap_or_else(|_| Err(timed_out("ssubscribe timed out"))) {
                            Ok(()) => return (channel, Ok(())),
                            Err(e) if is_transient(&e) => {
                                tokio::time::sleep(backoff.next_pause()).await;
                            }
                            Err(e) => return (channel, Err(e)),
                        }
                    }
                }
                .boxed(),
            );
        }

        /// The next message or interruption; `None` when the feed ended (its connection is
        /// gone, or a channel's subscription was refused).
        pub(super) async fn next(&mut self) -> Option<Pushed> {
            loop {
                tokio::select! {
                    push = self.rx.recv() => {
                        if let Some(pushed) = self.on_push(push?) {
                            return Some(pushed);
                        }
                    }
                    Some((channel, result)) = self.subscribing.next(), if !self.subscribing.is_empty() => {
                        self.pending.remove(&channel);
                        return match result {
                            Ok(()) => Some(Pushed::Resubscribed(channel)),
                            Err(e) => {
                                tracing::warn!(channel, error = %e, "sharded subscription refused; ending the live feed");
                                None
                            }
                        };
                    }
                }
            }
        }

        fn on_push(&mut self, push: PushInfo) -> Option<Pushed> {
            match push.kind {
                PushKind::SMessage => {
                    let mut data = push.data.into_iter();
                    let (Some(channel), Some(Value::BulkString(payload))) =
                        (data.next(), data.next())
                    else {
                        return Some(Pushed::Lost);
                    };
                    let channel = super::super::read::as_bytes(&channel)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    Some(Pushed::Message(channel, Bytes::from(payload)))
                }
                // The server stopped serving a channel here (its slot moved, or this node
                // became a replica): subscribe it again, wherever it is served now.
                PushKind::SUnsubscribe => {
                    let channel = push
                        .data
                        .first()
                        .and_then(|c| super::super::read::as_bytes(c))
                        .map(|b| String::from_utf8_lossy(b).into_owned());
                    match channel {
                        Some(c) if self.channels.contains(&c) => {
                            tracing::info!(
                                channel = c,
                                "shard stopped serving a channel; subscribing again"
                            );
                            self.resubscribe(c);
                            None
                        }
                        _ => Some(Pushed::Lost),
                    }
                }
                // A shard's connection dropped (which one is not said): its messages may be
                // lost; every channel is subscribed again (a no-op where still subscribed).
                PushKind::Disconnection => {
                    tracing::info!("a shard connection of the live feed dropped");
                    for c in self.channels.clone() {
                        self.resubscribe(c);
                    }
                    Some(Pushed::Lost)
                }
                _ => None,
            }
        }
    }
}
