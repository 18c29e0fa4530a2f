//! The Redis broker: topics as Redis keys (layout in `docs/PROTOCOL.md`), publish and read
//! as Lua scripts so each is one atomic step, live notifications over Pub/Sub.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{ErrorKind as RedisKind, RedisError, RetryMethod, Script, ServerErrorKind, Value};

pub(crate) mod members;
mod topology;

use topology::{Conn, Target};

use super::{cursor_infos, LiveEvent, Placed, ReadResult, Slot};
use crate::cursor::CursorPosition;
use crate::envelope::{self, Frame, FrameHeader};
use crate::error::{Error, Result};
use crate::inspect::TopicInfo;
use crate::message::{Entry, Epoch, Message};
use crate::topic::{SettingsChange, TopicSettings};

/// The publish procedure, installed in Redis with SCRIPT LOAD / EVALSHA.
pub(crate) const PUBLISH_SCRIPT: &str = include_str!("lua/publish.lua");
/// The atomic history read.
pub(crate) const READ_SCRIPT: &str = include_str!("lua/read.lua");

/// Connection settings for the Redis broker.
#[derive(Debug, Clone)]
pub(crate) struct RedisOptions {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) defaults: TopicSettings,
    /// How long `connect` keeps retrying an unreachable Redis.
    pub(crate) connect_deadline: Duration,
    /// How long one command may take before it is retried.
    pub(crate) response_timeout: Duration,
    /// How long an operation (a publish, a read) keeps retrying transient failures.
    pub(crate) operation_deadline: Duration,
    /// Replicas that must have a publish before it is acknowledged (WAIT); 0: none.
    pub(crate) min_replicas: usize,
    /// How long a publish waits for `min_replicas`.
    pub(crate) replica_timeout: Duration,
    /// A PEM root certificate to trust for `rediss://` instead of the system's.
    pub(crate) tls_ca: Option<Vec<u8>>,
}

/// Key names of one namespace. Every key of a topic carries the hash tag `{topic}`, so a
/// topic's keys live on one Redis Cluster shard.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    ns: String,
}

impl KeySpace {
    pub(crate) fn new(ns: &str) -> Self {
        KeySpace { ns: ns.to_string() }
    }
    fn key(&self, topic: &str, what: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, topic, what)
    }
    pub(crate) fn meta(&self, topic: &str) -> String {
        self.key(topic, "meta")
    }
    pub(crate) fn log(&self, topic: &str) -> String {
        self.key(topic, "log")
    }
    pub(crate) fn settings(&self, topic: &str) -> String {
        self.key(topic, "settings")
    }
    pub(crate) fn cursors(&self, topic: &str) -> String {
        self.key(topic, "cursors")
    }
    /// The current dedup window's hash (idempotency key to offset).
    pub(crate) fn dedup(&self, topic: &str) -> String {
        self.key(topic, "dedup")
    }
    /// The previous dedup window's hash.
    pub(crate) fn dedup_old(&self, topic: &str) -> String {
        self.key(topic, "dedup-old")
    }
    pub(crate) fn live(&self, topic: &str) -> String {
        self.key(topic, "live")
    }
    /// The topic a live channel belongs to.
    fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:live")
    }
}

/// The Redis broker. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the data lives (one server, Sentinel, Cluster).
    topology: Target,
    /// The server, or the primary Sentinel named last: Pub/Sub connections go there.
    client: std::sync::RwLock<redis::Client>,
    /// The command connection; replaced when Sentinel names a new primary.
    conn: std::sync::RwLock<Conn>,
    /// With Sentinel, the primary's address in use; held while following a failover.
    primary: tokio::sync::Mutex<Option<(String, u16)>>,
    manager_config: ConnectionManagerConfig,
    /// PUBLISH, or SPUBLISH (sharded Pub/Sub) with a cluster.
    notify: &'static str,
    keys: KeySpace,
    publish: Script,
    opts: RedisOptions,
    target: String,
    /// Per topic, the average number of messages per stream entry seen by reads, used to
    /// size the next read (an entry holds one whole publish).
    entry_sizes: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Masks the password of a URL for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// The URL schemes the Redis client understands.
const URL_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+unix",
    "unix",
    "valkey",
    "valkeys",
    "valkey+unix",
];

