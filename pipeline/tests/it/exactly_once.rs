//! Exactly once where real feeds and operators break it: a commit that lands but reports an
//! error, the same id on another day, dates before 1970, a rerun at another time, a raw file
//! changed after it was ingested, files left by killed runs, many landed files.

use std::collections::HashSet;

use crate::common::{Data, landing, noon, quarantine, raw, rows, u, version, write_raw};

const TX: &str = "customer_transactions";

fn generate(d: &Data, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--customers", "200", "--rows-per-file", "2000"];
    args.extend_from_slice(extra);
    d.ok(&args)
}

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Make the table checkpoint every `interval` commits with a metadata commit written by hand
/// (as another engine would), so a test reaches a checkpoint in a few commits.
fn set_checkpoint_interval(table: &std::path::Path, interval: u32) -> u64 {
    let log = table.join("_delta_log");
    let first = std::fs::read_to_string(log.join(format!("{:020}.json", 0))).unwrap();
    let mut meta: serde_json::Value = first
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|a| a.get("metaData").is_some())
        .unwrap();
    meta["metaData"]["configuration"]["delta.checkpointInterval"] =
        serde_json::json!(interval.to_string());
    let next = version(table).unwrap() + 1;
    let info =
        serde_json::json!({"commitInfo": {"timestamp": 0, "operation": "SET TBLPROPERTIES"}});
    std::fs::write(
        log.join(format!("{next:020}.json")),
        format!("{meta}\n{info}\n"),
    )
    .unwrap();
    next
}

#[test]
fn a_commit_that_landed_keeps_its_files_when_the_checkpoint_after_it_fails() {
    let d = Data::new();
    generate(&d, &["--rows", "1000", "--days", "1"]);
    d.ok(&["ingest"]);
    // The next ingest commit is version v; make it a checkpoint version, and put a directory
    // where that checkpoint file goes, so writing it fails.
    let v = set_checkpoint_interval(&d.table(TX), 3) + 1;
    assert_eq!(v % 3, 0, "the next commit is due a checkpoint");
    let blocker = d
        .table(TX)
        .join(format!("_delta_log/{v:020}.checkpoint.parquet"));
    std::fs::create_dir_all(&blocker).unwrap();
    generate(
        &d,
        &[
            "--rows",
            "500",
            "--days",
            "1",
            "--batch",
            "2",
            "--start-date",
            "2024-02-01",
        ],
    );
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_out"), 500, "{r}");
    assert_eq!(r["table_version"].as_u64(), Some(v));
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("checkpoint not written"), "{warnings}");
    assert_eq!(
        rows(&d.table(TX)).len(),
        1500,
        "the committed rows are there"
    );
    std::fs::remove_dir_all(&blocker).unwrap();
    let again = d.ok(&["ingest"]);
    assert_eq!(u(&again, "files_ingested"), 0);
    assert_eq!(rows(&d.table(TX)).len(), 1500, "and stay readable");
    d.ok(&["aggregate"]);
}

#[test]
fn an_id_is_unique_across_the_whole_table_whatever_its_timestamp() {
    let d = Data::new();
    generate(&d, &["--rows", "3000", "--days", "3"]);
    d.ok(&["ingest"]);
    let before = rows(&d.table(TX));
    // Ten ids re-sent with a timestamp on another day (re-stamped, settlement time...).
    let resent: Vec<_> = before
        .iter()
        .take(10)
        .map(|(id, _)| raw(id, noon("2024-01-20")))
        .collect();
    write_raw(&landing(&d).join("resent/restamped.parquet"), &resent);
    // And, within one run, one new id on two days in two files: the first file's copy wins.
    write_raw(
        &landing(&d).join("twice/a.parquet"),
        &[raw(&id(1), noon("2024-02-01"))],
    );
    write_raw(
        &landing(&d).join("twice/b.parquet"),
        &[raw(&id(1), noon("2024-02-03"))],
    );
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_in"), 12);
    assert_eq!(u(&r, "duplicates"), 11, "{r}");
    assert_eq!(u(&r, "rows_out"), 1);
    let after = rows(&d.table(TX));
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.contains(&(id(1), "2024-02-01".into())));
    let ids: HashSet<_> = after.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), after.len(), "every id once in the table");
    // The later copies are in quarantine, in the day they claimed.
    let q = quarantine(&d);
    assert_eq!(q.len(), 11);
    assert!(
        q.iter()
            .all(|(_, _, why)| why == "duplicate_transaction_id")
    );
    assert_eq!(
        q.iter().filter(|(_, day, _)| day == "2024-01-20").count(),
        10
    );
    assert!(q.contains(&(
        id(1),
        "2024-02-03".into(),
        "duplicate_transaction_id".into()
    )));
    // Counted once in the aggregates: they equal the independent recomputation.
    d.ok(&["aggregate"]);
    assert_eq!(crate::aggregate::table(&d), crate::aggregate::oracle(&d));
}

