//! Aggregate rows between Delta (Arrow batches) and CQL values: exact decimals in cents,
//! days through [`crate::dates`], and a fingerprint of every column for `verify`.

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Decimal128Type, Int64Type};
use futures::{StreamExt, TryStreamExt};
use scylla::value::{CqlDate, CqlDecimal};
use serde::Serialize;

use crate::dates::{self, Day};
use crate::delta::{self, DataFile};
use crate::error::{Error, Result};
use crate::tables::Table;

/// One row of the aggregates table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggRow {
    /// The customer.
    pub customer_id: i64,
    /// The day.
    pub day: Day,
    /// Cents (scale 2).
    pub total_amount: i128,
    /// Approved transactions.
    pub transaction_count: i64,
    /// Declined transactions.
    pub declined_count: i64,
    /// Smallest approved amount, cents.
    pub min_amount: Option<i128>,
    /// Largest approved amount, cents.
    pub max_amount: Option<i128>,
}

/// A CQL decimal of `cents` (scale 2).
pub fn decimal(cents: i128) -> CqlDecimal {
    decimal_scaled(cents, 2)
}

/// A CQL decimal of the unscaled value `v` with `scale` decimal places.
pub fn decimal_scaled(v: i128, scale: i32) -> CqlDecimal {
    let b = v.to_be_bytes();
    // Minimal two's complement, as CQL varints are written.
    let mut start = 0;
    while start < 15
        && ((b[start] == 0 && b[start + 1] & 0x80 == 0)
            || (b[start] == 0xFF && b[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&b[start..], scale)
}

/// The cents of a CQL decimal, if it has at most two decimal places and fits.
pub fn cents(d: &CqlDecimal) -> Option<i128> {
    scaled(d, 2)
}

/// The unscaled value of a CQL decimal at `want` decimal places, if exact and it fits.
pub fn scaled(d: &CqlDecimal, want: i32) -> Option<i128> {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let mut buf = if bytes[0] & 0x80 != 0 {
        [0xFF; 16]
    } else {
        [0; 16]
    };
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let v = i128::from_be_bytes(buf);
    match scale {
        s if s == want => Some(v),
        s if s < want => v.checked_mul(10i128.checked_pow((want - s) as u32)?),
        s => {
            let div = 10i128.checked_pow((s - want) as u32)?;
            (v % div == 0).then_some(v / div)
        }
    }
}

/// `-0.05`, `1234.56`
pub fn format_cents(c: i128) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// The CQL date of a day, or an error naming it (a day CQL or chrono cannot represent).
pub fn cql_date(day: Day) -> Result<CqlDate> {
    dates::to_cql(day).ok_or_else(|| {
        Error::Invalid(format!(
            "day {} cannot be represented as a CQL date",
            dates::format(day)
        ))
    })
}

/// A serving row's columns in table order: what load writes and verify reads back.
pub type RowValues = (
    i64,
    CqlDate,
    CqlDecimal,
    i64,
    i64,
    Option<CqlDecimal>,
    Option<CqlDecimal>,
);

impl AggRow {
    /// The row as CQL values.
    pub fn values(&self) -> Result<RowValues> {
        Ok((
            self.customer_id,
            cql_date(self.day)?,
            decimal(self.total_amount),
            self.transaction_count,
            self.declined_count,
            self.min_amount.map(decimal),
            self.max_amount.map(decimal),
        ))
    }

    /// The row of CQL values read back; the error says which value cannot be ours.
    pub fn from_values(v: RowValues) -> std::result::Result<Self, String> {
        let (customer_id, d, total, n, declined, min, max) = v;
        let money = |x: &CqlDecimal| {
            cents(x).ok_or_else(|| format!("amount {x:?} is not representable in cents"))
        };
        Ok(AggRow {
            customer_id,
            day: dates::from_cql(d).ok_or_else(|| format!("date {d:?} out of range"))?,
            total_amount: money(&total)?,
            transaction_count: n,
            declined_count: declined,
            min_amount: min.as_ref().map(money).transpose()?,
            max_amount: max.as_ref().map(money).transpose()?,
        })
    }

    /// An order-independent fingerprint of the row's values, summed per day by `verify`.
    pub fn fingerprint(&self) -> u64 {
        let mut h = 0x9E37_79B9_7F4A_7C15u64;
        let mut mix = |v: u64| {
            h ^= v;
            h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 31;
        };
        mix(self.customer_id as u64);
        mix(self.day as u64);
        mix(self.total_amount as u64);
        mix((self.total_amount >> 64) as u64);
        mix(self.transaction_count as u64);
        mix(self.declined_count as u64);
        for m in [self.min_amount, self.max_amount] {
            mix(m.map_or(u64::MAX, |v| v as u64));
        }
        h
    }
}

/// The rows of one aggregates data file batch (its day comes from the partition value).
fn rows_of(batch: &RecordBatch, day: Day) -> Result<Vec<AggRow>> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Invalid(format!("aggregates file lacks column {name}")))
    };
    let cust = col("customer_id")?.as_primitive::<Int64Type>().clone();
    let total = col("total_amount")?
        .as_primitive::<Decimal128Type>()
        .clone();
    let count = col("transaction_count")?
        .as_primitive::<Int64Type>()
        .clone();
    let declined = col("declined_count")?.as_primitive::<Int64Type>().clone();
    let min = col("min_amount")?.as_primitive::<Decimal128Type>().clone();
    let max = col("max_amount")?.as_primitive::<Decimal128Type>().clone();
    Ok((0..batch.num_rows())
        .map(|i| AggRow {
            customer_id: cust.value(i),
            day,
            total_amount: total.value(i),
            transaction_count: count.value(i),
            declined_count: declined.value(i),
            min_amount: min.is_valid(i).then(|| min.value(i)),
            max_amount: max.is_valid(i).then(|| max.value(i)),
        })
        .collect())
}

