//! What a Redis error means for Herald: whether retrying may help ([`is_transient`]), and
//! which [`Error`] a permanent one becomes ([`classify`]).
//!
//! Both read the error's kind and the server's error codes as redis-rs reports them, also
//! for the errors inside a failed transaction (MULTI/EXEC) or pipeline, which redis-rs keeps
//! as a list of server errors. The one exception is a TLS certificate that is not trusted:
//! redis-rs hands rustls's error over as an I/O error whose only public form is its text,
//! so [`is_untrusted_certificate`] matches that text.

use redis::{ErrorKind as RedisKind, RedisError, RetryMethod, ServerErrorKind};

use super::keys::KeySpace;
use super::RedisBroker;
use crate::error::Error;

/// Whether retrying the same command later may succeed.
pub(super) fn is_transient(e: &RedisError) -> bool {
    if e.kind() == RedisKind::AuthenticationFailed {
        return false;
    }
    // A TLS certificate that is not trusted stays untrusted: fail now, with rustls's reason.
    if is_untrusted_certificate(e) {
        return false;
    }
    if matches!(e.kind(), RedisKind::Server(ServerErrorKind::ReadOnly)) {
        return true; // a replica that is being promoted, or a failover in progress
    }
    if matches!(e.kind(), RedisKind::Server(ServerErrorKind::ExecAbort)) {
        // A transaction (MULTI/EXEC) aborted because its commands were refused for a
        // transient reason, e.g. LOADING while Redis reads its data after a restart.
        return e.clone().into_server_errors().is_some_and(|errors| {
            !errors.is_empty()
                && errors.iter().all(|(_, s)| {
                    matches!(
                        s.kind(),
                        Some(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::ReadOnly
                        )
                    )
                })
        });
    }
    e.is_io_error()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::RetryImmediately
                | RetryMethod::WaitAndRetry
                | RetryMethod::ReconnectFromInitialConnections
                | RetryMethod::RefreshSlotsAndRetry
                | RetryMethod::MovedRedirect
                | RetryMethod::AskRedirect
        )
}

/// Whether `e` is rustls rejecting the server's certificate (unknown issuer, wrong name,
/// expired, ...). redis-rs wraps the handshake's `rustls::Error` in an `io::Error` it keeps
/// private, so the text (rustls's `Display` of `Error::InvalidCertificate`) is all there is;
/// the unit test `untrusted_certificate_is_permanent` pins it to rustls's own error.
fn is_untrusted_certificate(e: &RedisError) -> bool {
    e.is_io_error() && e.to_string().contains("invalid peer certificate")
}

/// The code and detail of the server error in `e`: the error itself, or the first error
/// inside a failed transaction or pipeline.
fn server_error(e: &RedisError) -> Option<(String, String)> {
    let errors = e.clone().into_server_errors()?;
    let (_, first) = errors.first()?;
    Some((
        first.code().to_string(),
        first.details().unwrap_or("").to_string(),
    ))
}

/// Turns a permanent Redis error of `operation` on `topic` into Herald's error.
pub(super) fn classify(
    keys: &KeySpace,
    operation: &'static str,
    topic: &str,
    e: RedisError,
) -> Error {
    let Some((code, detail)) = server_error(&e) else {
        return Error::Refused {
            operation,
            source: e.into(),
        };
    };
    match code.as_str() {
        "WRONGTYPE" => Error::WrongType {
            key: keys.pattern(topic),
            detail: format!("{code} {detail}"),
        },
        "HERALD_TOO_LARGE" => {
            let mut it = detail
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse::<usize>().ok());
            Error::MessageTooLarge {
                topic: topic.to_string(),
                size: it.next().unwrap_or(0),
                limit: it.next().unwrap_or(0),
            }
        }
        "HERALD_CORRUPT" => Error::Corrupt {
            topic: topic.to_string(),
            detail,
        },
        _ => Error::Refused {
            operation,
            source: e.into(),
        },
    }
}

impl RedisBroker {
    /// The first of the topic's keys that holds a type Herald never writes there, so that a
    /// WRONGTYPE error (which does not say which key) can name it.
    pub(super) async fn foreign_key(&self, topic: &str) -> Option<String> {
        let k = &self.inner.keys;
        let expected = [
            (k.meta(topic), "hash"),
            (k.log(topic), "stream"),
            (k.settings(topic), "hash"),
            (k.cursors(topic), "hash"),
            (k.dedup(topic), "hash"),
            (k.dedup_old(topic), "hash"),
        ];
        let mut pipe = redis::pipe();
        for (key, _) in &expected {
            pipe.cmd("TYPE").arg(key);
        }
        let mut conn = self.conn();
        let types: Vec<String> = pipe.query_async(&mut conn).await.ok()?;
        expected
            .into_iter()
            .zip(types)
            .find(|((_, want), got)| got != "none" && got != want)
            .map(|((key, _), _)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind, text: &str) -> RedisError {
        RedisError::from(std::io::Error::new(kind, text.to_string()))
    }

    #[test]
    fn transient_and_permanent() {
        assert!(is_transient(&io(
            std::io::ErrorKind::ConnectionReset,
            "reset"
        )));
        assert!(is_transient(&io(std::io::ErrorKind::TimedOut, "no answer")));
        let auth = RedisError::from((RedisKind::AuthenticationFailed, "auth", "bad".into()));
        assert!(!is_transient(&auth));
        let client = RedisError::from((RedisKind::InvalidClientConfig, "config"));
        assert!(!is_transient(&client));
    }

    /// rustls's certificate errors, as tokio-rustls hands them to redis-rs (an `io::Error`
    /// of kind `InvalidData` around the `rustls::Error`), must not be retried.
    #[cfg(feature = "tls")]
    #[test]
    fn untrusted_certificate_is_permanent() {
        use rustls::{CertificateError, Error as TlsError};
        for cert in [
            CertificateError::UnknownIssuer,
            CertificateError::Expired,
            CertificateError::NotValidForName,
        ] {
            let e = RedisError::from(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                TlsError::InvalidCertificate(cert),
            ));
            assert!(is_untrusted_certificate(&e), "{e}");
            assert!(!is_transient(&e), "{e}");
        }
        let other = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::DecryptError,
        ));
        assert!(!is_untrusted_certificate(&other));
    }

    #[test]
    fn classification_by_code() {
        let keys = KeySpace::new("ns");
        let too_large = redis::make_extension_error(
            "HERALD_TOO_LARGE".into(),
            Some("message 2000 1000".into()),
        );
        assert!(matches!(
            classify(&keys, "publish", "t", too_large),
            Error::MessageTooLarge {
                size: 2000,
                limit: 1000,
                ..
            }
        ));
        let corrupt = redis::make_extension_error("HERALD_CORRUPT".into(), Some("bad meta".into()));
        assert!(
            matches!(classify(&keys, "publish", "t", corrupt), Error::Corrupt { detail, .. } if detail == "bad meta")
        );
        let wrongtype = redis::make_extension_error(
            "WRONGTYPE".into(),
            Some("Operation against a key holding the wrong kind of value".into()),
        );
        assert!(
            matches!(classify(&keys, "read", "t", wrongtype), Error::WrongType { key, .. } if key == "ns:{t}:*")
        );
        let noperm = RedisError::from(std::io::Error::other("x"));
        assert!(matches!(
            classify(&keys, "read", "t", noperm),
            Error::Refused {
                operation: "read",
                ..
            }
        ));
    }
}
