//! Clients we did not write read what the pipeline served: the Python driver (PyPI
//! `scylla-driver`) reads the serving tables back and they must equal the Delta tables row for
//! row (exact decimals, dates, nulls); `cqlsh` (PyPI `cqlsh`, and `scylla-cqlsh`) describes
//! the keyspace. This also tests the stand-in against clients whose handshake and schema
//! queries differ from the Rust driver's. `make test` installs them into `target/*-venv`;
//! without them these tests say SKIPPED loudly and pass.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::aggregate::{Agg, table};
use crate::common::Data;
use crate::profiles::{Profile, Profiles, profiles_table};
use crate::scylla::Cql;

pub(crate) fn venv_bin(venv: &str, bin: &str, why: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(venv)
        .join("bin")
        .join(bin);
    if p.exists() {
        return Some(p);
    }
    eprintln!(
        "\n*** SKIPPED: {} is not installed (`make test` installs it with `make cql-clients` when \
         it can): {why} was NOT tested ***\n",
        p.display()
    );
    None
}

/// Read both serving tables with the Python driver: every value as exact text.
const READ_BACK: &str = r#"
import json, sys
from cassandra.cluster import Cluster
from cassandra.policies import RoundRobinPolicy
host, port, ks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = Cluster([host], port=port, compression=False, load_balancing_policy=RoundRobinPolicy())
s = c.connect()
txt = lambda d: None if d is None else format(d, "f")
day = lambda d: None if d is None else str(d)
out = {"aggregates": [], "profiles": []}
for r in s.execute(f"SELECT customer_id, transaction_date, total_amount, transaction_count, "
                   f"declined_count, min_amount, max_amount FROM {ks}.customer_daily_aggregates"):
    out["aggregates"].append([r.customer_id, day(r.transaction_date), txt(r.total_amount),
                              r.transaction_count, r.declined_count, txt(r.min_amount), txt(r.max_amount)])
for r in s.execute(f"SELECT * FROM {ks}.customer_profiles"):
    out["profiles"].append([r.customer_id, day(r.as_of_day), txt(r.lifetime_total), r.lifetime_count,
                            r.declined_count, repr(r.decline_rate), day(r.first_active_day), day(r.last_active_day),
                            r.active_days, txt(r.average_ticket), txt(r.total_last_7d), txt(r.total_last_30d),
                            txt(r.ewm_daily_spend), txt(r.spend_forecast_30d)])
meta = c.metadata.keyspaces[ks]
out["tables"] = sorted(meta.tables)
c.shutdown()
print(json.dumps(out))
"#;

/// `text` (a decimal written out, e.g. `6805.95`) as an unscaled integer at `scale`.
fn unscaled(text: &Value, scale: u32) -> i128 {
    let s = text.as_str().unwrap_or_else(|| panic!("a decimal: {text}"));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        frac.len() <= scale as usize,
        "{s}: more than {scale} decimals"
    );
    let padded = format!("{int}{frac:0<width$}", width = scale as usize);
    padded.parse().unwrap_or_else(|_| panic!("{s}"))
}

