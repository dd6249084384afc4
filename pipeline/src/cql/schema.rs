//! The serving schema: `scylla/schema.cql`, compiled in, so the code creates exactly what it
//! says; and the check that an existing serving table has the columns we write.

use std::collections::BTreeSet;

use scylla::client::session::Session;

use super::ScyllaOptions;
use crate::error::{Error, Result};

/// The schema file.
pub const SCHEMA_CQL: &str = include_str!("../../../scylla/schema.cql");
/// The serving table of the daily aggregates.
pub const TABLE: &str = "customer_daily_aggregates";
/// The serving table of the customer profiles.
pub const PROFILES_TABLE: &str = "customer_profiles";
/// The load state table (see `load::claim::state`).
pub const STATE_TABLE: &str = "pipeline_load_state";
/// The keyspace the schema file names.
pub const DEFAULT_KEYSPACE: &str = "analytics";
/// The replication the schema file gives it.
pub const DEFAULT_REPLICATION: &str =
    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";

/// The columns the serving table must have: (name, CQL type, kind).
pub const EXPECTED_COLUMNS: &[(&str, &str, &str)] = &[
    ("customer_id", "bigint", "partition_key"),
    ("transaction_date", "date", "clustering"),
    ("total_amount", "decimal", "regular"),
    ("transaction_count", "bigint", "regular"),
    ("declined_count", "bigint", "regular"),
    ("min_amount", "decimal", "regular"),
    ("max_amount", "decimal", "regular"),
];

/// The columns the profiles serving table must have.
pub const EXPECTED_PROFILE_COLUMNS: &[(&str, &str, &str)] = &[
    ("customer_id", "bigint", "partition_key"),
    ("as_of_day", "date", "regular"),
    ("lifetime_total", "decimal", "regular"),
    ("lifetime_count", "bigint", "regular"),
    ("declined_count", "bigint", "regular"),
    ("decline_rate", "double", "regular"),
    ("first_active_day", "date", "regular"),
    ("last_active_day", "date", "regular"),
    ("active_days", "bigint", "regular"),
    ("average_ticket", "decimal", "regular"),
    ("total_last_7d", "decimal", "regular"),
    ("total_last_30d", "decimal", "regular"),
    ("ewm_daily_spend", "decimal", "regular"),
    ("spend_forecast_30d", "decimal", "regular"),
];

/// The schema statements for `keyspace` with `replication`, from [`SCHEMA_CQL`].
pub fn statements(keyspace: &str, replication: &str) -> Vec<String> {
    let text: String = SCHEMA_CQL
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("CREATE KEYSPACE") {
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}")
            } else {
                s.replace(&format!("{DEFAULT_KEYSPACE}."), &format!("{keyspace}."))
            }
        })
        .collect()
}

/// Create the keyspace and tables if missing, and check that the serving table has the
/// columns we write (an existing table with another schema is an error, not a silent mess).
pub async fn init(session: &Session, o: &ScyllaOptions) -> Result<()> {
    for stmt in statements(&o.keyspace, &o.replication) {
        session
            .query_unpaged(stmt.as_str(), &())
            .await
            .map_err(|e| {
                Error::scylla(format!("creating the schema ({})", first_words(&stmt)), e)
            })?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::scylla("waiting for schema agreement", e))?;
    for (table, want) in [
        (TABLE, EXPECTED_COLUMNS),
        (PROFILES_TABLE, EXPECTED_PROFILE_COLUMNS),
    ] {
        check_columns(session, &o.keyspace, table, want).await?;
    }
    Ok(())
}

/// An existing serving table with another schema is an error, not a silent mess.
async fn check_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
    want: &[(&str, &str, &str)],
) -> Result<()> {
    let what = format!("reading the schema of {keyspace}.{table}");
    let rows = session
        .query_unpaged(
            "SELECT column_name, type, kind FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let found: BTreeSet<(String, String, String)> = rows
        .rows::<(String, String, String)>()
        .map_err(|e| Error::scylla(what.clone(), e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::scylla(what.clone(), e))?;
    let want: BTreeSet<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    if found != want {
        let show = |s: &BTreeSet<(String, String, String)>| {
            s.iter()
                .map(|(n, t, k)| format!("{n} {t} ({k})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::Invalid(format!(
            "table {keyspace}.{table} exists with a different schema: it has [{}], expected \
             [{}]. Drop it or choose another keyspace with --keyspace",
            show(&found),
            show(&want)
        )));
    }
    Ok(())
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_is_what_the_code_runs() {
        let stmts = statements(DEFAULT_KEYSPACE, DEFAULT_REPLICATION);
        assert_eq!(stmts.len(), 4, "{stmts:#?}");
        assert_eq!(
            stmts[0],
            "CREATE KEYSPACE IF NOT EXISTS analytics WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
        // Every expected column appears in the table DDL with its type.
        for (name, ty, _) in EXPECTED_COLUMNS {
            assert!(
                stmts[1].contains(&format!("{name} {ty}")),
                "{name} in {}",
                stmts[1]
            );
        }
        assert!(stmts[1].contains("PRIMARY KEY ((customer_id), transaction_date)"));
        assert!(stmts[1].contains("CLUSTERING ORDER BY (transaction_date DESC)"));
        let other = statements(
            "ks2",
            "{'class': 'SimpleStrategy', 'replication_factor': 3}",
        );
        assert!(other[1].starts_with("CREATE TABLE IF NOT EXISTS ks2.customer_daily_aggregates"));
        assert!(other[2].starts_with("CREATE TABLE IF NOT EXISTS ks2.customer_profiles"));
        for (name, ty, _) in EXPECTED_PROFILE_COLUMNS {
            assert!(
                other[2].contains(&format!("{name} {ty}")),
                "{name} in {}",
                other[2]
            );
        }
        assert!(other[3].contains("ks2.pipeline_load_state"));
        assert!(other.iter().all(|s| !s.contains("analytics")));
    }
}
