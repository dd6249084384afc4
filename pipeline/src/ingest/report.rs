//! `ingest`'s report.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::exit;
use crate::report::{Report, Summary, bytes, thousands, version};
use crate::tables::Table;

/// What an ingest run did. Always `rows_in = rows_out + rows_quarantined + duplicates`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// Parquet files in the landing folder.
    pub files_seen: u64,
    /// Files read and committed by this run.
    pub files_ingested: u64,
    /// Files whose content changed after they were ingested (not ingested again).
    pub changed_files: Vec<ChangedFile>,
    /// Files set aside as unusable (`--on-bad-file skip`), recorded in `ingest_files`.
    pub set_aside_files: Vec<SetAsideFile>,
    /// New files left for a later run: changing while this run looked at them (a producer
    /// still writing them in place), or younger than `--min-file-age`. Nothing of them is
    /// recorded; the next run takes them as new.
    pub deferred_files: Vec<String>,
    /// When each ingested file landed (modification time, µs since the epoch): the start of
    /// its freshness in `run --follow`.
    #[serde(skip)]
    pub landed_us: Vec<i64>,
    /// From a Kafka topic: each partition's offsets read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<super::kafka::KafkaRead>,
    /// Rows read.
    pub rows_in: u64,
    /// Rows added to `customer_transactions`.
    pub rows_out: u64,
    /// Rows quarantined for a rule (duplicates are counted separately).
    pub rows_quarantined: u64,
    /// Rows whose `transaction_id` was already in the table, or earlier in this run.
    pub duplicates: u64,
    /// Quarantined rows by rule.
    pub quarantine_reasons: BTreeMap<&'static str, u64>,
    /// Days with rows in this run.
    pub days: u64,
    /// Bytes of raw files read.
    pub bytes_read: u64,
    /// Bytes of data files written (transactions and quarantine).
    pub bytes_written: u64,
    /// Data files written (transactions and quarantine).
    pub data_files_written: u64,
    /// This run's number in its landing stream (one more than the last committed run).
    pub run_seq: Option<i64>,
    /// The reference instant of the future rule, recorded in the commit.
    pub reference_time: Option<String>,
    /// Version of `customer_transactions` this run committed (none when there was nothing new).
    pub table_version: Option<i64>,
    /// Version of the quarantine table that records this run.
    pub quarantine_version: Option<i64>,
    /// Ids in the id index when this run started.
    pub index_ids: u64,
    /// Commits that completed an earlier run's bookkeeping (after a crash between commits).
    pub caught_up_commits: u64,
    /// Times this run lost the race to commit to another writer (another ingest process on
    /// another landing prefix) and was done again from the tables' new versions.
    pub lost_races: u32,
    /// Things that did not stop the run (a checkpoint not written, a compaction skipped).
    pub warnings: Vec<String>,
    /// Seconds spent in each step of the run, in order.
    pub steps: Vec<(&'static str, f64)>,
    /// Wall time.
    pub seconds: f64,
    /// Rows read per second.
    pub rows_per_sec: f64,
    /// Peak RSS of the process.
    pub peak_rss_bytes: u64,
}

/// A landing file whose content differs from when it was ingested.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedFile {
    /// Path relative to the landing folder.
    pub path: String,
    /// Size when ingested, and now.
    pub ingested_size: u64,
    /// Size now.
    pub size: u64,
    /// Content hash when ingested, and now (BLAKE3, hex).
    pub ingested_hash: Option<String>,
    /// Content hash now.
    pub hash: String,
}

/// A landing file set aside: it could not be used.
#[derive(Debug, Clone, Serialize)]
pub struct SetAsideFile {
    /// Path relative to the landing folder.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What to do about a set-aside file.
pub const SET_ASIDE_ADVICE: &str = "the other files were committed; a set-aside file is not read \
     again until its content changes: fix it in place or land a fixed copy under a new name";

/// What to do about changed files, in the text summary and the run's message.
pub const CHANGED_ADVICE: &str = "landing files are immutable: their new content was NOT ingested. \
     To ingest it, land it under a new name (rows already ingested are then counted as \
     duplicates); otherwise restore the original file or move it out of the landing folder";

impl IngestReport {
    /// Count `files` as the run's files (read and committed).
    pub(super) fn count_files(&mut self, files: &[super::discover::LandingFile]) {
        self.files_ingested = files.len() as u64;
        self.bytes_read = files.iter().map(|f| f.size).sum();
    }

    /// The row accounts, as the run's commit records them.
    pub(super) fn rows_json(&self) -> serde_json::Value {
        serde_json::json!({
            "in": self.rows_in,
            "out": self.rows_out,
            "quarantined": self.rows_quarantined,
            "duplicates": self.duplicates,
        })
    }

