//! `herald work TOPIC --group NAME [--from ...] [--lease SECS] [--max-deliveries N]
//! [--backoff SECS,...] [--concurrency N] [--count N] [--timeout SECS] [-- COMMAND ARGS...]`:
//! a member of a work group (`herald::work`).
//!
//! Without a command, each delivery is printed as one JSON line (the `tail` fields plus
//! `group` and `attempt`) and acked once printed and flushed. With a command, it runs once per
//! delivery with the payload on standard input and `HERALD_TOPIC`, `HERALD_GROUP`,
//! `HERALD_EPOCH`, `HERALD_OFFSET`, `HERALD_ATTEMPT`, `HERALD_KEY` in its environment, the
//! lease extended while it runs; exit status 0 acks, any other retries per the policy; one
//! JSON line per outcome `{"topic","group","epoch","offset","attempt","outcome"}` with outcome
//! `acked`, `retry`, `dead` or `stale`. Resets and lost messages are printed as
//! `{"event":"reset",..}` and `{"event":"lost",..}`. Ctrl-C (or SIGTERM), `--count` and
//! `--timeout` stop taking new work, let running commands finish, then leave the group
//! (what is still leased is released at once); a second Ctrl-C kills the running commands
//! first.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use herald::work::Backoff;
use herald::{Job, Outcome, Start, WorkEvent, Worker};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::tail::parse_start;
use super::{check_topic, connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::Failure;
use crate::output::{JsonLines, MessageLine};

/// Arguments of `herald work`.
#[derive(Debug, Args)]
#[command(
    long_about = "Be a member of a work group on TOPIC: each message of the topic goes to one \
member of the group at a time, under a lease, and is retried (up to --max-deliveries) until a \
member acks it; then it goes to the dead-letter topic __dead/TOPIC/GROUP.\n\n\
Without COMMAND: print each delivery as one JSON line (the tail fields plus \"group\" and \
\"attempt\") and ack it once printed.\n\
With COMMAND: run it once per delivery, the payload on standard input and HERALD_TOPIC, \
HERALD_GROUP, HERALD_EPOCH, HERALD_OFFSET, HERALD_ATTEMPT, HERALD_KEY in its environment; exit \
status 0 acks, any other status retries. One JSON line per outcome:\n  \
{\"topic\":..,\"group\":..,\"epoch\":..,\"offset\":..,\"attempt\":..,\"outcome\":\"acked\"|\"retry\"|\"dead\"|\"stale\"}\n\n\
Ends after --count deliveries, after --timeout seconds without one, or on Ctrl-C: running \
commands finish first (a second Ctrl-C kills them), then the member leaves the group, which \
releases whatever it still holds at once."
)]
pub(crate) struct WorkArgs {
    /// The topic
    #[arg(value_name = "TOPIC")]
    topic: String,

    /// The work group
    #[arg(long, value_name = "NAME")]
    group: String,

    /// Where a new group starts: earliest, latest or an OFFSET (ignored when the group exists)
    #[arg(
        long,
        default_value = "earliest",
        value_name = "earliest|latest|OFFSET",
        value_parser = parse_start
    )]
    from: Start,

    /// How long a delivery is leased (extended while a command runs)
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_duration)]
    lease: Duration,

    /// Deliveries of a message before it is dead-lettered
    #[arg(long, default_value = "5", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_deliveries: u32,

    /// Delays before the retries, e.g. 1,5,30 (the last repeats) [default: exponential from
    /// 1 s, at most 5 min]
    #[arg(long, value_name = "SECS,SECS,...", value_parser = parse_backoff)]
    backoff: Option<Backoff>,

    /// Deliveries processed at once
    #[arg(long, default_value = "1", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,

    /// Process the messages of one order key (`herald publish --order-key`) one at a time,
    /// in offset order; every member of the group must say the same
    #[arg(long)]
    key_order: bool,

    /// The member id [default: the node id, unique to this process]
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Exit after N deliveries
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Exit after SECS seconds without a delivery (default: run until Ctrl-C)
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// The command to run per delivery, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Parses `--backoff 1,5,30`.
fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let delays = s
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() {
        return Err("expected at least one delay".into());
    }
    Ok(Backoff::List(delays))
}

/// One delivery printed without a command.
#[derive(Debug, Serialize)]
struct DeliveryLine<'a> {
    #[serde(flatten)]
    message: MessageLine<'a>,
    group: &'a str,
    attempt: u32,
}

/// One outcome of a command.
#[derive(Debug, Serialize)]
struct OutcomeLine<'a> {
    topic: &'a str,
    group: &'a str,
    epoch: u64,
    offset: u64,
    attempt: u32,
    outcome: &'static str,
}

/// A reset or lost messages.
#[derive(Debug, Serialize)]
struct EventLine<'a> {
    event: &'static str,
    topic: &'a str,
    group: &'a str,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Acked => "acked",
        Outcome::Retry { .. } => "retry",
        Outcome::DeadLettered { .. } => "dead",
        Outcome::Stale => "stale",
        _ => "other",
    }
}

