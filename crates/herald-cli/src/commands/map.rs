//! `herald map get|put|del|watch`: replicated maps (`herald::map`) from the command line.
//!
//! Output, one JSON line each (values are printed as UTF-8 text, invalid bytes replaced;
//! revisions as `EPOCH:OFFSET`):
//! - `get MAP KEY`: `{"map":..,"key":..,"value":..|null,"revision":..|null}`;
//! - `get MAP`: `{"type":"snapshot","map":..,"revision":..,"entries":{KEY:{"value":..,"revision":..}}}`;
//! - `put` / `del`: `{"map":..,"key":..,"revision":..}` (`del` of a missing key: `null`);
//! - `watch`: first the snapshot line, then `{"type":"changed","key","value","revision"}`,
//!   `{"type":"deleted","key","revision"}`, `{"type":"reset","last"}` and later snapshots
//!   (`"reason":"resync"|"reset"`).
//!
//! A lost compare-and-set (`--expect`, `--absent`) exits with status 6 and says the key's
//! current revision.
//!
//! `watch --join GROUP` joins GROUP and reports each printed event as applied by that member;
//! `put`/`del --wait-all GROUP [--timeout SECS]` then waits until every live member of GROUP
//! applied the change, prints the report (`{"event":"acks",..,"acked":[..],"pending":[..]}`)
//! and exits with status 5 unless all did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt;
use herald::{Expect, MapEvent, Revision, SnapshotReason, Versioned};
use serde::Serialize;

use super::{connect, parse_duration, GlobalArgs};
use crate::exit::{Failure, CONFLICT};
use crate::output::JsonLines;

/// Arguments of `herald map`.
#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    #[command(subcommand)]
    command: MapCommand,
}

#[derive(Debug, Subcommand)]
enum MapCommand {
    /// Print one key (value and revision), or the whole map as one snapshot line
    Get {
        /// The map
        map: String,
        /// The key (default: the whole map)
        key: Option<String>,
    },
    /// Set KEY to VALUE and print the change's revision
    Put {
        /// The map
        map: String,
        /// The key
        key: String,
        /// The value
        value: String,
        /// Only if the key's current revision is REV (EPOCH:OFFSET); else exit status 6
        #[arg(long, value_name = "REV", conflicts_with = "absent")]
        expect: Option<Revision>,
        /// Only if the key does not exist; else exit status 6
        #[arg(long)]
        absent: bool,
        /// Then wait until every live member of GROUP watching the map (`herald map watch
        /// --join GROUP`) applied the change, print the report as one JSON line, and exit
        /// with status 5 unless all did within --timeout
        #[arg(long, value_name = "GROUP")]
        wait_all: Option<String>,
        /// How long --wait-all waits
        #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_duration, requires = "wait_all")]
        timeout: Duration,
    },
    /// Delete KEY and print the change's revision (null when it did not exist)
    Del {
        /// The map
        map: String,
        /// The key
        key: String,
        /// Only if the key's current revision is REV (EPOCH:OFFSET); else exit status 6
        #[arg(long, value_name = "REV")]
        expect: Option<Revision>,
        /// Then wait until every live member of GROUP watching the map applied the delete
        /// (exit status 5 unless all did within --timeout)
        #[arg(long, value_name = "GROUP")]
        wait_all: Option<String>,
        /// How long --wait-all waits
        #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_duration, requires = "wait_all")]
        timeout: Duration,
    },
    /// Print the map's snapshot, then every change, one JSON line each
    Watch {
        /// The map
        map: String,
        /// Exit after printing N lines (the snapshot counts)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Exit after SECS seconds without any event
        #[arg(long, value_name = "SECS", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Join GROUP as a member and report every printed event as applied by it, so that
        /// `herald map put --wait-all GROUP` waits for this watcher
        #[arg(long, value_name = "GROUP")]
        join: Option<String>,
        /// The member id with --join (default: this node's id)
        #[arg(long = "id", value_name = "ID", requires = "join")]
        member_id: Option<String>,
    },
}

#[derive(Serialize)]
struct KeyLine<'a> {
    map: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Option<String>>,
    revision: Option<String>,
}

