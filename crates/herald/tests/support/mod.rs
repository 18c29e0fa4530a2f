//! Test support: real `redis-server` processes on free loopback ports, owned by the test.
//!
//! A [`RedisServer`] lives in its own temporary directory (data files and `redis.log`), can be
//! killed with SIGKILL and restarted on the same port and directory, and is killed on drop.
//! [`Backend`] runs the same behavioural test against the embedded broker or a real Redis.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

/// Runs each named `async fn(Backend)` as two tests: on the embedded broker (`embedded::`)
/// and on a real Redis started for the test (`redis::`). Use with `#[macro_use] mod support;`.
#[allow(unused_macros)] // only some test files run behavioural cases
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::embedded()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::redis()).await;
                }
            )*
        }
    };
}

pub mod checker;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::{EmbeddedBroker, Event, Herald, Subscription};

/// How long a test waits for one expected event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1 (the OS picks it; there is a small window before reuse).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A free port whose Redis Cluster bus port (+10000) is free too.
#[allow(dead_code)] // used by the cluster and TLS tests only
pub fn cluster_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 50_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// `redis-cli [cli_args] --cluster create` over `addrs` (`host:port`) with `replicas` per
/// primary; fails the test with redis-cli's output when it fails.
#[allow(dead_code)] // used by the cluster and TLS tests only
pub fn create_cluster(addrs: &[String], replicas: u32, cli_args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(cli_args)
        .args(["--cluster", "create"])
        .args(addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A redis-server process owned by a test.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with AOF persistence and `appendfsync always`: an acknowledged write survives
    /// kill -9.
    pub fn start_persistent() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        for attempt in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
            eprintln!(
                "redis-server did not start on port {} (attempt {attempt}); retrying",
                server.port
            );
        }
        panic!(
            "redis-server could not be started; see {}",
            server.log_path().display()
        );
    }

    /// A server on the given port (which must be free), with extra arguments; panics if it
    /// does not come up within 10 s.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        if !server.spawn() {
            panic!(
                "redis-server could not be started on port {port}; see {}",
                server.log_path().display()
            );
        }
        server
    }

    /// The server's log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the process and waits (bounded) until it answers PING.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
        ])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(self.dir.path())
        .arg("--logfile")
        .arg(self.log_path())
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                panic!("cannot run redis-server ({e}); install it (apt-get install redis-server)")
            }
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: port taken or bad config
            }
            if self.try_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    fn try_ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// SIGKILL, no shutdown, no final save.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, with the same data directory and arguments.
    pub fn restart(&mut self) {
        self.kill9();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// A synchronous connection for test setup and fault injection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A broker to run behavioural tests against.
pub enum Backend {
    Embedded(EmbeddedBroker),
    Redis(RedisServer),
}

impl Backend {
    pub fn embedded() -> Self {
        Backend::Embedded(EmbeddedBroker::new())
    }

    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    /// A node (a handle with its own connections) on this backend.
    pub async fn node(&self, id: &str) -> Herald {
        let b = Herald::builder()
            .node_id(id)
            .poll_interval(Duration::from_millis(200));
        let b = match self {
            Backend::Embedded(broker) => b.embedded(broker.clone()),
            Backend::Redis(server) => b.redis(server.url()),
        };
        b.connect().await.unwrap()
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
            Event::Message(d) => {
                out.push((d.offset, String::from_utf8_lossy(&d.payload).into_owned()))
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}
