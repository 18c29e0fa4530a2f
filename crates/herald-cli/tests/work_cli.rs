//! `herald work` and `herald groups` on a real Redis (started by the test on 127.0.0.1):
//! printing and acking, commands with their environment and outcomes, a poison message
//! dead-lettered, a worker killed with SIGKILL mid-job. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald_testkit::RedisServer as Redis;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn herald(redis: &Redis) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("HERALD_REDIS_URL", redis.url())
        .env_remove("RUST_LOG");
    c
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish in time: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn publish(redis: &Redis, topic: &str, data: &str) {
    let out = run(herald(redis).args(["publish", topic, data]));
    assert!(out.status.success(), "{out:?}");
}

fn groups(redis: &Redis, topic: &str) -> Vec<Value> {
    let out = run(herald(redis).args(["groups", topic]));
    assert!(out.status.success(), "{out:?}");
    json_lines(&out)
}

#[test]
fn work_prints_and_acks_each_delivery_once() {
    let redis = Redis::start();
    for i in 1..=5 {
        publish(&redis, "jobs", &format!("job-{i}"));
    }
    let out = run(herald(&redis).args(["work", "jobs", "--group", "g", "--count", "5"]));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["topic"], "jobs");
        assert_eq!(l["group"], "g");
        assert_eq!(l["attempt"], 1);
        assert_eq!(l["offset"], i as u64 + 1);
        assert_eq!(l["data"], format!("job-{}", i + 1));
    }
    // Everything was acked: another member finds nothing.
    let out = run(herald(&redis).args(["work", "jobs", "--group", "g", "--timeout", "1"]));
    assert!(out.status.success(), "{out:?}");
    assert!(json_lines(&out).is_empty());
    let g = groups(&redis, "jobs");
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0]["group"], "g");
    assert_eq!(g[0]["acked"], 5);
    assert_eq!(g[0]["next_offset"], 6);
    assert_eq!(g[0]["lag"], 0);
    assert_eq!(g[0]["in_flight"], Value::Array(vec![]));
    assert_eq!(g[0]["dead_letter_topic"], "__dead/jobs/g");
    assert_eq!(g[0]["members"], Value::Array(vec![]), "members left");
}

#[test]
fn work_runs_a_command_per_delivery_and_dead_letters_a_poison_message() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    publish(&redis, "tasks", "bad");
    publish(&redis, "tasks", "good");
    let script = r#"p=$(cat); echo "$HERALD_TOPIC $HERALD_GROUP $HERALD_OFFSET $HERALD_ATTEMPT $p" >> "$0"; test "$p" != bad"#;
    let out = run(herald(&redis)
        .args(["work", "tasks", "--group", "g", "--max-deliveries", "2"])
        .args(["--backoff", "0.05", "--count", "3", "--"])
        .args(["sh", "-c", script])
        .arg(&log));
    assert!(out.status.success(), "{out:?}");
    let mut outcomes: Vec<(u64, u64, String)> = json_lines(&out)
        .iter()
        .map(|l| {
            assert_eq!(l["topic"], "tasks");
            (
                l["offset"].as_u64().unwrap(),
                l["attempt"].as_u64().unwrap(),
                l["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            (1, 1, "retry".to_string()),
            (1, 2, "dead".to_string()),
            (2, 1, "acked".to_string()),
        ]
    );
    let mut runs: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        vec!["tasks g 1 1 bad", "tasks g 1 2 bad", "tasks g 2 1 good"]
    );
    let out = run(herald(&redis).args([
        "tail",
        "__dead/tasks/g",
        "--from",
        "earliest",
        "--count",
        "1",
    ]));
    assert!(out.status.success(), "{out:?}");
    let dead = json_lines(&out);
    assert_eq!(dead[0]["data"], "bad");
    assert_eq!(dead[0]["headers"]["herald-dead-topic"], "tasks");
    assert_eq!(dead[0]["headers"]["herald-dead-offset"], "1");
    assert_eq!(dead[0]["headers"]["herald-dead-attempts"], "2");
    let g = groups(&redis, "tasks");
    assert_eq!(
        (g[0]["acked"].clone(), g[0]["dead_lettered"].clone()),
        (1.into(), 1.into())
    );
}

