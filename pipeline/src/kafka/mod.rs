//! A Kafka topic as a source (`ingest --source`, `run --follow --source`) and a sink
//! (`generate --follow --to`) of transactions: its address, the client, and the message
//! formats ([`decode`]: [`json`] or [`arrow`]).
//!
//! The client is rskafka, a Kafka-protocol client that fetches from an explicit offset: the
//! consumed offsets live in the Delta table's log, never in the broker (no consumer group).
//! Broker behaviour relied on, from the Kafka protocol guide
//! (<https://kafka.apache.org/protocol#The_Messages_Fetch>, `ListOffsets`): offsets of a
//! partition are dense from its log start (the earliest offset, which retention moves up) to
//! its high watermark (the latest, the next offset to be written); a fetch from inside that
//! range returns the record batches from that offset on; a fetch outside it fails with
//! `OFFSET_OUT_OF_RANGE`. Transaction markers and compaction can leave offsets without a
//! record: a fetch then returns the next record after the gap.

pub mod arrow;
pub mod decode;
pub mod json;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use serde::Serialize;

use crate::error::{Error, Result};

/// How long a request to the broker is retried before it is an error (rskafka retries
/// forever by default: a stream must see a broker that is gone, to say so).
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);

/// `kafka://HOST:PORT/TOPIC`: a topic of a cluster, by one of its brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The bootstrap broker, `HOST:PORT`.
    pub bootstrap: String,
    /// The topic's name.
    pub name: String,
}

impl FromStr for Topic {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = || {
            format!(
                "`{s}` is not a Kafka topic: write kafka://HOST:PORT/TOPIC (e.g. kafka://127.0.0.1:9092/transactions)"
            )
        };
        let rest = s.strip_prefix("kafka://").ok_or_else(usage)?;
        let (bootstrap, name) = rest.split_once('/').ok_or_else(usage)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        // Kafka's own rule for topic names (Topic.validate): [a-zA-Z0-9._-], at most 249.
        if bootstrap.is_empty()
            || !bootstrap.contains(':')
            || name.is_empty()
            || name.len() > 249
            || !name.chars().all(valid)
        {
            return Err(usage());
        }
        Ok(Topic {
            bootstrap: bootstrap.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kafka://{}/{}", self.bootstrap, self.name)
    }
}

impl Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A connection to the cluster of a topic.
#[derive(Clone)]
pub struct Connection {
    client: Arc<Client>,
    /// The topic it serves.
    pub topic: Topic,
}

impl Connection {
    /// Connect to the topic's bootstrap broker.
    pub async fn open(topic: &Topic) -> Result<Self> {
        let backoff = rskafka::BackoffConfig {
            deadline: Some(REQUEST_DEADLINE),
            ..Default::default()
        };
        let client = ClientBuilder::new(vec![topic.bootstrap.clone()])
            .client_id("pipeline")
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| Error::kafka(format!("cannot connect to {}", topic.bootstrap), e))?;
        Ok(Connection {
            client: Arc::new(client),
            topic: topic.clone(),
        })
    }

    /// The topic's partitions (none: the topic does not exist).
    pub async fn partitions(&self) -> Result<Vec<i32>> {
        let topics = self
            .client
            .list_topics()
            .await
            .map_err(|e| self.error("cannot list the topics", e))?;
        Ok(topics
            .into_iter()
            .find(|t| t.name == self.topic.name)
            .map(|t| t.partitions.into_iter().collect())
            .unwrap_or_default())
    }

