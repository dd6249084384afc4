//! Executing a load plan: every write carries the version's timestamp, rows are upserted,
//! vanished rows deleted, and (on a full load) older rows of every partition swept; all
//! through one pool of in-flight requests with retries, failures written to a file. The
//! version is recorded only when every request succeeded.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::LoadOptions;
use super::plan::{Plan, Work};
use super::report::Counts;
use super::report::{Latency, LoadReport};
use crate::cql::codec::{self, AggRow};
use crate::cql::profile::{self, ProfileRow};
use crate::cql::retry;
use crate::cql::schema::{PROFILES_TABLE, TABLE};
use crate::dates::{self, Day};
use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::tables::Table;

/// One write to a serving table.
pub(super) enum Op {
    Upsert(AggRow),
    DeleteRow {
        customer_id: i64,
        day: Day,
    },
    DeletePartition {
        customer_id: i64,
    },
    UpsertProfile(Box<ProfileRow>),
    /// Delete a profile at this version's timestamp.
    DeleteProfile {
        customer_id: i64,
    },
    /// Delete a profile just below this version's timestamp (a full load's sweep).
    SweepProfile {
        customer_id: i64,
    },
}

impl Op {
    fn describe(&self, error: &str, attempts: u32) -> serde_json::Value {
        match self {
            Op::Upsert(r) => serde_json::json!({
                "op": "upsert",
                "customer_id": r.customer_id,
                "transaction_date": dates::format(r.day),
                "total_amount_cents": r.total_amount.to_string(),
                "transaction_count": r.transaction_count,
                "declined_count": r.declined_count,
                "attempts": attempts,
                "error": error,
            }),
            Op::DeleteRow { customer_id, day } => serde_json::json!({
                "op": "delete_row",
                "customer_id": customer_id,
                "transaction_date": dates::format(*day),
                "attempts": attempts,
                "error": error,
            }),
            Op::DeletePartition { customer_id } => serde_json::json!({
                "op": "delete_older_rows_of_partition",
                "customer_id": customer_id,
                "attempts": attempts,
                "error": error,
            }),
            Op::UpsertProfile(p) => serde_json::json!({
                "op": "upsert_profile",
                "profile": p,
                "attempts": attempts,
                "error": error,
            }),
            Op::DeleteProfile { customer_id } | Op::SweepProfile { customer_id } => {
                serde_json::json!({
                    "op": "delete_profile",
                    "customer_id": customer_id,
                    "attempts": attempts,
                    "error": error,
                })
            }
        }
    }
}

/// The prepared statements of one serving table's load, idempotent (the driver may retry
/// them too).
enum Statements {
    Aggregates {
        upsert: PreparedStatement,
        delete_row: PreparedStatement,
        delete_partition: PreparedStatement,
    },
    Profiles {
        upsert: PreparedStatement,
        delete: PreparedStatement,
    },
}

impl Statements {
    /// Prepare the statements that load `table` (`TABLE` or `PROFILES_TABLE`).
    async fn prepare(session: &Session, keyspace: &str, table: &'static str) -> Result<Self> {
        let prep = |q: String| async move {
            let mut s = session
                .prepare(q.clone())
                .await
                .map_err(|e| Error::scylla(format!("loading {table}: preparing `{q}`"), e))?;
            s.set_is_idempotent(true);
            Ok::<_, Error>(s)
        };
        if table == PROFILES_TABLE {
            return Ok(Statements::Profiles {
                upsert: prep(format!(
                    "INSERT INTO {keyspace}.{PROFILES_TABLE} ({}) VALUES \
                     (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                    profile::COLUMNS
                ))
                .await?,
                delete: prep(format!(
                    "DELETE FROM {keyspace}.{PROFILES_TABLE} USING TIMESTAMP ? WHERE customer_id = ?"
                ))
                .await?,
            });
        }
        Ok(Statements::Aggregates {
            upsert: prep(format!(
                "INSERT INTO {keyspace}.{TABLE} (customer_id, transaction_date, total_amount, \
                 transaction_count, declined_count, min_amount, max_amount) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            delete_row: prep(format!(
                "DELETE FROM {keyspace}.{TABLE} USING TIMESTAMP ? WHERE customer_id = ? AND transaction_date = ?"
            ))
            .await?,
            delete_partition: prep(format!(
                "DELETE FROM {keyspace}.{TABLE} USING TIMESTAMP ? WHERE customer_id = ?"
            ))
            .await?,
        })
    }
}

