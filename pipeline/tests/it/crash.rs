//! Crash safety, shown by killing it: each stage runs as a child process and is killed
//! (SIGKILL, or `abort` at a failpoint, which is the same to the files) at chosen points in
//! the code and at random times; then the pipeline is rerun to completion and the Delta tables
//! and the ScyllaDB contents (on the CQL test server) must equal those of a clean run.
//!
//! `CRASH_KILLS` random kills per stage (default 2; `make test-crash` uses 12).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::aggregate::{Agg, table};
use crate::common::{Data, rows};
use crate::profiles::{Profiles, profiles_table};
use crate::scylla::Cql;

const TX: &str = "customer_transactions";
const Q: &str = "_quarantine/customer_transactions";

const BATCHES: [&[&str]; 2] = [
    &[
        "generate",
        "--rows",
        "20000",
        "--days",
        "3",
        "--customers",
        "800",
        "--dirty-rate",
        "0.02",
        "--rows-per-file",
        "4000",
    ],
    &[
        "generate",
        "--rows",
        "4000",
        "--days",
        "1",
        "--batch",
        "2",
        "--start-date",
        "2024-01-02",
        "--customers",
        "800",
        "--dirty-rate",
        "0.02",
    ],
];

#[derive(Debug, PartialEq)]
pub(crate) struct World {
    transactions: Vec<(String, String)>,
    quarantine: Vec<(String, String)>,
    aggregates: Agg,
    profiles: Profiles,
    serving: Agg,
    served_profiles: Profiles,
}

pub(crate) fn world(d: &Data, cql: &Cql) -> World {
    World {
        transactions: rows(&d.table(TX)),
        quarantine: rows(&d.table(Q)),
        aggregates: table(d),
        profiles: profiles_table(d),
        serving: cql.contents(),
        served_profiles: crate::served_profiles::served(cql),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Generate,
    Ingest,
    Aggregate,
    Profiles,
    Load,
}

fn generate(d: &Data) {
    for b in BATCHES {
        d.ok(b);
    }
}

/// Bring a fresh data dir to just before `stage`.
fn prepare(d: &Data, cql: &Cql, stage: Stage) {
    if stage == Stage::Generate {
        return;
    }
    generate(d);
    let upto: &[&str] = match stage {
        Stage::Ingest => return,
        Stage::Aggregate => &["ingest"],
        Stage::Profiles => &["ingest", "aggregate"],
        Stage::Load => &["ingest", "aggregate", "profiles"],
        Stage::Generate => unreachable!(),
    };
    for s in upto {
        cql.ok(d, &[s]);
    }
}

/// The stage's command (generate: the first batch, the one with many files).
fn command(stage: Stage) -> Vec<&'static str> {
    match stage {
        Stage::Generate => BATCHES[0].to_vec(),
        Stage::Ingest => vec!["ingest"],
        Stage::Aggregate => vec!["aggregate"],
        Stage::Profiles => vec!["profiles"],
        Stage::Load => vec!["load", "--concurrency", "16"],
    }
}

/// Run the rest of the pipeline to completion.
fn complete(d: &Data, cql: &Cql) {
    generate(d);
    cql.ok(d, &["run", "--stages", "ingest,aggregate,profiles,load"]);
}

enum Kill {
    Failpoint(&'static str),
    After(Duration),
}

/// Start the stage as a child and kill it; returns whether it was actually interrupted.
fn kill_stage(d: &Data, cql: &Cql, stage: Stage, how: &Kill) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.arg("--data-dir")
        .arg(d.path())
        .arg("--json")
        .args(command(stage));
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in cql.env() {
        cmd.env(k, v);
    }
    match how {
        Kill::Failpoint(p) => {
            cmd.env("PIPELINE_FAILPOINTS", p);
            let status = cmd.status().unwrap();
            assert!(!status.success(), "failpoint {p} was not reached");
            true
        }
        Kill::After(t) => {
            cmd.env_remove("PIPELINE_FAILPOINTS");
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(*t);
            let interrupted = child.try_wait().unwrap().is_none();
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            interrupted
        }
    }
}

