//! Topic settings and `inspect` on Redis: the `settings` hash of a topic, written field by
//! field, and a topic's whole state (range, settings, cursors) for `inspect`.

use redis::Script;

use super::RedisBroker;
use crate::broker::cursor_infos;
use crate::error::Result;
use crate::inspect::TopicInfo;
use crate::topic::{SettingsChange, TopicSettings};

impl RedisBroker {
    async fn stored_settings(&self, topic: &str) -> Result<Option<TopicSettings>> {
        let key = self.inner.keys.settings(topic);
        let raw: Vec<Option<u64>> = self
            .retry("read settings", topic, |mut conn| {
                let key = key.clone();
                Box::pin(async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&["max_len", "max_age_ms", "dedup_ms", "max_size"])
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        if raw.iter().all(Option::is_none) {
            return Ok(None);
        }
        let d = self.inner.opts.defaults;
        let get = |i: usize, default: u64| raw.get(i).copied().flatten().unwrap_or(default);
        Ok(Some(TopicSettings {
            max_len: get(0, d.max_len),
            max_age_ms: get(1, d.max_age_ms),
            dedup_window_ms: get(2, d.dedup_window_ms),
            max_size: get(3, d.max_size),
        }))
    }

    pub(crate) async fn configure(
        &self,
        topic: &str,
        change: &SettingsChange,
    ) -> Result<TopicSettings> {
        // Each field is checked on its own (the ranges do not depend on each other), then
        // written without a read-modify-write, so concurrent changes of different fields both
        // land. A topic never configured first takes the defaults for the other fields.
        change.apply(self.inner.opts.defaults).validate()?;
        let d = self.inner.opts.defaults;
        let key = self.inner.keys.settings(topic);
        let fields = [
            ("max_len", change.max_len, d.max_len),
            ("max_age_ms", change.max_age_ms, d.max_age_ms),
            ("dedup_ms", change.dedup_window_ms, d.dedup_window_ms),
            ("max_size", change.max_size, d.max_size),
        ];
        // One script call, not a MULTI/EXEC: a single keyed command is redirected like any
        // other when the key's slot moved in a cluster, a transaction is not.
        static CONFIGURE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                "for i = 1, #ARGV, 3 do \
                   redis.call(ARGV[i + 2] == 'set' and 'HSET' or 'HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) \
                 end return 1",
            )
        });
        self.retry("configure", topic, |mut conn| {
            let mut inv = CONFIGURE.prepare_invoke();
            inv.key(&key);
            for (name, new, default) in fields {
                match new {
                    Some(v) => inv.arg(name).arg(v).arg("set"),
                    None => inv.arg(name).arg(default).arg("default"),
                };
            }
            Box::pin(async move { inv.invoke_async::<()>(&mut conn).await })
        })
        .await?;
        Ok(self
            .stored_settings(topic)
            .await?
            .unwrap_or(self.inner.opts.defaults))
    }

    pub(crate) async fn inspect(&self, topic: &str) -> Result<TopicInfo> {
        let state = self.read(topic, 1, 0).await?;
        let settings = self.stored_settings(topic).await?;
        let cursors = self.all_cursors(topic).await?;
        let last = if state.epoch.is_some() { state.last } else { 0 };
        // Messages retained: from the first entry's offset to the last offset.
        let length = if state.first > 0 && last >= state.first {
            last - state.first + 1
        } else {
            0
        };
        Ok(TopicInfo {
            topic: topic.to_string(),
            epoch: state.epoch,
            first_offset: state.first,
            last_offset: last,
            length,
            settings: settings.unwrap_or(self.inner.opts.defaults),
            configured: settings.is_some(),
            cursors: cursor_infos(state.epoch, last, cursors),
        })
    }
}