/// What every request needs: the session, the statements, the version's timestamp.
pub(super) struct Shared<'a> {
    session: &'a Session,
    statements: Statements,
    timestamp: i64,
    max_attempts: u32,
}

impl<'a> Shared<'a> {
    /// Prepare the statements that load `table`, for writes at `timestamp`.
    pub(super) async fn new(
        session: &'a Session,
        (keyspace, table): (&str, &'static str),
        timestamp: i64,
        max_attempts: u32,
    ) -> Result<Self> {
        Ok(Shared {
            session,
            statements: Statements::prepare(session, keyspace, table).await?,
            timestamp,
            max_attempts,
        })
    }

    async fn send(&self, op: &Op) -> Result<(u32, std::result::Result<Duration, Failed>)> {
        use Statements::{Aggregates, Profiles};
        let (s, n, ts) = (self.session, self.max_attempts.max(1), self.timestamp);
        let wrong = || Error::Invalid("internal error: a write for the other serving table".into());
        let (attempts, r) = match (op, &self.statements) {
            (Op::Upsert(row), Aggregates { upsert, .. }) => {
                let v = row.values()?;
                let values = (v.0, v.1, v.2, v.3, v.4, v.5, v.6, ts);
                retry::execute(s, upsert, &values, n).await
            }
            (Op::DeleteRow { customer_id, day }, Aggregates { delete_row, .. }) => {
                let values = (ts, *customer_id, codec::cql_date(*day)?);
                retry::execute(s, delete_row, &values, n).await
            }
            (
                Op::DeletePartition { customer_id },
                Aggregates {
                    delete_partition, ..
                },
            ) => {
                // Just below this version's writes: every older row of the partition goes,
                // including ones an older load still running writes after this.
                let values = (ts - 1, *customer_id);
                retry::execute(s, delete_partition, &values, n).await
            }
            (Op::UpsertProfile(p), Profiles { upsert, .. }) => {
                let v = p.values()?;
                let values = (
                    v.0, v.1, v.2, v.3, v.4, v.5, v.6, v.7, v.8, v.9, v.10, v.11, v.12, v.13, ts,
                );
                retry::execute(s, upsert, &values, n).await
            }
            (Op::DeleteProfile { customer_id }, Profiles { delete, .. }) => {
                let values = (ts, *customer_id);
                retry::execute(s, delete, &values, n).await
            }
            (Op::SweepProfile { customer_id }, Profiles { delete, .. }) => {
                let values = (ts - 1, *customer_id);
                retry::execute(s, delete, &values, n).await
            }
            _ => return Err(wrong()),
        };
        Ok((
            attempts,
            r.map_err(|e| Failed {
                outage: is_outage(&e),
                text: e.to_string(),
            }),
        ))
    }
}

/// A request that failed after its retries.
struct Failed {
    text: String,
    /// No node could be reached (a refused or broken connection, an empty pool): an outage,
    /// not a bad row.
    outage: bool,
}

/// Whether an error says ScyllaDB cannot be reached at all, rather than refusing a row.
fn is_outage(e: &scylla::errors::ExecutionError) -> bool {
    use scylla::errors::{ExecutionError, RequestAttemptError};
    matches!(
        e,
        ExecutionError::ConnectionPoolError(_)
            | ExecutionError::EmptyPlan
            | ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
    )
}

/// The counts, the latency histogram and the failures of the requests sent.
pub(super) struct Tally {
    histogram: hdrhistogram::Histogram<u64>,
    pub(super) failures: Failures,
    budget: u64,
    /// The last failure, when it was an outage (see [`Failed::outage`]).
    pub(super) outage: Option<String>,
}

impl Tally {
    /// An empty tally failing the load after `budget` failures, which go to `failures_file`.
    pub(super) fn new(failures_file: PathBuf, budget: u64) -> Self {
        Tally {
            histogram: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid bounds"),
            failures: Failures {
                path: failures_file,
                file: None,
            },
            budget,
            outage: None,
        }
    }

