//! What a stream keeps of its tables' history, so that a table's log and its data dir stay
//! bounded however long the stream runs.
//!
//! A stream commits to most of its tables about once a second, and every micro-batch replaces
//! files (today's aggregates, the profiles, compacted small files). Delta keeps both kinds of
//! history by time, with two standard table properties:
//! - `delta.logRetentionDuration`: commit files older than it are removed once a later
//!   checkpoint holds their state (Delta's default: 30 days, ~2.6 million commit files at a
//!   commit a second). Time travel reaches back that far.
//! - `delta.deletedFileRetentionDuration`: how long a removed data file stays on disk for
//!   readers of older versions before VACUUM may delete it (default 7 days; a stream replacing
//!   a 3 MiB aggregates file every second leaves terabytes in a week). Checkpoints also carry
//!   the removes (tombstones) this long, so they would grow with it.
//!
//! `run --follow` sets both on the tables it writes ([`apply`], a metadata commit, once per
//! table), to `--log-retention` and `--vacuum-retention`, and then keeps them: expired log
//! entries are cleaned (delta-rs's `cleanup_metadata`, which keeps every version within the
//! retention readable), and [`Vacuum`] deletes the files the tables' commits removed once
//! they have been removed for longer than the retention, as VACUUM does, reading only the
//! commits since its last look.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::table::config::TablePropertiesExt;
use object_store::ObjectStoreExt;
use serde_json::Value;

use crate::delta::{self, log};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// How long a stream's tables keep their history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Commit files (time travel).
    pub log: Duration,
    /// Removed data files (readers of older versions).
    pub files: Duration,
}

const LOG_KEY: &str = "delta.logRetentionDuration";
const FILES_KEY: &str = "delta.deletedFileRetentionDuration";

impl Retention {
    /// The properties, as Delta writes intervals (`interval 2 days`, in the largest whole
    /// unit).
    fn properties(&self) -> HashMap<String, String> {
        let interval = |d: Duration| format!("interval {}", log::duration_text(d));
        HashMap::from([
            (LOG_KEY.to_string(), interval(self.log)),
            (FILES_KEY.to_string(), interval(self.files)),
        ])
    }

    /// Whether `t` has these retentions already.
    fn held_by(&self, t: &DeltaTable, table: Table) -> Result<bool> {
        let snapshot = t.snapshot().map_err(|e| Error::delta(table.name(), e))?;
        let config = snapshot.table_config();
        let secs = |d: Duration| d.as_secs().max(1);
        Ok(secs(config.log_retention_duration()) == secs(self.log)
            && secs(config.deleted_file_retention_duration()) == secs(self.files))
    }
}

/// Give `table` these retentions when it exists and has others: one metadata commit (a
/// writer that committed meanwhile makes it fail as a conflict; the next call tries again).
/// Returns whether the table exists (and now holds them).
pub async fn apply(layout: &Layout, table: Table, r: Retention) -> Result<bool> {
    let Some(t) = delta::open(layout, table).await? else {
        return Ok(false);
    };
    if r.held_by(&t, table)? {
        return Ok(true);
    }
    tracing::info!(table = table.name(), log = ?r.log, files = ?r.files, "setting the stream's retention");
    t.set_tbl_properties()
        .with_properties(r.properties())
        .with_commit_properties(super::no_hooks())
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    Ok(true)
}

/// The files a table's commits removed, waiting out the retention before they are deleted.
#[derive(Debug, Default)]
struct Removed {
    /// Commits up to this version are read (-1: none yet).
    read_upto: i64,
    /// Path (as the log writes it) -> when it was removed (ms since the epoch).
    files: BTreeMap<String, i64>,
}

/// Deletes the files the tables' commits removed, once removed for longer than the
/// retention: VACUUM's rule for removed files, applied from the tail of each log, so its cost
/// is the commits since the last call, not the table's history; its first look at a table
/// takes the removes the table's state holds (its tombstones). A file added again after its
/// removal (a restore) is not deleted, nor any file live in the table's latest version. Nothing is committed: deleting files that no version within the retention
/// references is all VACUUM does to the table.
#[derive(Debug)]
pub struct Vacuum {
    retention: Duration,
    tables: HashMap<Table, Removed>,
}

