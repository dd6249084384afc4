//! Executing a profiles plan: the state of every profile (sums over days) from all aggregate
//! rows, or from the stored profiles plus the changed days' differences; the derived columns
//! from the state, in one place; then one commit replacing the table.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::DeltaWriter;
use futures::StreamExt;

use super::ALPHA;
use super::plan::{Plan, Work};
use crate::dates::Day;
use crate::delta::{self, keys, query};
use crate::error::{Error, Result};
use crate::tables::Table;

/// Memory DataFusion may use before spilling.
const QUERY_MEMORY: usize = 512 * 1024 * 1024;

/// What a run did.
pub struct Executed {
    pub mode: &'static str,
    pub full_because: Option<String>,
    pub rows_read: u64,
    pub customers: u64,
    pub rows_written: u64,
    pub version: i64,
}

/// Every profile's state from the aggregates (`aggregates`) up to day number `{r}`, the
/// as-of day (rows after it are not counted).
/// Each column is a sum over the customer's days, so a difference of day rows adds to it.
/// The weighted spend is exact decimal too: each day's weight is rounded to 12 decimals
/// first, so the sum does not depend on the order rows are added in (floating-point sums
/// did: two runs differed in the last bits, and the rounded estimate by a cent).
fn full_state(r: Day) -> String {
    format!(
        "SELECT
    customer_id,
    CAST(SUM(total_amount) AS DECIMAL(38, 2)) AS lifetime_total,
    CAST(SUM(transaction_count) AS BIGINT) AS lifetime_count,
    CAST(SUM(declined_count) AS BIGINT) AS declined_count,
    MIN(transaction_date) AS first_active_day,
    MAX(transaction_date) AS last_active_day,
    COUNT(*) AS active_days,
    {windows}
FROM aggregates
WHERE CAST(transaction_date AS INT) <= {r}
GROUP BY customer_id",
        windows = window_sums(r, "total_amount")
    )
}

/// The 7- and 30-day totals and the weighted spend, over rows of `aggregates`-like columns.
fn window_sums(r: Day, amount: &str) -> String {
    format!(
        "CAST(COALESCE(SUM({amount}) FILTER (WHERE CAST(transaction_date AS INT) > {w7}), 0) AS DECIMAL(38, 2)) AS total_last_7d,
    CAST(COALESCE(SUM({amount}) FILTER (WHERE CAST(transaction_date AS INT) > {w30}), 0) AS DECIMAL(38, 2)) AS total_last_30d,
    CAST(COALESCE(SUM({amount} * CAST(power({keep}, CAST({r} - CAST(transaction_date AS INT) AS DOUBLE)) * {ALPHA} AS DECIMAL(20, 12))), 0) AS DECIMAL(38, 14)) AS ewm_daily_spend",
        w7 = r - 7,
        w30 = r - 30,
        keep = 1.0 - ALPHA,
    )
}

/// The changed days as differences (`new_days` rows minus `old_days` rows), per customer.
fn changed_state(r: Day) -> String {
    format!(
        "WITH d AS (
    SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, 1 AS present FROM new_days
    WHERE CAST(transaction_date AS INT) <= {r}
    UNION ALL
    SELECT customer_id, transaction_date, -total_amount, -transaction_count, -declined_count, -1 AS present FROM old_days
    WHERE CAST(transaction_date AS INT) <= {r}
)
SELECT
    customer_id,
    SUM(total_amount) AS d_total,
    SUM(transaction_count) AS d_count,
    SUM(declined_count) AS d_declined,
    SUM(present) AS d_active,
    MIN(transaction_date) FILTER (WHERE present = 1) AS first_new,
    MAX(transaction_date) FILTER (WHERE present = 1) AS last_new,
    {windows}
FROM d
GROUP BY customer_id",
        windows = window_sums(r, "total_amount")
    )
}

