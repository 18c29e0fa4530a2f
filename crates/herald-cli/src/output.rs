//! The machine-readable output of `herald`: JSON, one object per line (README, Command line).
//!
//! Each line format is a struct here, so that field names and order are fixed in one place:
//! - [`ReceiptLine`]: what `herald publish` prints per message;
//! - [`AcksLine`]: what `herald publish --wait-all` prints at the end;
//! - [`MessageLine`], [`GapLine`], [`ResetLine`]: what `herald tail` prints per event;
//! - [`SettingsLine`]: what `herald configure` prints;
//! - [`MemberLine`], [`AckedLine`]: what `herald join` prints.
//!
//! `herald inspect`, `herald lag` and `herald members` print the library's own serde types
//! ([`herald::TopicInfo`], [`herald::CursorLag`] and [`herald::Member`]) as it serialises them.
//! [`JsonLines`] writes the lines and flushes them when asked, so that a script reading the
//! output live sees every line as soon as it is complete.

use std::io::{self, Write};

use base64::Engine as _;
use serde::Serialize;

use herald::{AckReport, Delivery, Epoch, GapReason, Headers, Member, Receipt, TopicSettings};

/// One published message: `{"topic":..,"epoch":..,"offset":..,"duplicate":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct ReceiptLine<'a> {
    /// The topic.
    pub(crate) topic: &'a str,
    /// The epoch of the topic's log.
    pub(crate) epoch: Epoch,
    /// Where the message landed (the original's offset for a duplicate).
    pub(crate) offset: u64,
    /// True when the idempotency key had been published already and nothing was appended.
    pub(crate) duplicate: bool,
    /// `herald publish -` only: the input line (counting from 1) the message came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<u64>,
    /// `herald publish - --key KEY` only: the line's idempotency key (`KEY-<line>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
}

impl<'a> From<&'a Receipt> for ReceiptLine<'a> {
    fn from(r: &'a Receipt) -> Self {
        ReceiptLine {
            topic: &r.topic,
            epoch: r.position.epoch,
            offset: r.position.offset,
            duplicate: r.duplicate,
            line: None,
            key: None,
        }
    }
}

/// One delivered message. `data` holds the payload when it is UTF-8 text; otherwise
/// `data_base64` holds it in standard base64 and `data` is absent.
#[derive(Debug, Serialize)]
pub(crate) struct MessageLine<'a> {
    /// The topic.
    pub(crate) topic: &'a str,
    /// The epoch of the topic's log.
    pub(crate) epoch: Epoch,
    /// The message's offset.
    pub(crate) offset: u64,
    /// The idempotency key it was published with.
    pub(crate) key: &'a str,
    /// The node that published it.
    pub(crate) node: &'a str,
    /// When it was published, in milliseconds since the Unix epoch.
    pub(crate) published_at: u64,
    /// Its headers.
    pub(crate) headers: &'a Headers,
    /// The payload, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a str>,
    /// The payload in standard base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data_base64: Option<String>,
}

impl<'a> From<&'a Delivery> for MessageLine<'a> {
    fn from(d: &'a Delivery) -> Self {
        let (data, data_base64) = match std::str::from_utf8(&d.payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&d.payload)),
            ),
        };
        MessageLine {
            topic: &d.topic,
            epoch: d.position.epoch,
            offset: d.position.offset,
            key: &d.key,
            node: &d.node,
            published_at: d.published_at_ms,
            headers: &d.headers,
            data,
            data_base64,
        }
    }
}

/// Offsets `from..=to` could not be delivered:
/// `{"event":"gap","topic":..,"epoch":..,"from":..,"to":..,"reason":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct GapLine<'a> {
    /// Always `"gap"`.
    pub(crate) event: &'static str,
    /// The topic.
    pub(crate) topic: &'a str,
    /// The epoch the gap belongs to.
    pub(crate) epoch: Epoch,
    /// The first offset not delivered.
    pub(crate) from: u64,
    /// The last offset not delivered.
    pub(crate) to: u64,
    /// `"retention"` or `"unreadable"`.
    pub(crate) reason: GapReason,
}

