//! The node handle: [`Herald`] and its [`HeraldBuilder`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::redis::{RedisBroker, RedisOptions};
use crate::broker::{Broker, EmbeddedBroker, Placed};
use crate::clock;
use crate::cursor::CursorCommit;
use crate::error::{at_least, Error, Result};
use crate::inspect::TopicInfo;
use crate::message::{Message, Receipt};
use crate::position::Position;
use crate::publish::Coalescer;
use crate::subscription::SubscribeBuilder;
use crate::topic::{
    validate_cursor, validate_namespace, validate_topic, SettingsChange, TopicSettings,
};

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// The shortest accepted [`HeraldBuilder::poll_interval`].
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Most messages in one batch publish.
pub const MAX_BATCH: usize = 10_000;

/// One node's handle to Herald. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Herald {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    node: Arc<str>,
    /// Prefix of generated idempotency keys, unique to this handle.
    key_prefix: String,
    counter: AtomicU64,
    /// Merges concurrent single publishes (see the `publish` module).
    coalescer: Arc<Coalescer>,
    /// The highest acknowledged position per topic (publisher-side loss detection).
    acked: crate::acked::Acked,
    /// Merges concurrent map changes (see `map::coalesce`).
    map_coalescer: Arc<crate::map::MapCoalescer>,
    buffer: usize,
    poll_interval: Duration,
}

impl std::fmt::Debug for Herald {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Herald")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`Herald`] handle.
#[derive(Debug, Clone)]
#[must_use]
pub struct HeraldBuilder {
    redis_url: Option<String>,
    embedded: Option<EmbeddedBroker>,
    node_id: Option<String>,
    namespace: String,
    defaults: TopicSettings,
    connect_deadline: Duration,
    response_timeout: Duration,
    operation_deadline: Duration,
    min_replicas: usize,
    replica_timeout: Duration,
    tls_ca: Option<Vec<u8>>,
    buffer: usize,
    poll_interval: Duration,
}

impl Default for HeraldBuilder {
    fn default() -> Self {
        HeraldBuilder {
            redis_url: None,
            embedded: None,
            node_id: None,
            namespace: "herald".into(),
            defaults: TopicSettings::default(),
            connect_deadline: Duration::from_secs(10),
            response_timeout: Duration::from_secs(2),
            operation_deadline: Duration::from_secs(10),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
            tls_ca: None,
            buffer: 1024,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl HeraldBuilder {
    /// Use Redis at `url`:
    ///
    /// - `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS): one server;
    /// - `redis+sentinel://[user:password@]host1:port1,host2:port2/<primary name>[/db]`: the
    ///   primary that these sentinels name (port 26379 by default; the credentials are those of
    ///   the data nodes, the sentinels are contacted without); Herald follows failovers;
    /// - `redis+cluster://[user:password@]host1:port1,host2:port2`: a Redis Cluster, from these
    ///   seed nodes; live notifications use sharded Pub/Sub (Redis >= 7).
    ///
    /// `rediss://`, `rediss+sentinel://` and `rediss+cluster://` are the same over TLS (see
    /// [`HeraldBuilder::tls_ca_pem`]).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self.embedded = None;
        self
    }

    /// Use this embedded broker (share one between handles to simulate several nodes).
    /// Without `redis` or `embedded`, a new private embedded broker is used.
    pub fn embedded(mut self, broker: EmbeddedBroker) -> Self {
        self.embedded = Some(broker);
        self.redis_url = None;
        self
    }

    /// This node's id (default: generated from the host name and process id).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The prefix of every Redis key Herald writes (default `herald`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Settings for topics this node creates that were never configured.
    pub fn topic_defaults(mut self, defaults: TopicSettings) -> Self {
        self.defaults = defaults;
        self
    }

    /// How long `connect` keeps retrying an unreachable Redis (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_deadline = d;
        self
    }

    /// How long one Redis command may take before it counts as failed (default 2 s).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How long an operation keeps retrying transient failures before it fails (default 10 s).
    /// Retried publishes reuse their idempotency key, so retries never duplicate.
    pub fn operation_timeout(mut self, d: Duration) -> Self {
        self.operation_deadline = d;
        self
    }

    /// Durability of publishes (Redis with replicas): a publish succeeds only once `replicas`
    /// replicas have it (Redis `WAIT`), and fails with [`Error::NotReplicated`] if they do not
    /// confirm within `timeout`. With it, an acknowledged publish survives a failover to one of
    /// those replicas. Default: 0 (acknowledged once on the primary). The embedded broker has
    /// no replicas and ignores this.
    ///
    /// To survive a manual failover (`SENTINEL FAILOVER`, during which the old primary still
    /// accepts writes for a moment), require every replica; to survive a crash of the primary,
    /// one is enough when the most up-to-date replica is the one promoted, which Sentinel and
    /// Cluster prefer.
    pub fn min_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.min_replicas = replicas;
        self.replica_timeout = timeout;
        self
    }

