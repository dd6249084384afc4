//! The serving protocol, shared by the aggregates' and the profiles' loads: which write
//! timestamps a load uses, which earlier versions it must make good, and when it has nothing
//! to do. It needs no lightweight transaction (see [`state`]), only writes
//! ordered by timestamp and reads that see what was acknowledged before them.
//!
//! Every write of a load of version `v` in a serving *epoch* with base `b` carries the
//! timestamp `b + v`. An epoch is one Delta table, of one data dir, along one history: a new
//! one begins with the first load, a rebuilt table (another table id), a history that
//! diverged (a restore from a backup: the commit recorded as loaded is not the table's commit
//! of that number), `--take-over`, or `load --repair`. Its base is above every timestamp used
//! before (`max(now, top + 1)`), so its rows win over all earlier ones and over writes made
//! outside the pipeline before it (with default, current-time timestamps).
//!
//! A load:
//! 1. reads the state, and decides ([`decide`]);
//! 2. leaves its marker (its epoch and version);
//! 3. reads the state again and decides again: a load whose marker it now sees and that
//!    stands for a higher timestamp will do the work (this one is overtaken and writes
//!    nothing); the others' versions join those it makes good;
//! 4. writes: every row of its version that differs from any version ScyllaDB may hold (the
//!    recorded one and every marked one, read by time travel), and deletes the rows any of
//!    them had and its version has not; or, when one of them cannot be read or belongs to
//!    another history, every row and then, in every partition, a delete just below its own
//!    timestamp;
//! 5. records its version (`current`, at its timestamp) and removes the markers it made good.
//!
//! Why that is enough: of two loads running at once, each writes its marker before its
//! second read, so at least one sees the other. The one that stands for the higher timestamp
//! either saw the other (and made its rows good) or was seen by it (and the other stopped
//! before writing). A killed load leaves its marker, so the next load makes its rows good.
//! The newest version wins row by row whatever the order of arrival, since its timestamp is
//! the highest.

use std::collections::HashMap;

use deltalake::DeltaTable;
use scylla::client::session::Session;

pub mod state;

use super::LoadOptions;
use crate::delta;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;
use state::{Entry, State};

/// Rounds of "a load standing higher appeared between the two reads" before giving up.
const MAX_ROUNDS: u32 = 4;

/// The load deciding: what it would serve.
#[derive(Debug, Clone)]
pub struct Mine {
    /// The data dir's id.
    pub owner: String,
    /// The Delta table's id.
    pub table_id: String,
    /// The version to serve.
    pub version: i64,
    /// Its commit's fingerprint.
    pub lineage: Option<String>,
    /// `--take-over`: serve this data dir even though another one is served.
    pub take_over: bool,
    /// `--repair`: write every row in a new epoch.
    pub full: bool,
}

/// What a load does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The keyspace serves another data dir's tables.
    Refused {
        /// The other data dir's id.
        owner: String,
    },
    /// It serves this table at a version whose commit is not this table's: the data dir was
    /// restored from a backup, or is a copy that diverged. Only `--take-over` serves it.
    Diverged {
        /// The version served.
        version: i64,
    },
    /// This version is served, and no other load's writes are left to make good.
    Nothing,
    /// A newer version is recorded, or a load standing for a higher timestamp is in
    /// progress: it does the work.
    Overtaken,
    /// Load, as claimed.
    Load(Claim),
}

/// How a load writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The epoch's base: every write is at `base + version`.
    pub base: i64,
    /// Versions of this table and history whose rows ScyllaDB may hold: the recorded one and
    /// every marked one below this load's timestamp. The load writes the rows that differ from
    /// any of them and deletes the rows any of them had and its version has not; a full load
    /// deletes those too (keyed, so they are gone even if a load still running writes them
    /// after the sweep listed the partitions).
    pub olds: Vec<i64>,
    /// Write every row instead (and why): nothing recorded, another table or history, or
    /// `--repair` / `--take-over`.
    pub full: Option<String>,
    /// After a full write, delete every older row of every partition.
    pub sweep: Sweep,
    /// The markers this load makes good (removed once it recorded its version).
    pub made_good: Vec<Entry>,
    /// The version recorded as served, when it is of this table and history.
    pub recorded: Option<i64>,
}

/// Whether a full load deletes older rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Not a full load.
    No,
    /// Every partition: older rows may exist.
    Yes,
    /// Only if the serving table has any row: the first load ever into the keyspace, with no
    /// other load marked (saves one request per partition).
    IfNotEmpty,
}

