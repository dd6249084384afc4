//! What every command returns: a report that prints itself (text or JSON), says once what
//! "nothing to do" means for its stage, and sums itself up for `pipeline run`'s table.

use serde::Serialize;

use crate::error::exit;

/// A stage's (or command's) report.
pub trait Report: Serialize {
    /// The stage's name, as `run` and the history show it.
    fn stage(&self) -> &'static str;

    /// There was nothing to do: no new input, nothing committed or written.
    fn skipped(&self) -> bool;

    /// The summary a person reads.
    fn text(&self) -> String;

    /// Counts and a few words for `run`'s table.
    fn summary(&self) -> Summary;

    /// The exit code this outcome maps to (a report can be a complete run that still has
    /// something to say, such as a `verify` mismatch).
    fn exit_code(&self) -> u8 {
        exit::OK
    }

    /// Warnings that did not stop the stage (a checkpoint not written), shown with the text.
    fn warnings(&self) -> &[String] {
        &[]
    }
}

/// One stage's line in `run`'s table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows the stage read or wrote (its main measure).
    pub rows: u64,
    /// Files read or written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// What it did, or why it was skipped, in a few words.
    pub note: String,
    /// Version of its input table it consumed, when it has one.
    pub consumed_version: Option<i64>,
    /// Version of its output table it committed, when it did.
    pub produced_version: Option<i64>,
}

/// Print a report as pretty JSON or as text (with its warnings on stderr); returns its exit code.
pub fn print<R: Report>(json: bool, report: &R) -> u8 {
    mark_printed();
    if json {
        stdout_line(&serde_json::to_string_pretty(report).expect("reports serialise"));
    } else {
        stdout_line(&report.text());
    }
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    report.exit_code()
}

/// A time as every JSON report writes it: RFC 3339 in UTC with microseconds
/// (`2026-12-04T04:15:32.684566Z`), which is how `sql --format json` writes a timestamp column
/// (Delta timestamps are microseconds). `run`, `history` and `run --follow` each wrote another
/// form (`+00:00` and nanoseconds; `2026-12-04 04:15:32`).
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// An exact decimal (its digits, `5679.30`) as a JSON number with exactly those digits, which
/// is how `sql --format json` writes a decimal column; `lookup` wrote strings. Never a float.
pub fn decimal<S: serde::Serializer>(digits: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    use serde::ser::Error;
    let raw = serde_json::value::RawValue::from_string(digits.to_string())
        .map_err(|e| S::Error::custom(format!("{digits:?} is not a decimal: {e}")))?;
    raw.serialize(s)
}

/// [`decimal`] for an optional one (`null` when absent).
pub fn decimal_opt<S: serde::Serializer>(
    digits: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match digits {
        Some(d) => decimal(d, s),
        None => s.serialize_none(),
    }
}

/// Print a line on stdout. A reader that has gone (`pipeline history | head -3`) ends the
/// output quietly, as `sql` does (`println!` panicked there with a backtrace); the command's
/// exit code is unchanged, since its work is done and committed either way. Any other
/// failure to write (a full disk behind `> report.json`) ends the process with exit 1, as
/// `sql` fails: a report that was not written is not a success.
pub fn stdout_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the report to stdout: {e}");
            std::process::exit(crate::error::exit::FAILURE.into());
        }
        _ => {}
    }
}

/// Whether a report went to stdout (so a failure after it does not print a second document).
static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A report is on stdout.
pub fn mark_printed() {
    PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`mark_printed`] was called.
pub fn printed() -> bool {
    PRINTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `12,345,678`
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An optional version for a message: `7` or `-`.
pub fn version(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Rate per second, 0 for no time.
pub fn per_sec(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(version(None), "-");
    }
}
