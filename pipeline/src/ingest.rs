//! `ingest`: raw Parquet files -> Delta `customer_transactions` (+ quarantine), exactly once.
//!
//! How a run goes:
//! 1. **Discover**: list the landing folder; a file is new unless the table holds an application
//!    transaction `pipeline.ingest:<file>` for it (written in the same commit as its rows).
//! 2. **Plan**: read each new file's footer (schema check, row-group statistics). A row group
//!    whose timestamps all fall on one day is read directly later; other row groups are read
//!    once now and split by day into scratch Arrow IPC files.
//! 3. **Process day by day** (in parallel): duplicates share their timestamp, so a day's set of
//!    transaction ids is all dedup needs. It starts from the ids already in the table for that
//!    day (only the `transaction_id` column of that day's files is read). A day with more ids
//!    than a bucket holds is split by id hash into buckets spilled to scratch and deduplicated
//!    one bucket at a time, so memory is bounded whatever the size of a day, table or run.
//! 4. **Commit**: the quarantine table first, then the main table with one txn per consumed
//!    file. A crash between the two leaves the files unconsumed; the rerun recomputes them the
//!    same way and skips quarantine rows of files the quarantine table already has.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use delta_kernel::expressions::Scalar;
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array,
};
use deltalake::arrow::compute::{cast, filter_record_batch, take_record_batch};
use deltalake::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use deltalake::arrow::ipc::reader::FileReader as IpcReader;
use deltalake::arrow::ipc::writer::FileWriter as IpcWriter;
use deltalake::kernel::{Add, Transaction};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
#[allow(deprecated)]
// deprecated upstream in favour of hand-written readers; delta-rs still uses it
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use futures::{StreamExt, TryStreamExt};
use indexmap::IndexMap;
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::delta;
use crate::error::{Error, Result};
use crate::layout::{self, Layout};
use crate::progress::Progress;
use crate::rules::{self, Reason};
use crate::schema::{self, PARTITION_COLUMN, QUARANTINE, RAW, RAW_LENIENT, TRANSACTIONS, col};

