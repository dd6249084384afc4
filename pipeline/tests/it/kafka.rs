//! The Kafka source and producer against a real Kafka-protocol broker: tansu (crates.io
//! `tansu` 0.6.0, which `make test` installs into /var/tmp/pipeline-tools; `TANSU_BIN` points
//! elsewhere), started on a loopback port per test; or the broker at `KAFKA_BOOTSTRAP`
//! (`HOST:PORT` of a real Kafka or Redpanda), each test on its own topic. Without either the
//! tests say SKIPPED loudly and pass.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltalake::arrow::array::ArrayRef;
use pipeline::kafka::{Connection, Topic};
use rand::Rng;
use serde_json::Value;

use crate::common::{Data, quarantine, rows, u};
use crate::crash::world;
use crate::scylla::Cql;

const TX: &str = "customer_transactions";

/// A broker for one test, stopped when dropped (unless it is `KAFKA_BOOTSTRAP`'s).
pub(crate) struct Broker {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    pub(crate) bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// tansu: `TANSU_BIN`, the cache `make test` installs it into, or the PATH.
fn tansu() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from("/var/tmp/pipeline-tools/tansu-0.6.0/bin/tansu");
    if cached.exists() {
        return Some(cached);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
}

impl Broker {
    /// A broker keeping its topics in memory (lost when it stops).
    pub(crate) fn start(why: &str) -> Option<Broker> {
        Self::with_storage(why, "memory://tansu/".into(), Vec::new())
    }

