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
mod idindex;
mod options;
mod plan;
mod report;
mod scratch;
mod verdicts;
mod watermark;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use serde_json::json;

pub use commit::{DERIVED, Tables, catch_up};
pub use discover::Stream;
pub use idindex::STREAM_INLINE_MERGE_BYTES;
pub use options::IngestOptions;
pub use options::OnBadFile;
pub use report::{CHANGED_ADVICE, ChangedFile, IngestReport, SET_ASIDE_ADVICE, SetAsideFile};
pub use verdicts::DEFAULT_BUCKET_IDS;
pub use write::{DATA_FILE_BYTES, file_schema, writer as day_writer};

use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::rules::Limits;
use crate::tables::Table;
use discover::{Hashing, LandingFile, Source};
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

/// What a stream (`run --follow`) keeps between its runs. Ingest's four tables, kept open: a
/// run brings them up to date with the commits since the last one, instead of loading each
/// table from its last checkpoint again (whose size grows with the table's files). Only a run
/// that succeeded keeps them, and only while each is still the same log (see
/// [`delta::Kept`]); otherwise the next run opens them afresh. And the landing folders whose
/// files are all consumed ([`discover::ListingCache`]).
#[derive(Default)]
pub struct Kept {
    tables: Option<(Tables, Vec<Option<delta::LogStamp>>)>,
    listing: discover::ListingCache,
}

impl Kept {
    async fn open(&mut self, layout: &Layout) -> Result<Tables> {
        if let Some((mut tables, stamps)) = self.tables.take()
            && stamps.iter().all(Option::is_some)
            && Self::stamps(&mut tables).await == stamps
        {
            match tables.refresh().await {
                Ok(()) => return Ok(tables),
                Err(e) => tracing::info!(error = %e.chain(), "opening the tables afresh"),
            }
        }
        Tables::open(layout).await
    }

    /// Lend the kept `customer_transactions` to the stages after ingest (`kept`), so that
    /// aggregate reads the snapshot ingest brought up to date instead of replaying the
    /// table's live files again from an older one.
    pub fn share_transactions(&self, kept: &mut delta::Kept) {
        if let Some((tables, stamps)) = &self.tables
            && let Some(Some(stamp)) = stamps.first()
        {
            kept.keep_stamped(Table::Transactions, &tables.main, *stamp);
        }
    }

    async fn keep(&mut self, mut tables: Tables) {
        let stamps = Self::stamps(&mut tables).await;
        self.tables = Some((tables, stamps));
    }

    async fn stamps(tables: &mut Tables) -> Vec<Option<delta::LogStamp>> {
        let mut out = Vec::new();
        for t in [
            Table::Transactions,
            Table::Quarantine,
            Table::IngestFiles,
            Table::TransactionIds,
        ] {
            out.push(delta::LogStamp::of(tables.get_mut(t)).await);
        }
        out
    }
}

async fn run_once(
    layout: &Layout,
    opts: &IngestOptions,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<IngestReport> {
    let started = Instant::now();
    let stream = Stream::new(layout.landing_prefix());
    let source = landing(layout).await?;
    if let Some(store) = layout.store() {
        store.require_conditional_writes().await?;
    }
    // Scratch folders of killed runs go first, also when this run finds nothing new.
    scratch::remove_orphans(&layout.scratch_dir());
    let mut tables = kept.open(layout).await?;
    let before = versions(&tables);
    let mut report = IngestReport {
        caught_up_commits: catch_up(&mut tables, &stream).await?,
        ..Default::default()
    };
    let scratch = Scratch::new(&layout.scratch_dir())?;
    sync_index(&mut tables, &stream, &scratch, opts, &mut report).await?;
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
        let Some((main_adds, record)) =
            execute_setting_aside(&tables, new, &run, &scratch, opts, progress, &mut report)
                .await?
        else {
            // Every new file was deferred: nothing to commit.
            drop(scratch);
            kept.keep(tables).await;
            return Ok(report.finish(started));
        };
        let t = Instant::now();
        let (version, quarantine_version, warnings) =
            commit::commit_run(&mut tables, &stream, main_adds, record).await?;
        report.table_version = Some(version);
        report.quarantine_version = quarantine_version;
        report.warnings.extend(warnings);
        report.step("commit", t);
        let t = Instant::now();
        // Compactions only under the lock: two at once would both land (see CompactionLock).
        let lock = crate::maintain::CompactionLock::take(layout, false)?;
        report.warnings.extend(
            commit::housekeeping(
                &mut tables,
                &before,
                lock.is_some(),
                opts.inline_index_merge_bytes,
            )
            .await,
        );
        report.step("housekeeping", t);
    }
    drop(scratch);
    kept.keep(tables).await;
    Ok(report.finish(started))
}

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
    let mut new = adopt_legacy(tables, stream, found.new).await?;
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

