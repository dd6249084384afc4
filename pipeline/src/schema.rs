//! Arrow schemas of every table: the single source of truth (see `docs/CONTRACT.md`).

use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;
use deltalake::parquet::basic::{Compression, Encoding};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;

/// Precision of a raw transaction amount: `Decimal128(12, 2)`.
pub const AMOUNT_PRECISION: u8 = 12;
/// Scale of a raw transaction amount (cents).
pub const AMOUNT_SCALE: i8 = 2;

/// Categories the generator produces; any other value is quarantined.
pub const CATEGORIES: [&str; 10] = [
    "grocery",
    "restaurants",
    "fuel",
    "retail",
    "travel",
    "entertainment",
    "health",
    "utilities",
    "electronics",
    "services",
];
/// Channels a transaction comes through.
pub const CHANNELS: [&str; 3] = ["online", "in_store", "mobile"];
/// Statuses of a transaction; only `approved` ones count towards totals.
pub const STATUSES: [&str; 2] = ["approved", "declined"];

/// Column names, so a typo is a compile error rather than a runtime one.
pub mod col {
    #![allow(missing_docs)]
    pub const TRANSACTION_ID: &str = "transaction_id";
    pub const CUSTOMER_ID: &str = "customer_id";
    pub const MERCHANT_ID: &str = "merchant_id";
    pub const TRANSACTION_TS: &str = "transaction_ts";
    pub const AMOUNT: &str = "amount";
    pub const CATEGORY: &str = "category";
    pub const CHANNEL: &str = "channel";
    pub const STATUS: &str = "status";
    pub const TRANSACTION_DATE: &str = "transaction_date";
    pub const SOURCE_FILE: &str = "source_file";
    pub const REJECTION_REASON: &str = "rejection_reason";
    pub const MESSAGE_KEY: &str = "message_key";
    pub const MESSAGE_TIMESTAMP: &str = "message_timestamp";
}

/// `Timestamp(µs, "UTC")`: every instant in every table.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `Decimal128(12, 2)`: a transaction amount.
pub fn amount_type() -> DataType {
    DataType::Decimal128(AMOUNT_PRECISION, AMOUNT_SCALE)
}

/// Precision of a sum of amounts (`total_amount`, the profiles' totals): the widest
/// `Decimal128`. A sum of at most `i64::MAX` rows of at most 9,999,999,999.99 is below 10^29,
/// so no sum of valid rows can overflow it: a customer-day of a million maximal rows
/// (1.0e16) overflowed the earlier Decimal(18, 2) and stopped every aggregate run.
pub const SUM_PRECISION: u8 = 38;

/// `Decimal128(38, 2)`: a sum of amounts.
pub fn sum_type() -> DataType {
    DataType::Decimal128(SUM_PRECISION, AMOUNT_SCALE)
}

/// The raw landing schema, in column order. `not_null` is the contract's nullability;
/// quarantine relaxes it so rejected rows keep whatever they had.
fn raw_fields(not_null: bool) -> Vec<Field> {
    let req = !not_null;
    vec![
        Field::new(col::TRANSACTION_ID, DataType::Utf8, req),
        Field::new(col::CUSTOMER_ID, DataType::Int64, req),
        Field::new(col::MERCHANT_ID, DataType::Int64, req),
        Field::new(col::TRANSACTION_TS, timestamp_type(), req),
        Field::new(col::AMOUNT, amount_type(), req),
        Field::new(col::CATEGORY, DataType::Utf8, true),
        Field::new(col::CHANNEL, DataType::Utf8, true),
        Field::new(col::STATUS, DataType::Utf8, true),
    ]
}

/// The lineage of a row read from a Kafka message: the message's key (bytes, as Kafka keeps
/// them; Spark's Kafka source exposes `key` as binary too) and its timestamp (the record's, as
/// the broker returned it). Null for rows from landing files, and in tables written before the
/// Kafka source (added to them as nullable columns by a schema update).
fn lineage_fields() -> Vec<Field> {
    vec![
        Field::new(col::MESSAGE_KEY, DataType::Binary, true),
        Field::new(col::MESSAGE_TIMESTAMP, timestamp_type(), true),
    ]
}

