//! Every Delta table of the pipeline, once: its name, where it lives under the data dir, its
//! schema and its partition columns (`docs/CONTRACT.md`, "Tables and where they live").

use deltalake::arrow::datatypes::SchemaRef;

use crate::schema;

/// A Delta table of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `customer_transactions`: the clean transactions, one row per `transaction_id`.
    Transactions,
    /// `customer_transactions_quarantine`: rows kept out of it, with the reason.
    Quarantine,
    /// `customer_daily_aggregates`: per customer and day totals.
    Aggregates,
    /// The landing files ingest consumed (with their size, time and content hash).
    IngestFiles,
    /// Every `transaction_id` of `customer_transactions`, sorted within each file: the index
    /// that makes ids unique across the whole table.
    TransactionIds,
    /// One row per `pipeline run`.
    RunHistory,
    /// `customer_profiles`: one row per customer, from the aggregates.
    Profiles,
}

impl Table {
    /// Every table, in the order `maintain` visits them.
    pub const ALL: [Table; 7] = [
        Table::Transactions,
        Table::Quarantine,
        Table::Aggregates,
        Table::Profiles,
        Table::IngestFiles,
        Table::TransactionIds,
        Table::RunHistory,
    ];

    /// The table's name (in messages, `DESCRIBE HISTORY`, and the `sql` catalog).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Transactions => "customer_transactions",
            Table::Quarantine => "customer_transactions_quarantine",
            Table::Aggregates => "customer_daily_aggregates",
            Table::IngestFiles => "ingest_files",
            Table::TransactionIds => "transaction_ids",
            Table::RunHistory => "run_history",
            Table::Profiles => "customer_profiles",
        }
    }

    /// The table of this name (as [`Table::name`] spells it).
    pub fn by_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Where the table lives, relative to the data dir (`/`-separated).
    pub const fn path(self) -> &'static str {
        match self {
            Table::Transactions => "customer_transactions",
            Table::Quarantine => "_quarantine/customer_transactions",
            Table::Aggregates => "customer_daily_aggregates",
            Table::IngestFiles => "_pipeline/ingest_files",
            Table::TransactionIds => "_pipeline/transaction_ids",
            Table::RunHistory => "_pipeline/run_history",
            Table::Profiles => "customer_profiles",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Transactions => schema::TRANSACTIONS.clone(),
            Table::Quarantine => schema::QUARANTINE.clone(),
            Table::Aggregates => schema::AGGREGATES.clone(),
            Table::IngestFiles => schema::INGEST_FILES.clone(),
            Table::TransactionIds => schema::TRANSACTION_IDS.clone(),
            Table::RunHistory => schema::RUN_HISTORY.clone(),
            Table::Profiles => schema::PROFILES.clone(),
        }
    }

    /// Partition columns (every data table is partitioned by day).
    pub const fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Transactions | Table::Quarantine | Table::Aggregates => {
                &[schema::PARTITION_COLUMN]
            }
            Table::IngestFiles | Table::TransactionIds | Table::RunHistory | Table::Profiles => &[],
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
