//! The pipeline with its data dir on a real S3-compatible server (SeaweedFS on loopback
//! ports): equal to a local run, read by another Delta reader, several ingest processes at
//! once, a store outage mid-commit, kills at random moments. Without SeaweedFS these tests say
//! so loudly and pass.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::Rng;

use crate::aggregate::table;
use crate::common::{Data, rows};
use crate::crash::world;
use crate::object_store::{BUCKET, SECRET, Seaweed};
use crate::profiles::profiles_table;
use crate::scylla::Cql;

const TX: &str = "customer_transactions";

/// A data dir at `s3://lake/<name>` on `s3`.
fn on_store(s3: &Seaweed, name: &str) -> Data {
    Data::on_store(format!("s3://{BUCKET}/{name}"), s3.env())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object under `s3://lake/<name>/`, copied into a fresh local dir: the tables are then
/// read by the same independent helpers as the local runs' (Parquet files named by the log).
fn mirror(s3: &Seaweed, name: &str) -> Data {
    let d = Data::new();
    let store = s3.client();
    let prefix = object_store::path::Path::from(name);
    rt().block_on(async {
        let mut listing = store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.unwrap();
            let rel: Vec<String> = meta
                .location
                .prefix_match(&prefix)
                .unwrap()
                .map(|p| p.as_ref().to_string())
                .collect();
            let local = rel
                .iter()
                .fold(d.path().to_path_buf(), |p, part| p.join(part));
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            let body = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            std::fs::write(local, body).unwrap();
        }
    });
    d
}

/// Copy one object (a landing file delivered to two prefixes).
fn copy(s3: &Seaweed, from: &str, to: &str) {
    let store = s3.client();
    rt().block_on(async {
        store
            .copy(&from.into(), &to.into())
            .await
            .unwrap_or_else(|e| panic!("copy {from} -> {to}: {e}"));
    });
}

/// The landing files of `name` under `prefix` (relative to the data dir).
fn landed(s3: &Seaweed, name: &str, prefix: &str) -> Vec<String> {
    let store = s3.client();
    let under =
        object_store::path::Path::from(format!("{name}/_raw/customer_transactions/{prefix}"));
    let mut out: Vec<String> = rt().block_on(async {
        store
            .list(Some(&under))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await
    });
    out.retain(|p| p.ends_with(".parquet"));
    out.sort();
    out
}

const FIRST: &[&str] = &[
    "run",
    "--generate",
    "--rows",
    "20000",
    "--days",
    "10",
    "--customers",
    "500",
    "--dirty-rate",
    "0.03",
    "--rows-per-file",
    "2500",
];

const LATE: &[&str] = &[
    "generate",
    "--batch",
    "2",
    "--rows",
    "3000",
    "--days",
    "2",
    "--start-date",
    "2024-01-04",
    "--customers",
    "500",
    "--dirty-rate",
    "0.05",
];

/// A local run of the same commands, the reference.
fn local_reference(cql: &Cql) -> Data {
    let d = Data::new();
    cql.ok(&d, FIRST);
    d.ok(LATE);
    cql.ok(&d, &["run"]);
    d
}

