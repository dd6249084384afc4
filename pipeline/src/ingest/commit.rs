//! Committing a run: `customer_transactions` first and alone decides it.
//!
//! A run writes all its files first: the day files of `customer_transactions` and of the
//! quarantine, the sorted index file of its accepted ids (`transaction_ids`) and the record
//! of its landing files (`ingest_files`). Then one commit to `customer_transactions` adds its
//! data files, records the stream's run number (`txn`) and, in its `commitInfo`, the `add`
//! actions of the other three tables. That commit is the run: before it, nothing happened;
//! after it, the other three tables are brought up to date by committing exactly those
//! recorded files, each with the same run number as its `txn`. A process killed between the
//! commits leaves them behind; the next run (of any stage that opens them) commits them
//! first ([`catch_up`]), reading the recorded actions back from the log. Nothing is
//! recomputed, so a rerun cannot decide differently from the run it completes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deltalake::DeltaTable;
use deltalake::kernel::Add;
use serde_json::{Value, json};

use super::discover::Stream;
use crate::delta::keys;
use crate::delta::{self, Commit};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// The tables brought up to date from `customer_transactions`' commits.
pub const DERIVED: [Table; 3] = [Table::Quarantine, Table::IngestFiles, Table::TransactionIds];

/// The four tables of ingest, open.
pub struct Tables {
    /// `customer_transactions`.
    pub main: DeltaTable,
    /// The quarantine.
    pub quarantine: DeltaTable,
    /// `ingest_files`.
    pub files: DeltaTable,
    /// `transaction_ids`.
    pub ids: DeltaTable,
}

impl Tables {
    /// Open (or create) the four tables: the derived ones first, so that the main table is
    /// at least as new as any run they show (a run commits to the main table first). Opened
    /// the other way round while another stream committed, the index could hold more ids
    /// than the main table rows.
    pub async fn open(layout: &Layout) -> Result<Self> {
        let quarantine = delta::open_or_create(layout, Table::Quarantine).await?;
        let files = delta::open_or_create(layout, Table::IngestFiles).await?;
        let ids = delta::open_or_create(layout, Table::TransactionIds).await?;
        Ok(Tables {
            main: delta::open_or_create(layout, Table::Transactions).await?,
            quarantine,
            files,
            ids,
        })
    }

    /// The open table of `t`.
    pub fn get_mut(&mut self, t: Table) -> &mut DeltaTable {
        match t {
            Table::Transactions => &mut self.main,
            Table::Quarantine => &mut self.quarantine,
            Table::IngestFiles => &mut self.files,
            Table::TransactionIds => &mut self.ids,
            other => unreachable!("{other} is not an ingest table"),
        }
    }

    /// Bring every table to its latest version, the main table last (see [`Tables::open`]).
    pub async fn refresh(&mut self) -> Result<()> {
        for t in [
            Table::Quarantine,
            Table::IngestFiles,
            Table::TransactionIds,
            Table::Transactions,
        ] {
            self.get_mut(t)
                .update_incremental(None)
                .await
                .map_err(|e| Error::delta(t.name(), e))?;
        }
        Ok(())
    }
}

/// The stream's last run number recorded in a table (0: none yet).
pub async fn seq(t: &DeltaTable, table: Table, stream: &Stream) -> Result<i64> {
    Ok(delta::txn_version(t, table, &stream.app_id())
        .await?
        .unwrap_or(0))
}

