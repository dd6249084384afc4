//! generate -> ingest end to end: counts, idempotence, increments, dirty data, crashes, bad files.

use std::collections::HashSet;
use std::sync::Arc;

use deltalake::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::parquet::arrow::ArrowWriter;

use crate::common::{Data, rows, u, version};

const TX: &str = "customer_transactions";
const Q: &str = "_quarantine/customer_transactions";

fn generate(d: &Data, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--customers", "500", "--rows-per-file", "4000"];
    args.extend_from_slice(extra);
    d.ok(&args)
}

#[test]
fn generate_then_ingest_lands_every_row_by_day() {
    let d = Data::new();
    let g = generate(&d, &["--rows", "20000", "--days", "5"]);
    assert_eq!(u(&g, "rows"), 20_000);
    assert_eq!(u(&g, "files"), 5);
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_ingested"), 5);
    assert_eq!(u(&r, "rows_in"), 20_000);
    assert_eq!(u(&r, "rows_out"), 20_000);
    assert_eq!(u(&r, "rows_quarantined") + u(&r, "duplicates"), 0);
    assert_eq!(u(&r, "days"), 5);

    let table = rows(&d.table(TX));
    assert_eq!(table.len(), 20_000);
    let ids: HashSet<_> = table.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 20_000, "ids are unique");
    let days: HashSet<_> = table.iter().map(|(_, day)| day.as_str()).collect();
    let want: HashSet<_> = [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ]
    .into();
    assert_eq!(days, want);
}

#[test]
fn ingest_twice_commits_nothing_new() {
    let d = Data::new();
    generate(&d, &["--rows", "5000", "--days", "2"]);
    let first = d.ok(&["ingest"]);
    let v = version(&d.table(TX));
    let second = d.ok(&["ingest"]);
    assert_eq!(u(&first, "files_ingested"), 2);
    assert_eq!(u(&second, "files_ingested"), 0);
    assert_eq!(u(&second, "rows_in"), 0);
    assert!(second["table_version"].is_null());
    assert_eq!(version(&d.table(TX)), v, "no commit on a rerun");
    assert_eq!(rows(&d.table(TX)).len(), 5000);
}

#[test]
fn a_second_batch_reads_only_new_files_and_late_rows_land_in_old_days() {
    let d = Data::new();
    generate(
        &d,
        &[
            "--rows",
            "6000",
            "--days",
            "3",
            "--start-date",
            "2024-03-01",
        ],
    );
    d.ok(&["ingest"]);
    // Batch 2: two new days, plus late rows for 2024-03-02 and 03-03.
    generate(
        &d,
        &[
            "--rows",
            "8000",
            "--days",
            "4",
            "--start-date",
            "2024-03-02",
            "--batch",
            "2",
        ],
    );
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_seen"), 7);
    assert_eq!(
        u(&r, "files_ingested"),
        4,
        "only the new batch's files are read"
    );
    assert_eq!(u(&r, "rows_in"), 8000);
    assert_eq!(u(&r, "rows_out"), 8000);
    let table = rows(&d.table(TX));
    assert_eq!(table.len(), 14_000);
    let on = |day: &str| table.iter().filter(|(_, d)| d == day).count();
    assert_eq!(on("2024-03-01"), 2000);
    assert_eq!(
        on("2024-03-02"),
        2000 + 2000,
        "late rows joined an existing day"
    );
    assert_eq!(on("2024-03-05"), 2000);
}

#[test]
fn dirty_rows_are_quarantined_and_duplicates_counted_exactly() {
    let direct = dirty_two_batches(&[]);
    // 5,000 rows a day against buckets of 700 ids: every day, and the ids already in the
    // table for batch 2, go through the bucketed path. It must decide exactly the same.
    let bucketed = dirty_two_batches(&["--dedup-bucket-ids", "700"]);
    assert_eq!(direct, bucketed);
}

/// Generate two dirty batches (the second re-delivering rows of the first), ingest each with
/// `ingest_args`, check the counts, and return the clean and quarantined rows, sorted.
type Rows = Vec<(String, String)>;

