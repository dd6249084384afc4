//! Size-tiered merges: how `run --follow` compacts the transactions and quarantine tables, so
//! that their live files stay few however long the stream runs.
//!
//! Each micro-batch adds a small file per day it touched. Files of one day whose sizes are
//! within a factor of 4 of each other (the id index's tiers) are merged four at a time, up
//! to the data files' cap (ingest's 128 MiB): each row is rewritten once per tier (about
//! four times from a micro-batch's ~4 MiB to the cap) and a day holds at most three files
//! per tier besides its full ones.
//!
//! Before, the stream ran delta-rs OPTIMIZE with a 16 MiB target: files of the target were
//! left alone, so at 50,000 rows/s the transactions table gained ~12 a minute (709 live files
//! after an hour, all of one day), and every snapshot update replays every live file's `add`
//! (delta-rs 1.1 `Snapshot::update` seeds the kernel's log replay with the materialized
//! files): the per-micro-batch cost grew with the hour. A larger target rewrites the day's
//! growing file every round (100 MiB: 8 s at 1.5M rows, measured). OPTIMIZE also rewrote
//! about 200,000 rows/s here; this reads and writes Parquet directly.
//!
//! A merge is a `dataChange: false` commit (as OPTIMIZE's), so the incremental stages and
//! readers of changes ignore it; it runs under the compaction lock (delta-rs 1.1's conflict
//! check does not see `dataChange: false` removes, so two merges of the same files could both
//! land).

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add};
#[allow(deprecated)]
// deprecated upstream in favour of hand-written readers; delta-rs itself still uses it
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::protocol::DeltaOperation;
use futures::StreamExt;

use crate::dates::Day;
use crate::delta::keys;
use crate::delta::{self, commit::Commit};
use crate::error::{Error, Result};
use crate::ingest;
use crate::tables::Table;

/// Files this large are full: never merged again (3/4 of the cap, so two halves of a split
/// merge count as full).
const FULL_BYTES: u64 = ingest::DATA_FILE_BYTES / 4 * 3;
/// Files merged at once.
const FAN_IN: usize = 4;

/// A live file that may be merged.
struct Candidate {
    path: deltalake::Path,
    size: u64,
    remove: deltalake::kernel::Remove,
}

/// Merge every group of [`FAN_IN`] files of one day and one tier, in one `dataChange:
/// false` commit; returns the files merged (0: nothing to merge). Files with a deletion
/// vector, and groups whose files hold other columns than the table's current file schema,
/// are left alone; files written before the table's last nullable columns were added are
/// merged, with nulls in those columns.
pub async fn merge(t: &DeltaTable, table: Table) -> Result<u64> {
    let groups = groups(t, table)?;
    if groups.is_empty() {
        return Ok(0);
    }
    let mut adds: Vec<Add> = Vec::new();
    let mut removes = Vec::new();
    for (day, group) in groups {
        match merge_group(t, table, day, &group).await {
            Ok(Some(written)) => {
                adds.extend(written);
                removes.extend(group.into_iter().map(|c| Action::Remove(c.remove)));
            }
            Ok(None) => {}
            Err(e) => {
                delta::commit::discard(t, &adds).await;
                return Err(e);
            }
        }
    }
    if removes.is_empty() {
        return Ok(0);
    }
    let merged = removes.len() as u64;
    let adds: Vec<Add> = adds
        .into_iter()
        .map(|a| Add {
            data_change: false,
            ..a
        })
        .collect();
    let commit = Commit::new(
        table,
        DeltaOperation::Optimize {
            predicate: None,
            target_size: ingest::DATA_FILE_BYTES as i64,
        },
    )
    .actions(removes)
    .adds(adds.clone())
    .meta(keys::STAGE, "compaction.tiers")
    // Ingest's commits (adds only) land meanwhile: they touch none of these files.
    .rebase_if_no_conflict();
    delta::commit::commit_or_discard(commit, t, &adds).await?;
    Ok(merged)
}

