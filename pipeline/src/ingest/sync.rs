//! Keeping the id index in step with `customer_transactions` before a run decides anything.

use super::commit::{self, Tables, catch_up};
use super::discover::Stream;
use super::scratch::Scratch;
use super::{IngestOptions, IngestReport, idindex};
use crate::delta;
use crate::error::{Error, Result};
use crate::tables::Table;

/// The id index must hold exactly the table's ids. It always does, unless the table was
/// written by an earlier version of the pipeline (no index yet), changed by another engine,
/// or the index was damaged: then it is rebuilt from the table, before anything is decided.
pub(super) async fn sync_index(
    tables: &mut Tables,
    stream: &Stream,
    scratch: &Scratch,
    opts: &IngestOptions,
    report: &mut IngestReport,
) -> Result<()> {
    // Other streams' runs in flight are the usual reason the counts differ: their main
    // commit is seen, their index commit not yet. Every stream's missing records are
    // completed here (as their owners do: the commits are idempotent), so this run's
    // deduplication sees their ids; a difference that remains is repaired by a rebuild.
    let (mut main_rows, mut index_rows) = (None, None);
    for round in 0..3 {
        main_rows = idindex::rows_of(&tables.main, Table::Transactions)?;
        index_rows = idindex::rows_of(&tables.ids, Table::TransactionIds)?;
        if main_rows.is_some() && main_rows == index_rows {
            return Ok(());
        }
        let (Some(m), Some(i)) = (main_rows, index_rows) else {
            break;
        };
        if round == 2 {
            break;
        }
        if m > i {
            report.caught_up_commits += complete_other_streams(tables).await;
        }
        // Derived tables first, the main one last: a run they show is in the main one.
        tables.refresh().await?;
    }
    if main_rows == Some(0) && delta::files(&tables.ids, Table::TransactionIds, None)?.is_empty() {
        return Ok(());
    }
    let txns = rebuilt_runs(tables, stream).await?;
    let w = format!(
        "{} holds {} rows but {} holds {} ids: rebuilt the index from the table",
        Table::Transactions,
        main_rows.map_or("?".into(), |n| n.to_string()),
        Table::TransactionIds,
        index_rows.map_or("?".into(), |n| n.to_string()),
    );
    tracing::warn!("{w}");
    idindex::rebuild(
        &tables.main,
        &tables.ids,
        &scratch.dir,
        opts.dedup_bucket_ids,
        &txns,
    )
    .await?;
    tables
        .ids
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(Table::TransactionIds.name(), e))?;
    report.warnings.push(w);
    Ok(())
}

/// The runs a rebuild from the main table's snapshot includes, as the index's `txn`s: every
/// stream's run number there, so that a run in flight whose ids the rebuild took from the
/// main table does not add them to the index a second time when its record is completed.
async fn rebuilt_runs(tables: &Tables, stream: &Stream) -> Result<Vec<(String, i64)>> {
    let mut streams = commit::streams_with_runs(tables, 1000).await;
    streams.insert(stream.prefix.clone());
    let mut txns = Vec::new();
    for prefix in streams {
        let s = Stream { prefix };
        let seq = commit::seq(&tables.main, Table::Transactions, &s).await?;
        if seq > 0 || s.prefix == stream.prefix {
            txns.push((s.app_id(), seq));
        }
    }
    Ok(txns)
}

/// Complete the records of every stream's runs the derived tables lack; best effort (a
/// failure is logged, and the index is then rebuilt from the table). Returns the commits.
async fn complete_other_streams(tables: &mut Tables) -> u64 {
    let mut commits = 0;
    for prefix in commit::streams_with_runs(tables, 100).await {
        match catch_up(tables, &Stream { prefix }).await {
            Ok(n) => commits += n,
            Err(e) => tracing::info!("cannot complete another stream's run ({})", e.chain()),
        }
    }
    commits
}
