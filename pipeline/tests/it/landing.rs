//! What counts as a landing file, and when: files written in place by a producer (not
//! written under another name and renamed), symbolic links to files and folders, and the
//! staging folders other writers leave (`_temporary/…`, `.staging/`).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::{Data, landing, noon, raw, rows, u, write_raw};

const TX: &str = "customer_transactions";

fn id(file: u32, n: u32) -> String {
    format!("00000000-0000-4000-8000-{file:06}{n:06}")
}

/// The bytes of a landing file of `n` rows, ids `id(file, 0..n)`.
fn file_bytes(dir: &Path, file: u32, n: u32, day: &str) -> Vec<u8> {
    let p = dir.join(format!("tmp-{file}.parquet"));
    let rows: Vec<_> = (0..n).map(|i| raw(&id(file, i), noon(day))).collect();
    write_raw(&p, &rows);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    bytes
}

fn run(d: &Data, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = d.run_env(args, &[]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ids_of(d: &Data) -> Vec<String> {
    rows(&d.table(TX)).into_iter().map(|(id, _)| id).collect()
}

/// A file caught half-written, set aside, then completed in place while the same run reads
/// the other files: before, its record held the half file's size and time but the complete
/// file's hash, so every later run took it for "set aside, unchanged" and its rows never
/// arrived (exit 0). Now the run sees it moved and leaves it for the next one, which ingests
/// it whole.
#[test]
fn a_file_completed_in_place_while_ingest_reads_it_is_ingested_once_complete() {
    let d = Data::new();
    let scratch = tempfile::tempdir().unwrap();
    write_raw(
        &landing(&d).join("a.parquet"),
        &[raw(&id(1, 0), noon("2024-01-01"))],
    );
    let full = file_bytes(scratch.path(), 2, 500, "2024-01-02");
    let inplace = landing(&d).join("b.parquet");
    std::fs::write(&inplace, &full[..full.len() / 2]).unwrap();

    // The run sets b aside (no footer yet) and, while it reads a, the producer completes b.
    let paused = d.paused_at(
        "ingest.after_plan",
        &["ingest", "--on-bad-file", "skip"],
        &[],
    );
    std::thread::sleep(Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&inplace)
        .unwrap()
        .write_all(&full[full.len() / 2..])
        .unwrap();
    let out = paused.go_on();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a file still being written is not a bad file: {r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["deferred_files"][0], "b.parquet", "{r}");
    assert!(r["set_aside_files"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(ids_of(&d).len(), 1);

    // The next run ingests it whole, once.
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    assert_eq!(ids_of(&d).len(), 501);
    assert_eq!(u(&d.ok(&["ingest"]), "files_ingested"), 0);
}

/// A file read whole and then rewritten in place before the run commits (a producer that
/// overwrites): what the run read is not what it would record, so the file is left for the
/// next run, which ingests the new content; the old content, never committed, is not there.
#[test]
fn a_file_rewritten_in_place_before_the_commit_is_ingested_as_it_ends_up() {
    let d = Data::new();
    let scratch = tempfile::tempdir().unwrap();
    let f = landing(&d).join("a.parquet");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, file_bytes(scratch.path(), 1, 300, "2024-01-01")).unwrap();
    write_raw(
        &landing(&d).join("b.parquet"),
        &[raw(&id(9, 0), noon("2024-01-01"))],
    );
    let paused = d.paused_at("ingest.after_plan", &["ingest"], &[]);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&f, file_bytes(scratch.path(), 2, 200, "2024-01-03")).unwrap();
    let out = paused.go_on();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["deferred_files"][0], "a.parquet", "{r}");
    let (code, r, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(r["changed_files"].as_array().unwrap().is_empty(), "{r}");
    let got = ids_of(&d);
    assert_eq!(got.len(), 201, "the new content and b: {got:?}");
    assert!(got.iter().all(|i| !i.contains("-000001")), "{got:?}");
}

/// A producer writing files in place, in small pieces, while ingest runs again and again (as
/// `run --follow` does): every row arrives exactly once, and nothing is left set aside.
#[test]
fn files_written_in_place_while_ingest_runs_in_a_loop_all_arrive_once() {
    let d = Data::new();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(landing(&d)).unwrap();
    let files: Vec<Vec<u8>> = (0..6)
        .map(|f| file_bytes(scratch.path(), f, 400, "2024-01-05"))
        .collect();
    let dir = landing(&d);
    let producer = std::thread::spawn(move || {
        for (f, bytes) in files.iter().enumerate() {
            let mut out = std::fs::File::create(dir.join(format!("f{f}.parquet"))).unwrap();
            for piece in bytes.chunks(bytes.len() / 6 + 1) {
                out.write_all(piece).unwrap();
                out.flush().unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        }
    });
    while !producer.is_finished() {
        let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
        assert!(matches!(code, Some(0) | Some(9)), "{err}");
        let _ = r;
    }
    producer.join().unwrap();
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(0), "{r}\n{err}");
    let got = ids_of(&d);
    assert_eq!(got.len(), 6 * 400, "every row of every file, once");
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique.len(), got.len());
}

/// Symbolic links are followed, to folders and to files; a link whose target is replaced is
/// noticed as changed; a broken link and a loop are reported, never skipped silently. Before,
/// a linked producer folder was skipped without a word (1,400 of 1,800 rows, exit 0).
#[test]
fn symbolic_links_are_followed_and_broken_or_looping_ones_reported() {
    let d = Data::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let east = elsewhere.path().join("east");
    write_raw(
        &east.join("e1.parquet"),
        &[
            raw(&id(1, 0), noon("2024-01-01")),
            raw(&id(1, 1), noon("2024-01-01")),
        ],
    );
    let target = elsewhere.path().join("x.parquet");
    write_raw(&target, &[raw(&id(2, 0), noon("2024-01-02"))]);
    write_raw(
        &landing(&d).join("local.parquet"),
        &[raw(&id(3, 0), noon("2024-01-02"))],
    );
    std::os::unix::fs::symlink(&east, landing(&d).join("east")).unwrap();
    std::os::unix::fs::symlink(&target, landing(&d).join("x.parquet")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("gone.parquet"),
        landing(&d).join("gone.parquet"),
    )
    .unwrap();
    std::os::unix::fs::symlink(landing(&d), landing(&d).join("loop")).unwrap();

    let (code, r, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&r, "files_ingested"), 3, "{r}");
    assert_eq!(ids_of(&d).len(), 4);
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("gone.parquet") && warnings.contains("does not exist"),
        "{r}"
    );
    assert!(
        warnings.contains("loop") && warnings.contains("a loop"),
        "{r}"
    );

    // The link's target replaced: a changed file, reported (exit 8), its new content not
    // taken for the old.
    std::thread::sleep(Duration::from_millis(20));
    write_raw(
        &target,
        &[
            raw(&id(2, 0), noon("2024-01-02")),
            raw(&id(2, 1), noon("2024-01-02")),
        ],
    );
    let (code, r, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(8), "{r}\n{err}");
    assert_eq!(r["changed_files"][0]["path"], "x.parquet", "{r}");
}

