//! `lookup`: a customer's daily totals (or, with `--profile`, profile) from ScyllaDB, by one
//! single-partition query.

use chrono::NaiveDate;
use clap::Args;
use futures::TryStreamExt;
use serde::Serialize;

use crate::cql::codec::{cents, format_cents};
use crate::cql::profile::{self, ProfileRow};
use crate::cql::schema::{PROFILES_TABLE, TABLE};
use crate::cql::statements;
use crate::cql::{self, ScyllaOptions};
use crate::dates;
use crate::error::{Error, Result};
use crate::report::{Report, Summary};
use scylla::client::session::Session;
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
    /// Show the customer's profile (`customer_profiles`) instead of the daily totals.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub profile: bool,
}

/// A customer's profile as `lookup --profile` shows it (amounts exact: JSON numbers with
/// their two decimals, [`crate::report::decimal`]).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    /// The customer.
    pub customer_id: i64,
    /// The latest day in the data the profile is computed as of.
    pub as_of_day: String,
    /// Approved total over the customer's lifetime.
    #[serde(serialize_with = "crate::report::decimal")]
    pub lifetime_total: String,
    /// Approved transactions.
    pub lifetime_count: i64,
    /// Declined transactions.
    pub declined_count: i64,
    /// Declined / all transactions.
    pub decline_rate: f64,
    /// First day with a transaction.
    pub first_active_day: String,
    /// Last day with a transaction.
    pub last_active_day: String,
    /// Days with a transaction.
    pub active_days: i64,
    /// Approved total / approved count.
    #[serde(serialize_with = "crate::report::decimal_opt")]
    pub average_ticket: Option<String>,
    /// Approved total of the last 7 days.
    #[serde(serialize_with = "crate::report::decimal")]
    pub total_last_7d: String,
    /// Approved total of the last 30 days.
    #[serde(serialize_with = "crate::report::decimal")]
    pub total_last_30d: String,
    /// Estimated approved spend over the next 30 days.
    #[serde(serialize_with = "crate::report::decimal")]
    pub spend_forecast_30d: String,
}

impl From<&ProfileRow> for ProfileView {
    fn from(p: &ProfileRow) -> Self {
        ProfileView {
            customer_id: p.customer_id,
            as_of_day: dates::format(p.as_of_day),
            lifetime_total: format_cents(p.lifetime_total),
            lifetime_count: p.lifetime_count,
            declined_count: p.declined_count,
            decline_rate: p.decline_rate,
            first_active_day: dates::format(p.first_active_day),
            last_active_day: dates::format(p.last_active_day),
            active_days: p.active_days,
            average_ticket: p.average_ticket.map(format_cents),
            total_last_7d: format_cents(p.total_last_7d),
            total_last_30d: format_cents(p.total_last_30d),
            spend_forecast_30d: format_cents(p.spend_forecast_30d),
        }
    }
}

/// One day's totals as `lookup` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct LookupRow {
    /// The day.
    pub transaction_date: String,
    /// Approved total.
    #[serde(serialize_with = "crate::report::decimal")]
    pub total_amount: String,
    /// Approved transactions.
    pub transaction_count: i64,
    /// Declined transactions.
    pub declined_count: i64,
    /// Smallest approved amount.
    #[serde(serialize_with = "crate::report::decimal_opt")]
    pub min_amount: Option<String>,
    /// Largest approved amount.
    #[serde(serialize_with = "crate::report::decimal_opt")]
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
    /// `--profile`: the profile (None inside: the customer has none).
    pub profile: Option<Option<ProfileView>>,
}

impl Serialize for LookupReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.profile {
            Some(p) => p.serialize(s),
            None => self.rows.serialize(s),
        }
    }
}

impl Report for LookupReport {
    fn stage(&self) -> &'static str {
        "lookup"
    }

    fn skipped(&self) -> bool {
        match &self.profile {
            Some(p) => p.is_none(),
            None => self.rows.is_empty(),
        }
    }

    fn text(&self) -> String {
        if let Some(p) = &self.profile {
            return profile_text(self.customer, &self.keyspace, p.as_ref());
        }
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

fn profile_text(customer: i64, keyspace: &str, p: Option<&ProfileView>) -> String {
    let Some(p) = p else {
        return format!(
            "customer {customer} has no profile in {keyspace}.{PROFILES_TABLE} (run `pipeline \
             profiles` and `pipeline load`, or check the id)"
        );
    };
    let lines = [
        ("customer", p.customer_id.to_string()),
        ("as of", p.as_of_day.clone()),
        ("lifetime total", p.lifetime_total.clone()),
        ("approved", p.lifetime_count.to_string()),
        ("declined", p.declined_count.to_string()),
        ("decline rate", format!("{:.2}%", p.decline_rate * 100.0)),
        ("first active", p.first_active_day.clone()),
        ("last active", p.last_active_day.clone()),
        ("active days", p.active_days.to_string()),
        (
            "average ticket",
            p.average_ticket.clone().unwrap_or_else(|| "-".into()),
        ),
        ("last 7 days", p.total_last_7d.clone()),
        ("last 30 days", p.total_last_30d.clone()),
        ("next 30 days (est.)", p.spend_forecast_30d.clone()),
    ];
    lines
        .iter()
        .map(|(k, v)| format!("{k:<20} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The customer's served profile.
async fn profile(session: &Session, o: &LookupOptions) -> Result<Option<ProfileView>> {
    let what = format!("looking up the profile of customer {}", o.customer);
    let stmt = session
        .prepare(statements::customer_profile(&o.scylla.keyspace))
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let rows = session
        .execute_unpaged(&stmt, (o.customer,))
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let Some(values) = rows
        .maybe_first_row::<profile::ProfileValues>()
        .map_err(|e| Error::scylla(what.clone(), e))?
    else {
        return Ok(None);
    };
    let row = ProfileRow::from_values(values).map_err(|x| Error::scylla(what.clone(), x))?;
    Ok(Some(ProfileView::from(&row)))
}

/// Look a customer up.
pub async fn run(o: &LookupOptions) -> Result<LookupReport> {
    let session = cql::connect(&o.scylla).await?;
    if o.profile {
        return Ok(LookupReport {
            customer: o.customer,
            keyspace: o.scylla.keyspace.clone(),
            from: None,
            to: None,
            rows: Vec::new(),
            profile: Some(profile(&session, o).await?),
        });
    }
    let what = format!("looking up customer {}", o.customer);
    let mut q = statements::customer_days(&o.scylla.keyspace);
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
        profile: None,
    })
}
