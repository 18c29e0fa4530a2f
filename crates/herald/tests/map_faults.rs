//! Replicated maps under Redis faults (real Redis only): `kill -9` with AOF `appendfsync
//! always` during puts (every acknowledged put is in the final snapshot, watchers converge to
//! it) and a restart without persistence (watchers get `Reset`, then the new state).

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use herald::map::apply;
use herald::{Herald, MapEvent, MapWatch, SnapshotReason};
use support::RedisServer;

async fn node(url: &str, id: &str) -> Herald {
    Herald::builder()
        .redis(url)
        .node_id(id)
        .operation_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap()
}

type State = Arc<Mutex<BTreeMap<String, Bytes>>>;

/// A watcher applying every event into a shared state; the events it saw, by kind.
fn follow(
    mut w: MapWatch,
    state: State,
    log: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = w.next().await {
            match e {
                Ok(e) => {
                    let kind = match &e {
                        MapEvent::Snapshot { reason, .. } => format!("snapshot:{reason:?}"),
                        MapEvent::Reset { .. } => "reset".to_string(),
                        _ => "change".to_string(),
                    };
                    apply(&mut state.lock().unwrap(), &e);
                    log.lock().unwrap().push(kind);
                }
                Err(e) => log.lock().unwrap().push(format!("error:{e}")),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_aof_loses_no_acknowledged_put_and_watchers_converge() {
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    let writer = node(&url, "writer").await.map("durable").unwrap();
    let mut followers = Vec::new();
    for i in 0..2 {
        let w = node(&url, &format!("watcher-{i}"))
            .await
            .map("durable")
            .unwrap()
            .watch()
            .await
            .unwrap();
        let (state, log) = (State::default(), Arc::default());
        let task = follow(w, state.clone(), Arc::clone(&log));
        followers.push((state, log, task));
    }
    // Sequential puts of distinct values; per key, every attempt and whether it was
    // acknowledged.
    const PUTS: u64 = 400;
    let mut attempts: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    for i in 0..PUTS {
        if i == 150 {
            server.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.restart();
        }
        let key = format!("k{}", i % 25);
        let ok = writer.put(&key, i.to_string()).await.is_ok();
        attempts.entry(key).or_default().push((i, ok));
    }
    let acked = attempts.values().flatten().filter(|(_, ok)| *ok).count();
    assert!(acked as u64 >= PUTS - 20, "most puts succeed: {acked}");
    let snap = writer.snapshot().await.unwrap();
    for (key, tries) in &attempts {
        let last_acked = tries.iter().rev().find(|(_, ok)| *ok).map(|(i, _)| *i);
        let have: Option<u64> = snap
            .entries
            .get(key)
            .map(|v| std::str::from_utf8(&v.value).unwrap().parse().unwrap());
        let Some(last_acked) = last_acked else {
            continue;
        };
        let have = have.unwrap_or_else(|| panic!("{key}: acknowledged put {last_acked} lost"));
        assert!(
            have >= last_acked && tries.iter().any(|(i, _)| *i == have),
            "{key}: holds {have}, last acknowledged put {last_acked}: {tries:?}"
        );
    }
    let want: BTreeMap<String, Bytes> = snap
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    for (i, (state, log, _)) in followers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while *state.lock().unwrap() != want {
            assert!(
                Instant::now() < deadline,
                "watcher {i} converges to the final snapshot; events {:?}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = log.lock().unwrap();
        assert!(
            !log.iter().any(|e| e.starts_with("error")),
            "watcher {i} saw no error: {log:?}"
        );
    }
    for (_, _, t) in followers {
        t.abort();
    }
}

/// The next watch event, failing the test after a bounded wait.
async fn next(w: &mut MapWatch) -> MapEvent {
    match tokio::time::timeout(Duration::from_secs(60), w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("expected a map event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_is_a_reset_then_the_new_state() {
    let mut server = RedisServer::start();
    let url = server.url();
    let writer = node(&url, "writer").await.map("volatile").unwrap();
    writer.put("a", "1").await.unwrap();
    let before = writer.put("b", "2").await.unwrap();
    let mut w = node(&url, "watcher")
        .await
        .map("volatile")
        .unwrap()
        .watch()
        .await
        .unwrap();
    match next(&mut w).await {
        MapEvent::Snapshot { revision, .. } => assert_eq!(revision, Some(before)),
        other => panic!("{other:?}"),
    }
    server.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.restart();
    let after = writer.put("c", "3").await.unwrap();
    assert_ne!(
        after.epoch, before.epoch,
        "a new epoch after losing everything"
    );
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
            assert_eq!(entries.keys().collect::<Vec<_>>(), ["c"]);
        }
        other => panic!("{other:?}"),
    }
    let d = writer.put("d", "4").await.unwrap();
    match next(&mut w).await {
        MapEvent::Changed { key, revision, .. } => assert_eq!((key.as_str(), revision), ("d", d)),
        other => panic!("{other:?}"),
    }
}
