//! Helpers: run the binary, read Delta tables back without going through our own code paths.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use serde_json::Value;

pub struct Data {
    pub dir: tempfile::TempDir,
    /// A data dir on an object store (`s3://…`) and the environment that reaches it; `dir` is
    /// then the local scratch space.
    pub remote: Option<(String, Vec<(&'static str, String)>)>,
}

/// A pipeline process waiting at a pause point ([`Data::paused_at`]).
pub struct Paused {
    child: std::process::Child,
    gate: PathBuf,
}

impl Paused {
    /// Let it go on, and wait for it to end.
    pub fn go_on(self) -> Output {
        std::fs::remove_file(&self.gate).unwrap();
        self.child.wait_with_output().unwrap()
    }
}

impl Data {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            remote: None,
        }
    }

    /// A data dir at `url` on an object store reached with `env`.
    pub fn on_store(url: String, env: Vec<(&'static str, String)>) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            remote: Some((url, env)),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run `pipeline --data-dir <dir> --json <args>` with extra environment variables.
    /// `pipeline <args>` (stdout and stderr piped), once it has reached the pause point
    /// `point` (`PIPELINE_PAUSE`); it waits there until [`Paused::go_on`].
    pub fn paused_at(&self, point: &str, args: &[&str], env: &[(&str, &str)]) -> Paused {
        let gate = self.path().join(format!("gate-{point}"));
        std::fs::write(&gate, "").unwrap();
        let pause = format!("{point}:{}", gate.display());
        let mut env = env.to_vec();
        env.push(("PIPELINE_PAUSE", &pause));
        let child = self
            .command(args, &env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run pipeline");
        let reached = PathBuf::from(format!("{}.reached", gate.display()));
        let t = std::time::Instant::now();
        while !reached.exists() {
            assert!(
                t.elapsed().as_secs() < 120,
                "pipeline {args:?} never reached {point}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Paused { child, gate }
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().expect("run pipeline")
    }

    /// The command `pipeline --data-dir <dir> --json <args>` with extra environment variables.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        match &self.remote {
            None => cmd.arg("--data-dir").arg(self.path()),
            Some((url, store_env)) => {
                cmd.envs(store_env.iter().map(|(k, v)| (k, v)));
                cmd.arg("--data-dir")
                    .arg(url)
                    .arg("--scratch-dir")
                    .arg(self.path())
            }
        };
        cmd.arg("--json").args(args);
        cmd.env_remove("PIPELINE_FAILPOINTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run and expect success; returns the JSON report.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.run_env(args, &[]);
        assert!(
            out.status.success(),
            "pipeline {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bad JSON from {args:?}: {e}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn table(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no integer `{key}`: {v}"))
}

/// Current version of a Delta table, read from the log folder (highest commit file).
pub fn version(table: &Path) -> Option<u64> {
    let log = table.join("_delta_log");
    std::fs::read_dir(log)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
}

/// Live data files of a Delta table with their `transaction_date` partition value, from
/// replaying the JSON log here (add, then remove), independently of the pipeline's code.
pub fn live_files(table: &Path) -> Vec<(PathBuf, String)> {
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut versions: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.retain(|p| p.extension().is_some_and(|x| x == "json"));
    versions.sort();
    for v in versions {
        for line in std::fs::read_to_string(&v).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(add) = action.get("add") {
                let date = add["partitionValues"]["transaction_date"]
                    .as_str()
                    .unwrap_or("null")
                    .to_string();
                live.insert(add["path"].as_str().unwrap().to_string(), date);
            } else if let Some(rm) = action.get("remove") {
                live.remove(rm["path"].as_str().unwrap());
            }
        }
    }
    live.into_iter()
        .map(|(path, date)| {
            (
                table.join(path.replace("%3A", ":").replace("%2F", "/")),
                date,
            )
        })
        .collect()
}

/// All record batches of one Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // By the Parquet schema, as a non-Arrow reader would (OPTIMIZE may embed view types).
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Every row of a Delta table as (transaction_id, partition date) pairs.
pub fn rows(table: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, date) in live_files(table) {
        for batch in read_parquet(&path) {
            let ids = batch
                .column_by_name("transaction_id")
                .unwrap()
                .as_string::<i32>();
            for i in 0..ids.len() {
                out.push((ids.value(i).to_string(), date.clone()));
            }
        }
    }
    out.sort();
    out
}

/// A raw transaction for hand-made landing files.
#[derive(Clone, Debug)]
pub struct Raw {
    pub id: String,
    pub customer: i64,
    pub ts_us: i64,
    pub cents: i128,
    pub status: &'static str,
}

/// A valid approved transaction of customer 1 at `ts_us` for 10.00.
pub fn raw(id: &str, ts_us: i64) -> Raw {
    Raw {
        id: id.to_string(),
        customer: 1,
        ts_us,
        cents: 1000,
        status: "approved",
    }
}

/// Microseconds since the epoch of a UTC date at noon.
pub fn noon(date: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// Write rows as a landing file in the contract's raw schema.
pub fn write_raw(path: &Path, rows: &[Raw]) {
    use deltalake::arrow::array::{
        Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use std::sync::Arc;
    let n = rows.len();
    let s = |v: Vec<&str>| Arc::new(StringArray::from(v)) as _;
    let batch = RecordBatch::try_new(
        pipeline::schema::RAW.clone(),
        vec![
            s(rows.iter().map(|r| r.id.as_str()).collect()),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.customer),
            )),
            Arc::new(Int64Array::from(vec![1i64; n])),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                Decimal128Array::from_iter_values(rows.iter().map(|r| r.cents))
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            s(vec!["grocery"; n]),
            s(vec!["online"; n]),
            s(rows.iter().map(|r| r.status).collect()),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = deltalake::parquet::arrow::ArrowWriter::try_new(
        File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The landing folder of a data dir.
pub fn landing(d: &Data) -> PathBuf {
    d.path().join("_raw/customer_transactions")
}

/// Quarantine rows as (transaction_id, day, reason), sorted.
pub fn quarantine(d: &Data) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, date) in live_files(&d.table("_quarantine/customer_transactions")) {
        for b in read_parquet(&path) {
            let ids = b
                .column_by_name("transaction_id")
                .unwrap()
                .as_string::<i32>();
            let why = b
                .column_by_name("rejection_reason")
                .unwrap()
                .as_string::<i32>();
            for i in 0..b.num_rows() {
                out.push((
                    ids.value(i).to_string(),
                    date.clone(),
                    why.value(i).to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Every value of a string column of a table's live files, sorted.
pub fn column_values(table: &Path, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, _) in live_files(table) {
        for b in read_parquet(&path) {
            let c = b.column_by_name(column).unwrap().as_string::<i32>();
            out.extend((0..b.num_rows()).map(|i| c.value(i).to_string()));
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Another engine (delta-rs itself) deletes every row of `day` from the Delta table at `table`.
pub fn delete_day(table: &Path, day: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(table).unwrap();
        let t = deltalake::open_table(url).await.unwrap();
        t.delete()
            .with_predicate(format!("transaction_date = '{day}'"))
            .await
            .unwrap();
    });
}

/// The JSON commit files of a table's log, oldest first.
pub fn commit_files(table: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// The table's id: that of the last `metaData` action in its log's JSON commits.
pub fn table_id(table: &Path) -> String {
    let mut id = None;
    for f in commit_files(table) {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(m) = v.get("metaData") {
                id = Some(m["id"].as_str().unwrap().to_string());
            }
        }
    }
    id.expect("a metaData action")
}

/// The values of `key` in JSON text exactly as written (`"total_amount": 5679.30` gives
/// `5679.30`), in order: what a parser that reads numbers as floats would lose.
pub fn json_tokens(text: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\":");
    text.match_indices(&needle)
        .map(|(i, _)| {
            text[i + needle.len()..]
                .trim_start()
                .split([',', '}', '\n'])
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}
