//! Replicated maps (`herald::map`) on both backends: convergence under concurrent writers and
//! watchers, compare-and-set races, watchers that fall behind retention, late joiners, lost
//! state, bad input.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;
use support::on_both_backends;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use herald::map::apply;
use herald::{
    Error, Expect, MapEvent, MapLimits, MapWatch, Revision, SettingsChange, SnapshotReason,
};
use support::Backend;

on_both_backends!(
    convergence_of_writers_and_watchers,
    concurrent_cas_exactly_one_wins,
    watcher_behind_retention_gets_a_fresh_snapshot,
    late_joiner_gets_snapshot_then_tail,
    lost_state_is_a_reset_then_the_new_state,
    bad_input_is_refused_and_stores_nothing,
    map_changes_are_ordinary_topic_messages,
    put_and_wait_returns_once_every_member_applied,
    a_member_that_stops_applying_is_reported_not_applied,
    concurrent_changes_of_one_handle_apply_in_order_each_with_its_outcome,
);

type State = BTreeMap<String, Bytes>;

/// The next watch event, failing the test after a bounded wait.
async fn next(w: &mut MapWatch) -> MapEvent {
    match tokio::time::timeout(support::EVENT_WAIT, w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected a map event, got {other:?}"),
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a successful operation did, for the replay.
#[derive(Debug, Clone)]
struct Applied {
    rev: Revision,
    key: String,
    value: Option<Bytes>,
}

/// A watcher that applies events and checks its state at every revision against `reference`.
struct Follower {
    state: State,
    rev: Option<Revision>,
    resyncs: usize,
}

impl Follower {
    fn new() -> Self {
        Follower {
            state: State::new(),
            rev: None,
            resyncs: 0,
        }
    }

    fn on(&mut self, e: &MapEvent, reference: &BTreeMap<Revision, State>, who: &str) {
        assert!(
            !matches!(e, MapEvent::Reset { .. }),
            "{who}: no data was lost, yet {e:?}"
        );
        if let MapEvent::Snapshot { reason, .. } = e {
            if *reason != SnapshotReason::Initial {
                self.resyncs += 1;
            }
        }
        if let Some(rev) = apply(&mut self.state, e) {
            if let (Some(prev), Some(now)) = (self.rev, rev) {
                assert!(
                    now >= prev,
                    "{who}: revision went back from {prev} to {now}"
                );
            }
            self.rev = rev;
            if let Some(r) = rev {
                let expected = reference
                    .get(&r)
                    .unwrap_or_else(|| panic!("{who}: revision {r} was never applied by a writer"));
                assert_eq!(&self.state, expected, "{who}: state at revision {r}");
            }
        }
    }

    /// Drains `w` until it reaches `target`.
    async fn catch_up(
        &mut self,
        w: &mut MapWatch,
        target: Option<Revision>,
        reference: &BTreeMap<Revision, State>,
        who: &str,
    ) {
        for _ in 0..1_000_000 {
            if self.rev == target {
                return;
            }
            let e = next(w).await;
            self.on(&e, reference, who);
        }
        panic!("{who} never reached {target:?}");
    }
}

/// Replays the writers' successful operations in revision order: the state at each revision.
fn replay(mut applied: Vec<Applied>) -> BTreeMap<Revision, State> {
    applied.sort_by_key(|a| a.rev);
    let mut state = State::new();
    let mut out = BTreeMap::new();
    for a in applied {
        match a.value {
            Some(v) => state.insert(a.key, v),
            None => state.remove(&a.key),
        };
        out.insert(a.rev, state.clone());
    }
    out
}

async fn convergence_of_writers_and_watchers(b: Backend) {
    const NODES: u64 = 4;
    const OPS: u64 = 1200; // 4 writers: more changes than the paused watch holds (buffer and backlog)
    const KEYS: u64 = 50;
    let admin = b.node("admin").await;
    let map = admin.map("conv").unwrap();
    let mut retention = SettingsChange::default();
    retention.max_len = Some(200);
    admin.configure(map.topic(), retention).await.unwrap();
    map.put("seed", "0").await.unwrap();

    let mut steady = map.watch().await.unwrap();
    let mut restarted = map.watch().await.unwrap();
    let mut paused = map.watch().await.unwrap(); // not read until the writers are done

    let mut writers = Vec::new();
    for n in 0..NODES {
        let node = b.node(&format!("w{n}")).await;
        writers.push(tokio::spawn(async move {
            let map = node.map("conv").unwrap();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n + 1));
            let mut applied = Vec::new();
            for i in 0..OPS {
                let key = format!("k{}", rng.below(KEYS));
                let value = Bytes::from(format!("{n}-{i}"));
                match rng.below(4) {
                    0 => {
                        if let Some(rev) = map.delete(&key).await.unwrap() {
                            applied.push(Applied {
                                rev,
                                key,
                                value: None,
                            });
                        }
                    }
                    1 => {
                        let expect = match map.get(&key).await.unwrap() {
                            Some(v) => Expect::Revision(v.revision),
                            None => Expect::Absent,
                        };
                        match map.put_if(&key, &value, expect).await {
                            Ok(rev) => applied.push(Applied {
                                rev,
                                key,
                                value: Some(value),
                            }),
                            Err(Error::Conflict { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    _ => {
                        let rev = map.put(&key, &value).await.unwrap();
                        applied.push(Applied {
                            rev,
                            key,
                            value: Some(value),
                        });
                    }
                }
            }
            applied
        }));
    }

    // While they write: the steady watcher follows; the restarted one is dropped and
    // started again twice.
    let mut seed_ops = vec![];
    let seed = map.get("seed").await.unwrap().unwrap();
    seed_ops.push(Applied {
        rev: seed.revision,
        key: "seed".into(),
        value: Some(seed.value),
    });
    let mut steady_events = Vec::new();
    let mut restarted_events = Vec::new();
    for round in 0..3 {
        for _ in 0..200 {
            if let Ok(Some(Ok(e))) =
                tokio::time::timeout(Duration::from_millis(20), steady.next()).await
            {
                steady_events.push(e);
            }
            if let Ok(Some(Ok(e))) =
                tokio::time::timeout(Duration::from_millis(1), restarted.next()).await
            {
                restarted_events.push((round, e));
            }
        }
        if round < 2 {
            restarted = map.watch().await.unwrap();
        }
    }
    let mut applied = seed_ops;
    for w in writers {
        applied.extend(w.await.unwrap());
    }
    let reference = replay(applied);
    let last = map.snapshot().await.unwrap();
    assert_eq!(last.revision, reference.keys().next_back().copied());
    let final_state: State = last
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    assert_eq!(reference.values().next_back(), Some(&final_state));

    let mut f = Follower::new();
    for e in &steady_events {
        f.on(e, &reference, "steady");
    }
    f.catch_up(&mut steady, last.revision, &reference, "steady")
        .await;
    assert_eq!(f.state, final_state);

    // The restarted watcher: each incarnation's events, checked on their own.
    let mut r = Follower::new();
    let mut incarnation = None;
    for (round, e) in &restarted_events {
        if incarnation != Some(*round) {
            assert!(
                matches!(
                    e,
                    MapEvent::Snapshot {
                        reason: SnapshotReason::Initial,
                        ..
                    }
                ),
                "a restarted watch starts with a snapshot, got {e:?}"
            );
            incarnation = Some(*round);
        }
        r.on(e, &reference, "restarted");
    }
    r.catch_up(&mut restarted, last.revision, &reference, "restarted")
        .await;
    assert_eq!(r.state, final_state);

    let mut p = Follower::new();
    p.catch_up(&mut paused, last.revision, &reference, "paused")
        .await;
    assert_eq!(p.state, final_state);
    assert!(
        p.resyncs > 0,
        "the paused watcher fell behind a 200-entry retention"
    );
}

async fn concurrent_cas_exactly_one_wins(b: Backend) {
    let a = b.node("a").await.map("cas").unwrap();
    let c = b.node("c").await.map("cas").unwrap();
    let mut rev = a.put_if("counter", "0", Expect::Absent).await.unwrap();
    match c.put_if("counter", "0", Expect::Absent).await {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, Some(rev)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    for round in 1..=200u32 {
        let value = round.to_string();
        let (x, y) = tokio::join!(
            a.put_if("counter", &value, Expect::Revision(rev)),
            c.put_if("counter", &value, Expect::Revision(rev))
        );
        let (winner, loser) = match (x, y) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("round {round}: exactly one CAS must win, got {other:?}"),
        };
        match loser {
            Error::Conflict { current, .. } => assert_eq!(current, Some(winner)),
            other => panic!("round {round}: {other}"),
        }
        assert!(winner > rev);
        rev = winner;
    }
    let v = a.get("counter").await.unwrap().unwrap();
    assert_eq!((&v.value[..], v.revision), (&b"200"[..], rev));
    // delete_if on a stale revision loses too; on the current one it wins.
    assert!(matches!(
        c.delete_if("counter", Revision::new(rev.epoch, rev.offset - 1))
            .await,
        Err(Error::Conflict { .. })
    ));
    c.delete_if("counter", rev).await.unwrap();
    assert!(a.get("counter").await.unwrap().is_none());
}

async fn watcher_behind_retention_gets_a_fresh_snapshot(b: Backend) {
    let node = b.node("n").await;
    let map = node.map("behind").unwrap();
    let mut retention = SettingsChange::default();
    retention.max_len = Some(10);
    node.configure(map.topic(), retention).await.unwrap();
    map.put("a", "1").await.unwrap();
    let mut w = map.watch().await.unwrap();
    assert!(matches!(
        next(&mut w).await,
        MapEvent::Snapshot {
            reason: SnapshotReason::Initial,
            ..
        }
    ));
    // More changes than the watch's subscription buffer (1024 events) and one chunk read
    // ahead from history (1024 more) can hold, with 10 retained: the rest is trimmed before
    // the watcher reads it.
    let writer = b.node("w").await.map("behind").unwrap();
    for i in 0..4000 {
        writer
            .put(&format!("k{}", i % 40), i.to_string())
            .await
            .unwrap();
    }
    let last = map.snapshot().await.unwrap();
    let mut state = State::new();
    apply(
        &mut state,
        &MapEvent::Snapshot {
            entries: BTreeMap::from([(
                "a".to_string(),
                herald::Versioned {
                    value: Bytes::from("1"),
                    revision: Revision::new(0, 0),
                },
            )]),
            revision: None,
            reason: SnapshotReason::Initial,
        },
    );
    let mut resynced = false;
    let mut rev = None;
    for _ in 0..100_000 {
        if rev == last.revision {
            break;
        }
        let e = next(&mut w).await;
        if let MapEvent::Snapshot { reason, .. } = &e {
            assert_eq!(*reason, SnapshotReason::Resync);
            resynced = true;
        }
        assert!(!matches!(e, MapEvent::Reset { .. }), "{e:?}");
        rev = apply(&mut state, &e).unwrap();
    }
    assert!(resynced, "the watcher was given a fresh snapshot");
    assert_eq!(rev, last.revision);
    let expected: State = last
        .entries
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    assert_eq!(state, expected);
    // And it continues.
    let r = writer.put("after", "x").await.unwrap();
    match next(&mut w).await {
        MapEvent::Changed { key, revision, .. } => {
            assert_eq!((key.as_str(), revision), ("after", r))
        }
        other => panic!("{other:?}"),
    }
}

async fn late_joiner_gets_snapshot_then_tail(b: Backend) {
    let early = b.node("early").await.map("late").unwrap();
    early.put("x", "1").await.unwrap();
    early.put("y", "2").await.unwrap();
    let d = early.delete("x").await.unwrap().unwrap();
    assert_eq!(
        early.delete("x").await.unwrap(),
        None,
        "deleting a missing key does nothing"
    );
    let late = b.node("late").await.map("late").unwrap();
    let mut w = late.watch().await.unwrap();
    match next(&mut w).await {
        MapEvent::Snapshot {
            entries,
            revision,
            reason,
        } => {
            assert_eq!(reason, SnapshotReason::Initial);
            assert_eq!(revision, Some(d));
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["y"]);
        }
        other => panic!("{other:?}"),
    }
    let p = early.put("z", "3").await.unwrap();
    let q = early.delete("y").await.unwrap().unwrap();
    match next(&mut w).await {
        MapEvent::Changed {
            key,
            value,
            revision,
        } => {
            assert_eq!((key.as_str(), &value[..], revision), ("z", &b"3"[..], p))
        }
        other => panic!("{other:?}"),
    }
    match next(&mut w).await {
        MapEvent::Deleted { key, revision } => assert_eq!((key.as_str(), revision), ("y", q)),
        other => panic!("{other:?}"),
    }
    assert_eq!(late.keys().await.unwrap(), ["z"]);
}

async fn lost_state_is_a_reset_then_the_new_state(mut b: Backend) {
    let map = b.node("n").await.map("fragile").unwrap();
    let before = map.put("a", "1").await.unwrap();
    let mut w = map.watch().await.unwrap();
    assert!(matches!(next(&mut w).await, MapEvent::Snapshot { .. }));
    b.lose_everything();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after = map.put("b", "2").await.unwrap();
    assert_ne!(after.epoch, before.epoch);
    match next(&mut w).await {
        MapEvent::Reset { last } => assert_eq!(last, Some(before)),
        other => panic!("expected a reset, got {other:?}"),
    }
    match next(&mut w).await {
        MapEvent::Snapshot {
            entries,
            revision,
            reason,
        } => {
            assert_eq!(reason, SnapshotReason::Reset);
            assert_eq!(revision, Some(after));
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["b"]);
        }
        other => panic!("{other:?}"),
    }
}

async fn bad_input_is_refused_and_stores_nothing(b: Backend) {
    let node = b.node("n").await;
    let map = node.map("strict").unwrap();
    assert!(matches!(
        node.map("bad name"),
        Err(Error::InvalidTopic { .. })
    ));
    map.set_limits(MapLimits {
        max_keys: Some(2),
        max_value: Some(4),
    })
    .await
    .unwrap();
    map.put("a", "1").await.unwrap();
    let before = map.snapshot().await.unwrap();
    let head = node.inspect(map.topic()).await.unwrap().last_offset;
    let long = "k".repeat(herald::map::MAX_MAP_KEY_LEN + 1);
    assert!(matches!(
        map.put(&long, "1").await,
        Err(Error::InvalidMapKey { .. })
    ));
    assert!(matches!(
        map.put("", "1").await,
        Err(Error::InvalidMapKey { .. })
    ));
    assert!(matches!(
        map.put("a\u{1}", "1").await,
        Err(Error::InvalidMapKey { .. })
    ));
    match map.put("b", "12345").await {
        Err(Error::MapLimit {
            what, size, max, ..
        }) => assert_eq!((what, size, max), ("value", 5, 4)),
        other => panic!("{other:?}"),
    }
    map.put("b", "2").await.unwrap();
    match map.put("c", "3").await {
        Err(e @ Error::MapLimit { .. }) => {
            assert!(e.to_string().contains("keys limit"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    map.put("a", "new").await.unwrap(); // replacing a key is not a new key
    let after = map.snapshot().await.unwrap();
    assert_eq!(after.entries.len(), 2);
    assert_eq!(
        node.inspect(map.topic()).await.unwrap().last_offset,
        head + 2
    );
    assert_ne!(before, after);
}

async fn map_changes_are_ordinary_topic_messages(b: Backend) {
    let node = b.node("n").await;
    let map = node.map("plain").unwrap();
    let mut sub = node
        .subscribe([map.topic()])
        .from(herald::Start::Earliest)
        .await
        .unwrap();
    let r = map.put("feature/dark-mode", "on").await.unwrap();
    match support::next_event(&mut sub).await {
        herald::Event::Message(d) => {
            assert_eq!(d.position, r);
            assert_eq!(&d.payload[..], b"on");
            assert_eq!(
                d.headers.get("key").map(String::as_str),
                Some("feature/dark-mode")
            );
            assert_eq!(d.headers.get("op").map(String::as_str), Some("put"));
            assert_eq!(d.headers.get("base").map(String::as_str), Some(""));
        }
        other => panic!("{other:?}"),
    }
}

/// A member of `group` on its own node, watching map `name` as that member and applying every
/// event into a shared state (`paused` holds its watch without consuming it).
struct Applier {
    id: String,
    state: std::sync::Arc<std::sync::Mutex<State>>,
    _member: herald::Membership,
    task: Option<tokio::task::JoinHandle<()>>,
    paused: Option<MapWatch>,
}

impl Applier {
    async fn start(b: &Backend, node: &str, name: &str, group: &str, consume: bool) -> Self {
        let herald = b.node(node).await;
        let member = herald.join(group).await.unwrap();
        let watch = herald
            .map(name)
            .unwrap()
            .watch_as(member.id())
            .await
            .unwrap();
        let mut a = Applier {
            id: member.id().to_string(),
            state: Default::default(),
            _member: member,
            task: None,
            paused: Some(watch),
        };
        if consume {
            a.resume();
        }
        a
    }

    /// Consumes the watch from now on.
    fn resume(&mut self) {
        let Some(mut watch) = self.paused.take() else {
            return;
        };
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            while let Some(Ok(e)) = watch.next().await {
                apply(&mut state.lock().unwrap(), &e);
            }
        }));
    }

    fn get(&self, key: &str) -> Option<Bytes> {
        self.state.lock().unwrap().get(key).cloned()
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn put_and_wait_returns_once_every_member_applied(b: Backend) {
    let mut nodes = Vec::new();
    for n in ["node-1", "node-2", "node-3"] {
        nodes.push(Applier::start(&b, n, "shared", "cfg", true).await);
    }
    let mut ids: Vec<String> = nodes.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    let operator = b.node("operator").await.map("shared").unwrap();
    for round in 0..5u32 {
        let value = format!("v{round}");
        let report = operator
            .put_and_wait("level", &value, "cfg")
            .timeout(support::EVENT_WAIT)
            .await
            .unwrap();
        assert!(report.complete, "round {round}: {report:?}");
        assert_eq!(report.acked, ids, "round {round}");
        assert!(report.pending.is_empty() && report.expired.is_empty());
        assert_eq!(report.topic, "__map/shared");
        for a in &nodes {
            assert_eq!(
                a.get("level").as_deref(),
                Some(value.as_bytes()),
                "{} reported round {round} applied without holding it",
                a.id
            );
        }
    }
    // A compare-and-set variant and a delete variant wait the same way.
    let current = operator.get("level").await.unwrap().unwrap().revision;
    let report = operator
        .put_and_wait("level", "cas", "cfg")
        .expect(Expect::Revision(current))
        .timeout(support::EVENT_WAIT)
        .await
        .unwrap();
    assert!(report.complete, "{report:?}");
    assert!(nodes
        .iter()
        .all(|a| a.get("level").as_deref() == Some(&b"cas"[..])));
    let stale = operator
        .put_and_wait("level", "lost", "cfg")
        .expect(Expect::Revision(current))
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    let report = operator
        .delete_and_wait("level", "cfg")
        .timeout(support::EVENT_WAIT)
        .await
        .unwrap()
        .expect("the key existed");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.acked, ids);
    assert!(nodes.iter().all(|a| a.get("level").is_none()));
    assert!(
        operator
            .delete_and_wait("level", "cfg")
            .await
            .unwrap()
            .is_none(),
        "deleting a missing key waits for nothing"
    );
}

async fn a_member_that_stops_applying_is_reported_not_applied(b: Backend) {
    let live1 = Applier::start(&b, "node-1", "stuck", "cfg", true).await;
    let live2 = Applier::start(&b, "node-2", "stuck", "cfg", true).await;
    let mut stuck = Applier::start(&b, "node-3", "stuck", "cfg", false).await;
    let operator = b.node("operator").await;
    let map = operator.map("stuck").unwrap();
    let report = map
        .put_and_wait("k", "v", "cfg")
        .timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(!report.complete, "{report:?}");
    assert!(report.pending.contains(&stuck.id), "{report:?}");
    assert!(!report.acked.contains(&stuck.id), "{report:?}");
    assert_eq!(stuck.get("k"), None);
    // The two others do apply it; the stuck one still does not (its events are buffered, not
    // applied).
    let two = map
        .wait_applied(report.position, "cfg")
        .acks(herald::Acks::Count(2))
        .timeout(support::EVENT_WAIT)
        .await
        .unwrap();
    assert!(two.complete, "{two:?}");
    let mut both = vec![live1.id.clone(), live2.id.clone()];
    both.sort();
    assert_eq!(two.acked, both);
    assert!(two.pending.contains(&stuck.id));
    // Once it consumes its watch again, it applies the change and reports it.
    stuck.resume();
    let all = map
        .wait_applied(report.position, "cfg")
        .timeout(support::EVENT_WAIT)
        .await
        .unwrap();
    assert!(all.complete, "{all:?}");
    assert_eq!(stuck.get("k").as_deref(), Some(&b"v"[..]));
}

/// Changes of one handle in progress at once travel together (on Redis one script call): each
/// is still checked against the state the ones before it left, gets its own outcome, and the
/// watcher sees the applied ones in order.
async fn concurrent_changes_of_one_handle_apply_in_order_each_with_its_outcome(b: Backend) {
    let node = b.node("n").await;
    let map = node.map("batched").unwrap();
    let mut small = SettingsChange::default();
    small.max_size = Some(64);
    node.configure(map.topic(), small).await.unwrap();
    map.set_limits(MapLimits {
        max_keys: Some(3),
        max_value: None,
    })
    .await
    .unwrap();
    let base = map.put("a", "0").await.unwrap();
    let mut w = map.watch().await.unwrap();
    assert!(matches!(next(&mut w).await, MapEvent::Snapshot { .. }));
    let big = vec![7u8; 65];
    // Joined in one task: they join the handle's gathering in this order.
    let (x1, x2, a1, a2, missing, b1, b2, c, d, large) = tokio::join!(
        map.put_if("x", "1", Expect::Absent),
        map.put_if("x", "2", Expect::Absent),
        map.put_if("a", "1", Expect::Revision(base)),
        map.put_if("a", "2", Expect::Revision(base)),
        map.delete("missing"),
        map.put("b", "b"),
        map.delete("b"),
        map.put("c", "c"),
        map.put("d", "d"),
        map.put("x", &big),
    );
    let at = |n: u64| Revision::new(base.epoch, base.offset + n);
    assert_eq!(x1.unwrap(), at(1));
    match x2 {
        Err(Error::Conflict { current, key, .. }) => {
            assert_eq!((current, &key[..]), (Some(at(1)), "x"))
        }
        other => panic!("the second put-if-absent sees the first: {other:?}"),
    }
    assert_eq!(a1.unwrap(), at(2));
    match a2 {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, Some(at(2))),
        other => panic!("of two CAS on one revision exactly one wins: {other:?}"),
    }
    assert_eq!(missing.unwrap(), None);
    assert_eq!(b1.unwrap(), at(3));
    assert_eq!(b2.unwrap(), Some(at(4)));
    assert_eq!(c.unwrap(), at(5), "b's delete freed a place under max_keys");
    match d {
        Err(Error::MapLimit {
            what, size, max, ..
        }) => assert_eq!((what, size, max), ("keys", 4, 3)),
        other => panic!("a fourth key is refused: {other:?}"),
    }
    match large {
        Err(Error::MessageTooLarge { size, limit, .. }) => assert_eq!((size, limit), (65, 64)),
        other => panic!("a value over max_size is refused alone: {other:?}"),
    }
    let snapshot = map.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, Some(at(5)));
    let values: Vec<(&str, &[u8], Revision)> = snapshot
        .entries
        .iter()
        .map(|(k, v)| (k.as_str(), &v.value[..], v.revision))
        .collect();
    assert_eq!(
        values,
        vec![
            ("a", &b"1"[..], at(2)),
            ("c", &b"c"[..], at(5)),
            ("x", &b"1"[..], at(1))
        ]
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(match next(&mut w).await {
            MapEvent::Changed {
                key,
                value,
                revision,
            } => (key, Some(value), revision),
            MapEvent::Deleted { key, revision } => (key, None, revision),
            other => panic!("expected a change, got {other:?}"),
        });
    }
    let v = |s: &'static str| Some(Bytes::from(s));
    assert_eq!(
        seen,
        vec![
            ("x".to_string(), v("1"), at(1)),
            ("a".to_string(), v("1"), at(2)),
            ("b".to_string(), v("b"), at(3)),
            ("b".to_string(), None, at(4)),
            ("c".to_string(), v("c"), at(5)),
        ]
    );
}
