//! The command line's conventions: the version, and log lines at RUST_LOG levels and in
//! JSON.

use crate::common::Data;

/// `--version` names the commit the binary was built from (it printed only `0.1.0`).
#[test]
fn the_version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let want = std::env::var("PIPELINE_GIT_COMMIT")
        .ok()
        .or(head)
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        version.trim(),
        format!("pipeline {} (commit {want})", env!("CARGO_PKG_VERSION"))
    );
}

/// `RUST_LOG=info` shows our own lines, a line per command and per stage started and
/// finished, and none of the dependencies' (it printed 88 lines of the Delta kernel and not
/// one of ours); `--log-format json` makes each a JSON object; a target named in RUST_LOG
/// is passed on.
#[test]
fn logs_at_info_are_ours_and_json_on_request() {
    let d = Data::new();
    d.ok(&["generate", "--rows", "2000", "--days", "2"]);
    let out = d
        .command(
            &["run", "--stages", "ingest,aggregate"],
            &[("RUST_LOG", "info")],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    for line in [
        "run started",
        "stage ingest started",
        "stage ingest finished: 2000 rows",
        "stage aggregate finished",
        "run finished: exit 0",
    ] {
        assert!(log.contains(line), "{line:?} missing:\n{log}");
    }
    for line in log.lines().filter(|l| l.contains(" INFO ")) {
        assert!(line.contains(" INFO pipeline"), "not ours: {line}");
    }

    let out = d
        .command(
            &["--log-format", "json", "history"],
            &[("RUST_LOG", "info")],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["fields"]["message"], "history started");
    assert_eq!(lines[1]["fields"]["exit_code"], 0);
}

/// `pipeline completions bash` is a script bash accepts that completes our subcommands and
/// options (there were none); fish and zsh scripts name the commands too.
#[test]
fn shell_completions_complete_the_commands() {
    let bin = env!("CARGO_BIN_EXE_pipeline");
    let script = format!(
        "source <({bin} completions bash) && COMP_WORDS=(pipeline ing) COMP_CWORD=1 \
         COMP_LINE='pipeline ing' COMP_POINT=12 && _pipeline pipeline ing pipeline && \
         echo \"${{COMPREPLY[*]}}\""
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ingest",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = std::process::Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("check-store") && text.contains("landing-prefix"),
            "{shell}"
        );
    }
}