    /// A broker keeping its topics in `storage` (`s3://BUCKET/`, reached with `env`).
    pub(crate) fn with_storage(
        why: &str,
        storage: String,
        env: Vec<(&'static str, String)>,
    ) -> Option<Broker> {
        let dir = tempfile::tempdir().unwrap();
        if let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP") {
            return Some(Broker {
                child: None,
                bin: PathBuf::new(),
                args: Vec::new(),
                env,
                bootstrap,
                log: dir.path().join("none"),
                _dir: dir,
            });
        }
        let Some(bin) = tansu() else {
            eprintln!(
                "\n*** SKIPPED: no Kafka broker: tansu is not installed (`make test` installs \
                 crates.io tansu 0.6.0 into /var/tmp/pipeline-tools when it can) and \
                 KAFKA_BOOTSTRAP is not set: {why} was NOT tested ***\n"
            );
            return None;
        };
        let port = crate::object_store::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let args = vec![
            "broker".to_string(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            storage,
        ];
        let mut broker = Broker {
            child: None,
            bin,
            args,
            env,
            bootstrap: format!("127.0.0.1:{port}"),
            log: dir.path().join("tansu.log"),
            _dir: dir,
        };
        broker.resume();
        Some(broker)
    }

    /// Stop it (an outage).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and storage; returns once it accepts connections.
    pub(crate) fn resume(&mut self) {
        if self.bin.as_os_str().is_empty() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(&self.bootstrap).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {}: {}",
                self.bootstrap,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A topic of this broker no other test uses: `kafka://HOST:PORT/NAME-PID-N`.
    pub(crate) fn topic(&self, name: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!(
            "kafka://{}/{name}-{}-{n}",
            self.bootstrap,
            std::process::id()
        )
    }
}

/// Run the producer: `generate --follow --to URL` for `duration` at `rate` rows/s.
fn produce(d: &Data, url: &str, rate: &str, duration: &str, partitions: &str) -> Value {
    d.ok(&[
        "generate",
        "--follow",
        "--to",
        url,
        "--rate",
        rate,
        "--rows-per-file",
        "2000",
        "--duration",
        duration,
        "--customers",
        "300",
        "--dirty-rate",
        "0.05",
        "--partitions",
        partitions,
    ])
}

/// The producer's own data dir: the batches it sent, as landing files.
fn producer_files(d: &Data, url: &str) -> Data {
    let topic: Topic = url.parse().unwrap();
    let own = d.path().join("_producer").join(&topic.name);
    let copy = Data::new();
    let status = Command::new("cp")
        .arg("-r")
        .arg(own.join("_raw"))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

/// `(app id, version)` of every `txn` action in a table's log.
fn txns(table: &std::path::Path) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for f in crate::common::commit_files(table) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(t) = v.get("txn") {
                out.push((
                    t["appId"].as_str().unwrap().to_string(),
                    t["version"].as_i64().unwrap(),
                ));
            }
        }
    }
    out
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Send `values` to partition 0 of the topic (created with one partition if missing), the
/// `i`th with key `k{i}` and timestamp now + `i` ms; returns the first's timestamp (µs, whole
/// milliseconds: Kafka keeps milliseconds).
fn send(url: &str, values: &[Option<&[u8]>]) -> i64 {
    let topic: Topic = url.parse().unwrap();
    let first_ms = chrono::Utc::now().timestamp_millis();
    block_on(async {
        let conn = Connection::open(&topic).await.unwrap();
        conn.ensure_topic(1).await.unwrap();
        let p = conn.partition(0).await.unwrap();
        let records = values
            .iter()
            .enumerate()
            .map(|(i, v)| rskafka::record::Record {
                key: Some(format!("k{i}").into_bytes()),
                value: v.map(|v| v.to_vec()),
                headers: Default::default(),
                timestamp: chrono::DateTime::from_timestamp_millis(first_ms + i as i64).unwrap(),
            })
            .collect();
        p.produce(records).await.unwrap();
    });
    first_ms * 1000
}

/// A row's Kafka lineage as a table holds it.
#[derive(Debug, PartialEq)]
struct Lineage {
    id: Option<String>,
    customer: Option<i64>,
    key: Option<Vec<u8>>,
    timestamp_us: Option<i64>,
}

/// Every row of a table's live files with its lineage (none where a file lacks the columns).
fn lineage(table: &std::path::Path) -> Vec<Lineage> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    let mut out = Vec::new();
    for (path, _) in crate::common::live_files(table) {
        for b in crate::common::read_parquet(&path) {
            let id = b
                .column_by_name("transaction_id")
                .unwrap()
                .as_string::<i32>();
            let customer = b.column_by_name("customer_id").unwrap();
            let customer = customer.as_primitive::<Int64Type>();
            let key = b
                .column_by_name("message_key")
                .map(|c| c.as_binary::<i32>().clone());
            let ts = b.column_by_name("message_timestamp");
            let ts = ts.map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
            for i in 0..b.num_rows() {
                out.push(Lineage {
                    id: id.is_valid(i).then(|| id.value(i).to_string()),
                    customer: customer.is_valid(i).then(|| customer.value(i)),
                    key: key
                        .as_ref()
                        .filter(|k| k.is_valid(i))
                        .map(|k| k.value(i).to_vec()),
                    timestamp_us: ts.as_ref().filter(|t| t.is_valid(i)).map(|t| t.value(i)),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.id, &a.key).cmp(&(&b.id, &b.key)));
    out
}

fn good(id: u32, cents: u32) -> Vec<u8> {
    format!(
        r#"{{"transaction_id":"00000000-0000-4000-8000-{id:012}","customer_id":7,"merchant_id":3,
        "transaction_ts":"{}","amount":"{}.{:02}","category":"grocery","channel":"online",
        "status":"approved"}}"#,
        chrono::Utc::now().to_rfc3339(),
        cents / 100,
        cents % 100
    )
    .into_bytes()
}

#[test]
fn a_topic_is_ingested_once_equal_to_the_producers_own_files() {
    let Some(broker) = Broker::start("ingesting a topic") else {
        return;
    };
    let url = broker.topic("tx");
    let producer = Data::new();
    let sent = produce(&producer, &url, "20000", "2s", "3");
    let messages = u(&sent, "messages");
    assert!(
        messages > u(&sent, "rows"),
        "some unreadable ones too: {sent}"
    );

    let d = Data::new();
    let r = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&r, "rows_in"), messages, "{r}");
    let parts = r["kafka"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{r}");
    let unparseable = r["quarantine_reasons"]["unparseable_message"]
        .as_u64()
        .unwrap();
    assert!(unparseable > 0, "{r}");
    // Each partition's next offset is in the commit, as a Delta app transaction.
    let mut recorded = txns(&d.table(TX));
    recorded.retain(|(app, _)| app.starts_with("pipeline.kafka:"));
    recorded.sort();
    let topic: Topic = url.parse().unwrap();
    let mut expected: Vec<(String, i64)> = parts
        .iter()
        .map(|p| {
            assert_eq!(p["next"], p["latest"], "{r}");
            let app = format!("pipeline.kafka:{}/{}", topic.name, p["partition"]);
            (app, p["next"].as_i64().unwrap())
        })
        .collect();
    expected.sort();
    assert_eq!(recorded, expected);

    // Each row keeps its message's key (the producer keys by customer) and timestamp.
    let kept = lineage(&d.table(TX));
    assert!(!kept.is_empty());
    for r in &kept {
        let customer = r.customer.unwrap().to_string().into_bytes();
        assert_eq!(r.key.as_ref(), Some(&customer), "{r:?}");
        assert!(r.timestamp_us.is_some(), "{r:?}");
    }

    // Nothing new: nothing committed.
    let again = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&again, "files_ingested"), 0, "{again}");
    assert!(again["table_version"].is_null(), "{again}");

    // The same rows through the file source: the same table; its quarantine lacks only the
    // unreadable messages.
    let files = producer_files(&producer, &url);
    files.ok(&["ingest"]);
    assert_eq!(rows(&d.table(TX)), rows(&files.table(TX)));
    let from_files = lineage(&files.table(TX));
    assert!(
        from_files
            .iter()
            .all(|r| r.key.is_none() && r.timestamp_us.is_none()),
        "rows from landing files have no message lineage"
    );
    let q = quarantine(&d);
    let unread: Vec<_> = q.iter().filter(|r| r.2 == "unparseable_message").collect();
    assert_eq!(unread.len() as u64, unparseable);
    assert_eq!(q.len() - unread.len(), quarantine(&files).len());
}

