//! `pipeline maintain`: for every table, compaction, a checkpoint, expired-log cleanup, and
//! VACUUM of files no longer needed.
//!
//! First, ingest's interrupted runs are completed (their recorded files committed), so
//! nothing below can remove a file a run still needs. Compaction rewrites small files into
//! larger ones in a `dataChange: false` commit, which the incremental stages ignore (it
//! touches no day); the id index is compacted by merging its sorted files instead (a plain
//! bin-packing would unsort them). VACUUM runs in *full* mode: it deletes files removed from
//! the table more than `--retention-hours` ago and files the log never referenced (written
//! by killed runs) once they are older than the retention and at least an hour old, so a
//! file a running stage has written but not yet committed is never one of them. It only
//! lists what it would delete unless `--vacuum` is given.

pub mod retention;
mod tiers;

use std::time::Instant;

use clap::Args;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use serde::Serialize;

use crate::delta;
use crate::error::{Error, Result};
use crate::ingest;
use crate::layout::Layout;
use crate::report::{Report, Summary, version};
use crate::tables::Table;

/// Unreferenced files younger than this are kept whatever the retention: a stage may have
/// written them and not committed yet.
const ORPHAN_MIN_AGE_HOURS: u64 = 1;

/// What maintain does.
#[derive(Debug, Clone, Args)]
pub struct MaintainOptions {
    /// Really delete files older than the retention (default: only list them).
    #[arg(long)]
    pub vacuum: bool,
    /// Keep files removed less than this many hours ago (time travel, concurrent readers).
    #[arg(long, default_value_t = 168)]
    pub retention_hours: u64,
    /// Skip compaction.
    #[arg(long)]
    pub no_optimize: bool,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

/// What maintain did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableMaintenance {
    /// The table.
    pub table: String,
    /// Its version before.
    pub version_before: i64,
    /// Its version after.
    pub version_after: i64,
    /// Live files before.
    pub files_before: u64,
    /// Live files after.
    pub files_after: u64,
    /// Files compacted away.
    pub files_compacted: u64,
    /// Files compaction wrote.
    pub files_written: u64,
    /// The checkpoint's version.
    pub checkpoint_version: Option<i64>,
    /// Log files removed (older than the table's log retention, before a checkpoint).
    pub logs_cleaned: u64,
    /// Whether VACUUM only listed.
    pub vacuum_dry_run: bool,
    /// Files deleted (or, in a dry run, that would be): removed ones and unreferenced ones.
    pub vacuum_files: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What maintain did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintainReport {
    /// The retention used.
    pub retention_hours: u64,
    /// Interrupted ingest runs completed first.
    pub caught_up_commits: u64,
    /// Per table.
    pub tables: Vec<TableMaintenance>,
    /// Wall time.
    pub seconds: f64,
}

impl Report for MaintainReport {
    fn stage(&self) -> &'static str {
        "maintain"
    }

    fn skipped(&self) -> bool {
        self.tables.is_empty()
    }

