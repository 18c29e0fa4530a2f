//! A Redis Sentinel (`redis-server --sentinel`) on a free port of 127.0.0.1, with test-speed
//! timings (down after 1 s, failover timeout 6 s), killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::free_port;

/// A sentinel process with its own directory and config file (Sentinel rewrites it).
#[derive(Debug)]
pub struct Sentinel {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    master: String,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    /// Starts a sentinel monitoring the primary on `primary_port` of 127.0.0.1 under the name
    /// `master` (quorum 2) and waits until it names that primary; tries up to 5 free ports,
    /// then panics.
    pub fn start(primary_port: u16, master: &str) -> Sentinel {
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("herald-sentinel-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 6000\n\
                     sentinel parallel-syncs {master} 2\n",
                    dir = dir.display()
                ),
            )
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run redis-server --sentinel: {e}"));
            let mut s = Sentinel {
                port,
                master: master.to_string(),
                dir,
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break; // port taken: try another
                }
                if s.primary().is_some() {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "sentinel did not start on {port}: {}",
                std::fs::read_to_string(s.dir.join("sentinel.log")).unwrap_or_default()
            );
        }
        panic!("no sentinel could be started");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The primary's port this sentinel names, if it answers.
    pub fn primary(&self) -> Option<u16> {
        let addr: Option<(String, u16)> = self
            .cmd(&["SENTINEL", "get-master-addr-by-name", &self.master])
            .ok()?;
        addr.map(|a| a.1)
    }

    /// Runs one command on the sentinel (connect and reads bounded to 2 s).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
