//! The gateway case (`gateway-sse{100,1000,10000}-{RATE/s,max}`): N SSE clients (in this
//! process) of one `herald serve` gateway (a process of its own, started from this executable,
//! on loopback) follow one topic while a Herald handle publishes to it, at a fixed rate
//! (100 msg/s; 10 msg/s with 10 000 clients) or at full speed (`publish_batch` of 64). Each
//! payload carries its publish time; each client records publish-to-client latency.
//! Reported: deliveries/s, p50/p99/p99.9, lost, and the gateway process's RSS growth per
//! connection once the clients are connected and idle. The library's own fan-out to N
//! subscriptions of one handle runs in the same run with the same publishing, as the
//! comparison (a failure of it is reported and the bench goes on). Each process needs a file
//! descriptor per connection: the bench raises its open-file limit as far as it is allowed
//! to, and skips the case with a note when that is still too low.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use herald::{Event, Herald, Start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BenchError;

/// One gateway case.
#[derive(Debug, Clone)]
pub(crate) struct GatewayCase {
    pub(crate) name: String,
    clients: usize,
    /// Messages per second, `None` for full speed.
    rate: Option<u64>,
    messages: u64,
}

/// The gateway cases asked for: 100 and 1 000 clients in the default set (no pattern),
/// 10 000 only when a pattern names it.
pub(crate) fn plan(patterns: &[String], quick: bool) -> Vec<GatewayCase> {
    let mut out = Vec::new();
    for clients in [100usize, 1_000, 10_000] {
        let rate = if clients >= 10_000 { 10 } else { 100 };
        for r in [Some(rate), None] {
            let name = match r {
                Some(r) => format!("gateway-sse{clients}-{r}/s"),
                None => format!("gateway-sse{clients}-max"),
            };
            let chosen = if patterns.is_empty() {
                clients < 10_000
            } else {
                patterns
                    .iter()
                    .any(|p| name.contains(p.as_str()) && (clients < 10_000 || p.contains("10000")))
            };
            if !chosen {
                continue;
            }
            let messages = match r {
                // Five seconds of publishing (two with --quick).
                Some(r) => r * if quick { 2 } else { 5 },
                None if quick => 200,
                None => 1_000,
            };
            out.push(GatewayCase {
                name,
                clients,
                rate: r,
                messages,
            });
        }
    }
    out
}

/// What one run measured.
struct Outcome {
    delivered: u64,
    lost: u64,
    secs: f64,
    latency: Histogram<u64>,
    rss_per_conn: Option<f64>,
}

fn rss_bytes() -> Option<u64> {
    rss_of("self")
}

/// The resident memory of process `pid` ("self" for this one), from `/proc` (Linux).
fn rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Raises this process's open-file limit to `need` when it is lower: the soft limit up to the
/// hard one, and the hard one too where that is allowed (root, or `CAP_SYS_RESOURCE`). What
/// cannot be raised stays as it is (the case is then skipped with a note).
#[cfg(unix)]
fn raise_fd_limit(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= need) {
        return;
    }
    let wanted = Rlimit {
        current: Some(need),
        maximum: now.maximum.map(|m| m.max(need)),
    };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        if let Some(max) = now.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(max.min(need)),
                    maximum: Some(max),
                },
            );
        }
    }
}

#[cfg(not(unix))]
fn raise_fd_limit(_need: u64) {}

/// The payload: the publish time in microseconds since `base`.
fn stamp(base: Instant) -> Vec<u8> {
    format!("{}", base.elapsed().as_micros()).into_bytes()
}

/// Publishes the case's messages to `topic`.
async fn publish(
    case: &GatewayCase,
    node: &Herald,
    topic: &str,
    base: Instant,
) -> Result<(), BenchError> {
    match case.rate {
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            for _ in 0..case.messages {
                tick.tick().await;
                node.publish(topic, stamp(base))
                    .await
                    .map_err(|e| BenchError::herald("publish", e))?;
            }
        }
        None => {
            let mut left = case.messages;
            while left > 0 {
                let n = left.min(64);
                let batch: Vec<Vec<u8>> = (0..n).map(|_| stamp(base)).collect();
                node.publish_batch(topic, batch)
                    .await
                    .map_err(|e| BenchError::herald("publish_batch", e))?;
                left -= n;
            }
        }
    }
    Ok(())
}

