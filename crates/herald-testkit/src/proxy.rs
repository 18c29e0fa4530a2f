//! A fault-injecting TCP proxy for tests, placed between Herald and Redis (loopback only).
//!
//! It listens on a free 127.0.0.1 port and forwards every connection to a target port. The
//! test controls it while traffic flows:
//! - [`FaultProxy::cut`]: closes every open connection (both sides see the socket close);
//! - [`FaultProxy::refuse`]: while on, new connections are accepted and closed at once;
//! - [`FaultProxy::delay`]: holds every chunk travelling in one direction for a while;
//! - [`FaultProxy::stall`]: stops forwarding in one direction (bytes wait, the TCP window
//!   fills), without closing anything;
//! - [`FaultProxy::pass`]: back to plain forwarding (no refusal, no delay, no stall).
//!
//! Dropping the proxy stops it and closes every connection.

// Test-only (feature `test`): it panics on its own setup (binding a loopback port).
#![allow(missing_docs, clippy::unwrap_used)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client (Herald) to server (Redis): commands.
    Up,
    /// Server to client: replies and Pub/Sub messages.
    Down,
}

/// How one direction forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// Forward at once.
    #[default]
    Pass,
    /// Hold each chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing until the flow changes.
    Stall,
}

/// The proxy's controls, shared with every connection task through a watch channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// Bumped by `cut`: connections opened under an older generation close.
    generation: u64,
    refuse: bool,
    /// Set by `retarget`: the port new connections go to instead of the first target.
    target: Option<u16>,
    up: Flow,
    down: Flow,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    open: AtomicU64,
}

/// A running proxy; see the module documentation.
pub struct FaultProxy {
    port: u16,
    control: watch::Sender<Control>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to 127.0.0.1:`target_port`.
    pub async fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let (control, rx) = watch::channel(Control::default());
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, target_port, rx, counters.clone()));
        FaultProxy {
            port,
            control,
            counters,
            task,
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Redis URL that goes through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every open connection; returns how many were open.
    pub fn cut(&self) -> u64 {
        let open = self.counters.open.load(Ordering::SeqCst);
        self.counters.cut.fetch_add(open, Ordering::SeqCst);
        self.control.send_modify(|c| c.generation += 1);
        open
    }

    /// While `on`, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.control.send_modify(|c| c.refuse = on);
    }

    /// Holds every chunk travelling in `dir` for `d` before forwarding it.
    pub fn delay(&self, dir: Direction, d: Duration) {
        self.set_flow(dir, Flow::Delay(d));
    }

    /// Stops forwarding in `dir` until [`pass`](Self::pass) or another flow is set.
    pub fn stall(&self, dir: Direction) {
        self.set_flow(dir, Flow::Stall);
    }

    /// Sets how `dir` forwards.
    pub fn set_flow(&self, dir: Direction, flow: Flow) {
        self.control.send_modify(|c| match dir {
            Direction::Up => c.up = flow,
            Direction::Down => c.down = flow,
        });
    }

    /// Sends new connections to 127.0.0.1:`port` from now on and closes every open one (a
    /// failover behind one address).
    pub fn retarget(&self, port: u16) -> u64 {
        let open = self.counters.open.load(Ordering::SeqCst);
        self.counters.cut.fetch_add(open, Ordering::SeqCst);
        self.control.send_modify(|c| {
            c.target = Some(port);
            c.generation += 1;
        });
        open
    }

    /// Plain forwarding again: no refusal, no delay, no stall (open connections stay open).
    pub fn pass(&self) {
        self.control.send_modify(|c| {
            c.refuse = false;
            c.up = Flow::Pass;
            c.down = Flow::Pass;
        });
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused (accepted and closed at once) so far.
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// Connections closed by [`cut`](Self::cut) so far.
    pub fn cut_count(&self) -> u64 {
        self.counters.cut.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Closes every connection: their tasks see a new generation.
        self.control.send_modify(|c| c.generation += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target_port: u16,
    control: watch::Receiver<Control>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = *control.borrow();
        if now.refuse {
            counters.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let control = control.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::SeqCst);
            let target = now.target.unwrap_or(target_port);
            connection(client, target, now.generation, control).await;
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Forwards one connection until either side closes or the proxy cuts it.
async fn connection(
    client: TcpStream,
    target_port: u16,
    generation: u64,
    control: watch::Receiver<Control>,
) {
    let server = match tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", target_port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return, // target down: the client sees its connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        Direction::Up,
        generation,
        control.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        Direction::Down,
        generation,
        control,
    );
    // Whichever direction ends first (EOF, error or cut) ends the connection: both halves
    // are dropped, so both peers see the socket close.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to` in chunks, obeying the direction's flow; returns when either side
/// closes or the connection's generation is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dir: Direction,
    generation: u64,
    mut control: watch::Receiver<Control>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let flow_of = |c: &Control| match dir {
        Direction::Up => c.up,
        Direction::Down => c.down,
    };
    loop {
        if control.borrow().generation != generation {
            return;
        }
        // Stalled: read nothing, so the sender's TCP window fills.
        while flow_of(&control.borrow_and_update()) == Flow::Stall {
            if control.borrow().generation != generation || control.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut(&mut control, generation) => return,
        };
        // Apply the flow in force now to this chunk: wait out a stall, sleep a delay.
        loop {
            let flow = flow_of(&control.borrow_and_update());
            match flow {
                Flow::Pass => break,
                Flow::Delay(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => break,
                        _ = cut(&mut control, generation) => return,
                    }
                }
                Flow::Stall => {
                    if control.borrow().generation != generation || control.changed().await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        // Bytes held by a stall or a delay are dropped, never delivered, when the connection
        // was cut meanwhile (a cut followed at once by `pass` must not let them through).
        if control.borrow().generation != generation {
            return;
        }
        let write = to.write_all(&buf[..n]);
        tokio::select! {
            biased;
            _ = cut(&mut control, generation) => return,
            r = write => if r.is_err() { return },
        }
    }
}

/// Resolves once the connection's generation is cut (or the proxy is gone).
async fn cut(control: &mut watch::Receiver<Control>, generation: u64) {
    loop {
        if control.borrow_and_update().generation != generation {
            return;
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}
