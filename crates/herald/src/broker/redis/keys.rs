//! Key names: where a namespace's topics live in Redis (layout in `docs/PROTOCOL.md`).
//!
//! Every key of a topic carries the hash tag `{topic}`, so a topic's keys live on one Redis
//! Cluster shard and one Lua script may touch them all.

/// Key names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    ns: String,
}

impl KeySpace {
    pub(crate) fn new(ns: &str) -> Self {
        KeySpace { ns: ns.to_string() }
    }

    /// The namespace.
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// `<ns>:{<topic>}:<what>`.
    pub(crate) fn key(&self, topic: &str, what: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, topic, what)
    }

    /// Every key of `topic`, as a pattern for messages.
    pub(crate) fn pattern(&self, topic: &str) -> String {
        self.key(topic, "*")
    }

    pub(crate) fn meta(&self, topic: &str) -> String {
        self.key(topic, "meta")
    }

    pub(crate) fn log(&self, topic: &str) -> String {
        self.key(topic, "log")
    }

    /// The epoch history (epoch to first offset and lost maximum).
    pub(crate) fn epochs(&self, topic: &str) -> String {
        self.key(topic, "epochs")
    }

    pub(crate) fn settings(&self, topic: &str) -> String {
        self.key(topic, "settings")
    }

    pub(crate) fn cursors(&self, topic: &str) -> String {
        self.key(topic, "cursors")
    }

    /// The current dedup window's hash (idempotency key to offset).
    pub(crate) fn dedup(&self, topic: &str) -> String {
        self.key(topic, "dedup")
    }

    /// The previous dedup window's hash.
    pub(crate) fn dedup_old(&self, topic: &str) -> String {
        self.key(topic, "dedup-old")
    }

    pub(crate) fn live(&self, topic: &str) -> String {
        self.key(topic, "live")
    }

    /// The topic a live channel belongs to.
    pub(crate) fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:live")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let k = KeySpace::new("herald");
        assert_eq!(k.meta("a/b"), "herald:{a/b}:meta");
        assert_eq!(k.dedup("t"), "herald:{t}:dedup");
        assert_eq!(k.epochs("t"), "herald:{t}:epochs");
        assert_eq!(k.dedup_old("t"), "herald:{t}:dedup-old");
        assert_eq!(k.pattern("t"), "herald:{t}:*");
        assert_eq!(k.topic_of_channel("herald:{a:b}:live"), Some("a:b"));
        assert_eq!(k.topic_of_channel("other:{a}:live"), None);
    }
}
