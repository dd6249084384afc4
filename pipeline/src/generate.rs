//! `generate`: deterministic synthetic customer transactions, written as raw Parquet files.
//!
//! Work is split into units (one file each: a day, or a slice of a day), and each unit gets its
//! own RNG seeded from (seed, batch, day, part). So the rows do not depend on how many threads
//! ran or in which order units finished, and any unit can be regenerated on its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{NaiveDate, NaiveTime};
use deltalake::arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::concat_batches;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::file::properties::WriterProperties;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_distr::LogNormal;
use rand_distr::weighted::WeightedAliasIndex;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{self, Layout};
use crate::progress::Progress;
use crate::rules;
use crate::schema::{self, CATEGORIES, CHANNELS, RAW, STATUSES};

/// Options of one generator batch. Same options, same rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateConfig {
    pub rows: u64,
    pub customers: u64,
    pub merchants: u64,
    pub days: u32,
    pub start_date: NaiveDate,
    pub seed: u64,
    pub rows_per_file: u64,
    /// Batch number: each batch writes its own folder, so later batches add files.
    pub batch: u32,
    /// Fraction of rows made bad on purpose, spread over every kind the ingest rules catch.
    pub dirty_rate: f64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            rows: 100_000,
            customers: 10_000,
            merchants: 2_000,
            days: 30,
            start_date: NaiveDate::from_ymd_opt(2024, 1, 1).expect("valid date"),
            seed: 42,
            rows_per_file: 500_000,
            batch: 1,
            dirty_rate: 0.0,
        }
    }
}

impl GenerateConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("generate: {m}")));
        if self.rows == 0 {
            return bad("--rows must be at least 1");
        }
        if self.customers == 0 || self.merchants == 0 {
            return bad("--customers and --merchants must be at least 1");
        }
        if self.days == 0 {
            return bad("--days must be at least 1");
        }
        if self.rows_per_file == 0 {
            return bad("--rows-per-file must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.dirty_rate) {
            return bad("--dirty-rate must be between 0 and 1");
        }
        Ok(())
    }
}

/// The kinds of bad rows `--dirty-rate` injects. Each maps to exactly one ingest outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dirty {
    TransactionIdNotUuid,
    CustomerIdNotPositive,
    MerchantIdNotPositive,
    TransactionTsInFuture,
    AmountNotPositive,
    CategoryUnknown,
    ChannelUnknown,
    StatusUnknown,
    /// An exact copy of an earlier row of the same file.
    DuplicateInBatch,
    /// An exact copy of a valid row of an earlier batch (a re-delivery).
    DuplicateOfEarlierBatch,
}

impl Dirty {
    /// Kinds injected inside day files (the re-delivery kind has its own file).
    const IN_FILE: [Dirty; 9] = [
        Dirty::TransactionIdNotUuid,
        Dirty::CustomerIdNotPositive,
        Dirty::MerchantIdNotPositive,
        Dirty::TransactionTsInFuture,
        Dirty::AmountNotPositive,
        Dirty::CategoryUnknown,
        Dirty::ChannelUnknown,
        Dirty::StatusUnknown,
        Dirty::DuplicateInBatch,
    ];