pub const TABLE: &str = "customer_transactions";
pub const QUARANTINE_TABLE: &str = "customer_transactions_quarantine";
const DAY_US: i64 = 86_400_000_000;
const BATCH_ROWS: usize = 64 * 1024;
/// Row-group cap for the Delta data files: the writer holds one open row group per day being
/// written, so this (not the size of a day) bounds its memory.
const DATA_ROW_GROUP_ROWS: usize = 128 * 1024;
/// Files are closed at this size: the writer buffers the file it is writing, so this bounds
/// that buffer independently of how many rows a day has. At 24 MiB a 10M-row day (19 MiB) fit
/// in one file but larger days filled the whole buffer (+50 MiB peak RSS at 30M rows);
/// `maintain` compacts the smaller files when wanted.
const DATA_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Application-transaction id marking a raw file (path relative to the landing folder) as consumed.
pub fn file_app_id(rel: &str) -> String {
    format!("pipeline.ingest:{rel}")
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Rows dated more than a day after this instant are quarantined. Defaults to now.
    pub now: chrono::DateTime<chrono::Utc>,
    /// Days processed at once.
    pub workers: usize,
    /// Ids per dedup bucket (see [`DEFAULT_DEDUP_BUCKET_IDS`]).
    pub dedup_bucket_ids: u64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            now: chrono::Utc::now(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            dedup_bucket_ids: DEFAULT_DEDUP_BUCKET_IDS,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// Parquet files in the landing folder.
    pub files_seen: u64,
    /// Files read and committed by this run.
    pub files_ingested: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_quarantined: u64,
    pub duplicates: u64,
    /// Quarantined rows by rule (duplicates are counted separately above).
    pub quarantine_reasons: BTreeMap<&'static str, u64>,
    pub days: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub data_files_written: u64,
    /// Version of `customer_transactions` this run committed (none when there was nothing new).
    pub table_version: Option<i64>,
    pub quarantine_version: Option<i64>,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub peak_rss_bytes: u64,
}

/// A raw file this run will consume.
#[derive(Debug)]
struct RawFile {
    path: PathBuf,
    rel: String,
    size: u64,
    /// The quarantine table already holds this file's rejected rows (a crash between commits).
    quarantine_done: bool,
}

/// Where one day's rows of one source row group are.
#[derive(Debug)]
enum Input {
    RowGroup {
        file: usize,
        row_group: usize,
    },
    Spilled {
        file: usize,
        path: PathBuf,
        rows: u64,
    },
}

impl Input {
    fn rows(&self, footers: &[Footer]) -> u64 {
        match self {
            Input::RowGroup { file, row_group } => footers[*file]
                .0
                .metadata()
                .row_group(*row_group)
                .num_rows()
                .max(0) as u64,
            Input::Spilled { rows, .. } => *rows,
        }
    }
}

/// The transaction ids of one day seen so far.
type IdSet = HashSet<u128, foldhash::fast::RandomState>;

/// One day's (or the null day's) slice of the work.
type DayKey = Option<i32>;

struct Ctx {
    files: Vec<RawFile>,
    /// Per file (same index as `files`): its footer and the projection of the raw columns,
    /// read and checked once during planning.
    footers: Vec<Footer>,
    main: DeltaTable,
    quarantine: DeltaTable,
    now_us: i64,
    progress: Progress,
    /// This run's scratch folder.
    scratch: PathBuf,
    bucket_ids: u64,
}

#[derive(Default)]
struct DayResult {
    main_adds: Vec<Add>,
    quarantine_adds: Vec<Add>,
    rows_out: u64,
    duplicates: u64,
    reasons: BTreeMap<&'static str, u64>,
}

pub async fn run(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport> {
    let started = Instant::now();
    let raw_dir = layout.raw_dir();
    if !raw_dir.is_dir() {
        return Err(Error::Invalid(format!(
            "landing folder {} does not exist: run `pipeline generate` first, or set --data-dir",
            raw_dir.display()
        )));
    }
    // Scratch folders of killed runs go first, also when this run finds nothing new.
    remove_orphaned_scratch(&layout.scratch_dir());
    let listed = list_raw(&raw_dir)?;
    let mut report = IngestReport {
        files_seen: listed.len() as u64,
        ..Default::default()
    };

    let main = delta::open_or_create(
        layout.transactions_uri()?,
        TABLE,
        &TRANSACTIONS,
        &[PARTITION_COLUMN],
    )
    .await?;
    let quarantine = delta::open_or_create(
        layout.quarantine_uri()?,
        QUARANTINE_TABLE,
        &QUARANTINE,
        &[PARTITION_COLUMN],
    )
    .await?;

    // 1. Discover what is new. Look-ups run concurrently; each replays only the `txn` column.
    let files: Vec<RawFile> = futures::stream::iter(listed)
        .map(|(path, rel, size)| {
            let (main, quarantine) = (&main, &quarantine);
            async move {
                let id = file_app_id(&rel);
                if let Some(v) = delta::txn_version(main, TABLE, &id).await? {
                    if v != size as i64 {
                        tracing::warn!(file = %rel, "raw file changed size since it was ingested; ignoring it (landing files are immutable)");
                    }
                    return Ok(None);
                }
                let quarantine_done = delta::txn_version(quarantine, QUARANTINE_TABLE, &id).await?.is_some();
                Ok(Some(RawFile { path, rel, size, quarantine_done }))
            }
        })
        .buffered(16)
        .try_filter_map(|f| async move { Ok::<_, Error>(f) })
        .try_collect()
        .await?;
    if files.is_empty() {
        tracing::info!("no new raw files");
        return Ok(finish(report, started));
    }
    report.files_ingested = files.len() as u64;
    report.bytes_read = files.iter().map(|f| f.size).sum();

    // 2. Plan (blocking file reads).
    let scratch = Scratch::new(layout.scratch_dir())?;
    let (plan, rows_in, footers) = {
        let (files, dir) = (
            files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
            scratch.dir.clone(),
        );
        tokio::task::spawn_blocking(move || plan(&files, &dir)).await??
    };
    crate::pausepoint("ingest.after_plan");
    report.rows_in = rows_in;
    report.days = plan.keys().filter(|d| d.is_some()).count() as u64;
    progress.set_length(rows_in);

    // Files already in the table for the days we touch: their ids seed the dedup sets.
    let mut existing = existing_files_by_day(&main, &plan)?;

    // 3. Process days in parallel.
    let ctx = Arc::new(Ctx {
        files,
        footers,
        main,
        quarantine,
        now_us: opts.now.timestamp_micros(),
        progress: progress.clone(),
        scratch: scratch.dir.clone(),
        bucket_ids: opts.dedup_bucket_ids.max(1),
    });
    let results: Vec<Result<DayResult>> = futures::stream::iter(plan)
        .map(|(day, inputs)| {
            let ctx = ctx.clone();
            let existing = day.and_then(|d| existing.remove(&d)).unwrap_or_default();
            tokio::spawn(async move { process_day(&ctx, day, inputs, existing).await })
        })
        .buffer_unordered(opts.workers.max(1))
        .map(|joined| joined.map_err(Error::from).and_then(|r| r))
        .collect()
        .await;
    let mut total = DayResult::default();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(d) => {
                total.main_adds.extend(d.main_adds);
                total.quarantine_adds.extend(d.quarantine_adds);
                total.rows_out += d.rows_out;
                total.duplicates += d.duplicates;
                for (k, v) in d.reasons {
                    *total.reasons.entry(k).or_default() += v;
                }
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if let Some(e) = first_err {
        discard(&ctx, &total).await;
        return Err(e);
    }
    report.rows_out = total.rows_out;
    report.duplicates = total.duplicates;
    report.rows_quarantined = total.reasons.values().sum();
    report.quarantine_reasons = total.reasons.clone();
    if report.rows_in != report.rows_out + report.rows_quarantined + report.duplicates {
        discard(&ctx, &total).await;
        return Err(Error::Invalid(format!(
            "internal accounting error: rows_in {} != out {} + quarantined {} + duplicates {}; nothing was committed",
            report.rows_in, report.rows_out, report.rows_quarantined, report.duplicates
        )));
    }
    report.data_files_written = (total.main_adds.len() + total.quarantine_adds.len()) as u64;
    report.bytes_written = total
        .main_adds
        .iter()
        .chain(&total.quarantine_adds)
        .map(|a| a.size as u64)
        .sum();

    // 4. Commit: quarantine first, then the table that defines "consumed".
    crate::failpoint("ingest.before_commit");
    let meta = |stage_rows: u64| {
        HashMap::from([
            ("pipeline.stage".to_string(), serde_json::json!("ingest")),
            ("pipeline.rows".to_string(), serde_json::json!(stage_rows)),
            (
                "pipeline.files".to_string(),
                serde_json::json!(ctx.files.iter().map(|f| &f.rel).collect::<Vec<_>>()),
            ),
        ])
    };
    let txns = |only_new_to_quarantine: bool| -> Vec<Transaction> {
        ctx.files
            .iter()
            .filter(|f| !(only_new_to_quarantine && f.quarantine_done))
            .map(|f| Transaction::new(file_app_id(&f.rel), f.size as i64))
            .collect()
    };
    if !total.quarantine_adds.is_empty() {
        let committed = delta::commit(
            &ctx.quarantine,
            QUARANTINE_TABLE,
            delta::adds(total.quarantine_adds.clone()),
            txns(true),
            delta::append_operation(&[PARTITION_COLUMN]),
            meta(report.rows_quarantined + report.duplicates),
        )
        .await;
        match committed {
            Ok(v) => report.quarantine_version = Some(v),
            Err(e) => {
                discard(&ctx, &total).await;
                return Err(e);
            }
        }
    }
    crate::failpoint("ingest.between_commits");
    let committed = delta::commit(
        &ctx.main,
        TABLE,
        delta::adds(total.main_adds.clone()),
        txns(false),
        delta::append_operation(&[PARTITION_COLUMN]),
        meta(report.rows_out),
    )
    .await;
    let v = match committed {
        Ok(v) => v,
        Err(e) => {
            // The quarantine commit (if any) stands: the rerun skips those files' quarantine
            // rows, exactly as after a crash between the two commits.
            let main_only = DayResult {
                main_adds: total.main_adds,
                ..Default::default()
            };
            discard(&ctx, &main_only).await;
            return Err(e);
        }
    };
    report.table_version = Some(v);
    drop(scratch);
    Ok(finish(report, started))
}

fn finish(mut report: IngestReport, started: Instant) -> IngestReport {
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = report.rows_in as f64 / report.seconds.max(1e-9);
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    report
}

/// Best effort: remove data files written by a run that will not commit. Anything left is
/// unreferenced by the log and invisible to readers; `VACUUM` removes it too.
async fn discard(ctx: &Ctx, written: &DayResult) {
    for (table, adds) in [
        (&ctx.main, &written.main_adds),
        (&ctx.quarantine, &written.quarantine_adds),
    ] {
        let store = table.object_store();
        for add in adds {
            let path = deltalake::Path::from(add.path.as_str());
            if let Err(e) = store.delete(&path).await {
                tracing::debug!(path = %add.path, error = %e, "could not remove uncommitted file");
            }
        }
    }
}

/// Landing files, recursively, sorted by relative path: (absolute path, relative path, size).
fn list_raw(dir: &Path) -> Result<Vec<(PathBuf, String, u64)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String, u64)>) -> Result<()> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for entry in rd {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
            if ft.is_dir() {
                walk(root, &path, out)?;
            } else if layout::is_landing_candidate(&path) {
                let size = entry
                    .metadata()
                    .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?
                    .len();
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((path, rel, size));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// A scratch folder for one run, removed when dropped (also on error). Its name carries the
/// process id, so a later run can remove the folders of runs that were killed (no destructor
/// ran) without touching those of a run still going.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(base: PathBuf) -> Result<Self> {
        let dir = base.join(format!(
            "ingest-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(Self { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Remove `ingest-<pid>-*` folders whose process is gone.
fn remove_orphaned_scratch(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("ingest-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) == 0 }
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            tracing::info!(dir = %e.path().display(), "removing the scratch folder of a killed ingest");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Check a raw file's schema and say how to read it: the Parquet root columns to project.
/// A missing column or an incompatible type is a [`Error::BadInput`] naming file and column.
fn raw_projection(path: &Path, meta: &ArrowReaderMetadata) -> Result<ProjectionMask> {
    let file_schema = meta.schema();
    let mut roots = Vec::with_capacity(RAW.fields().len());
    for want in RAW.fields() {
        let Some((idx, got)) = file_schema.column_with_name(want.name()) else {
            let have: Vec<_> = file_schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(Error::bad_input(
                path,
                format!(
                    "missing column `{}` ({}); the file has [{}]",
                    want.name(),
                    want.data_type(),
                    have.join(", ")
                ),
            ));
        };
        if !compatible(got.data_type(), want.data_type()) {
            return Err(Error::bad_input(
                path,
                format!(
                    "column `{}` has type {}, expected {}",
                    want.name(),
                    got.data_type(),
                    want.data_type()
                ),
            ));
        }
        roots.push(idx);
    }
    Ok(ProjectionMask::roots(meta.parquet_schema(), roots))
}

/// Types we accept for a raw column and convert losslessly to the contract's type.
fn compatible(got: &DataType, want: &DataType) -> bool {
    use DataType::*;
    match (got, want) {
        (g, w) if g == w => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8) => true,
        (Dictionary(_, v), Utf8) => matches!(v.as_ref(), Utf8 | LargeUtf8 | Utf8View),
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Int64) => true,
        // Any unit, as long as it is an instant (has a time zone); a naive timestamp is ambiguous.
        (Timestamp(_, Some(_)), Timestamp(_, Some(_))) => true,
        (Decimal128(p, s) | Decimal256(p, s), Decimal128(wp, ws)) => {
            *s >= 0 && *s <= *ws && (*p as i16 - *s as i16) <= (*wp as i16 - *ws as i16)
        }
        _ => false,
    }
}

/// Reorder and cast a raw batch to `RAW_LENIENT` (compatibility was checked at planning).
fn normalize(batch: &RecordBatch) -> Result<RecordBatch> {
    let cols = RAW_LENIENT
        .fields()
        .iter()
        .map(|f| {
            let c = batch.column_by_name(f.name()).expect("projected column");
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(RAW_LENIENT.clone(), cols)?)
}

fn day_of(us: i64) -> i32 {
    us.div_euclid(DAY_US) as i32
}

/// Read every new file's footer, check it, and sort its row groups into days.
/// Returns the plan (inputs per day, in file then row-group order) and the total row count.
/// A raw file's parsed footer and the projection of its raw columns.
type Footer = (ArrowReaderMetadata, ProjectionMask);

/// The plan: inputs per day (file then row-group order), total rows, and each file's footer.
type Plan = (BTreeMap<DayKey, Vec<Input>>, u64, Vec<Footer>);

fn plan(files: &[PathBuf], scratch: &Path) -> Result<Plan> {
    let mut plan: BTreeMap<DayKey, Vec<Input>> = BTreeMap::new();
    let mut footers = Vec::with_capacity(files.len());
    let mut rows = 0u64;
    for (fi, path) in files.iter().enumerate() {
        let file =
            File::open(path).map_err(|e| Error::bad_input(path, format!("cannot open: {e}")))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .map_err(|e| Error::bad_input(path, format!("not a readable Parquet file ({e})")))?;
        let projection = raw_projection(path, &meta)?;
        let md = meta.metadata();
        rows += md.file_metadata().num_rows().max(0) as u64;
        let converter = StatisticsConverter::try_new(
            col::TRANSACTION_TS,
            meta.schema(),
            meta.parquet_schema(),
        )?;
        let mins = converter.row_group_mins(md.row_groups().iter())?;
        let maxs = converter.row_group_maxes(md.row_groups().iter())?;
        let nulls = converter.row_group_null_counts(md.row_groups().iter())?;
        let to_us = |a: &ArrayRef| -> Result<ArrayRef> {
            Ok(cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?)
        };
        let (mins, maxs) = (to_us(&mins)?, to_us(&maxs)?);
        let (mins, maxs) = (
            mins.as_primitive::<TimestampMicrosecondType>(),
            maxs.as_primitive::<TimestampMicrosecondType>(),
        );
        for rg in 0..md.num_row_groups() {
            if md.row_group(rg).num_rows() == 0 {
                continue;
            }
            let single_day = mins.is_valid(rg)
                && maxs.is_valid(rg)
                && nulls.is_valid(rg)
                && nulls.value(rg) == 0
                && day_of(mins.value(rg)) == day_of(maxs.value(rg));
            if single_day {
                plan.entry(Some(day_of(mins.value(rg))))
                    .or_default()
                    .push(Input::RowGroup {
                        file: fi,
                        row_group: rg,
                    });
            } else {
                for (day, spilled, rows) in
                    spill_row_group(path, fi, rg, &file, &meta, projection.clone(), scratch)?
                {
                    plan.entry(day).or_default().push(Input::Spilled {
                        file: fi,
                        path: spilled,
                        rows,
                    });
                }
            }
        }
        footers.push((meta, projection));
    }
    Ok((plan, rows, footers))
}

/// Read one row group that spans several days and write its rows, split by day, to scratch.
fn spill_row_group(
    path: &Path,
    fi: usize,
    rg: usize,
    file: &File,
    meta: &ArrowReaderMetadata,
    projection: ProjectionMask,
    scratch: &Path,
) -> Result<Vec<(DayKey, PathBuf, u64)>> {
    let f = file
        .try_clone()
        .map_err(|e| Error::io(format!("cannot reopen {}", path.display()), e))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta.clone())
        .with_row_groups(vec![rg])
        .with_projection(projection)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    let mut writers: BTreeMap<DayKey, (PathBuf, IpcWriter<File>, u64)> = BTreeMap::new();
    for batch in reader {
        let batch =
            normalize(&batch.map_err(|e| {
                Error::bad_input(path, format!("row group {rg} is unreadable ({e})"))
            })?)?;
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let mut by_day: BTreeMap<DayKey, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let day = ts.is_valid(i).then(|| day_of(ts.value(i)));
            by_day.entry(day).or_default().push(i as u32);
        }
        for (day, idx) in by_day {
            let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
            let (_, writer, rows) = match writers.entry(day) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let day_name = day.map_or("null".to_string(), |d| d.to_string());
                    let p = scratch.join(format!("f{fi:06}-rg{rg:05}-{day_name}.arrow"));
                    let f = File::create(&p)
                        .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
                    e.insert((p, IpcWriter::try_new(f, &RAW_LENIENT)?, 0))
                }
            };
            *rows += part.num_rows() as u64;
            writer.write(&part)?;
        }
    }
    let mut out = Vec::with_capacity(writers.len());
    for (day, (p, mut w, rows)) in writers {
        w.finish()?;
        out.push((day, p, rows));
    }
    Ok(out)
}

/// A data file already in `customer_transactions` and its row count (from its `add` stats).
struct Existing {
    path: deltalake::Path,
    rows: u64,
}

/// Data files of `customer_transactions` per day, for the days in the plan.
fn existing_files_by_day(
    table: &DeltaTable,
    plan: &BTreeMap<DayKey, Vec<Input>>,
) -> Result<HashMap<i32, Vec<Existing>>> {
    let wanted: HashSet<i32> = plan.keys().flatten().copied().collect();
    let mut out: HashMap<i32, Vec<Existing>> = HashMap::new();
    let snapshot = table.snapshot().map_err(|e| Error::delta(TABLE, e))?;
    for file in snapshot.log_data().iter() {
        let Some(Some(value)) = file.partition_values_map().remove(PARTITION_COLUMN) else {
            continue;
        };
        let Ok(date) = chrono::NaiveDate::parse_from_str(&value, "%Y-%m-%d") else {
            continue;
        };
        let day = (date - chrono::NaiveDate::default()).num_days() as i32;
        if wanted.contains(&day) {
            out.entry(day).or_default().push(Existing {
                path: file.object_store_path(),
                rows: file.num_records().unwrap_or(0) as u64,
            });
        }
    }
    Ok(out)
}

async fn process_day(
    ctx: &Arc<Ctx>,
    day: DayKey,
    inputs: Vec<Input>,
    existing: Vec<Existing>,
) -> Result<DayResult> {
    let mut w = DayWriters::new(ctx, day)?;
    let mut out = DayResult::default();
    // The dedup set holds every id of a day (new and already in the table). Above
    // `BUCKET_IDS` the day is split into buckets by id, spilled to scratch, and deduplicated
    // one bucket at a time, so the set never outgrows one bucket however large a day gets.
    let ids: u64 = inputs.iter().map(|i| i.rows(&ctx.footers)).sum::<u64>()
        + existing.iter().map(|e| e.rows).sum::<u64>();
    let buckets = ids.div_ceil(ctx.bucket_ids).max(1);
    if buckets == 1 {
        let mut seen = IdSet::with_capacity_and_hasher(ids as usize, Default::default());
        for e in &existing {
            load_ids(&ctx.main, &e.path, &mut seen, Bucket::ALL).await?;
        }
        for input in &inputs {
            let (fi, batches) = read_input(ctx, input)?;
            for batch in batches {
                w.write(ctx, fi, &batch?, &mut seen, &mut out).await?;
            }
        }
    } else {
        let spilled = {
            let ctx2 = ctx.clone();
            let dir = ctx.scratch.join(format!("bucket-{}", uuid::Uuid::new_v4()));
            tokio::task::spawn_blocking(move || spill_by_bucket(&ctx2, &dir, &inputs, buckets))
                .await??
        };
        let per_bucket = (ids / buckets) as usize;
        for b in 0..buckets {
            let bucket = Bucket {
                index: b,
                of: buckets,
            };
            let mut seen =
                IdSet::with_capacity_and_hasher(per_bucket + per_bucket / 8, Default::default());
            for e in &existing {
                load_ids(&ctx.main, &e.path, &mut seen, bucket).await?;
            }
            for (fi, path) in spilled
                .iter()
                .filter(|s| s.bucket == b)
                .map(|s| (s.file, &s.path))
            {
                let f = File::open(path).map_err(|e| {
                    Error::io(format!("cannot open scratch file {}", path.display()), e)
                })?;
                for batch in IpcReader::try_new(f, None)? {
                    w.write(ctx, fi, &batch?, &mut seen, &mut out).await?;
                }
                let _ = std::fs::remove_file(path);
            }
        }
    }
    w.finish(&mut out).await?;
    Ok(out)
}

/// Ids per dedup bucket. A day with more ids (new plus already in the table) is split into
/// buckets, so one bucket's set, pre-sized with 1/8 slack, stays within 2^19 hash slots
/// (~9 MiB): memory is then the same for every day size. Measured at 30 days: up to 10M rows
/// (333K a day) days take the direct path; at 30M rows, sets sized for a whole 1M-id day
/// (2^21 slots, two workers) were most of the difference in peak RSS.
pub const DEFAULT_DEDUP_BUCKET_IDS: u64 = 400_000;

/// One bucket of a day's id space, or all of it.
#[derive(Clone, Copy)]
struct Bucket {
    index: u64,
    of: u64,
}

impl Bucket {
    const ALL: Bucket = Bucket { index: 0, of: 1 };

    fn of_id(id: u128, of: u64) -> u64 {
        // Ids are usually random UUIDs, but mix anyway so sequential ids spread evenly.
        let x = (id as u64) ^ ((id >> 64) as u64);
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32) % of
    }

    fn holds(self, id: u128) -> bool {
        self.of == 1 || Bucket::of_id(id, self.of) == self.index
    }
}

/// One input's rows of one bucket, in a scratch IPC file.
struct SpilledBucket {
    file: usize,
    bucket: u64,
    path: PathBuf,
}

/// Read a day's inputs once and split their rows by id bucket into scratch files, keeping
/// input order within each bucket. Rows whose id does not parse go to bucket 0 (the rules
/// reject them there).
fn spill_by_bucket(
    ctx: &Ctx,
    dir: &Path,
    inputs: &[Input],
    buckets: u64,
) -> Result<Vec<SpilledBucket>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut out = Vec::new();
    for (n, input) in inputs.iter().enumerate() {
        let (fi, batches) = read_input(ctx, input)?;
        let mut writers: BTreeMap<u64, IpcWriter<std::io::BufWriter<File>>> = BTreeMap::new();
        for batch in batches {
            let batch = batch?;
            let ids = batch.column(0).as_string::<i32>();
            let mut by_bucket: Vec<Vec<u32>> = vec![Vec::new(); buckets as usize];
            for i in 0..batch.num_rows() {
                let b = ids
                    .is_valid(i)
                    .then(|| rules::parse_uuid(ids.value(i)))
                    .flatten()
                    .map_or(0, |id| Bucket::of_id(id, buckets));
                by_bucket[b as usize].push(i as u32);
            }
            for (b, idx) in by_bucket.into_iter().enumerate() {
                if idx.is_empty() {
                    continue;
                }
                let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
                let writer = match writers.entry(b as u64) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let p = dir.join(format!("in{n:05}-b{b:04}.arrow"));
                        let f = File::create(&p).map_err(|err| {
                            Error::io(format!("cannot create {}", p.display()), err)
                        })?;
                        out.push(SpilledBucket {
                            file: fi,
                            bucket: b as u64,
                            path: p,
                        });
                        e.insert(IpcWriter::try_new(
                            std::io::BufWriter::new(f),
                            &RAW_LENIENT,
                        )?)
                    }
                };
                writer.write(&part)?;
            }
        }
        for (_, mut w) in writers {
            w.finish()?;
        }
    }
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
        let main = RecordBatchWriter::for_table(&ctx.main)
            .map_err(|e| Error::delta(TABLE, e))?
            .with_writer_properties(schema::writer_properties(Some(DATA_ROW_GROUP_ROWS)));
        let quarantine = RecordBatchWriter::for_table(&ctx.quarantine)
            .map_err(|e| Error::delta(QUARANTINE_TABLE, e))?
            .with_writer_properties(schema::writer_properties(Some(DATA_ROW_GROUP_ROWS)));
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

    /// Check one batch of raw rows from file `fi`, dedup it against `seen`, and write the
    /// good rows to the table and the rest to quarantine.
    async fn write(
        &mut self,
        ctx: &Ctx,
        fi: usize,
        batch: &RecordBatch,
        seen: &mut IdSet,
        out: &mut DayResult,
    ) -> Result<()> {
        let src = &ctx.files[fi];
        let n = batch.num_rows();
        let checked = rules::check(batch, ctx.now_us);
        let mut keep = Vec::with_capacity(n);
        let mut rejected: Vec<u32> = Vec::new();
        let mut reasons: Vec<&'static str> = Vec::new();
        for i in 0..n {
            let reason = match checked.reasons[i] {
                None if seen.insert(checked.ids[i]) => None,
                None => Some(Reason::DuplicateTransactionId),
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
            let d = self.day.expect("valid rows have a timestamp");
            let b = with_extra_columns(
                &kept,
                &self.main_schema,
                vec![repeat_str(&src.rel, kept.num_rows())],
            )?;
            self.main
                .write_partition(b, &Self::partition(Some(d)), WriteMode::Default)
                .await
                .map_err(|e| Error::delta(TABLE, e))?;
            // Close the file ourselves once it is big enough, waiting for its upload: left
            // to roll over on its own, delta-rs keeps every closed file of the window in
            // memory until its upload finishes, which grew with the size of a day.
            if self.main.buffer_len() >= DATA_FILE_BYTES as usize {
                let adds = self
                    .main
                    .flush()
                    .await
                    .map_err(|e| Error::delta(TABLE, e))?;
                out.main_adds.extend(adds);
            }
        }
        if !rejected.is_empty() && !src.quarantine_done {
            let bad = take_record_batch(batch, &UInt32Array::from(rejected))?;
            let m = bad.num_rows();
            let extra: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(reasons)),
                repeat_str(&src.rel, m),
            ];
            let b = with_extra_columns(&bad, &self.q_schema, extra)?;
            self.quarantine
                .write_partition(b, &Self::partition(self.day), WriteMode::Default)
                .await
                .map_err(|e| Error::delta(QUARANTINE_TABLE, e))?;
        }
        ctx.progress.inc(n as u64);
        Ok(())
    }

    async fn finish(mut self, out: &mut DayResult) -> Result<()> {
        let adds = self
            .main
            .flush()
            .await
            .map_err(|e| Error::delta(TABLE, e))?;
        out.main_adds.extend(adds);
        out.quarantine_adds = self
            .quarantine
            .flush()
            .await
            .map_err(|e| Error::delta(QUARANTINE_TABLE, e))?;
        Ok(())
    }
}

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// The batches of one input, normalised to `RAW_LENIENT`, and the index of its source file.
fn read_input(ctx: &Ctx, input: &Input) -> Result<(usize, BatchIter)> {
    match input {
        Input::RowGroup { file, row_group } => {
            let path = ctx.files[*file].path.clone();
            let f = File::open(&path).map_err(|e| {
                Error::bad_input(
                    &path,
                    format!(
                        "cannot open ({e}), though it was there when this run started: \
                             landing files must not be moved or deleted while ingest runs"
                    ),
                )
            })?;
            let (meta, projection) = ctx.footers[*file].clone();
            let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta);
            let reader = builder
                .with_row_groups(vec![*row_group])
                .with_projection(projection)
                .with_batch_size(BATCH_ROWS)
                .build()?;
            let rg = *row_group;
            Ok((
                *file,
                Box::new(reader.map(move |b| {
                    let b = b.map_err(|e| {
                        Error::bad_input(&path, format!("row group {rg} is unreadable ({e})"))
                    })?;
                    normalize(&b)
                })),
            ))
        }
        Input::Spilled { file, path, .. } => {
            let f = File::open(path).map_err(|e| {
                Error::io(format!("cannot open scratch file {}", path.display()), e)
            })?;
            let reader = IpcReader::try_new(f, None)?;
            Ok((*file, Box::new(reader.map(|b| b.map_err(Error::from)))))
        }
    }
}

