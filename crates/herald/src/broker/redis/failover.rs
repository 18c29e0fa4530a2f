//! Following a Sentinel failover as the sentinels announce it (feature `sentinel`).
//!
//! A Sentinel-backed broker runs one background task per sentinel, subscribed to the
//! sentinel's Pub/Sub events (reconnecting with [`Backoff`]), and one task that acts on them:
//!
//! - **Failover started** (`+odown` of the primary, `+try-failover`, `+elected-leader`,
//!   `+failover-state-*`, `+selected-slave`): the [`Fence`] closes. New publishes (and every
//!   other write, through `RedisBroker::retry_write` in `fenced.rs`) wait
//!   (within their operation deadline) instead of writing to a primary that is about to be
//!   replaced; a publish whose reply arrives after the fence closed is not acknowledged but
//!   sent again, with the same idempotency keys, once the fence opens, so that its receipt
//!   names where the write is on the primary that stays (the sentinels send `REPLICAOF NO ONE`
//!   one or more of their ticks after announcing the failover, so every write acknowledged
//!   before the fence closed has long reached the replicas on a healthy link).
//! - **Switch done** (`+promoted-slave` from the leader, `+switch-master` from any): the
//!   command connection and the Pub/Sub client move to the new primary (after checking that
//!   it answers `ROLE` as a master), live feeds end so that subscriptions re-subscribe there,
//!   and the fence opens.
//! - **Failover aborted** (`-failover-abort-*`, `+failover-end-for-timeout`, `-odown`): the
//!   fence opens and the primary is asked again.
//!
//! A fence closed for more than [`RECHECK_AFTER`] is checked against the sentinels' own view
//! (`SENTINEL MASTER` flags `failover_in_progress`, `o_down`) on every tick, so that a missed
//! event cannot hold publishes for good; a sentinel connection that is (re-)established
//! triggers the same check, since events may have been missed while it was down.
//!
//! The primary Herald follows is the one named by the sentinel with the highest
//! `config-epoch`, and never one named under an epoch no higher than the one in use: a
//! sentinel that has not heard of a switch yet (it still names the replaced primary, under
//! the epoch Herald already follows) cannot send Herald back to the old primary while that
//! still answers as a master. An announced switch counts as newer than the primary in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::{RedisError, Value};
use tokio::sync::{mpsc, watch};

use super::topology::SentinelTarget;
use super::{timed_out, Inner, RedisBroker};
use crate::retry::Backoff;

/// How long a closed fence waits for an announcement before the sentinels are asked.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// How often the acting task wakes up without announcements.
const TICK: Duration = Duration::from_millis(250);
/// How long one publish attempt waits for a closed fence before retrying.
pub(super) const FENCE_SLICE: Duration = Duration::from_millis(500);
/// How a sentinel subscription paces its reconnections.
const LISTEN_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// The sentinels' event channels Herald listens to.
const CHANNELS: &[&str] = &[
    "+odown",
    "-odown",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "+switch-master",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+failover-end-for-timeout",
];

/// Whether publishes may write: closed while the sentinels replace the primary.
#[derive(Debug)]
pub(super) struct Fence {
    /// How many times the fence closed: a publish that saw it change while it ran is sent
    /// again.
    closings: AtomicU64,
    state: watch::Sender<FenceState>,
    /// The `config-epoch` of the primary in use, as the sentinels reported it.
    epoch: AtomicU64,
    /// Bumped on every switch of primary; live feeds end when it changes.
    switches: watch::Sender<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct FenceState {
    /// The sentinels agree that the primary is down.
    odown: bool,
    /// A failover is under way.
    failover: bool,
    /// Since when the fence is closed.
    since: Option<Instant>,
}

impl FenceState {
    fn closed(&self) -> bool {
        self.odown || self.failover
    }
}

impl Default for Fence {
    fn default() -> Self {
        Fence::at_epoch(0)
    }
}

impl Fence {
    /// An open fence for a primary the sentinels name under `config-epoch` `epoch`.
    pub(super) fn at_epoch(epoch: u64) -> Self {
        Fence {
            closings: AtomicU64::new(0),
            state: watch::Sender::new(FenceState::default()),
            epoch: AtomicU64::new(epoch),
            switches: watch::Sender::new(0),
        }
    }

    /// How many times the fence closed so far.
    pub(super) fn closings(&self) -> u64 {
        self.closings.load(Ordering::SeqCst)
    }

