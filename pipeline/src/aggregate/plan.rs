//! What an aggregate run will do: nothing, record a newer source version, or recompute some
//! days (or all of them).

use std::collections::BTreeSet;

use deltalake::DeltaTable;

use super::{AggregateOptions, AggregateReport};
use crate::dates::Day;
use crate::delta;
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

/// The plan: the tables, the versions and the work.
pub struct Plan {
    /// `customer_transactions` as of `version`.
    pub source: DeltaTable,
    /// The aggregates table.
    pub target: DeltaTable,
    /// The source's identity.
    pub source_id: String,
    /// The source version to reflect.
    pub version: i64,
    /// The source version reflected before (for this source identity).
    pub previous: Option<i64>,
    /// What to do.
    pub work: Work,
    /// The table was made with narrower sums by an earlier version: the `metaData` action
    /// that widens them, committed with a full rebuild.
    pub widen: Option<deltalake::kernel::Action>,
}

impl Plan {
    /// The application id under which the aggregates record the source version.
    pub fn app_id(&self) -> String {
        app_id(&self.source_id)
    }

    /// The report's facts known from the plan.
    pub fn report(&self) -> AggregateReport {
        AggregateReport {
            source_table_id: self.source_id.clone(),
            previous_source_version: self.previous,
            source_version: self.previous,
            ..Default::default()
        }
    }
}

/// `pipeline.aggregate:<source table id>`.
pub fn app_id(source_id: &str) -> String {
    format!("pipeline.aggregate:{source_id}")
}

/// Read both tables' state and decide.
pub async fn plan(
    layout: &Layout,
    opts: &AggregateOptions,
    kept: &mut delta::Kept,
) -> Result<Plan> {
    let mut source = kept
        .take_or(
            Table::Transactions,
            delta::open_required(layout, Table::Transactions, "ingest"),
        )
        .await?;
    let target = kept
        .take_or(
            Table::Aggregates,
            delta::open_or_create(layout, Table::Aggregates),
        )
        .await?;
    let source_id = delta::table_id(&source, Table::Transactions)?;
    let latest = delta::version(&source);
    let previous = delta::txn_version(&target, Table::Aggregates, &app_id(&source_id)).await?;
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
        source = delta::open_at(layout, Table::Transactions, version).await?;
    }
    let widen = delta::widening(&target, Table::Aggregates)?;
    if widen.is_some() {
        tracing::info!("the aggregates' sums are widened to Decimal(38, 2): rebuilding every day");
    }
    let work = match previous {
        _ if opts.full || opts.source_version.is_some() || widen.is_some() => Work::Recompute(None),
        None => Work::Recompute(None),
        Some(p) if p == version => Work::Nothing,
        Some(p) if p > version => Work::Recompute(None),
        Some(p) => match delta::log::changes(&source, Table::Transactions, p, version).await? {
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
    };
    Ok(Plan {
        source,
        target,
        source_id,
        version,
        previous,
        work,
        widen,
    })
}
