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
        let port = match free_port() {
            Ok(port) => port,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let spawned = Command::new(binary)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
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

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Server(format!("cannot find a free port on 127.0.0.1: {e}")))
}
