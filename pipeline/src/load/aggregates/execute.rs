//! Executing an aggregates load plan: every write carries the version's timestamp, rows are upserted,
//! vanished rows deleted, and (on a full load) older rows of every partition swept; all
//! through the [`sender`](crate::load::sender) (in-flight requests, retries, failures to a file). The
//! version is recorded only when every request succeeded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;

use super::plan::{Plan, Work};
use crate::cql::codec::{self, AggRow};
use crate::cql::schema::TABLE;
use crate::dates::Day;
use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::load::LoadOptions;
use crate::load::report::LoadReport;
use crate::load::sender::{Op, Sender, Tally, customers, failures_file, send_all};
use crate::progress::Progress;
use crate::tables::Table;

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
    let sender = Sender::new(session, (keyspace, TABLE), timestamp, opts.max_attempts).await?;
    let mut tally = Tally::new(
        failures_file(layout, "", plan.version),
        opts.max_errors.allowed(report.rows_to_load),
    );
    let complete = send_work(plan, opts, &sender, &mut tally, report, progress).await?;
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

/// Send the plan's writes and deletes; false when the error budget stopped it early.
async fn send_work(
    plan: &Plan,
    opts: &LoadOptions,
    sender: &Sender<'_>,
    tally: &mut Tally,
    report: &mut LoadReport,
    progress: &Progress,
) -> Result<bool> {
    let (n, session, keyspace) = (opts.concurrency, sender.session(), &opts.scylla.keyspace);
    let midway = report.rows_to_load / 2;
    Ok(match &plan.work {
        Work::Days { days, olds } => {
            let unchanged = AtomicU64::new(0);
            let ops = changed_rows(plan, days, olds, &unchanged, progress);
            let counts = (&mut report.counts, midway);
            let complete = send_all(sender, tally, ops, n, counts, progress).await?;
            report.rows_unchanged = unchanged.into_inner();
            complete
        }
        Work::Full { sweep, olds } => {
            let rows = upserts(plan, opts.parallel_files);
            let counts = (&mut report.counts, midway);
            let mut complete = send_all(sender, tally, rows, n, counts, progress).await?;
            if complete && !olds.is_empty() {
                let gone = vanished(plan, olds);
                let counts = (&mut report.counts, midway);
                complete = send_all(sender, tally, gone, n, counts, progress).await?;
            }
            if complete && *sweep {
                let op = |customer_id| Op::DeletePartition { customer_id };
                let partitions = customers(session, keyspace, TABLE, op);
                let counts = (&mut report.counts, midway);
                send_all(sender, tally, partitions, n, counts, progress).await?
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
