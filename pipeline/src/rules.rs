//! The quality rules of `docs/CONTRACT.md` ("rule for a valid row"), checked column-wise.
//!
//! Rules run in a fixed order and a row is rejected with the first one it breaks, so the
//! reason of a row never depends on how files were split into batches.

use deltalake::arrow::array::{
    Array, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use serde::Serialize;

use crate::schema::{CATEGORIES, CHANNELS, STATUSES};

/// Why a row was kept out of `customer_transactions`. The `as_str` codes are stored in the
/// quarantine table's `rejection_reason` column: stable, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `transaction_id` is null.
    TransactionIdNull,
    /// `transaction_id` is not canonical UUID text.
    TransactionIdNotUuid,
    /// `customer_id` is null.
    CustomerIdNull,
    /// `customer_id` ≤ 0.
    CustomerIdNotPositive,
    /// `merchant_id` is null.
    MerchantIdNull,
    /// `merchant_id` ≤ 0.
    MerchantIdNotPositive,
    /// `transaction_ts` is null.
    TransactionTsNull,
    /// More than a day after the run's reference instant.
    TransactionTsInFuture,
    /// Before the floor date (`ingest --min-date`).
    TransactionTsTooOld,
    /// On a day already final (`--finalize-after`): older than the watermark.
    LateBeyondWatermark,
    /// `amount` is null.
    AmountNull,
    /// `amount` ≤ 0.
    AmountNotPositive,
    /// `amount` has more digits than the contract's `Decimal(12, 2)` holds (≥ 10,000,000,000):
    /// a Parquet decimal column can store more than its declared precision, and nothing checks
    /// that on read.
    AmountOutOfRange,
    /// Not one of the known categories.
    CategoryUnknown,
    /// Not one of the known channels.
    ChannelUnknown,
    /// Neither `approved` nor `declined`.
    StatusUnknown,
    /// Not a rule violation: the id was already seen (earlier in the run or in the table).
    DuplicateTransactionId,
}

impl Reason {
    /// The code stored in the quarantine's `rejection_reason` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::TransactionIdNull => "transaction_id_null",
            Reason::TransactionIdNotUuid => "transaction_id_not_uuid",
            Reason::CustomerIdNull => "customer_id_null",
            Reason::CustomerIdNotPositive => "customer_id_not_positive",
            Reason::MerchantIdNull => "merchant_id_null",
            Reason::MerchantIdNotPositive => "merchant_id_not_positive",
            Reason::TransactionTsNull => "transaction_ts_null",
            Reason::TransactionTsInFuture => "transaction_ts_in_future",
            Reason::TransactionTsTooOld => "transaction_ts_too_old",
            Reason::LateBeyondWatermark => "late_beyond_watermark",
            Reason::AmountNull => "amount_null",
            Reason::AmountNotPositive => "amount_not_positive",
            Reason::AmountOutOfRange => "amount_out_of_range",
            Reason::CategoryUnknown => "category_unknown",
            Reason::ChannelUnknown => "channel_unknown",
            Reason::StatusUnknown => "status_unknown",
            Reason::DuplicateTransactionId => "duplicate_transaction_id",
        }
    }
}

/// The largest amount `Decimal(12, 2)` holds, in cents: 9,999,999,999.99.
pub const MAX_AMOUNT_UNSCALED: i128 = 10i128.pow(crate::schema::AMOUNT_PRECISION as u32) - 1;

/// A timestamp may be at most this far ahead of the run's clock (clock skew allowance).
pub const MAX_FUTURE_MICROS: i64 = 24 * 3600 * 1_000_000;

/// The bounds a timestamp must lie in, fixed once per run: a rerun that completes a run
/// reuses them (they are recorded in its commit), so it decides exactly as the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The run's reference instant (µs since the epoch): "now" for the future rule.
    pub reference_us: i64,
    /// The first valid instant (µs): midnight UTC of the floor day.
    pub floor_us: i64,
    /// The first instant of the first day not final yet (µs; `i64::MIN` without a
    /// watermark): rows before it are late beyond the watermark.
    pub open_from_us: i64,
}

