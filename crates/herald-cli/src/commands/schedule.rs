//! `herald schedule NAME TOPIC --every SECS|--cron EXPR [DATA] [--count N]`: runs the recurring schedule
//! NAME (`herald::schedule`) until interrupted, publishing DATA on TOPIC once per tick however
//! many `herald schedule NAME` run at once; prints one JSON line per tick
//! `{"schedule","tick","topic","epoch","offset","duplicate"}` (`duplicate`: another scheduler
//! published the tick first).

use std::time::Duration;

use clap::Args;
use herald::schedule::Cron;
use serde::Serialize;

use super::{check_topic, connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald schedule`.
#[derive(Debug, Args)]
#[command(
    long_about = "Run the recurring schedule NAME until interrupted: publish DATA on TOPIC at \
every tick of --every seconds (tick k starts k × SECS after the Unix epoch), or at each fire \
of the cron expression --cron (five fields: minute hour day-of-month month day-of-week, in UTC; \
tick k is minute k since the Unix epoch; day of month and day of week as in Vixie cron: either \
matches when both are restricted). Any number of \
`herald schedule NAME` may run at once, on any nodes: each tick is published once (its \
idempotency key is schedule:NAME:TICK), with the headers herald-schedule, herald-schedule-tick \
and herald-schedule-due; with a work group on TOPIC (`herald work`), each tick runs on one \
member. Ticks (a cron tick lasts its minute) during which no scheduler ran are not run late: they show as gaps in \
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
    #[arg(long, value_name = "SECS", value_parser = parse_duration, required_unless_present = "cron", conflicts_with = "cron")]
    every: Option<Duration>,
    /// A cron expression instead of a period, in UTC, e.g. "*/5 * * * *" (quote it)
    #[arg(long, value_name = "EXPR", value_parser = parse_cron)]
    cron: Option<Cron>,
    /// Exit after N ticks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

fn parse_cron(s: &str) -> Result<Cron, String> {
    Cron::parse(s).map_err(|e| e.to_string())
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
        .message(args.data.clone());
    let now_ms = herald::schedule::now_ms();
    match (&args.every, &args.cron) {
        (Some(every), _) => {
            schedule = schedule.every(*every);
            if let Some(n) = args.count {
                let now = herald::schedule::tick_of(now_ms, *every);
                schedule = schedule.ticks(now..=now + n - 1);
            }
        }
        (None, Some(cron)) => {
            schedule = schedule.cron(cron.expression());
            // The tick in progress (or the next), and the N-1 fires after it.
            if let (Some(n), Some(first)) = (args.count, cron.tick_at_or_after(now_ms)) {
                let mut last = first;
                for _ in 1..n {
                    match cron.tick_at_or_after((last + 1) * herald::schedule::cron::MINUTE_MS) {
                        Some(t) => last = t,
                        None => break,
                    }
                }
                schedule = schedule.ticks(first..=last);
            }
        }
        (None, None) => return Err(Failure::bad_input("give --every SECS or --cron EXPR")),
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