/// Everything a run's main commit records besides its data.
pub struct RunRecord {
    /// The stream's run number.
    pub seq: i64,
    /// A unique id of the run.
    pub run_id: String,
    /// Facts about the run for `DESCRIBE HISTORY` (rows, reference time, bounds).
    pub info: Vec<(&'static str, Value)>,
    /// The derived tables' files, by table.
    pub derived: BTreeMap<Table, Vec<Add>>,
    /// Whether the commit may land on top of other streams' runs whose ids it does not share
    /// ([`disjoint_runs`]) instead of losing the race.
    pub lands_over_other_streams: bool,
    /// More application transactions of the main commit: what else the run consumed (a
    /// Kafka partition's next offset), `(app id, version)`.
    pub consumed: Vec<(String, i64)>,
}

/// Commit a run: the main table, then the derived tables. Returns the main version and the
/// derived commits' warnings (a failed derived commit is caught up by the next run).
pub async fn commit_run(
    tables: &mut Tables,
    stream: &Stream,
    main_adds: Vec<Add>,
    run: RunRecord,
) -> Result<(i64, Option<i64>, Vec<String>)> {
    let derived_json: serde_json::Map<String, Value> = run
        .derived
        .iter()
        .map(|(t, adds)| (t.name().to_string(), json!(adds)))
        .collect();
    let mut commit = Commit::append(Table::Transactions)
        .adds(main_adds.clone())
        .txn(stream.app_id(), run.seq)
        .meta(keys::STAGE, "ingest")
        .meta(keys::STREAM, stream.prefix.clone())
        .meta(keys::RUN_SEQ, run.seq)
        .meta(keys::RUN_ID, run.run_id.clone())
        .meta(keys::DERIVED, Value::Object(derived_json));
    for (k, v) in &run.info {
        commit = commit.meta(k, v.clone());
    }
    for (app, version) in &run.consumed {
        commit = commit.txn(app.clone(), *version);
    }
    if run.lands_over_other_streams {
        let ours = run
            .derived
            .get(&Table::TransactionIds)
            .cloned()
            .unwrap_or_default();
        commit = commit.land_over_if(disjoint_runs(tables.ids.clone(), stream, ours));
    }
    crate::failpoints::hit("ingest.before_commit");
    crate::failpoints::pause("ingest.before_commit");
    let version = match commit.execute_into(&mut tables.main).await {
        Ok(v) => v,
        Err(e) => {
            if !matches!(e, Error::CommitUnknown { .. }) {
                delta::commit::discard(&tables.main, &main_adds).await;
                for (t, adds) in &run.derived {
                    delta::commit::discard(tables.get_mut(*t), adds).await;
                }
            }
            return Err(e);
        }
    };
    crate::failpoints::hit("ingest.between_commits");
    crate::failpoints::pause("ingest.between_commits");
    let mut warnings = Vec::new();
    let mut quarantine_version = None;
    for (t, adds) in run.derived {
        match commit_derived(tables.get_mut(t), t, stream, run.seq, adds).await {
            Ok(v) if t == Table::Quarantine => quarantine_version = v,
            Ok(_) => {}
            Err(e) => warnings.push(format!(
                "{t}: the record of run {} was not committed ({}); the next run commits it",
                run.seq,
                e.chain()
            )),
        }
        if t == Table::Quarantine {
            crate::failpoints::hit("ingest.after_quarantine_commit");
        }
    }
    Ok((version, quarantine_version, warnings))
}

/// The check that lets a run's main commit land on top of a newer commit instead of doing
/// the run again: the newer commit is another stream's ingest run (never this stream's, a
/// compaction or anything else) and none of its accepted ids (its `transaction_ids` files,
/// named in its commit) is among this run's. This run's dedup then decided exactly as it would
/// have after that commit: the ids it accepted are still new, and the rows it called
/// duplicates still are. Reads the two runs' index files one id range at a time.
fn disjoint_runs(ids: DeltaTable, stream: &Stream, ours: Vec<Add>) -> delta::commit::LandOver {
    let prefix = stream.prefix.clone();
    std::sync::Arc::new(move |actions: Vec<Value>| {
        let (ids, prefix, ours) = (ids.clone(), prefix.clone(), ours.clone());
        Box::pin(async move {
            let Some(info) = delta::log::commit_info(&actions) else {
                return Ok(false);
            };
            let text = |k: &str| info.get(k).and_then(Value::as_str);
            if text(keys::STAGE) != Some("ingest") || text(keys::STREAM) == Some(&prefix) {
                return Ok(false);
            }
            let Some(theirs) = info
                .get(keys::DERIVED)
                .and_then(|d| d.get(Table::TransactionIds.name()))
                .and_then(|a| serde_json::from_value::<Vec<Add>>(a.clone()).ok())
            else {
                return Ok(false);
            };
            let (a, b) = (
                super::idindex::IdIndex::of_adds(&ids, &ours).await?,
                super::idindex::IdIndex::of_adds(&ids, &theirs).await?,
            );
            let shared = a.shares_any_with(&b).await?;
            if shared {
                tracing::info!(
                    "another stream's run committed some of the same ids: redoing this run"
                );
            }
            Ok(!shared)
        })
    })
}

/// Commit one derived table's files of run `seq` with the run number as its `txn`, unless
/// the table already has it. Returns the version (None when it was already there).
async fn commit_derived(
    t: &mut DeltaTable,
    table: Table,
    stream: &Stream,
    seq_no: i64,
    adds: Vec<Add>,
) -> Result<Option<i64>> {
    for attempt in 0..3 {
        if seq(t, table, stream).await? >= seq_no {
            return Ok(None);
        }
        let commit = Commit::append(table)
            .adds(adds.clone())
            .txn(stream.app_id(), seq_no)
            .meta(keys::STAGE, "ingest")
            .meta(keys::STREAM, stream.prefix.clone())
            .meta(keys::RUN_SEQ, seq_no)
            // An append: it may land on top of other commits, but not on one that records
            // the same stream (delta-rs refuses a concurrent txn of the same application).
            .rebase_if_no_conflict();
        match commit.execute_into(t).await {
            Ok(v) => return Ok(Some(v)),
            Err(Error::Conflict { .. }) if attempt < 2 => {
                t.update_incremental(None)
                    .await
                    .map_err(|e| Error::delta(table.name(), e))?;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Commit the derived tables' records of every run of `stream` that the main table has and
/// they lack (a process killed between the commits). Returns the number of commits made.
pub async fn catch_up(tables: &mut Tables, stream: &Stream) -> Result<u64> {
    let main_seq = seq(&tables.main, Table::Transactions, stream).await?;
    let mut behind = Vec::new();
    for t in DERIVED {
        let s = seq(tables.get_mut(t), t, stream).await?;
        if s < main_seq {
            behind.push((t, s));
        }
    }
    let Some(from) = behind.iter().map(|(_, s)| *s).min() else {
        return Ok(0);
    };
    let runs = recorded_runs(&tables.main, stream, from, main_seq).await?;
    let mut commits = 0;
    for (t, s) in behind {
        for run in (s + 1)..=main_seq {
            let adds = runs
                .get(&run)
                .and_then(|d| d.get(t.name()))
                .cloned()
                .unwrap_or_default();
            check_files_exist(tables.get_mut(t), t, run, &adds).await?;
            tracing::info!(
                table = t.name(),
                stream = stream.prefix,
                run,
                "completing the record of an ingest run (interrupted, or in flight in another \
                 process)"
            );
            if commit_derived(tables.get_mut(t), t, stream, run, adds)
                .await?
                .is_some()
            {
                commits += 1;
            }
        }
    }
    // Also without a commit of ours: a derived commit that lost to another process
    // completing the same run refreshed only its table, which is then newer than the main
    // one (see [`Tables::open`]).
    tables.refresh().await?;
    Ok(commits)
}

/// The streams whose runs the derived tables may lack: every stream `ingest_files` has a
/// run of, and those of the main table's `recent` latest commits (a stream whose first run
/// is in flight is in no derived table yet). Best effort: what cannot be read is logged and
/// left out (the callers then rebuild the index, as without this list).
pub async fn streams_with_runs(tables: &Tables, recent: i64) -> BTreeSet<String> {
    let mut out = super::discover::streams(&tables.files)
        .await
        .unwrap_or_else(|e| {
            tracing::info!("cannot read the streams of ingest_files ({})", e.chain());
            BTreeSet::new()
        });
    let latest = delta::version(&tables.main);
    let mut v = latest;
    while v > (latest - recent).max(0) {
        let actions = match delta::log::actions(&tables.main, Table::Transactions, v).await {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(e) => {
                tracing::info!("cannot read version {v} of the main table ({})", e.chain());
                break;
            }
        };
        v -= 1;
        let Some(info) = delta::log::commit_info(&actions) else {
            continue;
        };
        if info.get(keys::STAGE).and_then(Value::as_str) == Some("ingest")
            && let Some(prefix) = info.get(keys::STREAM).and_then(Value::as_str)
        {
            out.insert(prefix.to_string());
        }
    }
    out
}

/// The derived tables' actions recorded by the stream's runs `(after, upto]`, read from the
/// main table's log, newest first until all are found.
async fn recorded_runs(
    main: &DeltaTable,
    stream: &Stream,
    after: i64,
    upto: i64,
) -> Result<BTreeMap<i64, HashMap<String, Vec<Add>>>> {
    let mut out = BTreeMap::new();
    let latest = delta::version(main);
    let mut v = latest;
    while v >= 0 && (out.len() as i64) < upto - after {
        let Some(actions) = delta::log::actions(main, Table::Transactions, v).await? else {
            break;
        };
        v -= 1;
        let Some(info) = delta::log::commit_info(&actions) else {
            continue;
        };
        let run_seq = info.get(keys::RUN_SEQ).and_then(Value::as_i64);
        let same_stream =
            info.get(keys::STREAM).and_then(Value::as_str) == Some(stream.prefix.as_str());
        let (Some(run), true) = (run_seq, same_stream) else {
            continue;
        };
        if run <= after {
            break;
        }
        let derived: HashMap<String, Vec<Add>> = match info.get(keys::DERIVED) {
            Some(d) => serde_json::from_value(d.clone()).map_err(|e| Error::DamagedLog {
                table: Table::Transactions.name().into(),
                what: format!("version {} records unreadable ingest actions ({e})", v + 1),
            })?,
            None => HashMap::new(),
        };
        out.insert(run, derived);
    }
    if (out.len() as i64) < upto - after {
        return Err(Error::Invalid(format!(
            "{}: ingest runs {}..={upto} of stream {:?} are in its txn but their commits are no \
             longer in the log (log retention?), so the quarantine, ingest_files and \
             transaction_ids tables cannot be completed from them. Restore the missing commit \
             files, or re-ingest into a new --data-dir",
            Table::Transactions,
            after + 1,
            stream.prefix
        )));
    }
    Ok(out)
}

async fn check_files_exist(t: &DeltaTable, table: Table, run: i64, adds: &[Add]) -> Result<()> {
    use object_store::ObjectStoreExt;
    let store = t.object_store();
    for add in adds {
        let path = deltalake::Path::from(add.path.as_str());
        if store.head(&path).await.is_err() {
            return Err(Error::Invalid(format!(
                "{table}: file {} of ingest run {run} is missing, so the interrupted run cannot be \
                 completed (was it deleted by a VACUUM with a short retention?). Restore it from a \
                 backup, or re-ingest into a new --data-dir",
                add.path
            )));
        }
    }
    Ok(())
}

/// After a run: checkpoints where due, and compaction of the small bookkeeping tables.
/// Failures are warnings: every commit has landed.
pub async fn housekeeping(
    tables: &mut Tables,
    before: &HashMap<Table, i64>,
    compact: bool,
    inline_index_merge_bytes: Option<u64>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Err(e) = tables.refresh().await {
        return vec![format!("housekeeping skipped ({})", e.chain())];
    }
    if compact {
        warnings.extend(compact_small_tables(tables, inline_index_merge_bytes).await);
    }
    for t in [
        Table::Transactions,
        Table::Quarantine,
        Table::IngestFiles,
        Table::TransactionIds,
    ] {
        let from = before.get(&t).copied().unwrap_or(0);
        if let Some(w) = delta::commit::checkpoint_if_due(tables.get_mut(t), t, from).await {
            warnings.push(w);
        }
    }
    warnings
}

/// Merge the id index's and `ingest_files`' small files (under the compaction lock).
async fn compact_small_tables(
    tables: &mut Tables,
    inline_index_merge_bytes: Option<u64>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    match super::idindex::compact(&tables.ids, inline_index_merge_bytes).await {
        Ok(_) => {}
        Err(e) => warnings.push(format!(
            "{}: compaction skipped ({}); the next run tries again",
            Table::TransactionIds,
            e.chain()
        )),
    }
    if let Err(e) = compact_small_table(&mut tables.files, Table::IngestFiles).await {
        warnings.push(format!(
            "{}: compaction skipped ({}); the next run tries again",
            Table::IngestFiles,
            e.chain()
        ));
    }
    warnings
}

/// `ingest_files` gets one small file per run; past this many files smaller than
/// [`SMALL_FILE_BYTES`], those are merged into files of about that size, so discovery reads a
/// few files per MiB of records whatever the number of runs, and a merge rewrites the recent
/// records, not all of them (merging everything into one file rewrote every record ever
/// consumed every 16 runs).
const MAX_SMALL_FILES: usize = 16;
const SMALL_FILE_BYTES: u64 = 1 << 20;

async fn compact_small_table(t: &mut DeltaTable, table: Table) -> Result<()> {
    t.update_incremental(None)
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    let small = delta::files(t, table, None)?
        .iter()
        .filter(|f| f.size < SMALL_FILE_BYTES)
        .count();
    if small <= MAX_SMALL_FILES {
        return Ok(());
    }
    let (compacted, _) = t
        .clone()
        .optimize()
        .with_target_size(std::num::NonZeroU64::new(SMALL_FILE_BYTES).expect("non-zero"))
        .with_commit_properties(
            deltalake::kernel::transaction::CommitProperties::default()
                .with_create_checkpoint(false)
                .with_cleanup_expired_logs(Some(false)),
        )
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    *t = compacted;
    Ok(())
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
    let mut streams = super::discover::streams(&tables.files).await?;
    streams.insert(String::new());
    let mut commits = 0;
    for prefix in streams {
        commits += catch_up(&mut tables, &Stream { prefix }).await?;
    }
    Ok(commits)
}
