//! Messages to rows: each message is JSON ([`json`], one transaction) or an Arrow IPC stream
//! ([`arrow`], any number), told apart by its first bytes; every row keeps its message's key
//! and timestamp (the lineage columns).

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryArray, BinaryBuilder, RecordBatch, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::concat_batches;

use super::{arrow, json};
use crate::error::Result;
use crate::schema::{INPUT, RAW_LENIENT, RawBuilders};

/// Where a message came from: its key and timestamp (µs), kept with its rows.
#[derive(Clone, Copy)]
pub struct Lineage<'a> {
    /// The message key (none: a null key).
    pub key: Option<&'a [u8]>,
    /// The record's timestamp.
    pub timestamp_us: i64,
}

/// Rows read from messages, in the `INPUT` schema (the raw columns and the message's key and
/// timestamp), in message order: JSON rows are built a message at a time, an Arrow message's
/// batches are kept as they are (after the JSON rows before them).
pub struct Decoder {
    cols: RawBuilders,
    key: BinaryBuilder,
    timestamp: TimestampMicrosecondBuilder,
    /// JSON rows in the builders.
    built: usize,
    /// Rows before those, as batches.
    done: Vec<RecordBatch>,
    done_rows: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            cols: RawBuilders::with_capacity(1024),
            key: BinaryBuilder::new(),
            timestamp: TimestampMicrosecondBuilder::with_capacity(1024),
            built: 0,
            done: Vec::new(),
            done_rows: 0,
        }
    }
}

impl Decoder {
    /// Add a message's rows; `Ok(Err(why))`: the message cannot be read (nothing added).
    pub fn push(
        &mut self,
        value: &[u8],
        lineage: Lineage<'_>,
    ) -> Result<std::result::Result<(), String>> {
        if !arrow::is_ipc(value) {
            if let Err(why) = json::append(&mut self.cols, value) {
                return Ok(Err(why));
            }
            self.key.append_option(lineage.key);
            self.timestamp.append_value(lineage.timestamp_us);
            self.built += 1;
            return Ok(Ok(()));
        }
        let batches = match arrow::read(value) {
            Ok(b) => b,
            Err(why) => return Ok(Err(why)),
        };
        self.flush()?;
        for b in batches {
            let n = b.num_rows();
            let key: BinaryArray = std::iter::repeat_n(lineage.key, n).collect();
            let ts = TimestampMicrosecondArray::from_value(lineage.timestamp_us, n);
            self.keep(&b, key, ts)?;
        }
        Ok(Ok(()))
    }

    /// Rows added since the last [`Decoder::finish`].
    pub fn rows(&self) -> usize {
        self.built + self.done_rows
    }

