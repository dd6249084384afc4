//! The one commit every stage makes, and what happens around it.
//!
//! A commit is *checked*: when the call fails, the log is read back for this commit's own id
//! (`pipeline.commit_id` in its `commitInfo`), because a failure after the log entry was
//! written (delta-rs reads the new version back, or a hook fails) does not mean it did not
//! land. Only a commit known not to have landed lets a caller delete the files it wrote.
//!
//! An object store can apply a commit and lose the answer (a proxy or load balancer closing the
//! connection, a store restarting right after the write). object_store then retries the
//! conditional PUT, the retry gets `412 Precondition Failed`, and delta-rs would take that for
//! another writer's commit (`VersionAlreadyExists`): it would retry at the next version (a
//! second copy of the commit) or fail, and the caller would delete the files of a commit that
//! is in the log. So every commit goes through [`OwnCommits`], a log store that reads back a
//! version it was refused and, when that version is this commit (its id), reports it written.
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
    pub async fn execute(self, t: &DeltaTable) -> Result<i64> {
        self.execute_into(&mut t.clone()).await
    }

    /// [`Self::execute`], and `t` is then at the new version: delta-rs brings the snapshot
    /// up to the commit it made (replaying the live files once: deltalake-core 1.1
    /// `kernel/transaction/mod.rs`, `PostCommit::run_post_commit_hook` calls
    /// `snapshot.update(log_store, Some(version))` and returns it as
    /// `FinalizedCommit::snapshot`), and that snapshot is kept
    /// rather than thrown away and built again by the caller's next update. When the commit
    /// fails, or landed but its answer was lost, `t` is as it was.
    pub async fn execute_into(mut self, t: &mut DeltaTable) -> Result<i64> {
        let commit_id = uuid::Uuid::new_v4().to_string();
        self.metadata.insert(
            super::keys::COMMIT_ID.to_string(),
            Value::String(commit_id.clone()),
        );
        let only_adds = self.actions.iter().all(|a| !matches!(a, Action::Remove(_)));
        let mut base = t.clone();
        for attempt in 0..=MAX_DATA_NEUTRAL_REBASES {
            match self.attempt(&base, &commit_id).await {
                Err(Error::Conflict { .. })
                    if attempt < MAX_DATA_NEUTRAL_REBASES
                        && only_adds
                        && self.only_data_neutral_since(&mut base).await? => {}
                Ok((version, state)) => {
                    if let Some(state) = state {
                        t.state = Some(state);
                    }
                    return Ok(version);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
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

    /// One try: the new version, and the table's state at it when delta-rs built one.
    async fn attempt(
        &self,
        t: &DeltaTable,
        commit_id: &str,
    ) -> Result<(i64, Option<deltalake::table::state::DeltaTableState>)> {
        let name = self.table.name();
        let snapshot = t.snapshot().map_err(|e| Error::delta(name, e))?;
        let read_version = snapshot.version();
        let props = CommitProperties::default()
            .with_application_transactions(self.txns.clone())
            .with_metadata(self.metadata.clone())
            .with_max_retries(self.retries)
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));
        let store = OwnCommits::wrap(t.log_store(), commit_id);
        let result = CommitBuilder::from(props)
            .with_actions(self.actions.clone())
            .build(Some(snapshot), store, self.operation.clone())
            .await;
        let error = match result {
            Ok(done) => return Ok((done.version() as i64, Some(done.snapshot))),
            Err(e) => e,
        };
        // Whatever the error, the commit may be in the log (an answer lost after the store
        // applied it, a failure reading the new version back): look for it before anyone
        // deletes a file.
        match log::find_commit(t, self.table, read_version, commit_id).await {
            Ok(Some(v)) => {
                tracing::warn!(table = name, version = v, error = %error,
                    "the commit call reported an error, but the commit is in the log: it landed");
                Ok((v, None))
            }
            // Not in the log after a failed request to the store: it may still be applied (a
            // timeout, a dropped connection), so its files are kept.
            Ok(None) if store_failed(&error) => Err(Error::CommitUnknown {
                table: name.to_string(),
                source: Box::new(Error::delta(name, error)),
            }),
            Ok(None) => Err(Error::delta(name, error)),
            Err(check) => Err(Error::CommitUnknown {
                table: name.to_string(),
                source: Box::new(check),
            }),
        }
    }
}

/// A request to the store failed: it may have been applied anyway. (Other errors, such as
/// another writer's commit holding the version, or a conflict, are decided before or without
/// this commit's write; with its id not in the log, it did not land.)
fn store_failed(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::Transaction {
                source: TransactionError::ObjectStore { .. }
                    | TransactionError::LogStoreError { .. }
            }
    )
}

