//! The one commit every stage makes, and what happens around it.
//!
//! A commit is *checked*: when the call fails, the log is read back for this commit's own id
//! (`pipeline.commit_id` in its `commitInfo`), because a failure after the log entry was
//! written (delta-rs reads the new version back, or a hook fails) does not mean it did not
//! land. Only a commit known not to have landed lets a caller delete the files it wrote.
//!
//! Post-commit hooks (checkpoints, expired-log cleanup) are off in every commit, for the same
//! reason: their failure would be reported as the commit's. Checkpoints are written by
//! [`checkpoint_if_due`] after a stage's commits, where a failure is only a warning; expired
//! logs are cleaned by `maintain`.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use object_store::ObjectStoreExt;
use serde_json::Value;

use super::log;
use crate::error::{Error, Result};
use crate::tables::Table;

/// Times a commit lands on top of newer compaction commits before it gives up as a conflict.
const MAX_DATA_NEUTRAL_REBASES: usize = 8;

/// Key of the commit's own id in its `commitInfo`.
pub const COMMIT_ID: &str = "pipeline.commit_id";

/// One atomic commit: the actions, the progress recorded with them (application
/// transactions), what it is (operation and metadata), and whether it may land on top of
/// commits that happened since the snapshot it was planned from.
#[must_use]
pub struct Commit {
    table: Table,
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    operation: DeltaOperation,
    metadata: HashMap<String, Value>,
    retries: usize,
    land_over: Option<LandOver>,
}

/// Decides from a newer commit's actions (raw log JSON) whether a commit that lost the race
/// to it may still land on top of it unchanged.
pub type LandOver =
    Arc<dyn Fn(Vec<Value>) -> futures::future::BoxFuture<'static, Result<bool>> + Send + Sync>;

impl Commit {
    /// A commit to `table` of the given kind.
    pub fn new(table: Table, operation: DeltaOperation) -> Self {
        Commit {
            table,
            actions: Vec::new(),
            txns: Vec::new(),
            operation,
            metadata: HashMap::new(),
            retries: 0,
            land_over: None,
        }
    }

    /// An append to `table` (no predicate, partitioned as the table is).
    pub fn append(table: Table) -> Self {
        Commit::new(table, append_operation(table))
    }

    /// Add these actions.
    pub fn actions(mut self, actions: impl IntoIterator<Item = Action>) -> Self {
        self.actions.extend(actions);
        self
    }

    /// Add these data files.
    pub fn adds(self, adds: impl IntoIterator<Item = Add>) -> Self {
        self.actions(adds.into_iter().map(Action::Add))
    }

    /// Record `version` for application `app_id` in the same commit (what was consumed).
    pub fn txn(mut self, app_id: impl Into<String>, version: i64) -> Self {
        self.txns.push(Transaction::new(app_id.into(), version));
        self
    }

    /// Add `key: value` to the commit's `commitInfo` (shown by `DESCRIBE HISTORY`).
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Besides compactions, let the commit land on top of newer commits that `check` accepts.
    pub fn land_over_if(mut self, check: LandOver) -> Self {
        self.land_over = Some(check);
        self
    }

    /// Let the commit land on top of concurrent commits (delta-rs's conflict checker decides).
    /// Only for commits whose content does not depend on what the table held, such as a plain
    /// append of a run record. Our stages decide what to write from the snapshot they read
    /// (dedup, days to replace), so by default a commit that lost a race fails as a conflict
    /// (exit 4) and nothing of it lands.
    pub fn rebase_if_no_conflict(mut self) -> Self {
        self.retries = 15;
        self
    }

    /// Commit on top of `t`'s snapshot; returns the new version.
    ///
    /// A commit that only adds files also lands on top of concurrent commits that changed no
    /// data (compaction: every action `dataChange: false`): they cannot change what it
    /// decided (ids, days), so `run --follow` can compact while ingest runs. A commit that
    /// removes files never does: the files it removes may have been rewritten.
    pub async fn execute(mut self, t: &DeltaTable) -> Result<i64> {
        let commit_id = uuid::Uuid::new_v4().to_string();
        self.metadata
            .insert(COMMIT_ID.to_string(), Value::String(commit_id.clone()));
        let only_adds = self.actions.iter().all(|a| !matches!(a, Action::Remove(_)));
        let mut t = t.clone();
        for _ in 0..MAX_DATA_NEUTRAL_REBASES {
            match self.attempt(&t, &commit_id).await {
                Err(Error::Conflict { .. })
                    if only_adds && self.only_data_neutral_since(&mut t).await? => {}
                other => return other,
            }
        }
        self.attempt(&t, &commit_id).await
    }

