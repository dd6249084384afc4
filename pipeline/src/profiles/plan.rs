//! What a profiles run will do: nothing, everything, or the customers of the changed days.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Date32Type;

use super::{ProfilesOptions, ProfilesReport};
use crate::dates::{self, Day};
use crate::delta;
use crate::error::Result;
use crate::layout::Layout;
use crate::tables::Table;

/// The work a run does.
pub enum Work {
    /// The profiles reflect this aggregates version already.
    Nothing,
    /// Recompute every customer; the reason, when an incremental run was possible in principle.
    Full(Option<String>),
    /// Apply the changes of these days: their rows in `old` (the recorded version) and now.
    Incremental {
        /// The days whose aggregates changed.
        days: BTreeSet<Day>,
        /// The aggregates as of the recorded version.
        old: Box<DeltaTable>,
    },
}

/// The plan: the tables, versions and the work.
pub struct Plan {
    /// `customer_daily_aggregates` at `version`.
    pub source: DeltaTable,
    /// `customer_profiles`.
    pub target: DeltaTable,
    /// The aggregates' identity.
    pub source_id: String,
    /// The aggregates version to reflect.
    pub version: i64,
    /// The version reflected before (for this identity).
    pub previous: Option<i64>,
    /// The latest day in the aggregates (None: no aggregates yet).
    pub as_of: Option<Day>,
    /// What to do.
    pub work: Work,
}

impl Plan {
    /// `pipeline.profiles:<aggregates table id>`.
    pub fn app_id(&self) -> String {
        format!("pipeline.profiles:{}", self.source_id)
    }

    /// The report's facts known from the plan.
    pub fn report(&self) -> ProfilesReport {
        ProfilesReport {
            source_table_id: self.source_id.clone(),
            previous_source_version: self.previous,
            source_version: self.previous,
            as_of_day: self.as_of.map(dates::format),
            days_changed: match &self.work {
                Work::Incremental { days, .. } => days.len() as u64,
                _ => 0,
            },
            ..Default::default()
        }
    }
}

/// Read both tables' state and decide.
pub async fn plan(layout: &Layout, opts: &ProfilesOptions) -> Result<Plan> {
    let source = delta::open_required(layout, Table::Aggregates, "aggregate").await?;
    let target = delta::open_or_create(layout, Table::Profiles).await?;
    let source_id = delta::table_id(&source, Table::Aggregates)?;
    let version = delta::version(&source);
    let app_id = format!("pipeline.profiles:{source_id}");
    let previous = delta::txn_version(&target, Table::Profiles, &app_id).await?;
    let as_of = delta::files(&source, Table::Aggregates, None)?
        .iter()
        .filter_map(|f| f.day)
        .max();
    let work = match previous {
        Some(p) if p == version && !opts.full => Work::Nothing,
        _ if opts.full => Work::Full(None),
        None => Work::Full(None),
        Some(p) if p > version => Work::Full(Some(format!(
            "the aggregates went back from version {p} to {version}"
        ))),
        Some(p) => incremental(layout, &source, &target, p, version, as_of).await?,
    };
    Ok(Plan {
        source,
        target,
        source_id,
        version,
        previous,
        as_of,
        work,
    })
}

/// Incremental over the changed days, or full with the reason it cannot be.
async fn incremental(
    layout: &Layout,
    source: &DeltaTable,
    target: &DeltaTable,
    previous: i64,
    version: i64,
    as_of: Option<Day>,
) -> Result<Work> {
    let recorded = recorded_as_of(target).await?;
    if recorded != as_of {
        return Ok(Work::Full(Some(format!(
            "the latest day moved from {} to {}: every window moves",
            recorded.map_or("-".into(), dates::format),
            as_of.map_or("-".into(), dates::format)
        ))));
    }
    let Some(changes) = delta::log::changes(source, Table::Aggregates, previous, version).await?
    else {
        return Ok(Work::Full(Some(format!(
            "the aggregates log after version {previous} is gone"
        ))));
    };
    match delta::open_at(layout, Table::Aggregates, previous).await {
        Ok(old) => Ok(Work::Incremental {
            days: changes.days,
            old: Box::new(old),
        }),
        Err(e) => Ok(Work::Full(Some(format!(
            "aggregates version {previous} cannot be read ({})",
            e.chain()
        )))),
    }
}

/// The `as_of_day` the stored profiles were computed for (None: no profile stored).
async fn recorded_as_of(target: &DeltaTable) -> Result<Option<Day>> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    delta::query::register(&ctx, "profiles", target, None).await?;
    let batches = ctx
        .sql("SELECT max(as_of_day) FROM profiles")
        .await?
        .collect()
        .await?;
    Ok(batches.first().and_then(|b| {
        let c = b.column(0).as_primitive::<Date32Type>();
        (!c.is_empty() && c.is_valid(0)).then(|| c.value(0))
    }))
}
