//! Work groups (crate::work) on both backends: one-of-N delivery, leases and fencing,
//! retries and dead letters, reaping and restarts, resets, visible state.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;
use support::on_both_backends;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use herald::work::Backoff;
use herald::{Event, Job, Message, Outcome, SettingsChange, Start, WorkEvent, Worker};
use support::{next_event, Backend, EVENT_WAIT};

on_both_backends!(
    one_of_n_each_message_acked_once_per_group,
    stale_ack_after_lease_expiry_is_refused,
    in_progress_keeps_the_lease,
    poison_message_is_dead_lettered_after_max_deliveries,
    killed_member_job_is_redelivered_at_once,
    restarted_member_does_not_inherit_its_leases,
    topic_reset_is_reported_to_the_group,
    a_continued_log_keeps_the_group_in_place,
    groups_report_their_state,
    bad_options_are_refused,
    delayed_message_waits_without_blocking_later_ones,
    latest_start_means_after_the_worker_started,
    two_schedulers_publish_each_tick_once_and_the_group_runs_it_once,
    two_cron_schedulers_publish_each_fire_once_and_skip_missed_ones,
    per_key_order_one_at_a_time_in_offset_order,
    messages_trimmed_before_the_group_finished_are_reported_lost,
);

async fn next_work(w: &mut Worker) -> WorkEvent {
    match tokio::time::timeout(EVENT_WAIT, w.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("worker error: {e}"),
        Ok(None) => panic!("worker ended"),
        Err(_) => panic!("no work within {EVENT_WAIT:?}"),
    }
}

async fn next_job(w: &mut Worker) -> Job {
    match next_work(w).await {
        WorkEvent::Job(j) => j,
        other => panic!("expected a job, got {other:?}"),
    }
}

async fn maybe_job(w: &mut Worker, wait: Duration) -> Option<Job> {
    match tokio::time::timeout(wait, w.next()).await {
        Ok(Some(Ok(WorkEvent::Job(j)))) => Some(j),
        Ok(Some(Ok(other))) => panic!("expected a job, got {other:?}"),
        Ok(Some(Err(e))) => panic!("worker error: {e}"),
        Ok(None) => panic!("worker ended"),
        Err(_) => None,
    }
}

fn text(j: &Job) -> String {
    String::from_utf8_lossy(j.payload()).into_owned()
}

