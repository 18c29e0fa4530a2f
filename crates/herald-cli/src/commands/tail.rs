//! `herald tail TOPIC... [--from earliest|latest|OFFSET] [--durable NAME] [--count N]
//! [--timeout SECS]`: subscribes to topics and prints one JSON line per event, flushed at
//! once so that a script can read it live.
//!
//! Messages are printed as `{"topic","epoch","offset","key","node","published_at","headers",
//! "data"|"data_base64"}`, gaps as `{"event":"gap",..}` and resets as `{"event":"reset",..}`
//! (see `output.rs`). With `--durable NAME`, each event is committed to the cursor NAME right
//! after it was printed and flushed, so the next `tail --durable NAME` starts right after the
//! last line printed (at-least-once: a line printed just before a crash may be printed again).
//! The command ends after `--count` messages, after `--timeout` seconds without any event, or
//! on Ctrl-C (SIGINT) or SIGTERM: with status 0, or with status 4 (refused) when a topic's
//! last reported problem was a refusal (e.g. its keys hold another type) and it has not
//! delivered anything since; the one-line error names each such topic and why.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use herald::{Event, Position, Start, Subscription};

use super::{check_topic, connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::{Failure, REFUSED};
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
Ctrl-C; each of these ends with exit status 0, unless a topic is still refused then (its keys \
hold another type or data Herald did not write, or permissions are missing): exit status 4, \
naming each such topic and why. A problem reported by the subscription (it keeps retrying) is \
printed as one line on standard error."
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

    /// Exit after printing N messages. Gap and reset events do not count; the messages
    /// printed after a reset (those of the topic's new epoch, delivered from where the reset
    /// line says) count like any other, once per line printed
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// Exit after SECS seconds without any event (default: run until Ctrl-C)
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// Parses `--from`.
pub(crate) fn parse_start(s: &str) -> Result<Start, String> {
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
    let mut refused = Refused::default();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // --timeout counts from the last event: repeated errors do not keep the command alive.
    let mut idle_until = args.timeout.map(|d| Instant::now() + d);
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            return refused.outcome();
        }
        let next = tokio::select! {
            () = &mut shutdown => return refused.outcome(),
            next = next_until(&mut sub, idle_until) => next,
        };
        let Some(item) = next else {
            return refused.outcome(); // --timeout seconds without an event
        };
        let event = match item {
            None => return Err(Failure::other("the subscription ended unexpectedly")),
            Some(Err(e)) => {
                let text = e.to_string();
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                tracing::debug!(error = %text, "subscription problem");
                warn_line(&format!("herald: {text} (still trying)"));
                if e.kind() == herald::ErrorKind::Refused {
                    refused.record(&args.topics, text);
                }
                continue;
            }
            Some(Ok(event)) => event,
        };
        if let Some(topic) = event_topic(&event) {
            refused.clear(topic);
        }
        idle_until = args.timeout.map(|d| Instant::now() + d);
        print_event(&sub, &mut out, &event).await?;
        if matches!(event, Event::Message(_)) {
            printed += 1;
        }
    }
}

/// The topics whose last reported problem was a refusal (keys of the wrong type, data Herald
/// did not write, permissions), with that problem; a topic leaves the set when it delivers an
/// event again. A refusal that names none of the requested topics concerns them all.
#[derive(Debug, Default)]
struct Refused {
    topics: BTreeMap<String, String>,
}

impl Refused {
    /// Records `problem` for the requested topics it names (as `{topic}` in a key, or quoted).
    fn record(&mut self, requested: &[String], problem: String) {
        let named: Vec<&String> = requested
            .iter()
            .filter(|t| {
                problem.contains(&format!("{{{t}}}")) || problem.contains(&format!("{t:?}"))
            })
            .collect();
        let concerned = if named.is_empty() {
            requested.iter().collect()
        } else {
            named
        };
        for topic in concerned {
            self.topics.insert(topic.clone(), problem.clone());
        }
    }

    /// The topic delivered an event: it is not in error any more.
    fn clear(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// How the command ends: success, or exit status 4 naming every topic still in error.
    fn outcome(&self) -> Result<(), Failure> {
        if self.topics.is_empty() {
            return Ok(());
        }
        let each: Vec<String> = self
            .topics
            .iter()
            .map(|(topic, problem)| format!("topic {topic:?}: {problem}"))
            .collect();
        Err(Failure::new(
            REFUSED,
            format!(
                "tail ended while {} of the topics could not be read: {}",
                self.topics.len(),
                each.join("; ")
            ),
        ))
    }
}

/// The topic an event belongs to.
fn event_topic(event: &Event) -> Option<&str> {
    match event {
        Event::Message(d) => Some(&d.topic),
        Event::Gap { topic, .. } | Event::Reset { topic, .. } => Some(topic),
        _ => None,
    }
}

/// The next stream item; `None` when `deadline` passed first.
async fn next_until(
    sub: &mut Subscription,
    deadline: Option<Instant>,
) -> Option<Option<herald::Result<Event>>> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), sub.next()).await.ok(),
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
                sub.commit_position(topic, Position::new(*epoch, *to))
                    .await?;
            }
        }
        Event::Reset {
            topic,
            last_delivered,
            epoch,
            lost_from,
            ..
        } => {
            out.emit(&ResetLine {
                event: "reset",
                topic,
                previous_epoch: last_delivered.epoch,
                epoch: *epoch,
                last_delivered: last_delivered.offset,
                lost_from: *lost_from,
            })
            .map_err(stdout)?;
            // Right before where delivery resumes in the new epoch.
            if durable {
                let resume = Position::new(*epoch, lost_from.saturating_sub(1));
                sub.commit_position(topic, resume).await?;
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
