//! DataFusion over our Delta tables: one session recipe and one way to register a table,
//! optionally restricted to some days, for every stage that queries (aggregate, profiles,
//! sql).

use std::collections::BTreeSet;

use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::datafusion::scalar::ScalarValue;

use crate::dates::Day;
use crate::error::{Error, Result};
use crate::schema::PARTITION_COLUMN;

/// delta-rs's session (its planner knows Delta scans and writes) with a memory pool of
/// `memory` bytes: sorts and groups past it spill to disk.
pub fn session(memory: usize) -> SessionContext {
    SessionContext::new_with_state(
        deltalake::delta_datafusion::create_session_state_with_spill_config(Some(memory), None),
    )
}

/// Register `t` as `name`; with `days`, only those days (a filter on the partition column,
/// pruned at planning), the whole table then being `{name}_all`.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    t: &DeltaTable,
    days: Option<&BTreeSet<Day>>,
) -> Result<()> {
    t.update_datafusion_session(&ctx.state())
        .map_err(|e| Error::delta(name, e))?;
    let provider = t.table_provider().await?;
    let Some(days) = days else {
        ctx.register_table(name, provider)?;
        return Ok(());
    };
    let all = format!("{name}_all");
    ctx.register_table(all.as_str(), provider)?;
    let list = days
        .iter()
        .map(|d| lit(ScalarValue::Date32(Some(*d))))
        .collect();
    let view = ctx
        .table(all.as_str())
        .await?
        .filter(col(PARTITION_COLUMN).in_list(list, false))?
        .into_view();
    ctx.register_table(name, view)?;
    Ok(())
}
