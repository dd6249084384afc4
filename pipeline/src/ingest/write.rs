//! Writing: day by day (in parallel), each row's fate looked up by its ordinal in what the
//! verdicts decided (the rule it broke, or a duplicate), good rows to the day's files of
//! `customer_transactions` and the others to quarantine (in the day they claim). Nothing is
//! committed here.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;

use delta_kernel::expressions::Scalar;
use delta_kernel::table_properties::DataSkippingNumIndexedCols;
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder, UInt32Array,
};
use deltalake::arrow::compute::{filter_record_batch, take_record_batch};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafile::writer::{PartitionWriter, PartitionWriterConfig};
use deltalake::kernel::Add;
use futures::StreamExt;
use indexmap::IndexMap;

use super::plan::{DayKey, Footer, Input, Ord, Rows, read_input};
use super::verdicts::Cursor;
use crate::delta;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rules::Reason;
use crate::schema::{self, PARTITION_COLUMN};
use crate::tables::Table;

/// Row-group cap for the Delta data files: the writer holds one open row group per day being
/// written, so this (not the size of a day) bounds its memory.
const DATA_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Files are closed at this size. delta-rs's streaming writer uploads a file in 5 MiB parts
/// while encoding it, so memory is a row group and a part whatever the file size (its older
/// `RecordBatchWriter` held whole files in memory, which made us close them at 8 MiB).
pub const DATA_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Parts of a file being uploaded at once (delta-rs's default, 10, held up to 100 MiB more
/// memory per writer for nothing on a local disk).
const UPLOADS_IN_FLIGHT: usize = 2;

/// What every day's writer needs.
pub struct Ctx {
    /// The run's files.
    pub paths: Vec<PathBuf>,
    /// Their names relative to the landing folder (the `source_file` column).
    pub rels: Vec<String>,
    /// Their footers.
    pub footers: Vec<Footer>,
    /// `customer_transactions`.
    pub main: DeltaTable,
    /// The quarantine table.
    pub quarantine: DeltaTable,
    /// Duplicate ordinals, sorted.
    pub dups: Arc<Vec<Ord>>,
    /// Rows that broke a rule, by ordinal, sorted.
    pub rejects: Arc<Vec<(Ord, Reason)>>,
    /// Rows done.
    pub progress: Progress,
}

/// What the run wrote (uncommitted).
#[derive(Default)]
pub struct Written {
    /// Data files of `customer_transactions`.
    pub main_adds: Vec<Add>,
    /// Data files of the quarantine table.
    pub quarantine_adds: Vec<Add>,
    /// Rows written to `customer_transactions`.
    pub rows_out: u64,
    /// Duplicates (written to quarantine).
    pub duplicates: u64,
    /// Other quarantined rows by rule.
    pub reasons: BTreeMap<&'static str, u64>,
}

impl Written {
    fn absorb(&mut self, d: Written) {
        self.main_adds.extend(d.main_adds);
        self.quarantine_adds.extend(d.quarantine_adds);
        self.rows_out += d.rows_out;
        self.duplicates += d.duplicates;
        for (k, v) in d.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
    }

    /// Remove every file written (the run will not commit).
    pub async fn discard(&self, ctx: &Ctx) {
        delta::commit::discard(&ctx.main, &self.main_adds).await;
        delta::commit::discard(&ctx.quarantine, &self.quarantine_adds).await;
    }
}

/// Write every day, `workers` at a time. On an error, what was written is removed.
pub async fn write(
    ctx: Arc<Ctx>,
    days: BTreeMap<DayKey, Vec<Input>>,
    workers: usize,
) -> Result<Written> {
    let results: Vec<Result<Written>> = futures::stream::iter(days)
        .map(|(day, inputs)| {
            let ctx = ctx.clone();
            tokio::spawn(async move { process_day(&ctx, day, inputs).await })
        })
        .buffer_unordered(workers.max(1))
        .map(|joined| joined.map_err(Error::from).and_then(|r| r))
        .collect()
        .await;
    let mut total = Written::default();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(d) => total.absorb(d),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        None => Ok(total),
        Some(e) => {
            total.discard(&ctx).await;
            Err(e)
        }
    }
}

