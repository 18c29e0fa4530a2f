//! `herald schedule NAME TOPIC --every SECS [DATA] [--count N]`: runs the recurring schedule
//! NAME (`herald::schedule`) until interrupted, publishing DATA on TOPIC once per tick however
//! many `herald schedule NAME` run at once; prints one JSON line per tick
//! `{"schedule","tick","topic","epoch","offset","duplicate"}` (`duplicate`: another scheduler
//! published the tick first).

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::{check_topic, connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald schedule`.
#[derive(Debug, Args)]
#[command(
    long_about = "Run the recurring schedule NAME until interrupted: publish DATA on TOPIC at \
every tick of --every seconds (tick k starts k × SECS after the Unix epoch). Any number of \
`herald schedule NAME` may run at once, on any nodes: each tick is published once (its \
idempotency key is schedule:NAME:TICK), with the headers herald-schedule, herald-schedule-tick \
and herald-schedule-due; with a work group on TOPIC (`herald work`), each tick runs on one \
member. Ticks during which no scheduler ran are not run late: they show as gaps in \
herald-schedule-tick. One JSON line per tick: \
{\"schedule\":..,\"tick\":..,\"topic\":..,\"epoch\":..,\"offset\":..,\"duplicate\":..}."
)]
pub(crate) struct ScheduleArgs {
    /// The schedule's name
    name: String,
    /// The topic to publish on
    topic: String,
    /// The payload of each tick's message
    #[arg(default_value = "")]
    data: String,
    /// The period, in seconds (at least 0.01)
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    every: Duration,
    /// Exit after N ticks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TickLine<'a> {
    schedule: &'a str,
    tick: u64,
    topic: &'a str,
    epoch: u64,
    offset: u64,
    duplicate: bool,
}

/// Runs `herald schedule`.
pub(crate) async fn run(global: &GlobalArgs, args: ScheduleArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    let herald = connect(global).await?;
    let mut schedule = herald
        .schedule(args.name.as_str(), args.topic.as_str())
        .every(args.every)
        .message(args.data.clone());
    if let Some(n) = args.count {
        let now = herald::schedule::tick_of(herald::schedule::now_ms(), args.every);
        schedule = schedule.ticks(now..=now + n - 1);
    }
    let mut out = JsonLines::stdout();
    let mut failed = None;
    let run = schedule.run_with(|t| {
        let line = TickLine {
            schedule: &args.name,
            tick: t.tick,
            topic: &t.receipt.topic,
            epoch: t.receipt.position.epoch,
            offset: t.receipt.position.offset,
            duplicate: t.receipt.duplicate,
        };
        if let Err(e) = out.emit(&line) {
            failed.get_or_insert(e);
        }
    });
    tokio::select! {
        () = shutdown_signal() => {}
        r = run => r?,
    }
    match failed {
        Some(e) => Err(Failure::stdout(&e)),
        None => Ok(()),
    }
}
