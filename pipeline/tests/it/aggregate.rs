//! aggregate: exact against an independent recomputation, incremental == full, crash-safe.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, AsArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};
use deltalake::parquet::arrow::ArrowWriter;
use proptest::prelude::*;

use crate::common::{Data, live_files, read_parquet, u, version};

const AGG: &str = "customer_daily_aggregates";

/// One aggregate row: (customer, day) -> (total cents, approved, declined, min, max).
pub(crate) type Agg = BTreeMap<(i64, String), (i128, i64, i64, Option<i128>, Option<i128>)>;

/// The aggregates table as read back from its live files.
pub(crate) fn table(d: &Data) -> Agg {
    let mut out = Agg::new();
    for (path, date) in live_files(&d.table(AGG)) {
        for b in read_parquet(&path) {
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let cust = col("customer_id");
            let cust = cust.as_primitive::<Int64Type>();
            let total = col("total_amount");
            let total = total.as_primitive::<Decimal128Type>();
            assert_eq!(total.precision(), 38, "the contract's sum type");
            assert_eq!(total.scale(), 2);
            let count = col("transaction_count");
            let declined = col("declined_count");
            let (count, declined) = (
                count.as_primitive::<Int64Type>(),
                declined.as_primitive::<Int64Type>(),
            );
            let min = col("min_amount");
            let max = col("max_amount");
            let (min, max) = (
                min.as_primitive::<Decimal128Type>(),
                max.as_primitive::<Decimal128Type>(),
            );
            for i in 0..b.num_rows() {
                let opt = |a: &Decimal128Array| a.is_valid(i).then(|| a.value(i));
                let prev = out.insert(
                    (cust.value(i), date.clone()),
                    (
                        total.value(i),
                        count.value(i),
                        declined.value(i),
                        opt(min),
                        opt(max),
                    ),
                );
                assert!(prev.is_none(), "one row per customer and day");
            }
        }
    }
    out
}

/// The independent recomputation: every raw file, the contract's rules, first occurrence of
/// each transaction id, folded into a HashMap. No DataFusion, no Delta.
pub(crate) fn oracle(d: &Data) -> Agg {
    oracle_from(d, "2000-01-01")
}

/// [`oracle`] with another floor date (`ingest --min-date`).
pub(crate) fn oracle_from(d: &Data, min_date: &str) -> Agg {
    let mut files = Vec::new();
    collect(&d.path().join("_raw/customer_transactions"), &mut files);
    files.sort();
    let now = pipeline::rules::Limits::new(
        chrono::Utc::now(),
        chrono::NaiveDate::parse_from_str(min_date, "%Y-%m-%d").unwrap(),
    );
    let mut seen = HashSet::new();
    let mut out = Agg::new();
    for f in files {
        for b in read_parquet(&f) {
            let checked = pipeline::rules::check(&b, now);
            let ids = b.column(0).as_string::<i32>();
            let cust = b.column(1).as_primitive::<Int64Type>();
            let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
            let amt = b.column(4).as_primitive::<Decimal128Type>();
            let status = b.column(7).as_string::<i32>();
            for i in 0..b.num_rows() {
                if checked.reasons[i].is_some() || !seen.insert(ids.value(i).to_lowercase()) {
                    continue;
                }
                let day = chrono::DateTime::from_timestamp_micros(ts.value(i))
                    .unwrap()
                    .date_naive()
                    .to_string();
                let e = out
                    .entry((cust.value(i), day))
                    .or_insert((0, 0, 0, None, None));
                if status.value(i) == "approved" {
                    let a = amt.value(i);
                    e.0 += a;
                    e.1 += 1;
                    e.3 = Some(e.3.map_or(a, |m: i128| m.min(a)));
                    e.4 = Some(e.4.map_or(a, |m: i128| m.max(a)));
                } else {
                    e.2 += 1;
                }
            }
        }
    }
    out
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            collect(&p, out);
        } else if name.ends_with(".parquet") && !name.starts_with('.') {
            out.push(p);
        }
    }
}

fn batch(d: &Data, n: u32, rows: u32, days: u32, start: &str, dirty: f64) {
    let (n, rows, days, dirty) = (
        n.to_string(),
        rows.to_string(),
        days.to_string(),
        dirty.to_string(),
    );
    d.ok(&[
        "generate",
        "--batch",
        &n,
        "--rows",
        &rows,
        "--days",
        &days,
        "--start-date",
        start,
        "--customers",
        "300",
        "--dirty-rate",
        &dirty,
    ]);
}

