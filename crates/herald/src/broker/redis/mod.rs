//! The Redis broker: topics as Redis keys (layout in `docs/PROTOCOL.md`), publish and read
//! as Lua scripts or transactions so each is one atomic step, live notifications over
//! Pub/Sub.
//!
//! This file holds the broker itself: connecting (with retries until `connect_deadline`),
//! its command connection, following a Sentinel failover, and [`RedisBroker::retry`], which
//! every command goes through. The rest, one concern per file:
//!
//! - [`topology`]: the URL forms (one server, Sentinel, Cluster) and the command connection;
//! - [`keys`]: the names of a topic's keys;
//! - [`classify`]: transient or permanent, and which `Error` a Redis error becomes;
//! - [`publish`]: the publish script's arguments and reply;
//! - [`read`]: the atomic history read and the decoding of stream entries;
//! - [`feed`]: live feeds (Pub/Sub, sharded Pub/Sub with a cluster);
//! - [`cursors`], [`settings`], [`members`]: durable cursors, topic settings and `inspect`,
//!   membership records;
//! - `tls`: the roots to trust and rustls's crypto provider (feature `tls`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{RedisError, Script};

mod classify;
mod cursors;
#[cfg(feature = "sentinel")]
mod failover;
mod feed;
mod fenced;
mod heads;
mod keys;
pub(crate) mod map;
pub(crate) mod members;
mod publish;
mod read;
mod ready;
mod settings;
#[cfg(feature = "tls")]
mod tls;
mod topology;
pub(crate) mod work;

pub(crate) use feed::RedisFeed;
pub(crate) use keys::KeySpace;
pub(crate) use publish::PUBLISH_SCRIPT;
pub(crate) use read::{lost_script, READ_SCRIPT};
pub(crate) use topology::redact;

use classify::{classify, is_transient};
use topology::{Conn, Target};

use crate::error::{Error, Result};
use crate::retry::{self, Backoff, GaveUp};
use crate::topic::TopicSettings;

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

/// How `connect` paces its attempts.
const CONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
/// How a command paces its attempts after transient failures.
const COMMAND_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// The Redis broker. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the data lives (one server, Sentinel, Cluster).
    #[cfg_attr(not(any(feature = "sentinel", feature = "cluster")), allow(dead_code))]
    topology: Target,
    /// The server, or the primary Sentinel named last: Pub/Sub connections go there.
    client: std::sync::RwLock<redis::Client>,
    /// The command connection; replaced when Sentinel names a new primary.
    conn: std::sync::RwLock<Conn>,
    /// With Sentinel, the primary's address in use; held while following a failover.
    #[cfg(feature = "sentinel")]
    primary: tokio::sync::Mutex<Option<(String, u16)>>,
    #[cfg(feature = "sentinel")]
    manager_config: ConnectionManagerConfig,
    /// With Sentinel: closed while the sentinels replace the primary (see [`failover`]).
    #[cfg(feature = "sentinel")]
    fence: failover::Fence,
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

/// What [`RedisBroker::open`] sets up: the command connection, the client for Pub/Sub
/// connections, and with Sentinel the primary's address.
type Opened = (Conn, redis::Client, Option<((String, u16), u64)>);