/// Messages delivered earlier were lost (offsets `lost_from ..= last_delivered` of
/// `previous_epoch`) and the topic continues in `epoch`:
/// `{"event":"reset","topic":..,"previous_epoch":..,"epoch":..,"last_delivered":..,"lost_from":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct ResetLine<'a> {
    /// Always `"reset"`.
    pub(crate) event: &'static str,
    /// The topic.
    pub(crate) topic: &'a str,
    /// The epoch that was lost.
    pub(crate) previous_epoch: Epoch,
    /// The new epoch.
    pub(crate) epoch: Epoch,
    /// The last offset delivered (or committed) in the lost epoch, 0 when none.
    pub(crate) last_delivered: u64,
    /// The first lost offset of `previous_epoch`; delivery resumes there in `epoch` (1: the
    /// whole log was lost, delivery starts over from the oldest retained offset).
    pub(crate) lost_from: u64,
}

/// A topic's settings after `configure`:
/// `{"topic":..,"max_len":..,"max_age_ms":..,"dedup_window_ms":..,"max_size":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct SettingsLine<'a> {
    /// The topic.
    pub(crate) topic: &'a str,
    /// The settings in force.
    #[serde(flatten)]
    pub(crate) settings: TopicSettings,
}

/// The `--wait-all` report: `{"event":"acks","topic":..,"epoch":..,"offset":..,"group":..,
/// "complete":..,"acked":[..],"pending":[..],"expired":[..],"waited_ms":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct AcksLine<'a> {
    /// Always `"acks"`.
    pub(crate) event: &'static str,
    /// The report, as the library serialises it.
    #[serde(flatten)]
    pub(crate) report: &'a AckReport,
}

/// `herald join` joined or left: `{"event":"joined"|"left","member":{..}}`.
#[derive(Debug, Serialize)]
pub(crate) struct MemberLine<'a> {
    /// `"joined"` or `"left"`.
    pub(crate) event: &'static str,
    /// The member, as the library serialises it.
    pub(crate) member: &'a Member,
}

/// `herald join --ack` acknowledged a message:
/// `{"event":"acked","topic":..,"epoch":..,"offset":..}`.
#[derive(Debug, Serialize)]
pub(crate) struct AckedLine<'a> {
    /// Always `"acked"`.
    pub(crate) event: &'static str,
    /// The topic.
    pub(crate) topic: &'a str,
    /// The epoch of the topic's log.
    pub(crate) epoch: Epoch,
    /// The acknowledged offset.
    pub(crate) offset: u64,
}

/// A writer of JSON lines.
#[derive(Debug)]
pub(crate) struct JsonLines<W: Write> {
    out: W,
}

impl JsonLines<io::Stdout> {
    /// JSON lines on standard output.
    pub(crate) fn stdout() -> Self {
        JsonLines { out: io::stdout() }
    }
}

impl<W: Write> JsonLines<W> {
    /// JSON lines on `out`.
    #[cfg(test)]
    pub(crate) fn new(out: W) -> Self {
        JsonLines { out }
    }

    /// Writes `value` as one line (not yet flushed).
    pub(crate) fn write(&mut self, value: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)
    }

    /// Flushes the lines written so far.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Writes `value` as one line and flushes it.
    pub(crate) fn emit(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.write(value)?;
        self.flush()
    }

    /// The underlying writer.
    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(value: &impl Serialize) -> String {
        let mut out = JsonLines::new(Vec::new());
        out.emit(value).unwrap();
        String::from_utf8(out.into_inner()).unwrap()
    }

    #[test]
    fn gap_and_reset_lines() {
        let gap = GapLine {
            event: "gap",
            topic: "t",
            epoch: 7,
            from: 3,
            to: 5,
            reason: GapReason::Retention,
        };
        assert_eq!(
            line(&gap),
            "{\"event\":\"gap\",\"topic\":\"t\",\"epoch\":7,\"from\":3,\"to\":5,\"reason\":\"retention\"}\n"
        );
        let reset = ResetLine {
            event: "reset",
            topic: "t",
            previous_epoch: 7,
            epoch: 9,
            last_delivered: 5,
            lost_from: 4,
        };
        assert_eq!(
            line(&reset),
            "{\"event\":\"reset\",\"topic\":\"t\",\"previous_epoch\":7,\"epoch\":9,\"last_delivered\":5,\"lost_from\":4}\n"
        );
    }

    #[test]
    fn settings_line_is_flat() {
        let s = SettingsLine {
            topic: "t",
            settings: TopicSettings::default(),
        };
        let v: serde_json::Value = serde_json::from_str(&line(&s)).unwrap();
        assert_eq!(v["topic"], "t");
        assert_eq!(v["max_len"], 100_000);
        assert_eq!(v["dedup_window_ms"], 120_000);
    }
}
