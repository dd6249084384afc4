//! `lookup`: a customer's daily totals from ScyllaDB, by one single-partition query.

use chrono::NaiveDate;
use clap::Args;
use futures::TryStreamExt;
use serde::Serialize;

use crate::cql::codec::{cents, format_cents};
use crate::cql::schema::TABLE;
use crate::cql::{self, ScyllaOptions};
use crate::dates;
use crate::error::{Error, Result};
use crate::report::{Report, Summary};
use scylla::value::{CqlDate, CqlDecimal, CqlValue};

/// What to look up.
#[derive(Debug, Clone, Args)]
pub struct LookupOptions {
    /// Where ScyllaDB is.
    #[command(flatten)]
    pub scylla: ScyllaOptions,
    /// Customer id.
    #[arg(long)]
    pub customer: i64,
    /// First day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: Option<NaiveDate>,
    /// Last day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub to: Option<NaiveDate>,
}

/// One day's totals as `lookup` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct LookupRow {
    /// The day.
    pub transaction_date: String,
    /// Approved total.
    pub total_amount: String,
    /// Approved transactions.
    pub transaction_count: i64,
    /// Declined transactions.
    pub declined_count: i64,
    /// Smallest approved amount.
    pub min_amount: Option<String>,
    /// Largest approved amount.
    pub max_amount: Option<String>,
}

/// A customer's days, newest first. As JSON, the array of days.
#[derive(Debug, Clone)]
pub struct LookupReport {
    /// The customer.
    pub customer: i64,
    /// The keyspace.
    pub keyspace: String,
    /// The first day asked for.
    pub from: Option<NaiveDate>,
    /// The last day asked for.
    pub to: Option<NaiveDate>,
    /// The days found.
    pub rows: Vec<LookupRow>,
}

impl Serialize for LookupReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.rows.serialize(s)
    }
}

impl Report for LookupReport {
    fn stage(&self) -> &'static str {
        "lookup"
    }

    fn skipped(&self) -> bool {
        self.rows.is_empty()
    }

    fn text(&self) -> String {
        if self.rows.is_empty() {
            let range = match (self.from, self.to) {
                (None, None) => String::new(),
                (f, t) => format!(
                    " between {} and {}",
                    f.map_or("the beginning".into(), |d| d.to_string()),
                    t.map_or("now".into(), |d| d.to_string())
                ),
            };
            return format!(
                "customer {} has no daily totals{range} in {}.{TABLE}",
                self.customer, self.keyspace
            );
        }
        let mut s = format!(
            "{:<12} {:>16} {:>8} {:>8} {:>12} {:>12}",
            "date", "total", "count", "declined", "min", "max"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "\n{:<12} {:>16} {:>8} {:>8} {:>12} {:>12}",
                r.transaction_date,
                r.total_amount,
                r.transaction_count,
                r.declined_count,
                r.min_amount.as_deref().unwrap_or("-"),
                r.max_amount.as_deref().unwrap_or("-")
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows.len() as u64,
            note: format!("customer {}", self.customer),
            ..Default::default()
        }
    }
}

/// Look a customer up.
pub async fn run(o: &LookupOptions) -> Result<LookupReport> {
    let session = cql::connect(&o.scylla).await?;
    let what = format!("looking up customer {}", o.customer);
    let mut q = format!(
        "SELECT transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount \
         FROM {}.{TABLE} WHERE customer_id = ?",
        o.scylla.keyspace
    );
    let mut bounds = Vec::new();
    if let Some(d) = o.from {
        q.push_str(" AND transaction_date >= ?");
        bounds.push(CqlDate::from(d));
    }
    if let Some(d) = o.to {
        q.push_str(" AND transaction_date <= ?");
        bounds.push(CqlDate::from(d));
    }
    let stmt = session
        .prepare(q)
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    type R = (
        CqlDate,
        CqlDecimal,
        i64,
        i64,
        Option<CqlDecimal>,
        Option<CqlDecimal>,
    );
    let mut values = vec![CqlValue::BigInt(o.customer)];
    values.extend(bounds.into_iter().map(CqlValue::Date));
    let rows: Vec<R> = session
        .execute_iter(stmt, values)
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .rows_stream::<R>()
        .map_err(|e| Error::scylla(what.clone(), e))?
        .try_collect()
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let money = |d: &CqlDecimal| cents(d).map_or_else(|| format!("{d:?}"), format_cents);
    let rows = rows
        .iter()
        .map(|(d, total, n, declined, min, max)| LookupRow {
            transaction_date: dates::from_cql(*d).map_or_else(|| format!("{d:?}"), dates::format),
            total_amount: money(total),
            transaction_count: *n,
            declined_count: *declined,
            min_amount: min.as_ref().map(money),
            max_amount: max.as_ref().map(money),
        })
        .collect();
    Ok(LookupReport {
        customer: o.customer,
        keyspace: o.scylla.keyspace.clone(),
        from: o.from,
        to: o.to,
        rows,
    })
}
