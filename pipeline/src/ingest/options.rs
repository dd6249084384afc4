//! `ingest`'s options: one definition for the command line and `pipeline run`.

use chrono::NaiveDate;
use clap::Args;
use serde::Serialize;

/// How ingest runs. The quality rules' bounds are recorded in each commit.
#[derive(Debug, Clone, Args, Serialize)]
pub struct IngestOptions {
    /// Days (and files) processed concurrently (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Rows dated before this day (UTC) are quarantined as `transaction_ts_too_old`.
    #[arg(long, default_value = "2000-01-01", value_name = "YYYY-MM-DD")]
    pub min_date: NaiveDate,
    /// The reference instant of the "not in the future" rule (RFC 3339), instead of the
    /// clock: for tests and replays.
    #[arg(long, hide = true)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// Ids held in memory per dedup bucket: a run with more ids (its own plus the index's)
    /// is split by id range and spilled to scratch, bounding memory. For tests and tuning.
    #[arg(long, hide = true, default_value_t = super::verdicts::DEFAULT_BUCKET_IDS)]
    pub dedup_bucket_ids: u64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

impl IngestOptions {
    /// Worker count: the option, or the number of CPUs.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}
