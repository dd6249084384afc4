//! `aggregate`'s options: one definition for the command line and `pipeline run`.

use clap::Args;
use serde::Serialize;

/// How aggregate runs.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct AggregateOptions {
    /// Rebuild every day instead of only the days changed since the last run.
    #[arg(long)]
    pub full: bool,
    /// Aggregate `customer_transactions` as of this version (time travel; a full rebuild).
    #[arg(long)]
    pub source_version: Option<i64>,
}