fn dirty_two_batches(ingest_args: &[&str]) -> (Rows, Rows) {
    let ingest: Vec<&str> = ["ingest"].iter().chain(ingest_args).copied().collect();
    let d = Data::new();
    let g1 = generate(
        &d,
        &["--rows", "20000", "--days", "4", "--dirty-rate", "0.05"],
    );
    let r1 = d.ok(&ingest);
    // Batch 2 re-delivers rows of batch 1 (already in the table) and has its own bad rows.
    let g2 = generate(
        &d,
        &[
            "--rows",
            "10000",
            "--days",
            "2",
            "--dirty-rate",
            "0.05",
            "--batch",
            "2",
            "--start-date",
            "2024-01-03",
        ],
    );
    assert!(
        g2["dirty"]["duplicate_of_earlier_batch"].as_u64().unwrap() > 0,
        "{g2}"
    );
    let r2 = d.ok(&ingest);

    for (g, r) in [(&g1, &r1), (&g2, &r2)] {
        assert_eq!(u(r, "rows_in"), u(g, "rows"));
        assert_eq!(
            u(r, "rows_quarantined"),
            u(g, "expected_quarantined"),
            "{r}"
        );
        assert_eq!(u(r, "duplicates"), u(g, "expected_duplicates"), "{r}");
        assert_eq!(
            u(r, "rows_in"),
            u(r, "rows_out") + u(r, "rows_quarantined") + u(r, "duplicates")
        );
        // Every injected rule kind comes back under the same name.
        for (kind, n) in g["dirty"].as_object().unwrap() {
            if !kind.starts_with("duplicate") {
                assert_eq!(r["quarantine_reasons"][kind].as_u64(), n.as_u64(), "{kind}");
            }
        }
    }
    let clean = rows(&d.table(TX));
    let q = rows(&d.table(Q));
    assert_eq!(clean.len() as u64, u(&r1, "rows_out") + u(&r2, "rows_out"));
    let expected_q = u(&r1, "rows_quarantined")
        + u(&r1, "duplicates")
        + u(&r2, "rows_quarantined")
        + u(&r2, "duplicates");
    assert_eq!(
        q.len() as u64,
        expected_q,
        "nothing lost: every rejected row is in quarantine"
    );
    let ids: HashSet<_> = clean.iter().map(|(id, _)| id.to_lowercase()).collect();
    assert_eq!(ids.len(), clean.len(), "no duplicate id in the clean table");
    let (mut clean, mut q) = (clean, q);
    clean.sort();
    q.sort();
    (clean, q)
}

/// Kill at each failpoint, rerun, and compare with a clean run of the same input.
#[test]
fn a_crash_before_or_between_commits_reruns_to_the_clean_result() {
    let reference = Data::new();
    generate(
        &reference,
        &["--rows", "8000", "--days", "2", "--dirty-rate", "0.05"],
    );
    reference.ok(&["ingest"]);
    let want_tx = rows(&reference.table(TX));
    let want_q = rows(&reference.table(Q));

    // Before the commit nothing is visible and the rerun ingests both files; after it (the
    // main table holds the run, its quarantine and bookkeeping commits not yet done) the
    // rerun completes those commits from what the run recorded and reads no file.
    for (point, committed) in [
        ("ingest.before_commit", false),
        ("ingest.between_commits", true),
        ("ingest.after_quarantine_commit", true),
    ] {
        let d = Data::new();
        generate(
            &d,
            &["--rows", "8000", "--days", "2", "--dirty-rate", "0.05"],
        );
        let crashed = d.run_env(&["ingest"], &[("PIPELINE_FAILPOINTS", point)]);
        assert!(
            !crashed.status.success(),
            "{point}: the failpoint must stop the process"
        );
        let after_crash = rows(&d.table(TX));
        assert_eq!(
            after_crash.is_empty(),
            !committed,
            "{point}: the table shows the run exactly when its commit landed"
        );
        let r = d.ok(&["ingest"]);
        assert_eq!(
            u(&r, "files_ingested"),
            if committed { 0 } else { 2 },
            "{point}: {r}"
        );
        assert_eq!(
            rows(&d.table(TX)),
            want_tx,
            "{point}: table equals a clean run"
        );
        assert_eq!(
            rows(&d.table(Q)),
            want_q,
            "{point}: quarantine equals a clean run (no duplicates)"
        );
        let again = d.ok(&["ingest"]);
        assert_eq!(u(&again, "files_ingested"), 0, "{point}");
    }
}

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_corrupt_file_is_a_clear_error_and_commits_nothing() {
    let d = Data::new();
    generate(&d, &["--rows", "4000", "--days", "2"]);
    d.ok(&["ingest"]);
    let before = (version(&d.table(TX)), rows(&d.table(TX)));
    generate(
        &d,
        &[
            "--rows",
            "4000",
            "--days",
            "2",
            "--batch",
            "2",
            "--start-date",
            "2024-02-01",
        ],
    );
    // Truncate one of the new files: its footer is gone.
    let victim = d
        .path()
        .join("_raw/customer_transactions/batch-000002/2024-02-01-0000.parquet");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();

    let out = d.run_env(&["ingest"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("2024-02-01-0000.parquet"),
        "names the file: {err}"
    );
    assert!(
        err.contains("not a readable Parquet file"),
        "says what is wrong: {err}"
    );
    assert!(err.contains("Nothing of this run was committed"), "{err}");
    assert_eq!(
        (version(&d.table(TX)), rows(&d.table(TX))),
        before,
        "table unchanged"
    );
}

#[test]
fn a_wrong_column_type_is_a_clear_error_and_commits_nothing() {
    let d = Data::new();
    generate(&d, &["--rows", "2000", "--days", "1"]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("transaction_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("transaction_ts", DataType::Int64, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
    ]));
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as _;
    let i = |v: i64| Arc::new(Int64Array::from(vec![v])) as _;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            s("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            i(1),
            i(1),
            i(1),
            Arc::new(Float64Array::from(vec![9.99])),
            s("grocery"),
            s("online"),
            s("approved"),
        ],
    )
    .unwrap();
    write_parquet(
        &d.path()
            .join("_raw/customer_transactions/other/float-amounts.parquet"),
        &batch,
    );

    let out = d.run_env(&["ingest"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("float-amounts.parquet"), "{err}");
    assert!(
        err.contains("column `transaction_ts` has type Int64"),
        "{err}"
    );
    assert!(
        rows(&d.table(TX)).is_empty(),
        "the good files of the same run were not committed either"
    );
}

