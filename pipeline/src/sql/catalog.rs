//! The tables a query reads, each registered under its name at its latest version, or at the
//! version `--as-of` asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::parser::Statement;

use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// `--as-of [TABLE=]VERSION`: a table (or the one table the query reads) at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsOf {
    /// The table; `None` for "the table the query reads".
    pub table: Option<Table>,
    /// The version.
    pub version: i64,
}

impl FromStr for AsOf {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (table, version) = match s.split_once('=') {
            Some((name, v)) => {
                let table = Table::by_name(name.trim())
                    .ok_or_else(|| format!("no table {name:?}: the tables are {}", names()))?;
                (Some(table), v)
            }
            None => (None, s),
        };
        let version = version
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                format!("{version:?} is not a table version (a whole number, 0 or more)")
            })?;
        Ok(AsOf { table, version })
    }
}

/// Every table's name, for messages.
pub fn names() -> String {
    Table::ALL.map(Table::name).join(", ")
}

/// Register every pipeline table `statement` reads. Other names (a typo, `information_schema`,
/// a table function) are left to DataFusion, which reports them in its words.
pub async fn register(
    ctx: &SessionContext,
    layout: &Layout,
    statement: &Statement,
    as_of: &[AsOf],
) -> Result<()> {
    let refs = ctx
        .state()
        .resolve_table_references(statement)
        .map_err(Error::sql)?;
    let read: BTreeSet<Table> = refs
        .iter()
        .filter(|r| r.schema() != Some("information_schema"))
        .filter_map(|r| Table::by_name(r.table()))
        .collect();
    // SHOW TABLES, SHOW COLUMNS and information_schema queries list what is registered:
    // then every other table that exists too (DataFusion adds information_schema to a SHOW's
    // references).
    if refs
        .iter()
        .any(|r| r.schema() == Some("information_schema"))
    {
        for table in Table::ALL.into_iter().filter(|t| !read.contains(t)) {
            if let Some(t) = delta::open(layout, table).await? {
                delta::query::register(ctx, table.name(), &t, None).await?;
            }
        }
    }
    let versions = versions(as_of, &read)?;
    for table in read {
        let t = match versions.get(&table) {
            Some(v) => open_at(layout, table, *v).await?,
            None => latest(layout, table).await?,
        };
        delta::query::register(ctx, table.name(), &t, None).await?;
    }
    Ok(())
}

/// The version asked for each table the query reads.
fn versions(as_of: &[AsOf], read: &BTreeSet<Table>) -> Result<BTreeMap<Table, i64>> {
    let mut out = BTreeMap::new();
    for a in as_of {
        let table = match a.table {
            Some(t) => t,
            None if read.len() == 1 => *read.first().expect("one table"),
            None => {
                return Err(Error::Invalid(format!(
                    "--as-of {} names no table, and the query reads {}: say which, as --as-of TABLE={}",
                    a.version,
                    if read.is_empty() {
                        "none".to_string()
                    } else {
                        read.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    },
                    a.version
                )));
            }
        };
        if !read.contains(&table) {
            return Err(Error::Invalid(format!(
                "--as-of {table}={}: the query does not read {table}",
                a.version
            )));
        }
        if let Some(v) = out.insert(table, a.version)
            && v != a.version
        {
            return Err(Error::Invalid(format!(
                "--as-of gives {table} two versions ({v} and {})",
                a.version
            )));
        }
    }
    Ok(out)
}

/// The table at its latest version, or which stage creates it.
async fn latest(layout: &Layout, table: Table) -> Result<DeltaTable> {
    delta::open(layout, table).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "table {table} does not exist yet in {} (run the pipeline first: `pipeline run`)",
            layout.shown()
        ))
    })
}

/// The table as of `version`, which must be one it has.
async fn open_at(layout: &Layout, table: Table, version: i64) -> Result<DeltaTable> {
    let current = delta::version(&latest(layout, table).await?);
    if version > current {
        return Err(Error::Invalid(format!(
            "--as-of {table}={version}: {table} is at version {current}"
        )));
    }
    let error = match delta::open_at(layout, table, version).await {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let t = latest(layout, table).await?;
    match delta::log::oldest_readable(&t, table).await {
        Ok(Some(oldest)) if version < oldest => Err(Error::Invalid(format!(
            "--as-of {table}={version}: version {version} is older than the log {table} keeps: \
             commits older than its log retention ({}, the table property \
             delta.logRetentionDuration) are removed once a later checkpoint holds them. The \
             oldest version that can be read is {oldest} (the latest is {current})",
            delta::log::retention_text(&t, table)?,
        ))),
        _ => Err(Error::Invalid(format!(
            "--as-of {table}={version}: that version cannot be read ({})",
            error.chain()
        ))),
    }
}
