//! The load state (`pipeline_load_state`), one partition per serving table: the `current`
//! record (which data dir's Delta table is served, the serving epoch's write-timestamp base,
//! and the version whose every row is written, with its commit's fingerprint) and one marker
//! per load in progress or killed.
//!
//! **No lightweight transactions.** ScyllaDB refuses them in keyspaces with tablets ("Cannot
//! use LightWeight Transactions for table ...: LWT is not yet supported with tablets",
//! `service/storage_proxy.cc` through 2025.3; tablets are the default for new keyspaces since
//! 6.0), so every statement here is a plain write ordered by its timestamp:
//! * the `current` record is written whole `USING TIMESTAMP base + version`, the timestamp of
//!   that version's rows, so of two records the one of the newer version wins whatever the
//!   order they arrive in (last write wins per cell, and all its cells share the timestamp);
//! * a marker is a row of its own (a unique entry), inserted before the load's first row and
//!   deleted just above its own write time once a record covers it.
//!
//! The decisions these records support (which epoch, which earlier versions a load must make
//! good, when it is overtaken) are in [`super`]. Reads and writes here use LOCAL_QUORUM
//! (or the stronger `--consistency`), so a read sees every marker and record acknowledged
//! before it in the data center (R + W > RF): what the protocol relies on. The listing a full
//! load sweeps and the emptiness check use the same.

use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::value::CqlTimestamp;

use crate::cql::consistency;
use crate::cql::schema::{PROFILES_TABLE, STATE_TABLE, TABLE};
use crate::error::{Error, Result};

/// The state partition of the aggregates' serving table.
pub const AGGREGATES: &str = TABLE;
/// The state partition of the profiles' serving table.
pub const PROFILES: &str = PROFILES_TABLE;
/// The entry of the `current` record.
const CURRENT: &str = "current";
/// The entries of markers start with this.
const MARKER: &str = "load:";

/// A record or a marker: a version of a Delta table of a data dir, in a serving epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `current`, or the marker's `load:<uuid>`.
    pub entry: String,
    /// The data dir's id ([`crate::layout::Layout::data_dir_id`]).
    pub owner: String,
    /// The Delta table's id.
    pub table_id: String,
    /// The epoch's write-timestamp base (µs): the version's rows are written at
    /// `base + version`.
    pub base: i64,
    /// The Delta version (loaded, for `current`; being loaded, for a marker).
    pub version: i64,
    /// The fingerprint of that version's commit (see `delta::log::fingerprint`); None when
    /// it could not be read.
    pub lineage: Option<String>,
    /// Rows written (for `current`).
    pub rows: i64,
    /// The write timestamp of this entry itself (µs): a marker is deleted just above it.
    pub written_at: i64,
}

impl Entry {
    /// The write timestamp of this version's rows.
    pub fn timestamp(&self) -> i64 {
        self.base.saturating_add(self.version)
    }

    /// Whether this is a marker (not the current record).
    pub fn is_marker(&self) -> bool {
        self.entry.starts_with(MARKER)
    }

    /// A new marker for a load of `version` at `base`.
    pub fn marker(
        owner: &str,
        table_id: &str,
        base: i64,
        version: i64,
        lineage: Option<String>,
    ) -> Self {
        Entry {
            entry: format!("{MARKER}{}", uuid::Uuid::new_v4()),
            owner: owner.to_string(),
            table_id: table_id.to_string(),
            base,
            version,
            lineage,
            rows: 0,
            written_at: chrono::Utc::now().timestamp_micros(),
        }
    }
}

/// A serving table's state: its current record and the markers of loads in progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// What is served, when anything was ever recorded.
    pub current: Option<Entry>,
    /// Loads in progress, or killed.
    pub markers: Vec<Entry>,
}

impl State {
    /// The highest write timestamp any record or marker stands for.
    pub fn top(&self) -> Option<i64> {
        self.current
            .iter()
            .chain(&self.markers)
            .map(Entry::timestamp)
            .max()
    }
}