/// The day of an aggregates file, which every such file has.
pub fn day(f: &DataFile) -> Result<Day> {
    f.day.ok_or_else(|| {
        Error::Invalid(format!(
            "{} file {} has no transaction_date partition value",
            Table::Aggregates,
            f.path
        ))
    })
}

/// Stream one aggregates file's rows in batches.
pub fn file_rows(
    table: &DeltaTable,
    file: &DataFile,
) -> impl futures::Stream<Item = Result<Vec<AggRow>>> + Send + 'static {
    let store = table.object_store();
    let (path, day) = (file.path.clone(), file.day);
    futures::stream::once(async move {
        let day = day.ok_or_else(|| {
            Error::Invalid(format!("aggregates file {path} has no transaction_date"))
        })?;
        let names = [
            "customer_id",
            "total_amount",
            "transaction_count",
            "declined_count",
            "min_amount",
            "max_amount",
        ];
        let stream = delta::read::columns(store, &path, &names).await?;
        Ok::<_, Error>(stream.map(move |b| rows_of(&b?, day)))
    })
    .try_flatten()
}

/// Stream one aggregates file's customer ids.
pub fn file_customers(
    table: &DeltaTable,
    file: &DataFile,
) -> impl futures::Stream<Item = Result<Vec<i64>>> + Send + 'static {
    let store = table.object_store();
    let path = file.path.clone();
    futures::stream::once(async move {
        let stream = delta::read::columns(store, &path, &["customer_id"]).await?;
        Ok::<_, Error>(stream.map(|b| {
            let b = b?;
            Ok(b.column(0).as_primitive::<Int64Type>().values().to_vec())
        }))
    })
    .try_flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_in_cents() {
        for c in [
            0i128,
            1,
            -1,
            127,
            128,
            -129,
            1_234_567_890_123,
            -99_999_999_999_999_999,
        ] {
            assert_eq!(cents(&decimal(c)), Some(c), "{c}");
        }
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(123_456), "1234.56");
        assert_eq!(
            cents(&CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                &[15],
                1
            )),
            Some(150)
        );
    }

    #[test]
    fn days_before_1970_become_cql_dates() {
        assert!(cql_date(-1).is_ok());
        assert!(cql_date(i32::MAX).is_err());
    }
}