    /// The error of a load whose requests failed: ScyllaDB unreachable (exit 5, the stream
    /// treats it as an outage) when the last failure was one, else incomplete (exit 6).
    pub(super) fn error(
        &self,
        what: &'static str,
        counts: &Counts,
        complete: bool,
        version: i64,
        report: serde_json::Value,
    ) -> Error {
        if let Some(outage) = &self.outage {
            return Error::scylla(
                format!(
                    "loading {what} version {version}: ScyllaDB stopped answering \
                     ({} request(s) failed; the version is not recorded, rerun when it is back)",
                    counts.failures
                ),
                outage.clone(),
            );
        }
        Error::LoadIncomplete {
            what,
            failed: counts.failures,
            over_budget: !complete,
            bad_rows_file: counts.bad_rows_file.clone().unwrap_or_default(),
            version,
            report: Box::new(report),
        }
    }

    /// Count one outcome; false when the error budget ran out.
    fn absorb(
        &mut self,
        op: &Op,
        attempts: u32,
        r: std::result::Result<Duration, Failed>,
        report: &mut Counts,
    ) -> Result<bool> {
        report.retries += u64::from(attempts - 1);
        match r {
            Ok(latency) => {
                let _ = self.histogram.record(latency.as_micros().max(1) as u64);
                match op {
                    Op::Upsert(_) | Op::UpsertProfile(_) => report.rows_written += 1,
                    Op::DeleteRow { .. } | Op::DeleteProfile { .. } => report.rows_deleted += 1,
                    Op::DeletePartition { .. } | Op::SweepProfile { .. } => {
                        report.partitions_swept += 1
                    }
                }
                Ok(true)
            }
            Err(e) => {
                report.failures += 1;
                self.failures
                    .write(&op.describe(&e.text, attempts), report)?;
                self.outage = e.outage.then_some(e.text);
                // An outage fails every request alike: stop at once.
                Ok(report.failures <= self.budget && self.outage.is_none())
            }
        }
    }

    pub(super) fn latency(&self) -> Latency {
        let q = |p: f64| self.histogram.value_at_quantile(p) as f64 / 1000.0;
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.histogram.max() as f64 / 1000.0,
        }
    }
}

/// Send every op, `concurrency` at a time; false when the error budget ran out (the load
/// stops early). `midway` is the upsert count at which the `load.midway` failpoint fires.
pub(super) async fn send_all(
    shared: &Shared<'_>,
    tally: &mut Tally,
    ops: impl Stream<Item = Result<Op>>,
    concurrency: usize,
    (report, midway): (&mut Counts, u64),
    progress: &Progress,
) -> Result<bool> {
    let mut results = std::pin::pin!(
        ops.map_ok(|op| async move {
            let (attempts, r) = shared.send(&op).await?;
            Ok::<_, Error>((op, attempts, r))
        })
        .try_buffer_unordered(concurrency.max(1))
    );
    while let Some(item) = results.next().await {
        let (op, attempts, r) = item?;
        if !tally.absorb(&op, attempts, r, report)? {
            return Ok(false);
        }
        progress.inc(1);
        if matches!(op, Op::Upsert(_)) && report.rows_written == midway {
            crate::failpoints::hit("load.midway");
        }
    }
    Ok(true)
}

/// Failed requests, written as JSON lines to a file created on the first one.
pub(super) struct Failures {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Failures {
    fn write(&mut self, line: &serde_json::Value, report: &mut Counts) -> Result<()> {
        let io = |e| Error::io(format!("cannot write {}", self.path.display()), e);
        if self.file.is_none() {
            std::fs::create_dir_all(self.path.parent().expect("has a parent")).map_err(io)?;
            self.file = Some(std::io::BufWriter::new(
                std::fs::File::create(&self.path).map_err(io)?,
            ));
            report.bad_rows_file = Some(self.path.clone());
        }
        let f = self.file.as_mut().expect("created");
        writeln!(f, "{line}")
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))
    }

    pub(super) fn close(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()
                .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
        }
        Ok(())
    }
}

