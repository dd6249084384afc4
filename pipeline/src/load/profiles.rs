//! Serving `customer_profiles` from ScyllaDB, with the aggregates' guarantees: after a load
//! the serving table holds the Delta table's rows of the recorded version, no more, no less.
//!
//! Each profiles version is a whole snapshot (one row per customer), so a load writes the
//! rows of version `v` that differ from the last recorded version `p` and deletes the
//! customers `p` had and `v` has not, at timestamp `base + v` (newest wins, as for the
//! aggregates). Skipping rows equal in `p` and `v` is only safe if no other load wrote a
//! version in between: a load killed or still running may have written rows of its version
//! `L`. So every load first leaves a marker (`customer_profiles#loading#L` in the progress
//! table), and a later load treats every older marker's version as one more `p`: it writes
//! the rows that differ from any of them and deletes the customers any of them had. It
//! records `v` only if the record still says `p` (compare and set; otherwise it goes again
//! from the newer record), then removes the markers it accounted for.

use std::time::Instant;

use deltalake::DeltaTable;
use futures::{Stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use serde::Serialize;

use super::LoadOptions;
use super::execute::{Op, Shared, Tally, failures_file, send_all};
use super::report::Counts;
use crate::cql::profile::ProfileRow;
use crate::cql::progress::{self, LoadProgress, Marker, PROFILES};
use crate::cql::schema::PROFILES_TABLE;
use crate::delta::{self, query};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::report::thousands;
use crate::tables::Table;

/// Rounds of "another load recorded meanwhile, go again" before giving up.
const MAX_ROUNDS: u32 = 5;

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
    /// Rounds (more than one when another load recorded a version meanwhile).
    pub rounds: u32,
    /// What the requests did.
    #[serde(flatten)]
    pub counts: Counts,
    /// Wall time.
    pub seconds: f64,
}