#[test]
fn aggregates_equal_an_independent_recomputation_across_dirty_late_batches() {
    let d = Data::new();
    batch(&d, 1, 12_000, 4, "2024-05-01", 0.05);
    d.ok(&["ingest"]);
    let first = d.ok(&["aggregate"]);
    assert!(first["full_rebuild"].as_bool().unwrap());
    assert_eq!(u(&first, "days_recomputed"), 4);
    assert_eq!(table(&d), oracle(&d));

    // Late rows for 05-03 and 05-04, one new day, and re-deliveries of batch 1 rows.
    batch(&d, 2, 6_000, 3, "2024-05-03", 0.05);
    d.ok(&["ingest"]);
    let second = d.ok(&["aggregate"]);
    assert!(!second["full_rebuild"].as_bool().unwrap());
    assert_eq!(u(&second, "days_recomputed"), 3, "{second}");
    let want = oracle(&d);
    assert_eq!(table(&d), want);
    assert_eq!(
        u(&second, "rows_written") as usize,
        want.keys()
            .filter(|(_, day)| day.as_str() >= "2024-05-03")
            .count()
    );
}

#[test]
fn appended_rows_are_merged_and_a_compaction_in_between_falls_back_to_recomputing() {
    let d = Data::new();
    batch(&d, 1, 8_000, 3, "2024-05-01", 0.02);
    d.ok(&["ingest"]);
    assert_eq!(d.ok(&["aggregate"])["mode"], "full");
    // Late and re-delivered rows: only the new rows are read, merged into their days.
    batch(&d, 2, 1_000, 2, "2024-05-02", 0.05);
    let ingested = d.ok(&["ingest"]);
    let merged = d.ok(&["aggregate"]);
    assert_eq!(merged["mode"], "append_merge", "{merged}");
    assert_eq!(
        u(&merged, "rows_read"),
        u(&ingested, "rows_out"),
        "{merged}"
    );
    assert_eq!(table(&d), oracle(&d));
    // A compaction rewrote the new rows' file before the aggregate saw it: recompute.
    batch(&d, 3, 1_000, 2, "2024-05-01", 0.0);
    d.ok(&["ingest"]);
    d.ok(&["maintain"]);
    let recomputed = d.ok(&["aggregate"]);
    assert_eq!(recomputed["mode"], "recompute", "{recomputed}");
    assert_eq!(table(&d), oracle(&d));
    // A compaction of files already aggregated does not stop the next merge.
    batch(&d, 4, 500, 2, "2024-05-01", 0.0);
    d.ok(&["ingest"]);
    assert_eq!(d.ok(&["aggregate"])["mode"], "append_merge");
    d.ok(&["maintain"]);
    batch(&d, 5, 500, 1, "2024-05-02", 0.0);
    d.ok(&["ingest"]);
    assert_eq!(d.ok(&["aggregate"])["mode"], "append_merge");
    let incremental = table(&d);
    assert_eq!(incremental, oracle(&d));
    d.ok(&["aggregate", "--full"]);
    assert_eq!(table(&d), incremental);
}

#[test]
fn rerun_with_nothing_new_commits_nothing() {
    let d = Data::new();
    batch(&d, 1, 3_000, 2, "2024-05-01", 0.0);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    let v = version(&d.table(AGG));
    let again = d.ok(&["aggregate"]);
    assert!(again["table_version"].is_null(), "{again}");
    assert_eq!(version(&d.table(AGG)), v);
}

#[test]
fn a_crash_between_writing_files_and_committing_leaves_the_table_intact() {
    let d = Data::new();
    batch(&d, 1, 4_000, 2, "2024-05-01", 0.02);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    let before = (version(&d.table(AGG)), table(&d));
    batch(&d, 2, 2_000, 2, "2024-05-02", 0.02);
    d.ok(&["ingest"]);
    let crashed = d.run_env(
        &["aggregate"],
        &[("PIPELINE_FAILPOINTS", "aggregate.before_commit")],
    );
    assert!(!crashed.status.success());
    assert_eq!(
        (version(&d.table(AGG)), table(&d)),
        before,
        "previous version intact"
    );
    let r = d.ok(&["aggregate"]);
    assert_eq!(u(&r, "days_recomputed"), 2);
    assert_eq!(table(&d), oracle(&d), "the rerun completes it");
}

