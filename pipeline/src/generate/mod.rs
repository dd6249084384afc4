//! `generate`: deterministic synthetic customer transactions, written as raw Parquet files.
//!
//! Work is split into units (one file each: a day, or a slice of a day), and each unit gets its
//! own RNG seeded from (seed, batch, day, part). So the rows do not depend on how many threads
//! ran or in which order units finished, and any unit can be regenerated on its own. Files are
//! written under a temporary name and renamed into place; the batch manifest is written last.

mod follow;
mod kafka;
mod options;
mod plan;
mod redeliver;
mod report;
mod upload;
mod write;

use std::time::Instant;

pub use follow::{FollowGenerate, FollowGenerateReport, run as follow};
pub use options::GenerateOptions;
pub use report::{Dirty, GenerateReport};
pub use write::raw_writer_properties;

use crate::error::Result;
use crate::layout::Layout;
use crate::progress::Progress;

/// Write one batch (or find it complete and do nothing).
pub fn run(layout: &Layout, opts: &GenerateOptions, progress: &Progress) -> Result<GenerateReport> {
    opts.validate()?;
    let started = Instant::now();
    let upload = upload::Upload::of(layout)?;
    let plan = match plan::plan(layout, opts, upload.as_ref())? {
        plan::Plan::Done(report) => return Ok(report.finish(started)),
        plan::Plan::Write(p) => p,
    };
    progress.set_length(opts.rows);
    let mut report = write::write_units(opts, &plan.units, upload.as_ref(), progress)?;
    if plan.redeliver > 0 {
        redeliver::write(
            opts,
            layout,
            &plan.earlier,
            plan.redeliver,
            upload.as_ref(),
            &mut report,
        )?;
        progress.inc(plan.redeliver);
    }
    let report = report.tally(opts.batch).finish(started);
    plan::write_manifest(layout, opts, &report, upload.as_ref())?;
    if let Some(up) = &upload {
        up.clean(&layout.raw_batch_dir(opts.batch));
    }
    Ok(report)
}

impl GenerateReport {
    /// Sum up the injected kinds into what ingest must find.
    fn tally(mut self, batch: u32) -> Self {
        self.batch = batch;
        self.expected_duplicates = self
            .dirty
            .iter()
            .filter(|(k, _)| k.is_duplicate())
            .map(|(_, v)| v)
            .sum();
        self.expected_quarantined = self.dirty.values().sum::<u64>() - self.expected_duplicates;
        self
    }

    fn finish(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self.rows_per_sec = crate::report::per_sec(self.rows, self.seconds);
        self.peak_rss_bytes = crate::progress::peak_rss_bytes();
        self
    }
}

#[cfg(test)]
mod tests;