fn day_number(v: &Value) -> i32 {
    let d = chrono::NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap();
    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

#[test]
fn the_python_driver_reads_back_exactly_the_delta_tables() {
    let Some(python) = venv_bin("cql-venv", "python", "reading back with the Python driver") else {
        return;
    };
    let cql = Cql::new();
    let d = Data::new();
    d.ok(&[
        "generate",
        "--rows",
        "8000",
        "--days",
        "4",
        "--customers",
        "300",
        "--dirty-rate",
        "0.02",
    ]);
    cql.ok(&d, &["run"]);
    let (host, port) = cql.uri.rsplit_once(':').unwrap();
    let out = Command::new(python)
        .args(["-c", READ_BACK, host, port, &cql.keyspace])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut aggregates = Agg::new();
    for r in read["aggregates"].as_array().unwrap() {
        let opt = |v: &Value| (!v.is_null()).then(|| unscaled(v, 2));
        let prev = aggregates.insert(
            (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()),
            (
                unscaled(&r[2], 2),
                r[3].as_i64().unwrap(),
                r[4].as_i64().unwrap(),
                opt(&r[5]),
                opt(&r[6]),
            ),
        );
        assert!(prev.is_none(), "one row per customer and day");
    }
    assert_eq!(aggregates, table(&d), "the aggregates, row for row");
    let mut profiles = Profiles::new();
    for r in read["profiles"].as_array().unwrap() {
        profiles.insert(
            r[0].as_i64().unwrap(),
            Profile {
                as_of: day_number(&r[1]),
                total: unscaled(&r[2], 2),
                count: r[3].as_i64().unwrap(),
                declined: r[4].as_i64().unwrap(),
                // As text: serde_json's default float parsing may be one ulp off.
                decline_rate: r[5].as_str().unwrap().parse().unwrap(),
                first: day_number(&r[6]),
                last: day_number(&r[7]),
                active: r[8].as_i64().unwrap(),
                average: (!r[9].is_null()).then(|| unscaled(&r[9], 2)),
                last_7d: unscaled(&r[10], 2),
                last_30d: unscaled(&r[11], 2),
                ewm: unscaled(&r[12], 14),
                forecast: unscaled(&r[13], 2),
            },
        );
    }
    crate::profiles::assert_same(&profiles, &profiles_table(&d), "the profiles, row for row");
    assert!(
        read["tables"].to_string().contains("pipeline_load_state"),
        "the driver's schema metadata: {}",
        read["tables"]
    );
}

/// `cqlsh -e "DESCRIBE KEYSPACE ks"` against the server.
fn describe(cqlsh: &PathBuf, cql: &Cql) -> (bool, String) {
    let (host, port) = cql.uri.rsplit_once(':').unwrap();
    let out = Command::new(cqlsh)
        .args([
            host,
            port,
            "-e",
            &format!("DESCRIBE KEYSPACE {}", cql.keyspace),
        ])
        .env("CQLSH_NO_BUNDLED", "")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// cqlsh describes the keyspace the pipeline made. PyPI `cqlsh` 6.x sends DESCRIBE to the
/// server and then, on any ScyllaDB (it reports `release_version` 3.0.8, below 4), throws the
/// answer away and prints a warning instead: what it does against a real ScyllaDB
/// (`cqlshlib/cqlshmain.py`), so that is asserted; `scylla-cqlsh` prints the server's answer.
#[test]
fn cqlsh_describes_the_keyspace() {
    let cql = Cql::new();
    if cql.test_server("the profile's DESCRIBE").is_none() {
        return;
    }
    let d = Data::new();
    d.ok(&["generate", "--rows", "1000", "--days", "1"]);
    cql.ok(&d, &["run"]);
    let scylla = Cql::profile().is_scylla();
    if let Some(cqlsh) = venv_bin("cqlsh-venv", "cqlsh", "DESCRIBE with PyPI cqlsh") {
        let (ok, text) = describe(&cqlsh, &cql);
        assert!(ok, "{text}");
        if scylla {
            assert!(
                text.contains("DESCRIBE does not exist server side prior Cassandra 4.0"),
                "PyPI cqlsh against ScyllaDB: {text}"
            );
        } else {
            assert!(
                text.contains(&format!("CREATE KEYSPACE {}", cql.keyspace))
                    && text.contains("CREATE TABLE")
                    && text.contains("customer_daily_aggregates"),
                "{text}"
            );
        }
    }
    if let Some(cqlsh) = venv_bin("scylla-cqlsh-venv", "cqlsh", "DESCRIBE with scylla-cqlsh") {
        let (ok, text) = describe(&cqlsh, &cql);
        assert!(ok, "{text}");
        for what in [
            "CREATE KEYSPACE",
            "customer_daily_aggregates",
            "customer_profiles",
            "pipeline_load_state",
        ] {
            assert!(text.contains(what), "scylla-cqlsh: {what}: {text}");
        }
        if Cql::profile() == cql_test_server::Profile::Scylla2025_1 {
            assert!(text.contains("AND tablets = {'enabled': true}"), "{text}");
        }
    }
}

/// Polars (`pl.read_delta`, over delta-rs's Python binding) reads the aggregates with their
/// exact decimals: the README's snippet, run.
#[test]
fn polars_reads_the_tables() {
    let Some(python) = venv_bin("seaweedfs-venv", "python", "reading the tables with Polars")
    else {
        return;
    };
    let ok = Command::new(&python)
        .args(["-c", "import polars"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: Polars is not installed in target/seaweedfs-venv: reading the tables with Polars was NOT tested ***\n"
        );
        return;
    }
    let d = Data::new();
    d.ok(&[
        "run",
        "--generate",
        "--rows",
        "5000",
        "--days",
        "3",
        "--stages",
        "ingest,aggregate,profiles",
    ]);
    let script = r#"
import json, sys
import polars as pl
agg = pl.read_delta(sys.argv[1] + "/customer_daily_aggregates")
top = agg.group_by("customer_id").agg(pl.col("total_amount").sum()).sort("total_amount", descending=True)
print(json.dumps({"rows": agg.height, "dtype": str(agg.schema["total_amount"]),
                  "sum": str(agg["total_amount"].sum()), "top": int(top["customer_id"][0]),
                  "profiles": pl.read_delta(sys.argv[1] + "/customer_profiles").height}))
"#;
    let out = Command::new(python)
        .args(["-c", script, d.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agg = table(&d);
    assert_eq!(read["rows"], agg.len() as u64, "{read}");
    assert!(
        read["dtype"]
            .as_str()
            .unwrap()
            .contains("precision=38, scale=2"),
        "{read}"
    );
    let cents: i128 = agg.values().map(|v| v.0).sum();
    assert_eq!(unscaled(&read["sum"], 2), cents, "{read}");
    assert_eq!(read["profiles"], profiles_table(&d).len() as u64, "{read}");
}
