//! `herald join GROUP [--id ID] [--meta K=V]... [--ttl SECS] [--ack TOPIC]...`: joins a member
//! group and heartbeats until interrupted (Ctrl-C or SIGTERM), then leaves.
//!
//! Prints one JSON line when it has joined (`{"event":"joined","member":{..}}`) and one when
//! it has left (`{"event":"left","member":{..}}`). With `--ack TOPIC`, it also follows TOPIC
//! with a durable cursor named after the member id and commits every message as soon as it
//! is received (printing `{"event":"acked","topic":..,"epoch":..,"offset":..}`), which is what
//! `herald publish ... --wait-all GROUP` waits for.

use std::time::Duration;

use clap::Args;
use herald::{Event, Start};

use super::{connect, parse_duration, shutdown_signal, GlobalArgs};
use crate::exit::Failure;
use crate::output::{AckedLine, JsonLines, MemberLine};

/// Arguments of `herald join`.
#[derive(Debug, Args)]
#[command(
    long_about = "Join a member group and heartbeat until interrupted (Ctrl-C or SIGTERM), then \
leave. Prints {\"event\":\"joined\",\"member\":{..}} once joined and {\"event\":\"left\",..} once \
left. A member killed without leaving expires after --ttl seconds and every watcher sees it \
`Expired`.\n\n\
With --ack TOPIC (repeatable), the member also acknowledges every message published on TOPIC \
after it joined: it commits a durable cursor named after its member id, which is what \
`herald publish TOPIC DATA --wait-all GROUP` waits for, and prints \
{\"event\":\"acked\",\"topic\":..,\"epoch\":..,\"offset\":..} per message.",
    after_help = "Examples:\n  \
herald join web --id web-1 --meta address=10.0.0.1:8080 --meta version=2.3\n  \
herald join web --id web-2 --ack config"
)]
pub(crate) struct JoinArgs {
    /// The group to join
    group: String,

    /// The member id (also the name of its durable cursors) [default: the node id,
    /// host-pid]
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// A metadata entry NAME=VALUE (split at the first `=`); repeat for several
    #[arg(long = "meta", value_name = "K=V", value_parser = super::parse_key_value)]
    meta: Vec<(String, String)>,

    /// Seconds without a heartbeat after which the member expires
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_duration)]
    ttl: Duration,

    /// Acknowledge every message of this topic by committing the cursor named after the
    /// member id; repeat for several topics
    #[arg(long = "ack", value_name = "TOPIC")]
    ack: Vec<String>,
}

/// Runs `herald join`.
pub(crate) async fn run(global: &GlobalArgs, args: JoinArgs) -> Result<(), Failure> {
    herald::membership::validate_group(&args.group)?;
    if let Some(id) = &args.id {
        herald::membership::validate_member_id(id)?;
    }
    for topic in &args.ack {
        super::check_topic(topic)?;
    }
    if args.ttl < Duration::from_millis(100) {
        return Err(Failure::bad_input("--ttl must be at least 0.1 seconds"));
    }
    let herald = connect(global).await?;
    let id = args.id.unwrap_or_else(|| herald.node_id().to_string());
    // Follow the acknowledged topics before joining, so that nothing published once the
    // member is visible goes unacknowledged.
    let mut acks = if args.ack.is_empty() {
        None
    } else {
        Some(
            herald
                .subscribe(args.ack.iter().cloned())
                .durable(id.as_str())
                .from(Start::Latest)
                .await?,
        )
    };
    let membership = herald
        .join(args.group.as_str())
        .id(id.as_str())
        .metadata(args.meta)
        .ttl(args.ttl)
        .await?;
    let mut out = JsonLines::stdout();
    out.emit(&MemberLine {
        event: "joined",
        member: membership.member(),
    })
    .map_err(|e| Failure::stdout(&e))?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let next = async {
            match acks.as_mut() {
                Some(sub) => sub.next_event().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            event = next => match event {
                Some(Ok(Event::Message(d))) => {
                    if let Some(sub) = acks.as_ref() {
                        sub.commit(&d).await?;
                    }
                    out.emit(&AckedLine { event: "acked", topic: &d.topic, epoch: d.position.epoch, offset: d.position.offset })
                        .map_err(|e| Failure::stdout(&e))?;
                }
                Some(Ok(other)) => tracing::warn!(event = ?other, "acknowledged topic lost messages"),
                Some(Err(e)) => tracing::warn!(error = %e, "following an acknowledged topic failed; retrying"),
                None => return Err(Failure::other("the acknowledged topics' subscription ended")),
            }
        }
    }
    drop(acks);
    let mut member = membership.member().clone();
    member.joined_at_ms = membership.joined_at_ms();
    membership.leave().await?;
    out.emit(&MemberLine {
        event: "left",
        member: &member,
    })
    .map_err(|e| Failure::stdout(&e))
}
