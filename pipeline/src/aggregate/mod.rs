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

/// The `commitInfo` key recording how a commit computed the days it replaced: `full`,
/// `recompute` or [`APPEND_MERGE`].
pub const MODE_KEY: &str = "pipeline.aggregate_mode";

/// The mode of a merge of appended rows. A row then changes only when rows counted in it
/// arrive, and its counts only grow, so a row equal at two versions is equal at every
/// version in between: `load` relies on it to write only the rows that changed.
pub const APPEND_MERGE: &str = "append_merge";

pub use execute::QUERY;
pub use options::AggregateOptions;
pub use report::AggregateReport;

use crate::error::Result;
use crate::layout::Layout;
use crate::progress::Progress;

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
            report.table_version = Some(execute::record_version(&p).await?);
            report.source_version = Some(p.version);
        }
        plan::Work::Merge { days, added } => {
            let out = execute::merge(&p, &days, &added, progress).await?;
            report.mode = APPEND_MERGE;
            report.days_recomputed = out.days;
            report.rows_read = out.rows_read;
            report.passes = out.passes;
            report.rows_written = out.rows_written;
            report.bytes_written = out.bytes_written;
            report.table_version = Some(out.version);
            report.source_version = Some(p.version);
        }
        plan::Work::Recompute(days) => {
            let out = execute::recompute(&p, days.as_ref(), opts.rows_per_pass, progress).await?;
            report.mode = if days.is_some() { "recompute" } else { "full" };
            report.full_rebuild = days.is_none();
            report.days_recomputed = out.days;
            report.rows_read = out.rows_read;
            report.passes = out.passes;
            report.rows_written = out.rows_written;
            report.bytes_written = out.bytes_written;
            report.table_version = Some(out.version);
            report.source_version = Some(p.version);
        }
    }
    if let Some(v) = report.table_version {
        report.warnings.extend(
            crate::delta::commit::checkpoint_if_due(
                &mut p.target,
                crate::tables::Table::Aggregates,
                v - 1,
            )
            .await,
        );
    }
    if opts.source_version.is_none() {
        kept.keep(crate::tables::Table::Transactions, &p.source)
            .await;
    }
    kept.keep(crate::tables::Table::Aggregates, &p.target).await;
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = crate::report::per_sec(report.rows_read, report.seconds);
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    Ok(report)
}
