//! `pipeline run`: the stages in order in one process, each skipping cheaply when it has
//! nothing new, with retries for transient failures, and a record of every run in a Delta
//! table (`_pipeline/run_history`) that `pipeline history` prints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use serde::Serialize;

use crate::aggregate::AggregateOptions;
use crate::delta;
use crate::error::{Error, Result};
use crate::generate::GenerateConfig;
use crate::ingest::IngestOptions;
use crate::layout::Layout;
use crate::progress::Progress;
use crate::serve::{LoadOptions, ScyllaConfig};

pub const HISTORY_TABLE: &str = "run_history";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Generate,
    Ingest,
    Aggregate,
    Load,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Generate,
        Stage::Ingest,
        Stage::Aggregate,
        Stage::Load,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Generate => "generate",
            Stage::Ingest => "ingest",
            Stage::Aggregate => "aggregate",
            Stage::Load => "load",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s.trim())
            .ok_or_else(|| format!("unknown stage `{s}` (generate, ingest, aggregate, load)"))
    }
}

pub struct RunOptions {
    /// Stages to run, in pipeline order.
    pub stages: Vec<Stage>,
    /// Load was asked for explicitly (otherwise it is skipped when ScyllaDB does not answer).
    pub load_requested: bool,
    pub generate: GenerateConfig,
    pub ingest: IngestOptions,
    pub aggregate: AggregateOptions,
    pub scylla: ScyllaConfig,
    pub load: LoadOptions,
    /// Attempts per stage for transient failures (a concurrent commit, ScyllaDB trouble).
    pub attempts: u32,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StageSummary {
    pub stage: &'static str,
    pub skipped: bool,
    /// Why it was skipped or what it did, in a few words.
    pub note: String,
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub attempts: u32,
    /// Versions consumed and produced (Delta tables), when the stage has them.
    pub consumed_version: Option<i64>,
    pub produced_version: Option<i64>,
    /// The stage's own report.
    pub report: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: String,
    pub ended_at: String,
    pub outcome: String,
    pub stages: Vec<StageSummary>,
    pub seconds: f64,
    pub history_version: Option<i64>,
}

fn transient(e: &Error) -> bool {
    matches!(e, Error::Conflict { .. } | Error::Scylla { .. })
}

/// Whether something accepts TCP connections at the first contact point of `uri`.
async fn answers(uri: &str) -> bool {
    let first = uri.split(',').next().unwrap_or(uri).trim().to_string();
    matches!(
        tokio::time::timeout(
            Duration::from_millis(800),
            tokio::net::TcpStream::connect(first)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn run_stage(
    layout: &Layout,
    opts: &RunOptions,
    stage: Stage,
    display: &indicatif::MultiProgress,
) -> Result<StageSummary> {
    let progress = Progress::in_display(display, stage.name());
    let started = Instant::now();
    let mut s = StageSummary {
        stage: stage.name(),
        ..Default::default()
    };
    match stage {
        Stage::Generate => {
            let (layout, cfg, p) = (layout.clone(), opts.generate.clone(), progress.clone());
            let r = tokio::task::spawn_blocking(move || crate::generate::run(&layout, &cfg, &p))
                .await??;
            s.skipped = r.skipped;
            s.note = format!("batch {}", r.batch);
            (s.rows, s.files, s.bytes) = (r.rows, r.files, r.bytes);
            s.report = serde_json::to_value(&r).unwrap_or_default();
        }
        Stage::Ingest => {
            let r = crate::ingest::run(layout, &opts.ingest, &progress).await?;
            s.skipped = r.files_ingested == 0;
            s.note = if s.skipped {
                "no new raw files".into()
            } else {
                format!(
                    "{} quarantined, {} duplicates",
                    r.rows_quarantined, r.duplicates
                )
            };
            (s.rows, s.files, s.bytes) = (r.rows_in, r.files_ingested, r.bytes_written);
            s.produced_version = r.table_version;
            s.report = serde_json::to_value(&r).unwrap_or_default();
        }
        Stage::Aggregate => {
            let r = crate::aggregate::run(layout, &opts.aggregate, &progress).await?;
            // A commit that only records new source versions without data changes (e.g. a
            // compaction upstream) recomputes nothing.
            s.skipped = r.table_version.is_none() || r.days_recomputed == 0;
            s.note = if s.skipped {
                "up to date".into()
            } else {
                format!("{} day(s)", r.days_recomputed)
            };
            (s.rows, s.bytes) = (r.rows_read, r.bytes_written);
            s.consumed_version = r.source_version;
            s.produced_version = r.table_version;
            s.report = serde_json::to_value(&r).unwrap_or_default();
        }
        Stage::Load => {
            if !opts.load_requested && !answers(&opts.scylla.uri).await {
                s.skipped = true;
                s.note = format!(
                    "no ScyllaDB at {}: start one (docker compose up -d scylla) or set SCYLLA_URI",
                    opts.scylla.uri
                );
            } else {
                let r = crate::serve::load(layout, &opts.scylla, &opts.load, &progress).await?;
                s.skipped = r.rows_written == 0;
                s.note = if s.skipped {
                    "already loaded".into()
                } else {
                    format!("{} day(s), {} retries", r.days, r.retries)
                };
                (s.rows, s.files) = (r.rows_written, r.files);
                s.consumed_version = r.aggregates_version;
                s.report = serde_json::to_value(&r).unwrap_or_default();
            }
        }
    }
    progress.finish_visible();
    s.seconds = started.elapsed().as_secs_f64();
    s.rows_per_sec = if s.skipped {
        0.0
    } else {
        s.rows as f64 / s.seconds.max(1e-9)
    };
    Ok(s)
}

/// Run the selected stages in order; record the run (also a failed one) in the history table.
pub async fn run(layout: &Layout, opts: &RunOptions) -> (RunReport, Result<()>) {
    let started = Instant::now();
    let now = chrono::Utc::now();
    let mut report = RunReport {
        run_id: uuid::Uuid::new_v4().to_string(),
        started_at: now.to_rfc3339(),
        ..Default::default()
    };
    let mut result = Ok(());
    // One display for the whole run: a line per stage, each kept when its stage ends.
    let display = Progress::display(opts.show_progress);
    'stages: for &stage in &opts.stages {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match run_stage(layout, opts, stage, &display).await {
                Ok(mut s) => {
                    s.attempts = attempt;
                    report.stages.push(s);
                    break;
                }
                Err(e) if transient(&e) && attempt < opts.attempts => {
                    let wait = Duration::from_secs(1 << (attempt - 1).min(5));
                    tracing::warn!(stage = stage.name(), attempt, error = %e, "transient failure; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    report.outcome = format!("failed in {}: {e}", stage.name());
                    result = Err(Error::StageFailed {
                        stage: stage.name(),
                        attempts: attempt,
                        source: Box::new(e),
                    });
                    break 'stages;
                }
            }
        }
    }
    if result.is_ok() {
        report.outcome = "succeeded".into();
    }
    report.ended_at = chrono::Utc::now().to_rfc3339();
    report.seconds = started.elapsed().as_secs_f64();
    match record(layout, &report, now).await {
        Ok(v) => report.history_version = Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the run in the history table");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    (report, result)
}

pub fn history_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("ended_at", ts, false),
        Field::new("stages", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("report_json", DataType::Utf8, false),
    ]))
}

