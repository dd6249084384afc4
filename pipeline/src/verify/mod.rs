//! `verify`: ScyllaDB against the Delta aggregates at the version recorded as loaded, day by
//! day (row count, total, and a sum of per-row fingerprints of every column), and the served
//! table's identity against the current aggregates table.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use crate::cql::codec::{self, AggRow, format_cents};
use crate::cql::profile::{self, ProfileRow};
use crate::cql::statements;
use crate::cql::{self, ScyllaOptions};
use crate::dates::{self, Day};
use crate::delta;
use crate::error::{Error, Result, exit};
use crate::layout::Layout;
use crate::load::claim::state;
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
    /// The profiles (none when no profiles table exists and none is served).
    pub profiles: Option<ProfilesCheck>,
    /// Why what ScyllaDB serves is not this data dir's Delta tables, or cannot be compared
    /// (another data dir, another history of the table, a loaded version since vacuumed),
    /// each with what to do.
    pub problems: Vec<String>,
    /// Loads in progress, or killed, per serving table (their markers): a killed one is made
    /// good by the next load.
    pub loads_in_progress: u64,
    /// Wall time.
    pub seconds: f64,
}

impl VerifyReport {
    fn same_table(&self) -> bool {
        self.served_table_id == self.table_id
    }

    fn profiles_match(&self) -> bool {
        self.profiles.as_ref().is_none_or(ProfilesCheck::matches)
    }
}

/// Row count, lifetime total and a sum of row fingerprints of a set of profiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProfilesSum {
    /// Profiles.
    pub rows: u64,
    /// Sum of `lifetime_total`, cents.
    pub lifetime_total_cents: i128,
    /// Sum of the rows' fingerprints.
    pub fingerprint: u64,
}

impl ProfilesSum {
    fn add(&mut self, r: &ProfileRow) {
        self.rows += 1;
        self.lifetime_total_cents += r.lifetime_total;
        self.fingerprint = self.fingerprint.wrapping_add(r.fingerprint());
    }
}

/// ScyllaDB's `customer_profiles` against the Delta table at the version recorded as loaded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfilesCheck {
    /// The profiles version recorded as loaded (none: never loaded).
    pub version: Option<i64>,
    /// The Delta table id ScyllaDB serves.
    pub served_table_id: Option<String>,
    /// The id of the profiles table in the data dir now (none: there is none).
    pub table_id: Option<String>,
    /// Delta's side.
    pub delta: ProfilesSum,
    /// ScyllaDB's side.
    pub scylla: ProfilesSum,
}

impl ProfilesCheck {
    fn matches(&self) -> bool {
        self.version.is_some() && self.served_table_id == self.table_id && self.delta == self.scylla
    }

