//! Instants and durations: integer milliseconds since the Unix epoch (UTC).

use crate::error::{Result, SegmintError};

/// An instant or a duration in milliseconds.
pub type Millis = i64;

/// Milliseconds in one second.
pub const SECOND: Millis = 1_000;

/// An instant as its low and high 32-bit words: lists of many entries
/// (timers, the timer queue) keep instants this way so that an entry
/// beside a `u32` id takes 12 bytes, not 16 (membership lists split the
/// words again, into 16-bit units).
pub fn instant_words(at: Millis) -> [u32; 2] {
    let bits = at as u64;
    [bits as u32, (bits >> 32) as u32]
}

/// The instant of [`instant_words`].
pub fn instant_from_words(low: u32, high: u32) -> Millis {
    (u64::from(low) | (u64::from(high) << 32)) as Millis
}

/// Parses an ISO-8601 / RFC 3339 timestamp (`2026-01-01T00:00:00Z`,
/// `2026-01-01T00:00:00.250+02:00`, or a date `2026-01-01`) to milliseconds.
/// A timestamp without an offset is refused: it would be a guess.
pub fn parse_timestamp(text: &str) -> Result<Millis> {
    // The common shape first: trimming scans for Unicode whitespace, and
    // the fast path fails on any surrounding space anyway.
    if let Some(ms) = parse_utc_fast(text.as_bytes()) {
        return Ok(ms);
    }
    let text = text.trim();
    if let Some(ms) = parse_utc_fast(text.as_bytes()) {
        return Ok(ms);
    }
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(dt.timestamp_millis());
    }
    // RFC 3339 requires 'T'; ISO-8601 also allows a space.
    if let Ok(dt) = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(dt.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(dt) = date.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    let hint = if chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").is_ok() {
        "it has no timezone offset; add 'Z' or '+00:00'"
    } else {
        "expected ISO-8601 like 2026-01-01T12:00:00Z"
    };
    Err(SegmintError::InvalidArgument {
        message: format!("invalid timestamp {text:?}: {hint}"),
    })
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.f...]Z`, without chrono's general
/// parser: `since(trait.created_at)` re-reads a stored string on every
/// evaluation. Anything else (offsets, leap seconds, dates) returns `None`
/// and goes to chrono, so both give the same instant.
pub(crate) fn parse_utc_fast(b: &[u8]) -> Option<Millis> {
    fn digits(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let millis = match &b[19..b.len() - 1] {
        [] => 0,
        // Truncated to milliseconds, as chrono does.
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 1_000 / 10i64.pow(fraction.len() as u32)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (civil-from-days inverted).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000 + millis)
}

/// Formats milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_timestamp(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// Formats `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (`None`
/// outside the calendar's range): how packed traits keep a timestamp in
/// whole seconds (see [`crate::traits`]).
pub fn format_utc_seconds(seconds: i64) -> Option<smol_str::SmolStr> {
    let instant = chrono::DateTime::from_timestamp(seconds, 0)?;
    let text = instant.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Some(smol_str::SmolStr::new(text))
}

/// Formats the UTC calendar date of an instant as `YYYY-MM-DD` (how a
/// date-typed value becomes a trait or property).
pub fn format_date(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.date_naive().format("%Y-%m-%d").to_string(),
        None => format!("{ms}ms"),
    }
}

/// Floors an instant to a multiple of the granularity `g` (> 0).
pub fn floor_to(t: Millis, g: Millis) -> Millis {
    t.div_euclid(g) * g
}

/// The smallest multiple of `g` that is `>= t`.
pub fn ceil_to(t: Millis, g: Millis) -> Millis {
    let f = floor_to(t, g);
    if f == t {
        t
    } else {
        f + g
    }
}

/// The wall clock now, in milliseconds.
pub fn wall_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Parses a duration like `1s`, `250ms`, `5m`, `2h`, `30d`, `1w`.
pub fn parse_duration(text: &str) -> Result<Millis> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || {
        SegmintError::InvalidArgument {
        message: format!("invalid duration {text:?}: expected a number and a unit, like 1s, 250ms, 5m, 2h, 30d or 1w"),
    }
    };
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => SECOND,
        "m" => 60 * SECOND,
        "h" => 3_600 * SECOND,
        "d" => 86_400 * SECOND,
        "w" => 7 * 86_400 * SECOND,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).ok_or_else(bad)
}

/// Formats a duration compactly: `2h`, `1d3h`, `90s` → `1m30s`, `250ms`.
pub fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let mut rest = ms.unsigned_abs();
    let mut out = String::from(sign);
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_offsets() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_timestamp("1970-01-01T01:00:01.250+01:00").unwrap(),
            1250
        );
        assert_eq!(parse_timestamp("1970-01-02").unwrap(), 86_400_000);
        // Surrounding whitespace misses the fast path and is trimmed.
        assert_eq!(parse_timestamp(" 1970-01-01T00:00:01Z\n").unwrap(), 1000);
        let err = parse_timestamp("1970-01-01T00:00:01")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no timezone offset"), "{err}");
        assert!(parse_timestamp("yesterday").is_err());
    }

    proptest::proptest! {
        /// The fast path gives chrono's instant, and leaves to chrono what
        /// it does not take (impossible dates, leap seconds, odd fractions).
        #[test]
        fn fast_path_agrees_with_chrono(
            year in 0i64..10_000, month in 0i64..14, day in 0i64..33,
            hour in 0i64..25, minute in 0i64..61, second in 0i64..61,
            fraction in proptest::option::of(proptest::prop_oneof!["[0-9]{0,10}", "[0-9x.+:]{1,4}"]),
        ) {
            let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
            if let Some(f) = &fraction {
                text.push('.');
                text.push_str(f);
            }
            text.push('Z');
            let general = chrono::DateTime::parse_from_rfc3339(&text).ok().map(|d| d.timestamp_millis());
            let fast = parse_utc_fast(text.as_bytes());
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, general, "{}", text);
            }
            proptest::prop_assert_eq!(parse_timestamp(&text).ok(), general, "{}", text);
        }
    }

    #[test]
    fn fast_path_takes_the_common_shapes() {
        assert_eq!(parse_utc_fast(b"1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_utc_fast(b"1969-12-31T23:59:59.5Z"), Some(-500));
        assert_eq!(
            parse_utc_fast(b"2024-02-29T12:00:00.123456Z"),
            Some(1_709_208_000_123)
        );
        assert_eq!(parse_utc_fast(b"2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_utc_fast(b"2023-01-01T00:00:00+00:00"), None);
    }

    #[test]
    fn formats_timestamps_and_dates() {
        assert_eq!(format_timestamp(1250), "1970-01-01T00:00:01.250Z");
        assert_eq!(format_date(86_400_000 + 5), "1970-01-02");
        assert_eq!(format_date(-1), "1969-12-31");
    }

    #[test]
    fn floors_and_ceils() {
        assert_eq!(floor_to(1999, 1000), 1000);
        assert_eq!(floor_to(-1, 1000), -1000);
        assert_eq!(ceil_to(1001, 1000), 2000);
        assert_eq!(ceil_to(2000, 1000), 2000);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), 300_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250);
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("m").is_err());
    }
}
