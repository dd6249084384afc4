//! The serving protocol against what happens to a keyspace in the world: a load killed (or
//! failing) after some writes, a data dir restored from a backup, writes made outside the
//! pipeline, another data dir loading into the same keyspace, old versions vacuumed.

use cql_test_server::{Fault, FaultKind};
use serde_json::Value;

use crate::aggregate::table;
use crate::common::{Data, u};
use crate::profiles::profiles_table;
use crate::scylla::Cql;
use crate::served_profiles::served;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn batch(d: &Data, rows: &str, days: &str, batch: &str, start: &str) -> Value {
    d.ok(&[
        "generate",
        "--rows",
        rows,
        "--days",
        days,
        "--batch",
        batch,
        "--start-date",
        start,
        "--customers",
        "400",
    ]);
    let r = d.ok(&["ingest"]);
    d.ok(&["aggregate"]);
    r
}

/// Load v1; a late batch adds customers to a day (v2); the load of v2 is killed after its
/// writes (or fails, exit 6, after some); the rows vanish again (`aggregate
/// --source-version`). The next load must delete what only the killed load wrote: before,
/// `load` exited 0 and `verify` 7 (Delta 40 rows, ScyllaDB 306), forever.
#[test]
fn rows_only_a_killed_or_failed_load_wrote_are_deleted_by_the_next_load() {
    for how in ["killed", "failed"] {
        let cql = Cql::new();
        let d = Data::new();
        let first = batch(&d, "4000", "2", "1", "2024-01-01");
        cql.ok(&d, &["load"]);
        batch(&d, "1500", "1", "2", "2024-01-02");
        let out = match how {
            "killed" => cql.run(
                &d,
                &["load"],
                &[("PIPELINE_FAILPOINTS", "load.before_state")],
            ),
            _ => {
                let Some(server) = cql.test_server("fault injection") else {
                    return;
                };
                server.inject(
                    Fault::on_statement("INSERT INTO it_", FaultKind::WriteTimeout)
                        .skip(200)
                        .times(u64::MAX),
                );
                let out = cql.run(&d, &["load", "--max-attempts", "1"], &[]);
                assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
                server.clear_faults();
                out
            }
        };
        assert!(!out.status.success(), "{how}");
        let v1 = first["table_version"].as_i64().unwrap().to_string();
        d.ok(&["aggregate", "--source-version", &v1]);
        let r = cql.ok(&d, &["load"]);
        assert_eq!(u(&r, "loads_made_good"), 1, "{how}: {r}");
        assert_eq!(
            cql.contents(),
            table(&d),
            "{how}: the rows only the interrupted load wrote are gone"
        );
        cql.ok(&d, &["verify"]);
    }
}