impl Limits {
    /// Limits for a run at `reference` with rows before `floor` (a UTC day) too old.
    pub fn new(reference: chrono::DateTime<chrono::Utc>, floor: chrono::NaiveDate) -> Self {
        Limits {
            reference_us: reference.timestamp_micros(),
            floor_us: floor
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_micros(),
            open_from_us: i64::MIN,
        }
    }

    /// With a watermark: rows before `open_from_us` are final and late.
    pub fn with_open_from(mut self, open_from_us: Option<i64>) -> Self {
        self.open_from_us = open_from_us.unwrap_or(i64::MIN);
        self
    }

    /// Only the future rule, at `reference` (the generator tells its clean rows this way).
    pub fn no_floor(reference: chrono::DateTime<chrono::Utc>) -> Self {
        Limits {
            reference_us: reference.timestamp_micros(),
            floor_us: i64::MIN,
            open_from_us: i64::MIN,
        }
    }

    fn latest_us(self) -> i64 {
        self.reference_us.saturating_add(MAX_FUTURE_MICROS)
    }
}

/// Result of checking a batch: per row, the first broken rule (if any) and the parsed id
/// (meaningful only for rows without a reason).
pub struct Checked {
    /// The first broken rule of each row.
    pub reasons: Vec<Option<Reason>>,
    /// Each row's parsed id (meaningful only for rows without a reason).
    pub ids: Vec<u128>,
}

/// Parse canonical UUID text (36 chars, hyphenated, either case) to its 128-bit value.
pub fn parse_uuid(s: &str) -> Option<u128> {
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(s).ok().map(|u| u.as_u128())
}

/// The quarantine reason of a Kafka message that cannot be read as a transaction (not JSON, a
/// field of the wrong type, a time or amount that cannot be read): no rule could judge it.
pub const UNPARSEABLE_MESSAGE: &str = "unparseable_message";

