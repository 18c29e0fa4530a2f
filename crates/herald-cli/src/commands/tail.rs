//! `herald tail TOPIC... [--from earliest|latest|OFFSET] [--durable NAME] [--count N]
//! [--timeout SECS]`: subscribes to topics and prints one JSON line per event, flushed at
//! once so that a script can read it live.
//!
//! Messages are printed as `{"topic","epoch","offset","key","node","published_at","headers",
//! "data"|"data_base64"}`, gaps as `{"event":"gap",..}` and resets as `{"event":"reset",..}`
//! (see `output.rs`). With `--durable NAME`, each event is committed to the cursor NAME right
//! after it was printed and flushed, so the next `tail --durable NAME` starts right after the
//! last line printed (at-least-once: a line printed just before a crash may be printed again).
//! The command ends with status 0 after `--count` messages, after `--timeout` seconds without
//! any event, or on Ctrl-C (SIGINT) or SIGTERM.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use herald::{Event, Start, Subscription};

use super::{check_topic, connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::Failure;
use crate::output::{GapLine, JsonLines, MessageLine, ResetLine};

/// Arguments of `herald tail`.
#[derive(Debug, Args)]
#[command(
    long_about = "Subscribe to topics and print one JSON line per event, in offset order per \
topic:\n  \
{\"topic\":..,\"epoch\":..,\"offset\":..,\"key\":..,\"node\":..,\"published_at\":..,\"headers\":{..},\"data\":..}\n\
(\"data_base64\" instead of \"data\" when the payload is not UTF-8; published_at is in \
milliseconds since the Unix epoch), and when delivery cannot be complete:\n  \
{\"event\":\"gap\",\"topic\":..,\"epoch\":..,\"from\":..,\"to\":..,\"reason\":\"retention\"|\"unreadable\"}\n  \
{\"event\":\"reset\",\"topic\":..,\"previous_epoch\":..,\"epoch\":..,\"last_delivered\":..}\n\n\
Runs until --count messages were printed, --timeout seconds pass without any event, or \
Ctrl-C; each of these ends with exit status 0. A problem reported by the subscription (it \
keeps retrying) is printed as one line on standard error."
)]
pub(crate) struct TailArgs {
    /// The topics to follow
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,

    /// Where to start: `earliest` (oldest message still in history), `latest` (only new
    /// messages) or an OFFSET (from that offset on). With --durable, applies only when the
    /// cursor does not exist yet
    #[arg(
        long,
        default_value = "latest",
        value_name = "earliest|latest|OFFSET",
        value_parser = parse_start
    )]
    from: Start,

    /// Resume from, and commit every printed event to, the durable cursor NAME: the next
    /// `tail --durable NAME` starts right after the last event printed
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,

    /// Exit after printing N messages (gap and reset events do not count)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Exit after SECS seconds without any event (default: run until Ctrl-C)
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// Parses `--from`.
fn parse_start(s: &str) -> Result<Start, String> {
    match s {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        _ => match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Start::Offset(n)),
            _ => Err(format!(
                "{s:?} is not a start position; expected earliest, latest or an offset (1 or more)"
            )),
        },
    }
}

/// Runs `herald tail`.
pub(crate) async fn run(global: &GlobalArgs, args: TailArgs) -> Result<(), Failure> {
    for topic in &args.topics {
        check_topic(topic)?;
    }
    let herald = connect(global).await?;
    let mut subscribe = herald
        .subscribe(args.topics.iter().cloned())
        .from(args.from);
    if let Some(name) = &args.durable {
        subscribe = subscribe.durable(name.as_str());
    }
    let mut sub = subscribe.await?;
    let mut out = JsonLines::stdout();
    let mut printed: u64 = 0;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = next_within(&mut sub, args.timeout) => next,
        };
        let Some(item) = next else {
            return Ok(()); // --timeout seconds without an event
        };
        let event = match item {
            None => return Err(Failure::other("the subscription ended unexpectedly")),
            Some(Err(e)) => {
                let text = e.to_string();
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                tracing::debug!(error = %text, "subscription problem");
                warn_line(&format!("herald: {text} (still trying)"));
                continue;
            }
            Some(Ok(event)) => event,
        };
        print_event(&sub, &mut out, &event).await?;
        if matches!(event, Event::Message(_)) {
            printed += 1;
        }
    }
}

/// The next stream item; `None` when `timeout` passed first.
async fn next_within(
    sub: &mut Subscription,
    timeout: Option<Duration>,
) -> Option<Option<herald::Result<Event>>> {
    match timeout {
        Some(d) => tokio::time::timeout(d, sub.next()).await.ok(),
        None => Some(sub.next().await),
    }
}

/// Prints one event, flushes it, and commits it to the durable cursor if there is one.
async fn print_event(
    sub: &Subscription,
    out: &mut JsonLines<std::io::Stdout>,
    event: &Event,
) -> Result<(), Failure> {
    let stdout = |e: std::io::Error| Failure::stdout(&e);
    let durable = sub.cursor_name().is_some();
    match event {
        Event::Message(delivery) => {
            out.emit(&MessageLine::from(delivery)).map_err(stdout)?;
            if durable {
                sub.commit(delivery).await?;
            }
        }
        Event::Gap {
            topic,
            epoch,
            from,
            to,
            reason,
        } => {
            out.emit(&GapLine {
                event: "gap",
                topic,
                epoch: *epoch,
                from: *from,
                to: *to,
                reason: *reason,
            })
            .map_err(stdout)?;
            // Move the cursor past what was reported, so a restart does not report it again.
            if durable {
                sub.commit_offset(topic, *epoch, *to).await?;
            }
        }
        Event::Reset {
            topic,
            previous_epoch,
            epoch,
            last_delivered,
        } => {
            out.emit(&ResetLine {
                event: "reset",
                topic,
                previous_epoch: *previous_epoch,
                epoch: *epoch,
                last_delivered: *last_delivered,
            })
            .map_err(stdout)?;
            // Offset 0 of the new epoch: resume from its first message.
            if durable {
                sub.commit_offset(topic, *epoch, 0).await?;
            }
        }
        other => {
            tracing::warn!(event = ?other, "skipping an event this version of herald does not know");
        }
    }
    Ok(())
}

/// Writes one line to standard error, ignoring a closed standard error.
fn warn_line(line: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("42"), Ok(Start::Offset(42)));
        for bad in ["0", "-1", "first", "", "1.5"] {
            assert!(parse_start(bad).is_err(), "{bad:?}");
        }
    }
}