    /// Create the topic with `partitions` partitions unless it exists; returns its partitions.
    pub async fn ensure_topic(&self, partitions: i32) -> Result<Vec<i32>> {
        let found = self.partitions().await?;
        if !found.is_empty() {
            return Ok(found);
        }
        let controller = self
            .client
            .controller_client()
            .map_err(|e| self.error("cannot reach the controller", e))?;
        if let Err(e) = controller
            .create_topic(&self.topic.name, partitions, 1, 5_000)
            .await
        {
            // Another producer may have created it meanwhile.
            if self.partitions().await?.is_empty() {
                return Err(self.error("cannot create the topic", e));
            }
        }
        for _ in 0..50 {
            let found = self.partitions().await?;
            if !found.is_empty() {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Invalid(format!(
            "{}: created, but the broker does not list it",
            self.topic
        )))
    }

    /// Delete the topic (tests: a topic deleted and created again).
    pub async fn delete_topic(&self) -> Result<()> {
        let controller = self
            .client
            .controller_client()
            .map_err(|e| self.error("cannot reach the controller", e))?;
        controller
            .delete_topic(&self.topic.name, 5_000)
            .await
            .map_err(|e| self.error("cannot delete the topic", e))
    }

    /// A client of one partition.
    pub async fn partition(&self, partition: i32) -> Result<Partition> {
        let client = self
            .client
            .partition_client(
                self.topic.name.clone(),
                partition,
                UnknownTopicHandling::Retry,
            )
            .await
            .map_err(|e| self.error(&format!("cannot reach partition {partition}"), e))?;
        Ok(Partition {
            client,
            topic: self.topic.clone(),
            partition,
        })
    }

    fn error(&self, what: &str, e: impl Into<crate::error::BoxError>) -> Error {
        Error::kafka(format!("{}: {what}", self.topic), e)
    }
}

/// One partition of a topic.
pub struct Partition {
    client: PartitionClient,
    topic: Topic,
    /// Its number.
    pub partition: i32,
}

/// A record read from a partition.
pub type Message = rskafka::record::RecordAndOffset;

impl Partition {
    /// The offsets it holds: `(earliest, latest)`, latest being the next one to be written
    /// (the high watermark). `from`: the offset the caller will read from, if it has one.
    ///
    /// Latest is the larger of `ListOffsets(latest)` and the high watermark that a fetch
    /// reports (at `from` when it is within the listed offsets, so that a caught-up reader
    /// fetches nothing; else at the earliest). Kafka gives the same number both ways; tansu
    /// 0.6.0 (our test broker) answers `ListOffsets(latest)` with the newest record batch's
    /// *base* offset + 1 (tansu-storage 0.6.0, `dynostore.rs`, `list_offsets`:
    /// `ListOffset::Latest => offset + 1`, the offset taken from the batch object's name),
    /// which ends a run inside the last batch and leaves its other records until another batch
    /// arrives. Its fetch reports the true high watermark.
    pub async fn bounds(&self, from: Option<i64>) -> Result<(i64, i64)> {
        let earliest = self.offset(OffsetAt::Earliest).await?;
        let listed = self.offset(OffsetAt::Latest).await?;
        let at = from
            .filter(|f| (earliest..=listed).contains(f))
            .unwrap_or(earliest);
        let (_, high_watermark) = self
            .client
            .fetch_records(at, 1..2, 0)
            .await
            .map_err(|e| self.error(&format!("cannot fetch from offset {at}"), e))?;
        Ok((earliest, listed.max(high_watermark)))
    }

    async fn offset(&self, at: OffsetAt) -> Result<i64> {
        self.client
            .get_offset(at)
            .await
            .map_err(|e| self.error("cannot read its offsets", e))
    }

    /// The records from `offset` on, about `max_bytes` of them (at least one when there is one),
    /// waiting up to `max_wait` for the first.
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<Vec<Message>> {
        let (records, _high_watermark) = self
            .client
            .fetch_records(offset, 1..max_bytes, max_wait.as_millis() as i32)
            .await
            .map_err(|e| self.error(&format!("cannot fetch from offset {offset}"), e))?;
        Ok(records)
    }

    /// Write `records`; returns their offsets.
    pub async fn produce(&self, records: Vec<rskafka::record::Record>) -> Result<Vec<i64>> {
        self.client
            .produce(
                records,
                rskafka::client::partition::Compression::NoCompression,
            )
            .await
            .map_err(|e| self.error("cannot produce", e))
    }

    fn error(&self, what: &str, e: impl Into<crate::error::BoxError>) -> Error {
        Error::kafka(
            format!("{} partition {}: {what}", self.topic, self.partition),
            e,
        )
    }
}

/// What to do when the broker no longer has offsets the table has not consumed (retention
/// removed them, or the topic was recreated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingOffsets {
    /// Commit nothing; exit 10 naming the partition and the offsets lost.
    #[default]
    Fail,
    /// Go on from the partition's earliest offset, with a warning naming what was lost.
    Earliest,
}

/// How the producer (`generate --to`) writes messages; ingest reads both, told apart by each
/// message's first bytes (docs/kafka.md, "Messages").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// One transaction per message, a JSON object, keyed by customer.
    #[default]
    Json,
    /// Arrow IPC streams of up to 1,000 transactions each, without a key.
    Arrow,
}

/// Each partition's next offset, by partition.
pub type Offsets = BTreeMap<i32, i64>;

/// The partition a message with key `key` goes to: FNV-1a of the key, modulo the partitions
/// (our producer's choice; Kafka's Java client uses murmur2, which no reader here relies on).
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_urls() {
        let t: Topic = "kafka://127.0.0.1:9092/tx.v1".parse().unwrap();
        assert_eq!(t.bootstrap, "127.0.0.1:9092");
        assert_eq!(t.name, "tx.v1");
        assert_eq!(t.to_string(), "kafka://127.0.0.1:9092/tx.v1");
        for bad in [
            "127.0.0.1:9092/t",
            "kafka://127.0.0.1/t",
            "kafka://h:1/",
            "kafka://h:1/a/b",
            "kafka://h:1/a b",
        ] {
            let e = bad.parse::<Topic>().unwrap_err();
            assert!(e.contains("kafka://HOST:PORT/TOPIC"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut seen = [0u32; 3];
        for k in 0..3000 {
            seen[partition_for(k.to_string().as_bytes(), 3)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        assert_eq!(partition_for(b"42", 3), partition_for(b"42", 3));
    }
}
