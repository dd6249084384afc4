//! sql: the README's questions answered equal to an independent recomputation from the raw
//! files; time travel; output formats; mistakes in the SQL exit 2 with DataFusion's message.

use std::collections::{BTreeMap, HashSet};

use chrono::Datelike;
use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};

use crate::aggregate::oracle;
use crate::common::{Data, read_parquet, u};

/// The README's examples, as a user pastes them.
const TOP_CUSTOMERS: &str = "SELECT customer_id, sum(total_amount) AS spend \
     FROM customer_daily_aggregates GROUP BY customer_id \
     ORDER BY spend DESC, customer_id LIMIT 10";
const BY_WEEKDAY: &str = "SELECT extract(dow FROM transaction_date) AS dow, \
     to_char(transaction_date, '%A') AS weekday, sum(total_amount) AS spend \
     FROM customer_daily_aggregates GROUP BY 1, 2 ORDER BY 1";
const MONTH_OVER_MONTH: &str = "WITH monthly AS ( \
       SELECT category, to_char(transaction_date, '%Y-%m') AS month, sum(amount) AS spend \
       FROM customer_transactions WHERE status = 'approved' GROUP BY 1, 2) \
     SELECT category, month, spend, \
       spend - lag(spend) OVER (PARTITION BY category ORDER BY month) AS change \
     FROM monthly ORDER BY category, month";