    /// For `rediss://`, `rediss+sentinel://` and `rediss+cluster://` URLs: trust this PEM root
    /// certificate (your own CA) instead of the system's certificate store.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Default buffer of new subscriptions, in events (default 1024, at least 1: `connect`
    /// refuses 0).
    pub fn subscription_buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// How often subscriptions check topic heads as a safety net (default 1 s, at least
    /// [`MIN_POLL_INTERVAL`]: `connect` refuses less).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Connects (Redis) or attaches (embedded) and returns the handle.
    pub async fn connect(self) -> Result<Herald> {
        validate_namespace(&self.namespace)?;
        self.defaults.validate()?;
        at_least("subscription buffer", self.buffer, 1)?;
        at_least("poll interval", self.poll_interval, MIN_POLL_INTERVAL)?;
        let node = match self.node_id {
            Some(id) if !id.is_empty() && id.len() <= 200 => id,
            Some(id) => return Err(Error::InvalidNodeId { id }),
            None => default_node_id(),
        };
        let broker = match (self.redis_url, self.embedded) {
            (Some(url), _) => Broker::Redis(
                RedisBroker::connect(RedisOptions {
                    url,
                    namespace: self.namespace,
                    defaults: self.defaults,
                    connect_deadline: self.connect_deadline,
                    response_timeout: self.response_timeout,
                    operation_deadline: self.operation_deadline,
                    min_replicas: self.min_replicas,
                    replica_timeout: self.replica_timeout,
                    tls_ca: self.tls_ca,
                })
                .await?,
            ),
            (None, Some(b)) => Broker::Embedded(b),
            (None, None) => Broker::Embedded(EmbeddedBroker::with_defaults(self.defaults)),
        };
        Ok(Herald {
            inner: Arc::new(Inner {
                broker,
                key_prefix: format!("{}.{:x}", node, clock::now_us()),
                node: node.into(),
                counter: AtomicU64::new(0),
                coalescer: Arc::default(),
                acked: crate::acked::Acked::default(),
                map_coalescer: Arc::default(),
                buffer: self.buffer,
                poll_interval: self.poll_interval,
            }),
        })
    }
}

/// `hostname-pid`, the default node id.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{}-{}", host, std::process::id())
}

impl Herald {
    /// A builder; see [`HeraldBuilder`].
    pub fn builder() -> HeraldBuilder {
        HeraldBuilder::default()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// A fresh idempotency key, unique to this handle.
    /// Applies one map change, together with the other changes of this handle to the same
    /// map in progress at the same moment (one broker call).
    pub(crate) async fn map_change(
        &self,
        topic: &str,
        change: crate::map::Change,
    ) -> Result<crate::map::Outcome> {
        self.inner
            .map_coalescer
            .change(&self.inner.broker, &self.inner.node, topic, change)
            .await
    }

    pub(crate) fn next_key(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n:x}", self.inner.key_prefix)
    }

    /// Publishes one message. Returns where it landed; `duplicate` is true when its
    /// idempotency key was already published within the topic's dedup window.
    ///
    /// Single publishes to the same topic that run concurrently on this handle (from several
    /// tasks, or joined futures) are sent to the broker together, as one call, each with its
    /// own receipt; sequential publishes keep their order.
    pub async fn publish(&self, topic: &str, message: impl Into<Message>) -> Result<Receipt> {
        let started = std::time::Instant::now();
        let outcome = self.publish_one(topic, message.into()).await;
        let duplicates = usize::from(outcome.as_ref().is_ok_and(|r| r.duplicate));
        crate::telemetry::published(started, 1, &outcome, duplicates);
        outcome
    }

    async fn publish_one(&self, topic: &str, message: Message) -> Result<Receipt> {
        validate_topic(topic)?;
        let key = self.resolve_key(&message)?;
        let own_key = message.key.is_some();
        let before = self.inner.acked.before(topic);
        let (
            epoch,
            Placed {
                offset,
                duplicate,
                epoch: older,
            },
        ) = self
            .inner
            .coalescer
            .publish(
                &self.inner.broker,
                &self.inner.node,
                topic,
                key,
                message,
                before,
            )
            .await?;
        let appended = (!duplicate).then_some((offset, offset));
        self.inner
            .acked
            .published(&self.inner.broker, topic, before, epoch, appended)
            .await;
        Ok(Receipt {
            topic: topic.to_string(),
            position: Position::new(older.unwrap_or(epoch), offset),
            // A generated key is unique to this call: see `publish_batch`.
            duplicate: duplicate && own_key,
        })
    }