/// The groups to merge: per day and tier, the files in groups of [`FAN_IN`] (smallest first).
fn groups(t: &DeltaTable, table: Table) -> Result<Vec<(Option<Day>, Vec<Candidate>)>> {
    let snapshot = t.snapshot().map_err(|e| Error::delta(table.name(), e))?;
    let mut by_tier: BTreeMap<(Option<Day>, u32), Vec<Candidate>> = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        let size = f.size().max(0) as u64;
        let remove = f.remove_action(false);
        // A deletion vector (another engine's DELETE) hides rows the file still holds.
        if size >= FULL_BYTES || remove.deletion_vector.is_some() {
            continue;
        }
        by_tier
            .entry((delta::day_of_file(&f), delta::size_tier(size)))
            .or_default()
            .push(Candidate {
                path: f.object_store_path(),
                size,
                remove,
            });
    }
    let mut out = Vec::new();
    for ((day, _), mut files) in by_tier {
        files.sort_by_key(|c| c.size);
        while files.len() >= FAN_IN {
            let rest = files.split_off(FAN_IN);
            out.push((day, std::mem::replace(&mut files, rest)));
        }
    }
    Ok(out)
}

/// Write `group`'s rows into new files of `day` (None when a file's schema is not the
/// table's current one, or the current one without some of its last, nullable columns: the
/// group is left as it is). Files written before columns were added to the table get nulls
/// in them, as readers see them.
async fn merge_group(
    t: &DeltaTable,
    table: Table,
    day: Option<Day>,
    group: &[Candidate],
) -> Result<Option<Vec<Add>>> {
    let target = ingest::file_schema(table);
    let fits = |s: &deltalake::arrow::datatypes::Schema| {
        let n = s.fields().len();
        n <= target.fields().len()
            && s.fields()
                .iter()
                .zip(target.fields())
                .all(|(a, b)| a.name() == b.name())
            && target.fields()[n..].iter().all(|f| f.is_nullable())
    };
    // Every file's schema is checked before anything is written.
    let store = t.object_store();
    let mut readers = Vec::with_capacity(group.len());
    for c in group {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.clone(), c.path.clone());
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        if !fits(builder.schema()) {
            return Ok(None);
        }
        readers.push(builder);
    }
    let mut writer = ingest::day_writer(t, table, day)?;
    for builder in readers {
        let mut batches = builder.build()?;
        while let Some(batch) = batches.next().await {
            let batch = crate::schema::by_name(&batch?, &target)?;
            writer
                .write(&batch)
                .await
                .map_err(|e| Error::delta(table.name(), e))?;
        }
    }
    Ok(Some(
        writer
            .close()
            .await
            .map_err(|e| Error::delta(table.name(), e))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use deltalake::arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::compute::cast;
    use deltalake::arrow::datatypes::DataType;
    use std::sync::Arc;

    #[test]
    fn sizes_within_a_factor_of_four_share_a_tier() {
        let mib = 1u64 << 20;
        // OPTIMIZE's outputs at the 16 MiB target, and four of them merged.
        let tier = delta::size_tier;
        assert_eq!(tier(10 * mib), tier(16 * mib - 1));
        assert_eq!(tier(40 * mib), tier(63 * mib));
        assert_ne!(tier(15 * mib), tier(60 * mib));
        assert!(
            4 * 60 * mib > FULL_BYTES,
            "a merge of the largest tier is full"
        );
    }

    /// Rows `from..from + n` of the transactions file schema (every column from the number).
    fn rows(from: i64, n: i64) -> RecordBatch {
        let schema = ingest::file_schema(Table::Transactions);
        let numbers = Int64Array::from_iter_values(from..from + n);
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    DataType::Utf8 => Arc::new(StringArray::from_iter_values(
                        numbers.values().iter().map(|v| format!("{}-{v}", f.name())),
                    )),
                    DataType::Binary => Arc::new(BinaryArray::from_iter_values(
                        numbers.values().iter().map(|v| v.to_be_bytes()),
                    )),
                    DataType::Date32 => {
                        cast(&cast(&numbers, &DataType::Int32).unwrap(), f.data_type()).unwrap()
                    }
                    t => cast(&numbers, t).unwrap(),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// Every row of the table, as sorted ids.
    async fn ids(t: &DeltaTable) -> Vec<String> {
        keyed(t).await.into_iter().map(|(id, _)| id).collect()
    }

    /// Every row of the table: its id and whether it has a message key (none in a file
    /// without the column), sorted.
    async fn keyed(t: &DeltaTable) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for f in delta::files(t, Table::Transactions, None).unwrap() {
            #[allow(deprecated)]
            let reader = ParquetObjectReader::new(t.object_store(), f.path);
            let mut s = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .unwrap()
                .build()
                .unwrap();
            while let Some(b) = s.next().await {
                let b = b.unwrap();
                let id = b.column_by_name("transaction_id").unwrap();
                let id = id.as_any().downcast_ref::<StringArray>().unwrap();
                let key = b.column_by_name("message_key");
                for i in 0..b.num_rows() {
                    let has = key.is_some_and(|k| k.is_valid(i));
                    out.push((id.value(i).to_string(), has));
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn files_from_before_the_lineage_columns_are_merged_with_nulls_in_them() {
        use deltalake::arrow::datatypes::Schema;
        use deltalake::datafile::writer::{PartitionWriter, PartitionWriterConfig};
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let table = Table::Transactions;
        let mut t = delta::open_or_create(&layout, table).await.unwrap();
        let full = ingest::file_schema(table);
        // A table upgraded by a schema update keeps its older files, without the columns.
        let older = Arc::new(Schema::new(
            full.fields()[..full.fields().len() - 2].to_vec(),
        ));
        for i in 0..4 {
            let rows = rows(i * 100, 100);
            let adds = if i < 2 {
                let partition = indexmap::IndexMap::from([(
                    crate::schema::PARTITION_COLUMN.to_string(),
                    delta_kernel::expressions::Scalar::Date(20_000),
                )]);
                let config = PartitionWriterConfig::try_new(
                    older.clone(),
                    partition,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
                .unwrap();
                let mut w = PartitionWriter::try_with_config(
                    t.object_store(),
                    config,
                    delta_kernel::table_properties::DataSkippingNumIndexedCols::NumColumns(32),
                    None,
                )
                .unwrap();
                let n = older.fields().len();
                let old_rows =
                    RecordBatch::try_new(older.clone(), rows.columns()[..n].to_vec()).unwrap();
                w.write(&old_rows).await.unwrap();
                w.close().await.unwrap()
            } else {
                let mut w = ingest::day_writer(&t, table, Some(20_000)).unwrap();
                w.write(&rows).await.unwrap();
                w.close().await.unwrap()
            };
            Commit::append(table).adds(adds).execute(&t).await.unwrap();
            t.update_incremental(None).await.unwrap();
        }
        let before = keyed(&t).await;
        assert_eq!(before.iter().filter(|r| r.1).count(), 200);

        assert_eq!(merge(&t, table).await.unwrap(), 4);
        t.update_incremental(None).await.unwrap();
        assert_eq!(delta::files(&t, table, None).unwrap().len(), 1);
        assert_eq!(keyed(&t).await, before, "the older rows' keys are null");
    }

    #[tokio::test]
    async fn files_of_a_tier_are_merged_four_at_a_time_without_changing_data() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let table = Table::Transactions;
        let mut t = delta::open_or_create(&layout, table).await.unwrap();
        // Nine small files of one day (one tier) and one of another day.
        let day = Some(20_000);
        for (i, d) in (0..9).map(|i| (i, day)).chain([(9, Some(20_001))]) {
            let mut w = ingest::day_writer(&t, table, d).unwrap();
            w.write(&rows(i * 100, 100)).await.unwrap();
            let adds = w.close().await.unwrap();
            Commit::append(table).adds(adds).execute(&t).await.unwrap();
            t.update_incremental(None).await.unwrap();
        }
        let before = ids(&t).await;
        assert_eq!(before.len(), 1000);
        let version = delta::version(&t);

        assert_eq!(merge(&t, table).await.unwrap(), 8);
        t.update_incremental(None).await.unwrap();
        // Two merged files and the one left of the day, and the other day's file.
        assert_eq!(delta::files(&t, table, None).unwrap().len(), 4);
        assert_eq!(ids(&t).await, before, "a merge changes no row");
        // A compaction for the incremental stages: no day changed, nothing added.
        let changes = delta::log::changes(&t, table, version, delta::version(&t))
            .await
            .unwrap()
            .unwrap();
        assert!(
            changes.days.is_empty() && changes.added.is_empty(),
            "{changes:?}"
        );
        // The merged files are of one tier now, too few to merge again.
        assert_eq!(merge(&t, table).await.unwrap(), 0);
    }
}
