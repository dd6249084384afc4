//! `ingest`: raw Parquet files -> Delta `customer_transactions` (+ quarantine), exactly once.
//!
//! A run, as its steps below:
//! 1. **Catch up**: commit what an interrupted run recorded but did not finish ([`commit`]).
//! 2. **Check the id index** against the table's row count; rebuild it if they differ.
//! 3. **Discover** the new landing files, and those changed since they were ingested.
//! 4. **Plan**: footers, schema check, row groups sorted into days ([`plan`]).
//! 5. **Decide** which rows are duplicates, across the whole table ([`verdicts`]).
//! 6. **Write** each day's files, good rows and quarantined ones ([`write`]).
//! 7. **Commit**: the main table (the run), then its bookkeeping tables ([`commit`]).
//! 8. **Housekeeping**: checkpoints, compaction of the bookkeeping tables.
//!
//! The rules' bounds (the reference instant of the future rule, the floor date) are fixed
//! at the start of a run and recorded in its commit.

mod commit;
mod discover;
mod execute;
mod idindex;
mod kafka;
mod kept;
mod legacy;
mod options;
mod plan;
mod report;
mod scratch;
mod sync;
mod verdicts;
mod watermark;
mod write;

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;

pub use commit::{DERIVED, Tables, catch_up, complete_interrupted_runs};
pub use discover::Stream;
pub use idindex::{STREAM_INLINE_MERGE_BYTES, compact_all as compact_index};
pub use kafka::{KafkaRead, PartitionRead};
pub use kept::Kept;
pub use options::IngestOptions;
pub use options::OnBadFile;
pub use report::{CHANGED_ADVICE, ChangedFile, IngestReport, SET_ASIDE_ADVICE, SetAsideFile};
pub use verdicts::DEFAULT_BUCKET_IDS;
pub use write::{DATA_FILE_BYTES, file_schema, writer as day_writer};

use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::tables::Table;
use discover::{LandingFile, Source};
use execute::Run;
use scratch::Scratch;

/// Times a run is done again after losing the race to commit.
const MAX_LOST_RACES: u32 = 8;