    /// Whether every commit after `t`'s version changed no data (or is accepted by the
    /// commit's [`LandOver`] check); `t` is then moved to the
    /// latest version.
    async fn only_data_neutral_since(&self, t: &mut DeltaTable) -> Result<bool> {
        let name = self.table.name();
        let from = super::version(t);
        let mut latest = t.clone();
        latest
            .update_incremental(None)
            .await
            .map_err(|e| Error::delta(name, e))?;
        let to = super::version(&latest);
        if to <= from {
            return Ok(false);
        }
        for v in (from + 1)..=to {
            let Some(actions) = log::actions(&latest, self.table, v).await? else {
                return Ok(false);
            };
            if actions.iter().all(log::is_data_neutral) {
                continue;
            }
            match &self.land_over {
                Some(check) if check(actions).await? => {}
                _ => return Ok(false),
            }
        }
        tracing::info!(
            table = name,
            from,
            to,
            "landing on top of newer commits that do not touch this one's decisions"
        );
        *t = latest;
        Ok(true)
    }

    async fn attempt(&self, t: &DeltaTable, commit_id: &str) -> Result<i64> {
        let name = self.table.name();
        let snapshot = t.snapshot().map_err(|e| Error::delta(name, e))?;
        let read_version = snapshot.version();
        let props = CommitProperties::default()
            .with_application_transactions(self.txns.clone())
            .with_metadata(self.metadata.clone())
            .with_max_retries(self.retries)
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));
        let result = CommitBuilder::from(props)
            .with_actions(self.actions.clone())
            .build(Some(snapshot), t.log_store(), self.operation.clone())
            .await;
        let error = match result {
            Ok(done) => return Ok(done.version() as i64),
            Err(e) => e,
        };
        if certainly_not_written(&error) {
            return Err(Error::delta(name, error));
        }
        // The call failed, but maybe after the log entry was written: look for it.
        match log::find_commit(t, self.table, read_version, commit_id).await {
            Ok(Some(v)) => {
                tracing::warn!(table = name, version = v, error = %error,
                    "the commit call reported an error, but the commit is in the log: it landed");
                Ok(v)
            }
            Ok(None) => Err(Error::delta(name, error)),
            Err(check) => Err(Error::CommitUnknown {
                table: name.to_string(),
                source: Box::new(check),
            }),
        }
    }
}

/// Errors raised before anything was written to the log.
fn certainly_not_written(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::VersionAlreadyExists(_)
                | TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
        }
    )
}

/// The operation of an append to `table`.
pub fn append_operation(table: Table) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(
            table
                .partition_columns()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        predicate: None,
    }
}

/// Write a checkpoint if `t` (reloaded to its latest version) has crossed a multiple of the
/// table's checkpoint interval since `before`. A failure is returned as a warning for the
/// stage's report, never as an error: the commits it follows have landed.
pub async fn checkpoint_if_due(t: &mut DeltaTable, table: Table, before: i64) -> Option<String> {
    let result: Result<bool> = async {
        t.update_incremental(None)
            .await
            .map_err(|e| Error::delta(table.name(), e))?;
        let now = super::version(t);
        let interval = t
            .snapshot()
            .map_err(|e| Error::delta(table.name(), e))?
            .table_config()
            .checkpoint_interval()
            .get() as i64;
        if now <= 0 || now / interval == before.max(0) / interval {
            return Ok(false);
        }
        deltalake::checkpoints::create_checkpoint(t, None)
            .await
            .map_err(|e| Error::delta(table.name(), e))?;
        Ok(true)
    }
    .await;
    match result {
        Ok(_) => None,
        Err(e) => {
            let w = format!(
                "{}: checkpoint not written ({}); readers replay more JSON until the next one",
                table.name(),
                e.chain()
            );
            tracing::warn!("{w}");
            Some(w)
        }
    }
}

/// Best effort: remove data files written by a commit that certainly did not land. Anything
/// left is unreferenced by the log and invisible to readers; `maintain --vacuum` removes it.
pub async fn discard(t: &DeltaTable, adds: &[Add]) {
    let store = t.object_store();
    for add in adds {
        let path = deltalake::Path::from(add.path.as_str());
        if let Err(e) = store.delete(&path).await {
            tracing::debug!(path = %add.path, error = %e, "could not remove an uncommitted file");
        }
    }
}