    /// Add files left for a later run.
    pub(super) fn defer(&mut self, rels: impl IntoIterator<Item = String>) {
        for rel in rels {
            if !self.deferred_files.contains(&rel) {
                self.deferred_files.push(rel);
            }
        }
    }
}

impl Report for IngestReport {
    fn stage(&self) -> &'static str {
        "ingest"
    }

    fn skipped(&self) -> bool {
        self.files_ingested == 0 && self.set_aside_files.is_empty()
    }

    fn text(&self) -> String {
        let mut s = if let (true, Some(k)) = (self.skipped(), &self.kafka) {
            format!(
                "ingest: no new messages in {} ({} partitions); nothing committed",
                k.topic,
                k.partitions.len()
            )
        } else if self.skipped() {
            format!(
                "ingest: no new files ({} already ingested); nothing committed",
                self.files_seen - self.changed_files.len() as u64
            )
        } else {
            let mut s = format!(
                "ingest: {} new files ({} read) -> {} version {}\n  rows: {} in = {} out + {} quarantined + {} duplicates\n  {} days, {} written in {} files, {:.2} s ({} rows/s, peak RSS {})",
                self.files_ingested,
                bytes(self.bytes_read),
                Table::Transactions,
                version(self.table_version),
                thousands(self.rows_in),
                thousands(self.rows_out),
                thousands(self.rows_quarantined),
                thousands(self.duplicates),
                self.days,
                bytes(self.bytes_written),
                self.data_files_written,
                self.seconds,
                thousands(self.rows_per_sec as u64),
                bytes(self.peak_rss_bytes)
            );
            if !self.quarantine_reasons.is_empty() {
                let reasons: Vec<String> = self
                    .quarantine_reasons
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                s.push_str(&format!("\n  quarantined by rule: {}", reasons.join(", ")));
            }
            s
        };
        if let Some(k) = self.kafka.as_ref().filter(|_| !self.skipped()) {
            s.push_str(&k.text());
        }
        for f in &self.set_aside_files {
            s.push_str(&format!("\n  set aside {}: {}", f.path, f.problem));
        }
        if !self.set_aside_files.is_empty() {
            s.push_str(&format!("\n  {SET_ASIDE_ADVICE}"));
        }
        if !self.deferred_files.is_empty() {
            s.push_str(&format!(
                "\n  {} new file(s) left for the next run (still being written, or younger than \
                 --min-file-age): {}",
                self.deferred_files.len(),
                self.deferred_files.join(", ")
            ));
        }
        if !self.changed_files.is_empty() {
            s.push_str(&format!(
                "\n  {} file(s) changed after they were ingested: {}\n  {CHANGED_ADVICE}",
                self.changed_files.len(),
                self.changed_files
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows_in,
            files: self.files_ingested,
            bytes: self.bytes_written,
            note: if self.skipped() {
                "no new raw files".into()
            } else {
                format!(
                    "{} quarantined, {} duplicates",
                    self.rows_quarantined, self.duplicates
                )
            } + &if self.changed_files.is_empty() {
                String::new()
            } else {
                format!("; {} changed file(s)", self.changed_files.len())
            } + &if self.set_aside_files.is_empty() {
                String::new()
            } else {
                format!("; {} file(s) set aside", self.set_aside_files.len())
            } + &if self.deferred_files.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} file(s) left for the next run",
                    self.deferred_files.len()
                )
            },
            consumed_version: None,
            produced_version: self.table_version,
        }
    }

    fn exit_code(&self) -> u8 {
        if !self.changed_files.is_empty() {
            exit::CHANGED_INPUT
        } else if !self.set_aside_files.is_empty() {
            exit::SET_ASIDE_INPUT
        } else {
            exit::OK
        }
    }

    fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl IngestReport {
    /// Record the seconds of a step that started at `t`.
    pub(super) fn step(&mut self, name: &'static str, t: std::time::Instant) {
        self.steps.push((name, t.elapsed().as_secs_f64()));
    }

    /// Take the written rows' counts.
    pub(super) fn tally(&mut self, w: &super::write::Written) {
        self.rows_out = w.rows_out;
        self.duplicates = w.duplicates;
        self.quarantine_reasons = w.reasons.clone();
        self.rows_quarantined = w.reasons.values().sum();
        self.data_files_written = (w.main_adds.len() + w.quarantine_adds.len()) as u64;
        self.bytes_written = w
            .main_adds
            .iter()
            .chain(&w.quarantine_adds)
            .map(|a| a.size as u64)
            .sum();
    }

    pub(super) fn finish(mut self, started: std::time::Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self.rows_per_sec = crate::report::per_sec(self.rows_in, self.seconds);
        self.peak_rss_bytes = crate::progress::peak_rss_bytes();
        self
    }
}
