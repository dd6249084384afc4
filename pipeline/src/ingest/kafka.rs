//! Ingest from a Kafka topic (`--source kafka://HOST:PORT/TOPIC`): every partition's new
//! messages, up to the end offsets the run found when it started (Spark's
//! `Trigger.AvailableNow`), through the same rules, quarantine and dedup as landing files,
//! committed with each partition's next offset in the same Delta commit.
//!
//! The steps, after those every run takes first (catch up, id index):
//! 1. **Offsets**: each partition's next offset is the `txn` version the table's log holds
//!    for it (Delta protocol, "Transaction Identifiers": an application's latest version,
//!    written in the same atomic commit as the data); none yet: the partition's earliest.
//! 2. **Fetch** each partition from there to its latest offset into a scratch Parquet file of
//!    raw rows (one file per partition: its `source_file` is `kafka/TOPIC/P/FIRST-LAST`);
//!    messages that cannot be read are kept aside with their offsets.
//! 3. **Execute** those files as landing files are executed (plan, dedup, write).
//! 4. **Commit**: the rows, the unreadable messages as quarantine rows
//!    (`unparseable_message`, `source_file` `kafka/TOPIC/P/OFFSET`), and one `txn` per
//!    partition read (`pipeline.kafka:TOPIC/P`, version = next offset), in the run's commit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{
    ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use deltalake::kernel::Add;
use deltalake::parquet::arrow::ArrowWriter;
use serde::Serialize;
use serde_json::json;

use super::discover::{LandingFile, Stream};
use super::execute::{self, Run};
use super::scratch::Scratch;
use super::{IngestOptions, IngestReport, Kept};
use crate::delta::{self, keys};
use crate::error::{Error, Result};
use crate::kafka::decode::{Decoder, Lineage};
use crate::kafka::{Connection, OnMissingOffsets, Partition, Topic};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::rules::UNPARSEABLE_MESSAGE;
use crate::schema::{INPUT, QUARANTINE, col};
use crate::tables::Table;

/// Bytes asked of the broker per fetch.
const FETCH_BYTES: i32 = 4 << 20;
/// How long a fetch may wait for data. A run fetches only below the latest offset it found, so
/// the data is there: Kafka answers at once (`min_bytes` = 1 is met). tansu 0.6.0 sleeps the
/// whole wait after finding data (tansu-storage 0.6.0 `service/fetch.rs`: the loop's `sleep`
/// runs whatever `bytes` holds), which at 200 ms held a run to ~190,000 messages/s.
const FETCH_WAIT: Duration = Duration::from_millis(20);
/// Empty answers in a row, below the end offset, after which a partition is left for the
/// next run (offsets without records: transaction markers; or a broker that lags).
const EMPTY_FETCHES: u32 = 10;
/// Rows per batch written to a scratch file.
const ROWS_PER_BATCH: usize = 65_536;
/// Unreadable messages named in the report (all are quarantined).
const EXAMPLES: usize = 10;

/// The ingest stream of a topic: its runs are numbered apart from landing-folder runs.
pub fn stream(topic: &Topic) -> Stream {
    Stream::new(&format!("kafka/{}", topic.name))
}

/// What a run read of one partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionRead {
    /// The partition.
    pub partition: i32,
    /// First offset read (the one the table had consumed up to).
    pub from: i64,
    /// Next offset to read (recorded in the commit).
    pub next: i64,
    /// The partition's latest offset when the run started.
    pub latest: i64,
    /// Messages read.
    pub messages: u64,
    /// Messages that could not be read (quarantined as `unparseable_message`).
    pub unparseable: u64,
    /// Timestamp of the newest message read (µs since the epoch).
    pub newest_us: Option<i64>,
}

/// A message that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct Unparseable {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// What is wrong with it.
    pub problem: String,
    /// Its key (kept in the quarantine row, not in the report).
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// Its timestamp (µs since the epoch).
    #[serde(skip)]
    pub timestamp_us: i64,
}

/// What an ingest run from a topic read (in its report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KafkaRead {
    /// `kafka://HOST:PORT/TOPIC`.
    pub topic: String,
    /// Each partition read.
    pub partitions: Vec<PartitionRead>,
    /// The first unreadable messages (at most 10; all are in the quarantine).
    pub unparseable_examples: Vec<Unparseable>,
}

