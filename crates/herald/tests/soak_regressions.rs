//! Regression tests for bugs the soak (`tests/soak.rs`) found.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::{Herald, Start};
use support::{messages, RedisServer};

/// A redis-server the test spawns by hand (not waiting for PING: it must still be loading).
struct Loading(Child);

impl Drop for Loading {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Soak finding 1 (seed 20261125): after `kill -9` and a restart, while Redis was still
/// loading its data, the history read — one MULTI/EXEC transaction — failed with "Transaction
/// aborted: BusyLoading" and was taken for a permanent refusal: `subscribe` failed with "Redis
/// refused read" and running subscriptions yielded that error, instead of retrying as for any
/// other transient error (a command refused with LOADING outside a transaction is retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_while_redis_is_loading_are_retried() {
    let mut server = RedisServer::start();
    let node = Herald::builder()
        .redis(server.url())
        .operation_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let mut running = node.subscribe(["t"]).from(Start::Earliest).await.unwrap();
    for i in 1..=3 {
        node.publish("t", format!("m{i}")).await.unwrap();
    }
    assert_eq!(messages(&mut running, 3).await.len(), 3);
    // Enough data that loading it slowly (below) takes a few seconds.
    let filler = "x".repeat(2000);
    for i in 0..120 {
        let _: () = server.cmd(&["SET", &format!("filler{i}"), &filler]);
    }
    let _: String = server.cmd(&["SAVE"]);
    server.kill9();

    // Restart with a slow load that answers clients meanwhile (with LOADING errors).
    let _loading = Loading(
        Command::new("redis-server")
            .args(["--port", &server.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--key-load-delay", "25000"])
            .args(["--loading-process-events-interval-bytes", "1024"])
            .arg("--dir")
            .arg(server.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "Redis never reported LOADING");
        let reply = redis::Client::open(server.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match reply {
            Err(e) if e.to_string().to_lowercase().contains("loading") => break,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }

    // While it loads: subscribing (which reads history) waits for the data, then delivers it.
    let mut sub = node
        .subscribe(["t"])
        .from(Start::Earliest)
        .await
        .unwrap_or_else(|e| panic!("subscribe while Redis loads: {e}"));
    let got = messages(&mut sub, 3).await;
    assert_eq!(
        got,
        vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
    );
    // The subscription that ran through the restart saw no error, and goes on.
    node.publish("t", "m4").await.unwrap();
    assert_eq!(messages(&mut running, 1).await, vec![(4, "m4".into())]);
    assert_eq!(messages(&mut sub, 1).await, vec![(4, "m4".into())]);
}
