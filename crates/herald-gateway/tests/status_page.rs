#![allow(clippy::unwrap_used)]
//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads `/`
//! after a publish and its DOM shows the new offset; a screenshot is written to
//! `target/gateway-status.png` as an artifact. The browser loads `/?once=1` (one snapshot,
//! no EventSource): headless Chromium's `--dump-dom` waits for the network to go idle, which
//! an open event stream never does. The live stream the page follows otherwise,
//! `/v1/status/events`, is checked here over a socket.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use herald_testkit::Backend;

fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return name;
        }
    }
    panic!("chromium is not installed: run scripts/test.sh, or apt-get install -y chromium");
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its standard output.
fn browse(browser: &str, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium_shows_the_new_offset() {
    let browser = chromium();
    let backend = Backend::redis();
    let gw = start(&backend, |c| c).await;
    for i in 1..=3 {
        publish(gw.addr, "status.demo", &format!("m{i}"), None).await;
    }
    let page = get(gw.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>Herald gateway</title>"));
    assert!(
        !page.text().contains("http://") && !page.text().contains("https://"),
        "no external assets"
    );

    // A live member and a durable cursor 1 behind the head-to-be (offset 4).
    let _member = gw
        .herald
        .join("workers")
        .id("node-a")
        .heartbeat_interval(Duration::from_millis(500))
        .await
        .unwrap();
    let epoch = gw
        .herald
        .inspect("status.demo")
        .await
        .unwrap()
        .epoch
        .unwrap();
    gw.herald
        .commit("status.demo", "reader", herald::Position::new(epoch, 3))
        .await
        .unwrap();

    // The live status stream the page follows carries the same offset.
    let mut status = sse(gw.addr, "/v1/status/events", &[]).await;
    let snapshot = status.next().await.unwrap();
    assert_eq!(snapshot.event, "status");
    let v = snapshot.json();
    assert_eq!(v["topics"][0]["topic"], "status.demo");
    assert_eq!(v["topics"][0]["last_offset"], 3);
    publish(gw.addr, "status.demo", "m4", None).await;
    let next = status.next().await.unwrap().json();
    assert_eq!(
        next["topics"][0]["last_offset"], 4,
        "the next snapshot shows the new offset"
    );
    assert!(
        next["topics"][0]["rate"].as_f64().is_some_and(|r| r > 0.0),
        "a publish rate: {next}"
    );
    assert_eq!(
        next["topics"][0]["cursor_lag"][0]["cursor"], "reader",
        "{next}"
    );
    assert_eq!(next["topics"][0]["cursor_lag"][0]["lag"], 1, "{next}");
    assert_eq!(next["groups"][0]["group"], "workers", "{next}");
    assert_eq!(next["groups"][0]["members"][0]["id"], "node-a", "{next}");
    drop(status);

    let url = format!("http://{}/?once=1", gw.addr);
    let dom = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || browse(browser, &url, &["--dump-dom"]))
            .await
            .unwrap()
    };
    // The row of the topic, with its last offset.
    let row = dom
        .split("id=\"topic-status.demo\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no row for the topic in\n{dom}"));
    assert!(
        row.contains("<td class=\"last-offset\">4</td>"),
        "the last offset 4 is not shown:\n{dom}"
    );
    let group = dom
        .split("id=\"group-workers\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no row for the group in\n{dom}"));
    assert!(
        group.contains("<td class=\"members\">node-a</td>"),
        "the live member is not shown:\n{dom}"
    );
    assert!(
        row.contains("reader @") && row.contains(" lag 1</td>"),
        "the cursor and its lag are not shown:\n{dom}"
    );
    let shot: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "target",
        "gateway-status.png",
    ]
    .iter()
    .collect();
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || browse(browser, &url, &[&arg, "--window-size=1000,600"]))
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0),
        "screenshot written"
    );
}