    fn text(&self) -> String {
        let Some(v) = self.version else {
            return "profiles: customer_profiles exists in Delta but nothing is loaded: run \
                    `pipeline load`"
                .into();
        };
        let mut s = format!(
            "profiles at version {v}: {} in Delta, {} in ScyllaDB",
            thousands(self.delta.rows),
            thousands(self.scylla.rows)
        );
        if self.served_table_id != self.table_id {
            s.push_str(&format!(
                "; ScyllaDB serves profiles table {}, but the data dir has {}: run `pipeline load`",
                self.served_table_id.as_deref().unwrap_or("-"),
                self.table_id.as_deref().unwrap_or("none")
            ));
        } else if self.delta == self.scylla {
            s.push_str("; they match (count, lifetime total, row checksum)");
        } else {
            s.push_str(&format!(
                "; they DIFFER: lifetime total {} in Delta, {} in ScyllaDB{}",
                format_cents(self.delta.lifetime_total_cents),
                format_cents(self.scylla.lifetime_total_cents),
                if self.delta.rows == self.scylla.rows
                    && self.delta.lifetime_total_cents == self.scylla.lifetime_total_cents
                {
                    " (same count and total, different row values)"
                } else {
                    ""
                }
            ));
        }
        s
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
        let other_data_dir = self.problems.iter().any(|p| p.contains(OTHER_DATA_DIR));
        if !self.same_table() && !other_data_dir {
            s.push_str(&format!(
                "\n  ScyllaDB serves aggregates table {}, but {} is now table {} (deleted and \
                 rebuilt?): run `pipeline load` to serve it",
                self.served_table_id,
                Table::Aggregates,
                self.table_id
            ));
        }
        let aggregates = Table::Aggregates.name();
        if self.problems.iter().any(|p| p.starts_with(aggregates)) {
            s.push_str("; not compared (see below)");
        } else if self.differing_days.is_empty() {
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
        if let Some(p) = &self.profiles {
            s.push_str("\n  ");
            s.push_str(&p.text());
        }
        for p in &self.problems {
            s.push_str("\n  ");
            s.push_str(p);
        }
        if self.loads_in_progress > 0 {
            s.push_str(&format!(
                "\n  {} load(s) in progress or killed: the next `pipeline load` makes their writes good",
                self.loads_in_progress
            ));
        }
        if !self.differing_days.is_empty() || !self.profiles_match() {
            s.push_str(
                "\n  to make ScyllaDB equal to Delta whatever was written to it: `pipeline load --repair`",
            );
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
        if self.differing_days.is_empty()
            && self.same_table()
            && self.profiles_match()
            && self.problems.is_empty()
        {
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
    let state = state::read(&session, keyspace, state::AGGREGATES).await?;
    let Some(served) = state.current else {
        return Err(Error::Invalid(format!(
            "nothing has been loaded into keyspace {keyspace} yet: run `pipeline load` first"
        )));
    };
    let current = delta::open_required(layout, Table::Aggregates, "aggregate").await?;
    let owner = layout.data_dir_id(false).await?;
    let mut report = VerifyReport {
        keyspace: keyspace.clone(),
        aggregates_version: served.version,
        served_table_id: served.table_id.clone(),
        table_id: delta::table_id(&current, Table::Aggregates)?,
        loads_in_progress: state.markers.len() as u64,
        ..Default::default()
    };
    let comparable = servable(
        &served,
        owner.as_deref(),
        (&current, Table::Aggregates),
        &mut report.problems,
    )
    .await?
        && report.same_table();
    let delta_days = if comparable {
        match delta_checks(layout, served.version).await {
            Ok(days) => days,
            Err(e) => {
                report
                    .problems
                    .push(unreadable(Table::Aggregates, served.version, &e));
                BTreeMap::new()
            }
        }
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
    for day in all.into_iter().filter(|_| comparable) {
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
    let mut problems = std::mem::take(&mut report.problems);
    report.profiles = profiles_check(
        layout,
        &session,
        keyspace,
        owner.as_deref(),
        &mut problems,
        &mut report.loads_in_progress,
    )
    .await?;
    report.problems = problems;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Whether the version recorded as served is this data dir's table's own (same data dir,
/// same history); otherwise says why not in `problems`.
async fn servable(
    served: &state::Entry,
    owner: Option<&str>,
    (t, table): (&deltalake::DeltaTable, Table),
    problems: &mut Vec<String>,
) -> Result<bool> {
    if owner != Some(served.owner.as_str()) {
        problems.push(format!(
            "{table}: ScyllaDB serves the tables of {OTHER_DATA_DIR} (id {}): run `pipeline load \
             --take-over` to serve this one's, or verify that data dir",
            served.owner
        ));
        return Ok(false);
    }
    if delta::table_id(t, table)? != served.table_id {
        // Another table of this data dir (deleted and rebuilt): said by the caller.
        return Ok(false);
    }
    let ours = delta::log::fingerprint(t, table, served.version).await?;
    if ours.is_none() || ours != served.lineage {
        problems.push(format!(
            "{table}: the version {} served is not this table's commit {} (the data dir was \
             restored from a backup, or its log cleaned up since): run `pipeline load`",
            served.version, served.version
        ));
        return Ok(false);
    }
    Ok(true)
}

/// How a problem says that another data dir is served.
const OTHER_DATA_DIR: &str = "another data dir";

/// A loaded version that cannot be read any more.
fn unreadable(table: Table, version: i64, e: &Error) -> String {
    format!(
        "{table}: the version {version} served cannot be read in Delta any more ({}; vacuumed?): \
         run `pipeline load`, which serves the current version, then verify",
        e.chain()
    )
}

/// The profiles served against Delta; None when neither side has any.
async fn profiles_check(
    layout: &Layout,
    session: &scylla::client::session::Session,
    keyspace: &str,
    owner: Option<&str>,
    problems: &mut Vec<String>,
    in_progress: &mut u64,
) -> Result<Option<ProfilesCheck>> {
    let state = state::read(session, keyspace, state::PROFILES).await?;
    *in_progress += state.markers.len() as u64;
    let record = state.current;
    let current = delta::open(layout, Table::Profiles).await?;
    if record.is_none() && current.is_none() {
        return Ok(None);
    }
    let mut check = ProfilesCheck {
        version: record.as_ref().map(|r| r.version),
        served_table_id: record.as_ref().map(|r| r.table_id.clone()),
        table_id: current
            .as_ref()
            .map(|t| delta::table_id(t, Table::Profiles))
            .transpose()?,
        ..Default::default()
    };
    let Some(record) = record else {
        return Ok(Some(check));
    };
    let comparable = match &current {
        Some(t) => servable(&record, owner, (t, Table::Profiles), problems).await?,
        None => false,
    };
    if comparable {
        let read = async {
            let table = delta::open_at(layout, Table::Profiles, record.version).await?;
            delta::check_files_exist(&table, Table::Profiles, None).await?;
            let ctx = delta::query::session(256 * 1024 * 1024);
            delta::query::register(&ctx, "p", &table, None).await?;
            let mut s = ctx.sql("SELECT * FROM p").await?.execute_stream().await?;
            let mut sum = ProfilesSum::default();
            while let Some(b) = s.next().await {
                for r in ProfileRow::from_batch(&b?)? {
                    sum.add(&r);
                }
            }
            Ok::<_, Error>(sum)
        };
        match read.await {
            Ok(sum) => check.delta = sum,
            Err(e) => problems.push(unreadable(Table::Profiles, record.version, &e)),
        }
    }
    let what = "scanning the served profiles";
    let mut stmt = session
        .prepare(statements::all_profiles(keyspace))
        .await
        .map_err(|e| Error::scylla(what, e))?;
    stmt.set_page_size(5000);
    let mut rows = session
        .execute_iter(stmt, ())
        .await
        .map_err(|e| Error::scylla(what, e))?
        .rows_stream::<profile::ProfileValues>()
        .map_err(|e| Error::scylla(what, e))?;
    while let Some(r) = rows.next().await {
        let values = r.map_err(|e| Error::scylla(what, e))?;
        let customer_id = values.0;
        let row = ProfileRow::from_values(values)
            .map_err(|x| Error::scylla(what, format!("customer {customer_id}: {x}")))?;
        check.scylla.add(&row);
    }
    Ok(Some(check))
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
    let q = statements::all_aggregates(keyspace);
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