impl KafkaRead {
    /// The lines of the text report: offsets read, and the unreadable messages named.
    pub fn text(&self) -> String {
        let read: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| p.messages > 0)
            .map(|p| format!("{}: {}..{}", p.partition, p.from, p.next))
            .collect();
        let mut s = format!("\n  {} offsets read: {}", self.topic, read.join(", "));
        for u in &self.unparseable_examples {
            s.push_str(&format!(
                "\n  unparseable message at partition {} offset {}: {}",
                u.partition, u.offset, u.problem
            ));
        }
        s
    }
}

/// One ingest run from `topic` (the caller retries a lost race).
pub(super) async fn run_once(
    layout: &Layout,
    opts: &IngestOptions,
    topic: &Topic,
    progress: &Progress,
    kept: &mut Kept,
) -> Result<IngestReport> {
    let started = Instant::now();
    let stream = stream(topic);
    let conn = Connection::open(topic).await?;
    let super::Opened {
        mut tables,
        before,
        mut report,
        scratch,
    } = super::open_run(layout, opts, &stream, kept).await?;
    report.step("open", started);
    let t = Instant::now();
    let plans = plan(&conn, &tables.main, opts).await?;
    let mut read = KafkaRead {
        topic: topic.to_string(),
        ..Default::default()
    };
    for (p, warning) in plans.iter().filter_map(|p| Some((p, p.warning.clone()?))) {
        tracing::warn!(partition = p.read.partition, "{warning}");
        report.warnings.push(warning);
    }
    report.step("discover", t);
    let t = Instant::now();
    let fetched = fetch_all(plans, &scratch, topic).await?;
    report.step("download", t);
    let files: Vec<LandingFile> = fetched.iter().filter_map(|f| f.file.clone()).collect();
    let unparseable: Vec<Unparseable> = fetched.iter().flat_map(|f| f.bad.clone()).collect();
    read.partitions = fetched.iter().map(|f| f.read.clone()).collect();
    read.unparseable_examples = unparseable.iter().take(EXAMPLES).cloned().collect();
    report.kafka = Some(read);
    if files.is_empty() {
        drop(scratch);
        kept.keep(tables).await;
        return Ok(report.finish(started));
    }
    report.count_files(&files);
    let run = Run::start(&tables, &stream, opts).await?;
    let executed =
        execute::execute_setting_aside(&tables, files, &run, &scratch, opts, progress, &mut report)
            .await?;
    let Some((main_adds, mut record)) = executed else {
        return Err(Error::Invalid(format!(
            "{topic}: internal error: the run's scratch files were not executed; nothing was committed"
        )));
    };
    let quarantined = quarantine(&tables.quarantine, topic, &unparseable).await?;
    report.data_files_written += quarantined.len() as u64;
    report.bytes_written += quarantined
        .iter()
        .map(|a| a.size.max(0) as u64)
        .sum::<u64>();
    record
        .derived
        .entry(Table::Quarantine)
        .or_default()
        .extend(quarantined);
    count_unparseable(&mut report, &mut record, unparseable.len() as u64);
    record.info.push((keys::SOURCE, json!(topic.to_string())));
    record.consumed = fetched
        .iter()
        .filter(|f| f.read.next > f.read.from)
        .map(|f| {
            (
                keys::kafka_offset_app(&topic.name, f.read.partition),
                f.read.next,
            )
        })
        .collect();
    let commit = (main_adds, record, &before);
    super::commit_and_tidy(layout, &mut tables, &stream, commit, opts, &mut report).await?;
    drop(scratch);
    kept.keep(tables).await;
    Ok(report.finish(started))
}

/// A partition to read, from where.
struct PartitionPlan {
    client: Partition,
    read: PartitionRead,
    warning: Option<String>,
}

