//! The bad-input matrix: each case asserts the exit code, the error text (what, where, what
//! to do) and that nothing was lost or half-written. Truncated files, wrong column types,
//! ScyllaDB unreachable, wrong credentials and a foreign table schema are covered in
//! `ingest` and `scylla`.

use std::path::Path;
use std::process::Output;

use crate::common::{Data, rows, u, version};

const TX: &str = "customer_transactions";

fn small(d: &Data) {
    d.ok(&["generate", "--rows", "3000", "--days", "2"]);
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn landing(d: &Data) -> std::path::PathBuf {
    d.path().join("_raw/customer_transactions")
}

/// Ingest must fail with exit 3 naming `file` and `problem`, and commit nothing.
fn refused(d: &Data, file: &str, problem: &str) {
    let before = (version(&d.table(TX)), rows(&d.table(TX)));
    let out = d.run_env(&["ingest"], &[]);
    let e = err(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains(file), "names the file: {e}");
    assert!(e.contains(problem), "says what is wrong: {e}");
    assert!(
        e.contains("Nothing of this run was committed; fix or remove the file and rerun"),
        "{e}"
    );
    // No data commit; at most the empty table, created by the run before it read the files.
    let after = version(&d.table(TX));
    assert!(
        after == before.0 || (before.0.is_none() && after == Some(0)),
        "{after:?}"
    );
    assert_eq!(rows(&d.table(TX)), before.1, "nothing committed");
}

#[test]
fn a_text_file_named_parquet_is_refused_by_name() {
    let d = Data::new();
    small(&d);
    std::fs::write(
        landing(&d).join("batch-000001/export.parquet"),
        "id,amount\n1,2.50\n",
    )
    .unwrap();
    refused(&d, "export.parquet", "not a readable Parquet file");
    // Files that do not claim to be Parquet are not landing files at all.
    std::fs::remove_file(landing(&d).join("batch-000001/export.parquet")).unwrap();
    std::fs::write(landing(&d).join("batch-000001/README.txt"), "notes").unwrap();
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_in"), 3000);
}

#[test]
fn an_empty_file_is_refused_by_name() {
    let d = Data::new();
    small(&d);
    std::fs::write(landing(&d).join("batch-000001/empty.parquet"), "").unwrap();
    refused(&d, "empty.parquet", "not a readable Parquet file");
}

#[test]
fn a_file_missing_a_column_is_refused_naming_the_column() {
    use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::parquet::arrow::ArrowWriter;
    use std::sync::Arc;
    let d = Data::new();
    small(&d);
    let schema = Arc::new(Schema::new(vec![
        Field::new("transaction_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![
                "67e55044-10b1-426f-9247-bb680e5fe0c8",
            ])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    let path = landing(&d).join("batch-000001/two-columns.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    refused(&d, "two-columns.parquet", "missing column `merchant_id`");
}

#[test]
fn an_empty_landing_folder_is_nothing_to_do() {
    let d = Data::new();
    std::fs::create_dir_all(landing(&d)).unwrap();
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_seen"), 0);
    assert_eq!(u(&r, "rows_in"), 0);
}

#[test]
fn a_missing_data_dir_says_to_generate_first() {
    let d = Data::new();
    let missing = d.path().join("nope");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(&missing)
        .arg("ingest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", err(&out));
    let e = err(&out);
    assert!(
        e.contains("does not exist: run `pipeline generate` first, or set --data-dir"),
        "{e}"
    );
    assert!(!missing.exists(), "nothing created");
}

/// Commands that read what earlier stages made refuse a data dir that is not there
/// (history, report and maintain exited 0 on a mistyped --data-dir).
#[test]
fn reading_commands_refuse_a_missing_data_dir() {
    let d = Data::new();
    let missing = d.path().join("typo");
    for cmd in [&["history"][..], &["report"], &["maintain"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("--data-dir")
            .arg(&missing)
            .args(cmd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", err(&out));
        assert!(
            err(&out).contains("typo does not exist: run `pipeline generate`"),
            "{cmd:?}: {}",
            err(&out)
        );
        assert!(!missing.exists(), "{cmd:?} created the data dir");
    }
}

#[test]
fn bad_option_values_are_usage_errors() {
    let d = Data::new();
    for (args, text) in [
        (
            &["generate", "--start-date", "2024-13-40"][..],
            "invalid value '2024-13-40' for '--start-date",
        ),
        (
            &["generate", "--rows", "-5"][..],
            "unexpected argument '-5'",
        ),
        (
            &["generate", "--rows", "many"][..],
            "invalid value 'many' for '--rows",
        ),
        (
            &["load", "--max-errors", "lots"][..],
            "neither a row count like 100 nor a percentage",
        ),
        (
            &["run", "--stages", "ingest,transform"][..],
            "unknown stage `transform`",
        ),
        (
            &["run", "--from", "load", "--to", "ingest"][..],
            "--from load comes after --to ingest, so no stage would run",
        ),
        (
            &["run", "--to", "generate"][..],
            "--from ingest (the default) comes after --to generate",
        ),
    ] {
        let out = d.run_env(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", err(&out));
        assert!(err(&out).contains(text), "{args:?}: {}", err(&out));
    }
    assert!(
        !d.path().join("_pipeline/run_history").exists(),
        "a refused run was recorded"
    );
}

/// Corrupt the newest commit file of a table, or remove an older one.
fn damage_log(table: &Path, how: &str) -> std::path::PathBuf {
    let commits = crate::common::commit_files(table);
    match how {
        "corrupt" => {
            let last = commits.last().unwrap().clone();
            std::fs::write(&last, "{\"add\": {\"path\": ").unwrap();
            last
        }
        _ => {
            let first_data_commit = commits[1].clone();
            std::fs::remove_file(&first_data_commit).unwrap();
            first_data_commit
        }
    }
}

#[test]
fn a_corrupt_or_missing_commit_file_is_a_clear_error_and_nothing_more_is_written() {
    for how in ["corrupt", "missing"] {
        let d = Data::new();
        small(&d);
        d.ok(&["ingest"]);
        d.ok(&[
            "generate",
            "--rows",
            "1000",
            "--days",
            "1",
            "--batch",
            "2",
            "--start-date",
            "2024-02-01",
        ]);
        d.ok(&["ingest"]);
        let damaged = damage_log(&d.table(TX), how);
        let files_before = std::fs::read_dir(d.table(TX)).unwrap().count();
        d.ok(&[
            "generate",
            "--rows",
            "1000",
            "--days",
            "1",
            "--batch",
            "3",
            "--start-date",
            "2024-03-01",
        ]);
        let out = d.run_env(&["ingest"], &[]);
        let e = err(&out);
        assert_eq!(out.status.code(), Some(1), "{how}: {e}");
        assert!(
            e.contains(
                "Delta table customer_transactions: its transaction log (_delta_log) is damaged"
            ),
            "{how}: names the table and the problem: {e}"
        );
        let what = if how == "corrupt" {
            "a commit file is not valid JSON"
        } else {
            "the commit files are not contiguous (one is missing)"
        };
        assert!(e.contains(what), "{how}: {e}");
        assert!(
            e.contains("Restore the damaged or missing commit file"),
            "{how}: {e}"
        );
        assert_eq!(
            std::fs::read_dir(d.table(TX)).unwrap().count(),
            files_before,
            "{how}: nothing written next to a damaged log ({})",
            damaged.display()
        );
    }
}

#[test]
fn a_data_dir_without_write_permission_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let d = Data::new();
    small(&d);
    // Readable by everyone, writable by the owner only.
    for dir in [
        d.path().to_path_buf(),
        landing(&d),
        landing(&d).join("batch-000001"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_pipeline");
    // As root, permissions do not stop writes: run the binary as `nobody` instead.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--", bin]);
        c
    } else {
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::process::Command::new(bin)
    };
    let out = cmd
        .arg("--data-dir")
        .arg(d.path())
        .arg("ingest")
        .output()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = err(&out);
    if is_root && e.contains("runuser") {
        eprintln!("skipped: cannot switch to user nobody here: {e}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("Permission denied"), "{e}");
    assert!(e.contains("customer_transactions"), "names the table: {e}");
    assert!(!d.table(TX).join("_delta_log").exists(), "nothing created");
}

#[test]
fn a_raw_file_that_vanishes_mid_run_is_named_and_nothing_is_committed() {
    let d = Data::new();
    small(&d);
    let gate = d.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(d.path())
        .arg("ingest")
        .env(
            "PIPELINE_PAUSE",
            format!("ingest.after_plan:{}", gate.display()),
        )
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reached = d.path().join("gate.reached");
    let start = std::time::Instant::now();
    while !reached.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "ingest never reached the pause point"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let victim = landing(&d).join("batch-000001/2024-01-02-0000.parquet");
    std::fs::remove_file(&victim).unwrap();
    std::fs::remove_file(&gate).unwrap();
    let out = child.wait_with_output().unwrap();
    let e = err(&out);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("2024-01-02-0000.parquet"), "{e}");
    assert!(
        e.contains("must not be moved or deleted while ingest runs"),
        "{e}"
    );
    assert!(rows(&d.table(TX)).is_empty(), "nothing committed");
    // The remaining files are ingested by the next run; nothing of the failed one is left.
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_in"), 1500);
    assert_eq!(rows(&d.table(TX)).len() as u64, u(&r, "rows_out"));
}

#[test]
fn a_full_disk_during_ingest_commits_nothing_and_a_rerun_completes() {
    let d = Data::new();
    let mnt = d.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("--data-dir")
            .arg(&mnt)
            .arg("--json")
            .args(args)
            .output()
            .unwrap()
    };
    let g = run(&["generate", "--rows", "60000", "--days", "2"]);
    assert!(g.status.success(), "{}", err(&g));
    let out = run(&["ingest"]);
    let e = err(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    assert!(rows(&mnt.join(TX)).is_empty(), "nothing committed");
    // More room, rerun: everything arrives once.
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(remount.success());
    let out = run(&["ingest"]);
    assert!(out.status.success(), "{}", err(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&r, "rows_in"), 60000);
    assert_eq!(rows(&mnt.join(TX)).len() as u64, u(&r, "rows_out"));
}

#[test]
fn every_command_names_a_damaged_log_as_damaged_never_as_absent() {
    let cql = crate::scylla::Cql::new();
    let d = Data::new();
    small(&d);
    cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    damage_log(&d.table("customer_daily_aggregates"), "corrupt");
    damage_log(&d.table("_pipeline/run_history"), "corrupt");
    for args in [
        &["load"][..],
        &["verify"][..],
        &["aggregate"][..],
        &["history"][..],
        &["load", "--dry-run"][..],
    ] {
        let out = cql.run(&d, args, &[]);
        let e = err(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("is damaged"), "{args:?}: {e}");
        assert!(!e.contains("does not exist yet"), "{args:?}: {e}");
    }
}

/// An amount beyond the contract's Decimal(12, 2) (a Parquet INT64 decimal(12, 2) column can
/// hold 6e15; nothing checks precision on read): quarantined as `amount_out_of_range`, with
/// the amount left null there (the column's type cannot hold it); the stages after ingest go
/// on. Before, it was accepted, shown wrongly by `sql`, and every later aggregate failed
/// ("too large to store in a Decimal128 of precision 18") naming no file, row or column.
#[test]
fn an_amount_beyond_the_contracts_precision_is_quarantined() {
    use crate::common::{noon, quarantine, raw, write_raw};
    let d = Data::new();
    let mut huge = raw("00000000-0000-4000-8000-000000000001", noon("2024-02-01"));
    huge.cents = 600_000_000_000_000_000; // 6e15 in units
    let ok = raw("00000000-0000-4000-8000-000000000002", noon("2024-02-01"));
    write_raw(&landing(&d).join("a.parquet"), &[huge, ok]);
    let r = d.ok(&["run", "--stages", "ingest,aggregate,profiles"]);
    let ingest = &r["stages"][0]["report"];
    assert_eq!(u(ingest, "rows_quarantined"), 1, "{r}");
    assert_eq!(
        ingest["quarantine_reasons"]["amount_out_of_range"], 1,
        "{r}"
    );
    assert_eq!(
        quarantine(&d),
        vec![(
            "00000000-0000-4000-8000-000000000001".to_string(),
            "2024-02-01".to_string(),
            "amount_out_of_range".to_string()
        )]
    );
    let out = d.ok(&[
        "sql",
        "SELECT amount IS NULL AS null_amount FROM customer_transactions_quarantine",
    ]);
    assert!(out.to_string().contains("true"), "{out}");
    let total = d.ok(&[
        "sql",
        "SELECT CAST(sum(total_amount) AS VARCHAR) AS t FROM customer_daily_aggregates",
    ]);
    assert!(total.to_string().contains("10.00"), "{total}");
}

/// A failed run: its summary says where it failed and the error is printed once, on stderr
/// (it was printed twice, once inside a garbled summary line); with --json the error is on
/// stdout too when no report was (a failing `ingest --json` printed nothing there), and a
/// failed `run --json` prints exactly one document.
#[test]
fn a_failed_run_says_so_once_and_json_errors_reach_stdout() {
    let d = Data::new();
    small(&d);
    let batch = std::fs::read_dir(landing(&d))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::write(batch.join("bad.parquet"), "not parquet").unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(d.path())
        .args(["--no-progress", "run"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), err(&out));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let head = stdout.lines().next().unwrap_or_default();
    assert!(head.contains(": failed in ingest after "), "{stdout}");
    assert!(
        !stdout.contains("bad.parquet"),
        "the error is not in the summary: {stdout}"
    );
    assert_eq!(stderr.matches("bad.parquet").count(), 1, "{stderr}");

    let out = d.run_env(&["ingest"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(v["exit_code"], 3, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bad.parquet"), "{v}");

    let out = d.run_env(&["run"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["failed_in"], "ingest", "{v}");
}

/// A batch `run` stopped by SIGINT (Ctrl-C) says so, is recorded as interrupted and ends by
/// the signal, at once (it ended silently, by the signal, and left no run history row).
#[test]
fn an_interrupted_run_says_so_and_is_recorded() {
    let d = Data::new();
    let child = d
        .command(
            &["run", "--generate", "--rows", "4000000", "--days", "5"],
            &[],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let started = || {
        std::fs::read_dir(landing(&d)).is_ok_and(|batches| {
            batches
                .flatten()
                .any(|b| std::fs::read_dir(b.path()).is_ok_and(|mut f| f.next().is_some()))
        })
    };
    while !started() {
        assert!(t.elapsed().as_secs() < 60, "generate wrote nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stopped = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(stopped.elapsed().as_secs() < 20, "{:?}", stopped.elapsed());
    let e = err(&out);
    // Ended by SIGINT itself, as a shell expects (it shows 130), so a script's loop stops too.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "{:?}: {e}",
        out.status
    );
    assert!(e.contains("interrupted by SIGINT during generate"), "{e}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed_in"], "generate", "{report}");
    let history = d.ok(&["history"]);
    assert_eq!(
        history[0]["outcome"], "interrupted in generate: SIGINT",
        "{history}"
    );
}
