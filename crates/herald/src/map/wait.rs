//! "Applied everywhere" for maps: a watcher opened with a member identity reports the revision
//! its consumer applied, and [`Map::put_and_wait`] / [`Map::delete_and_wait`] wait until every
//! live member of a group has applied a change.
//!
//! It is the acknowledgement of [`ack`](crate::ack), applied to the map's topic: a watcher
//! opened with [`Map::watch_as`] commits the durable cursor named after its member id on the
//! map's topic (`__map/<name>`) at the revision of the last event its consumer *applied*; the
//! wait is [`Herald::wait_for_acks`](crate::Herald::wait_for_acks) on the change's revision.
//!
//! An event counts as applied when the consumer asks the watch for the next one (the usual
//! `while let Some(event) = watch.next().await { apply(..) }` loop applies an event, then
//! asks): a node that stops consuming its watch, however many events are buffered for it,
//! stops reporting, and the wait names it in [`AckReport::pending`].

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Expect, Map, MapEvent, MapWatch, Revision};
use crate::ack::{AckReport, AckWait, Acks};
use crate::client::Herald;
use crate::cursor::CursorCommit;
use crate::error::Result;
use crate::membership::validate_group;
use crate::message::Receipt;
use crate::retry::Backoff;
use crate::topic::validate_cursor;

/// The reporting side of a [`MapWatch`] opened with [`Map::watch_as`].
pub(super) struct AppliedReporter {
    /// The revision of the event the consumer holds but has not yet finished applying.
    holding: Option<Revision>,
    /// The last applied revision, read by the committing task.
    applied: watch::Sender<Option<Revision>>,
    task: JoinHandle<()>,
    herald: Herald,
    topic: String,
    member: String,
}

impl AppliedReporter {
    fn start(herald: Herald, topic: String, member: String) -> Self {
        let (applied, rx) = watch::channel(None);
        let task = tokio::spawn(commit_applied(
            herald.clone(),
            topic.clone(),
            member.clone(),
            rx,
        ));
        AppliedReporter {
            holding: None,
            applied,
            task,
            herald,
            topic,
            member,
        }
    }

    /// The consumer asked for the next event: the one it held is applied.
    pub(super) fn consumer_returned(&mut self) {
        if let Some(r) = self.holding.take() {
            self.applied.send_replace(Some(r));
        }
    }

    /// The consumer was given `event`.
    pub(super) fn delivered(&mut self, event: &MapEvent) {
        self.holding = match event {
            MapEvent::Snapshot { revision, .. } => *revision,
            MapEvent::Changed { revision, .. } | MapEvent::Deleted { revision, .. } => {
                Some(*revision)
            }
            MapEvent::Reset { .. } => None,
        };
    }

    /// Reports the event the consumer holds as applied, now, and returns once the report is
    /// stored.
    pub(super) async fn applied_now(&mut self) -> Result<()> {
        let Some(r) = self.holding.take() else {
            return Ok(());
        };
        self.herald
            .broker()
            .commit(&self.topic, &self.member, CursorCommit::new(r))
            .await?;
        self.applied.send_replace(Some(r));
        Ok(())
    }

    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

/// Commits the member's cursor on the map's topic at every newly applied revision (the
/// latest one when several were applied meanwhile); retries while the broker fails.
async fn commit_applied(
    herald: Herald,
    topic: String,
    member: String,
    mut rx: watch::Receiver<Option<Revision>>,
) {
    // Bounded by the watch's life: it ends when the watch is dropped (sender gone or aborted).
    while rx.changed().await.is_ok() {
        let Some(revision) = *rx.borrow_and_update() else {
            continue;
        };
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        for _ in 0..600 {
            match herald
                .broker()
                .commit(&topic, &member, CursorCommit::new(revision))
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(topic, member, error = %e, "reporting an applied map revision failed; retrying");
                    tokio::time::sleep(backoff.next_pause()).await;
                    if rx.has_changed().unwrap_or(false) {
                        break; // a newer revision supersedes this one
                    }
                }
            }
        }
    }
}

impl MapWatch {
    /// Reports the last event this watch yielded as applied now, and returns once the report
    /// is stored (without it, the report is made when the next event is asked for). Does
    /// nothing for a watch not opened with [`Map::watch_as`].
    pub async fn applied(&mut self) -> Result<()> {
        match &mut self.applied {
            Some(a) => a.applied_now().await,
            None => Ok(()),
        }
    }
}

impl Map {
    /// Watches the map as `member` (a member id, [`Member::id`](crate::Member::id)): the same
    /// stream as [`watch`](Self::watch), and every revision its consumer applies is reported
    /// as that member's acknowledgement on the map's topic, so that
    /// [`put_and_wait`](Self::put_and_wait) knows this node holds it.
    ///
    /// An event counts as applied when the consumer asks for the next one.
    pub async fn watch_as(&self, member: impl Into<String>) -> Result<MapWatch> {
        let member = member.into();
        validate_cursor(&member)?;
        let mut watch = self.watch().await?;
        watch.applied = Some(AppliedReporter::start(
            self.herald.clone(),
            self.topic.clone(),
            member,
        ));
        Ok(watch)
    }