/// Rows of the changed days up to the as-of day (`{r}`) that were in the old version and
/// are not in the new one.
fn vanished_rows(r: Day) -> String {
    format!(
        "SELECT count(*) FROM (
    SELECT customer_id, transaction_date FROM old_days WHERE CAST(transaction_date AS INT) <= {r}
    EXCEPT
    SELECT customer_id, transaction_date FROM new_days WHERE CAST(transaction_date AS INT) <= {r})"
    )
}

/// The stored profiles plus the differences.
const APPLY: &str = "SELECT
    COALESCE(p.customer_id, x.customer_id) AS customer_id,
    CAST(COALESCE(p.lifetime_total, 0) + COALESCE(x.d_total, 0) AS DECIMAL(38, 2)) AS lifetime_total,
    CAST(COALESCE(p.lifetime_count, 0) + COALESCE(x.d_count, 0) AS BIGINT) AS lifetime_count,
    CAST(COALESCE(p.declined_count, 0) + COALESCE(x.d_declined, 0) AS BIGINT) AS declined_count,
    CASE WHEN x.first_new IS NULL OR (p.first_active_day IS NOT NULL AND p.first_active_day <= x.first_new)
         THEN p.first_active_day ELSE x.first_new END AS first_active_day,
    CASE WHEN x.last_new IS NULL OR (p.last_active_day IS NOT NULL AND p.last_active_day >= x.last_new)
         THEN p.last_active_day ELSE x.last_new END AS last_active_day,
    CAST(COALESCE(p.active_days, 0) + COALESCE(x.d_active, 0) AS BIGINT) AS active_days,
    CAST(COALESCE(p.total_last_7d, 0) + COALESCE(x.total_last_7d, 0) AS DECIMAL(38, 2)) AS total_last_7d,
    CAST(COALESCE(p.total_last_30d, 0) + COALESCE(x.total_last_30d, 0) AS DECIMAL(38, 2)) AS total_last_30d,
    CAST(COALESCE(p.ewm_daily_spend, 0) + COALESCE(x.ewm_daily_spend, 0) AS DECIMAL(38, 14)) AS ewm_daily_spend,
    x.customer_id IS NOT NULL AS recomputed
FROM profiles p FULL OUTER JOIN changed x ON p.customer_id = x.customer_id";

/// The table's columns from a state (`state`), in one place for both paths: the rates and
/// the estimate are derived, never stored in a way that could drift from the sums.
fn derived(r: Day) -> String {
    format!(
        "SELECT
    customer_id,
    CAST({r} AS DATE) AS as_of_day,
    lifetime_total,
    lifetime_count,
    declined_count,
    CASE WHEN lifetime_count + declined_count = 0 THEN 0.0
         ELSE CAST(declined_count AS DOUBLE) / CAST(lifetime_count + declined_count AS DOUBLE) END AS decline_rate,
    first_active_day,
    last_active_day,
    active_days,
    CASE WHEN lifetime_count = 0 THEN NULL
         ELSE CAST(lifetime_total / CAST(lifetime_count AS DECIMAL(20, 0)) AS DECIMAL(38, 2)) END AS average_ticket,
    total_last_7d,
    total_last_30d,
    ewm_daily_spend,
    CAST(ewm_daily_spend * 30 AS DECIMAL(38, 2)) AS spend_forecast_30d,
    recomputed
FROM state"
    )
}

