//! Profiles served from ScyllaDB: equal to the Delta table after full and incremental loads,
//! after a load killed between its writes and its record while the table moved on (even back
//! to the values before), and when two loads race; `verify` and `lookup --profile` cover them.

use std::time::Duration;

use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlDate, CqlDecimal};
use serde_json::Value;

use crate::common::{Data, u};
use crate::profiles::{Profile, Profiles, profiles_table};
use crate::scylla::Cql;

/// An exact decimal at `scale` places as its unscaled integer.
fn unscaled(d: &CqlDecimal, scale: i32) -> i128 {
    let (bytes, s) = d.as_signed_be_bytes_slice_and_exponent();
    assert_eq!(s, scale, "decimal stored at scale {s}, expected {scale}");
    let mut buf = if bytes[0] & 0x80 != 0 {
        [0xFF; 16]
    } else {
        [0; 16]
    };
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    i128::from_be_bytes(buf)
}

fn day(d: CqlDate) -> i32 {
    (d.0 as i64 - (1i64 << 31)) as i32
}

type Row = (
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

/// Every served profile, read back through the driver.
pub(crate) fn served(cql: &Cql) -> Profiles {
    cql.rt.block_on(async {
        let session = SessionBuilder::new()
            .known_node(&cql.uri)
            .build()
            .await
            .unwrap();
        let q = format!(
            "SELECT customer_id, as_of_day, lifetime_total, lifetime_count, declined_count, \
             decline_rate, first_active_day, last_active_day, active_days, average_ticket, \
             total_last_7d, total_last_30d, ewm_daily_spend, spend_forecast_30d \
             FROM {}.customer_profiles",
            cql.keyspace
        );
        let mut pager = session
            .query_iter(q, ())
            .await
            .unwrap()
            .rows_stream::<Row>()
            .unwrap();
        let mut out = Profiles::new();
        use futures::StreamExt;
        while let Some(r) = pager.next().await {
            let r = r.unwrap();
            let p = Profile {
                as_of: day(r.1),
                total: unscaled(&r.2, 2),
                count: r.3,
                declined: r.4,
                decline_rate: r.5,
                first: day(r.6),
                last: day(r.7),
                active: r.8,
                average: r.9.as_ref().map(|d| unscaled(d, 2)),
                last_7d: unscaled(&r.10, 2),
                last_30d: unscaled(&r.11, 2),
                ewm: unscaled(&r.12, 14),
                forecast: unscaled(&r.13, 2),
            };
            assert!(out.insert(r.0, p).is_none(), "customer {} twice", r.0);
        }
        out
    })
}

fn batch(d: &Data, rows: &str, days: &str, batch: &str, start: &str) {
    d.ok(&[
        "generate",
        "--rows",
        rows,
        "--days",
        days,
        "--batch",
        batch,
        "--start-date",
        start,
        "--customers",
        "400",
        "--dirty-rate",
        "0.01",
    ]);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    d.ok(&["profiles"]);
}

/// The profiles version a load recorded.
fn loaded(r: &Value) -> i64 {
    r["profiles"]["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("no profiles version in {r}"))
}

#[test]
fn profiles_are_served_equal_to_delta_incrementally_and_verify_and_lookup_cover_them() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "8000", "5", "1", "2024-01-01");
    let r = cql.ok(&d, &["load"]);
    let delta = profiles_table(&d);
    assert_eq!(r["profiles"]["full_load"], true, "{r}");
    assert_eq!(u(&r["profiles"], "rows_written"), delta.len() as u64);
    assert_eq!(served(&cql), delta);

    // A late batch for an earlier day: incremental profiles, and only the changed ones sent.
    batch(&d, "300", "1", "2", "2024-01-02");
    let r = cql.ok(&d, &["load"]);
    let delta = profiles_table(&d);
    let written = u(&r["profiles"], "rows_written");
    assert_eq!(r["profiles"]["full_load"], false, "{r}");
    assert!(
        written > 0 && written < delta.len() as u64,
        "only changed profiles are written: {written} of {}",
        delta.len()
    );
    assert_eq!(served(&cql), delta);
    // A later day moves every profile's windows.
    batch(&d, "2000", "1", "3", "2024-01-06");
    let r = cql.ok(&d, &["load"]);
    assert_eq!(
        u(&r["profiles"], "rows_written"),
        profiles_table(&d).len() as u64
    );
    assert_eq!(served(&cql), profiles_table(&d));
    let again = cql.ok(&d, &["load"]);
    assert_eq!(u(&again["profiles"], "rows_written"), 0, "{again}");

    let v = cql.ok(&d, &["verify"]);
    assert_eq!(v["profiles"]["version"], r["profiles"]["version"]);
    assert_eq!(v["profiles"]["delta"], v["profiles"]["scylla"]);
    assert_eq!(
        u(&v["profiles"]["scylla"], "rows"),
        profiles_table(&d).len() as u64
    );

    let (&customer, p) = profiles_table(&d)
        .iter()
        .next()
        .map(|(c, p)| (c, p.clone()))
        .unwrap();
    let text = cql.stdout(
        &d,
        &["lookup", "--customer", &customer.to_string(), "--profile"],
    );
    let l: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(l["customer_id"], customer);
    assert_eq!(l["lifetime_count"], p.count);
    let cents = |c: i128| format!("{}.{:02}", c / 100, c % 100);
    // Exact decimals: JSON numbers with their two decimals, compared as written.
    let token = |key: &str| crate::common::json_tokens(&text, key);
    assert_eq!(token("lifetime_total"), [cents(p.total)]);
    assert_eq!(token("spend_forecast_30d"), [cents(p.forecast)]);
    let none = cql.run(&d, &["lookup", "--customer", "987654321", "--profile"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&none.stdout).trim(),
        "null",
        "{none:?}"
    );

    // One served value changed behind the pipeline's back: verify says so.
    cql.exec(&format!(
        "INSERT INTO {}.customer_profiles (customer_id, lifetime_count) VALUES ({customer}, {})",
        cql.keyspace,
        p.count + 1
    ));
    let bad = cql.run(&d, &["verify"], &[]);
    assert_eq!(
        bad.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_ne!(bad["profiles"]["delta"], bad["profiles"]["scylla"], "{bad}");
    assert_eq!(
        bad["profiles"]["delta"]["rows"],
        bad["profiles"]["scylla"]["rows"]
    );
}

#[test]
fn a_load_killed_after_writing_profiles_is_made_good_even_when_they_revert() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "6000", "4", "1", "2024-01-01");
    let first = cql.ok(&d, &["load"]);
    let recorded = loaded(&first);
    // A late batch changes some profiles; the load writes them and is killed before it
    // records the version.
    batch(&d, "300", "1", "2", "2024-01-02");
    let out = cql.run(
        &d,
        &["load"],
        &[("PIPELINE_FAILPOINTS", "load.profiles_before_record")],
    );
    assert!(!out.status.success(), "the failpoint stopped the load");
    assert_eq!(
        served(&cql),
        profiles_table(&d),
        "the killed load wrote every change"
    );
    // Then the profiles go back to the recorded version's values (as a restore would do):
    // rows equal in the recorded version and now, but written by the killed load.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(d.table("customer_profiles")).unwrap();
        let t = deltalake::open_table(url).await.unwrap();
        t.restore()
            .with_version_to_restore(recorded as u64)
            .await
            .unwrap();
    });
    let r = cql.ok(&d, &["load"]);
    assert_eq!(u(&r["profiles"], "loads_made_good"), 1, "{r}");
    assert_eq!(
        served(&cql),
        profiles_table(&d),
        "the killed load's rows were made good"
    );
    cql.ok(&d, &["verify"]);
    let again = cql.ok(&d, &["load"]);
    assert_eq!(u(&again["profiles"], "rows_written"), 0, "{again}");
}

