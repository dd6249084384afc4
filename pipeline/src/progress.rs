//! Progress display (a bar on a terminal, nothing otherwise) and process measurements.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A row counter that draws a bar on stderr when it is a terminal.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `stage`, drawn only when stderr is a terminal and `enabled`.
    pub fn new(stage: &str, enabled: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if !(enabled && std::io::stderr().is_terminal()) {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self::styled(bar, stage)
    }

    /// A bar for `stage` inside a multi-stage display (`pipeline run`): one line per stage,
    /// kept on screen when the stage ends.
    pub fn in_display(display: &indicatif::MultiProgress, stage: &str) -> Self {
        let bar = display.add(ProgressBar::new(0));
        Self::styled(bar, stage)
    }

    fn styled(bar: ProgressBar, stage: &str) -> Self {
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows (eta {eta})",
            )
            .expect("valid template"),
        );
        bar.set_prefix(stage.to_string());
        Self { bar }
    }

    /// End the bar but leave its last state on screen.
    pub fn finish_visible(&self) {
        self.bar.finish();
    }

    /// One display for several stages, drawn on stderr when it is a terminal and `enabled`.
    pub fn display(enabled: bool) -> indicatif::MultiProgress {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        indicatif::MultiProgress::with_draw_target(target)
    }

    /// A bar that draws nothing (tests, `--no-progress`).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Set the total.
    pub fn set_length(&self, n: u64) {
        self.bar.set_length(n);
    }

    /// Grow the total.
    pub fn inc_length(&self, n: u64) {
        self.bar.inc_length(n);
    }

    /// Count `n` more done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// End the bar and clear it.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Peak resident set size of this process so far, in bytes (Linux `ru_maxrss` is in KiB).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            (usage.ru_maxrss as u64) * 1024
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_measured() {
        assert!(peak_rss_bytes() > 0);
    }
}