impl Sweep {
    /// Whether the full load of the serving `table` deletes older rows.
    pub async fn resolve(self, session: &Session, keyspace: &str, table: &str) -> Result<bool> {
        Ok(match self {
            Sweep::No => false,
            Sweep::Yes => true,
            Sweep::IfNotEmpty => !serving_table_empty(session, keyspace, table).await?,
        })
    }
}

/// True when the serving table `table` has no row.
async fn serving_table_empty(session: &Session, keyspace: &str, table: &str) -> Result<bool> {
    let what = format!("checking whether {keyspace}.{table} is empty");
    let mut q = scylla::statement::unprepared::Statement::new(crate::cql::statements::any_row(
        keyspace, table,
    ));
    q.set_consistency(crate::cql::consistency(session));
    let rows = session
        .query_unpaged(q, ())
        .await
        .map_err(|e| Error::scylla(what.clone(), e))?
        .into_rows_result()
        .map_err(|e| Error::scylla(what, e))?;
    Ok(rows.rows_num() == 0)
}

impl Claim {
    /// The timestamp of this load's writes.
    pub fn timestamp(&self, version: i64) -> i64 {
        self.base.saturating_add(version)
    }
}

/// Where a record or marker stands relative to this load's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A version of this data dir's table along its history: readable by time travel.
    Ours,
    /// A version of this table whose commit this log no longer has (expired): unknown.
    Unknown,
    /// Another data dir's, another table's, or another history's (a restored backup or a
    /// copy of the data dir diverged from it).
    Other,
}

/// Decide from `state`. `line(e)` places each record and marker (see [`Line`]).
pub fn decide(state: &State, mine: &Mine, line: &dyn Fn(&Entry) -> Line, now_us: i64) -> Decision {
    if let Some(d) = not_loading(state, mine, line) {
        return d;
    }
    let base = epoch_base(state, mine, line, now_us);
    Decision::Load(claim(state, mine, line, base))
}

/// The decisions that load nothing: refused, diverged, overtaken, or already loaded.
fn not_loading(state: &State, mine: &Mine, line: &dyn Fn(&Entry) -> Line) -> Option<Decision> {
    let current = state.current.as_ref();
    if let Some(c) = current.filter(|_| !mine.take_over) {
        if c.owner != mine.owner {
            return Some(Decision::Refused {
                owner: c.owner.clone(),
            });
        }
        if c.table_id == mine.table_id && line(c) == Line::Other {
            return Some(Decision::Diverged { version: c.version });
        }
    }
    let ours = |e: &Entry| line(e) == Line::Ours;
    // A newer version of this history is recorded, or being loaded: it does the work (a
    // repair too must not put an older version above it; its caller reads the table again).
    if current.is_some_and(|c| ours(c) && c.version > mine.version)
        || state
            .markers
            .iter()
            .any(|m| ours(m) && m.version > mine.version)
    {
        return Some(Decision::Overtaken);
    }
    let repair = mine.full || mine.take_over;
    (!repair
        && current.is_some_and(|c| ours(c) && c.version == mine.version)
        && state.markers.is_empty())
    .then_some(Decision::Nothing)
}

/// The write-timestamp base of the load: its serving epoch's, or a new epoch's above
/// everything recorded and marked.
fn epoch_base(state: &State, mine: &Mine, line: &dyn Fn(&Entry) -> Line, now_us: i64) -> i64 {
    let current = state.current.as_ref();
    let ours = |e: &Entry| line(e) == Line::Ours;
    let repair = mine.full || mine.take_over;
    // The epoch goes on unless something of another epoch stands at or above this load's
    // timestamp in it (equal timestamps of two epochs would merge cell by cell).
    let top = state.top();
    let keeps = |c: &Entry| {
        let ts = c.base.saturating_add(mine.version);
        current
            .into_iter()
            .chain(&state.markers)
            .all(|e| e.timestamp() < ts || (e.base == c.base && ours(e)))
    };
    match current {
        Some(c) if !repair && ours(c) && keeps(c) => c.base,
        _ => now_us.max(top.map_or(i64::MIN, |t| t.saturating_add(1))),
    }
}