#[test]
fn two_profile_loads_at_once_end_with_the_newer_version() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "6000", "4", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    batch(&d, "300", "1", "2", "2024-01-02");
    // Load A marks the version with batch 2 and waits; batch 3 changes the profiles again
    // and load B serves them (it sees A's marker and makes A's version good); then A writes
    // its older rows, at a lower timestamp, and finds B's newer record.
    let gate = d.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let mut a = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
    a.arg("--data-dir").arg(d.path()).arg("--json").arg("load");
    for (k, v) in cql.env() {
        a.env(k, v);
    }
    a.env(
        "PIPELINE_PAUSE",
        format!("load.profiles_after_mark:{}", gate.display()),
    );
    a.stdout(std::process::Stdio::piped());
    let a = a.spawn().unwrap();
    let reached = d.path().join("gate.reached");
    let t = std::time::Instant::now();
    while !reached.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "load A never paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    batch(&d, "300", "1", "3", "2024-01-03");
    let b = cql.ok(&d, &["load"]);
    std::fs::remove_file(&gate).unwrap();
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let a: Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(
        a["profiles"]["version"].as_i64() < b["profiles"]["version"].as_i64(),
        "{a} {b}"
    );
    assert_eq!(
        a["profiles"]["overtaken"], true,
        "A finds B's newer record: {a}"
    );
    assert_eq!(u(&b["profiles"], "loads_made_good"), 1, "{b}");
    assert_eq!(
        served(&cql),
        profiles_table(&d),
        "the newer version's rows won"
    );
    cql.ok(&d, &["verify"]);
}