/// Runs `herald work`.
pub(crate) async fn run(global: &GlobalArgs, args: WorkArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    herald::work::validate_work_group(&args.group)?;
    let herald = connect(global).await?;
    let mut builder = herald
        .work(args.topic.as_str())
        .group(args.group.as_str())
        .from(args.from.clone())
        .lease(args.lease)
        .max_deliveries(args.max_deliveries)
        .concurrency(usize::try_from(args.concurrency).unwrap_or(1))
        .key_order(args.key_order);
    if let Some(b) = &args.backoff {
        builder = builder.backoff(b.clone());
    }
    if let Some(id) = &args.id {
        builder = builder.member(id.as_str());
    }
    let mut worker = builder.await?;
    let mut out = JsonLines::stdout();
    let stdout = |e: std::io::Error| Failure::stdout(&e);
    let command = Arc::new(args.command.clone());
    let lease = args.lease;
    let mut running: JoinSet<Result<(Job, bool), Failure>> = JoinSet::new();
    let mut taken: u64 = 0;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut idle_until = args.timeout.map(|d| Instant::now() + d);
    loop {
        if args.count.is_some_and(|n| taken >= n) {
            break;
        }
        let idle_at = idle_until.filter(|_| running.is_empty());
        let idle = async {
            match idle_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = idle => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                let (job, ok) = done.map_err(|e| Failure::other(format!("a command task failed: {e}")))??;
                finish(&mut out, job, ok).await?;
                idle_until = args.timeout.map(|d| Instant::now() + d);
            }
            next = worker.next() => {
                let event = match next {
                    None => break,
                    Some(Err(e)) => {
                        eprintln!("herald: {e} (still trying)");
                        continue;
                    }
                    Some(Ok(event)) => event,
                };
                idle_until = args.timeout.map(|d| Instant::now() + d);
                match event {
                    WorkEvent::Job(job) => {
                        taken += 1;
                        if command.is_empty() {
                            out.emit(&DeliveryLine {
                                message: MessageLine::from(job.delivery()),
                                group: job.group(),
                                attempt: job.attempt(),
                            })
                            .map_err(stdout)?;
                            if job.ack().await? == Outcome::Stale {
                                eprintln!("herald: the lease ran out before the ack; the message goes to another member");
                            }
                        } else {
                            let command = command.clone();
                            running.spawn(async move {
                                let ok = run_command(&command, &job, lease).await?;
                                Ok((job, ok))
                            });
                        }
                    }
                    WorkEvent::Reset { topic, group, epoch, .. } => out
                        .emit(&EventLine { event: "reset", topic: &topic, group: &group, epoch, count: None })
                        .map_err(stdout)?,
                    WorkEvent::Lost { topic, group, epoch, count, .. } => out
                        .emit(&EventLine { event: "lost", topic: &topic, group: &group, epoch, count: Some(count) })
                        .map_err(stdout)?,
                    _ => {}
                }
            }
        }
    }
    // Stop taking work; let the running commands finish (a second Ctrl-C kills them: their
    // leases are released when the member leaves).
    worker.stop_taking();
    let again = shutdown_signal();
    tokio::pin!(again);
    loop {
        tokio::select! {
            () = &mut again => {
                running.abort_all();
                break;
            }
            done = running.join_next() => {
                let Some(done) = done else { break };
                let (job, ok) =
                    done.map_err(|e| Failure::other(format!("a command task failed: {e}")))??;
                finish(&mut out, job, ok).await?;
            }
        }
    }
    while running.join_next().await.is_some() {}
    leave(worker).await
}

async fn leave(worker: Worker) -> Result<(), Failure> {
    worker.close().await?;
    Ok(())
}

/// Reports a command's result and prints the outcome line.
async fn finish(out: &mut JsonLines<std::io::Stdout>, job: Job, ok: bool) -> Result<(), Failure> {
    let (topic, group) = (job.delivery().topic.clone(), job.group().to_string());
    let (pos, attempt) = (job.position(), job.attempt());
    let outcome = if ok {
        job.ack().await?
    } else {
        job.fail("the command failed").await?
    };
    out.emit(&OutcomeLine {
        topic: &topic,
        group: &group,
        epoch: pos.epoch,
        offset: pos.offset,
        attempt,
        outcome: outcome_name(outcome),
    })
    .map_err(|e| Failure::stdout(&e))
}

/// Runs the command for one delivery, extending the lease while it runs; true when it
/// exited with status 0.
async fn run_command(command: &[String], job: &Job, lease: Duration) -> Result<bool, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Ok(true);
    };
    let d = job.delivery();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("HERALD_TOPIC", &d.topic)
        .env("HERALD_GROUP", job.group())
        .env("HERALD_EPOCH", d.position.epoch.to_string())
        .env("HERALD_OFFSET", d.position.offset.to_string())
        .env("HERALD_ATTEMPT", job.attempt().to_string())
        .env("HERALD_KEY", &d.key)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(
                crate::exit::BAD_INPUT,
                format!("cannot run {program:?}: {e}"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let payload = d.payload.clone();
        // A command that does not read its input is fine.
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
    }
    let mut extend = tokio::time::interval(lease / 3);
    extend.tick().await;
    loop {
        tokio::select! {
            status = child.wait() => {
                return Ok(status.map(|s| s.success()).unwrap_or(false));
            }
            _ = extend.tick() => {
                if let Ok(Outcome::Stale) = job.in_progress().await {
                    tracing::warn!(offset = d.position.offset, "lost the lease while the command runs");
                }
            }
        }
    }
}