#[derive(Serialize)]
struct EntryLine {
    value: String,
    revision: String,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WatchLine<'a> {
    Snapshot {
        map: &'a str,
        revision: Option<String>,
        reason: SnapshotReason,
        entries: BTreeMap<String, EntryLine>,
    },
    Changed {
        key: String,
        value: String,
        revision: String,
    },
    Deleted {
        key: String,
        revision: String,
    },
    Reset {
        last: Option<String>,
    },
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn entries(e: BTreeMap<String, Versioned>) -> BTreeMap<String, EntryLine> {
    e.into_iter()
        .map(|(k, v)| {
            let line = EntryLine {
                value: text(&v.value),
                revision: v.revision.to_string(),
            };
            (k, line)
        })
        .collect()
}

/// A lost compare-and-set: status 6, with the key's current revision.
fn conflict(e: herald::Error) -> Failure {
    match e {
        herald::Error::Conflict { .. } => Failure::new(CONFLICT, e.to_string()),
        other => other.into(),
    }
}

/// Runs `herald map`.
pub(crate) async fn run(global: &GlobalArgs, args: MapArgs) -> Result<(), Failure> {
    let herald = connect(global).await?;
    let mut out = JsonLines::stdout();
    let w = |e: std::io::Error| Failure::stdout(&e);
    match args.command {
        MapCommand::Get {
            map,
            key: Some(key),
        } => {
            let m = herald.map(&map)?;
            let v = m.get(&key).await?;
            out.write(&KeyLine {
                map: &map,
                key: &key,
                value: Some(v.as_ref().map(|v| text(&v.value))),
                revision: v.map(|v| v.revision.to_string()),
            })
            .map_err(w)?;
        }
        MapCommand::Get { map, key: None } => {
            let s = herald.map(&map)?.snapshot().await?;
            out.write(&WatchLine::Snapshot {
                map: &map,
                revision: s.revision.map(|r| r.to_string()),
                reason: SnapshotReason::Initial,
                entries: entries(s.entries),
            })
            .map_err(w)?;
        }
        MapCommand::Put {
            map,
            key,
            value,
            expect,
            absent,
            wait_all,
            timeout,
        } => {
            let m = herald.map(&map)?;
            let expect = match (expect, absent) {
                (Some(r), _) => Some(Expect::Revision(r)),
                (None, true) => Some(Expect::Absent),
                (None, false) => None,
            };
            let rev = match expect {
                Some(e) => m.put_if(&key, &value, e).await.map_err(conflict)?,
                None => m.put(&key, &value).await?,
            };
            out.write(&KeyLine {
                map: &map,
                key: &key,
                value: None,
                revision: Some(rev.to_string()),
            })
            .map_err(w)?;
            if let Some(group) = wait_all {
                out.flush().map_err(w)?;
                wait_applied(&m, rev, &group, timeout, &mut out).await?;
            }
        }
        MapCommand::Del {
            map,
            key,
            expect,
            wait_all,
            timeout,
        } => {
            let m = herald.map(&map)?;
            let rev = match expect {
                Some(r) => Some(m.delete_if(&key, r).await.map_err(conflict)?),
                None => m.delete(&key).await?,
            };
            out.write(&KeyLine {
                map: &map,
                key: &key,
                value: None,
                revision: rev.map(|r| r.to_string()),
            })
            .map_err(w)?;
            if let (Some(group), Some(rev)) = (wait_all, rev) {
                out.flush().map_err(w)?;
                wait_applied(&m, rev, &group, timeout, &mut out).await?;
            }
        }
        MapCommand::Watch {
            map,
            count,
            timeout,
            join,
            member_id,
        } => {
            // Held for the watch's life: the member heartbeats until the command ends.
            let mut member = None;
            let mut watch = match join {
                Some(group) => {
                    let mut builder = herald.join(group);
                    if let Some(id) = member_id {
                        builder = builder.id(id);
                    }
                    let m = builder.await?;
                    let watch = herald.map(&map)?.watch_as(m.id()).await?;
                    member = Some(m);
                    watch
                }
                None => herald.map(&map)?.watch().await?,
            };
            let mut printed = 0u64;
            loop {
                if count.is_some_and(|n| printed >= n) {
                    break;
                }
                let event = match timeout {
                    Some(d) => {
                        match tokio::time::timeout_at((Instant::now() + d).into(), watch.next())
                            .await
                        {
                            Ok(e) => e,
                            Err(_) => break,
                        }
                    }
                    None => watch.next().await,
                };
                let line = match event {
                    None => break,
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(MapEvent::Snapshot {
                        entries: e,
                        revision,
                        reason,
                    })) => WatchLine::Snapshot {
                        map: &map,
                        revision: revision.map(|r| r.to_string()),
                        reason,
                        entries: entries(e),
                    },
                    Some(Ok(MapEvent::Changed {
                        key,
                        value,
                        revision,
                    })) => WatchLine::Changed {
                        key,
                        value: text(&value),
                        revision: revision.to_string(),
                    },
                    Some(Ok(MapEvent::Deleted { key, revision })) => WatchLine::Deleted {
                        key,
                        revision: revision.to_string(),
                    },
                    Some(Ok(MapEvent::Reset { last })) => WatchLine::Reset {
                        last: last.map(|r| r.to_string()),
                    },
                    Some(Ok(_)) => continue,
                };
                out.write(&line).map_err(w)?;
                out.flush().map_err(w)?;
                // Printed is applied, for `--join`.
                watch.applied().await?;
                printed += 1;
            }
            if let Some(m) = member {
                m.leave().await?;
            }
        }
    }
    out.flush().map_err(w)
}

/// `--wait-all GROUP`: waits until the members of `group` applied `rev`, prints the report
/// (`{"event":"acks",..}`, as `herald publish --wait-all` does) and fails with status 5 unless
/// all did within `timeout`.
async fn wait_applied(
    m: &herald::Map,
    rev: Revision,
    group: &str,
    timeout: Duration,
    out: &mut JsonLines<std::io::Stdout>,
) -> Result<(), Failure> {
    let report = m.wait_applied(rev, group).timeout(timeout).await?;
    let what = format!("apply revision {rev} of map {:?}", m.name());
    super::wait_all::print_report(&report, group, &what, m.topic(), timeout, out)
}