async fn one_of_n_each_message_acked_once_per_group(b: Backend) {
    const N: u64 = 10_000;
    let node = b.node("pub").await;
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            node.subscribe(["jobs"])
                .from(Start::Earliest)
                .await
                .unwrap(),
        );
    }
    // (group, offset) -> acks
    let acks: Arc<Mutex<HashMap<(usize, u64), u32>>> = Arc::default();
    // Offsets acked (at least once) per group, so that a member's "is my group done?" does
    // not scan every ack.
    let done: Arc<Mutex<[u64; 3]>> = Arc::default();
    let mut tasks = Vec::new();
    for g in 0..3 {
        for m in 0..4 {
            let h = b.node(&format!("g{g}m{m}")).await;
            let acks = acks.clone();
            let done = done.clone();
            let mut w = h
                .work("jobs")
                .group(format!("group-{g}"))
                .concurrency(4)
                .start()
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                loop {
                    if done.lock().unwrap()[g] >= N {
                        break;
                    }
                    let Some(job) = maybe_job(&mut w, Duration::from_millis(500)).await else {
                        continue;
                    };
                    let offset = job.position().offset;
                    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
                    let mut acks = acks.lock().unwrap();
                    let count = acks.entry((g, offset)).or_default();
                    *count += 1;
                    if *count == 1 {
                        done.lock().unwrap()[g] += 1;
                    }
                }
                w.close().await.unwrap();
            }));
        }
    }
    for chunk in 0..(N / 100) {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(format!("m{}", chunk * 100 + i)))
            .collect();
        node.publish_batch("jobs", batch).await.unwrap();
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every group finishes")
            .unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    for g in 0..3 {
        for o in 1..=N {
            assert_eq!(acks.get(&(g, o)), Some(&1), "group {g} offset {o}");
        }
    }
    for sub in &mut subs {
        for o in 1..=N {
            match next_event(sub).await {
                Event::Message(d) => assert_eq!(d.position.offset, o),
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }
    for g in 0..3 {
        let info = node
            .work_group("jobs", &format!("group-{g}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.acked, N);
        assert_eq!(info.lag, 0);
        assert!(info.in_flight.is_empty());
    }
}

async fn stale_ack_after_lease_expiry_is_refused(b: Backend) {
    let a = b.node("a").await;
    let c = b.node("c").await;
    a.publish("slow", "job").await.unwrap();
    let lease = Duration::from_millis(300);
    let mut wa = a
        .work("slow")
        .group("g")
        .lease(lease)
        .start()
        .await
        .unwrap();
    let slow = next_job(&mut wa).await;
    assert_eq!(slow.attempt(), 1);
    let mut wc = c
        .work("slow")
        .group("g")
        .lease(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    // The lease runs out (Redis clock) and the other member takes the message.
    let again = next_job(&mut wc).await;
    assert_eq!(again.position(), slow.position());
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.last_error(), Some("lease expired"));
    assert_eq!(slow.ack().await.unwrap(), Outcome::Stale);
    assert_eq!(again.ack().await.unwrap(), Outcome::Acked);
    let info = a.work_group("slow", "g").await.unwrap().unwrap();
    assert_eq!(info.acked, 1);
    assert!(info.in_flight.is_empty());
    assert!(maybe_job(&mut wa, Duration::from_millis(500))
        .await
        .is_none());
}

async fn in_progress_keeps_the_lease(b: Backend) {
    let a = b.node("a").await;
    let c = b.node("c").await;
    a.publish("long", "job").await.unwrap();
    let lease = Duration::from_secs(3);
    let mut wa = a
        .work("long")
        .group("g")
        .lease(lease)
        .start()
        .await
        .unwrap();
    let job = next_job(&mut wa).await;
    let mut wc = c
        .work("long")
        .group("g")
        .lease(lease)
        .start()
        .await
        .unwrap();
    // Working for two leases, extending every fifth of one.
    for _ in 0..10 {
        assert_eq!(job.in_progress().await.unwrap(), Outcome::Extended);
        assert!(maybe_job(&mut wc, lease / 5).await.is_none(), "lease kept");
    }
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    assert!(maybe_job(&mut wc, Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(a.work_group("long", "g").await.unwrap().unwrap().acked, 1);
}

async fn poison_message_is_dead_lettered_after_max_deliveries(b: Backend) {
    let node = b.node("n").await;
    let mut dead = node
        .subscribe([herald::work::dead_letter_topic("tasks", "g").as_str()])
        .from(Start::Earliest)
        .await
        .unwrap();
    node.publish("tasks", Message::new("poison").header("kind", "bad"))
        .await
        .unwrap();
    for i in 0..5 {
        node.publish("tasks", format!("ok-{i}")).await.unwrap();
    }
    let mut w = node
        .work("tasks")
        .group("g")
        .max_deliveries(3)
        .backoff(Backoff::List(vec![Duration::from_millis(50)]))
        .concurrency(2)
        .start()
        .await
        .unwrap();
    let mut poison_attempts = Vec::new();
    let mut acked = Vec::new();
    let mut dead_outcomes = 0;
    for _ in 0..100 {
        if poison_attempts.len() == 3 && acked.len() == 5 {
            break;
        }
        let job = next_job(&mut w).await;
        if text(&job) == "poison" {
            poison_attempts.push(job.attempt());
            match job
                .fail(format!("boom {}", poison_attempts.len()))
                .await
                .unwrap()
            {
                Outcome::Retry { .. } => {}
                Outcome::DeadLettered { .. } => dead_outcomes += 1,
                other => panic!("unexpected {other:?}"),
            }
        } else {
            acked.push(text(&job));
            assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
        }
    }
    assert_eq!(poison_attempts, vec![1, 2, 3]);
    assert_eq!(dead_outcomes, 1);
    acked.sort();
    assert_eq!(acked, (0..5).map(|i| format!("ok-{i}")).collect::<Vec<_>>());
    let d = match next_event(&mut dead).await {
        Event::Message(d) => d,
        other => panic!("expected a dead letter, got {other:?}"),
    };
    assert_eq!(&d.payload[..], b"poison");
    let h = |k: &str| d.headers.get(k).cloned();
    assert_eq!(h("kind").as_deref(), Some("bad"));
    assert_eq!(h("herald-dead-topic").as_deref(), Some("tasks"));
    assert_eq!(h("herald-dead-group").as_deref(), Some("g"));
    assert_eq!(h("herald-dead-offset").as_deref(), Some("1"));
    assert_eq!(h("herald-dead-attempts").as_deref(), Some("3"));
    assert_eq!(h("herald-dead-error").as_deref(), Some("boom 3"));
    assert!(maybe_job(&mut w, Duration::from_millis(500))
        .await
        .is_none());
    let info = node.work_group("tasks", "g").await.unwrap().unwrap();
    assert_eq!((info.acked, info.dead_lettered), (5, 1));
}

async fn killed_member_job_is_redelivered_at_once(b: Backend) {
    let a = b.node("a").await;
    let c = b.node("c").await;
    a.publish("crash", "job").await.unwrap();
    // A lease far longer than the test: only reaping can free the job.
    let lease = Duration::from_secs(600);
    let ttl = Duration::from_millis(600);
    let mut wa = a
        .work("crash")
        .group("g")
        .lease(lease)
        .member_ttl(ttl)
        .start()
        .await
        .unwrap();
    let lost_job = next_job(&mut wa).await;
    drop(wa); // a crash: no more heartbeats
    let mut wc = c
        .work("crash")
        .group("g")
        .lease(lease)
        .member_ttl(ttl)
        .start()
        .await
        .unwrap();
    let job = next_job(&mut wc).await;
    assert_eq!(job.position(), lost_job.position());
    assert_eq!(job.attempt(), 2);
    assert!(
        job.last_error().unwrap().contains("expired"),
        "{:?}",
        job.last_error()
    );
    assert_eq!(lost_job.ack().await.unwrap(), Outcome::Stale);
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
}

async fn restarted_member_does_not_inherit_its_leases(b: Backend) {
    let a = b.node("a").await;
    a.publish("restart", "job").await.unwrap();
    let lease = Duration::from_secs(600);
    let mut first = a
        .work("restart")
        .group("g")
        .member("worker-1")
        .lease(lease)
        .start()
        .await
        .unwrap();
    let old_holder = first.holder();
    let old_job = next_job(&mut first).await;
    drop(first);
    // Restarted at once, during the old lease, under the same name.
    let mut second = a
        .work("restart")
        .group("g")
        .member("worker-1")
        .lease(lease)
        .start()
        .await
        .unwrap();
    assert_ne!(second.holder(), old_holder);
    let job = next_job(&mut second).await;
    assert_eq!(job.position(), old_job.position());
    assert_eq!(job.attempt(), 2);
    assert!(job.last_error().unwrap().contains("restarted"));
    assert_eq!(old_job.ack().await.unwrap(), Outcome::Stale);
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
}

async fn topic_reset_is_reported_to_the_group(mut b: Backend) {
    let node = b.node("n").await;
    node.publish("reset", "before").await.unwrap();
    let mut w = node.work("reset").group("g").start().await.unwrap();
    let job = next_job(&mut w).await;
    let old = job.position();
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    b.lose_everything();
    let r = node.publish("reset", "after").await.unwrap();
    assert!(r.position.epoch > old.epoch);
    match next_work(&mut w).await {
        WorkEvent::Reset { epoch, .. } => assert_eq!(epoch, r.position.epoch),
        other => panic!("expected a reset, got {other:?}"),
    }
    let job = next_job(&mut w).await;
    assert_eq!(job.position(), r.position);
    assert_eq!(text(&job), "after");
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
}

/// A change of writing server (failover, restart with persistence) continues the topic's log
/// under a new epoch: the group neither resets nor hands out what it had done, and a job
/// leased before the change can still be acked.
async fn a_continued_log_keeps_the_group_in_place(mut b: Backend) {
    let node = b.node("n").await;
    for i in 1..=3 {
        node.publish("cont", format!("m{i}")).await.unwrap();
    }
    let mut w = node
        .work("cont")
        .group("g")
        .concurrency(1)
        .start()
        .await
        .unwrap();
    for i in 1..=2 {
        let job = next_job(&mut w).await;
        assert_eq!(text(&job), format!("m{i}"));
        assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    }
    let held = next_job(&mut w).await;
    assert_eq!(text(&held), "m3");
    b.change_writer("cont");
    let r = node.publish("cont", "m4").await.unwrap();
    assert!(r.position.epoch > held.position().epoch);
    assert_eq!(r.position.offset, 4, "the log continues");
    assert_eq!(held.ack().await.unwrap(), Outcome::Acked);
    let job = next_job(&mut w).await;
    assert_eq!((text(&job), job.position()), ("m4".to_string(), r.position));
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    assert!(
        maybe_job(&mut w, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing done before the change is handed out again"
    );
    let info = node.work_group("cont", "g").await.unwrap().unwrap();
    assert_eq!(info.resets, 0, "{info:?}");
}

async fn groups_report_their_state(b: Backend) {
    let node = b.node("n").await;
    for i in 0..3 {
        node.publish("state", format!("m{i}")).await.unwrap();
    }
    let mut w = node
        .work("state")
        .group("g")
        .member("w1")
        .start()
        .await
        .unwrap();
    let job = next_job(&mut w).await;
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    let held = next_job(&mut w).await;
    let infos = node.work_groups("state").await.unwrap();
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.group, "g");
    assert_eq!(info.acked, 1);
    assert_eq!(info.dead_letter_topic, "__dead/state/g");
    assert_eq!(info.in_flight.len(), 1);
    assert_eq!(info.in_flight[0].offset, held.position().offset);
    assert_eq!(info.in_flight[0].attempt, 1);
    assert!(info.in_flight[0].holder.starts_with("w1#"));
    assert_eq!(info.members, vec![w.holder()]);
    assert_eq!(info.lag, 2, "one in flight, one not handed out");
    assert!(node.work_group("state", "other").await.unwrap().is_none());
    let mut by_group = BTreeMap::new();
    by_group.insert(info.group.clone(), info.next_offset);
    assert_eq!(by_group.get("g"), Some(&3));
}

async fn bad_options_are_refused(b: Backend) {
    let node = b.node("n").await;
    let cases = [
        node.work("t").start().await.err(),
        node.work("t").group("a:b").start().await.err(),
        node.work("t")
            .group("g")
            .lease(Duration::from_millis(1))
            .start()
            .await
            .err(),
        node.work("t").group("g").concurrency(0).start().await.err(),
        node.work("t")
            .group("g")
            .max_deliveries(0)
            .start()
            .await
            .err(),
        node.work("t")
            .group("g")
            .backoff(Backoff::List(vec![]))
            .start()
            .await
            .err(),
        node.work("t").group("g").member("a#b").start().await.err(),
    ];
    for (i, e) in cases.into_iter().enumerate() {
        assert!(e.is_some(), "case {i} refused");
    }
    assert!(node.work_groups("t").await.unwrap().is_empty());
}

async fn delayed_message_waits_without_blocking_later_ones(b: Backend) {
    let node = b.node("n").await;
    let delay = Duration::from_millis(1500);
    let delayed = node
        .publish("later", Message::new("delayed").delay(delay))
        .await
        .unwrap();
    node.publish("later", "now").await.unwrap();
    let mut sub = node
        .subscribe(["later"])
        .from(Start::Earliest)
        .await
        .unwrap();
    let mut w = node
        .work("later")
        .group("g")
        .concurrency(4)
        .start()
        .await
        .unwrap();
    let first = next_job(&mut w).await;
    assert_eq!(
        text(&first),
        "now",
        "a delayed message does not block later ones"
    );
    assert_eq!(first.ack().await.unwrap(), Outcome::Acked);
    let job = next_job(&mut w).await;
    assert_eq!(job.position(), delayed.position);
    assert_eq!(job.attempt(), 1, "waiting for the delay is not an attempt");
    // The broker here runs on this machine's clock: the job came no earlier than its time.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let due = job.delivery().published_at_ms + delay.as_millis() as u64;
    assert!(now_ms + 2 >= due, "handed out {}ms early", due - now_ms);
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    // Plain subscribers are not delayed.
    let got = support::messages(&mut sub, 2).await;
    assert_eq!(got[0].1, "delayed");
}

async fn latest_start_means_after_the_worker_started(b: Backend) {
    let node = b.node("n").await;
    // A topic with history: the group starts after it.
    node.publish("old", "before").await.unwrap();
    let mut w = node
        .work("old")
        .group("g")
        .from(Start::Latest)
        .start()
        .await
        .unwrap();
    let after = node.publish("old", "after").await.unwrap();
    let job = next_job(&mut w).await;
    assert_eq!(job.position(), after.position);
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    // A topic without a log yet: its first message is after the start.
    let mut w = node
        .work("new")
        .group("g")
        .from(Start::Latest)
        .start()
        .await
        .unwrap();
    let first = node.publish("new", "first").await.unwrap();
    let job = next_job(&mut w).await;
    assert_eq!(job.position(), first.position);
    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
}

async fn two_schedulers_publish_each_tick_once_and_the_group_runs_it_once(b: Backend) {
    let every = Duration::from_millis(300);
    let nodes = [b.node("sched-0").await, b.node("sched-1").await];
    // Twenty ticks starting 3 s from now (the nodes are connected already), so that both
    // schedulers are running by then even on a loaded machine.
    let first = herald::schedule::tick_of(herald::schedule::now_ms(), every) + 10;
    let last = first + 19;
    let mut runs = Vec::new();
    for node in nodes {
        runs.push(tokio::spawn(async move {
            node.schedule("cleanup", "cron")
                .every(every)
                .message("clean up")
                .ticks(first..=last)
                .run()
                .await
        }));
    }
    let worker_node = b.node("w").await;
    let mut w = worker_node
        .work("cron")
        .group("g")
        .concurrency(2)
        .start()
        .await
        .unwrap();
    let mut ran: BTreeMap<u64, u32> = BTreeMap::new();
    for _ in 0..20 {
        let job = next_job(&mut w).await;
        let tick: u64 = job.delivery().headers["herald-schedule-tick"]
            .parse()
            .unwrap();
        *ran.entry(tick).or_default() += 1;
        assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    }
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert!(maybe_job(&mut w, Duration::from_millis(500))
        .await
        .is_none());
    assert_eq!(
        ran,
        (first..=last).map(|t| (t, 1)).collect::<BTreeMap<_, _>>()
    );
    assert_eq!(worker_node.inspect("cron").await.unwrap().last_offset, 20);
}

async fn two_cron_schedulers_publish_each_fire_once_and_skip_missed_ones(b: Backend) {
    use herald::schedule::ManualClock;
    // Every 6 hours, from 2023-12-30 00:00 UTC (minute 28 398 240 since the Unix epoch)
    // across the year's end and into 2024; the clock is moved by the test, so no tick can be
    // missed by a slow machine.
    const START: u64 = 28_398_240;
    let fire = |i: u64| START + i * 360;
    let minute = 60_000;
    let clock = ManualClock::new(fire(0) * minute - 30 * minute);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut runs = Vec::new();
    for s in 0..2 {
        let node = b.node(&format!("sched-{s}")).await;
        let (clock, tx) = (clock.clock(), tx.clone());
        runs.push(tokio::spawn(async move {
            node.schedule("rollup", "cron")
                .cron("0 */6 * * *")
                .clock(clock)
                .message("roll up")
                .ticks(fire(0)..=fire(20))
                .run_with(move |t| tx.send((s, t)).unwrap())
                .await
        }));
    }
    let worker_node = b.node("w").await;
    let mut w = worker_node
        .work("cron")
        .group("g")
        .concurrency(2)
        .start()
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..=20 {
        if i == 10 {
            // No scheduler runs during this fire: moving the clock past it skips it.
            continue;
        }
        // A few seconds into the fire minute (and, for the tick after the skipped one, past
        // the skipped one's minute).
        clock.set(fire(i) * minute + 5_000);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (s, t) = tokio::time::timeout(EVENT_WAIT, rx.recv())
                .await
                .expect("both schedulers publish the tick")
                .unwrap();
            assert_eq!(t.tick, fire(i));
            seen.push((s, t.receipt.duplicate));
        }
        seen.sort_unstable();
        // Each scheduler published once; exactly one of them wrote the message.
        assert_eq!(seen.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(seen.iter().filter(|x| !x.1).count(), 1, "{seen:?}");
        expected.push(fire(i));
    }
    clock.set(fire(21) * minute);
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let mut ran: BTreeMap<u64, u32> = BTreeMap::new();
    for _ in 0..20 {
        let job = next_job(&mut w).await;
        let h = &job.delivery().headers;
        let tick: u64 = h["herald-schedule-tick"].parse().unwrap();
        assert_eq!(h["herald-schedule-due"], (tick * minute).to_string());
        *ran.entry(tick).or_default() += 1;
        assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
    }
    assert!(maybe_job(&mut w, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(
        ran,
        expected.iter().map(|&t| (t, 1)).collect::<BTreeMap<_, _>>()
    );
    assert_eq!(worker_node.inspect("cron").await.unwrap().last_offset, 20);
    // A bad expression is refused, naming its field.
    let e = worker_node
        .schedule("bad", "cron")
        .cron("0 25 * * *")
        .run()
        .await
        .unwrap_err();
    match &e {
        herald::Error::InvalidCron(c) => assert_eq!(c.field, herald::schedule::CronField::Hour),
        other => panic!("expected InvalidCron, got {other:?}"),
    }
    assert!(e.to_string().contains("hour field"), "{e}");
}

/// Per order key: how many of its messages are in flight, and the offsets finished in order.
type KeyState = Arc<Mutex<BTreeMap<String, (u32, Vec<u64>)>>>;

async fn per_key_order_one_at_a_time_in_offset_order(b: Backend) {
    const PER_KEY: usize = 10;
    let keys = ["a", "b", "c", "d"];
    let node = b.node("pub").await;
    let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in 0..PER_KEY {
        for k in keys {
            let r = node
                .publish("ordered", Message::new(format!("{k}-{i}")).order_key(k))
                .await
                .unwrap();
            expected
                .entry(k.to_string())
                .or_default()
                .push(r.position.offset);
        }
    }
    node.publish("ordered", "free").await.unwrap();
    // key -> (in flight now, offsets completed in order)
    let state: KeyState = Arc::default();
    let total = keys.len() * PER_KEY + 1;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for m in 0..2 {
        let h = b.node(&format!("w{m}")).await;
        let (state, done) = (state.clone(), done.clone());
        let mut w = h
            .work("ordered")
            .group("g")
            .key_order(true)
            .concurrency(8)
            .backoff(Backoff::List(vec![Duration::from_millis(20)]))
            .start()
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < total {
                let job = tokio::select! {
                    j = maybe_job(&mut w, Duration::from_millis(200)) => match j {
                        Some(j) => j,
                        None => continue,
                    },
                    Some(r) = running.join_next(), if !running.is_empty() => {
                        r.unwrap();
                        continue;
                    }
                };
                let key = job.delivery().headers.get("herald-order-key").cloned();
                let (state, done) = (state.clone(), done.clone());
                running.spawn(async move {
                    let offset = job.position().offset;
                    if let Some(k) = &key {
                        let mut s = state.lock().unwrap();
                        let e = s.entry(k.clone()).or_default();
                        e.0 += 1;
                        assert_eq!(e.0, 1, "two messages of key {k} in flight");
                    }
                    tokio::time::sleep(Duration::from_millis(5 + offset % 7)).await;
                    // Every fifth message fails once: its key waits for the retry.
                    if offset % 5 == 0 && job.attempt() == 1 {
                        if let Some(k) = &key {
                            state.lock().unwrap().get_mut(k).unwrap().0 -= 1;
                        }
                        assert!(matches!(
                            job.fail("once").await.unwrap(),
                            Outcome::Retry { .. }
                        ));
                        return;
                    }
                    if let Some(k) = &key {
                        let mut s = state.lock().unwrap();
                        let e = s.get_mut(k).unwrap();
                        e.0 -= 1;
                        e.1.push(offset);
                    }
                    assert_eq!(job.ack().await.unwrap(), Outcome::Acked);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            while let Some(r) = running.join_next().await {
                r.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every message is processed")
            .unwrap();
    }
    let state = state.lock().unwrap();
    for (k, offsets) in &expected {
        assert_eq!(&state[k].1, offsets, "key {k} in offset order");
    }
}

async fn messages_trimmed_before_the_group_finished_are_reported_lost(b: Backend) {
    let node = b.node("n").await;
    let mut change = SettingsChange::default();
    change.max_len = Some(5);
    node.configure("trim", change).await.unwrap();
    node.publish("trim", "m1").await.unwrap();
    let mut w = node.work("trim").group("g").start().await.unwrap();
    let held = next_job(&mut w).await;
    assert_eq!(held.position().offset, 1);
    // While the only member holds offset 1, retention trims offsets 2..=15 unseen.
    for i in 2..=20 {
        node.publish("trim", format!("m{i}")).await.unwrap();
    }
    let first = node.inspect("trim").await.unwrap().first_offset;
    assert!(first > 2, "history was trimmed");
    // Nak it: its message is gone too by the time it is due again.
    assert!(matches!(
        held.nak(Duration::from_millis(10)).await.unwrap(),
        Outcome::Retry { .. }
    ));
    let mut lost = 0;
    let mut offsets = Vec::new();
    for _ in 0..40 {
        if offsets.len() as u64 == 21 - first && lost == first - 1 {
            break;
        }
        match next_work(&mut w).await {
            WorkEvent::Lost { count, .. } => lost += count,
            WorkEvent::Job(j) => {
                offsets.push(j.position().offset);
                assert_eq!(j.ack().await.unwrap(), Outcome::Acked);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(offsets, (first..=20).collect::<Vec<_>>());
    // Offsets 2..first-1 never handed out, and offset 1 whose retry found it trimmed.
    let info = node.work_group("trim", "g").await.unwrap().unwrap();
    assert_eq!(info.lost, first - 2 + 1, "{info:?}");
    assert_eq!(lost, info.lost);
    assert_eq!((info.acked, info.lag), (21 - first, 0));
}