/// Run `sql` and expect success; its stdout.
fn sql(d: &Data, args: &[&str]) -> String {
    let mut all = vec!["sql"];
    all.extend_from_slice(args);
    let out = d.run_env(&all, &[]);
    assert!(
        out.status.success(),
        "sql {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// CSV rows (no quoting needed for these results), header dropped.
fn csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// "123.45" -> 12345 (exact).
fn cents(s: &str) -> i128 {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let neg = whole.starts_with('-');
    let frac = format!("{frac:0<2}");
    let v = whole.trim_start_matches('-').parse::<i128>().unwrap() * 100
        + frac[..2].parse::<i128>().unwrap();
    if neg { -v } else { v }
}

/// Two batches (the second late, with dirty rows and redeliveries) ingested and aggregated.
fn data() -> (Data, u64) {
    let d = Data::new();
    let gen_args = |batch: &str, start: &str, days: &str| {
        vec![
            "generate",
            "--batch",
            batch,
            "--rows",
            "6000",
            "--days",
            days,
            "--start-date",
            start,
            "--customers",
            "40",
            "--dirty-rate",
            "0.05",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let g = gen_args("1", "2024-01-20", "20");
    d.ok(&g.iter().map(String::as_str).collect::<Vec<_>>());
    let first = u(&d.ok(&["ingest"]), "table_version");
    d.ok(&["aggregate"]);
    let g = gen_args("2", "2024-02-05", "30");
    d.ok(&g.iter().map(String::as_str).collect::<Vec<_>>());
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    d.ok(&["profiles"]);
    (d, first)
}

/// Approved spend per (category, month) from the raw files: the contract's rules, first
/// copy of each id. No DataFusion, no Delta.
fn category_months(d: &Data) -> BTreeMap<(String, String), i128> {
    let mut files = Vec::new();
    crate::common::walk(&d.path().join("_raw/customer_transactions"), &mut files);
    files.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.ends_with(".parquet") && !name.starts_with('.')
    });
    files.sort();
    let limits = pipeline::rules::Limits::new(
        chrono::Utc::now(),
        chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap(),
    );
    let (mut seen, mut out) = (HashSet::new(), BTreeMap::new());
    for f in files {
        for b in read_parquet(&f) {
            let checked = pipeline::rules::check(&b, limits);
            let ids = b.column(0).as_string::<i32>();
            let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
            let amt = b.column(4).as_primitive::<Decimal128Type>();
            let category = b.column(5).as_string::<i32>();
            let status = b.column(7).as_string::<i32>();
            for i in 0..b.num_rows() {
                if checked.reasons[i].is_some() || !seen.insert(ids.value(i).to_lowercase()) {
                    continue;
                }
                if status.value(i) != "approved" {
                    continue;
                }
                let day = chrono::DateTime::from_timestamp_micros(ts.value(i))
                    .unwrap()
                    .date_naive();
                *out.entry((
                    category.value(i).to_string(),
                    format!("{}-{:02}", day.year(), day.month()),
                ))
                .or_default() += amt.value(i);
            }
        }
    }
    out
}

#[test]
fn readme_questions_equal_an_independent_recomputation() {
    let (d, _) = data();
    let agg = oracle(&d);

    // Top 10 customers by spend.
    let mut spend: BTreeMap<i64, i128> = BTreeMap::new();
    for ((customer, _), (total, ..)) in &agg {
        *spend.entry(*customer).or_default() += total;
    }
    let mut want: Vec<(i64, i128)> = spend.into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    want.truncate(10);
    let got: Vec<(i64, i128)> = csv(&sql(&d, &[TOP_CUSTOMERS, "--format", "csv"]))
        .iter()
        .map(|r| (r[0].parse().unwrap(), cents(&r[1])))
        .collect();
    assert_eq!(got, want, "top 10 customers");

    // Spend by weekday (0 = Sunday).
    let mut want: BTreeMap<u32, (String, i128)> = BTreeMap::new();
    for ((_, day), (total, ..)) in &agg {
        let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let e = want
            .entry(day.weekday().num_days_from_sunday())
            .or_insert_with(|| (day.format("%A").to_string(), 0));
        e.1 += total;
    }
    let got: BTreeMap<u32, (String, i128)> = csv(&sql(&d, &[BY_WEEKDAY, "--format", "csv"]))
        .iter()
        .map(|r| (r[0].parse().unwrap(), (r[1].clone(), cents(&r[2]))))
        .collect();
    assert_eq!(got, want, "spend by weekday");

    // Month-over-month change per category.
    let months = category_months(&d);
    let mut want = Vec::new();
    let mut prev: Option<(String, i128)> = None;
    for ((category, month), spend) in &months {
        let change = match &prev {
            Some((c, p)) if c == category => Some(spend - p),
            _ => None,
        };
        want.push((category.clone(), month.clone(), *spend, change));
        prev = Some((category.clone(), *spend));
    }
    assert!(
        want.iter().any(|w| w.3.is_some()),
        "the data spans two months"
    );
    let got: Vec<_> = csv(&sql(&d, &[MONTH_OVER_MONTH, "--format", "csv"]))
        .iter()
        .map(|r| {
            let change = (!r[3].is_empty()).then(|| cents(&r[3]));
            (r[0].clone(), r[1].clone(), cents(&r[2]), change)
        })
        .collect();
    assert_eq!(got, want, "month-over-month change per category");
}

#[test]
fn time_travel_formats_and_mistakes() {
    let (d, first) = data();
    let count = |args: &[&str]| -> u64 {
        let mut all = vec![
            "SELECT count(*) AS n FROM customer_transactions",
            "--format",
            "csv",
        ];
        all.extend_from_slice(args);
        csv(&sql(&d, &all))[0][0].parse().unwrap()
    };
    let now = count(&[]);
    let first_s = first.to_string();
    let then = count(&["--as-of", &first_s]);
    let named = format!("customer_transactions={first}");
    assert_eq!(count(&["--as-of", &named]), then);
    // The first version's rows, counted without our code: batch 1's accepted rows.
    let ingest_files_then = csv(&sql(
        &d,
        &[
            "SELECT count(*) FROM customer_transactions WHERE source_file LIKE 'batch-000001/%'",
            "--format",
            "csv",
        ],
    ))[0][0]
        .parse::<u64>()
        .unwrap();
    assert_eq!(
        then, ingest_files_then,
        "as of version {first}: batch 1 only"
    );
    assert!(now > then, "the second batch added rows ({now} vs {then})");

    // JSON lines (the global --json) and the terminal table.
    let json = sql(
        &d,
        &["SELECT customer_id, total_amount FROM customer_daily_aggregates"],
    );
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), oracle(&d).len());
    assert!(lines[0]["customer_id"].is_i64());
    let table = sql(
        &d,
        &[
            "SELECT customer_id FROM customer_daily_aggregates",
            "--format",
            "table",
            "--max-rows",
            "3",
        ],
    );
    assert!(table.contains("| customer_id |"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        4,
        "header + 3 rows:\n{table}"
    );
    assert!(
        table.contains(&format!("({} rows; the first 3 shown", lines.len())),
        "{table}"
    );

    // Parquet to a file, read back by another reader.
    let out = d.path().join("result.parquet");
    sql(
        &d,
        &[
            "SELECT * FROM customer_transactions",
            "--format",
            "parquet",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let rows: usize = read_parquet(&out).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, now);
    let b = &read_parquet(&out)[0];
    assert_eq!(
        b.column_by_name("customer_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .len(),
        b.num_rows()
    );

    // Mistakes: exit 2, DataFusion's words, no panic, nothing written.
    let bad_out = d.path().join("bad.csv");
    for (query, extra, says) in [
        ("SELEC 1", vec![], "SQL: "),
        ("SELECT nope FROM customer_transactions", vec![], "nope"),
        (
            "SELECT * FROM no_such_table",
            vec![],
            "The tables are customer_transactions, ",
        ),
        ("SELECT 1/0 FROM customer_transactions", vec![], "SQL: "),
        ("CREATE TABLE t AS SELECT 1", vec![], "SQL: "),
        (
            "INSERT INTO customer_transactions SELECT * FROM customer_transactions",
            vec![],
            "SQL: ",
        ),
        (
            "SELECT count(*) FROM customer_transactions",
            vec!["--as-of", "999"],
            "is at version",
        ),
        (
            "SELECT count(*) FROM customer_transactions JOIN customer_daily_aggregates USING (customer_id)",
            vec!["--as-of", "1"],
            "say which",
        ),
        ("SELECT 1", vec!["--format", "parquet"], "--out"),
    ] {
        let mut args = vec!["sql", query];
        if extra.first() != Some(&"--format") {
            args.extend(["--out", bad_out.to_str().unwrap()]);
        }
        args.extend(extra);
        let o = d.run_env(&args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{query}: {err}");
        assert!(err.contains(says), "{query}: expected {says:?} in {err}");
        assert!(!err.contains("panicked"), "{query}: {err}");
        assert!(!bad_out.exists(), "{query}: no result file");
    }
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // SHOW TABLES lists the tables that exist (it failed: information_schema was off, and
    // only the tables a query names are registered); SHOW COLUMNS and information_schema too.
    let shown = sql(&d, &["SHOW TABLES", "--format", "csv"]);
    for t in [
        "customer_transactions",
        "customer_daily_aggregates",
        "customer_profiles",
    ] {
        assert!(shown.contains(&format!(",public,{t},")), "{t}: {shown}");
    }
    assert!(!shown.contains("run_history"), "no run yet: {shown}");
    let columns = sql(
        &d,
        &[
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'customer_daily_aggregates'",
            "--format",
            "csv",
        ],
    );
    assert!(columns.contains("total_amount"), "{columns}");
    let columns = sql(
        &d,
        &["SHOW COLUMNS FROM customer_profiles", "--format", "csv"],
    );
    assert!(columns.contains("customer_id"), "{columns}");
}

#[test]
fn the_output_as_a_user_meets_it() {
    let (d, _) = data();
    // Unquoted names are case-insensitive, as in other SQL engines.
    let n = csv(&sql(
        &d,
        &[
            "SELECT COUNT(*) FROM CUSTOMER_TRANSACTIONS",
            "--format",
            "csv",
        ],
    ));
    assert!(n[0][0].parse::<u64>().unwrap() > 0);
    // An empty result keeps its header (CSV) and its columns (table).
    let empty = sql(
        &d,
        &[
            "SELECT customer_id, spend_forecast_30d FROM customer_profiles WHERE 1 = 0",
            "--format",
            "csv",
        ],
    );
    assert_eq!(empty, "customer_id,spend_forecast_30d\n");
    let empty = sql(
        &d,
        &[
            "SELECT customer_id FROM customer_profiles WHERE 1 = 0",
            "--format",
            "table",
        ],
    );
    assert!(
        empty.contains("| customer_id |") && empty.contains("(0 rows)"),
        "{empty}"
    );
    // --out through a symlink writes the file it points to and keeps the link; the format
    // follows the extension.
    let target = d.path().join("target.parquet");
    std::fs::write(&target, b"old").unwrap();
    let link = d.path().join("link.parquet");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    sql(
        &d,
        &[
            "SELECT customer_id FROM customer_profiles",
            "--out",
            link.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let rows: usize = read_parquet(&target).iter().map(|b| b.num_rows()).sum();
    assert!(rows > 0);
    // A reader that goes away (`| head`) ends the output quietly, in every format.
    for format in ["csv", "json", "table"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .arg("--data-dir")
            .arg(d.path())
            .args([
                "sql",
                "SELECT * FROM customer_transactions",
                "--format",
                format,
                "--max-rows",
                "100000",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SIGINT while a result file is being written: exit 130, no file, no temporary file.
    let out = d.path().join("big.csv");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(d.path())
        .args([
            "sql",
            "SELECT a.transaction_id, b.transaction_id FROM customer_transactions a CROSS JOIN customer_transactions b",
            "--out",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let temp_seen = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::read_dir(d.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".big.csv.tmp-")
        })
    });
    assert!(temp_seen, "the result was being written");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("big.csv"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A version older than the log a table keeps (its commits removed by log cleanup once a
/// later checkpoint held them) is refused with the oldest version that can still be read;
/// that one and every later one are read.
#[test]
fn as_of_beyond_the_kept_log_names_the_oldest_readable_version() {
    let (d, _) = data();
    let log = d.table("customer_transactions").join("_delta_log");
    // A checkpoint of the latest version, as the stages and `maintain` write them.
    d.ok(&["maintain", "--no-optimize"]);
    let latest = crate::common::version(&d.table("customer_transactions")).unwrap();
    assert!(latest >= 2, "{latest}");
    // What log cleanup does past the retention: the commits before the checkpoint go.
    for v in 0..latest {
        std::fs::remove_file(log.join(format!("{v:020}.json"))).unwrap();
    }
    let o = d.run_env(
        &[
            "sql",
            "SELECT count(*) FROM customer_transactions",
            "--as-of",
            "1",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("The oldest version that can be read is {latest}")),
        "{err}"
    );
    assert!(err.contains("delta.logRetentionDuration"), "{err}");
    let at = latest.to_string();
    let then = csv(&sql(
        &d,
        &[
            "SELECT count(*) FROM customer_transactions",
            "--format",
            "csv",
            "--as-of",
            &at,
        ],
    ));
    let now = csv(&sql(
        &d,
        &[
            "SELECT count(*) FROM customer_transactions",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(then, now);
}
