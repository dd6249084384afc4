//! The serving side: the ScyllaDB schema, `load` (Delta aggregates -> ScyllaDB), `lookup` and
//! `verify`.
//!
//! `load` records the aggregates version it has fully written in a small ScyllaDB table
//! (`pipeline_load_state`), and only after every row of that version was acknowledged. A killed
//! or failed load therefore reruns from the last complete version: the inserts are idempotent
//! upserts, so writing a day twice is harmless and nothing is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTableBuilder;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Decimal128Type, Int64Type};
use deltalake::parquet::arrow::ProjectionMask;
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::frame::types::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp};
use serde::Serialize;

use crate::aggregate;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::schema::PARTITION_COLUMN;

/// The schema file, compiled in: the code creates exactly what it says.
pub const SCHEMA_CQL: &str = include_str!("../../scylla/schema.cql");
pub const TABLE: &str = "customer_daily_aggregates";
pub const STATE_TABLE: &str = "pipeline_load_state";
const DEFAULT_KEYSPACE: &str = "analytics";
pub const DEFAULT_REPLICATION: &str =
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";
/// Key of our row in the state table.
const STATE_KEY: &str = "customer_daily_aggregates";

/// How to reach ScyllaDB. Credentials are not here: they come from `SCYLLA_USERNAME` and
/// `SCYLLA_PASSWORD` (or `SCYLLA_PASSWORD_FILE`) and are never printed.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// `host:port` of a contact point (several separated by commas).
    pub uri: String,
    pub keyspace: String,
    /// CQL map literal for the keyspace's replication.
    pub replication: String,
    pub consistency: Consistency,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: bool,
    /// Extra CA certificates (PEM) to trust, besides the system roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            uri: "127.0.0.1:9042".into(),
            keyspace: DEFAULT_KEYSPACE.into(),
            replication: DEFAULT_REPLICATION.into(),
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tls: false,
            tls_ca_file: None,
        }
    }
}

/// The schema statements for `keyspace` with `replication`, from [`SCHEMA_CQL`].
pub fn schema_statements(keyspace: &str, replication: &str) -> Vec<String> {
    let text: String = SCHEMA_CQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("CREATE KEYSPACE") {
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}")
            } else {
                s.replace(&format!("{DEFAULT_KEYSPACE}."), &format!("{keyspace}."))
            }
        })
        .collect()
}

/// The columns the serving table must have: (name, CQL type, kind).
const EXPECTED_COLUMNS: &[(&str, &str, &str)] = &[
    ("customer_id", "bigint", "partition_key"),
    ("transaction_date", "date", "clustering"),
    ("total_amount", "decimal", "regular"),
    ("transaction_count", "bigint", "regular"),
    ("declined_count", "bigint", "regular"),
    ("min_amount", "decimal", "regular"),
    ("max_amount", "decimal", "regular"),
];

fn credentials() -> Result<Option<(String, String)>> {
    let Ok(user) = std::env::var("SCYLLA_USERNAME") else {
        return Ok(None);
    };
    let password = match std::env::var("SCYLLA_PASSWORD") {
        Ok(p) => p,
        Err(_) => match std::env::var("SCYLLA_PASSWORD_FILE") {
            Ok(f) => std::fs::read_to_string(&f)
                .map_err(|e| Error::io(format!("cannot read SCYLLA_PASSWORD_FILE {f}"), e))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            Err(_) => {
                return Err(Error::Invalid(
                    "SCYLLA_USERNAME is set but neither SCYLLA_PASSWORD nor SCYLLA_PASSWORD_FILE is"
                        .into(),
                ));
            }
        },
    };
    Ok(Some((user, password)))
}

