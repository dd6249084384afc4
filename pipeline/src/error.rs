//! One error type for the library, and the process exit codes it maps to.

use std::path::PathBuf;

use deltalake::DeltaTableError;
use deltalake::arrow::error::ArrowError;
use deltalake::parquet::errors::ParquetError;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a library we call (the ScyllaDB driver, object stores), kept as the
/// source of ours so the whole chain is printed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Process exit codes, documented in the README ("Exit codes").
pub mod exit {
    /// Success, including "nothing new to do".
    pub const OK: u8 = 0;
    /// Unexpected failure (I/O, storage, a bug): the message says what failed.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code for usage errors) or a precondition that does not hold.
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
    /// The run completed, but landing files changed after they were ingested: their new
    /// content was not ingested (the report and the message say which and what to do).
    pub const CHANGED_INPUT: u8 = 8;
    /// The run completed, but raw files it could not use were set aside
    /// (`--on-bad-file skip`): the other files were committed; the report names each set-aside
    /// file and why.
    pub const SET_ASIDE_INPUT: u8 = 9;
    /// The Kafka broker could not be reached or refused a request, or it no longer holds
    /// messages the table has not consumed yet (retention): nothing was committed.
    pub const KAFKA: u8 = 10;
    /// Stopped by a signal: `run --follow` at a second SIGINT/SIGTERM, `sql` at the first
    /// (nothing half-written is left).
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that can go wrong, each with the message a user needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A raw file that cannot be used: names the file, the problem and what to do.
    #[error(
        "raw file {}: {problem}. Nothing of this run was committed; fix or remove the file and rerun",
        path.display()
    )]
    BadInput {
        /// The raw file.
        path: PathBuf,
        /// What is wrong with it (row, column, type).
        problem: String,
    },

    /// A landing file changed while a run read it (a producer still writing it in place, or
    /// replacing it): ingest defers it to a later run; it surfaces only if something else
    /// reads landing files.
    #[error(
        "raw file {}: it changed while it was being read (is it still being written?). Nothing of \
         this run was committed; rerun once it is complete",
        path.display()
    )]
    Unsettled {
        /// The raw file.
        path: PathBuf,
    },

    /// A user-facing precondition that does not hold (missing folder, bad option value).
    #[error("{0}")]
    Invalid(String),

    /// A delta-rs error on a named table.
    #[error("Delta table {table}: {source}")]
    Delta {
        /// The table.
        table: String,
        /// What delta-rs said. Boxed: delta-rs errors are large, and every `Result` would
        /// pay for them.
        #[source]
        source: Box<DeltaTableError>,
    },

    /// Someone else committed to the table between our read and our commit.
    #[error(
        "Delta table {table}: a concurrent writer committed first ({detail}). Nothing of this run was committed; rerun it"
    )]
    Conflict {
        /// The table.
        table: String,
        /// delta-rs's description of the conflict.
        detail: String,
    },

    /// A commit call failed and reading the log back could not tell whether it landed.
    #[error(
        "Delta table {table}: the commit failed and whether it landed could not be checked ({source}). \
         No file was deleted. Rerun: the next run reads the log and either finds this commit or redoes it"
    )]
    CommitUnknown {
        /// The table.
        table: String,
        /// Why the check failed.
        #[source]
        source: Box<Error>,
    },

    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What failed (which file, which operation).
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An Arrow error.
    #[error(transparent)]
    Arrow(#[from] ArrowError),

    /// A Parquet error.
    #[error(transparent)]
    Parquet(#[from] ParquetError),

    /// A delta-rs error without a table name.
    #[error(transparent)]
    DeltaRaw(Box<DeltaTableError>),

    /// A DataFusion error (a query, a plan).
    #[error("query engine: {}{}", .0, memory_hint(.0))]
    DataFusion(Box<deltalake::datafusion::error::DataFusionError>),

    /// A mistake in a `pipeline sql` query (syntax, unknown table or column, types that do
    /// not fit, a statement that would change something): DataFusion's message.
    #[error("SQL: {0}")]
    Sql(Box<deltalake::datafusion::error::DataFusionError>),

    /// An internal task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),

    /// ScyllaDB could not be reached, or refused or failed a request.
    #[error("{what}: {source}{}", scylla_hint(source))]
    Scylla {
        /// What we were doing.
        what: String,
        /// What the driver said.
        #[source]
        source: BoxError,
    },

    /// The Kafka broker could not be reached, refused or failed a request, or no longer has
    /// what the table has not consumed.
    #[error("{what}: {source}{}", kafka_hint(source))]
    Kafka {
        /// What we were doing.
        what: String,
        /// What the client said.
        #[source]
        source: BoxError,
    },

    /// The broker no longer has messages the table has not consumed: never retried, never
    /// skipped without being told (`--on-missing-offsets earliest`).
    #[error("{what}: {problem}")]
    KafkaLost {
        /// The topic and partition.
        what: String,
        /// What was lost and what to do.
        problem: String,
    },

    /// `load` wrote some rows but not all of them.
    #[error(
        "load incomplete: {failed} row(s) of {what} still failed after retries{}; they are listed with their errors in {}. \
         {what} version {version} was NOT recorded as loaded: fix the cause and rerun `pipeline load` \
         (rows already written are made good by the next load)",
        if *over_budget { " (over the --max-errors budget, so the load stopped early)" } else { "" },
        bad_rows_file.display()
    )]
    LoadIncomplete {
        /// The serving table (`customer_daily_aggregates`, `customer_profiles`).
        what: &'static str,
        /// Rows that failed after retries.
        failed: u64,
        /// The load stopped early because of `--max-errors`.
        over_budget: bool,
        /// Where the failed rows are listed.
        bad_rows_file: PathBuf,
        /// The version that was being loaded.
        version: i64,
        /// The load report so far, for `--json`.
        report: Box<serde_json::Value>,
    },

    /// A table's `_delta_log` cannot be read back.
    #[error(
        "Delta table {table}: its transaction log (_delta_log) is damaged: {what}. Nothing was written. \
         Restore the damaged or missing commit file from a backup, or rebuild the table from its sources; \
         do not edit the log by hand"
    )]
    DamagedLog {
        /// The table.
        table: String,
        /// What is wrong with the log.
        what: String,
    },

    /// `pipeline run` was stopped by a signal during a stage.
    #[error(
        "interrupted by {signal} during {stage}: as safe as a kill (nothing half-committed); \
         rerun to go on from the last commit"
    )]
    Interrupted {
        /// The stage that was running.
        stage: &'static str,
        /// The signal's name.
        signal: &'static str,
        /// 128 + the signal's number.
        code: u8,
    },

    /// A stage of `pipeline run` failed.
    #[error("stage {stage} failed (after {attempts} attempt(s)): {source}")]
    StageFailed {
        /// The stage.
        stage: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
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
    /// A DataFusion error from planning or running a user's query: the query's fault
    /// ([`Error::Sql`], exit 2) unless it is the storage's or the machine's (I/O, object
    /// store, memory: exit 1).
    pub fn sql(e: deltalake::datafusion::error::DataFusionError) -> Self {
        use deltalake::datafusion::error::DataFusionError as E;
        match e.find_root() {
            E::IoError(_)
            | E::ObjectStore(_)
            | E::ParquetError(_)
            | E::External(_)
            | E::ResourcesExhausted(_) => Error::DataFusion(Box::new(e)),
            _ => Error::Sql(Box::new(e)),
        }
    }

    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A raw file that cannot be used.
    pub fn bad_input(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// A Kafka failure while doing `what`.
    pub fn kafka(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Kafka {
            what: what.into(),
            source: source.into(),
        }
    }

    /// A ScyllaDB failure while doing `what`.
    pub fn scylla(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Scylla {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Attach the table name to a delta-rs error; commit conflicts become [`Error::Conflict`]
    /// and an unreadable log [`Error::DamagedLog`].
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
            source => match damaged_log(&source) {
                Some(what) => Error::DamagedLog {
                    table: table.to_string(),
                    what,
                },
                None => Error::Delta {
                    table: table.to_string(),
                    source: Box::new(source),
                },
            },
        }
    }

    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadInput { .. } | Error::Unsettled { .. } => exit::BAD_INPUT,
            Error::Invalid(_) | Error::Sql(_) => exit::USAGE,
            Error::Conflict { .. } => exit::CONFLICT,
            Error::Scylla { .. } => exit::SCYLLA,
            Error::Kafka { .. } | Error::KafkaLost { .. } => exit::KAFKA,
            Error::LoadIncomplete { .. } => exit::LOAD_INCOMPLETE,
            Error::StageFailed { source, .. } => source.exit_code(),
            Error::Interrupted { code, .. } => *code,
            _ => exit::FAILURE,
        }
    }

    /// Worth retrying as it is: another writer got there first, or ScyllaDB or the Kafka
    /// broker had trouble (a stream waits for a topic that does not exist yet).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::Scylla { .. } | Error::Kafka { .. }
        )
    }

    /// The whole cause chain on one line, each cause once (ripgrep's `{:#}` habit).
    pub fn chain(&self) -> String {
        let mut msg = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = s.source();
        }
        msg
    }
}

