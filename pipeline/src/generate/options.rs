//! `generate`'s options: one definition for the command line, `pipeline run` and the batch
//! manifest (a rerun with other options for the same batch is refused).

use chrono::NaiveDate;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Options of one generator batch. Same options, same rows.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// Rows to generate in this batch.
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    /// Distinct customers (activity is Zipf-distributed over them).
    #[arg(long, default_value_t = 10_000)]
    pub customers: u64,
    /// Distinct merchants.
    #[arg(long, default_value_t = 2_000)]
    pub merchants: u64,
    /// Days covered, starting at --start-date.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// First day (YYYY-MM-DD, UTC).
    #[arg(long, default_value = "2024-01-01")]
    pub start_date: NaiveDate,
    /// Random seed: same seed and options, same rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Maximum rows per Parquet file (a day with more rows is split into several files).
    #[arg(long, default_value_t = 500_000)]
    pub rows_per_file: u64,
    /// Batch number; each batch writes its own folder. Use a new one to add files later
    /// (a new date range, or late rows for old days with an earlier --start-date).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Fraction of rows made bad on purpose (every kind the ingest rules catch, and duplicates,
    /// including re-deliveries of rows from earlier batches).
    #[arg(long, default_value_t = 0.0)]
    pub dirty_rate: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

impl GenerateOptions {
    /// Refuse values that cannot make a batch.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("generate: {m}")));
        if self.rows == 0 {
            return bad("--rows must be at least 1");
        }
        if self.customers == 0 || self.merchants == 0 {
            return bad("--customers and --merchants must be at least 1");
        }
        if self.days == 0 {
            return bad("--days must be at least 1");
        }
        if self.rows_per_file == 0 {
            return bad("--rows-per-file must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.dirty_rate) {
            return bad("--dirty-rate must be between 0 and 1");
        }
        Ok(())
    }
}
