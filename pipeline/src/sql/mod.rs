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
mod output;

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

/// Run the query and write its result; returns the exit code.
pub async fn run(layout: &Layout, opts: &SqlOptions, json: bool) -> Result<u8> {
    let format = opts
        .format
        .unwrap_or(if json { Format::Json } else { Format::Table });
    if format == Format::Parquet && opts.out.is_none() {
        return Err(Error::Invalid(
            "--format parquet writes a file: add --out FILE".into(),
        ));
    }
    let ctx = session();
    let statement = parse(&ctx, &opts.query)?;
    catalog::register(&ctx, layout, &statement, &opts.as_of).await?;
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(Error::sql)?;
    read_only().verify_plan(&plan).map_err(Error::sql)?;
    let df = ctx.execute_logical_plan(plan).await.map_err(Error::sql)?;
    let rows = output::write(df, format, opts.out.as_deref(), opts.max_rows).await?;
    if let Some(out) = &opts.out {
        eprintln!("wrote {rows} row(s) to {}", out.display());
    }
    Ok(exit::OK)
}

/// delta-rs's session (it knows how to scan Delta tables) with a bounded memory pool.
fn session() -> SessionContext {
    SessionContext::new_with_state(
        deltalake::delta_datafusion::create_session_state_with_spill_config(
            Some(QUERY_MEMORY),
            None,
        ),
    )
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
