//! Protocol interoperability: a client Herald did not write — Python's `redis`
//! package following `docs/PROTOCOL.md`, in `tests/interop/client.py` — publishes to and reads
//! from Herald topics, and interoperates with Herald's own publisher and subscriber.
//!
//! Needs `python3` with the `redis` module (installed by `scripts/test.sh`); without them the
//! tests fail, they are never skipped.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::{Event, GapReason, Herald, Message, SettingsChange, Start};
use serde_json::{json, Value};
use support::RedisServer;

/// Longest a run of the Python client may take.
const PROCESS_WAIT: Duration = Duration::from_secs(60);

fn client_path() -> String {
    format!("{}/tests/interop/client.py", env!("CARGO_MANIFEST_DIR"))
}

fn python(args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(client_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads a pipe to the end on its own thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// Runs a command to completion within `wait`, killing it if it takes longer.
fn run_bounded(mut cmd: Command, wait: Duration) -> (i32, String, String) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); run scripts/test.sh to install it"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > wait {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {wait:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    (status.code().unwrap_or(-1), out, err)
}

/// Fails (never skips) when python3 or its `redis` module is missing.
fn require_python() {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import redis"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (code, _, err) = run_bounded(cmd, PROCESS_WAIT);
    assert_eq!(
        code, 0,
        "the interop test needs python3 with the `redis` module; run scripts/test.sh to install \
         them ({err})"
    );
}

/// Runs the Python client; returns its exit status and its stdout as JSON lines.
async fn client(args: Vec<String>) -> (i32, Vec<Value>) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_bounded(python(&args), PROCESS_WAIT);
        let lines = out
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("client printed {l:?}, not JSON ({e}); stderr: {err}")
                })
            })
            .collect();
        if code != 0 && code != 3 {
            panic!("client {args:?} exited with {code}; stdout: {out}; stderr: {err}");
        }
        (code, lines)
    })
    .await
    .unwrap()
}

