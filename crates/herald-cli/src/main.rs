//! # `herald`: the Herald command line
//!
//! Publishes to, follows, inspects and configures Herald topics in Redis, and runs a
//! self-contained demo:
//!
//! ```text
//! herald publish TOPIC [DATA|-] [--key KEY] [--header K=V]... [--delay SECS] [--order-key KEY] [--wait-all GROUP [--timeout SECS]]
//! herald tail TOPIC... [--from earliest|latest|OFFSET] [--durable NAME] [--count N] [--timeout SECS]
//! herald inspect TOPIC
//! herald configure TOPIC [--max-len N] [--max-age SECS] [--dedup-window SECS] [--max-size BYTES]
//! herald members [GROUP]
//! herald join GROUP [--id ID] [--meta K=V]... [--ttl SECS] [--ack TOPIC]...
//! herald lag TOPIC
//! herald work TOPIC --group NAME [--from earliest|latest|OFFSET] [--lease SECS] [--max-deliveries N] [--backoff SECS,...] [--concurrency N] [--key-order] [--id ID] [--count N] [--timeout SECS] [-- COMMAND [ARG]...]
//! herald groups TOPIC
//! herald schedule NAME TOPIC --every SECS|--cron EXPR [DATA] [--count N]
//! herald demo [--nodes N] [--messages M]
//! herald serve [--listen ADDR] [--auth jwt-hs256:FILE|jwt-rs256:FILE|jwt-es256:FILE] [--audience AUD]
//! herald bench [--quick] [--json] [--messages N] [--catchup N] [--cases P,...] [--systems S,...] [--rounds N]
//! ```
//!
//! Global options: `--redis URL` (or `HERALD_REDIS_URL`, default `redis://127.0.0.1:6379`;
//! also `redis+sentinel://host:port,.../NAME` and `redis+cluster://host:port,...`),
//! `--namespace NAME` (default `herald`) and `--connect-timeout SECS` (default 5).
//! Machine-readable output is JSON, one object per line ([`output`]); errors are one line on
//! standard error and the exit status says what kind of error it was ([`exit`]).
//!
//! This file only parses the command line and dispatches to one module per command under
//! [`commands`].

mod commands;
mod exit;
mod output;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use commands::{
    configure, demo, groups, inspect, join, lag, members, publish, schedule, tail, work, GlobalArgs,
};
use exit::Failure;

/// Distributed message broadcast over Redis: publish to, follow, inspect and configure
/// Herald topics.
#[derive(Debug, Parser)]
#[command(name = "herald", version, after_help = exit::HELP)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a message (DATA), or one message per line of standard input (DATA is `-`)
    #[command(after_long_help = exit::HELP)]
    Publish(publish::PublishArgs),
    /// Follow topics: print one JSON line per message, gap or reset
    #[command(after_long_help = exit::HELP)]
    Tail(tail::TailArgs),
    /// Print a topic's state (epoch, offsets, settings, durable cursors and their lag)
    #[command(after_long_help = exit::HELP)]
    Inspect(inspect::InspectArgs),
    /// Change a topic's retention, dedup window or size limit and print its settings
    #[command(after_long_help = exit::HELP)]
    Configure(configure::ConfigureArgs),
    /// Print the live members of a group (or of every group), one JSON line each
    #[command(after_long_help = exit::HELP)]
    Members(members::MembersArgs),
    /// Join a member group and heartbeat until interrupted, then leave
    #[command(after_long_help = exit::HELP)]
    Join(join::JoinArgs),
    /// Print every durable cursor of a topic with its lag and the age of its last commit
    #[command(after_long_help = exit::HELP)]
    Lag(lag::LagArgs),
    /// Be a member of a work group: each message to one member, with leases, retries and a
    /// dead-letter topic; print or run a command per delivery
    #[command(after_long_help = exit::HELP)]
    Work(work::WorkArgs),
    /// Print every work group of a topic with its state, one JSON line each
    #[command(after_long_help = exit::HELP)]
    Groups(groups::GroupsArgs),
    /// Publish a message once per tick of a recurring schedule, however many schedulers run
    #[command(after_long_help = exit::HELP)]
    Schedule(schedule::ScheduleArgs),
    /// Replicated maps: get, put (with compare-and-set), del, watch
    #[command(after_long_help = exit::HELP)]
    Map(commands::map::MapArgs),
    /// Run several nodes in this process and show they all receive the same sequence
    #[command(after_long_help = exit::HELP)]
    Demo(demo::DemoArgs),
    /// Benchmark Herald against raw Redis Pub/Sub and Streams (starts its own redis-server
    /// unless --redis is given)
    #[cfg(feature = "bench")]
    #[command(after_long_help = exit::HELP)]
    Bench(herald_bench::BenchArgs),
    /// Serve topics over HTTP, Server-Sent Events and WebSocket (docs/GATEWAY.md)
    #[cfg(feature = "serve")]
    #[command(after_long_help = exit::HELP)]
    Serve(commands::serve::ServeArgs),
}

fn main() -> ExitCode {
    // Usage errors exit with status 2, --help and --version with 0 (clap's own behaviour).
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Failure::other(format!("cannot start the runtime: {e}"))),
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for a read of standard input that may still be blocked.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

/// Dispatches to the command.
async fn run(cli: Cli) -> Result<(), Failure> {
    let global = &cli.global;
    match cli.command {
        Command::Publish(args) => publish::run(global, args).await,
        Command::Tail(args) => tail::run(global, args).await,
        Command::Inspect(args) => inspect::run(global, args).await,
        Command::Configure(args) => configure::run(global, args).await,
        Command::Members(args) => members::run(global, args).await,
        Command::Join(args) => join::run(global, args).await,
        Command::Lag(args) => lag::run(global, args).await,
        Command::Work(args) => work::run(global, args).await,
        Command::Groups(args) => groups::run(global, args).await,
        Command::Schedule(args) => schedule::run(global, args).await,
        Command::Map(args) => commands::map::run(global, args).await,
        Command::Demo(args) => demo::run(global, args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => herald_bench::run(args, global.redis.clone())
            .await
            .map_err(|e| Failure::new(e.exit_status(), e.to_string())),
        #[cfg(feature = "serve")]
        Command::Serve(args) => commands::serve::run(global, args).await,
    }
}

/// Prints the failure as one line on standard error and returns its exit status.
fn fail(failure: &Failure) -> ExitCode {
    if let Some(message) = failure.one_line() {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "herald: {message}");
        let _ = err.flush();
    }
    ExitCode::from(failure.status)
}

/// Logs to standard error, filtered by `RUST_LOG` (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