    /// Changes whenever the fence closes or the primary in use changes: a write that saw it
    /// change while it ran may have gone to a replaced primary.
    pub(super) fn era(&self) -> (u64, u64) {
        (self.closings(), *self.switches.borrow())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.state.borrow().closed()
    }

    /// Waits until the fence is open, at most `limit`.
    pub(super) async fn wait_open(&self, limit: Duration) {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| !s.closed())).await;
    }

    /// Follows the switches of primary (for live feeds).
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut FenceState)) {
        self.state.send_modify(|s| {
            let was = s.closed();
            change(s);
            match (was, s.closed()) {
                (false, true) => {
                    self.closings.fetch_add(1, Ordering::SeqCst);
                    s.since = Some(Instant::now());
                    tracing::info!("Sentinel failover under way: publishes wait for the switch");
                }
                (true, false) => {
                    s.since = None;
                    tracing::info!("Sentinel failover over: publishes resume");
                }
                _ => {}
            }
        });
    }
}

/// The error of a publish attempt held back by a failover (transient: retried).
pub(super) fn failing_over() -> RedisError {
    timed_out("the primary is being replaced (Sentinel failover); retrying on the new primary")
}

/// Why Herald would move to another primary.
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// The sentinels announced a switch to it (`+promoted-slave`, `+switch-master`): newer
    /// than the primary in use, whose `config-epoch` it exceeds.
    Announced,
    /// A sentinel names it under this `config-epoch`: followed only when that is higher
    /// than the primary in use's (a sentinel that has not heard of a switch yet names the
    /// replaced primary under the epoch Herald already follows).
    Named(u64),
}

impl Claim {
    /// Whether it names a primary newer than the one in use, named under `current`.
    fn newer_than(self, current: u64) -> bool {
        match self {
            Claim::Announced => true,
            Claim::Named(e) => e > current,
        }
    }
}

/// What a sentinel's subscription reports.
#[derive(Debug)]
enum Heard {
    /// (Re)subscribed: events may have been missed.
    Connected,
    /// An event about our primary: channel, then the message's words.
    Event(String, Vec<String>),
}

/// Starts the tasks that follow `broker`'s sentinels; they end when the broker is dropped.
pub(super) fn spawn(broker: &RedisBroker, s: &SentinelTarget) {
    let (tx, rx) = mpsc::unbounded_channel();
    for sentinel in &s.sentinels {
        let client = match s.sentinel_client(sentinel) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(sentinel, error = %e, "cannot follow this sentinel's announcements");
                continue;
            }
        };
        tokio::spawn(listen(
            sentinel.to_string(),
            client,
            s.master.clone(),
            tx.clone(),
        ));
    }
    tokio::spawn(act(Arc::downgrade(&broker.inner), rx));
}

/// One sentinel's subscription, reconnected until the acting task ends.
async fn listen(
    sentinel: String,
    client: redis::Client,
    master: String,
    tx: mpsc::UnboundedSender<Heard>,
) {
    let mut backoff = LISTEN_BACKOFF;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNELS).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            s = tokio::time::timeout(Duration::from_secs(5), subscribed) => s,
            _ = tx.closed() => return,
        };
        match subscribed {
            Ok(Ok(pubsub)) => {
                backoff.reset();
                if tx.send(Heard::Connected).is_err() {
                    return;
                }
                let mut stream = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = tx.closed() => return,
                    };
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name().to_string();
                    let text = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
                    if about(&channel, &words) == Some(master.as_str())
                        && tx.send(Heard::Event(channel, words)).is_err()
                    {
                        return;
                    }
                }
                tracing::debug!(sentinel, "sentinel subscription ended; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(sentinel, error = %e, "cannot subscribe to sentinel"),
            Err(_) => tracing::debug!(sentinel, "sentinel subscription timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_pause()) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The primary's name an event is about: `+switch-master <name> ...`, `<type> <name> <ip>
/// <port> @ <master> <ip> <port>` for a replica or sentinel, `master <name> <ip> <port>`.
fn about<'a>(channel: &str, words: &'a [String]) -> Option<&'a str> {
    if channel == "+switch-master" {
        return words.first().map(String::as_str);
    }
    match words.iter().position(|w| w == "@") {
        Some(at) => words.get(at + 1).map(String::as_str),
        None if words.first().map(String::as_str) == Some("master") => {
            words.get(1).map(String::as_str)
        }
        None => None,
    }
}