/// What to do about a Kafka failure: a broker that cannot be reached, or one that answered.
fn kafka_hint(source: &BoxError) -> &'static str {
    let text = source.to_string();
    if text.contains("Connection") || text.contains("connect") || text.contains("I/O") {
        ". Is the broker running and reachable at that address? (`make kafka-broker` starts one)"
    } else {
        ""
    }
}

/// What to do about a ScyllaDB failure: a statement the server refused is not a server that
/// cannot be reached.
fn scylla_hint(source: &BoxError) -> &'static str {
    if source.to_string().contains("Database returned an error") {
        ". ScyllaDB refused the request (its message above says why)"
    } else {
        ". Is ScyllaDB running and reachable? Start one with `docker compose up -d scylla`, \
         or point --scylla-uri / SCYLLA_URI at yours (credentials: SCYLLA_USERNAME, SCYLLA_PASSWORD)"
    }
}

/// What to do when a query ran out of its memory pool. DataFusion spills sorts and hash
/// aggregates to disk, but not every operator: a `count(DISTINCT ...)` keeps every distinct
/// value in memory (`pipeline sql "SELECT count(DISTINCT transaction_id) ..."` fails on
/// 8,000,000 rows in 512 MiB where the GROUP BY form succeeds).
fn memory_hint(e: &deltalake::datafusion::error::DataFusionError) -> &'static str {
    use deltalake::datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(_) => {
            ". The query needs more memory than its pool allows; sorts and GROUP BY spill to \
             disk, but count(DISTINCT ...) cannot: count the rows of a GROUP BY subquery instead, \
             or filter to fewer rows"
        }
        _ => "",
    }
}

