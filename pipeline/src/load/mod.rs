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

mod aggregates;
pub mod claim;
mod options;
mod profiles;
mod report;
mod sender;

use std::time::Instant;

use scylla::client::session::Session;

pub use options::{ErrorBudget, LoadOptions};
pub use profiles::ProfilesLoad;
pub use report::{Counts, Latency, LoadReport};

use crate::cql;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;

/// Connect to ScyllaDB and create the serving schema where it is missing: the session every
/// load runs on (`run --follow` keeps it from one micro-batch to the next).
pub async fn connect(opts: &LoadOptions) -> Result<Session> {
    let session = cql::connect(&opts.scylla).await?;
    cql::schema::init(&session, &opts.scylla).await?;
    Ok(session)
}

/// When the profiles are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profiles {
    /// After the aggregates, in the same load (`pipeline load`, a batch run).
    After,
    /// Apart, by [`serve_profiles`] ( `run --follow` serves them once computed, beside its
    /// micro-batches, so they never delay the aggregates).
    Apart,
}

/// Load the aggregates changed since the last loaded version, then the profiles.
pub async fn run(layout: &Layout, opts: &LoadOptions, progress: &Progress) -> Result<LoadReport> {
    let session = connect(opts).await?;
    let kept = &mut crate::delta::Kept::default();
    run_keeping(&session, layout, opts, progress, kept, Profiles::After).await
}

/// [`run`] over a session the caller keeps (see [`connect`]), with the aggregates table
/// `kept` open by the previous micro-batch of a stream.
pub async fn run_keeping(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
    progress: &Progress,
    kept: &mut crate::delta::Kept,
    profiles: Profiles,
) -> Result<LoadReport> {
    let started = Instant::now();
    let mut report = aggregates::load(session, layout, opts, progress, kept).await?;
    if profiles == Profiles::After && !opts.dry_run {
        report.profiles = serve_profiles(session, layout, opts).await?;
    }
    Ok(report.finish(started))
}

/// An incomplete load's error carries the report of what it did (`--json` prints it).
fn with_report(e: Error, report: &LoadReport) -> Error {
    match e {
        Error::LoadIncomplete {
            what,
            failed,
            over_budget,
            bad_rows_file,
            version,
            ..
        } => Error::LoadIncomplete {
            what,
            failed,
            over_budget,
            bad_rows_file,
            version,
            report: Box::new(serde_json::to_value(report).unwrap_or_default()),
        },
        e => e,
    }
}

/// Serve `customer_profiles` (see [`profiles`]); None when there is no profiles table.
pub async fn serve_profiles(
    session: &Session,
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
