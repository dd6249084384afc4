//! `aggregate`'s options: one definition for the command line and `pipeline run`.

use clap::Args;
use serde::Serialize;

/// How aggregate runs.
#[derive(Debug, Clone, Args, Serialize)]
pub struct AggregateOptions {
    /// Rebuild every day instead of only the days changed since the last run.
    #[arg(long)]
    pub full: bool,
    /// Aggregate `customer_transactions` as of this version (time travel; a full rebuild).
    #[arg(long)]
    pub source_version: Option<i64>,
    /// Source rows per query of a recomputation (whole days; a larger day alone): bounds
    /// its memory. Hidden: a tuning and test knob.
    #[arg(long, hide = true, default_value_t = super::execute::ROWS_PER_PASS)]
    pub rows_per_pass: u64,
}

impl Default for AggregateOptions {
    fn default() -> Self {
        crate::defaults()
    }
}
