//! `herald configure TOPIC [--max-len N] [--max-age SECS] [--dedup-window SECS]
//! [--max-size BYTES]`: changes the given settings of a topic (the others keep their values)
//! and prints the settings in force as one JSON object, with the topic.

use clap::Args;
use herald::SettingsChange;

use super::{check_topic, connect, parse_millis, GlobalArgs};
use crate::exit::Failure;
use crate::output::{JsonLines, SettingsLine};

/// Arguments of `herald configure`.
#[derive(Debug, Args)]
pub(crate) struct ConfigureArgs {
    /// The topic to configure
    topic: String,

    /// Keep at most N messages in history (at least 1)
    #[arg(long, value_name = "N")]
    max_len: Option<u64>,

    /// Drop messages older than SECS from history; 0 removes the age limit
    #[arg(long, value_name = "SECS", value_parser = parse_millis)]
    max_age: Option<u64>,

    /// Remember idempotency keys for SECS (a publish repeating a key within it is a duplicate)
    #[arg(long, value_name = "SECS", value_parser = parse_millis)]
    dedup_window: Option<u64>,

    /// Reject payloads larger than BYTES (1 byte to 512 MiB)
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
}

/// Runs `herald configure`.
pub(crate) async fn run(global: &GlobalArgs, args: ConfigureArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    if args.max_len.is_none()
        && args.max_age.is_none()
        && args.dedup_window.is_none()
        && args.max_size.is_none()
    {
        return Err(Failure::bad_input(
            "nothing to change: give at least one of --max-len, --max-age, --dedup-window, \
             --max-size (`herald inspect TOPIC` shows the current settings)",
        ));
    }
    let mut change = SettingsChange::default();
    change.max_len = args.max_len;
    change.max_age_ms = args.max_age;
    change.dedup_window_ms = args.dedup_window;
    change.max_size = args.max_size;
    let herald = connect(global).await?;
    let settings = herald.configure(&args.topic, change).await?;
    JsonLines::stdout()
        .emit(&SettingsLine {
            topic: &args.topic,
            settings,
        })
        .map_err(|e| Failure::stdout(&e))
}