/// What is wrong with a log that delta-rs could not read, if that is the problem.
fn damaged_log(e: &DeltaTableError) -> Option<String> {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    if first.contains("contiguous commit files") {
        Some("the commit files are not contiguous (one is missing)".to_string())
    } else if first.contains("Json error") || first.contains("Invalid JSON in log") {
        Some(format!(
            "a commit file is not valid JSON ({})",
            first.rsplit(": ").next().unwrap_or(first)
        ))
    } else {
        None
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

    #[test]
    fn the_chain_keeps_every_cause_once() {
        let e = Error::io(
            "cannot open x",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.chain(), "cannot open x: gone");
        let s = Error::scylla("reading the load state", "timed out");
        assert!(s.chain().starts_with("reading the load state: timed out"));
        assert_eq!(s.exit_code(), exit::SCYLLA);
    }

    #[test]
    fn a_query_out_of_memory_says_what_to_do_and_a_mistake_does_not() {
        use deltalake::datafusion::error::DataFusionError as E;
        let oom = Error::sql(E::ResourcesExhausted("Failed to allocate 128 KB".into()));
        let msg = oom.to_string();
        assert!(msg.contains("Failed to allocate"), "{msg}");
        assert!(msg.contains("GROUP BY subquery"), "{msg}");
        assert_eq!(oom.exit_code(), exit::FAILURE);
        let mistake = Error::sql(E::Plan("no column x".into()));
        assert!(!mistake.to_string().contains("memory"), "{mistake}");
    }
}
