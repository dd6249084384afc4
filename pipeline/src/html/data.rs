//! What the report shows, read from the tables with DataFusion: small results (a row per
//! day, per day and reason, per top customer, per run), whatever the tables' size.

use std::collections::BTreeMap;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type};
use deltalake::datafusion::prelude::SessionContext;

use crate::dates::Day;
use crate::delta::{self, query};
use crate::error::Result;
use crate::layout::Layout;
use crate::tables::Table;

/// Memory the report's queries may use before spilling.
const QUERY_MEMORY: usize = 256 * 1024 * 1024;

/// One day of the aggregates.
#[derive(Debug, Clone)]
pub struct Daily {
    pub day: Day,
    pub approved: i64,
    pub declined: i64,
    pub amount_cents: i128,
}

/// A customer among the top spenders.
#[derive(Debug, Clone)]
pub struct TopCustomer {
    pub customer_id: i64,
    pub total_cents: i128,
}

/// One `pipeline run` from `run_history`: its start and each stage's time and throughput.
#[derive(Debug, Clone)]
pub struct Run {
    pub started_at: String,
    /// (stage, seconds, rows per second) of the stages that did something.
    pub stages: Vec<(String, f64, f64)>,
}

/// Everything the charts need.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The days charted: the active span of the aggregates ([`crate::dates::active_span`]).
    pub daily: Vec<Daily>,
    /// Transactions on days outside the charted span (stray rows far from the rest), and
    /// their days: counted in the captions, not drawn, so they do not squash the axis.
    pub daily_elsewhere: (u64, u64),
    /// Quarantined rows per reason, per day within the aggregates' days.
    pub quarantine: BTreeMap<String, BTreeMap<Day, i64>>,
    /// Quarantined rows without a day or outside the aggregates' days (shown as a count).
    pub quarantine_elsewhere: i64,
    pub top: Vec<TopCustomer>,
    pub runs: Vec<Run>,
}

/// Read what the charts show; a table that does not exist yet shows as empty.
pub async fn gather(layout: &Layout, top: usize, runs: usize) -> Result<Data> {
    let ctx = query::session(QUERY_MEMORY);
    let mut have = Vec::new();
    for (name, table) in [
        ("aggregates", Table::Aggregates),
        ("quarantine", Table::Quarantine),
        ("run_history", Table::RunHistory),
    ] {
        if let Some(t) = delta::open(layout, table).await? {
            query::register(&ctx, name, &t, None).await?;
            have.push(name);
        }
    }
    let mut data = Data::default();
    if have.contains(&"aggregates") {
        let all = daily(&ctx).await?;
        let span = crate::dates::active_span(
            all.iter()
                .map(|x| (x.day, (x.approved + x.declined).max(0) as u64)),
        );
        let (inside, outside): (Vec<Daily>, Vec<Daily>) = all
            .into_iter()
            .partition(|x| span.is_some_and(|(a, b)| (a..=b).contains(&x.day)));
        data.daily_elsewhere = (
            outside
                .iter()
                .map(|x| (x.approved + x.declined).max(0) as u64)
                .sum(),
            outside.len() as u64,
        );
        data.daily = inside;
        data.top = top_customers(&ctx, top).await?;
    }
    if have.contains(&"quarantine") {
        let (first, last) = match (data.daily.first(), data.daily.last()) {
            (Some(a), Some(b)) => (a.day, b.day),
            _ => (0, -1),
        };
        quarantine(&ctx, first, last, &mut data).await?;
    }
    if have.contains(&"run_history") {
        data.runs = run_history(&ctx, runs).await?;
    }
    Ok(data)
}

async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// A text column as plain UTF-8 (DataFusion may hand out views or dictionaries).
fn strings(c: &ArrayRef) -> Result<StringArray> {
    let c = cast(c, &DataType::Utf8)?;
    Ok(c.as_string::<i32>().clone())
}

