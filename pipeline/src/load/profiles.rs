//! Serving `customer_profiles` from ScyllaDB, with the aggregates' guarantees and the same
//! serving protocol ([`super::claim`]): after a load the serving table holds the Delta
//! table's rows of the recorded version, no more, no less.
//!
//! Each profiles version is a whole snapshot (one row per customer), so a load of version `v`
//! writes the rows that differ from any version ScyllaDB may hold (the recorded one, and
//! those of loads in progress or killed, which left markers) and deletes the customers any of
//! them had and `v` has not, at `v`'s timestamp (newest wins, as for the aggregates). When
//! one of those versions cannot be read (vacuumed), it writes every row and deletes every
//! older one instead.

use std::time::Instant;

use deltalake::DeltaTable;
use futures::{Stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use serde::Serialize;

use super::LoadOptions;
use super::claim::{self, Begun, Serving, state::PROFILES};
use super::report::Counts;
use super::sender::{Op, Sender, Tally, customers, failures_file, send_all};
use crate::cql::profile::ProfileRow;
use crate::cql::schema::PROFILES_TABLE;
use crate::delta::{self, query};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::report::thousands;
use crate::tables::Table;

/// Memory the diff's queries may use.
const QUERY_MEMORY: usize = 256 * 1024 * 1024;

/// What serving the profiles did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfilesLoad {
    /// Identity (Delta table id) of the profiles served.
    pub table_id: String,
    /// The profiles version recorded as loaded by this run.
    pub version: Option<i64>,
    /// The version recorded before (none: never).
    pub previous_version: Option<i64>,
    /// Every row was written (first load, another table, or the old version unreadable).
    pub full_load: bool,
    /// A newer version was recorded by another load: nothing more to do.
    pub overtaken: bool,
    /// Loads in progress or killed whose writes this one made good (their markers).
    pub loads_made_good: u64,
    /// Why every row was written, when it was.
    pub full_because: Option<String>,
    /// Rounds (always 1: kept for the report's shape).
    pub rounds: u32,
    /// What the requests did.
    #[serde(flatten)]
    pub counts: Counts,
    /// Wall time.
    pub seconds: f64,
}

impl ProfilesLoad {
    fn done(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self
    }

    /// One line for `load`'s text report.
    pub fn text(&self) -> String {
        let v = crate::report::version(self.version);
        if self.overtaken {
            return format!("profiles: a newer version than {v} is already loaded");
        }
        let c = &self.counts;
        if c.rows_written + c.rows_deleted + c.partitions_swept == 0 && !self.full_load {
            return format!("profiles: version {v} is already loaded");
        }
        format!(
            "profiles: version {v} ({}; last loaded: {}): {} rows written, {} deleted, {} swept, {} retries, {} failures, {:.2} s",
            if self.full_load {
                "everything"
            } else {
                "changed customers"
            },
            crate::report::version(self.previous_version),
            thousands(self.counts.rows_written),
            thousands(self.counts.rows_deleted),
            thousands(self.counts.partitions_swept),
            self.counts.retries,
            self.counts.failures,
            self.seconds
        )
    }
}

/// The work of a load.
enum Work {
    /// Write every row, delete the customers `olds` had and this version has not (by key:
    /// a load still running may write them after the sweep listed the partitions), then
    /// (when `sweep`) delete every older row.
    Full { sweep: bool, olds: Vec<DeltaTable> },
    /// Write the rows differing from any of `olds`, delete the customers only they have.
    Diff { olds: Vec<DeltaTable> },
}

/// Load the profiles changed since the versions ScyllaDB may hold; None when there is no
/// profiles table (`pipeline profiles` never ran).
pub async fn serve(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
) -> Result<Option<ProfilesLoad>> {
    let started = Instant::now();
    let keyspace = &opts.scylla.keyspace;
    let open = claim::Open::IfAny;
    let which = (PROFILES, Table::Profiles, false);
    let Some((table, begun, rounds)) =
        claim::begin_latest(session, layout, opts, which, open).await?
    else {
        return Ok(None);
    };
    let version = delta::version(&table);
    let mut report = ProfilesLoad {
        table_id: delta::table_id(&table, Table::Profiles)?,
        rounds,
        ..Default::default()
    };
    let mut serving = match begun {
        Begun::Nothing => {
            report.version = Some(version);
            report.previous_version = Some(version);
            return Ok(Some(report.done(started)));
        }
        Begun::Overtaken => {
            report.overtaken = true;
            return Ok(Some(report.done(started)));
        }
        Begun::DryRun(_) => return Ok(None),
        Begun::Go(s) => s,
    };
    report.previous_version = serving.claim().recorded;
    report.loads_made_good = serving.claim().made_good.len() as u64;
    let work = work(layout, session, keyspace, &mut serving).await?;
    report.full_load = matches!(work, Work::Full { .. });
    report.full_because = serving.claim().full.clone();
    crate::failpoints::pause("load.profiles_after_mark");
    write(session, layout, opts, &table, &serving, &work, &mut report).await?;
    crate::failpoints::hit("load.profiles_before_record");
    let rows = report.counts.rows_written;
    report.overtaken = !serving.finish(session, keyspace, rows).await?;
    report.version = Some(version);
    Ok(Some(report.done(started)))
}

