//! Timestamps as Kubernetes writes them (RFC 3339 in UTC, second precision:
//! `2026-11-23T14:05:09Z`) and ages as kubectl prints them (`42s`, `5m3s`, `3h`, `12d`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    rfc3339(now_secs())
}

/// Now, as RFC 3339 in UTC with microseconds (Kubernetes' `MicroTime`, as Leases carry it).
pub fn now_rfc3339_micros() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = rfc3339(now.as_secs());
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), now.subsec_micros())
}

/// Seconds since the epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (what follows is ignored: Keel writes
/// UTC), or `None` when `t` does not start with such a date.
pub fn parse_rfc3339(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Seconds from one RFC 3339 timestamp to another (0 if `to` is earlier).
pub fn seconds_between(from: &str, to: &str) -> Option<u64> {
    Some(parse_rfc3339(to)?.saturating_sub(parse_rfc3339(from)?))
}

/// A duration as Go and kubectl write them (`720h`, `1h30m`, `90s`, `500ms`), plus days
/// (`30d`); a bare number is seconds. `None` for anything else.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += std::time::Duration::try_from_secs_f64(number * seconds).ok()?;
    }
    Some(total)
}

/// A duration as kubectl prints ages: two units while the first is small (`5m3s`, `3h20m`,
/// `2d5h`), one after.
pub fn human_duration(secs: u64) -> String {
    let (minutes, hours) = (secs / 60, secs / 3600);
    let (days, years) = (hours / 24, hours / (24 * 365));
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => two(minutes, "m", secs % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => two(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => two(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => two(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

/// How long ago `timestamp` was, as [`human_duration`]; `<unknown>` for a missing or
/// malformed timestamp.
pub fn age(timestamp: &str) -> String {
    match parse_rfc3339(timestamp) {
        Some(then) => human_duration(now_secs().saturating_sub(then)),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(d("720h"), Some(2_592_000.0));
        assert_eq!(d("1h30m"), Some(5400.0));
        assert_eq!(d("90"), Some(90.0));
        assert_eq!(d("30d"), Some(2_592_000.0));
        assert_eq!(d("1.5s"), Some(1.5));
        assert_eq!(d("250ms"), Some(0.25));
        for bad in ["", "h", "10x", "-5s", "1h-2m"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(rfc3339(1_795_441_509), "2026-11-23T13:45:09Z");
        assert_eq!(parse_rfc3339("2026-11-23T13:45:09Z"), Some(1_795_441_509));
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59Z")
                .map(rfc3339)
                .as_deref(),
            Some("2000-02-29T23:59:59Z")
        );
        assert_eq!(
            seconds_between("2026-11-23T13:45:09Z", "2026-11-23T13:45:19Z"),
            Some(10)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(age("not a time"), "<unknown>");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (303, "5m3s"),
            (900, "15m"),
            (3 * 3600 + 1200, "3h20m"),
            (20 * 3600, "20h"),
            (2 * 86_400 + 5 * 3600, "2d5h"),
            (30 * 86_400, "30d"),
            (3 * 365 * 86_400 + 10 * 86_400, "3y10d"),
            (10 * 365 * 86_400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }
}
