//! The Arrow IPC message format: a message that is an Arrow IPC stream of the raw columns
//! holds any number of transactions, in columns (no text to parse).
//!
//! From the Arrow columnar format specification, "IPC Streaming Format"
//! (<https://arrow.apache.org/docs/format/Columnar.html#ipc-streaming-format>): a stream is a
//! schema message, then dictionary and record batch messages, then an optional end-of-stream
//! marker; every encapsulated message starts with the continuation marker `0xFFFFFFFF` (since
//! format 0.15, which every current writer uses: pyarrow, Polars, arrow-rs). A JSON message
//! cannot start with that byte (not UTF-8), so a topic may carry both formats and each
//! message's first four bytes say which it is.
//!
//! The stream's schema is checked as a landing file's is: the raw columns by name, in any
//! order, of the same or a losslessly wider type ([`crate::schema::compatible`]); other columns
//! are ignored. A stream that cannot be read, or lacks a column, is unparseable as a whole.

use std::io::Cursor;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::ipc::reader::StreamReader;
use deltalake::arrow::ipc::writer::StreamWriter;

use crate::error::Result;
use crate::schema::{self, RAW_LENIENT, compatible};

/// The first four bytes of every Arrow IPC stream.
const CONTINUATION: [u8; 4] = [0xFF; 4];

/// Whether a message is an Arrow IPC stream (else it is JSON).
pub fn is_ipc(value: &[u8]) -> bool {
    value.starts_with(&CONTINUATION)
}

/// A message's rows, in the `RAW_LENIENT` schema; `Err`: why the message cannot be read.
pub fn read(value: &[u8]) -> std::result::Result<Vec<RecordBatch>, String> {
    let reader = StreamReader::try_new(Cursor::new(value), None)
        .map_err(|e| format!("not a readable Arrow IPC stream: {e}"))?;
    let got = reader.schema();
    for want in RAW_LENIENT.fields() {
        let Ok(field) = got.field_with_name(want.name()) else {
            return Err(format!(
                "the Arrow IPC stream has no column `{}` ({})",
                want.name(),
                want.data_type()
            ));
        };
        if !compatible(field.data_type(), want.data_type()) {
            return Err(format!(
                "column `{}` of the Arrow IPC stream has type {}, expected {}",
                want.name(),
                field.data_type(),
                want.data_type()
            ));
        }
    }
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("the Arrow IPC stream is cut or damaged: {e}"))?;
        out.push(schema::by_name(&batch, &RAW_LENIENT).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// `batch` as one message: an Arrow IPC stream of it.
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut w = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?)
}
