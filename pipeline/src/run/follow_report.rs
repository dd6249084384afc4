//! What `run --follow` reports: a line per micro-batch, and the session's totals (also as
//! its `run_history` row).

use serde::Serialize;

use super::options::Stage;
use super::report::{RunReport, StageSummary};
use crate::error::exit;
use crate::ingest::SetAsideFile;
use crate::report::{Report, Summary, thousands};

/// One micro-batch, as printed (a line, or a JSON line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MicroBatch {
    /// Its number in this session (from 1).
    pub batch: u64,
    /// Landing files ingested.
    pub files: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows added to `customer_transactions`.
    pub rows_out: u64,
    /// Rows quarantined.
    pub rows_quarantined: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Files set aside as unusable (ingest's report has the details).
    pub set_aside: Vec<SetAsideFile>,
    /// Files that changed after they were ingested, first seen in this session.
    pub changed_files: Vec<String>,
    /// Days the aggregate wrote (recomputed or merged).
    pub days_aggregated: u64,
    /// How (full, recompute, append_merge), when it ran.
    pub aggregate_mode: Option<&'static str>,
    /// Rows written to ScyllaDB.
    pub rows_loaded: u64,
    /// Rows deleted from ScyllaDB.
    pub rows_deleted: u64,
    /// Profile rows written, when the profiles were brought up to date.
    pub profile_rows: Option<u64>,
    /// Files acknowledged by this micro-batch (their rows are served).
    pub files_acknowledged: u64,
    /// Their freshness: the largest, in seconds.
    pub freshness_max_s: Option<f64>,
    /// Each one's freshness, in seconds (milliseconds kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub freshness_s: Vec<f64>,
    /// Files ingested and not acknowledged yet (ScyllaDB unavailable).
    pub backlog_files: u64,
    /// Failures, `stage: message` (the stream goes on).
    pub errors: Vec<String>,
    /// Compaction: files rewritten, when it ran.
    pub compacted_files: Option<u64>,
    /// Housekeeping: files deleted past the vacuum retention, when it ran.
    pub vacuumed_files: Option<u64>,
    /// Housekeeping: commit files removed past the log retention, when it ran.
    pub logs_cleaned: Option<u64>,
    /// Seconds per step (ingest, aggregate, load, compact).
    pub steps: Vec<(&'static str, f64)>,
    /// Ingest's own steps, seconds.
    pub ingest_steps: Vec<(&'static str, f64)>,
    /// Wall time.
    pub seconds: f64,
    /// When it ended, in seconds since the session started.
    pub at_s: f64,
}

impl MicroBatch {
    /// The line printed for it.
    pub fn line(&self) -> String {
        let mut s = format!(
            "batch {}: {} file(s), {} rows in, {} out, {} quarantined, {} duplicate(s)",
            self.batch,
            self.files,
            thousands(self.rows_in),
            thousands(self.rows_out),
            thousands(self.rows_quarantined),
            thousands(self.duplicates),
        );
        if let Some(mode) = self.aggregate_mode {
            s += &format!("; aggregate {} day(s) ({mode})", self.days_aggregated);
        }
        s += &format!(
            "; load {} row(s), {} deleted",
            thousands(self.rows_loaded),
            thousands(self.rows_deleted)
        );
        if let Some(n) = self.profile_rows {
            s += &format!("; profiles {} row(s)", thousands(n));
        }
        if let Some(f) = self.freshness_max_s {
            s += &format!("; freshness max {f:.2} s");
        }
        if self.backlog_files > 0 {
            s += &format!("; backlog {} file(s)", self.backlog_files);
        }
        if let Some(c) = self.compacted_files {
            s += &format!("; compacted {c} file(s)");
        }
        if let Some(v) = self.vacuumed_files.filter(|v| *v > 0) {
            s += &format!("; vacuumed {v} file(s)");
        }
        if let Some(c) = self.logs_cleaned.filter(|c| *c > 0) {
            s += &format!("; {c} expired log file(s) removed");
        }
        s += &format!("; {:.2} s", self.seconds);
        for f in &self.set_aside {
            s += &format!("\n  set aside {}: {}", f.path, f.problem);
        }
        for f in &self.changed_files {
            s += &format!("\n  changed after ingest (not read again): {f}");
        }
        for e in &self.errors {
            s += &format!("\n  error (the stream goes on): {e}");
        }
        s
    }

    /// Whether it did anything (else the stream waits `--interval`). The profiles, which run
    /// beside the loop, do not count: a micro-batch that only reports them is printed, not
    /// counted.
    pub fn did_work(&self) -> bool {
        self.files > 0
            || self.aggregate_mode.is_some()
            || self.rows_loaded + self.rows_deleted > 0
            || self.compacted_files.is_some()
            || !self.set_aside.is_empty()
            || !self.changed_files.is_empty()
    }
}

/// Percentiles of the freshness over a session, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freshness {
    /// Files measured.
    pub files: u64,
    /// Median.
    pub p50_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Largest.
    pub max_s: f64,
}

/// A follow session: totals, freshness, and why it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowReport {
    /// Micro-batches that did work.
    pub micro_batches: u64,
    /// Landing files ingested.
    pub files: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows added.
    pub rows_out: u64,
    /// Rows quarantined.
    pub rows_quarantined: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Files set aside.
    pub files_set_aside: u64,
    /// Rows written to ScyllaDB.
    pub rows_loaded: u64,
    /// Customer profiles rewritten.
    pub profile_rows: u64,
    /// The stages the session ran (for its `run_history` row).
    #[serde(skip)]
    pub stages: Vec<Stage>,
    /// Failed stage attempts (the stream went on).
    pub errors: u64,
    /// Files still waiting for ScyllaDB at the end.
    pub backlog_files: u64,
    /// Landing -> served.
    pub freshness: Freshness,
    /// `signal`, `idle`, `max_batches`, or the fatal error.
    pub stopped_by: String,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory.
    pub peak_rss_bytes: u64,
    /// Version of the run history table that records the session.
    pub history_version: Option<i64>,
}

