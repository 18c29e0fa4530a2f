//! TLS (`rediss://`, `rediss+sentinel://`, `rediss+cluster://`): Herald talks to Redis
//! servers (and sentinels) that serve TLS with certificates from the test's own CA, trusting
//! that CA through `HeraldBuilder::tls_ca_pem`; without it the connection is refused with a
//! clear error instead of falling back to plain text.

#![allow(clippy::unwrap_used)]

use herald_testkit as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::{ErrorKind, Event, Herald, Start};
use support::{
    cluster_port, create_cluster, free_port, messages, next_event, wait_until, RedisServer,
};

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

/// The test's CA and a server certificate signed by it, in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The CA certificate, PEM.
    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.crt")).unwrap()
    }

    /// `redis-server` arguments to serve TLS on `tls_port` with the server certificate.
    fn server_args(&self, tls_port: u16) -> Vec<String> {
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.path("server.crt"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec()
    }

    /// A Redis serving plain text (for the harness) and TLS on `tls_port`, with `extra`
    /// arguments.
    fn server(&self, tls_port: u16, extra: &[&str]) -> RedisServer {
        let mut args = self.server_args(tls_port);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RedisServer::start_with(&args)
    }
}

/// Connects to `url` trusting the test's CA.
async fn connect(url: &str, pki: &Pki) -> Herald {
    Herald::builder()
        .redis(url)
        .tls_ca_pem(pki.ca_pem())
        .connect()
        .await
        .unwrap()
}

/// Connecting to `url` without trusting the test's CA fails; returns the error.
async fn refused_without_ca(url: &str, wait: Duration) -> herald::Error {
    Herald::builder()
        .redis(url)
        .connect_timeout(wait)
        .connect()
        .await
        .unwrap_err()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_over_tls() {
    let pki = Pki::new();
    let tls_port = free_port();
    let _server = pki.server(tls_port, &[]);
    let url = format!("rediss://127.0.0.1:{tls_port}");

    publish_and_receive(&connect(&url, &pki).await).await;

    // Without trusting the CA, the server's certificate is refused: no plain-text fallback.
    let err = refused_without_ca(&url, Duration::from_secs(10)).await;
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
    let pki = Pki::new();
    let cluster_args = [
        "--tls-cluster",
        "yes",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
    ];
    // The harness pings each node's plain port; clients and the cluster bus use TLS.
    let tls_ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
    let nodes: Vec<RedisServer> = tls_ports
        .iter()
        .map(|p| pki.server(*p, &cluster_args))
        .collect();
    let addrs: Vec<String> = tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    create_cluster(&addrs, 0, &["--tls", "--cacert", &pki.path("ca.crt")]);
    wait_until(
        "the TLS cluster did not become ok",
        Duration::from_secs(30),
        || {
            nodes.iter().all(|n| {
                let info: String = n.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
        },
    );

    let url = format!("rediss+cluster://{}", addrs.join(","));
    let (publisher, subscriber) = (connect(&url, &pki).await, connect(&url, &pki).await);
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
    let mut got = BTreeMap::<String, Vec<(u64, String)>>::new();
    for _ in 0..topics.len() * 2 {
        let event = next_event(&mut sub).await;
        let Event::Message(d) = event else {
            panic!("unexpected {event:?}");
        };
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        got.entry(d.topic.clone())
            .or_default()
            .push((d.position.offset, text));
    }
    for t in &topics {
        assert_eq!(
            got[t],
            [(1, format!("{t} one")), (2, format!("{t} two"))],
            "{t}"
        );
    }

    // Without the CA, the nodes' certificate is refused.
    let err = refused_without_ca(&url, Duration::from_secs(5)).await;
    assert!(
        matches!(err.kind(), ErrorKind::Refused | ErrorKind::Unreachable),
        "{err}"
    );
}

/// A process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rediss+sentinel://`: a sentinel that serves TLS and monitors a TLS primary
/// (`tls-replication yes`); Herald asks it for the primary over TLS, then publishes and
/// subscribes on the primary over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls() {
    let pki = Pki::new();
    let primary_tls = free_port();
    let _primary = pki.server(primary_tls, &[]);

    // The sentinel: a plain port for the harness, TLS for Herald and towards the primary.
    let (plain, tls) = (free_port(), free_port());
    let tls_lines: Vec<String> = pki
        .server_args(tls)
        .chunks(2)
        .map(|kv| format!("{} {}", kv[0].trim_start_matches("--"), kv[1]))
        .collect();
    let conf = pki.dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {plain}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
             dir {dir}\nlogfile {dir}/sentinel.log\n{tls}\ntls-replication yes\n\
             sentinel monitor secure 127.0.0.1 {primary_tls} 1\n",
            dir = pki.dir.path().display(),
            tls = tls_lines.join("\n"),
        ),
    )
    .unwrap();
    let _sentinel = Killed(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel"),
    );
    wait_until(
        "the sentinel did not come up (see its sentinel.log)",
        Duration::from_secs(15),
        || {
            let known = redis::Client::open(format!("redis://127.0.0.1:{plain}"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("secure")
                        .query::<Option<(String, u16)>>(&mut c)
                });
            matches!(known, Ok(Some((_, p))) if p == primary_tls)
        },
    );

    let url = format!("rediss+sentinel://127.0.0.1:{tls}/secure");
    publish_and_receive(&connect(&url, &pki).await).await;
    // Without the CA, the sentinel's certificate is refused: no primary is found.
    let err = refused_without_ca(&url, Duration::from_secs(3)).await;
    assert!(
        matches!(err.kind(), ErrorKind::Refused | ErrorKind::Unreachable),
        "{err}"
    );
}
