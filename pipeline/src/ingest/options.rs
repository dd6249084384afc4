//! `ingest`'s options: one definition for the command line and `pipeline run`.

use chrono::NaiveDate;
use clap::Args;
use serde::Serialize;

use crate::kafka::{OnMissingOffsets, Topic};

/// How ingest runs. The quality rules' bounds are recorded in each commit.
#[derive(Debug, Clone, Args, Serialize)]
pub struct IngestOptions {
    /// Ingest from a Kafka topic instead of the landing folder: `kafka://HOST:PORT/TOPIC`.
    /// Each run reads every partition up to its latest offset when the run starts, and
    /// commits the next offsets with the rows (docs/kafka.md).
    #[arg(long, value_name = "kafka://HOST:PORT/TOPIC")]
    pub source: Option<Topic>,
    /// When the broker no longer has messages the table has not ingested (removed by
    /// retention, or the topic recreated): `fail` commits nothing and exits 10 saying what was
    /// lost; `earliest` goes on from the partition's earliest offset with a warning.
    #[arg(long, value_enum, default_value = "fail", value_name = "fail|earliest")]
    pub on_missing_offsets: OnMissingOffsets,
    /// Days (and files) processed concurrently (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Rows dated before this day (UTC) are quarantined as `transaction_ts_too_old`.
    #[arg(long, default_value = "2000-01-01", value_name = "YYYY-MM-DD")]
    pub min_date: NaiveDate,
    /// Event-time watermark: a day that ended more than this before the latest transaction
    /// committed (e.g. `2d`, `36h`) is final, and late rows for it are quarantined as
    /// `late_beyond_watermark`. Default: no watermark, late rows recompute their day.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub finalize_after: Option<std::time::Duration>,
    /// The reference instant of the "not in the future" rule (RFC 3339), instead of the
    /// clock: for tests and replays.
    #[arg(long, hide = true)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// What to do with a raw file that cannot be used (unreadable, incompatible schema):
    /// `stop` commits nothing and exits 3; `skip` sets it aside (recorded in `ingest_files`
    /// with the reason, not read again unless its content changes), commits the other files
    /// and exits 9. Default: `stop`, and `skip` in `run --follow`.
    #[arg(long, value_enum, value_name = "stop|skip")]
    pub on_bad_file: Option<OnBadFile>,
    /// Leave files modified less than this long ago (e.g. `5s`) for a later run, for
    /// producers that write files in place rather than under another name and rename them
    /// (NiFi's "Minimum File Age"). Without it such a file is still never ingested
    /// half-written: a file that changes while a run reads it is deferred. Default: none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_file_age: Option<std::time::Duration>,
    /// Rows held in memory per dedup bucket: a run with more rows is split by id range and
    /// spilled to scratch, bounding memory. For tests and tuning.
    #[arg(long, hide = true, default_value_t = super::verdicts::DEFAULT_BUCKET_IDS)]
    pub dedup_bucket_ids: u64,
    /// The largest merge of id index files a run makes itself, in bytes (None: any). Set by
    /// `run --follow`, whose background housekeeping merges the larger tiers, so that no
    /// micro-batch waits for a merge of most of the index.
    #[arg(skip)]
    #[serde(skip)]
    pub inline_index_merge_bytes: Option<u64>,
}

/// What ingest does with a raw file it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadFile {
    /// Commit nothing; exit 3 naming the file.
    Stop,
    /// Set the file aside, commit the others.
    Skip,
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

    /// The bad-file policy: the option, or `default` (the caller's mode's).
    pub fn on_bad_file(&self, default: OnBadFile) -> OnBadFile {
        self.on_bad_file.unwrap_or(default)
    }
}