/// The claim of a load at `base`: the versions it diffs against (or why it writes every
/// row), the markers it makes good, and whether it sweeps.
fn claim(state: &State, mine: &Mine, line: &dyn Fn(&Entry) -> Line, base: i64) -> Claim {
    let current = state.current.as_ref();
    let ours = |e: &Entry| line(e) == Line::Ours;
    let ts = base.saturating_add(mine.version);
    let mut olds = Vec::new();
    let mut full = if mine.full {
        Some("--repair: every row, in a new serving epoch".to_string())
    } else if mine.take_over {
        Some("--take-over: this data dir's tables replace the ones served".to_string())
    } else {
        None
    };
    match current.map(|c| (c, line(c))) {
        None => {
            full.get_or_insert_with(|| "nothing was loaded into this keyspace yet".into());
        }
        Some((c, Line::Ours)) => olds.push(c.version),
        Some((c, Line::Unknown)) => {
            full.get_or_insert_with(|| {
                format!(
                    "the commit of version {} served is no longer in the log (log retention)",
                    c.version
                )
            });
        }
        Some((c, Line::Other)) => {
            full.get_or_insert_with(|| {
                format!("the keyspace served another table ({})", c.table_id)
            });
        }
    }
    let mut made_good = Vec::new();
    for m in state.markers.iter().filter(|m| m.timestamp() <= ts) {
        if ours(m) {
            olds.push(m.version);
        } else {
            full.get_or_insert_with(|| {
                format!(
                    "a load of another table, history or data dir was interrupted (version {})",
                    m.version
                )
            });
        }
        made_good.push(m.clone());
    }
    olds.sort_unstable();
    olds.dedup();
    let sweep = match &full {
        None => Sweep::No,
        Some(_) if current.is_none() && state.markers.is_empty() => Sweep::IfNotEmpty,
        Some(_) => Sweep::Yes,
    };
    Claim {
        base,
        olds,
        full,
        sweep,
        made_good,
        recorded: current.filter(|c| ours(c)).map(|c| c.version),
    }
}

/// How [`begin`] ended (refused and diverged end as errors).
pub enum Begun {
    /// See [`Decision::Nothing`].
    Nothing,
    /// See [`Decision::Overtaken`].
    Overtaken,
    /// What a dry run would do (nothing was written, no marker left).
    DryRun(Claim),
    /// Marked and claimed: write, then [`Serving::finish`].
    Go(Box<Serving>),
}

/// A load between its claim and its record: its marker is in the state.
pub struct Serving {
    name: &'static str,
    mine: Mine,
    claim: Claim,
    marker: Entry,
}

impl Serving {
    /// How it writes.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// Its writes' timestamp.
    pub fn timestamp(&self) -> i64 {
        self.claim.timestamp(self.mine.version)
    }

    /// Write every row instead of a diff, sweeping afterwards (an old version turned out
    /// unreadable: its files vacuumed, its log entries gone).
    pub fn go_full(&mut self, why: String) {
        self.claim.full = Some(why);
        self.claim.sweep = Sweep::Yes;
    }

    /// Record the version as served (every row written) and remove the markers made good.
    /// Returns false when a newer version is recorded (it was loaded meanwhile; its rows win).
    pub async fn finish(self, session: &Session, keyspace: &str, rows: u64) -> Result<bool> {
        crate::failpoints::hit("load.before_state");
        let record = Entry {
            entry: String::new(),
            owner: self.mine.owner.clone(),
            table_id: self.mine.table_id.clone(),
            base: self.claim.base,
            version: self.mine.version,
            lineage: self.mine.lineage.clone(),
            rows: rows as i64,
            written_at: 0,
        };
        state::record(session, keyspace, self.name, &record).await?;
        let mut done = self.claim.made_good;
        done.push(self.marker);
        state::unmark(session, keyspace, self.name, &done).await?;
        let now = state::read(session, keyspace, self.name).await?;
        Ok(now
            .current
            .is_none_or(|c| c.timestamp() <= record.timestamp()))
    }
}

