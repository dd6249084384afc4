//! `pipeline`: the command line. Parses flags, sets up logging, runs one stage, prints its
//! report, and maps errors to the exit codes documented in the README.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use pipeline::aggregate::{AggregateOptions, AggregateReport};
use pipeline::error::exit;
use pipeline::generate::{GenerateConfig, GenerateReport};
use pipeline::ingest::{IngestOptions, IngestReport};
use pipeline::progress::{Progress, bytes, thousands};
use pipeline::{Error, Layout};
use serde::Serialize;

/// glibc gives each busy thread its own malloc arena; the writers' large, short-lived buffers
/// then fragment them and RSS ran at twice the live heap (heaptrack). Two arenas measured
/// as fast with a third less RSS.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Lakehouse ETL: synthetic transactions -> Delta Lake -> daily aggregates -> ScyllaDB.
///
/// Every stage is idempotent and incremental: rerun it at any time, after any crash.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Where the tables live (raw landing files, Delta tables, quarantine).
    #[arg(long, global = true, env = "PIPELINE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Print the stage report as JSON on stdout instead of the text summary.
    #[arg(long, global = true)]
    json: bool,

    /// Do not draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long, global = true)]
    no_progress: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a batch of deterministic synthetic transactions to the raw landing folder.
    Generate(GenerateArgs),
    /// Load new raw files into the `customer_transactions` Delta table (bad rows to quarantine).
    Ingest(IngestArgs),
    /// Recompute daily per-customer totals for the days changed since the last run.
    Aggregate(AggregateArgs),
    /// Create the ScyllaDB keyspace and tables if missing (load does this too).
    InitScylla(ScyllaArgs),
    /// Write the aggregates changed since the last load into ScyllaDB.
    Load(LoadArgs),
    /// Print a customer's daily totals from ScyllaDB.
    Lookup(LookupArgs),
    /// Compare ScyllaDB with the Delta aggregates at the last loaded version.
    Verify(ScyllaArgs),
    /// Run the stages in order (ingest -> aggregate -> load; generate with --generate).
    Run(RunArgs),
    /// Show recorded runs, newest first.
    History(HistoryArgs),
    /// Compact small files, write checkpoints and vacuum old files, for every table.
    Maintain(MaintainArgs),
}

#[derive(Args)]
struct MaintainArgs {
    /// Really delete files older than the retention (default: only list them).
    #[arg(long)]
    vacuum: bool,
    /// Keep files removed less than this many hours ago (time travel, concurrent writers).
    #[arg(long, default_value_t = 168)]
    retention_hours: u64,
    /// Skip compaction.
    #[arg(long)]
    no_optimize: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Generate a batch first (with the generate options below).
    #[arg(long)]
    generate: bool,
    /// Run exactly these stages (comma-separated: generate,ingest,aggregate,load).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "to"])]
    stages: Vec<pipeline::run::Stage>,
    /// First stage to run.
    #[arg(long)]
    from: Option<pipeline::run::Stage>,
    /// Last stage to run.
    #[arg(long)]
    to: Option<pipeline::run::Stage>,
    /// Attempts per stage for transient failures (a concurrent commit, ScyllaDB trouble).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    #[command(flatten)]
    gen_args: GenerateArgs,
    #[command(flatten)]
    scylla: ScyllaArgs,
}

