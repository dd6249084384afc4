//! Writing a query's result, batch by batch, to stdout or a file. A file is written beside
//! its final name and renamed into place at the end: an error leaves no half-written result.
//! A closed stdout (`| head`) ends the output quietly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::csv;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::json::LineDelimitedWriter;
use deltalake::arrow::util::pretty::pretty_format_batches;
use deltalake::datafusion::dataframe::DataFrame;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::errors::ParquetError;
use futures::StreamExt;

use super::Format;
use crate::error::{Error, Result};

/// Write the result of `df`; returns its row count.
pub async fn write(
    df: DataFrame,
    format: Format,
    out: Option<&Path>,
    max_rows: usize,
) -> Result<u64> {
    let mut dest = Destination::open(out)?;
    let mut stream = df.execute_stream().await.map_err(Error::sql)?;
    let schema = stream.schema();
    let mut sink = match format {
        // An empty batch first, so an empty result still shows its columns (table) or
        // header line (CSV).
        Format::Table => Sink::Table {
            shown: vec![RecordBatch::new_empty(schema.clone())],
            max_rows,
        },
        Format::Csv => Sink::Csv(
            csv::WriterBuilder::new()
                .with_header(true)
                .build(dest.writer()),
        ),
        Format::Json => Sink::Json(json_writer(dest.writer())),
        Format::Parquet => {
            Sink::Parquet(ArrowWriter::try_new(dest.writer(), schema.clone(), None)?)
        }
    };
    if format == Format::Csv && !sink.write(RecordBatch::new_empty(schema), 0)? {
        return Ok(0);
    }
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(Error::sql)?;
        rows += batch.num_rows() as u64;
        if !sink.write(batch, rows)? {
            return Ok(rows); // stdout was closed
        }
    }
    let text = sink.finish(rows)?;
    if let Some(text) = text {
        match dest.writer().write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(rows),
            r => r.map_err(|e| Error::io("cannot write the result", e))?,
        }
    }
    dest.commit()?;
    Ok(rows)
}

/// JSON lines written as every JSON output of ours writes values
/// ([`crate::report::timestamp`]): a time with a zone as RFC 3339 UTC with exactly six
/// decimals and `Z`, one without a zone the same without `Z`, and a null as `null` (arrow's
/// defaults wrote 0, 3 or 6 decimals, kept `+02:00`, and left a null column out of its row).
fn json_writer<W: Write>(w: W) -> LineDelimitedWriter<W> {
    deltalake::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.6f".into())
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.6fZ".into())
        .build(w)
}