impl Report for FollowReport {
    fn stage(&self) -> &'static str {
        "follow"
    }

    fn skipped(&self) -> bool {
        self.micro_batches == 0
    }

    fn text(&self) -> String {
        let f = &self.freshness;
        format!(
            "follow: {} micro-batch(es) in {:.1} s, stopped by {}\n  {} file(s), {} rows in, {} out, {} quarantined, {} duplicate(s), {} file(s) set aside\n  {} row(s) loaded, {} error(s), backlog {} file(s)\n  freshness over {} file(s): p50 {:.2} s, p99 {:.2} s, max {:.2} s; peak RSS {}",
            self.micro_batches,
            self.seconds,
            self.stopped_by,
            self.files,
            thousands(self.rows_in),
            thousands(self.rows_out),
            thousands(self.rows_quarantined),
            thousands(self.duplicates),
            self.files_set_aside,
            thousands(self.rows_loaded),
            self.errors,
            self.backlog_files,
            f.files,
            f.p50_s,
            f.p99_s,
            f.max_s,
            crate::report::bytes(self.peak_rss_bytes),
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows_in,
            files: self.files,
            note: format!(
                "{} micro-batch(es); freshness p99 {:.2} s",
                self.micro_batches, self.freshness.p99_s
            ),
            ..Default::default()
        }
    }

    fn exit_code(&self) -> u8 {
        exit::OK
    }
}

impl FollowReport {
    /// Print the summary: text, or one JSON line (the last of the stream's JSON lines).
    pub fn print_last(&self, json: bool) {
        crate::report::mark_printed();
        if json {
            crate::report::stdout_line(&serde_json::to_string(self).expect("reports serialise"));
        } else {
            crate::report::stdout_line(&self.text());
        }
    }

    /// The session as a run history row: its totals as the stages' summaries.
    pub(super) fn as_run(
        &self,
        started: chrono::DateTime<chrono::Utc>,
        ended: chrono::DateTime<chrono::Utc>,
    ) -> RunReport {
        // The stages the session ran (the row said "ingest, aggregate, load" whatever
        // --stages chose, and never named profiles).
        let stage = |stage: &'static str, rows: u64, files: u64| StageSummary {
            stage,
            skipped: rows == 0,
            summary: Summary {
                rows,
                files,
                ..Default::default()
            },
            seconds: self.seconds,
            ..Default::default()
        };
        RunReport {
            run_id: uuid::Uuid::new_v4().to_string(),
            started_at: crate::report::timestamp(started),
            ended_at: crate::report::timestamp(ended),
            outcome: format!(
                "follow: {} micro-batch(es), freshness p99 {:.2} s, stopped by {}",
                self.micro_batches, self.freshness.p99_s, self.stopped_by
            ),
            stages: self
                .stages
                .iter()
                .filter_map(|s| match s {
                    Stage::Ingest => Some(stage("ingest", self.rows_in, self.files)),
                    Stage::Aggregate => Some(stage("aggregate", self.rows_out, 0)),
                    Stage::Profiles => Some(stage("profiles", self.profile_rows, 0)),
                    Stage::Load => Some(stage("load", self.rows_loaded, 0)),
                    Stage::Generate => None,
                })
                .collect(),
            seconds: self.seconds,
            failed_in: None,
            history_version: None,
        }
    }
}
