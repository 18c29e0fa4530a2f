//! Cron expressions for recurring schedules ([`ScheduleBuilder::cron`](super::ScheduleBuilder::cron)):
//! the standard five fields, evaluated in UTC, with the day rule of Vixie cron.
//!
//! ```
//! use herald::schedule::Cron;
//!
//! let cron: Cron = "*/15 9-17 * * MON-FRI".parse()?;
//! // 2024-01-05 (a Friday) 17:50 UTC, in minutes since the Unix epoch: the next fire is
//! // Monday 2024-01-08 09:00 UTC.
//! let friday_1750 = 28_407_950;
//! assert_eq!(cron.tick_at_or_after(friday_1750 * 60_000), Some(28_411_740));
//! # Ok::<(), herald::schedule::CronError>(())
//! ```
//!
//! ## Syntax
//! `minute hour day-of-month month day-of-week`, separated by spaces:
//!
//! | field | values | names |
//! |---|---|---|
//! | minute | 0-59 | |
//! | hour | 0-23 | |
//! | day of month | 1-31 | |
//! | month | 1-12 | `JAN`-`DEC` |
//! | day of week | 0-7 (0 and 7 are Sunday) | `SUN`-`SAT` |
//!
//! Each field is a comma-separated list of items; an item is `*` (every value), `N`, or a
//! range `N-M`, each optionally followed by a step `/S` (`*/5`: every 5th value from the
//! lowest; `10-30/10`: 10, 20, 30; `N/S`: from N to the highest value). Names are accepted
//! in any case, alone or as range ends. The macros `@yearly` (`@annually`), `@monthly`,
//! `@weekly`, `@daily` (`@midnight`) and `@hourly` stand for their usual expressions.
//!
//! ## Rules
//! - Times are **UTC** (minutes since the Unix epoch, by the scheduler's clock); there is no
//!   time zone or daylight-saving handling.
//! - Day of month and day of week, as in Vixie cron: when both fields are restricted (neither
//!   starts with `*`), a day matches if **either** matches (`0 0 1 * MON`: the 1st of every
//!   month and every Monday); when either starts with `*` (including `*/2`), a day must match
//!   both.
//! - An expression that can never fire (`0 0 30 2 *`: there is no February 30) is refused
//!   when parsed.

use std::fmt;
use std::str::FromStr;

/// Milliseconds in a minute: a cron tick is one minute long.
pub const MINUTE_MS: u64 = 60_000;

/// How far ahead [`Cron::tick_at_or_after`] looks for the next fire: 9 years of days, enough
/// for any February 29 (8 years apart around 2100).
const SEARCH_DAYS: u64 = 9 * 366;

/// A parsed cron expression; see the [module documentation](self) for the syntax and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    expression: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

/// A field of a cron expression, as named by [`CronError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CronField {
    /// The expression as a whole (wrong number of fields, unknown macro).
    Expression,
    /// The first field, minute (0-59).
    Minute,
    /// The second field, hour (0-23).
    Hour,
    /// The third field, day of month (1-31).
    DayOfMonth,
    /// The fourth field, month (1-12 or JAN-DEC).
    Month,
    /// The fifth field, day of week (0-7 or SUN-SAT; 0 and 7 are Sunday).
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Expression => "the expression",
            CronField::Minute => "the minute field (1st, 0-59)",
            CronField::Hour => "the hour field (2nd, 0-23)",
            CronField::DayOfMonth => "the day-of-month field (3rd, 1-31)",
            CronField::Month => "the month field (4th, 1-12 or JAN-DEC)",
            CronField::DayOfWeek => "the day-of-week field (5th, 0-7 or SUN-SAT)",
        })
    }
}

