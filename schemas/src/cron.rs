//! CronJob schedules: the five-field cron syntax Kubernetes takes (robfig/cron's standard
//! parser) and the times it names in a time zone.
//!
//! Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of
//! week (0-6 or SUN-SAT, 7 also Sunday). Each is `*` (or `?` for the days), a value, a
//! range `a-b`, any of those with a step `/n`, or a comma list of them. The descriptors
//! `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly`
//! stand for their fields. When both day fields are restricted, a day matches if either
//! does (cron's rule); otherwise both must.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day-of-month field was `*` (or `?`).
    any_day: bool,
    /// Whether the day-of-week field was `*` (or `?`).
    any_weekday: bool,
}

/// How far ahead a schedule is searched: one that names no time in this many years (31
/// February) names none.
const HORIZON_YEARS: i16 = 5;

// === impl Schedule ===

impl Schedule {
    /// Parses `text`, saying which field is wrong and why.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "{other:?} is not a descriptor (@yearly, @monthly, @weekly, @daily, @hourly)"
                ));
            }
            other => other,
        };
        if expanded.starts_with("TZ=") || expanded.starts_with("CRON_TZ=") {
            return Err("a time zone goes in spec.timeZone, not in the schedule".into());
        }
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!(
                "{text:?} has {} fields; a schedule has 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        };
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let weekdays = field("day of week", weekday, 0, 7, &WEEKDAYS, 0)?;
        Ok(Schedule {
            minutes: field("minute", minute, 0, 59, &[], 0)?,
            hours: field("hour", hour, 0, 23, &[], 0)? as u32,
            days: field("day of month", day, 1, 31, &[], 0)? as u32,
            months: field("month", month, 1, 12, &MONTHS, 1)? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            any_day: matches!(*day, "*" | "?"),
            any_weekday: matches!(*weekday, "*" | "?"),
        })
    }

    /// The first time the schedule names strictly after `after`, in zone `tz`; `None` if it
    /// names none within the horizon.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut t = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = local.year().checked_add(HORIZON_YEARS)?;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                t = first_of_next_month(t.date())?.to_datetime(Time::midnight());
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A local time a DST gap skips runs just after the gap, as cron does; one a fold
            // repeats, at its first instance.
            let at = tz.to_zoned(t).ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The times the schedule names after `after` up to and including `until`, newest
    /// last, at most `cap` of them (the rest are dropped from the front).
    pub fn times_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        cap: usize,
    ) -> Vec<Timestamp> {
        let mut out = std::collections::VecDeque::new();
        let mut t = after;
        while let Some(next) = self.next_after(t, tz).filter(|n| *n <= until) {
            if out.len() == cap {
                out.pop_front();
            }
            out.push_back(next);
            t = next;
        }
        out.into()
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day || self.any_weekday {
            day && weekday
        } else {
            day || weekday
        }
    }
}

/// The time zone a CronJob names (`spec.timeZone`): an IANA name from the system's tzdb, or
/// UTC when none is named.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None | Some("UTC" | "Etc/UTC") => Ok(TimeZone::UTC),
        Some(name) => {
            let plain = name.split('/').all(|p| {
                !p.is_empty()
                    && p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
            });
            if !plain {
                return Err(format!("{name:?} is not a time zone name"));
            }
            TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
        }
    }
}

/// The zoned time of `t` in `tz` (for messages).
pub fn zoned(t: Timestamp, tz: &TimeZone) -> Zoned {
    t.to_zoned(tz.clone())
}

fn first_of_next_month(date: Date) -> Option<Date> {
    date.first_of_month().checked_add(1.month()).ok()
}

/// Parses one field into a bit set of the values it names (`offset` of names: 0 or 1).
fn field(
    what: &str,
    text: &str,
    min: u8,
    max: u8,
    names: &[&str],
    offset: u8,
) -> Result<u64, String> {
    let value = |v: &str| -> Result<u8, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u8 + offset);
        }
        let n: u8 = v
            .parse()
            .map_err(|_| format!("{what}: {v:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{what}: {n} is out of {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u8 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: step {s:?} is not a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(range)?, max),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!("{what}: the range {range:?} runs backwards"));
        }
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_parse_or_say_which_field_is_wrong() {
        assert!(Schedule::parse("*/5 * * * *").is_ok());
        assert!(Schedule::parse("0 9-17 * JAN-jun mon-FRI").is_ok());
        assert!(Schedule::parse("@hourly").is_ok());
        let err = |s: &str| Schedule::parse(s).unwrap_err();
        assert!(err("* * * *").contains("5"), "{}", err("* * * *"));
        assert!(err("61 * * * *").contains("minute: 61 is out of 0-59"));
        assert!(err("* * * 13 *").contains("month"));
        assert!(err("*/0 * * * *").contains("step"));
        assert!(err("5-1 * * * *").contains("backwards"));
        assert!(err("@every 5m").contains("descriptor"));
        assert!(err("TZ=UTC * * * * *").contains("timeZone"));
        assert!(err("x * * * *").contains("not a number"));
    }

    #[test]
    fn next_times_follow_the_fields_and_the_zone() {
        let utc = TimeZone::UTC;
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(at("2026-12-07T20:41:30Z"), &utc),
            Some(at("2026-12-07T20:45:00Z"))
        );
        // Strictly after: a time on the schedule gives the next one.
        assert_eq!(
            every5.next_after(at("2026-12-07T20:45:00Z"), &utc),
            Some(at("2026-12-07T20:50:00Z"))
        );
        let weekdays = Schedule::parse("30 9 * * MON-FRI").unwrap();
        // Saturday 2026-12-12 -> Monday the 14th.
        assert_eq!(
            weekdays.next_after(at("2026-12-11T10:00:00Z"), &utc),
            Some(at("2026-12-14T09:30:00Z"))
        );
        // Both day fields restricted: either matches (the 1st, or a Friday).
        let either = Schedule::parse("0 0 1 * 5").unwrap();
        assert_eq!(
            either.next_after(at("2026-12-02T00:00:00Z"), &utc),
            Some(at("2026-12-04T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), &utc),
            None
        );
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at("2026-03-01T00:00:00Z"), &utc),
            Some(at("2028-02-29T00:00:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly.next_after(at("2026-12-07T00:00:00Z"), &utc),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-12-07T00:00:00Z"), &utc),
            Some(at("2026-12-13T00:00:00Z"))
        );
        // 09:00 in New York in winter is 14:00 UTC.
        let ny = time_zone(Some("America/New_York")).unwrap();
        let nine = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            nine.next_after(at("2026-12-07T00:00:00Z"), &ny),
            Some(at("2026-12-07T14:00:00Z"))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert!(time_zone(Some("../../etc/passwd")).is_err());
        let missed = every5.times_between(
            at("2026-12-07T20:00:00Z"),
            at("2026-12-07T21:00:00Z"),
            &utc,
            3,
        );
        assert_eq!(
            missed,
            [
                at("2026-12-07T20:50:00Z"),
                at("2026-12-07T20:55:00Z"),
                at("2026-12-07T21:00:00Z")
            ]
        );
    }
}
