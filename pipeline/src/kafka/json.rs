//! The message format: one transaction per message, a JSON object with the raw schema's field
//! names (docs/kafka.md, "Messages").
//!
//! `transaction_ts` is RFC 3339 text; `amount` a JSON string or number in plain decimal
//! notation with at most 2 decimals (`"12.30"`, `12.3`), read digit by digit, never through a
//! float. A missing field or JSON `null` is a null column value, which the quality rules then
//! judge as they judge a null in a file. A message that is not such an object (not JSON, a
//! field of the wrong type, a time or amount that cannot be read) is unparseable: it goes to
//! the quarantine as `unparseable_message`.

use deltalake::arrow::array::{Array, AsArray, Decimal128Array, RecordBatch};
use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::schema::{AMOUNT_SCALE, RawBuilders};

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

/// Append a message's row to `cols`; `Err` says why it cannot be read (nothing appended).
pub fn append(cols: &mut RawBuilders, value: &[u8]) -> std::result::Result<(), String> {
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
    cols.id.append_option(wire.transaction_id);
    cols.customer.append_option(wire.customer_id);
    cols.merchant.append_option(wire.merchant_id);
    cols.ts.append_option(ts);
    cols.amount.append_option(amount);
    cols.category.append_option(wire.category);
    cols.channel.append_option(wire.channel);
    cols.status.append_option(wire.status);
    Ok(())
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
}
