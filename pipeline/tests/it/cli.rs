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
