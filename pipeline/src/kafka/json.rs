//! The message format: one transaction per message, a JSON object with the raw schema's field
//! names (docs/kafka.md, "Messages").
//!
//! `transaction_ts` is RFC 3339 text; `amount` a JSON string or number in plain decimal
//! notation with at most 2 decimals (`"12.30"`, `12.3`), read digit by digit, never through a
//! float. A missing field or JSON `null` is a null column value, which the quality rules then
//! judge as they judge a null in a file. A message that is not such an object (not JSON, a
//! field of the wrong type, a time or amount that cannot be read) is unparseable: it goes to
//! the quarantine as `unparseable_message`.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Decimal128Array, RecordBatch,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Result;
use crate::schema::{AMOUNT_SCALE, INPUT, RAW_LENIENT, RawBuilders};

/// A message as sent: every field optional (a null is the rules' business).
#[derive(Deserialize)]
struct Wire<'a> {
    transaction_id: Option<String>,
    customer_id: Option<i64>,
    merchant_id: Option<i64>,
    transaction_ts: Option<String>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    category: Option<String>,
    channel: Option<String>,
    status: Option<String>,
}

/// Rows read from messages, in the `INPUT` schema (the raw columns and the message's key and
/// timestamp), built a message at a time.
pub struct Decoder {
    cols: RawBuilders,
    key: BinaryBuilder,
    timestamp: TimestampMicrosecondBuilder,
    rows: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            cols: RawBuilders::with_capacity(1024),
            key: BinaryBuilder::new(),
            timestamp: TimestampMicrosecondBuilder::with_capacity(1024),
            rows: 0,
        }
    }
}

/// Where a message came from: its key and timestamp (µs), kept with its row.
#[derive(Clone, Copy)]
pub struct Lineage<'a> {
    /// The message key (none: a null key).
    pub key: Option<&'a [u8]>,
    /// The record's timestamp.
    pub timestamp_us: i64,
}

impl Decoder {
    /// Add a message's row; `Err` says why the message cannot be read (nothing added).
    pub fn push(&mut self, value: &[u8], lineage: Lineage<'_>) -> std::result::Result<(), String> {
        let wire: Wire<'_> = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let ts = match &wire.transaction_ts {
            None => None,
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("transaction_ts `{t}` is not RFC 3339: {e}"))?
                    .timestamp_micros(),
            ),
        };
        let amount = match wire.amount {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(parse_amount(raw.get())?),
        };
        let c = &mut self.cols;
        c.id.append_option(wire.transaction_id);
        c.customer.append_option(wire.customer_id);
        c.merchant.append_option(wire.merchant_id);
        c.ts.append_option(ts);
        c.amount.append_option(amount);
        c.category.append_option(wire.category);
        c.channel.append_option(wire.channel);
        c.status.append_option(wire.status);
        self.key.append_option(lineage.key);
        self.timestamp.append_value(lineage.timestamp_us);
        self.rows += 1;
        Ok(())
    }

    /// Rows added since the last [`Decoder::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows added, as a batch; the decoder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let raw = self.cols.finish(&RAW_LENIENT)?;
        let mut cols = raw.columns().to_vec();
        cols.push(Arc::new(self.key.finish()) as ArrayRef);
        cols.push(Arc::new(self.timestamp.finish().with_timezone("UTC")));
        Ok(RecordBatch::try_new(INPUT.clone(), cols)?)
    }
}

/// An amount's unscaled value (cents): a JSON number or string in plain decimal notation,
/// at most 2 decimals, at most 36 integer digits.
fn parse_amount(raw: &str) -> std::result::Result<i128, String> {
    let text = raw
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(raw);
    let bad = |why: &str| format!("amount {raw} {why}");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !all_digits(int)
        || !all_digits(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(bad(
            "is not a decimal number in plain notation (e.g. \"12.30\")",
        ));
    }
    if frac.len() > AMOUNT_SCALE as usize {
        return Err(bad("has more than 2 decimals"));
    }
    if int.len() > 36 {
        return Err(bad("has too many digits"));
    }
    let mut cents: i128 = int.parse().map_err(|_| bad("cannot be read"))?;
    let mut frac = frac.to_string();
    while frac.len() < AMOUNT_SCALE as usize {
        frac.push('0');
    }
    cents = cents * 100 + frac.parse::<i128>().unwrap_or(0);
    Ok(if negative { -cents } else { cents })
}

