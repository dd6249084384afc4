//! Planning: read each new file's footer (schema check, row-group timestamp statistics) and
//! sort its row groups into days. A row group whose rows all fall on one day is read straight
//! into that day's work; other row groups are read once now and split by day into scratch
//! Arrow IPC files. Every row keeps its ordinal (file, row): the order "first copy wins" is
//! decided in, whatever the day it lands in.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{cast, take_record_batch};
use deltalake::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::arrow::ipc::reader::FileReader as IpcReader;
use deltalake::arrow::ipc::writer::FileWriter as IpcWriter;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReaderBuilder,
};

use super::discover::LandingFile;
use crate::dates::{self, Day};
use crate::error::{Error, Result};
use crate::schema::{INPUT, RAW, col, compatible};

/// Rows per decoded batch.
const BATCH_ROWS: usize = 64 * 1024;

/// The day a row lands in: its UTC day, or `None` when it has no (representable) timestamp.
pub type DayKey = Option<Day>;

/// A row's ordinal in the run: its file's index (high 32 bits) and its row in the file.
pub type Ord = u64;

/// The ordinal of row `row` of file `file`.
pub fn ord(file: usize, row: u64) -> Ord {
    ((file as u64) << 32) | row
}

/// Where one day's rows of one source row group are.
#[derive(Debug)]
pub enum Input {
    /// A whole row group of one day.
    RowGroup {
        /// Index into the run's files.
        file: usize,
        /// The row group.
        row_group: usize,
        /// Its first row's index in the file.
        first_row: u64,
    },
    /// One day's rows of a row group that spans several, in a scratch IPC file with a
    /// trailing `__row` column (each row's index in its file).
    Spilled {
        /// Index into the run's files.
        file: usize,
        /// The scratch file.
        path: PathBuf,
    },
}

/// A raw file's parsed footer and the projection of its raw columns.
#[derive(Clone)]
pub struct Footer {
    /// The parsed footer.
    pub meta: ArrowReaderMetadata,
    /// The raw columns (and the lineage ones it has), by position in the file.
    pub projection: ProjectionMask,
}

/// What a run will read: inputs per day (file, then row-group order), rows, footers.
pub struct Plan {
    /// Inputs per day.
    pub days: BTreeMap<DayKey, Vec<Input>>,
    /// Rows in all files.
    pub rows: u64,
    /// Uncompressed bytes of all row groups (what decoding them holds in memory).
    pub decoded_bytes: u64,
    /// Per file (same index as the run's files).
    pub footers: Vec<Footer>,
    /// Rows per file.
    pub file_rows: Vec<u64>,
}

/// Read every new file's footer, check it, and sort its row groups into days.
pub fn plan(files: &[LandingFile], scratch: &Path) -> Result<Plan> {
    let mut plan = Plan {
        days: BTreeMap::new(),
        rows: 0,
        decoded_bytes: 0,
        footers: Vec::with_capacity(files.len()),
        file_rows: Vec::with_capacity(files.len()),
    };
    for (fi, nf) in files.iter().enumerate() {
        let path = &nf.path;
        let file =
            File::open(path).map_err(|e| Error::bad_input(path, format!("cannot open: {e}")))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .map_err(|e| Error::bad_input(path, format!("not a readable Parquet file ({e})")))?;
        let projection = raw_projection(path, &meta)?;
        let md = meta.metadata();
        let file_rows = md.file_metadata().num_rows().max(0) as u64;
        plan.rows += file_rows;
        plan.file_rows.push(file_rows);
        let days = row_group_days(&meta)?;
        let mut first_row = 0u64;
        for (rg, day) in days.into_iter().enumerate() {
            let rows = md.row_group(rg).num_rows().max(0) as u64;
            plan.decoded_bytes += md.row_group(rg).total_byte_size().max(0) as u64;
            if rows == 0 {
                continue;
            }
            match day {
                Some(day) => plan
                    .days
                    .entry(Some(day))
                    .or_default()
                    .push(Input::RowGroup {
                        file: fi,
                        row_group: rg,
                        first_row,
                    }),
                None => {
                    let footer = Footer {
                        meta: meta.clone(),
                        projection: projection.clone(),
                    };
                    for (day, spilled) in
                        spill_row_group(path, fi, rg, first_row, &file, &footer, scratch)?
                    {
                        plan.days.entry(day).or_default().push(Input::Spilled {
                            file: fi,
                            path: spilled,
                        });
                    }
                }
            }
            first_row += rows;
        }
        plan.footers.push(Footer { meta, projection });
    }
    Ok(plan)
}

