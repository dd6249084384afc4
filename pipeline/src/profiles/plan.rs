//! What a profiles run will do: nothing, everything, or the customers of the changed days.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Date32Type;

use super::options::AsOf;
use super::{ProfilesOptions, ProfilesReport};
use crate::dates::{self, Day};
use crate::delta::{self, derive::Derivation, derive::Spec};
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

/// The derivation: the aggregates -> the profiles.
pub const DERIVATION: Spec = Spec {
    source: Table::Aggregates,
    source_made_by: "aggregate",
    target: Table::Profiles,
    stage: "profiles",
    app: delta::keys::profiles_app,
};

/// The plan: the tables, versions and the work.
pub struct Plan {
    /// Both tables and what the profiles reflect.
    pub d: Derivation,
    /// The aggregates version to reflect (the latest).
    pub version: i64,
    /// The day the profiles are as of (None: no aggregates yet).
    pub as_of: Option<Day>,
    /// Days with aggregate rows after `as_of` (not counted), and their rows.
    pub after: (u64, u64),
    /// What to do.
    pub work: Work,
}

impl Plan {
    /// The report's facts known from the plan.
    pub fn report(&self) -> ProfilesReport {
        ProfilesReport {
            source_table_id: self.d.source_id.clone(),
            previous_source_version: self.d.previous,
            source_version: self.d.previous,
            as_of_day: self.as_of.map(dates::format),
            days_after_as_of: self.after.0,
            rows_after_as_of: self.after.1,
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
    let d = Derivation::open(layout, DERIVATION, &mut delta::Kept::default()).await?;
    let (source, target, version) = (&d.source, &d.target, d.latest());
    let (as_of, after) = as_of_day(source, opts.as_of_day)?;
    let work = match d.previous {
        _ if d.widen.is_some() => Work::Full(Some(
            "the profiles' sums are widened to Decimal(38, 2)".into(),
        )),
        Some(p) if p == version && !opts.full => {
            let recorded = recorded_as_of(target).await?;
            if recorded == as_of || recorded.is_none() {
                Work::Nothing
            } else {
                Work::Full(Some(format!(
                    "the as-of day moved from {} to {}",
                    recorded.map_or("-".into(), dates::format),
                    as_of.map_or("-".into(), dates::format)
                )))
            }
        }
        _ if opts.full => Work::Full(None),
        None => Work::Full(None),
        Some(p) if p > version => Work::Full(Some(format!(
            "the aggregates went back from version {p} to {version}"
        ))),
        Some(p) => incremental(layout, source, target, p, version, as_of).await?,
    };
    Ok(Plan {
        d,
        version,
        as_of,
        after,
        work,
    })
}

/// The as-of day by `rule`, from the aggregates' rows per day (file statistics, no scan),
/// and the days (and rows) after it.
fn as_of_day(source: &DeltaTable, rule: AsOf) -> Result<(Option<Day>, (u64, u64))> {
    let mut per_day: std::collections::BTreeMap<Day, u64> = Default::default();
    for f in delta::files(source, Table::Aggregates, None)? {
        if let Some(d) = f.day {
            *per_day.entry(d).or_default() += f.rows;
        }
    }
    let as_of = match rule {
        AsOf::Day(d) => Some(d),
        AsOf::Latest => per_day.keys().next_back().copied(),
        AsOf::Auto => dates::active_span(per_day.iter().map(|(d, n)| (*d, *n))).map(|s| s.1),
    };
    let after = as_of.map_or((0, 0), |a| {
        per_day
            .range(a + 1..)
            .fold((0, 0), |(days, rows), (_, n)| (days + 1, rows + n))
    });
    if after.0 > 0 {
        tracing::info!(
            as_of = %as_of.map(dates::format).unwrap_or_default(),
            days = after.0,
            rows = after.1,
            "aggregate rows after the as-of day are not counted (see --as-of-day)"
        );
    }
    Ok((as_of, after))
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