/// The message of each row of a `RAW`/`RAW_LENIENT` batch (nulls as JSON `null`, amounts as
/// strings with 2 decimals, times as RFC 3339 in UTC with microseconds).
pub fn encode(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let col = |name: &str| batch.column_by_name(name).expect("raw schema").clone();
    let id = col("transaction_id");
    let customer = col("customer_id");
    let merchant = col("merchant_id");
    let ts = col("transaction_ts");
    let amount = col("amount");
    let (category, channel, status) = (col("category"), col("channel"), col("status"));
    let (id, category, channel, status) = (
        id.as_string::<i32>(),
        category.as_string::<i32>(),
        channel.as_string::<i32>(),
        status.as_string::<i32>(),
    );
    let customer = customer.as_primitive::<Int64Type>();
    let merchant = merchant.as_primitive::<Int64Type>();
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    let amount: &Decimal128Array = amount.as_primitive();
    let text = |a: &deltalake::arrow::array::StringArray, i: usize| {
        (!a.is_null(i)).then(|| a.value(i).to_string())
    };
    (0..batch.num_rows())
        .map(|i| {
            let msg = serde_json::json!({
                "transaction_id": text(id, i),
                "customer_id": (!customer.is_null(i)).then(|| customer.value(i)),
                "merchant_id": (!merchant.is_null(i)).then(|| merchant.value(i)),
                "transaction_ts": (!ts.is_null(i)).then(|| {
                    chrono::DateTime::from_timestamp_micros(ts.value(i))
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                }).flatten(),
                "amount": (!amount.is_null(i)).then(|| cents_text(amount.value(i))),
                "category": text(category, i),
                "channel": text(channel, i),
                "status": text(status, i),
            });
            serde_json::to_vec(&msg).expect("JSON of plain values")
        })
        .collect()
}

/// `1230` -> `"12.30"`, `-5` -> `"-0.05"`.
fn cents_text(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_exactly() {
        for (raw, cents) in [
            ("12.30", 1230),
            ("\"12.30\"", 1230),
            ("12.3", 1230),
            ("12", 1200),
            ("\"0.01\"", 1),
            ("-5.05", -505),
            ("99999999999.99", 9_999_999_999_999),
        ] {
            assert_eq!(parse_amount(raw), Ok(cents), "{raw}");
        }
        for raw in [
            "1.234", "1e3", "\"abc\"", "\"\"", "1.", ".5", "\"1,5\"", "true",
        ] {
            assert!(parse_amount(raw).is_err(), "{raw}");
        }
        for cents in [0, 1, 99, 100, 1230, -5, -12345] {
            assert_eq!(parse_amount(&cents_text(cents)), Ok(cents));
        }
    }

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
        d.push(good, at(1_000)).unwrap();
        let keyless = Lineage {
            key: None,
            timestamp_us: 2_000,
        };
        d.push(
            br#"{"transaction_id":null,"amount":null,"extra":1}"#,
            keyless,
        )
        .unwrap();
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"customer_id":"42"}"#,
            br#"{"transaction_ts":"yesterday"}"#,
            br#"{"amount":"1.234"}"#,
            br#"{"transaction_id":"x""#,
        ] {
            let refused = d.push(bad, at(3_000));
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

        let again = encode(&batch);
        let mut d2 = Decoder::default();
        for (m, lineage) in again.iter().zip([at(1_000), keyless]) {
            d2.push(m, lineage).unwrap();
        }
        assert_eq!(d2.finish().unwrap(), batch);
        let first: serde_json::Value = serde_json::from_slice(&again[0]).unwrap();
        assert_eq!(first["amount"], "12.30");
        assert_eq!(first["transaction_ts"], "2026-12-07T10:00:00.123456Z");
        assert!(batch.column(0).is_null(1) && batch.column(4).is_null(1));
    }
}
