//! The stages, one function each, as both loops run them: the batch run ([`super::run`],
//! through [`summary`]: the stage's line of the run) and the stream ([`super::follow`], which
//! reads more of each stage's own report than a summary holds: landing times, changed
//! files). What differs between the loops is their error policy, which each keeps: the batch
//! run retries a transient failure and stops at any other; the stream records it and goes on
//! with its next micro-batch.

use std::sync::Arc;

use scylla::client::session::Session;

use super::options::{RunOptions, Stage};
use super::report::StageSummary;
use crate::aggregate::{self, AggregateOptions, AggregateReport};
use crate::error::Result;
use crate::generate::{self, GenerateOptions, GenerateReport};
use crate::ingest::{self, IngestOptions, IngestReport};
use crate::layout::Layout;
use crate::load::{self, LoadOptions, LoadReport};
use crate::profiles::{self, ProfilesOptions, ProfilesReport};
use crate::progress::Progress;
use crate::{cql, delta};

/// What the stages keep from one call to the next: the tables they opened (brought up to
/// date by the next call instead of opened afresh, while each is still the same log) and
/// the ScyllaDB session. A batch run keeps them from one stage to the next; a stream, from
/// one micro-batch to the next.
#[derive(Default)]
pub struct Kept {
    /// Ingest's four tables.
    ingest: ingest::Kept,
    /// The tables of the stages after ingest (ingest lends them `customer_transactions`).
    tables: delta::Kept,
    /// Connected, the serving schema created.
    session: Option<Arc<Session>>,
}

impl Kept {
    /// The session, connecting (and creating the schema) when there is none.
    async fn session(&mut self, opts: &LoadOptions) -> Result<Arc<Session>> {
        if let Some(s) = &self.session {
            return Ok(s.clone());
        }
        let s = Arc::new(load::connect(opts).await?);
        self.session = Some(s.clone());
        Ok(s)
    }

    /// The session, when connected (the stream serves the profiles with it).
    pub fn connected(&self) -> Option<Arc<Session>> {
        self.session.clone()
    }
}

/// Generate a batch of landing files (on a blocking thread: it is CPU and file work).
pub async fn generate(
    layout: &Layout,
    opts: &GenerateOptions,
    progress: &Progress,
) -> Result<GenerateReport> {
    let (layout, opts, progress) = (layout.clone(), opts.clone(), progress.clone());
    tokio::task::spawn_blocking(move || generate::run(&layout, &opts, &progress)).await?
}

/// Ingest the new landing files; the stages after it read the table it brought up to date.
pub async fn ingest(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<IngestReport> {
    let r = ingest::run_keeping(layout, opts, progress, &mut kept.ingest).await?;
    kept.ingest.share_transactions(&mut kept.tables);
    Ok(r)
}

/// Bring the aggregates up to date.
pub async fn aggregate(
    layout: &Layout,
    opts: &AggregateOptions,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<AggregateReport> {
    aggregate::run_keeping(layout, opts, progress, &mut kept.tables).await
}

/// Bring the customer profiles up to date.
pub async fn profiles(layout: &Layout, opts: &ProfilesOptions) -> Result<ProfilesReport> {
    profiles::run(layout, opts).await
}

/// Why load does not run, or None when it does: it runs when asked for (named with
/// `--stages`/`--to`, or ScyllaDB configured), or else when ScyllaDB answers.
pub async fn load_skipped(opts: &RunOptions) -> Option<String> {
    if opts.load_requested() || cql::answers(&opts.load.scylla).await {
        return None;
    }
    Some(format!(
        "no ScyllaDB at {}: start one (docker compose up -d scylla) or set SCYLLA_URI",
        opts.load.scylla.scylla_uri
    ))
}

/// Load the aggregates changed since the last loaded version (and the profiles, when
/// `profiles` says so), on the kept session; a failure drops it, so the next call connects
/// again (the node may have been replaced).
pub async fn load(
    layout: &Layout,
    opts: &LoadOptions,
    progress: &Progress,
    kept: &mut Kept,
    profiles: load::Profiles,
) -> Result<LoadReport> {
    let session = kept.session(opts).await?;
    let r = load::run_keeping(&session, layout, opts, progress, &mut kept.tables, profiles).await;
    if r.is_err() {
        kept.session = None;
    }
    r
}

/// Run `stage` as a batch run does (load serves the profiles after the aggregates, or is
/// skipped when ScyllaDB is neither asked for nor answering): the stage's summary.
pub async fn summary(
    layout: &Layout,
    opts: &RunOptions,
    stage: Stage,
    p: &Progress,
    kept: &mut Kept,
) -> Result<StageSummary> {
    Ok(match stage {
        Stage::Generate => StageSummary::of(&generate(layout, &opts.generate_options, p).await?),
        Stage::Ingest => StageSummary::of(&ingest(layout, &opts.ingest, p, kept).await?),
        Stage::Aggregate => StageSummary::of(&aggregate(layout, &opts.aggregate, p, kept).await?),
        Stage::Profiles => StageSummary::of(&profiles(layout, &opts.profiles).await?),
        Stage::Load => match load_skipped(opts).await {
            Some(note) => StageSummary::skipped(stage.name(), note),
            None => {
                let after = load::Profiles::After;
                StageSummary::of(&self::load(layout, &opts.load, p, kept, after).await?)
            }
        },
    })
}
