//! `load`'s report.

use std::path::PathBuf;

use serde::Serialize;

use crate::report::{Report, Summary, bytes, thousands, version};

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// The keyspace.
    pub keyspace: String,
    /// Identity (Delta table id) of the aggregates loaded.
    pub table_id: String,
    /// Version of the aggregates table loaded by this run.
    pub aggregates_version: Option<i64>,
    /// Version of the same table loaded before this run (none: never).
    pub previous_version: Option<i64>,
    /// Everything was written (first load, another table, or history gone), and rows of
    /// older loads were swept.
    pub full_load: bool,
    /// Why every row was written, when it was.
    pub full_because: Option<String>,
    /// Loads in progress or killed whose writes this one made good (their markers).
    pub loads_made_good: u64,
    /// A newer version was loaded (or was being loaded) by another process: its rows win.
    pub overtaken: bool,
    /// Days written.
    pub days: u64,
    /// Delta files read.
    pub files: u64,
    /// Rows to write.
    pub rows_to_load: u64,
    /// Rows of the changed days equal in every version ScyllaDB may hold, not written again.
    pub rows_unchanged: u64,
    /// What the requests did.
    #[serde(flatten)]
    pub counts: Counts,
    /// Nothing was written (`--dry-run`).
    pub dry_run: bool,
    /// The write timestamp of this version's rows (µs).
    pub write_timestamp: Option<i64>,
    /// Request latency.
    pub latency_ms: Latency,
    /// Serving `customer_profiles` (after the aggregates; none without a profiles table
    /// and in a dry run).
    pub profiles: Option<super::ProfilesLoad>,
    /// Wall time.
    pub seconds: f64,
    /// Rows written per second.
    pub rows_per_sec: f64,
    /// Peak RSS of the process.
    pub peak_rss_bytes: u64,
}

/// What a load's requests did (the aggregates' or the profiles').
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Rows written.
    pub rows_written: u64,
    /// Rows deleted: gone from the Delta table since the last load.
    pub rows_deleted: u64,
    /// Partitions whose older rows were deleted by a full load.
    pub partitions_swept: u64,
    /// Retries of failed requests.
    pub retries: u64,
    /// Requests that still failed after retries.
    pub failures: u64,
    /// Rows that still failed after retries, with their errors (JSON lines).
    pub bad_rows_file: Option<PathBuf>,
}

/// Request latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Report for LoadReport {
    fn stage(&self) -> &'static str {
        "load"
    }

    /// Nothing to write: the version is loaded already (by this process or a newer one).
    fn skipped(&self) -> bool {
        let profiles = self.profiles.as_ref().map_or(0, |p| {
            p.counts.rows_written + p.counts.rows_deleted + u64::from(p.full_load)
        });
        !self.dry_run
            && self.counts.rows_written == 0
            && self.counts.rows_deleted == 0
            && !self.full_load
            && profiles == 0
    }

    fn text(&self) -> String {
        let mut s = self.aggregates_text();
        if let Some(p) = &self.profiles {
            s.push_str("\n  ");
            s.push_str(&p.text());
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.counts.rows_written,
            files: self.files,
            bytes: 0,
            note: if self.skipped() {
                "already loaded".into()
            } else {
                format!(
                    "{} day(s), {} deleted, {} retries{}",
                    self.days,
                    self.counts.rows_deleted,
                    self.counts.retries,
                    self.profiles.as_ref().map_or(String::new(), |p| format!(
                        "; {} profiles written, {} deleted",
                        p.counts.rows_written, p.counts.rows_deleted
                    ))
                )
            },
            consumed_version: self.aggregates_version,
            produced_version: None,
        }
    }
}

impl LoadReport {
    fn aggregates_text(&self) -> String {
        let v = version(self.aggregates_version);
        let wrote =
            self.counts.rows_written + self.counts.rows_deleted + self.counts.partitions_swept > 0;
        if self.overtaken && !wrote {
            return format!(
                "load: a newer aggregates version than {v} is loaded into {}, or being loaded; nothing written",
                self.keyspace
            );
        }
        if self.overtaken {
            return format!(
                "load: aggregates version {v} written into {} ({} rows, {} deleted), but a newer \
                 version was loaded meanwhile: its rows win",
                self.keyspace,
                thousands(self.counts.rows_written),
                thousands(self.counts.rows_deleted)
            );
        }
        if self.previous_version == self.aggregates_version && !wrote && !self.full_load {
            return format!(
                "load: aggregates version {v} is already loaded into {}; nothing written",
                self.keyspace
            );
        }
        let scope = match (&self.full_because, self.full_load) {
            (Some(why), true) => format!("everything: {why}"),
            (None, true) => "everything".to_string(),
            _ => "changed days only".to_string(),
        };
        if self.dry_run {
            return format!(
                "load (dry run): would load aggregates version {v} ({scope}; last loaded: {}) into {}: {} day(s), {} file(s), {} rows",
                version(self.previous_version),
                self.keyspace,
                self.days,
                self.files,
                thousands(self.rows_to_load)
            );
        }
        format!(
            "load: aggregates version {v} -> {} ({} day(s), {scope})\n  {} rows written, {} unchanged, {} deleted, {} partitions swept, {} retries, {} failures, {:.2} s ({} rows/s, peak RSS {})\n  latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
            self.keyspace,
            self.days,
            thousands(self.counts.rows_written),
            thousands(self.rows_unchanged),
            thousands(self.counts.rows_deleted),
            thousands(self.counts.partitions_swept),
            self.counts.retries,
            self.counts.failures,
            self.seconds,
            thousands(self.rows_per_sec as u64),
            bytes(self.peak_rss_bytes),
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max
        )
    }
}
