//! Reading commit entries of a table's `_delta_log` directly: what a range of commits
//! changed (the days they touched) and what a commit says about itself (`commitInfo`).

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use serde_json::Value;

use super::keys::COMMIT_ID;
use crate::dates::{self, Day};
use crate::error::{Error, Result};
use crate::schema::PARTITION_COLUMN;
use crate::tables::Table;

/// The actions of commit `version`, or `None` when its file is gone (log retention).
pub async fn actions(t: &DeltaTable, table: Table, version: i64) -> Result<Option<Vec<Value>>> {
    let Some(bytes) = t
        .log_store()
        .read_commit_entry(version as _)
        .await
        .map_err(|e| Error::delta(table.name(), e))?
    else {
        return Ok(None);
    };
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| Error::DamagedLog {
                table: table.name().into(),
                what: format!("commit {version} is not valid JSON ({e})"),
            })
        })
        .collect::<Result<Vec<Value>>>()
        .map(Some)
}

/// A fingerprint of commit `version`: a hash of its log file, so two versions of the same
/// number in two histories of a table (a data dir restored from a backup, then written again)
/// are told apart. None when the file is gone (log retention).
pub async fn fingerprint(t: &DeltaTable, table: Table, version: i64) -> Result<Option<String>> {
    if version < 0 {
        return Ok(None);
    }
    let bytes = t
        .log_store()
        .read_commit_entry(version as _)
        .await
        .map_err(|e| Error::delta(table.name(), e))?;
    Ok(bytes.map(|b| blake3::hash(&b).to_hex()[..32].to_string()))
}

/// The oldest version of `t` that can still be read (None: the log cannot be listed, or
/// holds no commit). Versions are readable from the first checkpoint at or after which every
/// commit is still in the log, or from 0 while its commit is: log cleanup removes commits
/// older than the log retention once a later checkpoint holds them. Lists the whole log
/// folder: for messages only.
pub async fn oldest_readable(t: &DeltaTable, table: Table) -> Result<Option<i64>> {
    use futures::TryStreamExt;
    let store = t.log_store().object_store(None);
    let log = t.log_store().log_path().clone();
    let listed: Vec<_> = store.list(Some(&log)).try_collect().await.map_err(|e| {
        Error::io(
            format!("cannot list the log of {table}"),
            std::io::Error::other(e),
        )
    })?;
    let (mut commits, mut checkpoints) = (BTreeSet::new(), BTreeSet::new());
    for o in &listed {
        let Some(name) = o.location.filename() else {
            continue;
        };
        let Some(v) = name.get(..20).and_then(|d| d.parse::<i64>().ok()) else {
            continue;
        };
        if name.ends_with(".json") && name.len() == 25 {
            commits.insert(v);
        } else if name.contains(".checkpoint.") {
            checkpoints.insert(v);
        }
    }
    let Some(&latest) = commits.last() else {
        return Ok(None);
    };
    // The commits present without a gap up to the latest.
    let mut first = latest;
    while first > 0 && commits.contains(&(first - 1)) {
        first -= 1;
    }
    if first == 0 {
        return Ok(Some(0));
    }
    Ok(checkpoints.range(first - 1..).next().copied())
}

/// The table's log retention as `delta.logRetentionDuration` sets it (or Delta's default,
/// 30 days), for messages.
pub fn retention_text(t: &DeltaTable, table: Table) -> Result<String> {
    use deltalake::table::config::TablePropertiesExt;
    let d = t
        .snapshot()
        .map_err(|e| Error::delta(table.name(), e))?
        .table_config()
        .log_retention_duration();
    Ok(duration_text(d))
}

/// A duration as Delta's intervals and people write a retention, in its largest whole unit:
/// `2 days`, `1 hour`, `15 minutes`, `61 seconds` (at least a second).
pub fn duration_text(d: std::time::Duration) -> String {
    let s = d.as_secs().max(1);
    let (n, unit) = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ]
    .into_iter()
    .find(|(u, _)| s.is_multiple_of(*u))
    .map(|(u, name)| (s / u, name))
    .expect("every number of seconds is a multiple of 1");
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The `commitInfo` of a commit's actions.
pub fn commit_info(actions: &[Value]) -> Option<&Value> {
    actions.iter().find_map(|a| a.get("commitInfo"))
}

