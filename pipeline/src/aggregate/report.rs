//! `aggregate`'s report.

use serde::Serialize;

use crate::report::{Report, Summary, bytes, thousands, version};
use crate::tables::Table;

/// What an aggregate run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AggregateReport {
    /// Identity (Delta table id) of the `customer_transactions` aggregated.
    pub source_table_id: String,
    /// Source version the table reflected before this run (none: never, or another table).
    pub previous_source_version: Option<i64>,
    /// Source version the table reflects now.
    pub source_version: Option<i64>,
    /// Every day was recomputed.
    pub full_rebuild: bool,
    /// How: `full`, `recompute` (the changed days from their rows), `append_merge` (only the
    /// added rows, merged into the days' aggregates), or empty when nothing was done.
    pub mode: &'static str,
    /// Days recomputed.
    pub days_recomputed: u64,
    /// Source rows read.
    pub rows_read: u64,
    /// Queries it took: a recomputation runs in passes of whole days
    /// (`--rows-per-pass` source rows each), so its memory does not grow with the table.
    pub passes: u64,
    /// Aggregate rows written.
    pub rows_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Version of `customer_daily_aggregates` this run committed (none: nothing to do).
    pub table_version: Option<i64>,
    /// Things that did not stop the run.
    pub warnings: Vec<String>,
    /// Wall time.
    pub seconds: f64,
    /// Source rows per second.
    pub rows_per_sec: f64,
    /// Peak RSS of the process.
    pub peak_rss_bytes: u64,
}

impl Report for AggregateReport {
    fn stage(&self) -> &'static str {
        "aggregate"
    }

    /// Nothing recomputed: no data changed upstream (a commit that only records a newer
    /// source version, after a compaction upstream, recomputes nothing either).
    fn skipped(&self) -> bool {
        self.days_recomputed == 0 && !self.full_rebuild
    }

    fn text(&self) -> String {
        if self.skipped() {
            return format!(
                "aggregate: up to date with {} version {}; nothing recomputed",
                Table::Transactions,
                version(self.source_version)
            );
        }
        format!(
            "aggregate: {} {} day(s) from {} version {} -> {} version {}\n  {} rows read, {} rows written, {:.2} s ({} rows/s, peak RSS {})",
            if self.full_rebuild {
                "rebuilt"
            } else {
                "recomputed"
            },
            self.days_recomputed,
            Table::Transactions,
            version(self.source_version),
            Table::Aggregates,
            version(self.table_version),
            thousands(self.rows_read),
            thousands(self.rows_written),
            self.seconds,
            thousands(self.rows_per_sec as u64),
            bytes(self.peak_rss_bytes)
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows_read,
            files: 0,
            bytes: self.bytes_written,
            note: if self.skipped() {
                "up to date".into()
            } else if self.full_rebuild {
                format!("rebuilt {} day(s)", self.days_recomputed)
            } else {
                format!("{} day(s)", self.days_recomputed)
            },
            consumed_version: self.source_version,
            produced_version: self.table_version,
        }
    }

    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