/// Per row group, the one day all its rows fall on (from the timestamp statistics), or
/// `None` when it spans days, has nulls, or has no statistics.
fn row_group_days(meta: &ArrowReaderMetadata) -> Result<Vec<DayKey>> {
    let md = meta.metadata();
    let converter =
        StatisticsConverter::try_new(col::TRANSACTION_TS, meta.schema(), meta.parquet_schema())?;
    let to_us = |a: &ArrayRef| -> Result<ArrayRef> {
        Ok(cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?)
    };
    let mins = to_us(&converter.row_group_mins(md.row_groups().iter())?)?;
    let maxs = to_us(&converter.row_group_maxes(md.row_groups().iter())?)?;
    let nulls = converter.row_group_null_counts(md.row_groups().iter())?;
    let (mins, maxs) = (
        mins.as_primitive::<TimestampMicrosecondType>(),
        maxs.as_primitive::<TimestampMicrosecondType>(),
    );
    Ok((0..md.num_row_groups())
        .map(|rg| {
            if !(mins.is_valid(rg) && maxs.is_valid(rg) && nulls.is_valid(rg))
                || nulls.value(rg) != 0
            {
                return None;
            }
            let (lo, hi) = (
                dates::of_micros(mins.value(rg))?,
                dates::of_micros(maxs.value(rg))?,
            );
            (lo == hi).then_some(lo)
        })
        .collect())
}

/// `INPUT` plus `__row`: the schema of a spilled split.
fn spilled_schema() -> SchemaRef {
    let mut fields: Vec<Field> = INPUT.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("__row", DataType::UInt32, false));
    Arc::new(Schema::new(fields))
}

/// Read one row group that spans several days and write its rows, split by day, to scratch.
fn spill_row_group(
    path: &Path,
    fi: usize,
    rg: usize,
    first_row: u64,
    file: &File,
    footer: &Footer,
    scratch: &Path,
) -> Result<Vec<(DayKey, PathBuf)>> {
    let f = file
        .try_clone()
        .map_err(|e| Error::io(format!("cannot reopen {}", path.display()), e))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, footer.meta.clone())
        .with_row_groups(vec![rg])
        .with_projection(footer.projection.clone())
        .with_batch_size(BATCH_ROWS)
        .build()?;
    let schema = spilled_schema();
    let mut writers: BTreeMap<DayKey, (PathBuf, IpcWriter<File>)> = BTreeMap::new();
    let mut row = first_row;
    for batch in reader {
        let batch =
            normalize(&batch.map_err(|e| {
                Error::bad_input(path, format!("row group {rg} is unreadable ({e})"))
            })?)?;
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let mut by_day: BTreeMap<DayKey, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let day = if ts.is_valid(i) {
                dates::of_micros(ts.value(i))
            } else {
                None
            };
            by_day.entry(day).or_default().push(i as u32);
        }
        for (day, idx) in by_day {
            let rows_in_file =
                UInt32Array::from_iter_values(idx.iter().map(|i| (row + u64::from(*i)) as u32));
            let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
            let mut cols = part.columns().to_vec();
            cols.push(Arc::new(rows_in_file));
            let part = RecordBatch::try_new(schema.clone(), cols)?;
            let (_, writer) = match writers.entry(day) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let day_name = day.map_or("null".to_string(), |d| d.to_string());
                    let p = scratch.join(format!("f{fi:06}-rg{rg:05}-{day_name}.arrow"));
                    let f = File::create(&p)
                        .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?;
                    e.insert((p, IpcWriter::try_new(f, &schema)?))
                }
            };
            writer.write(&part)?;
        }
        row += batch.num_rows() as u64;
    }
    let mut out = Vec::with_capacity(writers.len());
    for (day, (p, mut w)) in writers {
        w.finish()?;
        out.push((day, p));
    }
    Ok(out)
}

