//! What a load will write, from its claim ([`super::claim`]): nothing, every row of the
//! aggregates (a first load, another table or history, an old version unreadable, a repair),
//! or the rows of the days changed since the versions ScyllaDB may hold, and the rows that
//! vanished from them.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use scylla::client::session::Session;

use crate::cql::schema::TABLE;
use crate::dates::Day;
use crate::delta::{self, DataFile};
use crate::error::Result;
use crate::layout::Layout;
use crate::load::claim::{self, Begun, Claim, Serving, state};
use crate::load::{LoadOptions, LoadReport};
use crate::tables::Table;

/// The work of a load.
pub enum Work {
    /// This version is loaded.
    Nothing,
    /// A newer version is loaded, or being loaded (a concurrent load overtook this one).
    Overtaken,
    /// Write every row, delete the rows `olds` had and this version has not, then (when
    /// `sweep`) delete older rows of every partition.
    Full {
        /// Whether older rows may exist.
        sweep: bool,
        /// The readable versions of this history ScyllaDB may hold (their rows are deleted by
        /// key: a load still running may write them after the sweep listed the partitions).
        olds: Vec<DeltaTable>,
    },
    /// Write the changed days' rows that differ from any of `olds` (the versions ScyllaDB
    /// may hold: the recorded one, and any a load in progress or killed was writing), and
    /// delete the rows of those days that any of them had and this version has not.
    Days {
        /// The changed days.
        days: BTreeSet<Day>,
        /// The aggregates as of each of those versions.
        olds: Vec<DeltaTable>,
    },
}

/// The plan: the table and version, the claim, the work and the files.
pub struct Plan {
    /// The aggregates table at `version`.
    pub table: DeltaTable,
    /// The version to load.
    pub version: i64,
    /// The aggregates table's identity.
    pub table_id: String,
    /// The marked claim (None when nothing is to be written, and in a dry run).
    pub serving: Option<Box<Serving>>,
    /// The version of this table and history recorded before (None: nothing yet).
    pub previous: Option<i64>,
    /// Why every row is written, when it is.
    pub full_because: Option<String>,
    /// Loads in progress or killed whose writes this one makes good.
    pub made_good: u64,
    /// What to do.
    pub work: Work,
    /// The files to write (those of the changed days, or all).
    pub files: Vec<DataFile>,
}

impl Plan {
    /// The report's facts known from the plan.
    pub fn report(&self, opts: &LoadOptions) -> LoadReport {
        LoadReport {
            keyspace: opts.scylla.keyspace.clone(),
            table_id: self.table_id.clone(),
            aggregates_version: Some(self.version),
            previous_version: self.previous,
            full_load: matches!(self.work, Work::Full { .. }),
            full_because: self.full_because.clone(),
            loads_made_good: self.made_good,
            overtaken: matches!(self.work, Work::Overtaken),
            days: (self.files.iter().filter_map(|f| f.day))
                .collect::<BTreeSet<_>>()
                .len() as u64,
            files: self.files.len() as u64,
            rows_to_load: self.files.iter().map(|f| f.rows).sum(),
            dry_run: opts.dry_run,
            ..Default::default()
        }
    }
}

/// Read the table and the load state and decide; unless `dry_run`, the claim is marked (see
/// [`claim::begin_latest`]).
pub async fn plan(
    layout: &Layout,
    session: &Session,
    opts: &LoadOptions,
    kept: &mut delta::Kept,
) -> Result<Plan> {
    let open = claim::Open::Required {
        made_by: "aggregate",
        kept,
    };
    let which = (state::AGGREGATES, Table::Aggregates, opts.dry_run);
    let (table, begun, _) = claim::begin_latest(session, layout, opts, which, open)
        .await?
        .expect("the aggregates table is required");
    planned(layout, session, opts, table, begun).await
}

