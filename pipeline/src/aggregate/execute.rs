//! Executing an aggregate plan: the one SQL query over the days to recompute, streamed into
//! new files, committed with the removal of those days' old files and the source version.

use std::collections::BTreeSet;

use deltalake::datafusion::prelude::SessionContext;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::DeltaWriter;
use futures::StreamExt;

use super::plan::Plan;
use crate::dates::{self, Day};
use crate::delta::{self, keys, query};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::schema::PARTITION_COLUMN;
use crate::tables::Table;

/// The business logic, in one place, over the days being recomputed (the table it reads is
/// `customer_transactions` restricted to those days, so partition pruning applies). Money
/// stays decimal throughout: amounts are summed as the contract's `Decimal(38, 2)`
/// (`schema::SUM_PRECISION`), which no sum of valid rows can overflow.
pub const QUERY: &str = "
SELECT
    customer_id,
    transaction_date,
    COALESCE(SUM(CAST(amount AS DECIMAL(38, 2))) FILTER (WHERE status = 'approved'), CAST(0 AS DECIMAL(38, 2))) AS total_amount,
    COUNT(*) FILTER (WHERE status = 'approved') AS transaction_count,
    COUNT(*) FILTER (WHERE status = 'declined') AS declined_count,
    MIN(amount) FILTER (WHERE status = 'approved') AS min_amount,
    MAX(amount) FILTER (WHERE status = 'approved') AS max_amount
FROM customer_transactions
GROUP BY customer_id, transaction_date
";

/// Memory DataFusion may use for the query before spilling. Measured at 10M rows: with
/// 512 MiB the fair pool (split among the partial and final hash aggregates) made runs spill
/// intermittently, 1.2-2.4 s; at 768 MiB they hold at ~1.2 s with ~460 MiB peak RSS.
const QUERY_MEMORY: usize = 768 * 1024 * 1024;

/// Source rows one pass of a recomputation reads at most (a day with more is a pass of its
/// own). Groups never span days (`transaction_date` is in the key), so a recomputation in
/// passes of whole days gives the same rows as one query, and its memory is one pass's hash
/// table and output, not the table's: the output is flushed to files after each pass (the
/// Delta writer keeps everything until a flush). In one pass a full rebuild peaked at
/// 436 MiB at 10M rows and 619 MiB at 30M.
pub const ROWS_PER_PASS: u64 = 4_000_000;

/// What a recomputation did.
pub struct Recomputed {
    pub days: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub version: i64,
    /// Queries it took (passes of whole days).
    pub passes: u64,
}

/// Recompute `days` (all when `None`) and replace them in one commit, in passes of whole
/// days of at most `rows_per_pass` source rows ([`ROWS_PER_PASS`]).
pub async fn recompute(
    p: &Plan,
    days: Option<&BTreeSet<Day>>,
    rows_per_pass: u64,
    progress: &Progress,
) -> Result<Recomputed> {
    let source_files = delta::files(&p.d.source, Table::Transactions, days)?;
    let rows_read: u64 = source_files.iter().map(|f| f.rows).sum();
    let day_count = match days {
        Some(d) => d.len() as u64,
        None => source_files
            .iter()
            .filter_map(|f| f.day)
            .collect::<BTreeSet<_>>()
            .len() as u64,
    };
    progress.set_length(rows_read);
    let mut writer = delta::writer(&p.d.target, Table::Aggregates, p.d.widen.is_some())?;
    let mut written = Written::default();
    let passes = passes(&source_files, rows_per_pass);
    for (pass, rows) in &passes {
        let ctx = session(p, pass.as_ref().or(days)).await?;
        let pass_out = async {
            let stream = ctx.sql(QUERY).await?.execute_stream().await?;
            write_stream(&mut writer, stream).await
        };
        match pass_out.await {
            Ok(rows) => {
                written.rows += rows;
                written.flush(&mut writer).await?;
            }
            Err(e) => {
                // Files of earlier passes were written, never committed.
                delta::commit::discard(&p.d.target, &written.adds).await;
                return Err(e);
            }
        }
        progress.inc(*rows);
    }
    let mode = if days.is_some() { "recompute" } else { "full" };
    let mut out = commit_replacing(p, written, days, mode).await?;
    out.days = day_count;
    out.rows_read = rows_read;
    out.passes = passes.len() as u64;
    Ok(out)
}

/// The passes of a recomputation: whole days, in order, of at most `rows_per_pass` source
/// rows each (a larger day alone), with their rows. One pass over all of `files` (`None`:
/// the days asked for) if any file has no day.
fn passes(files: &[delta::DataFile], rows_per_pass: u64) -> Vec<(Option<BTreeSet<Day>>, u64)> {
    let mut per_day = std::collections::BTreeMap::<Day, u64>::new();
    for f in files {
        match f.day {
            Some(day) => *per_day.entry(day).or_default() += f.rows,
            None => return vec![(None, files.iter().map(|f| f.rows).sum())],
        }
    }
    let mut out: Vec<(Option<BTreeSet<Day>>, u64)> = Vec::new();
    for (day, rows) in per_day {
        match out.last_mut() {
            Some((Some(pass), total)) if *total + rows <= rows_per_pass => {
                pass.insert(day);
                *total += rows;
            }
            _ => out.push((Some(BTreeSet::from([day])), rows)),
        }
    }
    out
}

