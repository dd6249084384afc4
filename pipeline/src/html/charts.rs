//! The charts, drawn as SVG by `plotters`. Each chart's first series has a color no other
//! chart uses (its `primary`), written on its figure, so a test can find every chart's marks
//! in a screenshot.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::data::Data;
use crate::dates::{self, Day};
use crate::error::{Error, Result};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 340;

/// One drawn chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Stable id (`daily_volume`, ...).
    pub id: &'static str,
    pub title: String,
    /// A sentence under the chart.
    pub caption: String,
    /// The first series' color, `#rrggbb`.
    pub primary: String,
    /// Data points drawn (0: the chart says "no data").
    pub points: usize,
    pub svg: String,
}

/// Colors of the first series, one per chart, never reused.
const PRIMARY: [RGBColor; 7] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Colors of further series.
const OTHERS: [RGBColor; 6] = [
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x39, 0x3b, 0x79),
    RGBColor(0xad, 0x49, 0x4a),
    RGBColor(0x63, 0x79, 0x39),
];

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn color(primary: RGBColor, i: usize) -> RGBColor {
    if i == 0 {
        primary
    } else {
        OTHERS[(i - 1) % OTHERS.len()]
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> Error {
    Error::Invalid(format!("drawing a chart failed: {e:?}"))
}

/// Every chart of the report.
pub fn draw(d: &Data) -> Result<Vec<Chart>> {
    let days: Vec<Day> = d.daily.iter().map(|x| x.day).collect();
    let mut charts = Vec::new();
    let elsewhere = match d.daily_elsewhere {
        (0, _) => String::new(),
        (rows, days) => format!(
            " {rows} transaction(s) on {days} day(s) far from the rest are not drawn (they would \
             squash the axis)."
        ),
    };
    let volume = vec![
        (
            "approved".to_string(),
            d.daily.iter().map(|x| x.approved as f64).collect(),
        ),
        (
            "declined".to_string(),
            d.daily.iter().map(|x| x.declined as f64).collect(),
        ),
    ];
    charts.push(day_lines(
        ("daily_volume", "Daily volume", PRIMARY[0]),
        &format!("Transactions per day (customer_daily_aggregates).{elsewhere}"),
        "transactions",
        &days,
        &volume,
    )?);
    let amount = vec![(
        "approved amount".to_string(),
        d.daily
            .iter()
            .map(|x| x.amount_cents as f64 / 100.0)
            .collect(),
    )];
    charts.push(day_lines(
        ("daily_amount", "Daily amount", PRIMARY[1]),
        &format!("Approved amount per day.{elsewhere}"),
        "amount",
        &days,
        &amount,
    )?);
    let share = vec![(
        "declined share %".to_string(),
        d.daily
            .iter()
            .map(|x| {
                let all = x.approved + x.declined;
                if all == 0 {
                    0.0
                } else {
                    100.0 * x.declined as f64 / all as f64
                }
            })
            .collect(),
    )];
    charts.push(day_lines(
        ("declined_share", "Declined share", PRIMARY[2]),
        &format!("Declined transactions as a share of all, per day.{elsewhere}"),
        "%",
        &days,
        &share,
    )?);
    charts.push(quarantine(d, &days)?);
    charts.push(top_customers(d)?);
    charts.extend(runs(d)?);
    Ok(charts)
}

fn quarantine(d: &Data, days: &[Day]) -> Result<Chart> {
    let series: Vec<(String, Vec<f64>)> = d
        .quarantine
        .iter()
        .map(|(reason, per_day)| {
            let values = days
                .iter()
                .map(|day| per_day.get(day).copied().unwrap_or(0) as f64)
                .collect();
            (reason.clone(), values)
        })
        .collect();
    let total: i64 = d.quarantine.values().flat_map(|m| m.values()).sum();
    let mut caption = format!("Rows set aside per rejection reason and day: {total} in all");
    if d.quarantine_elsewhere > 0 {
        caption.push_str(&format!(
            ", and {} without a day or outside the data's days (not drawn)",
            d.quarantine_elsewhere
        ));
    }
    caption.push('.');
    day_lines(
        ("quarantine", "Quarantine reasons over time", PRIMARY[3]),
        &caption,
        "rows",
        days,
        &series,
    )
}

/// Lines over days, one per series, with a mark at every point.
fn day_lines(
    (id, title, primary): (&'static str, &str, RGBColor),
    caption: &str,
    y_desc: &str,
    days: &[Day],
    series: &[(String, Vec<f64>)],
) -> Result<Chart> {
    let x: Vec<f64> = days.iter().map(|d| f64::from(*d)).collect();
    let fmt = |v: &f64| dates::format(v.round() as Day);
    lines((id, title, primary), caption, y_desc, &x, &fmt, series)
}

type Label<'a> = &'a dyn Fn(&f64) -> String;

/// Lines over `x`, one per series (series of equal length to `x`).
fn lines(
    (id, title, primary): (&'static str, &str, RGBColor),
    caption: &str,
    y_desc: &str,
    x: &[f64],
    x_label: Label<'_>,
    series: &[(String, Vec<f64>)],
) -> Result<Chart> {
    let mut svg = String::new();
    let points = series.iter().map(|(_, v)| v.len()).sum::<usize>();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        if points == 0 {
            no_data(&root, title)?;
        } else {
            let (x0, x1) = (x[0], x[x.len() - 1]);
            let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
            let y1 = series
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .fold(0.0f64, f64::max);
            let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(80)
                .build_cartesian_2d(x0..x1, 0.0..y1)
                .map_err(plot_error)?;
            let y_label = |v: &f64| {
                if y1 >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            };
            chart
                .configure_mesh()
                .x_labels(8.min(x.len().max(2)))
                .x_label_formatter(x_label)
                .y_label_formatter(&y_label)
                .y_desc(y_desc)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_error)?;
            for (i, (name, values)) in series.iter().enumerate() {
                let c = color(primary, i);
                let pts: Vec<(f64, f64)> = x.iter().copied().zip(values.iter().copied()).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled())
                    });
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                    .map_err(plot_error)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(Chart {
        id,
        title: title.to_string(),
        caption: caption.to_string(),
        primary: hex(primary),
        points,
        svg,
    })
}

fn no_data(root: &DrawingArea<SVGBackend<'_>, Shift>, title: &str) -> Result<()> {
    root.draw(&Text::new(
        format!("{title}: no data yet"),
        (20, 40),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(plot_error)
}

fn top_customers(d: &Data) -> Result<Chart> {
    let (id, title, primary) = ("top_customers", "Top customers", PRIMARY[4]);
    let mut svg = String::new();
    let n = d.top.len() as u32;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        if n == 0 {
            no_data(&root, title)?;
        } else {
            let max = d
                .top
                .iter()
                .map(|c| c.total_cents as f64 / 100.0)
                .fold(0.0f64, f64::max);
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(80)
                .build_cartesian_2d((0u32..n).into_segmented(), 0.0..max.max(1.0) * 1.1)
                .map_err(plot_error)?;
            let top = &d.top;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n as usize)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => top
                        .get(*i as usize)
                        .map_or(String::new(), |c| c.customer_id.to_string()),
                    _ => String::new(),
                })
                .x_desc("customer")
                .y_desc("approved amount")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(plot_error)?;
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(primary.filled())
                        .margin(8)
                        .data(
                            top.iter()
                                .enumerate()
                                .map(|(i, c)| (i as u32, c.total_cents as f64 / 100.0)),
                        ),
                )
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(Chart {
        id,
        title: title.to_string(),
        caption: format!("The {n} customers with the largest approved amount over all days."),
        primary: hex(primary),
        points: n as usize,
        svg,
    })
}

/// Stage durations and throughput over the runs in `run_history`.
fn runs(d: &Data) -> Result<Vec<Chart>> {
    let x: Vec<f64> = (1..=d.runs.len()).map(|i| i as f64).collect();
    let mut seconds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (i, run) in d.runs.iter().enumerate() {
        for (stage, s, r) in &run.stages {
            seconds
                .entry(stage.as_str())
                .or_insert_with(|| vec![0.0; d.runs.len()])[i] = *s;
            rate.entry(stage.as_str())
                .or_insert_with(|| vec![0.0; d.runs.len()])[i] = *r;
        }
    }
    let fmt = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("run {}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let first = d.runs.first().map_or("-", |r| r.started_at.as_str());
    let last = d.runs.last().map_or("-", |r| r.started_at.as_str());
    let span = format!(
        "{} run(s) of `pipeline run` from run_history, {first} to {last}",
        d.runs.len()
    );
    let to_series = |m: BTreeMap<&str, Vec<f64>>| -> Vec<(String, Vec<f64>)> {
        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    Ok(vec![
        lines(
            ("stage_seconds", "Stage durations over runs", PRIMARY[5]),
            &format!("Wall time of each stage: {span}."),
            "seconds",
            &x,
            &fmt,
            &to_series(seconds),
        )?,
        lines(
            ("stage_throughput", "Stage throughput over runs", PRIMARY[6]),
            &format!("Rows per second of each stage: {span}."),
            "rows/s",
            &x,
            &fmt,
            &to_series(rate),
        )?,
    ])
}