#[test]
fn time_travel_aggregates_the_source_as_of_a_version() {
    let d = Data::new();
    batch(&d, 1, 3_000, 2, "2024-05-01", 0.0);
    let v1 = d.ok(&["ingest"])["table_version"].as_i64().unwrap();
    let only_batch_1 = {
        d.ok(&["aggregate"]);
        table(&d)
    };
    batch(&d, 2, 3_000, 2, "2024-05-02", 0.0);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    assert_ne!(table(&d), only_batch_1);
    let r = d.ok(&["aggregate", "--source-version", &v1.to_string()]);
    assert_eq!(r["source_version"].as_i64(), Some(v1));
    assert_eq!(table(&d), only_batch_1);
    // The next plain run catches up incrementally from there.
    d.ok(&["aggregate"]);
    assert_eq!(table(&d), oracle(&d));
    let bad = d.run_env(&["aggregate", "--source-version", "99"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
}

#[test]
fn declined_only_days_single_transactions_and_decimal_limits() {
    let d = Data::new();
    let max = 999_999_999_999i128; // 9,999,999,999.99: the largest Decimal(12, 2)
    let day = 1_714_521_600_000_000i64; // 2024-05-01T00:00:00Z
    let rows: Vec<(i64, i64, i128, &str)> = vec![
        (1, day + 1, 500, "declined"),
        (1, day + 2, 700, "declined"),
        (2, day + 3, 1, "approved"),
        (3, day + 4, max, "approved"),
        (3, day + 5, max, "approved"),
        (3, day + 6, max, "approved"),
        (3, day + 7, 1, "declined"),
    ];
    let ids: Vec<String> = (0..rows.len())
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(ids)),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| 9))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                .with_timezone("UTC"),
        ),
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|r| r.2))
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|_| "grocery"),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "online"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
    ];
    let b = RecordBatch::try_new(pipeline::schema::RAW.clone(), cols).unwrap();
    let path = d
        .path()
        .join("_raw/customer_transactions/manual/edge.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    let day = "2024-05-01".to_string();
    let want: Agg = [
        ((1, day.clone()), (0, 0, 2, None, None)),
        ((2, day.clone()), (1, 1, 0, Some(1), Some(1))),
        ((3, day.clone()), (3 * max, 3, 1, Some(max), Some(max))),
    ]
    .into();
    assert_eq!(table(&d), want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

    /// After any sequence of batches (overlapping days, late rows, dirty rows), the
    /// incrementally maintained table equals a `--full` rebuild and the oracle.
    #[test]
    fn incremental_equals_full_rebuild(batches in prop::collection::vec((0u32..6, 1u32..4, 200u32..1500, any::<bool>()), 1..4)) {
        let d = Data::new();
        for (i, (offset, days, rows, dirty)) in batches.iter().enumerate() {
            let start = (chrono::NaiveDate::from_ymd_opt(2024, 6, 1).unwrap() + chrono::Days::new(u64::from(*offset))).to_string();
            batch(&d, i as u32 + 1, *rows, *days, &start, if *dirty { 0.05 } else { 0.0 });
            d.ok(&["ingest"]);
            d.ok(&["aggregate"]);
        }
        let incremental = table(&d);
        d.ok(&["aggregate", "--full"]);
        prop_assert_eq!(&incremental, &table(&d));
        prop_assert_eq!(&incremental, &oracle(&d));
    }
}

/// A file of `n` approved rows of the largest valid amount for customer 7 on 2024-05-02.
fn maximal_rows(d: &Data, n: usize) {
    let max = 999_999_999_999i128;
    let ts = 1_714_608_000_000_000i64 + 3_600_000_000; // 2024-05-02T01:00:00Z
    let cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("00000000-0000-4000-8000-{i:012}")),
        )),
        Arc::new(Int64Array::from_iter_values((0..n).map(|_| 7))),
        Arc::new(Int64Array::from_iter_values((0..n).map(|_| 9))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..n).map(|i| ts + i as i64))
                .with_timezone("UTC"),
        ),
        Arc::new(
            Decimal128Array::from_iter_values((0..n).map(|_| max))
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "travel"))),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "online"))),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "approved"))),
    ];
    let b = RecordBatch::try_new(pipeline::schema::RAW.clone(), cols).unwrap();
    let path = d.path().join("_raw/customer_transactions/max.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
}