#[test]
fn every_kill_point_reruns_to_the_clean_result() {
    let random_kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // The clean run, and how long each stage takes (random kills fall inside that window).
    let cql = Cql::new();
    if cql.server.is_none() {
        eprintln!("crash harness: runs against the in-repo CQL test server only; skipped");
        return;
    }
    let d = Data::new();
    let mut took = Vec::new();
    for stage in [
        Stage::Generate,
        Stage::Ingest,
        Stage::Aggregate,
        Stage::Profiles,
        Stage::Load,
    ] {
        let t = Instant::now();
        match stage {
            Stage::Generate => generate(&d),
            _ => {
                cql.ok(&d, &command(stage));
            }
        }
        took.push((stage, t.elapsed()));
    }
    let clean = world(&d, &cql);
    assert!(
        !clean.serving.is_empty()
            && !clean.quarantine.is_empty()
            && !clean.profiles.is_empty()
            && !clean.served_profiles.is_empty()
    );
    let mut rng = rand::rng();
    let mut tried = Vec::new();
    for (stage, dur) in took {
        let failpoints: &[&str] = match stage {
            Stage::Generate => &[],
            Stage::Ingest => &[
                "ingest.before_commit",
                "ingest.between_commits",
                "ingest.after_quarantine_commit",
            ],
            Stage::Aggregate => &["aggregate.before_commit"],
            Stage::Profiles => &["profiles.before_commit"],
            Stage::Load => &[
                "load.midway",
                "load.before_state",
                "load.profiles_before_record",
            ],
        };
        let mut kills: Vec<Kill> = failpoints.iter().map(|p| Kill::Failpoint(p)).collect();
        for _ in 0..random_kills {
            let max = (dur.as_millis() as u64 * 9 / 10).max(20);
            kills.push(Kill::After(Duration::from_millis(
                rng.random_range(5..=max),
            )));
        }
        let (mut interrupted, mut total) = (0, 0);
        for how in &kills {
            let cql = Cql::new();
            let d = Data::new();
            prepare(&d, &cql, stage);
            if kill_stage(&d, &cql, stage, how) {
                interrupted += 1;
            }
            total += 1;
            complete(&d, &cql);
            let what = match how {
                Kill::Failpoint(p) => format!("failpoint {p}"),
                Kill::After(t) => format!("SIGKILL after {t:?}"),
            };
            let got = world(&d, &cql);
            assert_eq!(
                got.transactions, clean.transactions,
                "{stage:?}, {what}: transactions"
            );
            assert_eq!(
                got.quarantine, clean.quarantine,
                "{stage:?}, {what}: quarantine"
            );
            assert_eq!(
                got.aggregates, clean.aggregates,
                "{stage:?}, {what}: aggregates"
            );
            assert_eq!(got.profiles, clean.profiles, "{stage:?}, {what}: profiles");
            assert_eq!(got.serving, clean.serving, "{stage:?}, {what}: ScyllaDB");
            assert_eq!(
                got.served_profiles, clean.served_profiles,
                "{stage:?}, {what}: ScyllaDB profiles"
            );
            // No orphaned scratch state from the killed process survives the rerun.
            let scratch = d.path().join("_scratch");
            let left = std::fs::read_dir(&scratch).map(|r| r.count()).unwrap_or(0);
            assert_eq!(
                left,
                0,
                "{stage:?}, {what}: scratch folders left in {}",
                scratch.display()
            );
        }
        tried.push(format!(
            "{stage:?}: {total} kill points ({interrupted} interrupted mid-run)"
        ));
    }
    eprintln!("crash harness: {}", tried.join("; "));
}

/// Two processes of the same command started together on one data dir.
fn both_at_once(d: &Data, cql: &Cql, args: &[&str]) -> Vec<std::process::Output> {
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        cmd.arg("--data-dir").arg(d.path()).arg("--json").args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env_remove("PIPELINE_FAILPOINTS");
        for (k, v) in cql.env() {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    vec![a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
}

#[test]
fn two_ingests_or_runs_at_once_end_equal_to_one() {
    let cql = Cql::new();
    let d = Data::new();
    generate(&d);
    cql.ok(&d, &["run", "--stages", "ingest,aggregate,load"]);
    let clean = world(&d, &cql);

    for round in 0..3 {
        // Two ingests: each either commits, finds nothing new, or fails cleanly as a conflict.
        let cql = Cql::new();
        let d = Data::new();
        generate(&d);
        let outs = both_at_once(&d, &cql, &["ingest"]);
        let mut committed = 0;
        for o in &outs {
            match o.status.code() {
                Some(0) => committed += 1,
                Some(4) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    assert!(err.contains("a concurrent writer committed first"), "{err}");
                    assert!(err.contains("Nothing of this run was committed"), "{err}");
                }
                other => panic!(
                    "round {round}: ingest exited {other:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
            }
        }
        assert!(
            committed >= 1,
            "round {round}: neither ingest committed: {}",
            outs.iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        // Two whole runs at once (conflicts are retried inside `run`), then the result.
        let outs = both_at_once(&d, &cql, &["run", "--stages", "ingest,aggregate,load"]);
        for o in &outs {
            assert!(
                o.status.success(),
                "round {round}: run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let got = world(&d, &cql);
        assert_eq!(got.transactions, clean.transactions, "round {round}");
        assert_eq!(got.quarantine, clean.quarantine, "round {round}");
        assert_eq!(got.aggregates, clean.aggregates, "round {round}");
        assert_eq!(got.serving, clean.serving, "round {round}");
    }
}