/// [`execute`] the run; with `--on-bad-file skip`, a file found unusable is set aside and
/// the run done again without it (nothing is committed before), until every file left is
/// good. Set-aside files are recorded in `ingest_files` with their problem. A file that
/// changed while the run read it (being written in place) is neither: it is deferred to a
/// later run, and the run done again without it.
async fn execute_setting_aside(
    tables: &Tables,
    mut files: Vec<LandingFile>,
    run: &Run,
    scratch: &Scratch,
    opts: &IngestOptions,
    progress: &Progress,
    report: &mut IngestReport,
) -> Result<Option<(Vec<Add>, commit::RunRecord)>> {
    let skip = opts.on_bad_file(OnBadFile::Stop) == OnBadFile::Skip;
    let before = report.clone();
    let mut set_aside: Vec<(LandingFile, String)> = Vec::new();
    let mut deferred: Vec<String> = Vec::new();
    loop {
        // Content hashes are needed only for the record: computed while the run reads.
        let hashing = discover::start_hashing(files.clone(), opts.workers());
        let attempt = execute(
            tables, &files, &set_aside, hashing, run, scratch, opts, progress, report,
        )
        .await;
        let (path, problem) = match attempt {
            Err(Error::BadInput { path, problem }) => (path, Some(problem)),
            Err(Error::Unsettled { path }) => (path, None),
            other => return other.map(Some),
        };
        let in_files = files.iter().position(|f| f.path == path);
        let in_set_aside = set_aside.iter().position(|(f, _)| f.path == path);
        let file = match (in_files, in_set_aside) {
            (Some(i), _) => files.remove(i),
            (None, Some(i)) if problem.is_none() => set_aside.remove(i).0,
            _ => {
                return Err(match problem {
                    Some(problem) => Error::BadInput { path, problem },
                    None => Error::Unsettled { path },
                });
            }
        };
        // Unreadable because it is still being written: not a bad file.
        let unsettled = problem.is_none() || file.moved(None);
        match problem {
            _ if unsettled => {
                tracing::warn!(file = %file.rel,
                    "a raw file changed while this run read it (still being written?): left for the next run");
                deferred.push(file.rel.clone());
            }
            Some(problem) if skip => {
                tracing::warn!(file = %file.rel, %problem, "setting aside an unusable raw file");
                set_aside.push((file, problem));
            }
            Some(problem) => return Err(Error::BadInput { path, problem }),
            None => unreachable!("an unsettled file is deferred"),
        }
        *report = before.clone();
        report.count_files(&files);
        report.defer(deferred.iter().cloned());
        report.set_aside_files = set_aside
            .iter()
            .map(|(f, problem)| SetAsideFile {
                path: f.rel.clone(),
                problem: problem.clone(),
            })
            .collect();
        if files.is_empty() && set_aside.is_empty() {
            return Ok(None);
        }
    }
}