/// What a [`Vacuum::run`] did.
#[derive(Debug, Default, Clone)]
pub struct Vacuumed {
    /// Files deleted.
    pub files: u64,
    /// Files waiting for the retention.
    pub waiting: u64,
    /// A table whose vacuum failed, and why (the other tables are vacuumed all the same).
    pub errors: Vec<String>,
}

impl Vacuum {
    /// A vacuum of files removed from now on, after `retention`.
    pub fn new(retention: Duration) -> Self {
        Vacuum {
            retention,
            tables: HashMap::new(),
        }
    }

    /// Read every table's new commits, then delete what has waited out the retention. A
    /// table that fails is reported and the others are vacuumed (one unreadable table must
    /// not let every other table's disk grow).
    pub async fn run(&mut self, layout: &Layout) -> Vacuumed {
        let mut done = Vacuumed::default();
        let cutoff = chrono::Utc::now().timestamp_millis() - self.retention.as_millis() as i64;
        for table in Table::ALL {
            match self.run_table(layout, table, cutoff).await {
                Ok((deleted, waiting)) => {
                    done.files += deleted;
                    done.waiting += waiting;
                }
                Err(e) => done.errors.push(format!("{}: {}", table.name(), e.chain())),
            }
        }
        done
    }

    /// Vacuum one table: (files deleted, files waiting).
    async fn run_table(
        &mut self,
        layout: &Layout,
        table: Table,
        cutoff: i64,
    ) -> Result<(u64, u64)> {
        let Some(t) = delta::open(layout, table).await? else {
            return Ok((0, 0));
        };
        let latest = delta::version(&t);
        let removed = self.tables.entry(table).or_insert(Removed {
            read_upto: -1,
            files: BTreeMap::new(),
        });
        if removed.read_upto < 0 || latest < removed.read_upto {
            // A first look, or the table went back (restored from a backup, or created
            // again: what its other history removed says nothing about this one): start
            // from the removes the table's state holds, so that files removed within the
            // retention before the stream started are deleted in their turn too.
            *removed = Removed {
                read_upto: latest,
                files: tombstones(&t, table).await?,
            };
        }
        read_removes(&t, table, removed, latest).await?;
        let due: Vec<(String, deltalake::Path)> = (removed.files.iter())
            .filter(|(_, at)| **at < cutoff)
            .map(|(path, _)| {
                let location =
                    deltalake::Path::from_url_path(path).map_err(|e| Error::DamagedLog {
                        table: table.name().into(),
                        what: format!("a remove action's path {path:?} is not a path ({e})"),
                    })?;
                Ok((path.clone(), location))
            })
            .collect::<Result<_>>()?;
        if due.is_empty() {
            return Ok((0, removed.files.len() as u64));
        }
        // Never a live file, whatever the commits read said: one added again in a commit
        // this vacuum did not read (cleaned up meanwhile), or spelled otherwise in its add.
        let live: std::collections::HashSet<deltalake::Path> = delta::files(&t, table, None)?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let store = t.object_store();
        let mut deleted = 0;
        for (path, location) in due {
            if !live.contains(&location) {
                match store.delete(&location).await {
                    Ok(()) => deleted += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("cannot delete {path} of {table}"),
                            std::io::Error::other(e),
                        ));
                    }
                }
            }
            removed.files.remove(&path);
        }
        Ok((deleted, removed.files.len() as u64))
    }
}

/// The files `t`'s state holds as removed (its tombstones: VACUUM's list), with when.
async fn tombstones(t: &DeltaTable, table: Table) -> Result<BTreeMap<String, i64>> {
    use futures::TryStreamExt;
    let snapshot = t.snapshot().map_err(|e| Error::delta(table.name(), e))?;
    let now = chrono::Utc::now().timestamp_millis();
    snapshot
        .all_tombstones(t.log_store().as_ref())
        .map_ok(|r| (r.path().to_string(), r.deletion_timestamp().unwrap_or(now)))
        .try_collect()
        .await
        .map_err(|e| Error::delta(table.name(), e))
}