#[test]
fn maintain_completes_an_interrupted_run_of_every_landing_prefix() {
    let d = Data::new();
    for (prefix, batch, seed) in [("east", "1", "1"), ("west", "1", "2"), ("east", "2", "3")] {
        generate(
            &d,
            &[
                "--landing-prefix",
                prefix,
                "--batch",
                batch,
                "--seed",
                seed,
                "--rows",
                "3000",
                "--days",
                "2",
            ],
        );
        if batch == "1" {
            d.ok(&["--landing-prefix", prefix, "ingest"]);
        }
    }
    // East's second run is killed after its main commit, before its bookkeeping commits.
    let crashed = d.run_env(
        &["--landing-prefix", "east", "ingest"],
        &[("PIPELINE_FAILPOINTS", "ingest.between_commits")],
    );
    assert!(!crashed.status.success());
    let before = version(&d.table("_pipeline/ingest_files")).unwrap();
    let r = d.ok(&["maintain"]);
    assert!(u(&r, "caught_up_commits") >= 3, "{r}");
    assert!(version(&d.table("_pipeline/ingest_files")).unwrap() > before);
    // Nothing is left for east's next run to complete, and it reads no file again.
    let r = d.ok(&["--landing-prefix", "east", "ingest"]);
    assert_eq!(u(&r, "caught_up_commits"), 0, "{r}");
    assert_eq!(u(&r, "files_ingested"), 0, "{r}");
    let ids = rows(&d.table(TX));
    let distinct: HashSet<_> = ids.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), distinct.len());
    assert!(ids.len() > 8_000, "{}", ids.len());
}

/// East's ingest paused at its commit while west's ingest commits; returns east's report.
fn east_commits_after_west(d: &Data) -> serde_json::Value {
    let east = d.paused_at(
        "ingest.before_commit",
        &["--landing-prefix", "east", "ingest"],
        &[],
    );
    d.ok(&["--landing-prefix", "west", "ingest"]);
    let out = east.go_on();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_run_that_loses_the_race_to_another_prefix_lands_on_top_unless_they_share_ids() {
    for twin in [false, true] {
        let d = Data::new();
        for (prefix, seed) in [("east", "1"), ("west", "2")] {
            generate(
                &d,
                &[
                    "--landing-prefix",
                    prefix,
                    "--seed",
                    seed,
                    "--rows",
                    "4000",
                    "--days",
                    "2",
                ],
            );
        }
        let raw = d.path().join("_raw/customer_transactions");
        if twin {
            // One of east's files delivered to west too: west commits its rows first.
            std::fs::copy(
                raw.join("east/batch-000001/2024-01-01-0000.parquet"),
                raw.join("west/batch-000001/2024-01-01-twin.parquet"),
            )
            .unwrap();
        }
        let east = east_commits_after_west(&d);
        // Without shared ids east's decisions stand and its files go on top of west's
        // commit; with them, east is done again and drops the rows west committed.
        assert_eq!(
            u(&east, "lost_races"),
            u64::from(twin),
            "twin {twin}: {east}"
        );
        assert_eq!(u(&east, "duplicates") > 1_000, twin, "twin {twin}: {east}");
        let ids = rows(&d.table(TX));
        let distinct: HashSet<_> = ids.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), distinct.len(), "twin {twin}: no row twice");
        assert!(ids.len() > 7_500, "twin {twin}: {}", ids.len());
    }
}