/// 1,000,001 valid rows of 9,999,999,999.99 for one customer and day: their sum,
/// 10,000,009,999,989,999.99, is beyond the Decimal(18, 2) the aggregates had, which
/// stopped every later aggregate (and run) for every customer. The sums are Decimal(38, 2):
/// exact, and served as such.
#[test]
fn a_customer_day_beyond_the_old_decimal_18_2_is_summed_exactly() {
    let d = Data::new();
    let n = 1_000_001usize;
    maximal_rows(&d, n);
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    let p = d.ok(&["profiles"]);
    let want = 999_999_999_999i128 * n as i128;
    assert_eq!(want, 1_000_000_999_998_999_999i128, "cents");
    let got = table(&d);
    assert_eq!(
        got[&(7, "2024-05-02".to_string())],
        (
            want,
            n as i64,
            0,
            Some(999_999_999_999),
            Some(999_999_999_999)
        )
    );
    assert_eq!(p["customers_recomputed"], 1, "{p}");
    let out = d.ok(&[
        "sql",
        "SELECT CAST(lifetime_total AS VARCHAR) AS t, CAST(average_ticket AS VARCHAR) AS a FROM customer_profiles",
    ]);
    let text = out.to_string();
    assert!(
        text.contains("10000009999989999.99") && text.contains("9999999999.99"),
        "{text}"
    );
}

/// A data dir whose aggregates and profiles were written with the earlier, narrower sums
/// (Decimal(18, 2)): the next run widens them, in one commit per table that rewrites every
/// file (same table, same id), and the result equals a fresh run's.
#[test]
fn tables_with_the_earlier_narrower_sums_are_widened_by_the_next_run() {
    let d = Data::new();
    batch(&d, 1, 3000, 3, "2024-03-01", 0.02);
    d.ok(&["run", "--stages", "ingest,aggregate,profiles"]);
    let expected = (table(&d), crate::profiles::profiles_table(&d));
    // As an earlier version wrote them: every commit's schema says decimal(18,2).
    for t in ["customer_daily_aggregates", "customer_profiles"] {
        for e in std::fs::read_dir(d.table(t).join("_delta_log")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replace("decimal(38,2)", "decimal(18,2)")).unwrap();
            }
        }
    }
    let id_before = crate::common::table_id(&d.table(AGG));
    let r = d.ok(&["run", "--stages", "aggregate,profiles"]);
    let agg = &r["stages"][0]["report"];
    assert_eq!(agg["full_rebuild"], true, "{r}");
    assert_eq!(
        crate::common::table_id(&d.table(AGG)),
        id_before,
        "same table"
    );
    assert_eq!((table(&d), crate::profiles::profiles_table(&d)), expected);
    let log = std::fs::read_to_string(d.table(AGG).join("_delta_log").join(format!(
        "{:020}.json",
        crate::common::version(&d.table(AGG)).unwrap()
    )))
    .unwrap();
    assert!(
        log.contains("decimal(38,2)") && log.contains("metaData"),
        "{log}"
    );
    // Nothing more to do afterwards.
    let again = d.ok(&["run", "--stages", "aggregate,profiles"]);
    assert_eq!(again["stages"][0]["skipped"], true, "{again}");
}

/// A recomputation in passes of whole days (so its memory is one pass's, not the table's)
/// gives exactly the rows of one query: the first run and a full rebuild, around a merge.
#[test]
fn a_recomputation_in_passes_of_days_equals_one_query() {
    let d = Data::new();
    batch(&d, 1, 12_000, 6, "2024-05-01", 0.05);
    d.ok(&["ingest"]);
    let first = d.ok(&["aggregate", "--rows-per-pass", "3000"]);
    assert!(u(&first, "passes") >= 4, "{first}");
    assert_eq!(table(&d), oracle(&d));
    batch(&d, 2, 6_000, 3, "2024-05-04", 0.05);
    d.ok(&["ingest"]);
    // A late batch of new rows is merged (one query over the added files alone).
    let late = d.ok(&["aggregate", "--rows-per-pass", "2500"]);
    assert_eq!(late["mode"], "append_merge", "{late}");
    assert_eq!(table(&d), oracle(&d));
    let full = d.ok(&["aggregate", "--full", "--rows-per-pass", "5000"]);
    let want = oracle(&d);
    assert!(u(&full, "passes") >= 3, "{full}");
    assert_eq!(u(&full, "rows_written") as usize, want.len());
    assert_eq!(table(&d), want);
    let one = d.ok(&["aggregate", "--full"]);
    assert_eq!(u(&one, "passes"), 1);
    assert_eq!(table(&d), want);
}
