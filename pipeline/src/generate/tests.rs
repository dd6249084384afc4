//! Unit tests of the generator: determinism, distributions, dirty kinds, reruns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::NaiveTime;
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::layout;
use crate::rules;

const DAY_US: i64 = 86_400_000_000;
use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

fn rows_of(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = walk(dir);
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if layout::is_landing_candidate(&p) {
            out.push(p);
        }
    }
    out
}

fn generate_into(dir: &Path, cfg: &GenerateOptions) -> GenerateReport {
    run(&Layout::new(dir), cfg, &Progress::hidden()).unwrap()
}

#[test]
fn same_seed_same_rows_different_seed_different_rows() {
    let cfg = GenerateOptions {
        rows: 5_000,
        days: 3,
        rows_per_file: 1_000,
        ..Default::default()
    };
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate_into(a.path(), &cfg);
    generate_into(b.path(), &cfg);
    generate_into(
        c.path(),
        &GenerateOptions {
            seed: 7,
            ..cfg.clone()
        },
    );
    let (ra, rb, rc) = (rows_of(a.path()), rows_of(b.path()), rows_of(c.path()));
    assert_eq!(ra, rb);
    assert_ne!(ra, rc);
    assert_eq!(ra.iter().map(|b| b.num_rows()).sum::<usize>(), 5_000);

    // Neighbouring seeds share no row (the seed once met the file number in one XOR).
    let d = tempfile::tempdir().unwrap();
    generate_into(
        d.path(),
        &GenerateOptions {
            seed: cfg.seed + 1,
            ..cfg.clone()
        },
    );
    let ids = |batches: &[RecordBatch]| -> std::collections::HashSet<String> {
        batches
            .iter()
            .flat_map(|b| {
                let col = b.column_by_name("transaction_id").unwrap();
                let col = col.as_string::<i32>();
                col.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    };
    let shared = ids(&ra).intersection(&ids(&rows_of(d.path()))).count();
    assert_eq!(
        shared,
        0,
        "seeds {} and {} share rows",
        cfg.seed,
        cfg.seed + 1
    );
}

#[test]
fn distributions_are_within_bounds() {
    let cfg = GenerateOptions {
        rows: 60_000,
        days: 2,
        customers: 1_000,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let report = generate_into(dir.path(), &cfg);
    assert_eq!((report.rows, report.files), (60_000, 2));
    let now = rules::Limits::no_floor(chrono::Utc::now());
    let start = cfg
        .start_date
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp_micros();
    let mut per_customer = vec![0u64; cfg.customers as usize + 1];
    let (mut declined, mut n, mut cents) = (0u64, 0u64, Vec::new());
    for b in rows_of(dir.path()) {
        let checked = rules::check(&b, now);
        assert!(
            checked.reasons.iter().all(Option::is_none),
            "clean data must pass every rule"
        );
        let cust = b.column(1).as_primitive::<Int64Type>();
        let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
        let amt = b
            .column(4)
            .as_primitive::<deltalake::arrow::datatypes::Decimal128Type>();
        let status = b.column(7).as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!((1..=cfg.customers as i64).contains(&cust.value(i)));
            assert!((start..start + 2 * DAY_US).contains(&ts.value(i)));
            per_customer[cust.value(i) as usize] += 1;
            declined += u64::from(status.value(i) == "declined");
            cents.push(amt.value(i));
            n += 1;
        }
    }
    let declined_share = declined as f64 / n as f64;
    assert!(
        (0.04..0.06).contains(&declined_share),
        "declined {declined_share}"
    );
    // Zipf: the busiest customer has far more than the median one.
    let mut counts: Vec<_> = per_customer[1..].to_vec();
    counts.sort_unstable();
    assert!(counts[counts.len() - 1] > 20 * counts[counts.len() / 2].max(1));
    // Log-normal amounts: median around 33, mean above median (right skew).
    cents.sort_unstable();
    let median = cents[cents.len() / 2] as f64 / 100.0;
    let mean = cents.iter().sum::<i128>() as f64 / cents.len() as f64 / 100.0;
    assert!((25.0..45.0).contains(&median), "median {median}");
    assert!(mean > median * 1.3, "mean {mean} median {median}");
}

#[test]
fn dirty_rows_are_counted_by_kind_and_break_one_rule_each() {
    let cfg = GenerateOptions {
        rows: 20_000,
        days: 2,
        dirty_rate: 0.1,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let report = generate_into(dir.path(), &cfg);
    assert_eq!(
        report.dirty.len(),
        Dirty::IN_FILE.len(),
        "{:?}",
        report.dirty
    );
    let total: u64 = report.dirty.values().sum();
    assert!((1_700..2_300).contains(&total), "{total}");
    let now = rules::Limits::no_floor(chrono::Utc::now());
    let mut rejected: BTreeMap<&str, u64> = BTreeMap::new();
    for b in rows_of(dir.path()) {
        for r in rules::check(&b, now).reasons.into_iter().flatten() {
            *rejected.entry(r.as_str()).or_default() += 1;
        }
    }
    for (kind, n) in &report.dirty {
        if !kind.is_duplicate() {
            let code = serde_json::to_value(kind).unwrap();
            assert_eq!(rejected.get(code.as_str().unwrap()), Some(n), "{kind:?}");
        }
    }
    assert_eq!(rejected.values().sum::<u64>(), report.expected_quarantined);
}

#[test]
fn rerun_of_a_complete_batch_is_a_no_op_and_other_options_are_refused() {
    let cfg = GenerateOptions {
        rows: 1_000,
        days: 1,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let first = generate_into(dir.path(), &cfg);
    let again = generate_into(dir.path(), &cfg);
    assert!(again.skipped && !first.skipped);
    assert_eq!(again.rows, first.rows);
    let err = run(
        &Layout::new(dir.path()),
        &GenerateOptions { rows: 2_000, ..cfg },
        &Progress::hidden(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("choose a new --batch"), "{err}");
}