/// A log store that recognises its own commit in a version it was refused.
///
/// A conditional create refused with "already exists" after a retry (object_store retries a
/// `PUT` whose connection failed: `HttpErrorKind::Request`, or an answer of 5xx) may be this
/// very commit, applied by the first try whose answer was lost. The version is read back and
/// compared by the commit's id (`pipeline.commit_id`, unique per commit); if it is ours, the
/// write succeeded. Without this, delta-rs would write the same actions again at the next
/// version, or give up, and the caller would delete the files of a commit that landed.
#[derive(Debug)]
struct OwnCommits {
    inner: deltalake::logstore::LogStoreRef,
    commit_id: String,
}

impl OwnCommits {
    fn wrap(
        inner: deltalake::logstore::LogStoreRef,
        commit_id: &str,
    ) -> deltalake::logstore::LogStoreRef {
        Arc::new(OwnCommits {
            inner,
            commit_id: commit_id.to_string(),
        })
    }

    /// Whether version `v` in the log is this commit.
    async fn is_ours(&self, v: deltalake::kernel::Version) -> bool {
        // The id is a UUID: its text appears in no other commit.
        matches!(self.inner.read_commit_entry(v).await,
            Ok(Some(bytes)) if bytes.windows(self.commit_id.len()).any(|w| w == self.commit_id.as_bytes()))
    }
}

#[async_trait::async_trait]
impl deltalake::logstore::LogStore for OwnCommits {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> deltalake::DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(
        &self,
        version: deltalake::kernel::Version,
    ) -> deltalake::DeltaResult<Option<bytes::Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: deltalake::kernel::Version,
        commit_or_bytes: deltalake::logstore::CommitOrBytes,
        operation_id: uuid::Uuid,
    ) -> std::result::Result<(), TransactionError> {
        match self
            .inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if self.is_ours(version).await => {
                tracing::warn!(version, error = %e,
                    "the store refused or failed a commit that it had applied (its answer was lost): \
                     the version is this commit");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn abort_commit_entry(
        &self,
        version: deltalake::kernel::Version,
        commit_or_bytes: deltalake::logstore::CommitOrBytes,
        operation_id: uuid::Uuid,
    ) -> std::result::Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(
        &self,
        start_version: deltalake::kernel::Version,
    ) -> deltalake::DeltaResult<deltalake::kernel::Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<uuid::Uuid>) -> Arc<dyn deltalake::ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(
        &self,
        operation_id: Option<uuid::Uuid>,
    ) -> Arc<dyn deltalake::ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn engine(&self, operation_id: Option<uuid::Uuid>) -> Arc<dyn delta_kernel::Engine> {
        self.inner.engine(operation_id)
    }

    fn to_uri(&self, location: &deltalake::Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &url::Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &deltalake::Path {
        self.inner.log_path()
    }

    fn transaction_url(
        &self,
        operation_id: Option<uuid::Uuid>,
    ) -> deltalake::DeltaResult<url::Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> deltalake::DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &deltalake::logstore::LogStoreConfig {
        self.inner.config()
    }

    fn object_store_url(&self) -> deltalake::datafusion::execution::object_store::ObjectStoreUrl {
        self.inner.object_store_url()
    }
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

/// Execute `commit` (whose new files are `adds`); when it certainly did not land, delete
/// those files (an unknown outcome keeps them: the commit may have landed).
pub async fn commit_or_discard(commit: Commit, t: &DeltaTable, adds: &[Add]) -> Result<i64> {
    match commit.execute(t).await {
        Ok(v) => Ok(v),
        Err(e) => {
            if !matches!(e, Error::CommitUnknown { .. }) {
                discard(t, adds).await;
            }
            Err(e)
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