/// Ingest the new landing files. A run that loses the race to commit to another writer
/// (nothing of it committed) is done again from the tables' new versions: its dedup must see
/// the ids the winner committed.
pub async fn run(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport> {
    run_keeping(layout, opts, progress, &mut Kept::default()).await
}

/// [`run`], with the tables `kept` open by the previous run of a stream (and kept open for
/// the next one when this run succeeds).
pub async fn run_keeping(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<IngestReport> {
    let mut lost = 0;
    loop {
        match run_once(layout, opts, progress, kept).await {
            Err(e @ Error::Conflict { .. }) if lost < MAX_LOST_RACES => {
                lost += 1;
                tracing::warn!(error = %e.chain(), lost, "another writer committed first; ingesting again");
                // A little random wait, so racing writers do not collide again at once.
                let ms = 50 + rand::random::<u64>() % (100 << lost.min(5));
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Ok(mut report) => {
                report.lost_races = lost;
                return Ok(report);
            }
            Err(e) => return Err(named_as_landed(layout, e)),
        }
    }
}

/// A bad file read from its downloaded copy is named by its object's URL, where the user can
/// fix or remove it.
fn named_as_landed(layout: &Layout, e: Error) -> Error {
    let (Some(root), Error::BadInput { path, problem }) = (layout.store(), &e) else {
        return e;
    };
    let Ok(under) = path.strip_prefix(layout.scratch_dir()) else {
        return e;
    };
    // <scratch>/ingest-<pid>-<uuid>/landing/<rel>
    let rel: Vec<String> = under
        .components()
        .skip(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let object = root.path_of(&format!("{}/{}", Layout::LANDING, rel.join("/")));
    Error::bad_input(root.object_url(&object), problem.clone())
}

async fn run_once(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<IngestReport> {
    if let Some(topic) = &opts.source {
        return kafka::run_once(layout, opts, topic, progress, kept).await;
    }
    let started = Instant::now();
    let stream = Stream::new(layout.landing_prefix());
    let source = landing(layout).await?;
    let Opened {
        mut tables,
        before,
        mut report,
        scratch,
    } = open_run(layout, opts, &stream, kept).await?;
    report.step("open", started);
    let t = Instant::now();
    let mut new = discover(
        &source,
        &mut tables,
        &stream,
        &scratch,
        opts,
        &mut kept.listing,
        &mut report,
    )
    .await?;
    report.step("discover", t);
    if !new.is_empty() {
        let t = Instant::now();
        let replaced = source.fetch(&mut new, &scratch.dir, opts.workers()).await?;
        report.defer(replaced.iter().map(|f| f.rel.clone()));
        report.count_files(&new);
        if layout.store().is_some() {
            report.step("download", t);
        }
        let run = Run::start(&tables, &stream, opts).await?;
        let Some((main_adds, record)) = execute::execute_setting_aside(
            &tables,
            new,
            &run,
            &scratch,
            opts,
            progress,
            &mut report,
        )
        .await?
        else {
            // Every new file was deferred: nothing to commit.
            drop(scratch);
            kept.keep(tables).await;
            return Ok(report.finish(started));
        };
        let commit = (main_adds, record, &before);
        commit_and_tidy(layout, &mut tables, &stream, commit, opts, &mut report).await?;
    }
    drop(scratch);
    kept.keep(tables).await;
    Ok(report.finish(started))
}

/// A run's tables, open and caught up, and its scratch folder.
struct Opened {
    tables: Tables,
    before: Versions,
    report: IngestReport,
    scratch: Scratch,
}

/// The steps every run takes first, whatever its source: open the tables (the stream's
/// interrupted run completed), check the id index.
async fn open_run(
    layout: &Layout,
    opts: &IngestOptions,
    stream: &Stream,
    kept: &mut Kept,
) -> Result<Opened> {
    if let Some(store) = layout.store() {
        store.require_conditional_writes().await?;
    }
    // Scratch folders of killed runs go first, also when this run finds nothing new.
    scratch::remove_orphans(&layout.scratch_dir());
    let mut tables = kept.open(layout).await?;
    let before = versions(&tables);
    let mut report = IngestReport {
        caught_up_commits: catch_up(&mut tables, stream).await?,
        ..Default::default()
    };
    let scratch = Scratch::new(&layout.scratch_dir())?;
    sync::sync_index(&mut tables, stream, &scratch, opts, &mut report).await?;
    Ok(Opened {
        tables,
        before,
        report,
        scratch,
    })
}

/// Commit the run (the main table, then the derived ones), then the housekeeping: checkpoints
/// and, when no other process compacts, the bookkeeping tables' compaction.
async fn commit_and_tidy(
    layout: &Layout,
    tables: &mut Tables,
    stream: &Stream,
    (main_adds, record, before): (Vec<deltalake::kernel::Add>, commit::RunRecord, &Versions),
    opts: &IngestOptions,
    report: &mut IngestReport,
) -> Result<()> {
    let t = Instant::now();
    let (version, quarantine_version, warnings) =
        commit::commit_run(tables, stream, main_adds, record).await?;
    report.table_version = Some(version);
    report.quarantine_version = quarantine_version;
    report.warnings.extend(warnings);
    report.step("commit", t);
    let t = Instant::now();
    // Compactions only under the lock: two at once would both land (see CompactionLock).
    let lock = crate::lock::CompactionLock::take(layout, false)?;
    let merge = opts.inline_index_merge_bytes;
    let warnings = commit::housekeeping(tables, before, lock.is_some(), merge).await;
    report.warnings.extend(warnings);
    report.step("housekeeping", t);
    Ok(())
}

/// Each ingest table's version.
type Versions = HashMap<Table, i64>;

/// Find the new files (and the changed ones), adopting those an earlier version consumed.
async fn discover(
    source: &Source,
    tables: &mut Tables,
    stream: &Stream,
    scratch: &Scratch,
    opts: &IngestOptions,
    listing: &mut discover::ListingCache,
    report: &mut IngestReport,
) -> Result<Vec<LandingFile>> {
    let found = discover::discover(
        source,
        stream,
        &tables.files,
        &scratch.dir,
        opts.workers(),
        Some(listing),
    )
    .await?;
    report.files_seen = found.seen;
    report.changed_files = found.changed;
    report.defer(found.deferred);
    for w in found.warnings {
        tracing::warn!("{w}");
        report.warnings.push(w);
    }
    let mut new = legacy::adopt_legacy(tables, stream, found.new).await?;
    if let Some(age) = opts.min_file_age {
        // NiFi's "Minimum File Age": a file modified this recently may still be written.
        let newest = chrono::Utc::now().timestamp_micros() - age.as_micros() as i64;
        let (waiting, ready): (Vec<_>, Vec<_>) =
            new.into_iter().partition(|f| f.modified_us > newest);
        report.defer(waiting.into_iter().map(|f| f.rel));
        new = ready;
    }
    report.count_files(&new);
    Ok(new)
}

/// The landing folder; it must exist (see [`landing_exists`]).
async fn landing(layout: &Layout) -> Result<Source> {
    if !landing_exists(layout).await? {
        return Err(Error::Invalid(format!(
            "landing folder {} does not exist: run `pipeline generate` first, or set --data-dir",
            layout.landing_shown()
        )));
    }
    Ok(match layout.landing_dir() {
        Some(dir) => Source::Local(dir),
        None => Source::Store(layout.store().expect("not local").clone()),
    })
}

/// Whether there is a landing folder to ingest from. An object store has no folders: there
/// it exists once any object is under it or the table exists. So a mistyped prefix fails
/// like a missing local folder (it exited 0 having created empty tables there), and landing
/// files expired after their ingest do not make it vanish.
pub async fn landing_exists(layout: &Layout) -> Result<bool> {
    let Some(store) = layout.store() else {
        return Ok(layout.landing_dir().expect("local").is_dir());
    };
    let landing = store.path_of(Layout::LANDING);
    if let Some(first) = store.store().list(Some(&landing)).next().await {
        first.map_err(|e| {
            crate::store::access_error(format_args!("cannot list {}", layout.landing_shown()), e)
        })?;
        return Ok(true);
    }
    delta::has_log(layout, Table::Transactions).await
}

fn versions(tables: &Tables) -> Versions {
    [
        (Table::Transactions, &tables.main),
        (Table::Quarantine, &tables.quarantine),
        (Table::IngestFiles, &tables.files),
        (Table::TransactionIds, &tables.ids),
    ]
    .into_iter()
    .map(|(t, d)| (t, delta::version(d)))
    .collect()
}