impl ProfilesLoad {
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

/// The work of one round.
enum Work {
    Nothing,
    Overtaken,
    /// Write every row, then (when `sweep`) delete every older row.
    Full {
        sweep: bool,
    },
    /// Write the rows differing from any of `olds`, delete the customers only they have.
    Diff {
        olds: Vec<DeltaTable>,
    },
}

/// Load the profiles changed since the last loaded version; None when there is no profiles
/// table (`pipeline profiles` never ran).
pub async fn serve(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
) -> Result<Option<ProfilesLoad>> {
    let started = Instant::now();
    let Some(mut table) = delta::open(layout, Table::Profiles).await? else {
        return Ok(None);
    };
    let keyspace = &opts.scylla.keyspace;
    let mut report = ProfilesLoad::default();
    loop {
        report.rounds += 1;
        let table_id = delta::table_id(&table, Table::Profiles)?;
        let version = delta::version(&table);
        let (record, first_ever) = claimed(session, keyspace, &table_id).await?;
        let from = record.version;
        let all_markers = progress::markers(session, keyspace, PROFILES).await?;
        let older: Vec<Marker> = all_markers
            .iter()
            .filter(|m| m.table_id == table_id && m.version < version)
            .cloned()
            .collect();
        let previous = (from >= 0).then_some(from);
        report.table_id = table_id.clone();
        report.previous_version = report.previous_version.or(previous);
        let work = match previous {
            // Nothing older to sweep only on the first load ever, with no marker of a load
            // before it, into an empty table.
            None => Work::Full {
                sweep: !(first_ever
                    && all_markers.is_empty()
                    && serving_table_empty(session, keyspace).await?),
            },
            Some(p) if p > version => Work::Overtaken,
            Some(p) if p == version && older.is_empty() => Work::Nothing,
            Some(p) => diff_against(layout, p, &older).await,
        };
        match work {
            Work::Nothing => {
                report.version = Some(version);
                break;
            }
            Work::Overtaken => {
                report.overtaken = true;
                break;
            }
            _ => {}
        }
        report.full_load |= matches!(work, Work::Full { .. });
        let own = progress::mark(session, keyspace, PROFILES, &table_id, version).await?;
        crate::failpoints::pause("load.profiles_after_mark");
        write(session, layout, opts, &table, &record, &work, &mut report).await?;
        crate::failpoints::hit("load.profiles_before_record");
        let rows = report.counts.rows_written;
        if progress::record_from(session, keyspace, PROFILES, &table_id, from, version, rows)
            .await?
        {
            let mut done = match work {
                // Every older row is overwritten or swept: markers of any version are done.
                Work::Full { sweep: true } => all_markers,
                Work::Full { sweep: false } => Vec::new(),
                _ => older,
            };
            report.loads_made_good += done.len() as u64;
            done.push(own);
            progress::unmark(session, keyspace, &done).await?;
            report.version = Some(version);
            break;
        }
        if report.rounds >= MAX_ROUNDS {
            return Err(Error::Invalid(format!(
                "other loads kept recording {PROFILES_TABLE} versions while this one wrote \
                 ({MAX_ROUNDS} rounds); its writes are marked and the next load makes them good: \
                 run `pipeline load` again"
            )));
        }
        tracing::info!(
            version,
            "another load recorded a profiles version meanwhile; going again from it"
        );
        table = delta::open(layout, Table::Profiles)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{} vanished", Table::Profiles)))?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(Some(report))
}

/// The progress record of the profiles table `table_id`, claimed if it serves another one
/// or none; and whether there was no record at all before.
async fn claimed(
    session: &Session,
    keyspace: &str,
    table_id: &str,
) -> Result<(LoadProgress, bool)> {
    let current = progress::read(session, keyspace, PROFILES).await?;
    let first_ever = current.is_none();
    if let Some(p) = current.as_ref().filter(|p| p.table_id == table_id) {
        return Ok((p.clone(), false));
    }
    if let Some(p) = &current {
        tracing::warn!(served = %p.table_id, table = %table_id,
            "ScyllaDB serves another profiles table: loading everything and deleting the rest");
    }
    let claimed = progress::claim(session, keyspace, PROFILES, current.as_ref(), table_id).await?;
    if claimed.table_id != table_id {
        return Err(Error::Invalid(format!(
            "another load is serving profiles table {} into keyspace {keyspace} at the same \
             moment (this one is {table_id}); run one load at a time per keyspace",
            claimed.table_id
        )));
    }
    Ok((claimed, first_ever))
}

/// A diff against version `p` and the older markers' versions; everything (with a sweep)
/// when one of them cannot be read any more.
async fn diff_against(layout: &Layout, p: i64, markers: &[Marker]) -> Work {
    let mut olds = Vec::new();
    let mut versions: Vec<i64> = markers.iter().map(|m| m.version).collect();
    versions.push(p);
    versions.sort_unstable();
    versions.dedup();
    for v in versions {
        match delta::open_at(layout, Table::Profiles, v).await {
            Ok(t) => olds.push(t),
            Err(e) => {
                tracing::warn!(error = %e.chain(),
                    "cannot read profiles version {v} to find changed rows; loading everything");
                return Work::Full { sweep: true };
            }
        }
    }
    Work::Diff { olds }
}

/// Send the round's writes; an error when any failed (nothing recorded; the marker stays).
async fn write(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
    table: &DeltaTable,
    record: &LoadProgress,
    work: &Work,
    report: &mut ProfilesLoad,
) -> Result<()> {
    let version = delta::version(table);
    let shared = Shared::new(
        session,
        &opts.scylla.keyspace,
        record.timestamp(version),
        opts.max_attempts,
    )
    .await?;
    let budget = opts.max_errors.allowed(table_rows(table)?);
    let mut tally = Tally::new(failures_file(layout, "-profiles", version), budget);
    let hidden = Progress::hidden();
    let (n, counts) = (opts.concurrency, &mut report.counts);
    let ctx = query::session(QUERY_MEMORY);
    query::register(&ctx, "new", table, None).await?;
    let (upserts, deletes) = match work {
        Work::Full { .. } => ("SELECT * FROM new".to_string(), None),
        Work::Diff { olds } => {
            let mut names = Vec::new();
            for (i, t) in olds.iter().enumerate() {
                let name = format!("old{i}");
                query::register(&ctx, &name, t, None).await?;
                names.push(name);
            }
            let same = names
                .iter()
                .map(|n| format!("SELECT * FROM {n}"))
                .collect::<Vec<_>>()
                .join(" INTERSECT ");
            let had = names
                .iter()
                .map(|n| format!("SELECT customer_id FROM {n}"))
                .collect::<Vec<_>>()
                .join(" UNION ");
            (
                format!("SELECT * FROM new EXCEPT ({same})"),
                Some(format!("({had}) EXCEPT SELECT customer_id FROM new")),
            )
        }
        Work::Nothing | Work::Overtaken => unreachable!("no writes"),
    };
    let rows = upsert_ops(ctx.sql(&upserts).await?.execute_stream().await?);
    let mut complete = send_all(&shared, &mut tally, rows, n, (counts, u64::MAX), &hidden).await?;
    if complete && let Some(q) = deletes {
        let gone = delete_ops(ctx.sql(&q).await?.execute_stream().await?);
        complete = send_all(&shared, &mut tally, gone, n, (counts, u64::MAX), &hidden).await?;
    }
    if complete && matches!(work, Work::Full { sweep: true }) {
        let swept = sweep_ops(session, &opts.scylla.keyspace);
        complete = send_all(&shared, &mut tally, swept, n, (counts, u64::MAX), &hidden).await?;
    }
    tally.failures.close()?;
    if counts.failures > 0 {
        return Err(Error::LoadIncomplete {
            failed: counts.failures,
            over_budget: !complete,
            bad_rows_file: counts.bad_rows_file.clone().unwrap_or_default(),
            version,
            report: Box::new(serde_json::to_value(&*report).unwrap_or_default()),
        });
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

/// Every profile in ScyllaDB, to delete it just below this version (ours stay).
fn sweep_ops<'a>(session: &'a Session, keyspace: &'a str) -> impl Stream<Item = Result<Op>> + 'a {
    let what = "listing the served profiles";
    futures::stream::once(async move {
        let mut q = scylla::statement::unprepared::Statement::new(format!(
            "SELECT customer_id FROM {keyspace}.{PROFILES_TABLE}"
        ));
        q.set_page_size(5000);
        let rows = session
            .query_iter(q, ())
            .await
            .map_err(|e| Error::scylla(what, e))?
            .rows_stream::<(i64,)>()
            .map_err(|e| Error::scylla(what, e))?;
        Ok::<_, Error>(rows.map(move |r| {
            r.map(|(customer_id,)| Op::SweepProfile { customer_id })
                .map_err(|e| Error::scylla(what, e))
        }))
    })
    .try_flatten()
}

/// True when no profile is served (checked after this load claimed the record).
async fn serving_table_empty(session: &Session, keyspace: &str) -> Result<bool> {
    let what = "checking whether the profiles serving table is empty";
    let rows = session
        .query_unpaged(
            format!("SELECT customer_id FROM {keyspace}.{PROFILES_TABLE} LIMIT 1"),
            (),
        )
        .await
        .map_err(|e| Error::scylla(what, e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what, e))?;
    Ok(rows.rows_num() == 0)
}
