//! `herald lag TOPIC`: prints every durable cursor of TOPIC with its committed offset, lag in
//! messages and the age of its last commit, one JSON line each:
//! `{"topic":..,"cursor":..,"epoch":..,"offset":..,"last_offset":..,"lag":..,"committed_at_ms":..,"age_ms":..}`.

use clap::Args;

use super::{check_topic, connect, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald lag`.
#[derive(Debug, Args)]
#[command(
    long_about = "Print every durable cursor of a topic, one JSON line each: \
{\"topic\":..,\"cursor\":..,\"epoch\":..,\"offset\":..,\"last_offset\":..,\"lag\":..,\
\"committed_at_ms\":..,\"age_ms\":..}. `lag` counts the messages published after the committed \
offset (every message of the current epoch when the cursor belongs to an older one); `age_ms` \
is how long ago the cursor was last committed. Members acknowledge through cursors named \
after their member id, so this is also each member's backlog."
)]
pub(crate) struct LagArgs {
    /// The topic
    topic: String,
}

/// Runs `herald lag`.
pub(crate) async fn run(global: &GlobalArgs, args: LagArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    let herald = connect(global).await?;
    let mut out = JsonLines::stdout();
    for cursor in herald.lag(&args.topic).await? {
        out.write(&cursor).map_err(|e| Failure::stdout(&e))?;
    }
    out.flush().map_err(|e| Failure::stdout(&e))
}
