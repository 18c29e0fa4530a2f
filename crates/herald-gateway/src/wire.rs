//! The JSON shapes of the gateway: the same fields as `herald tail`'s and `herald publish`'s
//! JSON lines, so that a script can switch between the command line and the gateway.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use herald::{Delivery, Epoch, Event, GapReason, Headers, Receipt};

/// A publish receipt: `{"topic","epoch","offset","duplicate"}`.
#[derive(Debug, Serialize)]
pub(crate) struct ReceiptJson<'a> {
    pub(crate) topic: &'a str,
    pub(crate) epoch: Epoch,
    pub(crate) offset: u64,
    pub(crate) duplicate: bool,
}

impl<'a> From<&'a Receipt> for ReceiptJson<'a> {
    fn from(r: &'a Receipt) -> Self {
        ReceiptJson {
            topic: &r.topic,
            epoch: r.position.epoch,
            offset: r.position.offset,
            duplicate: r.duplicate,
        }
    }
}

/// A delivered message (`data` when the payload is UTF-8, `data_base64` otherwise).
#[derive(Debug, Serialize)]
pub(crate) struct MessageJson<'a> {
    pub(crate) topic: &'a str,
    pub(crate) epoch: Epoch,
    pub(crate) offset: u64,
    pub(crate) key: &'a str,
    pub(crate) node: &'a str,
    pub(crate) published_at: u64,
    pub(crate) headers: &'a Headers,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data_base64: Option<String>,
}

impl<'a> From<&'a Delivery> for MessageJson<'a> {
    fn from(d: &'a Delivery) -> Self {
        let (data, data_base64) = match std::str::from_utf8(&d.payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&d.payload)),
            ),
        };
        MessageJson {
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

/// `{"event":"gap","topic","epoch","from","to","reason"}`.
#[derive(Debug, Serialize)]
pub(crate) struct GapJson<'a> {
    pub(crate) event: &'static str,
    pub(crate) topic: &'a str,
    pub(crate) epoch: Epoch,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) reason: GapReason,
}

/// `{"event":"reset","topic","previous_epoch","epoch","last_delivered"}`.
#[derive(Debug, Serialize)]
pub(crate) struct ResetJson<'a> {
    pub(crate) event: &'static str,
    pub(crate) topic: &'a str,
    pub(crate) previous_epoch: Epoch,
    pub(crate) epoch: Epoch,
    pub(crate) last_delivered: u64,
    pub(crate) lost_from: u64,
}

/// An event as the gateway sends it to clients: one `Arc` per event of a topic's shared feed,
/// handed to every client of that topic, with its JSON forms encoded once, by the first client
/// that sends it (a thousand SSE clients of one topic cost one encoding per message, not a
/// thousand).
pub(crate) struct Outgoing {
    event: Event,
    sse: OnceLock<String>,
    ws: OnceLock<String>,
}

impl Outgoing {
    pub(crate) fn new(event: Event) -> Arc<Outgoing> {
        Arc::new(Outgoing {
            event,
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        })
    }

    pub(crate) fn event(&self) -> &Event {
        &self.event
    }

    /// The event's name: `message`, `gap`, `reset`.
    pub(crate) fn name(&self) -> &'static str {
        event_name(&self.event)
    }

    /// The JSON object of an SSE event's `data`.
    pub(crate) fn sse_data(&self) -> &str {
        self.sse
            .get_or_init(|| event_json(&self.event).1.to_string())
    }

    /// The WebSocket frame: the same object with its name as `type`.
    pub(crate) fn ws_frame(&self) -> &str {
        self.ws.get_or_init(|| {
            let (name, mut json) = event_json(&self.event);
            if let Some(obj) = json.as_object_mut() {
                obj.insert("type".into(), serde_json::Value::from(name));
            }
            json.to_string()
        })
    }
}

/// The event's name (`message`, `gap`, `reset`) and its JSON object.
pub(crate) fn event_json(event: &Event) -> (&'static str, serde_json::Value) {
    let value = match event {
        Event::Message(d) => serde_json::to_value(MessageJson::from(d)),
        Event::Gap {
            topic,
            epoch,
            from,
            to,
            reason,
        } => serde_json::to_value(GapJson {
            event: "gap",
            topic,
            epoch: *epoch,
            from: *from,
            to: *to,
            reason: *reason,
        }),
        Event::Reset {
            topic,
            last_delivered,
            epoch,
            lost_from,
        } => serde_json::to_value(ResetJson {
            event: "reset",
            topic,
            previous_epoch: last_delivered.epoch,
            epoch: *epoch,
            last_delivered: last_delivered.offset,
            lost_from: *lost_from,
        }),
        // `Event` is non-exhaustive: a future kind of event is passed on by name only.
        _ => Ok(serde_json::json!({"event": "unknown", "topic": event.topic()})),
    };
    (event_name(event), value.unwrap_or(serde_json::Value::Null))
}

/// The event's name: `message`, `gap`, `reset` (`unknown` for a kind added later).
fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Message(_) => "message",
        Event::Gap { .. } => "gap",
        Event::Reset { .. } => "reset",
        _ => "unknown",
    }
}

/// One message of a batch publish (one NDJSON line, or a WebSocket `publish` frame).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishItem {
    #[serde(default)]
    pub(crate) data: Option<String>,
    #[serde(default)]
    pub(crate) data_base64: Option<String>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) headers: Headers,
}

impl PublishItem {
    /// The message, or why the item is not one.
    pub(crate) fn into_message(self) -> Result<herald::Message, String> {
        let payload = match (self.data, self.data_base64) {
            (Some(text), None) => bytes::Bytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("data_base64 is not standard base64: {e}"))?
                .into(),
            (Some(_), Some(_)) => return Err("give either data or data_base64, not both".into()),
            (None, None) => return Err("missing data (or data_base64)".into()),
        };
        let mut m = herald::Message::new(payload);
        if let Some(key) = self.key {
            m = m.key(key);
        }
        for (k, v) in self.headers {
            m = m.header(k, v);
        }
        Ok(m)
    }
}
