//! Small helpers over delta-rs: open a table (telling an absent table from a damaged log),
//! create it with our schema, read its files and identity, and the one commit shape every
//! stage uses ([`commit`]).

pub mod commit;
pub mod derive;
pub mod keys;
pub mod log;
pub mod query;
pub mod read;
mod write;

use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{LogicalFileView, StructType};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::dates::{self, Day};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::schema::PARTITION_COLUMN;
use crate::tables::Table;

pub use commit::{Commit, append_operation};
pub use write::write_batch;

/// Tables kept open from one micro-batch of a stream (`run --follow`) to the next: a stage
/// takes its table, brought up to date with the commits since ([`DeltaTable::update_incremental`]),
/// instead of loading it from its last checkpoint again (whose size grows with the table's
/// files), and gives it back. A kept table is used only if it is still the same log: the
/// commit file of its version is still there, unchanged ([`LogStamp`]); a table deleted (and
/// perhaps created again) under the stream, or one that cannot be brought up to date, is
/// opened afresh. Empty (nothing kept) for a single run.
#[derive(Default)]
pub struct Kept(std::collections::HashMap<Table, (DeltaTable, Option<LogStamp>)>);

impl Kept {
    /// The kept `table` at its latest version, or what `open` opens.
    pub async fn take_or<F>(&mut self, table: Table, open: F) -> Result<DeltaTable>
    where
        F: std::future::Future<Output = Result<DeltaTable>>,
    {
        if let Some((mut t, stamp)) = self.0.remove(&table)
            && stamp.is_some()
            && LogStamp::of(&t).await == stamp
        {
            match t.update_incremental(None).await {
                Ok(()) => return Ok(t),
                Err(e) => tracing::info!(table = table.name(), error = %e, "opening afresh"),
            }
        }
        open.await
    }

    /// Keep `t` (a snapshot of `table`) for the next micro-batch.
    pub async fn keep(&mut self, table: Table, t: &DeltaTable) {
        self.0.insert(table, (t.clone(), LogStamp::of(t).await));
    }

    /// [`Self::keep`], with the stamp of `t`'s version already taken.
    pub fn keep_stamped(&mut self, table: Table, t: &DeltaTable, stamp: LogStamp) {
        debug_assert_eq!(stamp.version, version(t));
        self.0.insert(table, (t.clone(), Some(stamp)));
    }
}

/// What tells one table's log from another's at the same place: the size and modification
/// time of the commit file of a version (a table deleted and created again writes its
/// commits anew). None when that file cannot be looked at (then nothing is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStamp {
    version: i64,
    size: u64,
    modified_us: i64,
}

impl LogStamp {
    /// The stamp of `t`'s version.
    pub async fn of(t: &DeltaTable) -> Option<LogStamp> {
        use object_store::ObjectStoreExt;
        let version = version(t);
        let path = t
            .log_store()
            .log_path()
            .clone()
            .join(format!("{version:020}.json"));
        let head = t.log_store().object_store(None).head(&path).await.ok()?;
        Some(LogStamp {
            version,
            size: head.size,
            modified_us: head.last_modified.timestamp_micros(),
        })
    }
}

/// Open `table` if it exists. An absent table (no `_delta_log` yet) is `None`; a log that
/// exists but cannot be read is an error ([`Error::DamagedLog`]), never mistaken for absent.
pub async fn open(layout: &Layout, table: Table) -> Result<Option<DeltaTable>> {
    if !has_log(layout, table).await? {
        return Ok(None);
    }
    let t = DeltaTable::try_from_url(existing_url(layout, table)?)
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    if t.version().is_none() {
        return Err(Error::DamagedLog {
            table: table.name().into(),
            what: "the _delta_log folder has no readable commit".into(),
        });
    }
    Ok(Some(t))
}