/// Plan, decide, write: every file of the run written, nothing committed. Returns the main
/// table's files and the record of the run (the other tables' files).
#[allow(clippy::too_many_arguments)]
async fn execute(
    tables: &Tables,
    new: &[LandingFile],
    set_aside: &[(LandingFile, String)],
    hashing: Hashing,
    run: &Run,
    scratch: &Scratch,
    opts: &IngestOptions,
    progress: &Progress,
    report: &mut IngestReport,
) -> Result<(Vec<Add>, commit::RunRecord)> {
    report.run_seq = Some(run.seq);
    report.landed_us = new.iter().map(|f| f.modified_us).collect();
    report.reference_time = Some(crate::report::timestamp(run.reference));
    let t = Instant::now();
    let plan = {
        let (new, dir) = (new.to_vec(), scratch.dir.clone());
        tokio::task::spawn_blocking(move || plan::plan(&new, &dir)).await??
    };
    crate::failpoints::pause("ingest.after_plan");
    report.rows_in = plan.rows;
    report.days = plan.days.keys().filter(|d| d.is_some()).count() as u64;
    progress.set_length(plan.rows);
    report.step("plan", t);
    let t = Instant::now();
    let paths: Vec<PathBuf> = new.iter().map(|f| f.path.clone()).collect();
    let verdicts = verdicts::decide(
        &verdicts::Ctx {
            paths: &paths,
            plan: &plan,
            limits: run.limits,
            workers: opts.workers(),
            bucket_ids: opts.dedup_bucket_ids,
            scratch: &scratch.dir,
        },
        &tables.ids,
    )
    .await?;
    report.index_ids = verdicts.index_ids;
    report.step("decide", t);
    let t = Instant::now();
    let index_adds: Vec<Add> = verdicts.index_add.clone().into_iter().collect();
    let ctx = Arc::new(write::Ctx {
        paths,
        rels: new.iter().map(|f| f.rel.clone()).collect(),
        footers: plan.footers.clone(),
        main: tables.main.clone(),
        quarantine: tables.quarantine.clone(),
        dups: verdicts.dups.clone(),
        rejects: verdicts.rejects.clone(),
        progress: progress.clone(),
    });
    let written = write_or_discard(tables, &ctx, plan.days, &index_adds, opts).await?;
    report.tally(&written);
    report.step("write", t);
    let logged = async {
        check_accounts(&verdicts, report)?;
        log_files(tables, new, set_aside, hashing, &plan.file_rows, run).await
    };
    let files_adds = match logged.await {
        Ok(a) => a,
        Err(e) => {
            written.discard(&ctx).await;
            delta::commit::discard(&tables.ids, &index_adds).await;
            return Err(e);
        }
    };
    let record = commit::RunRecord {
        seq: run.seq,
        run_id: run.id.clone(),
        info: run.info(report),
        derived: [
            (Table::Quarantine, written.quarantine_adds),
            (Table::IngestFiles, files_adds),
            (Table::TransactionIds, index_adds),
        ]
        .into_iter()
        .collect(),
        // With a watermark, another stream's rows can move it: this run's decisions would
        // then depend on the order, so it is done again instead.
        lands_over_other_streams: run.limits.open_from_us == i64::MIN,
    };
    Ok((written.main_adds, record))
}

/// Write every day's files; on failure the index file written before is deleted too.
async fn write_or_discard(
    tables: &Tables,
    ctx: &Arc<write::Ctx>,
    days: std::collections::BTreeMap<plan::DayKey, Vec<plan::Input>>,
    index_adds: &[Add],
    opts: &IngestOptions,
) -> Result<write::Written> {
    match write::write(ctx.clone(), days, opts.workers()).await {
        Ok(w) => Ok(w),
        Err(e) => {
            delta::commit::discard(&tables.ids, index_adds).await;
            Err(e)
        }
    }
}

/// Check the accounts: every row in one place, as decided.
fn check_accounts(verdicts: &verdicts::Verdicts, r: &IngestReport) -> Result<()> {
    let balanced = r.rows_in == r.rows_out + r.rows_quarantined + r.duplicates
        && r.duplicates == verdicts.dups.len() as u64
        && r.rows_out == verdicts.accepted;
    if balanced {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "internal accounting error: rows_in {} != out {} + quarantined {} + duplicates {} \
         (decided: {} accepted, {} duplicates); nothing was committed",
        r.rows_in,
        r.rows_out,
        r.rows_quarantined,
        r.duplicates,
        verdicts.accepted,
        verdicts.dups.len()
    )))
}

/// Write the run's `ingest_files` rows (uncommitted): its files, and those set aside.
async fn log_files(
    tables: &Tables,
    new: &[LandingFile],
    set_aside: &[(LandingFile, String)],
    hashing: Hashing,
    file_rows: &[u64],
    run: &Run,
) -> Result<Vec<Add>> {
    let mut hashes = hashing.wait().await?;
    // What is recorded must be what was read: every file's size and time, while hashed and
    // now that the run has read it, are still those it was listed with.
    for (f, h) in new.iter().zip(&hashes) {
        f.check_settled(Some(h.stat))?;
        f.check_settled(None)?;
    }
    let mut files = new.to_vec();
    let mut rows = file_rows.to_vec();
    let mut problems = vec![None; new.len()];
    for (f, problem) in set_aside {
        let h = discover::hash_file(&f.path)?;
        f.check_settled(Some(h.stat))?;
        hashes.push(h);
        files.push(f.clone());
        rows.push(0);
        problems.push(Some(problem.clone()));
    }
    let batch = discover::log_batch(
        &files,
        &hashes,
        &rows,
        &problems,
        &run.stream,
        run.seq,
        &run.id,
    )?;
    write_batch(&tables.files, Table::IngestFiles, batch).await
}

/// Complete ingest runs interrupted between their commits, of every landing stream
/// (`maintain` does this before it removes any file). Returns the commits made.
pub async fn complete_interrupted_runs(layout: &Layout) -> Result<u64> {
    if delta::open(layout, Table::Transactions).await?.is_none() {
        return Ok(0);
    }
    let mut tables = Tables::open(layout).await?;
    // Every stream that has recorded a file (a stream whose first run was interrupted has
    // none yet: its own next ingest completes it).
    let mut streams = discover::streams(&tables.files).await?;
    streams.insert(String::new());
    let mut commits = 0;
    for prefix in streams {
        commits += catch_up(&mut tables, &Stream { prefix }).await?;
    }
    Ok(commits)
}