type Row = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Read a serving table's state (one single-partition read).
pub async fn read(session: &Session, keyspace: &str, name: &str) -> Result<State> {
    let what = format!("reading the load state of {name}");
    let mut q = Statement::new(format!(
        "SELECT entry, owner, table_id, base_timestamp, version, lineage, rows_loaded, written_at \
         FROM {keyspace}.{STATE_TABLE} WHERE name = ?"
    ));
    q.set_consistency(consistency(session));
    let rows = session
        .query_unpaged(q, (name,))
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let mut state = State::default();
    for r in rows
        .rows::<Row>()
        .map_err(|e| Error::scylla(what.clone(), e))?
    {
        let (entry, owner, table_id, base, version, lineage, loaded, written) =
            r.map_err(|e| Error::scylla(what.clone(), e))?;
        // A row whose cells were all deleted but its key: nothing.
        let (Some(owner), Some(table_id), Some(base), Some(version)) =
            (owner, table_id, base, version)
        else {
            continue;
        };
        let e = Entry {
            entry,
            owner,
            table_id,
            base,
            version,
            lineage,
            rows: loaded.unwrap_or(0),
            written_at: written.unwrap_or(0),
        };
        if e.entry == CURRENT {
            state.current = Some(e);
        } else if e.is_marker() {
            state.markers.push(e);
        }
    }
    Ok(state)
}

/// Write `e` (as entry `entry`) at timestamp `at`.
async fn write(
    session: &Session,
    keyspace: &str,
    name: &str,
    e: &Entry,
    at: i64,
    what: &str,
) -> Result<()> {
    let mut q = Statement::new(format!(
        "INSERT INTO {keyspace}.{STATE_TABLE} (name, entry, owner, table_id, base_timestamp, \
         version, lineage, rows_loaded, written_at, loaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         USING TIMESTAMP ?"
    ));
    q.set_consistency(consistency(session));
    session
        .query_unpaged(
            q,
            (
                name,
                &e.entry,
                &e.owner,
                &e.table_id,
                e.base,
                e.version,
                &e.lineage,
                e.rows,
                at,
                CqlTimestamp(chrono::Utc::now().timestamp_millis()),
                at,
            ),
        )
        .await
        .map_err(|err| Error::scylla(what.to_string(), err))?;
    Ok(())
}

/// Leave a marker before a load's first write.
pub async fn mark(session: &Session, keyspace: &str, name: &str, marker: &Entry) -> Result<()> {
    write(
        session,
        keyspace,
        name,
        marker,
        marker.written_at,
        &format!(
            "marking the {name} load of version {} in progress",
            marker.version
        ),
    )
    .await
}

/// Record `e` as what is served: written whole at its version's timestamp, so it never
/// replaces a record of a newer version (the newer one's timestamp is higher).
pub async fn record(session: &Session, keyspace: &str, name: &str, e: &Entry) -> Result<()> {
    let current = Entry {
        entry: CURRENT.to_string(),
        written_at: e.timestamp(),
        ..e.clone()
    };
    write(
        session,
        keyspace,
        name,
        &current,
        current.timestamp(),
        &format!(
            "recording {name} version {} as loaded (every row was written; rerun to record it)",
            e.version
        ),
    )
    .await
}

/// Remove markers whose loads' writes are accounted for (each just above its own write).
pub async fn unmark(
    session: &Session,
    keyspace: &str,
    name: &str,
    markers: &[Entry],
) -> Result<()> {
    for m in markers.iter().filter(|m| m.is_marker()) {
        let mut q = Statement::new(format!(
            "DELETE FROM {keyspace}.{STATE_TABLE} USING TIMESTAMP ? WHERE name = ? AND entry = ?"
        ));
        q.set_consistency(consistency(session));
        session
            .query_unpaged(q, (m.written_at.saturating_add(1), name, &m.entry))
            .await
            .map_err(|e| Error::scylla(format!("removing a {name} load marker"), e))?;
    }
    Ok(())
}