#[test]
fn days_before_1970_are_quarantined_by_default_and_flow_through_every_stage_when_allowed() {
    let cql = crate::scylla::Cql::new();
    let d = Data::new();
    let old = [
        raw(&id(1), noon("1969-12-31")),
        raw(&id(2), noon("1900-03-01")),
        raw(&id(3), noon("2024-01-02")),
    ];
    write_raw(&landing(&d).join("old/a.parquet"), &old);
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_out"), 1);
    assert_eq!(r["quarantine_reasons"]["transaction_ts_too_old"], 2, "{r}");

    let d = Data::new();
    write_raw(&landing(&d).join("old/a.parquet"), &old);
    let r = d.ok(&["ingest", "--min-date", "1900-01-01"]);
    assert_eq!(u(&r, "rows_out"), 3, "{r}");
    d.ok(&["aggregate"]);
    // A late batch for the same old days: the incremental aggregate recomputes them.
    write_raw(
        &landing(&d).join("old/b.parquet"),
        &[raw(&id(4), noon("1969-12-31"))],
    );
    d.ok(&["ingest", "--min-date", "1900-01-01"]);
    let a = d.ok(&["aggregate"]);
    assert_eq!(u(&a, "days_recomputed"), 1, "{a}");
    assert_eq!(
        crate::aggregate::table(&d),
        crate::aggregate::oracle_from(&d, "1900-01-01")
    );
    cql.ok(&d, &["load"]);
    cql.ok(&d, &["verify"]);
    let l = cql.ok(&d, &["lookup", "--customer", "1", "--to", "1970-01-01"]);
    let days: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["transaction_date"].as_str().unwrap())
        .collect();
    assert_eq!(days, ["1969-12-31", "1900-03-01"], "{l}");
    assert_eq!(l[0]["transaction_count"], 2);
}

#[test]
fn a_rerun_completes_a_killed_run_exactly_as_it_decided() {
    // A row a day and a half after the first run's clock: "in the future" for it, not for a
    // rerun two days later.
    let first = "2024-03-01T00:00:00Z";
    let later = "2024-03-03T00:00:00Z";
    let rows_in = [
        raw(&id(1), noon("2024-02-29")),
        raw(&id(2), noon("2024-03-02")),
    ];
    for point in ["ingest.between_commits", "ingest.after_quarantine_commit"] {
        let d = Data::new();
        write_raw(&landing(&d).join("f.parquet"), &rows_in);
        let out = d.run_env(
            &["ingest", "--now", first],
            &[("PIPELINE_FAILPOINTS", point)],
        );
        assert!(!out.status.success(), "{point}");
        let r = d.ok(&["ingest", "--now", later]);
        assert_eq!(
            u(&r, "files_ingested"),
            0,
            "{point}: the run was committed: {r}"
        );
        assert!(u(&r, "caught_up_commits") >= 1, "{point}: {r}");
        assert_eq!(
            rows(&d.table(TX)),
            vec![(id(1), "2024-02-29".into())],
            "{point}"
        );
        assert_eq!(
            quarantine(&d),
            vec![(
                id(2),
                "2024-03-02".into(),
                "transaction_ts_in_future".into()
            )],
            "{point}: the same decision, once"
        );
    }
    // Killed before its commit, a run decided nothing: the rerun decides at its own time.
    let d = Data::new();
    write_raw(&landing(&d).join("f.parquet"), &rows_in);
    let out = d.run_env(
        &["ingest", "--now", first],
        &[("PIPELINE_FAILPOINTS", "ingest.before_commit")],
    );
    assert!(!out.status.success());
    d.ok(&["ingest", "--now", later]);
    assert_eq!(rows(&d.table(TX)).len(), 2);
    assert!(quarantine(&d).is_empty());
}

