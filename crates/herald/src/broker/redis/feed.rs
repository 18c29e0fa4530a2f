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
    Sharded {
        _conn: redis::cluster_async::ClusterConnection,
        rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
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
                return sharded_feed(cluster, &channels, timeout).await;
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

/// A sharded Pub/Sub feed over its own cluster connection (RESP3, pushes into a channel):
/// each channel is SSUBSCRIBEd at the primary of its slot.
#[cfg(feature = "cluster")]
async fn sharded_feed(
    cluster: &super::topology::ClusterTarget,
    channels: &[String],
    timeout: std::time::Duration,
) -> redis::RedisResult<Feed> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conn = cluster
        .builder()
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .build()?
        .get_async_connection()
        .await?;
    // One command per channel: the channels of one feed may live on different shards.
    for channel in channels {
        conn.ssubscribe(channel).await?;
    }
    Ok(Feed::Sharded { _conn: conn, rx })
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
                Feed::Sharded { rx, .. } => match next_sharded(rx).await? {
                    Some(message) => message,
                    None => return Some(LiveEvent::Lost),
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

/// The next sharded message as (channel, payload): `None` when the feed ended, `Some(None)`
/// for a message of an unexpected shape.
#[cfg(feature = "cluster")]
async fn next_sharded(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) -> Option<Option<(String, Bytes)>> {
    use redis::{PushKind, Value};
    loop {
        let push = rx.recv().await?;
        match push.kind {
            PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(Value::BulkString(payload))) = (data.next(), data.next())
                else {
                    return Some(None);
                };
                let channel = super::read::as_bytes(&channel)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Some(Some((channel, Bytes::from(payload))));
            }
            // The server stopped serving a channel here (its slot moved, or this node became
            // a replica), or a connection dropped: end the feed.
            PushKind::SUnsubscribe | PushKind::Disconnection => {
                tracing::info!(kind = ?push.kind, "sharded live feed interrupted");
                return None;
            }
            _ => continue,
        }
    }
}