/// Merge the aggregates of the `added` files alone into `days`' aggregates, in one commit.
pub async fn merge(
    p: &Plan,
    days: &BTreeSet<Day>,
    added: &[String],
    progress: &Progress,
) -> Result<Recomputed> {
    // Log paths are percent-encoded; the snapshot's are object store paths.
    let wanted: std::collections::HashSet<deltalake::Path> = added
        .iter()
        .filter_map(|a| deltalake::Path::from_url_path(a).ok())
        .collect();
    let rows_read: u64 = delta::files(&p.d.source, Table::Transactions, Some(days))?
        .iter()
        .filter(|f| wanted.contains(&f.path))
        .map(|f| f.rows)
        .sum();
    progress.set_length(rows_read);
    let ctx = merge_session(p, days, added).await?;
    let stream = ctx.sql(&merge_query()).await?.execute_stream().await?;
    let mut writer = delta::writer(&p.d.target, Table::Aggregates, p.d.widen.is_some())?;
    let mut written = Written {
        adds: Vec::new(),
        rows: write_stream(&mut writer, stream).await?,
    };
    written.flush(&mut writer).await?;
    let mut out = commit_replacing(p, written, Some(days), keys::APPEND_MERGE).await?;
    out.passes = 1;
    progress.inc(rows_read);
    out.days = days.len() as u64;
    out.rows_read = rows_read;
    Ok(out)
}

/// The merge, in one place beside [`QUERY`]: the aggregates of the new rows (`QUERY` over
/// the added files) and the current aggregates of their days, combined per customer and day.
/// Exact: sums of decimals stay decimal, `Decimal(38, 2)`.
fn merge_query() -> String {
    format!(
        "WITH new_rows AS ({QUERY})
SELECT
    customer_id,
    transaction_date,
    CAST(SUM(total_amount) AS DECIMAL(38, 2)) AS total_amount,
    CAST(SUM(transaction_count) AS BIGINT) AS transaction_count,
    CAST(SUM(declined_count) AS BIGINT) AS declined_count,
    MIN(min_amount) AS min_amount,
    MAX(max_amount) AS max_amount
FROM (
    SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount
    FROM current_aggregates
    UNION ALL
    SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount
    FROM new_rows
)
GROUP BY customer_id, transaction_date"
    )
}

/// The files a recomputation has written so far.
#[derive(Default)]
struct Written {
    adds: Vec<deltalake::kernel::Add>,
    rows: u64,
}

impl Written {
    /// Write out what the writer holds (it keeps every row in memory until then).
    async fn flush(&mut self, writer: &mut deltalake::writer::RecordBatchWriter) -> Result<()> {
        match writer.flush().await {
            Ok(adds) => {
                self.adds.extend(adds);
                Ok(())
            }
            Err(e) => Err(Error::delta(Table::Aggregates.name(), e)),
        }
    }
}

/// Stream a query's result into the writer; the rows written.
async fn write_stream(
    writer: &mut deltalake::writer::RecordBatchWriter,
    mut stream: deltalake::datafusion::physical_plan::SendableRecordBatchStream,
) -> Result<u64> {
    let name = Table::Aggregates.name();
    let schema = writer.arrow_schema();
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = delta::conform(batch?.columns().to_vec(), &schema)?;
        rows += batch.num_rows() as u64;
        writer
            .write(batch)
            .await
            .map_err(|e| Error::delta(name, e))?;
    }
    Ok(rows)
}

/// Commit the written files together with the removal of the replaced days' files (all when
/// `days` is `None`) and the consumed source version: one atomic commit.
async fn commit_replacing(
    p: &Plan,
    written: Written,
    days: Option<&BTreeSet<Day>>,
    mode: &str,
) -> Result<Recomputed> {
    let Written {
        adds,
        rows: rows_written,
    } = written;
    let bytes_written = adds.iter().map(|a| a.size as u64).sum();
    let predicate = days.map(|d| {
        let list: Vec<String> = d
            .iter()
            .map(|d| format!("'{}'", dates::format(*d)))
            .collect();
        format!("{PARTITION_COLUMN} IN ({})", list.join(", "))
    });
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(vec![PARTITION_COLUMN.to_string()]),
        predicate,
    };
    let replaced = |f: &deltalake::kernel::LogicalFileView| {
        days.is_none_or(|d| delta::day_of_file(f).is_some_and(|day| d.contains(&day)))
    };
    crate::failpoints::hit("aggregate.before_commit");
    let info = (keys::AGGREGATE_MODE, mode);
    let version = (p.d)
        .commit_replacing(operation, adds, replaced, p.version, info)
        .await?;
    Ok(Recomputed {
        days: 0,
        rows_read: 0,
        rows_written,
        bytes_written,
        version,
        passes: 0,
    })
}

/// A session with `customer_transactions` registered as the source, restricted to `days`.
async fn session(p: &Plan, days: Option<&BTreeSet<Day>>) -> Result<SessionContext> {
    let ctx = query::session(QUERY_MEMORY);
    query::register(&ctx, Table::Transactions.name(), &p.d.source, days).await?;
    Ok(ctx)
}

/// The session of a merge: `customer_transactions` restricted to the added files, and
/// `current_aggregates`, the aggregates table restricted to their days.
async fn merge_session(p: &Plan, days: &BTreeSet<Day>, added: &[String]) -> Result<SessionContext> {
    let ctx = query::session(QUERY_MEMORY);
    p.d.source
        .update_datafusion_session(&ctx.state())
        .map_err(|e| Error::delta(Table::Transactions.name(), e))?;
    let rows = (p.d.source)
        .table_provider()
        .with_file_paths(added.iter().cloned())
        .await?;
    ctx.register_table(Table::Transactions.name(), rows)?;
    query::register(&ctx, "current_aggregates", &p.d.target, Some(days)).await?;
    Ok(ctx)
}
