//! Reading a table's Parquet data files, the one way every stage does it: through the
//! table's object store, decoded by the Parquet schema (files rewritten by OPTIMIZE or by
//! another engine may embed view or large string types), a few columns at a time.

use std::sync::Arc;

use deltalake::ObjectStore;
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
#[allow(deprecated)]
// deprecated upstream in favour of hand-written readers; delta-rs itself still uses it
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStreamBuilder,
};
use futures::{Stream, TryStreamExt};

use crate::error::{Error, Result};

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 64 * 1024;

/// A reader builder for one file of `store`, decoding by the Parquet schema.
#[allow(deprecated)]
pub async fn builder(
    store: Arc<dyn ObjectStore>,
    path: &deltalake::Path,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>> {
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store, path.clone());
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    Ok(ParquetRecordBatchStreamBuilder::new_with_options(reader, options).await?)
}

/// Stream `columns` (by name, in the file's order) of one data file.
pub async fn columns(
    store: Arc<dyn ObjectStore>,
    path: &deltalake::Path,
    columns: &[&str],
) -> Result<impl Stream<Item = Result<RecordBatch>> + use<>> {
    let b = builder(store, path).await?;
    let mask = ProjectionMask::columns(b.parquet_schema(), columns.iter().copied());
    let stream = b
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    Ok(stream.map_err(Error::from))
}