/// Restore a backup of the data dir taken before the last load; new data brings the
/// aggregates back to the same version number, with other rows. Before, `load` said "already
/// loaded" and `verify` exited 7: a version number is not an identity. The served version's
/// commit is not this table's: a restore, or a copy of the data dir that diverged (the two
/// cannot be told apart), so `load` says so and writes nothing (exit 2) until told which
/// (`--take-over` for a restore), and `verify` says it too.
#[test]
fn a_data_dir_restored_from_a_backup_is_told_apart_and_served_with_take_over() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "4000", "2", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    let backup = tempfile::tempdir().unwrap();
    copy_dir(d.path(), backup.path());
    let loaded = batch(&d, "1000", "1", "2", "2024-01-02");
    let first = cql.ok(&d, &["load"]);
    // Back to the backup, then another batch: the same version numbers, other rows.
    std::fs::remove_dir_all(d.path()).unwrap();
    copy_dir(backup.path(), d.path());
    let again = batch(&d, "1200", "1", "3", "2024-01-02");
    assert_eq!(again["table_version"], loaded["table_version"]);
    let v = cql.run(&d, &["verify"], &[]);
    assert_eq!(
        v.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    assert!(String::from_utf8_lossy(&v.stdout).contains("restored from a backup"));
    let out = cql.run(&d, &["load"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("restored from a backup") && err.contains("--take-over"),
        "{err}"
    );
    let r = cql.ok(&d, &["load", "--take-over"]);
    assert_eq!(r["aggregates_version"], first["aggregates_version"], "{r}");
    assert_eq!(r["full_load"], true, "{r}");
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
    assert_eq!(u(&cql.ok(&d, &["load"]), "rows_written"), 0);
}

/// A copy of a data dir (`cp -r`, its id included): whichever of the two loads first after
/// copying continues the history ScyllaDB serves (they cannot be told apart); once the other
/// has diverged from it, its loads are refused (exit 2) instead of reloading everything over
/// the first's, as the two did before.
#[test]
fn a_diverged_copy_of_a_data_dir_does_not_take_over_its_keyspace() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "3000", "2", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    let copy = Data::new();
    copy_dir(d.path(), copy.path());
    batch(&copy, "800", "1", "2", "2024-01-02");
    cql.ok(&copy, &["load"]);
    batch(&d, "900", "1", "3", "2024-01-03");
    let out = cql.run(&d, &["load"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a copy of the data dir"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        cql.contents(),
        table(&copy),
        "the copy's tables stay served"
    );
    cql.ok(&copy, &["verify"]);
}

/// A load still writing while a full load (a repair, or the first load of a keyspace) sweeps:
/// the customers it adds after the sweep listed the partitions are deleted by key, since the
/// full load made its version good. Before, they stayed: `load` said "already loaded" and
/// `verify` exited 7 (348 rows in Delta, 555 in ScyllaDB), forever (a reviewer's find).
#[test]
fn rows_a_running_load_writes_after_a_full_loads_sweep_are_deleted_too() {
    for full in [&["load", "--repair"][..], &["load"][..]] {
        let cql = Cql::new();
        let d = Data::new();
        let first = batch(&d, "3000", "2", "1", "2024-01-01");
        if full.len() == 2 {
            cql.ok(&d, &["load"]);
        }
        // Version 2 adds customers; a load of it waits after its marker.
        d.ok(&[
            "generate",
            "--rows",
            "1000",
            "--days",
            "1",
            "--customers",
            "2000",
            "--batch",
            "2",
            "--start-date",
            "2024-01-02",
        ]);
        d.ok(&["ingest"]);
        d.ok(&["aggregate"]);
        let env = cql.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let paused = d.paused_at("load.after_plan", &["load"], &env);
        // They vanish again (version 3), and a full load serves that.
        let v1 = first["table_version"].as_i64().unwrap().to_string();
        d.ok(&["aggregate", "--source-version", &v1]);
        let r = cql.ok(&d, full);
        assert_eq!(r["full_load"], true, "{full:?}: {r}");
        assert!(u(&r, "loads_made_good") >= 1, "{full:?}: {r}");
        // The older load goes on and writes its rows after the sweep.
        let out = paused.go_on();
        assert!(out.status.success(), "{}", stderr(&out));
        let a: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(a["overtaken"], true, "{full:?}: {a}");
        assert_eq!(cql.contents(), table(&d), "{full:?}: no stray row");
        cql.ok(&d, &["verify"]);
    }
}

/// A `load --repair` that planned an older version than one loaded meanwhile repairs the
/// newer one instead of putting the older rows above it (before, it swept the newer day away
/// and `verify`, comparing with the older version, exited 0).
#[test]
fn a_repair_overtaken_by_a_newer_version_repairs_that_one() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "3000", "2", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    batch(&d, "800", "1", "2", "2024-01-03");
    let env = cql.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let paused = d.paused_at("load.after_mark", &["load", "--repair"], &env);
    let v3 = batch(&d, "800", "1", "3", "2024-01-04");
    cql.ok(&d, &["load"]);
    let out = paused.go_on();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["full_load"], true, "{r}");
    let latest = crate::common::version(&d.table("customer_daily_aggregates")).unwrap();
    assert_eq!(r["aggregates_version"].as_u64(), Some(latest), "{r} {v3}");
    assert_eq!(cql.contents(), table(&d));
    let v = cql.ok(&d, &["verify"]);
    assert_eq!(v["aggregates_version"].as_u64(), Some(latest));
}