/// Publishes `messages` through `publish.lua` from Python; returns the JSON reply.
async fn py_publish(url: &str, topic: &str, node: &str, messages: Value, extra: &[&str]) -> Value {
    let mut args = vec![
        "publish".to_string(),
        url.to_string(),
        "herald".into(),
        topic.into(),
        messages.to_string(),
        "--node".into(),
        node.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (_, mut lines) = client(args).await;
    assert_eq!(lines.len(), 1, "one reply line expected: {lines:?}");
    lines.pop().unwrap()
}

/// Reads history from `from` with `read.lua` from Python; returns (entries, end line).
async fn py_read(url: &str, topic: &str, from: u64, chunk: u32) -> (Vec<Value>, Value) {
    let args = vec![
        "read".to_string(),
        url.to_string(),
        "herald".into(),
        topic.into(),
        from.to_string(),
        "--chunk".into(),
        chunk.to_string(),
    ];
    let (code, mut lines) = client(args).await;
    assert_eq!(code, 0);
    let end = lines.pop().unwrap();
    assert_eq!(end["event"], "end", "{end}");
    (lines, end)
}

fn results(reply: &Value) -> Vec<(u64, bool)> {
    reply["results"]
        .as_array()
        .unwrap_or_else(|| panic!("not a publish reply: {reply}"))
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["duplicate"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `len:bytes`, the frame's field encoding.
fn field(out: &mut Vec<u8>, x: &[u8]) {
    out.extend_from_slice(x.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(x);
}

async fn next_message(sub: &mut herald::Subscription) -> herald::Delivery {
    match support::next_event(sub).await {
        Event::Message(d) => d,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn assert_quiet(sub: &mut herald::Subscription) {
    if let Some(e) = support::maybe_event(sub, Duration::from_millis(700)).await {
        panic!("unexpected event {e:?}");
    }
}

/// (a) Python publishes (batches, headers, duplicates); Herald's subscriber receives exactly
/// those messages, in order, with the script's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_herald_subscribes() {
    require_python();
    let server = RedisServer::start();
    let url = server.url();
    let herald = Herald::builder()
        .redis(&url)
        .node_id("rust-node")
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut sub = herald.subscribe(["t"]).from(Start::Earliest).await.unwrap();

    let r1 = py_publish(
        &url,
        "t",
        "py-node",
        json!([
            {"key": "a", "data": "one", "headers": {"source": "python", "n": "1"}},
            {"key": "b", "data_hex": "00ff333a78"},
        ]),
        &[],
    )
    .await;
    assert_eq!(results(&r1), vec![(1, false), (2, false)], "{r1}");
    let epoch = r1["epoch"].as_u64().unwrap();
    // A retry of "a" is a duplicate, "c" is new; "d" twice in one batch is one message.
    let r2 = py_publish(
        &url,
        "t",
        "py-node",
        json!([
            {"key": "a", "data": "one (retry)"},
            {"key": "c", "data": "three", "headers": {"x": "y:z"}},
            {"key": "d", "data": ""},
            {"key": "d", "data": "four (repeat)"},
        ]),
        &[],
    )
    .await;
    assert_eq!(r2["epoch"].as_u64(), Some(epoch));
    assert_eq!(
        results(&r2),
        vec![(1, true), (3, false), (4, false), (4, true)],
        "{r2}"
    );

    type Expected<'a> = (u64, &'a str, &'a [u8], &'a [(&'a str, &'a str)]);
    let expected: [Expected<'_>; 4] = [
        (1, "a", b"one", &[("n", "1"), ("source", "python")]),
        (2, "b", b"\x00\xff3:x", &[]),
        (3, "c", b"three", &[("x", "y:z")]),
        (4, "d", b"", &[]),
    ];
    for (offset, key, payload, headers) in expected {
        let d = next_message(&mut sub).await;
        assert_eq!(
            (
                d.topic.as_str(),
                d.position.epoch,
                d.position.offset,
                d.key.as_str()
            ),
            ("t", epoch, offset, key)
        );
        assert_eq!(&d.payload[..], payload, "payload of offset {offset}");
        assert_eq!(d.node, "py-node");
        let headers: herald::Headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(d.headers, headers, "headers of offset {offset}");
        assert!(
            d.published_at_ms.abs_diff(now_ms()) < 60_000,
            "published_at {} is Redis's clock in ms",
            d.published_at_ms
        );
    }
    assert_quiet(&mut sub).await;

    // Dedup is shared: Herald publishing Python's key "c" is a duplicate too.
    let again = herald
        .publish("t", Message::new("three").key("c"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.position.epoch, again.position.offset), (epoch, 3));
    // And offsets continue densely across clients.
    let next = herald.publish("t", "five").await.unwrap();
    assert_eq!(
        (next.position.epoch, next.position.offset, next.duplicate),
        (epoch, 5, false)
    );
    let d = next_message(&mut sub).await;
    assert_eq!(
        (d.position.offset, &d.payload[..], d.node.as_str()),
        (5, &b"five"[..], "rust-node")
    );
    assert_quiet(&mut sub).await;

    let info = herald.inspect("t").await.unwrap();
    assert_eq!(
        (info.epoch, info.first_offset, info.last_offset),
        (Some(epoch), 1, 5)
    );
}

/// (b) Herald publishes; Python reads history with `read.lua` and decodes every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_publishes_python_reads() {
    require_python();
    let server = RedisServer::start();
    let url = server.url();
    let herald = Herald::builder()
        .redis(&url)
        .node_id("rust-node")
        .connect()
        .await
        .unwrap();

    let first = herald
        .publish(
            "orders/eu:1",
            Message::new("alpha")
                .key("k-alpha")
                .header("a", "1")
                .header("b", "x:y \"quoted\" é"),
        )
        .await
        .unwrap();
    let batch = herald
        .publish_batch(
            "orders/eu:1",
            [
                Message::new(vec![0u8, 255, b'1', b'2', b':', b'x']),
                Message::new(""),
                Message::new("gamma").key("k-gamma"),
            ],
        )
        .await
        .unwrap();
    let dup = herald
        .publish("orders/eu:1", Message::new("alpha, retried").key("k-alpha"))
        .await
        .unwrap();
    assert!(dup.duplicate);
    let epoch = first.position.epoch;
    let offsets: Vec<u64> = batch.iter().map(|r| r.position.offset).collect();
    assert_eq!(
        (first.position.offset, offsets, dup.position.offset),
        (1, vec![2, 3, 4], 1)
    );

    for chunk in [100, 1] {
        let (entries, end) = py_read(&url, "orders/eu:1", 1, chunk).await;
        assert_eq!(
            end,
            json!({"event": "end", "epoch": epoch, "first": 1, "last": 4})
        );
        assert_eq!(entries.len(), 4, "{entries:?}");
        let payloads: [&[u8]; 4] = [b"alpha", b"\x00\xff12:x", b"", b"gamma"];
        for (i, (e, payload)) in entries.iter().zip(payloads).enumerate() {
            assert_eq!(e["epoch"].as_u64(), Some(epoch), "{e}");
            assert_eq!(e["offset"].as_u64(), Some(i as u64 + 1), "{e}");
            assert_eq!(e["node"], "rust-node", "{e}");
            assert_eq!(e["data_hex"], hex(payload), "{e}");
            assert!(!e["key"].as_str().unwrap().is_empty(), "{e}");
            assert!(
                e["published_at"].as_u64().unwrap().abs_diff(now_ms()) < 60_000,
                "{e}"
            );
        }
        assert_eq!(entries[0]["key"], "k-alpha");
        assert_eq!(entries[3]["key"], "k-gamma");
        // Generated keys are distinct.
        assert_ne!(entries[1]["key"], entries[2]["key"]);
        assert_eq!(
            entries[0]["headers"],
            json!({"a": "1", "b": "x:y \"quoted\" é"})
        );
        assert_eq!(entries[1]["headers"], json!({}));
        assert_eq!(entries[0]["data"], "alpha");
    }

    // Reading from the middle.
    let (entries, _) = py_read(&url, "orders/eu:1", 3, 100).await;
    let offsets: Vec<u64> = entries
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4]);

    // A topic that was never published has no epoch.
    let (entries, end) = py_read(&url, "never", 1, 100).await;
    assert!(entries.is_empty());
    assert_eq!(
        end,
        json!({"event": "end", "epoch": null, "first": 0, "last": 0})
    );
}

/// A running `client.py subscribe`, killed on drop.
struct PySubscriber {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl PySubscriber {
    fn start(url: &str, topic: &str, frames: usize) -> Self {
        let mut child = python(&["subscribe", url, "herald", topic, &frames.to_string()])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); run scripts/test.sh"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        PySubscriber { child, lines }
    }

    async fn next(&mut self) -> Value {
        match tokio::time::timeout(support::EVENT_WAIT, self.lines.recv()).await {
            Ok(Some(l)) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")),
            Ok(None) => panic!("the Python subscriber exited early"),
            Err(_) => panic!(
                "no output from the Python subscriber within {:?}",
                support::EVENT_WAIT
            ),
        }
    }

    /// Waits (bounded) for the process to exit; returns its status code.
    async fn wait(mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                started.elapsed() < PROCESS_WAIT,
                "the Python subscriber did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PySubscriber {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// (c') A publish whose pieces are large is announced split (an `h2` header, then the pieces
/// as the next message); Python pairs the two, and a small publish after it is one `h1` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_decodes_split_notifications() {
    require_python();
    let server = RedisServer::start();
    let url = server.url();
    let herald = Herald::builder()
        .redis(&url)
        .node_id("rust-node")
        .connect()
        .await
        .unwrap();
    let mut py = PySubscriber::start(&url, "split.t", 2);
    assert_eq!(py.next().await["event"], "subscribed");

    let big: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'a' + i; 1500]).collect();
    let receipts = herald.publish_batch("split.t", big.clone()).await.unwrap();
    herald.publish("split.t", "small").await.unwrap();
    let (f1, f2) = (py.next().await, py.next().await);
    assert_eq!(py.wait().await, 0);
    assert_eq!(
        (f1["event"].as_str(), f1["split"].as_bool()),
        (Some("frame"), Some(true)),
        "{f1}"
    );
    assert_eq!(
        (f2["event"].as_str(), f2["split"].as_bool()),
        (Some("frame"), Some(false)),
        "{f2}"
    );
    assert_eq!(f1["epoch"].as_u64(), Some(receipts[0].position.epoch));
    assert_eq!(
        (f1["first"].as_u64(), f1["count"].as_u64()),
        (Some(1), Some(3))
    );
    let entries = f1["entries"].as_array().unwrap();
    for (i, (e, payload)) in entries.iter().zip(&big).enumerate() {
        assert_eq!(e["offset"].as_u64(), Some(i as u64 + 1), "{e}");
        assert_eq!(e["data_hex"].as_str(), Some(hex(payload).as_str()), "{e}");
        assert_eq!(e["node"], "rust-node", "{e}");
    }
    assert_eq!(f2["entries"][0]["data"], "small", "{f2}");
    assert_eq!(f2["first"].as_u64(), Some(4));
}