/// Open `table` as of `version` (time travel). The table must exist.
pub async fn open_at(layout: &Layout, table: Table, version: i64) -> Result<DeltaTable> {
    DeltaTableBuilder::from_url(existing_url(layout, table)?)
        .map_err(|e| Error::delta(table.name(), e))?
        .with_version(version as _)
        .load()
        .await
        .map_err(|e| Error::delta(table.name(), e))
}

/// Open `table`, or say which stage creates it.
pub async fn open_required(layout: &Layout, table: Table, created_by: &str) -> Result<DeltaTable> {
    open(layout, table).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "Delta table {} does not exist yet in {}: run `pipeline {created_by}` first",
            table.name(),
            layout.shown()
        ))
    })
}

/// Whether `table` has a Delta log with at least one commit or checkpoint (a creation killed
/// before its first commit leaves at most an empty folder or a temporary file).
///
/// A table with a checkpoint is known by its `_last_checkpoint` alone: a stream's log holds
/// up to its log retention of commit files, and listing them all is what opening the table
/// must not cost.
pub async fn has_log(layout: &Layout, table: Table) -> Result<bool> {
    let names: Vec<String> = match layout.store() {
        None => {
            let dir = layout.table_dir(table).expect("local").join("_delta_log");
            if dir.join("_last_checkpoint").is_file() {
                return Ok(true);
            }
            let Ok(rd) = std::fs::read_dir(dir) else {
                return Ok(false);
            };
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        }
        Some(s) => {
            let log = s.path_of(&format!("{}/_delta_log", table.path()));
            use object_store::ObjectStoreExt;
            if s.store()
                .head(&log.clone().join("_last_checkpoint"))
                .await
                .is_ok()
            {
                return Ok(true);
            }
            let listed: Vec<_> = s
                .store()
                .list_with_delimiter(Some(&log))
                .await
                .map_err(|e| {
                    crate::store::access_error(
                        format_args!("cannot list {}", layout.table_shown(table)),
                        e,
                    )
                })
                .map(|l| l.objects)?;
            listed
                .into_iter()
                .filter_map(|o| o.location.filename().map(str::to_string))
                .collect()
        }
    };
    Ok(names.iter().any(|name| {
        let stem = name.split('.').next().unwrap_or("");
        name == "_last_checkpoint"
            || (stem.len() == 20
                && stem.bytes().all(|b| b.is_ascii_digit())
                && (name.ends_with(".json") || name.ends_with(".parquet")))
    }))
}

/// The URL of an existing table, without creating anything.
fn existing_url(layout: &Layout, table: Table) -> Result<Url> {
    let Some(dir) = layout.table_dir(table) else {
        return layout
            .table_uri(table)
            .map_err(|e| Error::delta(table.name(), e));
    };
    let abs = std::path::absolute(&dir)
        .map_err(|e| Error::io(format!("cannot resolve {}", dir.display()), e))?;
    Url::from_directory_path(&abs).map_err(|()| {
        Error::Invalid(format!(
            "{} ({}) is not a usable folder path",
            abs.display(),
            table.name()
        ))
    })
}

/// Open `table`, creating it (empty, with its schema and partition columns) if absent. An
/// existing table whose columns differ is an error, not silently used.
pub async fn open_or_create(layout: &Layout, table: Table) -> Result<DeltaTable> {
    if let Some(t) = open(layout, table).await? {
        return add_new_columns(layout, t, table).await;
    }
    let name = table.name();
    let uri = layout.table_uri(table).map_err(|e| Error::delta(name, e))?;
    let empty = DeltaTable::try_from_url(uri)
        .await
        .map_err(|e| Error::delta(name, e))?;
    let kernel: StructType = table.schema().as_ref().try_into_kernel().map_err(|e| {
        Error::delta(
            name,
            DeltaTableError::Generic(format!("schema conversion: {e}")),
        )
    })?;
    let created = empty
        .create()
        .with_table_name(name)
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(table.partition_columns().iter().map(|s| s.to_string()))
        .with_save_mode(SaveMode::Ignore)
        // Losing a creation race must fail (and use the winner's table below), not be retried
        // as a second metadata commit that would move the version under the winner's feet.
        .with_commit_properties(
            CommitProperties::default()
                .with_max_retries(0)
                .with_create_checkpoint(false)
                .with_cleanup_expired_logs(Some(false)),
        )
        .await;
    match created {
        Ok(t) => Ok(t),
        Err(e) => match open(layout, table).await {
            // Another process created it at the same moment (its version 0 won): use theirs.
            Ok(Some(t)) => {
                check_schema(&t, name, &table.schema())?;
                Ok(t)
            }
            _ => Err(Error::delta(name, e)),
        },
    }
}

