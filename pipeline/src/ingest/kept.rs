//! What a stream keeps open between its ingest runs.

use super::commit::Tables;
use super::discover;
use crate::delta;
use crate::error::Result;
use crate::layout::Layout;
use crate::tables::Table;

/// What a stream (`run --follow`) keeps between its runs. Ingest's four tables, kept open: a
/// run brings them up to date with the commits since the last one, instead of loading each
/// table from its last checkpoint again (whose size grows with the table's files). Only a run
/// that succeeded keeps them, and only while each is still the same log (see
/// [`delta::Kept`]); otherwise the next run opens them afresh. And the landing folders whose
/// files are all consumed ([`discover::ListingCache`]).
#[derive(Default)]
pub struct Kept {
    pub(super) tables: Option<(Tables, Vec<Option<delta::LogStamp>>)>,
    pub(super) listing: discover::ListingCache,
}

impl Kept {
    pub(super) async fn open(&mut self, layout: &Layout) -> Result<Tables> {
        if let Some((mut tables, stamps)) = self.tables.take()
            && stamps.iter().all(Option::is_some)
            && Self::stamps(&mut tables).await == stamps
        {
            match tables.refresh().await {
                Ok(()) => return Ok(tables),
                Err(e) => tracing::info!(error = %e.chain(), "opening the tables afresh"),
            }
        }
        Tables::open(layout).await
    }

    /// Lend the kept `customer_transactions` to the stages after ingest (`kept`), so that
    /// aggregate reads the snapshot ingest brought up to date instead of replaying the
    /// table's live files again from an older one.
    pub fn share_transactions(&self, kept: &mut delta::Kept) {
        if let Some((tables, stamps)) = &self.tables
            && let Some(Some(stamp)) = stamps.first()
        {
            kept.keep_stamped(Table::Transactions, &tables.main, *stamp);
        }
    }

    pub(super) async fn keep(&mut self, mut tables: Tables) {
        let stamps = Self::stamps(&mut tables).await;
        self.tables = Some((tables, stamps));
    }

    async fn stamps(tables: &mut Tables) -> Vec<Option<delta::LogStamp>> {
        let mut out = Vec::new();
        for t in [
            Table::Transactions,
            Table::Quarantine,
            Table::IngestFiles,
            Table::TransactionIds,
        ] {
            out.push(delta::LogStamp::of(tables.get_mut(t)).await);
        }
        out
    }
}
