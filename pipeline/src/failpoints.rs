//! Failpoints and pause points: the crash and bad-input tests stop a stage, or change the
//! world under it, at an exact point in the code.

/// Environment variable naming failpoints (comma-separated) at which the process aborts, as if
/// killed: used by the crash tests to stop a stage at an exact point, e.g. between writing data
/// files and committing them.
pub const FAILPOINTS_ENV: &str = "PIPELINE_FAILPOINTS";

/// Abort the process here if `name` is listed in [`FAILPOINTS_ENV`]. `abort` runs no
/// destructors and flushes nothing, like SIGKILL.
pub fn hit(name: &str) {
    if let Ok(list) = std::env::var(FAILPOINTS_ENV)
        && list.split(',').any(|p| p.trim() == name)
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Environment variable naming one pause point and a gate file (`name:path`): at that point
/// the process writes `<path>.reached` and waits (up to a minute) until `path` is removed.
/// Used by tests to change the world at an exact moment (e.g. delete a raw file mid-run).
pub const PAUSE_ENV: &str = "PIPELINE_PAUSE";

/// Wait here while the gate of [`PAUSE_ENV`] exists, if `name` is the configured point.
pub fn pause(name: &str) {
    let Ok(spec) = std::env::var(PAUSE_ENV) else {
        return;
    };
    let Some((point, gate)) = spec.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let gate = std::path::Path::new(gate);
    let _ = std::fs::write(format!("{}.reached", gate.display()), name);
    let start = std::time::Instant::now();
    while gate.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