/// The claim's work: every row, or a diff against the old versions (every row when one of
/// them cannot be read any more).
async fn work(
    layout: &Layout,
    session: &Session,
    keyspace: &str,
    serving: &mut Serving,
) -> Result<Work> {
    let claim = serving.claim().clone();
    let mut olds = Vec::new();
    let mut unreadable = None;
    for &v in &claim.olds {
        let old = match delta::open_at(layout, Table::Profiles, v).await {
            Ok(t) => delta::check_files_exist(&t, Table::Profiles, None)
                .await
                .map(|()| t),
            Err(e) => Err(e),
        };
        match old {
            Ok(t) => olds.push(t),
            Err(e) => {
                unreadable.get_or_insert_with(|| {
                    format!(
                        "profiles version {v} cannot be read to find changed rows ({})",
                        e.chain()
                    )
                });
            }
        }
    }
    if claim.full.is_some() {
        let sweep = claim
            .sweep
            .resolve(session, keyspace, PROFILES_TABLE)
            .await?;
        return Ok(Work::Full { sweep, olds });
    }
    if let Some(why) = unreadable {
        tracing::warn!("{why}; loading everything");
        serving.go_full(why);
        return Ok(Work::Full { sweep: true, olds });
    }
    Ok(Work::Diff { olds })
}

/// Send the round's writes; an error when any failed (nothing recorded; the marker stays).
async fn write(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
    table: &DeltaTable,
    serving: &Serving,
    work: &Work,
    report: &mut ProfilesLoad,
) -> Result<()> {
    let version = delta::version(table);
    let sender = Sender::new(
        session,
        (&opts.scylla.keyspace, PROFILES_TABLE),
        serving.timestamp(),
        opts.max_attempts,
    )
    .await?;
    let budget = opts.max_errors.allowed(table_rows(table)?);
    let mut tally = Tally::new(failures_file(layout, "-profiles", version), budget);
    let hidden = Progress::hidden();
    let (n, counts) = (opts.concurrency, &mut report.counts);
    let ctx = query::session(QUERY_MEMORY);
    query::register(&ctx, "new", table, None).await?;
    let olds = match work {
        Work::Full { olds, .. } | Work::Diff { olds } => olds,
    };
    let mut names = Vec::new();
    for (i, t) in olds.iter().enumerate() {
        let name = format!("old{i}");
        query::register(&ctx, &name, t, None).await?;
        names.push(name);
    }
    let had = names
        .iter()
        .map(|n| format!("SELECT customer_id FROM {n}"))
        .collect::<Vec<_>>()
        .join(" UNION ");
    let deletes =
        (!names.is_empty()).then(|| format!("({had}) EXCEPT SELECT customer_id FROM new"));
    let upserts = match work {
        Work::Full { .. } => "SELECT * FROM new".to_string(),
        Work::Diff { .. } => {
            let same = names
                .iter()
                .map(|n| format!("SELECT * FROM {n}"))
                .collect::<Vec<_>>()
                .join(" INTERSECT ");
            format!("SELECT * FROM new EXCEPT ({same})")
        }
    };
    let rows = upsert_ops(ctx.sql(&upserts).await?.execute_stream().await?);
    let mut complete = send_all(&sender, &mut tally, rows, n, (counts, u64::MAX), &hidden).await?;
    if complete && let Some(q) = deletes {
        let gone = delete_ops(ctx.sql(&q).await?.execute_stream().await?);
        complete = send_all(&sender, &mut tally, gone, n, (counts, u64::MAX), &hidden).await?;
    }
    if complete && matches!(work, Work::Full { sweep: true, .. }) {
        let op = |customer_id| Op::SweepProfile { customer_id };
        let swept = customers(session, &opts.scylla.keyspace, PROFILES_TABLE, op);
        complete = send_all(&sender, &mut tally, swept, n, (counts, u64::MAX), &hidden).await?;
    }
    tally.failures.close()?;
    if report.counts.failures > 0 {
        let so_far = serde_json::to_value(&*report).unwrap_or_default();
        return Err(tally.error(PROFILES_TABLE, &report.counts, complete, version, so_far));
    }
    Ok(())
}

/// Rows of the table's current version, from the log.
fn table_rows(t: &DeltaTable) -> Result<u64> {
    Ok(delta::files(t, Table::Profiles, None)?
        .iter()
        .map(|f| f.rows)
        .sum())
}

type Batches = deltalake::datafusion::physical_plan::SendableRecordBatchStream;

fn upsert_ops(batches: Batches) -> impl Stream<Item = Result<Op>> {
    batches
        .map(|b| {
            let rows = ProfileRow::from_batch(&b?)?;
            Ok::<_, Error>(futures::stream::iter(
                rows.into_iter().map(|r| Ok(Op::UpsertProfile(Box::new(r)))),
            ))
        })
        .try_flatten()
}

fn delete_ops(batches: Batches) -> impl Stream<Item = Result<Op>> {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Int64Type;
    batches
        .map(|b| {
            let b = b?;
            let ids = b.column(0).as_primitive::<Int64Type>().values().to_vec();
            Ok::<_, Error>(futures::stream::iter(
                ids.into_iter()
                    .map(|customer_id| Ok(Op::DeleteProfile { customer_id })),
            ))
        })
        .try_flatten()
}