#[test]
fn a_worker_killed_mid_job_has_its_job_done_elsewhere() {
    let redis = Redis::start();
    publish(&redis, "crash", "job");
    // A lease far longer than the test: only reaping (after the member's time to live) can
    // free the job.
    let mut a = herald(&redis)
        .args([
            "work", "crash", "--group", "g", "--id", "a", "--lease", "600", "--",
        ])
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let g = groups(&redis, "crash");
        if g.first()
            .is_some_and(|g| g["in_flight"].as_array().is_some_and(|f| f.len() == 1))
        {
            let holder = g[0]["in_flight"][0]["holder"].as_str().unwrap().to_string();
            assert!(holder.starts_with("a#"), "{holder}");
            break;
        }
        assert!(Instant::now() < deadline, "worker a never took the job");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = a.kill(); // SIGKILL
    let _ = a.wait();
    let out = run(herald(&redis)
        .args([
            "work", "crash", "--group", "g", "--id", "b", "--count", "1", "--",
        ])
        .arg("true"));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["attempt"], 2);
    assert_eq!(lines[0]["outcome"], "acked");
    assert_eq!(groups(&redis, "crash")[0]["acked"], 1);
}

#[test]
fn a_delayed_message_goes_to_the_group_after_the_one_published_after_it() {
    let redis = Redis::start();
    let out = run(herald(&redis).args(["publish", "later", "delayed", "--delay", "1.5"]));
    assert!(out.status.success(), "{out:?}");
    publish(&redis, "later", "now");
    let out = run(herald(&redis).args(["work", "later", "--group", "g", "--count", "2"]));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    let data: Vec<&str> = lines.iter().map(|l| l["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["now", "delayed"]);
    assert_eq!(lines[1]["attempt"], 1);
    assert_eq!(lines[1]["headers"]["herald-delay-ms"], "1500");
}

#[test]
fn ctrl_c_lets_the_running_command_finish_then_leaves() {
    let redis = Redis::start();
    publish(&redis, "stop", "one");
    publish(&redis, "stop", "two");
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let mut child = herald(&redis)
        .args(["work", "stop", "--group", "g", "--id", "a", "--"])
        .args(["sh", "-c", r#"touch "$0"; sleep 1"#])
        .arg(&started)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !started.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald work did not end after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "only the running job finished: {lines:?}");
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["outcome"], "acked");
    let g = groups(&redis, "stop");
    assert_eq!(g[0]["acked"], 1);
    assert_eq!(g[0]["members"], Value::Array(vec![]), "it left the group");
    assert_eq!(g[0]["lag"], 1, "the second message is still to do");
}

#[test]
fn two_schedulers_of_one_schedule_publish_each_tick_once() {
    let redis = Redis::start();
    let spawn = || {
        herald(&redis)
            .args([
                "schedule", "cleanup", "cron", "--every", "0.3", "--count", "5", "clean",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children = vec![spawn(), spawn()];
    let mut ticks = std::collections::BTreeSet::new();
    for child in &mut children {
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "herald schedule did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 5, "{lines:?}");
        for l in lines {
            assert_eq!(l["schedule"], "cleanup");
            ticks.insert(l["tick"].as_u64().unwrap());
        }
    }
    let out = run(herald(&redis).args(["tail", "cron", "--from", "earliest", "--timeout", "1"]));
    assert!(out.status.success(), "{out:?}");
    let published: Vec<u64> = json_lines(&out)
        .iter()
        .map(|l| {
            l["headers"]["herald-schedule-tick"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        published,
        ticks.iter().copied().collect::<Vec<_>>(),
        "one message per tick, in tick order"
    );
}

#[test]
fn schedule_with_a_bad_cron_expression_is_a_usage_error() {
    let redis = Redis::start();
    let out = run(herald(&redis).args(["schedule", "nightly", "jobs", "--cron", "0 3 * * MOM"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cron"), "{err}");
    assert!(err.contains("day-of-week field"), "{err}");
    assert!(err.contains("\"MOM\""), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // Neither a period nor an expression, or both: usage errors too.
    let out = run(herald(&redis).args(["schedule", "nightly", "jobs"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(herald(&redis).args([
        "schedule",
        "nightly",
        "jobs",
        "--every",
        "1",
        "--cron",
        "* * * * *",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A good one runs: `--count 1` publishes the tick in progress, or waits for the next
    // minute's.
    let out = run(herald(&redis).args([
        "schedule",
        "minutely",
        "jobs",
        "--cron",
        "* * * * *",
        "--count",
        "1",
        "x",
    ]));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["schedule"], "minutely");
    assert_eq!(lines[0]["duplicate"], false);
}
