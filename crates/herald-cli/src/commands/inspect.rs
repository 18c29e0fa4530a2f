//! `herald inspect TOPIC`: prints a topic's state (epoch, retained range, settings, durable
//! cursors and their lag) as one JSON object, as the library's `TopicInfo` serialises it.

use clap::Args;

use super::{check_topic, connect, GlobalArgs};
use crate::exit::Failure;
use crate::output::JsonLines;

/// Arguments of `herald inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The topic to inspect
    topic: String,
}

/// Runs `herald inspect`.
pub(crate) async fn run(global: &GlobalArgs, args: InspectArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    let herald = connect(global).await?;
    let info = herald.inspect(&args.topic).await?;
    JsonLines::stdout()
        .emit(&info)
        .map_err(|e| Failure::stdout(&e))
}
