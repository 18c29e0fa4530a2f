//! Exit statuses of the `herald` command and the error type that carries one.
//!
//! Every command returns `Result<(), Failure>`; `main` prints a failure as one line on
//! standard error (`herald: <message>`) and exits with its status. The statuses are part of
//! the command line's contract (README, Command line) and are listed in `herald --help`:
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | any other failure (including a failed `herald demo`) |
//! | 2 | bad usage or bad input (unknown option, invalid topic name, malformed header, ...) |
//! | 3 | Redis could not be reached, or did not answer in time; `herald publish --min-replicas N`: fewer than N replicas confirmed within `--replica-timeout` |
//! | 4 | Redis refused the request (authentication, permissions, out of memory, read-only) or holds data Herald did not write |
//! | 5 | `herald publish --wait-all`, `herald map put/del --wait-all`: not every member acknowledged (applied) within `--timeout` |
//! | 6 | `herald map put/del --expect/--absent`: the compare-and-set lost (the message says the key's current revision) |

use std::fmt;
use std::io;

use herald::ErrorKind;

/// Success.
pub(crate) const SUCCESS: u8 = 0;
/// Any failure without a more specific status.
pub(crate) const FAILURE: u8 = 1;
/// Bad usage or bad input (clap's own usage errors use the same status).
pub(crate) const BAD_INPUT: u8 = 2;
/// Redis unreachable, or an operation timed out.
pub(crate) const UNREACHABLE: u8 = 3;
/// Redis refused the request, or its keys hold data Herald cannot use.
pub(crate) const REFUSED: u8 = 4;
/// `herald publish --wait-all` / `herald map put --wait-all`: some member did not acknowledge
/// (apply) in time.
pub(crate) const NOT_ACKNOWLEDGED: u8 = 5;
/// `herald map put/del --expect/--absent`: the compare-and-set lost.
pub(crate) const CONFLICT: u8 = 6;

/// The exit statuses, as shown at the end of `herald --help`.
pub(crate) const HELP: &str = "\
Exit status:
  0  success
  1  any other failure (including a failed `herald demo`)
  2  bad usage or bad input (unknown option, invalid topic name, malformed --header, message too large, ...)
  3  Redis could not be reached, or did not answer in time (see --connect-timeout);
     `herald publish --min-replicas N`: fewer than N replicas confirmed within --replica-timeout
     (the message is on the primary; the same command with the same --key waits again)
  4  Redis refused the request (authentication, permissions, out of memory, read-only replica)
     or Herald's keys hold data Herald did not write
  5  `herald publish --wait-all`: not every member of the group acknowledged within --timeout;
     `herald map put/del --wait-all`: not every member's watcher applied the change in time
  6  `herald map put/del --expect REV|--absent`: the compare-and-set lost; the message says the
     key's current revision

Errors are reported as one line on standard error: `herald: <what went wrong and what to do>`.
Log verbosity is set with RUST_LOG (default `warn`); logs also go to standard error.";

/// Why a command failed: an exit status and, unless the failure is silent, a message.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The process exit status.
    pub(crate) status: u8,
    /// The one-line message for standard error; `None` exits without printing anything.
    pub(crate) message: Option<String>,
}

impl Failure {
    /// A failure with the given status and message.
    pub(crate) fn new(status: u8, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: Some(message.into()),
        }
    }

    /// Bad input from the user (status 2).
    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        Self::new(BAD_INPUT, message)
    }

    /// A failure that is not the user's nor Redis's (status 1).
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(FAILURE, message)
    }

    /// A write to standard output failed. A closed pipe (`herald tail | head -1`) means the
    /// reader is gone: that ends the command quietly and successfully, as it does for other
    /// Unix filters; anything else is a failure.
    pub(crate) fn stdout(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure {
                status: SUCCESS,
                message: None,
            }
        } else {
            Self::other(format!("cannot write to standard output: {e}"))
        }
    }

    /// The message as one line (Redis errors may span several).
    pub(crate) fn one_line(&self) -> Option<String> {
        self.message
            .as_deref()
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m} (exit status {})", self.status),
            None => write!(f, "exit status {}", self.status),
        }
    }
}

/// The exit status for a library error.
pub(crate) fn status_of(e: &herald::Error) -> u8 {
    match e.kind() {
        ErrorKind::BadInput => BAD_INPUT,
        ErrorKind::Unreachable => UNREACHABLE,
        ErrorKind::Refused => REFUSED,
        ErrorKind::Conflict => CONFLICT,
        _ => FAILURE,
    }
}

/// What the command line adds to a library error: the option or command that fixes it.
fn hint(e: &herald::Error) -> Option<String> {
    match e {
        herald::Error::MessageTooLarge { topic, .. } => Some(format!(
            "raise the limit with `herald configure {topic} --max-size BYTES`"
        )),
        herald::Error::WrongType { .. } => {
            Some("or run herald with another --namespace".to_string())
        }
        herald::Error::Unreachable { .. } => {
            Some("or raise --connect-timeout to wait longer".to_string())
        }
        herald::Error::NotReplicated { .. } => Some(
            "run the same `herald publish` again with the same --key (it waits again without \
             publishing twice; without --key it would publish again), raise --replica-timeout, \
             lower --min-replicas, or check the replicas (redis-cli INFO replication)"
                .to_string(),
        ),
        _ => None,
    }
}

impl From<herald::Error> for Failure {
    fn from(e: herald::Error) -> Self {
        let message = match hint(&e) {
            Some(hint) => format!("{e}; {hint}"),
            None => e.to_string(),
        };
        Failure::new(status_of(&e), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_statuses() {
        let bad = herald::validate_topic("a b").unwrap_err();
        assert_eq!(Failure::from(bad).status, BAD_INPUT);
        assert_eq!(Failure::from(herald::Error::Closed).status, FAILURE);
        assert_eq!(
            Failure::from(herald::Error::Timeout {
                operation: "publish",
                waited: std::time::Duration::from_secs(1),
                reason: "x".into(),
            })
            .status,
            UNREACHABLE
        );
    }

    #[test]
    fn not_replicated_exits_3_and_says_what_to_do() {
        let e = herald::Error::NotReplicated {
            topic: "t".into(),
            epoch: 1,
            first: 1,
            last: 1,
            acked: 0,
            wanted: 1,
            waited: std::time::Duration::from_secs(1),
        };
        let f = Failure::from(e);
        assert_eq!(f.status, UNREACHABLE);
        let message = f.message.unwrap_or_default();
        assert!(message.contains("same --key"), "{message}");
        assert!(message.contains("--replica-timeout"), "{message}");
    }

    #[test]
    fn command_line_hints_are_added_to_library_errors() {
        let too_large = herald::Error::MessageTooLarge {
            topic: "t".into(),
            size: 10,
            limit: 5,
        };
        assert!(!too_large.to_string().contains("herald configure"));
        let message = Failure::from(too_large).message.unwrap_or_default();
        assert!(
            message.contains("herald configure t --max-size"),
            "{message}"
        );
    }

    #[test]
    fn messages_become_one_line() {
        let f = Failure::other("first\nsecond\r\n  third");
        assert_eq!(f.one_line().as_deref(), Some("first second third"));
        let quiet = Failure::stdout(&io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!((quiet.status, quiet.one_line()), (SUCCESS, None));
    }
}
