//! Membership with several processes: `herald join` processes on a real Redis (started by
//! the test on 127.0.0.1), one killed with SIGKILL, one paused with SIGSTOP; `herald members`,
//! `herald lag` and `herald publish --wait-all`. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald_testkit::RedisServer as Redis;

const WAIT: Duration = Duration::from_secs(20);

fn herald(redis: &Redis) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("HERALD_REDIS_URL", redis.url())
        .env_remove("RUST_LOG");
    c
}

/// A `herald join` process whose output lines arrive on a channel; killed on drop.
struct Member {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Member {
    fn spawn(redis: &Redis, id: &str, ttl: &str) -> Member {
        let mut child = herald(redis)
            .args(["join", "web", "--id", id, "--ttl", ttl, "--ack", "config"])
            .args(["--meta", &format!("name={id}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut m = Member { child, lines };
        let joined = m.line();
        assert!(joined.contains("\"event\":\"joined\""), "{joined}");
        m
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from herald join in time")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
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

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn member_ids(redis: &Redis) -> Vec<String> {
    let out = run(herald(redis).args(["members", "web"]));
    assert!(out.status.success(), "{out:?}");
    json_lines(&out)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

fn until_ids(redis: &Redis, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = member_ids(redis);
        if ids == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {ids:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn several_processes_join_ack_expire_and_leave() {
    let redis = Redis::start();
    let mut a = Member::spawn(&redis, "web-1", "10");
    let mut b = Member::spawn(&redis, "web-2", "10");
    let c = Member::spawn(&redis, "web-3", "1");
    until_ids(&redis, &["web-1", "web-2", "web-3"]);
    let all = run(herald(&redis).arg("members"));
    assert_eq!(json_lines(&all).len(), 3);
    assert_eq!(json_lines(&all)[0]["meta"]["name"], "web-1");

    // Everyone acknowledges: exit status 0 and a report naming all three.
    let out = run(herald(&redis).args([
        "publish",
        "config",
        "v1",
        "--wait-all",
        "web",
        "--timeout",
        "10",
    ]));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[1]["event"], "acks");
    assert_eq!(lines[1]["complete"], true);
    assert_eq!(
        lines[1]["acked"],
        serde_json::json!(["web-1", "web-2", "web-3"])
    );
    assert!(a.line().contains("\"offset\":1"));

    // web-3 is killed with SIGKILL: it expires, and is announced as Expired.
    drop(c);
    until_ids(&redis, &["web-1", "web-2"]);
    let tail = run(herald(&redis).args([
        "tail",
        "__members/web",
        "--from",
        "earliest",
        "--count",
        "4",
        "--timeout",
        "10",
    ]));
    let events: Vec<String> = json_lines(&tail)
        .iter()
        .map(|v| v["headers"]["herald-event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["joined", "joined", "joined", "expired"]);
    assert!(String::from_utf8_lossy(&tail.stdout).contains("gone:web-3:"));

    // web-2 is paused (SIGSTOP): the wait times out with status 5 and names it.
    b.signal("-STOP");
    let out = run(herald(&redis).args([
        "publish",
        "config",
        "v2",
        "--wait-all",
        "web",
        "--timeout",
        "1.5",
    ]));
    b.signal("-CONT");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let report = &json_lines(&out)[1];
    assert_eq!(report["complete"], false);
    assert_eq!(report["acked"], serde_json::json!(["web-1"]));
    assert_eq!(report["pending"], serde_json::json!(["web-2"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web-2"));

    // Once resumed, web-2 catches up; lag shows both cursors at the head.
    assert!(b.line().contains("\"offset\":1"));
    assert!(b.line().contains("\"offset\":2"));
    let lag = json_lines(&run(herald(&redis).args(["lag", "config"])));
    let lag: Vec<(String, u64)> = lag
        .iter()
        .map(|v| {
            (
                v["cursor"].as_str().unwrap().to_string(),
                v["lag"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(lag.contains(&("web-1".to_string(), 0)), "{lag:?}");
    assert!(lag.contains(&("web-2".to_string(), 0)), "{lag:?}");
    assert!(lag.contains(&("web-3".to_string(), 1)), "{lag:?}");

    // SIGTERM: a clean leave.
    a.signal("-TERM");
    let mut left = a.line();
    while left.contains("\"acked\"") {
        left = a.line();
    }
    assert!(left.contains("\"event\":\"left\""), "{left}");
    until_ids(&redis, &["web-2"]);

    // Bad input is refused before touching Redis.
    let bad = run(herald(&redis).args(["join", "bad group"]));
    assert_eq!(bad.status.code(), Some(2));
    let bad = run(herald(&redis).args(["publish", "t", "x", "--timeout", "1"]));
    assert_eq!(bad.status.code(), Some(2), "--timeout needs --wait-all");
}

/// A `herald map watch --join web` process whose output lines arrive on a channel.
fn map_watcher(redis: &Redis, id: &str) -> Member {
    let mut child = herald(redis)
        .args(["map", "watch", "cfg", "--join", "web", "--id", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut m = Member { child, lines };
    let first = m.line();
    assert!(first.contains("\"type\":\"snapshot\""), "{first}");
    m
}

#[test]
fn map_put_wait_all_waits_for_every_watching_member() {
    let redis = Redis::start();
    let mut a = map_watcher(&redis, "web-1");
    let b = map_watcher(&redis, "web-2");
    until_ids(&redis, &["web-1", "web-2"]);

    let out = run(herald(&redis).args([
        "map",
        "put",
        "cfg",
        "level",
        "debug",
        "--wait-all",
        "web",
        "--timeout",
        "10",
    ]));
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["key"], "level");
    assert_eq!(lines[1]["event"], "acks");
    assert_eq!(lines[1]["complete"], true);
    assert_eq!(lines[1]["acked"], serde_json::json!(["web-1", "web-2"]));
    assert!(a.line().contains("\"debug\""));

    // web-2 is paused: the wait times out with status 5 and names it.
    b.signal("-STOP");
    let out = run(herald(&redis).args([
        "map",
        "put",
        "cfg",
        "level",
        "info",
        "--wait-all",
        "web",
        "--timeout",
        "1.5",
    ]));
    b.signal("-CONT");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let report = &json_lines(&out)[1];
    assert_eq!(report["complete"], false);
    assert_eq!(report["pending"], serde_json::json!(["web-2"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web-2"));
    let bad = run(herald(&redis).args(["map", "put", "cfg", "k", "v", "--timeout", "1"]));
    assert_eq!(bad.status.code(), Some(2), "--timeout needs --wait-all");
}