/// Merge the id index's files of similar size, however large (`maintain`, and `run
/// --follow`'s background housekeeping); returns the files merged.
pub async fn compact_index(t: &deltalake::DeltaTable) -> Result<u64> {
    idindex::compact(t, None).await
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

fn versions(tables: &Tables) -> HashMap<Table, i64> {
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

/// The id index must hold exactly the table's ids. It always does, unless the table was
/// written by an earlier version of the pipeline (no index yet), changed by another engine,
/// or the index was damaged: then it is rebuilt from the table, before anything is decided.
async fn sync_index(
    tables: &mut Tables,
    stream: &Stream,
    scratch: &Scratch,
    opts: &IngestOptions,
    report: &mut IngestReport,
) -> Result<()> {
    // Other streams' runs in flight are the usual reason the counts differ: their main
    // commit is seen, their index commit not yet. Every stream's missing records are
    // completed here (as their owners do: the commits are idempotent), so this run's
    // deduplication sees their ids; a difference that remains is repaired by a rebuild.
    let (mut main_rows, mut index_rows) = (None, None);
    for round in 0..3 {
        main_rows = idindex::rows_of(&tables.main, Table::Transactions)?;
        index_rows = idindex::rows_of(&tables.ids, Table::TransactionIds)?;
        if main_rows.is_some() && main_rows == index_rows {
            return Ok(());
        }
        let (Some(m), Some(i)) = (main_rows, index_rows) else {
            break;
        };
        if round == 2 {
            break;
        }
        if m > i {
            report.caught_up_commits += complete_other_streams(tables).await;
        }
        // Derived tables first, the main one last: a run they show is in the main one.
        tables.refresh().await?;
    }
    if main_rows == Some(0) && delta::files(&tables.ids, Table::TransactionIds, None)?.is_empty() {
        return Ok(());
    }
    let txns = rebuilt_runs(tables, stream).await?;
    let w = format!(
        "{} holds {} rows but {} holds {} ids: rebuilt the index from the table",
        Table::Transactions,
        main_rows.map_or("?".into(), |n| n.to_string()),
        Table::TransactionIds,
        index_rows.map_or("?".into(), |n| n.to_string()),
    );
    tracing::warn!("{w}");
    idindex::rebuild(
        &tables.main,
        &tables.ids,
        &scratch.dir,
        opts.dedup_bucket_ids,
        &txns,
    )
    .await?;
    tables
        .ids
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(Table::TransactionIds.name(), e))?;
    report.warnings.push(w);
    Ok(())
}

/// The runs a rebuild from the main table's snapshot includes, as the index's `txn`s: every
/// stream's run number there, so that a run in flight whose ids the rebuild took from the
/// main table does not add them to the index a second time when its record is completed.
async fn rebuilt_runs(tables: &Tables, stream: &Stream) -> Result<Vec<(String, i64)>> {
    let mut streams = commit::streams_with_runs(tables, 1000).await;
    streams.insert(stream.prefix.clone());
    let mut txns = Vec::new();
    for prefix in streams {
        let s = Stream { prefix };
        let seq = commit::seq(&tables.main, Table::Transactions, &s).await?;
        if seq > 0 || s.prefix == stream.prefix {
            txns.push((s.app_id(), seq));
        }
    }
    Ok(txns)
}

/// Complete the records of every stream's runs the derived tables lack; best effort (a
/// failure is logged, and the index is then rebuilt from the table). Returns the commits.
async fn complete_other_streams(tables: &mut Tables) -> u64 {
    let mut commits = 0;
    for prefix in commit::streams_with_runs(tables, 100).await {
        match catch_up(tables, &Stream { prefix }).await {
            Ok(n) => commits += n,
            Err(e) => tracing::info!("cannot complete another stream's run ({})", e.chain()),
        }
    }
    commits
}

/// Files a table written by an earlier version of the pipeline consumed (it marked each
/// with a `txn` of its own) are recorded in `ingest_files` now, once, and not read again.
async fn adopt_legacy(
    tables: &mut Tables,
    stream: &Stream,
    new: Vec<LandingFile>,
) -> Result<Vec<LandingFile>> {
    let has_data = !delta::files(&tables.main, Table::Transactions, None)?.is_empty();
    if new.is_empty()
        || !has_data
        || commit::seq(&tables.main, Table::Transactions, stream).await? > 0
    {
        return Ok(new);
    }
    let (mut legacy, mut fresh) = (Vec::new(), Vec::new());
    for f in new {
        let old = delta::txn_version(
            &tables.main,
            Table::Transactions,
            &format!("pipeline.ingest:{}", f.rel),
        )
        .await?;
        if old.is_some() {
            legacy.push(f);
        } else {
            fresh.push(f);
        }
    }
    if legacy.is_empty() {
        return Ok(fresh);
    }
    tracing::warn!(
        files = legacy.len(),
        "recording files ingested by an earlier pipeline version in ingest_files"
    );
    let rows = vec![0; legacy.len()];
    let hashes = discover::start_hashing(legacy.clone(), 2).wait().await?;
    let problems = vec![None; legacy.len()];
    let batch = discover::log_batch(&legacy, &hashes, &rows, &problems, stream, 0, "legacy")?;
    let adds = write_batch(&tables.files, Table::IngestFiles, batch).await?;
    Commit::append(Table::IngestFiles)
        .adds(adds)
        .meta("pipeline.stage", "ingest.adopt_legacy")
        .rebase_if_no_conflict()
        .execute(&tables.files)
        .await?;
    tables
        .files
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(Table::IngestFiles.name(), e))?;
    Ok(fresh)
}

