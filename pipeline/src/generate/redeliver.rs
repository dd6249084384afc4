//! Re-deliveries: exact copies of valid rows of earlier batches, the duplicates a real feed
//! sends again. Read one source file at a time, so memory stays at one file's worth.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::concat_batches;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::GenerateOptions;
use super::report::{Dirty, GenerateReport};
use super::upload::{self, Upload};
use super::write::{CHUNK_ROWS, raw_writer_properties, unit_seed};
use crate::error::{Error, Result};
use crate::layout::{self, Layout};
use crate::rules;
use crate::schema::RAW;

/// Copy `count` valid rows of earlier batches into this batch's re-delivery file.
pub(super) fn write(
    opts: &GenerateOptions,
    layout: &Layout,
    sources: &[PathBuf],
    count: u64,
    upload: Option<&Upload>,
    report: &mut GenerateReport,
) -> Result<()> {
    let path = layout.raw_redelivery_file(opts.batch);
    let (rows, bytes) = write_redelivery(opts, sources, count, &path, upload)?;
    if let Some(up) = upload {
        up.put_file(&path)?;
    }
    report.files += 1;
    report.rows += rows;
    report.bytes += bytes;
    *report
        .dirty
        .entry(Dirty::DuplicateOfEarlierBatch)
        .or_default() += rows;
    Ok(())
}

/// Re-deliveries come from at most this many batches before: `generate --follow` lands a
/// batch a second, and listing every earlier one would grow without bound.
const WINDOW: u32 = 256;

/// Day files of the (up to [`WINDOW`]) batches before `batch`, sorted.
pub(super) fn earlier_batch_files(
    layout: &Layout,
    batch: u32,
    manifest: &str,
    upload: Option<&Upload>,
) -> Result<Vec<PathBuf>> {
    if let Some(up) = upload {
        return earlier_batch_objects(layout, batch, manifest, up);
    }
    let mut files = Vec::new();
    for b in batch.saturating_sub(WINDOW)..batch {
        let dir = layout.raw_batch_dir(b);
        if !dir.join(manifest).exists() {
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

/// [`earlier_batch_files`] on an object store: staging paths of the objects (read with
/// [`upload::read`]). One listing of the landing folder, then one per complete batch.
fn earlier_batch_objects(
    layout: &Layout,
    batch: u32,
    manifest: &str,
    up: &Upload,
) -> Result<Vec<PathBuf>> {
    let window = batch.saturating_sub(WINDOW)..batch;
    let mut files = Vec::new();
    for name in up.names(&layout.raw_dir())? {
        let Some(b) = name
            .strip_prefix("batch-")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !window.contains(&b) {
            continue;
        }
        let dir = layout.raw_batch_dir(b);
        let names = up.names(&dir)?;
        if !names.iter().any(|n| n == manifest) {
            continue; // incomplete batch
        }
        for n in names {
            let p = dir.join(&n);
            if layout::is_landing_candidate(&p) && !n.starts_with("redelivered") {
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
    cfg: &GenerateOptions,
    sources: &[PathBuf],
    count: u64,
    path: &Path,
    upload: Option<&Upload>,
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
    let now = rules::Limits::no_floor(chrono::Utc::now());
    let mut written = 0u64;
    for (idx, want) in per_file {
        let src = &sources[idx];
        let f = upload::read(upload, src)?;
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
