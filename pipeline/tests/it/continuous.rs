//! What continuous use needs from the batch stages: a bad file set aside instead of stopping
//! the stream, an optional event-time watermark that makes old days final, and `run
//! --follow` itself: killed at random, through a ScyllaDB outage, stopped by SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::aggregate::{oracle, table};
use crate::common::{Data, landing, noon, quarantine, raw, rows, u, version, walk, write_raw};
use crate::crash::world;
use crate::scylla::Cql;

const TX: &str = "customer_transactions";

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn run(d: &Data, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = d.run_env(args, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, err)
}

#[test]
fn a_bad_file_stops_ingest_by_default_and_is_set_aside_with_skip_until_it_is_fixed() {
    let d = Data::new();
    write_raw(
        &landing(&d).join("a.parquet"),
        &[
            raw(&id(1), noon("2024-01-01")),
            raw(&id(2), noon("2024-01-01")),
        ],
    );
    let bad = landing(&d).join("b.parquet");
    std::fs::write(&bad, b"not parquet at all").unwrap();

    // Default: stop, nothing committed, the file named.
    let (code, _, err) = run(&d, &["ingest"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("b.parquet"), "{err}");
    assert!(version(&d.table(TX)) <= Some(0), "no data committed");

    // Skip: the good file lands, the bad one is reported and the run exits 9.
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(9), "{err}");
    assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    assert_eq!(r["set_aside_files"][0]["path"], "b.parquet", "{r}");
    assert!(
        r["set_aside_files"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("Parquet"),
        "{r}"
    );
    assert_eq!(rows(&d.table(TX)).len(), 2);

    // Recorded: the next run neither reads it again nor reports it again.
    let (code, r, err) = run(&d, &["ingest", "--on-bad-file", "skip"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&r, "files_ingested"), 0, "{r}");
    assert!(r["set_aside_files"].as_array().unwrap().is_empty(), "{r}");

    // Fixed in place: its rows are ingested, once.
    write_raw(&bad, &[raw(&id(3), noon("2024-01-02"))]);
    let r = d.ok(&["ingest"]);
    assert_eq!(u(&r, "files_ingested"), 1, "{r}");
    assert_eq!(rows(&d.table(TX)).len(), 3);
    assert_eq!(u(&d.ok(&["ingest"]), "files_ingested"), 0);
}

#[test]
fn with_a_watermark_late_rows_for_final_days_are_quarantined_and_newer_days_stay_open() {
    let d = Data::new();
    let days = [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ];
    let first: Vec<_> = (0..5)
        .map(|i| raw(&id(i), noon(days[i as usize])))
        .collect();
    write_raw(&landing(&d).join("1.parquet"), &first);
    d.ok(&["ingest", "--finalize-after", "2d"]);
    d.ok(&["aggregate"]);
    // Latest transaction 01-05 12:00, two days earlier 01-03 12:00: days before 01-03 are final.
    write_raw(
        &landing(&d).join("2.parquet"),
        &[
            raw(&id(10), noon("2024-01-02")),
            raw(&id(11), noon("2024-01-03")),
            raw(&id(12), noon("2024-01-04")),
        ],
    );
    let r = d.ok(&["ingest", "--finalize-after", "2d"]);
    assert_eq!(u(&r, "rows_out"), 2, "{r}");
    assert_eq!(u(&r, "rows_quarantined"), 1, "{r}");
    assert_eq!(
        quarantine(&d),
        vec![(id(10), "2024-01-02".into(), "late_beyond_watermark".into())]
    );
    let a = d.ok(&["aggregate"]);
    assert_eq!(
        u(&a, "days_recomputed"),
        2,
        "the final day is not reopened: {a}"
    );

    // Without the option (the default) a late row reopens its day.
    let plain = Data::new();
    write_raw(&landing(&plain).join("1.parquet"), &first);
    plain.ok(&["ingest"]);
    write_raw(
        &landing(&plain).join("2.parquet"),
        &[raw(&id(10), noon("2024-01-02"))],
    );
    let r = plain.ok(&["ingest"]);
    assert_eq!(u(&r, "rows_out"), 1, "{r}");
    assert!(quarantine(&plain).is_empty());
}

/// `pipeline --data-dir D --json <args>` as a child with ScyllaDB's address in its env.
fn spawn(d: &Data, cql: &Cql, args: &[&str], stdout: Stdio) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.arg("--data-dir").arg(d.path()).arg("--json").args(args);
    cmd.env_remove("PIPELINE_FAILPOINTS");
    for (k, v) in cql.env() {
        cmd.env(k, v);
    }
    Running(cmd.stdout(stdout).stderr(Stdio::null()).spawn().unwrap())
}

