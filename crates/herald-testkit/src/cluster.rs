//! Redis Cluster: a cluster of primaries built by the kit ([`RedisCluster`]), or any nodes
//! joined by `redis-cli --cluster create` ([`create_cluster`], for clusters with replicas or
//! TLS).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{try_cluster_port, Options, RedisServer};
use crate::Error;

/// How long a cluster may take to report `cluster_state:ok` on every node.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// A Redis Cluster of primaries only, each a [`RedisServer`] (own port, own directory);
/// every node is killed and its directory removed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` nodes as `options` say (plus `--cluster-enabled yes`; the port is
    /// the kit's), gives each an equal share of the slots (CLUSTER ADDSLOTS), joins them
    /// (CLUSTER MEET) and waits until every node reports `cluster_state:ok`.
    pub fn try_start(options: &Options, primaries: usize) -> Result<Self, Error> {
        let options = options.clone().args(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]);
        let mut cluster = RedisCluster { nodes: Vec::new() };
        for _ in 0..primaries.max(1) {
            let port = try_cluster_port()?;
            let node = RedisServer::try_start(&options.clone().port(port))?;
            cluster.nodes.push(node);
        }
        let mut conns = Vec::new();
        for node in &cluster.nodes {
            conns.push(connection(node.port)?);
        }
        let count = conns.len();
        for (i, conn) in conns.iter_mut().enumerate() {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("ADDSLOTS");
            for slot in (SLOTS * i / count)..(SLOTS * (i + 1) / count) {
                cmd.arg(slot);
            }
            cmd.query::<()>(conn)
                .map_err(|e| Error::new(format!("CLUSTER ADDSLOTS: {e}")))?;
        }
        if let Some(first) = conns.first_mut() {
            for node in cluster.nodes.iter().skip(1) {
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(node.port)
                    .query::<()>(first)
                    .map_err(|e| Error::new(format!("CLUSTER MEET: {e}")))?;
            }
        }
        wait_ok(&mut conns)?;
        Ok(cluster)
    }

    /// [`RedisCluster::try_start`] with the kit's defaults, panicking with the reason.
    #[track_caller]
    pub fn start(primaries: usize) -> Self {
        Self::try_start(&Options::new(), primaries).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, to kill, stop or restart it.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut RedisServer> {
        self.nodes.get_mut(i)
    }

    /// `127.0.0.1:PORT` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Herald's URL of the cluster: `redis+cluster://127.0.0.1:PORT,...`.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addrs().join(","))
    }

    /// `redis://127.0.0.1:PORT` of every node, for redis-rs cluster clients.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A synchronous connection to the node on `port`, with bounded connect and reads.
fn connection(port: u16) -> Result<redis::Connection, Error> {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .map_err(|e| Error::new(format!("connect to the cluster node on port {port}: {e}")))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| Error::new(format!("set a read timeout: {e}")))?;
    Ok(conn)
}

/// Polls CLUSTER INFO on every node until all report `cluster_state:ok`.
fn wait_ok(conns: &mut [redis::Connection]) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let mut ok = 0;
        for conn in conns.iter_mut() {
            let info = redis::cmd("CLUSTER").arg("INFO").query::<String>(conn);
            if info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                ok += 1;
            }
        }
        if ok == conns.len() {
            return Ok(());
        }
        if started.elapsed() > CLUSTER_DEADLINE {
            return Err(Error::new(format!(
                "the cluster did not reach cluster_state:ok within {CLUSTER_DEADLINE:?} \
                 ({ok} of {} nodes ok)",
                conns.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-cli [cli_args] --cluster create` over `addrs` (`host:port`) with `replicas` per
/// primary; panics with redis-cli's output when it fails.
pub fn create_cluster(addrs: &[String], replicas: u32, cli_args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(cli_args)
        .args(["--cluster", "create"])
        .args(addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