/// A table created by an earlier version of the pipeline lacks the nullable columns added
/// at the end of its schema since: they are added (a standard Delta schema update; readers
/// see nulls in older files). Any other difference is an error.
async fn add_new_columns(layout: &Layout, t: DeltaTable, table: Table) -> Result<DeltaTable> {
    let name = table.name();
    let expected = table.schema();
    let actual = t
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .snapshot()
        .arrow_schema();
    let n = actual.fields().len();
    let is_prefix = n < expected.fields().len()
        && actual
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
    let added = &expected.fields()[n.min(expected.fields().len())..];
    if !is_prefix || added.iter().any(|f| !f.is_nullable()) {
        check_schema(&t, name, &expected)?;
        return Ok(t);
    }
    let fields: StructType = (&Schema::new(added.to_vec()))
        .try_into_kernel()
        .map_err(|e| {
            Error::delta(
                name,
                DeltaTableError::Generic(format!("schema conversion: {e}")),
            )
        })?;
    let names: Vec<&str> = added.iter().map(|f| f.name().as_str()).collect();
    tracing::info!(table = name, columns = ?names, "adding the columns this version records");
    let updated = t
        .add_columns()
        .with_fields(fields.fields().cloned().collect::<Vec<_>>())
        .with_commit_properties(
            CommitProperties::default()
                .with_max_retries(0)
                .with_create_checkpoint(false)
                .with_cleanup_expired_logs(Some(false)),
        )
        .await;
    // Another process may have added them at the same moment: read the table again.
    let t = match updated {
        Ok(t) => t,
        Err(_) => open(layout, table).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "Delta table {name} disappeared while being updated"
            ))
        })?,
    };
    check_schema(&t, name, &expected)?;
    Ok(t)
}

fn check_schema(table: &DeltaTable, name: &str, expected: &Schema) -> Result<()> {
    let actual = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .snapshot()
        .arrow_schema();
    if only_narrower_decimals(&actual, expected) {
        // The stage that writes it widens it in its next commit (see [`widening`]).
        return Ok(());
    }
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = actual.fields().len() == expected.fields().len()
        && actual
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
    if same {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "Delta table {name} exists with columns [{}] but this version of the pipeline expects [{}]; \
             point --data-dir elsewhere or migrate the table",
            describe(&actual),
            describe(expected)
        )))
    }
}

/// Whether `actual` is `expected` with some decimal columns of a smaller precision (same
/// scale): a table written before its sums were widened to `Decimal(38, 2)`.
fn only_narrower_decimals(actual: &Schema, expected: &Schema) -> bool {
    use deltalake::arrow::datatypes::DataType::Decimal128;
    let mut narrower = false;
    let same = actual.fields().len() == expected.fields().len()
        && actual.fields().iter().zip(expected.fields()).all(|(a, e)| {
            a.name() == e.name()
                && a.is_nullable() == e.is_nullable()
                && match (a.data_type(), e.data_type()) {
                    (Decimal128(pa, sa), Decimal128(pe, se)) if sa == se && pa < pe => {
                        narrower = true;
                        true
                    }
                    (x, y) => x == y,
                }
        });
    same && narrower
}

