//! `herald publish TOPIC [DATA] [--key KEY] [--header K=V]...`: publishes one message (DATA),
//! or one message per line of standard input (DATA is `-`), and prints one JSON line per
//! message: `{"topic":..,"epoch":..,"offset":..,"duplicate":..}`; with DATA `-`, each line
//! also says which input line it is for (`"line":N`, from 1) and, with `--key`, its key.
//!
//! With `--min-replicas N [--replica-timeout SECS]`, a publish is acknowledged only once N
//! replicas have it (Redis `WAIT`); otherwise the command fails with exit status 3.
//!
//! With `--wait-all GROUP [--timeout SECS]`, it then waits until every live member of GROUP
//! has acknowledged the (last) message and prints the report (see [`super::wait_all`]).
//!
//! Standard input is published in batches (`publish_batch`, one atomic step and one round
//! trip each) of the lines already read, up to [`BATCH_LINES`] lines or [`BATCH_BYTES`]
//! bytes, so a file is published quickly while a slow producer (`tail -f log | herald publish
//! t -`) still sees each line published as soon as it is read.

use clap::Args;
use herald::{Herald, Message};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{check_topic, connect, GlobalArgs};
use crate::exit::Failure;
use crate::output::{JsonLines, ReceiptLine};

/// Most lines in one batch.
const BATCH_LINES: usize = 256;
/// A batch stops growing once it holds this many payload bytes.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest accepted line: Redis's own limit on one value (and the largest `--max-size`).
const MAX_LINE: usize = 512 * 1024 * 1024;

/// Arguments of `herald publish`.
#[derive(Debug, Args)]
#[command(
    long_about = "Publish a message to a topic and print where it landed, as one JSON line: \
{\"topic\":..,\"epoch\":..,\"offset\":..,\"duplicate\":..}.\n\n\
With DATA `-`, every line of standard input is published as one message (its \\n or \\r\\n \
removed; empty lines are published as empty messages) and one JSON line is printed per line, \
in order, with \"line\":N (counting from 1) and, with --key, \"key\":\"KEY-N\" added. Lines are \
sent in batches, each appended atomically.\n\n\
With --min-replicas N, a message is acknowledged (printed) only once N replicas of the Redis \
primary have it; otherwise herald exits with status 3, the message standing on the primary \
(run the same command again with the same --key: it waits again without duplicating).",
    after_help = "Examples:\n  \
herald publish config 'reload users' --key reload-42 --header source=admin\n  \
seq 1 1000 | herald publish numbers - --key numbers-run-7"
)]
pub(crate) struct PublishArgs {
    /// The topic to publish to
    topic: String,

    /// The payload; `-` reads standard input and publishes one message per line. Omitted: an
    /// empty payload (a bare signal; headers may still carry information)
    data: Option<String>,

    /// Idempotency key: publishing the same key again within the topic's dedup window appends
    /// nothing and prints the original offset with "duplicate":true. With DATA `-`, line N
    /// (counting from 1) gets the key KEY-N, so every line has its own key and re-running the
    /// same input with the same KEY publishes nothing twice. Without --key, every message
    /// gets a fresh key
    #[arg(long, value_name = "KEY")]
    key: Option<String>,

    /// A header NAME=VALUE (split at the first `=`); repeat for several
    #[arg(long = "header", value_name = "K=V", value_parser = super::parse_key_value)]
    headers: Vec<(String, String)>,

    /// Work groups hand the message out no earlier than SECS seconds after it was published
    /// (by the Redis clock); plain subscribers receive it at once (the header herald-delay-ms)
    #[arg(long, value_name = "SECS", value_parser = super::parse_duration)]
    delay: Option<std::time::Duration>,

    /// Work groups that keep key order (`herald work --key-order`) process the messages of
    /// one KEY one at a time, in offset order (the header herald-order-key)
    #[arg(long, value_name = "KEY")]
    order_key: Option<String>,

    /// After publishing, wait until every live member of GROUP has acknowledged (committed
    /// its cursor named after its member id at or past the last message), print which did as
    /// one JSON line, and exit with status 5 unless all did within --timeout
    #[arg(long, value_name = "GROUP")]
    wait_all: Option<String>,

    /// Acknowledge a publish only once N replicas of the Redis primary have it (Redis WAIT), so
    /// that it survives a failover; exit with status 3 when fewer confirm within
    /// --replica-timeout
    #[arg(long, value_name = "N", default_value = "0")]
    min_replicas: usize,

    /// How long a publish waits for --min-replicas, in seconds
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = super::parse_duration)]
    replica_timeout: std::time::Duration,

    /// How long --wait-all waits, in seconds
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = super::parse_duration, requires = "wait_all")]
    timeout: std::time::Duration,
}

