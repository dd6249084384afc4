//! A table derived from another, the way `aggregate` (from `customer_transactions`) and
//! `profiles` (from the aggregates) are: the target records the source's identity and the
//! source version it reflects as an application transaction (`txn`) in the same commit as
//! its rows, so a run knows exactly what it consumed and a rerun after a kill cannot
//! consume it twice. The Delta protocol's `txn` action ("Transaction Identifiers") is meant
//! for this: "the version of the application-specific transaction ... committed atomically
//! with the data".
//!
//! [`Derivation::open`] opens both tables and reads what was consumed;
//! [`Derivation::commit_replacing`] replaces some (or all) of the target's files with new
//! ones and records the source version, in one commit, deleting its files again when the
//! commit surely did not land; [`Derivation::checkpoint`] writes a checkpoint when due.

use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add, LogicalFileView};
use deltalake::protocol::DeltaOperation;

use super::{Commit, Kept, keys};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tables::Table;

/// Which derivation: the tables, the stage that makes the source, and the app id.
#[derive(Clone, Copy)]
pub struct Spec {
    /// The table read.
    pub source: Table,
    /// The stage that writes it (named in the error when it does not exist yet).
    pub source_made_by: &'static str,
    /// The table written.
    pub target: Table,
    /// The stage that writes it (its commits' `pipeline.stage`).
    pub stage: &'static str,
    /// The app id under which the target records the source version, from the source's id.
    pub app: fn(&str) -> String,
}

/// Both tables open, and what the target reflects of the source.
pub struct Derivation {
    /// Which derivation.
    pub spec: Spec,
    /// The source, at its latest version.
    pub source: DeltaTable,
    /// The target (created when missing).
    pub target: DeltaTable,
    /// The source's identity (a recreated source is another table).
    pub source_id: String,
    /// The source version the target reflects (for this identity); None: none yet.
    pub previous: Option<i64>,
    /// The target was made with narrower sums by an earlier version: the `metaData` action
    /// that widens them, to be committed with a full recompute.
    pub widen: Option<Action>,
}

impl Derivation {
    /// Open both tables (from `kept` when it holds them up to date) and read the source
    /// version the target reflects.
    pub async fn open(layout: &Layout, spec: Spec, kept: &mut Kept) -> Result<Self> {
        let source = kept
            .take_or(
                spec.source,
                super::open_required(layout, spec.source, spec.source_made_by),
            )
            .await?;
        let target = kept
            .take_or(spec.target, super::open_or_create(layout, spec.target))
            .await?;
        let source_id = super::table_id(&source, spec.source)?;
        let previous = super::txn_version(&target, spec.target, &(spec.app)(&source_id)).await?;
        let widen = super::widening(&target, spec.target)?;
        Ok(Derivation {
            spec,
            source,
            target,
            source_id,
            previous,
            widen,
        })
    }

    /// The app id under which the target records the source version.
    pub fn app_id(&self) -> String {
        (self.spec.app)(&self.source_id)
    }

    /// The source's latest version.
    pub fn latest(&self) -> i64 {
        super::version(&self.source)
    }

    /// Record source `version` as reflected without changing any row.
    pub async fn record_version(&self, version: i64) -> Result<i64> {
        let operation = DeltaOperation::Write {
            mode: deltalake::protocol::SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        Commit::new(self.spec.target, operation)
            .txn(self.app_id(), version)
            .meta(keys::STAGE, self.spec.stage)
            .meta(keys::SOURCE_VERSION, version)
            .execute(&self.target)
            .await
    }

    /// Commit `adds` in place of the target's files that `replaced` selects, with `actions`
    /// (the widening, when due) and source `version` recorded, in one commit; `info` is
    /// added to its `commitInfo`. When the commit surely did not land, the new files are
    /// deleted again (not when its outcome is unknown: it may have landed).
    pub async fn commit_replacing(
        &self,
        operation: DeltaOperation,
        adds: Vec<Add>,
        replaced: impl Fn(&LogicalFileView) -> bool,
        version: i64,
        info: (&'static str, &str),
    ) -> Result<i64> {
        let name = self.spec.target.name();
        let snapshot = self.target.snapshot().map_err(|e| Error::delta(name, e))?;
        let removes: Vec<Action> = (snapshot.log_data().iter())
            .filter(|f| replaced(f))
            .map(|f| Action::Remove(f.remove_action(true)))
            .collect();
        let commit = Commit::new(self.spec.target, operation)
            .actions(self.widen.clone())
            .actions(removes)
            .adds(adds.clone())
            .txn(self.app_id(), version)
            .meta(keys::STAGE, self.spec.stage)
            .meta(info.0, info.1.to_string())
            .meta(keys::SOURCE_VERSION, version)
            .meta(keys::SOURCE_TABLE_ID, self.source_id.clone());
        match commit.execute(&self.target).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(e, Error::CommitUnknown { .. }) {
                    super::commit::discard(&self.target, &adds).await;
                }
                Err(e)
            }
        }
    }

    /// After a commit of `version`: a checkpoint of the target when one is due (a warning
    /// when it could not be written: the table is fine without).
    pub async fn checkpoint(&mut self, version: i64) -> Option<String> {
        super::commit::checkpoint_if_due(&mut self.target, self.spec.target, version - 1).await
    }
}