/// The latest version in the log (without loading the table state).
pub async fn latest_version(t: &DeltaTable, table: Table, from: i64) -> Result<i64> {
    t.log_store()
        .get_latest_version(from.max(0) as _)
        .await
        .map(|v| v as i64)
        .map_err(|e| Error::delta(table.name(), e))
}

/// The version after `after` whose `commitInfo` carries `commit_id`, if any.
pub async fn find_commit(
    t: &DeltaTable,
    table: Table,
    after: u64,
    commit_id: &str,
) -> Result<Option<i64>> {
    let latest = latest_version(t, table, after as i64).await?;
    for v in (after as i64 + 1)..=latest {
        let Some(actions) = actions(t, table, v).await? else {
            continue;
        };
        let id = commit_info(&actions).and_then(|c| c.get(COMMIT_ID));
        if id.and_then(Value::as_str) == Some(commit_id) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Whether a log action changes no data: a `dataChange: false` add or remove (compaction),
/// or the commit's own `commitInfo`. Anything else (data, metadata, protocol, `txn`) does.
pub fn is_data_neutral(action: &Value) -> bool {
    if action.get("commitInfo").is_some() {
        return true;
    }
    ["add", "remove"].iter().any(|k| {
        action
            .get(*k)
            .and_then(|f| f.get("dataChange"))
            .and_then(Value::as_bool)
            == Some(false)
    })
}

/// What commits `(after, upto]` changed in a table's data (compaction, `dataChange: false`,
/// changes none).
#[derive(Debug, Default)]
pub struct Changes {
    /// Days with added or removed data.
    pub days: BTreeSet<Day>,
    /// Data files added (paths as the log writes them).
    pub added: Vec<String>,
    /// Some commit removed data (a delete, a replaced day, a restore): not append-only.
    pub removed_data: bool,
    /// A later commit rewrote some of the added files without changing data (compaction):
    /// those files are no longer in the snapshot as such.
    pub rewrote_files: bool,
    /// The `pipeline.aggregate_mode` of every commit that changed data (for the aggregates
    /// table), in order.
    pub modes: Vec<Option<String>>,
}

/// The changes of commits `(after, upto]`, read from the commit files' add and remove
/// actions. `None` when a commit file is gone, or a file has no day (then only a full
/// rebuild is safe).
pub async fn changes(
    t: &DeltaTable,
    table: Table,
    after: i64,
    upto: i64,
) -> Result<Option<Changes>> {
    let mut out = Changes::default();
    let mut compacted = std::collections::HashSet::new();
    for v in (after + 1)..=upto {
        let Some(actions) = actions(t, table, v).await? else {
            return Ok(None);
        };
        let mut changed_data = false;
        for action in &actions {
            for kind in ["add", "remove"] {
                let Some(file) = action.get(kind) else {
                    continue;
                };
                // Compaction rewrites files without changing data: it touches no day.
                if file.get("dataChange").and_then(Value::as_bool) == Some(false) {
                    if let ("remove", Some(path)) = (kind, file.get("path").and_then(Value::as_str))
                    {
                        compacted.insert(path.to_string());
                    }
                    continue;
                }
                let value = file
                    .pointer(&format!("/partitionValues/{PARTITION_COLUMN}"))
                    .and_then(Value::as_str);
                let Some(s) = value else {
                    return Ok(None);
                };
                changed_data = true;
                out.days
                    .insert(dates::parse(s).ok_or_else(|| Error::DamagedLog {
                        table: table.name().into(),
                        what: format!("commit {v}: bad partition value {s:?}"),
                    })?);
                match (kind, file.get("path").and_then(Value::as_str)) {
                    ("add", Some(path)) => out.added.push(path.to_string()),
                    ("add", None) => return Ok(None),
                    _ => out.removed_data = true,
                }
            }
        }
        if changed_data {
            out.modes.push(
                commit_info(&actions)
                    .and_then(|c| c.get(super::keys::AGGREGATE_MODE))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            );
        }
    }
    out.rewrote_files = out.added.iter().any(|p| compacted.contains(p));
    Ok(Some(out))
}
