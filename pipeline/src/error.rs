//! One error type for the library, and the process exit codes it maps to.

use std::path::PathBuf;

use deltalake::DeltaTableError;
use deltalake::arrow::error::ArrowError;
use deltalake::parquet::errors::ParquetError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Process exit codes, documented in the README ("Exit codes").
pub mod exit {
    pub const OK: u8 = 0;
    /// Unexpected failure (I/O, storage, a bug): the message says what failed.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// Bad input data: an unreadable or schema-incompatible raw file. Nothing was committed.
    pub const BAD_INPUT: u8 = 3;
    /// Another writer committed a conflicting change first. Nothing was committed; rerun.
    pub const CONFLICT: u8 = 4;
    /// ScyllaDB unreachable, refused the login, or rejected a statement.
    pub const SCYLLA: u8 = 5;
    /// `load` wrote some rows but not all; the version was not recorded as loaded.
    pub const LOAD_INCOMPLETE: u8 = 6;
    /// `verify` found days where ScyllaDB differs from the Delta aggregates.
    pub const VERIFY_MISMATCH: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A raw file that cannot be used: names the file, the problem and what to do.
    #[error(
        "raw file {}: {problem}. Nothing of this run was committed; fix or remove the file and rerun",
        path.display()
    )]
    BadInput { path: PathBuf, problem: String },

    /// A user-facing precondition that does not hold (missing folder, bad option value).
    #[error("{0}")]
    Invalid(String),

    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        // Boxed: delta-rs errors are large, and every `Result` would pay for them.
        #[source]
        source: Box<DeltaTableError>,
    },

    /// Someone else committed to the table between our read and our commit.
    #[error(
        "Delta table {table}: a concurrent writer committed first ({detail}). Nothing of this run was committed; rerun it"
    )]
    Conflict { table: String, detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Arrow(#[from] ArrowError),

    #[error(transparent)]
    Parquet(#[from] ParquetError),

    #[error(transparent)]
    DeltaRaw(Box<DeltaTableError>),

    #[error("query engine: {0}")]
    DataFusion(Box<deltalake::datafusion::error::DataFusionError>),

    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),

    #[error(
        "{what}: {detail}. Is ScyllaDB running and reachable? Start one with `docker compose up -d scylla`, \
         or point --scylla-uri / SCYLLA_URI at yours (credentials: SCYLLA_USERNAME, SCYLLA_PASSWORD)"
    )]
    Scylla { what: String, detail: String },

    #[error(
        "load incomplete: {failed} row(s) still failed after retries{}; they are listed with their errors in {}. \
         Aggregates version {version} was NOT recorded as loaded: fix the cause and rerun `pipeline load` \
         (rows already written are upserted again, harmlessly)",
        if *over_budget { " (over the --max-errors budget, so the load stopped early)" } else { "" },
        bad_rows_file.display()
    )]
    LoadIncomplete {
        failed: u64,
        over_budget: bool,
        bad_rows_file: PathBuf,
        version: i64,
        /// The load report so far, for `--json`.
        report: Box<serde_json::Value>,
    },

    #[error(
        "Delta table {table}: its transaction log (_delta_log) is damaged: {what}. Nothing was written. \
         Restore the damaged or missing commit file from a backup, or rebuild the table from its sources; \
         do not edit the log by hand"
    )]
    DamagedLog { table: String, what: String },

    #[error("stage {stage} failed (after {attempts} attempt(s)): {source}")]
    StageFailed {
        stage: &'static str,
        attempts: u32,
        source: Box<Error>,
    },
}

impl From<DeltaTableError> for Error {
    fn from(e: DeltaTableError) -> Self {
        Error::DeltaRaw(Box::new(e))
    }
}

impl From<deltalake::datafusion::error::DataFusionError> for Error {
    fn from(e: deltalake::datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn bad_input(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// Attach the table name to a delta-rs error; commit conflicts become [`Error::Conflict`].
    pub fn delta(table: &str, source: DeltaTableError) -> Self {
        use deltalake::kernel::transaction::TransactionError;
        match source {
            DeltaTableError::Transaction {
                source:
                    ref tx @ (TransactionError::VersionAlreadyExists(_)
                    | TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)),
            } => Error::Conflict {
                table: table.to_string(),
                detail: tx.to_string(),
            },
            source => {
                let text = source.to_string();
                let first = text.lines().next().unwrap_or_default();
                let what = if first.contains("contiguous commit files") {
                    Some("the commit files are not contiguous (one is missing)".to_string())
                } else if first.contains("Json error") || first.contains("Invalid JSON in log") {
                    Some(format!(
                        "a commit file is not valid JSON ({})",
                        first.rsplit(": ").next().unwrap_or(first)
                    ))
                } else {
                    None
                };
                match what {
                    Some(what) => Error::DamagedLog {
                        table: table.to_string(),
                        what,
                    },
                    None => Error::Delta {
                        table: table.to_string(),
                        source: Box::new(source),
                    },
                }
            }
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadInput { .. } => exit::BAD_INPUT,
            Error::Invalid(_) => exit::USAGE,
            Error::Conflict { .. } => exit::CONFLICT,
            Error::Scylla { .. } => exit::SCYLLA,
            Error::LoadIncomplete { .. } => exit::LOAD_INCOMPLETE,
            Error::StageFailed { source, .. } => source.exit_code(),
            _ => exit::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_names_file_and_next_step() {
        let e = Error::bad_input(
            "/d/x.parquet",
            "column `amount` is Float64, expected Decimal128(12, 2)",
        );
        let msg = e.to_string();
        assert!(msg.contains("/d/x.parquet"), "{msg}");
        assert!(msg.contains("Float64"), "{msg}");
        assert!(msg.contains("Nothing of this run was committed"), "{msg}");
        assert_eq!(e.exit_code(), exit::BAD_INPUT);
    }
}