/// Land 50 rows (ids `first`.., at noon of `day`) as the landing file `name`.
fn land_50(d: &Data, name: &str, first: u32, day: &str) {
    let rows: Vec<_> = (first..first + 50)
        .map(|n| raw(&id(n), noon(day)))
        .collect();
    write_raw(&landing(d).join(name), &rows);
}

/// A child killed when dropped: a test that fails while a `run --follow` runs does not leave
/// it running (it would run until the machine stops).
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already waited for: nothing to kill (Ok either way).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The JSON lines a child prints, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx
}

/// Wait (at most a minute) for a line that satisfies `pred`; returns it.
fn wait_for(
    rx: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(_) => panic!("no micro-batch with {what} within a minute"),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on the metrics endpoint with extra headers: the response's head (lowercased)
/// and body.
fn get(port: u16, path: &str, headers: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").as_bytes(),
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

fn metrics(port: u16) -> String {
    let (head, body) = get(port, "/metrics", "");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    body
}

/// `promtool check metrics` (Debian's prometheus package) accepts the scrape with no
/// warning; without promtool, said and skipped (`make test` installs it).
fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the scrape was not checked by it");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{scrape}");
    assert!(said.trim().is_empty(), "promtool warns: {said}\n{scrape}");
}

#[test]
fn follow_survives_a_scylla_outage_and_a_bad_file_and_stops_cleanly_on_sigterm() {
    let d = Data::new();
    let cql = Cql::new();
    let Some(server) = cql.server.as_ref() else {
        eprintln!("skipped against a real ScyllaDB: an outage needs the in-repo test server");
        return;
    };
    let land = |batch: &str, start: &str, rows: &str| {
        d.ok(&[
            "generate",
            "--rows",
            rows,
            "--days",
            "2",
            "--customers",
            "300",
            "--batch",
            batch,
            "--start-date",
            start,
            "--rows-per-file",
            "1000",
        ]);
    };
    land("1", "2024-01-01", "4000");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn(
        &d,
        &cql,
        &[
            "run",
            "--follow",
            "--interval",
            "100ms",
            "--metrics-addr",
            &addr,
        ],
        Stdio::piped(),
    );
    let rx = lines_of(&mut child);
    wait_for(&rx, "rows loaded", |b| u(b, "rows_loaded") > 0);

    // ScyllaDB goes away; files keep landing, one of them unusable.
    server.set_down(true);
    land("2", "2024-01-02", "3000");
    std::fs::write(landing(&d).join("bad.parquet"), b"not parquet").unwrap();
    // In one micro-batch or two, whichever way the files fall.
    let (mut set_aside, mut ingested) = (false, false);
    while !(set_aside && ingested) {
        let b = wait_for(
            &rx,
            "files ingested and one set aside during the outage",
            |b| u(b, "files") > 0 || !b["set_aside"].as_array().unwrap().is_empty(),
        );
        if let Some(f) = b["set_aside"].as_array().unwrap().first() {
            assert_eq!(f["path"], "bad.parquet", "{b}");
            set_aside = true;
        }
        if u(&b, "files") > 0 {
            assert!(
                b["aggregate_mode"].is_string(),
                "aggregated during the outage: {b}"
            );
            assert!(u(&b, "backlog_files") > 0, "{b}");
            assert!(
                b["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e.as_str().unwrap().starts_with("load")),
                "{b}"
            );
            ingested = true;
        }
    }

    // Back: the backlog is loaded.
    server.set_down(false);
    let b = wait_for(&rx, "the backlog loaded", |b| {
        u(b, "files_acknowledged") > 0 && u(b, "backlog_files") == 0
    });
    assert!(u(&b, "rows_loaded") > 0, "{b}");
    let m = metrics(port);
    assert!(m.contains("pipeline_files_set_aside_total 1"), "{m}");
    assert!(m.contains("pipeline_errors_total{stage=\"load\"}"), "{m}");
    assert!(m.contains("pipeline_freshness_seconds_count"), "{m}");
    assert!(
        m.contains("pipeline_step_duration_seconds_count{step=\"load\"}"),
        "{m}"
    );
    // By the conventions: what Prometheus asks for (OpenMetrics) served as such, the classic
    // format to others (it was OpenMetrics text served as text/plain; version=0.0.4), a
    // query string ignored (it was 404), /healthz, and promtool accepts the scrape.
    let accept = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4\r\n";
    let (head, open) = get(port, "/metrics?x=1", accept);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    let (head, _) = get(port, "/metrics", "");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(m.contains("# TYPE pipeline_rows_in_total counter"), "{m}");
    let (head, body) = get(port, "/healthz", "");
    assert!(
        head.starts_with("http/1.1 200") && body == "ok\n",
        "{head} {body}"
    );
    assert!(get(port, "/nope", "").0.starts_with("http/1.1 404"));
    promtool_accepts(&m);
    // The container's HEALTHCHECK: healthy while the endpoint answers, not on a dead port.
    let health = |addr: &str| d.run_env(&["health"], &[("PIPELINE_METRICS_ADDR", addr)]);
    let up = health(&addr);
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stdout)
    );
    let down = health(&format!("127.0.0.1:{}", free_port()));
    assert_eq!(down.status.code(), Some(1));
    let down: serde_json::Value = serde_json::from_slice(&down.stdout).unwrap();
    assert_eq!(down["healthy"], false, "{down}");

    // SIGTERM: the current micro-batch ends, a summary, exit 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let summary = wait_for(&rx, "the summary", |v| v.get("stopped_by").is_some());
    assert_eq!(summary["stopped_by"], "signal", "{summary}");
    assert_eq!(u(&summary, "backlog_files"), 0, "{summary}");
    assert!(u(&summary, "errors") > 0, "{summary}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    cql.ok(&d, &["verify"]);
    std::fs::remove_file(landing(&d).join("bad.parquet")).unwrap(); // the oracle reads every file
    assert_eq!(table(&d), oracle(&d));
}

