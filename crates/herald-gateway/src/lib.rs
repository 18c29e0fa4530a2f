//! # herald-gateway: Herald over HTTP, Server-Sent Events and WebSocket
//!
//! One process (`herald serve`) that lets any language or browser publish to and follow
//! Herald topics while keeping Herald's guarantees all the way to the client: every event
//! carries its position, a client resumes without loss or duplicates, and what cannot be
//! delivered arrives as an explicit `gap` or `reset`. The HTTP API is documented in
//! `docs/GATEWAY.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let herald = herald::Herald::builder().redis("redis://127.0.0.1:6379").connect().await?;
//! let gateway = herald_gateway::serve(herald_gateway::Config::new(herald)).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.wait().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//! - [`auth`]: bearer JWTs (HS256, RS256, ES256) and the grants they carry.
//! - `hub`: one shared Herald subscription per topic, fanned out to every client of the
//!   process through a broadcast channel; `follow`: one client's ordered view of one topic
//!   (live from the hub, caught up from history when it falls behind).
//! - `http`, `sse`, `ws`: the endpoints; `wire`: the JSON shapes; `metrics`: the gateway's counters
//!   behind `/metrics`; `prom`: the recorder of the library's metrics; `status`: the embedded status page.
//! - `work`: work groups over HTTP and WebSocket (gateway-side workers per member, job
//!   tokens); `maps`: replicated maps as resources (ETag revisions, compare-and-set, watch).

mod api_error;
pub mod auth;
mod follow;
mod http;
mod hub;
mod maps;
mod metrics;
mod prom;
mod sse;
mod status;
mod wire;
mod work;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::Herald;

pub use auth::{Action, Auth, AuthError, Grants, Key};

/// Largest request body accepted by default (publish), in bytes.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// How the gateway is set up; [`Config::new`] gives the defaults.
#[derive(Clone)]
#[must_use]
pub struct Config {
    pub(crate) herald: Herald,
    pub(crate) listen: SocketAddr,
    pub(crate) auth: Option<Arc<Auth>>,
    pub(crate) keep_alive: Duration,
    pub(crate) retry: Duration,
    pub(crate) max_body: usize,
    pub(crate) client_buffer: usize,
    pub(crate) topic_channel: usize,
    pub(crate) work_idle: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("auth", &self.auth.is_some())
            .field("keep_alive", &self.keep_alive)
            .field("retry", &self.retry)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A gateway over `herald`, listening on 127.0.0.1:8080 without auth.
    pub fn new(herald: Herald) -> Self {
        Config {
            herald,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: None,
            keep_alive: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            max_body: DEFAULT_MAX_BODY,
            client_buffer: 64,
            topic_channel: 1024,
            work_idle: Duration::from_secs(30),
        }
    }

    /// Where to listen (port 0 picks a free port; see [`Gateway::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Require a bearer JWT on every `/v1` request. Without it the gateway listens only on
    /// loopback addresses.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// How often an idle event stream gets a keep-alive comment (default 15 s).
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// The reconnection delay suggested to EventSource clients (`retry:`, default 2 s).
    pub fn retry_hint(mut self, delay: Duration) -> Self {
        self.retry = delay;
        self
    }

    /// Largest accepted request body in bytes (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Events waiting for one slow client before it is caught up from history instead
    /// (default 64); bounds the memory of a connection.
    pub fn client_buffer(mut self, events: usize) -> Self {
        self.client_buffer = events;
        self
    }

    /// How long a work-group member of HTTP or WebSocket clients lives without a fetch or
    /// an outcome before the gateway closes its worker, releasing its leases (default 30 s).
    pub fn work_idle(mut self, idle: Duration) -> Self {
        self.work_idle = idle;
        self
    }

    /// Live events each topic keeps for its clients (default 1024, shared by all of them).
    pub fn topic_channel(mut self, events: usize) -> Self {
        self.topic_channel = events;
        self
    }
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No auth was configured and the address is not a loopback address.
    #[error("refusing to listen on {addr} without authentication: anyone who can reach it could publish and read every topic; configure auth, or listen on a loopback address (127.0.0.1, ::1)")]
    InsecureListen {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// An option was out of range.
    #[error("invalid {name}: {reason}")]
    InvalidSetting {
        /// The option.
        name: &'static str,
        /// Its range and what was given.
        reason: String,
    },
    /// The address could not be bound or the server failed.
    #[error("cannot listen on {addr}: {reason}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        reason: String,
    },
}

/// A running gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

impl Gateway {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until the server fails (it does not stop by itself otherwise).
    pub async fn wait(self) -> Result<(), GatewayError> {
        let addr = self.addr;
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(GatewayError::Io {
                addr,
                reason: e.to_string(),
            }),
        }
    }

    /// Stops accepting connections, closes open streams and waits for the server to end.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(true);
        self.wait().await
    }
}

/// Starts the gateway: binds `config.listen` and serves in the background.
pub async fn serve(config: Config) -> Result<Gateway, GatewayError> {
    if config.auth.is_none() && !config.listen.ip().is_loopback() {
        return Err(GatewayError::InsecureListen {
            addr: config.listen,
        });
    }
    if config.work_idle < Duration::from_millis(100) {
        return Err(GatewayError::InvalidSetting {
            name: "work idle timeout",
            reason: format!("must be at least 100ms, got {:?}", config.work_idle),
        });
    }
    for (name, value) in [
        ("client buffer", config.client_buffer),
        ("topic channel", config.topic_channel),
        ("max body", config.max_body),
    ] {
        if value == 0 {
            return Err(GatewayError::InvalidSetting {
                name,
                reason: "must be at least 1, got 0".into(),
            });
        }
    }
    // The library's metrics go to the gateway's recorder (unless the application has one).
    let _ = prom::global();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| GatewayError::Io {
            addr: config.listen,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| GatewayError::Io {
        addr: config.listen,
        reason: e.to_string(),
    })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = http::State::new(config, stopped.clone());
    let app = http::router(state);
    let task = tokio::spawn(async move {
        let mut stopped = stopped;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| GatewayError::Io {
                addr,
                reason: e.to_string(),
            })
    });
    Ok(Gateway { addr, stop, task })
}
