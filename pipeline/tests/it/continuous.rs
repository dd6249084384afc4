//! What continuous use needs from the batch stages: a bad file set aside instead of stopping
//! the stream, and an optional event-time watermark that makes old days final.

use crate::common::{Data, landing, noon, quarantine, raw, rows, u, version, write_raw};

const TX: &str = "customer_transactions";

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn run(d: &Data, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = d.run_env(args, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, err)
}

#[test]
fn a_bad_file_stops_ingest_by_default_and_is_set_aside_with_skip_until_it_is_fixed() {
    let d = Data::new();
    write_raw(
        &landing(&d).join("a.parquet"),
        &[
            raw(&id(1), noon("2024-01-01")),
            raw(&id(2), noon("2024-01-01")),
        ],
    );
    let bad = landing(&d).join("b.parquet");
    std::fs::write(&bad, b"not parquet at all").unwrap();

    // Default: stop, nothing committed, the file named.
    let (code, _, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("b.parquet"), "{err}");
    assert!(version(&d.table(TX)) <= Some(0), "no data committed");

    // Skip: the good file lands, the bad one is reported and the run exits 9.
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(9), "{err}");
    assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    assert_eq!(r["set_aside_files"][0]["path"], "b.parquet", "{r}");
    assert!(
        r["set_aside_files"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("Parquet"),
        "{r}"
    );
    assert_eq!(rows(&d.table(TX)).len(), 2);

    // Recorded: the next run neither reads it again nor reports it again.
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&r, "files_ingested"), 0, "{r}");
    assert!(r["set_aside_files"].as_array().unwrap().is_empty(), "{r}");

    // Fixed in place: its rows are ingested, once.
    write_raw(&bad, &[raw(&id(3), noon("2024-01-02"))]);
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    assert_eq!(rows(&d.table(TX)).len(), 3);
    assert_eq!(u(&d.ok(&["ingest"]), "files_ingested"), 0);
}

#[test]
fn with_a_watermark_late_rows_for_final_days_are_quarantined_and_newer_days_stay_open() {
    let d = Data::new();
    let days = [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ];
    let first: Vec<_> = (0..5)
        .map(|i| raw(&id(i), noon(days[i as usize])))
        .collect();
    write_raw(&landing(&d).join("1.parquet"), &first);
    d.ok(&["ingest", "--finalize-after", "2d"]);
    d.ok(&["aggregate"]);
    // Latest transaction 01-05 12:00, two days earlier 01-03 12:00: days before 01-03 are final.
    write_raw(
        &landing(&d).join("2.parquet"),
        &[
            raw(&id(10), noon("2024-01-02")),
            raw(&id(11), noon("2024-01-03")),
            raw(&id(12), noon("2024-01-04")),
        ],
    );
    let r = d.ok(&["ingest", "--finalize-after", "2d"]);
    assert_eq!(u(&r, "rows_out"), 2, "{r}");
    assert_eq!(u(&r, "rows_quarantined"), 1, "{r}");
    assert_eq!(
        quarantine(&d),
        vec![(id(10), "2024-01-02".into(), "late_beyond_watermark".into())]
    );
    let a = d.ok(&["aggregate"]);
    assert_eq!(
        u(&a, "days_recomputed"),
        2,
        "the final day is not reopened: {a}"
    );

    // Without the option (the default) a late row reopens its day.
    let plain = Data::new();
    write_raw(&landing(&plain).join("1.parquet"), &first);
    plain.ok(&["ingest"]);
    write_raw(
        &landing(&plain).join("2.parquet"),
        &[raw(&id(10), noon("2024-01-02"))],
    );
    let r = plain.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_out"), 1, "{r}");
    assert!(quarantine(&plain).is_empty());
}