/// A derived table (aggregates, profiles) made by an earlier version, whose sums were
/// narrower: the `metaData` action that widens them to today's schema, same table id. The
/// stage commits it together with a rewrite of every file, so no reader ever sees old files
/// under the new types (no Delta table feature is needed).
pub fn widening(t: &DeltaTable, table: Table) -> Result<Option<deltalake::kernel::Action>> {
    use deltalake::kernel::MetadataExt;
    let name = table.name();
    let snapshot = t.snapshot().map_err(|e| Error::delta(name, e))?;
    let actual = snapshot.snapshot().arrow_schema();
    if !only_narrower_decimals(&actual, &table.schema()) {
        return Ok(None);
    }
    let kernel: StructType = table.schema().as_ref().try_into_kernel().map_err(|e| {
        Error::delta(
            name,
            DeltaTableError::Generic(format!("schema conversion: {e}")),
        )
    })?;
    let widened = snapshot
        .metadata()
        .clone()
        .with_schema(&kernel)
        .map_err(|e| {
            Error::delta(
                name,
                DeltaTableError::Generic(format!("widening the schema: {e}")),
            )
        })?;
    Ok(Some(deltalake::kernel::Action::Metadata(widened)))
}

/// A writer of new files for `t`: of its schema, or (when `widen`) of today's schema for
/// `table` (see [`widening`]).
pub fn writer(
    t: &DeltaTable,
    table: Table,
    widen: bool,
) -> Result<deltalake::writer::RecordBatchWriter> {
    use deltalake::writer::RecordBatchWriter;
    let name = table.name();
    if !widen {
        return RecordBatchWriter::for_table(t).map_err(|e| Error::delta(name, e));
    }
    RecordBatchWriter::try_new(
        t.log_store().root_url().as_str(),
        table.schema(),
        Some(
            table
                .partition_columns()
                .iter()
                .map(|c| c.to_string())
                .collect(),
        ),
        None,
    )
    .map_err(|e| Error::delta(name, e))
}

/// The table's identity: the `id` of its `metaData` action, new whenever a table is created
/// at a location (so a deleted and rebuilt table is recognised as another table).
pub fn table_id(t: &DeltaTable, table: Table) -> Result<String> {
    Ok(t.snapshot()
        .map_err(|e| Error::delta(table.name(), e))?
        .metadata()
        .id()
        .to_string())
}

/// The current version of an open table.
pub fn version(t: &DeltaTable) -> i64 {
    t.version().map_or(-1, |v| v as i64)
}

/// The version recorded for application id `app_id` in the table, if any.
pub async fn txn_version(t: &DeltaTable, table: Table, app_id: &str) -> Result<Option<i64>> {
    t.snapshot()
        .map_err(|e| Error::delta(table.name(), e))?
        .transaction_version(t.log_store().as_ref(), app_id)
        .await
        .map_err(|e| Error::delta(table.name(), e))
}

/// The size tier of a data file: sizes within a factor of 4 share one (tier 0 below 2 MiB).
/// Merging four files of a tier, one tier at a time, rewrites each byte once per tier.
pub fn size_tier(bytes: u64) -> u32 {
    (64 - (bytes.max(1) >> 20).leading_zeros()) / 2
}

/// A live data file of a table.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Its path in the table's object store.
    pub path: deltalake::Path,
    /// Its `transaction_date` partition (None: not partitioned, or a null partition).
    pub day: Option<Day>,
    /// Rows, from the `add` statistics.
    pub rows: u64,
    /// Bytes.
    pub size: u64,
}

impl DataFile {
    fn of(f: &LogicalFileView) -> Self {
        DataFile {
            path: f.object_store_path(),
            day: day_of_file(f),
            rows: f.num_records().unwrap_or(0) as u64,
            size: f.size().max(0) as u64,
        }
    }
}

/// The `transaction_date` partition of a data file.
pub fn day_of_file(f: &LogicalFileView) -> Option<Day> {
    f.partition_values_map()
        .remove(PARTITION_COLUMN)
        .flatten()
        .and_then(|s| dates::parse(&s))
}