/// (c) Python decodes the live notification frames of Herald's publishes, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_decodes_live_frames() {
    require_python();
    let server = RedisServer::start();
    let url = server.url();
    let herald = Herald::builder()
        .redis(&url)
        .node_id("rust-node")
        .connect()
        .await
        .unwrap();

    let mut py = PySubscriber::start(&url, "live.t", 2);
    assert_eq!(py.next().await["event"], "subscribed");

    let receipts = herald
        .publish_batch(
            "live.t",
            [
                Message::new("one").key("k1").header("h", "v"),
                Message::new(vec![b'9', b':', 0, 0xfe]).key("k2"),
                Message::new("").key("k3"),
            ],
        )
        .await
        .unwrap();
    // A batch whose first message is a duplicate: the frame holds only the new one.
    let second = herald
        .publish_batch(
            "live.t",
            [
                Message::new("one").key("k1"),
                Message::new("four").key("k4"),
            ],
        )
        .await
        .unwrap();
    assert!(second[0].duplicate && !second[1].duplicate);
    let epoch = receipts[0].position.epoch;

    let f1 = py.next().await;
    let f2 = py.next().await;
    assert_eq!(py.wait().await, 0);
    assert_eq!(f1["event"], "frame", "{f1}");
    assert_eq!(f2["event"], "frame", "{f2}");
    assert_eq!(
        (
            f1["epoch"].as_u64(),
            f1["first"].as_u64(),
            f1["count"].as_u64()
        ),
        (Some(epoch), Some(1), Some(3)),
        "{f1}"
    );
    assert_eq!(
        (
            f2["epoch"].as_u64(),
            f2["first"].as_u64(),
            f2["count"].as_u64()
        ),
        (Some(epoch), Some(4), Some(1)),
        "{f2}"
    );

    let expected: [(&[u8], &str, &[u8], Value); 4] = [
        (b"k1", "one", b"one", json!({"h": "v"})),
        (b"k2", "", b"9:\x00\xfe", json!({})),
        (b"k3", "", b"", json!({})),
        (b"k4", "four", b"four", json!({})),
    ];
    let entries: Vec<&Value> = f1["entries"]
        .as_array()
        .unwrap()
        .iter()
        .chain(f2["entries"].as_array().unwrap())
        .collect();
    assert_eq!(entries.len(), 4);
    for (i, (e, (key, _, payload, headers))) in entries.iter().zip(&expected).enumerate() {
        assert_eq!(e["offset"].as_u64(), Some(i as u64 + 1), "{e}");
        assert_eq!(e["key"].as_str().unwrap().as_bytes(), *key, "{e}");
        assert_eq!(e["node"], "rust-node", "{e}");
        assert_eq!(e["data_hex"], hex(payload), "{e}");
        assert_eq!(&e["headers"], headers, "{e}");
    }

    // The frames are exactly the documented grammar.
    let frame = |first: u64, items: &[&(&[u8], &str, &[u8], Value)], entries: &[&Value]| {
        let mut out = Vec::new();
        field(&mut out, b"h1");
        field(&mut out, epoch.to_string().as_bytes());
        field(&mut out, first.to_string().as_bytes());
        field(&mut out, items.len().to_string().as_bytes());
        let published_at = entries[0]["published_at"].as_u64().unwrap();
        field(&mut out, b"rust-node");
        field(&mut out, published_at.to_string().as_bytes());
        for ((key, _, payload, headers), e) in items.iter().zip(entries) {
            assert_eq!(
                e["published_at"].as_u64(),
                Some(published_at),
                "one time per publish"
            );
            field(&mut out, key);
            let h = if headers.as_object().unwrap().is_empty() {
                String::new()
            } else {
                headers.to_string()
            };
            field(&mut out, h.as_bytes());
            field(&mut out, payload);
        }
        hex(&out)
    };
    let items: Vec<_> = expected.iter().collect();
    assert_eq!(f1["raw_hex"], frame(1, &items[..3], &entries[..3]));
    assert_eq!(f2["raw_hex"], frame(4, &items[3..], &entries[3..]));
}

