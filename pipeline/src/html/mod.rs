//! `report`: one self-contained HTML file (no script, no external resource: it opens
//! offline) with charts over the tables: daily volume and amount, declined share, quarantine
//! reasons over time, top customers, and stage durations and throughput over the runs in
//! `run_history`.
//!
//! 1. **Gather** ([`data`]): small query results from the Delta tables (a row per day, per
//!    day and reason, per top customer, per run).
//! 2. **Draw** ([`charts`]): SVG per chart with `plotters`.
//! 3. **Write**: the page beside `--out`, renamed into place when complete.

mod charts;
mod data;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::report::{Report, Summary, bytes};

/// What to write.
#[derive(Debug, Clone, Args)]
pub struct ReportOptions {
    /// The HTML file to write (replaced when complete).
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Customers in the top-customers chart.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Latest runs of `run_history` in the run charts.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
}

/// One chart as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ChartSummary {
    /// Its id (the figure's `id` in the page).
    pub id: &'static str,
    /// Its title.
    pub title: String,
    /// Data points drawn (0: no data yet).
    pub points: usize,
}

/// What `report` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct HtmlReport {
    /// The file written.
    pub out: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The charts in it.
    pub charts: Vec<ChartSummary>,
    /// Wall time.
    pub seconds: f64,
}

impl Report for HtmlReport {
    fn stage(&self) -> &'static str {
        "report"
    }

    fn skipped(&self) -> bool {
        false
    }

    fn text(&self) -> String {
        let mut s = format!(
            "report: wrote {} ({}) in {:.2} s",
            self.out.display(),
            bytes(self.bytes),
            self.seconds
        );
        for c in &self.charts {
            s.push_str(&format!(
                "\n  {:<34} {}",
                c.title,
                if c.points == 0 {
                    "no data yet".to_string()
                } else {
                    format!("{} points", c.points)
                }
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            bytes: self.bytes,
            note: format!("{} charts", self.charts.len()),
            ..Default::default()
        }
    }
}

/// Write the report.
pub async fn run(layout: &Layout, opts: &ReportOptions) -> Result<HtmlReport> {
    let started = Instant::now();
    let data = data::gather(layout, opts.top, opts.runs).await?;
    let charts = charts::draw(&data)?;
    let html = page(layout, &charts);
    write(&opts.out, html.as_bytes())?;
    Ok(HtmlReport {
        out: opts.out.clone(),
        bytes: html.len() as u64,
        charts: charts
            .iter()
            .map(|c| ChartSummary {
                id: c.id,
                title: c.title.clone(),
                points: c.points,
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: a header and one figure per chart, the SVG inline.
fn page(layout: &Layout, charts: &[charts::Chart]) -> String {
    let mut figures = String::new();
    for c in charts {
        figures.push_str(&format!(
            "<figure id=\"{}\" data-primary=\"{}\" data-points=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
            c.id,
            c.primary,
            c.points,
            c.svg,
            escape(&c.caption)
        ));
    }
    format!(
        "<!DOCTYPE html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<title>Pipeline report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}
figure {{ margin: 0 0 28px 0; width: 900px; }}
figcaption {{ font-size: 14px; color: #555; margin-top: 4px; }}
svg {{ display: block; }}
</style>
</head>
<body>
<h1>Pipeline report</h1>
<p>Data dir <code>{}</code>, generated {} UTC.</p>
{figures}</body>
</html>
",
        escape(&layout.shown()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
    )
}

/// Write `bytes` to `out` through a temporary file beside it.
fn write(out: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let temp = crate::sql::output::temp_for(out);
    let io = |e| Error::io(format!("cannot write {}", out.display()), e);
    let mut f = std::fs::File::create(&temp).map_err(io)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, out)) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    Ok(())
}
