//! Typed errors. Every message says what was wrong and what to do about it.

use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Herald.
///
/// Match on [`Error::kind`] for a coarse classification (the `herald` command line maps it to
/// its exit status), or on the variants for details.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic name broke the naming rules.
    #[error("invalid topic name {name:?}: {reason}; topic names are 1-200 bytes of A-Z a-z 0-9 . _ - / :")]
    InvalidTopic {
        /// The rejected name.
        name: String,
        /// What exactly is wrong with it.
        reason: String,
    },
    /// A namespace broke the naming rules.
    #[error("invalid namespace {name:?}: namespaces are 1-64 bytes of A-Z a-z 0-9 . _ - / :")]
    InvalidNamespace {
        /// The rejected namespace.
        name: String,
    },
    /// A cursor (durable subscription) name broke the naming rules.
    #[error("invalid cursor name {name:?}: cursor names are 1-200 bytes of A-Z a-z 0-9 . _ - / :")]
    InvalidCursor {
        /// The rejected name.
        name: String,
    },
    /// The Redis URL could not be understood.
    #[error("invalid Redis URL {url:?}: {reason}; expected redis://[user:password@]host:port[/db], rediss://..., redis+sentinel://host:port,.../<primary name>[/db] or redis+cluster://host:port,... (rediss+... for TLS)")]
    InvalidUrl {
        /// The URL as given (password masked).
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An idempotency key was empty or too long.
    #[error("invalid idempotency key of {len} bytes: keys are 1-{max} bytes")]
    InvalidKey {
        /// The key's length in bytes.
        len: usize,
        /// The longest accepted key.
        max: usize,
    },
    /// A batch held more messages than one publish accepts.
    #[error("a batch holds at most {max} messages, this one {len}; split it")]
    BatchTooLarge {
        /// How many messages the batch held.
        len: usize,
        /// The most one batch may hold.
        max: usize,
    },
    /// A node id broke the rules (1-200 bytes).
    #[error("invalid node id {id:?}: node ids are 1-200 bytes")]
    InvalidNodeId {
        /// The rejected id.
        id: String,
    },
    /// A member group name broke the naming rules.
    #[error(
        "invalid member group {name:?}: group names are 1-{max} bytes of A-Z a-z 0-9 . _ - / :"
    )]
    InvalidGroup {
        /// The rejected name.
        name: String,
        /// The longest accepted name.
        max: usize,
    },
    /// A member id broke the naming rules.
    #[error("invalid member id {id:?}: member ids are 1-200 bytes of A-Z a-z 0-9 . _ - / : (a member id also names the member's durable cursors)")]
    InvalidMemberId {
        /// The rejected id.
        id: String,
    },
    /// A member's time to live was too short.
    #[error("a member's time to live must be at least {min:?}, got {ttl:?}")]
    InvalidTtl {
        /// The rejected time to live.
        ttl: Duration,
        /// The shortest accepted one.
        min: Duration,
    },
    /// Member metadata could not be encoded or decoded.
    #[error("invalid member metadata: {reason}")]
    InvalidMetadata {
        /// What is wrong with it.
        reason: String,
    },
    /// A topic setting or an option had a value outside its allowed range.
    #[error("invalid {name}: {reason}")]
    InvalidSetting {
        /// The setting or option (`max_len`, `subscription buffer`, ...).
        name: &'static str,
        /// Its allowed range, and what was given.
        reason: String,
    },
    /// A message was larger than the topic's maximum message size.
    #[error("message of {size} bytes is larger than the limit of {limit} bytes for topic {topic:?}; send a smaller payload or raise the topic's max_size")]
    MessageTooLarge {
        /// The topic.
        topic: String,
        /// The message size in bytes.
        size: usize,
        /// The topic's limit in bytes.
        limit: usize,
    },
    /// Redis could not be reached within the configured deadline.
    #[error("cannot reach Redis at {target} after {waited:?}: {reason}; check that Redis is running and the URL is right")]
    Unreachable {
        /// The address that was tried (password masked).
        target: String,
        /// How long Herald kept retrying.
        waited: Duration,
        /// The last error seen.
        reason: String,
    },
    /// An operation did not complete within its deadline although Redis was retried.
    #[error("{operation} did not complete within {waited:?}: {reason}; Redis may be overloaded or unreachable")]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// How long Herald waited.
        waited: Duration,
        /// The last error seen.
        reason: String,
    },
    /// Redis refused the request (authentication, permissions, out of memory, read-only replica, ...).
    #[error("Redis refused {operation}: {source}")]
    Refused {
        /// The operation that was refused.
        operation: &'static str,
        /// The error Redis answered with; [`ServerError::code`] tells its code.
        #[source]
        source: ServerError,
    },
    /// One of Herald's keys holds a value of the wrong type: something else wrote to it.
    #[error("key {key} has the wrong type for Herald ({detail}); another program wrote to Herald's namespace: delete the key or use another namespace")]
    WrongType {
        /// The offending key.
        key: String,
        /// What Redis said.
        detail: String,
    },
    /// A topic's state in Redis is inconsistent (foreign or corrupt entries).
    #[error("topic {topic:?} holds data Herald did not write ({detail}); inspect the keys under its namespace, repair or delete them")]
    Corrupt {
        /// The topic.
        topic: String,
        /// What was found.
        detail: String,
    },
    /// A publish was written on the primary but fewer replicas than `min_replicas` confirmed
    /// it in time: a failover now could lose it. Publishing the same messages again (same
    /// idempotency keys) does not duplicate them and waits again.
    #[error("publish to {topic:?} (epoch {epoch}, offsets {first}..={last}) reached only {acked} of the {wanted} replicas required within {waited:?}; it is on the primary but may be lost in a failover: retry with the same idempotency keys, or check the replicas")]
    NotReplicated {
        /// The topic.
        topic: String,
        /// The epoch of the publish.
        epoch: u64,
        /// The first offset of the publish.
        first: u64,
        /// The last offset of the publish.
        last: u64,
        /// How many replicas confirmed it.
        acked: usize,
        /// How many were required.
        wanted: usize,
        /// How long Herald waited.
        waited: Duration,
    },
    /// `commit` was called on a subscription that has no durable cursor name.
    #[error("this subscription has no durable cursor: subscribe with `.durable(name)` to commit")]
    NotDurable,
    /// The handle or subscription was closed.
    #[error("the Herald handle or subscription was closed")]
    Closed,
    /// A compare-and-set on a replicated map lost: the key's revision was not the expected
    /// one (or the key existed, or did not).
    #[error("map {map:?}: key {key:?} is {}, not as expected; read it again and retry with its current revision", match current { Some(r) => format!("at revision {r}"), None => "absent".to_string() })]
    Conflict {
        /// The map.
        map: String,
        /// The key.
        key: String,
        /// The key's current revision, `None` when it does not exist.
        current: Option<crate::position::Position>,
    },
    /// A replicated map key broke the rules.
    #[error("invalid map key {key:?}: {reason}; map keys are 1-512 bytes of UTF-8 without control characters")]
    InvalidMapKey {
        /// The rejected key (its first 64 characters).
        key: String,
        /// What exactly is wrong with it.
        reason: String,
    },
    /// A replicated map's limit refused a put; nothing was stored.
    #[error(
        "map {map:?}: {what} limit exceeded ({size} > {max}); raise the map's limits or store less"
    )]
    MapLimit {
        /// The map.
        map: String,
        /// `keys` (number of keys) or `value` (value size in bytes).
        what: &'static str,
        /// The number of keys, or value size, the put would have made.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A schedule's cron expression could not be parsed; the error names the field at fault.
    #[error(transparent)]
    InvalidCron(#[from] crate::schedule::CronError),
}

/// Checks an option against its lower bound: options out of range are refused, never
/// clamped, with an error naming the option.
pub(crate) fn at_least<T: PartialOrd + std::fmt::Debug>(
    name: &'static str,
    value: T,
    min: T,
) -> Result<()> {
    if value < min {
        return Err(Error::InvalidSetting {
            name,
            reason: format!("must be at least {min:?}, got {value:?}"),
        });
    }
    Ok(())
}

/// A coarse classification of [`Error`], stable enough to map to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input from the caller: fix the input.
    BadInput,
    /// Redis could not be reached in time.
    Unreachable,
    /// Redis answered, but refused or holds data Herald cannot use.
    Refused,
    /// Anything else.
    Other,
    /// A compare-and-set lost ([`Error::Conflict`]).
    Conflict,
}