    pub fn is_duplicate(self) -> bool {
        matches!(
            self,
            Dirty::DuplicateInBatch | Dirty::DuplicateOfEarlierBatch
        )
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerateReport {
    pub batch: u32,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Injected bad rows by kind.
    pub dirty: BTreeMap<Dirty, u64>,
    /// What ingest must quarantine for rule violations from this batch.
    pub expected_quarantined: u64,
    /// What ingest must count as duplicates from this batch.
    pub expected_duplicates: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    /// True when the batch was already complete with the same options: nothing was written.
    pub skipped: bool,
    pub peak_rss_bytes: u64,
}

/// Written last into the batch folder: its presence means the batch is complete.
#[derive(Serialize, Deserialize)]
struct Manifest {
    config: GenerateConfig,
    report: GenerateReport,
}

const MANIFEST: &str = "_batch.json";
const CHUNK_ROWS: usize = 64 * 1024;
/// Micros in a day.
const DAY_US: i64 = 86_400_000_000;
/// Dirty future timestamps land in 2099: deterministic, and always "more than a day ahead".
const FUTURE_BASE_US: i64 = 4_070_908_800_000_000; // 2099-01-01T00:00:00Z
/// Largest amount a Decimal128(12, 2) holds, in cents.
const MAX_CENTS: i64 = 999_999_999_999;

/// One file to write.
#[derive(Debug, Clone)]
struct Unit {
    day_index: u32,
    part: u32,
    rows: u64,
    path: PathBuf,
}

pub fn run(layout: &Layout, cfg: &GenerateConfig, progress: &Progress) -> Result<GenerateReport> {
    cfg.validate()?;
    let started = Instant::now();
    let batch_dir = layout.raw_batch_dir(cfg.batch);
    let manifest_path = batch_dir.join(MANIFEST);
    if let Some(done) = read_manifest(&manifest_path)? {
        if done.config == *cfg {
            tracing::info!(batch = cfg.batch, "batch already complete; nothing to do");
            return Ok(GenerateReport {
                skipped: true,
                seconds: started.elapsed().as_secs_f64(),
                peak_rss_bytes: crate::progress::peak_rss_bytes(),
                ..done.report
            });
        }
        return Err(Error::Invalid(format!(
            "generate: batch {} already exists in {} with different options; choose a new --batch \
             (or delete that folder if it was never ingested)",
            cfg.batch,
            batch_dir.display()
        )));
    }
    std::fs::create_dir_all(&batch_dir)
        .map_err(|e| Error::io(format!("cannot create {}", batch_dir.display()), e))?;

    // Re-deliveries are copies of earlier batches' rows: decide how many, and take them from
    // the files already in the landing folder (so they are real duplicates).
    let expected_dirty = (cfg.rows as f64 * cfg.dirty_rate).round() as u64;
    let earlier = earlier_batch_files(layout, cfg.batch)?;
    let redeliver = if earlier.is_empty() {
        0
    } else {
        (expected_dirty / (Dirty::IN_FILE.len() as u64 + 1)).min(cfg.rows / 2)
    };
    let units = plan_units(layout, cfg, cfg.rows - redeliver);
    progress.set_length(cfg.rows);

    let next = AtomicUsize::new(0);
    let totals = Mutex::new(GenerateReport::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Shared::new(cfg)?;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.min(units.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(unit) = units.get(i) else {
                            return Ok(());
                        };
                        let (bytes, dirty) = write_unit(cfg, &shared, unit, progress)?;
                        let mut t = totals.lock().expect("no panics while locked");
                        t.files += 1;
                        t.rows += unit.rows;
                        t.bytes += bytes;
                        for (k, v) in dirty {
                            *t.dirty.entry(k).or_default() += v;
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("generator thread panicked")?;
        }
        Ok(())
    })?;
    let mut report = totals.into_inner().expect("threads joined");

    if redeliver > 0 {
        let path = layout.raw_redelivery_file(cfg.batch);
        let (rows, bytes) = write_redelivery(cfg, &earlier, redeliver, &path)?;
        progress.inc(rows);
        report.files += 1;
        report.rows += rows;
        report.bytes += bytes;
        *report
            .dirty
            .entry(Dirty::DuplicateOfEarlierBatch)
            .or_default() += rows;
    }

    report.batch = cfg.batch;
    report.expected_duplicates = report
        .dirty
        .iter()
        .filter(|(k, _)| k.is_duplicate())
        .map(|(_, v)| v)
        .sum();
    report.expected_quarantined = report.dirty.values().sum::<u64>() - report.expected_duplicates;
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = report.rows as f64 / report.seconds.max(1e-9);
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    write_manifest(&manifest_path, cfg, &report)?;
    Ok(report)
}

fn plan_units(layout: &Layout, cfg: &GenerateConfig, rows: u64) -> Vec<Unit> {
    let days = u64::from(cfg.days);
    let mut units = Vec::new();
    for d in 0..cfg.days {
        let day_rows = rows / days + u64::from(u64::from(d) < rows % days);
        let date = cfg.start_date + chrono::Days::new(u64::from(d));
        let parts = day_rows.div_ceil(cfg.rows_per_file);
        for p in 0..parts {
            let start = p * cfg.rows_per_file;
            units.push(Unit {
                day_index: d,
                part: p as u32,
                rows: (day_rows - start).min(cfg.rows_per_file),
                path: layout.raw_day_file(cfg.batch, date, p as u32),
            });
        }
    }
    units
}

/// Distributions shared (read-only) by all generator threads.
struct Shared {
    customers: WeightedAliasIndex<f64>,
    merchants: WeightedAliasIndex<f64>,
    amount: LogNormal<f64>,
    hour: WeightedIndex<u32>,
    category: WeightedIndex<u32>,
    channel: WeightedIndex<u32>,
    writer_props: WriterProperties,
}

impl Shared {
    fn new(cfg: &GenerateConfig) -> Result<Self> {
        let inv = |e: &dyn std::fmt::Display| Error::Invalid(format!("generate: {e}"));
        Ok(Self {
            // A few customers are very active, most are not (Zipf, exponent ~1). An alias
            // table samples in O(1); rejection-sampled Zipf spent its time in `pow`.
            customers: zipf_table(cfg.customers, 1.05).map_err(|e| inv(&e))?,
            merchants: zipf_table(cfg.merchants, 0.8).map_err(|e| inv(&e))?,
            // Median ~ 33.12, long right tail.
            amount: LogNormal::new(3.5, 1.1).map_err(|e| inv(&e))?,
            // Transactions per hour of day (UTC): quiet nights, lunch and evening peaks.
            hour: WeightedIndex::new([
                2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 11, 14, 16, 13, 11, 11, 12, 14, 16, 15, 12, 9, 6, 3,
            ])
            .map_err(|e| inv(&e))?,
            category: WeightedIndex::new([30, 16, 10, 14, 4, 6, 6, 5, 4, 5])
                .map_err(|e| inv(&e))?,
            channel: WeightedIndex::new([40, 45, 15]).map_err(|e| inv(&e))?,
            writer_props: raw_writer_properties(),
        })
    }
}

/// Alias table of a Zipf distribution over ranks 1..=n (sample + 1 is the rank).
fn zipf_table(
    n: u64,
    exponent: f64,
) -> std::result::Result<WeightedAliasIndex<f64>, rand_distr::weighted::Error> {
    WeightedAliasIndex::new((1..=n).map(|k| (k as f64).powf(-exponent)).collect())
}

/// Parquet settings for raw files (see [`crate::schema::writer_properties`]).
pub fn raw_writer_properties() -> WriterProperties {
    schema::writer_properties(Some(128 * 1024))
}

fn unit_seed(seed: u64, batch: u32, day: u32, part: u32) -> u64 {
    // SplitMix64 finaliser over the unit's coordinates: well-mixed, stable across versions.
    let mut z = seed
        ^ (u64::from(batch) << 40)
        ^ (u64::from(day) << 20)
        ^ u64::from(part)
        ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One generated row, kept so that a duplicate can repeat it exactly.
#[derive(Clone, Copy)]
struct Row {
    id: [u8; 36],
    customer: i64,
    merchant: i64,
    ts: i64,
    cents: i64,
    category: &'static str,
    channel: &'static str,
    status: &'static str,
}

fn write_unit(
    cfg: &GenerateConfig,
    shared: &Shared,
    unit: &Unit,
    progress: &Progress,
) -> Result<(u64, BTreeMap<Dirty, u64>)> {
    let mut rng =
        Pcg64Mcg::seed_from_u64(unit_seed(cfg.seed, cfg.batch, unit.day_index, unit.part));
    let day = cfg.start_date + chrono::Days::new(u64::from(unit.day_index));
    let day_start = day.and_time(NaiveTime::MIN).and_utc().timestamp_micros();
    let mut dirty: BTreeMap<Dirty, u64> = BTreeMap::new();
    let mut last_clean: Option<Row> = None;

    let tmp = layout::temp_path(&unit.path);
    let file =
        File::create(&tmp).map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let mut writer = ArrowWriter::try_new(file, RAW.clone(), Some(shared.writer_props.clone()))?;

    let mut left = unit.rows as usize;
    while left > 0 {
        let n = left.min(CHUNK_ROWS);
        left -= n;
        let mut b = Builders::new(n);
        for _ in 0..n {
            let kind = if cfg.dirty_rate > 0.0 && rng.random::<f64>() < cfg.dirty_rate {
                Some(Dirty::IN_FILE[rng.random_range(0..Dirty::IN_FILE.len())])
            } else {
                None
            };
            let row = match (kind, last_clean) {
                (Some(Dirty::DuplicateInBatch), Some(prev)) => {
                    *dirty.entry(Dirty::DuplicateInBatch).or_default() += 1;
                    prev
                }
                (Some(Dirty::DuplicateInBatch), None) | (None, _) => {
                    let r = clean_row(&mut rng, shared, day_start);
                    last_clean = Some(r);
                    r
                }
                (Some(k), _) => {
                    *dirty.entry(k).or_default() += 1;
                    let mut r = clean_row(&mut rng, shared, day_start);
                    spoil(&mut rng, &mut r, k);
                    r
                }
            };
            b.push(&row);
        }
        writer.write(&b.finish()?)?;
        progress.inc(n as u64);
    }
    writer.close()?;
    let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, &unit.path)
        .map_err(|e| Error::io(format!("cannot rename {} into place", tmp.display()), e))?;
    Ok((bytes, dirty))
}

fn clean_row(rng: &mut Pcg64Mcg, s: &Shared, day_start: i64) -> Row {
    let mut id = [0u8; 36];
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut id);
    let hour = s.hour.sample(rng) as i64;
    let ts = day_start + hour * 3_600_000_000 + rng.random_range(0..3_600_000_000);
    let cents = ((s.amount.sample(rng) * 100.0).round() as i64).clamp(1, MAX_CENTS);
    Row {
        id,
        customer: s.customers.sample(rng) as i64 + 1,
        merchant: s.merchants.sample(rng) as i64 + 1,
        ts,
        cents,
        category: CATEGORIES[s.category.sample(rng)],
        channel: CHANNELS[s.channel.sample(rng)],
        // ~5% declined.
        status: if rng.random_range(0..100) < 5 {
            STATUSES[1]
        } else {
            STATUSES[0]
        },
    }
}

/// Break exactly one rule of a clean row, so ingest's first-broken-rule is this kind.
fn spoil(rng: &mut Pcg64Mcg, r: &mut Row, kind: Dirty) {
    match kind {
        Dirty::TransactionIdNotUuid => {
            r.id[8] = b'_'; // "xxxxxxxx_xxxx-...": right length, not a UUID
        }
        Dirty::CustomerIdNotPositive => r.customer = -rng.random_range(0..1000),
        Dirty::MerchantIdNotPositive => r.merchant = -rng.random_range(0..1000),
        Dirty::TransactionTsInFuture => {
            r.ts = FUTURE_BASE_US + rng.random_range(0..365) * DAY_US + r.ts.rem_euclid(DAY_US)
        }
        Dirty::AmountNotPositive => r.cents = -rng.random_range(0..100_000),
        Dirty::CategoryUnknown => r.category = "unknown",
        Dirty::ChannelUnknown => r.channel = "fax",
        Dirty::StatusUnknown => r.status = "pending",
        Dirty::DuplicateInBatch | Dirty::DuplicateOfEarlierBatch => {
            unreachable!("not a spoil kind")
        }
    }
}

struct Builders {
    id: StringBuilder,
    customer: Int64Builder,
    merchant: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    amount: Decimal128Builder,
    category: StringBuilder,
    channel: StringBuilder,
    status: StringBuilder,
}

impl Builders {
    fn new(n: usize) -> Self {
        Self {
            id: StringBuilder::with_capacity(n, n * 36),
            customer: Int64Builder::with_capacity(n),
            merchant: Int64Builder::with_capacity(n),
            ts: TimestampMicrosecondBuilder::with_capacity(n),
            amount: Decimal128Builder::with_capacity(n),
            category: StringBuilder::with_capacity(n, n * 8),
            channel: StringBuilder::with_capacity(n, n * 7),
            status: StringBuilder::with_capacity(n, n * 8),
        }
    }

