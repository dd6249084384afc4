//! `load`: the Delta aggregates into ScyllaDB, exactly: after a load the serving table holds
//! the aggregates' rows of the loaded version, no more, no less.
//!
//! The progress record (`pipeline_load_progress`) names the Delta table served (its id) and
//! its last version fully loaded, recorded only after every write of that version succeeded,
//! with a lightweight transaction that never moves it backwards. A load writes the days
//! changed since that version and deletes the rows that vanished from them; a first load, a
//! load of another table (deleted and rebuilt) or one whose history is gone writes every row
//! and deletes every older one. All writes of a version carry the timestamp
//! `base + version`, so when two loads run at once the newer version wins row by row.

mod execute;
mod options;
mod plan;
mod profiles;
mod report;

use std::collections::BTreeSet;
use std::time::Instant;

pub use options::{ErrorBudget, LoadOptions};
pub use profiles::ProfilesLoad;
pub use report::{Counts, Latency, LoadReport};

use crate::cql;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;

/// Load the aggregates changed since the last loaded version, then the profiles.
pub async fn run(layout: &Layout, opts: &LoadOptions, progress: &Progress) -> Result<LoadReport> {
    let session = cql::connect(&opts.scylla).await?;
    cql::schema::init(&session, &opts.scylla).await?;
    let started = Instant::now();
    let mut report = run_on(&session, layout, opts, progress).await?;
    if !opts.dry_run {
        report.profiles = serve_profiles(&session, layout, opts).await?;
        report = report.finish(started);
    }
    Ok(report)
}

/// The aggregates part of [`run`] over a session the caller keeps (connected, schema
/// created), as `run --follow` does across micro-batches (it serves the profiles with
/// [`serve_profiles`] after computing them, so they never delay the aggregates).
pub async fn run_on(
    session: &scylla::client::session::Session,
    layout: &Layout,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<LoadReport> {
    let started = Instant::now();
    let plan = plan::plan(layout, session, &opts.scylla.keyspace, opts.dry_run).await?;
    crate::failpoints::pause("load.after_plan");
    let mut report = LoadReport {
        keyspace: opts.scylla.keyspace.clone(),
        table_id: plan.table_id.clone(),
        aggregates_version: Some(plan.version),
        previous_version: plan.previous,
        full_load: matches!(plan.work, plan::Work::Full { .. }),
        overtaken: matches!(plan.work, plan::Work::Overtaken),
        days: plan
            .files
            .iter()
            .filter_map(|f| f.day)
            .collect::<BTreeSet<_>>()
            .len() as u64,
        files: plan.files.len() as u64,
        rows_to_load: plan.files.iter().map(|f| f.rows).sum(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let nothing = matches!(plan.work, plan::Work::Nothing | plan::Work::Overtaken);
    if !nothing && !opts.dry_run {
        progress.set_length(report.rows_to_load);
        match execute::execute(&plan, opts, layout, session, &mut report, progress).await {
            Ok(()) => {}
            Err(Error::LoadIncomplete {
                failed,
                over_budget,
                bad_rows_file,
                version,
                ..
            }) => {
                let report = report.finish(started);
                return Err(Error::LoadIncomplete {
                    failed,
                    over_budget,
                    bad_rows_file,
                    version,
                    report: Box::new(serde_json::to_value(&report).unwrap_or_default()),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report.finish(started))
}

/// Serve `customer_profiles` (see [`profiles`]); None when there is no profiles table.
pub async fn serve_profiles(
    session: &scylla::client::session::Session,
    layout: &Layout,
    opts: &LoadOptions,
) -> Result<Option<ProfilesLoad>> {
    profiles::serve(session, layout, opts).await
}

impl LoadReport {
    fn finish(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self.rows_per_sec = crate::report::per_sec(self.counts.rows_written, self.seconds);
        self.peak_rss_bytes = crate::progress::peak_rss_bytes();
        self
    }
}