/// Shared tallies of the clients.
struct Tallies {
    delivered: AtomicU64,
    last_at: Mutex<Instant>,
    latency: Mutex<Histogram<u64>>,
}

impl Tallies {
    fn new() -> Result<Arc<Self>, BenchError> {
        Ok(Arc::new(Tallies {
            delivered: AtomicU64::new(0),
            last_at: Mutex::new(Instant::now()),
            latency: Mutex::new(hist()?),
        }))
    }
    fn merge(&self, n: u64, h: &Histogram<u64>) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut l) = self.latency.lock() {
            let _ = l.add(h);
        }
        if let Ok(mut t) = self.last_at.lock() {
            *t = Instant::now();
        }
    }
    fn take(&self) -> (u64, Instant, Histogram<u64>) {
        let last = *self.last_at.lock().unwrap_or_else(|p| p.into_inner());
        let h = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.delivered.load(Ordering::Relaxed), last, h)
    }
}

/// Microseconds, up to 10 minutes.
fn hist() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Internal(format!("histogram: {e}")))
}

/// The publish time in a message event's data line (`{"...","data":"<micros>",...}`).
fn stamp_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"data\":\"")? + 8..];
    rest[..rest.find('"')?].parse().ok()
}

/// Reads one SSE stream (HTTP/1.1, chunked) until it has `want` message events and records
/// their latencies. Reports on `ready` once the response head arrived (it is subscribed).
async fn sse_client(
    addr: std::net::SocketAddr,
    topic: String,
    want: u64,
    base: Instant,
    tallies: Arc<Tallies>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
) {
    let Ok(mut local) = hist() else { return };
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("connect: {e}"))).await;
            return;
        }
    };
    let req = format!(
        "GET /v1/topics/{topic}/events?from=latest HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        let _ = ready.send(Err(format!("request: {e}"))).await;
        return;
    }
    let mut raw: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 4096];
    let mut head_done = false;
    let mut text = String::new();
    let mut got = 0u64;
    while got < want {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            raw.drain(..end + 4);
            head_done = true;
            if !head.starts_with("HTTP/1.1 200") {
                let first = head.lines().next().unwrap_or("").to_string();
                let _ = ready.send(Err(format!("status: {first}"))).await;
                return;
            }
            let _ = ready.send(Ok(())).await;
        }
        // De-chunk what is complete: SIZE\r\nDATA\r\n.
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
            if raw.len() < eol + 2 + size + 2 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&raw[eol + 2..eol + 2 + size]));
            raw.drain(..eol + 2 + size + 2);
        }
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            if let Some(sent) = line.strip_prefix("data: ").and_then(stamp_of) {
                let now = base.elapsed().as_micros() as u64;
                let _ = local.record(now.saturating_sub(sent).max(1));
                got += 1;
            }
        }
    }
    tallies.merge(got, &local);
}

fn outcome(case: &GatewayCase, tallies: &Tallies, started: Instant, rss: Option<f64>) -> Outcome {
    let (delivered, last, latency) = tallies.take();
    Outcome {
        delivered,
        lost: (case.clients as u64 * case.messages).saturating_sub(delivered),
        secs: last.duration_since(started).as_secs_f64().max(1e-6),
        latency,
        rss_per_conn: rss,
    }
}

/// RSS growth per client, from `before` to `after`.
fn growth(before: Option<u64>, after: Option<u64>, clients: usize) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / clients as f64)
}

