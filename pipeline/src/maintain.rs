//! `pipeline maintain`: compaction (OPTIMIZE), checkpoints and VACUUM for every table.
//!
//! Incremental batches leave many small files and long logs. Compaction rewrites small files
//! into larger ones in a `dataChange: false` commit, which the incremental stages already
//! ignore (it touches no day), so nothing downstream recomputes. VACUUM is a dry run unless
//! asked, and keeps files younger than the retention (default 7 days): a shorter one can
//! delete files a concurrent writer has written but not yet committed, or that time travel
//! still needs.

use std::time::Instant;

use deltalake::DeltaTableBuilder;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::Layout;

#[derive(Debug, Clone)]
pub struct MaintainOptions {
    pub optimize: bool,
    pub checkpoint: bool,
    /// Delete files; false lists what would be deleted.
    pub vacuum: bool,
    pub retention_hours: u64,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        Self {
            optimize: true,
            checkpoint: true,
            vacuum: false,
            retention_hours: 7 * 24,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableMaintenance {
    pub table: String,
    pub version_before: i64,
    pub version_after: i64,
    pub files_before: u64,
    pub files_after: u64,
    pub files_compacted: u64,
    pub files_written: u64,
    pub checkpoint_version: Option<i64>,
    pub vacuum_dry_run: bool,
    /// Files deleted (or, in a dry run, that would be).
    pub vacuum_files: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintainReport {
    pub retention_hours: u64,
    pub tables: Vec<TableMaintenance>,
    pub seconds: f64,
}

/// The tables under the data dir: (name, folder).
fn tables(layout: &Layout) -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        (crate::ingest::TABLE, layout.transactions_dir()),
        (crate::ingest::QUARANTINE_TABLE, layout.quarantine_dir()),
        (crate::aggregate::TABLE, layout.aggregates_dir()),
        (crate::run::HISTORY_TABLE, layout.history_dir()),
    ]
}

pub async fn run(layout: &Layout, opts: &MaintainOptions) -> Result<MaintainReport> {
    let started = Instant::now();
    let mut report = MaintainReport {
        retention_hours: opts.retention_hours,
        ..Default::default()
    };
    for (name, dir) in tables(layout) {
        if !dir.join("_delta_log").is_dir() {
            continue;
        }
        let t0 = Instant::now();
        let uri = crate::layout::dir_uri(&dir).map_err(|e| Error::delta(name, e))?;
        let mut table = DeltaTableBuilder::from_url(uri)
            .map_err(|e| Error::delta(name, e))?
            .load()
            .await
            .map_err(|e| Error::delta(name, e))?;
        let count = |t: &deltalake::DeltaTable| -> Result<u64> {
            Ok(t.snapshot()
                .map_err(|e| Error::delta(name, e))?
                .log_data()
                .iter()
                .count() as u64)
        };
        let mut m = TableMaintenance {
            table: name.to_string(),
            version_before: table.version().unwrap_or(0) as i64,
            files_before: count(&table)?,
            vacuum_dry_run: !opts.vacuum,
            ..Default::default()
        };
        if opts.optimize {
            let (t, metrics) = table
                .optimize()
                .with_writer_properties(crate::schema::writer_properties(None))
                .await
                .map_err(|e| Error::delta(name, e))?;
            m.files_compacted = metrics.num_files_removed;
            m.files_written = metrics.num_files_added;
            table = t;
        }
        if opts.checkpoint {
            deltalake::checkpoints::create_checkpoint(&table, None)
                .await
                .map_err(|e| Error::delta(name, e))?;
            m.checkpoint_version = table.version().map(|v| v as i64);
        }
        let (t, metrics) = table
            .vacuum()
            .with_retention_period(chrono::Duration::hours(opts.retention_hours as i64))
            .with_enforce_retention_duration(false)
            .with_dry_run(!opts.vacuum)
            .await
            .map_err(|e| Error::delta(name, e))?;
        m.vacuum_files = metrics.files_deleted.len() as u64;
        table = t;
        m.version_after = table.version().unwrap_or(0) as i64;
        m.files_after = count(&table)?;
        m.seconds = t0.elapsed().as_secs_f64();
        report.tables.push(m);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
