//! `aggregate`: daily per-customer totals of `customer_transactions`, maintained incrementally
//! in the Delta table `customer_daily_aggregates` with DataFusion.
//!
//! The target table records the source table's identity and the source version it reflects
//! as an application transaction (`pipeline.aggregate:<source table id>`), in the same commit
//! as the aggregates. A run reads the source commits after that version from the Delta log
//! (add/remove actions only, no data scan), recomputes exactly the `transaction_date`s they
//! touched, and replaces those days in one commit. Killed at any point, the table is either
//! the old version or the new one. A source that was deleted and recreated is another table
//! (another id): the aggregates are rebuilt from it.
//!
//! When the source commits since only added rows (ingest appends; a quarantine or delete
//! removes), the run aggregates the added files alone and merges the result into their
//! days' aggregates (sums and counts add, minima and maxima combine): the cost follows the
//! new rows, not the size of the days, which is what keeps a continuous run fast.

mod execute;
mod options;
mod plan;
mod report;

use std::time::Instant;

pub use execute::QUERY;
pub use options::AggregateOptions;
pub use report::AggregateReport;

use crate::delta::keys;
use crate::error::Result;
use crate::layout::Layout;
use crate::progress::Progress;
use crate::tables::Table;

/// Bring the aggregates up to date with `customer_transactions` (or to `--source-version`).
pub async fn run(
    layout: &Layout,
    opts: &AggregateOptions,
    progress: &Progress,
) -> Result<AggregateReport> {
    run_keeping(layout, opts, progress, &mut crate::delta::Kept::default()).await
}

/// [`run`], with the tables `kept` open by the previous micro-batch of a stream (kept for the
/// next one when this run succeeds).
pub async fn run_keeping(
    layout: &Layout,
    opts: &AggregateOptions,
    progress: &Progress,
    kept: &mut crate::delta::Kept,
) -> Result<AggregateReport> {
    let started = Instant::now();
    let mut p = plan::plan(layout, opts, kept).await?;
    let mut report = p.report();
    match p.work.take() {
        plan::Work::Nothing => {}
        plan::Work::RecordVersion => {
            report.table_version = Some(p.d.record_version(p.version).await?);
            report.source_version = Some(p.version);
        }
        plan::Work::Merge { days, added } => {
            let out = execute::merge(&p, &days, &added, progress).await?;
            took(&mut report, keys::APPEND_MERGE, &out, p.version);
        }
        plan::Work::Recompute(days) => {
            let out = execute::recompute(&p, days.as_ref(), opts.rows_per_pass, progress).await?;
            report.full_rebuild = days.is_none();
            let mode = if days.is_some() { "recompute" } else { "full" };
            took(&mut report, mode, &out, p.version);
        }
    }
    if let Some(v) = report.table_version {
        report.warnings.extend(p.d.checkpoint(v).await);
    }
    if opts.source_version.is_none() {
        kept.keep(Table::Transactions, &p.d.source).await;
    }
    kept.keep(Table::Aggregates, &p.d.target).await;
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = crate::report::per_sec(report.rows_read, report.seconds);
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    Ok(report)
}

/// Take what a merge or recomputation (in `mode`) did into the report.
fn took(report: &mut AggregateReport, mode: &'static str, out: &execute::Recomputed, source: i64) {
    report.mode = mode;
    report.days_recomputed = out.days;
    report.rows_read = out.rows_read;
    report.passes = out.passes;
    report.rows_written = out.rows_written;
    report.bytes_written = out.bytes_written;
    report.table_version = Some(out.version);
    report.source_version = Some(source);
}
