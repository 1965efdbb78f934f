//! Gong's datetime and date formats (API-NOTES §2.4, §3.2, §3.5).
//!
//! Gong wants ISO-8601 datetimes with an explicit offset and **without** fractional seconds,
//! e.g. `2019-01-03T23:45:57+01:00` or `2019-01-03T23:45:57Z`. The parser is hand-written
//! (rather than `time`'s RFC 3339 parser) for two reasons: it must tell *why* a value is wrong
//! (fraction vs. missing offset vs. garbage) so that the client gets an actionable message, and
//! it runs for every datetime of every record, so it must not allocate.
//!
//! Accepted shape: `YYYY-MM-DDTHH:MM:SS[(.|,)fraction][Z|±HH:MM]`. Only the `T` separator, an
//! upper-case `Z` and the extended `±HH:MM` offset are accepted, because un-normalised values are
//! forwarded to Gong verbatim and those are the forms Gong documents.

use std::fmt;
use std::fmt::Write as _;

use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

/// Why a string is not a datetime Gong accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateTimeProblem {
    /// Has fractional seconds (Gong: "ISO-8601 without milliseconds").
    HasMillis,
    /// A valid local date and time but no `Z` / `±HH:MM` offset.
    MissingOffset,
    /// Not a datetime at all (or an impossible one, e.g. February 30th).
    Invalid,
}

impl DateTimeProblem {
    /// The `<problem>` half of a violation's `<field>.<problem>` rule code.
    pub fn rule_suffix(self) -> &'static str {
        match self {
            DateTimeProblem::HasMillis => "no_millis",
            DateTimeProblem::MissingOffset => "offset_required",
            DateTimeProblem::Invalid => "invalid",
        }
    }
}

impl fmt::Display for DateTimeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DateTimeProblem::HasMillis => {
                "has fractional seconds; Gong requires whole seconds, e.g. 2024-01-02T03:04:05Z"
            }
            DateTimeProblem::MissingOffset => {
                "has no UTC offset; Gong requires Z or ±HH:MM, e.g. 2024-01-02T03:04:05Z"
            }
            DateTimeProblem::Invalid => {
                "is not an ISO-8601 datetime like 2024-01-02T03:04:05Z or 2024-01-02T03:04:05+01:00"
            }
        })
    }
}

impl std::error::Error for DateTimeProblem {}

/// A syntactically valid datetime, before Gong's two extra rules are applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lexed {
    /// The instant, with the fraction dropped and a missing offset taken as UTC.
    pub(crate) at: OffsetDateTime,
    pub(crate) has_fraction: bool,
    pub(crate) has_offset: bool,
}

impl Lexed {
    /// Whether the original string is exactly what [`format_gong_datetime`] would produce, so
    /// normalisation can skip rewriting (and re-allocating) it.
    pub(crate) fn is_canonical(&self, original: &str) -> bool {
        !self.has_fraction
            && self.has_offset
            && self.at.offset().is_utc()
            && original.ends_with('Z')
    }
}

