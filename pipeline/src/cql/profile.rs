//! Profile rows between Delta (Arrow batches of `customer_profiles`) and CQL values: exact
//! decimals at their Delta scale, days through [`crate::dates`], and a fingerprint of every
//! column for `verify`.

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Date32Type, Decimal128Type, Float64Type, Int64Type};
use scylla::value::{CqlDate, CqlDecimal};
use serde::Serialize;

use super::codec::{cql_date, decimal, decimal_scaled, scaled};
use crate::dates::{self, Day};
use crate::error::{Error, Result};

/// Decimal places of `ewm_daily_spend` (see [`crate::schema::PROFILES`]).
pub const EWM_SCALE: i32 = 14;

/// The serving table's columns, in the order of [`ProfileValues`].
pub const COLUMNS: &str = "customer_id, as_of_day, lifetime_total, lifetime_count, \
    declined_count, decline_rate, first_active_day, last_active_day, active_days, \
    average_ticket, total_last_7d, total_last_30d, ewm_daily_spend, spend_forecast_30d";

/// One customer's profile; amounts in cents except `ewm_daily_spend` (scale 14).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRow {
    /// The customer.
    pub customer_id: i64,
    /// The latest day in the aggregates.
    pub as_of_day: Day,
    /// Approved total, cents.
    pub lifetime_total: i128,
    /// Approved transactions.
    pub lifetime_count: i64,
    /// Declined transactions.
    pub declined_count: i64,
    /// Declined / all transactions.
    pub decline_rate: f64,
    /// First day with a transaction.
    pub first_active_day: Day,
    /// Last day with a transaction.
    pub last_active_day: Day,
    /// Days with a transaction.
    pub active_days: i64,
    /// Approved total / count, cents (None without approved ones).
    pub average_ticket: Option<i128>,
    /// Approved total of the 7 days to `as_of_day`, cents.
    pub total_last_7d: i128,
    /// Approved total of the 30 days to `as_of_day`, cents.
    pub total_last_30d: i128,
    /// Weighted daily mean of approved spend, scale 14.
    pub ewm_daily_spend: i128,
    /// 30 x `ewm_daily_spend`, cents.
    pub spend_forecast_30d: i128,
}

/// A profile's CQL values in [`COLUMNS`] order.
pub type ProfileValues = (
    i64,
    CqlDate,
    CqlDecimal,
    i64,
    i64,
    f64,
    CqlDate,
    CqlDate,
    i64,
    Option<CqlDecimal>,
    CqlDecimal,
    CqlDecimal,
    CqlDecimal,
    CqlDecimal,
);

impl ProfileRow {
    /// The row as CQL values.
    pub fn values(&self) -> Result<ProfileValues> {
        Ok((
            self.customer_id,
            cql_date(self.as_of_day)?,
            decimal(self.lifetime_total),
            self.lifetime_count,
            self.declined_count,
            self.decline_rate,
            cql_date(self.first_active_day)?,
            cql_date(self.last_active_day)?,
            self.active_days,
            self.average_ticket.map(decimal),
            decimal(self.total_last_7d),
            decimal(self.total_last_30d),
            decimal_scaled(self.ewm_daily_spend, EWM_SCALE),
            decimal(self.spend_forecast_30d),
        ))
    }

    /// The row of CQL values read back; the error says which value cannot be ours.
    pub fn from_values(v: ProfileValues) -> std::result::Result<Self, String> {
        let money = |x: &CqlDecimal| {
            scaled(x, 2).ok_or_else(|| format!("amount {x:?} is not representable in cents"))
        };
        let day = |d: CqlDate| dates::from_cql(d).ok_or_else(|| format!("date {d:?} out of range"));
        Ok(ProfileRow {
            customer_id: v.0,
            as_of_day: day(v.1)?,
            lifetime_total: money(&v.2)?,
            lifetime_count: v.3,
            declined_count: v.4,
            decline_rate: v.5,
            first_active_day: day(v.6)?,
            last_active_day: day(v.7)?,
            active_days: v.8,
            average_ticket: v.9.as_ref().map(money).transpose()?,
            total_last_7d: money(&v.10)?,
            total_last_30d: money(&v.11)?,
            ewm_daily_spend: scaled(&v.12, EWM_SCALE)
                .ok_or_else(|| format!("ewm_daily_spend {:?} does not fit scale 14", v.12))?,
            spend_forecast_30d: money(&v.13)?,
        })
    }