/// Whether retrying the same command later may succeed.
fn is_transient(e: &RedisError) -> bool {
    if e.kind() == RedisKind::AuthenticationFailed {
        return false;
    }
    // A TLS certificate that is not trusted stays untrusted: fail now, with rustls's reason.
    if e.is_io_error() && e.to_string().contains("invalid peer certificate") {
        return false;
    }
    if matches!(e.kind(), RedisKind::Server(ServerErrorKind::ReadOnly)) {
        return true; // a replica that is being promoted, or a failover in progress
    }
    if matches!(e.kind(), RedisKind::Server(ServerErrorKind::ExecAbort)) {
        // A transaction (MULTI/EXEC) aborted because its commands were refused for a
        // transient reason, e.g. LOADING while Redis reads its data after a restart.
        return e.clone().into_server_errors().is_some_and(|errors| {
            !errors.is_empty()
                && errors.iter().all(|(_, s)| {
                    matches!(
                        s.kind(),
                        Some(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::ReadOnly
                        )
                    )
                })
        });
    }
    e.is_io_error()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::RetryImmediately
                | RetryMethod::WaitAndRetry
                | RetryMethod::ReconnectFromInitialConnections
                | RetryMethod::RefreshSlotsAndRetry
                | RetryMethod::MovedRedirect
                | RetryMethod::AskRedirect
        )
}