/// (d) The script's refusals write nothing, and retention is seen alike by both clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_retention() {
    require_python();
    let server = RedisServer::start();
    let url = server.url();
    let herald = Herald::builder()
        .redis(&url)
        .node_id("rust-node")
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();

    // An unknown protocol version is refused before anything is written.
    let r = py_publish(
        &url,
        "r",
        "py",
        json!([{"key": "a", "data": "x"}]),
        &["--protocol", "1"],
    )
    .await;
    assert_eq!(r["error"], "HERALD_PROTOCOL", "{r}");
    let n: u64 = server.cmd(&[
        "EXISTS",
        "herald:{r}:meta",
        "herald:{r}:log",
        "herald:{r}:settings",
        "herald:{r}:dedup",
    ]);
    assert_eq!(n, 0, "a refused publish wrote keys");

    // A foreign key of the wrong type: WRONGTYPE, nothing written.
    let _: () = server.cmd(&["SET", "herald:{w}:log", "foreign"]);
    let r = py_publish(&url, "w", "py", json!([{"key": "a", "data": "x"}]), &[]).await;
    assert_eq!(r["error"], "WRONGTYPE", "{r}");
    let n: u64 = server.cmd(&[
        "EXISTS",
        "herald:{w}:meta",
        "herald:{w}:settings",
        "herald:{w}:dedup",
    ]);
    assert_eq!(n, 0, "a refused publish wrote keys");

    // Settings configured by Herald are applied by the script: size limit and retention.
    let mut change = SettingsChange::default();
    change.max_size = Some(8);
    change.max_len = Some(3);
    herald.configure("r", change).await.unwrap();
    let ok = py_publish(
        &url,
        "r",
        "py",
        json!([{"key": "a", "data": "12345678"}]),
        &[],
    )
    .await;
    assert_eq!(results(&ok), vec![(1, false)], "{ok}");
    let epoch = ok["epoch"].as_u64().unwrap();
    let r = py_publish(
        &url,
        "r",
        "py",
        json!([{"key": "b", "data": "fits"}, {"key": "c", "data": "123456789"}]),
        &[],
    )
    .await;
    assert_eq!(r["error"], "HERALD_TOO_LARGE", "{r}");
    assert_eq!(r["message"], "HERALD_TOO_LARGE 1 9 8", "{r}");
    let info = herald.inspect("r").await.unwrap();
    assert_eq!(
        (info.last_offset, info.length),
        (1, 1),
        "a refused batch wrote entries"
    );
    let n: u64 = server.cmd(&["HEXISTS", "herald:{r}:dedup", "b"]);
    assert_eq!(n, 0);

    let msgs: Vec<Value> = (2..=6)
        .map(|i| json!({"key": format!("m{i}"), "data": format!("m{i}")}))
        .collect();
    let r = py_publish(&url, "r", "py", Value::Array(msgs), &[]).await;
    assert_eq!(results(&r).last(), Some(&(6, false)), "{r}");
    // One publish is one stream entry: retention (max_len 3) drops whole entries, so the
    // entry holding offsets 2..=6 stays whole and only offset 1 is trimmed.
    let (entries, end) = py_read(&url, "r", 1, 100).await;
    assert_eq!(
        end,
        json!({"event": "end", "epoch": epoch, "first": 2, "last": 6})
    );
    let offsets: Vec<u64> = entries
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3, 4, 5, 6]);

    // Herald's subscriber sees the trimmed range as a Gap, then the retained messages.
    let mut sub = herald
        .subscribe(["r"])
        .from(Start::Offset(1))
        .await
        .unwrap();
    match support::next_event(&mut sub).await {
        Event::Gap {
            epoch: e,
            from: 1,
            to: 1,
            reason: GapReason::Retention,
            ..
        } if e == epoch => {}
        other => panic!("expected a retention gap 1..=1, got {other:?}"),
    }
    for offset in 2..=6 {
        let d = next_message(&mut sub).await;
        assert_eq!((d.position.offset, d.node.as_str()), (offset, "py"));
    }
    assert_quiet(&mut sub).await;
}