/// The batch with every zoned timestamp column in UTC microseconds, so that
/// [`json_writer`]'s `Z` is true (`now()` is nanoseconds at `+00:00`).
fn json_times(
    batch: &RecordBatch,
) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let zoned = |t: &DataType| matches!(t, DataType::Timestamp(_, Some(_))) && *t != utc;
    if !batch.schema().fields().iter().any(|f| zoned(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if zoned(f.data_type()) {
            columns.push(deltalake::arrow::compute::cast(c, &utc)?);
            fields.push(Field::new(f.name(), utc.clone(), f.is_nullable()));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
}

/// One output format's writer.
enum Sink<W: Write + Send> {
    Table {
        shown: Vec<RecordBatch>,
        max_rows: usize,
    },
    Csv(csv::Writer<W>),
    Json(LineDelimitedWriter<W>),
    Parquet(ArrowWriter<W>),
}

impl<W: Write + Send> Sink<W> {
    /// Write a batch (`total` rows so far, this batch's included); false once the reader
    /// went away.
    fn write(&mut self, batch: RecordBatch, total: u64) -> Result<bool> {
        let written = match self {
            Sink::Table { shown, max_rows } => {
                let before = total as usize - batch.num_rows();
                if before < *max_rows {
                    let keep = (*max_rows - before).min(batch.num_rows());
                    shown.push(batch.slice(0, keep));
                }
                Ok(())
            }
            Sink::Csv(w) => w.write(&batch),
            Sink::Json(w) => json_times(&batch).and_then(|b| w.write(&b)),
            Sink::Parquet(w) => return w.write(&batch).map(|()| true).map_err(Error::from),
        };
        match written {
            Ok(()) => Ok(true),
            Err(e) if broken_pipe(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Flush the writer; the text still to print (the table and its row count).
    fn finish(self, rows: u64) -> Result<Option<String>> {
        match self {
            Sink::Table { shown, max_rows } => {
                let mut text = pretty_format_batches(&shown)?.to_string();
                text.push('\n');
                text.push_str(&if rows as usize > max_rows {
                    format!(
                        "({rows} rows; the first {max_rows} shown: raise --max-rows, or write all with --format csv --out FILE)\n"
                    )
                } else if rows == 1 {
                    "(1 row)\n".to_string()
                } else {
                    format!("({rows} rows)\n")
                });
                Ok(Some(text))
            }
            Sink::Csv(w) => finish_writer(w.into_inner()),
            Sink::Json(mut w) => match w.finish() {
                Err(e) if broken_pipe(&e) => Ok(None),
                r => r.map(|()| None).map_err(Error::from),
            },
            Sink::Parquet(w) => match w.close() {
                Err(ParquetError::External(e)) if e.to_string().contains("Broken pipe") => Ok(None),
                r => r.map(|_| None).map_err(Error::from),
            },
        }
    }
}

fn finish_writer<W: Write>(mut w: W) -> Result<Option<String>> {
    match w.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(None),
        r => r
            .map(|()| None)
            .map_err(|e| Error::io("cannot write the result", e)),
    }
}

/// The reader of stdout went away (`| head`): the CSV writer reports it as text.
fn broken_pipe(e: &ArrowError) -> bool {
    match e {
        ArrowError::IoError(_, io) => io.kind() == std::io::ErrorKind::BrokenPipe,
        ArrowError::CsvError(text) => text.contains("Broken pipe"),
        _ => false,
    }
}

/// `out` as written to: a symlink is followed, the file it points to is the one replaced.
fn resolve(out: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(out) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(out.to_path_buf()),
        Err(e) => Err(e),
    }
}

/// The temporary file a result for `out` is written to before it is renamed.
pub fn temp_for(out: &Path) -> PathBuf {
    crate::layout::temp_path(&resolve(out).unwrap_or_else(|_| out.to_path_buf()))
}

/// Stdout, a temporary file renamed to `out` by [`Destination::commit`], or, when `out`
/// is not a regular file (a device such as `/dev/stdout`, a FIFO), `out` itself.
enum Destination {
    Stdout(BufWriter<std::io::Stdout>),
    Special(BufWriter<File>),
    File {
        file: BufWriter<File>,
        temp: Temp,
        out: PathBuf,
    },
}

/// A file being written; removed unless it was renamed into place.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Destination {
    fn open(out: Option<&Path>) -> Result<Self> {
        let Some(out) = out else {
            return Ok(Destination::Stdout(BufWriter::new(std::io::stdout())));
        };
        if [
            Path::new("/dev/stdout"),
            Path::new("/dev/fd/1"),
            Path::new("/proc/self/fd/1"),
        ]
        .contains(&out)
        {
            return Ok(Destination::Stdout(BufWriter::new(std::io::stdout())));
        }
        let cannot = |e| Error::io(format!("cannot write {}", out.display()), e);
        let given = out;
        let out = &resolve(out).map_err(cannot)?;
        // `/dev/stdout` and friends name an open file (maybe a regular one, when the shell
        // redirected stdout to a file): written as they are, never replaced.
        if given.starts_with("/dev") || out.starts_with("/proc") || out.starts_with("/dev") {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(out)
                .map_err(cannot)?;
            return Ok(Destination::Special(BufWriter::new(file)));
        }
        match std::fs::metadata(out) {
            Ok(m) if m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "--out {} is a directory: name a file",
                    out.display()
                )));
            }
            Ok(m) if !m.is_file() => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(out)
                    .map_err(cannot)?;
                return Ok(Destination::Special(BufWriter::new(file)));
            }
            _ => {}
        }
        let temp = temp_for(out);
        let file = File::create(&temp).map_err(cannot)?;
        Ok(Destination::File {
            file: BufWriter::new(file),
            temp: Temp(temp),
            out: out.to_path_buf(),
        })
    }

    /// Where the writers write (they borrow it for the whole result).
    fn writer(&mut self) -> &mut (dyn Write + Send) {
        match self {
            Destination::Stdout(w) => w,
            Destination::Special(w) => w,
            Destination::File { file, .. } => file,
        }
    }

    /// Flush, and put a file in place.
    fn commit(self) -> Result<()> {
        match self {
            Destination::Stdout(mut w) => match w.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.map_err(|e| Error::io("cannot write to stdout", e)),
            },
            Destination::Special(mut w) => w
                .flush()
                .map_err(|e| Error::io("cannot write the result", e)),
            Destination::File { file, temp, out } => {
                let path = &temp.0;
                let cannot = |e| Error::io(format!("cannot write {}", path.display()), e);
                let file = file.into_inner().map_err(|e| cannot(e.into_error()))?;
                file.sync_all().map_err(cannot)?;
                std::fs::rename(path, &out).map_err(|e| {
                    Error::io(
                        format!("cannot move {} to {}", path.display(), out.display()),
                        e,
                    )
                })
            }
        }
    }
}