/// Builders of the raw columns, in the raw schema's order: rows made by the generator, or read
/// from Kafka messages.
#[allow(missing_docs)] // one per raw column, named as in `col`
pub struct RawBuilders {
    pub id: StringBuilder,
    pub customer: Int64Builder,
    pub merchant: Int64Builder,
    pub ts: TimestampMicrosecondBuilder,
    pub amount: Decimal128Builder,
    pub category: StringBuilder,
    pub channel: StringBuilder,
    pub status: StringBuilder,
}

impl RawBuilders {
    /// Builders with room for `n` rows.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            id: StringBuilder::with_capacity(n, n * 36),
            customer: Int64Builder::with_capacity(n),
            merchant: Int64Builder::with_capacity(n),
            ts: TimestampMicrosecondBuilder::with_capacity(n),
            amount: Decimal128Builder::with_capacity(n),
            category: StringBuilder::with_capacity(n, n * 8),
            channel: StringBuilder::with_capacity(n, n * 7),
            status: StringBuilder::with_capacity(n, n * 8),
        }
    }

    /// The rows appended, as a batch of `schema` (`RAW` or `RAW_LENIENT`); the builders are
    /// empty again.
    pub fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let amount = self
            .amount
            .finish()
            .with_precision_and_scale(AMOUNT_PRECISION, AMOUNT_SCALE)?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.customer.finish()),
            Arc::new(self.merchant.finish()),
            Arc::new(self.ts.finish().with_timezone("UTC")),
            Arc::new(amount),
            Arc::new(self.category.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.status.finish()),
        ];
        RecordBatch::try_new(schema.clone(), cols)
    }
}

/// Raw transactions as the generator writes them and ingest expects them.
pub static RAW: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(Schema::new(raw_fields(true))));

/// What ingest reads from a raw file: the raw columns, all nullable, because a producer other
/// than our generator may write nulls, and a null in a required column is a rule violation
/// (quarantined), not a broken file.
pub static RAW_LENIENT: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(raw_fields(false))));

/// What ingest reads from a source, row by row: the `RAW_LENIENT` columns, then the lineage
/// columns (null for a landing file without them).
pub static INPUT: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = raw_fields(false);
    fields.extend(lineage_fields());
    Arc::new(Schema::new(fields))
});

/// `customer_transactions`: the raw columns, the partition date, the source file and the
/// message lineage.
pub static TRANSACTIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = raw_fields(true);
    // category/channel/status are validated against fixed sets, so never null here.
    for f in fields.iter_mut().skip(5) {
        *f = f.clone().with_nullable(false);
    }
    fields.push(Field::new(col::TRANSACTION_DATE, DataType::Date32, false));
    fields.push(Field::new(col::SOURCE_FILE, DataType::Utf8, false));
    fields.extend(lineage_fields());
    Arc::new(Schema::new(fields))
});

/// `customer_transactions_quarantine`: every raw column (nullable), the reason, the source
/// file, the date (null when the timestamp is) and the message lineage.
pub static QUARANTINE: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = raw_fields(false);
    fields.push(Field::new(col::REJECTION_REASON, DataType::Utf8, false));
    fields.push(Field::new(col::SOURCE_FILE, DataType::Utf8, false));
    fields.push(Field::new(col::TRANSACTION_DATE, DataType::Date32, true));
    fields.extend(lineage_fields());
    Arc::new(Schema::new(fields))
});

/// `customer_daily_aggregates`: one row per (customer, day) seen.
pub static AGGREGATES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(col::CUSTOMER_ID, DataType::Int64, false),
        Field::new(col::TRANSACTION_DATE, DataType::Date32, false),
        Field::new("total_amount", sum_type(), false),
        Field::new("transaction_count", DataType::Int64, false),
        Field::new("declined_count", DataType::Int64, false),
        Field::new("min_amount", amount_type(), true),
        Field::new("max_amount", amount_type(), true),
    ]))
});

/// `customer_profiles`: one row per customer with any aggregate row (see `profiles`).
/// Money is exact decimal, and so is the model's state (`ewm_daily_spend`, currency units
/// per day, 14 decimals); `decline_rate` is floating point; `spend_forecast_30d` is an
/// estimate rounded to the cent.
pub static PROFILES: LazyLock<SchemaRef> = LazyLock::new(|| {
    let money = sum_type;
    Arc::new(Schema::new(vec![
        Field::new(col::CUSTOMER_ID, DataType::Int64, false),
        Field::new("as_of_day", DataType::Date32, false),
        Field::new("lifetime_total", money(), false),
        Field::new("lifetime_count", DataType::Int64, false),
        Field::new("declined_count", DataType::Int64, false),
        Field::new("decline_rate", DataType::Float64, false),
        Field::new("first_active_day", DataType::Date32, false),
        Field::new("last_active_day", DataType::Date32, false),
        Field::new("active_days", DataType::Int64, false),
        Field::new("average_ticket", money(), true),
        Field::new("total_last_7d", money(), false),
        Field::new("total_last_30d", money(), false),
        Field::new("ewm_daily_spend", DataType::Decimal128(38, 14), false),
        Field::new("spend_forecast_30d", money(), false),
    ]))
});