/// Run the plan's work and commit it.
pub async fn execute(p: &Plan) -> Result<Executed> {
    let Some(r) = p.as_of else {
        // No aggregates: an empty table, recorded as reflecting this version.
        return commit(p, Vec::new(), "full", None, 0, 0).await;
    };
    let ctx = query::session(QUERY_MEMORY);
    query::register(&ctx, "aggregates", &p.d.source, None).await?;
    let (mode, because, rows_read) = match &p.work {
        Work::Incremental { days, old } => {
            query::register(&ctx, "new_days", &p.d.source, Some(days)).await?;
            query::register(&ctx, "old_days", old, Some(days)).await?;
            if vanished(&ctx, r).await? == 0 {
                let read = rows(&p.d.source, days)? + rows(old, days)?;
                ("incremental", None, read)
            } else {
                let why = "aggregate rows vanished from changed days".to_string();
                ("full", Some(why), rows(&p.d.source, &BTreeSet::new())?)
            }
        }
        Work::Full(why) => ("full", why.clone(), rows(&p.d.source, &BTreeSet::new())?),
        Work::Nothing => unreachable!("nothing to execute"),
    };
    let state = if mode == "incremental" {
        query::register(&ctx, "profiles", &p.d.target, None).await?;
        let changed = ctx.sql(&changed_state(r)).await?.into_view();
        ctx.register_table("changed", changed)?;
        ctx.sql(APPLY).await?.into_view()
    } else {
        ctx.sql(&format!(
            "SELECT *, true AS recomputed FROM ({})",
            full_state(r)
        ))
        .await?
        .into_view()
    };
    ctx.register_table("state", state)?;
    let stream = ctx.sql(&derived(r)).await?.execute_stream().await?;
    write_and_commit(p, stream, mode, because, rows_read).await
}

async fn vanished(ctx: &SessionContext, r: Day) -> Result<i64> {
    let b = ctx.sql(&vanished_rows(r)).await?.collect().await?;
    Ok(b.first()
        .map(|b| b.column(0).as_primitive::<Int64Type>())
        .filter(|c| !c.is_empty())
        .map_or(0, |c| c.value(0)))
}

/// Rows of `t` in `days` (all days when empty), from the log's statistics.
fn rows(t: &DeltaTable, days: &BTreeSet<Day>) -> Result<u64> {
    let days = (!days.is_empty()).then_some(days);
    Ok(delta::files(t, Table::Aggregates, days)?
        .iter()
        .map(|f| f.rows)
        .sum())
}

/// Stream the profiles into new files (counting the recomputed ones), then replace the
/// table's files with them in one commit that records the aggregates version.
async fn write_and_commit(
    p: &Plan,
    mut stream: deltalake::datafusion::physical_plan::SendableRecordBatchStream,
    mode: &'static str,
    because: Option<String>,
    rows_read: u64,
) -> Result<Executed> {
    let name = Table::Profiles.name();
    let mut writer = delta::writer(&p.d.target, Table::Profiles, p.d.widen.is_some())?
        .with_writer_properties(crate::schema::profile_writer_properties());
    let schema = writer.arrow_schema();
    let (mut rows_written, mut customers) = (0u64, 0u64);
    while let Some(batch) = stream.next().await {
        let mut columns = batch?.columns().to_vec();
        let flag = columns.pop().expect("the recomputed flag");
        customers += flag.as_boolean().true_count() as u64;
        let batch = delta::conform(columns, &schema)?;
        rows_written += batch.num_rows() as u64;
        writer
            .write(batch)
            .await
            .map_err(|e| Error::delta(name, e))?;
    }
    let adds = writer.flush().await.map_err(|e| Error::delta(name, e))?;
    let out = commit(p, adds, mode, because, rows_read, rows_written).await?;
    Ok(Executed { customers, ..out })
}

/// Replace every file of the table with `adds`, recording the aggregates version.
async fn commit(
    p: &Plan,
    adds: Vec<deltalake::kernel::Add>,
    mode: &'static str,
    because: Option<String>,
    rows_read: u64,
    rows_written: u64,
) -> Result<Executed> {
    crate::failpoints::hit("profiles.before_commit");
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: None,
        predicate: None,
    };
    let info = (keys::PROFILES_MODE, mode);
    let version = (p.d)
        .commit_replacing(operation, adds, |_| true, p.version, info)
        .await?;
    Ok(Executed {
        mode,
        full_because: because,
        rows_read,
        customers: rows_written,
        rows_written,
        version,
    })
}
