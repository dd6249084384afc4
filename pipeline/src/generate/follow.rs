//! `generate --follow`: a producer for continuous mode. It lands one batch per tick, each a
//! small file of `--rows-per-file` rows for today (every tenth tick, for yesterday: late
//! rows), with the same dirty and re-delivered rows as batch mode, at `--rate` rows per
//! second, for `--duration` or until stopped. Each tick is an ordinary batch (its own folder
//! and manifest, numbered after the last one present), so a restart goes on where it was.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::GenerateOptions;
use crate::error::{Error, Result};
use crate::kafka::{MessageFormat, Topic};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::report::{Report, Summary, thousands};

/// Every this many ticks, the file is for yesterday: late rows for a day already loaded.
const LATE_EVERY: u64 = 10;

/// How `generate --follow` produces.
#[derive(Debug, Clone, Args)]
pub struct FollowGenerate {
    /// Keep landing small files, one per tick, instead of writing one batch.
    #[arg(long)]
    pub follow: bool,
    /// Rows per second (with --follow); a tick lands --rows-per-file rows.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Stop after this long (e.g. 2m); default: until stopped.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Send each tick's rows to a Kafka topic (one JSON message per row, or see
    /// `--message-format`) instead of landing files: `kafka://HOST:PORT/TOPIC`. The batches
    /// are kept in `<data-dir>/_producer/TOPIC`.
    #[arg(long, value_name = "kafka://HOST:PORT/TOPIC")]
    pub to: Option<Topic>,
    /// Partitions of the topic, when `--to` creates it.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// How `--to` writes messages: `json` (one row per message, keyed by customer) or
    /// `arrow` (Arrow IPC streams of up to 1,000 rows, no key). Ingest reads both.
    #[arg(long, value_enum, default_value_t)]
    pub message_format: MessageFormat,
}

impl FollowGenerate {
    /// The options that mean something only with `--follow`: given as flags without it,
    /// they are a usage error; from the environment or `pipeline.toml` a batch ignores them.
    pub const NEEDS_FOLLOW: [&str; 5] = ["rate", "duration", "to", "partitions", "message_format"];
}

/// What a producer session landed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowGenerateReport {
    /// Batches (ticks) landed.
    pub batches: u64,
    /// Files landed.
    pub files: u64,
    /// Rows landed.
    pub rows: u64,
    /// Messages sent (`--to`): the rows, and the unreadable ones made with `--dirty-rate`.
    pub messages: u64,
    /// Ticks that started late because the one before took longer than the period.
    pub late_ticks: u64,
    /// Wall time.
    pub seconds: f64,
    /// Rows per second achieved.
    pub rows_per_sec: f64,
}

impl Report for FollowGenerateReport {
    fn stage(&self) -> &'static str {
        "generate"
    }

    fn skipped(&self) -> bool {
        self.batches == 0
    }

    fn text(&self) -> String {
        let sent = match self.messages {
            0 => String::new(),
            n => format!(", {} messages sent", thousands(n)),
        };
        format!(
            "generate --follow: {} batch(es), {} file(s), {} rows{sent} in {:.1} s ({} rows/s; {} late tick(s))",
            self.batches,
            self.files,
            thousands(self.rows),
            self.seconds,
            thousands(self.rows_per_sec as u64),
            self.late_ticks
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows,
            files: self.files,
            ..Default::default()
        }
    }
}

/// Land a file per tick until `--duration` is over (or the process is stopped).
pub fn run(
    layout: &Layout,
    base: &GenerateOptions,
    f: &FollowGenerate,
) -> Result<FollowGenerateReport> {
    if f.rate == 0 {
        return Err(Error::Invalid("generate: --rate must be at least 1".into()));
    }
    base.validate()?;
    let sink = match &f.to {
        Some(topic) => Some(super::kafka::Sink::open(
            layout,
            topic,
            f.partitions,
            f.message_format,
        )?),
        None => None,
    };
    let layout = sink.as_ref().map_or(layout, |s| &s.layout);
    let period = Duration::from_secs_f64(base.rows_per_file as f64 / f.rate as f64);
    let started = Instant::now();
    let mut report = FollowGenerateReport::default();
    let mut batch = next_batch(layout)?;
    let mut deadline = started;
    for tick in 0u64.. {
        if f.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let today = chrono::Utc::now().date_naive();
        let day = if tick % LATE_EVERY == LATE_EVERY - 1 {
            today.pred_opt().unwrap_or(today)
        } else {
            today
        };
        let opts = GenerateOptions {
            rows: base.rows_per_file,
            days: 1,
            start_date: day,
            batch,
            ..base.clone()
        };
        let r = super::run(layout, &opts, &Progress::hidden())?;
        report.batches += 1;
        report.files += r.files;
        report.rows += r.rows;
        if let Some(sink) = &sink {
            report.messages += sink.send_batch(batch, &opts)?;
        }
        batch = batch
            .checked_add(1)
            .ok_or_else(|| Error::Invalid("generate: batch numbers exhausted".into()))?;
        deadline += period;
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        } else {
            report.late_ticks += 1;
            deadline = now;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_sec = crate::report::per_sec(report.rows, report.seconds);
    Ok(report)
}

/// The batch after the highest one in the landing folder (complete or not).
fn next_batch(layout: &Layout) -> Result<u32> {
    let dir = layout.raw_dir();
    let names: Vec<String> = match super::upload::Upload::of(layout)? {
        Some(up) => up.names(&dir)?,
        None => match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        },
    };
    let highest = names
        .iter()
        .filter_map(|n| n.strip_prefix("batch-").and_then(|n| n.parse::<u32>().ok()))
        .max()
        .unwrap_or(0);
    Ok(highest + 1)
}
