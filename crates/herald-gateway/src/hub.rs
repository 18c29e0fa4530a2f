//! One Herald subscription per topic, shared by every client of this process.
//!
//! A [`Feed`] runs one subscription (from the newest message on) and sends each event, shared
//! (see [`Outgoing`]), into a broadcast channel of bounded capacity. Sending never waits, so a slow client never slows
//! the feed or the other clients: a client that falls more than the channel's capacity behind
//! sees `Lagged` and catches up from history on its own (see `follow`). A feed lives as long
//! as one client holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use herald::{Event, Herald, Start};
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::wire::Outgoing;

/// The shared feeds, by topic.
pub(crate) struct Hub {
    herald: Herald,
    capacity: usize,
    feeds: Mutex<HashMap<String, Weak<Feed>>>,
    metrics: Arc<Metrics>,
}

/// One topic's shared subscription.
pub(crate) struct Feed {
    tx: broadcast::Sender<Arc<Outgoing>>,
    ready: watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
    metrics: Arc<Metrics>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.feeds_open.dec();
    }
}

/// How long a client waits for a new feed's subscription to start before it goes on (and
/// catches up from history if the feed starts later).
const READY_WAIT: Duration = Duration::from_secs(5);

impl Feed {
    /// A receiver of the live events from now on, once the feed's subscription is running
    /// (or [`READY_WAIT`] passed): every message appended after this returns is sent to it.
    pub(crate) async fn receiver(&self) -> broadcast::Receiver<Arc<Outgoing>> {
        let rx = self.tx.subscribe();
        let mut ready = self.ready.clone();
        let _ = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await;
        rx
    }
}

impl Hub {
    pub(crate) fn new(herald: Herald, capacity: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            herald,
            capacity,
            feeds: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub(crate) fn herald(&self) -> &Herald {
        &self.herald
    }

    /// Topics with a feed now.
    pub(crate) fn topics(&self) -> Vec<String> {
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let mut topics: Vec<String> = feeds
            .iter()
            .filter(|(_, f)| f.strong_count() > 0)
            .map(|(t, _)| t.clone())
            .collect();
        topics.sort();
        topics
    }

    /// Topics with a feed now, with how many clients follow each.
    pub(crate) fn subscribers(&self) -> Vec<(String, usize)> {
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, usize)> = feeds
            .iter()
            .filter_map(|(t, f)| f.upgrade().map(|f| (t.clone(), f.tx.receiver_count())))
            .collect();
        out.sort();
        out
    }

    /// The feed of `topic` (a valid name), started if none runs.
    pub(crate) fn feed(&self, topic: &str) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(topic).and_then(Weak::upgrade) {
            return feed;
        }
        feeds.retain(|_, f| f.strong_count() > 0);
        let (tx, _) = broadcast::channel(self.capacity);
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(run(
            self.herald.clone(),
            topic.to_string(),
            tx.clone(),
            ready_tx,
            self.metrics.clone(),
        ))
        .abort_handle();
        self.metrics.feeds_open.inc();
        let feed = Arc::new(Feed {
            tx,
            ready,
            task,
            metrics: self.metrics.clone(),
        });
        feeds.insert(topic.to_string(), Arc::downgrade(&feed));
        feed
    }
}

/// The feed's task: one subscription for the feed's life (it retries on its own after
/// problems); started again after the last position it saw only if it ends.
async fn run(
    herald: Herald,
    topic: String,
    tx: broadcast::Sender<Arc<Outgoing>>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let mut last: Option<u64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let start = match last {
            Some(offset) => Start::Offset(offset + 1),
            None => Start::Latest,
        };
        match herald.subscribe([topic.as_str()]).from(start).await {
            Ok(mut sub) => {
                let _ = ready.send(true);
                backoff = Duration::from_millis(100);
                while let Some(item) = sub.next().await {
                    match item {
                        Ok(event) => {
                            last = match &event {
                                Event::Message(d) => Some(d.position.offset),
                                Event::Gap { to, .. } => Some(*to),
                                Event::Reset { .. } => None,
                                _ => last,
                            };
                            metrics.feed_events.inc();
                            // No receiver is fine: clients come and go.
                            let _ = tx.send(Outgoing::new(event));
                        }
                        // The subscription goes on after reporting a problem (it retries on
                        // its own): keeping it keeps its view continuous, which the followers
                        // rely on to tell a log that continues under a new epoch.
                        Err(e) => tracing::warn!(topic, error = %e, "gateway feed problem"),
                    }
                }
            }
            Err(e) => tracing::warn!(topic, error = %e, "gateway feed cannot start; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
