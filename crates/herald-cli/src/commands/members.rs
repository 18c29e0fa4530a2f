//! `herald members [GROUP]`: prints the live members of GROUP, one JSON line each:
//! `{"group":..,"id":..,"meta":{..},"joined_at_ms":..,"heartbeat_ms":..,"expires_at_ms":..}`.
//! Without GROUP, prints the live members of every group of the namespace (found with
//! `SCAN`), group by group.

use clap::Args;

use super::{connect, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald members`.
#[derive(Debug, Args)]
#[command(
    long_about = "Print the live members of a group, one JSON line each: \
{\"group\":..,\"id\":..,\"meta\":{..},\"joined_at_ms\":..,\"heartbeat_ms\":..,\"expires_at_ms\":..} \
(times in milliseconds since the Unix epoch, by the Redis server's clock). Without GROUP, \
the members of every group in the namespace. Prints nothing when there is no live member.",
    after_help = "Examples:\n  herald members web\n  herald members | jq -r .id"
)]
pub(crate) struct MembersArgs {
    /// The group; omitted: every group of the namespace
    group: Option<String>,
}

/// Runs `herald members`.
pub(crate) async fn run(global: &GlobalArgs, args: MembersArgs) -> Result<(), Failure> {
    if let Some(group) = &args.group {
        herald::membership::validate_group(group)?;
    }
    let herald = connect(global).await?;
    let groups = match args.group {
        Some(group) => vec![group],
        None => herald.member_groups().await?,
    };
    let mut out = JsonLines::stdout();
    for group in groups {
        for member in herald.members(&group).await? {
            out.write(&member).map_err(|e| Failure::stdout(&e))?;
        }
    }
    out.flush().map_err(|e| Failure::stdout(&e))
}
