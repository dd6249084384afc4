//! Executing a run: plan, decide, write every file of it (nothing committed), setting aside
//! the unusable files when told to; and the run's identity and what its commit records.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use deltalake::kernel::Add;
use serde_json::json;

use super::commit::{self, Tables};
use super::discover::{self, Hashing, LandingFile, Stream};
use super::scratch::Scratch;
use super::{
    IngestOptions, IngestReport, OnBadFile, SetAsideFile, plan, verdicts, watermark, write,
};
use crate::delta::{self, keys};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::rules::Limits;
use crate::tables::Table;

/// [`execute`] the run; with `--on-bad-file skip`, a file found unusable is set aside and
/// the run done again without it (nothing is committed before), until every file left is
/// good. Set-aside files are recorded in `ingest_files` with their problem. A file that
/// changed while the run read it (being written in place) is neither: it is deferred to a
/// later run, and the run done again without it.
pub(super) async fn execute_setting_aside(
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
    let plan = plan_run(new, scratch, progress, report).await?;
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
    let derived = [
        (Table::Quarantine, written.quarantine_adds),
        (Table::IngestFiles, files_adds),
        (Table::TransactionIds, index_adds),
    ];
    Ok((written.main_adds, run.record(report, derived)))
}

/// Read the new files' footers and sort their row groups into days (on a blocking thread).
async fn plan_run(
    new: &[LandingFile],
    scratch: &Scratch,
    progress: &Progress,
    report: &mut IngestReport,
) -> Result<plan::Plan> {
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
    Ok(plan)
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
    delta::write_batch(&tables.files, Table::IngestFiles, batch).await
}

/// One run: its number in the stream, its id and its rules' bounds.
pub(super) struct Run {
    stream: Stream,
    seq: i64,
    id: String,
    reference: chrono::DateTime<chrono::Utc>,
    min_date: chrono::NaiveDate,
    limits: Limits,
    read_version: i64,
}

impl Run {
    pub(super) async fn start(
        tables: &Tables,
        stream: &Stream,
        opts: &IngestOptions,
    ) -> Result<Self> {
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

    /// The record of the run: what its main commit holds of the derived tables' files.
    fn record(&self, r: &IngestReport, derived: [(Table, Vec<Add>); 3]) -> commit::RunRecord {
        commit::RunRecord {
            seq: self.seq,
            run_id: self.id.clone(),
            info: self.info(r),
            derived: derived.into_iter().collect(),
            // With a watermark, another stream's rows can move it: this run's decisions would
            // then depend on the order, so it is done again instead.
            lands_over_other_streams: self.limits.open_from_us == i64::MIN,
            consumed: Vec::new(),
        }
    }

    /// What the main commit records about the run.
    fn info(&self, r: &IngestReport) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            (keys::REFERENCE_TIME, json!(self.reference.to_rfc3339())),
            (keys::MIN_DATE, json!(self.min_date.to_string())),
            (
                keys::FINAL_BEFORE,
                match self.limits.open_from_us {
                    i64::MIN => serde_json::Value::Null,
                    us => {
                        json!(chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339()))
                    }
                },
            ),
            (keys::READ_VERSION, json!(self.read_version)),
            (keys::FILES, json!(r.files_ingested)),
            (keys::ROWS, r.rows_json()),
        ]
    }
}
