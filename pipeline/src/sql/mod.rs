//! `sql`: ad-hoc SQL (DataFusion) over the pipeline's Delta tables, each optionally as of an
//! older version (time travel).
//!
//! 1. **Parse** the statement and find the tables it reads.
//! 2. **Register** those tables ([`catalog`]), each at its latest version or the one asked for.
//! 3. **Plan**, read-only: DDL, DML (`INSERT`, `COPY … TO`) and `SET` statements are refused.
//! 4. **Stream** the result in the chosen format ([`output`]): memory stays bounded whatever
//!    the result's size (the terminal table shows the first `--max-rows` rows).
//!
//! A mistake in the SQL (syntax, unknown table or column, a type that does not fit) is
//! reported with DataFusion's message and exit code 2.

mod catalog;
pub(crate) mod output;

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::prelude::SessionContext;

use crate::error::{Error, Result, exit};
use crate::layout::Layout;
pub use catalog::AsOf;

/// Memory DataFusion may use for the query's sorts and groups before it spills to disk.
const QUERY_MEMORY: usize = 512 * 1024 * 1024;

/// What to ask, and how to print the answer.
#[derive(Debug, Clone, Args)]
pub struct SqlOptions {
    /// One SQL statement (DataFusion's dialect), e.g.
    /// "SELECT count(*) FROM customer_transactions".
    pub query: String,
    /// Read a table as of an older version: `TABLE=VERSION`, or just `VERSION` when the
    /// query reads one table. Repeatable.
    #[arg(long = "as-of", value_name = "[TABLE=]VERSION")]
    pub as_of: Vec<AsOf>,
    /// Output format: an aligned table (the default), CSV with a header, JSON (one object
    /// per line), or Parquet (needs --out). Without it, the global --json means json.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write the result to this file (replaced only once the whole result is written)
    /// instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With --format table: the most rows shown (the rest are counted, not printed).
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
}

/// How the result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per line (JSON Lines).
    Json,
    /// A Parquet file (with --out).
    Parquet,
}

/// Run the query and write its result; returns the exit code. SIGINT or SIGTERM stops it
/// (exit 130) with nothing left behind: the unfinished output file is removed.
pub async fn run(layout: &Layout, opts: &SqlOptions, json: bool) -> Result<u8> {
    let temp = opts.out.as_deref().map(output::temp_for);
    // Its own task: a busy query need not yield for the signal to be seen.
    let (layout, opts) = (layout.clone(), opts.clone());
    let work = tokio::spawn(async move { query(&layout, &opts, json).await });
    tokio::select! {
        r = work => r?,
        _ = crate::process::stop_signal() => {
            if let Some(temp) = temp {
                let _ = std::fs::remove_file(temp);
            }
            eprintln!("sql: interrupted; no result file written");
            // Not waiting for the query's threads to reach a yield point.
            std::process::exit(exit::INTERRUPTED.into());
        }
    }
}

async fn query(layout: &Layout, opts: &SqlOptions, json: bool) -> Result<u8> {
    let format = format(opts, json);
    if format == Format::Parquet && opts.out.is_none() {
        return Err(Error::Invalid(
            "--format parquet writes a file: add --out FILE".into(),
        ));
    }
    let ctx = session().await?;
    let statement = parse(&ctx, &opts.query)?;
    catalog::register(&ctx, layout, &statement, &opts.as_of).await?;
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(unknown_table)?;
    read_only().verify_plan(&plan).map_err(Error::sql)?;
    let df = ctx.execute_logical_plan(plan).await.map_err(Error::sql)?;
    let rows = output::write(df, format, opts.out.as_deref(), opts.max_rows).await?;
    if let Some(out) = &opts.out {
        eprintln!("wrote {rows} row(s) to {}", out.display());
    }
    Ok(exit::OK)
}

/// The format asked for; without one, the `--out` file's extension, else the global
/// `--json`, else the table.
fn format(opts: &SqlOptions, json: bool) -> Format {
    let by_extension = || {
        let ext = opts
            .out
            .as_ref()?
            .extension()?
            .to_str()?
            .to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    };
    opts.format
        .or_else(by_extension)
        .unwrap_or(if json { Format::Json } else { Format::Table })
}

/// delta-rs's session (it knows how to scan Delta tables) with a bounded memory pool, and
/// SQL as users expect it: unquoted names are case-insensitive (delta-rs turns that off for
/// its own use). A merging sort reserves more up front, so large sorts spill instead of
/// failing in the merge.
async fn session() -> Result<SessionContext> {
    let ctx = crate::delta::query::session(QUERY_MEMORY);
    for set in [
        "SET datafusion.sql_parser.enable_ident_normalization = true",
        // SHOW TABLES, SHOW COLUMNS FROM t, information_schema.
        "SET datafusion.catalog.information_schema = true",
        "SET datafusion.execution.sort_spill_reservation_bytes = 67108864",
    ] {
        ctx.sql(set).await?;
    }
    Ok(ctx)
}

/// A table the query names that is none of ours: say which tables there are.
fn unknown_table(e: deltalake::datafusion::error::DataFusionError) -> Error {
    let text = e.to_string();
    if text.contains("table '") && text.contains("' not found") {
        Error::Invalid(format!(
            "SQL: {}. The tables are {} (`SHOW TABLES` lists those that exist so far)",
            e.strip_backtrace(),
            catalog::names()
        ))
    } else {
        Error::sql(e)
    }
}

/// The one statement of the query.
fn parse(
    ctx: &SessionContext,
    query: &str,
) -> Result<deltalake::datafusion::sql::parser::Statement> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    state.sql_to_statement(query, &dialect).map_err(Error::sql)
}

/// Queries only: nothing is created, changed or written by `sql`.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