/// Write the plan's rows (its work is `Full` or `Days`), delete what must go, and record the
/// version when every request succeeded. Fills `report`. A failed load leaves its marker: the
/// next load makes its writes good.
pub async fn execute(
    plan: &mut Plan,
    opts: &LoadOptions,
    layout: &Layout,
    session: &Session,
    report: &mut LoadReport,
    progress: &Progress,
) -> Result<()> {
    let keyspace = &opts.scylla.keyspace;
    let serving = plan
        .serving
        .take()
        .ok_or_else(|| Error::Invalid("internal error: loading without a marked claim".into()))?;
    let timestamp = serving.timestamp();
    report.write_timestamp = Some(timestamp);
    let shared = Shared::new(session, (keyspace, TABLE), timestamp, opts.max_attempts).await?;
    let mut tally = Tally::new(
        failures_file(layout, "", plan.version),
        opts.max_errors.allowed(report.rows_to_load),
    );
    let complete = send_work(plan, opts, &shared, &mut tally, report, progress).await?;
    tally.failures.close()?;
    report.latency_ms = tally.latency();
    if report.counts.failures > 0 {
        let so_far = serde_json::to_value(&*report).unwrap_or_default();
        return Err(tally.error(TABLE, &report.counts, complete, plan.version, so_far));
    }
    if !serving
        .finish(session, keyspace, report.counts.rows_written)
        .await?
    {
        tracing::info!(
            version = plan.version,
            "a newer version was recorded meanwhile; its rows win"
        );
        report.overtaken = true;
    }
    Ok(())
}

/// Where a load's failed requests go: `load/bad-rows[-what]-v<version>-<time>.jsonl`.
pub(super) fn failures_file(layout: &Layout, what: &str, version: i64) -> PathBuf {
    layout.load_dir().join(format!(
        "bad-rows{what}-v{version}-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ))
}

/// Send the plan's writes and deletes; false when the error budget stopped it early.
async fn send_work(
    plan: &Plan,
    opts: &LoadOptions,
    shared: &Shared<'_>,
    tally: &mut Tally,
    report: &mut LoadReport,
    progress: &Progress,
) -> Result<bool> {
    let (n, session, keyspace) = (opts.concurrency, shared.session, &opts.scylla.keyspace);
    let midway = report.rows_to_load / 2;
    Ok(match &plan.work {
        Work::Days { days, olds } => {
            let unchanged = AtomicU64::new(0);
            let ops = changed_rows(plan, days, olds, &unchanged, progress);
            let counts = (&mut report.counts, midway);
            let complete = send_all(shared, tally, ops, n, counts, progress).await?;
            report.rows_unchanged = unchanged.into_inner();
            complete
        }
        Work::Full { sweep, olds } => {
            let rows = upserts(plan, opts.parallel_files);
            let counts = (&mut report.counts, midway);
            let mut complete = send_all(shared, tally, rows, n, counts, progress).await?;
            if complete && !olds.is_empty() {
                let gone = vanished(plan, olds);
                let counts = (&mut report.counts, midway);
                complete = send_all(shared, tally, gone, n, counts, progress).await?;
            }
            if complete && *sweep {
                let partitions = partitions(session, keyspace);
                let counts = (&mut report.counts, midway);
                send_all(shared, tally, partitions, n, counts, progress).await?
            } else {
                complete
            }
        }
        Work::Nothing | Work::Overtaken => true,
    })
}

/// Every row of the plan's files, as upserts.
fn upserts(plan: &Plan, parallel: usize) -> impl Stream<Item = Result<Op>> + '_ {
    futures::stream::iter(
        plan.files
            .iter()
            .map(|f| Box::pin(codec::file_rows(&plan.table, f))),
    )
    .flatten_unordered(parallel.max(1))
    .map_ok(|rows| futures::stream::iter(rows.into_iter().map(|r| Ok(Op::Upsert(r)))))
    .try_flatten()
}

/// The writes that turn whatever ScyllaDB may hold of the changed days (the rows of any of
/// `olds`) into this version's, row by row: upserts of rows that differ from any old one (or
/// are missing from one), deletes of rows any old one had and this version has not; rows
/// equal in every old version are counted in `unchanged`. One day's rows are held at a time.
fn changed_rows<'a>(
    plan: &'a Plan,
    days: &'a std::collections::BTreeSet<Day>,
    olds: &'a [deltalake::DeltaTable],
    unchanged: &'a AtomicU64,
    progress: &'a Progress,
) -> impl Stream<Item = Result<Op>> + 'a {
    futures::stream::iter(days.iter().copied())
        .then(move |day| day_changes(plan, olds, day, unchanged, progress))
        .map_ok(|ops| futures::stream::iter(ops.into_iter().map(Ok)))
        .try_flatten()
}

