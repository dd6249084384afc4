//! `generate --follow --to kafka://HOST:PORT/TOPIC`: the producer of a topic. Each tick is an
//! ordinary batch, written to the producer's own folder (`<data-dir>/_producer/TOPIC`, where
//! re-deliveries find earlier batches), then sent a row per message (JSON, [`json::encode`]),
//! keyed by `customer_id` (so a customer's messages keep their order in one partition); or,
//! with `--message-format arrow`, as Arrow IPC messages of up to 1,000 rows each
//! ([`arrow::encode`]), a customer's rows in the partition of its key, the messages without a
//! key. With `--dirty-rate`, a tenth of that rate more messages are unreadable on purpose
//! (JSON: cut short, or an amount with three decimals; Arrow: a stream cut short): the
//! ingest's `unparseable_message`.
//!
//! A producer killed in the middle of a tick has sent part of its batch; it goes on with the
//! next batch (the part not sent is not sent: at most once, as a producer without
//! idempotence is).

use std::path::PathBuf;

use deltalake::arrow::array::{AsArray, RecordBatch, UInt32Array};
use deltalake::arrow::compute::take_record_batch;
use deltalake::arrow::datatypes::Int64Type;
use rand::{Rng, SeedableRng};
use rskafka::record::Record;

use super::GenerateOptions;
use crate::error::{Error, Result};
use crate::kafka::{Connection, MessageFormat, Partition, Topic, arrow, json, partition_for};
use crate::layout::Layout;

/// Messages per produce request.
const PER_REQUEST: usize = 2_000;
/// Rows per Arrow message (about 100 KB, well below Kafka's default 1 MB message limit).
const ARROW_ROWS_PER_MESSAGE: usize = 1_000;

/// A topic being produced to, with the producer's own data dir.
pub struct Sink {
    rt: tokio::runtime::Runtime,
    partitions: Vec<Partition>,
    format: MessageFormat,
    /// Where the producer keeps its batches.
    pub layout: Layout,
}

impl Sink {
    /// Connect, creating the topic with `partitions` partitions if missing.
    pub fn open(
        layout: &Layout,
        topic: &Topic,
        partitions: i32,
        format: MessageFormat,
    ) -> Result<Sink> {
        let Some(root) = layout.local_root() else {
            return Err(Error::Invalid(
                "generate --to kafka://...: keeps its batches in a local --data-dir".into(),
            ));
        };
        let own: PathBuf = root.join("_producer").join(&topic.name);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the async runtime", e))?;
        let partitions = rt.block_on(async {
            let conn = Connection::open(topic).await?;
            let mut clients = Vec::new();
            for p in conn.ensure_topic(partitions).await? {
                clients.push(conn.partition(p).await?);
            }
            Ok::<_, Error>(clients)
        })?;
        Ok(Sink {
            rt,
            partitions,
            format,
            layout: Layout::new(own),
        })
    }

    /// Send the rows of `batch` (written by the generator) as messages; returns the count.
    pub fn send_batch(&self, batch: u32, opts: &GenerateOptions) -> Result<u64> {
        let dir = self.layout.raw_batch_dir(batch);
        let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); self.partitions.len()];
        let mut rng = rand_pcg::Pcg64::seed_from_u64(opts.seed ^ u64::from(batch).rotate_left(17));
        let now = chrono::Utc::now();
        let unreadable_rate = (opts.dirty_rate / 10.0).clamp(0.0, 1.0);
        let mut sent = 0;
        for path in parquet_files(&dir)? {
            for rows in read(&path)? {
                let keys = customer_keys(&rows);
                match self.format {
                    MessageFormat::Json => {
                        for (value, key) in json::encode(&rows).into_iter().zip(keys) {
                            let p = &mut by_partition[partition_for(&key, self.partitions.len())];
                            if rng.random_bool(unreadable_rate) {
                                p.push(record(&key, unreadable(&value, &mut rng), now));
                            }
                            p.push(record(&key, value, now));
                        }
                    }
                    MessageFormat::Arrow => {
                        let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); self.partitions.len()];
                        for (i, key) in keys.iter().enumerate() {
                            rows_of[partition_for(key, self.partitions.len())].push(i as u32);
                        }
                        for (p, idx) in by_partition.iter_mut().zip(rows_of) {
                            for chunk in idx.chunks(ARROW_ROWS_PER_MESSAGE) {
                                let part =
                                    take_record_batch(&rows, &UInt32Array::from(chunk.to_vec()))?;
                                let value = arrow::encode(&part)?;
                                if rng.random_bool(unreadable_rate) {
                                    // Cut short: a damaged stream.
                                    let cut = value[..value.len() / 2].to_vec();
                                    p.push(record(&[], cut, now));
                                }
                                p.push(record(&[], value, now));
                            }
                        }
                    }
                }
            }
        }
        self.rt.block_on(async {
            let sends = self
                .partitions
                .iter()
                .zip(by_partition)
                .map(|(p, records)| async move {
                    let mut n = 0u64;
                    let mut records = records;
                    while !records.is_empty() {
                        let rest = records.split_off(records.len().min(PER_REQUEST));
                        n += p.produce(records).await?.len() as u64;
                        records = rest;
                    }
                    Ok::<_, Error>(n)
                });
            for n in futures::future::try_join_all(sends).await? {
                sent += n;
            }
            Ok::<_, Error>(())
        })?;
        Ok(sent)
    }
}

fn record(key: &[u8], value: Vec<u8>, at: chrono::DateTime<chrono::Utc>) -> Record {
    Record {
        key: (!key.is_empty()).then(|| key.to_vec()),
        value: Some(value),
        headers: Default::default(),
        timestamp: at,
    }
}

/// Each row's message key: its `customer_id` as text (empty when null: no key).
fn customer_keys(rows: &RecordBatch) -> Vec<Vec<u8>> {
    let customers = rows.column_by_name("customer_id").expect("raw schema");
    let customers = customers.as_primitive::<Int64Type>();
    customers
        .iter()
        .map(|c| c.map_or_else(Vec::new, |c| c.to_string().into_bytes()))
        .collect()
}

/// A message the ingest cannot read, made from a good one.
fn unreadable(value: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    if rng.random_bool(0.5) {
        // Cut short: not JSON.
        value[..value.len() / 2].to_vec()
    } else {
        let text = String::from_utf8_lossy(value).replace("\"amount\":\"", "\"amount\":\"0.001");
        text.into_bytes()
    }
}

/// The Parquet files of a batch folder, in name order.
fn parquet_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &std::path::Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let reader =
        deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}
