//! Durable cursors on Redis: the `cursors` hash of a topic, one field per cursor name
//! holding `<epoch>:<offset>:<ms>`.

use super::RedisBroker;
use crate::cursor::CursorCommit;
use crate::error::{Error, Result};

impl RedisBroker {
    pub(crate) async fn get_cursor(&self, topic: &str, name: &str) -> Result<Option<CursorCommit>> {
        let key = self.inner.keys.cursors(topic);
        let raw: Option<String> = self
            .retry("read cursor", topic, |mut conn| {
                let key = key.clone();
                let name = name.to_string();
                Box::pin(async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(name)
                        .query_async(&mut conn)
                        .await
                })
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => CursorCommit::decode(&raw)
                .map(Some)
                .ok_or_else(|| Error::Corrupt {
                    topic: topic.to_string(),
                    detail: format!("cursor {name:?} holds {raw:?}, not <epoch>:<offset>:<ms>"),
                }),
        }
    }

    pub(crate) async fn commit(&self, topic: &str, name: &str, pos: CursorCommit) -> Result<()> {
        let key = self.inner.keys.cursors(topic);
        let value = pos.encode();
        self.retry_write("commit", topic, None, |mut conn| {
            let (key, name, value) = (key.clone(), name.to_string(), value.clone());
            Box::pin(async move {
                redis::cmd("HSET")
                    .arg(key)
                    .arg(name)
                    .arg(value)
                    .query_async::<()>(&mut conn)
                    .await
            })
        })
        .await
    }

    pub(crate) async fn all_cursors(&self, topic: &str) -> Result<Vec<(String, CursorCommit)>> {
        let key = self.inner.keys.cursors(topic);
        let raw: Vec<(String, String)> = self
            .retry("read cursors", topic, |mut conn| {
                let key = key.clone();
                Box::pin(async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await })
            })
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(name, raw)| match CursorCommit::decode(&raw) {
                Some(p) => Some((name, p)),
                None => {
                    tracing::warn!(topic, cursor = %name, value = %raw, "skipping a cursor Herald did not write");
                    None
                }
            })
            .collect())
    }
}