    fn text(&self) -> String {
        let mut s = format!(
            "maintain: {} table(s) in {:.2} s (vacuum retention {} h)",
            self.tables.len(),
            self.seconds,
            self.retention_hours
        );
        for t in &self.tables {
            s.push_str(&format!(
                "\n  {}: version {} -> {}, files {} -> {} ({} compacted into {}), checkpoint at {}, {} log file(s) cleaned, vacuum {} {} file(s)",
                t.table,
                t.version_before,
                t.version_after,
                t.files_before,
                t.files_after,
                t.files_compacted,
                t.files_written,
                version(t.checkpoint_version),
                t.logs_cleaned,
                if t.vacuum_dry_run { "would delete" } else { "deleted" },
                t.vacuum_files
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            files: self.tables.iter().map(|t| t.vacuum_files).sum(),
            note: format!("{} table(s)", self.tables.len()),
            ..Default::default()
        }
    }
}

/// Maintain every table that exists.
pub async fn run(layout: &Layout, opts: &MaintainOptions) -> Result<MaintainReport> {
    let started = Instant::now();
    // Waits for a stream's compaction in progress (seconds), then holds it to the end.
    let _lock = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || crate::lock::CompactionLock::take(&layout, true))
            .await??
    };
    let mut report = MaintainReport {
        retention_hours: opts.retention_hours,
        caught_up_commits: ingest::complete_interrupted_runs(layout).await?,
        ..Default::default()
    };
    for table in Table::ALL {
        let Some(t) = delta::open(layout, table).await? else {
            continue;
        };
        report.tables.push(maintain(t, table, opts).await?);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Compact `table`'s files (a `dataChange: false` commit that readers and the incremental
/// stages ignore): what `run --follow` does on its cadence, when no other process is
/// compacting (else it returns 0 and the next cadence tries again). The id index merges its
/// sorted files by tier; the transactions and quarantine tables merge files of similar size
/// ([`tiers`]). Returns the files rewritten.
pub async fn compact(layout: &Layout, table: Table) -> Result<u64> {
    let Some(_lock) = crate::lock::CompactionLock::take(layout, false)? else {
        return Ok(0);
    };
    let Some(t) = delta::open(layout, table).await? else {
        return Ok(0);
    };
    if table == Table::TransactionIds {
        // Sorted runs, merged by tier (the largest merges are left to this, not to ingest).
        return ingest::compact_index(&t).await;
    }
    tiers::merge(&t, table).await
}

/// Commit properties without delta-rs's post-commit hooks (see `delta::commit`).
pub(crate) fn no_hooks() -> CommitProperties {
    CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

async fn maintain(
    mut t: DeltaTable,
    table: Table,
    opts: &MaintainOptions,
) -> Result<TableMaintenance> {
    let t0 = Instant::now();
    let name = table.name();
    let count = |t: &DeltaTable| -> Result<u64> { Ok(delta::files(t, table, None)?.len() as u64) };
    let mut m = TableMaintenance {
        table: name.to_string(),
        version_before: delta::version(&t),
        files_before: count(&t)?,
        vacuum_dry_run: !opts.vacuum,
        ..Default::default()
    };
    if !opts.no_optimize {
        if table == Table::TransactionIds {
            m.files_compacted = ingest::compact_index(&t).await?;
            m.files_written = u64::from(m.files_compacted > 0);
        } else {
            let (after, metrics) = t
                .optimize()
                .with_writer_properties(crate::schema::writer_properties(None))
                .with_commit_properties(no_hooks())
                .await
                .map_err(|e| Error::delta(name, e))?;
            m.files_compacted = metrics.num_files_removed;
            m.files_written = metrics.num_files_added;
            t = after;
        }
        t.update_incremental(None)
            .await
            .map_err(|e| Error::delta(name, e))?;
    }
    deltalake::checkpoints::create_checkpoint(&t, None)
        .await
        .map_err(|e| Error::delta(name, e))?;
    m.checkpoint_version = Some(delta::version(&t));
    m.logs_cleaned = deltalake::checkpoints::cleanup_metadata(&t, None)
        .await
        .map_err(|e| Error::delta(name, e))? as u64;
    m.vacuum_files = vacuum(&mut t, table, opts).await?;
    m.version_after = delta::version(&t);
    m.files_after = count(&t)?;
    m.seconds = t0.elapsed().as_secs_f64();
    Ok(m)
}

/// Removed files past the retention (lite), then unreferenced ones past the retention and
/// [`ORPHAN_MIN_AGE_HOURS`] (full). Returns the files deleted (or listed).
async fn vacuum(t: &mut DeltaTable, table: Table, opts: &MaintainOptions) -> Result<u64> {
    // A dry run lists removed files in both passes: count each once.
    let mut deleted = std::collections::BTreeSet::new();
    for (mode, hours) in [
        (VacuumMode::Lite, opts.retention_hours),
        (
            VacuumMode::Full,
            opts.retention_hours.max(ORPHAN_MIN_AGE_HOURS),
        ),
    ] {
        let (after, metrics) = t
            .clone()
            .vacuum()
            .with_mode(mode)
            .with_retention_period(chrono::Duration::hours(hours as i64))
            .with_enforce_retention_duration(false)
            .with_dry_run(!opts.vacuum)
            .with_commit_properties(no_hooks())
            .await
            .map_err(|e| Error::delta(table.name(), e))?;
        deleted.extend(metrics.files_deleted);
        *t = after;
    }
    Ok(deleted.len() as u64)
}