/// Steps 1–3 of a load of `mine` into the serving table `name`: read, decide, mark, read and
/// decide again. `t` is the table being served (its log tells which recorded versions are
/// along its history).
pub async fn begin(
    session: &Session,
    (keyspace, layout): (&str, &Layout),
    name: &'static str,
    mine: Mine,
    (t, table): (&DeltaTable, Table),
    dry_run: bool,
) -> Result<Begun> {
    let mut state = state::read(session, keyspace, name).await?;
    for _ in 0..MAX_ROUNDS {
        let lines = lineages(t, table, &mine, &state).await?;
        let line = |e: &Entry| place(&mine, &lines, e);
        let now = chrono::Utc::now().timestamp_micros();
        let claim = match decide(&state, &mine, &line, now) {
            Decision::Refused { owner } => return Err(refused(keyspace, &owner, layout)),
            Decision::Diverged { version } => {
                return Err(diverged(keyspace, table, version, layout));
            }
            Decision::Nothing => return Ok(Begun::Nothing),
            Decision::Overtaken => return Ok(Begun::Overtaken),
            Decision::Load(c) if dry_run => return Ok(Begun::DryRun(c)),
            Decision::Load(c) => c,
        };
        let marker = Entry::marker(
            &mine.owner,
            &mine.table_id,
            claim.base,
            mine.version,
            mine.lineage.clone(),
        );
        state::mark(session, keyspace, name, &marker).await?;
        crate::failpoints::pause("load.after_mark");
        // Loads that marked themselves meanwhile: one standing higher does the work; the
        // others join what this one makes good.
        let mut again = state::read(session, keyspace, name).await?;
        again.markers.retain(|m| m.entry != marker.entry);
        let lines = lineages(t, table, &mine, &again).await?;
        let line = |e: &Entry| place(&mine, &lines, e);
        let outcome = match decide(&again, &mine, &line, now) {
            Decision::Load(c) if c.base == claim.base => {
                return Ok(Begun::Go(Box::new(Serving {
                    name,
                    mine,
                    claim: c,
                    marker,
                })));
            }
            // A load of a new epoch above this one's marked itself: claim again above it.
            Decision::Load(_) => None,
            other => Some(other),
        };
        state::unmark(session, keyspace, name, std::slice::from_ref(&marker)).await?;
        match outcome {
            Some(Decision::Refused { owner }) => return Err(refused(keyspace, &owner, layout)),
            Some(Decision::Diverged { version }) => {
                return Err(diverged(keyspace, table, version, layout));
            }
            Some(Decision::Nothing) => return Ok(Begun::Nothing),
            Some(_) => return Ok(Begun::Overtaken),
            None => state = again,
        }
    }
    Err(crate::error::Error::Invalid(format!(
        "other loads into {keyspace}.{name} kept starting above this one ({MAX_ROUNDS} rounds): \
         run `pipeline load` again"
    )))
}

/// How the table to serve is opened.
pub enum Open<'k> {
    /// It must exist; kept open for the next load.
    Required {
        /// The stage that makes it (named when it does not exist yet).
        made_by: &'static str,
        /// The tables a stream keeps open.
        kept: &'k mut delta::Kept,
    },
    /// It may not exist yet (nothing to serve then).
    IfAny,
}

impl Open<'_> {
    async fn open(&mut self, layout: &Layout, which: Table) -> Result<Option<DeltaTable>> {
        match self {
            Open::Required { made_by, kept } => {
                let open = delta::open_required(layout, which, made_by);
                let table = kept.take_or(which, open).await?;
                kept.keep(which, &table).await;
                Ok(Some(table))
            }
            Open::IfAny => delta::open(layout, which).await,
        }
    }
}

