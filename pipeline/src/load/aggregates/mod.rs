//! Loading `customer_daily_aggregates`: [`plan`] which days (or every row) turn what
//! ScyllaDB may hold into the loaded version, under a claim ([`super::claim`]); [`execute`]
//! the writes and deletes through the [`sender`](super::sender), then record the version.

mod execute;
mod plan;

use std::time::Instant;

use scylla::client::session::Session;

use super::{LoadOptions, LoadReport};
use crate::error::Result;
use crate::layout::Layout;
use crate::progress::Progress;

/// Load the aggregates changed since the versions ScyllaDB may hold; the report of what was
/// done (also in the error of an incomplete load).
pub async fn load(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
    progress: &Progress,
    kept: &mut crate::delta::Kept,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mut plan = plan::plan(layout, session, opts, kept).await?;
    crate::failpoints::pause("load.after_plan");
    let mut report = plan.report(opts);
    let nothing = matches!(plan.work, plan::Work::Nothing | plan::Work::Overtaken);
    if !nothing && !opts.dry_run {
        progress.set_length(report.rows_to_load);
        let done = execute::execute(&mut plan, opts, layout, session, &mut report, progress).await;
        if let Err(e) = done {
            return Err(super::with_report(e, &report.finish(started)));
        }
    }
    Ok(report)
}