/// N SSE clients of the gateway.
async fn run_gateway(
    case: &GatewayCase,
    url: &str,
    prefix: &str,
    drain: Duration,
) -> Result<Outcome, BenchError> {
    let base = Instant::now();
    let node = connect(url, prefix, "gw").await?;
    let gateway = Gateway::spawn(url, prefix).await?;
    let addr = gateway.addr;
    let topic = format!("gw.{}", case.name.replace('/', "-"));
    let tallies = Tallies::new()?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(case.clients.max(1));
    let rss_before = gateway.rss();
    let mut tasks = Vec::new();
    for _ in 0..case.clients {
        tasks.push(tokio::spawn(sse_client(
            addr,
            topic.clone(),
            case.messages,
            base,
            tallies.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..case.clients {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                return Err(BenchError::Internal(format!("an SSE client failed: {e}")))
            }
            _ => {
                return Err(BenchError::Internal(
                    "the SSE clients did not connect within 120 s".into(),
                ))
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = growth(rss_before, gateway.rss(), case.clients);
    let started = Instant::now();
    publish(case, &node, &topic, base).await?;
    let _ = tokio::time::timeout(drain, futures::future::join_all(tasks)).await;
    let out = outcome(case, &tallies, started, rss);
    gateway.stop().await;
    Ok(out)
}

/// A `herald serve` process of this executable (the gateway on its own, as deployed: its
/// memory is its own, and its clients' file descriptors are not in its process).
struct Gateway {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Gateway {
    /// Starts `herald serve` on a free loopback port and waits (at most 30 s) for the line
    /// announcing its address.
    async fn spawn(url: &str, prefix: &str) -> Result<Gateway, BenchError> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Internal(format!("cannot find this executable: {e}")))?;
        let mut child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--redis", url])
            .args(["--namespace", prefix, "--topic-channel", "4096"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Internal(format!("cannot start `herald serve`: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Internal("`herald serve` has no standard output".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| BenchError::Internal("`herald serve` did not start within 30 s".into()))?
            .map_err(|e| BenchError::Internal(format!("reading `herald serve`: {e}")))?
            .ok_or_else(|| BenchError::Internal("`herald serve` exited before listening".into()))?;
        let addr = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("address")?.as_str()?.parse().ok())
            .ok_or_else(|| {
                BenchError::Internal(format!("`herald serve` announced no address: {line}"))
            })?;
        Ok(Gateway { child, addr })
    }

    fn rss(&self) -> Option<u64> {
        rss_of(&self.child.id()?.to_string())
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The same fan-out through the library: N subscriptions of one handle.
async fn run_library(
    case: &GatewayCase,
    url: &str,
    prefix: &str,
    drain: Duration,
) -> Result<Outcome, BenchError> {
    let base = Instant::now();
    let node = connect(url, prefix, "lib").await?;
    let topic = format!("lib.{}", case.name.replace('/', "-"));
    let tallies = Tallies::new()?;
    let rss_before = rss_bytes();
    let mut subs = Vec::new();
    for _ in 0..case.clients {
        subs.push(
            node.subscribe([topic.as_str()])
                .from(Start::Latest)
                .await
                .map_err(|e| BenchError::herald("subscribe", e))?,
        );
    }
    let rss = growth(rss_before, rss_bytes(), case.clients);
    let want = case.messages;
    let mut tasks = Vec::new();
    for mut sub in subs {
        let tallies = tallies.clone();
        let mut local = hist()?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < want {
                match sub.next().await {
                    Some(Ok(Event::Message(d))) => {
                        let sent = std::str::from_utf8(&d.payload)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(sent) = sent {
                            let now = base.elapsed().as_micros() as u64;
                            let _ = local.record(now.saturating_sub(sent).max(1));
                        }
                        got += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            tallies.merge(got, &local);
        }));
    }
    let started = Instant::now();
    publish(case, &node, &topic, base).await?;
    let _ = tokio::time::timeout(drain, futures::future::join_all(tasks)).await;
    Ok(outcome(case, &tallies, started, rss))
}

async fn connect(url: &str, prefix: &str, who: &str) -> Result<Herald, BenchError> {
    Herald::builder()
        .redis(url)
        .namespace(prefix)
        .node_id(format!("bench-{who}"))
        .connect()
        .await
        .map_err(|e| BenchError::herald("connect", e))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Prints a case's note: `row` with --json, else `text`.
fn print_note(json: bool, row: serde_json::Value, text: &str) {
    if json {
        println!("{row}");
    } else {
        println!("{text}");
    }
}

/// Runs the gateway cases, each through the gateway then through the library, and prints
/// one line (or one JSON object) per run.
pub(crate) async fn run(
    cases: &[GatewayCase],
    url: &str,
    prefix: &str,
    drain: Duration,
    json: bool,
) -> Result<(), BenchError> {
    let most = cases.iter().map(|c| c.clients as u64).max().unwrap_or(0);
    raise_fd_limit(most + 256);
    let limit = fd_limit();
    if !json {
        println!(
            "{:<22} {:<8} {:>7} {:>8} {:>12} {:>8} {:>8} {:>9} {:>6} {:>13}",
            "case",
            "system",
            "clients",
            "messages",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "lost",
            "RSS/conn KiB"
        );
    }
    for case in cases {
        // A descriptor per connection in each process, and some headroom.
        let need = case.clients as u64 + 256;
        if let Some(l) = limit.filter(|l| *l < need) {
            let note = format!(
                "{}: skipped, it needs about {need} file descriptors and the limit (ulimit -n) is {l}",
                case.name
            );
            print_note(
                json,
                serde_json::json!({"case": case.name, "skipped": note}),
                &note,
            );
            continue;
        }
        for system in ["gateway", "library"] {
            let o = if system == "gateway" {
                run_gateway(case, url, prefix, drain).await?
            } else {
                match run_library(case, url, prefix, drain).await {
                    Ok(o) => o,
                    Err(e) => {
                        let note = format!("{}: the library comparison failed: {e}", case.name);
                        let row = serde_json::json!({"case": case.name, "system": system, "failed": note});
                        print_note(json, row, &note);
                        continue;
                    }
                }
            };
            let rate = o.delivered as f64 / o.secs;
            let rss = o.rss_per_conn.map(|b| b / 1024.0);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "case": case.name, "system": system, "clients": case.clients,
                        "messages": case.messages, "delivered": o.delivered,
                        "delivered_per_s": rate, "p50_ms": ms(&o.latency, 0.5),
                        "p99_ms": ms(&o.latency, 0.99), "p999_ms": ms(&o.latency, 0.999),
                        "lost": o.lost, "rss_per_conn_kib": rss,
                    })
                );
            } else {
                println!(
                    "{:<22} {:<8} {:>7} {:>8} {:>12.0} {:>8.2} {:>8.2} {:>9.2} {:>6} {:>13}",
                    case.name,
                    system,
                    case.clients,
                    case.messages,
                    rate,
                    ms(&o.latency, 0.5),
                    ms(&o.latency, 0.99),
                    ms(&o.latency, 0.999),
                    o.lost,
                    rss.map_or("-".into(), |k| format!("{k:.1}")),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_has_100_and_1000_clients_and_10000_only_by_name() {
        let names: Vec<String> = plan(&[], false).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec![
                "gateway-sse100-100/s",
                "gateway-sse100-max",
                "gateway-sse1000-100/s",
                "gateway-sse1000-max"
            ]
        );
        let named: Vec<String> = plan(&["gateway-sse10000".into()], true)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(named, vec!["gateway-sse10000-10/s", "gateway-sse10000-max"]);
        assert!(plan(&["fan16".into()], false).is_empty());
    }

    #[test]
    fn reads_the_stamp_of_a_message_event() {
        assert_eq!(
            stamp_of(r#"{"event":"message","data":"1234","offset":3}"#),
            Some(1234)
        );
        assert_eq!(stamp_of(r#"{"event":"gap"}"#), None);
    }
}