async fn day_changes(
    plan: &Plan,
    olds: &[deltalake::DeltaTable],
    day: Day,
    unchanged: &AtomicU64,
    progress: &Progress,
) -> Result<Vec<Op>> {
    let days = std::collections::BTreeSet::from([day]);
    let mut before: Vec<HashMap<i64, AggRow>> = Vec::with_capacity(olds.len());
    for old in olds {
        let mut rows = HashMap::new();
        for f in delta::files(old, Table::Aggregates, Some(&days))? {
            let mut s = std::pin::pin!(codec::file_rows(old, &f));
            while let Some(batch) = s.next().await {
                rows.extend(batch?.into_iter().map(|r| (r.customer_id, r)));
            }
        }
        before.push(rows);
    }
    let mut ops = Vec::new();
    let mut now: HashSet<i64> = HashSet::new();
    for f in plan.files.iter().filter(|f| f.day == Some(day)) {
        let mut s = std::pin::pin!(codec::file_rows(&plan.table, f));
        while let Some(rows) = s.next().await {
            for row in rows? {
                now.insert(row.customer_id);
                if before.iter().all(|b| b.get(&row.customer_id) == Some(&row)) {
                    unchanged.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                } else {
                    ops.push(Op::Upsert(row));
                }
            }
        }
    }
    let gone: std::collections::BTreeSet<i64> = before
        .iter()
        .flat_map(|b| b.keys().copied())
        .filter(|c| !now.contains(c))
        .collect();
    ops.extend(
        gone.into_iter()
            .map(|customer_id| Op::DeleteRow { customer_id, day }),
    );
    Ok(ops)
}

/// Deletes of the rows any of `olds` has and this version has not, day by day (one day's
/// customers held at a time).
fn vanished<'a>(
    plan: &'a Plan,
    olds: &'a [deltalake::DeltaTable],
) -> impl Stream<Item = Result<Op>> + 'a {
    let days: std::collections::BTreeSet<Day> = olds
        .iter()
        .filter_map(|t| delta::files(t, Table::Aggregates, None).ok())
        .flatten()
        .filter_map(|f| f.day)
        .collect();
    futures::stream::iter(days)
        .then(move |day| async move {
            let mut now: HashSet<i64> = HashSet::new();
            for f in plan.files.iter().filter(|f| f.day == Some(day)) {
                let mut s = std::pin::pin!(codec::file_customers(&plan.table, f));
                while let Some(ids) = s.next().await {
                    now.extend(ids?);
                }
            }
            let mut gone = std::collections::BTreeSet::new();
            let one = std::collections::BTreeSet::from([day]);
            for old in olds {
                for f in delta::files(old, Table::Aggregates, Some(&one))? {
                    let mut s = std::pin::pin!(codec::file_customers(old, &f));
                    while let Some(ids) = s.next().await {
                        gone.extend(ids?.into_iter().filter(|c| !now.contains(c)));
                    }
                }
            }
            Ok::<_, Error>(
                gone.into_iter()
                    .map(|customer_id| Op::DeleteRow { customer_id, day })
                    .collect::<Vec<_>>(),
            )
        })
        .map_ok(|ops| futures::stream::iter(ops.into_iter().map(Ok)))
        .try_flatten()
}

/// Every partition of the serving table, to delete its rows older than this version.
fn partitions<'a>(session: &'a Session, keyspace: &'a str) -> impl Stream<Item = Result<Op>> + 'a {
    let what = "listing the serving table's partitions";
    futures::stream::once(async move {
        let mut q = scylla::statement::unprepared::Statement::new(format!(
            "SELECT DISTINCT customer_id FROM {keyspace}.{TABLE}"
        ));
        q.set_page_size(5000);
        q.set_consistency(crate::cql::progress::consistency(session));
        let rows = session
            .query_iter(q, ())
            .await
            .map_err(|e| Error::scylla(what, e))?
            .rows_stream::<(i64,)>()
            .map_err(|e| Error::scylla(what, e))?;
        Ok::<_, Error>(rows.map(move |r| {
            r.map(|(customer_id,)| Op::DeletePartition { customer_id })
                .map_err(|e| Error::scylla(what, e))
        }))
    })
    .try_flatten()
}
