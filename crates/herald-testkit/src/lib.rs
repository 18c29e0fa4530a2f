//! # herald-testkit: the Herald workspace's test kit (not published)
//!
//! Real `redis-server` processes on free loopback ports, owned by their caller and killed
//! when dropped: a standalone [`RedisServer`] (chosen persistence, kill -9 and restart on the
//! same port and directory), a [`RedisCluster`] of primaries or [`create_cluster`] over any
//! nodes, and a [`Sentinel`]. [`Backend`] and [`on_both_backends!`] run one behavioural test
//! against the embedded broker and against a real Redis; [`next_event`], [`maybe_event`],
//! [`messages`] and [`wait_until`] are the shared bounded waits.
//!
//! With the `test` feature: the fault-injecting TCP proxy ([`proxy`]) and the soak's
//! history checker ([`checker`]).
//!
//! The library's integration tests and the CLI's tests use it as a dev-dependency
//! (`use herald_testkit as support;`); `herald bench` uses the server starters to run its
//! private Redis, so everything outside the `test` feature stays light.

#[cfg(any(test, feature = "test"))]
pub mod checker;
pub mod cluster;
#[cfg(any(test, feature = "test"))]
pub mod proxy;
pub mod sentinel;
pub mod server;

use std::fmt;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{EmbeddedBroker, Event, Herald, Subscription};

pub use cluster::{create_cluster, RedisCluster};
pub use sentinel::Sentinel;
pub use server::{
    cluster_port, free_port, info_field, signal, try_cluster_port, try_free_port, Options,
    Persistence, RedisServer,
};

/// Runs each named `async fn(Backend)` as two tests: on the embedded broker (`embedded::`)
/// and on a real Redis started for the test (`redis::`).
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::Backend::embedded()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::Backend::redis()).await;
                }
            )*
        }
    };
}

/// Why the kit could not start or reach a server.
#[derive(Debug, Clone)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// How long a test waits for one expected event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);

/// Polls `ok` every 50 ms until it holds; panics with `what` after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker to run behavioural tests against.
#[derive(Debug)]
pub enum Backend {
    /// The in-process broker.
    Embedded(EmbeddedBroker),
    /// A real Redis started for the test.
    Redis(RedisServer),
}

impl Backend {
    /// A fresh embedded broker.
    pub fn embedded() -> Self {
        Backend::Embedded(EmbeddedBroker::new())
    }

    /// A fresh redis-server without persistence.
    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    /// A node (a handle with its own connections) on this backend.
    pub async fn node(&self, id: &str) -> Herald {
        self.builder(id)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect node {id}: {e}"))
    }

    /// The builder [`Backend::node`] connects, for a test that changes a setting first.
    pub fn builder(&self, id: &str) -> herald::HeraldBuilder {
        let b = Herald::builder()
            .node_id(id)
            .poll_interval(Duration::from_millis(200));
        match self {
            Backend::Embedded(broker) => b.embedded(broker.clone()),
            Backend::Redis(server) => b.redis(server.url()),
        }
    }

    /// Makes the next publish on `topic` come from "another server" that holds the whole log
    /// (a planned failover, a restart with persistence): the log continues under a new epoch.
    pub fn change_writer(&mut self, topic: &str) {
        match self {
            Backend::Embedded(broker) => broker.fail_over(topic, u64::MAX),
            Backend::Redis(server) => {
                let meta = format!("herald:{{{topic}}}:meta");
                let _: () = server.cmd(&["HSET", &meta, "writer", "another-server"]);
            }
        }
    }

    /// Loses every topic, as a Redis restart without persistence would.
    pub fn lose_everything(&mut self) {
        match self {
            Backend::Embedded(broker) => broker.clear(),
            Backend::Redis(server) => {
                let _: () = server.cmd(&["FLUSHALL"]);
            }
        }
    }
}

/// The next event, failing the test if none arrives within [`EVENT_WAIT`].
pub async fn next_event(sub: &mut Subscription) -> Event {
    match tokio::time::timeout(EVENT_WAIT, sub.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no event within {EVENT_WAIT:?}"),
    }
}

/// The next event, or `None` if nothing arrives within `wait`.
pub async fn maybe_event(sub: &mut Subscription, wait: Duration) -> Option<Event> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Some(Ok(e))) => Some(e),
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => None,
    }
}

/// The next `n` events, which must all be messages; returns (offset, payload) pairs.
pub async fn messages(sub: &mut Subscription, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match next_event(sub).await {
            Event::Message(d) => out.push((
                d.position.offset,
                String::from_utf8_lossy(&d.payload).into_owned(),
            )),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}