fn tls_context(cfg: &ScyllaConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !cfg.tls {
        return Ok(None);
    }
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &cfg.tls_ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::Invalid(format!(
                    "--tls-ca-file {}: not a PEM certificate file ({e})",
                    path.display()
                ))
            })?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Error::Invalid(format!("--tls-ca-file {}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// Connect one shared session (the driver's pool, token- and shard-aware by default).
pub async fn connect(cfg: &ScyllaConfig) -> Result<Session> {
    let profile = ExecutionProfile::builder()
        .consistency(cfg.consistency)
        .request_timeout(Some(cfg.request_timeout))
        .build();
    let mut b = SessionBuilder::new()
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(cfg.connect_timeout);
    for node in cfg.uri.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        b = b.known_node(node);
    }
    if let Some((user, password)) = credentials()? {
        b = b.user(user, password);
    }
    if let Some(tls) = tls_context(cfg)? {
        b = b.tls_context(Some(tls));
    }
    b.build().await.map_err(|e| Error::Scylla {
        what: format!("cannot connect to ScyllaDB at {}", cfg.uri),
        detail: e.to_string(),
    })
}

/// Create the keyspace and tables if missing, and check that the serving table has the
/// columns we write (an existing table with another schema is an error, not a silent mess).
pub async fn init_schema(session: &Session, cfg: &ScyllaConfig) -> Result<()> {
    for stmt in schema_statements(&cfg.keyspace, &cfg.replication) {
        session
            .query_unpaged(stmt.as_str(), &())
            .await
            .map_err(|e| Error::Scylla {
                what: format!("creating the schema ({})", first_words(&stmt)),
                detail: e.to_string(),
            })?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::Scylla {
            what: "waiting for schema agreement".into(),
            detail: e.to_string(),
        })?;
    let err = |e: String| Error::Scylla {
        what: "reading the serving table's schema".into(),
        detail: e,
    };
    let rows = session
        .query_unpaged(
            "SELECT column_name, type, kind FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (&cfg.keyspace, TABLE),
        )
        .await
        .map_err(|e| err(e.to_string()))?
        .into_rows_result()
        .map_err(|e| err(e.to_string()))?;
    let found: BTreeSet<(String, String, String)> = rows
        .rows::<(String, String, String)>()
        .map_err(|e| err(e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    let want: BTreeSet<(String, String, String)> = EXPECTED_COLUMNS
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    if found != want {
        let show = |s: &BTreeSet<(String, String, String)>| {
            s.iter()
                .map(|(n, t, k)| format!("{n} {t} ({k})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::Invalid(format!(
            "table {}.{TABLE} exists with a different schema: it has [{}], expected [{}]. \
             Drop it or choose another keyspace with --keyspace",
            cfg.keyspace,
            show(&found),
            show(&want)
        )));
    }
    Ok(())
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

/// The aggregates version whose rows are all loaded, if any.
pub async fn loaded_version(session: &Session, cfg: &ScyllaConfig) -> Result<Option<i64>> {
    let q = format!(
        "SELECT aggregates_version FROM {}.{STATE_TABLE} WHERE name = ?",
        cfg.keyspace
    );
    let err = |e: String| Error::Scylla {
        what: "reading the load state".into(),
        detail: e,
    };
    let rows = session
        .query_unpaged(q.as_str(), (STATE_KEY,))
        .await
        .map_err(|e| err(e.to_string()))?
        .into_rows_result()
        .map_err(|e| err(e.to_string()))?;
    let row = rows
        .maybe_first_row::<(Option<i64>,)>()
        .map_err(|e| err(e.to_string()))?;
    Ok(row.and_then(|(v,)| v))
}

/// `--max-errors`: how many rows may fail (after retries) before the load stops early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBudget {
    Count(u64),
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
    fn allowed(self, rows: u64) -> u64 {
        match self {
            ErrorBudget::Count(n) => n,
            ErrorBudget::Percent(p) => (rows as f64 * p / 100.0).floor() as u64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests in flight at once, across all partitions being streamed.
    pub concurrency: usize,
    /// Delta files (one day each) streamed at once.
    pub parallel_files: usize,
    /// Attempts per row for retryable errors (the first included).
    pub max_attempts: u32,
    pub max_errors: ErrorBudget,
    pub dry_run: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            parallel_files: 4,
            max_attempts: 8,
            max_errors: ErrorBudget::Count(0),
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub keyspace: String,
    /// Version of the aggregates table loaded by this run.
    pub aggregates_version: Option<i64>,
    /// Version loaded before this run (none: never).
    pub previous_version: Option<i64>,
    pub full_load: bool,
    pub days: u64,
    pub files: u64,
    pub rows_to_load: u64,
    pub rows_written: u64,
    pub retries: u64,
    pub failures: u64,
    /// Rows that still failed after retries, with their errors (JSON lines).
    pub bad_rows_file: Option<PathBuf>,
    pub dry_run: bool,
    pub latency_ms: Latency,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One row of the aggregates table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggRow {
    pub customer_id: i64,
    /// Days since 1970-01-01.
    pub day: i32,
    /// Cents (scale 2).
    pub total_amount: i128,
    pub transaction_count: i64,
    pub declined_count: i64,
    pub min_amount: Option<i128>,
    pub max_amount: Option<i128>,
}

fn decimal(cents: i128) -> CqlDecimal {
    let b = cents.to_be_bytes();
    // Minimal two's complement, as CQL varints are written.
    let mut start = 0;
    while start < 15
        && ((b[start] == 0 && b[start + 1] & 0x80 == 0)
            || (b[start] == 0xFF && b[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&b[start..], 2)
}

fn cents(d: &CqlDecimal) -> Option<i128> {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let mut buf = if bytes[0] & 0x80 != 0 {
        [0xFF; 16]
    } else {
        [0; 16]
    };
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let v = i128::from_be_bytes(buf);
    match scale {
        2 => Some(v),
        s if s < 2 => v.checked_mul(10i128.checked_pow((2 - s) as u32)?),
        s => {
            let div = 10i128.checked_pow((s - 2) as u32)?;
            (v % div == 0).then_some(v / div)
        }
    }
}

fn cql_date(day: i32) -> CqlDate {
    CqlDate((day as i64 + (1i64 << 31)) as u32)
}

fn day_of_cql(d: CqlDate) -> i32 {
    (d.0 as i64 - (1i64 << 31)) as i32
}

type InsertValues = (
    i64,
    CqlDate,
    CqlDecimal,
    i64,
    i64,
    Option<CqlDecimal>,
    Option<CqlDecimal>,
);

impl AggRow {
    fn values(&self) -> InsertValues {
        (
            self.customer_id,
            cql_date(self.day),
            decimal(self.total_amount),
            self.transaction_count,
            self.declined_count,
            self.min_amount.map(decimal),
            self.max_amount.map(decimal),
        )
    }

    /// An order-independent fingerprint of the row's values, summed per day by `verify`.
    fn fingerprint(&self) -> u64 {
        let mut h = 0x9E37_79B9_7F4A_7C15u64;
        let mut mix = |v: u64| {
            h ^= v;
            h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 31;
        };
        mix(self.customer_id as u64);
        mix(self.day as u64);
        mix(self.total_amount as u64);
        mix((self.total_amount >> 64) as u64);
        mix(self.transaction_count as u64);
        mix(self.declined_count as u64);
        for m in [self.min_amount, self.max_amount] {
            mix(m.map_or(u64::MAX, |v| v as u64));
        }
        h
    }
}

/// The rows of one aggregates data file (its day comes from the partition value).
fn rows_of(batch: &RecordBatch, day: i32) -> Result<Vec<AggRow>> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Invalid(format!("aggregates file lacks column {name}")))
    };
    let cust = col("customer_id")?.as_primitive::<Int64Type>().clone();
    let total = col("total_amount")?
        .as_primitive::<Decimal128Type>()
        .clone();
    let count = col("transaction_count")?
        .as_primitive::<Int64Type>()
        .clone();
    let declined = col("declined_count")?.as_primitive::<Int64Type>().clone();
    let min = col("min_amount")?.as_primitive::<Decimal128Type>().clone();
    let max = col("max_amount")?.as_primitive::<Decimal128Type>().clone();
    Ok((0..batch.num_rows())
        .map(|i| AggRow {
            customer_id: cust.value(i),
            day,
            total_amount: total.value(i),
            transaction_count: count.value(i),
            declined_count: declined.value(i),
            min_amount: min.is_valid(i).then(|| min.value(i)),
            max_amount: max.is_valid(i).then(|| max.value(i)),
        })
        .collect())
}

/// A data file of the aggregates table and its day.
struct DayFile {
    path: deltalake::Path,
    day: i32,
    rows: u64,
}

/// Data files of a loaded aggregates table, restricted to `days` when given.
fn day_files(table: &deltalake::DeltaTable, days: Option<&BTreeSet<i32>>) -> Result<Vec<DayFile>> {
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::delta(aggregate::TABLE, e))?;
    let mut files = Vec::new();
    for f in snapshot.log_data().iter() {
        let Some(day) = aggregate::day_of_file(&f) else {
            return Err(Error::Invalid(format!(
                "aggregates file {} has no {PARTITION_COLUMN} partition value",
                f.path()
            )));
        };
        if days.is_none_or(|d| d.contains(&day)) {
            files.push(DayFile {
                path: f.object_store_path(),
                day,
                rows: f.num_records().unwrap_or(0) as u64,
            });
        }
    }
    Ok(files)
}

/// Stream one file's rows in batches.
fn file_rows(
    table: &deltalake::DeltaTable,
    file: &DayFile,
) -> impl futures::Stream<Item = Result<Vec<AggRow>>> + Send + 'static {
    let store = table.object_store();
    let (path, day) = (file.path.clone(), file.day);
    futures::stream::once(async move {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store, path);
        let options = deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_skip_arrow_metadata(true);
        let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options).await?;
        let mask = ProjectionMask::all();
        let stream = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()?;
        Ok::<_, Error>(stream.map(move |b| rows_of(&b?, day)))
    })
    .try_flatten()
}

fn is_retryable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Overloaded
                | DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::Unavailable { .. }
                | DbError::ServerError
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. }
        ),
        ExecutionError::BadQuery(_) | ExecutionError::PrepareError(_) => false,
        // Broken connections, client timeouts, an empty pool: the next attempt may work.
        _ => true,
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = Duration::from_secs(2);
    let ceiling = Duration::from_millis(20)
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap);
    let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Write one row, retrying what the driver does not. Returns (attempts used, latency of the
/// successful attempt or the error).
async fn insert(
    session: &Session,
    stmt: &PreparedStatement,
    row: &AggRow,
    max_attempts: u32,
) -> (u32, std::result::Result<Duration, ExecutionError>) {
    let values = row.values();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = Instant::now();
        match session.execute_unpaged(stmt, &values).await {
            Ok(_) => return (attempt, Ok(t.elapsed())),
            Err(e) if attempt < max_attempts && is_retryable(&e) => {
                tracing::debug!(error = %e, attempt, "retrying a row");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return (attempt, Err(e)),
        }
    }
}

fn insert_cql(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.{TABLE} (customer_id, transaction_date, total_amount, \
         transaction_count, declined_count, min_amount, max_amount) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
}

/// Load the aggregates changed since the last loaded version into ScyllaDB.
pub async fn load(
    layout: &Layout,
    cfg: &ScyllaConfig,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<LoadReport> {
    let started = Instant::now();
    let uri = layout.aggregates_uri()?;
    let Ok(current) = DeltaTableBuilder::from_url(uri)
        .map_err(|e| Error::delta(aggregate::TABLE, e))?
        .load()
        .await
    else {
        return Err(Error::Invalid(format!(
            "Delta table {} does not exist yet: run `pipeline aggregate` first",
            aggregate::TABLE
        )));
    };
    let version = current.version().unwrap_or(0) as i64;
    let session = connect(cfg).await?;
    init_schema(&session, cfg).await?;
    let previous = loaded_version(&session, cfg).await?;
    let mut report = LoadReport {
        keyspace: cfg.keyspace.clone(),
        aggregates_version: Some(version),
        previous_version: previous,
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let days = match previous {
        Some(p) if p == version => {
            tracing::info!("aggregates version {version} is already loaded");
            return Ok(finish(report, started));
        }
        Some(p) if p < version => {
            match aggregate::touched_days(&current, aggregate::TABLE, p, version).await? {
                Some(d) => Some(d),
                None => {
                    tracing::warn!(
                        "aggregates log entries after version {p} are gone; loading everything"
                    );
                    None
                }
            }
        }
        Some(p) => {
            tracing::warn!(
                "loaded version {p} is newer than the aggregates table ({version}): the table was recreated; loading everything"
            );
            None
        }
        None => None,
    };
    report.full_load = days.is_none();
    // The same snapshot whose version is recorded as loaded: a newer commit waits for the
    // next load.
    let files = day_files(&current, days.as_ref())?;
    let table = current;
    report.days = files.iter().map(|f| f.day).collect::<BTreeSet<_>>().len() as u64;
    report.files = files.len() as u64;
    report.rows_to_load = files.iter().map(|f| f.rows).sum();
    if opts.dry_run {
        return Ok(finish(report, started));
    }
    progress.set_length(report.rows_to_load);

    let mut stmt = session
        .prepare(insert_cql(&cfg.keyspace))
        .await
        .map_err(|e| Error::Scylla {
            what: "preparing the INSERT".into(),
            detail: e.to_string(),
        })?;
    stmt.set_is_idempotent(true);
    let budget = opts.max_errors.allowed(report.rows_to_load);
    let mut histogram =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut bad: Option<std::io::BufWriter<std::fs::File>> = None;
    let bad_path = layout.root().join("_load").join(format!(
        "bad-rows-v{version}-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let midway = report.rows_to_load / 2;

    let (session_ref, stmt_ref) = (&session, &stmt);
    let max_attempts = opts.max_attempts.max(1);
    let mut results = futures::stream::iter(files.iter().map(|f| Box::pin(file_rows(&table, f))))
        .flatten_unordered(opts.parallel_files.max(1))
        .map_ok(|rows| futures::stream::iter(rows.into_iter().map(Ok::<_, Error>)))
        .try_flatten()
        .map_ok(|row| async move {
            let (attempts, r) = insert(session_ref, stmt_ref, &row, max_attempts).await;
            Ok::<_, Error>((row, attempts, r))
        })
        .try_buffer_unordered(opts.concurrency.max(1));
    let mut done = 0u64;
    while let Some(item) = results.next().await {
        let (row, attempts, r) = item?;
        done += 1;
        report.retries += u64::from(attempts - 1);
        match r {
            Ok(latency) => {
                report.rows_written += 1;
                let _ = histogram.record(latency.as_micros().max(1) as u64);
            }
            Err(e) => {
                report.failures += 1;
                let w = match &mut bad {
                    Some(w) => w,
                    None => {
                        std::fs::create_dir_all(bad_path.parent().expect("has parent")).map_err(
                            |e| Error::io(format!("cannot create {}", bad_path.display()), e),
                        )?;
                        let f = std::fs::File::create(&bad_path).map_err(|e| {
                            Error::io(format!("cannot create {}", bad_path.display()), e)
                        })?;
                        report.bad_rows_file = Some(bad_path.clone());
                        bad.insert(std::io::BufWriter::new(f))
                    }
                };
                let line = serde_json::json!({
                    "customer_id": row.customer_id,
                    "transaction_date": aggregate::date_str(row.day),
                    "total_amount_cents": row.total_amount.to_string(),
                    "transaction_count": row.transaction_count,
                    "declined_count": row.declined_count,
                    "attempts": attempts,
                    "error": e.to_string(),
                });
                use std::io::Write;
                writeln!(w, "{line}")
                    .map_err(|e| Error::io(format!("cannot write {}", bad_path.display()), e))?;
                if report.failures > budget {
                    break;
                }
            }
        }
        progress.inc(1);
        if done == midway {
            crate::failpoint("load.midway");
        }
    }
    drop(results);
    if let Some(mut w) = bad.take() {
        use std::io::Write;
        w.flush()
            .map_err(|e| Error::io(format!("cannot write {}", bad_path.display()), e))?;
    }
    report.latency_ms = Latency {
        p50: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p90: histogram.value_at_quantile(0.9) as f64 / 1000.0,
        p99: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max: histogram.max() as f64 / 1000.0,
    };
    if report.failures > 0 {
        let report = finish(report, started);
        return Err(Error::LoadIncomplete {
            failed: report.failures,
            over_budget: report.failures > budget,
            bad_rows_file: report.bad_rows_file.clone().unwrap_or_default(),
            version,
            report: Box::new(serde_json::to_value(&report).unwrap_or_default()),
        });
    }

    crate::failpoint("load.before_state");
    let q = format!(
        "INSERT INTO {}.{STATE_TABLE} (name, aggregates_version, rows_loaded, loaded_at) VALUES (?, ?, ?, ?)",
        cfg.keyspace
    );
    session
        .query_unpaged(
            q.as_str(),
            (
                STATE_KEY,
                version,
                report.rows_written as i64,
                CqlTimestamp(chrono::Utc::now().timestamp_millis()),
            ),
        )
        .await
        .map_err(|e| Error::Scylla {
            what: format!("recording aggregates version {version} as loaded (every row was written; rerun to record it)"),
            detail: e.to_string(),
        })?;
    Ok(finish(report, started))
}

fn finish(mut report: LoadReport, started: Instant) -> LoadReport {
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = report.rows_written as f64 / report.seconds.max(1e-9);
    report.peak_rss_bytes = crate::progress::peak_rss_bytes();
    report
}

/// One day's totals as `lookup` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct LookupRow {
    pub transaction_date: String,
    pub total_amount: String,
    pub transaction_count: i64,
    pub declined_count: i64,
    pub min_amount: Option<String>,
    pub max_amount: Option<String>,
}

pub fn format_cents(c: i128) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// A customer's daily totals between two days (inclusive), newest first.
pub async fn lookup(
    cfg: &ScyllaConfig,
    customer: i64,
    from: i32,
    to: i32,
) -> Result<Vec<LookupRow>> {
    let session = connect(cfg).await?;
    let q = format!(
        "SELECT transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount \
         FROM {}.{TABLE} WHERE customer_id = ? AND transaction_date >= ? AND transaction_date <= ?",
        cfg.keyspace
    );
    let err = |e: String| Error::Scylla {
        what: format!("looking up customer {customer}"),
        detail: e,
    };
    let stmt = session.prepare(q).await.map_err(|e| err(e.to_string()))?;
    type R = (
        CqlDate,
        CqlDecimal,
        i64,
        i64,
        Option<CqlDecimal>,
        Option<CqlDecimal>,
    );
    let rows: Vec<R> = session
        .execute_iter(stmt, (customer, cql_date(from), cql_date(to)))
        .await
        .map_err(|e| err(e.to_string()))?
        .rows_stream::<R>()
        .map_err(|e| err(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| err(e.to_string()))?;
    let money = |d: &CqlDecimal| cents(d).map_or_else(|| format!("{d:?}"), format_cents);
    Ok(rows
        .iter()
        .map(|(d, total, n, declined, min, max)| LookupRow {
            transaction_date: aggregate::date_str(day_of_cql(*d)),
            total_amount: money(total),
            transaction_count: *n,
            declined_count: *declined,
            min_amount: min.as_ref().map(money),
            max_amount: max.as_ref().map(money),
        })
        .collect())
}

/// Per-day check values: row count, sum of totals, and a sum of row fingerprints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayCheck {
    pub rows: u64,
    pub total_cents: i128,
    pub fingerprint: u64,
}

impl DayCheck {
    fn add(&mut self, r: &AggRow) {
        self.rows += 1;
        self.total_cents += r.total_amount;
        self.fingerprint = self.fingerprint.wrapping_add(r.fingerprint());
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DayDiff {
    pub transaction_date: String,
    pub delta: DayCheck,
    pub scylla: DayCheck,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub keyspace: String,
    pub aggregates_version: i64,
    pub days_compared: u64,
    pub rows_delta: u64,
    pub rows_scylla: u64,
    pub differing_days: Vec<DayDiff>,
    pub seconds: f64,
}

/// Compare ScyllaDB with the Delta aggregates at the last loaded version, day by day.
pub async fn verify(layout: &Layout, cfg: &ScyllaConfig) -> Result<VerifyReport> {
    let started = Instant::now();
    let session = connect(cfg).await?;
    let Some(version) = loaded_version(&session, cfg).await? else {
        return Err(Error::Invalid(format!(
            "nothing has been loaded into keyspace {} yet: run `pipeline load` first",
            cfg.keyspace
        )));
    };
    let mut delta: BTreeMap<i32, DayCheck> = BTreeMap::new();
    let table = DeltaTableBuilder::from_url(layout.aggregates_uri()?)
        .map_err(|e| Error::delta(aggregate::TABLE, e))?
        .with_version(version as _)
        .load()
        .await
        .map_err(|e| Error::delta(aggregate::TABLE, e))?;
    let files = day_files(&table, None)?;
    for f in &files {
        let mut s = std::pin::pin!(file_rows(&table, f));
        while let Some(rows) = s.next().await {
            for r in rows? {
                delta.entry(r.day).or_default().add(&r);
            }
        }
    }
    let q = format!(
        "SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, \
         min_amount, max_amount FROM {}.{TABLE}",
        cfg.keyspace
    );
    let err = |e: String| Error::Scylla {
        what: "scanning the serving table".into(),
        detail: e,
    };
    let mut stmt = session.prepare(q).await.map_err(|e| err(e.to_string()))?;
    stmt.set_page_size(5000);
    type R = (
        i64,
        CqlDate,
        CqlDecimal,
        i64,
        i64,
        Option<CqlDecimal>,
        Option<CqlDecimal>,
    );
    let mut rows = session
        .execute_iter(stmt, ())
        .await
        .map_err(|e| err(e.to_string()))?
        .rows_stream::<R>()
        .map_err(|e| err(e.to_string()))?;
    let mut scylla: BTreeMap<i32, DayCheck> = BTreeMap::new();
    while let Some(r) = rows.next().await {
        let (customer_id, d, total, n, declined, min, max) = r.map_err(|e| err(e.to_string()))?;
        let money = |x: &CqlDecimal| {
            cents(x).ok_or_else(|| {
                err(format!(
                    "customer {customer_id}: amount {x:?} is not representable in cents"
                ))
            })
        };
        let row = AggRow {
            customer_id,
            day: day_of_cql(d),
            total_amount: money(&total)?,
            transaction_count: n,
            declined_count: declined,
            min_amount: min.as_ref().map(money).transpose()?,
            max_amount: max.as_ref().map(money).transpose()?,
        };
        scylla.entry(row.day).or_default().add(&row);
    }
    let all: BTreeSet<i32> = delta.keys().chain(scylla.keys()).copied().collect();
    let mut report = VerifyReport {
        keyspace: cfg.keyspace.clone(),
        aggregates_version: version,
        days_compared: all.len() as u64,
        rows_delta: delta.values().map(|d| d.rows).sum(),
        rows_scylla: scylla.values().map(|d| d.rows).sum(),
        ..Default::default()
    };
    for day in all {
        let (a, b) = (
            delta.get(&day).copied().unwrap_or_default(),
            scylla.get(&day).copied().unwrap_or_default(),
        );
        if a != b {
            report.differing_days.push(DayDiff {
                transaction_date: aggregate::date_str(day),
                delta: a,
                scylla: b,
            });
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_is_what_the_code_runs() {
        let stmts = schema_statements(DEFAULT_KEYSPACE, DEFAULT_REPLICATION);
        assert_eq!(stmts.len(), 3, "{stmts:#?}");
        assert_eq!(
            stmts[0],
            "CREATE KEYSPACE IF NOT EXISTS analytics WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
        // Every expected column appears in the table DDL with its type.
        for (name, ty, _) in EXPECTED_COLUMNS {
            assert!(
                stmts[1].contains(&format!("{name} {ty}")),
                "{name} in {}",
                stmts[1]
            );
        }
        assert!(stmts[1].contains("PRIMARY KEY ((customer_id), transaction_date)"));
        assert!(stmts[1].contains("CLUSTERING ORDER BY (transaction_date DESC)"));
        let other = schema_statements(
            "ks2",
            "{'class': 'SimpleStrategy', 'replication_factor': 3}",
        );
        assert!(other[1].starts_with("CREATE TABLE IF NOT EXISTS ks2.customer_daily_aggregates"));
        assert!(other[2].contains("ks2.pipeline_load_state"));
        assert!(other.iter().all(|s| !s.contains("analytics")));
    }

    #[test]
    fn error_budgets_parse_counts_and_percentages() {
        assert_eq!("10".parse(), Ok(ErrorBudget::Count(10)));
        assert_eq!("0.5%".parse(), Ok(ErrorBudget::Percent(0.5)));
        assert!("ten".parse::<ErrorBudget>().is_err());
        assert!("120%".parse::<ErrorBudget>().is_err());
        assert_eq!(ErrorBudget::Percent(1.0).allowed(250), 2);
    }

    #[test]
    fn decimals_round_trip_in_cents() {
        for c in [
            0i128,
            1,
            -1,
            127,
            128,
            -129,
            1_234_567_890_123,
            -99_999_999_999_999_999,
        ] {
            assert_eq!(cents(&decimal(c)), Some(c), "{c}");
        }
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(123_456), "1234.56");
        assert_eq!(
            cents(&CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                &[15],
                1
            )),
            Some(150)
        );
    }
}
