//! `herald serve`: the HTTP/SSE/WebSocket gateway (`herald-gateway`, `docs/GATEWAY.md`).

use std::net::SocketAddr;

use clap::Args;
use herald_gateway::{Auth, Config, GatewayError, Key};

use super::{connect, GlobalArgs};
use crate::exit::{Failure, BAD_INPUT};
use crate::output::JsonLines;

/// Options of `herald serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on; without --auth only a loopback address is accepted
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,

    /// Require bearer JWTs verified with this key: jwt-hs256:FILE (the shared secret, at least
    /// 32 bytes), jwt-rs256:FILE or jwt-es256:FILE (a PEM public key)
    #[arg(long, value_name = "ALG:FILE")]
    auth: Option<String>,

    /// The audience (`aud` claim) tokens must carry
    #[arg(long, default_value = "herald", value_name = "AUD", requires = "auth")]
    audience: String,

    /// Largest accepted request body, in bytes
    #[arg(long, default_value_t = herald_gateway::DEFAULT_MAX_BODY, value_name = "BYTES")]
    max_body: usize,

    /// How long a work-group member of HTTP/WebSocket clients lives without a fetch or an
    /// outcome before the gateway closes it, releasing its leases, in seconds
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = super::parse_duration)]
    work_idle: std::time::Duration,

    /// Live events each topic's shared feed keeps for its clients; a client further behind
    /// catches up from history on its own
    #[arg(long, default_value = "1024", value_name = "EVENTS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    topic_channel: u32,
}

/// Runs the gateway until interrupted.
pub(crate) async fn run(global: &GlobalArgs, args: ServeArgs) -> Result<(), Failure> {
    let auth = match &args.auth {
        Some(spec) => Some(
            Key::from_spec(spec)
                .and_then(|key| Auth::new(key, &args.audience))
                .map_err(|e| Failure::new(BAD_INPUT, format!("--auth: {e}")))?,
        ),
        None => None,
    };
    let herald = connect(global).await?;
    let mut config = Config::new(herald)
        .listen(args.listen)
        .max_body(args.max_body)
        .work_idle(args.work_idle)
        .topic_channel(args.topic_channel as usize);
    if let Some(auth) = auth {
        config = config.auth(auth);
    }
    let gateway = herald_gateway::serve(config).await.map_err(|e| match e {
        GatewayError::InsecureListen { .. } => Failure::new(BAD_INPUT, format!("{e} (use --auth)")),
        other => Failure::other(other.to_string()),
    })?;
    let addr = gateway.local_addr().to_string();
    JsonLines::stdout()
        .emit(&serde_json::json!({"event": "listening", "address": addr}))
        .map_err(|e| Failure::other(format!("cannot write to standard output: {e}")))?;
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::other(format!("cannot wait for Ctrl-C: {e}")))?;
    gateway
        .shutdown()
        .await
        .map_err(|e| Failure::other(e.to_string()))
}