async fn process_day(ctx: &Ctx, day: DayKey, inputs: Vec<Input>) -> Result<Written> {
    let mut w = DayWriters::new(ctx, day)?;
    let mut out = Written::default();
    for input in &inputs {
        let mut cursors: Option<Cursors> = None;
        for rows in read_input(&ctx.paths, &ctx.footers, input)? {
            let rows = rows?;
            let Some(first) = rows.first_ord() else {
                continue;
            };
            let c = cursors.get_or_insert_with(|| Cursors {
                dups: Cursor::new(&ctx.dups, |d| *d, first),
                rejects: Cursor::new(&ctx.rejects, |r| r.0, first),
            });
            w.write(ctx, &rows, c, &mut out).await?;
        }
    }
    w.finish(&mut out).await?;
    Ok(out)
}

/// Where an input's rows stand in the verdicts.
struct Cursors<'a> {
    dups: Cursor<'a, Ord>,
    rejects: Cursor<'a, (Ord, Reason)>,
}

impl Cursors<'_> {
    fn reason(&mut self, ord: Ord) -> Option<Reason> {
        match self.rejects.find(ord) {
            Some((_, r)) => Some(*r),
            None => self.dups.find(ord).map(|_| Reason::DuplicateTransactionId),
        }
    }
}

/// The main and quarantine writers of one day.
struct DayWriters {
    day: DayKey,
    main: PartitionWriter,
    quarantine: PartitionWriter,
    main_schema: SchemaRef,
    q_schema: SchemaRef,
}

/// A streaming writer of one partition's data files of `table` (batches without the
/// partition column).
pub fn writer(t: &DeltaTable, table: Table, day: DayKey) -> Result<PartitionWriter> {
    let config = PartitionWriterConfig::try_new(
        file_schema(table),
        DayWriters::partition(day),
        Some(schema::writer_properties(Some(DATA_ROW_GROUP_ROWS))),
        NonZeroU64::new(DATA_FILE_BYTES),
        Some(DATA_ROW_GROUP_ROWS),
        Some(UPLOADS_IN_FLIGHT),
        None,
    )
    .map_err(|e| Error::delta(table.name(), e))?;
    PartitionWriter::try_with_config(
        t.object_store(),
        config,
        DataSkippingNumIndexedCols::NumColumns(32),
        None,
    )
    .map_err(|e| Error::delta(table.name(), e))
}

/// A table's schema without its partition column: what its data files hold.
pub fn file_schema(table: Table) -> SchemaRef {
    schema::without_column(&table.schema(), PARTITION_COLUMN)
}

impl DayWriters {
    fn new(ctx: &Ctx, day: DayKey) -> Result<Self> {
        Ok(Self {
            day,
            main: writer(&ctx.main, Table::Transactions, day)?,
            quarantine: writer(&ctx.quarantine, Table::Quarantine, day)?,
            main_schema: file_schema(Table::Transactions),
            q_schema: file_schema(Table::Quarantine),
        })
    }

    fn partition(d: DayKey) -> IndexMap<String, Scalar> {
        IndexMap::from([(
            PARTITION_COLUMN.to_string(),
            d.map_or(
                Scalar::Null(delta_kernel::schema::DataType::DATE),
                Scalar::Date,
            ),
        )])
    }

