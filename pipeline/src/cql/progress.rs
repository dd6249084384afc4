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

/// The progress record's name of the aggregates' serving table.
pub const AGGREGATES: &str = super::schema::TABLE;
/// The progress record's name of the profiles' serving table.
pub const PROFILES: &str = super::schema::PROFILES_TABLE;

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
pub async fn read(session: &Session, keyspace: &str, name: &str) -> Result<Option<LoadProgress>> {
    let what = "reading the load progress";
    let mut q = Statement::new(format!(
        "SELECT table_id, base_timestamp, aggregates_version FROM {keyspace}.{PROGRESS_TABLE} WHERE name = ?"
    ));
    q.set_consistency(Consistency::LocalSerial);
    let rows = session
        .query_unpaged(q, (name,))
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
    name: &str,
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
                (name, table_id, base, -1i64),
            )
            .await,
        Some(c) => session
            .query_unpaged(
                format!(
                    "UPDATE {keyspace}.{PROGRESS_TABLE} SET table_id = ?, base_timestamp = ?, \
                     aggregates_version = ? WHERE name = ? IF table_id = ?"
                ),
                (table_id, base, -1i64, name, &c.table_id),
            )
            .await,
    };
    applied(result.map_err(|e| Error::scylla(what, e))?, what)?;
    // Applied or not, the record now names some identity: ours, or a concurrent claimer's.
    read(session, keyspace, name)
        .await?
        .ok_or_else(|| Error::scylla(what, "the progress record vanished"))
}

/// Record `version` as fully loaded, unless the identity changed or a newer version is
/// already recorded (then this load was overtaken; its rows lose to the newer ones).
pub async fn record(
    session: &Session,
    keyspace: &str,
    name: &str,
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
                name,
                table_id,
                version,
            ),
        )
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    applied(result, &what)
}

/// Record `version` as fully loaded if the record still says `from` (compare and set: a
/// load that diffed against `from` must not record over a version recorded meanwhile).
pub async fn record_from(
    session: &Session,
    keyspace: &str,
    name: &str,
    table_id: &str,
    from: i64,
    version: i64,
    rows: u64,
) -> Result<bool> {
    let what = format!("recording {name} version {version} as loaded (rerun to record it)");
    let result = session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.{PROGRESS_TABLE} SET aggregates_version = ?, rows_loaded = ?, loaded_at = ? \
                 WHERE name = ? IF table_id = ? AND aggregates_version = ?"
            ),
            (
                version,
                rows as i64,
                CqlTimestamp(chrono::Utc::now().timestamp_millis()),
                name,
                table_id,
                from,
            ),
        )
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    applied(result, &what)
}

/// A load of `version` of `table_id` in progress (or killed) into the table `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// The marker's record name.
    pub record: String,
    /// The Delta table id the load was writing.
    pub table_id: String,
    /// The version it was writing.
    pub version: i64,
}

fn marker_prefix(name: &str) -> String {
    format!("{name}#loading#")
}

/// Mark a load of `version` in progress, before its first write.
pub async fn mark(
    session: &Session,
    keyspace: &str,
    name: &str,
    table_id: &str,
    version: i64,
) -> Result<Marker> {
    let record = format!("{}{version}:{table_id}", marker_prefix(name));
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.{PROGRESS_TABLE} (name, table_id, aggregates_version, loaded_at) \
                 VALUES (?, ?, ?, ?)"
            ),
            (
                &record,
                table_id,
                version,
                CqlTimestamp(chrono::Utc::now().timestamp_millis()),
            ),
        )
        .await
        .map_err(|e| Error::scylla(format!("marking the {name} load in progress"), e))?;
    Ok(Marker {
        record,
        table_id: table_id.to_string(),
        version,
    })
}

/// Every marker of loads into `name` (the progress table is a handful of rows).
pub async fn markers(session: &Session, keyspace: &str, name: &str) -> Result<Vec<Marker>> {
    let what = format!("reading the {name} loads in progress");
    let mut q = Statement::new(format!(
        "SELECT name, table_id, aggregates_version FROM {keyspace}.{PROGRESS_TABLE}"
    ));
    q.set_consistency(Consistency::Quorum);
    let rows = session
        .query_unpaged(q, ())
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let prefix = marker_prefix(name);
    let mut out = Vec::new();
    for r in rows
        .rows::<(String, Option<String>, Option<i64>)>()
        .map_err(|e| Error::scylla(what.clone(), e))?
    {
        let (record, id, v) = r.map_err(|e| Error::scylla(what.clone(), e))?;
        if let (true, Some(table_id), Some(version)) = (record.starts_with(&prefix), id, v) {
            out.push(Marker {
                record,
                table_id,
                version,
            });
        }
    }
    Ok(out)
}

/// Remove markers whose loads' writes are accounted for.
pub async fn unmark(session: &Session, keyspace: &str, markers: &[Marker]) -> Result<()> {
    for m in markers {
        session
            .query_unpaged(
                format!("DELETE FROM {keyspace}.{PROGRESS_TABLE} WHERE name = ?"),
                (&m.record,),
            )
            .await
            .map_err(|e| Error::scylla("removing a load-in-progress marker", e))?;
    }
    Ok(())
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
