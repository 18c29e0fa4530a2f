//! Readiness: the server answers and holds Herald's scripts (`SCRIPT LOAD` of each, which
//! installs a missing one and returns its hash; with a cluster on every primary).

use super::RedisBroker;
use crate::error::Result;

impl RedisBroker {
    pub(crate) async fn ready(&self) -> Result<()> {
        let scripts = [
            ("publish", super::PUBLISH_SCRIPT),
            ("read", super::READ_SCRIPT),
            ("lost", crate::broker::LOST_SCRIPT.as_str()),
            ("members", super::members::MEMBERS_SCRIPT),
        ];
        for (name, source) in scripts {
            let sha: String = self
                .retry("load scripts", "", |mut conn| {
                    Box::pin(async move {
                        redis::cmd("SCRIPT")
                            .arg("LOAD")
                            .arg(source)
                            .query_async(&mut conn)
                            .await
                    })
                })
                .await?;
            tracing::debug!(script = name, sha, "script loaded");
        }
        Ok(())
    }
}