/// The follow service's environment (PIPELINE_METRICS_ADDR) does not refuse a batch run in
/// its container: clap counted the variable as `--metrics-addr`, which required --follow.
#[test]
fn a_batch_run_ignores_the_metrics_address_of_the_environment() {
    let d = Data::new();
    let out = d
        .command(
            &[
                "run",
                "--generate",
                "--rows",
                "500",
                "--days",
                "1",
                "--stages",
                "generate",
            ],
            &[("PIPELINE_METRICS_ADDR", "127.0.0.1:9184")],
        )
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One option set four ways: the default, `pipeline.toml` in the data dir, its environment
/// variable, its flag, each overriding the one before (there was no configuration file, and
/// only 6 of ~40 options had a variable); a `[command]` section overrides the top level.
#[test]
fn configuration_file_then_environment_then_flags() {
    let d = Data::new();
    let rows = |args: &[&str], env: &[(&str, &str)]| {
        let out = d.run_env(args, env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["rows"].as_u64().unwrap()
    };
    assert_eq!(
        rows(&["generate", "--batch", "1"], &[]),
        100_000,
        "the default"
    );
    std::fs::write(
        d.path().join("pipeline.toml"),
        "rows = 3000\ndays = 2\n\n[run]\nrows = 4000\n",
    )
    .unwrap();
    assert_eq!(rows(&["generate", "--batch", "2"], &[]), 3000, "the file");
    assert_eq!(
        rows(&["generate", "--batch", "3"], &[("PIPELINE_ROWS", "2000")]),
        2000,
        "the environment over the file"
    );
    assert_eq!(
        rows(
            &["generate", "--batch", "4", "--rows", "1000"],
            &[("PIPELINE_ROWS", "2000")]
        ),
        1000,
        "the flag over the environment"
    );
    let run = d.ok(&["run", "--generate", "--batch", "5", "--stages", "generate"]);
    assert_eq!(
        run["stages"][0]["report"]["rows"], 4000,
        "[run] over the top level: {run}"
    );
    // A file named by --config instead of the data dir's.
    let other = d.path().join("other.toml");
    std::fs::write(&other, "[generate]\nrows = 1500\n").unwrap();
    let config = other.display().to_string();
    assert_eq!(
        rows(&["--config", &config, "generate", "--batch", "6"], &[]),
        1500
    );
}

/// A mistake in the configuration is exit 2 naming the file and the key (with the closest
/// key), before anything runs; a secret in the file is refused without being echoed.
#[test]
fn configuration_mistakes_name_the_file_and_the_key() {
    let d = Data::new();
    let file = d.path().join("pipeline.toml");
    let fails = |text: &str, args: &[&str]| {
        std::fs::write(&file, text).unwrap();
        let out = d.run_env(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        err
    };
    let err = fails("rows_per_fle = 10\n", &["generate"]);
    assert!(
        err.contains("`rows_per_fle` is not an option (did you mean `rows_per_file`?)"),
        "{err}"
    );
    let err = fails("[generate]\nrows = \"lots\"\n", &["generate"]);
    assert!(err.contains("[generate] `rows` = \"lots\""), "{err}");
    let err = fails("from = \"ingest\"\n", &["run"]);
    assert!(err.contains("put it under [lookup] or [run]"), "{err}");
    let err = fails("scylla_password = \"hunter2-staple\"\n", &["load"]);
    assert!(
        err.contains("SCYLLA_PASSWORD") && !err.contains("hunter2"),
        "{err}"
    );
    let err = fails("aws_secret_access_key = \"AKIAxyz\"\n", &["ingest"]);
    assert!(err.contains("AWS_*") && !err.contains("AKIAxyz"), "{err}");
    let err = fails("rows = [\n", &["generate"]);
    assert!(err.contains("is not valid TOML"), "{err}");
    assert!(!d.path().join("_raw").exists(), "nothing ran");
    std::fs::remove_file(&file).unwrap();
    let out = d.run_env(&["--config", "/nonexistent/p.toml", "generate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/p.toml does not exist"));
}

/// Every option of every command has an environment variable, `--help` says how they rank,
/// and docs/configuration.md lists exactly the variables there are.
#[test]
fn every_option_has_a_variable_and_the_docs_list_them() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(args)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let top = help(&[]);
    assert!(top.contains("from lowest to highest precedence"), "{top}");
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help" && c != "completions")
        .collect();
    assert!(commands.len() > 10, "{commands:?}");
    let mut variables = std::collections::BTreeSet::new();
    for command in &commands {
        let text = help(&[command]);
        // Each option is a block that starts with its flag line (indented less than the
        // text under it, which may hold `- value: ...` lines) and ends at the next one.
        let is_flag = |l: &str| {
            let indent = l.len() - l.trim_start().len();
            indent > 0 && indent < 8 && l.trim_start().starts_with('-')
        };
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            if is_flag(line) {
                blocks.push(vec![line]);
            } else if !line.starts_with(' ') && !line.is_empty() {
                blocks.push(Vec::new()); // a heading ends the option before it
            } else if let Some(block) = blocks.last_mut().filter(|b| !b.is_empty()) {
                block.push(line);
            }
        }
        for block in blocks.iter().filter(|b| !b.is_empty()) {
            let option = block.join("\n");
            let flag = block[0]
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap();
            if flag == "--help" || flag == "--version" {
                continue;
            }
            let env = option
                .split("[env: ")
                .nth(1)
                .and_then(|r| r.split(['=', ']']).next())
                .unwrap_or_else(|| panic!("{command} {flag} has no variable:\n{option}"));
            variables.insert(env.to_string());
        }
    }
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .unwrap();
    let documented: std::collections::BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|v| v.starts_with("PIPELINE_") || v.starts_with("SCYLLA_"))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = variables.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&variables).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/configuration.md: missing {missing:?}, not an option {stale:?}"
    );
}

