//! What a load will write, from its claim ([`super::claim`]): nothing, every row of the
//! aggregates (a first load, another table or history, an old version unreadable, a repair),
//! or the rows of the days changed since the versions ScyllaDB may hold, and the rows that
//! vanished from them.

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use scylla::client::session::Session;

use super::LoadOptions;
use super::claim::{self, Begun, Claim, Mine, Serving, Sweep};
use crate::cql::progress;
use crate::cql::schema::TABLE;
use crate::dates::Day;
use crate::delta::{self, DataFile};
use crate::error::{Error, Result};
use crate::layout::Layout;
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

/// Who is loading what: the data dir's id, and the table's version and fingerprint.
pub async fn mine(
    layout: &Layout,
    table: &DeltaTable,
    which: Table,
    opts: &LoadOptions,
) -> Result<Mine> {
    let version = delta::version(table);
    Ok(Mine {
        owner: layout.data_dir_id(!opts.dry_run).await?.unwrap_or_default(),
        table_id: delta::table_id(table, which)?,
        version,
        lineage: delta::log::fingerprint(table, which, version).await?,
        take_over: opts.take_over,
        full: opts.repair,
    })
}

/// The error for a keyspace that serves another data dir's tables.
pub fn refused(keyspace: &str, owner: &str, layout: &Layout) -> Error {
    Error::Invalid(format!(
        "keyspace {keyspace} serves the tables of another data dir (id {owner}), not of {}: \
         nothing was written. Load into another keyspace (--keyspace, SCYLLA_KEYSPACE), or \
         replace what it serves with this data dir's tables (--take-over)",
        layout.shown()
    ))
}

/// The error for a keyspace that serves this table along another history.
pub fn diverged(keyspace: &str, table: Table, version: i64, layout: &Layout) -> Error {
    Error::Invalid(format!(
        "keyspace {keyspace} serves version {version} of {table} from another history than \
         {}'s: this data dir was restored from a backup, or it is a copy of the data dir \
         ScyllaDB serves. Nothing was written. Restored: serve it with `pipeline load \
         --take-over`. A copy: load it into its own keyspace (--keyspace), or give it its own \
         identity first (remove its {})",
        layout.shown(),
        Layout::DATA_DIR_ID
    ))
}

/// Read the table and the load state and decide; unless `dry_run`, the claim is marked. A
/// repair that finds a newer version recorded or being loaded reads the table again and
/// repairs that.
pub async fn plan(
    layout: &Layout,
    session: &Session,
    opts: &LoadOptions,
    kept: &mut delta::Kept,
) -> Result<Plan> {
    let mut round = 0;
    loop {
        round += 1;
        let table = kept
            .take_or(
                Table::Aggregates,
                delta::open_required(layout, Table::Aggregates, "aggregate"),
            )
            .await?;
        kept.keep(Table::Aggregates, &table).await;
        let mine = mine(layout, &table, Table::Aggregates, opts).await?;
        let what = (&table, Table::Aggregates);
        let begun = claim::begin(
            session,
            &opts.scylla.keyspace,
            progress::AGGREGATES,
            mine,
            what,
            opts.dry_run,
        )
        .await?;
        match begun {
            Begun::Overtaken if opts.repair && round < 3 => continue,
            begun => return planned(layout, session, opts, table, begun).await,
        }
    }
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
        Begun::Refused { owner } => return Err(refused(keyspace, &owner, layout)),
        Begun::Diverged { version } => {
            return Err(diverged(keyspace, Table::Aggregates, version, layout));
        }
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
            sweep: sweeps(session, keyspace, claim.sweep).await?,
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

/// Whether a full load deletes older rows.
pub async fn sweeps(session: &Session, keyspace: &str, sweep: Sweep) -> Result<bool> {
    Ok(match sweep {
        Sweep::No => false,
        Sweep::Yes => true,
        Sweep::IfNotEmpty => !serving_table_empty(session, keyspace, TABLE).await?,
    })
}

/// True when the serving table `table` has no row.
pub async fn serving_table_empty(session: &Session, keyspace: &str, table: &str) -> Result<bool> {
    let what = format!("checking whether {keyspace}.{table} is empty");
    let mut q = scylla::statement::unprepared::Statement::new(format!(
        "SELECT customer_id FROM {keyspace}.{table} LIMIT 1"
    ));
    q.set_consistency(progress::consistency(session));
    let rows = session
        .query_unpaged(q, ())
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what, e))?;
    Ok(rows.rows_num() == 0)
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