/// Each partition's range to read: from the offset the table consumed up to (its earliest
/// when none) to its latest offset now.
async fn plan(
    conn: &Connection,
    main: &deltalake::DeltaTable,
    opts: &IngestOptions,
) -> Result<Vec<PartitionPlan>> {
    let topic = &conn.topic;
    let partitions = conn.partitions().await?;
    if partitions.is_empty() {
        return Err(Error::kafka(
            topic.to_string(),
            format!(
                "no such topic at {}: create it, or start a producer \
                 (`pipeline generate --follow --to {topic}`)",
                topic.bootstrap
            ),
        ));
    }
    let mut plans = Vec::with_capacity(partitions.len());
    for p in partitions {
        let client = conn.partition(p).await?;
        let app = keys::kafka_offset_app(&topic.name, p);
        let consumed = delta::txn_version(main, Table::Transactions, &app).await?;
        let (earliest, latest) = client.bounds(consumed).await?;
        let mut warning = None;
        let from = match consumed {
            None => earliest,
            Some(next) if (earliest..=latest).contains(&next) => next,
            Some(next) => {
                let lost = missing(topic, p, next, earliest, latest);
                match opts.on_missing_offsets {
                    OnMissingOffsets::Fail => {
                        return Err(Error::KafkaLost {
                            what: format!("{topic} partition {p}"),
                            problem: format!(
                                "{lost}. Nothing was committed. To go on from the earliest offset \
                                 the broker has, accepting the loss, rerun with \
                                 --on-missing-offsets earliest"
                            ),
                        });
                    }
                    OnMissingOffsets::Earliest => {
                        warning = Some(format!(
                            "{topic} partition {p}: {lost}; going on from offset {earliest} \
                             (--on-missing-offsets earliest)"
                        ));
                        earliest
                    }
                }
            }
        };
        plans.push(PartitionPlan {
            client,
            read: PartitionRead {
                partition: p,
                from,
                next: from,
                latest,
                ..Default::default()
            },
            warning,
        });
    }
    Ok(plans)
}

/// What is missing when the table's next offset is outside what the broker holds.
fn missing(topic: &Topic, p: i32, next: i64, earliest: i64, latest: i64) -> String {
    if next < earliest {
        format!(
            "the table has consumed {topic} partition {p} up to offset {next}, but the broker's \
             earliest offset is {earliest}: messages {next}..{} were removed (retention) before \
             they were ingested",
            earliest - 1
        )
    } else {
        format!(
            "the table has consumed {topic} partition {p} up to offset {next}, but the broker's \
             latest offset is {latest}: the topic was deleted and created again, or the broker \
             lost messages"
        )
    }
}

/// What was fetched of one partition.
struct Fetched {
    read: PartitionRead,
    /// Its scratch file (none when no message was read).
    file: Option<LandingFile>,
    bad: Vec<Unparseable>,
}

/// Fetch every partition's range, concurrently.
async fn fetch_all(
    plans: Vec<PartitionPlan>,
    scratch: &Scratch,
    topic: &Topic,
) -> Result<Vec<Fetched>> {
    let tasks = plans.into_iter().map(|plan| {
        let dir = scratch.dir.clone();
        let topic = topic.clone();
        async move { fetch(plan, &dir, &topic).await }
    });
    futures::future::try_join_all(tasks).await
}

/// Fetch one partition from its next offset up to its latest, into a scratch file.
async fn fetch(plan: PartitionPlan, dir: &Path, topic: &Topic) -> Result<Fetched> {
    let PartitionPlan {
        client, mut read, ..
    } = plan;
    let p = read.partition;
    let mut bad = Vec::new();
    if read.from >= read.latest {
        return Ok(Fetched {
            read,
            file: None,
            bad,
        });
    }
    let path = dir.join(format!("kafka-{p}-{}.parquet", read.from));
    let mut out = ScratchFile::create(&path)?;
    let mut decoder = Decoder::default();
    let mut oldest_us = i64::MAX;
    let mut empty = 0;
    while read.next < read.latest {
        let messages = client.fetch(read.next, FETCH_BYTES, FETCH_WAIT).await?;
        let before = read.next;
        for m in messages {
            if m.offset < read.next || m.offset >= read.latest {
                continue;
            }
            let ts = m.record.timestamp.timestamp_micros();
            oldest_us = oldest_us.min(ts);
            if let Err(problem) = take(&mut read, &mut decoder, &m, ts)? {
                bad.push(Unparseable {
                    partition: p,
                    offset: m.offset,
                    problem,
                    key: m.record.key.clone(),
                    timestamp_us: ts,
                });
            }
            if decoder.rows() >= ROWS_PER_BATCH {
                out.write(&decoder.finish()?)?;
            }
        }
        empty = if read.next > before { 0 } else { empty + 1 };
        if empty >= EMPTY_FETCHES {
            tracing::warn!(
                partition = p,
                offset = read.next,
                latest = read.latest,
                "no records from this offset below the partition's latest: left for the next run"
            );
            break;
        }
    }
    if decoder.rows() > 0 {
        out.write(&decoder.finish()?)?;
    }
    if read.messages == 0 {
        out.discard();
        return Ok(Fetched {
            read,
            file: None,
            bad,
        });
    }
    let size = out.close()?;
    let file = LandingFile {
        path,
        rel: format!("kafka/{}/{p}/{}-{}", topic.name, read.from, read.next - 1),
        size,
        // Freshness starts when the oldest message of the file was written.
        modified_us: oldest_us,
        // Ours, written once: nothing changes it while the run reads it.
        downloaded: true,
    };
    Ok(Fetched {
        read,
        file: Some(file),
        bad,
    })
}

