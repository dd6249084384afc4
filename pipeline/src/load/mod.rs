//! `load`: the Delta aggregates into ScyllaDB, exactly: after a load the serving table holds
//! the aggregates' rows of the loaded version, no more, no less.
//!
//! The serving protocol ([`claim`]) needs no lightweight transaction, so it works on every
//! ScyllaDB and Cassandra (ScyllaDB refuses LWT in tablet keyspaces, its default since 6.0):
//! every write of a version carries the timestamp `base + version` of its serving epoch, so
//! the newest version wins row by row; a load marks itself before its first write, and the
//! next load makes the writes of every marked load good; the version is recorded (at the
//! same timestamp) only after every write of it succeeded. A load writes the days changed
//! since the versions ScyllaDB may hold and deletes the rows that vanished from them; a first
//! load, another table or history, an unreadable old version or `--repair` writes every row
//! and deletes every older one.

mod claim;
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
    run_keeping(
        session,
        layout,
        opts,
        progress,
        &mut crate::delta::Kept::default(),
    )
    .await
}

/// [`run_on`], with the aggregates table `kept` open by the previous micro-batch of a stream.
pub async fn run_keeping(
    session: &scylla::client::session::Session,
    layout: &Layout,
    opts: &LoadOptions,
    progress: &Progress,
    kept: &mut crate::delta::Kept,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mut plan = plan::plan(layout, session, opts, kept).await?;
    crate::failpoints::pause("load.after_plan");
    let mut report = LoadReport {
        keyspace: opts.scylla.keyspace.clone(),
        table_id: plan.table_id.clone(),
        aggregates_version: Some(plan.version),
        previous_version: plan.previous,
        full_load: matches!(plan.work, plan::Work::Full { .. }),
        full_because: plan.full_because.clone(),
        loads_made_good: plan.made_good,
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
        match execute::execute(&mut plan, opts, layout, session, &mut report, progress).await {
            Ok(()) => {}
            Err(Error::LoadIncomplete {
                what,
                failed,
                over_budget,
                bad_rows_file,
                version,
                ..
            }) => {
                let report = report.finish(started);
                return Err(Error::LoadIncomplete {
                    what,
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