/// `ingest_files`: one row per landing file ingest consumed. `modified` and `content_hash`
/// (BLAKE3, hex) identify the content, so a file changed after it was ingested is noticed.
/// `set_aside` is null for an ingested file, and says what is wrong with one that was set
/// aside as unusable (`--on-bad-file skip`); added after the first release, as a nullable
/// column (tables created before get it by a schema update).
pub static INGEST_FILES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("modified", timestamp_type(), true),
        Field::new("content_hash", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("run_seq", DataType::Int64, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("ingested_at", timestamp_type(), false),
        Field::new("set_aside", DataType::Utf8, true),
    ]))
});

/// `transaction_ids`: every id of `customer_transactions` as two 64-bit halves (high, low),
/// each with its sign bit flipped so that signed order is the UUID's numeric order; sorted
/// within each file.
pub static TRANSACTION_IDS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id_hi", DataType::Int64, false),
        Field::new("id_lo", DataType::Int64, false),
    ]))
});

/// `run_history`: one row per `pipeline run`, with its whole report as JSON.
pub static RUN_HISTORY: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("ended_at", timestamp_type(), false),
        Field::new("stages", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("report_json", DataType::Utf8, false),
    ]))
});

/// Parquet settings for `customer_profiles`: no dictionaries (every column but `as_of_day`
/// is nearly unique per customer; building and then dropping a dictionary per column page
/// took 12% of an incremental run), Snappy.
pub fn profile_writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .build()
}

/// Parquet settings for transaction data (raw files and the Delta tables). Measured, not
/// guessed: dictionary encoding only pays on the small-domain string columns (elsewhere the
/// writer hashes every value and then falls back), and the random UUID text of
/// `transaction_id` does not compress, so Snappy there only costs time. The integer columns
/// (ids, timestamps, amounts in cents) are DELTA_BINARY_PACKED without compression: at 30M
/// rows ingest took 10% less CPU than with plain + Snappy and the table was 11% smaller.
/// `transaction_id` has no min/max statistics: every file's random ids span the whole id
/// range, so they never let a reader skip a file, and comparing 36-byte strings for them
/// took about 5% of ingest's CPU (10M rows, 3 runs each way).
pub fn writer_properties(max_row_group_rows: Option<usize>) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_column_compression(
            ColumnPath::from(col::TRANSACTION_ID),
            Compression::UNCOMPRESSED,
        )
        .set_column_statistics_enabled(
            ColumnPath::from(col::TRANSACTION_ID),
            EnabledStatistics::None,
        )
        // Nor `message_key`: delta-rs keeps no statistics of a binary column (it logged a
        // warning per file for the Parquet ones, delta-rs 1.1 `writer/stats.rs`).
        .set_column_statistics_enabled(ColumnPath::from(col::MESSAGE_KEY), EnabledStatistics::None);
    for c in [
        col::CATEGORY,
        col::CHANNEL,
        col::STATUS,
        col::SOURCE_FILE,
        col::REJECTION_REASON,
    ] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    for c in [
        col::CUSTOMER_ID,
        col::MERCHANT_ID,
        col::TRANSACTION_TS,
        col::AMOUNT,
    ] {
        b = b
            .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED)
            .set_column_compression(ColumnPath::from(c), Compression::UNCOMPRESSED);
    }
    if max_row_group_rows.is_some() {
        b = b.set_max_row_group_row_count(max_row_group_rows);
    }
    b.build()
}