#[derive(Args)]
struct HistoryArgs {
    /// Runs to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// Where ScyllaDB is. Credentials come only from the environment: SCYLLA_USERNAME and
/// SCYLLA_PASSWORD (or SCYLLA_PASSWORD_FILE).
#[derive(Args, Clone)]
struct ScyllaArgs {
    /// Contact point(s), host:port[,host:port...].
    #[arg(long, env = "SCYLLA_URI", default_value = "127.0.0.1:9042")]
    scylla_uri: String,
    /// Keyspace of the serving tables.
    #[arg(long, env = "SCYLLA_KEYSPACE", default_value = "analytics")]
    keyspace: String,
    /// Replication of the keyspace when it is created (a CQL map).
    #[arg(long, default_value = pipeline::serve::DEFAULT_REPLICATION)]
    replication: String,
    /// Consistency level of reads and writes.
    #[arg(long, default_value = "local_quorum", value_parser = parse_consistency)]
    consistency: scylla::frame::types::Consistency,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Connect with TLS (system roots, plus --tls-ca-file).
    #[arg(long)]
    tls: bool,
    /// Extra CA certificate(s) to trust, PEM.
    #[arg(long, env = "SCYLLA_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
}

fn parse_consistency(s: &str) -> Result<scylla::frame::types::Consistency, String> {
    use scylla::frame::types::Consistency::*;
    Ok(match s.to_ascii_lowercase().as_str() {
        "any" => Any,
        "one" => One,
        "two" => Two,
        "three" => Three,
        "quorum" => Quorum,
        "all" => All,
        "local_quorum" => LocalQuorum,
        "each_quorum" => EachQuorum,
        "local_one" => LocalOne,
        _ => {
            return Err(format!(
                "unknown consistency `{s}` (one, two, three, quorum, all, local_quorum, each_quorum, local_one, any)"
            ));
        }
    })
}

impl ScyllaArgs {
    fn config(&self) -> pipeline::serve::ScyllaConfig {
        pipeline::serve::ScyllaConfig {
            uri: self.scylla_uri.clone(),
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
            consistency: self.consistency,
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            tls: self.tls,
            tls_ca_file: self.tls_ca_file.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// Requests in flight at once (across all days being streamed).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Attempts per row for retryable errors (overload, timeouts, broken connections).
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// Rows that may fail (after retries) before the load stops early: a count (100) or a
    /// percentage (0.5%). Any failure still exits non-zero and records nothing.
    #[arg(long, default_value = "0")]
    max_errors: pipeline::serve::ErrorBudget,
    /// Show what would be loaded (versions, days, files, rows) and write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct LookupArgs {
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// Customer id.
    #[arg(long)]
    customer: i64,
    /// First day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    from: Option<NaiveDate>,
    /// Last day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    to: Option<NaiveDate>,
}

#[derive(Args)]
struct AggregateArgs {
    /// Rebuild every day instead of only the days changed since the last run.
    #[arg(long)]
    full: bool,
    /// Aggregate `customer_transactions` as of this version (time travel; a full rebuild).
    #[arg(long)]
    source_version: Option<i64>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Rows to generate in this batch.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Distinct customers (activity is Zipf-distributed over them).
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Distinct merchants.
    #[arg(long, default_value_t = 2_000)]
    merchants: u64,
    /// Days covered, starting at --start-date.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// First day (YYYY-MM-DD, UTC).
    #[arg(long, default_value = "2024-01-01")]
    start_date: NaiveDate,
    /// Random seed: same seed and options, same rows.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Maximum rows per Parquet file (a day with more rows is split into several files).
    #[arg(long, default_value_t = 500_000)]
    rows_per_file: u64,
    /// Batch number; each batch writes its own folder. Use a new one to add files later
    /// (a new date range, or late rows for old days with an earlier --start-date).
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Fraction of rows made bad on purpose (every kind the ingest rules catch, and duplicates,
    /// including re-deliveries of rows from earlier batches).
    #[arg(long, default_value_t = 0.0)]
    dirty_rate: f64,
}

impl GenerateArgs {
    fn config(&self) -> GenerateConfig {
        GenerateConfig {
            rows: self.rows,
            customers: self.customers,
            merchants: self.merchants,
            days: self.days,
            start_date: self.start_date,
            seed: self.seed,
            rows_per_file: self.rows_per_file,
            batch: self.batch,
            dirty_rate: self.dirty_rate,
        }
    }
}

#[derive(Args)]
struct IngestArgs {
    /// Days processed concurrently (default: number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// Ids per dedup bucket: days with more ids (new plus already in the table) are split
    /// into buckets by id and spilled to scratch, bounding memory. For tests and tuning.
    #[arg(long, hide = true)]
    dedup_bucket_ids: Option<u64>,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(
                |_| // The Delta kernel logs a missing table (our first run) at ERROR level.
                    tracing_subscriber::EnvFilter::new(
                        // The Delta kernel logs a missing table (our first run) and a
                        // damaged log at ERROR, and the driver a failed first connection:
                        // our own error says the same, with what to do.
                        "warn,buoyant_kernel=off,scylla::cluster::metadata::cc_establisher=off",
                    ),
            ),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // `{:#}`-style: the whole cause chain on one line.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = s.source();
            }
            eprintln!("error: {msg}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    let layout = Layout::new(&cli.data_dir);
    let show = !cli.no_progress;
    match cli.command {
        Command::Generate(a) => {
            let cfg = a.config();
            let progress = Progress::new("generate", show);
            let report = pipeline::generate::run(&layout, &cfg, &progress)?;
            progress.finish();
            emit(cli.json, &report, summary_generate)
        }
        Command::Ingest(a) => {
            let mut opts = IngestOptions::default();
            if let Some(w) = a.workers {
                opts.workers = w;
            }
            if let Some(b) = a.dedup_bucket_ids {
                opts.dedup_bucket_ids = b.max(1);
            }
            let progress = Progress::new("ingest", show);
            let report = runtime()?.block_on(pipeline::ingest::run(&layout, &opts, &progress))?;
            progress.finish();
            emit(cli.json, &report, summary_ingest)
        }
        Command::Aggregate(a) => {
            let opts = AggregateOptions {
                full: a.full,
                source_version: a.source_version,
            };
            let progress = Progress::new("aggregate", show);
            let report =
                runtime()?.block_on(pipeline::aggregate::run(&layout, &opts, &progress))?;
            progress.finish();
            emit(cli.json, &report, summary_aggregate)
        }
        Command::InitScylla(a) => {
            let cfg = a.config();
            runtime()?.block_on(async {
                let session = pipeline::serve::connect(&cfg).await?;
                pipeline::serve::init_schema(&session, &cfg).await
            })?;
            println!(
                "init-scylla: keyspace {} and its tables are in place at {}",
                cfg.keyspace, cfg.uri
            );
            Ok(exit::OK)
        }
        Command::Load(a) => {
            let cfg = a.scylla.config();
            let opts = pipeline::serve::LoadOptions {
                concurrency: a.concurrency,
                max_attempts: a.max_attempts,
                max_errors: a.max_errors,
                dry_run: a.dry_run,
                ..Default::default()
            };
            let progress = Progress::new("load", show);
            let result =
                runtime()?.block_on(pipeline::serve::load(&layout, &cfg, &opts, &progress));
            progress.finish();
            match result {
                Ok(report) => emit(cli.json, &report, summary_load),
                Err(e @ Error::LoadIncomplete { .. }) if cli.json => {
                    // The report still goes to stdout; the error (from `main`) to stderr.
                    if let Error::LoadIncomplete { report, .. } = &e {
                        println!("{}", serde_json::to_string_pretty(report).expect("json"));
                    }
                    Err(e)
                }
                Err(e) => Err(e),
            }
        }
        Command::Lookup(a) => {
            let cfg = a.scylla.config();
            let day = |d: NaiveDate| (d - NaiveDate::default()).num_days() as i32;
            let from = a.from.map_or(i32::MIN / 2, day);
            let to = a.to.map_or(i32::MAX / 2, day);
            let rows = runtime()?.block_on(pipeline::serve::lookup(&cfg, a.customer, from, to))?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
            } else if rows.is_empty() {
                println!(
                    "customer {} has no daily totals{} in {}.{}",
                    a.customer,
                    match (a.from, a.to) {
                        (None, None) => String::new(),
                        (f, t) => format!(
                            " between {} and {}",
                            f.map_or("the beginning".into(), |d| d.to_string()),
                            t.map_or("now".into(), |d| d.to_string())
                        ),
                    },
                    cfg.keyspace,
                    pipeline::serve::TABLE
                );
            } else {
                println!(
                    "{:<12} {:>16} {:>8} {:>8} {:>12} {:>12}",
                    "date", "total", "count", "declined", "min", "max"
                );
                for r in &rows {
                    println!(
                        "{:<12} {:>16} {:>8} {:>8} {:>12} {:>12}",
                        r.transaction_date,
                        r.total_amount,
                        r.transaction_count,
                        r.declined_count,
                        r.min_amount.as_deref().unwrap_or("-"),
                        r.max_amount.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Run(a) => {
            use pipeline::run::Stage;
            let explicit = !a.stages.is_empty();
            let stages: Vec<Stage> = if explicit {
                let mut v = a.stages.clone();
                v.sort();
                v.dedup();
                v
            } else {
                let from = a.from.unwrap_or(if a.generate {
                    Stage::Generate
                } else {
                    Stage::Ingest
                });
                let to = a.to.unwrap_or(Stage::Load);
                Stage::ALL
                    .into_iter()
                    .filter(|s| *s >= from && *s <= to)
                    .filter(|s| {
                        *s != Stage::Generate || a.generate || a.from == Some(Stage::Generate)
                    })
                    .collect()
            };
            let opts = pipeline::run::RunOptions {
                load_requested: (explicit && stages.contains(&Stage::Load))
                    || a.to == Some(Stage::Load)
                    || std::env::var_os("SCYLLA_URI").is_some(),
                stages,
                generate: a.gen_args.config(),
                ingest: IngestOptions::default(),
                aggregate: AggregateOptions::default(),
                scylla: a.scylla.config(),
                load: pipeline::serve::LoadOptions::default(),
                attempts: a.attempts.max(1),
                show_progress: show,
            };
            let (report, result) = runtime()?.block_on(pipeline::run::run(&layout, &opts));
            emit(cli.json, &report, summary_run)?;
            result.map(|()| exit::OK)
        }
        Command::Maintain(a) => {
            let opts = pipeline::maintain::MaintainOptions {
                optimize: !a.no_optimize,
                checkpoint: true,
                vacuum: a.vacuum,
                retention_hours: a.retention_hours,
            };
            let report = runtime()?.block_on(pipeline::maintain::run(&layout, &opts))?;
            emit(cli.json, &report, summary_maintain)
        }
        Command::History(a) => {
            let rows = runtime()?.block_on(pipeline::run::history(&layout, a.limit))?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
            } else if rows.is_empty() {
                println!("no runs recorded yet in {}", layout.history_dir().display());
            } else {
                println!(
                    "{:<20} {:<20} {:<38} outcome / stages",
                    "started", "ended", "run id"
                );
                for r in &rows {
                    println!(
                        "{:<20} {:<20} {:<38} {}\n{:>80}{}",
                        r.started_at, r.ended_at, r.run_id, r.outcome, "", r.stages
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Verify(a) => {
            let cfg = a.config();
            let report = runtime()?.block_on(pipeline::serve::verify(&layout, &cfg))?;
            emit(cli.json, &report, summary_verify)?;
            Ok(if report.differing_days.is_empty() {
                exit::OK
            } else {
                exit::VERIFY_MISMATCH
            })
        }
    }
}

fn summary_load(r: &pipeline::serve::LoadReport) -> String {
    let version = r.aggregates_version.map_or("-".into(), |v| v.to_string());
    if r.previous_version == r.aggregates_version {
        return format!(
            "load: aggregates version {version} is already loaded into {}; nothing written",
            r.keyspace
        );
    }
    if r.dry_run {
        return format!(
            "load (dry run): would load aggregates version {version} ({}; last loaded: {}) into {}: {} day(s), {} file(s), {} rows",
            if r.full_load {
                "everything"
            } else {
                "changed days only"
            },
            r.previous_version.map_or("none".into(), |v| v.to_string()),
            r.keyspace,
            r.days,
            r.files,
            thousands(r.rows_to_load)
        );
    }
    format!(
        "load: aggregates version {version} -> {} ({} day(s), {})\n  {} rows written, {} retries, {} failures, {:.2} s ({} rows/s, peak RSS {})\n  latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        r.keyspace,
        r.days,
        if r.full_load {
            "full load"
        } else {
            "changed days"
        },
        thousands(r.rows_written),
        r.retries,
        r.failures,
        r.seconds,
        thousands(r.rows_per_sec as u64),
        bytes(r.peak_rss_bytes),
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.latency_ms.max
    )
}

fn summary_run(r: &pipeline::run::RunReport) -> String {
    let mut s = format!(
        "run {}: {} in {:.2} s\n  {:<10} {:>12} {:>6} {:>10} {:>8} {:>12}  {}",
        r.run_id,
        r.outcome,
        r.seconds,
        "stage",
        "rows",
        "files",
        "bytes",
        "seconds",
        "rows/s",
        "note"
    );
    for st in &r.stages {
        s.push_str(&format!(
            "\n  {:<10} {:>12} {:>6} {:>10} {:>8.2} {:>12}  {}{}",
            st.stage,
            thousands(st.rows),
            st.files,
            bytes(st.bytes),
            st.seconds,
            thousands(st.rows_per_sec as u64),
            if st.skipped { "skipped: " } else { "" },
            st.note
        ));
    }
    s
}

fn summary_maintain(r: &pipeline::maintain::MaintainReport) -> String {
    let mut s = format!(
        "maintain: {} table(s) in {:.2} s (vacuum retention {} h)",
        r.tables.len(),
        r.seconds,
        r.retention_hours
    );
    for t in &r.tables {
        s.push_str(&format!(
            "\n  {}: version {} -> {}, files {} -> {} ({} compacted into {}), checkpoint at {}, vacuum {} {} file(s)",
            t.table,
            t.version_before,
            t.version_after,
            t.files_before,
            t.files_after,
            t.files_compacted,
            t.files_written,
            t.checkpoint_version.map_or("-".into(), |v| v.to_string()),
            if t.vacuum_dry_run { "would delete" } else { "deleted" },
            t.vacuum_files
        ));
    }
    s
}

fn summary_verify(r: &pipeline::serve::VerifyReport) -> String {
    let mut s = format!(
        "verify: {} at aggregates version {}: {} day(s), {} rows in Delta, {} in ScyllaDB",
        r.keyspace,
        r.aggregates_version,
        r.days_compared,
        thousands(r.rows_delta),
        thousands(r.rows_scylla)
    );
    if r.differing_days.is_empty() {
        s.push_str("; every day matches (row count, total, row checksum)");
    } else {
        s.push_str(&format!("\n  {} day(s) differ:", r.differing_days.len()));
        for d in &r.differing_days {
            s.push_str(&format!(
                "\n  {}: Delta {} rows, total {}; ScyllaDB {} rows, total {}{}",
                d.transaction_date,
                d.delta.rows,
                pipeline::serve::format_cents(d.delta.total_cents),
                d.scylla.rows,
                pipeline::serve::format_cents(d.scylla.total_cents),
                if d.delta.rows == d.scylla.rows && d.delta.total_cents == d.scylla.total_cents {
                    " (same count and total, different row values)"
                } else {
                    ""
                }
            ));
        }
    }
    s
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

fn emit<R: Serialize>(json: bool, report: &R, text: fn(&R) -> String) -> Result<u8, Error> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialise")
        );
    } else {
        println!("{}", text(report));
    }
    Ok(exit::OK)
}

fn summary_generate(r: &GenerateReport) -> String {
    if r.skipped {
        return format!(
            "generate: batch {} already complete ({} rows in {} files); nothing written",
            r.batch,
            thousands(r.rows),
            r.files
        );
    }
    let mut s = format!(
        "generate: batch {}: {} rows in {} files, {} in {:.2} s ({} rows/s, peak RSS {})",
        r.batch,
        thousands(r.rows),
        r.files,
        bytes(r.bytes),
        r.seconds,
        thousands(r.rows_per_sec as u64),
        bytes(r.peak_rss_bytes)
    );
    if !r.dirty.is_empty() {
        s.push_str(&format!(
            "\n  injected: {} rule violations, {} duplicates",
            thousands(r.expected_quarantined),
            thousands(r.expected_duplicates)
        ));
    }
    s
}

fn summary_ingest(r: &IngestReport) -> String {
    if r.files_ingested == 0 {
        return format!(
            "ingest: no new files ({} already ingested); nothing committed",
            r.files_seen
        );
    }
    let mut s = format!(
        "ingest: {} new files ({} read) -> {} version {}\n  rows: {} in = {} out + {} quarantined + {} duplicates\n  {} days, {} written in {} files, {:.2} s ({} rows/s, peak RSS {})",
        r.files_ingested,
        bytes(r.bytes_read),
        pipeline::ingest::TABLE,
        r.table_version.map_or("-".into(), |v| v.to_string()),
        thousands(r.rows_in),
        thousands(r.rows_out),
        thousands(r.rows_quarantined),
        thousands(r.duplicates),
        r.days,
        bytes(r.bytes_written),
        r.data_files_written,
        r.seconds,
        thousands(r.rows_per_sec as u64),
        bytes(r.peak_rss_bytes)
    );
    if !r.quarantine_reasons.is_empty() {
        let reasons: Vec<String> = r
            .quarantine_reasons
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!("\n  quarantined by rule: {}", reasons.join(", ")));
    }
    s
}

fn summary_aggregate(r: &AggregateReport) -> String {
    let Some(version) = r.table_version else {
        return format!(
            "aggregate: up to date with {} version {}; nothing committed",
            pipeline::ingest::TABLE,
            r.source_version.map_or("-".into(), |v| v.to_string())
        );
    };
    format!(
        "aggregate: {} {} day(s) from {} version {} -> {} version {}\n  {} rows read, {} rows written, {:.2} s ({} rows/s, peak RSS {})",
        if r.full_rebuild {
            "rebuilt"
        } else {
            "recomputed"
        },
        r.days_recomputed,
        pipeline::ingest::TABLE,
        r.source_version.map_or("-".into(), |v| v.to_string()),
        pipeline::aggregate::TABLE,
        version,
        thousands(r.rows_read),
        thousands(r.rows_written),
        r.seconds,
        thousands(r.rows_per_sec as u64),
        bytes(r.peak_rss_bytes)
    )
}
