//! Every key the pipeline writes into a commit's `commitInfo`, and every application id
//! (`txn.appId`) under which a table records what it consumed: one place, so the stages that
//! write them and the readers of the log (catch-up, `changes`, `history`) agree.
//!
//! `commitInfo` is free-form per the Delta protocol ("Commit Provenance Information":
//! implementations may add arbitrary fields); application transactions are the protocol's
//! `txn` action (`appId`, `version`), which a reader returns per app id for the snapshot.

/// The stage (or maintenance job) that wrote the commit: `ingest`, `aggregate`, ...
pub const STAGE: &str = "pipeline.stage";
/// A unique id per commit attempt, by which a commit whose answer was lost is found.
pub const COMMIT_ID: &str = "pipeline.commit_id";
/// Ingest: the landing stream (folder prefix) the run read.
pub const STREAM: &str = "pipeline.stream";
/// Ingest: the run's number within its stream.
pub const RUN_SEQ: &str = "pipeline.run_seq";
/// Ingest: the run's unique id.
pub const RUN_ID: &str = "pipeline.run_id";
/// Ingest: the derived tables' actions, carried in the main commit.
pub const DERIVED: &str = "pipeline.derived";
/// Ingest: the reference time of the run's rules.
pub const REFERENCE_TIME: &str = "pipeline.reference_time";
/// Ingest: the earliest transaction date accepted.
pub const MIN_DATE: &str = "pipeline.min_date";
/// Ingest: transactions before this time are final.
pub const FINAL_BEFORE: &str = "pipeline.final_before";
/// Ingest: the main table's version the run read.
pub const READ_VERSION: &str = "pipeline.read_version";
/// Ingest: files ingested.
pub const FILES: &str = "pipeline.files";
/// Ingest: the run's row counts.
pub const ROWS: &str = "pipeline.rows";
/// The id index: the main table's version it reflects.
pub const MAIN_VERSION: &str = "pipeline.main_version";
/// A derived table: the source version it reflects.
pub const SOURCE_VERSION: &str = "pipeline.source_version";
/// A derived table: the source's identity (Delta table id).
pub const SOURCE_TABLE_ID: &str = "pipeline.source_table_id";
/// Aggregate: how the commit computed the days it replaced, `full`, `recompute` or
/// [`APPEND_MERGE`].
pub const AGGREGATE_MODE: &str = "pipeline.aggregate_mode";
/// Ingest from a topic: its `kafka://HOST:PORT/TOPIC`.
pub const SOURCE: &str = "pipeline.source";
/// Profiles: `full` or `incremental`.
pub const PROFILES_MODE: &str = "pipeline.profiles_mode";

/// The aggregate mode of a merge of appended rows. A row then changes only when rows counted
/// in it arrive, and its counts only grow, so a row equal at two versions is equal at every
/// version in between: `load` relies on it to write only the rows that changed.
pub const APPEND_MERGE: &str = "append_merge";

/// The app id under which the aggregates record the source version: `pipeline.aggregate:<id>`.
pub fn aggregate_app(source_id: &str) -> String {
    format!("pipeline.aggregate:{source_id}")
}

/// The app id under which the profiles record the aggregates version: `pipeline.profiles:<id>`.
pub fn profiles_app(source_id: &str) -> String {
    format!("pipeline.profiles:{source_id}")
}

/// The app id under which every ingest table records a stream's last run.
pub fn ingest_stream_app(prefix: &str) -> String {
    format!("pipeline.ingest.stream:{prefix}")
}

/// The app id under which `customer_transactions` records the next offset of a Kafka topic's
/// partition to ingest: `pipeline.kafka:TOPIC/PARTITION`.
pub fn kafka_offset_app(topic: &str, partition: i32) -> String {
    format!("pipeline.kafka:{topic}/{partition}")
}

/// The app id an earlier pipeline version recorded per ingested file (read when adopting
/// its tables).
pub fn legacy_file_app(rel: &str) -> String {
    format!("pipeline.ingest:{rel}")
}
