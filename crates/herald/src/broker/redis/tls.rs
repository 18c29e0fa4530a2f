//! TLS (`rediss://`): the roots to trust, and rustls's crypto provider.
//!
//! redis-rs 1.8 builds the rustls configuration of each connection itself, with
//! `rustls::ClientConfig::builder()`, which takes the process-level `CryptoProvider`; it has
//! no way to hand it a configuration or a provider (only certificates, `TlsCertificates`).
//! So Herald uses the provider the application installed, and only when there is none when
//! the first TLS connection is set up, installs ring's (the one its `rustls` dependency
//! enables) rather than let rustls pick one from crate features, or panic when both ring and
//! aws-lc-rs are compiled in. An application that wants another provider installs it before
//! connecting; plain `redis://` connections never touch the provider.

use rustls::crypto::CryptoProvider;

/// Makes sure rustls has a process-level crypto provider: the application's, or else ring's.
pub(super) fn ensure_crypto_provider() {
    if CryptoProvider::get_default().is_some() {
        return;
    }
    // Losing a race with another thread that installs one is fine: there is one now.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
    {
        tracing::info!(
            "no rustls CryptoProvider installed by the application; installed ring's for TLS \
             (install one before connecting to choose another)"
        );
    }
}

/// The certificates for a connection that trusts the PEM root `ca` instead of the system's.
pub(super) fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_is_there_after_ensuring() {
        ensure_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
        // Twice is harmless.
        ensure_crypto_provider();
    }
}
