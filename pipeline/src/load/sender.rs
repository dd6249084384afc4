//! Sending a load's writes to a serving table: prepared, idempotent statements at the
//! version's write timestamp, `--concurrency` requests in flight over one session, each
//! retried ([`crate::cql::retry`]); outcomes counted, latencies recorded, failures written to
//! a file, and the load stopped when the error budget runs out or ScyllaDB is unreachable.
//! Both serving tables' loads ([`super::aggregates`], [`super::profiles`]) send through it,
//! as vector's sinks share one request service.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::report::{Counts, Latency};
use crate::cql::codec::{self, AggRow};
use crate::cql::profile::ProfileRow;
use crate::cql::schema::PROFILES_TABLE;
use crate::cql::{retry, statements};
use crate::dates::{self, Day};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;

/// One write to a serving table.
pub enum Op {
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
                upsert: prep(statements::upsert_profile(keyspace)).await?,
                delete: prep(statements::delete_profile(keyspace)).await?,
            });
        }
        Ok(Statements::Aggregates {
            upsert: prep(statements::upsert_aggregate(keyspace)).await?,
            delete_row: prep(statements::delete_aggregate_row(keyspace)).await?,
            delete_partition: prep(statements::delete_aggregate_partition(keyspace)).await?,
        })
    }
}

/// What every request needs: the session, the statements, the version's timestamp.
pub struct Sender<'a> {
    session: &'a Session,
    statements: Statements,
    timestamp: i64,
    max_attempts: u32,
}

impl<'a> Sender<'a> {
    /// Prepare the statements that load `table`, for writes at `timestamp`.
    pub async fn new(
        session: &'a Session,
        (keyspace, table): (&str, &'static str),
        timestamp: i64,
        max_attempts: u32,
    ) -> Result<Self> {
        Ok(Sender {
            session,
            statements: Statements::prepare(session, keyspace, table).await?,
            timestamp,
            max_attempts,
        })
    }

    /// The session it sends on.
    pub fn session(&self) -> &'a Session {
        self.session
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
pub struct Tally {
    histogram: hdrhistogram::Histogram<u64>,
    pub failures: Failures,
    budget: u64,
    /// The last failure, when it was an outage (see [`Failed::outage`]).
    pub outage: Option<String>,
}

impl Tally {
    /// An empty tally failing the load after `budget` failures, which go to `failures_file`.
    pub fn new(failures_file: PathBuf, budget: u64) -> Self {
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
    pub fn error(
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

    pub fn latency(&self) -> Latency {
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
pub async fn send_all(
    sender: &Sender<'_>,
    tally: &mut Tally,
    ops: impl Stream<Item = Result<Op>>,
    concurrency: usize,
    (report, midway): (&mut Counts, u64),
    progress: &Progress,
) -> Result<bool> {
    let mut results = std::pin::pin!(
        ops.map_ok(|op| async move {
            let (attempts, r) = sender.send(&op).await?;
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
pub struct Failures {
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

    pub fn close(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()
                .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
        }
        Ok(())
    }
}

/// Where a load's failed requests go: `load/bad-rows[-what]-v<version>-<time>.jsonl`.
pub fn failures_file(layout: &Layout, what: &str, version: i64) -> PathBuf {
    layout.load_dir().join(format!(
        "bad-rows{what}-v{version}-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ))
}

/// Every customer served in `table`, as the op `op` makes of each (a full load's sweep of
/// what older loads wrote), read at the consistency the load's decisions rest on.
pub fn customers<'a>(
    session: &'a Session,
    keyspace: &'a str,
    table: &'static str,
    op: fn(i64) -> Op,
) -> impl Stream<Item = Result<Op>> + 'a {
    let what = format!("listing the customers served in {keyspace}.{table}");
    futures::stream::once(async move {
        let mut q =
            scylla::statement::unprepared::Statement::new(statements::customers(keyspace, table));
        q.set_page_size(5000);
        q.set_consistency(crate::cql::consistency(session));
        let rows = session
            .query_iter(q, ())
            .await
            .map_err(|e| Error::scylla(what.clone(), e))?
            .rows_stream::<(i64,)>()
            .map_err(|e| Error::scylla(what.clone(), e))?;
        Ok::<_, Error>(rows.map(move |r| {
            r.map(|(customer_id,)| op(customer_id))
                .map_err(|e| Error::scylla(what.clone(), e))
        }))
    })
    .try_flatten()
}