/// Read one message (at `ts`) into `decoder`, counted in `read`; `Ok(Err(why))`: it cannot
/// be read.
fn take(
    read: &mut PartitionRead,
    decoder: &mut Decoder,
    m: &crate::kafka::Message,
    ts: i64,
) -> Result<std::result::Result<(), String>> {
    read.next = m.offset + 1;
    read.messages += 1;
    read.newest_us = Some(read.newest_us.map_or(ts, |n| n.max(ts)));
    let lineage = Lineage {
        key: m.record.key.as_deref(),
        timestamp_us: ts,
    };
    let parsed = match &m.record.value {
        Some(value) => decoder.push(value, lineage)?,
        None => Err("the message has no value (a tombstone)".to_string()),
    };
    if parsed.is_err() {
        read.unparseable += 1;
    }
    Ok(parsed)
}

/// A scratch Parquet file of raw rows, written a batch at a time.
struct ScratchFile {
    path: std::path::PathBuf,
    writer: Option<ArrowWriter<std::fs::File>>,
}

impl ScratchFile {
    fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        let props = crate::schema::writer_properties(Some(128 * 1024));
        let writer = ArrowWriter::try_new(file, INPUT.clone(), Some(props))?;
        Ok(ScratchFile {
            path: path.to_path_buf(),
            writer: Some(writer),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.as_mut().expect("open").write(batch)?;
        Ok(())
    }

    /// Finish the file; returns its size.
    fn close(mut self) -> Result<u64> {
        self.writer.take().expect("open").close()?;
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| Error::io(format!("cannot stat {}", self.path.display()), e))?;
        Ok(meta.len())
    }

    fn discard(mut self) {
        drop(self.writer.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Write the unreadable messages as quarantine rows (uncommitted).
async fn quarantine(
    table: &deltalake::DeltaTable,
    topic: &Topic,
    bad: &[Unparseable],
) -> Result<Vec<Add>> {
    if bad.is_empty() {
        return Ok(Vec::new());
    }
    let n = bad.len();
    let reason: StringArray = std::iter::repeat_n(Some(UNPARSEABLE_MESSAGE), n).collect();
    let lineage: StringArray = bad
        .iter()
        .map(|u| Some(format!("kafka/{}/{}/{}", topic.name, u.partition, u.offset)))
        .collect();
    let key: BinaryArray = bad.iter().map(|u| u.key.as_deref()).collect();
    let timestamp = TimestampMicrosecondArray::from_iter_values(bad.iter().map(|u| u.timestamp_us))
        .with_timezone("UTC");
    let cols: Vec<ArrayRef> = QUARANTINE
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            col::REJECTION_REASON => Arc::new(reason.clone()) as ArrayRef,
            col::SOURCE_FILE => Arc::new(lineage.clone()),
            col::MESSAGE_KEY => Arc::new(key.clone()),
            col::MESSAGE_TIMESTAMP => Arc::new(timestamp.clone()),
            _ => new_null_array(f.data_type(), n),
        })
        .collect();
    let batch = RecordBatch::try_new(QUARANTINE.clone(), cols)?;
    delta::write_batch(table, Table::Quarantine, batch).await
}

/// Count the unreadable messages as rows read and quarantined, in the report and the commit.
fn count_unparseable(report: &mut IngestReport, record: &mut super::commit::RunRecord, n: u64) {
    if n == 0 {
        return;
    }
    report.rows_in += n;
    report.rows_quarantined += n;
    *report
        .quarantine_reasons
        .entry(UNPARSEABLE_MESSAGE)
        .or_default() += n;
    for (key, value) in record.info.iter_mut() {
        if *key == keys::ROWS {
            *value = report.rows_json();
        }
    }
}
