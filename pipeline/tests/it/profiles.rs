//! profiles: incremental runs equal a recomputation from the raw files (no DataFusion, no
//! Delta) after late, dirty and redelivered batches; the full paths say why; the spend
//! estimate's error on held-out days is measured.

use std::collections::BTreeMap;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{Date32Type, Decimal128Type, Float64Type, Int64Type};

use crate::aggregate::{Agg, oracle};
use crate::common::{Data, live_files, raw, read_parquet, u, write_raw};

const ALPHA: f64 = pipeline::profiles::ALPHA;

/// One profile, floats kept apart so exact columns compare exactly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Profile {
    pub as_of: i32,
    pub total: i128,
    pub count: i64,
    pub declined: i64,
    pub first: i32,
    pub last: i32,
    pub active: i64,
    pub average: Option<i128>,
    pub last_7d: i128,
    pub last_30d: i128,
    pub decline_rate: f64,
    pub ewm: i128,
    pub forecast: i128,
}

pub(crate) type Profiles = BTreeMap<i64, Profile>;

/// The table as read back from its live files.
pub(crate) fn profiles_table(d: &Data) -> Profiles {
    let mut out = Profiles::new();
    for (path, _) in live_files(&d.table("customer_profiles")) {
        for b in read_parquet(&path) {
            let i64c = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .clone()
            };
            let dec = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<Decimal128Type>()
                    .clone()
            };
            let day = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<Date32Type>()
                    .clone()
            };
            let f64c = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_primitive::<Float64Type>()
                    .clone()
            };
            let (cust, count, declined, active) = (
                i64c("customer_id"),
                i64c("lifetime_count"),
                i64c("declined_count"),
                i64c("active_days"),
            );
            let (total, avg, t7, t30, forecast) = (
                dec("lifetime_total"),
                dec("average_ticket"),
                dec("total_last_7d"),
                dec("total_last_30d"),
                dec("spend_forecast_30d"),
            );
            let (as_of, first, last) = (
                day("as_of_day"),
                day("first_active_day"),
                day("last_active_day"),
            );
            let (rate, ewm) = (f64c("decline_rate"), dec("ewm_daily_spend"));
            for i in 0..b.num_rows() {
                let prev = out.insert(
                    cust.value(i),
                    Profile {
                        as_of: as_of.value(i),
                        total: total.value(i),
                        count: count.value(i),
                        declined: declined.value(i),
                        first: first.value(i),
                        last: last.value(i),
                        active: active.value(i),
                        average: avg.is_valid(i).then(|| avg.value(i)),
                        last_7d: t7.value(i),
                        last_30d: t30.value(i),
                        decline_rate: rate.value(i),
                        ewm: ewm.value(i),
                        forecast: forecast.value(i),
                    },
                );
                assert!(prev.is_none(), "one row per customer");
            }
        }
    }
    out
}

