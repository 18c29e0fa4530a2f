//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, on by
//! default). The library installs no exporter: an application that wants the numbers
//! installs a recorder (the gateway, `herald serve`, exports them at `/metrics`). Without
//! the feature, or without a recorder, every call here is a no-op.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `herald_publish_total` | counter | `outcome` = `ok`, `duplicate`, `error` | messages published (a batch counts each message) |
//! | `herald_publish_duration_seconds` | histogram | | time of one publish call (single or batch), until its receipt |
//! | `herald_deliveries_total` | counter | | messages handed to subscribers |
//! | `herald_gaps_total` | counter | `reason` = `retention`, `unreadable`, `lost` | `Gap` events handed to subscribers |
//! | `herald_resets_total` | counter | | `Reset` events handed to subscribers |
//! | `herald_reconnects_total` | counter | | live feeds re-established after they were lost |
//! | `herald_history_reads_total` | counter | | history reads by subscriptions catching up |
//! | `herald_subscription_lag_messages` | histogram | | at each periodic head check, messages a subscription's topic holds past what it delivered |

use std::time::Instant;

use crate::subscription::{Event, GapReason};

/// Counts one publish call of `messages` messages that took since `started`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn published<T>(
    started: Instant,
    messages: usize,
    outcome: &crate::Result<T>,
    duplicates: usize,
) {
    #[cfg(feature = "metrics")]
    {
        let n = messages as u64;
        match outcome {
            Ok(_) => {
                let dup = duplicates as u64;
                if n > dup {
                    ::metrics::counter!("herald_publish_total", "outcome" => "ok")
                        .increment(n - dup);
                }
                if dup > 0 {
                    ::metrics::counter!("herald_publish_total", "outcome" => "duplicate")
                        .increment(dup);
                }
            }
            Err(_) => {
                ::metrics::counter!("herald_publish_total", "outcome" => "error").increment(n);
            }
        }
        ::metrics::histogram!("herald_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

/// What kind of event is handed to a subscriber, counted once the hand-over succeeded.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Handed {
    Message,
    Gap(&'static str),
    Reset,
}

impl Handed {
    pub(crate) fn of(event: &Event) -> Handed {
        match event {
            Event::Message(_) => Handed::Message,
            Event::Gap { reason, .. } => Handed::Gap(match reason {
                GapReason::Retention => "retention",
                GapReason::Unreadable => "unreadable",
                GapReason::Lost => "lost",
            }),
            Event::Reset { .. } => Handed::Reset,
        }
    }

    /// Counts it.
    pub(crate) fn count(self) {
        #[cfg(feature = "metrics")]
        match self {
            Handed::Message => ::metrics::counter!("herald_deliveries_total").increment(1),
            Handed::Gap(reason) => {
                ::metrics::counter!("herald_gaps_total", "reason" => reason).increment(1)
            }
            Handed::Reset => ::metrics::counter!("herald_resets_total").increment(1),
        }
    }
}

/// Counts a live feed re-established after it was lost.
pub(crate) fn reconnected() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("herald_reconnects_total").increment(1);
}

/// Counts a history read of a subscription.
pub(crate) fn history_read() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("herald_history_reads_total").increment(1);
}

/// Records a subscription's lag behind its topic's head, in messages.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn lag(messages: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("herald_subscription_lag_messages").record(messages as f64);
}
