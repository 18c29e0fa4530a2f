//! Messages as published ([`Message`]), as stored (`Entry`) and as delivered ([`Delivery`]).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::position::{Epoch, Position};

/// Message headers: string keys to string values.
pub type Headers = BTreeMap<String, String>;

/// A message to publish: payload bytes, optional headers and an optional idempotency key.
///
/// ```
/// use herald::Message;
/// let m = Message::new("flush users")
///     .key("flush-2026-11-25")
///     .header("source", "admin");
/// assert_eq!(m.payload(), "flush users".as_bytes());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub(crate) payload: Bytes,
    pub(crate) headers: Headers,
    pub(crate) key: Option<String>,
}

impl Message {
    /// A message with the given payload, no headers and a generated idempotency key.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            headers: Headers::new(),
            key: None,
        }
    }

    /// Sets the idempotency key: a second publish with the same key within the topic's dedup
    /// window appends nothing and returns the first one's offset.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The idempotency key, if one was set.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::new(s)
    }
}
impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::new(v)
    }
}
impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::new(b)
    }
}
impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Message::new(Bytes::copy_from_slice(b))
    }
}

/// What a publish returns: where the message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The topic.
    pub topic: String,
    /// Where the message is: the epoch of the topic's log and its offset.
    pub position: Position,
    /// True when the idempotency key had already been published within the dedup window:
    /// nothing was appended and `position` is the original message's.
    pub duplicate: bool,
}

/// One message of a topic's history, as stored by a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    pub(crate) key: String,
    pub(crate) node: String,
    pub(crate) published_at_ms: u64,
    pub(crate) headers: Headers,
    pub(crate) payload: Bytes,
}

/// A message delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The topic.
    pub topic: String,
    /// Where the message is: the epoch of the topic's log and its offset.
    pub position: Position,
    /// The idempotency key it was published with.
    pub key: String,
    /// The id of the node that published it.
    pub node: String,
    /// When it was published, in milliseconds since the Unix epoch (the broker's clock).
    pub published_at_ms: u64,
    /// Its headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Bytes,
}

impl Delivery {
    pub(crate) fn from_entry(topic: &str, epoch: Epoch, entry: Entry) -> Self {
        Delivery {
            topic: topic.to_string(),
            position: Position::new(epoch, entry.offset),
            key: entry.key,
            node: entry.node,
            published_at_ms: entry.published_at_ms,
            headers: entry.headers,
            payload: entry.payload,
        }
    }
}
