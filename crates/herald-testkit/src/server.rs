//! A `redis-server` process owned by its caller, on a free port of 127.0.0.1.
//!
//! Each server works in a fresh directory under the system's temporary directory (data
//! files and `redis.log`), can be killed with SIGKILL and restarted on the same port and
//! directory, and is killed (and its directory removed) when dropped. [`Options`] chooses the
//! program, the persistence, extra arguments, the port and whether the server runs in its
//! own process group (so that a Ctrl-C typed at a terminal reaches the caller only, which
//! then drops the server).
//!
//! The `try_*` functions return an [`Error`]; the others, for tests, panic.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;

/// How long a server may take to answer its first PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// What a server keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// Nothing (`--save "" --appendonly no`): a restart loses every key.
    #[default]
    None,
    /// AOF with `appendfsync always`: an acknowledged write survives kill -9.
    Aof,
}

/// How to start a [`RedisServer`].
#[derive(Debug, Clone)]
pub struct Options {
    binary: PathBuf,
    persistence: Persistence,
    args: Vec<String>,
    port: Option<u16>,
    own_process_group: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            binary: PathBuf::from("redis-server"),
            persistence: Persistence::None,
            args: Vec::new(),
            port: None,
            own_process_group: false,
        }
    }
}

impl Options {
    /// `redis-server` from `PATH`, no persistence, a free port, the caller's process group.
    pub fn new() -> Self {
        Self::default()
    }

    /// The program to run instead of `redis-server`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// What the server keeps on disk.
    pub fn persistence(mut self, persistence: Persistence) -> Self {
        self.persistence = persistence;
        self
    }

    /// Extra `redis-server` arguments (after the kit's own, so they win).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// This port (which must be free) instead of a free one picked by the kit.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs the server in its own process group: a Ctrl-C at the terminal does not reach it,
    /// and the caller stops it by dropping it.
    pub fn own_process_group(mut self, yes: bool) -> Self {
        self.own_process_group = yes;
        self
    }
}

/// A running `redis-server`, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    options: Options,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server as `options` say and waits until it answers PING. Without a chosen
    /// port, tries up to 5 free ports (another process may take one first).
    pub fn try_start(options: &Options) -> Result<Self, Error> {
        let mut server = RedisServer {
            port: 0,
            dir: fresh_dir()?,
            options: options.clone(),
            child: None,
        };
        let attempts = if options.port.is_some() { 1 } else { 5 };
        let mut last = None;
        for _ in 0..attempts {
            server.port = match options.port {
                Some(port) => port,
                None => try_free_port()?,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("redis-server was not started")))
    }

    /// A server without persistence (panics if it cannot start).
    pub fn start() -> Self {
        Self::start_options(&Options::new())
    }

    /// A server with AOF persistence and `appendfsync always`: an acknowledged write survives
    /// kill -9.
    pub fn start_persistent() -> Self {
        Self::start_options(&Options::new().persistence(Persistence::Aof))
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_options(&Options::new().args(extra))
    }

    /// A server on the given port (which must be free), with extra arguments.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        Self::start_options(&Options::new().port(port).args(extra))
    }

    /// [`RedisServer::try_start`], panicking with the reason.
    #[track_caller]
    pub fn start_options(options: &Options) -> Self {
        Self::try_start(options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (data files and its log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last 3 lines of the log on one line, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "(nothing)".into()
        } else {
            tail
        }
    }

    /// Starts the process and waits (bounded) until it answers PING.
    fn spawn(&mut self) -> Result<(), Error> {
        let mut cmd = Command::new(&self.options.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if self.options.persistence == Persistence::Aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        cmd.arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.options.own_process_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|e| {
            Error::new(format!(
                "cannot start {}: {e}; install Redis (e.g. `apt-get install redis-server`)",
                self.options.binary.display()
            ))
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(Error::new(format!(
                    "redis-server exited at start on port {} ({status}); its log says: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(Error::new(format!(
                    "redis-server did not answer PING on port {} within {READY_DEADLINE:?}; \
                     its log says: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no shutdown, no final save.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, with the same directory and options,
    /// retrying for about 5 s while the port is still held.
    pub fn try_restart(&mut self) -> Result<(), Error> {
        self.kill9();
        let mut last = Error::new("not restarted");
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// [`RedisServer::try_restart`], panicking with the reason.
    #[track_caller]
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// A synchronous connection for test setup and fault injection (panics on failure).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }

    /// Runs one command and returns its reply (panics on failure).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let Some((name, rest)) = args.split_first() else {
            panic!("RedisServer::cmd needs a command");
        };
        let mut c = redis::cmd(name);
        for a in rest {
            c.arg(*a);
        }
        c.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// One field of `INFO section` (e.g. `("replication", "role")`); empty when absent.
    pub fn info_field(&self, section: &str, field: &str) -> String {
        info_field(&self.cmd::<String>(&["INFO", section]), field)
    }
}

/// One field of an `INFO` reply (`field:value` lines); empty when absent.
pub fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Sends a signal (`"-STOP"`, `"-CONT"`, `"-9"`) to a process, e.g. a server's
/// `process_id` from `INFO server`; panics when `kill` fails.
pub fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether something on `port` of 127.0.0.1 answers PING within about a second.
pub(crate) fn ping(port: u16) -> bool {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)));
    let Ok(mut conn) = conn else {
        return false;
    };
    if conn.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return false;
    }
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// A fresh, empty directory under the system's temporary directory.
fn fresh_dir() -> Result<PathBuf, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "herald-redis-{}-{stamp:x}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// A port of 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn try_free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// [`try_free_port`], panicking if there is none.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// A free port of 127.0.0.1 whose Redis Cluster bus port (port + 10000) is free too.
pub fn try_cluster_port() -> Result<u16, Error> {
    for _ in 0..200 {
        let port = try_free_port()?;
        if port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::new(
        "cannot find a free pair of ports (port and port + 10000) on 127.0.0.1 for a cluster node",
    ))
}

/// [`try_cluster_port`], panicking if there is none.
pub fn cluster_port() -> u16 {
    try_cluster_port().unwrap_or_else(|e| panic!("{e}"))
}
