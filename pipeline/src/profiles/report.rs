//! `profiles`' report.

use serde::Serialize;

use crate::report::{Report, Summary, thousands, version};
use crate::tables::Table;

/// What a profiles run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfilesReport {
    /// Identity (Delta table id) of the `customer_daily_aggregates` read.
    pub source_table_id: String,
    /// Aggregates version the profiles reflected before (none: never, or another table).
    pub previous_source_version: Option<i64>,
    /// Aggregates version the profiles reflect now.
    pub source_version: Option<i64>,
    /// `full` (every customer from every aggregate row), `incremental` (the customers of
    /// the changed days, from those days' old and new rows), or empty when nothing was done.
    pub mode: &'static str,
    /// Why a run that could have been incremental was full.
    pub full_because: Option<String>,
    /// The latest day in the aggregates: the day the 7- and 30-day windows end on.
    pub as_of_day: Option<String>,
    /// Days with aggregate rows after `as_of_day`, not counted in the profiles (stray rows
    /// far from the rest, or a day too young to be active yet; see `--as-of-day`).
    pub days_after_as_of: u64,
    /// Their aggregate rows.
    pub rows_after_as_of: u64,
    /// Days whose aggregates changed (incremental).
    pub days_changed: u64,
    /// Aggregate rows read.
    pub rows_read: u64,
    /// Customers recomputed.
    pub customers_recomputed: u64,
    /// Profiles written (the whole table is rewritten: unchanged rows are copied).
    pub rows_written: u64,
    /// Version of `customer_profiles` this run committed (none: nothing to do).
    pub table_version: Option<i64>,
    /// Things that did not stop the run.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// Peak RSS of the process.
    pub peak_rss_bytes: u64,
}

impl Report for ProfilesReport {
    fn stage(&self) -> &'static str {
        "profiles"
    }

    fn skipped(&self) -> bool {
        self.mode.is_empty()
    }

    fn text(&self) -> String {
        if self.skipped() {
            return format!(
                "profiles: up to date with {} version {}; nothing recomputed",
                Table::Aggregates,
                version(self.source_version)
            );
        }
        let after = if self.days_after_as_of > 0 {
            format!(
                "\n  {} aggregate row(s) on {} later day(s) not counted (too few to be an active day; --as-of-day latest counts them)",
                thousands(self.rows_after_as_of),
                self.days_after_as_of
            )
        } else {
            String::new()
        };
        format!(
            "profiles: {} customer(s) recomputed ({}{}) from {} version {} -> {} version {}, as of {}\n  {} aggregate rows read, {} profiles written, {:.2} s{after}",
            thousands(self.customers_recomputed),
            self.mode,
            self.full_because
                .as_ref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default(),
            Table::Aggregates,
            version(self.source_version),
            Table::Profiles,
            version(self.table_version),
            self.as_of_day.as_deref().unwrap_or("-"),
            thousands(self.rows_read),
            thousands(self.rows_written),
            self.seconds,
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.customers_recomputed,
            files: 0,
            bytes: 0,
            note: if self.skipped() {
                "up to date".into()
            } else {
                format!(
                    "{} ({} customers)",
                    self.mode,
                    thousands(self.customers_recomputed)
                )
            },
            consumed_version: self.source_version,
            produced_version: self.table_version,
        }
    }

    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
