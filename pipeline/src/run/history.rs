//! The run history: one row per `pipeline run` in the Delta table `_pipeline/run_history`,
//! appended at the end of every run (failed ones too); `pipeline history` prints it.

use std::sync::Arc;

use clap::Args;
use deltalake::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::TimestampMicrosecondType;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use serde::Serialize;

use super::report::RunReport;
use crate::delta::{self, Commit};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::report::{Report, Summary};
use crate::schema::RUN_HISTORY;
use crate::tables::Table;

/// Append a run to the history; returns the history table's new version. `started` and
/// `ended` are the times the report shows.
pub async fn record(
    layout: &Layout,
    r: &RunReport,
    (started, ended): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> Result<i64> {
    let name = Table::RunHistory.name();
    let table = delta::open_or_create(layout, Table::RunHistory).await?;
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|s| format!("{}{}", s.stage, if s.skipped { " (skipped)" } else { "" }))
        .collect();
    let ts = |t: i64| Arc::new(TimestampMicrosecondArray::from(vec![t]).with_timezone("UTC"));
    let batch = RecordBatch::try_new(
        RUN_HISTORY.clone(),
        vec![
            Arc::new(StringArray::from(vec![r.run_id.clone()])),
            ts(started.timestamp_micros()),
            ts(ended.timestamp_micros()),
            Arc::new(StringArray::from(vec![stages.join(", ")])),
            Arc::new(StringArray::from(vec![r.outcome.clone()])),
            Arc::new(StringArray::from(vec![
                serde_json::to_string(r).unwrap_or_default(),
            ])),
        ],
    )?;
    let mut w = RecordBatchWriter::for_table(&table).map_err(|e| Error::delta(name, e))?;
    let batch = delta::conform(batch.columns().to_vec(), &w.arrow_schema())?;
    w.write(batch).await.map_err(|e| Error::delta(name, e))?;
    let adds = w.flush().await.map_err(|e| Error::delta(name, e))?;
    // A plain append: nothing in it depends on what the table held.
    Commit::append(Table::RunHistory)
        .adds(adds)
        .rebase_if_no_conflict()
        .execute(&table)
        .await
}

/// `pipeline history`'s options.
#[derive(Debug, Clone, Args)]
pub struct HistoryOptions {
    /// Runs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// The run's id.
    pub run_id: String,
    /// When it started (UTC).
    pub started_at: String,
    /// When it ended (UTC).
    pub ended_at: String,
    /// Its stages.
    pub stages: String,
    /// How it ended.
    pub outcome: String,
}

/// The recorded runs, newest first. As JSON, the array of runs.
#[derive(Debug, Clone)]
pub struct HistoryReport {
    /// Where the history is.
    pub table: String,
    /// The runs.
    pub runs: Vec<HistoryRow>,
}

impl Serialize for HistoryReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.runs.serialize(s)
    }
}

impl Report for HistoryReport {
    fn stage(&self) -> &'static str {
        "history"
    }

    fn skipped(&self) -> bool {
        self.runs.is_empty()
    }

    fn text(&self) -> String {
        if self.runs.is_empty() {
            return format!("no runs recorded yet in {}", self.table);
        }
        let mut s = format!(
            "{:<27} {:<27} {:<36} outcome / stages",
            "started", "ended", "run id"
        );
        for r in &self.runs {
            s.push_str(&format!(
                "\n{:<27} {:<27} {:<36} {}\n{:>92}{}",
                r.started_at, r.ended_at, r.run_id, r.outcome, "", r.stages
            ));
        }
        s
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.runs.len() as u64,
            ..Default::default()
        }
    }
}

/// The recorded runs, newest first (at most `limit`). A damaged history is an error, not
/// an empty one.
pub async fn history(layout: &Layout, o: &HistoryOptions) -> Result<HistoryReport> {
    let mut report = HistoryReport {
        table: layout.table_shown(Table::RunHistory),
        runs: Vec::new(),
    };
    let Some(table) = delta::open(layout, Table::RunHistory).await? else {
        return Ok(report);
    };
    let names = ["run_id", "started_at", "ended_at", "stages", "outcome"];
    for f in delta::files(&table, Table::RunHistory, None)? {
        let mut batches = delta::read::columns(table.object_store(), &f.path, &names).await?;
        while let Some(b) = batches.next().await {
            report.runs.extend(rows(&b?)?);
        }
    }
    report.runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    report.runs.truncate(o.limit);
    Ok(report)
}

fn rows(b: &RecordBatch) -> Result<Vec<HistoryRow>> {
    let damaged = |what: &str| Error::DamagedLog {
        table: Table::RunHistory.name().into(),
        what: format!("a data file has {what}"),
    };
    let s = |n: &str| -> Result<StringArray> {
        b.column_by_name(n)
            .and_then(|c| c.as_string_opt::<i32>().cloned())
            .ok_or_else(|| damaged(&format!("no text column {n}")))
    };
    let t = |n: &str| {
        b.column_by_name(n)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned())
            .ok_or_else(|| damaged(&format!("no timestamp column {n}")))
    };
    let (id, stages, outcome) = (s("run_id")?, s("stages")?, s("outcome")?);
    let (st, en) = (t("started_at")?, t("ended_at")?);
    let fmt = |a: &deltalake::arrow::array::TimestampMicrosecondArray, i: usize| {
        if a.is_null(i) {
            return String::new();
        }
        chrono::DateTime::from_timestamp_micros(a.value(i))
            .map(crate::report::timestamp)
            .unwrap_or_default()
    };
    Ok((0..b.num_rows())
        .map(|i| HistoryRow {
            run_id: id.value(i).to_string(),
            started_at: fmt(&st, i),
            ended_at: fmt(&en, i),
            stages: stages.value(i).to_string(),
            outcome: outcome.value(i).to_string(),
        })
        .collect())
}
