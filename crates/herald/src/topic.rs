//! Topics: name validation and the per-topic settings stored with each topic (docs/DESIGN.md,
//! Retention).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest allowed topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// Whether a byte may appear in a topic, namespace or cursor name.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
}

/// Checks a topic name: 1-200 bytes of `A-Z a-z 0-9 . _ - / :`.
pub fn validate_topic(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_TOPIC_LEN {
        Some(format!("it is {} bytes long", name.len()))
    } else {
        name.bytes().position(|b| !is_name_byte(b)).map(|i| {
            format!(
                "byte {i} ({:?}) is not allowed",
                &name[i..].chars().next().unwrap_or('?')
            )
        })
    };
    match reason {
        Some(reason) => Err(Error::InvalidTopic {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a durable cursor name (same alphabet as topics).
pub(crate) fn validate_cursor(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN || !name.bytes().all(is_name_byte) {
        return Err(Error::InvalidCursor {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks a namespace: 1-64 bytes of the topic alphabet.
pub(crate) fn validate_namespace(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(is_name_byte) {
        return Err(Error::InvalidNamespace {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A topic's settings, stored with the topic so that every publisher applies the same ones.
///
/// A topic that was never configured takes the defaults of the first publisher that creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopicSettings {
    /// Maximum number of messages kept in history (default 100 000).
    pub max_len: u64,
    /// Maximum age of a message in history, in milliseconds; 0 means no age limit.
    pub max_age_ms: u64,
    /// How long an idempotency key is remembered, in milliseconds (default 120 000).
    pub dedup_window_ms: u64,
    /// Largest accepted payload, in bytes (default 1 MiB).
    pub max_size: u64,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            max_len: 100_000,
            max_age_ms: 0,
            dedup_window_ms: 120_000,
            max_size: 1024 * 1024,
        }
    }
}

impl TopicSettings {
    /// Checks that every value is in its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.max_len == 0 {
            return Err(Error::InvalidSetting {
                name: "max_len",
                reason: "a topic keeps at least 1 message, got 0".into(),
            });
        }
        if self.dedup_window_ms == 0 {
            return Err(Error::InvalidSetting {
                name: "dedup_window_ms",
                reason: "the dedup window must be at least 1 ms, got 0".into(),
            });
        }
        if self.max_size == 0 || self.max_size > 512 * 1024 * 1024 {
            return Err(Error::InvalidSetting {
                name: "max_size",
                reason: format!(
                    "must be between 1 byte and 512 MiB (Redis's own limit), got {}",
                    self.max_size
                ),
            });
        }
        Ok(())
    }
}

/// A partial change of [`TopicSettings`], as taken by `configure`: only the given fields change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingsChange {
    /// New maximum length.
    pub max_len: Option<u64>,
    /// New maximum age in milliseconds (0 removes the limit).
    pub max_age_ms: Option<u64>,
    /// New dedup window in milliseconds.
    pub dedup_window_ms: Option<u64>,
    /// New maximum message size in bytes.
    pub max_size: Option<u64>,
}

impl SettingsChange {
    /// Applies the change on top of `base`.
    pub fn apply(&self, base: TopicSettings) -> TopicSettings {
        TopicSettings {
            max_len: self.max_len.unwrap_or(base.max_len),
            max_age_ms: self.max_age_ms.unwrap_or(base.max_age_ms),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(base.dedup_window_ms),
            max_size: self.max_size.unwrap_or(base.max_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic("orders.eu-1/v2:x_y").is_ok());
        assert!(validate_topic(&"a".repeat(200)).is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(&"a".repeat(201)).is_err());
        for bad in ["a b", "a{b}", "é", "a*", "a\n"] {
            let err = validate_topic(bad).unwrap_err().to_string();
            assert!(err.contains("not allowed"), "{bad}: {err}");
        }
    }

    #[test]
    fn settings_ranges() {
        assert!(TopicSettings::default().validate().is_ok());
        let bad = SettingsChange {
            max_len: Some(0),
            ..Default::default()
        };
        assert!(bad.apply(TopicSettings::default()).validate().is_err());
    }
}
