//! The envelope: how a message's fields are encoded on the wire (see `docs/PROTOCOL.md`).
//!
//! A message travels as a *piece*: three length-prefixed fields (`<decimal length>:<bytes>`),
//! which any language can build and parse without a library. The publisher builds the pieces;
//! one publish is stored as one stream entry whose field `m` is the concatenation of its
//! pieces (with the node id in `n` and the publish time in `t`), and is announced by one live
//! notification carrying the same pieces: either one *frame* (`h1`), or, for a large body, a
//! *split* notification: its header (`h2`) and then the pieces alone as the next message on
//! the same channel (which spares the publish script a copy of the body):
//!
//! ```text
//! piece    = field(key) field(headers JSON object or "") field(payload)
//! header   = field(epoch) field(first offset) field(count) field(node) field(published_at_ms)
//! frame    = field("h1") header piece{count}
//! split    = field("h2") header, then piece{count} as the next message
//! field(x) = <len(x) in decimal digits> ":" x
//! ```

use bytes::Bytes;

use crate::message::{Entry, Headers};
use crate::position::Epoch;

/// The tag that opens a whole live notification: header and pieces in one message.
pub(crate) const FRAME_VERSION: &[u8] = b"h1";
/// The tag that opens the header of a split notification, whose pieces follow as the next
/// message on the same channel (`docs/PROTOCOL.md` §8).
pub(crate) const SPLIT_FRAME_VERSION: &[u8] = b"h2";

/// A batch of entries just appended to one topic, as carried by a live notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    pub(crate) topic: String,
    pub(crate) epoch: Epoch,
    pub(crate) entries: Vec<Entry>,
}

/// Encodes headers for storage: empty string when there are none, else a JSON object.
pub(crate) fn encode_headers(headers: &Headers) -> String {
    if headers.is_empty() {
        String::new()
    } else {
        serde_json::to_string(headers).unwrap_or_default()
    }
}

/// Decodes stored headers (empty string means none).
pub(crate) fn decode_headers(raw: &[u8]) -> Result<Headers, String> {
    if raw.is_empty() {
        return Ok(Headers::new());
    }
    serde_json::from_slice(raw)
        .map_err(|e| format!("headers are not a JSON object of strings: {e}"))
}

/// Appends one length-prefixed field to `out`.
pub(crate) fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}:", field.len());
    out.extend_from_slice(field);
}

/// Encodes a live notification frame (used by the embedded broker's tests and documentation;
/// in Redis the publish script builds the same bytes).
pub(crate) fn encode_frame(epoch: Epoch, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    put_field(&mut out, FRAME_VERSION);
    put_field(&mut out, epoch.to_string().as_bytes());
    let first = entries.first().map_or(0, |e| e.offset);
    put_field(&mut out, first.to_string().as_bytes());
    put_field(&mut out, entries.len().to_string().as_bytes());
    let (node, time) = entries
        .first()
        .map_or((String::new(), 0), |e| (e.node.clone(), e.published_at_ms));
    put_field(&mut out, node.as_bytes());
    put_field(&mut out, time.to_string().as_bytes());
    for e in entries {
        put_piece(&mut out, &e.key, &encode_headers(&e.headers), &e.payload);
    }
    out
}

/// Appends a message's piece (key, headers, payload) to `out`.
pub(crate) fn put_piece(out: &mut Vec<u8>, key: &str, headers: &str, payload: &[u8]) {
    put_field(out, key.as_bytes());
    put_field(out, headers.as_bytes());
    put_field(out, payload);
}

/// Reads length-prefixed fields out of a shared buffer without copying payloads.
struct FieldReader {
    buf: Bytes,
    pos: usize,
}

impl FieldReader {
    fn next(&mut self) -> Result<Bytes, String> {
        let rest = &self.buf[self.pos..];
        let colon = rest
            .iter()
            .take(12)
            .position(|&b| b == b':')
            .ok_or_else(|| format!("no field length at byte {}", self.pos))?;
        let digits = &rest[..colon];
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .filter(|_| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad field length at byte {}", self.pos))?;
        let start = self.pos + colon + 1;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("field at byte {} runs past the end", self.pos))?;
        self.pos = end;
        Ok(self.buf.slice(start..end))
    }

    fn next_str(&mut self) -> Result<String, String> {
        let b = self.next()?;
        String::from_utf8(b.to_vec()).map_err(|_| "field is not UTF-8".to_string())
    }

    fn next_u64(&mut self) -> Result<u64, String> {
        let s = self.next_str()?;
        s.parse()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{s:?} is not a number"))
    }
}

/// The fields of a frame before its pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    epoch: Epoch,
    first: u64,
    count: u64,
    node: String,
    published_at_ms: u64,
}

/// What one live message holds: a whole notification (`h1`), or the header of a split one
/// (`h2`), whose pieces are the next message on the same channel.
#[derive(Debug)]
pub(crate) enum Frame {
    Whole(Notification),
    Header(FrameHeader),
}

