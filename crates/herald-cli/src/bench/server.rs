//! A private `redis-server` for one benchmark run.
//!
//! It listens on a free port of 127.0.0.1 only, keeps nothing on disk (`--save ""
//! --appendonly no`), works in a fresh directory under the system's temporary directory, and
//! runs in its own process group so that a Ctrl-C typed at the terminal reaches the benchmark
//! (which then stops cleanly) rather than the server. Dropping the [`RedisServer`] kills the
//! process and removes the directory: at the end of the run, on an error, or on Ctrl-C.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::BenchError;

/// How long the server may take to answer its first PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A running private `redis-server`, killed when dropped.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl RedisServer {
    /// Starts `binary` on a free loopback port and waits until it answers PING.
    pub(crate) async fn start(binary: &Path) -> Result<Self, BenchError> {
        let port = free_port()?;
        Self::start_on(binary, port, &[]).await
    }

    /// Starts `binary` on `port` of 127.0.0.1 with `extra` arguments and waits until it
    /// answers PING.
    async fn start_on(binary: &Path, port: u16, extra: &[&str]) -> Result<Self, BenchError> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("herald-bench-{}-{stamp:x}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            BenchError::Server(format!(
                "cannot create the directory {}: {e}",
                dir.display()
            ))
        })?;
        let spawned = Command::new(binary)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(BenchError::Server(format!(
                    "cannot start {}: {e}; install Redis (e.g. `apt-get install redis-server`), \
                     pass --redis-server PATH, or use an existing Redis with --redis URL",
                    binary.display()
                )));
            }
        };
        let mut server = RedisServer { child, dir, port };
        server.wait_ready().await?;
        Ok(server)
    }

    /// The URL to connect to.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Polls with PING until the server answers, it exits, or the deadline passes.
    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let started = Instant::now();
        let client = redis::Client::open(self.url()).map_err(|e| BenchError::Redis {
            context: "open the private server's URL".into(),
            source: e,
        })?;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Server(format!(
                    "redis-server exited at start ({status}); its log says: {}",
                    self.log_tail()
                )));
            }
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), ping).await {
                return Ok(());
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(BenchError::Server(format!(
                    "redis-server did not answer PING on port {} within {READY_DEADLINE:?}; \
                     its log says: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.dir.join("redis.log")) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().rev().take(3).collect();
                let tail: Vec<&str> = lines.into_iter().rev().collect();
                if tail.is_empty() {
                    "(nothing)".into()
                } else {
                    tail.join(" | ")
                }
            }
            Err(e) => format!("(no log: {e})"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a private cluster may take to report `cluster_state:ok` on every node.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A private Redis Cluster of primaries only, each a [`RedisServer`] (own port, own
/// directory, own process group); every node is killed and its directory removed when
/// dropped.
#[derive(Debug)]
pub(crate) struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` nodes with `--cluster-enabled yes`, gives each an equal share of
    /// the slots (CLUSTER ADDSLOTS), joins them (CLUSTER MEET) and waits until every node
    /// reports `cluster_state:ok`.
    pub(crate) async fn start(binary: &Path, primaries: usize) -> Result<Self, BenchError> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let mut cluster = RedisCluster { nodes: Vec::new() };
        for _ in 0..primaries {
            let port = cluster_port()?;
            cluster
                .nodes
                .push(RedisServer::start_on(binary, port, &args).await?);
        }
        let count = cluster.nodes.len().max(1);
        let mut conns = Vec::new();
        for node in &cluster.nodes {
            conns.push(node_connection(node.port).await?);
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            let from = (usize::from(SLOTS) * i / count) as u16;
            let to = (usize::from(SLOTS) * (i + 1) / count) as u16;
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("ADDSLOTS");
            for slot in from..to {
                cmd.arg(slot);
            }
            cmd.query_async::<()>(conn)
                .await
                .map_err(|e| BenchError::redis("CLUSTER ADDSLOTS", e))?;
        }
        if let Some(first) = conns.first_mut() {
            for node in cluster.nodes.iter().skip(1) {
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(node.port)
                    .query_async::<()>(first)
                    .await
                    .map_err(|e| BenchError::redis("CLUSTER MEET", e))?;
            }
        }
        cluster.wait_ok(&mut conns).await?;
        Ok(cluster)
    }

    /// Polls CLUSTER INFO on every node until all report `cluster_state:ok`.
    async fn wait_ok(
        &self,
        conns: &mut [redis::aio::MultiplexedConnection],
    ) -> Result<(), BenchError> {
        let started = Instant::now();
        loop {
            let mut ok = 0;
            for conn in conns.iter_mut() {
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("INFO");
                let info = cmd.query_async::<String>(conn);
                if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(1), info).await {
                    if info.contains("cluster_state:ok") {
                        ok += 1;
                    }
                }
            }
            if ok == conns.len() {
                return Ok(());
            }
            if started.elapsed() > CLUSTER_DEADLINE {
                return Err(BenchError::Server(format!(
                    "the private cluster did not reach cluster_state:ok within \
                     {CLUSTER_DEADLINE:?} ({ok} of {} nodes ok)",
                    conns.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:port` of every node.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Herald's URL of the cluster.
    pub(crate) fn url(&self) -> String {
        format!("redis+cluster://{}", self.addrs().join(","))
    }

    /// `redis://127.0.0.1:port` of every node, for redis-rs cluster clients.
    pub(crate) fn node_urls(&self) -> Vec<String> {
        self.addrs()
            .into_iter()
            .map(|a| format!("redis://{a}"))
            .collect()
    }

    /// Deletes every key on every node (FLUSHALL).
    pub(crate) async fn flush(&self) -> Result<(), BenchError> {
        for node in &self.nodes {
            let mut conn = node_connection(node.port).await?;
            redis::cmd("FLUSHALL")
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| BenchError::redis("FLUSHALL on a cluster node", e))?;
        }
        Ok(())
    }
}

/// A bounded connection to the node on `port` of 127.0.0.1.
async fn node_connection(port: u16) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| BenchError::redis("open a cluster node's URL", e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| BenchError::redis("connect to a cluster node", e))
}

/// A free port of 127.0.0.1 whose cluster bus port (port + 10000) is free too.
fn cluster_port() -> Result<u16, BenchError> {
    for _ in 0..200 {
        let port = free_port()?;
        if port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(BenchError::Server(
        "cannot find a free pair of ports (port and port + 10000) on 127.0.0.1 for a \
         cluster node"
            .into(),
    ))
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Server(format!("cannot find a free port on 127.0.0.1: {e}")))
}
