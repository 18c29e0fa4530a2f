//! # Herald: distributed message broadcast over Redis
//!
//! Every node of a distributed system publishes messages on named **topics**; every node
//! subscribed to a topic receives all of them, in one order that all nodes share, each
//! exactly once, and is told explicitly ([`Event::Gap`], [`Event::Reset`]) when that cannot be
//! guaranteed.
//!
//! ```
//! use futures::StreamExt;
//! use herald::{Event, Herald, Message, Start};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! // The embedded broker; use `.redis("redis://127.0.0.1:6379")` for the distributed one.
//! let node = Herald::builder().node_id("node-1").connect().await?;
//! let mut sub = node.subscribe(["config"]).from(Start::Earliest).await?;
//!
//! let receipt = node.publish("config", Message::new("v2").key("config-v2")).await?;
//! assert_eq!(receipt.position.offset, 1);
//! // Publishing the same idempotency key again appends nothing.
//! assert!(node.publish("config", Message::new("v2").key("config-v2")).await?.duplicate);
//!
//! match sub.next().await {
//!     Some(Ok(Event::Message(m))) => assert_eq!(&m.payload[..], b"v2"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//! - [`client`]: the node handle [`Herald`] and its builder.
//! - [`position`]: where a message sits: [`Epoch`] and offset, together a [`Position`].
//! - [`message`]: what is published ([`Message`]), returned ([`Receipt`]) and delivered
//!   ([`Delivery`]).
//! - [`topic`]: topic names and [`TopicSettings`] (retention, dedup window, size limit).
//! - [`subscription`]: the ordered, gap-aware [`Subscription`] stream.
//! - [`cursor`]: durable cursors.
//! - [`membership`]: member groups, heartbeats, `Joined`/`Left`/`Expired` events.
//! - [`map`]: replicated maps ([`Map`]): snapshot, watch and compare-and-set on a topic.
//! - [`ack`]: waiting until members acknowledge a message (through their cursors), and lag.
//! - [`work`]: work groups (task scheduling): each message to one live member, with leases,
//!   retries and dead letters.
//! - [`schedule`]: recurring schedules, one message per tick however many nodes run them.
//! - [`broker`]: where topics live: Redis, or the in-process [`EmbeddedBroker`].
//! - `envelope`: the wire encoding of messages (documented in `docs/PROTOCOL.md`).
//! - `retry`: the one backoff and retry-while-transient mechanism used throughout.
//!
//! ## Conventions
//! - Names a call only reads (topics, groups, cursors) are taken as `&str`; builders that keep
//!   a value take `impl Into<String>`. Names are checked where they enter (topic names are
//!   plain strings rather than a validated type: every call checks them once, for the cost of
//!   a byte scan, and callers keep writing `"config"`).
//! - Options out of their range are refused with an error naming the option
//!   ([`Error::InvalidSetting`], [`Error::InvalidTtl`], ...) when the operation starts, never
//!   silently clamped.
//! - Errors are typed ([`Error`], coarsely [`ErrorKind`]); no type of a dependency appears in
//!   the API (a Redis error reply is carried as the opaque [`ServerError`] with its code).
//!
//! ## Features
//! - `cluster` (default): Redis Cluster (`redis+cluster://`).
//! - `sentinel` (default): Redis Sentinel (`redis+sentinel://`).
//! - `tls` (default): TLS (`rediss://`, `rediss+sentinel://`, `rediss+cluster://`) with
//!   rustls. Herald uses the process-level rustls `CryptoProvider` the application installed;
//!   when there is none at the first TLS connection, it installs ring's (redis-rs builds
//!   each connection's TLS configuration from the process-level provider).
//!
//! A URL that needs a feature left out is refused with [`Error::InvalidUrl`] naming it.

#![warn(missing_docs)]

pub mod ack;
mod acked;
pub mod broker;
pub mod client;
mod clock;
pub mod cursor;
mod envelope;
pub mod error;
pub mod inspect;
pub mod map;
pub mod membership;
pub mod message;
pub mod position;
mod publish;
mod retry;
pub mod schedule;
pub mod subscription;
mod telemetry;
pub mod topic;
pub mod work;

pub use ack::{AckReport, AckWait, Acks, CursorLag, PublishAndWait};
pub use broker::EmbeddedBroker;
pub use client::{Herald, HeraldBuilder};
pub use cursor::{CursorCommit, CursorInfo};
pub use error::{Error, ErrorKind, Result, ServerError};
pub use inspect::TopicInfo;
pub use map::{
    DeleteAndWait, Expect, Map, MapEvent, MapLimits, MapSnapshot, MapWatch, PutAndWait, Revision,
    SnapshotReason, Versioned,
};
pub use membership::{JoinBuilder, Member, MemberEvent, MemberWatch, Membership};
pub use message::{Delivery, Headers, Message, Receipt};
pub use position::{Epoch, ParsePositionError, Position};
pub use subscription::{Event, GapReason, Start, SubscribeBuilder, Subscription};
pub use topic::{validate_topic, SettingsChange, TopicSettings};
pub use work::{GroupInfo, Job, Outcome, WorkBuilder, WorkEvent, Worker};

/// The version of the wire protocol (`docs/PROTOCOL.md`) this crate speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// Entry points for the micro-benchmarks in `benches/` (not part of the API).
#[doc(hidden)]
pub mod __bench {
    use bytes::Bytes;

    use crate::message::{Entry, Headers};

    fn entries(count: usize, payload: usize) -> Vec<Entry> {
        (0..count)
            .map(|i| Entry {
                offset: i as u64 + 1,
                key: format!("node-1.18c2f3a4b5.{i:x}"),
                node: "node-1".into(),
                published_at_ms: 1_764_070_000_000,
                headers: Headers::new(),
                payload: Bytes::from(vec![b'x'; payload]),
            })
            .collect()
    }

    /// A live notification frame of `count` messages of `payload` bytes.
    pub fn frame(count: usize, payload: usize) -> Bytes {
        Bytes::from(crate::envelope::encode_frame(7, &entries(count, payload)))
    }

    /// Decodes a frame; returns how many messages it held.
    pub fn decode_frame(frame: Bytes) -> usize {
        match crate::envelope::decode_frame("t", frame) {
            Ok(crate::envelope::Frame::Whole(n)) => n.entries.len(),
            _ => 0,
        }
    }

    /// A stream entry's `m` field holding `count` messages of `payload` bytes.
    pub fn pieces(count: usize, payload: usize) -> Bytes {
        let mut out = Vec::new();
        for e in entries(count, payload) {
            crate::envelope::put_piece(&mut out, &e.key, "", &e.payload);
        }
        Bytes::from(out)
    }

    /// Decodes a stream entry's `m` field; returns how many messages it held.
    pub fn decode_pieces(blob: Bytes) -> usize {
        crate::envelope::decode_pieces(blob).len()
    }
}

/// The README's Rust examples, compiled as doctests so that they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