/// Acts on what the sentinels announce, until the broker is dropped.
async fn act(broker: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Heard>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let heard = tokio::select! {
            h = rx.recv() => match h {
                Some(h) => Some(h),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let Some(inner) = broker.upgrade() else {
            return;
        };
        let b = RedisBroker { inner };
        let super::Target::Sentinel(s) = &b.inner.topology else {
            return;
        };
        match heard {
            Some(Heard::Event(channel, words)) => b.on_event(s, &channel, &words).await,
            Some(Heard::Connected) => b.recheck(s).await,
            None => {
                let since = b.inner.fence.state.borrow().since;
                if since.is_some_and(|t| t.elapsed() >= RECHECK_AFTER) {
                    b.recheck(s).await;
                }
            }
        }
    }
}

impl RedisBroker {
    async fn on_event(&self, s: &SentinelTarget, channel: &str, words: &[String]) {
        let fence = &self.inner.fence;
        tracing::debug!(channel, event = %words.join(" "), "sentinel announcement");
        match channel {
            "+odown" => fence.update(|f| f.odown = true),
            "-odown" => fence.update(|f| f.odown = false),
            "+try-failover"
            | "+elected-leader"
            | "+failover-state-select-slave"
            | "+selected-slave"
            | "+failover-state-send-slaveof-noone"
            | "+failover-state-wait-promotion" => fence.update(|f| f.failover = true),
            // `slave <ip:port> <ip> <port> @ <name> ...`: the leader saw it become a master.
            "+promoted-slave" => {
                if let Some(addr) = address(words.get(2), words.get(3)) {
                    if self.switch_to(s, addr, Claim::Announced).await {
                        fence.update(|f| {
                            f.failover = false;
                            f.odown = false;
                        });
                    }
                }
            }
            // `<name> <old-ip> <old-port> <new-ip> <new-port>`
            "+switch-master" => {
                if let Some(addr) = address(words.get(3), words.get(4)) {
                    if self.switch_to(s, addr, Claim::Announced).await {
                        fence.update(|f| {
                            f.failover = false;
                            f.odown = false;
                        });
                    }
                }
            }
            _ => {
                // An aborted failover: the primary stays (or the sentinels say which).
                fence.update(|f| f.failover = false);
                self.follow_sentinel(s).await;
            }
        }
    }

    /// Asks the sentinels whether a failover is under way and which primary they name, and
    /// opens or closes the fence accordingly.
    async fn recheck(&self, s: &SentinelTarget) {
        let timeout = self.inner.opts.response_timeout;
        let Ok(views) = s.views(timeout).await else {
            return; // no sentinel answered: keep the fence as it is
        };
        let failover = views.iter().any(|v| v.failover_in_progress);
        let odown = views.iter().any(|v| v.odown);
        if !failover && !odown {
            self.follow_sentinel(s).await;
        }
        self.inner.fence.update(|f| {
            f.failover = failover;
            f.odown = odown;
        });
    }

    /// With Sentinel: asks the sentinels for the primary and, when they name a new one under
    /// a higher `config-epoch`, connects to it.
    pub(super) async fn follow_sentinel(&self, s: &SentinelTarget) {
        let timeout = self.inner.opts.response_timeout;
        let views = match s.views(timeout).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "sentinels did not name a primary");
                return;
            }
        };
        let Some(best) = views.iter().max_by_key(|v| v.epoch) else {
            return;
        };
        self.switch_to(s, best.addr.clone(), Claim::Named(best.epoch))
            .await;
    }

    /// Moves the command connection and the Pub/Sub client to the primary at `addr`, after
    /// checking that it is a master and that `claim` is newer than the primary in use; true
    /// when `addr` is (now) the primary in use.
    ///
    /// The epoch check is made under the lock that serialises switches, so that a view read
    /// before an announced switch cannot send Herald back to the replaced primary (which
    /// still answers as a master until the sentinels demote it, and whose writes are then
    /// discarded).
    async fn switch_to(&self, s: &SentinelTarget, addr: (String, u16), claim: Claim) -> bool {
        let epoch = &self.inner.fence.epoch;
        let mut primary = self.inner.primary.lock().await;
        let current = epoch.load(Ordering::SeqCst);
        if primary.as_ref() == Some(&addr) {
            if let Claim::Named(e) = claim {
                epoch.fetch_max(e, Ordering::SeqCst);
            }
            return true;
        }
        if !claim.newer_than(current) {
            tracing::debug!(host = %addr.0, port = addr.1, ?claim, current,
                "a sentinel names another primary under an epoch not newer than the one in use; keeping it");
            return false;
        }
        let (host, port) = (addr.0.clone(), addr.1);
        let timeout = self.inner.opts.response_timeout;
        let opened = async {
            let client = s.data_client(&host, port)?;
            let mut m = client
                .get_connection_manager_with_config(self.inner.manager_config.clone())
                .await?;
            let role: Vec<Value> = match redis::cmd("ROLE").query_async(&mut m).await {
                Ok(role) => role,
                // A user without ROLE: trust the sentinels.
                Err(e) if e.code() == Some("NOPERM") => return Ok((client, m)),
                Err(e) => return Err(e),
            };
            match role.first() {
                Some(Value::BulkString(r)) if r == b"master" => Ok((client, m)),
                _ => Err(timed_out("the node the sentinels name is not a master yet")),
            }
        };
        match tokio::time::timeout(timeout, opened).await {
            Ok(Ok((client, m))) => {
                tracing::info!(master = %s.master, host = %host, port, "following the primary Sentinel names");
                *self.inner.conn.write().unwrap_or_else(|p| p.into_inner()) =
                    super::Conn::Single(m);
                *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) = client;
                *primary = Some(addr);
                // The epoch under which the sentinels name it (a later answer from a
                // sentinel that has not heard of the switch must not send Herald back): an
                // announced switch is at least one past the replaced primary's, and the
                // sentinels' views below raise it to the exact one.
                epoch.fetch_max(
                    match claim {
                        Claim::Named(e) => e,
                        Claim::Announced => current + 1,
                    },
                    Ordering::SeqCst,
                );
                self.inner.fence.switches.send_modify(|n| *n += 1);
                drop(primary);
                if let Ok(views) = s.views(timeout).await {
                    if let Some(e) = views
                        .iter()
                        .filter(|v| v.addr.0 == *host && v.addr.1 == port)
                        .map(|v| v.epoch)
                        .max()
                    {
                        epoch.fetch_max(e, Ordering::SeqCst);
                    }
                }
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, host = %host, port, "cannot use the primary Sentinel names yet");
                false
            }
            Err(_) => {
                tracing::debug!(host = %host, port, "no answer from the primary Sentinel names");
                false
            }
        }
    }
}