/// East's run paused between its main commit and its index commit (in flight, as in another
/// process) while west ingests a batch that shares one file with it: west completes east's
/// record instead of rebuilding the whole index from the table (it did, in 12 of 32 runs
/// of two concurrent streams), and its deduplication sees east's ids.
#[test]
fn another_streams_run_in_flight_is_completed_not_a_reason_to_rebuild_the_index() {
    let d = Data::new();
    for (prefix, seed) in [("east", "1"), ("west", "2")] {
        generate(
            &d,
            &[
                "--landing-prefix",
                prefix,
                "--seed",
                seed,
                "--rows",
                "4000",
                "--days",
                "2",
            ],
        );
    }
    let raw = d.path().join("_raw/customer_transactions");
    std::fs::copy(
        raw.join("east/batch-000001/2024-01-01-0000.parquet"),
        raw.join("west/batch-000001/2024-01-01-twin.parquet"),
    )
    .unwrap();

    let east = d.paused_at(
        "ingest.between_commits",
        &["--landing-prefix", "east", "ingest"],
        &[],
    );
    let west = d.ok(&["--landing-prefix", "west", "ingest"]);
    let out = east.go_on();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let east: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert!(
        !west.to_string().contains("rebuilt the index"),
        "west rebuilt the index: {west}"
    );
    assert!(u(&west, "caught_up_commits") >= 1, "{west}");
    assert!(
        u(&west, "duplicates") > 1_000,
        "west's dedup saw east's ids: {west}"
    );
    let ids = rows(&d.table(TX));
    let distinct: HashSet<_> = ids.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), distinct.len(), "no row twice");
    assert_eq!(
        ids.len() as u64,
        u(&east, "rows_out") + u(&west, "rows_out"),
        "{east} {west}"
    );
    // The index holds exactly the table's ids: the next run has nothing to repair.
    let next = d.ok(&["--landing-prefix", "west", "ingest"]);
    assert!(!next.to_string().contains("rebuilt the index"), "{next}");
}

/// An index rebuild (here forced by another engine deleting a day) while east's run is in
/// flight takes east's ids from the main table: it records east's run too, so completing
/// east's record does not add its ids a second time (a surplus that could later offset a
/// missing run and let a duplicate in).
#[test]
fn a_rebuild_during_another_streams_flight_records_its_run() {
    let d = Data::new();
    for (prefix, seed, rows) in [("north", "3", "4000"), ("east", "1", "1000")] {
        generate(
            &d,
            &[
                "--landing-prefix",
                prefix,
                "--seed",
                seed,
                "--rows",
                rows,
                "--days",
                "2",
            ],
        );
    }
    d.ok(&["--landing-prefix", "north", "ingest"]);
    let east = d.paused_at(
        "ingest.between_commits",
        &["--landing-prefix", "east", "ingest"],
        &[],
    );
    // Then another engine deletes a day: the index holds more ids than the table, and north
    // rebuilds it with east in flight.
    crate::common::delete_day(&d.table(TX), "2024-01-01");
    let north = d.ok(&["--landing-prefix", "north", "ingest"]);
    assert!(
        north.to_string().contains("rebuilt the index"),
        "the deletion forces a rebuild: {north}"
    );
    let out = east.go_on();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The index holds exactly the table's ids: nothing to repair.
    let next = d.ok(&["--landing-prefix", "north", "ingest"]);
    assert!(
        !next.to_string().contains("rebuilt the index"),
        "east's ids were added twice: {next}"
    );
}