async fn record(
    layout: &Layout,
    r: &RunReport,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<i64> {
    let schema = history_schema();
    let table = delta::open_or_create(layout.history_uri()?, HISTORY_TABLE, &schema, &[]).await?;
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|s| format!("{}{}", s.stage, if s.skipped { " (skipped)" } else { "" }))
        .collect();
    let ts = |t: i64| Arc::new(TimestampMicrosecondArray::from(vec![t]).with_timezone("UTC"));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![r.run_id.clone()])),
            ts(started.timestamp_micros()),
            ts(chrono::Utc::now().timestamp_micros()),
            Arc::new(StringArray::from(vec![stages.join(", ")])),
            Arc::new(StringArray::from(vec![r.outcome.clone()])),
            Arc::new(StringArray::from(vec![
                serde_json::to_string(r).unwrap_or_default(),
            ])),
        ],
    )?;
    let mut w = RecordBatchWriter::for_table(&table).map_err(|e| Error::delta(HISTORY_TABLE, e))?;
    let batch = delta::conform(batch.columns().to_vec(), &w.arrow_schema())?;
    w.write(batch)
        .await
        .map_err(|e| Error::delta(HISTORY_TABLE, e))?;
    let adds = w
        .flush()
        .await
        .map_err(|e| Error::delta(HISTORY_TABLE, e))?;
    delta::commit_append(
        &table,
        HISTORY_TABLE,
        delta::adds(adds),
        delta::append_operation(&[]),
    )
    .await
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub run_id: String,
    pub started_at: String,
    pub ended_at: String,
    pub stages: String,
    pub outcome: String,
}

/// The recorded runs, newest first (at most `limit`).
pub async fn history(layout: &Layout, limit: usize) -> Result<Vec<HistoryRow>> {
    let uri = layout.history_uri()?;
    let Ok(table) = deltalake::DeltaTableBuilder::from_url(uri)
        .map_err(|e| Error::delta(HISTORY_TABLE, e))?
        .load()
        .await
    else {
        return Ok(Vec::new());
    };
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::delta(HISTORY_TABLE, e))?;
    let mut out = Vec::new();
    let ts = |a: &dyn Array, i: usize| {
        let a = a.as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>();
        chrono::DateTime::from_timestamp_micros(a.value(i))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    for f in snapshot.log_data().iter() {
        #[allow(deprecated)]
        let reader = deltalake::parquet::arrow::async_reader::ParquetObjectReader::new(
            table.object_store(),
            f.object_store_path(),
        );
        #[allow(deprecated)]
        let mut stream =
            deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder::new_with_options(
                reader,
                deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions::new()
                    .with_skip_arrow_metadata(true),
            )
            .await?
            .build()?;
        use futures::StreamExt;
        while let Some(b) = stream.next().await {
            let b = b?;
            let s = |n: &str| {
                b.column_by_name(n)
                    .expect("history column")
                    .as_string::<i32>()
                    .clone()
            };
            let (id, stages, outcome) = (s("run_id"), s("stages"), s("outcome"));
            let (st, en) = (
                b.column_by_name("started_at").expect("column").clone(),
                b.column_by_name("ended_at").expect("column").clone(),
            );
            for i in 0..b.num_rows() {
                out.push(HistoryRow {
                    run_id: id.value(i).to_string(),
                    started_at: ts(st.as_ref(), i),
                    ended_at: ts(en.as_ref(), i),
                    stages: stages.value(i).to_string(),
                    outcome: outcome.value(i).to_string(),
                });
            }
        }
    }
    out.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    out.truncate(limit);
    Ok(out)
}
