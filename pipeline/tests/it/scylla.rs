//! load, lookup and verify through the real `scylla` driver: against the in-repo CQL test
//! server by default, or against a real ScyllaDB when `SCYLLA_URI` is set (each test then uses
//! its own keyspace). Tests that need fault injection or a password-protected server run only
//! against the test server and say so when skipped.

use std::time::Duration;

use cql_test_server::{Fault, FaultKind, Opcode, ServerConfig, TestServer};
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlDate, CqlDecimal};
use serde_json::Value;

use crate::aggregate::{Agg, table};
use crate::common::{Data, u};

/// Where the tests' ScyllaDB is.
pub(crate) struct Cql {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) server: Option<TestServer>,
    pub(crate) uri: String,
    pub(crate) keyspace: String,
}

impl Cql {
    pub(crate) fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }

    /// The server profile the test server emulates: `CQL_TEST_SERVER_EMULATE` (make test runs
    /// the ScyllaDB tests once per profile), else the compose file's.
    pub(crate) fn profile() -> cql_test_server::Profile {
        match std::env::var("CQL_TEST_SERVER_EMULATE") {
            Ok(name) if !name.is_empty() => cql_test_server::Profile::parse(&name)
                .unwrap_or_else(|| panic!("unknown CQL_TEST_SERVER_EMULATE profile `{name}`")),
            _ => cql_test_server::Profile::default(),
        }
    }

    fn with_config(mut config: ServerConfig) -> Self {
        config.profile = Self::profile();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let keyspace = format!("it_{}", uuid::Uuid::new_v4().simple());
        match std::env::var("SCYLLA_URI") {
            Ok(uri) if !uri.is_empty() => Cql {
                rt,
                server: None,
                uri,
                keyspace,
            },
            _ => {
                let server = rt.block_on(TestServer::start(config)).unwrap();
                let uri = server.addr().to_string();
                Cql {
                    rt,
                    server: Some(server),
                    uri,
                    keyspace,
                }
            }
        }
    }

    /// The test server, or None (and a note) when running against a real ScyllaDB.
    pub(crate) fn test_server(&self, why: &str) -> Option<&TestServer> {
        if self.server.is_none() {
            eprintln!("skipped against a real ScyllaDB: {why} needs the in-repo test server");
        }
        self.server.as_ref()
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SCYLLA_URI", self.uri.clone()),
            ("SCYLLA_KEYSPACE", self.keyspace.clone()),
        ]
    }

    pub(crate) fn run(
        &self,
        d: &Data,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> std::process::Output {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        d.run_env(args, &all)
    }

    /// The stdout of a successful command, as written.
    pub(crate) fn stdout(&self, d: &Data, args: &[&str]) -> String {
        let out = self.run(d, args, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn ok(&self, d: &Data, args: &[&str]) -> Value {
        let out = self.run(d, args, &[]);
        assert!(
            out.status.success(),
            "pipeline {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Run one CQL statement through the driver (as another tool or an operator would).
    pub(crate) fn exec(&self, statement: &str) {
        self.rt.block_on(async {
            let session = SessionBuilder::new()
                .known_node(&self.uri)
                .build()
                .await
                .unwrap();
            session.query_unpaged(statement, ()).await.unwrap();
        });
    }

    /// Every row of the serving table, read back through the driver.
    pub(crate) fn contents(&self) -> Agg {
        self.rt.block_on(async {
            let session = SessionBuilder::new().known_node(&self.uri).build().await.unwrap();
            let q = format!(
                "SELECT customer_id, transaction_date, total_amount, transaction_count, declined_count, min_amount, max_amount FROM {}.customer_daily_aggregates",
                self.keyspace
            );
            type R = (i64, CqlDate, CqlDecimal, i64, i64, Option<CqlDecimal>, Option<CqlDecimal>);
            let mut out = Agg::new();
            let mut pager = session
                .query_iter(q, ())
                .await
                .unwrap()
                .rows_stream::<R>()
                .unwrap();
            use futures::StreamExt;
            while let Some(r) = pager.next().await {
                let (c, d, total, n, declined, min, max) = r.unwrap();
                let day = chrono::NaiveDate::default()
                    + chrono::Days::new((d.0 as i64 - (1i64 << 31)) as u64);
                let prev = out.insert(
                    (c, day.format("%Y-%m-%d").to_string()),
                    (cents(&total), n, declined, min.as_ref().map(cents), max.as_ref().map(cents)),
                );
                assert!(prev.is_none());
            }
            out
        })
    }
}

fn cents(d: &CqlDecimal) -> i128 {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    assert_eq!(scale, 2, "amounts are stored with scale 2");
    let mut buf = if bytes[0] & 0x80 != 0 {
        [0xFF; 16]
    } else {
        [0; 16]
    };
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    i128::from_be_bytes(buf)
}

fn prepare(d: &Data, rows: &str, days: &str, batch: &str, start: &str) {
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
        "500",
        "--dirty-rate",
        "0.01",
    ]);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn load_lookup_and_verify_end_to_end_then_only_changed_days() {
    let cql = Cql::new();
    let d = Data::new();
    prepare(&d, "20000", "5", "1", "2024-01-01");
    let dry = cql.ok(&d, &["load", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let expected = table(&d);
    assert_eq!(u(&dry, "rows_to_load"), expected.len() as u64);
    let first = cql.ok(&d, &["load"]);
    assert_eq!(u(&first, "rows_written"), expected.len() as u64);
    assert_eq!(u(&first, "failures"), 0);
    assert_eq!(first["full_load"], true);
    assert_eq!(
        cql.contents(),
        expected,
        "ScyllaDB holds exactly the Delta aggregates"
    );

    // lookup: one customer's days, newest first, as in Delta.
    let (&(customer, _), _) = expected.iter().next().unwrap();
    let text = cql.stdout(&d, &["lookup", "--customer", &customer.to_string()]);
    let out: Value = serde_json::from_str(&text).unwrap();
    let want: Vec<_> = expected
        .iter()
        .filter(|((c, _), _)| *c == customer)
        .map(|((_, day), v)| (day, v))
        .rev()
        .collect();
    let got = out.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    // Amounts are JSON numbers with exactly their two decimals, as `sql --format json`
    // writes them (they were strings): compared as written, not as parsed floats.
    let amounts = crate::common::json_tokens(&text, "total_amount");
    for ((g, (day, v)), amount) in got.iter().zip(&want).zip(&amounts) {
        assert_eq!(g["transaction_date"].as_str().unwrap(), day.as_str());
        assert_eq!(*amount, format!("{}.{:02}", v.0 / 100, v.0 % 100));
        assert_eq!(g["transaction_count"].as_i64().unwrap(), v.1);
    }
    assert_eq!(amounts.len(), want.len());
    let sql = d.run_env(
        &[
            "sql",
            "--format",
            "json",
            &format!(
                "SELECT total_amount FROM customer_daily_aggregates WHERE customer_id = {customer} \
                 ORDER BY transaction_date DESC"
            ),
        ],
        &[],
    );
    assert_eq!(
        crate::common::json_tokens(&String::from_utf8_lossy(&sql.stdout), "total_amount"),
        amounts,
        "sql and lookup write a decimal the same way"
    );
    let ranged = cql.ok(
        &d,
        &[
            "lookup",
            "--customer",
            &customer.to_string(),
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-03",
        ],
    );
    assert!(ranged.as_array().unwrap().iter().all(|r| {
        let day = r["transaction_date"].as_str().unwrap();
        ("2024-01-02"..="2024-01-03").contains(&day)
    }));
    let none = cql.ok(&d, &["lookup", "--customer", "987654321"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    let verify = cql.ok(&d, &["verify"]);
    assert_eq!(
        verify["differing_days"].as_array().unwrap().len(),
        0,
        "{verify}"
    );

    // Nothing new: nothing written.
    let again = cql.ok(&d, &["load"]);
    assert_eq!(u(&again, "rows_written"), 0);

    // Late rows for one old day: only that day's changed rows are written (the aggregate
    // merged appended rows, so unchanged rows need no write).
    let before = table(&d);
    prepare(&d, "600", "1", "2", "2024-01-03");
    if let Some(server) = &cql.server {
        server.clear_requests();
    }
    let second = cql.ok(&d, &["load"]);
    assert_eq!(second["full_load"], false);
    assert_eq!(u(&second, "days"), 1);
    let expected = table(&d);
    let day3 = expected
        .keys()
        .filter(|(_, day)| day == "2024-01-03")
        .count() as u64;
    let changed = expected
        .iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .count() as u64;
    assert!(changed > 0 && changed < day3, "{changed} of {day3}");
    assert_eq!(u(&second, "rows_written"), changed, "{second}");
    assert_eq!(u(&second, "rows_unchanged"), day3 - changed, "{second}");
    if let Some(server) = &cql.server {
        let inserts = server
            .requests()
            .iter()
            .filter(|r| {
                r.opcode == Opcode::Execute
                    && r.statement.as_deref().is_some_and(|s| {
                        s.contains("INSERT INTO") && s.contains("customer_daily_aggregates")
                    })
            })
            .count() as u64;
        assert_eq!(
            inserts, changed,
            "one INSERT per changed row of the changed day, nothing else"
        );
    }
    assert_eq!(cql.contents(), expected);
    let verify = cql.ok(&d, &["verify"]);
    assert_eq!(
        verify["differing_days"].as_array().unwrap().len(),
        0,
        "{verify}"
    );
}

#[test]
fn a_load_under_injected_faults_completes_with_every_row() {
    let cql = Cql::new();
    let Some(server) = cql.test_server("fault injection") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "20000", "4", "1", "2024-01-01");
    server.inject(
        Fault::on_statement("INSERT INTO it_", FaultKind::Overloaded)
            .skip(100)
            .times(40),
    );
    server.inject(
        Fault::on_statement("INSERT INTO it_", FaultKind::WriteTimeout)
            .skip(500)
            .times(20),
    );
    server.inject(
        Fault::on_statement("INSERT INTO it_", FaultKind::DropConnection)
            .skip(1500)
            .times(2),
    );
    server.inject(
        Fault::on_statement(
            "INSERT INTO it_",
            FaultKind::Delay(Duration::from_millis(50)),
        )
        .skip(2000)
        .times(50),
    );
    let r = cql.ok(&d, &["load", "--max-attempts", "20"]);
    assert!(
        server.faults_hit() >= 62,
        "faults hit: {}",
        server.faults_hit()
    );
    assert!(u(&r, "retries") >= 60, "{r}");
    assert_eq!(u(&r, "failures"), 0);
    let expected = table(&d);
    assert_eq!(u(&r, "rows_written"), expected.len() as u64);
    assert_eq!(cql.contents(), expected);
    let verify = cql.ok(&d, &["verify"]);
    assert_eq!(verify["differing_days"].as_array().unwrap().len(), 0);
}

#[test]
fn errors_over_the_budget_stop_the_load_write_bad_rows_and_record_nothing() {
    let cql = Cql::new();
    let Some(server) = cql.test_server("fault injection") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "5000", "2", "1", "2024-01-01");
    server.inject(
        Fault::on_statement("INSERT INTO it_", FaultKind::WriteTimeout)
            .skip(50)
            .times(u64::MAX),
    );
    let out = cql.run(
        &d,
        &["load", "--max-attempts", "2", "--max-errors", "5"],
        &[],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("load incomplete"), "{err}");
    assert!(err.contains("over the --max-errors budget"), "{err}");
    assert!(err.contains("NOT recorded as loaded"), "{err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        u(&report, "failures"),
        6,
        "stops at the first failure over the budget"
    );
    let bad = std::path::PathBuf::from(report["bad_rows_file"].as_str().unwrap());
    let lines = std::fs::read_to_string(&bad).unwrap();
    assert_eq!(lines.lines().count(), 6);
    assert!(
        lines
            .lines()
            .all(|l| l.contains("\"error\"") && l.contains("customer_id"))
    );
    // Nothing recorded: verify has no loaded version to compare with.
    let v = cql.run(&d, &["verify"], &[]);
    assert_eq!(v.status.code(), Some(2), "{}", stderr(&v));
    assert!(stderr(&v).contains("nothing has been loaded"));

    // Within the budget: the load goes to the end but still exits non-zero.
    server.clear_faults();
    server.inject(
        Fault::on_statement("INSERT INTO it_", FaultKind::Overloaded)
            .skip(10)
            .times(3),
    );
    let out = cql.run(
        &d,
        &["load", "--max-attempts", "1", "--max-errors", "1%"],
        &[],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&report, "failures"), 3);
    assert_eq!(u(&report, "rows_written") + 3, table(&d).len() as u64);

    // The cause gone, a rerun completes and verifies.
    server.clear_faults();
    cql.ok(&d, &["load"]);
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
}

#[test]
fn a_killed_load_reruns_to_a_complete_state() {
    let cql = Cql::new();
    let d = Data::new();
    prepare(&d, "10000", "3", "1", "2024-01-01");
    for point in ["load.midway", "load.before_state"] {
        let out = cql.run(&d, &["load"], &[("PIPELINE_FAILPOINTS", point)]);
        assert!(!out.status.success(), "{point} did not stop the load");
        let v = cql.run(&d, &["verify"], &[]);
        assert_eq!(
            v.status.code(),
            Some(2),
            "{point}: nothing may be recorded: {}",
            stderr(&v)
        );
    }
    let r = cql.ok(&d, &["load"]);
    assert_eq!(r["full_load"], true);
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
}

#[test]
fn verify_reports_the_day_that_differs() {
    let cql = Cql::new();
    let d = Data::new();
    prepare(&d, "3000", "3", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    let expected = table(&d);
    let (&(customer, ref day), _) = expected
        .iter()
        .find(|((_, day), _)| day == "2024-01-02")
        .unwrap();
    let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    cql.rt.block_on(async {
        let session = SessionBuilder::new().known_node(&cql.uri).build().await.unwrap();
        let q = format!(
            "INSERT INTO {}.customer_daily_aggregates (customer_id, transaction_date, total_amount) VALUES (?, ?, ?)",
            cql.keyspace
        );
        let date = CqlDate(((day - chrono::NaiveDate::default()).num_days() + (1i64 << 31)) as u32);
        session
            .query_unpaged(q, (customer, date, CqlDecimal::from_signed_be_bytes_slice_and_exponent(&[1], 2)))
            .await
            .unwrap();
    });
    let out = cql.run(&d, &["verify"], &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let days = report["differing_days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{report}");
    assert_eq!(days[0]["transaction_date"], "2024-01-02");
    assert_eq!(
        days[0]["delta"]["rows"], days[0]["scylla"]["rows"],
        "same count, other values"
    );
}

#[test]
fn unreachable_scylla_is_a_clear_error() {
    let d = Data::new();
    prepare(&d, "1000", "1", "1", "2024-01-01");
    let out = d.run_env(&["load"], &[("SCYLLA_URI", "127.0.0.1:1")]);
    assert_eq!(out.status.code(), Some(5));
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to ScyllaDB at 127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("docker compose up -d scylla"), "{err}");
}

#[test]
fn wrong_credentials_are_a_clear_error_without_the_password() {
    let cql = Cql::with_config(ServerConfig {
        credentials: Some(("loader".into(), "right-horse-battery".into())),
        ..Default::default()
    });
    let Some(_) = cql.test_server("a password-protected server") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "1000", "1", "1", "2024-01-01");
    let out = cql.run(
        &d,
        &["load"],
        &[
            ("SCYLLA_USERNAME", "loader"),
            ("SCYLLA_PASSWORD", "wrong-staple-9"),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("incorrect"), "{err}");
    assert!(
        !err.contains("wrong-staple-9"),
        "the password leaked: {err}"
    );
    let ok = cql.run(
        &d,
        &["load"],
        &[
            ("SCYLLA_USERNAME", "loader"),
            ("SCYLLA_PASSWORD", "right-horse-battery"),
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The same login from the configuration file: a user name, and a password file (the
    // file may not hold the password itself).
    let secret = d.path().join("scylla-password");
    std::fs::write(&secret, "right-horse-battery\n").unwrap();
    std::fs::write(
        d.path().join("pipeline.toml"),
        format!(
            "scylla_username = \"loader\"\nscylla_password_file = {:?}\n",
            secret.display().to_string()
        ),
    )
    .unwrap();
    let ok = cql.run(&d, &["load"], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let without = cql.run(&d, &["load"], &[("SCYLLA_USERNAME", "somebody")]);
    assert_eq!(without.status.code(), Some(5), "{}", stderr(&without));
}

#[test]
fn an_existing_table_with_another_schema_is_refused() {
    let cql = Cql::new();
    let d = Data::new();
    prepare(&d, "1000", "1", "1", "2024-01-01");
    cql.rt.block_on(async {
        let session = SessionBuilder::new().known_node(&cql.uri).build().await.unwrap();
        session
            .query_unpaged(
                format!("CREATE KEYSPACE {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}", cql.keyspace),
                (),
            )
            .await
            .unwrap();
        session
            .query_unpaged(
                format!("CREATE TABLE {}.customer_daily_aggregates (customer_id bigint PRIMARY KEY, total_amount double)", cql.keyspace),
                (),
            )
            .await
            .unwrap();
    });
    let out = cql.run(&d, &["load"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("exists with a different schema"), "{err}");
    assert!(err.contains("total_amount double"), "{err}");
}

/// Run the stages up to the aggregates for a generator batch; returns the ingest report.
fn batch(d: &Data, rows: &str, days: &str, batch: &str, start: &str) -> Value {
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
        "500",
    ]);
    let r = d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    r
}

#[test]
fn two_loads_at_once_end_with_the_newer_version_whatever_the_order() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "6000", "3", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    batch(&d, "2000", "1", "2", "2024-01-02");
    // Load A plans the version with batch 2, then waits; load B loads a newer version
    // (batch 3, the same day changed again); then A writes its older rows.
    let gate = d.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let spec = format!("load.after_plan:{}", gate.display());
    let mut a = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
    a.arg("--data-dir").arg(d.path()).arg("--json").arg("load");
    for (k, v) in cql.env() {
        a.env(k, v);
    }
    a.env("PIPELINE_PAUSE", &spec);
    a.stdout(std::process::Stdio::piped());
    let a = a.spawn().unwrap();
    let reached = d.path().join("gate.reached");
    let t = std::time::Instant::now();
    while !reached.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "load A never reached its pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    batch(&d, "2000", "1", "3", "2024-01-02");
    let b = cql.ok(&d, &["load"]);
    std::fs::remove_file(&gate).unwrap();
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success());
    let a: Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(
        a["aggregates_version"].as_i64() < b["aggregates_version"].as_i64(),
        "A loaded the older version: {a} {b}"
    );
    assert_eq!(
        a["overtaken"], true,
        "A must not record its older version: {a}"
    );
    assert_eq!(cql.contents(), table(&d), "the newer version's rows won");
    let v = cql.ok(&d, &["verify"]);
    assert_eq!(v["aggregates_version"], b["aggregates_version"]);
    let again = cql.ok(&d, &["load"]);
    assert_eq!(
        u(&again, "rows_written"),
        0,
        "the newer version stays recorded"
    );
}

#[test]
fn rows_that_vanish_from_the_aggregates_are_deleted_touching_only_changed_days() {
    let cql = Cql::new();
    let d = Data::new();
    let first = batch(&d, "6000", "3", "1", "2024-01-01");
    batch(&d, "900", "1", "2", "2024-01-02");
    cql.ok(&d, &["load"]);
    assert_eq!(cql.contents(), table(&d));
    // Back to the source as of batch 1: customers only batch 2 had on 2024-01-02 vanish.
    let v1 = first["table_version"].as_i64().unwrap().to_string();
    d.ok(&["aggregate", "--source-version", &v1]);
    let r = cql.ok(&d, &["load"]);
    assert_eq!(r["full_load"], false, "{r}");
    assert_eq!(u(&r, "days"), 3, "a rebuild replaces every day: {r}");
    assert!(u(&r, "rows_deleted") > 0, "{r}");
    assert_eq!(
        cql.contents(),
        table(&d),
        "ScyllaDB holds exactly the aggregates"
    );
    cql.ok(&d, &["verify"]);
}

#[test]
fn a_deleted_and_rebuilt_aggregates_table_is_served_as_another_table() {
    let cql = Cql::new();
    let d = Data::new();
    let first = batch(&d, "6000", "3", "1", "2024-01-01");
    batch(&d, "900", "1", "2", "2024-01-02");
    cql.ok(&d, &["load"]);
    std::fs::remove_dir_all(d.table("customer_daily_aggregates")).unwrap();
    let v1 = first["table_version"].as_i64().unwrap().to_string();
    d.ok(&["aggregate", "--source-version", &v1]);
    let out = cql.run(&d, &["verify"], &[]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "verify sees another table: {}",
        stderr(&out)
    );
    let r = cql.ok(&d, &["load"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert!(u(&r, "partitions_swept") > 0);
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
}

#[test]
fn aggregates_of_a_recreated_source_are_rebuilt_from_it() {
    let d = Data::new();
    batch(&d, "3000", "2", "1", "2024-01-01");
    batch(&d, "600", "1", "2", "2024-01-02");
    // The source is deleted and rebuilt from other files, reaching the same version number.
    for t in ["customer_transactions", "_quarantine", "_pipeline"] {
        std::fs::remove_dir_all(d.path().join(t)).unwrap();
    }
    std::fs::remove_dir_all(d.path().join("_raw/customer_transactions/batch-000002")).unwrap();
    d.ok(&["ingest"]);
    d.ok(&[
        "generate",
        "--rows",
        "300",
        "--days",
        "1",
        "--batch",
        "3",
        "--start-date",
        "2024-01-05",
        "--customers",
        "500",
    ]);
    d.ok(&["ingest"]);
    let r = d.ok(&["aggregate"]);
    assert_eq!(r["full_rebuild"], true, "{r}");
    assert_eq!(table(&d), crate::aggregate::oracle(&d));
}

#[test]
fn a_first_load_sweeps_older_rows_only_when_the_serving_table_has_some() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "3000", "2", "1", "2024-01-01");
    let r = cql.ok(&d, &["load"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert_eq!(
        u(&r, "partitions_swept"),
        0,
        "an empty table has nothing older: {r}"
    );
    assert_eq!(cql.contents(), table(&d));
    // A row from elsewhere, and the progress record lost: the next load is a first load
    // again, into a table that has rows, so it sweeps them.
    let ks = &cql.keyspace;
    cql.exec(&format!(
        "INSERT INTO {ks}.customer_daily_aggregates (customer_id, transaction_date, total_amount, \
         transaction_count, declined_count) VALUES (999999, '2024-01-01', 1.00, 1, 0)"
    ));
    cql.exec(&format!(
        "DELETE FROM {ks}.pipeline_load_state WHERE name = 'customer_daily_aggregates'"
    ));
    let r = cql.ok(&d, &["load"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert!(u(&r, "partitions_swept") > 0, "{r}");
    assert_eq!(cql.contents(), table(&d), "the stray row is gone");
    cql.ok(&d, &["verify"]);
}

/// Keyspace names are CQL identifiers: `my-keyspace` is refused with what a name may be
/// (exit 2; before, a CQL syntax error reported as "Is ScyllaDB running?"), and an unquoted
/// `Analytics_Prod` is the keyspace `analytics_prod`, as CQL folds it (before: "table exists
/// with a different schema: it has []", since the schema lookup kept the capitals).
#[test]
fn keyspace_names_are_validated_and_folded_as_cql_does() {
    let d = Data::new();
    prepare(&d, "1000", "1", "1", "2024-01-01");
    let cql = Cql::new();
    let out = cql.run(&d, &["load", "--keyspace", "my-keyspace"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("my-keyspace") && err.contains("letters, digits and underscores"),
        "{err}"
    );
    let mixed = format!("Mixed_{}", &cql.keyspace[3..]);
    let out = cql.run(&d, &["load"], &[("SCYLLA_KEYSPACE", &mixed)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["keyspace"], mixed.to_lowercase(), "{r}");
    let out = cql.run(&d, &["verify"], &[("SCYLLA_KEYSPACE", &mixed)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A CA file means TLS (before it was ignored without --tls, and the password went in
/// plaintext); a CA file with no certificate is an error, not "no extra CA"; and a TLS
/// handshake with a port that speaks no TLS ends with exit 5 in bounded time instead of
/// hanging.
#[test]
fn a_ca_file_implies_tls_a_bad_one_is_an_error_and_every_connect_is_bounded() {
    let cql = Cql::new();
    let Some(_) = cql.test_server("TLS against a plaintext port") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "1000", "1", "1", "2024-01-01");
    let bad = d.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let out = cql.run(&d, &["load", "--tls-ca-file", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no PEM certificate"),
        "{}",
        stderr(&out)
    );

    let ca = std::fs::read_dir("/etc/ssl/certs").ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pem"))
    });
    let Some(ca) = ca else {
        eprintln!("*** SKIPPED part: no CA certificate in /etc/ssl/certs to test a good CA file");
        return;
    };
    for args in [
        vec!["load", "--tls-ca-file", ca.to_str().unwrap()],
        vec!["load", "--tls"],
    ] {
        let t = std::time::Instant::now();
        let out = cql.run(&d, &args, &[]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{args:?}: TLS against a plaintext port: {}",
            stderr(&out)
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(40),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
}

/// ScyllaDB refuses lightweight transactions in tablet keyspaces, the default for new ones
/// since 6.0 (through 2025.3); on every server profile, the load uses none (no `IF` clause in
/// any statement), so it works there. Before, every progress record was an LWT: the first
/// `load` against ScyllaDB 6.2 failed with "LWT is not yet supported with tablets".
#[test]
fn loads_use_no_lightweight_transaction_and_work_in_tablet_keyspaces() {
    let cql = Cql::new();
    let Some(server) = cql.test_server("the request log") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "3000", "2", "1", "2024-01-01");
    d.ok(&["profiles"]);
    cql.ok(&d, &["load"]);
    prepare(&d, "600", "1", "2", "2024-01-02");
    d.ok(&["profiles"]);
    cql.ok(&d, &["load"]);
    cql.ok(&d, &["verify"]);
    let lwt: Vec<String> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.statement)
        .filter(|s| {
            let s = format!(" {} ", s.to_ascii_uppercase());
            s.contains(" IF NOT EXISTS ") && s.starts_with(" INSERT")
                || (s.contains(" IF ")
                    && !s.contains(" IF NOT EXISTS ")
                    && !s.contains(" IF EXISTS "))
                || s.starts_with(" UPDATE") && s.contains(" IF ")
        })
        .collect();
    assert!(
        lwt.is_empty(),
        "{:?}: lightweight transactions: {lwt:#?}",
        Cql::profile()
    );
}

/// A keyspace a DBA created beforehand, with tablets where the server has them (`AND tablets
/// = {'initial': 4}`): loads, lookups and verify work in it as in one the pipeline creates.
#[test]
fn a_keyspace_created_beforehand_with_tablets_serves_as_well() {
    let cql = Cql::new();
    let tablets = if Cql::profile().has_tablets() {
        " AND tablets = {'initial': 4}"
    } else {
        ""
    };
    cql.exec(&format!(
        "CREATE KEYSPACE {} WITH replication = {{'class': 'NetworkTopologyStrategy', \
         'replication_factor': 1}}{tablets}",
        cql.keyspace
    ));
    let d = Data::new();
    prepare(&d, "3000", "2", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    prepare(&d, "500", "1", "2", "2024-01-02");
    cql.ok(&d, &["load"]);
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
    let (&(customer, _), _) = table(&d).iter().next().unwrap();
    cql.ok(&d, &["lookup", "--customer", &customer.to_string()]);
}

/// ScyllaDB stops answering while the profiles are loaded (before their statements are
/// prepared, or midway through their writes): the load exits 5 naming the profiles and the
/// outage (the stream takes it for one and loads the backlog when it is back), not 6 "over
/// the --max-errors budget" of the aggregates.
#[test]
fn an_outage_during_the_profiles_load_is_an_outage_of_the_profiles_load() {
    let cql = Cql::new();
    let Some(server) = cql.test_server("an outage") else {
        return;
    };
    let d = Data::new();
    prepare(&d, "3000", "2", "1", "2024-01-01");
    d.ok(&["profiles"]);
    let env = cql.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let paused = d.paused_at(
        "load.profiles_after_mark",
        &["load", "--max-attempts", "2"],
        &env,
    );
    server.set_down(true);
    server.drop_connections();
    let out = paused.go_on();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("loading customer_profiles"), "{err}");
    assert!(!err.contains("--max-errors"), "{err}");
    server.set_down(false);
    // Connections dropped at every profile write: the writes fail as an outage.
    server.inject(
        Fault::on_statement("customer_profiles (customer_id", FaultKind::DropConnection)
            .times(u64::MAX),
    );
    let out = cql.run(
        &d,
        &["load", "--max-attempts", "2", "--max-errors", "10"],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("loading customer_profiles") && err.contains("stopped answering"),
        "{err}"
    );
    assert!(!err.contains("--max-errors"), "{err}");
    server.clear_faults();
    cql.ok(&d, &["load"]);
    cql.ok(&d, &["verify"]);
}