/// Add the removes of `t`'s commits after `removed.read_upto` (up to `latest`); forget a
/// file that a later commit adds again.
async fn read_removes(
    t: &DeltaTable,
    table: Table,
    removed: &mut Removed,
    latest: i64,
) -> Result<()> {
    for v in (removed.read_upto + 1)..=latest {
        // A commit cleaned up already (the log retention passed): its removes are the
        // business of `maintain --vacuum`.
        if let Some(actions) = log::actions(t, table, v).await? {
            for action in &actions {
                if let Some(r) = action.get("remove") {
                    if let Some(path) = r.get("path").and_then(Value::as_str) {
                        let at = (r.get("deletionTimestamp").and_then(Value::as_i64))
                            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                        removed.files.insert(path.to_string(), at);
                    }
                } else if let Some(path) = action.pointer("/add/path").and_then(Value::as_str) {
                    removed.files.remove(path);
                }
            }
        }
        removed.read_upto = v;
    }
    Ok(())
}

/// Remove the commit files older than each table's log retention that a later checkpoint
/// holds (delta-rs's `cleanup_metadata`). Returns the files removed.
pub async fn clean_logs(layout: &Layout) -> Result<u64> {
    let mut cleaned = 0;
    for table in Table::ALL {
        let Some(t) = delta::open(layout, table).await? else {
            continue;
        };
        cleaned += deltalake::checkpoints::cleanup_metadata(&t, None)
            .await
            .map_err(|e| Error::delta(table.name(), e))? as u64;
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::{Action, Add, Remove};
    use std::collections::BTreeSet;

    fn add(path: &str) -> Action {
        Action::Add(Add {
            path: path.into(),
            size: 1,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            ..Default::default()
        })
    }

    fn remove(path: &str) -> Action {
        Action::Remove(Remove {
            path: path.into(),
            deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
            data_change: true,
            ..Default::default()
        })
    }

    /// Files the log removed are deleted once past the retention, and only them: not a
    /// live file, not one added again after its removal (a restore), not one removed within
    /// the retention; one removed before the vacuum first looked is, from the tombstones.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_vacuum_deletes_what_the_log_removed_past_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let table = Table::Profiles;
        let root = dir.path().join(table.path());
        delta::open_or_create(&layout, table).await.unwrap();
        for f in [
            "old.parquet",
            "a.parquet",
            "b.parquet",
            "c.parquet",
            "d.parquet",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let commit = |actions: Vec<Action>| {
            let layout = layout.clone();
            async move {
                let t = delta::open(&layout, table).await.unwrap().unwrap();
                delta::Commit::append(table)
                    .actions(actions)
                    .execute(&t)
                    .await
                    .unwrap();
            }
        };
        commit(vec![add("old.parquet")]).await;
        commit(vec![remove("old.parquet"), add("a.parquet")]).await;
        let mut now = Vacuum::new(Duration::ZERO);
        let mut later = Vacuum::new(Duration::from_secs(3_600));
        // `old` was removed before the vacuum first looked: found among the tombstones.
        assert_eq!(now.run(&layout).await.files, 1);
        later.run(&layout).await;
        commit(vec![remove("a.parquet"), add("b.parquet")]).await;
        commit(vec![remove("b.parquet"), add("c.parquet")]).await;
        commit(vec![add("b.parquet")]).await; // b restored
        commit(vec![remove("c.parquet"), add("d.parquet")]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let done = later.run(&layout).await;
        assert_eq!((done.files, done.waiting), (0, 3));
        let done = now.run(&layout).await;
        assert_eq!((done.files, done.waiting, done.errors.len()), (2, 0, 0));
        // A live file is never deleted, whatever the commits read said (a re-add in a commit
        // the vacuum did not read, cleaned up meanwhile).
        (now.tables.get_mut(&table).unwrap().files).insert("d.parquet".into(), 0);
        let done = now.run(&layout).await;
        assert_eq!((done.files, done.waiting), (0, 0));
        let left: BTreeSet<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        assert_eq!(
            left,
            BTreeSet::from(["b.parquet", "d.parquet"].map(String::from))
        );
    }

    #[test]
    fn retention_properties_are_delta_intervals() {
        let r = Retention {
            log: Duration::from_secs(2 * 86_400),
            files: Duration::from_secs(900),
        };
        let p = r.properties();
        assert_eq!(p[LOG_KEY], "interval 2 days");
        assert_eq!(p[FILES_KEY], "interval 15 minutes");
        let odd = Retention {
            log: Duration::from_secs(3_600),
            files: Duration::from_secs(61),
        };
        assert_eq!(odd.properties()[LOG_KEY], "interval 1 hour");
        assert_eq!(odd.properties()[FILES_KEY], "interval 61 seconds");
    }
}
