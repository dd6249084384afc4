//! `profiles`: per-customer profiles maintained incrementally from the daily aggregates, in
//! the Delta table `customer_profiles`.
//!
//! A profile: lifetime approved total and count, declines and decline rate, first and last
//! active day, active days (days with any transaction), average ticket, approved totals over
//! the last 7 and 30 days as of the latest day in the aggregates (`as_of_day`), and a
//! next-30-day spend estimate (see [`ALPHA`]).
//!
//! Like `aggregate`, the table records the identity and version of the aggregates it reflects
//! as an application transaction in the same commit as its rows. A run:
//! 1. **Plan** ([`plan`]): nothing to do, a full recompute, or incremental over the days
//!    whose aggregates changed since the recorded version (from the log).
//! 2. **Execute** ([`execute`]): incremental adds, per customer, the difference between the
//!    changed days' new and old aggregate rows to the stored profile (every stored quantity
//!    is a sum over days, so this is exact); a full run groups every aggregate row.
//! 3. **Commit**: the whole table is replaced in one commit (unchanged profiles are copied,
//!    not recomputed), with the aggregates version consumed.
//!
//! The incremental path needs the same `as_of_day` (a later day moves every customer's
//! windows), the old version still readable, and no aggregate row that vanished (then a
//! first or last active day may move back); otherwise the run is full, and says why.

mod execute;
mod options;
mod plan;
mod report;

use std::time::Instant;

pub use options::ProfilesOptions;
pub use report::ProfilesReport;

use crate::error::Result;
use crate::layout::Layout;

/// The spend model: an exponentially weighted mean of the daily approved spend, with weight
/// `ALPHA` on the latest day and `(1 - ALPHA)^k` times that on the day `k` days before (days
/// without spend count as zero; days before the customer's first count as zero too, which
/// underestimates a brand-new customer). `spend_forecast_30d` is 30 times that mean. With
/// 0.1 the half-life is about 6.6 days: recent weeks dominate, one odd day does not.
pub const ALPHA: f64 = 0.1;

/// Bring the profiles up to date with `customer_daily_aggregates`.
pub async fn run(layout: &Layout, opts: &ProfilesOptions) -> Result<ProfilesReport> {
    let started = Instant::now();
    let mut p = plan::plan(layout, opts).await?;
    let mut report = p.report();
    if !matches!(p.work, plan::Work::Nothing) {
        let out = execute::execute(&p).await?;
        report.mode = out.mode;
        report.rows_read = out.rows_read;
        report.customers_recomputed = out.customers;
        report.rows_written = out.rows_written;
        report.full_because = out.full_because;
        report.table_version = Some(out.version);
        report.source_version = Some(p.version);
        report.warnings.extend(p.d.checkpoint(out.version).await);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    Ok(report)
}
