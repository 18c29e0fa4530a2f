//! TLS (`rediss://`): Herald talks to a Redis that serves TLS with a certificate from the
//! test's own CA, trusting that CA through `HeraldBuilder::tls_ca_pem`; without it the
//! connection is refused with a clear error instead of falling back to plain text.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald::{ErrorKind, Herald, Start};
use support::{cluster_port, free_port, messages, RedisServer};

/// Runs openssl, failing the test with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); run scripts/test.sh to install it"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn certificates(dir: &Path) {
    let days = "2";
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            days,
            "-subj",
            "/CN=herald test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            days,
            "-extfile",
            "san.ext",
        ],
    );
}

/// Publishes three messages to topic `secure` and receives them from the start.
async fn publish_and_receive(node: &Herald) {
    let mut sub = node
        .subscribe(["secure"])
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=3 {
        node.publish("secure", format!("m{i}")).await.unwrap();
    }
    let got = messages(&mut sub, 3).await;
    let expected: Vec<(u64, String)> = (1..=3).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, expected);
}

/// A Redis serving plain text (for the harness) and TLS on `tls_port`.
fn tls_server(dir: &Path, tls_port: u16) -> RedisServer {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let port = tls_port.to_string();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let tls_port = free_port();
    let _server = tls_server(dir.path(), tls_port);
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let node = Herald::builder()
        .redis(url.clone())
        .tls_ca_pem(ca.clone())
        .connect()
        .await
        .unwrap();
    publish_and_receive(&node).await;

    // Without trusting the CA, the server's certificate is refused: no plain-text fallback.
    let err = Herald::builder()
        .redis(url)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("issuer"),
        "{text}"
    );
}

/// `rediss+cluster://`: a 3-primary Redis Cluster that speaks only TLS between clients and
/// nodes and on its cluster bus. Herald discovers the slot map over TLS, publishes to topics
/// on every shard and receives them through sharded Pub/Sub, all over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (cert, key, ca_file) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let mut tls_ports = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let tls_port = cluster_port();
        let port = tls_port.to_string();
        // The harness pings the plain port; clients and the cluster bus use TLS.
        nodes.push(RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
        ]));
        tls_ports.push(tls_port);
    }
    let addrs: Vec<String> = tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca_file, "--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = nodes.iter().all(|n| {
            let info: String = n.cmd(&["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        });
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS cluster did not become ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let ca = std::fs::read(&ca_file).unwrap();
    let url = format!("rediss+cluster://{}", addrs.join(","));
    let connect = || {
        Herald::builder()
            .redis(url.clone())
            .tls_ca_pem(ca.clone())
            .connect()
    };
    let (publisher, subscriber) = (connect().await.unwrap(), connect().await.unwrap());
    let topics: Vec<String> = (0..6).map(|i| format!("secure-{i}")).collect();
    let mut sub = subscriber
        .subscribe(topics.clone())
        .from(Start::Earliest)
        .await
        .unwrap();
    for t in &topics {
        publisher.publish(t, format!("{t} one")).await.unwrap();
        publisher.publish(t, format!("{t} two")).await.unwrap();
    }
    let mut got = std::collections::BTreeMap::<String, Vec<(u64, String)>>::new();
    for _ in 0..topics.len() * 2 {
        let event =
            tokio::time::timeout(Duration::from_secs(20), futures::StreamExt::next(&mut sub))
                .await
                .expect("an event in time")
                .expect("the subscription runs")
                .unwrap();
        let herald::Event::Message(d) = event else {
            panic!("unexpected {event:?}");
        };
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        got.entry(d.topic.clone())
            .or_default()
            .push((d.offset, text));
    }
    for t in &topics {
        assert_eq!(
            got[t],
            [(1, format!("{t} one")), (2, format!("{t} two"))],
            "{t}"
        );
    }

    // Without the CA, the nodes' certificate is refused.
    let err = Herald::builder()
        .redis(url)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Refused | ErrorKind::Unreachable),
        "{err}"
    );
}

/// `rediss+sentinel://`: a sentinel that serves TLS and monitors a TLS primary
/// (`tls-replication yes`); Herald asks it for the primary over TLS, then publishes and
/// subscribes on the primary over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (cert, key, ca_file) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let primary_tls = free_port();
    let _primary = tls_server(dir.path(), primary_tls);

    let (plain, tls) = (free_port(), free_port());
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {plain}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
             dir {dir}\nlogfile {dir}/sentinel.log\n\
             tls-port {tls}\ntls-cert-file {cert}\ntls-key-file {key}\n\
             tls-ca-cert-file {ca_file}\ntls-auth-clients no\ntls-replication yes\n\
             sentinel monitor secure 127.0.0.1 {primary_tls} 1\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sentinel = Kill(&mut sentinel);
    // Wait (bounded) until the sentinel answers on its plain port and knows the primary.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let known = redis::Client::open(format!("redis://127.0.0.1:{plain}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("secure")
                    .query::<Option<(String, u16)>>(&mut c)
            });
        if matches!(known, Ok(Some((_, p))) if p == primary_tls) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel did not come up: {}",
            std::fs::read_to_string(dir.path().join("sentinel.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let ca = std::fs::read(&ca_file).unwrap();
    let url = format!("rediss+sentinel://127.0.0.1:{tls}/secure");
    let node = Herald::builder()
        .redis(url.clone())
        .tls_ca_pem(ca)
        .connect()
        .await
        .unwrap();
    publish_and_receive(&node).await;
    // Without the CA, the sentinel's certificate is refused: no primary is found.
    let err = Herald::builder()
        .redis(url)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Refused | ErrorKind::Unreachable),
        "{err}"
    );
}