/// The staging folders of other writers (Hadoop's `_temporary/…/attempt_…/`, `.staging/`),
/// hidden files and `_SUCCESS` markers are not landing files, on local disk as on an object
/// store (one rule); a half-written file there does not fail the run. Before, local ingest
/// read them (1,300 rows instead of 1,000) and failed with exit 3 on the half-written one.
#[test]
fn staging_folders_of_other_writers_are_not_landing_files() {
    let d = Data::new();
    let committed: Vec<_> = (0..1000)
        .map(|i| raw(&id(1, i), noon("2024-01-01")))
        .collect();
    write_raw(&landing(&d).join("out/part-0.parquet"), &committed);
    let attempt: Vec<_> = (0..300)
        .map(|i| raw(&id(2, i), noon("2024-01-01")))
        .collect();
    write_raw(
        &landing(&d).join("out/_temporary/0/_temporary/attempt_1/part-0.parquet"),
        &attempt,
    );
    std::fs::write(
        landing(&d).join("out/_temporary/0/_temporary/attempt_1/part-1.parquet"),
        b"PAR1 half",
    )
    .unwrap();
    std::fs::create_dir_all(landing(&d).join(".staging")).unwrap();
    std::fs::write(landing(&d).join(".staging/x.parquet"), b"half").unwrap();
    std::fs::write(landing(&d).join("out/_SUCCESS"), b"").unwrap();
    // A partition folder that starts with `_` is data (Spark's rule keeps `=` names).
    write_raw(
        &landing(&d).join("_region=eu/part-0.parquet"),
        &[raw(&id(3, 0), noon("2024-01-01"))],
    );
    let (code, r, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&r, "files_ingested"), 2, "{r}");
    assert_eq!(ids_of(&d).len(), 1001);
}

/// `ingest_files` gets one small file per run; past 16 of them they are merged, so many runs
/// leave a few files that still record every file consumed.
#[test]
fn many_runs_leave_a_few_ingest_files_files_that_remember_every_file() {
    let d = Data::new();
    for file in 0..20 {
        write_raw(
            &landing(&d).join(format!("f{file:02}.parquet")),
            &[raw(&id(file, 0), noon("2024-01-01"))],
        );
        let r = d.ok(&["ingest"]);
        assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    }
    let files = crate::common::live_files(&d.table("_pipeline/ingest_files"));
    assert!(files.len() < 16, "{} live files", files.len());
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_ingested"), 0, "{r}");
    assert_eq!(rows(&d.table(TX)).len(), 20);
}
