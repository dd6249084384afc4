//! Small helpers over delta-rs: open-or-create with our schema, application-transaction
//! look-ups, and the one commit shape every stage uses (data + consumed-input markers).

use std::collections::HashMap;

use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::error::{Error, Result};

/// Open the table at `uri`, creating it (empty, with `schema` and `partition_by`) if absent.
/// An existing table whose columns differ from `schema` is an error, not silently used.
pub async fn open_or_create(
    uri: Url,
    name: &str,
    schema: &Schema,
    partition_by: &[&str],
) -> Result<DeltaTable> {
    let table = DeltaTable::try_from_url(uri)
        .await
        .map_err(|e| Error::delta(name, e))?;
    if table.version().is_some() {
        check_schema(&table, name, schema)?;
        return Ok(table);
    }
    let kernel: StructType = schema.try_into_kernel().map_err(|e| {
        Error::delta(
            name,
            DeltaTableError::Generic(format!("schema conversion: {e}")),
        )
    })?;
    let created = table
        .clone()
        .create()
        .with_table_name(name)
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partition_by.iter().map(|s| s.to_string()))
        .with_save_mode(SaveMode::Ignore)
        // Losing a creation race must fail (and use the winner's table below), not be retried
        // as a second metadata commit that would move the version under the winner's feet.
        .with_commit_properties(CommitProperties::default().with_max_retries(0))
        .await;
    match created {
        Ok(t) => Ok(t),
        Err(e) => {
            // Another process created it at the same moment (its version 0 won): use theirs.
            let mut again = table;
            if again.load().await.is_ok() && again.version().is_some() {
                check_schema(&again, name, schema)?;
                Ok(again)
            } else {
                Err(Error::delta(name, e))
            }
        }
    }
}

fn check_schema(table: &DeltaTable, name: &str, expected: &Schema) -> Result<()> {
    let actual = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .snapshot()
        .arrow_schema();
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = actual.fields().len() == expected.fields().len()
        && actual
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
    if same {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "Delta table {name} exists with columns [{}] but this version of the pipeline expects [{}]; \
             point --data-dir elsewhere or migrate the table",
            describe(&actual),
            describe(expected)
        )))
    }
}

/// The version recorded for application id `app_id` in the table, if any.
pub async fn txn_version(table: &DeltaTable, name: &str, app_id: &str) -> Result<Option<i64>> {
    table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|e| Error::delta(name, e))
}

/// Commit `actions` together with `txns` (what was consumed) in one atomic Delta commit.
/// Commit-info metadata carries the stage's own summary for `DESCRIBE HISTORY`.
pub async fn commit(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    operation: DeltaOperation,
    metadata: HashMap<String, serde_json::Value>,
) -> Result<i64> {
    // No automatic rebase onto a concurrent commit: our stages decide what to write from the
    // snapshot they read (dedup against the table, days to replace), so a commit that lost a
    // race fails as a conflict (exit 4) and is rerun, instead of landing on a table it never
    // looked at. The run history, a plain append, retries (`commit_append`).
    commit_with_retries(table, name, actions, txns, operation, metadata, 0).await
}

/// An append that may be rebased onto concurrent commits (nothing in it depends on them).
pub async fn commit_append(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
) -> Result<i64> {
    commit_with_retries(table, name, actions, vec![], operation, HashMap::new(), 15).await
}

async fn commit_with_retries(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    operation: DeltaOperation,
    metadata: HashMap<String, serde_json::Value>,
    retries: usize,
) -> Result<i64> {
    let props = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata(metadata)
        .with_max_retries(retries);
    let snapshot = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let done = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(|e| Error::delta(name, e))?;
    Ok(done.version() as i64)
}

pub fn append_operation(partition_by: &[&str]) -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(partition_by.iter().map(|s| s.to_string()).collect()),
        predicate: None,
    }
}

pub fn adds(adds: Vec<Add>) -> Vec<Action> {
    adds.into_iter().map(Action::Add).collect()
}

/// Build a batch of `target`'s schema from `columns` (same order), casting where the types
/// differ and checking `target`'s nullability: the exact shape a delta-rs writer expects.
pub fn conform(columns: Vec<ArrayRef>, target: &SchemaRef) -> Result<RecordBatch> {
    let cols = columns
        .into_iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                cast(&c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(target.clone(), cols)?)
}
