//! The stream's housekeeping, beside its micro-batches, so that what a micro-batch costs and
//! what the data dir holds stay bounded however long the stream runs:
//! - **Retention** (at the start, and for each table once it exists): the tables' log and
//!   deleted-file retentions set to `--log-retention` and `--vacuum-retention`
//!   ([`retention::apply`]).
//! - **Every N micro-batches** (`--compact-every`, in a background task): small files of the
//!   transactions and quarantine tables compacted (a `dataChange: false` commit, which
//!   readers and the incremental stages ignore), a tier of the id index too large for ingest
//!   to merge inline merged, the files the tables' commits removed deleted
//!   once past the vacuum retention ([`retention::Vacuum`]), and, every
//!   [`LOG_CLEANUP_EVERY`], commit files past the log retention removed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::follow_report::MicroBatch;
use super::metrics::Metrics;
use crate::layout::Layout;
use crate::maintain::{self, retention};
use crate::tables::Table;

/// Micro-batches between two housekeeping rounds when `--compact-every` is 0 (no compaction).
const DEFAULT_EVERY: u64 = 10;
/// How often expired log entries are removed (it reads each log folder whole).
pub const LOG_CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// What a round did.
struct Round {
    compacted: u64,
    vacuumed: retention::Vacuumed,
    logs_cleaned: Option<u64>,
    errors: Vec<String>,
    vacuum: retention::Vacuum,
}

/// The housekeeping of one stream.
pub struct Housekeeping {
    retention: retention::Retention,
    compact: bool,
    every: u64,
    since: u64,
    /// Tables holding the stream's retention.
    configured: BTreeSet<Table>,
    /// The vacuum's state (None while a round has it).
    vacuum: Option<retention::Vacuum>,
    round: Option<JoinHandle<Round>>,
    logs_cleaned_at: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Housekeeping {
    /// Set the retention of the tables there are.
    /// Failures are warnings: the next micro-batches try again.
    pub async fn start(
        layout: &Layout,
        r: retention::Retention,
        compact_every: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut h = Housekeeping {
            retention: r,
            compact: compact_every > 0,
            every: if compact_every > 0 {
                compact_every
            } else {
                DEFAULT_EVERY
            },
            since: 0,
            configured: BTreeSet::new(),
            vacuum: Some(retention::Vacuum::new(r.files)),
            round: None,
            logs_cleaned_at: None,
            metrics,
        };
        h.configure(layout, None).await;
        h
    }

    /// Give the stream's retention to tables that do not hold it yet (created since), but
    /// not to `busy` (a table being written beside the loop: the property change, a metadata
    /// commit, would make that commit fail).
    async fn configure(&mut self, layout: &Layout, busy: Option<Table>) {
        for table in Table::ALL {
            if self.configured.contains(&table) || busy == Some(table) {
                continue;
            }
            match retention::apply(layout, table, self.retention).await {
                Ok(true) => {
                    self.configured.insert(table);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(table = table.name(), error = %e.chain(),
                    "could not set the stream's retention; tried again after the next micro-batch"),
            }
        }
    }

    /// After a micro-batch: configure new tables (except `busy`), start a round when one is
    /// due, and report a finished one in `b`.
    pub async fn after(&mut self, layout: &Layout, b: &mut MicroBatch, busy: Option<Table>) {
        if self.configured.len() < Table::ALL.len() {
            self.configure(layout, busy).await;
        }
        if b.did_work() {
            self.since += 1;
        }
        if self.since >= self.every
            && let Some(vacuum) = self.vacuum.take()
        {
            self.since = 0;
            let clean_logs = self
                .logs_cleaned_at
                .is_none_or(|at| at.elapsed() >= LOG_CLEANUP_EVERY);
            if clean_logs {
                self.logs_cleaned_at = Some(Instant::now());
            }
            self.round = Some(tokio::spawn(round(
                layout.clone(),
                self.metrics.clone(),
                self.compact,
                clean_logs,
                vacuum,
            )));
        }
        if self.round.as_ref().is_some_and(|h| h.is_finished()) {
            self.collect(b).await;
        }
    }

    /// Wait for a round in flight and report it in `b`: stopping leaves nothing half-done.
    pub async fn finish(&mut self, b: &mut MicroBatch) {
        self.collect(b).await;
    }

    async fn collect(&mut self, b: &mut MicroBatch) {
        let Some(handle) = self.round.take() else {
            return;
        };
        match handle.await {
            Ok(r) => {
                if self.compact {
                    b.compacted_files = Some(r.compacted);
                }
                b.vacuumed_files = Some(r.vacuumed.files);
                b.logs_cleaned = r.logs_cleaned;
                b.errors.extend(r.errors);
                self.vacuum = Some(r.vacuum);
            }
            Err(e) => {
                b.errors.push(format!("housekeeping: {e}"));
                // Its removes are read again from the tables' current versions on.
                self.vacuum = Some(retention::Vacuum::new(self.retention.files));
            }
        }
    }
}

/// One round, in the background: it takes seconds (delta-rs OPTIMIZE rewrites ~200k rows/s
/// here) and must not hold up the micro-batches. Compaction's commit changes no data, so
/// ingest's commits land on top of it (and it on top of theirs). Failures are reported, not
/// fatal: the next round tries again.
async fn round(
    layout: Layout,
    metrics: Arc<Metrics>,
    compact: bool,
    clean_logs: bool,
    mut vacuum: retention::Vacuum,
) -> Round {
    let mut errors = Vec::new();
    let mut failed = |step: &str, what: String| {
        metrics.error("compact");
        errors.push(format!("{step}: {what}"));
    };
    let mut compacted = 0;
    if compact {
        for table in [
            Table::Transactions,
            Table::Quarantine,
            Table::TransactionIds,
        ] {
            match maintain::compact(&layout, table).await {
                Ok(n) => compacted += n,
                Err(e) => failed(&format!("compact {}", table.name()), e.chain()),
            }
        }
    }
    let vacuumed = vacuum.run(&layout).await;
    for e in &vacuumed.errors {
        failed("vacuum", e.clone());
    }
    let logs_cleaned = if clean_logs {
        match retention::clean_logs(&layout).await {
            Ok(n) => Some(n),
            Err(e) => {
                failed("log cleanup", e.chain());
                None
            }
        }
    } else {
        None
    };
    Round {
        compacted,
        vacuumed,
        logs_cleaned,
        errors,
        vacuum,
    }
}
