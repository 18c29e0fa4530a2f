//! The `herald` subcommands, one module each, and what they share: the global options,
//! connecting to Redis, and parsers for option values.
//!
//! Every command is `run(&GlobalArgs, Args) -> Result<(), Failure>`; `main` maps the
//! [`Failure`] to a message and an exit status.

pub(crate) mod configure;
pub(crate) mod demo;
pub(crate) mod groups;
pub(crate) mod inspect;
pub(crate) mod join;
pub(crate) mod lag;
pub(crate) mod map;
pub(crate) mod members;
pub(crate) mod publish;
pub(crate) mod schedule;
#[cfg(feature = "serve")]
pub(crate) mod serve;
pub(crate) mod tail;
pub(crate) mod wait_all;
pub(crate) mod work;

use std::time::Duration;

use clap::Args;
use herald::{Herald, HeraldBuilder};

use crate::exit::Failure;

/// The Redis URL used when neither `--redis` nor `HERALD_REDIS_URL` is given.
pub(crate) const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Options accepted by every command.
#[derive(Debug, Clone, Args)]
pub(crate) struct GlobalArgs {
    /// Redis to use: redis://[user:password@]host:port[/db], or rediss://... for TLS;
    /// redis+sentinel://[user:password@]host:port,.../NAME[/db] for the primary that these
    /// sentinels name; redis+cluster://[user:password@]host:port,... for a Redis Cluster
    /// (rediss+sentinel://, rediss+cluster:// over TLS) [default: redis://127.0.0.1:6379; `herald demo` uses an in-process broker unless this
    /// is given]
    #[arg(
        long,
        global = true,
        env = "HERALD_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) redis: Option<String>,

    /// Prefix of every Redis key Herald uses, so that several applications share one Redis
    #[arg(long, global = true, default_value = "herald", value_name = "NAME")]
    pub(crate) namespace: String,

    /// How long to keep retrying an unreachable Redis before giving up (exit status 3)
    #[arg(
        long,
        global = true,
        default_value = "5",
        value_name = "SECS",
        value_parser = parse_duration
    )]
    pub(crate) connect_timeout: Duration,

    /// For rediss://, rediss+sentinel:// and rediss+cluster:// URLs: a PEM file with the root certificate (your CA) to trust instead of
    /// the system's certificate store
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

impl GlobalArgs {
    /// The Redis URL to use: the one given, or the default.
    pub(crate) fn redis_url(&self) -> &str {
        self.redis.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }
}

/// Connects to Redis as the global options say.
pub(crate) async fn connect(global: &GlobalArgs) -> Result<Herald, Failure> {
    connect_with(global, |b| b).await
}

/// Connects as the global options say, with `adjust` applied to the builder first.
pub(crate) async fn connect_with(
    global: &GlobalArgs,
    adjust: impl FnOnce(HeraldBuilder) -> HeraldBuilder,
) -> Result<Herald, Failure> {
    let mut builder = Herald::builder()
        .redis(global.redis_url())
        .namespace(global.namespace.as_str());
    if let Some(path) = &global.tls_ca {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::new(
                crate::exit::BAD_INPUT,
                format!("cannot read --tls-ca {}: {e}", path.display()),
            )
        })?;
        builder = builder.tls_ca_pem(pem);
    }
    connect_builder(adjust(builder), global.connect_timeout).await
}

/// Connects `builder`, retrying an unreachable Redis for `timeout` (the library bounds every
/// attempt by that deadline, so a server that accepts connections but never answers cannot
/// hold the command longer); gives up with exit status 3 and a hint about
/// `--connect-timeout` (added by [`Failure`]'s conversion).
pub(crate) async fn connect_builder(
    builder: HeraldBuilder,
    timeout: Duration,
) -> Result<Herald, Failure> {
    Ok(builder.connect_timeout(timeout).connect().await?)
}

/// Checks a topic name before anything touches the network, so that a typo is reported
/// (exit status 2) even when Redis is down.
pub(crate) fn check_topic(topic: &str) -> Result<(), Failure> {
    herald::validate_topic(topic)?;
    Ok(())
}

/// Parses `NAME=VALUE` (split at the first `=`; the name must not be empty), for `--header`
/// and `--meta`.
pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("{s:?} has an empty name; expected NAME=VALUE")),
        Some((name, value)) => Ok((name.to_string(), value.to_string())),
        None => Err(format!("{s:?} has no '='; expected NAME=VALUE")),
    }
}

/// Parses a number of seconds with at most millisecond precision (`5`, `0.25`, `1.5`) into
/// milliseconds.
pub(crate) fn parse_millis(s: &str) -> Result<u64, String> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(format!(
            "{s:?} is not a number of seconds (expected e.g. 5 or 0.25)"
        ));
    }
    if frac.len() > 3 {
        return Err(format!(
            "{s:?} is more precise than a millisecond (use at most 3 decimals)"
        ));
    }
    let too_large = || format!("{s:?} seconds is too large");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| too_large())?
    };
    whole
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(frac))
        .ok_or_else(too_large)
}

/// Parses a number of seconds (see [`parse_millis`]) into a duration.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_millis(s).map(Duration::from_millis)
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM; never when no handler can be installed.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("a="), Ok(("a".to_string(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_millis("5"), Ok(5000));
        assert_eq!(parse_millis("0.25"), Ok(250));
        assert_eq!(parse_millis(".5"), Ok(500));
        assert_eq!(parse_millis("1."), Ok(1000));
        assert_eq!(parse_millis("0"), Ok(0));
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "abc",
            "1.0001",
            "1 ",
            "99999999999999999999",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad:?}");
        }
        assert!(parse_millis(&u64::MAX.to_string()).is_err());
    }
}