fn day_number(s: &str) -> i32 {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

/// `n / d` rounded half away from zero.
fn div_round(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r.abs() >= d.abs() {
        q + n.signum() * d.signum()
    } else {
        q
    }
}

/// The profiles recomputed from per-(customer, day) aggregates, as of the latest day.
pub(crate) fn profiles_of(agg: &Agg) -> Profiles {
    let r = agg.keys().map(|(_, day)| day_number(day)).max().unwrap();
    profiles_as_of(agg, r)
}

/// The profiles as of day number `r`: rows after it are not counted.
fn profiles_as_of(agg: &Agg, r: i32) -> Profiles {
    let mut out = Profiles::new();
    for ((customer, day), (total, count, declined, ..)) in agg {
        let d = day_number(day);
        if d > r {
            continue;
        }
        let p = out.entry(*customer).or_insert(Profile {
            as_of: r,
            total: 0,
            count: 0,
            declined: 0,
            first: d,
            last: d,
            active: 0,
            average: None,
            last_7d: 0,
            last_30d: 0,
            decline_rate: 0.0,
            ewm: 0,
            forecast: 0,
        });
        p.total += total;
        p.count += count;
        p.declined += declined;
        p.first = p.first.min(d);
        p.last = p.last.max(d);
        p.active += 1;
        if d > r - 7 {
            p.last_7d += total;
        }
        if d > r - 30 {
            p.last_30d += total;
        }
        // The day's weight, rounded to 12 decimals as the table's query does.
        let weight = ((1.0 - ALPHA).powf(f64::from(r - d)) * ALPHA * 1e12).round() as i128;
        p.ewm += total * weight; // scale 2 + 12
    }
    for p in out.values_mut() {
        p.average = (p.count > 0).then(|| div_round(p.total, p.count as i128));
        let all = p.count + p.declined;
        p.decline_rate = if all == 0 {
            0.0
        } else {
            p.declined as f64 / all as f64
        };
        p.forecast = div_round(p.ewm * 30, 1_000_000_000_000);
    }
    out
}

/// Equal, every column exactly (the weighted spend is exact decimal).
pub(crate) fn assert_same(got: &Profiles, want: &Profiles, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: customers");
    for (c, w) in want {
        assert_eq!(got.get(c), Some(w), "{what}: customer {c}");
    }
}

/// Generate, ingest and aggregate a batch; the ingest's table version.
fn batch(d: &Data, n: &str, rows: &str, days: &str, start: &str) -> u64 {
    d.ok(&[
        "generate",
        "--batch",
        n,
        "--rows",
        rows,
        "--days",
        days,
        "--start-date",
        start,
        "--customers",
        "150",
        "--dirty-rate",
        "0.05",
    ]);
    let v = u(&d.ok(&["ingest"]), "table_version");
    d.ok(&["aggregate"]);
    v
}

#[test]
fn incremental_profiles_equal_a_recomputation_from_the_raw_files() {
    let d = Data::new();
    batch(&d, "1", "5000", "20", "2024-01-01");
    let r = d.ok(&["profiles"]);
    assert_eq!(r["mode"], "full", "{r}");
    assert_same(&profiles_table(&d), &profiles_of(&oracle(&d)), "first run");

    // Late batches inside the range: the latest day stays, so only their customers change.
    let mut versions = Vec::new();
    for (n, rows, days, start) in [
        ("2", "700", "3", "2024-01-05"),
        ("3", "300", "1", "2024-01-19"),
    ] {
        versions.push(batch(&d, n, rows, days, start));
        let r = d.ok(&["profiles"]);
        assert_eq!(r["mode"], "incremental", "batch {n}: {r}");
        assert!(u(&r, "days_changed") >= 1, "{r}");
        assert!(
            u(&r, "customers_recomputed") < u(&r, "rows_written"),
            "batch {n} recomputes only its customers: {r}"
        );
        assert_same(
            &profiles_table(&d),
            &profiles_of(&oracle(&d)),
            &format!("batch {n}"),
        );
    }
    assert_eq!(d.ok(&["profiles"])["mode"], "", "nothing new: skipped");

    // The aggregates as of the source before batch 3: its customers' rows on 2024-01-19
    // vanish (a restore, an erasure), so first/last days may move back: a full run.
    let before_3 = versions[0].to_string();
    d.ok(&["aggregate", "--source-version", &before_3]);
    let r = d.ok(&["profiles"]);
    assert_eq!(r["mode"], "full", "{r}");
    assert!(
        r["full_because"].as_str().unwrap().contains("vanished"),
        "{r}"
    );
    assert_same(
        &profiles_table(&d),
        &profiles_of(&crate::aggregate::table(&d)),
        "aggregates before batch 3",
    );
    d.ok(&["aggregate", "--full"]);
    d.ok(&["profiles"]);
    assert_same(
        &profiles_table(&d),
        &profiles_of(&oracle(&d)),
        "back to the latest source",
    );

    // A later day moves every window: full, and it says why.
    batch(&d, "4", "400", "2", "2024-01-21");
    let r = d.ok(&["profiles"]);
    assert_eq!(r["mode"], "full", "{r}");
    assert!(
        r["full_because"]
            .as_str()
            .unwrap()
            .contains("latest day moved"),
        "{r}"
    );
    assert_same(&profiles_table(&d), &profiles_of(&oracle(&d)), "batch 4");

    // The aggregates rebuilt as of an older source: rows vanish, so a full run.
    d.ok(&["aggregate", "--source-version", "1"]);
    let r = d.ok(&["profiles"]);
    assert_eq!(r["mode"], "full", "{r}");
    let agg = crate::aggregate::table(&d);
    assert_same(
        &profiles_table(&d),
        &profiles_of(&agg),
        "aggregates of source version 1",
    );
}

#[test]
fn the_spend_estimate_error_on_held_out_days() {
    // 30 days to learn from, the next 30 held out: same customers, same daily volume.
    let d = Data::new();
    let generate = |n: &str, start: &str| {
        d.ok(&[
            "generate",
            "--batch",
            n,
            "--rows",
            "60000",
            "--days",
            "30",
            "--start-date",
            start,
            "--customers",
            "300",
        ]);
    };
    generate("1", "2024-03-01");
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    d.ok(&["profiles"]);
    let learned = profiles_table(&d);
    generate("2", "2024-03-31");
    d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    let mut actual: BTreeMap<i64, i128> = BTreeMap::new();
    for ((c, day), (total, ..)) in crate::aggregate::table(&d) {
        if day.as_str() >= "2024-03-31" {
            *actual.entry(c).or_default() += total;
        }
    }
    let (mut abs_err, mut sum_actual, mut sum_forecast) = (0i128, 0i128, 0i128);
    for (c, p) in &learned {
        let a = actual.get(c).copied().unwrap_or(0);
        abs_err += (p.forecast - a).abs();
        sum_actual += a;
        sum_forecast += p.forecast;
    }
    let mae = abs_err as f64 / learned.len() as f64 / 100.0;
    let wape = abs_err as f64 / sum_actual as f64;
    let bias = (sum_forecast - sum_actual) as f64 / sum_actual as f64;
    eprintln!(
        "spend estimate on 30 held-out days, {} customers: MAE {mae:.2} per customer, \
         WAPE {:.1}%, total bias {:+.1}%",
        learned.len(),
        wape * 100.0,
        bias * 100.0
    );
    // Loose bounds that a broken model (wrong weights, days, units) would break.
    assert!(wape < 0.5, "WAPE {wape}");
    assert!(bias.abs() < 0.15, "bias {bias}");
}

/// A history in January 2024 plus one valid row stamped an hour ago (a mis-dated event, a
/// test row): before, that row moved every profile's as-of day to today, so 199 of 200
/// customers' 30-day totals became 0 and the summed forecast fell from ~1 million to 3.00,
/// exit 0. The as-of day is the latest *active* day (5% of the median day's customers), the
/// later day's row is reported as not counted, and `--as-of-day latest` or a date chooses
/// explicitly. The report's daily charts keep their axis on the active days too.
#[test]
fn one_stray_row_far_after_the_history_does_not_move_the_as_of_day() {
    let d = Data::new();
    d.ok(&[
        "generate",
        "--rows",
        "20000",
        "--days",
        "31",
        "--start-date",
        "2024-01-01",
        "--customers",
        "200",
    ]);
    let now = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    write_raw(
        &d.path().join("_raw/customer_transactions/stray.parquet"),
        &[raw("00000000-0000-4000-8000-0000000000aa", now)],
    );
    let r = d.ok(&["run", "--stages", "ingest,aggregate,profiles"]);
    let p = &r["stages"][2]["report"];
    assert_eq!(p["as_of_day"], "2024-01-31", "{p}");
    assert_eq!(p["days_after_as_of"], 1, "{p}");
    assert_eq!(p["rows_after_as_of"], 1, "{p}");
    let want = profiles_as_of(&oracle(&d), day_number("2024-01-31"));
    assert_same(&profiles_table(&d), &want, "as of the last active day");
    let active = want.values().filter(|p| p.last_30d > 0).count();
    assert!(active > 150, "most customers have a 30-day total: {active}");

    // Explicitly the latest day: the windows end today, and most 30-day totals are 0.
    let p = d.ok(&["profiles", "--as-of-day", "latest"]);
    let today = chrono::DateTime::from_timestamp_micros(now)
        .unwrap()
        .date_naive();
    assert_eq!(p["as_of_day"], today.to_string(), "{p}");
    let latest = profiles_table(&d);
    assert!(latest.values().filter(|p| p.last_30d > 0).count() <= 1);
    // A date: as of that day.
    let p = d.ok(&["profiles", "--as-of-day", "2024-01-15"]);
    assert_eq!(p["as_of_day"], "2024-01-15", "{p}");
    assert_same(
        &profiles_table(&d),
        &profiles_as_of(&oracle(&d), day_number("2024-01-15")),
        "as of a given day",
    );

    // The report's charts: the axis stays on January, the far row is counted in a caption.
    let out = d.path().join("r.html");
    d.ok(&["report", "--out", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(out).unwrap();
    assert!(
        html.contains("1 transaction(s) on 1 day(s) far from the rest are not drawn"),
        "{}",
        &html[..html.len().min(2000)]
    );
}