async fn daily(ctx: &SessionContext) -> Result<Vec<Daily>> {
    let mut out = Vec::new();
    for b in rows(
        ctx,
        "SELECT transaction_date, CAST(SUM(transaction_count) AS BIGINT), \
         CAST(SUM(declined_count) AS BIGINT), CAST(SUM(total_amount) AS DECIMAL(38, 2)) \
         FROM aggregates GROUP BY transaction_date ORDER BY transaction_date",
    )
    .await?
    {
        let day = b.column(0).as_primitive::<Date32Type>();
        let approved = b.column(1).as_primitive::<Int64Type>();
        let declined = b.column(2).as_primitive::<Int64Type>();
        let amount = b.column(3).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            out.push(Daily {
                day: day.value(i),
                approved: approved.value(i),
                declined: declined.value(i),
                amount_cents: amount.value(i),
            });
        }
    }
    Ok(out)
}

async fn top_customers(ctx: &SessionContext, n: usize) -> Result<Vec<TopCustomer>> {
    let mut out = Vec::new();
    for b in rows(
        ctx,
        &format!(
            "SELECT customer_id, CAST(SUM(total_amount) AS DECIMAL(38, 2)) AS total \
             FROM aggregates GROUP BY customer_id ORDER BY total DESC, customer_id LIMIT {n}"
        ),
    )
    .await?
    {
        let id = b.column(0).as_primitive::<Int64Type>();
        let total = b.column(1).as_primitive::<Decimal128Type>();
        for i in 0..b.num_rows() {
            out.push(TopCustomer {
                customer_id: id.value(i),
                total_cents: total.value(i),
            });
        }
    }
    Ok(out)
}

async fn quarantine(ctx: &SessionContext, first: Day, last: Day, data: &mut Data) -> Result<()> {
    for b in rows(
        ctx,
        &format!(
            "SELECT transaction_date, rejection_reason, COUNT(*) FROM quarantine \
             WHERE CAST(transaction_date AS INT) BETWEEN {first} AND {last} \
             GROUP BY transaction_date, rejection_reason"
        ),
    )
    .await?
    {
        let day = b.column(0).as_primitive::<Date32Type>();
        let reason = strings(b.column(1))?;
        let n = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            *data
                .quarantine
                .entry(reason.value(i).to_string())
                .or_default()
                .entry(day.value(i))
                .or_default() += n.value(i);
        }
    }
    let b = rows(
        ctx,
        &format!(
            "SELECT COUNT(*) FROM quarantine WHERE transaction_date IS NULL \
             OR CAST(transaction_date AS INT) NOT BETWEEN {first} AND {last}"
        ),
    )
    .await?;
    data.quarantine_elsewhere = b
        .first()
        .map(|b| b.column(0).as_primitive::<Int64Type>())
        .filter(|c| !c.is_empty())
        .map_or(0, |c| c.value(0));
    Ok(())
}

/// The last `n` runs, oldest first, with the stages that did something.
async fn run_history(ctx: &SessionContext, n: usize) -> Result<Vec<Run>> {
    let mut out = Vec::new();
    for b in rows(
        ctx,
        &format!(
            "SELECT CAST(started_at AS VARCHAR) AS started, report_json FROM \
             (SELECT started_at, report_json FROM run_history ORDER BY started_at DESC LIMIT {n}) \
             ORDER BY started"
        ),
    )
    .await?
    {
        let started = strings(b.column(0))?;
        let json = strings(b.column(1))?;
        for i in 0..b.num_rows() {
            let report: serde_json::Value = serde_json::from_str(json.value(i)).unwrap_or_default();
            let stages = report["stages"]
                .as_array()
                .map(|stages| {
                    stages
                        .iter()
                        .filter(|s| s["skipped"] != true)
                        .filter_map(|s| {
                            Some((
                                s["stage"].as_str()?.to_string(),
                                s["seconds"].as_f64()?,
                                s["rows_per_sec"].as_f64().unwrap_or(0.0),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Run {
                started_at: started.value(i).to_string(),
                stages,
            });
        }
    }
    Ok(out)
}
