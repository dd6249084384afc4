//! The event-time watermark of `--finalize-after`: the latest transaction time committed,
//! minus the delay. A day that ended before the watermark is final: late rows for it are
//! quarantined as `late_beyond_watermark` instead of reopening it. As in Spark's
//! `withWatermark`, a run's rows are judged against the watermark of the table before it.

use std::time::Duration;

use deltalake::DeltaTable;
use serde_json::Value;

use crate::dates;
use crate::delta;
use crate::error::{Error, Result};
use crate::schema::col;
use crate::tables::Table;

/// The first instant of the first day that is not final (µs), or `None` while the table is
/// empty (no watermark yet).
pub fn open_from(main: &DeltaTable, delay: Duration) -> Result<Option<i64>> {
    let Some(latest) = latest_transaction_us(main)? else {
        return Ok(None);
    };
    let watermark = latest.saturating_sub(delay.as_micros().min(i64::MAX as u128) as i64);
    Ok(dates::of_micros(watermark).map(dates::start_micros))
}

/// The latest `transaction_ts` committed, from the statistics of the files of the latest
/// day (the only ones that can hold it): no data is read.
fn latest_transaction_us(main: &DeltaTable) -> Result<Option<i64>> {
    let name = Table::Transactions.name();
    let snapshot = main.snapshot().map_err(|e| Error::delta(name, e))?;
    let files: Vec<_> = snapshot.log_data().iter().collect();
    let Some(last_day) = files.iter().filter_map(delta::day_of_file).max() else {
        return Ok(None);
    };
    let mut latest = None;
    for f in files
        .iter()
        .filter(|f| delta::day_of_file(f) == Some(last_day))
    {
        let max = f
            .stats()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|s| {
                s.pointer(&format!("/maxValues/{}", col::TRANSACTION_TS))
                    .and_then(Value::as_str)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_micros())
            });
        // Without statistics, the day's end bounds it.
        let max = max.unwrap_or_else(|| dates::start_micros(last_day + 1) - 1);
        latest = latest.max(Some(max));
    }
    Ok(latest)
}
