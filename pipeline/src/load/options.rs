//! `load`'s options: one definition for the command line and `pipeline run`.

use clap::Args;

use crate::cql::ScyllaOptions;

/// How load runs.
#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
    /// Where ScyllaDB is.
    #[command(flatten)]
    pub scylla: ScyllaOptions,
    /// Requests in flight at once (across all days being streamed).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Delta files streamed at once.
    #[arg(long, default_value_t = 4, hide = true)]
    pub parallel_files: usize,
    /// Attempts per row for retryable errors (overload, timeouts, broken connections).
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
    /// Rows that may fail (after retries) before the load stops early: a count (100) or a
    /// percentage (0.5%). Any failure still exits non-zero and records nothing.
    #[arg(long, default_value = "0")]
    pub max_errors: ErrorBudget,
    /// Show what would be loaded (versions, days, files, rows) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repair: write every row in a new serving epoch, whose timestamps are above every
    /// earlier write (also ones made outside the pipeline with current-time timestamps), then
    /// delete every older row of every partition. ScyllaDB then equals Delta whatever
    /// happened to it.
    #[arg(long)]
    pub repair: bool,
    /// Serve this data dir's tables from a keyspace that serves another data dir's: every
    /// row written, every older one deleted (without it, such a load is refused, exit 2).
    #[arg(long)]
    pub take_over: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

/// `--max-errors`: how many rows may fail (after retries) before the load stops early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBudget {
    /// At most this many rows.
    Count(u64),
    /// At most this percentage of the rows to load.
    Percent(f64),
}

impl std::str::FromStr for ErrorBudget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage like 0.5%"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("`{s}`: a percentage must be between 0% and 100%"));
            }
            return Ok(ErrorBudget::Percent(v));
        }
        s.trim().parse().map(ErrorBudget::Count).map_err(|_| {
            format!("`{s}` is neither a row count like 100 nor a percentage like 0.5%")
        })
    }
}

impl ErrorBudget {
    /// Failures allowed when loading `rows` rows.
    pub fn allowed(self, rows: u64) -> u64 {
        match self {
            ErrorBudget::Count(n) => n,
            ErrorBudget::Percent(p) => (rows as f64 * p / 100.0).floor() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_budgets_parse_counts_and_percentages() {
        assert_eq!("10".parse(), Ok(ErrorBudget::Count(10)));
        assert_eq!("0.5%".parse(), Ok(ErrorBudget::Percent(0.5)));
        assert!("ten".parse::<ErrorBudget>().is_err());
        assert!("120%".parse::<ErrorBudget>().is_err());
        assert_eq!(ErrorBudget::Percent(1.0).allowed(250), 2);
    }
}
