//! `verify`: ScyllaDB against the Delta aggregates at the version recorded as loaded, day by
//! day (row count, total, and a sum of per-row fingerprints of every column), and the served
//! table's identity against the current aggregates table.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use crate::cql::codec::{self, AggRow, format_cents};
use crate::cql::schema::TABLE;
use crate::cql::{self, ScyllaOptions};
use crate::dates::{self, Day};
use crate::delta;
use crate::error::{Error, Result, exit};
use crate::layout::Layout;
use crate::report::{Report, Summary, thousands};
use crate::tables::Table;

/// Where ScyllaDB is.
#[derive(Debug, Clone, Args)]
pub struct VerifyOptions {
    /// Where ScyllaDB is.
    #[command(flatten)]
    pub scylla: ScyllaOptions,
}

/// Per-day check values: row count, sum of totals, and a sum of row fingerprints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayCheck {
    /// Rows.
    pub rows: u64,
    /// Sum of `total_amount`, cents.
    pub total_cents: i128,
    /// Sum of the rows' fingerprints.
    pub fingerprint: u64,
}

impl DayCheck {
    fn add(&mut self, r: &AggRow) {
        self.rows += 1;
        self.total_cents += r.total_amount;
        self.fingerprint = self.fingerprint.wrapping_add(r.fingerprint());
    }
}

/// A day where the two sides differ.
#[derive(Debug, Clone, Serialize)]
pub struct DayDiff {
    /// The day.
    pub transaction_date: String,
    /// Delta's values.
    pub delta: DayCheck,
    /// ScyllaDB's values.
    pub scylla: DayCheck,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The keyspace.
    pub keyspace: String,
    /// The aggregates version recorded as loaded.
    pub aggregates_version: i64,
    /// The Delta table id ScyllaDB serves.
    pub served_table_id: String,
    /// The id of the aggregates table in the data dir now.
    pub table_id: String,
    /// Days compared.
    pub days_compared: u64,
    /// Rows in Delta.
    pub rows_delta: u64,
    /// Rows in ScyllaDB.
    pub rows_scylla: u64,
    /// Days that differ.
    pub differing_days: Vec<DayDiff>,
    /// Wall time.
    pub seconds: f64,
}

impl VerifyReport {
    fn same_table(&self) -> bool {
        self.served_table_id == self.table_id
    }
}

impl Report for VerifyReport {
    fn stage(&self) -> &'static str {
        "verify"
    }

    fn skipped(&self) -> bool {
        false
    }

    fn text(&self) -> String {
        let mut s = format!(
            "verify: {} at aggregates version {}: {} day(s), {} rows in Delta, {} in ScyllaDB",
            self.keyspace,
            self.aggregates_version,
            self.days_compared,
            thousands(self.rows_delta),
            thousands(self.rows_scylla)
        );
        if !self.same_table() {
            s.push_str(&format!(
                "\n  ScyllaDB serves aggregates table {}, but {} is now table {} (deleted and \
                 rebuilt?): run `pipeline load` to serve it",
                self.served_table_id,
                Table::Aggregates,
                self.table_id
            ));
        }
        if self.differing_days.is_empty() {
            s.push_str("; every day matches (row count, total, row checksum)");
        } else {
            s.push_str(&format!("\n  {} day(s) differ:", self.differing_days.len()));
            for d in &self.differing_days {
                s.push_str(&format!(
                    "\n  {}: Delta {} rows, total {}; ScyllaDB {} rows, total {}{}",
                    d.transaction_date,
                    d.delta.rows,
                    format_cents(d.delta.total_cents),
                    d.scylla.rows,
                    format_cents(d.scylla.total_cents),
                    if d.delta.rows == d.scylla.rows && d.delta.total_cents == d.scylla.total_cents
                    {
                        " (same count and total, different row values)"
                    } else {
                        ""
                    }
                ));
            }
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows_scylla,
            note: format!("{} day(s) differ", self.differing_days.len()),
            consumed_version: Some(self.aggregates_version),
            ..Default::default()
        }
    }

    fn exit_code(&self) -> u8 {
        if self.differing_days.is_empty() && self.same_table() {
            exit::OK
        } else {
            exit::VERIFY_MISMATCH
        }
    }
}

/// Compare ScyllaDB with the Delta aggregates at the last loaded version.
pub async fn run(layout: &Layout, o: &VerifyOptions) -> Result<VerifyReport> {
    let started = std::time::Instant::now();
    let session = cql::connect(&o.scylla).await?;
    let keyspace = &o.scylla.keyspace;
    let Some(progress) = cql::progress::read(&session, keyspace)
        .await?
        .filter(|p| p.version >= 0)
    else {
        return Err(Error::Invalid(format!(
            "nothing has been loaded into keyspace {keyspace} yet: run `pipeline load` first"
        )));
    };
    let current = delta::open_required(layout, Table::Aggregates, "aggregate").await?;
    let mut report = VerifyReport {
        keyspace: keyspace.clone(),
        aggregates_version: progress.version,
        served_table_id: progress.table_id.clone(),
        table_id: delta::table_id(&current, Table::Aggregates)?,
        ..Default::default()
    };
    let delta_days = if report.same_table() {
        delta_checks(layout, progress.version).await?
    } else {
        BTreeMap::new()
    };
    let scylla_days = scylla_checks(&session, keyspace).await?;
    let all: BTreeSet<Day> = delta_days
        .keys()
        .chain(scylla_days.keys())
        .copied()
        .collect();
    report.days_compared = all.len() as u64;
    report.rows_delta = delta_days.values().map(|d| d.rows).sum();
    report.rows_scylla = scylla_days.values().map(|d| d.rows).sum();
    for day in all {
        let (a, b) = (
            delta_days.get(&day).copied().unwrap_or_default(),
            scylla_days.get(&day).copied().unwrap_or_default(),
        );
        if a != b {
            report.differing_days.push(DayDiff {
                transaction_date: dates::format(day),
                delta: a,
                scylla: b,
            });
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn delta_checks(layout: &Layout, version: i64) -> Result<BTreeMap<Day, DayCheck>> {
    let table = delta::open_at(layout, Table::Aggregates, version).await?;
    let mut out: BTreeMap<Day, DayCheck> = BTreeMap::new();
    for f in delta::files(&table, Table::Aggregates, None)? {
        let mut s = std::pin::pin!(codec::file_rows(&table, &f));
        while let Some(rows) = s.next().await {
            for r in rows? {
                out.entry(r.day).or_default().add(&r);
            }
        }
    }
    Ok(out)
}

async fn scylla_checks(
    session: &scylla::client::session::Session,
    keyspace: &str,
) -> Result<BTreeMap<Day, DayCheck>> {
    let what = "scanning the serving table";
    let q = format!(
        "SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, \
         min_amount, max_amount FROM {keyspace}.{TABLE}"
    );
    let mut stmt = session
        .prepare(q)
        .await
        .map_err(|e| Error::scylla(what, e))?;
    stmt.set_page_size(5000);
    let mut rows = session
        .execute_iter(stmt, ())
        .await
        .map_err(|e| Error::scylla(what, e))?
        .rows_stream::<codec::RowValues>()
        .map_err(|e| Error::scylla(what, e))?;
    let mut out: BTreeMap<Day, DayCheck> = BTreeMap::new();
    while let Some(r) = rows.next().await {
        let values = r.map_err(|e| Error::scylla(what, e))?;
        let customer_id = values.0;
        let row = AggRow::from_values(values)
            .map_err(|x| Error::scylla(what, format!("customer {customer_id}: {x}")))?;
        out.entry(row.day).or_default().add(&row);
    }
    Ok(out)
}
