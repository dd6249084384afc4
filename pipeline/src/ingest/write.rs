//! Writing: day by day (in parallel), each row checked again by the same rules and bounds as
//! when the verdicts were decided, duplicates looked up by ordinal, good rows to the day's
//! files of `customer_transactions` and the others to quarantine (in the day they claim).
//! Nothing is committed here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use delta_kernel::expressions::Scalar;
use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array};
use deltalake::arrow::compute::{filter_record_batch, take_record_batch};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use futures::StreamExt;
use indexmap::IndexMap;

use super::plan::{DayKey, Footer, Input, Ord, Rows, read_input};
use super::verdicts::DupCursor;
use crate::delta;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rules::{self, Limits, Reason};
use crate::schema::{self, PARTITION_COLUMN};
use crate::tables::Table;

/// Row-group cap for the Delta data files: the writer holds one open row group per day being
/// written, so this (not the size of a day) bounds its memory.
const DATA_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Files are closed at this size: the writer buffers the file it is writing, so this bounds
/// that buffer independently of how many rows a day has. At 24 MiB a 10M-row day (19 MiB) fit
/// in one file but larger days filled the whole buffer (+50 MiB peak RSS at 30M rows);
/// `maintain` compacts the smaller files when wanted.
const DATA_FILE_BYTES: usize = 8 * 1024 * 1024;

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
    /// The rules' bounds (the same as the verdicts').
    pub limits: Limits,
    /// Duplicate ordinals, sorted.
    pub dups: Arc<Vec<Ord>>,
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
        let mut cursor: Option<DupCursor> = None;
        for rows in read_input(&ctx.paths, &ctx.footers, input)? {
            let rows = rows?;
            let Some(first) = rows.first_ord() else {
                continue;
            };
            let c = cursor.get_or_insert_with(|| DupCursor::new(&ctx.dups, first));
            w.write(ctx, &rows, c, &mut out).await?;
        }
    }
    w.finish(&mut out).await?;
    Ok(out)
}

/// The main and quarantine writers of one day.
struct DayWriters {
    day: DayKey,
    main: RecordBatchWriter,
    quarantine: RecordBatchWriter,
    main_schema: SchemaRef,
    q_schema: SchemaRef,
}

impl DayWriters {
    fn new(ctx: &Ctx, day: DayKey) -> Result<Self> {
        let props = || schema::writer_properties(Some(DATA_ROW_GROUP_ROWS));
        let main = RecordBatchWriter::for_table(&ctx.main)
            .map_err(|e| Error::delta(Table::Transactions.name(), e))?
            .with_writer_properties(props());
        let quarantine = RecordBatchWriter::for_table(&ctx.quarantine)
            .map_err(|e| Error::delta(Table::Quarantine.name(), e))?
            .with_writer_properties(props());
        let main_schema = schema::without_column(&main.arrow_schema(), PARTITION_COLUMN);
        let q_schema = schema::without_column(&quarantine.arrow_schema(), PARTITION_COLUMN);
        Ok(Self {
            day,
            main,
            quarantine,
            main_schema,
            q_schema,
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

    /// Check one batch, write the good rows to the table and the rest to quarantine.
    async fn write(
        &mut self,
        ctx: &Ctx,
        rows: &Rows,
        dups: &mut DupCursor<'_>,
        out: &mut Written,
    ) -> Result<()> {
        let batch = &rows.batch;
        let src = &ctx.rels[rows.file];
        let n = batch.num_rows();
        let checked = rules::check(batch, ctx.limits);
        let mut keep = Vec::with_capacity(n);
        let mut rejected: Vec<u32> = Vec::new();
        let mut reasons: Vec<&'static str> = Vec::new();
        for i in 0..n {
            let reason = match checked.reasons[i] {
                None if dups.is_dup(rows.ord(i)) => Some(Reason::DuplicateTransactionId),
                r => r,
            };
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
            let d = self.day.ok_or_else(|| {
                Error::Invalid("internal error: a valid row without a day".into())
            })?;
            let b = with_extra_columns(
                &kept,
                &self.main_schema,
                vec![repeat_str(src, kept.num_rows())],
            )?;
            self.main
                .write_partition(b, &Self::partition(Some(d)), WriteMode::Default)
                .await
                .map_err(|e| Error::delta(Table::Transactions.name(), e))?;
            // Close the file ourselves once it is big enough, waiting for its upload: left
            // to roll over on its own, delta-rs keeps every closed file of the window in
            // memory until its upload finishes, which grew with the size of a day.
            if self.main.buffer_len() >= DATA_FILE_BYTES {
                let adds = self
                    .main
                    .flush()
                    .await
                    .map_err(|e| Error::delta(Table::Transactions.name(), e))?;
                out.main_adds.extend(adds);
            }
        }
        if !rejected.is_empty() {
            let bad = take_record_batch(batch, &UInt32Array::from(rejected))?;
            let m = bad.num_rows();
            let extra: Vec<ArrayRef> =
                vec![Arc::new(StringArray::from(reasons)), repeat_str(src, m)];
            let b = with_extra_columns(&bad, &self.q_schema, extra)?;
            self.quarantine
                .write_partition(b, &Self::partition(self.day), WriteMode::Default)
                .await
                .map_err(|e| Error::delta(Table::Quarantine.name(), e))?;
        }
        ctx.progress.inc(n as u64);
        Ok(())
    }

    async fn finish(mut self, out: &mut Written) -> Result<()> {
        let adds = self
            .main
            .flush()
            .await
            .map_err(|e| Error::delta(Table::Transactions.name(), e))?;
        out.main_adds.extend(adds);
        out.quarantine_adds = self
            .quarantine
            .flush()
            .await
            .map_err(|e| Error::delta(Table::Quarantine.name(), e))?;
        Ok(())
    }
}

fn repeat_str(value: &str, n: usize) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(value, n)))
}

/// `batch` (RAW_LENIENT columns) plus `extra` columns, conformed to `target` (the writer's
/// file schema).
fn with_extra_columns(
    batch: &RecordBatch,
    target: &SchemaRef,
    extra: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    delta::conform(
        batch.columns().iter().cloned().chain(extra).collect(),
        target,
    )
}
