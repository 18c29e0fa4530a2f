//! TLS (`rediss://`): Herald talks to a Redis that serves TLS with a certificate from the
//! test's own CA, trusting that CA through `HeraldBuilder::tls_ca_pem`; without it the
//! connection is refused with a clear error instead of falling back to plain text.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herald::{ErrorKind, Herald, Start};
use support::{free_port, messages, RedisServer};

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
    let mut sub = node
        .subscribe(["secure"])
        .from(Start::Earliest)
        .await
        .unwrap();
    for i in 1..=3 {
        node.publish("secure", format!("m{i}")).await.unwrap();
    }
    let got = messages(&mut sub, 3).await;
    assert_eq!(
        got,
        [
            (1, "m1".to_string()),
            (2, "m2".to_string()),
            (3, "m3".to_string())
        ]
    );

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