/// Open the table (None: there is none) and [`begin`] a load of its version into the
/// serving table `name`. A repair that finds a newer version recorded or being loaded opens
/// the table again and repairs that one (three rounds at most). Returns the table, how the
/// load began, and the rounds.
pub async fn begin_latest(
    session: &Session,
    layout: &Layout,
    opts: &LoadOptions,
    (name, which, dry_run): (&'static str, Table, bool),
    mut open: Open<'_>,
) -> Result<Option<(DeltaTable, Begun, u32)>> {
    let at = (opts.scylla.keyspace.as_str(), layout);
    let mut round = 0;
    loop {
        round += 1;
        let Some(table) = open.open(layout, which).await? else {
            return Ok(None);
        };
        let mine = mine(layout, &table, which, opts).await?;
        let begun = begin(session, at, name, mine, (&table, which), dry_run).await?;
        if !(matches!(begun, Begun::Overtaken) && opts.repair && round < 3) {
            return Ok(Some((table, begun, round)));
        }
    }
}

/// Who is loading what: the data dir's id, and the table's version and fingerprint.
async fn mine(
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
fn refused(keyspace: &str, owner: &str, layout: &Layout) -> Error {
    Error::Invalid(format!(
        "keyspace {keyspace} serves the tables of another data dir (id {owner}), not of {}: \
         nothing was written. Load into another keyspace (--keyspace, SCYLLA_KEYSPACE), or \
         replace what it serves with this data dir's tables (--take-over)",
        layout.shown()
    ))
}

/// The error for a keyspace that serves this table along another history.
fn diverged(keyspace: &str, table: Table, version: i64, layout: &Layout) -> Error {
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

/// Where `e` stands (see [`Line`]), from the fingerprints of `lineages`.
fn place(mine: &Mine, lines: &HashMap<i64, Option<String>>, e: &Entry) -> Line {
    if e.owner != mine.owner || e.table_id != mine.table_id {
        return Line::Other;
    }
    match (lines.get(&e.version), &e.lineage) {
        (Some(Some(ours)), Some(theirs)) if ours == theirs => Line::Ours,
        (Some(Some(_)), Some(_)) => Line::Other,
        _ => Line::Unknown,
    }
}

/// The fingerprint, in `t`'s log, of each version the state names of `t`'s table.
async fn lineages(
    t: &DeltaTable,
    table: Table,
    mine: &Mine,
    state: &State,
) -> Result<HashMap<i64, Option<String>>> {
    let mut out = HashMap::new();
    for e in state.current.iter().chain(&state.markers) {
        if e.table_id == mine.table_id && !out.contains_key(&e.version) {
            out.insert(
                e.version,
                delta::log::fingerprint(t, table, e.version).await?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn entry(entry: &str, table: &str, base: i64, version: i64) -> Entry {
        Entry {
            entry: entry.into(),
            owner: "dir".into(),
            table_id: table.into(),
            base,
            version,
            lineage: Some(format!("{table}@{version}")),
            rows: 0,
            written_at: base + version,
        }
    }

    fn mine(version: i64) -> Mine {
        Mine {
            owner: "dir".into(),
            table_id: "t".into(),
            version,
            lineage: Some(format!("t@{version}")),
            take_over: false,
            full: false,
        }
    }

    /// Table `t` of data dir `dir`, up to version 10; lineages marked `-d` diverged.
    fn line(e: &Entry) -> Line {
        if e.owner != "dir" || e.table_id != "t" || e.lineage.as_deref().unwrap().contains("-d") {
            Line::Other
        } else if e.version > 10 {
            Line::Unknown
        } else {
            Line::Ours
        }
    }

    fn claim(d: Decision) -> Claim {
        match d {
            Decision::Load(c) => c,
            other => panic!("expected a load, got {other:?}"),
        }
    }

    #[test]
    fn a_first_load_opens_an_epoch_and_sweeps_only_a_non_empty_table() {
        let c = claim(decide(&State::default(), &mine(3), &line, NOW));
        assert_eq!(c.base, NOW);
        assert!(c.olds.is_empty() && c.full.is_some());
        assert_eq!(c.sweep, Sweep::IfNotEmpty);
    }

    #[test]
    fn the_next_version_keeps_the_epoch_and_diffs_against_the_recorded_one() {
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![],
        };
        assert_eq!(decide(&state, &mine(3), &line, NOW), Decision::Nothing);
        let c = claim(decide(&state, &mine(5), &line, NOW));
        assert_eq!(
            (c.base, c.olds.clone(), c.full.clone()),
            (100, vec![3], None)
        );
        assert_eq!(c.timestamp(5), 105);
        // An older snapshot: a newer version is recorded.
        assert_eq!(decide(&state, &mine(2), &line, NOW), Decision::Overtaken);
    }

    #[test]
    fn a_killed_load_is_made_good_by_the_next() {
        let killed = entry("load:k", "t", 100, 4);
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![killed.clone()],
        };
        // Even of the version it was loading: its rows may be incomplete.
        let c = claim(decide(&state, &mine(4), &line, NOW));
        assert_eq!((c.base, c.olds.clone()), (100, vec![3, 4]));
        assert_eq!(c.made_good, vec![killed]);
        // A load of a newer version in progress: it does the work.
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![entry("load:n", "t", 100, 6)],
        };
        assert_eq!(decide(&state, &mine(5), &line, NOW), Decision::Overtaken);
    }

    #[test]
    fn another_table_or_a_repair_opens_a_new_epoch_above_everything() {
        let recreated = State {
            current: Some(entry("current", "old", NOW + 50, 9)),
            markers: vec![],
        };
        let c = claim(decide(&recreated, &mine(1), &line, NOW));
        assert_eq!(c.base, NOW + 60, "above the old epoch's timestamps");
        assert_eq!((c.olds.is_empty(), c.sweep), (true, Sweep::Yes));
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![],
        };
        let repair = Mine {
            full: true,
            ..mine(3)
        };
        let c = claim(decide(&state, &repair, &line, NOW));
        assert_eq!(
            (c.base, c.sweep, c.olds.clone()),
            (NOW, Sweep::Yes, vec![3])
        );
        // A repair of an older version than one recorded is overtaken (its caller reads the
        // table again): it must not put the older rows above the newer.
        let newer = State {
            current: Some(entry("current", "t", 100, 5)),
            markers: vec![],
        };
        assert_eq!(decide(&newer, &repair, &line, NOW), Decision::Overtaken);
    }

    #[test]
    fn a_diverged_history_is_refused_unless_taken_over() {
        let mut restored = entry("current", "t", 100, 6);
        restored.lineage = Some("t@6-d".into());
        let state = State {
            current: Some(restored),
            markers: vec![],
        };
        assert_eq!(
            decide(&state, &mine(6), &line, NOW),
            Decision::Diverged { version: 6 }
        );
        let c = claim(decide(
            &state,
            &Mine {
                take_over: true,
                ..mine(6)
            },
            &line,
            NOW,
        ));
        assert_eq!((c.base, c.sweep), (NOW, Sweep::Yes));
        // The recorded commit is gone from the log: unknown, reloaded without refusal.
        let state = State {
            current: Some(entry("current", "t", 100, 11)),
            markers: vec![],
        };
        let c = claim(decide(&state, &mine(12), &line, NOW));
        assert!(c.full.unwrap().contains("no longer in the log"));
    }

    #[test]
    fn a_killed_load_of_a_higher_epoch_moves_the_next_load_above_it() {
        // A killed `load --repair` (epoch NOW - 10) over an epoch based at 100.
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![entry("load:f", "t", NOW - 10, 3)],
        };
        let c = claim(decide(&state, &mine(4), &line, NOW - 1000));
        assert_eq!(c.base, NOW - 10 + 3 + 1, "above the killed load's writes");
        assert_eq!(c.olds, vec![3], "its rows are version 3's");
        assert_eq!(c.made_good.len(), 1);
    }

    #[test]
    fn no_two_epochs_ever_share_a_timestamp() {
        // Clock skew: a killed repair's epoch B+6 at version 5 stands at B+11, exactly where
        // version 11 of the recorded epoch B would write. The load must go above it.
        let b = NOW;
        let state = State {
            current: Some(entry("current", "t", b, 4)),
            markers: vec![entry("load:r", "t", b + 6, 5)],
        };
        let c = claim(decide(&state, &mine(10), &line, b - 3_600_000_000));
        assert!(c.timestamp(10) > b + 11, "{c:?}");
        // The same epoch at the same version is the same rows: it stays.
        let state = State {
            current: Some(entry("current", "t", b, 4)),
            markers: vec![entry("load:s", "t", b, 10)],
        };
        let c = claim(decide(&state, &mine(10), &line, b));
        assert_eq!(c.base, b);
    }

    #[test]
    fn another_data_dir_is_refused_unless_taken_over_and_a_killed_take_over_locks_nobody_out() {
        let mut other = entry("current", "x", 100, 3);
        other.owner = "elsewhere".into();
        let state = State {
            current: Some(other.clone()),
            markers: vec![],
        };
        assert_eq!(
            decide(&state, &mine(3), &line, NOW),
            Decision::Refused {
                owner: "elsewhere".into()
            }
        );
        let c = claim(decide(
            &state,
            &Mine {
                take_over: true,
                ..mine(3)
            },
            &line,
            NOW,
        ));
        assert_eq!((c.base, c.sweep), (NOW, Sweep::Yes));
        // The other data dir's take-over was killed: this one, still recorded, goes on (a
        // full load above it, which makes its writes good).
        let mut killed = entry("load:t", "x", NOW + 5, 3);
        killed.owner = "elsewhere".into();
        let state = State {
            current: Some(entry("current", "t", 100, 3)),
            markers: vec![killed],
        };
        let c = claim(decide(&state, &mine(3), &line, NOW));
        assert_eq!((c.sweep, c.made_good.len()), (Sweep::Yes, 1));
        assert!(c.timestamp(3) > NOW + 8);
    }
}