use delta::Commit;

/// One run: its number in the stream, its id and its rules' bounds.
struct Run {
    stream: Stream,
    seq: i64,
    id: String,
    reference: chrono::DateTime<chrono::Utc>,
    min_date: chrono::NaiveDate,
    limits: Limits,
    read_version: i64,
}

impl Run {
    async fn start(tables: &Tables, stream: &Stream, opts: &IngestOptions) -> Result<Self> {
        let reference = opts.now.unwrap_or_else(chrono::Utc::now);
        let open_from = match opts.finalize_after {
            Some(delay) => watermark::open_from(&tables.main, delay)?,
            None => None,
        };
        Ok(Run {
            stream: stream.clone(),
            seq: commit::seq(&tables.main, Table::Transactions, stream).await? + 1,
            id: uuid::Uuid::new_v4().to_string(),
            reference,
            min_date: opts.min_date,
            limits: Limits::new(reference, opts.min_date).with_open_from(open_from),
            read_version: delta::version(&tables.main),
        })
    }

    /// What the main commit records about the run.
    fn info(&self, r: &IngestReport) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            (
                "pipeline.reference_time",
                json!(self.reference.to_rfc3339()),
            ),
            ("pipeline.min_date", json!(self.min_date.to_string())),
            (
                "pipeline.final_before",
                match self.limits.open_from_us {
                    i64::MIN => serde_json::Value::Null,
                    us => {
                        json!(chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339()))
                    }
                },
            ),
            ("pipeline.read_version", json!(self.read_version)),
            ("pipeline.files", json!(r.files_ingested)),
            (
                "pipeline.rows",
                json!({
                    "in": r.rows_in,
                    "out": r.rows_out,
                    "quarantined": r.rows_quarantined,
                    "duplicates": r.duplicates,
                }),
            ),
        ]
    }
}

async fn write_batch(
    t: &deltalake::DeltaTable,
    table: Table,
    batch: deltalake::arrow::array::RecordBatch,
) -> Result<Vec<Add>> {
    let mut w = RecordBatchWriter::for_table(t).map_err(|e| Error::delta(table.name(), e))?;
    let batch = delta::conform(batch.columns().to_vec(), &w.arrow_schema())?;
    w.write(batch)
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    w.flush().await.map_err(|e| Error::delta(table.name(), e))
}

impl IngestReport {
    /// Record the seconds of a step that started at `t`.
    fn step(&mut self, name: &'static str, t: Instant) {
        self.steps.push((name, t.elapsed().as_secs_f64()));
    }

    /// Take the written rows' counts.
    fn tally(&mut self, w: &write::Written) {
        self.rows_out = w.rows_out;
        self.duplicates = w.duplicates;
        self.quarantine_reasons = w.reasons.clone();
        self.rows_quarantined = w.reasons.values().sum();
        self.data_files_written = (w.main_adds.len() + w.quarantine_adds.len()) as u64;
        self.bytes_written = w
            .main_adds
            .iter()
            .chain(&w.quarantine_adds)
            .map(|a| a.size as u64)
            .sum();
    }

    fn finish(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self.rows_per_sec = crate::report::per_sec(self.rows_in, self.seconds);
        self.peak_rss_bytes = crate::progress::peak_rss_bytes();
        self
    }
}