    /// The rows added, as a batch; the decoder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.flush()?;
        let all = concat_batches(&INPUT, &self.done)?;
        self.done.clear();
        self.done_rows = 0;
        Ok(all)
    }

    /// The JSON rows built so far, moved to `done`.
    fn flush(&mut self) -> Result<()> {
        if self.built == 0 {
            return Ok(());
        }
        let raw = self.cols.finish(&RAW_LENIENT)?;
        let (key, ts) = (self.key.finish(), self.timestamp.finish());
        self.built = 0;
        self.keep(&raw, key, ts)
    }

    /// Keep `raw` rows (`RAW_LENIENT`) with their lineage columns, after those before.
    fn keep(
        &mut self,
        raw: &RecordBatch,
        key: BinaryArray,
        ts: TimestampMicrosecondArray,
    ) -> Result<()> {
        let mut cols = raw.columns().to_vec();
        cols.push(Arc::new(key) as ArrayRef);
        cols.push(Arc::new(ts.with_timezone("UTC")));
        self.done.push(RecordBatch::try_new(INPUT.clone(), cols)?);
        self.done_rows += raw.num_rows();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{
        Array, AsArray, DictionaryArray, Int32Array, StringArray, TimestampNanosecondArray,
    };
    use deltalake::arrow::datatypes::{Int8Type, TimestampMicrosecondType};
    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let mut d = Decoder::default();
        let at = |timestamp_us| Lineage {
            key: Some(b"42"),
            timestamp_us,
        };
        let good = br#"{"transaction_id":"6f1c4f6e-8d3a-4c1e-9a53-0d8c2b1b7e11","customer_id":42,
            "merchant_id":7,"transaction_ts":"2026-12-07T10:00:00.123456Z","amount":"12.30",
            "category":"grocery","channel":"online","status":"approved"}"#;
        d.push(good, at(1_000)).unwrap().unwrap();
        let keyless = Lineage {
            key: None,
            timestamp_us: 2_000,
        };
        d.push(
            br#"{"transaction_id":null,"amount":null,"extra":1}"#,
            keyless,
        )
        .unwrap()
        .unwrap();
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"customer_id":"42"}"#,
            br#"{"transaction_ts":"yesterday"}"#,
            br#"{"amount":"1.234"}"#,
            br#"{"transaction_id":"x""#,
        ] {
            let refused = d.push(bad, at(3_000)).unwrap();
            assert!(refused.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let batch = d.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(d.rows(), 0);
        // Each row keeps its message's key and timestamp; a refused message adds neither.
        let key = batch
            .column_by_name("message_key")
            .unwrap()
            .as_binary::<i32>();
        assert_eq!((key.value(0), key.is_null(1)), (&b"42"[..], true));
        let ts = batch.column_by_name("message_timestamp").unwrap();
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.values().to_vec(), [1_000, 2_000]);

        let again = json::encode(&batch);
        let mut d2 = Decoder::default();
        for (m, lineage) in again.iter().zip([at(1_000), keyless]) {
            d2.push(m, lineage).unwrap().unwrap();
        }
        assert_eq!(d2.finish().unwrap(), batch);
        let first: serde_json::Value = serde_json::from_slice(&again[0]).unwrap();
        assert_eq!(first["amount"], "12.30");
        assert_eq!(first["transaction_ts"], "2026-12-07T10:00:00.123456Z");
        assert!(batch.column(0).is_null(1) && batch.column(4).is_null(1));
    }

    /// A batch of the raw columns as another writer might send it: other column order,
    /// narrower and dictionary types, nanoseconds, and a column we do not read.
    fn foreign(ids: &[&str]) -> RecordBatch {
        use deltalake::arrow::array::Decimal128Array;
        let n = ids.len();
        let category: DictionaryArray<Int8Type> = vec!["grocery"; n].into_iter().collect();
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("status", Arc::new(StringArray::from(vec!["approved"; n]))),
            ("note", Arc::new(StringArray::from(vec!["ignored"; n]))),
            ("transaction_id", Arc::new(StringArray::from(ids.to_vec()))),
            ("customer_id", Arc::new(Int32Array::from(vec![7; n]))),
            ("merchant_id", Arc::new(Int32Array::from(vec![3; n]))),
            (
                "transaction_ts",
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_765_000_000_123_456_789; n])
                        .with_timezone("+00:00"),
                ),
            ),
            (
                "amount",
                Arc::new(
                    Decimal128Array::from(vec![1230; n])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            ("category", Arc::new(category)),
            ("channel", Arc::new(StringArray::from(vec!["online"; n]))),
        ];
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn arrow_messages_hold_many_rows_and_keep_their_place_among_json_ones() {
        let mut d = Decoder::default();
        let at = |key: &'static [u8], timestamp_us| Lineage {
            key: Some(key),
            timestamp_us,
        };
        let json_row = |id: &str| {
            format!(
                r#"{{"transaction_id":"{id}","customer_id":1,"merchant_id":1,"amount":"1.00"}}"#
            )
            .into_bytes()
        };
        let ipc = arrow::encode(&foreign(&["b1", "b2", "b3"])).unwrap();
        d.push(&json_row("a"), at(b"j1", 1)).unwrap().unwrap();
        d.push(&ipc, at(b"arrow", 2)).unwrap().unwrap();
        d.push(&json_row("c"), at(b"j2", 3)).unwrap().unwrap();
        assert_eq!(d.rows(), 5);
        // Refused whole: cut short, or without a raw column.
        let cut = d.push(&ipc[..ipc.len() - 40], at(b"x", 4)).unwrap();
        assert!(cut.unwrap_err().contains("cut or damaged"));
        let no_amount = foreign(&["z"]);
        let no_amount = no_amount.project(&[0, 2, 3, 4, 5, 7, 8]).unwrap();
        let missing = d.push(&arrow::encode(&no_amount).unwrap(), at(b"x", 5));
        assert!(missing.unwrap().unwrap_err().contains("no column `amount`"));
        assert!(d.push(&ipc[..3], at(b"x", 6)).unwrap().is_err());

        let batch = d.finish().unwrap();
        assert_eq!(batch.schema(), *INPUT);
        let ids: Vec<_> = batch
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(ids, ["a", "b1", "b2", "b3", "c"], "message order");
        let keys: Vec<_> = batch
            .column(8)
            .as_binary::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(keys, [&b"j1"[..], b"arrow", b"arrow", b"arrow", b"j2"]);
        let ts = batch.column(9).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.values().to_vec(), [1, 2, 2, 2, 3]);
        // The Arrow rows' values, converted to the contract's types.
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(1), 1_765_000_000_123_456);
        let amount = batch
            .column(4)
            .as_primitive::<deltalake::arrow::datatypes::Decimal128Type>();
        assert_eq!((amount.value(1), amount.scale()), (1230, 2));
        assert_eq!(batch.column(5).as_string::<i32>().value(2), "grocery");
        assert_eq!(d.rows(), 0);
    }
}
