//! `pipeline run`: the stages in order in one process, each skipping cheaply when it has
//! nothing new, with retries for transient failures, and a record of every run in a Delta
//! table (`_pipeline/run_history`) that `pipeline history` prints.

mod follow;
mod follow_report;
mod history;
mod housekeeping;
pub mod metrics;
mod options;
mod profiles_task;
mod report;
pub mod steps;
mod stop;

use std::time::{Duration, Instant};

pub use follow::follow;
pub use follow_report::{FollowReport, MicroBatch};
pub use history::{HistoryOptions, HistoryReport, HistoryRow, history};
pub use options::{FollowOptions, RunOptions, Stage};
pub use report::{RunReport, StageSummary};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::progress::Progress;
use steps::Kept;

/// Run the selected stages in order; record the run (also a failed one) in the history table.
/// The report comes back with the result, so a failed run still prints what it did.
pub async fn run(
    layout: &Layout,
    opts: &RunOptions,
    show_progress: bool,
) -> (RunReport, Result<()>) {
    let started = Instant::now();
    let now = chrono::Utc::now();
    let mut report = RunReport {
        run_id: uuid::Uuid::new_v4().to_string(),
        started_at: crate::report::timestamp(now),
        ..Default::default()
    };
    // One display for the whole run: a line per stage, each kept when its stage ends.
    let display = Progress::display(show_progress);
    let mut result = Ok(());
    // SIGINT or SIGTERM stops the stage where it is (as a kill would: nothing is
    // half-committed) and the run is recorded as interrupted (it ended silently, unrecorded).
    let stop = crate::process::stop_signal();
    tokio::pin!(stop);
    // The tables a stage opened, kept for the next (as a stream keeps them between
    // micro-batches).
    let mut kept = Kept::default();
    for stage in opts.selected() {
        let done = tokio::select! {
            r = with_retries(layout, opts, stage, &display, &mut kept) => r,
            sig = &mut stop => Err(Error::Interrupted {
                stage: stage.name(),
                signal: sig.name,
                code: sig.exit_code,
            }),
        };
        match done {
            Ok(s) => report.stages.push(s),
            Err(e) => {
                report.outcome = match &e {
                    Error::Interrupted { signal, .. } => {
                        format!("interrupted in {}: {signal}", stage.name())
                    }
                    _ => format!("failed in {}: {}", stage.name(), e.chain()),
                };
                report.failed_in = Some(stage.name());
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        report.outcome = "succeeded".into();
    }
    let ended = chrono::Utc::now();
    report.ended_at = crate::report::timestamp(ended);
    report.seconds = started.elapsed().as_secs_f64();
    record(layout, &mut report, &mut result, (now, ended), stop).await;
    (report, result)
}

/// Record the run in the history table. A signal while it is recorded (a store retrying for
/// minutes) ends the wait: the run's work is done or safely stopped either way. After an
/// interruption the wait is bounded too.
async fn record(
    layout: &Layout,
    report: &mut RunReport,
    result: &mut Result<()>,
    (now, ended): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    stop: std::pin::Pin<&mut impl std::future::Future<Output = crate::process::StopSignal>>,
) {
    let record = history::record(layout, report, (now, ended));
    let recorded = if matches!(result, Err(Error::Interrupted { .. })) {
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(15), record) => r.unwrap_or_else(|_| {
                Err(Error::Invalid("the history table did not answer within 15 s".into()))
            }),
            _ = crate::process::stop_signal() => {
                Err(Error::Invalid("stopped again while recording the run".into()))
            }
        }
    } else {
        tokio::select! {
            r = record => r,
            sig = stop => {
                if result.is_ok() {
                    *result = Err(Error::Interrupted {
                        stage: "recording the run",
                        signal: sig.name,
                        code: sig.exit_code,
                    });
                }
                Err(Error::Invalid("stopped while recording the run".into()))
            }
        }
    };
    match recorded {
        Ok(v) => report.history_version = Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the run in the history table");
            if result.is_ok() {
                *result = Err(e);
            }
        }
    }
}

/// Run one stage, retrying transient failures with backoff.
async fn with_retries(
    layout: &Layout,
    opts: &RunOptions,
    stage: Stage,
    display: &indicatif::MultiProgress,
    kept: &mut Kept,
) -> Result<StageSummary> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_stage(layout, opts, stage, display, kept).await {
            Ok(mut s) => {
                s.attempts = attempt;
                return Ok(s);
            }
            Err(e) if e.is_transient() && attempt < opts.attempts.max(1) => {
                let wait = Duration::from_secs(1 << (attempt - 1).min(5));
                tracing::warn!(stage = stage.name(), attempt, error = %e, "transient failure; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return Err(Error::StageFailed {
                    stage: stage.name(),
                    attempts: attempt,
                    source: Box::new(e),
                });
            }
        }
    }
}

async fn run_stage(
    layout: &Layout,
    opts: &RunOptions,
    stage: Stage,
    display: &indicatif::MultiProgress,
    kept: &mut Kept,
) -> Result<StageSummary> {
    let progress = Progress::in_display(display, stage.name());
    let started = Instant::now();
    tracing::info!(stage = stage.name(), "stage {} started", stage.name());
    let mut s = steps::summary(layout, opts, stage, &progress, kept).await?;
    progress.finish_visible();
    s.seconds = started.elapsed().as_secs_f64();
    s.rows_per_sec = if s.skipped {
        0.0
    } else {
        crate::report::per_sec(s.summary.rows, s.seconds)
    };
    tracing::info!(
        stage = s.stage,
        rows = s.summary.rows,
        seconds = s.seconds,
        skipped = s.skipped,
        "stage {} finished: {} rows in {:.2} s{}",
        s.stage,
        s.summary.rows,
        s.seconds,
        if s.skipped { " (skipped)" } else { "" }
    );
    Ok(s)
}