impl RedisBroker {
    /// Connects, retrying with backoff until `connect_deadline`.
    pub(crate) async fn connect(opts: RedisOptions) -> Result<Self> {
        let target = redact(&opts.url);
        // TLS (rediss://) runs on rustls with the ring provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let topology =
            topology::parse(&opts.url, opts.tls_ca.as_deref()).map_err(|e| Error::InvalidUrl {
                url: target.clone(),
                // "did not parse" says little when only the scheme is wrong (http://...).
                reason: match opts.url.split_once("://") {
                    Some((scheme, _)) if !URL_SCHEMES.contains(&scheme) => {
                        format!("unsupported scheme {scheme:?}")
                    }
                    _ => e,
                },
            })?;
        // With `min_replicas`, a publish's WAIT blocks its connection up to `replica_timeout`.
        let response_timeout = if opts.min_replicas > 0 {
            opts.response_timeout + opts.replica_timeout
        } else {
            opts.response_timeout
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.response_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        let conn = loop {
            // Each attempt is bounded by what is left of the deadline, so that a server that
            // accepts connections but never answers cannot hold `connect` past it.
            let left = opts
                .connect_deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(10));
            let attempt = tokio::time::timeout(
                left,
                Self::open(&topology, &config, opts.response_timeout, response_timeout),
            )
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from Redis",
                )))
            });
            match attempt {
                Ok(conn) => break conn,
                Err(e) if !is_transient(&e) => {
                    return Err(Error::Refused {
                        operation: "connect",
                        source: e,
                    });
                }
                Err(e) => {
                    // Give up only once the deadline has passed, never before it.
                    let elapsed = started.elapsed();
                    if elapsed >= opts.connect_deadline {
                        return Err(Error::Unreachable {
                            target,
                            waited: elapsed,
                            reason: e.to_string(),
                        });
                    }
                    let pause = delay.min(opts.connect_deadline - elapsed);
                    tracing::warn!(target = %target, error = %e, retry_in = ?pause, "Redis unreachable, retrying");
                    tokio::time::sleep(pause).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        };
        let (conn, client, primary) = conn;
        let notify = match topology {
            Target::Cluster(_) => "SPUBLISH",
            _ => "PUBLISH",
        };
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                topology,
                client: std::sync::RwLock::new(client),
                conn: std::sync::RwLock::new(conn),
                primary: tokio::sync::Mutex::new(primary),
                manager_config: config,
                notify,
                keys: KeySpace::new(&opts.namespace),
                publish: Script::new(PUBLISH_SCRIPT),
                opts,
                target,
                entry_sizes: Default::default(),
            }),
        })
    }

    /// Opens the command connection: to the server, to the primary Sentinel names (also
    /// returned), or to the cluster. Also returns the client for Pub/Sub connections.
    async fn open(
        topology: &Target,
        config: &ConnectionManagerConfig,
        timeout: Duration,
        command_timeout: Duration,
    ) -> redis::RedisResult<(Conn, redis::Client, Option<(String, u16)>)> {
        match topology {
            Target::Single(client) => {
                let m = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok((Conn::Single(m), client.clone(), None))
            }
            Target::Sentinel(s) => {
                let (host, port) = s.primary(timeout).await?;
                let client = s.data_client(&host, port)?;
                let m = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok((Conn::Single(m), client, Some((host, port))))
            }
            Target::Cluster(c) => {
                let client = c.first_node()?;
                let conn = c
                    .builder()
                    .connection_timeout(timeout)
                    .response_timeout(command_timeout)
                    .retries(4)
                    .build()?
                    .get_async_connection()
                    .await?;
                Ok((Conn::Cluster(conn), client, None))
            }
        }
    }

    /// The command connection.
    fn conn(&self) -> Conn {
        self.inner
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// With Sentinel: asks the sentinels for the primary and, when it moved, connects to the
    /// new one. Called after transient errors and before each Pub/Sub connection.
    async fn follow_primary(&self) {
        let Target::Sentinel(s) = &self.inner.topology else {
            return;
        };
        let mut primary = self.inner.primary.lock().await;
        let timeout = self.inner.opts.response_timeout;
        let (host, port) = match s.primary(timeout).await {
            Ok(addr) if Some(&addr) != primary.as_ref() => addr,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "sentinels did not name a primary");
                return;
            }
        };
        let opened = async {
            let client = s.data_client(&host, port)?;
            let m = tokio::time::timeout(
                timeout,
                client.get_connection_manager_with_config(self.inner.manager_config.clone()),
            )
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from the new primary",
                ))
            })??;
            Ok::<_, RedisError>((client, m))
        };
        match opened.await {
            Ok((client, m)) => {
                tracing::info!(master = %s.master, host = %host, port, "following the primary Sentinel names");
                *self.inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Conn::Single(m);
                *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) = client;
                *primary = Some((host, port));
            }
            Err(e) => {
                tracing::debug!(error = %e, host = %host, port, "cannot reach the primary Sentinel names yet");
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the operation deadline passes.
    async fn retry<'a, T>(
        &'a self,
        operation: &'static str,
        topic: &str,
        mut attempt: impl FnMut(Conn) -> BoxFuture<'a, redis::RedisResult<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let deadline = self.inner.opts.operation_deadline;
        let mut delay = Duration::from_millis(20);
        loop {
            match attempt(self.conn()).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    self.follow_primary().await;
                    let elapsed = started.elapsed();
                    if elapsed >= deadline {
                        return Err(Error::Timeout {
                            operation,
                            waited: elapsed,
                            reason: e.to_string(),
                        });
                    }
                    let pause = delay.min(deadline - elapsed);
                    tracing::debug!(operation, error = %e, retry_in = ?pause, "transient Redis error, retrying");
                    tokio::time::sleep(pause).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    let mut err = self.classify(operation, topic, e);
                    if let Error::WrongType { key, .. } = &mut err {
                        if let Some(foreign) = self.foreign_key(topic).await {
                            *key = foreign;
                        }
                    }
                    return Err(err);
                }
            }
        }
    }

    /// The first of the topic's keys that holds a type Herald never writes there, so that a
    /// WRONGTYPE error (which does not say which key) can name it.
    async fn foreign_key(&self, topic: &str) -> Option<String> {
        let k = &self.inner.keys;
        let expected = [
            (k.meta(topic), "hash"),
            (k.log(topic), "stream"),
            (k.settings(topic), "hash"),
            (k.cursors(topic), "hash"),
            (k.dedup(topic), "hash"),
            (k.dedup_old(topic), "hash"),
        ];
        let mut pipe = redis::pipe();
        for (key, _) in &expected {
            pipe.cmd("TYPE").arg(key);
        }
        let mut conn = self.conn();
        let types: Vec<String> = pipe.query_async(&mut conn).await.ok()?;
        expected
            .into_iter()
            .zip(types)
            .find(|((_, want), got)| got != "none" && got != want)
            .map(|((key, _), _)| key)
    }

    /// Turns a permanent Redis error into Herald's error.
    fn classify(&self, operation: &'static str, topic: &str, e: RedisError) -> Error {
        // A failed transaction (MULTI/EXEC) carries its server errors inside.
        let wrongtype_in_pipeline = e.code().is_none() && e.to_string().contains("WRONGTYPE");
        let code = if wrongtype_in_pipeline {
            "WRONGTYPE"
        } else {
            e.code().unwrap_or("")
        };
        let detail = e.detail().unwrap_or("").to_string();
        match code {
            "WRONGTYPE" => Error::WrongType {
                key: format!("{}:{{{}}}:*", self.inner.keys.ns, topic),
                detail: format!("{code} {detail}"),
            },
            "HERALD_TOO_LARGE" => {
                let mut it = detail
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse::<usize>().ok());
                Error::MessageTooLarge {
                    topic: topic.to_string(),
                    size: it.next().unwrap_or(0),
                    limit: it.next().unwrap_or(0),
                }
            }
            "HERALD_CORRUPT" => Error::Corrupt {
                topic: topic.to_string(),
                detail,
            },
            _ => Error::Refused {
                operation,
                source: e,
            },
        }
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        node: &str,
        messages: &[(String, &Message)],
    ) -> Result<(Epoch, Vec<Placed>)> {
        let keys = &self.inner.keys;
        let d = self.inner.opts.defaults;
        let mut key_names = vec![keys.meta(topic), keys.log(topic), keys.settings(topic)];
        key_names.push(keys.dedup(topic));
        key_names.push(keys.dedup_old(topic));
        let call = PublishCall::new(messages);
        let channel = keys.live(topic);
        let wanted = self.inner.opts.min_replicas;
        let wait_ms = u64::try_from(self.inner.opts.replica_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (reply, acked): (Value, usize) = self
            .retry("publish", topic, |mut conn| {
                let mut inv = self.inner.publish.prepare_invoke();
                for k in &key_names {
                    inv.key(k);
                }
                inv.arg("2").arg(&channel).arg(node);
                inv.arg(d.max_len)
                    .arg(d.max_age_ms)
                    .arg(d.dedup_window_ms)
                    .arg(d.max_size);
                inv.arg(self.inner.notify);
                call.add_args(&mut inv);
                let meta = &key_names[0];
                Box::pin(async move {
                    let reply = inv.invoke_async(&mut conn).await?;
                    // With `min_replicas`, WAIT on the server that ran the script. If this
                    // fails, the whole attempt is retried: the script then finds the
                    // idempotency keys (on this server, or on a new primary that has the
                    // write) or writes them anew, and WAIT runs where the write is.
                    let acked = match wanted {
                        0 => 0,
                        n => conn.wait(n, wait_ms, meta).await?,
                    };
                    Ok((reply, acked))
                })
            })
            .await?;
        let placed = parse_publish_reply(topic, reply, messages.len())?;
        if acked < wanted {
            return Err(self.not_replicated(topic, &placed, acked));
        }
        Ok(placed)
    }

    /// Fewer replicas than `min_replicas` confirmed a publish within `replica_timeout`. The
    /// publish itself stands on the primary; publishing again with the same idempotency keys
    /// waits again without duplicating.
    fn not_replicated(&self, topic: &str, placed: &(Epoch, Vec<Placed>), acked: usize) -> Error {
        let wanted = self.inner.opts.min_replicas;
        let timeout = self.inner.opts.replica_timeout;
        let offsets = placed.1.iter().map(|p| p.0);
        Error::NotReplicated {
            topic: topic.to_string(),
            epoch: placed.0,
            first: offsets.clone().min().unwrap_or(0),
            last: offsets.max().unwrap_or(0),
            acked,
            wanted,
            waited: timeout,
        }
    }

    /// Reads the topic's state and at least `limit` messages from `from` (whole entries, so
    /// possibly more), in one MULTI/EXEC transaction. Entries go straight from the stream to the
    /// client (no Lua round trip), which matters for catch-up speed.
    pub(crate) async fn read(&self, topic: &str, from: u64, limit: usize) -> Result<ReadResult> {
        let from = from.max(1);
        let meta = self.inner.keys.meta(topic);
        let log = self.inner.keys.log(topic);
        let entries_wanted = if limit == 0 {
            0
        } else {
            let per_entry = self
                .entry_size(topic)
                .unwrap_or(limit as f64 / 8.0)
                .max(1.0);
            ((limit as f64 / per_entry).ceil() as usize).clamp(1, 1024)
        };
        let start = format!("{from}-0");
        let reply: Vec<Value> = if matches!(self.inner.topology, Target::Cluster(_)) {
            // The cluster client does not follow MOVED/ASK inside a transaction: read with the
            // script, whose EVALSHA it routes and redirects like any keyed command.
            self.read_by_script(topic, &meta, &log, from, entries_wanted)
                .await?
        } else {
            self.retry("read", topic, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe.cmd("HMGET").arg(&meta).arg("epoch").arg("last");
                pipe.cmd("XRANGE")
                    .arg(&log)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1);
                if entries_wanted > 0 {
                    pipe.cmd("XREVRANGE")
                        .arg(&log)
                        .arg(&start)
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                    pipe.cmd("XRANGE")
                        .arg(&log)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(entries_wanted);
                }
                Box::pin(async move { pipe.query_async(&mut conn).await })
            })
            .await?
        };
        let result = parse_read_reply(topic, reply, from, entries_wanted)?;
        if let Some(avg) = result.1 {
            self.set_entry_size(topic, avg);
        }
        Ok(result.0)
    }

    /// The read as one EVALSHA of `lua/read.lua`, its reply reshaped like the transaction's
    /// (`[epoch, last]`, head entry, no separate entry at `from`, entries).
    async fn read_by_script(
        &self,
        topic: &str,
        meta: &str,
        log: &str,
        from: u64,
        entries_wanted: usize,
    ) -> Result<Vec<Value>> {
        static READ: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(READ_SCRIPT));
        let reply: Vec<Value> = self
            .retry("read", topic, |mut conn| {
                let mut inv = READ.prepare_invoke();
                inv.key(meta).key(log).arg(from).arg(entries_wanted);
                Box::pin(async move { inv.invoke_async(&mut conn).await })
            })
            .await?;
        let mut it = reply.into_iter();
        let (Some(epoch), Some(last), Some(first), Some(entries)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(Error::Corrupt {
                topic: topic.to_string(),
                detail: "unexpected read script reply".into(),
            });
        };
        let epoch = match epoch {
            Value::Boolean(false) => Value::Nil,
            v => v,
        };
        let head = match as_u64(&first) {
            Some(f) if f > 0 => vec![Value::Array(vec![Value::BulkString(
                format!("{f}-0").into_bytes(),
            )])],
            _ => Vec::new(),
        };
        let mut out = vec![Value::Array(vec![epoch, last]), Value::Array(head)];
        if entries_wanted > 0 {
            out.push(Value::Array(Vec::new()));
            out.push(entries);
        }
        Ok(out)
    }

    fn entry_size(&self, topic: &str) -> Option<f64> {
        let sizes = self
            .inner
            .entry_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sizes.get(topic).copied()
    }

    fn set_entry_size(&self, topic: &str, avg: f64) {
        let mut sizes = self
            .inner
            .entry_sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if sizes.len() > 10_000 {
            sizes.clear(); // a cache, not state: keep it bounded
        }
        sizes.insert(topic.to_string(), avg);
    }

    pub(crate) async fn live(&self, topics: &[String]) -> Result<RedisFeed> {
        let channels: Vec<String> = topics.iter().map(|t| self.inner.keys.live(t)).collect();
        let timeout = self.inner.opts.response_timeout;
        // With Sentinel, subscribe at the primary it names now (the feed of a demoted or dead
        // primary has just ended).
        self.follow_primary().await;
        let attempt = async {
            if let Target::Cluster(c) = &self.inner.topology {
                return Self::sharded_feed(c, &channels, timeout).await;
            }
            let client = self
                .inner
                .client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
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
            }),
            Ok(Err(e)) if is_transient(&e) => Err(Error::Unreachable {
                target: self.inner.target.clone(),
                waited: timeout,
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(Error::Refused {
                operation: "subscribe",
                source: e,
            }),
            Err(_) => Err(Error::Unreachable {
                target: self.inner.target.clone(),
                waited: timeout,
                reason: "subscribe timed out".into(),
            }),
        }
    }

    /// A sharded Pub/Sub feed over its own cluster connection (RESP3, pushes into a channel):
    /// each channel is SSUBSCRIBEd at the primary of its slot.
    async fn sharded_feed(
        cluster: &topology::ClusterTarget,
        channels: &[String],
        timeout: Duration,
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

    pub(crate) async fn get_cursor(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Option<CursorPosition>> {
        let key = self.inner.keys.cursors(topic);
        let raw: Option<String> = self
            .retry("read cursor", topic, |mut conn| {
                let key = key.clone();
                let name = name.to_string();
                Box::pin(async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(name)
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => CursorPosition::decode(&raw)
                .map(Some)
                .ok_or_else(|| Error::Corrupt {
                    topic: topic.to_string(),
                    detail: format!("cursor {name:?} holds {raw:?}, not <epoch>:<offset>:<ms>"),
                }),
        }
    }

    pub(crate) async fn commit(&self, topic: &str, name: &str, pos: CursorPosition) -> Result<()> {
        let key = self.inner.keys.cursors(topic);
        let value = pos.encode();
        self.retry("commit", topic, |mut conn| {
            let (key, name, value) = (key.clone(), name.to_string(), value.clone());
            Box::pin(async move {
                redis::cmd("HSET")
                    .arg(key)
                    .arg(name)
                    .arg(value)
                    .query_async::<()>(&mut conn)
                    .await
            })
        })
        .await
    }

    async fn stored_settings(&self, topic: &str) -> Result<Option<TopicSettings>> {
        let key = self.inner.keys.settings(topic);
        let raw: Vec<Option<u64>> = self
            .retry("read settings", topic, |mut conn| {
                let key = key.clone();
                Box::pin(async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&["max_len", "max_age_ms", "dedup_ms", "max_size"])
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        if raw.iter().all(Option::is_none) {
            return Ok(None);
        }
        let d = self.inner.opts.defaults;
        let get = |i: usize, default: u64| raw.get(i).copied().flatten().unwrap_or(default);
        Ok(Some(TopicSettings {
            max_len: get(0, d.max_len),
            max_age_ms: get(1, d.max_age_ms),
            dedup_window_ms: get(2, d.dedup_window_ms),
            max_size: get(3, d.max_size),
        }))
    }

    pub(crate) async fn configure(
        &self,
        topic: &str,
        change: &SettingsChange,
    ) -> Result<TopicSettings> {
        // Each field is checked on its own (the ranges do not depend on each other), then
        // written without a read-modify-write, so concurrent changes of different fields both
        // land. A topic never configured first takes the defaults for the other fields.
        change.apply(self.inner.opts.defaults).validate()?;
        let d = self.inner.opts.defaults;
        let key = self.inner.keys.settings(topic);
        let fields = [
            ("max_len", change.max_len, d.max_len),
            ("max_age_ms", change.max_age_ms, d.max_age_ms),
            ("dedup_ms", change.dedup_window_ms, d.dedup_window_ms),
            ("max_size", change.max_size, d.max_size),
        ];
        // One script call, not a MULTI/EXEC: a single keyed command is redirected like any
        // other when the key's slot moved in a cluster, a transaction is not.
        static CONFIGURE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                "for i = 1, #ARGV, 3 do \
                   redis.call(ARGV[i + 2] == 'set' and 'HSET' or 'HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) \
                 end return 1",
            )
        });
        self.retry("configure", topic, |mut conn| {
            let mut inv = CONFIGURE.prepare_invoke();
            inv.key(&key);
            for (name, new, default) in fields {
                match new {
                    Some(v) => inv.arg(name).arg(v).arg("set"),
                    None => inv.arg(name).arg(default).arg("default"),
                };
            }
            Box::pin(async move { inv.invoke_async::<()>(&mut conn).await })
        })
        .await?;
        Ok(self
            .stored_settings(topic)
            .await?
            .unwrap_or(self.inner.opts.defaults))
    }

    pub(crate) async fn inspect(&self, topic: &str) -> Result<TopicInfo> {
        let state = self.read(topic, 1, 0).await?;
        let settings = self.stored_settings(topic).await?;
        let cursors_key = self.inner.keys.cursors(topic);
        let raw_cursors: Vec<(String, String)> = self
            .retry("inspect", topic, |mut conn| {
                let cursors_key = cursors_key.clone();
                Box::pin(async move {
                    redis::cmd("HGETALL")
                        .arg(cursors_key)
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        let cursors = raw_cursors.into_iter().filter_map(|(name, raw)| match CursorPosition::decode(&raw) {
            Some(p) => Some((name, p)),
            None => {
                tracing::warn!(topic, cursor = %name, value = %raw, "skipping a cursor Herald did not write");
                None
            }
        });
        let last = if state.epoch.is_some() { state.last } else { 0 };
        // Messages retained: from the first entry's offset to the last offset.
        let length = if state.first > 0 && last >= state.first {
            last - state.first + 1
        } else {
            0
        };
        Ok(TopicInfo {
            topic: topic.to_string(),
            epoch: state.epoch,
            first_offset: state.first,
            last_offset: last,
            length,
            settings: settings.unwrap_or(self.inner.opts.defaults),
            configured: settings.is_some(),
            cursors: cursor_infos(state.epoch, last, cursors),
        })
    }
}

/// The arguments of one call of the publish script (protocol 2, `docs/PROTOCOL.md` §6.1):
/// the pieces concatenated in groups of up to [`ENTRY_MESSAGES`], the messages that carry an
/// idempotency key of their own (with where their piece lies, so that the script can leave a
/// duplicate out), and the call key that covers every message without one.
struct PublishCall<'a> {
    count: usize,
    call_key: &'a str,
    /// (size, index) of the largest payload: the first of that size
    largest: (usize, usize),
    groups: Vec<Vec<u8>>,
    /// (index, key, start of the piece in its group, length of the piece)
    keyed: Vec<(usize, &'a str, usize, usize)>,
}

/// How many messages one stream entry holds at most.
const ENTRY_MESSAGES: usize = 1000;

impl<'a> PublishCall<'a> {
    /// Builds the call for `messages`, each with its resolved idempotency key: a key the
    /// caller gave (`Message::key`) is deduplicated on its own, generated keys are covered by
    /// the call key, the first of them.
    fn new(messages: &'a [(String, &'a Message)]) -> Self {
        let mut call = PublishCall {
            count: messages.len(),
            call_key: "",
            largest: (0, 0),
            groups: Vec::with_capacity(messages.len().div_ceil(ENTRY_MESSAGES)),
            keyed: Vec::new(),
        };
        for chunk in messages.chunks(ENTRY_MESSAGES) {
            let size = chunk
                .iter()
                .map(|(k, m)| k.len() + m.payload.len() + 32)
                .sum();
            call.groups.push(Vec::with_capacity(size));
        }
        for (i, (key, m)) in messages.iter().enumerate() {
            if m.payload.len() > call.largest.0 {
                call.largest = (m.payload.len(), i);
            }
            let Some(group) = call.groups.get_mut(i / ENTRY_MESSAGES) else {
                continue;
            };
            let start = group.len();
            envelope::put_piece(
                group,
                key,
                &envelope::encode_headers(&m.headers),
                &m.payload,
            );
            if m.key.is_some() {
                call.keyed.push((i, key, start, group.len() - start));
            } else if call.call_key.is_empty() {
                call.call_key = key;
            }
        }
        call
    }

    /// Appends ARGV[9..] to a script invocation.
    fn add_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(self.count)
            .arg(self.call_key)
            .arg(self.largest.0)
            .arg(self.largest.1);
        for g in &self.groups {
            inv.arg(g.as_slice());
        }
        for (index, key, start, len) in &self.keyed {
            inv.arg(index).arg(key).arg(start).arg(len);
        }
    }
}

/// Parses `{epoch, first}` (all `n` messages appended from `first` on) or
/// `{epoch, offset_1, dup_1, ...}`.
fn parse_publish_reply(topic: &str, reply: Value, n: usize) -> Result<(Epoch, Vec<Placed>)> {
    let bad = |what: &str| Error::Corrupt {
        topic: topic.to_string(),
        detail: format!("unexpected publish reply: {what}"),
    };
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let epoch = items.first().and_then(as_u64).ok_or_else(|| bad("epoch"))?;
    let placed = if items.len() == 2 {
        let first = as_u64(&items[1]).ok_or_else(|| bad("first offset"))?;
        (first..).take(n).map(|o| (o, false)).collect()
    } else if items.len() == 1 + 2 * n {
        items[1..]
            .chunks(2)
            .map(|pair| Some((as_u64(&pair[0])?, as_u64(&pair[1])? == 1)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("offsets"))?
    } else {
        return Err(bad("wrong length"));
    };
    Ok((epoch, placed))
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Parses the read transaction's replies: `HMGET meta epoch last`, the first entry, and when
/// entries were asked for, the entry at or before `from` and the entries from `from` on.
/// Returns the result and the average number of messages per entry read.
fn parse_read_reply(
    topic: &str,
    reply: Vec<Value>,
    from: u64,
    entries_wanted: usize,
) -> Result<(ReadResult, Option<f64>)> {
    let bad = |what: &str| Error::Corrupt {
        topic: topic.to_string(),
        detail: format!("unexpected read reply: {what}"),
    };
    let expected = if entries_wanted > 0 { 4 } else { 2 };
    if reply.len() != expected {
        return Err(bad("wrong length"));
    }
    let mut reply = reply.into_iter();
    let state = match reply.next() {
        Some(Value::Array(v)) if v.len() == 2 => v,
        _ => return Err(bad("meta")),
    };
    let epoch = match &state[0] {
        Value::Nil => None,
        v => Some(as_u64(v).ok_or_else(|| Error::Corrupt {
            topic: topic.to_string(),
            detail: "meta field \"epoch\" is not a number".into(),
        })?),
    };
    let last = match &state[1] {
        Value::Nil => 0,
        v => as_u64(v).ok_or_else(|| Error::Corrupt {
            topic: topic.to_string(),
            detail: "meta field \"last\" is not a number".into(),
        })?,
    };
    let first = match reply.next() {
        Some(Value::Array(head)) => head.first().and_then(entry_offset).unwrap_or(0),
        _ => return Err(bad("head")),
    };
    let mut raw_entries = Vec::new();
    let mut at_end = true;
    if entries_wanted > 0 {
        // The entry holding `from` starts before it when `from` is inside a batch.
        if let Some(Value::Array(mut at)) = reply.next() {
            if let Some(e) = at.pop() {
                if entry_offset(&e).is_some_and(|o| o < from) {
                    raw_entries.push(e);
                }
            }
        }
        match reply.next() {
            Some(Value::Array(rest)) => {
                at_end = rest.len() < entries_wanted;
                raw_entries.extend(rest);
            }
            _ => return Err(bad("entries")),
        }
    }
    let entry_count = raw_entries.len();
    let mut slots = Vec::new();
    for raw in raw_entries {
        decode_entry(topic, raw, last, &mut slots);
    }
    let avg = (entry_count > 0).then(|| slots.len().max(1) as f64 / entry_count as f64);
    slots.retain(|s| s.offset() >= from);
    Ok((
        ReadResult {
            epoch,
            last,
            first,
            slots,
            complete: at_end,
        },
        avg,
    ))
}

/// The offset in an entry's ID (`<offset>-0`), if it has that form.
fn entry_offset(entry: &Value) -> Option<u64> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = std::str::from_utf8(as_bytes(parts.first()?)?).ok()?;
    id.strip_suffix("-0")?.parse().ok()
}

/// Decodes one XRANGE entry (`<first offset>-0`, fields `n <node> t <ms> m <pieces>`) into
/// `out`. Entries that do not sit at a Herald offset, or lack Herald's fields, are skipped with
/// a warning (their offsets then show up as a gap); a message that cannot be decoded becomes
/// `Slot::Corrupt`.
fn decode_entry(topic: &str, raw: Value, last: u64, out: &mut Vec<Slot>) {
    let Value::Array(mut parts) = raw else {
        tracing::warn!(topic, "skipping a history entry that is not an array");
        return;
    };
    let mut fields = match parts.pop() {
        Some(Value::Array(f)) => f,
        _ => Vec::new(),
    };
    let id = parts
        .first()
        .and_then(as_bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("");
    let first = match id.strip_suffix("-0").and_then(|o| o.parse::<u64>().ok()) {
        Some(o) if o >= 1 && o <= last => o,
        _ => {
            tracing::warn!(topic, id, "skipping a history entry Herald did not write");
            return;
        }
    };
    let field = |i: usize| fields.get(i).and_then(as_bytes);
    let node = field(1)
        .filter(|_| field(0) == Some(b"n"))
        .and_then(|b| std::str::from_utf8(b).ok());
    let time = field(3)
        .filter(|_| field(2) == Some(b"t"))
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse::<u64>().ok());
    let has_blob = field(4) == Some(b"m") && fields.len() == 6;
    let (Some(node), Some(published_at_ms), true) = (node.map(str::to_string), time, has_blob)
    else {
        tracing::warn!(
            topic,
            id,
            "skipping a history entry without Herald's fields"
        );
        return;
    };
    let blob = match fields.pop() {
        Some(Value::BulkString(b)) => Bytes::from(b),
        _ => Bytes::new(),
    };
    for (i, piece) in envelope::decode_pieces(blob).into_iter().enumerate() {
        let offset = first + i as u64;
        if offset > last {
            tracing::warn!(
                topic,
                id,
                "history entry holds messages past the last offset"
            );
            return;
        }
        out.push(match piece {
            Ok((key, headers, payload)) => Slot::Entry(Entry {
                offset,
                key,
                node: node.clone(),
                published_at_ms,
                headers,
                payload,
            }),
            Err(reason) => {
                tracing::warn!(topic, offset, %reason, "history entry cannot be decoded");
                Slot::Corrupt { offset, reason }
            }
        });
    }
}

/// A live feed over a dedicated Pub/Sub connection.
pub(crate) struct RedisFeed {
    feed: Feed,
    keys: KeySpace,
    /// Headers of split notifications whose pieces are still to come, per channel.
    split: HashMap<String, FrameHeader>,
}

enum Feed {
    /// SUBSCRIBE on one server (or the primary Sentinel named).
    PubSub {
        _sink: PubSubSink,
        stream: PubSubStream,
    },
    /// SSUBSCRIBE over a cluster connection of its own.
    Sharded {
        _conn: redis::cluster_async::ClusterConnection,
        rx: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    },
}

impl RedisFeed {
    /// The next notification; `None` when the feed ended (connection lost, or a shard stopped
    /// serving a channel), after which the subscription catches up from history and opens a
    /// new feed.
    pub(crate) async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            let (channel, payload) = match &mut self.feed {
                Feed::PubSub { stream, .. } => {
                    let msg = stream.next().await?;
                    let channel = msg.get_channel_name().to_string();
                    (channel, Bytes::copy_from_slice(msg.get_payload_bytes()))
                }
                Feed::Sharded { rx, .. } => loop {
                    let push = rx.recv().await?;
                    match push.kind {
                        redis::PushKind::SMessage => {
                            let mut data = push.data.into_iter();
                            let (Some(channel), Some(Value::BulkString(payload))) =
                                (data.next(), data.next())
                            else {
                                return Some(LiveEvent::Lost);
                            };
                            let channel = as_bytes(&channel)
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default();
                            break (channel, Bytes::from(payload));
                        }
                        // The server stopped serving a channel here (its slot moved, or this node
                        // became a replica), or a connection dropped: end the feed.
                        redis::PushKind::SUnsubscribe | redis::PushKind::Disconnection => {
                            tracing::info!(kind = ?push.kind, "sharded live feed interrupted");
                            return None;
                        }
                        _ => continue,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let k = KeySpace::new("herald");
        assert_eq!(k.meta("a/b"), "herald:{a/b}:meta");
        assert_eq!(k.dedup("t"), "herald:{t}:dedup");
        assert_eq!(k.dedup_old("t"), "herald:{t}:dedup-old");
        assert_eq!(k.topic_of_channel("herald:{a:b}:live"), Some("a:b"));
        assert_eq!(k.topic_of_channel("other:{a}:live"), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