/// The plan of a load that began (see [`plan`]).
async fn planned(
    layout: &Layout,
    session: &Session,
    opts: &LoadOptions,
    table: DeltaTable,
    begun: Begun,
) -> Result<Plan> {
    let keyspace = &opts.scylla.keyspace;
    let version = delta::version(&table);
    let table_id = delta::table_id(&table, Table::Aggregates)?;
    let (claim, mut serving) = match begun {
        Begun::Nothing | Begun::Overtaken => {
            let overtaken = matches!(begun, Begun::Overtaken);
            return Ok(Plan {
                table,
                version,
                table_id,
                serving: None,
                previous: (!overtaken).then_some(version),
                full_because: None,
                made_good: 0,
                work: if overtaken {
                    Work::Overtaken
                } else {
                    Work::Nothing
                },
                files: Vec::new(),
            });
        }
        Begun::DryRun(c) => (c, None),
        Begun::Go(s) => (s.claim().clone(), Some(s)),
    };
    let mut full_because = claim.full.clone();
    let work = match &claim.full {
        Some(_) => Work::Full {
            sweep: claim.sweep.resolve(session, keyspace, TABLE).await?,
            olds: readable(layout, &claim.olds).await,
        },
        None => match changed_days(layout, &table, &claim, version).await {
            Ok(work) => work,
            Err(why) => {
                tracing::warn!("{why}; loading everything");
                if let Some(s) = serving.as_mut() {
                    s.go_full(why.clone());
                }
                full_because = Some(why);
                Work::Full {
                    sweep: true,
                    olds: readable(layout, &claim.olds).await,
                }
            }
        },
    };
    let files = match &work {
        Work::Nothing | Work::Overtaken => Vec::new(),
        Work::Full { .. } => delta::files(&table, Table::Aggregates, None)?,
        Work::Days { days, .. } => delta::files(&table, Table::Aggregates, Some(days))?,
    };
    Ok(Plan {
        table,
        version,
        table_id,
        serving,
        previous: claim.recorded,
        full_because,
        made_good: claim.made_good.len() as u64,
        work,
        files,
    })
}

/// The days changed since each of the claim's old versions, with the table as of each;
/// `Err(why)` when one of them cannot be read (its log entries or files are gone).
async fn changed_days(
    layout: &Layout,
    table: &DeltaTable,
    claim: &Claim,
    version: i64,
) -> std::result::Result<Work, String> {
    let mut days = BTreeSet::new();
    for &old in &claim.olds {
        match delta::log::changes(table, Table::Aggregates, old, version).await {
            Ok(Some(c)) => days.extend(c.days),
            Ok(None) => {
                return Err(format!(
                    "aggregates log entries after version {old} are gone"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "the aggregates log after version {old}: {}",
                    e.chain()
                ));
            }
        }
    }
    let mut olds = Vec::new();
    for &old in &claim.olds {
        match open_old(layout, old, &days).await {
            Ok(t) => olds.push(t),
            Err(e) => {
                return Err(format!(
                    "aggregates version {old} cannot be read to find changed rows ({})",
                    e.chain()
                ));
            }
        }
    }
    Ok(Work::Days { days, olds })
}

/// The old versions that can still be read whole (for a full load's keyed deletes; one that
/// cannot is left to the sweep).
async fn readable(layout: &Layout, olds: &[i64]) -> Vec<DeltaTable> {
    let mut out = Vec::new();
    for &v in olds {
        if let Ok(t) = delta::open_at(layout, Table::Aggregates, v).await
            && delta::check_files_exist(&t, Table::Aggregates, None)
                .await
                .is_ok()
        {
            out.push(t);
        }
    }
    out
}

/// The table as of `previous`, if the files of `days` it had are all still there (VACUUM
/// removes them after the retention).
async fn open_old(layout: &Layout, previous: i64, days: &BTreeSet<Day>) -> Result<DeltaTable> {
    let old = delta::open_at(layout, Table::Aggregates, previous).await?;
    delta::check_files_exist(&old, Table::Aggregates, Some(days)).await?;
    Ok(old)
}