/// Runs `herald publish`.
pub(crate) async fn run(global: &GlobalArgs, args: PublishArgs) -> Result<(), Failure> {
    check_topic(&args.topic)?;
    if let Some(group) = &args.wait_all {
        herald::membership::validate_group(group)?;
    }
    let herald = if args.min_replicas > 0 {
        super::connect_with(global, |b| {
            b.min_replicas(args.min_replicas, args.replica_timeout)
        })
        .await?
    } else {
        connect(global).await?
    };
    let mut out = JsonLines::stdout();
    match args.data.as_deref() {
        Some("-") => {
            let stdin = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
            let last = publish_lines(&herald, &args, stdin, &mut out).await?;
            match (&args.wait_all, last) {
                (Some(group), Some(receipt)) => {
                    super::wait_all::run(&herald, &receipt, group, args.timeout, &mut out).await
                }
                _ => Ok(()),
            }
        }
        data => {
            let message = with_headers(Message::new(data.unwrap_or("").to_string()), &args);
            let message = match &args.key {
                Some(key) => message.key(key.as_str()),
                None => message,
            };
            let receipt = herald.publish(&args.topic, message).await?;
            out.emit(&ReceiptLine::from(&receipt))
                .map_err(|e| Failure::stdout(&e))?;
            match &args.wait_all {
                Some(group) => {
                    super::wait_all::run(&herald, &receipt, group, args.timeout, &mut out).await
                }
                None => Ok(()),
            }
        }
    }
}

/// Adds the `--header`s (and `--delay`, `--order-key`) to a message.
fn with_headers(message: Message, args: &PublishArgs) -> Message {
    let message = args.headers.iter().fold(message, |m, (name, value)| {
        m.header(name.as_str(), value.as_str())
    });
    let message = match args.delay {
        Some(delay) => message.delay(delay),
        None => message,
    };
    match &args.order_key {
        Some(key) => message.order_key(key.as_str()),
        None => message,
    }
}

/// Publishes every line of `input` as a message, in batches, printing one receipt per line;
/// returns the last receipt.
async fn publish_lines<R: tokio::io::AsyncRead + Unpin>(
    herald: &Herald,
    args: &PublishArgs,
    mut input: BufReader<R>,
    out: &mut JsonLines<std::io::Stdout>,
) -> Result<Option<herald::Receipt>, Failure> {
    let mut last = None;
    let mut line_no: u64 = 0;
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH_LINES);
    let mut line = Vec::new();
    let mut eof = false;
    while !eof {
        batch.clear();
        let mut bytes = 0;
        // Wait for one line, then take the lines already buffered, without waiting for more.
        loop {
            if !read_line(&mut input, &mut line, line_no + 1).await? {
                eof = true;
                break;
            }
            line_no += 1;
            bytes += line.len();
            let message = with_headers(Message::new(std::mem::take(&mut line)), args);
            batch.push(match &args.key {
                Some(key) => message.key(format!("{key}-{line_no}")),
                None => message,
            });
            if batch.len() >= BATCH_LINES
                || bytes >= BATCH_BYTES
                || !input.buffer().contains(&b'\n')
            {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let receipts = herald.publish_batch(&args.topic, batch.drain(..)).await?;
        let first_line = line_no + 1 - receipts.len() as u64;
        for (line, receipt) in (first_line..).zip(&receipts) {
            let mut receipt_line = ReceiptLine::from(receipt);
            receipt_line.line = Some(line);
            receipt_line.key = args.key.as_ref().map(|key| format!("{key}-{line}"));
            out.write(&receipt_line).map_err(|e| Failure::stdout(&e))?;
        }
        out.flush().map_err(|e| Failure::stdout(&e))?;
        last = receipts.into_iter().last().or(last);
    }
    Ok(last)
}

/// Reads the next line into `line`, without its `\n` or `\r\n`; false at the end of input.
async fn read_line<R: AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
    line_no: u64,
) -> Result<bool, Failure> {
    line.clear();
    let limit = u64::try_from(MAX_LINE)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = (&mut *input)
        .take(limit)
        .read_until(b'\n', line)
        .await
        .map_err(|e| Failure::other(format!("cannot read standard input: {e}")))?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > MAX_LINE {
        return Err(Failure::bad_input(format!(
            "line {line_no} of standard input is longer than {MAX_LINE} bytes; \
             nothing from it on was published"
        )));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines() {
        let mut input = BufReader::new(&b"one\r\ntwo\n\nlast"[..]);
        let mut line = Vec::new();
        let mut got = Vec::new();
        while read_line(&mut input, &mut line, 0).await.unwrap() {
            got.push(String::from_utf8(line.clone()).unwrap());
        }
        assert_eq!(got, ["one", "two", "", "last"]);
    }
}
