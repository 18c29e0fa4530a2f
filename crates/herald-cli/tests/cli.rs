#![allow(clippy::unwrap_used)]
//! End-to-end tests of the `herald` binary: each test runs the built command line with
//! `std::process::Command` against its own `redis-server` on a free 127.0.0.1 port (or against
//! nothing, for the usage and unreachable cases), and checks its JSON lines, its one-line
//! errors and its exit statuses. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use herald_testkit::{free_port, RedisServer};
use serde_json::Value;

/// The longest any one run of the binary may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long a live test waits for one line.
const LINE_WAIT: Duration = Duration::from_secs(15);

/// The binary, with a clean environment for the variables it reads.
fn herald_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env_remove("HERALD_REDIS_URL")
        .env("RUST_LOG", "error");
    cmd
}

/// The outcome of one run.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Stdout as JSON values, one per line.
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn assert_ok(&self) -> &Self {
        assert_eq!(self.code(), 0, "{self:#?}");
        self
    }
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` at most `limit`; kills it and fails the test when it takes longer.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the binary with `stdin` as standard input, bounded by [`RUN_LIMIT`].
fn run_with_input(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = herald_cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, RUN_LIMIT);
    writer.join().unwrap();
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs the binary with empty standard input.
fn run(args: &[&str]) -> Run {
    run_with_input(args, b"")
}

/// Runs the binary against `server`.
fn run_on(server: &RedisServer, args: &[&str]) -> Run {
    let url = server.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(args);
    run(&all)
}

/// A running `herald` whose stdout is read line by line, as a script would.
struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Live {
    fn start(server: &RedisServer, args: &[&str]) -> Self {
        let url = server.url();
        let mut all = vec!["--redis", url.as_str()];
        all.extend_from_slice(args);
        let mut child = herald_cmd(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().unwrap()));
        Live {
            child,
            lines,
            stderr,
        }
    }

    /// The next line of output, as JSON; fails the test if none comes within [`LINE_WAIT`].
    fn next(&mut self) -> Value {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")),
            Err(e) => {
                let _ = self.child.kill();
                panic!("no line from herald within {LINE_WAIT:?}: {e}");
            }
        }
    }

    /// Waits for the process to exit; returns its status and standard error.
    fn finish(mut self) -> (ExitStatus, String) {
        let status = wait_bounded(&mut self.child, RUN_LIMIT);
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that standard error is exactly one line `herald: <...>` containing `needle`.
fn assert_one_error_line(run: &Run, needle: &str) {
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert!(lines[0].starts_with("herald: "), "{run:#?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {run:#?}");
}

fn offsets(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect()
}

#[test]
fn publish_then_tail_from_earliest() {
    let server = RedisServer::start();
    let first = run_on(
        &server,
        &[
            "publish", "orders", "hello", "--key", "k1", "--header", "a=b", "--header", "c=x=y",
        ],
    );
    first.assert_ok();
    let receipt = &first.json()[0];
    assert_eq!(receipt["topic"], "orders");
    assert_eq!(receipt["offset"], 1);
    assert_eq!(receipt["duplicate"], false);
    assert!(receipt["epoch"].as_u64().unwrap() > 0);
    let receipt_keys: Vec<&String> = receipt.as_object().unwrap().keys().collect();
    assert_eq!(receipt_keys.len(), 4, "{receipt}");
    run_on(&server, &["publish", "orders", "world"]).assert_ok();

    let tail = run_on(
        &server,
        &["tail", "orders", "--from", "earliest", "--count", "2"],
    );
    tail.assert_ok();
    let lines = tail.json();
    assert_eq!(lines.len(), 2, "{tail:#?}");
    assert_eq!(offsets(&lines), [1, 2]);
    let m = &lines[0];
    assert_eq!(m["topic"], "orders");
    assert_eq!(m["epoch"], receipt["epoch"]);
    assert_eq!(m["key"], "k1");
    assert_eq!(m["data"], "hello");
    assert_eq!(m["headers"], serde_json::json!({"a": "b", "c": "x=y"}));
    assert!(m["node"].as_str().is_some_and(|n| !n.is_empty()));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let published_at = m["published_at"].as_u64().unwrap();
    assert!(
        published_at <= now_ms + 60_000 && published_at + 600_000 > now_ms,
        "{m}"
    );
    assert!(m.get("data_base64").is_none());
    assert_eq!(lines[1]["data"], "world");
    assert_eq!(lines[1]["headers"], serde_json::json!({}));
}

#[test]
fn same_key_twice_is_a_duplicate() {
    let server = RedisServer::start();
    let a = run_on(&server, &["publish", "t", "x", "--key", "once"]);
    let b = run_on(&server, &["publish", "t", "x", "--key", "once"]);
    let (a, b) = (&a.assert_ok().json()[0], &b.assert_ok().json()[0]);
    assert_eq!(a["duplicate"], false);
    assert_eq!(b["duplicate"], true);
    assert_eq!(a["offset"], b["offset"]);
    assert_eq!(a["epoch"], b["epoch"]);
    // Without a key, the same data is a new message.
    let c = run_on(&server, &["publish", "t", "x"]);
    assert_eq!(c.assert_ok().json()[0]["offset"], 2);
}

#[test]
fn publish_lines_from_stdin() {
    let server = RedisServer::start();
    let url = server.url();
    let args = [
        "--redis",
        url.as_str(),
        "publish",
        "lines",
        "-",
        "--key",
        "run",
    ];
    let first = run_with_input(&args, b"one\ntwo\r\n\nthree");
    let receipts = first.assert_ok().json();
    assert_eq!(offsets(&receipts), [1, 2, 3, 4]);
    assert!(receipts.iter().all(|r| r["duplicate"] == false));
    // Each receipt names its input line (from 1) and that line's key.
    let lines: Vec<u64> = receipts
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 3, 4]);
    let keys: Vec<&str> = receipts
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["run-1", "run-2", "run-3", "run-4"]);
    // The same input with the same --key publishes nothing twice.
    let again = run_with_input(&args, b"one\ntwo\r\n\nthree");
    let receipts = again.assert_ok().json();
    assert_eq!(offsets(&receipts), [1, 2, 3, 4]);
    assert!(
        receipts.iter().all(|r| r["duplicate"] == true),
        "{again:#?}"
    );

    let tail = run_on(
        &server,
        &["tail", "lines", "--from", "earliest", "--count", "4"],
    );
    let lines = tail.assert_ok().json();
    let data: Vec<&str> = lines.iter().map(|l| l["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["one", "two", "", "three"]);
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["run-1", "run-2", "run-3", "run-4"]);

    // Many lines (several batches), without a key: one receipt per line, in order.
    let input: String = (1..=1000).map(|i| format!("line {i}\n")).collect();
    let bulk = run_with_input(
        &[
            "--redis",
            url.as_str(),
            "publish",
            "bulk",
            "-",
            "--header",
            "h=1",
        ],
        input.as_bytes(),
    );
    let receipts = bulk.assert_ok().json();
    assert_eq!(offsets(&receipts), (1..=1000).collect::<Vec<_>>());
    // Without --key: the line, no key; a single publish has neither.
    assert!(receipts
        .iter()
        .enumerate()
        .all(|(i, r)| r["line"] == i as u64 + 1 && r.get("key").is_none()));
    let single = run_on(&server, &["publish", "bulk", "x"]);
    let single = &single.assert_ok().json()[0];
    assert!(
        single.get("line").is_none() && single.get("key").is_none(),
        "{single}"
    );
    let tail = run_on(&server, &["tail", "bulk", "--from", "990", "--count", "11"]);
    let lines = tail.assert_ok().json();
    assert_eq!(lines[0]["data"], "line 990");
    assert_eq!(lines[10]["data"], "line 1000");
    assert_eq!(lines[10]["headers"]["h"], "1");
}

#[test]
fn durable_tail_resumes_after_the_last_printed_message() {
    let server = RedisServer::start();
    let url = server.url();
    run_with_input(
        &["--redis", url.as_str(), "publish", "jobs", "-"],
        b"1\n2\n3\n4\n5\n",
    )
    .assert_ok();
    let durable = |extra: &[&str]| {
        let mut args = vec!["tail", "jobs", "--durable", "worker"];
        args.extend_from_slice(extra);
        run_on(&server, &args)
    };
    let first = durable(&["--from", "earliest", "--count", "2"]);
    assert_eq!(offsets(&first.assert_ok().json()), [1, 2]);
    // --from applies only when the cursor does not exist yet.
    let second = durable(&["--from", "latest", "--count", "2"]);
    assert_eq!(offsets(&second.assert_ok().json()), [3, 4]);
    // --timeout ends the command (status 0) once nothing more arrives.
    let started = Instant::now();
    let third = durable(&["--timeout", "1"]);
    assert_eq!(offsets(&third.assert_ok().json()), [5]);
    assert!(started.elapsed() < Duration::from_secs(30));

    let info = &run_on(&server, &["inspect", "jobs"]).assert_ok().json()[0];
    let cursor = &info["cursors"][0];
    assert_eq!(cursor["name"], "worker");
    assert_eq!(cursor["offset"], 5);
    assert_eq!(cursor["lag"], 0);
    // Nothing left for this cursor.
    let fourth = durable(&["--timeout", "0.5"]);
    assert_eq!(fourth.assert_ok().stdout, "");
}

#[test]
fn inspect_and_configure_print_json() {
    let server = RedisServer::start();
    let conf = run_on(
        &server,
        &[
            "configure",
            "metrics",
            "--max-len",
            "10",
            "--max-age",
            "60",
            "--dedup-window",
            "1.5",
            "--max-size",
            "2048",
        ],
    );
    let settings = &conf.assert_ok().json()[0];
    assert_eq!(
        *settings,
        serde_json::json!({
            "topic": "metrics",
            "max_len": 10,
            "max_age_ms": 60_000,
            "dedup_window_ms": 1500,
            "max_size": 2048,
        })
    );
    // Only the given settings change.
    let conf = run_on(&server, &["configure", "metrics", "--max-age", "0"]);
    let settings = &conf.assert_ok().json()[0];
    assert_eq!(settings["max_age_ms"], 0);
    assert_eq!(settings["max_len"], 10);

    // One publish each: a batch is kept or trimmed whole, so publish them separately.
    for i in 1..=12 {
        run_on(&server, &["publish", "metrics", &i.to_string()]).assert_ok();
    }
    let info = run_on(&server, &["inspect", "metrics"]);
    assert_eq!(info.stdout.lines().count(), 1);
    let info = &info.assert_ok().json()[0];
    assert_eq!(info["topic"], "metrics");
    assert!(info["epoch"].as_u64().is_some());
    assert_eq!(info["last_offset"], 12);
    assert_eq!(info["first_offset"], 3);
    assert_eq!(info["length"], 10);
    assert_eq!(info["settings"]["max_len"], 10);
    assert_eq!(info["configured"], true);
    assert_eq!(info["cursors"], serde_json::json!([]));

    // A topic never published: no epoch.
    let empty = &run_on(&server, &["inspect", "nothing"]).assert_ok().json()[0];
    assert_eq!(empty["epoch"], Value::Null);
    assert_eq!(empty["last_offset"], 0);

    // Bad settings and an empty change are bad input.
    let bad = run_on(&server, &["configure", "metrics", "--max-len", "0"]);
    assert_eq!(bad.code(), 2);
    assert_one_error_line(&bad, "max_len");
    let nothing = run_on(&server, &["configure", "metrics"]);
    assert_eq!(nothing.code(), 2);
    assert_one_error_line(&nothing, "nothing to change");
}

#[test]
fn binary_payload_is_printed_as_base64() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = herald::Herald::builder()
            .redis(server.url())
            .connect()
            .await
            .unwrap();
        node.publish("bin", vec![0xff_u8, 0x00, 0x80, b'a'])
            .await
            .unwrap();
        node.publish("bin", "text").await.unwrap();
    });
    let tail = run_on(
        &server,
        &["tail", "bin", "--from", "earliest", "--count", "2"],
    );
    let lines = tail.assert_ok().json();
    assert_eq!(lines[0]["data_base64"], "/wCAYQ==");
    assert!(lines[0].get("data").is_none(), "{}", lines[0]);
    assert_eq!(lines[1]["data"], "text");
    assert!(lines[1].get("data_base64").is_none());
}

#[test]
fn gap_and_reset_events() {
    let server = RedisServer::start();
    run_on(&server, &["configure", "small", "--max-len", "2"]).assert_ok();
    for data in ["a", "b", "c", "d", "e"] {
        run_on(&server, &["publish", "small", data]).assert_ok();
    }
    let tail = run_on(&server, &["tail", "small", "--from", "1", "--count", "2"]);
    let lines = tail.assert_ok().json();
    assert_eq!(lines.len(), 3, "{tail:#?}");
    let gap = &lines[0];
    assert_eq!(gap["event"], "gap");
    assert_eq!(gap["topic"], "small");
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(gap["reason"], "retention");
    assert!(gap["epoch"].as_u64().is_some());
    assert_eq!(offsets(&lines[1..]), [4, 5]);

    // A live tail sees the log lost (FLUSHALL) and a new epoch begin.
    run_on(&server, &["publish", "fragile", "before"]).assert_ok();
    let mut live = Live::start(
        &server,
        &["tail", "fragile", "--from", "earliest", "--count", "2"],
    );
    let before = live.next();
    assert_eq!(before["data"], "before");
    let _: () = server.cmd(&["FLUSHALL"]);
    run_on(&server, &["publish", "fragile", "after"]).assert_ok();
    let reset = live.next();
    assert_eq!(reset["event"], "reset", "{reset}");
    assert_eq!(reset["topic"], "fragile");
    assert_eq!(reset["previous_epoch"], before["epoch"]);
    assert_ne!(reset["epoch"], before["epoch"]);
    assert_eq!(reset["last_delivered"], 1);
    let after = live.next();
    assert_eq!(
        (after["data"].as_str(), after["offset"].as_u64()),
        (Some("after"), Some(1))
    );
    assert_eq!(after["epoch"], reset["epoch"]);
    let (status, stderr) = live.finish();
    assert!(status.success(), "{status:?} {stderr}");
}

/// A topic whose keys hold another type is refused: `tail --timeout` ends with status 4 and
/// names it (and not the healthy topic tailed with it), instead of looking like "no messages".
#[test]
fn tail_on_a_broken_topic_exits_4_and_names_it() {
    let server = RedisServer::start();
    let _: () = server.cmd(&["SET", "herald:{t}:meta", "not a hash"]);
    let _: () = server.cmd(&["SET", "herald:{t}:log", "not a stream"]);
    let r = run_on(&server, &["tail", "t", "--timeout", "1"]);
    assert_eq!(r.code(), 4, "{r:#?}");
    assert!(r.stdout.is_empty(), "{r:#?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("herald: "), "{r:#?}");
    assert!(last.contains("topic \"t\""), "{r:#?}");
    assert!(last.contains("wrong type"), "{r:#?}");

    // With a healthy topic alongside: still 4, naming only the broken one.
    let r = run_on(&server, &["tail", "t", "ok", "--timeout", "1"]);
    assert_eq!(r.code(), 4, "{r:#?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("topic \"t\""), "{r:#?}");
    assert!(!last.contains("topic \"ok\""), "{r:#?}");

    // Healthy topics alone: nothing delivered within --timeout is a success.
    let r = run_on(&server, &["tail", "ok", "--timeout", "1"]);
    assert_eq!(r.code(), 0, "{r:#?}");
    assert!(r.stderr.is_empty(), "{r:#?}");
}

#[test]
fn tail_prints_live_and_stops_on_ctrl_c() {
    let server = RedisServer::start();
    let mut live = Live::start(&server, &["tail", "a", "b"]);
    // --from latest: publish until the tail shows it is listening (each line flushed at once).
    let deadline = Instant::now() + LINE_WAIT;
    let first = loop {
        run_on(&server, &["publish", "a", "ping"]).assert_ok();
        match live.lines.recv_timeout(Duration::from_millis(300)) {
            Ok(line) => break serde_json::from_str::<Value>(&line).unwrap(),
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => panic!("tail printed nothing: {e}"),
        }
    };
    assert_eq!(first["topic"], "a");
    run_on(&server, &["publish", "b", "pong"]).assert_ok();
    let mut next = live.next();
    while next["topic"] == "a" {
        next = live.next(); // further pings sent before the first one arrived
    }
    assert_eq!(
        (next["topic"].as_str(), next["data"].as_str()),
        (Some("b"), Some("pong"))
    );

    let pid = live.child.id().to_string();
    let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(killed.success());
    let (status, stderr) = live.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    // Nothing listens here: bad input is reported before any connection is tried.
    let port = free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let url = url.as_str();
    for args in [
        vec!["--redis", url, "publish", "bad topic", "x"],
        vec!["--redis", url, "tail", "ok", "not*ok"],
        vec!["--redis", url, "inspect", ""],
        vec!["--redis", url, "configure", "a{b}", "--max-len", "3"],
    ] {
        let r = run(&args);
        assert_eq!(r.code(), 2, "{args:?}: {r:#?}");
        assert_one_error_line(&r, "invalid topic name");
        assert_eq!(r.stdout, "");
    }
    // Usage errors (clap) also exit with 2.
    for args in [
        vec!["publish", "t", "x", "--header", "no-equals-sign"],
        vec!["tail", "t", "--from", "first"],
        vec!["tail", "t", "--count", "0"],
        vec!["tail"],
        vec!["frobnicate"],
        vec!["--connect-timeout", "soon", "inspect", "t"],
    ] {
        let r = run(&args);
        assert_eq!(r.code(), 2, "{args:?}: {r:#?}");
        assert!(!r.stderr.is_empty());
    }
    let header = run(&["publish", "t", "x", "--header", "novalue"]);
    assert!(header.stderr.contains("NAME=VALUE"), "{header:#?}");
    // A malformed URL is bad input too.
    let r = run(&["--redis", "http://127.0.0.1:1", "inspect", "t"]);
    assert_eq!(r.code(), 2, "{r:#?}");
    assert_one_error_line(&r, "Redis URL");
}

#[test]
fn unreachable_redis_exits_3() {
    let port = free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let r = run(&[
        "--redis",
        &url,
        "--connect-timeout",
        "1",
        "publish",
        "t",
        "x",
    ]);
    assert_eq!(r.code(), 3, "{r:#?}");
    assert_one_error_line(&r, "cannot reach Redis");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // A server that accepts connections but never answers: --connect-timeout still holds.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let r = run(&[
        "--redis",
        &silent_url,
        "--connect-timeout",
        "1",
        "inspect",
        "t",
    ]);
    assert_eq!(r.code(), 3, "{r:#?}");
    assert_one_error_line(&r, "cannot reach Redis");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
    // The environment variable works like --redis.
    let mut child = herald_cmd(&["--connect-timeout", "0.2", "inspect", "t"])
        .env("HERALD_REDIS_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = drain(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, RUN_LIMIT);
    assert_eq!(status.code(), Some(3));
    assert!(err.join().unwrap().contains(&port));
}

#[test]
fn demo_on_the_embedded_broker() {
    let r = run(&["demo"]);
    r.assert_ok();
    assert!(
        r.stdout
            .contains("OK: all 4 nodes received the same 100 messages in the same order"),
        "{r:#?}"
    );
    assert!(r.stdout.contains("duplicate: true"), "{r:#?}");
    assert!(r.stdout.contains("embedded"), "{r:#?}");
    let r = run(&["demo", "--nodes", "3", "--messages", "40"]);
    r.assert_ok();
    assert!(
        r.stdout
            .contains("OK: all 3 nodes received the same 120 messages"),
        "{r:#?}"
    );
}

#[test]
fn demo_on_redis() {
    let server = RedisServer::start();
    let r = run_on(&server, &["demo", "--nodes", "3", "--messages", "20"]);
    r.assert_ok();
    assert!(r.stdout.contains("Redis"), "{r:#?}");
    assert!(
        r.stdout
            .contains("OK: all 3 nodes received the same 60 messages"),
        "{r:#?}"
    );
    // A rerun uses a new topic, so it is not confused by the first run's messages.
    let again = run_on(&server, &["demo", "--nodes", "2", "--messages", "5"]);
    assert!(
        again.assert_ok().stdout.contains("OK: all 2 nodes"),
        "{again:#?}"
    );
}

#[test]
fn help_documents_exit_statuses() {
    let r = run(&["--help"]);
    r.assert_ok();
    for needle in [
        "Exit status",
        "3  Redis could not be reached",
        "4  Redis refused",
        "HERALD_REDIS_URL",
    ] {
        assert!(
            r.stdout.contains(needle),
            "{needle:?} missing from {}",
            r.stdout
        );
    }
    let publish = run(&["publish", "--help"]);
    assert!(
        publish.assert_ok().stdout.contains("KEY-N"),
        "{}",
        publish.stdout
    );
    assert!(publish.stdout.contains("Exit status"));
}

#[cfg(feature = "bench")]
#[test]
fn bench_rounds_are_paired_and_summarised() {
    let server = RedisServer::start();
    let r = run_on(
        &server,
        &[
            "bench",
            "--quick",
            "--rounds",
            "2",
            "--cases",
            "fan1-128B-max",
            "--messages",
            "500",
            "--json",
        ],
    );
    r.assert_ok();
    let lines = r.json();
    let (summaries, rows): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|l| l.get("summary").is_some());
    for system in ["redis-pubsub", "redis-streams", "herald"] {
        let rounds: Vec<u64> = rows
            .iter()
            .filter(|l| l["system"] == system)
            .map(|l| l["round"].as_u64().unwrap())
            .collect();
        assert_eq!(rounds, [1, 2], "{system}: {r:#?}");
    }
    assert_eq!(rows.len(), 6, "{r:#?}");
    assert!(rows.iter().all(|l| l["case"] == "fan1-128B-max"), "{r:#?}");
    // Rounds are interleaved system by system.
    let order: Vec<(u64, &str)> = rows
        .iter()
        .map(|l| (l["round"].as_u64().unwrap(), l["system"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            (1, "redis-pubsub"),
            (1, "redis-streams"),
            (1, "herald"),
            (2, "redis-pubsub"),
            (2, "redis-streams"),
            (2, "herald"),
        ]
    );
    assert_eq!(summaries.len(), 1, "{r:#?}");
    let s = summaries[0];
    assert_eq!(s["summary"], "rounds");
    assert_eq!(s["case"], "fan1-128B-max");
    assert_eq!(s["system"], "herald");
    assert_eq!(s["rounds"], 2);
    // The summary is printed after the case's runs.
    assert!(lines.last().unwrap().get("summary").is_some(), "{r:#?}");
    for key in ["ratio_pubsub", "ratio_streams"] {
        let spread = &s[key];
        let (median, min, max) = (
            spread["median"].as_f64().unwrap(),
            spread["min"].as_f64().unwrap(),
            spread["max"].as_f64().unwrap(),
        );
        assert!(min <= median && median <= max, "{key}: {s}");
        let herald: Vec<f64> = rows
            .iter()
            .filter(|l| l["system"] == "herald")
            .map(|l| l[key].as_f64().unwrap())
            .collect();
        assert!(
            (median - (herald[0] + herald[1]) / 2.0).abs() < 1e-3,
            "{key}: {s}"
        );
    }
}

#[cfg(feature = "bench")]
#[test]
fn bench_rounds_out_of_range_is_a_usage_error() {
    for rounds in ["0", "21"] {
        let r = run(&["bench", "--rounds", rounds]);
        assert_eq!(r.code(), 2, "{r:#?}");
        assert_one_error_line(&r, "--rounds must be from 1 to 20");
        assert!(r.stdout.is_empty(), "{r:#?}");
    }
    let help = run(&["bench", "--help"]);
    assert!(help.assert_ok().stdout.contains("--rounds"), "{help:#?}");
}

/// Without the `bench` feature the subcommand does not exist: a usage error.
#[cfg(not(feature = "bench"))]
#[test]
fn bench_is_absent_without_the_feature() {
    let r = run(&["bench", "--quick"]);
    assert_eq!(r.code(), 2, "{r:#?}");
}

/// `SIGCONT`s a stopped process when dropped, so that a failing test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -STOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The process id of a server, from `INFO server`.
fn process_id(server: &RedisServer) -> u32 {
    let info: String = server.cmd(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `herald publish --min-replicas`: exit 0 once the replica has the message; with the replica
/// stopped, exit status 3 and a message saying what to do; publishing the same key again once
/// it is back succeeds without a duplicate.
#[test]
fn publish_min_replicas_exits_3_when_replicas_do_not_confirm() {
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
        "--repl-diskless-sync-delay",
        "0",
    ]);
    // In sync: a fresh write reaches the replica (WAIT) within the bound.
    herald_testkit::wait_until("replica in sync", Duration::from_secs(20), || {
        let (acked,): (usize,) = redis::pipe()
            .cmd("SET")
            .arg("sync-check")
            .arg(1)
            .ignore()
            .cmd("WAIT")
            .arg(1)
            .arg(100)
            .query(&mut primary.conn())
            .unwrap();
        acked == 1
    });
    let reached = run_on(
        &primary,
        &["publish", "t", "one", "--key", "k1", "--min-replicas", "1"],
    );
    assert_eq!(offsets(&reached.assert_ok().json()), [1]);

    let stopped = Stopped::stop(process_id(&replica));
    let args = [
        "publish",
        "t",
        "two",
        "--key",
        "k2",
        "--min-replicas",
        "1",
        "--replica-timeout",
        "0.3",
    ];
    let missed = run_on(&primary, &args);
    assert_eq!(missed.code(), 3, "{missed:#?}");
    assert!(
        missed.stdout.is_empty(),
        "nothing acknowledged: {missed:#?}"
    );
    assert_one_error_line(&missed, "0 of the 1 replicas");
    assert!(missed.stderr.contains("same --key"), "{missed:#?}");
    drop(stopped);

    // The replica is back: the same command waits again, and the message is there once.
    let mut again = None;
    for _ in 0..50 {
        let run = run_on(&primary, &args);
        if run.code() == 0 {
            again = Some(run);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let again = again.expect("the replica never confirmed after SIGCONT");
    let receipt = &again.json()[0];
    assert_eq!(
        (receipt["offset"].as_u64(), receipt["duplicate"].as_bool()),
        (Some(2), Some(true))
    );
    // A bad value is refused before anything is published.
    let bad = run_on(&primary, &["publish", "t", "x", "--min-replicas", "many"]);
    assert_eq!(bad.code(), 2, "{bad:#?}");
}

/// One HTTP/1.1 request over a plain socket; returns the status and the body.
#[cfg(feature = "serve")]
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LINE_WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

#[cfg(feature = "serve")]
#[test]
fn serve_publishes_over_http_and_refuses_a_public_address_without_auth() {
    let server = RedisServer::start();
    let refused = run_on(&server, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert_one_error_line(&refused, "without authentication");
    let bad_auth = run_on(&server, &["serve", "--auth", "jwt-none:/dev/null"]);
    assert_eq!(bad_auth.code(), 2, "{bad_auth:#?}");
    assert_one_error_line(&bad_auth, "--auth");

    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut live = Live::start(&server, &["serve", "--listen", &listen]);
    let line = live.next();
    assert_eq!(line["event"], "listening");
    assert_eq!(line["address"], listen.as_str());
    let (status, body) = http(&listen, "POST", "/v1/topics/t/messages", "hello");
    assert_eq!(status, 200, "{body}");
    let receipt: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(receipt["offset"], 1);
    let (status, _) = http(&listen, "GET", "/healthz", "");
    assert_eq!(status, 200);
    let tail = run_on(
        &server,
        &["tail", "t", "--from", "earliest", "--count", "1"],
    );
    assert_eq!(tail.json()[0]["data"], "hello");
}

#[test]
fn map_put_get_cas_and_watch() {
    let server = RedisServer::start();
    let put = run_on(&server, &["map", "put", "cfg", "color", "blue"]);
    put.assert_ok();
    let rev = put.json()[0]["revision"].as_str().unwrap().to_string();
    let got = run_on(&server, &["map", "get", "cfg", "color"]);
    got.assert_ok();
    assert_eq!(got.json()[0]["value"], "blue");
    assert_eq!(got.json()[0]["revision"], rev.as_str());
    // A lost compare-and-set: status 6, naming the current revision; nothing stored.
    let lost = run_on(&server, &["map", "put", "cfg", "color", "red", "--absent"]);
    assert_eq!(lost.code(), 6, "{lost:#?}");
    assert!(lost.stderr.contains(&rev), "{lost:#?}");
    let stale = run_on(
        &server,
        &["map", "del", "cfg", "color", "--expect", "1:999"],
    );
    assert_eq!(stale.code(), 6, "{stale:#?}");
    let won = run_on(
        &server,
        &["map", "put", "cfg", "color", "red", "--expect", &rev],
    );
    won.assert_ok();
    let bad = run_on(&server, &["map", "put", "cfg", "", "x"]);
    assert_eq!(bad.code(), 2, "{bad:#?}");
    let watch = run_on(&server, &["map", "watch", "cfg", "--count", "1"]);
    watch.assert_ok();
    let lines = watch.json();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["type"], "snapshot");
    assert_eq!(lines[0]["entries"]["color"]["value"], "red");
    let whole = run_on(&server, &["map", "get", "cfg"]);
    assert_eq!(whole.json()[0]["revision"], lines[0]["revision"]);
    let del = run_on(&server, &["map", "del", "cfg", "color"]);
    del.assert_ok();
    assert!(del.json()[0]["revision"].is_string());
    let again = run_on(&server, &["map", "del", "cfg", "color"]);
    again.assert_ok();
    assert!(again.json()[0]["revision"].is_null());
}