    /// Write one batch: the good rows to the table, the rest to quarantine.
    async fn write(
        &mut self,
        ctx: &Ctx,
        rows: &Rows,
        verdicts: &mut Cursors<'_>,
        out: &mut Written,
    ) -> Result<()> {
        let batch = &rows.batch;
        let src = &ctx.rels[rows.file];
        let n = batch.num_rows();
        let (first, last) = (rows.ord(0), rows.ord(n - 1));
        if !verdicts.rejects.any_in(first, last) && !verdicts.dups.any_in(first, last) {
            // The common case: every row is good.
            out.rows_out += n as u64;
            self.write_main(batch, src).await?;
            ctx.progress.inc(n as u64);
            return Ok(());
        }
        let mut keep = Vec::with_capacity(n);
        let mut rejected: Vec<u32> = Vec::new();
        let mut reasons: Vec<&'static str> = Vec::new();
        for i in 0..n {
            let reason = verdicts.reason(rows.ord(i));
            keep.push(reason.is_none());
            if let Some(r) = reason {
                if r == Reason::DuplicateTransactionId {
                    out.duplicates += 1;
                } else {
                    *out.reasons.entry(r.as_str()).or_default() += 1;
                }
                rejected.push(i as u32);
                reasons.push(r.as_str());
            }
        }
        let kept = filter_record_batch(batch, &BooleanArray::from(keep))?;
        out.rows_out += kept.num_rows() as u64;
        if kept.num_rows() > 0 {
            self.write_main(&kept, src).await?;
        }
        if !rejected.is_empty() {
            let bad = within_precision(take_record_batch(batch, &UInt32Array::from(rejected))?)?;
            let m = bad.num_rows();
            let extra: Vec<ArrayRef> =
                vec![Arc::new(StringArray::from(reasons)), repeat_str(src, m)];
            let b = with_extra_columns(&bad, &self.q_schema, extra)?;
            self.quarantine
                .write(&b)
                .await
                .map_err(|e| Error::delta(Table::Quarantine.name(), e))?;
        }
        ctx.progress.inc(n as u64);
        Ok(())
    }

    /// Append good rows (from file `src`) to the day's table file.
    async fn write_main(&mut self, rows: &RecordBatch, src: &str) -> Result<()> {
        if self.day.is_none() {
            return Err(Error::Invalid(
                "internal error: a valid row without a day".into(),
            ));
        }
        let b = with_extra_columns(
            rows,
            &self.main_schema,
            vec![repeat_str(src, rows.num_rows())],
        )?;
        self.main
            .write(&b)
            .await
            .map_err(|e| Error::delta(Table::Transactions.name(), e))
    }

    async fn finish(self, out: &mut Written) -> Result<()> {
        out.main_adds.extend(
            self.main
                .close()
                .await
                .map_err(|e| Error::delta(Table::Transactions.name(), e))?,
        );
        out.quarantine_adds = self
            .quarantine
            .close()
            .await
            .map_err(|e| Error::delta(Table::Quarantine.name(), e))?;
        Ok(())
    }
}

/// Rejected rows with an amount beyond `Decimal(12, 2)` (quarantined as
/// `amount_out_of_range`) keep it as null: a value the column's type cannot hold would be
/// read wrongly (or refused) by other readers of the quarantine table. The row's file and
/// reason say where it came from.
fn within_precision(bad: RecordBatch) -> Result<RecordBatch> {
    use deltalake::arrow::array::{Array, Decimal128Array};
    let i = bad
        .schema()
        .index_of(crate::schema::col::AMOUNT)
        .map_err(|e| Error::Invalid(format!("internal error: {e}")))?;
    let amounts = bad
        .column(i)
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .ok_or_else(|| Error::Invalid("internal error: amount is not a decimal".into()))?;
    let max = crate::rules::MAX_AMOUNT_UNSCALED;
    if !amounts.iter().flatten().any(|v| v.abs() > max) {
        return Ok(bad);
    }
    let fitted: Decimal128Array = amounts
        .iter()
        .map(|v| v.filter(|v| v.abs() <= max))
        .collect::<Decimal128Array>()
        .with_precision_and_scale(crate::schema::AMOUNT_PRECISION, crate::schema::AMOUNT_SCALE)?;
    let mut cols = bad.columns().to_vec();
    cols[i] = Arc::new(fitted);
    Ok(RecordBatch::try_new(bad.schema(), cols)?)
}

/// `value` `n` times (sized up front: growing it row by row showed up in profiles).
fn repeat_str(value: &str, n: usize) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(n, n * value.len());
    for _ in 0..n {
        b.append_value(value);
    }
    Arc::new(b.finish())
}

/// `batch` (`INPUT` columns) with `extra` columns between the raw and the lineage ones, as
/// the tables order them, conformed to `target` (the writer's file schema).
fn with_extra_columns(
    batch: &RecordBatch,
    target: &SchemaRef,
    extra: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let (raw, lineage) = batch.columns().split_at(schema::RAW.fields().len());
    delta::conform(
        raw.iter()
            .cloned()
            .chain(extra)
            .chain(lineage.iter().cloned())
            .collect(),
        target,
    )
}