/// Check every row of a batch whose first columns are `RAW_LENIENT`'s (see `ingest::normalize`).
pub fn check(batch: &RecordBatch, limits: Limits) -> Checked {
    let n = batch.num_rows();
    let id = batch.column(0).as_string::<i32>();
    let customer = batch.column(1).as_primitive::<Int64Type>();
    let merchant = batch.column(2).as_primitive::<Int64Type>();
    let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
    let amount: &Decimal128Array = batch.column(4).as_primitive();
    let category = batch.column(5).as_string::<i32>();
    let channel = batch.column(6).as_string::<i32>();
    let status = batch.column(7).as_string::<i32>();
    let (latest, floor, open_from) = (limits.latest_us(), limits.floor_us, limits.open_from_us);

    let mut reasons = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (reason, parsed) = check_row(
            i, id, customer, merchant, ts, amount, category, channel, status, latest, floor,
            open_from,
        );
        reasons.push(reason);
        ids.push(parsed);
    }
    Checked { reasons, ids }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn check_row(
    i: usize,
    id: &StringArray,
    customer: &Int64Array,
    merchant: &Int64Array,
    ts: &TimestampMicrosecondArray,
    amount: &Decimal128Array,
    category: &StringArray,
    channel: &StringArray,
    status: &StringArray,
    ts_latest: i64,
    ts_floor: i64,
    ts_open_from: i64,
) -> (Option<Reason>, u128) {
    use Reason::*;
    if id.is_null(i) {
        return (Some(TransactionIdNull), 0);
    }
    let Some(parsed) = parse_uuid(id.value(i)) else {
        return (Some(TransactionIdNotUuid), 0);
    };
    let reason = if customer.is_null(i) {
        Some(CustomerIdNull)
    } else if customer.value(i) <= 0 {
        Some(CustomerIdNotPositive)
    } else if merchant.is_null(i) {
        Some(MerchantIdNull)
    } else if merchant.value(i) <= 0 {
        Some(MerchantIdNotPositive)
    } else if ts.is_null(i) {
        Some(TransactionTsNull)
    } else if ts.value(i) > ts_latest {
        Some(TransactionTsInFuture)
    } else if ts.value(i) < ts_floor {
        Some(TransactionTsTooOld)
    } else if ts.value(i) < ts_open_from {
        Some(LateBeyondWatermark)
    } else if amount.is_null(i) {
        Some(AmountNull)
    } else if amount.value(i) <= 0 {
        Some(AmountNotPositive)
    } else if amount.value(i) > MAX_AMOUNT_UNSCALED {
        Some(AmountOutOfRange)
    } else if category.is_null(i) || !CATEGORIES.contains(&category.value(i)) {
        Some(CategoryUnknown)
    } else if channel.is_null(i) || !CHANNELS.contains(&channel.value(i)) {
        Some(ChannelUnknown)
    } else if status.is_null(i) || !STATUSES.contains(&status.value(i)) {
        Some(StatusUnknown)
    } else {
        None
    };
    (reason, parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RAW_LENIENT;
    use deltalake::arrow::array::ArrayRef;
    use std::sync::Arc;

    const NOW: i64 = 1_700_000_000_000_000;
    /// 2000-01-01T00:00:00Z
    const FLOOR: i64 = 946_684_800_000_000;

    fn limits() -> Limits {
        Limits {
            reference_us: NOW,
            floor_us: FLOOR,
            open_from_us: i64::MIN,
        }
    }
    const GOOD_ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    struct Row {
        id: Option<&'static str>,
        customer: Option<i64>,
        merchant: Option<i64>,
        ts: Option<i64>,
        amount: Option<i128>,
        category: Option<&'static str>,
        channel: Option<&'static str>,
        status: Option<&'static str>,
    }

    fn good() -> Row {
        Row {
            id: Some(GOOD_ID),
            customer: Some(7),
            merchant: Some(3),
            ts: Some(NOW - 1000),
            amount: Some(1234),
            category: Some("grocery"),
            channel: Some("online"),
            status: Some("approved"),
        }
    }

    fn check_one(r: Row) -> Option<Reason> {
        check_batch_one(r, limits())
    }

    fn check_batch_one(r: Row, limits: Limits) -> Option<Reason> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![r.id])),
            Arc::new(Int64Array::from(vec![r.customer])),
            Arc::new(Int64Array::from(vec![r.merchant])),
            Arc::new(TimestampMicrosecondArray::from(vec![r.ts]).with_timezone("UTC")),
            Arc::new(
                Decimal128Array::from(vec![r.amount])
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from(vec![r.category])),
            Arc::new(StringArray::from(vec![r.channel])),
            Arc::new(StringArray::from(vec![r.status])),
        ];
        let batch = RecordBatch::try_new(RAW_LENIENT.clone(), cols).unwrap();
        let c = check(&batch, limits);
        if c.reasons[0].is_none() {
            assert_eq!(c.ids[0], uuid::Uuid::parse_str(GOOD_ID).unwrap().as_u128());
        }
        c.reasons[0]
    }

    #[test]
    fn a_good_row_passes() {
        assert_eq!(check_one(good()), None);
        // Exactly at the allowed skew is still fine; declined is a valid status.
        let r = Row {
            ts: Some(NOW + MAX_FUTURE_MICROS),
            status: Some("declined"),
            ..good()
        };
        assert_eq!(check_one(r), None);
    }

    #[test]
    fn each_rule_rejects_with_its_reason() {
        use Reason::*;
        let cases: Vec<(Row, Reason)> = vec![
            (Row { id: None, ..good() }, TransactionIdNull),
            (
                Row {
                    id: Some("not-a-uuid"),
                    ..good()
                },
                TransactionIdNotUuid,
            ),
            (
                Row {
                    id: Some("67e5504410b1426f9247bb680e5fe0c8"),
                    ..good()
                },
                TransactionIdNotUuid,
            ),
            (
                Row {
                    customer: None,
                    ..good()
                },
                CustomerIdNull,
            ),
            (
                Row {
                    customer: Some(0),
                    ..good()
                },
                CustomerIdNotPositive,
            ),
            (
                Row {
                    customer: Some(-4),
                    ..good()
                },
                CustomerIdNotPositive,
            ),
            (
                Row {
                    merchant: None,
                    ..good()
                },
                MerchantIdNull,
            ),
            (
                Row {
                    merchant: Some(0),
                    ..good()
                },
                MerchantIdNotPositive,
            ),
            (Row { ts: None, ..good() }, TransactionTsNull),
            (
                Row {
                    ts: Some(NOW + MAX_FUTURE_MICROS + 1),
                    ..good()
                },
                TransactionTsInFuture,
            ),
            (
                Row {
                    ts: Some(FLOOR - 1),
                    ..good()
                },
                TransactionTsTooOld,
            ),
            (
                Row {
                    // 1969-12-31: before the epoch, and before the floor.
                    ts: Some(-1),
                    ..good()
                },
                TransactionTsTooOld,
            ),
            (
                Row {
                    amount: None,
                    ..good()
                },
                AmountNull,
            ),
            (
                Row {
                    amount: Some(0),
                    ..good()
                },
                AmountNotPositive,
            ),
            (
                Row {
                    amount: Some(-1),
                    ..good()
                },
                AmountNotPositive,
            ),
            (
                Row {
                    amount: Some(MAX_AMOUNT_UNSCALED + 1),
                    ..good()
                },
                AmountOutOfRange,
            ),
            (
                Row {
                    // 6e15 in units: what an INT64 decimal(12, 2) column can hold.
                    amount: Some(600_000_000_000_000_000),
                    ..good()
                },
                AmountOutOfRange,
            ),
            (
                Row {
                    category: Some("weapons"),
                    ..good()
                },
                CategoryUnknown,
            ),
            (
                Row {
                    category: None,
                    ..good()
                },
                CategoryUnknown,
            ),
            (
                Row {
                    channel: Some("fax"),
                    ..good()
                },
                ChannelUnknown,
            ),
            (
                Row {
                    status: Some("pending"),
                    ..good()
                },
                StatusUnknown,
            ),
            (
                Row {
                    status: Some("APPROVED"),
                    ..good()
                },
                StatusUnknown,
            ),
            (
                Row {
                    status: None,
                    ..good()
                },
                StatusUnknown,
            ),
        ];
        for (row, want) in cases {
            assert_eq!(check_one(row), Some(want), "expected {want:?}");
        }
    }

    #[test]
    fn the_floor_is_inclusive_and_configurable() {
        let at_floor = Row {
            ts: Some(FLOOR),
            ..good()
        };
        assert_eq!(check_one(at_floor), None);
        let d = |s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let l = Limits::new(chrono::Utc::now(), d("1900-01-01"));
        assert_eq!(l.floor_us, -2_208_988_800_000_000);
    }

    #[test]
    fn rows_before_the_watermark_are_late_and_the_floor_still_wins() {
        let open_from = NOW - 86_400_000_000;
        let check = |ts| {
            let l = limits().with_open_from(Some(open_from));
            let r = Row {
                ts: Some(ts),
                ..good()
            };
            check_batch_one(r, l)
        };
        assert_eq!(check(open_from), None);
        assert_eq!(check(open_from - 1), Some(Reason::LateBeyondWatermark));
        assert_eq!(check(FLOOR - 1), Some(Reason::TransactionTsTooOld));
        let without = Row {
            ts: Some(FLOOR),
            ..good()
        };
        assert_eq!(
            check_batch_one(without, limits().with_open_from(None)),
            None
        );
    }

    #[test]
    fn first_broken_rule_wins() {
        let r = Row {
            customer: Some(0),
            amount: Some(-5),
            status: Some("x"),
            ..good()
        };
        assert_eq!(check_one(r), Some(Reason::CustomerIdNotPositive));
    }

    #[test]
    fn uuid_case_does_not_matter() {
        assert_eq!(parse_uuid(GOOD_ID), parse_uuid(&GOOD_ID.to_uppercase()));
    }
}
