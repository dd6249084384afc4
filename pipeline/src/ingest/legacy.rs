//! Tables written by an earlier version of the pipeline: the files it consumed are adopted.

use super::commit::{self, Tables};
use super::discover::{self, LandingFile, Stream};
use crate::delta::{self, Commit, keys};
use crate::error::{Error, Result};
use crate::tables::Table;

/// Files a table written by an earlier version of the pipeline consumed (it marked each
/// with a `txn` of its own) are recorded in `ingest_files` now, once, and not read again.
pub(super) async fn adopt_legacy(
    tables: &mut Tables,
    stream: &Stream,
    new: Vec<LandingFile>,
) -> Result<Vec<LandingFile>> {
    let has_data = !delta::files(&tables.main, Table::Transactions, None)?.is_empty();
    if new.is_empty()
        || !has_data
        || commit::seq(&tables.main, Table::Transactions, stream).await? > 0
    {
        return Ok(new);
    }
    let (mut legacy, mut fresh) = (Vec::new(), Vec::new());
    for f in new {
        let old = delta::txn_version(
            &tables.main,
            Table::Transactions,
            &keys::legacy_file_app(&f.rel),
        )
        .await?;
        if old.is_some() {
            legacy.push(f);
        } else {
            fresh.push(f);
        }
    }
    if legacy.is_empty() {
        return Ok(fresh);
    }
    tracing::warn!(
        files = legacy.len(),
        "recording files ingested by an earlier pipeline version in ingest_files"
    );
    let rows = vec![0; legacy.len()];
    let hashes = discover::start_hashing(legacy.clone(), 2).wait().await?;
    let problems = vec![None; legacy.len()];
    let batch = discover::log_batch(&legacy, &hashes, &rows, &problems, stream, 0, "legacy")?;
    let adds = delta::write_batch(&tables.files, Table::IngestFiles, batch).await?;
    Commit::append(Table::IngestFiles)
        .adds(adds)
        .meta(keys::STAGE, "ingest.adopt_legacy")
        .rebase_if_no_conflict()
        .execute(&tables.files)
        .await?;
    tables
        .files
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(Table::IngestFiles.name(), e))?;
    Ok(fresh)
}
