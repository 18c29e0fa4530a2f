//! `herald groups TOPIC`: prints every work group of TOPIC with its visible state, one JSON
//! line each (the library's `herald::GroupInfo`):
//! `{"topic","group","epoch","next_offset","in_flight":[{"offset","holder","attempt","expires_in_ms"}],
//! "waiting_retries","dead_pending","acked","dead_lettered","lost","resets",
//! "oldest_unfinished_age_ms","lag","dead_letter_topic","members"}`.

use clap::Args;

use super::{check_topic, connect, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald groups`.
#[derive(Debug, Args)]
#[command(long_about = "Print every work group of a topic, one JSON line each: \
{\"topic\":..,\"group\":..,\"epoch\":..,\"next_offset\":..,\"in_flight\":[{\"offset\":..,\
\"holder\":..,\"attempt\":..,\"expires_in_ms\":..}],\"waiting_retries\":..,\"dead_pending\":..,\
\"acked\":..,\"dead_lettered\":..,\"lost\":..,\"resets\":..,\"oldest_unfinished_age_ms\":..,\
\"lag\":..,\"dead_letter_topic\":..,\"members\":[..]}. `next_offset` is the first offset the \
group never handed out; `lag` counts the messages it has not finished; `dead_letter_topic` \
can be followed with `herald tail`.")]
pub(crate) struct GroupsArgs {
    /// The topic
    topic: String,
}

/// Runs `herald groups`.
pub(crate) async fn run(global: &GlobalArgs, args: GroupsArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    let herald = connect(global).await?;
    let mut out = JsonLines::stdout();
    for group in herald.work_groups(&args.topic).await? {
        out.write(&group).map_err(|e| Failure::stdout(&e))?;
    }
    out.flush().map_err(|e| Failure::stdout(&e))
}