impl Error {
    /// The coarse classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidTopic { .. }
            | Error::InvalidNamespace { .. }
            | Error::InvalidCursor { .. }
            | Error::InvalidUrl { .. }
            | Error::InvalidKey { .. }
            | Error::BatchTooLarge { .. }
            | Error::InvalidNodeId { .. }
            | Error::InvalidGroup { .. }
            | Error::InvalidMemberId { .. }
            | Error::InvalidTtl { .. }
            | Error::InvalidMetadata { .. }
            | Error::InvalidSetting { .. }
            | Error::MessageTooLarge { .. }
            | Error::NotDurable
            | Error::InvalidMapKey { .. }
            | Error::MapLimit { .. }
            | Error::InvalidCron(_) => ErrorKind::BadInput,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::NotReplicated { .. } => {
                ErrorKind::Unreachable
            }
            Error::Refused { .. } | Error::WrongType { .. } | Error::Corrupt { .. } => {
                ErrorKind::Refused
            }
            Error::Closed => ErrorKind::Other,
        }
    }
}

/// An error answered by Redis (or a connection failure while asking), as carried by
/// [`Error::Refused`]. Opaque, so that Herald's API does not expose its Redis client's types;
/// [`code`](Self::code) tells the Redis error code (`NOPERM`, `READONLY`, `OOM`, ...).
#[derive(Clone)]
pub struct ServerError {
    code: Option<String>,
    inner: std::sync::Arc<redis::RedisError>,
}

impl ServerError {
    /// The Redis error code, e.g. `NOPERM`, `NOAUTH`, `READONLY`, `OOM`, `WRONGPASS`; `None`
    /// when the failure was not an error reply (a connection or protocol failure).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl From<redis::RedisError> for ServerError {
    fn from(e: redis::RedisError) -> Self {
        // Inside a failed EXEC or pipeline the code sits on the inner server error.
        let code = e.code().map(str::to_string).or_else(|| {
            e.clone()
                .into_server_errors()
                .and_then(|errors| errors.first().map(|(_, se)| se.code().to_string()))
        });
        ServerError {
            code,
            inner: std::sync::Arc::new(e),
        }
    }
}

impl std::fmt::Debug for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerError")
            .field("code", &self.code)
            .field("message", &self.inner.to_string())
            .finish()
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for ServerError {}