/// Check a raw file's schema and say how to read it: the Parquet root columns to project.
/// A missing column or an incompatible type is a [`Error::BadInput`] naming file and column.
fn raw_projection(path: &Path, meta: &ArrowReaderMetadata) -> Result<ProjectionMask> {
    let file_schema = meta.schema();
    let mut roots = Vec::with_capacity(RAW.fields().len());
    for want in RAW.fields() {
        let Some((idx, got)) = file_schema.column_with_name(want.name()) else {
            let have: Vec<_> = file_schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(Error::bad_input(
                path,
                format!(
                    "missing column `{}` ({}); the file has [{}]",
                    want.name(),
                    want.data_type(),
                    have.join(", ")
                ),
            ));
        };
        if !compatible(got.data_type(), want.data_type()) {
            return Err(Error::bad_input(
                path,
                format!(
                    "column `{}` has type {}, expected {}",
                    want.name(),
                    got.data_type(),
                    want.data_type()
                ),
            ));
        }
        roots.push(idx);
    }
    // The lineage columns, when the file has them with a usable type (a Kafka run's scratch
    // files do). Not part of the raw contract: in a landing file of another producer a column
    // of that name and another type is one of its own, ignored as any other extra column.
    for want in &INPUT.fields()[RAW.fields().len()..] {
        match file_schema.column_with_name(want.name()) {
            Some((idx, got)) if compatible(got.data_type(), want.data_type()) => roots.push(idx),
            _ => {}
        }
    }
    Ok(ProjectionMask::roots(meta.parquet_schema(), roots))
}

/// Reorder and cast a raw batch to `INPUT` (compatibility was checked at planning; the raw
/// columns are there, the lineage ones null when the file has none).
fn normalize(batch: &RecordBatch) -> Result<RecordBatch> {
    Ok(crate::schema::by_name(batch, &INPUT)?)
}

/// A batch of raw rows (`INPUT`) and the ordinals of its rows.
pub struct Rows {
    /// The rows.
    pub batch: RecordBatch,
    /// Index of their file in the run.
    pub file: usize,
    ords: Ords,
}

enum Ords {
    /// Consecutive rows of the file from this row on.
    From(u64),
    /// Each row's index in its file.
    List(UInt32Array),
}

impl Rows {
    /// The ordinal of row `i`.
    pub fn ord(&self, i: usize) -> Ord {
        match &self.ords {
            Ords::From(first) => ord(self.file, first + i as u64),
            Ords::List(rows) => ord(self.file, u64::from(rows.value(i))),
        }
    }

    /// The ordinal of the first row (ordinals increase within an input).
    pub fn first_ord(&self) -> Option<Ord> {
        (self.batch.num_rows() > 0).then(|| self.ord(0))
    }
}

/// An iterator over one input's rows.
pub type RowsIter = Box<dyn Iterator<Item = Result<Rows>> + Send>;

/// Read one input's rows, normalised to `INPUT`, with their ordinals.
pub fn read_input(paths: &[PathBuf], footers: &[Footer], input: &Input) -> Result<RowsIter> {
    match input {
        Input::RowGroup {
            file,
            row_group,
            first_row,
            ..
        } => {
            let path = paths[*file].clone();
            let f = File::open(&path).map_err(|e| {
                Error::bad_input(
                    &path,
                    format!(
                        "cannot open ({e}), though it was there when this run started: \
                             landing files must not be moved or deleted while ingest runs"
                    ),
                )
            })?;
            let footer = footers[*file].clone();
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, footer.meta)
                .with_row_groups(vec![*row_group])
                .with_projection(footer.projection)
                .with_batch_size(BATCH_ROWS)
                .build()?;
            let (rg, fi) = (*row_group, *file);
            let mut next = *first_row;
            Ok(Box::new(reader.map(move |b| {
                let b = b.map_err(|e| {
                    Error::bad_input(&path, format!("row group {rg} is unreadable ({e})"))
                })?;
                let rows = Rows {
                    batch: normalize(&b)?,
                    file: fi,
                    ords: Ords::From(next),
                };
                next += b.num_rows() as u64;
                Ok(rows)
            })))
        }
        Input::Spilled { file, path, .. } => {
            let f = File::open(path).map_err(|e| {
                Error::io(format!("cannot open scratch file {}", path.display()), e)
            })?;
            let reader = IpcReader::try_new(f, None)?;
            let fi = *file;
            Ok(Box::new(reader.map(move |b| {
                let b = b?;
                let last = b.num_columns() - 1;
                let rows = b.column(last).as_primitive().clone();
                let mut b = b;
                b.remove_column(last);
                Ok(Rows {
                    batch: RecordBatch::try_new(INPUT.clone(), b.columns().to_vec())?,
                    file: fi,
                    ords: Ords::List(rows),
                })
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_order_by_file_then_row() {
        assert!(ord(0, u32::MAX as u64) < ord(1, 0));
        assert_eq!(ord(2, 5) >> 32, 2);
    }
}
