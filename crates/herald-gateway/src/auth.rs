//! Bearer JWTs and the grants they carry.
//!
//! A token is verified with one configured key and algorithm (HS256, RS256 or ES256; a token
//! naming another algorithm, `none` included, is refused), must carry `exp` (checked without
//! leeway) and an `aud` equal to the configured audience. Its `herald` claim grants actions
//! on topic patterns:
//!
//! ```json
//! {"aud": "herald", "exp": 1764070000, "sub": "dashboard",
//!  "herald": {"publish": ["sensors.*"], "subscribe": ["sensors.*", "alerts"], "admin": false,
//!             "work": ["jobs.*"], "map_read": ["config"], "map_write": []}}
//! ```
//!
//! `work` grants the work-group endpoints on matching topics; `map_read` and `map_write`
//! match map names (not their `__map/` topics).
//!
//! A pattern is `*` (every topic), a prefix ending in `*` (`sensors.*` matches
//! `sensors.kitchen`, not `sensorsX` nor `alerts`), or an exact topic name. The grants of a
//! token are the union of its patterns; `admin` (the status data and `/v1/info`) implies
//! every action on every topic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a client may want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Publish to a topic.
    Publish,
    /// Read a topic's history or follow it.
    Subscribe,
    /// See the gateway's status and every topic it knows.
    Admin,
    /// Take part in a topic's work groups (fetch jobs, report outcomes, read group state).
    Work,
    /// Read a replicated map (the pattern matches the map's name).
    MapRead,
    /// Change a replicated map (the pattern matches the map's name).
    MapWrite,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
            Action::Work => "work",
            Action::MapRead => "map_read",
            Action::MapWrite => "map_write",
        }
    }
}

/// The key that verifies tokens, with its algorithm.
#[derive(Clone)]
#[non_exhaustive]
pub enum Key {
    /// HMAC-SHA256 with this shared secret (at least 32 bytes).
    Hs256(Vec<u8>),
    /// RSA PKCS#1 v1.5 with SHA-256; the PEM public key.
    Rs256(Vec<u8>),
    /// ECDSA P-256 with SHA-256; the PEM public key.
    Es256(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hs256(_) => "Hs256(..)",
            Key::Rs256(_) => "Rs256(..)",
            Key::Es256(_) => "Es256(..)",
        })
    }
}

impl Key {
    /// Reads a key from `ALGORITHM:FILE`, with ALGORITHM one of `jwt-hs256` (the file holds
    /// the shared secret; a trailing newline is ignored), `jwt-rs256` or `jwt-es256` (the file
    /// holds the PEM public key).
    pub fn from_spec(spec: &str) -> Result<Key, AuthError> {
        let bad = |reason: String| AuthError::BadKey {
            reason: format!("{spec:?}: {reason}"),
        };
        let (alg, path) = spec.split_once(':').ok_or_else(|| {
            bad("expected jwt-hs256:FILE, jwt-rs256:FILE or jwt-es256:FILE".into())
        })?;
        let read = || std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")));
        match alg {
            "jwt-hs256" => {
                let mut secret = read()?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                Ok(Key::Hs256(secret))
            }
            "jwt-rs256" => Ok(Key::Rs256(read()?)),
            "jwt-es256" => Ok(Key::Es256(read()?)),
            other => Err(bad(format!(
                "unknown algorithm {other:?}: expected jwt-hs256, jwt-rs256 or jwt-es256"
            ))),
        }
    }
}

/// Why auth could not be set up, or a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The key could not be used.
    #[error("invalid token key {reason}")]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// No token came with the request.
    #[error("missing bearer token: send `Authorization: Bearer TOKEN` (or `access_token=TOKEN` in the query for EventSource)")]
    Missing,
    /// The token did not verify.
    #[error("invalid token: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// The token does not grant the action on the topic.
    #[error("the token does not grant {action} on {target}")]
    Forbidden {
        /// The action.
        action: &'static str,
        /// The topic (or `the gateway` for admin).
        target: String,
    },
}