    /// Waits until the live members of `group` watching the map with
    /// [`watch_as`](Self::watch_as) have applied `revision` (or a later one of its epoch);
    /// `.await` it. The same wait as [`Herald::wait_for_acks`](crate::Herald::wait_for_acks),
    /// on the map's topic.
    pub fn wait_applied(&self, revision: Revision, group: impl Into<String>) -> AckWait {
        let receipt = Receipt {
            topic: self.topic.clone(),
            position: revision,
            duplicate: false,
        };
        self.herald.wait_for_acks(&receipt, group)
    }

    /// Sets `key` to `value`, then waits until every live member of `group` watching the map
    /// with [`watch_as`](Self::watch_as) has applied the change; `.await` it. The report's
    /// position is the change's revision, `acked` the members that applied it, `pending` those
    /// that had not when the timeout passed (not an error: `complete` is false), `expired`
    /// those that left meanwhile.
    ///
    /// ```no_run
    /// # use herald::Herald;
    /// # use std::time::Duration;
    /// # async fn f(node: Herald) -> Result<(), herald::Error> {
    /// let config = node.map("config")?;
    /// let report = config
    ///     .put_and_wait("log-level", "debug", "web")
    ///     .timeout(Duration::from_secs(5))
    ///     .await?;
    /// if !report.complete {
    ///     eprintln!("not applied by {:?}", report.pending);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn put_and_wait(
        &self,
        key: impl Into<String>,
        value: impl AsRef<[u8]>,
        group: impl Into<String>,
    ) -> PutAndWait {
        PutAndWait {
            map: self.clone(),
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_ref()),
            expect: None,
            wait: WaitFor::new(group.into()),
        }
    }

    /// Deletes `key`, then waits as [`put_and_wait`](Self::put_and_wait) does; `.await` it.
    /// `None` when the key did not exist (nothing changed, nothing to wait for).
    pub fn delete_and_wait(
        &self,
        key: impl Into<String>,
        group: impl Into<String>,
    ) -> DeleteAndWait {
        DeleteAndWait {
            map: self.clone(),
            key: key.into(),
            expect: None,
            wait: WaitFor::new(group.into()),
        }
    }
}

/// The wait's settings, shared by both builders.
#[derive(Debug)]
struct WaitFor {
    group: String,
    timeout: Duration,
    poll: Duration,
}

impl WaitFor {
    fn new(group: String) -> Self {
        WaitFor {
            group,
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(50),
        }
    }

    async fn wait(self, map: &Map, revision: Revision) -> Result<AckReport> {
        map.wait_applied(revision, self.group)
            .acks(Acks::All)
            .timeout(self.timeout)
            .poll_interval(self.poll)
            .await
    }
}

/// A put that then waits until a group applied it; see [`Map::put_and_wait`].
#[must_use = "nothing is written until awaited"]
#[derive(Debug)]
pub struct PutAndWait {
    map: Map,
    key: String,
    value: Bytes,
    expect: Option<Expect>,
    wait: WaitFor,
}

impl PutAndWait {
    /// Makes it a compare-and-set (see [`Map::put_if`]).
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = Some(expect);
        self
    }

    /// How long to wait for the members at most (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.wait.timeout = timeout;
        self
    }

    /// How often to read the members' reports (default 50 ms, at least 10 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.wait.poll = every;
        self
    }

    /// Writes, then waits.
    pub async fn run(self) -> Result<AckReport> {
        validate_group(&self.wait.group)?;
        let revision = match self.expect {
            Some(e) => self.map.put_if(&self.key, &self.value, e).await?,
            None => self.map.put(&self.key, &self.value).await?,
        };
        self.wait.wait(&self.map, revision).await
    }
}

impl std::future::IntoFuture for PutAndWait {
    type Output = Result<AckReport>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<AckReport>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// A delete that then waits until a group applied it; see [`Map::delete_and_wait`].
#[must_use = "nothing is deleted until awaited"]
#[derive(Debug)]
pub struct DeleteAndWait {
    map: Map,
    key: String,
    expect: Option<Revision>,
    wait: WaitFor,
}

impl DeleteAndWait {
    /// Makes it a compare-and-set (see [`Map::delete_if`]).
    pub fn expect(mut self, revision: Revision) -> Self {
        self.expect = Some(revision);
        self
    }

    /// How long to wait for the members at most (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.wait.timeout = timeout;
        self
    }

    /// How often to read the members' reports (default 50 ms, at least 10 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.wait.poll = every;
        self
    }

    /// Deletes, then waits; `None` when the key did not exist.
    pub async fn run(self) -> Result<Option<AckReport>> {
        validate_group(&self.wait.group)?;
        let revision = match self.expect {
            Some(r) => Some(self.map.delete_if(&self.key, r).await?),
            None => self.map.delete(&self.key).await?,
        };
        match revision {
            Some(r) => Ok(Some(self.wait.wait(&self.map, r).await?)),
            None => Ok(None),
        }
    }
}

impl std::future::IntoFuture for DeleteAndWait {
    type Output = Result<Option<AckReport>>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<AckReport>>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
