//! Broker primitives for work groups (`crate::work`; wire format in `docs/PROTOCOL.md`,
//! "Work groups (v1)"): each is one atomic step on the broker (in Redis, one call of
//! `lua/work.lua`), timed by the broker's clock. The embedded broker implements the same
//! state machine in `embedded/work.rs`.

use serde::Deserialize;

use super::{Broker, Slot};
use crate::error::Result;
use crate::position::Epoch;

/// What a claim needs to know about the topic (read by the caller just before).
#[derive(Debug, Clone)]
pub(crate) struct ClaimArgs {
    /// How many deliveries to hand out at most.
    pub(crate) max: usize,
    pub(crate) lease_ms: u64,
    pub(crate) max_deliveries: u32,
    pub(crate) ttl_ms: u64,
    /// The topic's epoch, first retained offset (last + 1 when history is empty) and last.
    pub(crate) epoch: Epoch,
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Where a group created by this claim starts.
    pub(crate) start: u64,
    /// When `epoch` continues the log of an earlier epoch (a change of writing server): that
    /// epoch and `epoch`'s first offset. A group still on it keeps its jobs below the boundary.
    pub(crate) continues: Option<(Epoch, u64)>,
    /// Ordered mode: the order keys (empty: none) of the offsets from `.0` on; fresh offsets
    /// are handed out only among them, one at a time per key.
    pub(crate) ordered: Option<(u64, Vec<String>)>,
}

/// One offset handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
    /// True: no more deliveries; the holder must dead-letter it (then `DeadDone`).
    pub(crate) dead: bool,
    /// The last error a member gave (or why the previous lease ended).
    pub(crate) error: String,
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The holder is not live (expired or replaced): register a new incarnation.
    Gone,
    /// The group is already in a later epoch than the caller read.
    OldEpoch,
    Granted {
        /// The broker's clock at the claim.
        now_ms: u64,
        /// The group was in an earlier epoch: its state was dropped and it starts again.
        reset: bool,
        /// Offsets trimmed before the group handed them out (counted, now skipped).
        lost: u64,
        /// The group's `next` after the claim.
        next: u64,
        grants: Vec<Grant>,
    },
}

/// What a take (acks, then a claim on the topic's state as the broker sees it, with the
/// messages granted) did.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The result of each ack, in order.
    pub(crate) acks: Vec<OpResult>,
    /// `None`: the topic is not in the epoch given (read its head, then take again).
    pub(crate) claimed: Option<Claimed>,
    /// The topic's first retained offset (last + 1 when history is empty) and last offset,
    /// as the claim saw them.
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// History holding the granted offsets (a granted offset without a slot was trimmed).
    pub(crate) slots: Vec<Slot>,
}

/// An outcome for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Ack,
    Nak {
        delay_ms: u64,
        max_deliveries: u32,
        lease_ms: u64,
        error: String,
    },
    Progress {
        lease_ms: u64,
    },
    /// Not before `until_ms` (broker clock); this delivery does not count as an attempt.
    Defer {
        until_ms: u64,
    },
    Term {
        lease_ms: u64,
        error: String,
    },
    DeadDone,
    Lost,
}

impl Op {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Ack => "ACK",
            Op::Nak { .. } => "NAK",
            Op::Progress { .. } => "PROGRESS",
            Op::Defer { .. } => "DEFER",
            Op::Term { .. } => "TERM",
            Op::DeadDone => "DEADDONE",
            Op::Lost => "LOST",
        }
    }
}

/// The result of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpResult {
    Ok,
    /// No more deliveries: the caller now holds the dead-lettering of it.
    Dead,
    /// Not the current attempt of its holder.
    Stale,
}

/// A stored job record (the JSON value of the jobs hash in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct JobRecord {
    /// "run", "wait", "dead" or "blocked".
    pub(crate) s: String,
    pub(crate) a: u32,
    pub(crate) h: String,
    pub(crate) d: u64,
    #[serde(default)]
    pub(crate) t: u64,
    #[serde(default)]
    pub(crate) e: String,
    /// The order key, if any.
    #[serde(default)]
    pub(crate) k: String,
}

/// A group's stored state, as `STATE` reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupRecord {
    pub(crate) now_ms: u64,
    pub(crate) epoch: Option<Epoch>,
    pub(crate) next: u64,
    pub(crate) acked: u64,
    pub(crate) dead: u64,
    pub(crate) lost: u64,
    pub(crate) resets: u64,
    pub(crate) dlq: String,
    pub(crate) jobs: Vec<(u64, JobRecord)>,
    /// Holder and expiry.
    pub(crate) holders: Vec<(String, u64)>,
}

impl Broker {
    /// Registers a new incarnation of member `id`; earlier ones lose their leases at once.
    pub(crate) async fn work_register(
        &self,
        topic: &str,
        group: &str,
        id: &str,
        ttl_ms: u64,
        dlq: &str,
    ) -> Result<String> {
        match self {
            Broker::Redis(b) => b.work_register(topic, group, id, ttl_ms, dlq).await,
            Broker::Embedded(b) => Ok(b.work_register(topic, group, id, ttl_ms, dlq)),
        }
    }