/// The live data files of a table (all of them, or those of `days`).
pub fn files(
    t: &DeltaTable,
    table: Table,
    days: Option<&std::collections::BTreeSet<Day>>,
) -> Result<Vec<DataFile>> {
    let snapshot = t.snapshot().map_err(|e| Error::delta(table.name(), e))?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| DataFile::of(&f))
        .filter(|f| days.is_none_or(|d| f.day.is_some_and(|day| d.contains(&day))))
        .collect())
}

/// An error unless every live file of `t` (of `days`, when given) is still in the store:
/// VACUUM removes the files of old versions after the retention, though their log remains.
pub async fn check_files_exist(
    t: &DeltaTable,
    table: Table,
    days: Option<&std::collections::BTreeSet<Day>>,
) -> Result<()> {
    use object_store::ObjectStoreExt;
    let store = t.object_store();
    for f in files(t, table, days)? {
        store.head(&f.path).await.map_err(|e| {
            Error::io(
                format!("{table} file {} of version {}", f.path, version(t)),
                std::io::Error::other(e),
            )
        })?;
    }
    Ok(())
}

/// Build a batch of `target`'s schema from `columns` (same order), casting where the types
/// differ and checking `target`'s nullability: the exact shape a delta-rs writer expects.
pub fn conform(columns: Vec<ArrayRef>, target: &SchemaRef) -> Result<RecordBatch> {
    let cols = columns
        .into_iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                cast(&c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(target.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commit `n` data-free versions (a table property each).
    async fn commit_versions(mut t: DeltaTable, n: usize) -> DeltaTable {
        for i in 0..n {
            t = t
                .set_tbl_properties()
                .with_properties(
                    [(
                        "delta.logRetentionDuration".to_string(),
                        format!("interval {} days", i + 3),
                    )]
                    .into(),
                )
                .await
                .unwrap();
        }
        t
    }

    #[tokio::test]
    async fn a_kept_table_is_brought_up_to_date_and_one_created_again_is_opened_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let table = Table::Aggregates;
        let mut t = open_or_create(&layout, table).await.unwrap();
        // A file (only its log entry: nothing here reads it) and a checkpoint, from which a
        // kept snapshot's log is listed when it is brought up to date.
        let add = deltalake::kernel::Add {
            path: "transaction_date=2026-01-01/part-0.parquet".into(),
            partition_values: [(
                crate::schema::PARTITION_COLUMN.to_string(),
                Some("2026-01-01".to_string()),
            )]
            .into(),
            size: 1,
            data_change: true,
            ..Default::default()
        };
        Commit::append(table).adds([add]).execute(&t).await.unwrap();
        t.update_incremental(None).await.unwrap();
        deltalake::checkpoints::create_checkpoint(&t, None)
            .await
            .unwrap();
        let mut kept = Kept::default();
        kept.keep(table, &t).await;
        // Another writer commits: the kept table comes back at its version, not opened again.
        let other = commit_versions(open_required(&layout, table, "test").await.unwrap(), 1).await;
        let got = kept
            .take_or(table, async {
                panic!("a kept table of the same log is not opened again")
            })
            .await
            .unwrap();
        assert_eq!(version(&got), version(&other));
        assert_eq!(files(&got, table, None).unwrap().len(), 1);
        kept.keep(table, &got).await;
        // Deleted and created again, with more versions than the kept one and no file:
        // brought up to date, the kept snapshot would add the new log's commits to the old
        // table's files.
        std::fs::remove_dir_all(layout.table_dir(table).unwrap()).unwrap();
        let again = commit_versions(open_or_create(&layout, table).await.unwrap(), 4).await;
        let got = kept
            .take_or(table, open_required(&layout, table, "test"))
            .await
            .unwrap();
        assert_eq!(version(&got), version(&again));
        assert_eq!(
            table_id(&got, table).unwrap(),
            table_id(&again, table).unwrap()
        );
        assert!(files(&got, table, None).unwrap().is_empty());
    }
}
