//! `generate`'s report, and the kinds of bad rows it injects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::{Report, Summary, bytes, thousands};

/// The kinds of bad rows `--dirty-rate` injects. Each maps to exactly one ingest outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dirty {
    /// A `transaction_id` that is not a UUID.
    TransactionIdNotUuid,
    /// `customer_id` ≤ 0.
    CustomerIdNotPositive,
    /// `merchant_id` ≤ 0.
    MerchantIdNotPositive,
    /// A timestamp in the first week of 2099.
    TransactionTsInFuture,
    /// `amount` ≤ 0.
    AmountNotPositive,
    /// An unknown category.
    CategoryUnknown,
    /// An unknown channel.
    ChannelUnknown,
    /// An unknown status.
    StatusUnknown,
    /// An exact copy of an earlier row of the same file.
    DuplicateInBatch,
    /// An exact copy of a valid row of an earlier batch (a re-delivery).
    DuplicateOfEarlierBatch,
}

impl Dirty {
    /// Kinds injected inside day files (the re-delivery kind has its own file).
    pub const IN_FILE: [Dirty; 9] = [
        Dirty::TransactionIdNotUuid,
        Dirty::CustomerIdNotPositive,
        Dirty::MerchantIdNotPositive,
        Dirty::TransactionTsInFuture,
        Dirty::AmountNotPositive,
        Dirty::CategoryUnknown,
        Dirty::ChannelUnknown,
        Dirty::StatusUnknown,
        Dirty::DuplicateInBatch,
    ];

    /// Ingest counts it as a duplicate (not a rule violation).
    pub fn is_duplicate(self) -> bool {
        matches!(
            self,
            Dirty::DuplicateInBatch | Dirty::DuplicateOfEarlierBatch
        )
    }
}

/// What a generator batch wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerateReport {
    /// The batch number.
    pub batch: u32,
    /// Parquet files written.
    pub files: u64,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Injected bad rows by kind.
    pub dirty: BTreeMap<Dirty, u64>,
    /// What ingest must quarantine for rule violations from this batch.
    pub expected_quarantined: u64,
    /// What ingest must count as duplicates from this batch.
    pub expected_duplicates: u64,
    /// Wall time.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
    /// True when the batch was already complete with the same options: nothing was written.
    pub skipped: bool,
    /// Peak RSS of the process.
    pub peak_rss_bytes: u64,
}

impl Report for GenerateReport {
    fn stage(&self) -> &'static str {
        "generate"
    }

    fn skipped(&self) -> bool {
        self.skipped
    }

    fn text(&self) -> String {
        if self.skipped {
            return format!(
                "generate: batch {} already complete ({} rows in {} files); nothing written",
                self.batch,
                thousands(self.rows),
                self.files
            );
        }
        let mut s = format!(
            "generate: batch {}: {} rows in {} files, {} in {:.2} s ({} rows/s, peak RSS {})",
            self.batch,
            thousands(self.rows),
            self.files,
            bytes(self.bytes),
            self.seconds,
            thousands(self.rows_per_sec as u64),
            bytes(self.peak_rss_bytes)
        );
        if !self.dirty.is_empty() {
            s.push_str(&format!(
                "\n  injected: {} rule violations, {} duplicates",
                thousands(self.expected_quarantined),
                thousands(self.expected_duplicates)
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows,
            files: self.files,
            bytes: self.bytes,
            note: if self.skipped {
                format!(
                    "batch {} already complete ({} rows in {} files)",
                    self.batch,
                    crate::report::thousands(self.rows),
                    self.files
                )
            } else {
                format!("batch {}", self.batch)
            },
            ..Default::default()
        }
    }
}