#[test]
fn killed_at_random_while_files_land_follow_ends_equal_to_a_batch_run() {
    let d = Data::new();
    let cql = Cql::new();
    let mut producer = spawn(
        &d,
        &cql,
        &[
            "generate",
            "--follow",
            "--rate",
            "20000",
            "--rows-per-file",
            "2000",
            "--duration",
            "6s",
            "--customers",
            "300",
            "--dirty-rate",
            "0.02",
        ],
        Stdio::null(),
    );
    let mut rng = rand::rng();
    let mut kills = 0;
    while producer.try_wait().unwrap().is_none() {
        let mut child = spawn(
            &d,
            &cql,
            &["run", "--follow", "--interval", "100ms"],
            Stdio::null(),
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(producer.wait().unwrap().success());
    let out = cql.run(
        &d,
        &["run", "--follow", "--until-idle", "--interval", "100ms"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cql.ok(&d, &["verify"]);

    // The same files in one batch run.
    let (batch, cql2) = batch_run_of(&d);
    eprintln!("{kills} kill(s)");
    assert_eq!(world(&d, &cql), world(&batch, &cql2));
}

#[test]
fn an_ingest_commit_lands_on_top_of_a_compaction_that_happened_while_it_ran() {
    let d = Data::new();
    for (batch, start) in [("1", "2024-01-01"), ("2", "2024-01-01")] {
        d.ok(&[
            "generate",
            "--rows",
            "2000",
            "--days",
            "2",
            "--batch",
            batch,
            "--start-date",
            start,
        ]);
        d.ok(&["ingest"]); // two files per day: something to compact
    }
    d.ok(&[
        "generate",
        "--rows",
        "1000",
        "--days",
        "1",
        "--batch",
        "3",
        "--start-date",
        "2024-01-02",
    ]);
    let gate = d.path().join("gate");
    std::fs::write(&gate, b"").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(d.path())
        .args(["--json", "ingest"])
        .env(
            "PIPELINE_PAUSE",
            format!("ingest.after_plan:{}", gate.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reached = d.path().join("gate.reached");
    let start = Instant::now();
    while !reached.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ingest never paused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let compacted = d.ok(&["maintain"]);
    assert!(
        compacted["tables"][0]["files_compacted"].as_u64().unwrap() > 0,
        "{compacted}"
    );
    std::fs::remove_file(&gate).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "not a conflict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows(&d.table(TX)).len(), 5000);
    d.ok(&["aggregate"]);
    assert_eq!(table(&d), oracle(&d));
}

/// The table properties of `table`'s latest `metaData` (its commit files, in order).
fn table_properties(table: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    let mut config = serde_json::Map::new();
    for c in crate::common::commit_files(table) {
        for line in std::fs::read_to_string(c).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(m) = action["metaData"]["configuration"].as_object() {
                config = m.clone();
            }
        }
    }
    config
}

/// A stream does not list again a landing folder whose files it consumed while the folder is
/// unchanged (it walks everything again only once a minute): a file that lands later in such
/// a folder, created there or renamed into it, changes the folder and is ingested at once.
#[test]
fn a_file_landing_in_a_folder_the_stream_consumed_earlier_is_ingested_at_once() {
    let d = Data::new();
    let cql = Cql::new();
    let land = |name: &str, first: u32| land_50(&d, name, first, "2024-01-01");
    land("old/a.parquet", 0);
    let mut child = spawn(
        &d,
        &cql,
        &[
            "run",
            "--follow",
            "--interval",
            "100ms",
            "--profiles-every",
            "1h",
        ],
        Stdio::piped(),
    );
    let lines = lines_of(&mut child);
    wait_for(&lines, "the first file", |b| b["files"] == 1);
    let arrives = |what: &str| {
        let landed = Instant::now();
        let b = wait_for(&lines, what, |b| b["files"] == 1);
        assert_eq!(u(&b, "rows_in"), 50, "{b}");
        // Well before the next whole walk: the folder was listed because it changed.
        assert!(landed.elapsed() < Duration::from_secs(15), "{what}: {b}");
    };
    // The folder is kept once it has been settled for 2 s: wait past that, and a few
    // micro-batches more.
    std::thread::sleep(Duration::from_secs(4));
    land("old/b.parquet", 100);
    arrives("a file created in the consumed folder");
    std::thread::sleep(Duration::from_secs(4));
    land("_staging/c.parquet", 200);
    std::fs::rename(
        landing(&d).join("_staging/c.parquet"),
        landing(&d).join("old/c.parquet"),
    )
    .unwrap();
    arrives("a file renamed into the consumed folder");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(&lines, "the summary", |v| v.get("stopped_by").is_some());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(rows(&d.path().join(TX)).len(), 150);
}

/// A stream gives the tables it writes the standard retention properties (so any Delta
/// engine's log cleanup and VACUUM agree with it) and refuses a vacuum retention too short
/// for a reader. Its profiles follow their cadence: with `--profiles-every 1h` they are
/// brought up to date after the first micro-batch (beside the loop), not after the next
/// ones, and once more when the stream stops, which leaves every table (profiles too) equal to a batch run's.
#[test]
fn a_stream_sets_its_retention_and_updates_the_profiles_on_their_cadence() {
    let d = Data::new();
    let cql = Cql::new();
    let out = d.run_env(&["run", "--follow", "--vacuum-retention", "1min"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shorter than 5 minutes"), "{err}");

    let land = |name: &str, first: u32, day: &str| land_50(&d, name, first, day);
    land("a.parquet", 0, "2024-01-01");
    let mut child = spawn(
        &d,
        &cql,
        &[
            "run",
            "--follow",
            "--interval",
            "100ms",
            "--profiles-every",
            "1h",
            "--log-retention",
            "3days",
            "--vacuum-retention",
            "20min",
        ],
        Stdio::piped(),
    );
    let lines = lines_of(&mut child);
    let first = wait_for(&lines, "a file", |b| b["files"] == 1);
    // The profiles run beside the loop: a micro-batch reports the run that finished in it.
    let profiled = if first["profile_rows"].is_null() {
        wait_for(&lines, "the first profiles", |b| {
            !b["profile_rows"].is_null()
        })
    } else {
        first
    };
    assert!(
        profiled["profile_rows"].as_u64().is_some_and(|n| n > 0),
        "{profiled}"
    );
    land("b.parquet", 100, "2024-01-02");
    let second = wait_for(&lines, "a file", |b| b["files"] == 1);
    assert!(second["profile_rows"].is_null(), "{second}");
    land("c.parquet", 200, "2024-01-03");
    let third = wait_for(&lines, "a file", |b| b["files"] == 1);
    assert!(third["profile_rows"].is_null(), "{third}");
    // SIGTERM: the profiles are brought up to date before the stream stops.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let last = wait_for(&lines, "the profiles", |b| {
        b.get("profile_rows").is_some_and(|p| !p.is_null())
    });
    assert!(
        last["profile_rows"].as_u64().is_some_and(|n| n > 0),
        "{last}"
    );
    assert!(child.wait().unwrap().success());

    for table in [
        "customer_transactions",
        "customer_daily_aggregates",
        "customer_profiles",
        "_pipeline/transaction_ids",
        "_pipeline/ingest_files",
    ] {
        let config = table_properties(&d.table(table));
        assert_eq!(
            config["delta.logRetentionDuration"], "interval 3 days",
            "{table}: {config:?}"
        );
        assert_eq!(
            config["delta.deletedFileRetentionDuration"], "interval 20 minutes",
            "{table}: {config:?}"
        );
    }

    let (batch, cql2) = batch_run_of(&d);
    assert_eq!(world(&d, &cql), world(&batch, &cql2));
}

/// A batch run (`run`, with its own CQL test server) over a copy of `d`'s landing files.
fn batch_run_of(d: &Data) -> (Data, Cql) {
    let batch = Data::new();
    let mut files = Vec::new();
    walk(&landing(d), &mut files);
    for f in files {
        let to = landing(&batch).join(f.strip_prefix(landing(d)).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap();
    }
    let cql = Cql::new();
    cql.ok(&batch, &["run"]);
    (batch, cql)
}
