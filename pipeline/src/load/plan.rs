//! What a load will write: nothing, every row of the aggregates (a first load, another
//! table, or history gone), or the rows of the days changed since the last loaded version
//! and the rows that vanished from them.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use scylla::client::session::Session;

use crate::cql::progress::{self, LoadProgress};
use crate::cql::schema::TABLE;
use crate::dates::Day;
use crate::delta::{self, DataFile};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// The work of a load.
pub enum Work {
    /// This version is loaded.
    Nothing,
    /// A newer version is loaded (a concurrent load overtook this one).
    Overtaken,
    /// Write every row, then (when `sweep`) delete older rows of every partition.
    Full {
        /// Whether older rows may exist. Not on the first load ever into the keyspace when
        /// the serving table was empty: no other identity had claimed it, so no other load
        /// can be writing, and there is nothing older to delete (saves one request per
        /// partition: 99,000 of 968,000 at 5M rows).
        sweep: bool,
    },
    /// Write the changed days' rows, and delete those that vanished from them (they were in
    /// the days' files of `old`, the last loaded version).
    Days {
        /// The changed days.
        days: BTreeSet<Day>,
        /// The aggregates as of the last loaded version.
        old: Box<DeltaTable>,
        /// Every commit since merged appended rows (see [`crate::aggregate::APPEND_MERGE`]):
        /// rows equal in both versions are equal in between, and need no write.
        only_changed_rows: bool,
    },
}

/// The plan: the table and version, the progress record, the work and the files.
pub struct Plan {
    /// The aggregates table at `version`.
    pub table: DeltaTable,
    /// The version to load.
    pub version: i64,
    /// The aggregates table's identity.
    pub table_id: String,
    /// The progress record for this identity (None in a dry run of a new identity).
    pub progress: Option<LoadProgress>,
    /// The version of this identity loaded before (None: nothing yet).
    pub previous: Option<i64>,
    /// What to do.
    pub work: Work,
    /// The files to write (those of the changed days, or all).
    pub files: Vec<DataFile>,
}

/// Read the table and the progress record and decide; a new identity is claimed (unless
/// `dry_run`), so its writes get timestamps above the previous identity's.
pub async fn plan(
    layout: &Layout,
    session: &Session,
    keyspace: &str,
    dry_run: bool,
) -> Result<Plan> {
    let table = delta::open_required(layout, Table::Aggregates, "aggregate").await?;
    let version = delta::version(&table);
    let table_id = delta::table_id(&table, Table::Aggregates)?;
    let mut current = progress::read(session, keyspace, progress::AGGREGATES).await?;
    let first_ever = current.is_none();
    if current.as_ref().is_none_or(|p| p.table_id != table_id) && !dry_run {
        if let Some(p) = &current {
            tracing::warn!(served = %p.table_id, table = %table_id,
                "ScyllaDB serves another aggregates table: loading everything and deleting the rest");
        }
        let claimed = progress::claim(
            session,
            keyspace,
            progress::AGGREGATES,
            current.as_ref(),
            &table_id,
        )
        .await?;
        if claimed.table_id != table_id {
            return Err(Error::Invalid(format!(
                "another load is serving aggregates table {} into keyspace {keyspace} at the same \
                 moment (this one is {table_id}); run one load at a time per keyspace",
                claimed.table_id
            )));
        }
        current = Some(claimed);
    }
    let progress = current.filter(|p| p.table_id == table_id);
    let previous = progress.as_ref().map(|p| p.version).filter(|v| *v >= 0);
    let work = match previous {
        None => Work::Full {
            sweep: !(first_ever && !dry_run && serving_table_empty(session, keyspace).await?),
        },
        Some(p) if p == version => Work::Nothing,
        Some(p) if p > version => Work::Overtaken,
        Some(p) => changed_days(layout, &table, p, version).await?,
    };
    let files = match &work {
        Work::Nothing | Work::Overtaken => Vec::new(),
        Work::Full { .. } => delta::files(&table, Table::Aggregates, None)?,
        Work::Days { days, .. } => delta::files(&table, Table::Aggregates, Some(days))?,
    };
    Ok(Plan {
        table,
        version,
        table_id,
        progress,
        previous,
        work,
        files,
    })
}

/// True when the serving table has no row (checked after this load claimed the keyspace).
async fn serving_table_empty(session: &Session, keyspace: &str) -> Result<bool> {
    let what = "checking whether the serving table is empty";
    let rows = session
        .query_unpaged(
            format!("SELECT customer_id FROM {keyspace}.{TABLE} LIMIT 1"),
            (),
        )
        .await
        .map_err(|e| Error::scylla(what, e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what, e))?;
    Ok(rows.rows_num() == 0)
}

/// The days changed since `previous`, with the table as of then; everything when the log or
/// the old version is gone.
async fn changed_days(
    layout: &Layout,
    table: &DeltaTable,
    previous: i64,
    version: i64,
) -> Result<Work> {
    let Some(changes) = delta::log::changes(table, Table::Aggregates, previous, version).await?
    else {
        tracing::warn!(
            "aggregates log entries after version {previous} are gone; loading everything"
        );
        return Ok(Work::Full { sweep: true });
    };
    let only_changed_rows = changes
        .modes
        .iter()
        .all(|m| m.as_deref() == Some(crate::aggregate::APPEND_MERGE));
    let days = changes.days;
    match open_old(layout, previous, &days).await {
        Ok(old) => Ok(Work::Days {
            days,
            old: Box::new(old),
            only_changed_rows,
        }),
        Err(e) => {
            tracing::warn!(error = %e.chain(),
                "cannot read aggregates version {previous} to find deleted rows; loading everything");
            Ok(Work::Full { sweep: true })
        }
    }
}

/// The table as of `previous`, if the files of `days` it had are all still there (VACUUM
/// removes them after the retention).
async fn open_old(layout: &Layout, previous: i64, days: &BTreeSet<Day>) -> Result<DeltaTable> {
    use object_store::ObjectStoreExt;
    let old = delta::open_at(layout, Table::Aggregates, previous).await?;
    let store = old.object_store();
    for f in delta::files(&old, Table::Aggregates, Some(days))? {
        store.head(&f.path).await.map_err(|e| {
            Error::io(
                format!(
                    "{} file {} of version {previous}",
                    Table::Aggregates,
                    f.path
                ),
                std::io::Error::other(e),
            )
        })?;
    }
    Ok(old)
}