#[test]
fn a_raw_file_changed_after_it_was_ingested_is_reported_with_what_to_do() {
    let d = Data::new();
    let f = landing(&d).join("in/f.parquet");
    write_raw(
        &f,
        &[
            raw(&id(1), noon("2024-01-01")),
            raw(&id(2), noon("2024-01-01")),
        ],
    );
    d.ok(&["ingest"]);
    // Same size, other content (an amount changed), and a new file beside it.
    let mut changed = vec![
        raw(&id(1), noon("2024-01-01")),
        raw(&id(2), noon("2024-01-01")),
    ];
    changed[1].cents = 9999;
    write_raw(&f, &changed);
    write_raw(
        &landing(&d).join("in/g.parquet"),
        &[raw(&id(3), noon("2024-01-02"))],
    );
    let out = d.run_env(&["ingest"], &[]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        u(&r, "files_ingested"),
        1,
        "the other file is ingested: {r}"
    );
    assert_eq!(r["changed_files"][0]["path"], "in/f.parquet");
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(d.path())
        .arg("ingest")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(plain.status.code(), Some(8));
    assert!(
        msg.contains("in/f.parquet") && msg.contains("land it under a new name"),
        "{msg}"
    );
    assert_eq!(
        rows(&d.table(TX)).len(),
        3,
        "the new content was not ingested"
    );
    // Touched but not changed: not reported.
    let d2 = Data::new();
    let f2 = landing(&d2).join("f.parquet");
    write_raw(&f2, &[raw(&id(1), noon("2024-01-01"))]);
    d2.ok(&["ingest"]);
    let bytes = std::fs::read(&f2).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&f2, bytes).unwrap();
    let r = d2.ok(&["ingest"]);
    assert!(r["changed_files"].as_array().unwrap().is_empty(), "{r}");
}

#[test]
fn progress_is_one_txn_per_stream_however_many_files_landed() {
    let d = Data::new();
    for n in 0..40 {
        write_raw(
            &landing(&d).join(format!("many/{n:03}.parquet")),
            &[raw(&id(n), noon("2024-01-01"))],
        );
        if n % 10 == 9 {
            d.ok(&["ingest"]);
        }
    }
    let mut app_ids = HashSet::new();
    let log = d.table(TX).join("_delta_log");
    for e in std::fs::read_dir(&log).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let a: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(t) = a.get("txn") {
                    app_ids.insert(t["appId"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert_eq!(app_ids.len(), 1, "{app_ids:?}");
    assert_eq!(rows(&d.table(TX)).len(), 40);
    let r = d.ok(&["ingest"]);
    assert_eq!((u(&r, "files_seen"), u(&r, "files_ingested")), (40, 0));
}

#[test]
fn vacuum_removes_files_killed_runs_left_once_they_are_old_enough() {
    let d = Data::new();
    generate(&d, &["--rows", "2000", "--days", "2"]);
    let out = d.run_env(
        &["ingest"],
        &[("PIPELINE_FAILPOINTS", "ingest.before_commit")],
    );
    assert!(!out.status.success());
    let parquet_files = |d: &Data| -> Vec<std::path::PathBuf> {
        let mut v = Vec::new();
        crate::common::walk(&d.table(TX), &mut v);
        v.retain(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p.to_string_lossy().contains("_delta_log")
        });
        v
    };
    let orphans = parquet_files(&d);
    assert!(!orphans.is_empty(), "the killed run left its data files");
    d.ok(&["ingest"]);
    let live = parquet_files(&d).len() - orphans.len();
    // Fresh orphans survive even a zero retention: a running stage may still commit them.
    let r = d.ok(&[
        "maintain",
        "--vacuum",
        "--retention-hours",
        "0",
        "--no-optimize",
    ]);
    assert_eq!(parquet_files(&d).len(), live + orphans.len(), "{r}");
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for f in &orphans {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    d.ok(&[
        "maintain",
        "--vacuum",
        "--retention-hours",
        "0",
        "--no-optimize",
    ]);
    assert_eq!(parquet_files(&d).len(), live, "the old orphans are gone");
    assert!(orphans.iter().all(|f| !f.exists()));
    assert_eq!(rows(&d.table(TX)).len(), 2000);
}

#[test]
fn an_id_index_out_of_step_with_the_table_is_rebuilt_and_still_finds_duplicates() {
    // In memory (one bucket) and spilled by id range (many).
    for bucket_ids in ["1000000", "700"] {
        let d = Data::new();
        generate(&d, &["--rows", "3000", "--days", "2"]);
        d.ok(&["ingest"]);
        // Another engine deletes a day (an erasure): the index now holds ids the table lacks.
        crate::common::delete_day(&d.table(TX), "2024-01-01");
        // Both days' files delivered again under new names.
        for day in ["2024-01-01", "2024-01-02"] {
            let landed = landing(&d).join(format!("batch-000001/{day}-0000.parquet"));
            std::fs::copy(&landed, landing(&d).join(format!("again-{day}.parquet"))).unwrap();
        }
        let r = d.ok(&["ingest", "--dedup-bucket-ids", bucket_ids]);
        // The deleted day's rows are new again; the other day's are duplicates.
        assert_eq!(u(&r, "rows_out"), 1500, "{bucket_ids}: {r}");
        assert_eq!(u(&r, "duplicates"), 1500, "{bucket_ids}: {r}");
        assert_eq!(rows(&d.table(TX)).len(), 3000, "{bucket_ids}");
        let again = d.ok(&["ingest", "--dedup-bucket-ids", bucket_ids]);
        assert_eq!(u(&again, "files_ingested"), 0, "{again}");
    }
}
