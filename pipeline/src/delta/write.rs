//! Writing one record batch to a table as new data files (uncommitted).

use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};

use crate::error::{Error, Result};
use crate::tables::Table;

/// Write `batch` to new files of `t` (conformed to its schema); returns their `add` actions,
/// to be committed by the caller.
pub async fn write_batch(
    t: &deltalake::DeltaTable,
    table: Table,
    batch: deltalake::arrow::array::RecordBatch,
) -> Result<Vec<Add>> {
    let mut w = RecordBatchWriter::for_table(t).map_err(|e| Error::delta(table.name(), e))?;
    if matches!(table, Table::Transactions | Table::Quarantine) {
        // Transaction rows: the settings of the day writers' files (a binary column with
        // Parquet statistics made delta-rs warn per file).
        w = w.with_writer_properties(crate::schema::writer_properties(None));
    }
    let batch = super::conform(batch.columns().to_vec(), &w.arrow_schema())?;
    w.write(batch)
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    w.flush().await.map_err(|e| Error::delta(table.name(), e))
}