fn address(ip: Option<&String>, port: Option<&String>) -> Option<(String, u16)> {
    Some((ip?.clone(), port?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn events_name_their_primary() {
        let w = words("m 127.0.0.1 1 127.0.0.1 2");
        assert_eq!(about("+switch-master", &w), Some("m"));
        let w = words("master m 127.0.0.1 1");
        assert_eq!(about("+try-failover", &w), Some("m"));
        let w = words("slave 127.0.0.1:2 127.0.0.1 2 @ m 127.0.0.1 1");
        assert_eq!(about("+promoted-slave", &w), Some("m"));
        assert_eq!(
            address(w.get(2), w.get(3)),
            Some(("127.0.0.1".to_string(), 2))
        );
        assert_eq!(about("+try-failover", &words("sentinel x")), None);
    }

    #[test]
    fn only_a_newer_epoch_moves_herald() {
        // A sentinel that has not heard of the switch names the replaced primary under the
        // epoch Herald follows already: following it would write to a primary about to be
        // demoted, whose writes are then discarded.
        assert!(!Claim::Named(3).newer_than(3));
        assert!(!Claim::Named(2).newer_than(3));
        assert!(Claim::Named(4).newer_than(3));
        assert!(Claim::Announced.newer_than(3));
    }

    #[tokio::test]
    async fn the_fence_counts_closings() {
        let f = Fence::default();
        assert!(!f.is_closed());
        f.update(|s| s.failover = true);
        f.update(|s| s.odown = true);
        assert!(f.is_closed());
        assert_eq!(f.closings(), 1);
        f.update(|s| s.failover = false);
        assert!(f.is_closed(), "still down");
        f.update(|s| s.odown = false);
        f.wait_open(Duration::from_millis(1)).await;
        assert!(!f.is_closed());
    }
}
