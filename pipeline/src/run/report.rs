//! `run`'s report: a line per stage, with each stage's own report inside.

use serde::Serialize;

use crate::error::exit;
use crate::report::{Report, Summary, bytes, thousands};

/// One stage of a run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StageSummary {
    /// The stage.
    pub stage: &'static str,
    /// It had nothing to do.
    pub skipped: bool,
    /// Its counts and note.
    #[serde(flatten)]
    pub summary: Summary,
    /// Wall time.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
    /// Attempts it took.
    pub attempts: u32,
    /// What its report maps to (0 for a plain success).
    pub exit_code: u8,
    /// Its warnings.
    pub warnings: Vec<String>,
    /// The stage's own report.
    pub report: serde_json::Value,
}

impl StageSummary {
    /// The summary of a finished stage's report.
    pub fn of<R: Report>(r: &R) -> Self {
        let mut summary = r.summary();
        if r.skipped() {
            // A stage that did nothing shows nothing done (a skipped generate showed the
            // existing batch's rows, files and bytes as if it had written them again).
            (summary.rows, summary.files, summary.bytes) = (0, 0, 0);
        }
        StageSummary {
            stage: r.stage(),
            skipped: r.skipped(),
            summary,
            exit_code: r.exit_code(),
            warnings: r.warnings().to_vec(),
            report: serde_json::to_value(r).unwrap_or_default(),
            ..Default::default()
        }
    }
}

impl StageSummary {
    /// A stage that did not run, and why.
    pub fn skipped(stage: &'static str, note: String) -> Self {
        StageSummary {
            stage,
            skipped: true,
            summary: Summary {
                note,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    /// A unique id.
    pub run_id: String,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// End time, RFC 3339.
    pub ended_at: String,
    /// `succeeded`, `failed in <stage>: <error>` or `interrupted in <stage>: <signal>`.
    pub outcome: String,
    /// The stage that failed or was interrupted.
    pub failed_in: Option<&'static str>,
    /// The stages that ran.
    pub stages: Vec<StageSummary>,
    /// Wall time.
    pub seconds: f64,
    /// Version of the run history table that records this run.
    pub history_version: Option<i64>,
}

impl Report for RunReport {
    fn stage(&self) -> &'static str {
        "run"
    }

    fn skipped(&self) -> bool {
        self.stages.iter().all(|s| s.skipped)
    }

    fn text(&self) -> String {
        // A failed run's error is printed once, on stderr, after this.
        let outcome = match self.failed_in {
            Some(stage) if self.outcome.starts_with("interrupted") => {
                format!("interrupted in {stage} after {:.2} s", self.seconds)
            }
            Some(stage) => format!("failed in {stage} after {:.2} s", self.seconds),
            None => format!("{} in {:.2} s", self.outcome, self.seconds),
        };
        let mut s = format!("run {}: {outcome}", self.run_id);
        if self.stages.is_empty() {
            return s;
        }
        s.push_str(&format!(
            "\n  {:<10} {:>12} {:>6} {:>10} {:>8} {:>12}  {}",
            "stage", "rows", "files", "bytes", "seconds", "rows/s", "note"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "\n  {:<10} {:>12} {:>6} {:>10} {:>8.2} {:>12}  {}{}",
                st.stage,
                thousands(st.summary.rows),
                st.summary.files,
                bytes(st.summary.bytes),
                st.seconds,
                thousands(st.rows_per_sec as u64),
                if st.skipped { "skipped: " } else { "" },
                st.summary.note
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.stages.iter().map(|s| s.summary.rows).sum(),
            note: self.outcome.clone(),
            ..Default::default()
        }
    }

    fn exit_code(&self) -> u8 {
        self.stages
            .iter()
            .map(|s| s.exit_code)
            .find(|c| *c != exit::OK)
            .unwrap_or(exit::OK)
    }
}