    /// Refreshes a holder; false when it is gone (expired or replaced).
    pub(crate) async fn work_heartbeat(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<bool> {
        match self {
            Broker::Redis(b) => b.work_heartbeat(topic, group, holder, ttl_ms).await,
            Broker::Embedded(b) => Ok(b.work_heartbeat(topic, group, holder, ttl_ms)),
        }
    }

    /// Ends a holder: its leases are released at once.
    pub(crate) async fn work_leave(&self, topic: &str, group: &str, holder: &str) -> Result<()> {
        match self {
            Broker::Redis(b) => b.work_leave(topic, group, holder).await,
            Broker::Embedded(b) => {
                b.work_leave(topic, group, holder);
                Ok(())
            }
        }
    }

    /// Hands out up to `args.max` deliveries to `holder`.
    pub(crate) async fn work_claim(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        args: ClaimArgs,
    ) -> Result<Claimed> {
        match self {
            Broker::Redis(b) => b.work_claim(topic, group, holder, args).await,
            Broker::Embedded(b) => Ok(b.work_claim(topic, group, holder, args)),
        }
    }

    /// Reports an outcome for attempt `attempt` of `offset`, held by `holder`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn work_outcome(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        epoch: Epoch,
        offset: u64,
        attempt: u32,
        op: &Op,
    ) -> Result<OpResult> {
        match self {
            Broker::Redis(b) => {
                b.work_outcome(topic, group, holder, epoch, offset, attempt, op)
                    .await
            }
            Broker::Embedded(b) => {
                Ok(b.work_outcome(topic, group, holder, epoch, offset, attempt, op))
            }
        }
    }

    /// Acks several deliveries of `holder` in `epoch` (offset, attempt) in one step; each is
    /// answered as [`Op::Ack`] alone would be.
    pub(crate) async fn work_acks(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        epoch: Epoch,
        acks: &[(u64, u32)],
    ) -> Result<Vec<OpResult>> {
        match self {
            Broker::Redis(b) => b.work_acks(topic, group, holder, epoch, acks).await,
            Broker::Embedded(b) => Ok(acks
                .iter()
                .map(|(offset, attempt)| {
                    b.work_outcome(topic, group, holder, epoch, *offset, *attempt, &Op::Ack)
                })
                .collect()),
        }
    }

    /// Acks several deliveries of `holder` in `args.epoch` (as [`Broker::work_acks`]), then
    /// claims (as [`Broker::work_claim`]) with the topic's first and last offsets as the
    /// broker sees them (`args.first` and `args.last` are ignored; `args.start` 0 means the
    /// first retained offset), and returns the history holding the granted offsets: one
    /// step on Redis (`TAKE`). Not for ordered groups.
    pub(crate) async fn work_take(
        &self,
        topic: &str,
        group: &str,
        holder: &str,
        mut args: ClaimArgs,
        acks: &[(u64, u32)],
    ) -> Result<Taken> {
        if let Broker::Redis(b) = self {
            return b.work_take(topic, group, holder, args, acks).await;
        }
        let acks = self
            .work_acks(topic, group, holder, args.epoch, acks)
            .await?;
        let head = self.read(topic, 1, 0).await?;
        let mut taken = Taken {
            acks,
            claimed: None,
            first: 0,
            last: head.last,
            slots: Vec::new(),
        };
        if head.epoch != Some(args.epoch) {
            return Ok(taken);
        }
        taken.first = if head.first == 0 {
            head.last + 1
        } else {
            head.first
        };
        args.first = taken.first;
        args.last = head.last;
        if args.start == 0 {
            args.start = taken.first;
        }
        let epoch = args.epoch;
        let claimed = self.work_claim(topic, group, holder, args).await?;
        if let Claimed::Granted { grants, .. } = &claimed {
            let mut offsets: Vec<u64> = grants.iter().map(|g| g.offset).collect();
            offsets.sort_unstable();
            for o in offsets {
                if taken.slots.last().is_some_and(|s| s.offset() >= o) {
                    continue;
                }
                let r = self.read(topic, o, 1).await?;
                if r.epoch != Some(epoch) {
                    break;
                }
                taken
                    .slots
                    .extend(r.slots.into_iter().filter(|s| s.offset() >= o));
            }
        }
        taken.claimed = Some(claimed);
        Ok(taken)
    }

    /// A group's state; `None` when it does not exist.
    pub(crate) async fn work_state(&self, topic: &str, group: &str) -> Result<Option<GroupRecord>> {
        match self {
            Broker::Redis(b) => b.work_state(topic, group).await,
            Broker::Embedded(b) => Ok(b.work_state(topic, group)),
        }
    }

    /// The names of the groups of `topic`, sorted.
    pub(crate) async fn work_groups(&self, topic: &str) -> Result<Vec<String>> {
        match self {
            Broker::Redis(b) => b.work_groups(topic).await,
            Broker::Embedded(b) => Ok(b.work_groups(topic)),
        }
    }
}
