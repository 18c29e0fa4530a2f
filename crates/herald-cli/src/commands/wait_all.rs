//! `herald publish ... --wait-all GROUP --timeout SECS`: waits until every live member of
//! GROUP has acknowledged a message and prints the report as one JSON line:
//! `{"event":"acks","topic":..,"epoch":..,"offset":..,"group":..,"complete":..,"acked":[..],
//! "pending":[..],"expired":[..],"waited_ms":..}`.
//!
//! Exit status 0 only when every member acknowledged in time; otherwise 5
//! ([`NOT_ACKNOWLEDGED`]) with a one-line reason naming the members that did not.

use std::time::Duration;

use herald::{AckReport, Acks, Herald, Receipt};

use crate::exit::{Failure, NOT_ACKNOWLEDGED};
use crate::output::{AcksLine, JsonLines};

/// Waits for the acknowledgements of `receipt` by `group` and prints the report.
pub(crate) async fn run(
    herald: &Herald,
    receipt: &Receipt,
    group: &str,
    timeout: Duration,
    out: &mut JsonLines<std::io::Stdout>,
) -> Result<(), Failure> {
    let report = herald
        .wait_for_acks(receipt, group)
        .acks(Acks::All)
        .timeout(timeout)
        .await?;
    let what = format!(
        "acknowledge offset {} of {:?}",
        report.position.offset, report.topic
    );
    let topic = report.topic.clone();
    print_report(&report, group, &what, &topic, timeout, out)
}

/// Prints `report` as one `{"event":"acks",..}` line; status 5 ([`NOT_ACKNOWLEDGED`]) unless
/// every member of `group` did `what` (e.g. "acknowledge offset 7 of \"t\"") within `timeout`.
/// `topic` is the topic whose lag the hint points at.
pub(crate) fn print_report(
    report: &AckReport,
    group: &str,
    what: &str,
    topic: &str,
    timeout: Duration,
    out: &mut JsonLines<std::io::Stdout>,
) -> Result<(), Failure> {
    out.emit(&AcksLine {
        event: "acks",
        report,
    })
    .map_err(|e| Failure::stdout(&e))?;
    if report.complete {
        return Ok(());
    }
    Err(Failure::new(
        NOT_ACKNOWLEDGED,
        format!(
            "{} of {} members of group {group:?} did not {what} within {timeout:?}: {}; \
             check them with `herald lag {topic}` and `herald members {group}`",
            report.pending.len(),
            report.pending.len() + report.acked.len() + report.expired.len(),
            report.pending.join(", "),
        ),
    ))
}