    /// An order-independent fingerprint of every value, summed by `verify`.
    pub fn fingerprint(&self) -> u64 {
        let mut h = 0x51_7CC1_B727_220Au64;
        let mut mix = |v: u64| {
            h ^= v;
            h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 31;
        };
        let mut wide = |v: i128| {
            mix(v as u64);
            mix((v >> 64) as u64);
        };
        wide(self.lifetime_total);
        wide(self.average_ticket.unwrap_or(i128::MIN));
        wide(self.total_last_7d);
        wide(self.total_last_30d);
        wide(self.ewm_daily_spend);
        wide(self.spend_forecast_30d);
        for v in [
            self.customer_id,
            i64::from(self.as_of_day),
            self.lifetime_count,
            self.declined_count,
            self.decline_rate.to_bits() as i64,
            i64::from(self.first_active_day),
            i64::from(self.last_active_day),
            self.active_days,
        ] {
            mix(v as u64);
        }
        h
    }

    /// The rows of a batch with the columns of `customer_profiles` (by name).
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ProfileRow>> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("customer_profiles rows lack column {name}")))
        };
        let i64s = |name: &str| Ok::<_, Error>(col(name)?.as_primitive::<Int64Type>().clone());
        let decs = |name: &str| Ok::<_, Error>(col(name)?.as_primitive::<Decimal128Type>().clone());
        let days = |name: &str| Ok::<_, Error>(col(name)?.as_primitive::<Date32Type>().clone());
        let (cust, as_of, total) = (
            i64s("customer_id")?,
            days("as_of_day")?,
            decs("lifetime_total")?,
        );
        let (count, declined) = (i64s("lifetime_count")?, i64s("declined_count")?);
        let rate = col("decline_rate")?.as_primitive::<Float64Type>().clone();
        let (first, last, active) = (
            days("first_active_day")?,
            days("last_active_day")?,
            i64s("active_days")?,
        );
        let (ticket, t7, t30) = (
            decs("average_ticket")?,
            decs("total_last_7d")?,
            decs("total_last_30d")?,
        );
        let (ewm, forecast) = (decs("ewm_daily_spend")?, decs("spend_forecast_30d")?);
        Ok((0..batch.num_rows())
            .map(|i| ProfileRow {
                customer_id: cust.value(i),
                as_of_day: as_of.value(i),
                lifetime_total: total.value(i),
                lifetime_count: count.value(i),
                declined_count: declined.value(i),
                decline_rate: rate.value(i),
                first_active_day: first.value(i),
                last_active_day: last.value(i),
                active_days: active.value(i),
                average_ticket: ticket.is_valid(i).then(|| ticket.value(i)),
                total_last_7d: t7.value(i),
                total_last_30d: t30.value(i),
                ewm_daily_spend: ewm.value(i),
                spend_forecast_30d: forecast.value(i),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_round_trips_through_cql_values() {
        let row = ProfileRow {
            customer_id: 42,
            as_of_day: 20_000,
            lifetime_total: 123_456,
            lifetime_count: 7,
            declined_count: 1,
            decline_rate: 0.125,
            first_active_day: 19_000,
            last_active_day: 20_000,
            active_days: 5,
            average_ticket: None,
            total_last_7d: -5,
            total_last_30d: 99,
            ewm_daily_spend: 12_345_678_901_234_567_890,
            spend_forecast_30d: 370_370,
        };
        let back = ProfileRow::from_values(row.values().unwrap()).unwrap();
        assert_eq!(back, row);
        let other = ProfileRow {
            ewm_daily_spend: row.ewm_daily_spend + 1,
            ..row.clone()
        };
        assert_ne!(other.fingerprint(), row.fingerprint());
    }
}