/// `len` ASCII digits starting at `start`, as a number; `None` if any is missing or not a digit.
fn digits(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let slice = b.get(start..start.checked_add(len)?)?;
    let mut n: u32 = 0;
    for &c in slice {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

fn byte_is(b: &[u8], i: usize, want: u8) -> Option<()> {
    (b.get(i) == Some(&want)).then_some(())
}

fn date_from(year: u32, month: u32, day: u32) -> Option<Date> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()
}

/// Parses the shape described in the module docs; `None` means [`DateTimeProblem::Invalid`].
pub(crate) fn lex(s: &str) -> Option<Lexed> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    byte_is(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    byte_is(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    byte_is(b, 10, b'T')?;
    let hour = digits(b, 11, 2)?;
    byte_is(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    byte_is(b, 16, b':')?;
    let second = digits(b, 17, 2)?;
    let mut i = 19;

    let mut has_fraction = false;
    if matches!(b.get(i), Some(b'.' | b',')) {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        has_fraction = true;
    }

    let offset = match b.get(i) {
        None => None,
        Some(b'Z') => {
            i += 1;
            Some(UtcOffset::UTC)
        }
        Some(&sign @ (b'+' | b'-')) => {
            let h = digits(b, i + 1, 2)?;
            byte_is(b, i + 3, b':')?;
            let m = digits(b, i + 4, 2)?;
            i += 6;
            if h > 23 || m > 59 {
                return None;
            }
            let (h, m) = (i8::try_from(h).ok()?, i8::try_from(m).ok()?);
            let (h, m) = if sign == b'-' { (-h, -m) } else { (h, m) };
            Some(UtcOffset::from_hms(h, m, 0).ok()?)
        }
        Some(_) => return None,
    };
    if i != b.len() {
        return None;
    }

    let date = date_from(year, month, day)?;
    // `Time::from_hms` rejects 24:00 and leap seconds (:60), which Gong's examples never use.
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    let at = OffsetDateTime::new_in_offset(date, time, offset.unwrap_or(UtcOffset::UTC));
    // A value whose UTC equivalent falls outside the supported years (e.g. 9999-12-31T23:00-05:00)
    // could not be formatted in UTC later; refuse it here so nothing downstream has to cope.
    at.checked_to_offset(UtcOffset::UTC)?;
    Some(Lexed {
        at,
        has_fraction,
        has_offset: offset.is_some(),
    })
}

/// Parses a datetime in Gong's format: RFC 3339 / ISO-8601 with an offset and without
/// fractional seconds. When both rules are broken, `MissingOffset` is reported.
pub fn parse_gong_datetime(s: &str) -> Result<OffsetDateTime, DateTimeProblem> {
    let lexed = lex(s).ok_or(DateTimeProblem::Invalid)?;
    if !lexed.has_offset {
        return Err(DateTimeProblem::MissingOffset);
    }
    if lexed.has_fraction {
        return Err(DateTimeProblem::HasMillis);
    }
    Ok(lexed.at)
}

/// Lenient variant used when normalising: drops a fraction (truncating, never rounding into the
/// next second) and takes a value without offset as UTC. Only `Invalid` can be returned.
pub fn normalize_gong_datetime(s: &str) -> Result<OffsetDateTime, DateTimeProblem> {
    lex(s).map(|l| l.at).ok_or(DateTimeProblem::Invalid)
}

/// Formats in UTC as `2024-01-02T03:04:05Z`, the canonical form sent to Gong.
///
/// Every value [`parse_gong_datetime`] returns converts to UTC; for an arbitrary value whose
/// UTC equivalent is out of `time`'s range, its own offset is kept (`±HH:MM`) instead of panicking.
pub fn format_gong_datetime(t: OffsetDateTime) -> String {
    let mut out = String::with_capacity(25);
    write_gong_datetime(&mut out, t);
    out
}

/// [`format_gong_datetime`] appending to `out`, so normalisation can reuse the buffer of the
/// string it replaces instead of allocating one per value.
pub(crate) fn write_gong_datetime(out: &mut String, t: OffsetDateTime) {
    let t = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    // Digits are pushed by hand: `write!` with padding is several times slower, and this runs
    // for every normalised datetime of every record.
    let year = t.year();
    if (0..=9999).contains(&year) {
        push_digits(out, year.unsigned_abs(), 4);
    } else {
        // Only reachable for values not produced by our parser (years beyond 4 digits or BCE).
        let _ = write!(out, "{year:04}");
    }
    out.push('-');
    push_digits(out, u32::from(u8::from(t.month())), 2);
    out.push('-');
    push_digits(out, u32::from(t.day()), 2);
    out.push('T');
    push_digits(out, u32::from(t.hour()), 2);
    out.push(':');
    push_digits(out, u32::from(t.minute()), 2);
    out.push(':');
    push_digits(out, u32::from(t.second()), 2);
    let offset = t.offset();
    if offset.is_utc() {
        out.push('Z');
    } else {
        out.push(if offset.is_negative() { '-' } else { '+' });
        push_digits(out, u32::from(offset.whole_hours().unsigned_abs()), 2);
        out.push(':');
        push_digits(out, u32::from(offset.minutes_past_hour().unsigned_abs()), 2);
    }
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = (n / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Parses a Gong DATE: exactly `YYYY-MM-DD`, a real calendar date.
pub fn parse_gong_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    byte_is(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    byte_is(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    date_from(year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn accepts_z_and_extended_offsets() {
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05Z"),
            Ok(datetime!(2024-01-02 03:04:05 UTC))
        );
        assert_eq!(
            parse_gong_datetime("2019-01-03T23:45:57+01:00"),
            Ok(datetime!(2019-01-03 22:45:57 UTC))
        );
        assert_eq!(
            parse_gong_datetime("2019-01-03T23:45:57-05:30"),
            Ok(datetime!(2019-01-04 05:15:57 UTC))
        );
        assert_eq!(
            parse_gong_datetime("2024-02-29T00:00:00Z"),
            Ok(datetime!(2024-02-29 0:00 UTC))
        );
    }

    #[test]
    fn rejects_fractional_seconds() {
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05.123Z"),
            Err(DateTimeProblem::HasMillis)
        );
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05,5+02:00"),
            Err(DateTimeProblem::HasMillis)
        );
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05.Z"),
            Err(DateTimeProblem::Invalid)
        );
    }

    #[test]
    fn rejects_missing_offset() {
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05"),
            Err(DateTimeProblem::MissingOffset)
        );
        assert_eq!(
            parse_gong_datetime("2024-01-02T03:04:05.1"),
            Err(DateTimeProblem::MissingOffset)
        );
    }

    #[test]
    fn rejects_malformed_and_impossible_values() {
        for s in [
            "",
            "2024-01-02",
            "2024-01-02 03:04:05Z",
            "2024-01-02t03:04:05Z",
            "2024-01-02T03:04:05z",
            "2024-01-02T03:04Z",
            "2024-01-02T03:04:05+0100",
            "2024-01-02T03:04:05+01",
            "2024-01-02T03:04:05+24:00",
            "2024-02-30T03:04:05Z",
            "2023-02-29T03:04:05Z",
            "2024-13-01T03:04:05Z",
            "2024-01-02T24:00:00Z",
            "2024-01-02T23:59:60Z",
            "2024-01-02T03:04:05Zjunk",
            "+2024-01-02T03:04:05Z",
            "9999-12-31T23:00:00-05:00",
            "２０２４-01-02T03:04:05Z",
        ] {
            assert_eq!(
                parse_gong_datetime(s),
                Err(DateTimeProblem::Invalid),
                "{s:?}"
            );
        }
    }

    #[test]
    fn normalising_drops_fraction_and_assumes_utc() {
        assert_eq!(
            normalize_gong_datetime("2024-01-02T03:04:05.999"),
            Ok(datetime!(2024-01-02 03:04:05 UTC))
        );
        assert_eq!(
            normalize_gong_datetime("2024-01-02T03:04:05.5+01:00"),
            Ok(datetime!(2024-01-02 02:04:05 UTC))
        );
        assert_eq!(
            normalize_gong_datetime("nope"),
            Err(DateTimeProblem::Invalid)
        );
    }

    #[test]
    fn formats_in_utc_without_fraction() {
        assert_eq!(
            format_gong_datetime(datetime!(2024-01-02 03:04:05 UTC)),
            "2024-01-02T03:04:05Z"
        );
        assert_eq!(
            format_gong_datetime(datetime!(2024-01-02 03:04:05.789 +01:00)),
            "2024-01-02T02:04:05Z"
        );
        assert_eq!(
            format_gong_datetime(datetime!(0001-01-01 0:00 UTC)),
            "0001-01-01T00:00:00Z"
        );
        // Out of range in UTC: keeps its own offset instead of panicking.
        assert_eq!(
            format_gong_datetime(datetime!(-9999-01-01 00:30 +01:00)),
            "-9999-01-01T00:30:00+01:00"
        );
    }

    #[test]
    fn problems_display_actionable_messages() {
        assert!(DateTimeProblem::HasMillis
            .to_string()
            .contains("whole seconds"));
        assert!(DateTimeProblem::MissingOffset
            .to_string()
            .contains("offset"));
        assert_eq!(
            DateTimeProblem::MissingOffset.rule_suffix(),
            "offset_required"
        );
    }

    #[test]
    fn dates_are_plain_calendar_dates() {
        assert_eq!(
            parse_gong_date("2022-09-04"),
            Some(time::macros::date!(2022 - 09 - 04))
        );
        for s in [
            "2022-9-04",
            "2022-09-31",
            "2022-09-04T00:00:00Z",
            "20220904",
            "",
        ] {
            assert_eq!(parse_gong_date(s), None, "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(secs in -62_135_596_800i64..253_402_300_799i64) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let s = format_gong_datetime(t);
            prop_assert_eq!(parse_gong_datetime(&s), Ok(t));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_gong_datetime(&s);
            let _ = normalize_gong_datetime(&s);
            let _ = parse_gong_date(&s);
        }
    }
}
