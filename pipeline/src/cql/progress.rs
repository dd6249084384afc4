//! The load progress record (`pipeline_load_progress`): which Delta table is served (its
//! id), the write timestamp base of that identity, and its last version fully loaded.
//!
//! Every change goes through a lightweight transaction: claiming an identity only replaces
//! the one that was read, and a recorded version only moves forward. Every write of a load
//! carries the timestamp `base_timestamp + version`, so of two loads running at once the
//! newer version wins row by row, whatever the order their writes arrive in.

use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::statement::unprepared::Statement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use super::schema::PROGRESS_TABLE;
use crate::error::{Error, Result};

/// Key of our row in the progress table.
const KEY: &str = "customer_daily_aggregates";

/// What the progress table says.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProgress {
    /// Delta table id of the aggregates served.
    pub table_id: String,
    /// Write timestamps of this identity are `base_timestamp + version` (µs).
    pub base_timestamp: i64,
    /// Last version whose every row was written; -1 when none yet.
    pub version: i64,
}

impl LoadProgress {
    /// The write timestamp of `version`'s rows.
    pub fn timestamp(&self, version: i64) -> i64 {
        self.base_timestamp + version
    }
}

/// Read the record (serial consistency: it sees every applied lightweight transaction).
pub async fn read(session: &Session, keyspace: &str) -> Result<Option<LoadProgress>> {
    let what = "reading the load progress";
    let mut q = Statement::new(format!(
        "SELECT table_id, base_timestamp, aggregates_version FROM {keyspace}.{PROGRESS_TABLE} WHERE name = ?"
    ));
    q.set_consistency(Consistency::LocalSerial);
    let rows = session
        .query_unpaged(q, (KEY,))
        .await
        .map_err(|e| Error::scylla(what, e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what, e))?;
    let row = rows
        .maybe_first_row::<(Option<String>, Option<i64>, Option<i64>)>()
        .map_err(|e| Error::scylla(what, e))?;
    Ok(row.and_then(|(id, base, v)| {
        Some(LoadProgress {
            table_id: id?,
            base_timestamp: base?,
            version: v.unwrap_or(-1),
        })
    }))
}

/// Make `table_id` the served identity with nothing loaded yet, replacing `current` (which
/// was read), unless someone else changed the record first; returns the record now.
pub async fn claim(
    session: &Session,
    keyspace: &str,
    current: Option<&LoadProgress>,
    table_id: &str,
) -> Result<LoadProgress> {
    let what = "claiming the load progress for a new aggregates table";
    let now_us = chrono::Utc::now().timestamp_micros();
    // Above every timestamp the previous identity used (its base plus its versions).
    let base = current.map_or(now_us, |c| {
        now_us.max(c.base_timestamp + c.version.max(0) + 2)
    });
    let result = match current {
        None => session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.{PROGRESS_TABLE} (name, table_id, base_timestamp, aggregates_version) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                (KEY, table_id, base, -1i64),
            )
            .await,
        Some(c) => session
            .query_unpaged(
                format!(
                    "UPDATE {keyspace}.{PROGRESS_TABLE} SET table_id = ?, base_timestamp = ?, \
                     aggregates_version = ? WHERE name = ? IF table_id = ?"
                ),
                (table_id, base, -1i64, KEY, &c.table_id),
            )
            .await,
    };
    applied(result.map_err(|e| Error::scylla(what, e))?, what)?;
    // Applied or not, the record now names some identity: ours, or a concurrent claimer's.
    read(session, keyspace)
        .await?
        .ok_or_else(|| Error::scylla(what, "the progress record vanished"))
}

/// Record `version` as fully loaded, unless the identity changed or a newer version is
/// already recorded (then this load was overtaken; its rows lose to the newer ones).
pub async fn record(
    session: &Session,
    keyspace: &str,
    table_id: &str,
    version: i64,
    rows: u64,
) -> Result<bool> {
    let what = format!(
        "recording aggregates version {version} as loaded (every row was written; rerun to record it)"
    );
    let result = session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.{PROGRESS_TABLE} SET aggregates_version = ?, rows_loaded = ?, loaded_at = ? \
                 WHERE name = ? IF table_id = ? AND aggregates_version < ?"
            ),
            (
                version,
                rows as i64,
                CqlTimestamp(chrono::Utc::now().timestamp_millis()),
                KEY,
                table_id,
                version,
            ),
        )
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    applied(result, &what)
}

/// The `[applied]` column of a lightweight transaction's result.
fn applied(result: scylla::response::query_result::QueryResult, what: &str) -> Result<bool> {
    let rows = result
        .into_rows_result()
        .map_err(|e| Error::scylla(what.to_string(), e))?;
    let first = rows
        .maybe_first_row::<Row>()
        .map_err(|e| Error::scylla(what.to_string(), e))?;
    match first.as_ref().and_then(|r| r.columns.first()) {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        _ => Err(Error::scylla(
            what.to_string(),
            "the lightweight transaction returned no [applied] column",
        )),
    }
}