/// A cron expression that could not be parsed; names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {field}: {reason}; a cron expression is 5 fields, minute hour day-of-month month day-of-week, in UTC, e.g. \"*/5 * * * *\"")]
pub struct CronError {
    /// The rejected expression.
    pub expression: String,
    /// The field at fault.
    pub field: CronField,
    /// What exactly is wrong.
    pub reason: String,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct FieldSpec {
    field: CronField,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value the first name stands for.
    names_from: u32,
}

const SPECS: [FieldSpec; 5] = [
    FieldSpec {
        field: CronField::Minute,
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    FieldSpec {
        field: CronField::Hour,
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    FieldSpec {
        field: CronField::DayOfMonth,
        min: 1,
        max: 31,
        names: &[],
        names_from: 1,
    },
    FieldSpec {
        field: CronField::Month,
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    FieldSpec {
        field: CronField::DayOfWeek,
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl FieldSpec {
    fn value(&self, s: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(self.names_from + i as u32);
        }
        let v: u32 = match s.parse() {
            Ok(v) if s.bytes().all(|b| b.is_ascii_digit()) => v,
            _ if self.names.is_empty() => {
                return Err(format!("{s:?} is not a number"));
            }
            _ => {
                return Err(format!(
                    "{s:?} is neither a number nor one of {}",
                    self.names.join(" ")
                ))
            }
        };
        if v < self.min || v > self.max {
            return Err(format!("{v} is out of range {}-{}", self.min, self.max));
        }
        Ok(v)
    }

    /// The bit set of the values `text` lists.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut set = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("empty list item in {text:?}"));
            }
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = match s.parse() {
                        Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => n,
                        _ => return Err(format!("step {s:?} in {item:?} is not a number above 0")),
                    };
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(format!("range {range:?} runs backwards"));
                }
                (a, b)
            } else {
                let v = self.value(range)?;
                // `N/S` runs from N to the highest value.
                (v, if step.is_some() { self.max } else { v })
            };
            let step = step.unwrap_or(1);
            let mut v = lo;
            while v <= hi {
                set |= 1 << v;
                v += step;
            }
        }
        Ok(set)
    }
}