/// A reader that goes away (`pipeline history | head -1`) ends the output quietly: the
/// report's `println!` panicked with "failed printing to stdout: Broken pipe".
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let d = Data::new();
    let mut child = d
        .command(&["generate", "--rows", "100", "--days", "1"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the report is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Every JSON output writes a time one way, as `sql --format json` writes a timestamp column:
/// RFC 3339 in UTC with microseconds (`run` wrote `+00:00` with nanoseconds, `history`
/// `2026-12-04 04:15:32`); and a skipped stage shows nothing done (a skipped generate showed
/// the existing batch's 2,000 rows as if written again).
#[test]
fn json_times_are_one_format_and_a_skipped_stage_did_nothing() {
    let d = Data::new();
    let args = [
        "run",
        "--generate",
        "--rows",
        "2000",
        "--days",
        "2",
        "--stages",
        "generate,ingest",
    ];
    let first = d.ok(&args);
    let again = d.ok(&args);
    let generate = &again["stages"][0];
    assert_eq!(generate["stage"], "generate");
    assert_eq!(generate["skipped"], true, "{generate}");
    assert_eq!(
        (
            generate["rows"].as_u64(),
            generate["files"].as_u64(),
            generate["bytes"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{generate}"
    );
    let note = generate["note"].as_str().unwrap();
    assert!(
        note.contains("already complete (2,000 rows in 2 files)"),
        "{note}"
    );
    assert_eq!(first["stages"][0]["rows"], 2000);

    let is_time = |v: &serde_json::Value| {
        let s = v.as_str().unwrap_or_default();
        let b = s.as_bytes();
        s.len() == 27
            && chrono::NaiveDateTime::parse_from_str(&s[..26], "%Y-%m-%dT%H:%M:%S%.6f").is_ok()
            && b[19] == b'.'
            && s.ends_with('Z')
    };
    let history = d.ok(&["history"]);
    let sql = d.run_env(
        &[
            "sql",
            "--format",
            "json",
            "SELECT run_id, started_at, ended_at FROM run_history",
        ],
        &[],
    );
    assert_eq!(sql.status.code(), Some(0));
    let sql: Vec<serde_json::Value> = String::from_utf8_lossy(&sql.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for run in [&first, &again] {
        let id = &run["run_id"];
        let listed = history
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == *id)
            .unwrap();
        let queried = sql.iter().find(|r| r["run_id"] == *id).unwrap();
        for key in ["started_at", "ended_at"] {
            assert!(is_time(&run[key]), "run {key}: {}", run[key]);
            assert_eq!(listed[key], run[key], "history {key}");
            assert_eq!(queried[key], run[key], "sql {key}");
        }
    }
    let ingest = &first["stages"][1]["report"];
    assert!(is_time(&ingest["reference_time"]), "{ingest}");
}

/// The file's values take part in the rules between options as the environment's do (as
/// defaults they did not): `follow = true` in the file lets `--duration` be given alone
/// (it was "required arguments were not provided: --follow"), and a file's `stages` beside a
/// `--from` flag is refused instead of silently winning. A global option in a section is that
/// command's only, the last `--data-dir` names the file, a switch variable takes `1`, and a
/// broken file still lets `--help` through.
#[test]
fn file_values_obey_the_rules_between_options() {
    let d = Data::new();
    let file = d.path().join("pipeline.toml");
    let bare = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
        c.arg("--data-dir").arg(d.path()).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    std::fs::write(
        &file,
        "[generate]\nfollow = true\nrows_per_file = 100\n[history]\njson = true\n",
    )
    .unwrap();
    let out = bare(&["generate", "--rate", "500", "--duration", "1s"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.trim_start().starts_with('{'),
        "[history] json reached generate: {text}"
    );
    let out = bare(&["history"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim_start()
            .starts_with('['),
        "[history] json"
    );

    std::fs::write(&file, "[run]\nstages = [\"ingest\"]\n").unwrap();
    let out = bare(&["run", "--from", "profiles"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a flag and a file's value in conflict"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stages"));

    std::fs::write(&file, "rows = 1200\ndays = 1\n").unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("pipeline.toml"),
        "rows = 1300\ndays = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("--data-dir")
        .arg(other.path())
        .args(["generate", "--batch", "7", "--data-dir"])
        .arg(d.path())
        .env("PIPELINE_JSON", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 1200, "the last --data-dir's file");

    std::fs::write(&file, "rowz = 1\n").unwrap();
    assert_eq!(bare(&["generate"], &[]).status.code(), Some(2));
    let help = bare(&["generate", "--help"], &[]);
    assert_eq!(help.status.code(), Some(0), "a broken file blocked --help");
}

/// A report that cannot be written is a failure (`> /dev/full` exited 0), and
/// `sql --format json` writes times and nulls as the reports do: six decimals and `Z` for
/// every zoned time (arrow wrote 0, 3 or 6 decimals), six for a time without a zone (`now()`
/// had nanoseconds), `null` kept (the column was left out).
#[test]
fn reports_that_cannot_be_written_fail_and_sql_json_is_uniform() {
    let d = Data::new();
    d.ok(&[
        "run",
        "--generate",
        "--rows",
        "3000",
        "--days",
        "2",
        "--stages",
        "generate,ingest",
    ]);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = d.command(&["history"], &[]).stdout(full).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the report"));

    let sql = d.run_env(
        &[
            "sql",
            "--format",
            "json",
            "SELECT CAST(NULL AS INT) AS nothing, now() AS t, transaction_ts, \
             date_trunc('day', transaction_ts) AS day FROM customer_transactions",
        ],
        &[],
    );
    assert_eq!(
        sql.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    let mut rows = 0;
    for line in String::from_utf8_lossy(&sql.stdout).lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            row["nothing"].is_null() && row.get("nothing").is_some(),
            "{line}"
        );
        for key in ["transaction_ts", "day"] {
            let s = row[key].as_str().unwrap();
            assert!(
                s.len() == 27 && s.as_bytes()[19] == b'.' && s.ends_with('Z'),
                "{key}: {s}"
            );
        }
        // now() has no zone in DataFusion: the same form without `Z`, in microseconds.
        let t = row["t"].as_str().unwrap();
        assert!(t.len() == 26 && t.as_bytes()[19] == b'.', "t: {t}");
        rows += 1;
    }
    assert_eq!(rows, 3000);
}

/// A stream's settings in the environment or `pipeline.toml` do not stop a batch run (as
/// clap's `requires = "follow"` they made every batch `run` exit 2 once every option had a
/// variable); the same setting as a flag without `--follow` is still a usage error.
#[test]
fn stream_settings_outside_the_command_line_leave_batch_runs_alone() {
    let d = Data::new();
    d.ok(&["generate", "--rows", "1000", "--days", "1"]);
    std::fs::write(
        d.path().join("pipeline.toml"),
        "[run]\nuntil_idle = true\ninterval = \"1s\"\n",
    )
    .unwrap();
    let out = d.run_env(
        &["run", "--stages", "ingest"],
        &[("PIPELINE_MAX_BATCHES", "3"), ("PIPELINE_RATE", "10")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.run_env(&["generate", "--rate", "10"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--rate is for continuous mode: add --follow")
    );
    let out = d.run_env(&["run", "--until-idle"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--until-idle is for continuous mode"));
}

/// A stream's `run_history` row names the stages it ran: it said "ingest, aggregate, load"
/// whatever `--stages` chose, and never named profiles.
#[test]
fn a_streams_history_row_names_its_stages() {
    let d = Data::new();
    d.ok(&["generate", "--rows", "2000", "--days", "2"]);
    let out = d.run_env(
        &[
            "run",
            "--follow",
            "--until-idle",
            "--interval",
            "100ms",
            "--stages",
            "ingest,aggregate,profiles",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history = d.ok(&["history"]);
    assert_eq!(
        history[0]["stages"], "ingest, aggregate, profiles",
        "{history}"
    );
}
