//! What an aggregate run will do: nothing, record a newer source version, or recompute some
//! days (or all of them).

use std::collections::BTreeSet;

use super::{AggregateOptions, AggregateReport};
use crate::dates::Day;
use crate::delta::{self, derive::Derivation, derive::Spec};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// The work a run does.
pub enum Work {
    /// The aggregates reflect this source version already.
    Nothing,
    /// New source commits changed no data (a compaction upstream): record the version only.
    RecordVersion,
    /// Recompute these days (`None`: all of them).
    Recompute(Option<BTreeSet<Day>>),
    /// Only rows were added since: aggregate the added files alone and merge the result
    /// into these days' aggregates (sums and counts add up, minima and maxima combine).
    Merge {
        /// The days the added files belong to.
        days: BTreeSet<Day>,
        /// The added data files (paths as the log writes them).
        added: Vec<String>,
    },
}

impl Work {
    /// Take the work out, leaving `Nothing`.
    pub fn take(&mut self) -> Work {
        std::mem::replace(self, Work::Nothing)
    }
}

/// The derivation: `customer_transactions` -> the aggregates.
pub const DERIVATION: Spec = Spec {
    source: Table::Transactions,
    source_made_by: "ingest",
    target: Table::Aggregates,
    stage: "aggregate",
    app: delta::keys::aggregate_app,
};

/// The plan: the tables, the versions and the work.
pub struct Plan {
    /// Both tables (the source as of `version`) and what the aggregates reflect.
    pub d: Derivation,
    /// The source version to reflect.
    pub version: i64,
    /// What to do.
    pub work: Work,
}

impl Plan {
    /// The report's facts known from the plan.
    pub fn report(&self) -> AggregateReport {
        AggregateReport {
            source_table_id: self.d.source_id.clone(),
            previous_source_version: self.d.previous,
            source_version: self.d.previous,
            ..Default::default()
        }
    }
}

/// Read both tables' state and decide.
pub async fn plan(
    layout: &Layout,
    opts: &AggregateOptions,
    kept: &mut delta::Kept,
) -> Result<Plan> {
    let mut d = Derivation::open(layout, DERIVATION, kept).await?;
    let latest = d.latest();
    let version = match opts.source_version {
        Some(v) if v < 0 || v > latest => {
            return Err(Error::Invalid(format!(
                "--source-version {v} does not exist: {} has versions 0 to {latest}",
                Table::Transactions
            )));
        }
        Some(v) => v,
        None => latest,
    };
    if version != latest {
        d.source = delta::open_at(layout, Table::Transactions, version).await?;
    }
    if d.widen.is_some() {
        tracing::info!("the aggregates' sums are widened to Decimal(38, 2): rebuilding every day");
    }
    let work = work(&d, opts, version).await?;
    Ok(Plan { d, version, work })
}

/// What the run does to reflect source `version`.
async fn work(d: &Derivation, opts: &AggregateOptions, version: i64) -> Result<Work> {
    Ok(match d.previous {
        _ if opts.full || opts.source_version.is_some() || d.widen.is_some() => {
            Work::Recompute(None)
        }
        None => Work::Recompute(None),
        Some(p) if p == version => Work::Nothing,
        Some(p) if p > version => Work::Recompute(None),
        Some(p) => match delta::log::changes(&d.source, Table::Transactions, p, version).await? {
            Some(c) if c.days.is_empty() => Work::RecordVersion,
            Some(c) if !c.removed_data && !c.rewrote_files => Work::Merge {
                days: c.days,
                added: c.added,
            },
            Some(c) => Work::Recompute(Some(c.days)),
            None => {
                tracing::warn!(
                    "source log entries after version {p} are gone (log retention); rebuilding fully"
                );
                Work::Recompute(None)
            }
        },
    })
}