/// Decodes a live notification frame for `topic`.
pub(crate) fn decode_frame(topic: &str, frame: Bytes) -> Result<Frame, String> {
    let mut r = FieldReader { buf: frame, pos: 0 };
    let version = r.next()?;
    let split = match version.as_ref() {
        FRAME_VERSION => false,
        SPLIT_FRAME_VERSION => true,
        other => {
            return Err(format!(
                "unknown frame version {:?}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    let header = FrameHeader {
        epoch: r.next_u64()?,
        first: r.next_u64()?,
        count: r.next_u64()?,
        node: r.next_str()?,
        published_at_ms: r.next_u64()?,
    };
    if split {
        if r.pos != r.buf.len() {
            return Err("trailing bytes after a split frame's header".into());
        }
        return Ok(Frame::Header(header));
    }
    read_pieces(topic, &header, r).map(Frame::Whole)
}

/// Decodes the pieces that follow a split frame's header (`h2`).
pub(crate) fn decode_split(
    topic: &str,
    header: &FrameHeader,
    pieces: Bytes,
) -> Result<Notification, String> {
    read_pieces(
        topic,
        header,
        FieldReader {
            buf: pieces,
            pos: 0,
        },
    )
}

/// Reads exactly `header.count` pieces, up to the end of the buffer.
fn read_pieces(
    topic: &str,
    header: &FrameHeader,
    mut r: FieldReader,
) -> Result<Notification, String> {
    let mut entries = Vec::with_capacity(header.count.min(10_000) as usize);
    for i in 0..header.count {
        let (key, headers, payload) = read_piece(&mut r)?;
        entries.push(Entry {
            offset: header.first + i,
            key,
            node: header.node.clone(),
            published_at_ms: header.published_at_ms,
            headers,
            payload,
        });
    }
    if r.pos != r.buf.len() {
        return Err("trailing bytes after the last message".into());
    }
    Ok(Notification {
        topic: topic.to_string(),
        epoch: header.epoch,
        entries,
    })
}

fn read_piece(r: &mut FieldReader) -> Result<(String, Headers, Bytes), String> {
    let key = r.next_str()?;
    let headers = decode_headers(&r.next()?)?;
    let payload = r.next()?;
    Ok((key, headers, payload))
}

/// One message decoded from a stream entry's `m` field: its data, or why it is unreadable.
pub(crate) type Piece = Result<(String, Headers, Bytes), String>;

/// Splits a stream entry's `m` field into its messages' pieces. A piece whose headers are not
/// valid is reported on its own; a broken framing ends the list with one error (the offsets
/// after it cannot be told apart).
pub(crate) fn decode_pieces(blob: Bytes) -> Vec<Piece> {
    let mut r = FieldReader { buf: blob, pos: 0 };
    let mut out = Vec::new();
    while r.pos < r.buf.len() {
        let fields = (r.next(), r.next(), r.next());
        let (key, headers, payload) = match fields {
            (Ok(k), Ok(h), Ok(p)) => (k, h, p),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                out.push(Err(e));
                break;
            }
        };
        out.push(
            String::from_utf8(key.to_vec())
                .map_err(|_| "key is not UTF-8".to_string())
                .and_then(|key| decode_headers(&headers).map(|h| (key, h, payload))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, payload: &'static [u8]) -> Entry {
        let mut headers = Headers::new();
        headers.insert("a".into(), "b:c".into());
        Entry {
            offset,
            key: "k1".into(),
            node: "n:1".into(),
            published_at_ms: 1_700_000_000_000,
            headers,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn frame_round_trip() {
        let entries = vec![entry(7, b"hello"), entry(8, b"\x00\xff:12:"), entry(9, b"")];
        let frame = encode_frame(42, &entries);
        let Ok(Frame::Whole(n)) = decode_frame("t", Bytes::from(frame)) else {
            panic!("a whole frame");
        };
        assert_eq!(n.epoch, 42);
        assert_eq!(n.entries, entries);
    }

    #[test]
    fn split_frame_round_trip() {
        let entries = vec![entry(7, b"hello"), entry(8, b"")];
        let whole = encode_frame(42, &entries);
        // The same notification split: the header tagged h2, then the pieces alone.
        let mut header = Vec::new();
        put_field(&mut header, SPLIT_FRAME_VERSION);
        for f in ["42", "7", "2", "n:1", "1700000000000"] {
            put_field(&mut header, f.as_bytes());
        }
        // The h1 frame has the same header fields, so its pieces start where this header ends.
        let pieces = Bytes::copy_from_slice(&whole[header.len()..]);
        let Ok(Frame::Header(h)) = decode_frame("t", Bytes::from(header)) else {
            panic!("a split header");
        };
        let n = decode_split("t", &h, pieces.clone()).unwrap();
        assert_eq!((n.epoch, n.entries), (42, entries));
        for cut in 0..pieces.len() {
            assert!(decode_split("t", &h, pieces.slice(..cut)).is_err());
        }
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let good = encode_frame(1, &[entry(1, b"xyz")]);
        for cut in 0..good.len() {
            assert!(decode_frame("t", Bytes::copy_from_slice(&good[..cut])).is_err());
        }
        assert!(decode_frame("t", Bytes::from_static(b"99999999999999999999:x")).is_err());
        assert!(decode_frame("t", Bytes::from_static(b"2:h9")).is_err());
        // Lengths and numbers are plain decimal digits: no sign.
        assert!(decode_frame("t", Bytes::from_static(b"+2:h1")).is_err());
        let unsigned = b"2:h11:11:11:00:3:100"; // epoch 1, first 1, no messages
        assert!(decode_frame("t", Bytes::from_static(unsigned)).is_ok());
        let signed = b"2:h12:+11:11:00:3:100";
        assert!(decode_frame("t", Bytes::from_static(signed)).is_err());
    }
}