/// Read the `transaction_id` column of one data file into `seen`, keeping the ids of `bucket`.
async fn load_ids(
    table: &DeltaTable,
    path: &deltalake::Path,
    seen: &mut IdSet,
    bucket: Bucket,
) -> Result<()> {
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(table.object_store(), path.clone());
    // Decode by the Parquet schema, not an embedded Arrow one: files rewritten by OPTIMIZE
    // (or another engine) may carry view or large string types.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options).await?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [col::TRANSACTION_ID]);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let ids = batch.column(0).as_string::<i32>();
        for id in ids.iter().flatten() {
            if let Some(v) = rules::parse_uuid(id).filter(|v| bucket.holds(*v)) {
                seen.insert(v);
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lossless_variants_and_rejects_the_rest() {
        use DataType::*;
        let ts = schema::timestamp_type();
        assert!(compatible(
            &Dictionary(Box::new(Int8), Box::new(Utf8)),
            &Utf8
        ));
        assert!(compatible(&LargeUtf8, &Utf8));
        assert!(compatible(&Int32, &Int64));
        assert!(compatible(
            &Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
            &ts
        ));
        assert!(compatible(&Decimal128(10, 2), &Decimal128(12, 2)));
        assert!(!compatible(&Timestamp(TimeUnit::Microsecond, None), &ts));
        assert!(!compatible(&Float64, &Decimal128(12, 2)));
        assert!(!compatible(&Decimal128(14, 2), &Decimal128(12, 2)));
        assert!(!compatible(&Decimal128(12, 3), &Decimal128(12, 2)));
        assert!(!compatible(&Utf8, &Int64));
        assert!(!compatible(&UInt64, &Int64));
    }

    #[test]
    fn days_floor_towards_the_past() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_US - 1), 0);
        assert_eq!(day_of(-1), -1);
    }
}
