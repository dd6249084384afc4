//! What a batch will write: its files (units), how many rows are re-deliveries, and whether
//! the batch is already complete (its manifest).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GenerateOptions;
use super::redeliver;
use super::report::{Dirty, GenerateReport};
use super::upload::Upload;
use crate::error::{Error, Result};
use crate::layout::{self, Layout};

/// Written last into the batch folder: its presence means the batch is complete.
#[derive(Serialize, Deserialize)]
struct Manifest {
    config: GenerateOptions,
    report: GenerateReport,
}

const MANIFEST: &str = "_batch.json";

/// One file to write.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    pub day_index: u32,
    pub part: u32,
    pub rows: u64,
    pub path: PathBuf,
}

/// The files to write and the re-deliveries to copy.
pub(super) struct WritePlan {
    pub units: Vec<Unit>,
    /// Rows copied from earlier batches' files.
    pub redeliver: u64,
    /// Those files.
    pub earlier: Vec<PathBuf>,
}

pub(super) enum Plan {
    /// The batch is complete with the same options.
    Done(GenerateReport),
    Write(WritePlan),
}

pub(super) fn plan(
    layout: &Layout,
    opts: &GenerateOptions,
    upload: Option<&Upload>,
) -> Result<Plan> {
    let batch_dir = layout.raw_batch_dir(opts.batch);
    if let Some(done) = read_manifest(&batch_dir.join(MANIFEST), upload)? {
        if done.config == *opts {
            tracing::info!(batch = opts.batch, "batch already complete; nothing to do");
            return Ok(Plan::Done(GenerateReport {
                skipped: true,
                ..done.report
            }));
        }
        return Err(Error::Invalid(format!(
            "generate: batch {} already exists in {} with different options; choose a new --batch \
             (or delete that folder if it was never ingested)",
            opts.batch,
            batch_dir.display()
        )));
    }
    std::fs::create_dir_all(&batch_dir)
        .map_err(|e| Error::io(format!("cannot create {}", batch_dir.display()), e))?;
    // Re-deliveries are copies of earlier batches' rows: decide how many, and take them from
    // the files already in the landing folder (so they are real duplicates).
    let expected_dirty = (opts.rows as f64 * opts.dirty_rate).round() as u64;
    let earlier = redeliver::earlier_batch_files(layout, opts.batch, MANIFEST, upload)?;
    let redeliver = if earlier.is_empty() {
        0
    } else {
        (expected_dirty / (Dirty::IN_FILE.len() as u64 + 1)).min(opts.rows / 2)
    };
    Ok(Plan::Write(WritePlan {
        units: units(layout, opts, opts.rows - redeliver),
        redeliver,
        earlier,
    }))
}

/// `rows` spread evenly over the days, each day cut into files of at most `rows_per_file`.
fn units(layout: &Layout, opts: &GenerateOptions, rows: u64) -> Vec<Unit> {
    let days = u64::from(opts.days);
    let mut units = Vec::new();
    for d in 0..opts.days {
        let day_rows = rows / days + u64::from(u64::from(d) < rows % days);
        let date = opts.start_date + chrono::Days::new(u64::from(d));
        let parts = day_rows.div_ceil(opts.rows_per_file);
        for p in 0..parts {
            let start = p * opts.rows_per_file;
            units.push(Unit {
                day_index: d,
                part: p as u32,
                rows: (day_rows - start).min(opts.rows_per_file),
                path: layout.raw_day_file(opts.batch, date, p as u32),
            });
        }
    }
    units
}

fn read_manifest(path: &Path, upload: Option<&Upload>) -> Result<Option<Manifest>> {
    let read = match upload {
        Some(up) => match up.get(path)? {
            Some(bytes) => Ok(bytes.to_vec()),
            None => return Ok(None),
        },
        None => std::fs::read(path),
    };
    match read {
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

/// Mark the batch complete: the manifest, written atomically, last.
pub(super) fn write_manifest(
    layout: &Layout,
    opts: &GenerateOptions,
    report: &GenerateReport,
    upload: Option<&Upload>,
) -> Result<()> {
    let path = layout.raw_batch_dir(opts.batch).join(MANIFEST);
    let body = serde_json::to_vec_pretty(&Manifest {
        config: opts.clone(),
        report: report.clone(),
    })
    .expect("manifest serialises");
    if let Some(up) = upload {
        return up.put(&path, body);
    }
    let tmp = layout::temp_path(&path);
    std::fs::write(&tmp, body)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}