impl Cron {
    /// Parses a cron expression.
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let error = |field, reason: String| CronError {
            expression: expression.to_string(),
            field,
            reason,
        };
        let trimmed = expression.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(error(
                    CronField::Expression,
                    format!(
                        "unknown macro {trimmed:?} (known: @yearly @annually @monthly @weekly @daily @midnight @hourly)"
                    ),
                ))
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(error(
                CronField::Expression,
                format!("has {} fields, not 5", fields.len()),
            ));
        }
        let mut sets = [0u64; 5];
        for (i, spec) in SPECS.iter().enumerate() {
            sets[i] = spec.parse(fields[i]).map_err(|r| error(spec.field, r))?;
        }
        // Sunday is 0 and 7.
        if sets[4] & (1 << 7) != 0 {
            sets[4] = (sets[4] | 1) & !(1 << 7);
        }
        let cron = Cron {
            expression: expression.to_string(),
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4],
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        };
        // With the day of week not restricting (`*`), a day of month that no listed month has
        // never fires (`0 0 30 2 *`).
        if cron.weekdays_star {
            let possible = (1..=12u32)
                .filter(|m| cron.months & (1 << m) != 0)
                .any(|m| cron.days & ((1u64 << (days_in_month_max(m) + 1)) - 2) != 0);
            if !possible {
                return Err(error(
                    CronField::DayOfMonth,
                    "no month in the month field has any of these days, so it never fires".into(),
                ));
            }
        }
        Ok(cron)
    }

    /// The expression, as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether the minute `tick` (minutes since the Unix epoch, UTC) is a fire time.
    pub fn fires_at(&self, tick: u64) -> bool {
        let day = tick / 1440;
        let minute = tick % 1440;
        self.day_matches(day)
            && self.hours & (1 << (minute / 60)) != 0
            && self.minutes & (1 << (minute % 60)) != 0
    }

    /// The first tick (fire time, in minutes since the Unix epoch, UTC) whose minute has not
    /// ended at `at_ms` (ms since the Unix epoch): the tick in progress at `at_ms` if the
    /// expression fires during that minute, else the next one. `None` if it does not fire in
    /// the next 9 years.
    pub fn tick_at_or_after(&self, at_ms: u64) -> Option<u64> {
        self.next_from(at_ms / MINUTE_MS)
    }

    /// The first fire time at or after the minute `from`.
    pub(crate) fn next_from(&self, from: u64) -> Option<u64> {
        let mut day = from / 1440;
        let mut start = from % 1440;
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                for hour in (start / 60)..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let first = if hour == start / 60 { start % 60 } else { 0 };
                    let rest = self.minutes >> first;
                    if rest != 0 {
                        let minute = first + u64::from(rest.trailing_zeros());
                        if minute < 60 {
                            return Some(day * 1440 + hour * 60 + minute);
                        }
                    }
                }
            }
            day += 1;
            start = 0;
        }
        None
    }

    fn day_matches(&self, day: u64) -> bool {
        let (_, month, dom) = civil_from_days(day);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let weekday = (day + 4) % 7;
        let dom_ok = self.days & (1 << dom) != 0;
        let dow_ok = self.weekdays & (1 << weekday) != 0;
        if self.days_star || self.weekdays_star {
            dom_ok && dow_ok
        } else {
            dom_ok || dow_ok
        }
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cron::parse(s)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// The most days month `m` (1-12) can have.
fn days_in_month_max(m: u32) -> u32 {
    match m {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month 1-12, day 1-31) of the day `z` days after 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to (year, month, day); the inverse of [`civil_from_days`].
#[cfg(test)]
pub(crate) fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The tick (minutes since the epoch) of a UTC time.
    fn at(y: u64, mo: u64, d: u64, h: u64, mi: u64) -> u64 {
        days_from_civil(y, mo, d) * 1440 + h * 60 + mi
    }

    fn next(expr: &str, from: u64) -> u64 {
        Cron::parse(expr).unwrap().next_from(from).unwrap()
    }

    fn fires(expr: &str, from: u64, n: usize) -> Vec<u64> {
        let c = Cron::parse(expr).unwrap();
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            let f = c.next_from(t).unwrap();
            out.push(f);
            t = f + 1;
        }
        out
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for day in (0..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        // 2024-01-05 was a Friday.
        assert_eq!((days_from_civil(2024, 1, 5) + 4) % 7, 5);
    }

    #[test]
    fn every_minute_and_steps() {
        let t = at(2024, 3, 10, 12, 34);
        assert_eq!(next("* * * * *", t), t);
        assert_eq!(next("*/5 * * * *", t), at(2024, 3, 10, 12, 35));
        assert_eq!(next("*/5 * * * *", t + 2), at(2024, 3, 10, 12, 40));
        assert_eq!(
            fires("10-30/10 * * * *", t, 4),
            vec![
                at(2024, 3, 10, 13, 10),
                at(2024, 3, 10, 13, 20),
                at(2024, 3, 10, 13, 30),
                at(2024, 3, 10, 14, 10)
            ]
        );
        // `N/S` runs from N to the highest value.
        assert_eq!(
            fires("50/5 * * * *", t, 3),
            vec![
                at(2024, 3, 10, 12, 50),
                at(2024, 3, 10, 12, 55),
                at(2024, 3, 10, 13, 50)
            ]
        );
        assert_eq!(
            fires("0 */7 * * *", at(2024, 3, 10, 0, 1), 4),
            vec![
                at(2024, 3, 10, 7, 0),
                at(2024, 3, 10, 14, 0),
                at(2024, 3, 10, 21, 0),
                at(2024, 3, 11, 0, 0)
            ]
        );
        assert_eq!(
            fires("5,1,3 4 * * *", t, 4),
            vec![
                at(2024, 3, 11, 4, 1),
                at(2024, 3, 11, 4, 3),
                at(2024, 3, 11, 4, 5),
                at(2024, 3, 12, 4, 1)
            ]
        );
    }

    #[test]
    fn month_and_year_ends() {
        // The last minute of the year rolls over to the next one.
        assert_eq!(
            next("0 0 * * *", at(2023, 12, 31, 23, 59)),
            at(2024, 1, 1, 0, 0)
        );
        assert_eq!(
            next("59 23 31 12 *", at(2024, 1, 1, 0, 0)),
            at(2024, 12, 31, 23, 59)
        );
        // The 31st skips the months without one.
        assert_eq!(
            fires("0 12 31 * *", at(2024, 1, 31, 12, 1), 3),
            vec![
                at(2024, 3, 31, 12, 0),
                at(2024, 5, 31, 12, 0),
                at(2024, 7, 31, 12, 0)
            ]
        );
        assert_eq!(
            next("0 0 1 * *", at(2024, 4, 30, 23, 59)),
            at(2024, 5, 1, 0, 0)
        );
        assert_eq!(
            next("@monthly", at(2024, 12, 15, 0, 0)),
            at(2025, 1, 1, 0, 0)
        );
        assert_eq!(next("@yearly", at(2024, 1, 1, 0, 1)), at(2025, 1, 1, 0, 0));
    }

    #[test]
    fn february_29() {
        assert_eq!(
            next("0 0 29 2 *", at(2023, 3, 1, 0, 0)),
            at(2024, 2, 29, 0, 0)
        );
        assert_eq!(
            next("0 0 29 2 *", at(2024, 2, 29, 0, 1)),
            at(2028, 2, 29, 0, 0)
        );
        // 2100 is no leap year: eight years from 2096 to 2104.
        assert_eq!(
            next("0 0 29 2 *", at(2096, 3, 1, 0, 0)),
            at(2104, 2, 29, 0, 0)
        );
        // 2000 was one.
        assert_eq!(
            next("0 0 29 2 *", at(1999, 1, 1, 0, 0)),
            at(2000, 2, 29, 0, 0)
        );
        // The day after February 28 in a leap year.
        assert_eq!(
            next("0 0 * 2 *", at(2024, 2, 28, 0, 1)),
            at(2024, 2, 29, 0, 0)
        );
        assert_eq!(
            next("0 0 * 2 *", at(2023, 2, 28, 0, 1)),
            at(2024, 2, 1, 0, 0)
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_vixie_cron() {
        // Both restricted: the 13th or a Friday. 2024-09-01 is a Sunday.
        assert_eq!(
            fires("0 0 13 * FRI", at(2024, 9, 1, 0, 0), 4),
            vec![
                at(2024, 9, 6, 0, 0),
                at(2024, 9, 13, 0, 0),
                at(2024, 9, 20, 0, 0),
                at(2024, 9, 27, 0, 0)
            ]
        );
        assert_eq!(
            fires("0 0 1 * mon", at(2024, 9, 24, 0, 0), 3),
            vec![
                at(2024, 9, 30, 0, 0),
                at(2024, 10, 1, 0, 0),
                at(2024, 10, 7, 0, 0)
            ]
        );
        // Day of month `*`: the day of week alone decides (and 7 is Sunday, as is 0).
        assert_eq!(
            fires("0 0 * * 7", at(2024, 9, 2, 0, 0), 2),
            vec![at(2024, 9, 8, 0, 0), at(2024, 9, 15, 0, 0)]
        );
        assert_eq!(
            next("0 0 * * 0", at(2024, 9, 2, 0, 0)),
            at(2024, 9, 8, 0, 0)
        );
        // A starred field with a step still means "both must match" (odd days that are Fridays).
        assert_eq!(
            fires("0 0 */2 * FRI", at(2024, 9, 1, 0, 0), 2),
            vec![at(2024, 9, 13, 0, 0), at(2024, 9, 27, 0, 0)]
        );
        // Ranges of names, wrapping through Sunday by 7.
        assert_eq!(
            fires("0 9 * * FRI-7", at(2024, 9, 2, 0, 0), 4),
            vec![
                at(2024, 9, 6, 9, 0),
                at(2024, 9, 7, 9, 0),
                at(2024, 9, 8, 9, 0),
                at(2024, 9, 13, 9, 0)
            ]
        );
        assert_eq!(
            next("0 0 1 jan-mar/2 *", at(2024, 1, 1, 0, 1)),
            at(2024, 3, 1, 0, 0)
        );
    }

    #[test]
    fn tick_at_or_after_counts_the_minute_in_progress() {
        let c = Cron::parse("*/5 * * * *").unwrap();
        let t = at(2024, 3, 10, 12, 35);
        assert!(c.fires_at(t));
        assert!(!c.fires_at(t + 1));
        assert_eq!(c.tick_at_or_after(t * MINUTE_MS + 59_999), Some(t));
        assert_eq!(c.tick_at_or_after((t + 1) * MINUTE_MS), Some(t + 5));
    }

    #[test]
    fn bad_expressions_name_their_field() {
        let cases: [(&str, CronField, &str); 14] = [
            ("* * * *", CronField::Expression, "has 4 fields, not 5"),
            ("* * * * * *", CronField::Expression, "6 fields"),
            ("@reboot", CronField::Expression, "unknown macro"),
            ("60 * * * *", CronField::Minute, "60 is out of range 0-59"),
            ("*/0 * * * *", CronField::Minute, "step \"0\""),
            ("1,,2 * * * *", CronField::Minute, "empty list item"),
            ("x * * * *", CronField::Minute, "\"x\" is not a number"),
            ("* 24 * * *", CronField::Hour, "24 is out of range 0-23"),
            ("* 5-2 * * *", CronField::Hour, "runs backwards"),
            ("* * 0 * *", CronField::DayOfMonth, "0 is out of range 1-31"),
            ("* * * 13 *", CronField::Month, "13 is out of range 1-12"),
            (
                "* * * FOO *",
                CronField::Month,
                "neither a number nor one of JAN",
            ),
            ("* * * * 8", CronField::DayOfWeek, "8 is out of range 0-7"),
            ("0 0 30 2 *", CronField::DayOfMonth, "never fires"),
        ];
        for (expr, field, reason) in cases {
            let e = Cron::parse(expr).unwrap_err();
            assert_eq!(e.field, field, "{expr}");
            assert!(e.reason.contains(reason), "{expr}: {}", e.reason);
            let text = e.to_string();
            assert!(text.contains(&field.to_string()), "{text}");
            assert!(text.contains(expr), "{text}");
        }
        // February 30 is fine when a day of week may fire instead.
        assert!(Cron::parse("0 0 30 2 MON").is_ok());
        assert_eq!(Cron::parse(" @Daily ").unwrap().expression(), " @Daily ");
    }
}