impl RedisBroker {
    /// Connects, retrying with backoff until `connect_deadline`.
    pub(crate) async fn connect(opts: RedisOptions) -> Result<Self> {
        let target = redact(&opts.url);
        let topology = topology::parse(&opts.url, opts.tls_ca.as_deref()).map_err(|reason| {
            Error::InvalidUrl {
                url: target.clone(),
                reason,
            }
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
        let opened = retry::while_transient(
            "connect",
            opts.connect_deadline,
            CONNECT_BACKOFF,
            is_transient,
            |e: &RedisError| {
                tracing::warn!(target = %target, error = %e, "Redis unreachable, retrying");
                std::future::ready(())
            },
            // Each attempt is bounded by what is left of the deadline, so that a server that
            // accepts connections but never answers cannot hold `connect` past it.
            |left| {
                let open = Self::open(&topology, &config, opts.response_timeout, response_timeout);
                async move {
                    tokio::time::timeout(left, open)
                        .await
                        .unwrap_or_else(|_| Err(timed_out("no answer from Redis")))
                }
            },
        )
        .await;
        let (conn, client, _primary) = match opened {
            Ok(opened) => opened,
            Err(GaveUp::Permanent(e)) => {
                return Err(Error::Refused {
                    operation: "connect",
                    source: e.into(),
                })
            }
            Err(GaveUp::Deadline { last, waited }) => {
                return Err(Error::Unreachable {
                    target,
                    waited,
                    reason: last.to_string(),
                })
            }
        };
        let notify = match topology {
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => "SPUBLISH",
            _ => "PUBLISH",
        };
        let broker = RedisBroker {
            inner: Arc::new(Inner {
                topology,
                client: std::sync::RwLock::new(client),
                conn: std::sync::RwLock::new(conn),
                #[cfg(feature = "sentinel")]
                primary: tokio::sync::Mutex::new(_primary.as_ref().map(|(a, _)| a.clone())),
                #[cfg(feature = "sentinel")]
                manager_config: config,
                #[cfg(feature = "sentinel")]
                fence: failover::Fence::at_epoch(_primary.map_or(0, |(_, e)| e)),
                notify,
                keys: KeySpace::new(&opts.namespace),
                publish: publish::script(),
                opts,
                target,
                entry_sizes: Default::default(),
            }),
        };
        #[cfg(feature = "sentinel")]
        if let Target::Sentinel(s) = &broker.inner.topology {
            failover::spawn(&broker, s);
        }
        Ok(broker)
    }

    /// Opens the command connection: to the server, to the primary Sentinel names (also
    /// returned), or to the cluster. Also returns the client for Pub/Sub connections.
    #[cfg_attr(
        not(all(feature = "sentinel", feature = "cluster")),
        allow(unused_variables)
    )]
    async fn open(
        topology: &Target,
        config: &ConnectionManagerConfig,
        timeout: Duration,
        command_timeout: Duration,
    ) -> redis::RedisResult<Opened> {
        match topology {
            Target::Single(client) => {
                let m = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok((Conn::Single(m), client.clone(), None))
            }
            #[cfg(feature = "sentinel")]
            Target::Sentinel(s) => {
                let ((host, port), epoch) = s.primary(timeout).await?;
                let client = s.data_client(&host, port)?;
                let m = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok((Conn::Single(m), client, Some(((host, port), epoch))))
            }
            #[cfg(feature = "cluster")]
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

    /// The client for Pub/Sub connections: the server, or the primary Sentinel named last.
    fn pubsub_client(&self) -> redis::Client {
        self.inner
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// With a cluster: its seed nodes.
    #[cfg(feature = "cluster")]
    fn cluster(&self) -> Option<&topology::ClusterTarget> {
        match &self.inner.topology {
            Target::Cluster(c) => Some(c),
            _ => None,
        }
    }

    #[cfg(feature = "cluster")]
    fn is_cluster(&self) -> bool {
        self.cluster().is_some()
    }

    /// With Sentinel: asks the sentinels for the primary and, when it moved, connects to the
    /// new one (`failover::follow_sentinel`). Called after transient errors and before each
    /// Pub/Sub connection; the sentinels' announcements are followed as they come as well.
    async fn follow_primary(&self) {
        #[cfg(feature = "sentinel")]
        if let Target::Sentinel(s) = &self.inner.topology {
            self.follow_sentinel(s).await;
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the operation deadline passes;
    /// after each transient failure, follows a Sentinel failover.
    async fn retry<'a, T>(
        &'a self,
        operation: &'static str,
        topic: &str,
        mut attempt: impl FnMut(Conn) -> BoxFuture<'a, redis::RedisResult<T>>,
    ) -> Result<T> {
        let outcome = retry::while_transient(
            operation,
            self.inner.opts.operation_deadline,
            COMMAND_BACKOFF,
            is_transient,
            |_| self.follow_primary(),
            |_| attempt(self.conn()),
        )
        .await;
        match outcome {
            Ok(v) => Ok(v),
            Err(GaveUp::Deadline { last, waited }) => Err(Error::Timeout {
                operation,
                waited,
                reason: last.to_string(),
            }),
            Err(GaveUp::Permanent(e)) => {
                let mut err = classify(&self.inner.keys, operation, topic, e);
                if let Error::WrongType { key, .. } = &mut err {
                    if let Some(foreign) = self.foreign_key(topic).await {
                        *key = foreign;
                    }
                }
                Err(err)
            }
        }
    }
}

/// An I/O timeout, which [`is_transient`] retries.
fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_string(),
    ))
}