    /// The message's own idempotency key, checked, or a generated one.
    fn resolve_key(&self, m: &Message) -> Result<String> {
        match &m.key {
            Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => Err(Error::InvalidKey {
                len: k.len(),
                max: MAX_KEY_LEN,
            }),
            Some(k) => Ok(k.clone()),
            None => Ok(self.next_key()),
        }
    }

    /// Publishes many messages to one topic in one atomic step and one round trip.
    pub async fn publish_batch<M: Into<Message>>(
        &self,
        topic: &str,
        messages: impl IntoIterator<Item = M>,
    ) -> Result<Vec<Receipt>> {
        let messages: Vec<Message> = messages.into_iter().map(Into::into).collect();
        if messages.is_empty() {
            validate_topic(topic)?;
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let n = messages.len();
        let outcome = self.publish_many(topic, messages).await;
        let duplicates = outcome
            .as_ref()
            .map_or(0, |r| r.iter().filter(|r| r.duplicate).count());
        crate::telemetry::published(started, n, &outcome, duplicates);
        outcome
    }

    async fn publish_many(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        validate_topic(topic)?;
        if messages.len() > MAX_BATCH {
            return Err(Error::BatchTooLarge {
                len: messages.len(),
                max: MAX_BATCH,
            });
        }
        let keyed = messages
            .iter()
            .map(|m| Ok((self.resolve_key(m)?, m)))
            .collect::<Result<Vec<_>>>()?;
        let before = self.inner.acked.before(topic);
        let (epoch, placed) = self
            .inner
            .broker
            .publish(topic, &self.inner.node, &keyed, before)
            .await?;
        let mut fresh = placed.iter().filter(|p| !p.duplicate).map(|p| p.offset);
        let appended = fresh
            .next()
            .map(|f| fresh.fold((f, f), |(lo, hi), o| (lo.min(o), hi.max(o))));
        self.inner
            .acked
            .published(&self.inner.broker, topic, before, epoch, appended)
            .await;
        // A generated key is unique to this call: if the broker reports it as a duplicate, that
        // is this call's own retry (the first attempt landed but its reply was lost), so the
        // message was published exactly once, by this call.
        Ok(placed
            .into_iter()
            .zip(&messages)
            .map(|(p, m)| (p.offset, p.duplicate, p.epoch.unwrap_or(epoch), m))
            .map(|(offset, duplicate, epoch, m)| Receipt {
                topic: topic.to_string(),
                position: Position::new(epoch, offset),
                duplicate: duplicate && m.key.is_some(),
            })
            .collect())
    }

    /// Starts building a subscription to `topics`.
    pub fn subscribe<I, S>(&self, topics: I) -> SubscribeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SubscribeBuilder::new(
            self.inner.broker.clone(),
            self.inner.poll_interval,
            topics.into_iter().map(Into::into).collect(),
            self.inner.buffer,
        )
    }

    /// A topic's state: epoch, retained range, settings, cursors and their lag.
    pub async fn inspect(&self, topic: &str) -> Result<TopicInfo> {
        validate_topic(topic)?;
        self.inner.broker.inspect(topic).await
    }

    /// Changes a topic's settings (only the fields given) and returns the settings in force.
    pub async fn configure(&self, topic: &str, change: SettingsChange) -> Result<TopicSettings> {
        validate_topic(topic)?;
        self.inner.broker.configure(topic, &change).await
    }

    /// Checks that the broker can serve now: Redis answers and holds Herald's scripts (a
    /// missing script is loaded). An error says what is wrong: unreachable, or refused (for
    /// example a user not allowed to run `SCRIPT`). The embedded broker is always ready.
    pub async fn ready(&self) -> Result<()> {
        self.inner.broker.ready().await
    }

    /// Reads a durable cursor.
    pub async fn cursor(&self, topic: &str, name: &str) -> Result<Option<CursorCommit>> {
        validate_topic(topic)?;
        validate_cursor(name)?;
        self.inner.broker.get_cursor(topic, name).await
    }

    /// Commits the durable cursor `name` of `topic` at `position`: a subscription resuming
    /// from that cursor starts right after it.
    pub async fn commit(&self, topic: &str, name: &str, position: Position) -> Result<()> {
        validate_topic(topic)?;
        validate_cursor(name)?;
        self.inner
            .broker
            .commit(topic, name, CursorCommit::new(position))
            .await
    }
}