/// Verifies tokens.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.validation.algorithms)
            .field("audience", &self.validation.aud)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Verifies tokens signed with `key` and meant for `audience` (their `aud`).
    pub fn new(key: Key, audience: &str) -> Result<Auth, AuthError> {
        let bad = |reason: String| AuthError::BadKey { reason };
        let (key, alg) = match key {
            Key::Hs256(secret) if secret.len() < 32 => {
                return Err(bad(format!(
                    "an HS256 secret must be at least 32 bytes, this one is {}",
                    secret.len()
                )))
            }
            Key::Hs256(secret) => (DecodingKey::from_secret(&secret), Algorithm::HS256),
            Key::Rs256(pem) => (
                DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| bad(format!("not a PEM RSA public key: {e}")))?,
                Algorithm::RS256,
            ),
            Key::Es256(pem) => (
                DecodingKey::from_ec_pem(&pem)
                    .map_err(|e| bad(format!("not a PEM EC public key: {e}")))?,
                Algorithm::ES256,
            ),
        };
        if audience.is_empty() {
            return Err(bad("the audience must not be empty".into()));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        Ok(Auth { key, validation })
    }

    /// The grants of a token, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Grants, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                AuthError::Invalid {
                    reason: e.to_string(),
                }
            })?;
        let c = data.claims;
        Ok(Grants {
            expires: Some(UNIX_EPOCH + Duration::from_secs(c.exp)),
            publish: c.herald.publish,
            subscribe: c.herald.subscribe,
            admin: c.herald.admin,
            work: c.herald.work,
            map_read: c.herald.map_read,
            map_write: c.herald.map_write,
        })
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    herald: GrantClaims,
}

#[derive(Debug, Default, Deserialize)]
struct GrantClaims {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    work: Vec<String>,
    #[serde(default)]
    map_read: Vec<String>,
    #[serde(default)]
    map_write: Vec<String>,
}

/// What a request may do: from its token, or everything when the gateway has no auth.
#[derive(Debug, Clone)]
pub struct Grants {
    expires: Option<SystemTime>,
    publish: Vec<String>,
    subscribe: Vec<String>,
    admin: bool,
    work: Vec<String>,
    map_read: Vec<String>,
    map_write: Vec<String>,
}

impl Grants {
    /// Everything, forever (a gateway without auth).
    pub fn all() -> Grants {
        Grants {
            expires: None,
            publish: Vec::new(),
            subscribe: Vec::new(),
            admin: true,
            work: Vec::new(),
            map_read: Vec::new(),
            map_write: Vec::new(),
        }
    }

    /// When the token expires (`None`: never).
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// How long until the token expires (`None`: never; zero when it already has).
    pub fn remaining(&self) -> Option<Duration> {
        self.expires.map(|t| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// Whether `action` on `topic` is granted (`topic` is ignored for [`Action::Admin`]).
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        if self.admin {
            return true;
        }
        let patterns = match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
            Action::Work => &self.work,
            Action::MapRead => &self.map_read,
            Action::MapWrite => &self.map_write,
            Action::Admin => return false,
        };
        patterns.iter().any(|p| matches(p, topic))
    }

    /// `Ok` when granted, else the refusal.
    pub fn check(&self, action: Action, topic: &str) -> Result<(), AuthError> {
        if self.allows(action, topic) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                action: action.name(),
                target: if action == Action::Admin {
                    "the gateway".into()
                } else if matches!(action, Action::MapRead | Action::MapWrite) {
                    format!("map {topic:?}")
                } else {
                    format!("topic {topic:?}")
                },
            })
        }
    }
}

/// Whether `pattern` (`*`, `prefix*` or an exact name) matches `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        assert!(matches("*", "anything"));
        assert!(matches("a.*", "a.b"));
        assert!(matches("a.*", "a."));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "b.a"));
        assert!(!matches("a.*", "ab"));
        assert!(matches("alerts", "alerts"));
        assert!(!matches("alerts", "alerts2"));
    }

    #[test]
    fn grants_are_a_union_and_admin_implies_all() {
        let g = Grants {
            expires: None,
            publish: vec!["a.*".into()],
            subscribe: vec!["a.*".into(), "b".into()],
            admin: false,
            work: vec!["w".into()],
            map_read: vec!["m*".into()],
            map_write: vec![],
        };
        assert!(g.allows(Action::Work, "w"));
        assert!(!g.allows(Action::Work, "a.x"));
        assert!(g.allows(Action::MapRead, "m1"));
        assert!(!g.allows(Action::MapWrite, "m1"));
        assert!(g.allows(Action::Publish, "a.x"));
        assert!(!g.allows(Action::Publish, "b"));
        assert!(g.allows(Action::Subscribe, "b"));
        assert!(!g.allows(Action::Subscribe, "c"));
        assert!(!g.allows(Action::Admin, ""));
        assert!(Grants::all().allows(Action::Publish, "z"));
    }

    #[test]
    fn short_secrets_and_bad_specs_are_refused() {
        assert!(Auth::new(Key::Hs256(b"short".to_vec()), "herald").is_err());
        assert!(Auth::new(Key::Hs256(vec![7; 32]), "").is_err());
        assert!(Key::from_spec("hs256").is_err());
        assert!(Key::from_spec("jwt-none:/dev/null").is_err());
        assert!(Auth::new(Key::Rs256(b"not pem".to_vec()), "herald").is_err());
    }
}
