//! Every CQL statement on the serving tables (`customer_daily_aggregates`,
//! `customer_profiles`), in one place beside the schema they must match
//! ([`super::schema`], `scylla/schema.cql`). The load state table's statements are with the
//! protocol that writes them (`load::claim::state`).

use super::profile;
use super::schema::{PROFILES_TABLE, TABLE};

/// The aggregates' columns, in the order every statement below uses.
const AGGREGATE_COLUMNS: &str = "customer_id, transaction_date, total_amount, transaction_count, \
     declined_count, min_amount, max_amount";

/// Upsert an aggregate row at a given write timestamp (the last bind value).
pub fn upsert_aggregate(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.{TABLE} ({AGGREGATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) \
         USING TIMESTAMP ?"
    )
}

/// Delete one day of a customer at a given write timestamp.
pub fn delete_aggregate_row(keyspace: &str) -> String {
    format!(
        "DELETE FROM {keyspace}.{TABLE} USING TIMESTAMP ? WHERE customer_id = ? AND transaction_date = ?"
    )
}

/// Delete every day of a customer written before a given timestamp.
pub fn delete_aggregate_partition(keyspace: &str) -> String {
    format!("DELETE FROM {keyspace}.{TABLE} USING TIMESTAMP ? WHERE customer_id = ?")
}

/// Upsert a profile at a given write timestamp (the last bind value).
pub fn upsert_profile(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.{PROFILES_TABLE} ({}) VALUES \
         (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        profile::COLUMNS
    )
}

/// Delete a profile at a given write timestamp.
pub fn delete_profile(keyspace: &str) -> String {
    format!("DELETE FROM {keyspace}.{PROFILES_TABLE} USING TIMESTAMP ? WHERE customer_id = ?")
}

/// Every customer served in `table` (`TABLE` or `PROFILES_TABLE`), once each: the
/// aggregates' partition keys (`DISTINCT`: one per partition, not per row), the profiles' rows.
pub fn customers(keyspace: &str, table: &str) -> String {
    if table == TABLE {
        format!("SELECT DISTINCT customer_id FROM {keyspace}.{TABLE}")
    } else {
        format!("SELECT customer_id FROM {keyspace}.{table}")
    }
}

/// Any one row of `table` (whether it is empty).
pub fn any_row(keyspace: &str, table: &str) -> String {
    format!("SELECT customer_id FROM {keyspace}.{table} LIMIT 1")
}

/// A customer's days, in date order (`lookup`); range bounds may be appended.
pub fn customer_days(keyspace: &str) -> String {
    format!(
        "SELECT transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount \
         FROM {keyspace}.{TABLE} WHERE customer_id = ?"
    )
}

/// A customer's profile (`lookup`).
pub fn customer_profile(keyspace: &str) -> String {
    format!(
        "SELECT {} FROM {keyspace}.{PROFILES_TABLE} WHERE customer_id = ?",
        profile::COLUMNS
    )
}

/// Every aggregate row (`verify`).
pub fn all_aggregates(keyspace: &str) -> String {
    format!("SELECT {AGGREGATE_COLUMNS} FROM {keyspace}.{TABLE}")
}

/// Every profile (`verify`).
pub fn all_profiles(keyspace: &str) -> String {
    format!(
        "SELECT {} FROM {keyspace}.{PROFILES_TABLE}",
        profile::COLUMNS
    )
}