#[test]
fn the_pipeline_on_s3_equals_a_local_run_and_other_readers_read_it() {
    let Some(s3) = Seaweed::start("the pipeline on S3") else {
        return;
    };
    let (cl, cr) = (Cql::new(), Cql::new());
    let local = local_reference(&cl);
    let remote = on_store(&s3, "whole");
    cr.ok(&remote, FIRST);
    remote.ok(LATE);
    cr.ok(&remote, &["run"]);
    cr.ok(&remote, &["verify"]);

    let m = mirror(&s3, "whole");
    let (expected, got) = (world(&local, &cl), world(&m, &cr));
    assert!(rows(&local.table(TX)).len() > 15_000, "a real run");
    assert_eq!(
        got, expected,
        "the tables and ScyllaDB on S3 equal a local run's"
    );
    // Nothing of the local scratch space went to the store, and the landing files did.
    assert!(!m.path().join("_scratch").exists());
    let landing = |d: &Data| {
        let mut files = Vec::new();
        crate::common::walk(&d.path().join("_raw"), &mut files);
        files.retain(|f| f.extension().is_some_and(|e| e == "parquet"));
        files.len()
    };
    assert_eq!(
        landed(&s3, "whole", "").len(),
        landing(&local),
        "the landing files"
    );

    // Another Delta reader (delta-rs's Python binding) reads the tables from S3.
    let Some(python) = python_with_deltalake() else {
        return;
    };
    let script = r#"
import json, os, sys
from deltalake import DeltaTable, QueryBuilder
opts = {k: os.environ[k] for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"]}
out = {}
for name in ["customer_transactions", "customer_daily_aggregates", "customer_profiles"]:
    dt = DeltaTable(f"s3://lake/whole/{name}", storage_options=opts)
    t = QueryBuilder().register("t", dt).execute("select count(*) as n from t").read_all()
    out[name] = t[0][0].as_py()
t = QueryBuilder().register("t", DeltaTable("s3://lake/whole/customer_transactions", storage_options=opts)).execute(
    "select count(distinct transaction_id) as n from t").read_all()
out["distinct_ids"] = t[0][0].as_py()
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tx = rows(&local.table(TX)).len() as u64;
    assert_eq!(read[TX], tx, "{read}");
    assert_eq!(read["distinct_ids"], tx, "{read}");
    assert_eq!(
        read["customer_daily_aggregates"],
        table(&local).len() as u64,
        "{read}"
    );
    assert_eq!(
        read["customer_profiles"],
        profiles_table(&local).len() as u64,
        "{read}"
    );
}

/// The Python of the virtualenv `make test` installs SeaweedFS and delta-rs's Python binding
/// into, if it has the binding.
fn python_with_deltalake() -> Option<PathBuf> {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/seaweedfs-venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import deltalake"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: delta-rs's Python binding (PyPI deltalake) is not installed in \
             target/seaweedfs-venv (`make test` installs it when it can): reading the S3 \
             tables with another Delta reader was NOT tested ***\n"
        );
    }
    ok.then_some(python)
}

const PREFIXES: [&str; 3] = ["east", "west", "north"];

fn generate_on(d: &Data, prefix: &str, seed: u64) {
    d.ok(&[
        "--landing-prefix",
        prefix,
        "generate",
        "--rows",
        "15000",
        "--days",
        "6",
        "--customers",
        "400",
        "--seed",
        &seed.to_string(),
        "--dirty-rate",
        "0.03",
        "--rows-per-file",
        "1500",
    ]);
}