#[test]
fn unreadable_messages_are_quarantined_with_their_offsets() {
    let Some(broker) = Broker::start("unreadable messages") else {
        return;
    };
    let url = broker.topic("bad");
    let topic: Topic = url.parse().unwrap();
    let late = good(2, 1).into_iter().collect::<Vec<u8>>();
    let sent_us = send(
        &url,
        &[
            Some(&good(1, 1230)),
            Some(b"{not json"),
            None,
            Some(br#"{"transaction_id":"00000000-0000-4000-8000-000000000009","amount":"1.234"}"#),
            Some(br#"{"customer_id":"seven"}"#),
            Some(&late),
            Some(br#"{"transaction_id":null}"#),
        ],
    );
    let d = Data::new();
    let r = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&r, "rows_in"), 7, "{r}");
    assert_eq!(u(&r, "rows_out"), 2, "{r}");
    assert_eq!(r["quarantine_reasons"]["unparseable_message"], 4, "{r}");
    assert_eq!(r["quarantine_reasons"]["transaction_id_null"], 1, "{r}");
    let examples = r["kafka"]["unparseable_examples"].as_array().unwrap();
    let offsets: Vec<i64> = examples
        .iter()
        .map(|e| e["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4], "{r}");
    assert!(
        examples[2]["problem"]
            .as_str()
            .unwrap()
            .contains("more than 2 decimals"),
        "{r}"
    );
    // Lineage: the quarantine row names the message's partition and offset.
    let sources =
        crate::common::column_values(&d.table("_quarantine/customer_transactions"), "source_file");
    for offset in 1..=4 {
        let want = format!("kafka/{}/0/{offset}", topic.name);
        assert!(sources.contains(&want), "{want} in {sources:?}");
    }
    let good_lineage = crate::common::column_values(&d.table(TX), "source_file");
    assert_eq!(good_lineage, vec![format!("kafka/{}/0/0-6", topic.name); 2]);
    // And every row, good or not, keeps its message's key and timestamp (offset i: `k{i}`,
    // sent_us + i ms).
    let at = |offset: i64| {
        (
            Some(format!("k{offset}").into_bytes()),
            Some(sent_us + offset * 1000),
        )
    };
    let good_rows: Vec<_> = lineage(&d.table(TX))
        .into_iter()
        .map(|r| (r.key, r.timestamp_us))
        .collect();
    assert_eq!(good_rows, [at(0), at(5)]);
    let mut rejected: Vec<_> = lineage(&d.table("_quarantine/customer_transactions"))
        .into_iter()
        .map(|r| (r.key, r.timestamp_us))
        .collect();
    rejected.sort();
    assert_eq!(rejected, [at(1), at(2), at(3), at(4), at(6)]);
}

/// An ingest of `url` exits 10 saying each of `said`, and commits nothing; with
/// `--on-missing-offsets earliest` it ingests the one message left, from offset `from`.
fn lost_then_go_on(d: &Data, url: &str, said: &[&str], from: i64) {
    let out = d.run_env(&["ingest", "--source", url], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{err}");
    for s in said {
        assert!(err.contains(s), "{s} in {err}");
    }
    let args = [
        "ingest",
        "--source",
        url,
        "--on-missing-offsets",
        "earliest",
    ];
    let r = d.ok(&args);
    assert_eq!(u(&r, "rows_out"), 1, "{r}");
    let warned = format!("going on from offset {from}");
    assert!(r["warnings"].to_string().contains(&warned), "{r}");
}

#[test]
fn messages_the_broker_no_longer_has_are_an_error_unless_told_to_go_on() {
    let Some(broker) = Broker::start("lost offsets") else {
        return;
    };
    let url = broker.topic("gone");
    let topic: Topic = url.parse().unwrap();
    send(
        &url,
        &[
            Some(&good(1, 100)),
            Some(&good(2, 200)),
            Some(&good(3, 300)),
        ],
    );
    let d = Data::new();
    d.ok(&["ingest", "--source", &url]);
    // The topic deleted and created again: the table has consumed offsets it no longer has.
    block_on(async {
        let conn = Connection::open(&topic).await.unwrap();
        conn.delete_topic().await.unwrap();
    });
    send(&url, &[Some(&good(4, 400))]);
    lost_then_go_on(
        &d,
        &url,
        &["up to offset 3", "--on-missing-offsets earliest"],
        0,
    );
}

#[test]
fn killed_at_random_while_messages_arrive_follow_ends_equal_to_a_batch_run() {
    let Some(broker) = Broker::start("kill -9 of a stream from a topic") else {
        return;
    };
    let url = broker.topic("kill");
    let kills_wanted: u32 = std::env::var("KAFKA_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let producer_dir = Data::new();
    let mut producer = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(producer_dir.path())
        .args([
            "--json", "generate", "--follow", "--to", &url, "--rate", "10000",
        ])
        .args([
            "--rows-per-file",
            "1000",
            "--duration",
            "25s",
            "--customers",
            "300",
        ])
        .args(["--dirty-rate", "0.05", "--partitions", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Data::new();
    let cql = Cql::new();
    let mut rng = rand::rng();
    let mut kills = 0;
    // Wait for the topic to exist.
    std::thread::sleep(Duration::from_millis(500));
    while kills < kills_wanted || producer.try_wait().unwrap().is_none() {
        let mut cmd = d.command(
            &["run", "--follow", "--source", &url, "--interval", "100ms"],
            &[],
        );
        for (k, v) in cql.env() {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kills % 2 == 0 {
            // At a random moment.
            std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        } else {
            // Soon after a commit of ingest (in aggregate, profiles or load), so that the
            // stream progresses between kills however slow the machine is.
            let from = crate::common::version(&d.table(TX));
            let t = Instant::now();
            while crate::common::version(&d.table(TX)) == from
                && t.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(producer.wait().unwrap().success());
    // The killed streams committed as they went (the kills fell between and inside runs).
    let committed = crate::common::version(&d.table(TX)).unwrap_or(0);
    eprintln!(
        "{kills} kill(s); customer_transactions at version {committed} before the last start"
    );
    assert!(
        committed >= u64::from(kills_wanted) / 2,
        "the killed streams committed {committed} versions"
    );
    let out = cql.run(
        &d,
        &[
            "run",
            "--follow",
            "--source",
            &url,
            "--until-idle",
            "--interval",
            "100ms",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cql.ok(&d, &["verify"]);

    // Every message of the topic in one clean batch run.
    let batch = Data::new();
    let cql2 = Cql::new();
    cql2.ok(&batch, &["run", "--source", &url]);
    let (a, b) = (world(&d, &cql), world(&batch, &cql2));
    assert_eq!(a, b);
    let ids = rows(&d.table(TX));
    assert!(ids.len() > 10_000, "{}", ids.len());
    let mut distinct: Vec<_> = ids.iter().map(|r| &r.0).collect();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "every transaction once");
}

/// Wait (at most 90 s) until `customer_transactions` holds `n` rows.
fn until_rows(d: &Data, n: usize) {
    let t = Instant::now();
    loop {
        let have = if crate::common::version(&d.table(TX)).is_some() {
            rows(&d.table(TX)).len()
        } else {
            0
        };
        if have == n {
            return;
        }
        assert!(have < n, "{have} rows, more than the {n} sent");
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "{have} of {n} rows after 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stream_rides_out_a_broker_restart_and_reads_a_partition_added_meanwhile() {
    if std::env::var("KAFKA_BOOTSTRAP").is_ok() {
        eprintln!(
            "\n*** SKIPPED: the broker restart test stops and edits its own tansu broker; \
             with KAFKA_BOOTSTRAP it is NOT run ***\n"
        );
        return;
    }
    let Some(seaweed) = crate::object_store::Seaweed::start("a broker restart") else {
        return;
    };
    // tansu's `s3://` storage keeps the topics across a restart (its `memory://` does not).
    let storage = format!("s3://{}/", crate::object_store::BUCKET);
    let Some(mut broker) = Broker::with_storage("a broker restart", storage, seaweed.env()) else {
        return;
    };
    let url = broker.topic("restart");
    let producer = Data::new();
    let send = |partitions: &str| {
        let r = producer.ok(&[
            "generate",
            "--follow",
            "--to",
            &url,
            "--rate",
            "5000",
            "--rows-per-file",
            "1000",
            "--duration",
            "1s",
            "--customers",
            "300",
            "--partitions",
            partitions,
        ]);
        u(&r, "messages") as usize
    };
    let mut sent = send("2");
    let d = Data::new();
    let cql = Cql::new();
    let mut cmd = d.command(
        &["run", "--follow", "--source", &url, "--interval", "100ms"],
        &[],
    );
    for (k, v) in cql.env() {
        cmd.env(k, v);
    }
    let follow = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_rows(&d, sent);

    // The broker goes away; while it is down, a partition is added to the topic. tansu 0.6.0
    // has no CreatePartitions: the test raises the partition count in the topic's metadata
    // in tansu's storage (`clusters/tansu_cluster/meta.json`, `num_partitions`), which is
    // what that request changes.
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    block_on(async {
        use object_store::{ObjectStoreExt, PutPayload};
        let s3 = seaweed.client();
        let meta = object_store::path::Path::from("clusters/tansu_cluster/meta.json");
        let text = s3.get(&meta).await.unwrap().bytes().await.unwrap();
        let text = String::from_utf8(text.to_vec()).unwrap();
        let grown = text.replace("\"num_partitions\":2", "\"num_partitions\":3");
        assert_ne!(grown, text, "{text}");
        s3.put(&meta, PutPayload::from(grown.into_bytes()))
            .await
            .unwrap();
    });
    broker.resume();
    sent += send("2");
    until_rows(&d, sent);

    let pid = follow.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    // (The outage is ridden out inside the ingest step, whose requests are retried for 15 s,
    // or counted as an error of a micro-batch and tried again: either way the stream goes on.)
    cql.ok(&d, &["verify"]);
    let topic: Topic = url.parse().unwrap();
    let third = format!("pipeline.kafka:{}/2", topic.name);
    assert!(
        txns(&d.table(TX))
            .iter()
            .any(|(app, v)| *app == third && *v > 0)
    );
    // Every message once: as a clean run over the topic.
    let batch = Data::new();
    batch.ok(&["ingest", "--source", &url]);
    assert_eq!(rows(&d.table(TX)), rows(&batch.table(TX)));
}

/// The Python with librdkafka (PyPI confluent-kafka) that `make test` installs, if any.
fn rdkafka_python() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kafka-venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    eprintln!(
        "\n*** SKIPPED: librdkafka (PyPI confluent-kafka) is not installed in target/kafka-venv \
         (`make test` installs it when it can): reading and writing with the standard Kafka \
         client was NOT tested ***\n"
    );
    None
}

fn rdkafka(py: &PathBuf, args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/rdkafka_client.py");
    let out = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn librdkafka_and_the_pipeline_read_each_others_messages() {
    let Some(broker) = Broker::start("librdkafka interoperability") else {
        return;
    };
    let Some(py) = rdkafka_python() else {
        return;
    };
    // librdkafka's producer (batched, keyed) -> our source: every message, the sum exact.
    let url = broker.topic("fromrd");
    let topic: Topic = url.parse().unwrap();
    let sent = rdkafka(&py, &[&broker.bootstrap, &topic.name, "produce", "20000"]);
    assert_eq!(sent["unsent"], 0, "{sent}");
    let d = Data::new();
    let r = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&r, "rows_out"), 20_000, "{r}");
    assert_eq!(r["quarantine_reasons"]["unparseable_message"], 1, "{r}");
    let out = d.run_env(
        &["sql", "SELECT sum(amount) AS s FROM customer_transactions"],
        &[],
    );
    let sum = String::from_utf8_lossy(&out.stdout);
    assert!(
        sum.contains(sent["sum"].as_str().unwrap()),
        "{sum} vs {sent}"
    );

    // Our producer -> librdkafka's consumer: every message we sent.
    let ours = broker.topic("tord");
    let ours_topic: Topic = ours.parse().unwrap();
    let producer = Data::new();
    let made = produce(&producer, &ours, "20000", "1s", "3");
    let read = rdkafka(&py, &[&broker.bootstrap, &ours_topic.name, "consume"]);
    assert_eq!(
        read["messages"].as_u64(),
        Some(u(&made, "messages")),
        "{read} vs {made}"
    );
}

#[test]
fn messages_removed_by_retention_before_they_were_ingested_stop_the_run() {
    if std::env::var("KAFKA_BOOTSTRAP").is_ok() {
        eprintln!(
            "\n*** SKIPPED: the retention test removes tansu's stored batches; with KAFKA_BOOTSTRAP it is NOT run ***\n"
        );
        return;
    }
    let Some(seaweed) = crate::object_store::Seaweed::start("retention") else {
        return;
    };
    let storage = format!("s3://{}/", crate::object_store::BUCKET);
    let Some(broker) = Broker::with_storage("retention", storage, seaweed.env()) else {
        return;
    };
    let url = broker.topic("retained");
    let topic: Topic = url.parse().unwrap();
    // Each send is one record batch: offsets 0-1, then 2, then 3.
    send(&url, &[Some(&good(1, 100)), Some(&good(2, 200))]);
    let d = Data::new();
    assert_eq!(u(&d.ok(&["ingest", "--source", &url]), "rows_out"), 2);
    send(&url, &[Some(&good(3, 300))]);
    send(&url, &[Some(&good(4, 400))]);
    // Retention removes the oldest batches, here up to offset 2, which was never ingested.
    // tansu keeps a batch as the object `.../partitions/P/records/<base offset>.batch`, and
    // its earliest offset is the oldest object's (tansu-storage 0.6.0 `dynostore.rs`,
    // `list_offsets`); it leaves DeleteRecords unimplemented there, so the test removes them.
    block_on(async {
        use object_store::ObjectStoreExt;
        let s3 = seaweed.client();
        for base in [0, 2] {
            let batch = format!(
                "clusters/tansu_cluster/topics/{}/partitions/0000000000/records/{base:020}.batch",
                topic.name
            );
            s3.delete(&object_store::path::Path::from(batch))
                .await
                .unwrap();
        }
    });
    let lost = "earliest offset is 3: messages 2..2 were removed (retention)";
    lost_then_go_on(&d, &url, &[lost], 3);
}

/// The one row `query` answers, as CSV (through `pipeline sql`: delta-rs's reader).
fn sql_row(d: &Data, query: &str) -> String {
    let out = d.run_env(&["sql", query, "--format", "csv"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{query}: {err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{query}: {text}");
    text.lines().nth(1).unwrap().to_string()
}

/// A `customer_transactions` table as the pipeline made it before the Kafka source (without
/// the lineage columns), holding `ids` (customer 1, 10.00 each, on 2026-01-05), written by
/// delta-rs itself.
fn table_from_before_the_lineage_columns(table: &std::path::Path, ids: &[&str]) {
    use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::Schema;
    use deltalake::kernel::StructType;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    use std::sync::Arc;
    let now = pipeline::schema::TRANSACTIONS.clone();
    let older = Arc::new(Schema::new(now.fields()[..now.fields().len() - 2].to_vec()));
    let landing = tempfile::tempdir().unwrap();
    let file = landing.path().join("old.parquet");
    let raws: Vec<_> = ids
        .iter()
        .map(|id| crate::common::raw(id, crate::common::noon("2026-01-05")))
        .collect();
    crate::common::write_raw(&file, &raws);
    let raw = crate::common::read_parquet(&file).remove(0);
    let n = raw.num_rows();
    let mut cols: Vec<ArrayRef> = raw.columns().to_vec();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
    let days = day
        .signed_duration_since(chrono::NaiveDate::default())
        .num_days() as i32;
    cols.push(Arc::new(Date32Array::from(vec![days; n])));
    cols.push(Arc::new(StringArray::from(vec!["old.parquet"; n])));
    let cols = cols
        .into_iter()
        .zip(older.fields())
        .map(|(c, f)| deltalake::arrow::compute::cast(&c, f.data_type()).unwrap())
        .collect();
    let batch = RecordBatch::try_new(older.clone(), cols).unwrap();
    let kernel: StructType = older.as_ref().try_into_kernel().unwrap();
    std::fs::create_dir_all(table).unwrap();
    block_on(async {
        let url = url::Url::from_directory_path(table).unwrap();
        let t = deltalake::DeltaTable::try_from_url(url)
            .await
            .unwrap()
            .create()
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(["transaction_date"])
            .await
            .unwrap();
        t.write(vec![batch]).await.unwrap();
    });
}

#[test]
fn a_table_from_before_the_kafka_source_gains_the_lineage_columns_by_a_schema_update() {
    let Some(broker) = Broker::start("a table from before the lineage columns") else {
        return;
    };
    let url = broker.topic("upgrade");
    let d = Data::new();
    let old_ids = [
        "00000000-0000-4000-8000-00000000a001",
        "00000000-0000-4000-8000-00000000a002",
    ];
    table_from_before_the_lineage_columns(&d.table(TX), &old_ids);
    let id_before = crate::common::table_id(&d.table(TX));
    let sent_us = send(&url, &[Some(&good(1, 100)), Some(&good(2, 200))]);
    let r = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&r, "rows_out"), 2, "{r}");

    // The same table (a metaData update, not a new table), older rows' lineage null.
    assert_eq!(crate::common::table_id(&d.table(TX)), id_before);
    let got: Vec<_> = lineage(&d.table(TX))
        .into_iter()
        .map(|r| (r.key, r.timestamp_us))
        .collect();
    let k = |i: i64| (Some(format!("k{i}").into_bytes()), Some(sent_us + i * 1000));
    assert_eq!(
        got,
        [k(0), k(1), (None, None), (None, None)],
        "by id: the new ones first"
    );
    // Through delta-rs's reader (our sql): the older files read with nulls in the new columns.
    let counts = sql_row(
        &d,
        "SELECT count(*) AS n, count(message_key) AS keyed, \
         count(message_timestamp) AS stamped FROM customer_transactions",
    );
    assert_eq!(counts, "4,2,2");
    // And the stages downstream read it: all four rows aggregated.
    let a = d.ok(&["aggregate"]);
    assert_eq!(u(&a, "rows_read"), 4, "{a}");
}

#[test]
fn arrow_messages_from_the_producer_and_from_polars_are_ingested_beside_json_ones() {
    let Some(broker) = Broker::start("Arrow IPC messages") else {
        return;
    };
    // The producer's Arrow messages: the same rows as its own files, through the file source.
    let url = broker.topic("arrow");
    let producer = Data::new();
    let mut args = vec![
        "generate",
        "--follow",
        "--to",
        &url,
        "--message-format",
        "arrow",
    ];
    args.extend([
        "--rate",
        "20000",
        "--rows-per-file",
        "2000",
        "--duration",
        "2s",
    ]);
    args.extend([
        "--customers",
        "300",
        "--dirty-rate",
        "0.5",
        "--partitions",
        "2",
    ]);
    let sent = producer.ok(&args);
    let d = Data::new();
    let r = d.ok(&["ingest", "--source", &url]);
    let unparseable = r["quarantine_reasons"]["unparseable_message"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(u(&r, "rows_in"), u(&sent, "rows") + unparseable, "{r}");
    assert!(
        u(&sent, "messages") * 100 < u(&sent, "rows"),
        "many rows per message: {sent}"
    );
    let files = producer_files(&producer, &url);
    files.ok(&["ingest"]);
    assert_eq!(rows(&d.table(TX)), rows(&files.table(TX)));
    let q = quarantine(&d);
    assert_eq!(
        q.len() as u64 - unparseable,
        quarantine(&files).len() as u64
    );
    // Arrow messages have no key here; every row has its message's timestamp.
    assert!(
        lineage(&d.table(TX))
            .iter()
            .all(|r| r.key.is_none() && r.timestamp_us.is_some())
    );

    // A stream written by Polars (its own Arrow implementation: string views, a categorical,
    // Decimal(12, 2)), between two JSON messages, and the same stream cut short.
    let Some(python) = crate::clients::venv_bin(
        "seaweedfs-venv",
        "python",
        "reading an Arrow IPC message written by Polars",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("polars.arrows");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/polars_ipc.py");
    let out = Command::new(&python)
        .args([script, file.to_str().unwrap(), "100"])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "\n*** SKIPPED: Polars could not write an Arrow IPC stream ({}): reading one was NOT tested ***\n",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let polars_sum = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let ipc = std::fs::read(&file).unwrap();
    let url = broker.topic("polars");
    let sent_us = send(
        &url,
        &[
            Some(&good(1001, 100)),
            Some(&ipc),
            Some(&ipc[..ipc.len() / 2]),
            Some(&good(1002, 200)),
        ],
    );
    let d = Data::new();
    let r = d.ok(&["ingest", "--source", &url]);
    assert_eq!(u(&r, "rows_in"), 103, "{r}");
    assert_eq!(u(&r, "rows_out"), 102, "{r}");
    assert_eq!(r["quarantine_reasons"]["unparseable_message"], 1, "{r}");
    let examples = r["kafka"]["unparseable_examples"].as_array().unwrap();
    assert_eq!(examples[0]["offset"], 2, "{r}");
    let polars_rows: Vec<_> = lineage(&d.table(TX))
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"k1"))
        .collect();
    assert_eq!(polars_rows.len(), 100);
    assert!(
        polars_rows
            .iter()
            .all(|r| r.timestamp_us == Some(sent_us + 1000))
    );
    let sum = sql_row(
        &d,
        "SELECT sum(amount) AS s FROM customer_transactions WHERE message_key = X'6B31'",
    );
    assert_eq!(sum, polars_sum);
}

/// A landing file written with the raw columns plus `extra` ones.
fn landing_file_with(d: &Data, name: &str, ids: &[&str], extra: Vec<(&str, ArrayRef)>) {
    let tmp = tempfile::tempdir().unwrap();
    let raws: Vec<_> = ids
        .iter()
        .map(|id| crate::common::raw(id, crate::common::noon("2026-01-05")))
        .collect();
    crate::common::write_raw(&tmp.path().join("raw.parquet"), &raws);
    let raw = crate::common::read_parquet(&tmp.path().join("raw.parquet")).remove(0);
    let schema = raw.schema();
    let mut cols: Vec<(&str, ArrayRef)> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(raw.columns().iter().cloned())
        .collect();
    cols.extend(extra);
    let batch = deltalake::arrow::array::RecordBatch::try_from_iter(cols).unwrap();
    let path = crate::common::landing(d).join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut w =
        deltalake::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_landing_file_keeps_lineage_columns_it_has_and_ignores_unrelated_ones_of_those_names() {
    use deltalake::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;
    let d = Data::new();
    let a = [
        "00000000-0000-4000-8000-00000000b001",
        "00000000-0000-4000-8000-00000000b002",
    ];
    let b = ["00000000-0000-4000-8000-00000000c001"];
    // Exported from a topic: a text key and a millisecond timestamp, converted.
    let exported: Vec<(&str, ArrayRef)> = vec![
        (
            "message_key",
            Arc::new(StringArray::from(vec![Some("k1"), None])),
        ),
        (
            "message_timestamp",
            Arc::new(TimestampMillisecondArray::from(vec![5, 6]).with_timezone("UTC")),
        ),
    ];
    landing_file_with(&d, "exported.parquet", &a, exported);
    // Another producer's own `message_key`, a number: not lineage, ignored as extra columns are.
    let unrelated: Vec<(&str, ArrayRef)> =
        vec![("message_key", Arc::new(Int64Array::from(vec![7])))];
    landing_file_with(&d, "other.parquet", &b, unrelated);
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_out"), 3, "{r}");
    let got: Vec<_> = lineage(&d.table(TX))
        .into_iter()
        .map(|r| (r.id.unwrap(), r.key, r.timestamp_us))
        .collect();
    assert_eq!(
        got,
        [
            (a[0].to_string(), Some(b"k1".to_vec()), Some(5_000)),
            (a[1].to_string(), None, Some(6_000)),
            (b[0].to_string(), None, None),
        ]
    );
}