    fn push(&mut self, r: &Row) {
        self.id
            .append_value(std::str::from_utf8(&r.id).expect("ascii"));
        self.customer.append_value(r.customer);
        self.merchant.append_value(r.merchant);
        self.ts.append_value(r.ts);
        self.amount.append_value(i128::from(r.cents));
        self.category.append_value(r.category);
        self.channel.append_value(r.channel);
        self.status.append_value(r.status);
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.customer.finish()),
            Arc::new(self.merchant.finish()),
            Arc::new(self.ts.finish().with_timezone("UTC")),
            Arc::new(
                self.amount
                    .finish()
                    .with_precision_and_scale(schema::AMOUNT_PRECISION, schema::AMOUNT_SCALE)?,
            ),
            Arc::new(self.category.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.status.finish()),
        ];
        Ok(RecordBatch::try_new(RAW.clone(), cols)?)
    }
}

/// Day files of all batches before `batch`, sorted.
fn earlier_batch_files(layout: &Layout, batch: u32) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for b in 0..batch {
        let dir = layout.raw_batch_dir(b);
        if !dir.join(MANIFEST).exists() {
            continue; // absent or incomplete batch
        }
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for entry in rd {
            let p = entry
                .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?
                .path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if layout::is_landing_candidate(&p) && !name.starts_with("redelivered") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Copy `count` valid rows, picked at random from earlier batches' files, into one file.
/// Reads one source file at a time, so memory stays at one file's worth.
fn write_redelivery(
    cfg: &GenerateConfig,
    sources: &[PathBuf],
    count: u64,
    path: &Path,
) -> Result<(u64, u64)> {
    let mut rng = Pcg64Mcg::seed_from_u64(unit_seed(cfg.seed, cfg.batch, u32::MAX, u32::MAX));
    let mut per_file: BTreeMap<usize, u64> = BTreeMap::new();
    for _ in 0..count {
        *per_file
            .entry(rng.random_range(0..sources.len()))
            .or_default() += 1;
    }
    let tmp = layout::temp_path(path);
    let file =
        File::create(&tmp).map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    let mut writer = ArrowWriter::try_new(file, RAW.clone(), Some(raw_writer_properties()))?;
    let now = chrono::Utc::now().timestamp_micros();
    let mut written = 0u64;
    for (idx, want) in per_file {
        let src = &sources[idx];
        let f =
            File::open(src).map_err(|e| Error::io(format!("cannot open {}", src.display()), e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)?
            .with_batch_size(CHUNK_ROWS)
            .build()?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        let all = concat_batches(&RAW, &batches)?;
        let checked = rules::check(&all, now);
        let valid: Vec<u32> = (0..all.num_rows() as u32)
            .filter(|&i| checked.reasons[i as usize].is_none())
            .collect();
        if valid.is_empty() {
            continue;
        }
        let picks: Vec<u32> = (0..want)
            .map(|_| valid[rng.random_range(0..valid.len())])
            .collect();
        let idx = deltalake::arrow::array::UInt32Array::from(picks);
        let cols = all
            .columns()
            .iter()
            .map(|c| deltalake::arrow::compute::take(c, &idx, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        writer.write(&RecordBatch::try_new(RAW.clone(), cols)?)?;
        written += want;
    }
    writer.close()?;
    let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot rename {} into place", tmp.display()), e))?;
    Ok((written, bytes))
}

fn read_manifest(path: &Path) -> Result<Option<Manifest>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Invalid(format!(
                "{} is not a valid batch manifest: {e}; delete it and rerun",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

fn write_manifest(path: &Path, cfg: &GenerateConfig, report: &GenerateReport) -> Result<()> {
    let body = serde_json::to_vec_pretty(&Manifest {
        config: cfg.clone(),
        report: report.clone(),
    })
    .expect("manifest serialises");
    let tmp = layout::temp_path(path);
    std::fs::write(&tmp, body)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    fn rows_of(dir: &Path) -> Vec<RecordBatch> {
        let mut files: Vec<_> = walk(dir);
        files.sort();
        files
            .iter()
            .flat_map(|p| {
                ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap())
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap())
            })
            .collect()
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if layout::is_landing_candidate(&p) {
                out.push(p);
            }
        }
        out
    }

    fn generate_into(dir: &Path, cfg: &GenerateConfig) -> GenerateReport {
        run(&Layout::new(dir), cfg, &Progress::hidden()).unwrap()
    }

    #[test]
    fn same_seed_same_rows_different_seed_different_rows() {
        let cfg = GenerateConfig {
            rows: 5_000,
            days: 3,
            rows_per_file: 1_000,
            ..Default::default()
        };
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        generate_into(a.path(), &cfg);
        generate_into(b.path(), &cfg);
        generate_into(
            c.path(),
            &GenerateConfig {
                seed: 7,
                ..cfg.clone()
            },
        );
        let (ra, rb, rc) = (rows_of(a.path()), rows_of(b.path()), rows_of(c.path()));
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
        assert_eq!(ra.iter().map(|b| b.num_rows()).sum::<usize>(), 5_000);
    }

    #[test]
    fn distributions_are_within_bounds() {
        let cfg = GenerateConfig {
            rows: 60_000,
            days: 2,
            customers: 1_000,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let report = generate_into(dir.path(), &cfg);
        assert_eq!((report.rows, report.files), (60_000, 2));
        let now = chrono::Utc::now().timestamp_micros();
        let start = cfg
            .start_date
            .and_time(NaiveTime::MIN)
            .and_utc()
            .timestamp_micros();
        let mut per_customer = vec![0u64; cfg.customers as usize + 1];
        let (mut declined, mut n, mut cents) = (0u64, 0u64, Vec::new());
        for b in rows_of(dir.path()) {
            let checked = rules::check(&b, now);
            assert!(
                checked.reasons.iter().all(Option::is_none),
                "clean data must pass every rule"
            );
            let cust = b.column(1).as_primitive::<Int64Type>();
            let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
            let amt = b
                .column(4)
                .as_primitive::<deltalake::arrow::datatypes::Decimal128Type>();
            let status = b.column(7).as_string::<i32>();
            for i in 0..b.num_rows() {
                assert!((1..=cfg.customers as i64).contains(&cust.value(i)));
                assert!((start..start + 2 * DAY_US).contains(&ts.value(i)));
                per_customer[cust.value(i) as usize] += 1;
                declined += u64::from(status.value(i) == "declined");
                cents.push(amt.value(i));
                n += 1;
            }
        }
        let declined_share = declined as f64 / n as f64;
        assert!(
            (0.04..0.06).contains(&declined_share),
            "declined {declined_share}"
        );
        // Zipf: the busiest customer has far more than the median one.
        let mut counts: Vec<_> = per_customer[1..].to_vec();
        counts.sort_unstable();
        assert!(counts[counts.len() - 1] > 20 * counts[counts.len() / 2].max(1));
        // Log-normal amounts: median around 33, mean above median (right skew).
        cents.sort_unstable();
        let median = cents[cents.len() / 2] as f64 / 100.0;
        let mean = cents.iter().sum::<i128>() as f64 / cents.len() as f64 / 100.0;
        assert!((25.0..45.0).contains(&median), "median {median}");
        assert!(mean > median * 1.3, "mean {mean} median {median}");
    }

    #[test]
    fn dirty_rows_are_counted_by_kind_and_break_one_rule_each() {
        let cfg = GenerateConfig {
            rows: 20_000,
            days: 2,
            dirty_rate: 0.1,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let report = generate_into(dir.path(), &cfg);
        assert_eq!(
            report.dirty.len(),
            Dirty::IN_FILE.len(),
            "{:?}",
            report.dirty
        );
        let total: u64 = report.dirty.values().sum();
        assert!((1_700..2_300).contains(&total), "{total}");
        let now = chrono::Utc::now().timestamp_micros();
        let mut rejected: BTreeMap<&str, u64> = BTreeMap::new();
        for b in rows_of(dir.path()) {
            for r in rules::check(&b, now).reasons.into_iter().flatten() {
                *rejected.entry(r.as_str()).or_default() += 1;
            }
        }
        for (kind, n) in &report.dirty {
            if !kind.is_duplicate() {
                let code = serde_json::to_value(kind).unwrap();
                assert_eq!(rejected.get(code.as_str().unwrap()), Some(n), "{kind:?}");
            }
        }
        assert_eq!(rejected.values().sum::<u64>(), report.expected_quarantined);
    }

    #[test]
    fn rerun_of_a_complete_batch_is_a_no_op_and_other_options_are_refused() {
        let cfg = GenerateConfig {
            rows: 1_000,
            days: 1,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let first = generate_into(dir.path(), &cfg);
        let again = generate_into(dir.path(), &cfg);
        assert!(again.skipped && !first.skipped);
        assert_eq!(again.rows, first.rows);
        let err = run(
            &Layout::new(dir.path()),
            &GenerateConfig { rows: 2_000, ..cfg },
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("choose a new --batch"), "{err}");
    }
}
