//! Calendar days, the partition unit of every table: one home for every conversion between
//! a [`Day`] (Arrow `Date32`, Delta `date`), `chrono` dates, timestamps, text and CQL `date`.
//!
//! Every conversion is checked (chrono's and arrow's own), so a date far from 1970, before it
//! included, is either converted exactly or reported, never a panic or a wrapped number.

use chrono::{DateTime, NaiveDate};
use deltalake::arrow::datatypes::Date32Type;
use scylla::value::CqlDate;

/// A UTC calendar day as days since 1970-01-01, negative before it: Arrow's `Date32`.
pub type Day = i32;

/// The day of a `NaiveDate`, if it fits a `Date32`.
pub fn from_date(date: NaiveDate) -> Option<Day> {
    let days = i64::from(Date32Type::from_naive_date(date));
    // `from_naive_date` computes in i64 and narrows; make the narrowing checked.
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let exact = date.signed_duration_since(epoch).num_days();
    (exact == days).then_some(days as Day)
}

/// The `NaiveDate` of a day, if chrono can represent it (±262,000 years).
pub fn to_date(day: Day) -> Option<NaiveDate> {
    Date32Type::to_naive_date_opt(day)
}

/// The UTC day of an instant given in microseconds since the epoch, if representable.
pub fn of_micros(us: i64) -> Option<Day> {
    DateTime::from_timestamp_micros(us).and_then(|t| from_date(t.date_naive()))
}

/// Midnight UTC starting `day`, in microseconds since the epoch (saturating far out).
pub fn start_micros(day: Day) -> i64 {
    i64::from(day).saturating_mul(86_400_000_000)
}

/// `YYYY-MM-DD` (chrono's format, with a sign and more digits beyond year 9999), or
/// `day N` for a number chrono cannot represent.
pub fn format(day: Day) -> String {
    match to_date(day) {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => format!("day {day}"),
    }
}

/// Parse `YYYY-MM-DD` (as Delta writes partition values).
pub fn parse(s: &str) -> Option<Day> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(from_date)
}

/// The CQL `date` of a day (scylla's own chrono conversion).
pub fn to_cql(day: Day) -> Option<CqlDate> {
    to_date(day).map(CqlDate::from)
}

/// The day of a CQL `date`, if it fits a `Date32`.
pub fn from_cql(d: CqlDate) -> Option<Day> {
    let date: NaiveDate = d.try_into().ok()?;
    from_date(date)
}

/// A day counts as *active* when it has at least this share of the median day's rows.
pub const ACTIVE_DAY_SHARE: f64 = 0.05;

/// The first and last *active* day of data spread over days (`(day, rows)`): days with at
/// least [`ACTIVE_DAY_SHARE`] of the median day's rows (and at least one). A few stray rows
/// far from the rest (one valid row stamped today under a history of 2024, a mis-dated test
/// row) do not move the span: the profiles' as-of day and the report's time axis use it, so
/// such a row neither zeroes every customer's 30-day window nor squashes the charts.
pub fn active_span(days: impl IntoIterator<Item = (Day, u64)>) -> Option<(Day, Day)> {
    let days: Vec<(Day, u64)> = days.into_iter().filter(|(_, n)| *n > 0).collect();
    let mut counts: Vec<u64> = days.iter().map(|(_, n)| *n).collect();
    counts.sort_unstable();
    let median = *counts.get(counts.len() / 2)?;
    let floor = ((median as f64 * ACTIVE_DAY_SHARE).ceil() as u64).max(1);
    let active = || days.iter().filter(|(_, n)| *n >= floor).map(|(d, _)| *d);
    Some((active().min()?, active().max()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_rows_far_from_the_rest_do_not_move_the_active_span() {
        let jan: Vec<(Day, u64)> = (19723..19754).map(|d| (d, 150)).collect();
        assert_eq!(active_span(jan.clone()), Some((19723, 19753)));
        let mut with_stray = jan.clone();
        with_stray.push((20790, 1));
        with_stray.push((10000, 2));
        assert_eq!(active_span(with_stray), Some((19723, 19753)));
        // A quiet day (a tenth of the usual) is still active.
        let mut quiet = jan;
        quiet.push((19754, 15));
        assert_eq!(active_span(quiet), Some((19723, 19754)));
        assert_eq!(active_span(vec![(5, 1)]), Some((5, 5)));
        assert_eq!(active_span(Vec::new()), None);
    }

    #[test]
    fn days_round_trip_through_every_representation_including_before_1970() {
        for (text, day) in [
            ("1970-01-01", 0),
            ("1969-12-31", -1),
            ("1900-02-28", -25_509),
            ("2024-01-15", 19_737),
            ("0001-01-01", -719_162),
        ] {
            assert_eq!(parse(text), Some(day), "{text}");
            assert_eq!(format(day), text);
            assert_eq!(from_cql(to_cql(day).unwrap()), Some(day), "{text}");
        }
    }

    #[test]
    fn instants_floor_to_their_utc_day() {
        assert_eq!(of_micros(0), Some(0));
        assert_eq!(of_micros(86_400_000_000 - 1), Some(0));
        assert_eq!(of_micros(-1), Some(-1));
        // About 292,000 years before 1970: beyond chrono's range, so no day at all.
        assert_eq!(of_micros(i64::MIN), None);
    }

    #[test]
    fn out_of_range_days_are_reported_not_panicked() {
        assert_eq!(to_date(i32::MAX), None);
        assert_eq!(format(i32::MAX), format!("day {}", i32::MAX));
        assert_eq!(to_cql(i32::MIN), None);
        assert_eq!(parse("2024-13-40"), None);
    }
}