/// Types we accept for a raw column and convert losslessly to the contract's type.
pub fn compatible(got: &DataType, want: &DataType) -> bool {
    use DataType::*;
    match (got, want) {
        (g, w) if g == w => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8) => true,
        (Dictionary(_, v), Utf8) => matches!(v.as_ref(), Utf8 | LargeUtf8 | Utf8View),
        (Binary | LargeBinary | BinaryView | Utf8 | LargeUtf8 | Utf8View, Binary) => true,
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Int64) => true,
        // Any unit, as long as it is an instant (has a time zone); a naive timestamp is ambiguous.
        (Timestamp(_, Some(_)), Timestamp(_, Some(_))) => true,
        (Decimal128(p, s) | Decimal256(p, s), Decimal128(wp, ws)) => {
            *s >= 0 && *s <= *ws && (*p as i16 - *s as i16) <= (*wp as i16 - *ws as i16)
        }
        _ => false,
    }
}

/// `batch`'s columns of `target`, by name, cast to `target`'s types (compatibility checked
/// before, see [`compatible`]); a column `batch` lacks is null.
pub fn by_name(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let cols = target
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast(c, f.data_type()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.clone(), cols)
}

/// Every Delta table of the pipeline is partitioned by day.
pub const PARTITION_COLUMN: &str = col::TRANSACTION_DATE;

/// The schema without the given partition column: what a data file of the table holds.
pub fn without_column(schema: &Schema, name: &str) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != name)
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_extend_the_raw_schema_in_order() {
        let raw: Vec<_> = RAW.fields().iter().map(|f| f.name().clone()).collect();
        let tx: Vec<_> = TRANSACTIONS
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let q: Vec<_> = QUARANTINE
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(&tx[..raw.len()], &raw[..]);
        assert_eq!(&q[..raw.len()], &raw[..]);
        assert_eq!(
            tx[raw.len()..],
            [
                "transaction_date",
                "source_file",
                "message_key",
                "message_timestamp"
            ]
        );
        assert_eq!(
            q[raw.len()..],
            [
                "rejection_reason",
                "source_file",
                "transaction_date",
                "message_key",
                "message_timestamp"
            ]
        );
        assert!(
            QUARANTINE
                .fields()
                .iter()
                .take(raw.len())
                .all(|f| f.is_nullable())
        );
        // Every column of a valid row has a value, but its Kafka lineage: added last and
        // nullable, as a schema update of an older table can only add nullable columns.
        let n = TRANSACTIONS.fields().len();
        assert!(
            TRANSACTIONS.fields()[..n - 2]
                .iter()
                .all(|f| !f.is_nullable())
        );
        assert!(
            TRANSACTIONS.fields()[n - 2..]
                .iter()
                .all(|f| f.is_nullable())
        );
        // What ingest reads: the lenient raw columns, then the lineage, as the tables end.
        let input: Vec<_> = INPUT.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(&input[..raw.len()], &raw[..]);
        assert_eq!(input[raw.len()..], tx[n - 2..]);
    }

    #[test]
    fn accepts_lossless_variants_and_rejects_the_rest() {
        use DataType::*;
        let ts = timestamp_type();
        assert!(compatible(
            &Dictionary(Box::new(Int8), Box::new(Utf8)),
            &Utf8
        ));
        assert!(compatible(&LargeUtf8, &Utf8));
        assert!(compatible(&Int32, &Int64));
        assert!(compatible(
            &Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())),
            &ts
        ));
        assert!(compatible(&Decimal128(10, 2), &Decimal128(12, 2)));
        assert!(!compatible(&Timestamp(TimeUnit::Microsecond, None), &ts));
        assert!(!compatible(&Float64, &Decimal128(12, 2)));
        assert!(!compatible(&Decimal128(14, 2), &Decimal128(12, 2)));
        assert!(!compatible(&Decimal128(12, 3), &Decimal128(12, 2)));
        assert!(!compatible(&Utf8, &Int64));
        assert!(!compatible(&UInt64, &Int64));
        // A message key: bytes, or text taken as its UTF-8 bytes.
        assert!(compatible(&LargeBinary, &Binary));
        assert!(compatible(&Utf8, &Binary));
        assert!(!compatible(&Int64, &Binary));
    }

    #[test]
    fn contract_types() {
        assert_eq!(
            RAW.field_with_name("amount").unwrap().data_type(),
            &DataType::Decimal128(12, 2)
        );
        assert_eq!(
            RAW.field_with_name("transaction_ts").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let file = without_column(&TRANSACTIONS, PARTITION_COLUMN);
        assert!(file.field_with_name(PARTITION_COLUMN).is_err());
        assert_eq!(file.fields().len(), TRANSACTIONS.fields().len() - 1);
    }
}