#[test]
fn three_ingest_processes_on_three_prefixes_commit_every_row_exactly_once() {
    let Some(s3) = Seaweed::start("concurrent ingests on S3") else {
        return;
    };
    let remote = on_store(&s3, "three");
    let local = Data::new();
    for (i, p) in PREFIXES.iter().enumerate() {
        generate_on(&remote, p, 100 + i as u64);
        generate_on(&local, p, 100 + i as u64);
    }
    // The same file delivered to two prefixes: its rows must be committed once.
    let east = landed(&s3, "three", "east");
    let twin = east[0]
        .replace("/east/", "/west/")
        .replace(".parquet", "-twin.parquet");
    copy(&s3, &east[0], &twin);
    let raw = local.path().join("_raw/customer_transactions");
    let rel = east[0]
        .split_once("/_raw/customer_transactions/")
        .unwrap()
        .1;
    std::fs::copy(
        raw.join(rel),
        raw.join(
            rel.replace("east/", "west/")
                .replace(".parquet", "-twin.parquet"),
        ),
    )
    .unwrap();

    let started = Instant::now();
    let children: Vec<_> = PREFIXES
        .iter()
        .map(|p| {
            remote
                .command(&["--landing-prefix", p, "ingest"], &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut lost, mut files) = (0, 0);
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        files += r["files_ingested"].as_u64().unwrap();
        lost += r["lost_races"].as_u64().unwrap();
    }
    eprintln!(
        "three concurrent ingests on S3: {:.1} s, {lost} lost race(s) redone",
        started.elapsed().as_secs_f64()
    );
    let landed_files: usize = PREFIXES.iter().map(|p| landed(&s3, "three", p).len()).sum();
    assert_eq!(
        files, landed_files as u64,
        "every landing file ingested by its prefix's process"
    );
    for p in PREFIXES {
        local.ok(&["--landing-prefix", p, "ingest"]);
    }
    // A rerun finds nothing new on any prefix.
    for p in PREFIXES {
        let r = remote.ok(&["--landing-prefix", p, "ingest"]);
        assert_eq!(r["files_ingested"], 0);
    }

    let m = mirror(&s3, "three");
    let got = rows(&m.table(TX));
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(got.len(), distinct.len(), "no row committed twice");
    let expected: BTreeSet<_> = rows(&local.table(TX)).into_iter().collect();
    assert!(expected.len() > 40_000, "{}", expected.len());
    assert_eq!(
        distinct,
        expected.iter().collect(),
        "every row exactly once"
    );
}

/// Files of one batch big enough that ingest takes a moment.
fn outage_batch(d: &Data) {
    d.ok(&[
        "generate",
        "--rows",
        "30000",
        "--days",
        "6",
        "--customers",
        "500",
        "--dirty-rate",
        "0.02",
        "--rows-per-file",
        "2000",
    ]);
}

#[test]
fn a_store_outage_mid_ingest_commits_nothing_and_the_rerun_completes() {
    let Some(mut s3) = Seaweed::start("a store outage mid-ingest") else {
        return;
    };
    let remote = on_store(&s3, "outage");
    outage_batch(&remote);
    let ingest = remote.paused_at(
        "ingest.before_commit",
        &["ingest"],
        &[("PIPELINE_STORE_RETRY_SECS", "2")],
    );
    // The store goes away just as ingest commits.
    s3.stop();
    let out = ingest.go_on();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the commit cannot succeed: {err}");
    assert!(
        err.contains("customer_transactions"),
        "says which table: {err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    s3.resume();
    let m = mirror(&s3, "outage");
    assert!(rows(&m.table(TX)).is_empty(), "nothing half-committed");

    // An outage shorter than the retry window is ridden through: the rerun starts while the
    // store is down and completes once it is back (10 quick retries gave up after ~3 s).
    s3.stop();
    let child = remote
        .command(&["ingest"], &[("PIPELINE_STORE_RETRY_SECS", "120")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    s3.resume();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "an 8 s outage fails the command: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["rows_out"].as_u64().unwrap() > 25_000, "{r}");

    let local = Data::new();
    outage_batch(&local);
    local.ok(&["ingest"]);
    let m = mirror(&s3, "outage");
    assert_eq!(rows(&m.table(TX)), rows(&local.table(TX)));
}

#[test]
fn kills_at_random_moments_on_s3_rerun_to_a_clean_runs_result() {
    let Some(s3) = Seaweed::start("kills on S3") else {
        return;
    };
    let (cl, cr) = (Cql::new(), Cql::new());
    let local = local_reference(&cl);
    let remote = on_store(&s3, "kills");
    let mut rng = rand::rng();
    // A command killed after a random delay, then the next one; the last runs to the end.
    let steps: [&[&str]; 4] = [FIRST, &["run"], LATE, &["run"]];
    let mut kills = Vec::new();
    for (i, args) in steps.into_iter().enumerate() {
        // The first run (generate, then every stage, on S3) takes 0.9 to 1.5 s here: a kill
        // within its first 800 ms always interrupts it, so at least one kill lands mid-run
        // (with every delay drawn up to 2.5 s, all four commands sometimes finished first).
        let most = if i == 0 { 800 } else { 2500 };
        let delay = Duration::from_millis(rng.random_range(150..most));
        let mut child = remote
            .command(
                args,
                &cr.env()
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        kills.push((args[0], delay, killed));
        cr.ok(&remote, args);
    }
    eprintln!("kills on S3 (command, delay, interrupted): {kills:?}");
    assert!(
        kills.iter().any(|(_, _, killed)| *killed),
        "at least one kill interrupted a command: {kills:?}"
    );
    let m = mirror(&s3, "kills");
    assert_eq!(world(&m, &cr), world(&local, &cl), "kills: {kills:?}");
}

#[test]
fn a_bad_landing_file_on_s3_is_named_by_its_url_and_nothing_is_committed() {
    let Some(s3) = Seaweed::start("a bad landing file on S3") else {
        return;
    };
    let remote = on_store(&s3, "bad");
    outage_batch(&remote);
    let bad = "bad/_raw/customer_transactions/batch-000001/zz-bad.parquet";
    rt().block_on(async {
        s3.client()
            .put(&bad.into(), b"not parquet".to_vec().into())
            .await
            .unwrap();
    });
    let out = remote.run_env(&["ingest"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("s3://{BUCKET}/{bad}: not a readable Parquet file")),
        "names the object, not its downloaded copy: {err}"
    );
    assert!(
        rows(&mirror(&s3, "bad").table(TX)).is_empty(),
        "nothing committed"
    );
    // No downloaded copy is left in the scratch space.
    let mut left = Vec::new();
    crate::common::walk(remote.path(), &mut left);
    assert!(left.is_empty(), "scratch left behind: {left:?}");

    // A mistyped prefix: nothing landed there and no table: exit 2 like a missing local
    // folder, and nothing written there (it exited 0 having created four empty tables).
    let typo = on_store(&s3, "bda");
    let out = typo.run_env(&["ingest"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "landing folder s3://{BUCKET}/bda/_raw/customer_transactions does not exist"
        )),
        "{err}"
    );
    let mut written = Vec::new();
    crate::common::walk(mirror(&s3, "bda").path(), &mut written);
    assert!(written.is_empty(), "written under the typo: {written:?}");
}

const SMALL: &[&str] = &[
    "run",
    "--generate",
    "--rows",
    "3000",
    "--days",
    "3",
    "--customers",
    "100",
    "--dirty-rate",
    "0.03",
    "--rows-per-file",
    "1000",
];

/// Every table we commit to, by its path under the data dir.
const COMMITTED_TABLES: &[&str] = &[
    "customer_transactions",
    "_quarantine/customer_transactions",
    "_pipeline/ingest_files",
    "_pipeline/transaction_ids",
    "customer_daily_aggregates",
    "customer_profiles",
    "_pipeline/run_history",
];

/// A commit the store applied but whose answer was lost (the connection dropped, or a 502
/// from a proxy): object_store retries the conditional PUT, the retry is refused with 412, and
/// the run must recognise its own commit instead of taking it for another writer's (before,
/// ingest deleted the files of a commit in the log, and every later run failed on a missing
/// file). For every table we commit to: the run succeeds, a rerun finds nothing new, and the
/// tables and ScyllaDB equal a clean local run's.
#[test]
fn a_commit_whose_answer_is_lost_is_recognised_as_landed_on_every_table() {
    let Some(s3) = Seaweed::start("commits whose answer is lost") else {
        return;
    };
    let cl = Cql::new();
    let local = Data::new();
    cl.ok(&local, SMALL);
    let expected = world(&local, &cl);
    let proxy = crate::faulty_proxy::FaultyProxy::start(&s3.endpoint);
    let mut env = s3.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    for (i, table) in COMMITTED_TABLES.iter().enumerate() {
        let name = format!("lost-{i}");
        let lost = if i % 2 == 0 {
            crate::faulty_proxy::Lost::Dropped
        } else {
            crate::faulty_proxy::Lost::BadGateway
        };
        // Version 0 creates the table; version 1 is the stage's first commit.
        proxy.add(crate::faulty_proxy::Rule::new(
            "PUT",
            &format!("/{BUCKET}/{name}/{table}/_delta_log/"),
            "00000000000000000001.json",
            lost,
        ));
        let remote = Data::on_store(format!("s3://{BUCKET}/{name}"), env.clone());
        let cr = Cql::new();
        let out = cr.run(&remote, SMALL, &[]);
        let log = proxy.log_of(&format!("/{name}/{table}/_delta_log/"));
        assert_eq!(
            proxy.hits(),
            1,
            "{table}: the answer was lost once: {log:#?}"
        );
        assert!(
            out.status.success(),
            "{table}: a commit whose answer was lost ({lost:?}) is the run's own: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        proxy.clear();
        let again = cr.ok(&remote, &["run"]);
        assert!(
            again["stages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["skipped"] == true),
            "{table}: the rerun finds nothing new: {again}"
        );
        let m = mirror(&s3, &name);
        assert_eq!(
            world(&m, &cr),
            expected,
            "{table}: the tables and ScyllaDB equal a clean local run's"
        );
    }
}
