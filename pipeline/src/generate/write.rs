//! Writing a batch's files: distributions shared by the worker threads, one RNG per file,
//! chunked builders (bounded memory), temporary names renamed into place.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::NaiveTime;
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::file::properties::WriterProperties;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_distr::LogNormal;
use rand_distr::weighted::WeightedAliasIndex;
use rand_pcg::Pcg64Mcg;

use super::GenerateOptions;
use super::plan::Unit;
use super::report::{Dirty, GenerateReport};
use super::upload::Upload;
use crate::error::{Error, Result};
use crate::layout;
use crate::progress::Progress;
use crate::schema::{self, CATEGORIES, CHANNELS, RAW, STATUSES};

pub(super) const CHUNK_ROWS: usize = 64 * 1024;
/// Micros in a day.
const DAY_US: i64 = 86_400_000_000;
/// Dirty future timestamps land in 2099: deterministic, and always "more than a day ahead".
const FUTURE_BASE_US: i64 = 4_070_908_800_000_000; // 2099-01-01T00:00:00Z
/// ... on one of this many days, as a few skewed clocks would: every quarantined day is a
/// partition, and a stream of micro-batches would otherwise add files to hundreds of them.
const FUTURE_DAYS: i64 = 7;
/// Largest amount a Decimal128(12, 2) holds, in cents.
const MAX_CENTS: i64 = 999_999_999_999;

/// Write every unit on all cores; the report counts files, rows, bytes and injected kinds.
pub(super) fn write_units(
    opts: &GenerateOptions,
    units: &[Unit],
    upload: Option<&Upload>,
    progress: &Progress,
) -> Result<GenerateReport> {
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(GenerateReport::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Shared::new(opts)?;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.min(units.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(unit) = units.get(i) else {
                            return Ok(());
                        };
                        let (bytes, dirty) = write_unit(opts, &shared, unit, progress)?;
                        if let Some(up) = upload {
                            up.put_file(&unit.path)?;
                        }
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
    Ok(totals.into_inner().expect("threads joined"))
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
    fn new(cfg: &GenerateOptions) -> Result<Self> {
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

pub(super) fn unit_seed(seed: u64, batch: u32, day: u32, part: u32) -> u64 {
    // SplitMix64 finaliser over the unit's coordinates: well-mixed, stable across versions.
    // The seed is mixed on its own first: XORed in raw, seeds 100 and 101 gave the same
    // files (100 ^ part 1 == 101 ^ part 0), so two "different" feeds were mostly duplicates.
    let z = splitmix(seed) ^ (u64::from(batch) << 40) ^ (u64::from(day) << 20) ^ u64::from(part);
    splitmix(z)
}

/// The SplitMix64 finaliser.
fn splitmix(mut z: u64) -> u64 {
    z ^= 0x9E37_79B9_7F4A_7C15;
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
    cfg: &GenerateOptions,
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
            r.ts =
                FUTURE_BASE_US + rng.random_range(0..FUTURE_DAYS) * DAY_US + r.ts.rem_euclid(DAY_US)
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

/// The generator's rows, as raw columns.
struct Builders(schema::RawBuilders);

impl Builders {
    fn new(n: usize) -> Self {
        Self(schema::RawBuilders::with_capacity(n))
    }

    fn push(&mut self, r: &Row) {
        let b = &mut self.0;
        b.id.append_value(std::str::from_utf8(&r.id).expect("ascii"));
        b.customer.append_value(r.customer);
        b.merchant.append_value(r.merchant);
        b.ts.append_value(r.ts);
        b.amount.append_value(i128::from(r.cents));
        b.category.append_value(r.category);
        b.channel.append_value(r.channel);
        b.status.append_value(r.status);
    }

    fn finish(mut self) -> Result<RecordBatch> {
        Ok(self.0.finish(&RAW)?)
    }
}
