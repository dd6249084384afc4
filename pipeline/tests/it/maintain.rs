//! `maintain` (compaction, checkpoints, vacuum) changes no result, and batches after it still
//! flow incrementally to the same end state as a data dir that was never maintained.

use crate::common::{Data, rows, u};
use crate::crash::world;
use crate::scylla::Cql;

fn batch(d: &Data, n: u32, start: &str) {
    d.ok(&[
        "generate",
        "--batch",
        &n.to_string(),
        "--rows",
        "3000",
        "--days",
        "2",
        "--start-date",
        start,
        "--customers",
        "300",
        "--rows-per-file",
        "400",
        "--dirty-rate",
        "0.02",
    ]);
}

const STARTS: [&str; 5] = [
    "2024-01-01",
    "2024-01-02",
    "2024-01-01",
    "2024-01-03",
    "2024-01-02",
];

#[test]
fn maintenance_changes_no_result_and_later_batches_still_flow() {
    let cql = Cql::new();
    let d = Data::new();
    // Four batches, each run through on its own: many small files and commits.
    for (i, start) in STARTS[..4].iter().enumerate() {
        batch(&d, i as u32 + 1, start);
        cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    }
    let before = world(&d, &cql);

    let dry = cql.ok(&d, &["maintain", "--no-optimize"]);
    for t in dry["tables"].as_array().unwrap() {
        assert_eq!(t["vacuum_dry_run"], true);
    }
    assert_eq!(world(&d, &cql), before, "a dry run deletes nothing");

    let r = cql.ok(&d, &["maintain", "--vacuum", "--retention-hours", "0"]);
    let tables = r["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 6, "every table of the data dir: {r}");
    let tx = tables
        .iter()
        .find(|t| t["table"] == "customer_transactions")
        .unwrap();
    assert!(u(tx, "files_compacted") > 0, "{tx}");
    assert!(u(tx, "files_after") < u(tx, "files_before"), "{tx}");
    assert!(u(tx, "vacuum_files") >= u(tx, "files_compacted"), "{tx}");
    assert!(tx["checkpoint_version"].as_i64().is_some());
    assert_eq!(
        world(&d, &cql),
        before,
        "compaction and vacuum change no result"
    );
    cql.ok(&d, &["verify"]);
    // Nothing new for the stages: compaction commits touch no day.
    let again = cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    assert!(
        again["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["skipped"] == true),
        "{again}"
    );

    // A late batch after maintenance ends where a never-maintained data dir ends.
    batch(&d, 5, STARTS[4]);
    cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    let reference_cql = Cql::new();
    let reference = Data::new();
    for (i, start) in STARTS.iter().enumerate() {
        batch(&reference, i as u32 + 1, start);
    }
    reference_cql.ok(&reference, &["run", "--stages", "ingest,aggregate,load"]);
    assert_eq!(world(&d, &cql), world(&reference, &reference_cql));
    cql.ok(&d, &["verify"]);
    let history = d.ok(&["history"]);
    assert_eq!(history.as_array().unwrap().len(), 6, "{history}");
}

#[test]
fn two_compactions_at_once_do_not_duplicate_rows() {
    let d = Data::new();
    for batch in 1..=6 {
        let b = batch.to_string();
        d.ok(&[
            "generate",
            "--rows",
            "3000",
            "--days",
            "2",
            "--batch",
            &b,
            "--customers",
            "200",
        ]);
        d.ok(&["ingest"]);
    }
    let before = rows(&d.table("customer_transactions")).len();
    // delta-rs lets two compactions of the same files both land: only one may run at a time.
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("--data-dir")
            .arg(d.path())
            .args(["--json", "maintain"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(rows(&d.table("customer_transactions")).len(), before);
}