/// Another data dir's `--take-over`, killed midway, locks nobody out: the data dir still
/// recorded loads again (above the killed one, making its writes good), and `verify` passes.
/// Before, every load of either data dir was refused.
#[test]
fn a_killed_take_over_locks_nobody_out() {
    let cql = Cql::new();
    let (one, two) = (Data::new(), Data::new());
    batch(&one, "3000", "2", "1", "2024-01-01");
    batch(&two, "3000", "2", "1", "2024-03-01");
    cql.ok(&one, &["load"]);
    let out = cql.run(
        &two,
        &["load", "--take-over"],
        &[("PIPELINE_FAILPOINTS", "load.midway")],
    );
    assert!(!out.status.success());
    let r = cql.ok(&one, &["load"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert_eq!(cql.contents(), table(&one));
    cql.ok(&one, &["verify"]);
}

/// A write made outside the pipeline (an operator's UPDATE and DELETE, with default
/// current-time timestamps) wins over later loads of rows the pipeline did not change, and
/// over changed ones written in the serving epoch that started before it; `verify` finds
/// them (exit 7), and `load --repair` writes every row in a new epoch above them: ScyllaDB
/// equals Delta again, whatever happened to it.
#[test]
fn load_repair_wins_over_writes_made_outside_the_pipeline() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "4000", "2", "1", "2024-01-01");
    cql.ok(&d, &["load"]);
    let ks = &cql.keyspace;
    let rows = table(&d);
    let (&(a, ref day_a), _) = rows.iter().next().unwrap();
    let (&(b, ref day_b), _) = rows.iter().nth(7).unwrap();
    cql.exec(&format!(
        "UPDATE {ks}.customer_daily_aggregates SET total_amount = 0.01 \
         WHERE customer_id = {a} AND transaction_date = '{day_a}'"
    ));
    cql.exec(&format!(
        "DELETE FROM {ks}.customer_daily_aggregates \
         WHERE customer_id = {b} AND transaction_date = '{day_b}'"
    ));
    // A later batch and load: the outside writes are still there.
    batch(&d, "600", "1", "2", "2024-01-02");
    cql.ok(&d, &["load"]);
    assert_ne!(cql.contents(), table(&d), "the outside writes won");
    let v = cql.run(&d, &["verify"], &[]);
    assert_eq!(v.status.code(), Some(7));
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        text.contains("load --repair") || text.contains("differing_days"),
        "{text}"
    );
    let r = cql.ok(&d, &["load", "--repair"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert_eq!(cql.contents(), table(&d), "the repair won");
    cql.ok(&d, &["verify"]);
    let again = cql.ok(&d, &["load"]);
    assert_eq!(u(&again, "rows_written"), 0, "{again}");
}

/// A keyspace that serves one data dir is not silently taken over by another: the other's
/// load exits 2 saying how to proceed; with `--take-over` it serves its own tables, and the
/// first data dir's `verify` then says another data dir is served (exit 7).
#[test]
fn a_keyspace_serving_another_data_dir_is_refused_unless_taken_over() {
    let cql = Cql::new();
    let (one, two) = (Data::new(), Data::new());
    batch(&one, "3000", "2", "1", "2024-01-01");
    batch(&two, "2000", "2", "1", "2024-03-01");
    cql.ok(&one, &["load"]);
    let out = cql.run(&two, &["load"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("serves the tables of another data dir")
            && err.contains("--take-over")
            && err.contains("--keyspace"),
        "{err}"
    );
    assert_eq!(cql.contents(), table(&one), "nothing of two was written");
    cql.ok(&one, &["verify"]);
    let r = cql.ok(&two, &["load", "--take-over"]);
    assert_eq!(r["full_load"], true, "{r}");
    assert_eq!(cql.contents(), table(&two));
    cql.ok(&two, &["verify"]);
    let v = cql.run(&one, &["verify"], &[]);
    assert_eq!(v.status.code(), Some(7), "{}", stderr(&v));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("another data dir"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// The profiles version recorded as loaded is vacuumed (`maintain --vacuum`, retention 0,
/// after newer versions): `verify` says it cannot compare (exit 7, not 1) and the next load
/// falls back to loading every profile, as the aggregates' load does. Before, `run` and
/// `verify` exited 1 on every later run ("customer_profiles/part-... not found").
#[test]
fn a_vacuumed_profiles_version_makes_the_next_load_full_instead_of_failing() {
    let cql = Cql::new();
    let d = Data::new();
    batch(&d, "4000", "3", "1", "2024-01-01");
    cql.ok(&d, &["run", "--stages", "profiles,load"]);
    for (n, start) in [("2", "2024-01-02"), ("3", "2024-01-03")] {
        batch(&d, "500", "1", n, start);
        d.ok(&["profiles"]);
    }
    d.ok(&["maintain", "--vacuum", "--retention-hours", "0"]);
    let v = cql.run(&d, &["verify"], &[]);
    assert_eq!(v.status.code(), Some(7), "{}", stderr(&v));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("cannot be read"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let r = cql.ok(&d, &["load"]);
    let p = &r["profiles"];
    assert_eq!(p["full_load"], true, "{r}");
    assert!(
        p["full_because"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{r}"
    );
    assert_eq!(served(&cql), profiles_table(&d));
    assert_eq!(cql.contents(), table(&d));
    cql.ok(&d, &["verify"]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
