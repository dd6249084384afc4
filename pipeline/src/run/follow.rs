//! `run --follow`: the pipeline as its own streaming engine over the landing folder, the way
//! file-source streaming (Spark's file source, Auto Loader) works.
//!
//! A loop of micro-batches, each the stages of a batch run with the same exactly-once
//! commits: ingest the files landed since the last one, aggregate the days they touched
//! (merging appended rows), load the rows that changed. Between micro-batches:
//! 1. **Stop?** a first SIGINT/SIGTERM stops here (a second one aborts at once: every stage
//!    is safe to kill, the next start resumes), as do `--until-idle` and `--max-batches`.
//! 2. **Micro-batch**: ingest (bad files set aside, not stopping the stream), aggregate,
//!    load. ScyllaDB trouble does not stop ingest and aggregate: the load backlog is loaded
//!    when it answers again. The profiles, at most every `--profiles-every` (they cost what
//!    the customer base costs, not what the micro-batch brought), run beside the loop
//!    ([`super::profiles_task`]); a micro-batch reports a run that finished during it.
//! 3. **Housekeeping** ([`super::housekeeping`]), beside the loop: compaction, the vacuum of
//!    replaced files past `--vacuum-retention`, expired log entries; checkpoints are written
//!    by the stages as versions cross the checkpoint interval.
//! 4. **Wait** `--interval` when nothing was new, else go on at once.
//!
//! Freshness is measured per landing file: from its modification time (when it landed) to
//! the load that acknowledged its rows (or the end of the last stage run, without load).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use scylla::client::session::Session;
use serde::Serialize;
use tokio::sync::Notify;

use super::housekeeping::Housekeeping;
use super::metrics::Metrics;
use super::options::{RunOptions, Stage};
use super::profiles_task::{Done, Profiles};
use super::report::{RunReport, StageSummary};
use crate::error::{Error, Result, exit};
use crate::ingest::{IngestOptions, OnBadFile, SetAsideFile};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::report::{Report, Summary, thousands};
use crate::tables::Table;
use crate::{aggregate, cql, delta, ingest, load};

/// How `run --follow` runs.
#[derive(Debug, Clone, Args)]
pub struct FollowOptions {
    /// Keep running: a micro-batch (ingest -> aggregate -> load -> profiles) whenever new landing files
    /// appear, until SIGINT/SIGTERM (or --until-idle / --max-batches).
    #[arg(long, conflicts_with = "generate")]
    pub follow: bool,
    /// How often to look for new files when the last look found none (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop when a look finds nothing new and nothing is left to load.
    #[arg(long)]
    pub until_idle: bool,
    /// Stop after this many micro-batches that did work.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batches: Option<u64>,
    /// Compact small files every this many micro-batches (0: never); the stream's other
    /// housekeeping (vacuum, log cleanup) runs at the same cadence (every 10 when 0).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub compact_every: u64,
    /// Keep the tables' commit files (time travel) this long: the stream sets the tables'
    /// `delta.logRetentionDuration` to it and removes older ones that a checkpoint holds.
    #[arg(long, default_value = "2days", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,
    /// Keep files the tables no longer use (replaced aggregates and profiles, compacted
    /// files) this long for readers of older versions, then delete them: the stream sets the
    /// tables' `delta.deletedFileRetentionDuration` to it. At least 5 minutes.
    #[arg(long, default_value = "15min", value_parser = parse_vacuum_retention)]
    pub vacuum_retention: Duration,
    /// Bring the customer profiles (and their serving table) up to date at most this often,
    /// beside the micro-batches (0s: as soon as the last update finished, when the aggregates
    /// changed), and once more when the stream stops. Each update rewrites one row per
    /// customer: it costs what the customer base costs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub profiles_every: Duration,
    /// With --follow, serve Prometheus metrics at HOST:PORT (/metrics, and /healthz, which
    /// `pipeline health` checks); a batch run ignores it. Not `requires = "follow"`: clap
    /// counts the environment variable as given, so a batch run in the follow service's
    /// container (which sets it) was refused.
    #[arg(long, env = "PIPELINE_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// The shortest `--vacuum-retention`: readers of a version (a `sql` query, `verify`, the
/// load's diff against the version it loaded last) need its files while they run.
pub const MIN_VACUUM_RETENTION: Duration = Duration::from_secs(300);

fn parse_vacuum_retention(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < MIN_VACUUM_RETENTION {
        return Err(format!(
            "{s} is shorter than 5 minutes: a query or a load reading a version needs its files \
             while it runs"
        ));
    }
    Ok(d)
}

impl FollowOptions {
    /// The retention the stream keeps its tables' history for.
    pub fn retention(&self) -> crate::maintain::retention::Retention {
        crate::maintain::retention::Retention {
            log: self.log_retention,
            files: self.vacuum_retention,
        }
    }

    /// The options that mean something only with `--follow`: given as flags without it,
    /// they are a usage error. Not clap's `requires`: clap counts an environment variable
    /// (and so a `pipeline.toml` value) as given, so one file or container could not hold
    /// both a stream's settings and batch runs.
    pub const NEEDS_FOLLOW: [&str; 3] = ["interval", "until_idle", "max_batches"];
}

/// One micro-batch, as printed (a line, or a JSON line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MicroBatch {
    /// Its number in this session (from 1).
    pub batch: u64,
    /// Landing files ingested.
    pub files: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows added to `customer_transactions`.
    pub rows_out: u64,
    /// Rows quarantined.
    pub rows_quarantined: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Files set aside as unusable (ingest's report has the details).
    pub set_aside: Vec<SetAsideFile>,
    /// Files that changed after they were ingested, first seen in this session.
    pub changed_files: Vec<String>,
    /// Days the aggregate wrote (recomputed or merged).
    pub days_aggregated: u64,
    /// How (full, recompute, append_merge), when it ran.
    pub aggregate_mode: Option<&'static str>,
    /// Rows written to ScyllaDB.
    pub rows_loaded: u64,
    /// Rows deleted from ScyllaDB.
    pub rows_deleted: u64,
    /// Profile rows written, when the profiles were brought up to date.
    pub profile_rows: Option<u64>,
    /// Files acknowledged by this micro-batch (their rows are served).
    pub files_acknowledged: u64,
    /// Their freshness: the largest, in seconds.
    pub freshness_max_s: Option<f64>,
    /// Each one's freshness, in seconds (milliseconds kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub freshness_s: Vec<f64>,
    /// Files ingested and not acknowledged yet (ScyllaDB unavailable).
    pub backlog_files: u64,
    /// Failures, `stage: message` (the stream goes on).
    pub errors: Vec<String>,
    /// Compaction: files rewritten, when it ran.
    pub compacted_files: Option<u64>,
    /// Housekeeping: files deleted past the vacuum retention, when it ran.
    pub vacuumed_files: Option<u64>,
    /// Housekeeping: commit files removed past the log retention, when it ran.
    pub logs_cleaned: Option<u64>,
    /// Seconds per step (ingest, aggregate, load, compact).
    pub steps: Vec<(&'static str, f64)>,
    /// Ingest's own steps, seconds.
    pub ingest_steps: Vec<(&'static str, f64)>,
    /// Wall time.
    pub seconds: f64,
    /// When it ended, in seconds since the session started.
    pub at_s: f64,
}

impl MicroBatch {
    /// The line printed for it.
    pub fn line(&self) -> String {
        let mut s = format!(
            "batch {}: {} file(s), {} rows in, {} out, {} quarantined, {} duplicate(s)",
            self.batch,
            self.files,
            thousands(self.rows_in),
            thousands(self.rows_out),
            thousands(self.rows_quarantined),
            thousands(self.duplicates),
        );
        if let Some(mode) = self.aggregate_mode {
            s += &format!("; aggregate {} day(s) ({mode})", self.days_aggregated);
        }
        s += &format!(
            "; load {} row(s), {} deleted",
            thousands(self.rows_loaded),
            thousands(self.rows_deleted)
        );
        if let Some(n) = self.profile_rows {
            s += &format!("; profiles {} row(s)", thousands(n));
        }
        if let Some(f) = self.freshness_max_s {
            s += &format!("; freshness max {f:.2} s");
        }
        if self.backlog_files > 0 {
            s += &format!("; backlog {} file(s)", self.backlog_files);
        }
        if let Some(c) = self.compacted_files {
            s += &format!("; compacted {c} file(s)");
        }
        if let Some(v) = self.vacuumed_files.filter(|v| *v > 0) {
            s += &format!("; vacuumed {v} file(s)");
        }
        if let Some(c) = self.logs_cleaned.filter(|c| *c > 0) {
            s += &format!("; {c} expired log file(s) removed");
        }
        s += &format!("; {:.2} s", self.seconds);
        for f in &self.set_aside {
            s += &format!("\n  set aside {}: {}", f.path, f.problem);
        }
        for f in &self.changed_files {
            s += &format!("\n  changed after ingest (not read again): {f}");
        }
        for e in &self.errors {
            s += &format!("\n  error (the stream goes on): {e}");
        }
        s
    }

    /// Whether it did anything (else the stream waits `--interval`). The profiles, which run
    /// beside the loop, do not count: a micro-batch that only reports them is printed, not
    /// counted.
    pub fn did_work(&self) -> bool {
        self.files > 0
            || self.aggregate_mode.is_some()
            || self.rows_loaded + self.rows_deleted > 0
            || self.compacted_files.is_some()
            || !self.set_aside.is_empty()
            || !self.changed_files.is_empty()
    }
}

/// Percentiles of the freshness over a session, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freshness {
    /// Files measured.
    pub files: u64,
    /// Median.
    pub p50_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Largest.
    pub max_s: f64,
}

/// A follow session: totals, freshness, and why it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowReport {
    /// Micro-batches that did work.
    pub micro_batches: u64,
    /// Landing files ingested.
    pub files: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows added.
    pub rows_out: u64,
    /// Rows quarantined.
    pub rows_quarantined: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Files set aside.
    pub files_set_aside: u64,
    /// Rows written to ScyllaDB.
    pub rows_loaded: u64,
    /// Customer profiles rewritten.
    pub profile_rows: u64,
    /// The stages the session ran (for its `run_history` row).
    #[serde(skip)]
    pub stages: Vec<Stage>,
    /// Failed stage attempts (the stream went on).
    pub errors: u64,
    /// Files still waiting for ScyllaDB at the end.
    pub backlog_files: u64,
    /// Landing -> served.
    pub freshness: Freshness,
    /// `signal`, `idle`, `max_batches`, or the fatal error.
    pub stopped_by: String,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory.
    pub peak_rss_bytes: u64,
    /// Version of the run history table that records the session.
    pub history_version: Option<i64>,
}

impl Report for FollowReport {
    fn stage(&self) -> &'static str {
        "follow"
    }

    fn skipped(&self) -> bool {
        self.micro_batches == 0
    }

    fn text(&self) -> String {
        let f = &self.freshness;
        format!(
            "follow: {} micro-batch(es) in {:.1} s, stopped by {}\n  {} file(s), {} rows in, {} out, {} quarantined, {} duplicate(s), {} file(s) set aside\n  {} row(s) loaded, {} error(s), backlog {} file(s)\n  freshness over {} file(s): p50 {:.2} s, p99 {:.2} s, max {:.2} s; peak RSS {}",
            self.micro_batches,
            self.seconds,
            self.stopped_by,
            self.files,
            thousands(self.rows_in),
            thousands(self.rows_out),
            thousands(self.rows_quarantined),
            thousands(self.duplicates),
            self.files_set_aside,
            thousands(self.rows_loaded),
            self.errors,
            self.backlog_files,
            f.files,
            f.p50_s,
            f.p99_s,
            f.max_s,
            crate::report::bytes(self.peak_rss_bytes),
        )
    }

    fn summary(&self) -> Summary {
        Summary {
            rows: self.rows_in,
            files: self.files,
            note: format!(
                "{} micro-batch(es); freshness p99 {:.2} s",
                self.micro_batches, self.freshness.p99_s
            ),
            ..Default::default()
        }
    }

    fn exit_code(&self) -> u8 {
        exit::OK
    }
}

/// Stop requests: the first signal asks to stop between micro-batches, the second aborts.
#[derive(Clone)]
struct Stop {
    signals: Arc<AtomicU32>,
    wake: Arc<Notify>,
}

impl Stop {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let stop = Stop {
            signals: Arc::new(AtomicU32::new(0)),
            wake: Arc::new(Notify::new()),
        };
        for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
            let mut s = signal(kind).map_err(|e| Error::io("cannot handle signals", e))?;
            let me = stop.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if me.signals.fetch_add(1, Ordering::SeqCst) >= 1 {
                        eprintln!("second signal: aborting now; the next start resumes");
                        std::process::exit(exit::INTERRUPTED.into());
                    }
                    eprintln!("stopping after this micro-batch (a second signal aborts)");
                    me.wake.notify_one();
                }
            });
        }
        Ok(stop)
    }

    fn requested(&self) -> bool {
        self.signals.load(Ordering::SeqCst) > 0
    }

    /// Sleep `d`, or less if a stop is requested.
    async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
        }
    }
}

/// What the loop carries from one micro-batch to the next.
struct State {
    ingest: IngestOptions,
    /// Ingest's tables, open from one micro-batch to the next.
    ingest_tables: ingest::Kept,
    /// Aggregate's and load's tables, likewise.
    kept: crate::delta::Kept,
    load_selected: bool,
    session: Option<Arc<Session>>,
    /// Landing times (µs) of files ingested, not yet aggregated.
    awaiting_aggregate: Vec<i64>,
    /// ... aggregated, not yet acknowledged by ScyllaDB.
    awaiting_load: Vec<i64>,
    /// Changed files already reported in this session.
    changed_seen: HashSet<String>,
    /// "Waiting for the landing folder" was said.
    waiting_said: bool,
    freshness: hdrhistogram::Histogram<u64>,
    housekeeping: Housekeeping,
    profiles: Profiles,
    report: FollowReport,
    metrics: Arc<Metrics>,
}

/// Run micro-batches until stopped; the session's report comes back with the result.
pub async fn follow(layout: &Layout, opts: &RunOptions, json: bool) -> (FollowReport, Result<()>) {
    let started = Instant::now();
    let now = chrono::Utc::now();
    let (mut state, stop) = match start(layout, opts).await {
        Ok(s) => s,
        Err(e) => return (FollowReport::default(), Err(e)),
    };
    let f = &opts.follow;
    let result = loop {
        if stop.requested() {
            state.report.stopped_by = "signal".into();
            break Ok(());
        }
        let batch = match micro_batch(layout, opts, &mut state).await {
            Ok(b) => MicroBatch {
                at_s: started.elapsed().as_secs_f64(),
                ..b
            },
            Err(e) => {
                state.report.stopped_by = format!("error: {}", e.chain());
                break Err(e);
            }
        };
        let idle = !batch.did_work() && batch.backlog_files == 0;
        if !idle || batch.profile_rows.is_some() || !batch.errors.is_empty() {
            print_batch(json, &batch);
        }
        if idle && f.until_idle {
            state.report.stopped_by = "idle".into();
            break Ok(());
        }
        if f.max_batches
            .is_some_and(|n| state.report.micro_batches >= n)
        {
            state.report.stopped_by = "max_batches".into();
            break Ok(());
        }
        if !batch.did_work() {
            stop.sleep(f.interval).await;
        }
    };
    let result = stop_background(layout, opts, &mut state, json, result).await;
    let mut report = finish(state, started);
    let ended = chrono::Utc::now();
    match super::history::record(layout, &report.as_run(now, ended), (now, ended)).await {
        Ok(v) => report.history_version = Some(v),
        Err(e) => tracing::warn!(error = %e, "could not record the session in the history table"),
    }
    (report, result)
}

/// Let the background work in flight finish (stopping leaves nothing half-done), then, when
/// the loop ended well, bring the profiles waiting for their interval up to date.
async fn stop_background(
    layout: &Layout,
    opts: &RunOptions,
    st: &mut State,
    json: bool,
    result: Result<()>,
) -> Result<()> {
    let mut b = MicroBatch {
        batch: st.report.micro_batches + 1,
        ..Default::default()
    };
    st.housekeeping.finish(&mut b).await;
    let mut result = match st.profiles.finished(true).await {
        Some(done) => result.and(profiles_done(done, st, &mut b)),
        None => result,
    };
    if result.is_ok() && st.profiles.behind() && opts.selected().contains(&Stage::Profiles) {
        st.profiles
            .start(layout, &opts.profiles, &opts.load, profiles_session(st))
            .await;
        if let Some(done) = st.profiles.finished(true).await {
            result = profiles_done(done, st, &mut b);
        }
    }
    if b.profile_rows.is_some() || !b.errors.is_empty() {
        print_batch(json, &b);
    }
    st.report.errors += b.errors.len() as u64;
    result
}

/// Signals, metrics, the ingest policy of a stream.
async fn start(layout: &Layout, opts: &RunOptions) -> Result<(State, Stop)> {
    if opts.follow.interval.is_zero() {
        return Err(Error::Invalid(
            "run --follow: --interval must be more than 0 (e.g. 500ms): 0 would spin".into(),
        ));
    }
    let stop = Stop::install()?;
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = opts.follow.metrics_addr {
        let bound = metrics.serve(addr).await?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    let selected = opts.selected();
    // As in a batch run: without ScyllaDB configured or answering, the stream stops at the
    // aggregates (said once); with it configured, an outage is a backlog, never a skip.
    let load_selected = selected.contains(&Stage::Load)
        && (opts.load_requested() || cql::answers(&opts.load.scylla).await);
    if selected.contains(&Stage::Load) && !load_selected {
        eprintln!(
            "no ScyllaDB at {}: following without load (start one, or set SCYLLA_URI)",
            opts.load.scylla.scylla_uri
        );
    }
    let state = State {
        ingest: IngestOptions {
            // A stream sets a bad file aside rather than stopping (unless told to stop).
            on_bad_file: Some(opts.ingest.on_bad_file(OnBadFile::Skip)),
            // Its housekeeping merges the large tiers of the id index in the background.
            inline_index_merge_bytes: Some(ingest::STREAM_INLINE_MERGE_BYTES),
            ..opts.ingest.clone()
        },
        ingest_tables: ingest::Kept::default(),
        kept: crate::delta::Kept::default(),
        load_selected,
        session: None,
        awaiting_aggregate: Vec::new(),
        awaiting_load: Vec::new(),
        changed_seen: HashSet::new(),
        waiting_said: false,
        freshness: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid bounds"),
        housekeeping: Housekeeping::start(
            layout,
            opts.follow.retention(),
            opts.follow.compact_every,
            metrics.clone(),
        )
        .await,
        profiles: Profiles::new(opts.follow.profiles_every),
        report: FollowReport {
            stages: (selected.iter().copied())
                .filter(|s| *s != Stage::Load || load_selected)
                .collect(),
            ..Default::default()
        },
        metrics,
    };
    if selected.contains(&Stage::Generate) {
        return Err(Error::Invalid(
            "run --follow does not generate: run `pipeline generate --follow` beside it".into(),
        ));
    }
    Ok((state, stop))
}

fn print_batch(json: bool, b: &MicroBatch) {
    if json {
        crate::report::stdout_line(&serde_json::to_string(b).expect("reports serialise"));
    } else {
        crate::report::stdout_line(&b.line());
    }
}

/// One micro-batch: ingest, aggregate, load, profiles, and housekeeping when due.
async fn micro_batch(layout: &Layout, opts: &RunOptions, st: &mut State) -> Result<MicroBatch> {
    let t = Instant::now();
    let mut b = MicroBatch {
        batch: st.report.micro_batches + 1,
        ..Default::default()
    };
    let selected = opts.selected();
    if selected.contains(&Stage::Ingest) {
        let t = Instant::now();
        ingest_step(layout, st, &mut b).await?;
        b.steps.push(("ingest", t.elapsed().as_secs_f64()));
    }
    if selected.contains(&Stage::Aggregate) {
        let t = Instant::now();
        aggregate_step(layout, opts, st, &mut b).await?;
        b.steps.push(("aggregate", t.elapsed().as_secs_f64()));
    } else {
        st.awaiting_load.append(&mut st.awaiting_aggregate);
    }
    if st.load_selected {
        let t = Instant::now();
        load_step(layout, opts, st, &mut b).await?;
        b.steps.push(("load", t.elapsed().as_secs_f64()));
    } else {
        acknowledge(st, &mut b);
    }
    // Beside the loop: the profiles hold up no micro-batch.
    if b.aggregate_mode.is_some() {
        st.profiles.aggregates_changed();
    }
    if let Some(done) = st.profiles.finished(false).await {
        profiles_done(done, st, &mut b)?;
    }
    if opts.selected().contains(&Stage::Profiles) && st.profiles.due() {
        st.profiles
            .start(layout, &opts.profiles, &opts.load, profiles_session(st))
            .await;
    }
    for (step, seconds) in &b.steps {
        st.metrics.step(step, *seconds);
    }
    b.backlog_files = (st.awaiting_aggregate.len() + st.awaiting_load.len()) as u64;
    st.metrics.backlog("load", b.backlog_files as usize);
    if b.did_work() {
        st.report.micro_batches += 1;
        st.metrics.micro_batches.inc();
    }
    let busy = st.profiles.running().then_some(Table::Profiles);
    st.housekeeping.after(layout, &mut b, busy).await;
    if b.errors.is_empty() {
        st.metrics
            .last_success
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    st.report.errors += b.errors.len() as u64;
    crate::process::release_free_memory();
    b.seconds = t.elapsed().as_secs_f64();
    Ok(b)
}

/// The session the profiles are served with (None: the stream does not load, or is not
/// connected yet).
fn profiles_session(st: &State) -> Option<Arc<Session>> {
    st.session.clone().filter(|_| st.load_selected)
}

/// Take a finished profiles run into the micro-batch `b`: its rows, steps and errors.
fn profiles_done(done: Done, st: &mut State, b: &mut MicroBatch) -> Result<()> {
    let before = b.errors.len();
    match done.written {
        Ok(n) => {
            st.report.profile_rows += n;
            b.profile_rows = Some(n);
        }
        Err(e) => survivable("profiles", e, st, b)?,
    }
    b.steps.push(("profiles", done.seconds));
    if let Some((served, seconds)) = done.served {
        if let Err(e) = served {
            survivable("load", e, st, b)?;
        }
        b.steps.push(("load_profiles", seconds));
    }
    // Behind still when a step failed: tried again at the next interval.
    if b.errors.len() > before {
        st.profiles.failed();
    }
    Ok(())
}

/// A failure the stream survives (retried in the next micro-batch), or a fatal one.
fn survivable(stage: &str, e: Error, st: &State, b: &mut MicroBatch) -> Result<()> {
    let ok = e.is_transient()
        || (stage == "load" && matches!(e, Error::LoadIncomplete { .. } | Error::Scylla { .. }));
    if !ok {
        st.metrics.error(stage);
        return Err(e);
    }
    tracing::warn!(stage, error = %e.chain(), "micro-batch step failed; retried in the next one");
    st.metrics.error(stage);
    b.errors.push(format!("{stage}: {}", e.chain()));
    Ok(())
}

async fn ingest_step(layout: &Layout, st: &mut State, b: &mut MicroBatch) -> Result<()> {
    // A stream may start before its source: wait for the landing folder (said once).
    let exists = match ingest::landing_exists(layout).await {
        Ok(exists) => exists,
        Err(e) => return survivable("ingest", e, st, b),
    };
    if !exists {
        if !st.waiting_said {
            eprintln!(
                "waiting for the landing folder {} to appear",
                layout.landing_shown()
            );
            st.waiting_said = true;
        }
        return Ok(());
    }
    let r = match ingest::run_keeping(
        layout,
        &st.ingest,
        &Progress::hidden(),
        &mut st.ingest_tables,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return survivable("ingest", e, st, b),
    };
    st.ingest_tables.share_transactions(&mut st.kept);
    b.files = r.files_ingested;
    b.rows_in = r.rows_in;
    b.rows_out = r.rows_out;
    b.rows_quarantined = r.rows_quarantined;
    b.duplicates = r.duplicates;
    b.set_aside = r.set_aside_files.clone();
    b.ingest_steps = r.steps.clone();
    for c in &r.changed_files {
        if st.changed_seen.insert(c.path.clone()) {
            eprintln!(
                "warning: {} changed after it was ingested; its new content is not read. {}",
                c.path,
                ingest::CHANGED_ADVICE
            );
            b.changed_files.push(c.path.clone());
        }
    }
    st.awaiting_aggregate.extend(&r.landed_us);
    let m = &st.metrics;
    m.files_ingested.inc_by(r.files_ingested);
    m.files_set_aside.inc_by(r.set_aside_files.len() as u64);
    m.rows_in.inc_by(r.rows_in);
    m.rows_out.inc_by(r.rows_out);
    m.rows_quarantined.inc_by(r.rows_quarantined);
    m.duplicates.inc_by(r.duplicates);
    let t = &mut st.report;
    t.files += r.files_ingested;
    t.rows_in += r.rows_in;
    t.rows_out += r.rows_out;
    t.rows_quarantined += r.rows_quarantined;
    t.duplicates += r.duplicates;
    t.files_set_aside += r.set_aside_files.len() as u64;
    Ok(())
}

async fn aggregate_step(
    layout: &Layout,
    opts: &RunOptions,
    st: &mut State,
    b: &mut MicroBatch,
) -> Result<()> {
    if !exists(layout, Table::Transactions).await {
        return Ok(()); // nothing ingested yet
    }
    let hidden = Progress::hidden();
    match aggregate::run_keeping(layout, &opts.aggregate, &hidden, &mut st.kept).await {
        Ok(r) => {
            if !r.skipped() {
                b.aggregate_mode = Some(r.mode);
                b.days_aggregated = r.days_recomputed;
            }
            st.awaiting_load.append(&mut st.awaiting_aggregate);
            Ok(())
        }
        Err(e) => survivable("aggregate", e, st, b),
    }
}

async fn load_step(
    layout: &Layout,
    opts: &RunOptions,
    st: &mut State,
    b: &mut MicroBatch,
) -> Result<()> {
    if !exists(layout, Table::Aggregates).await {
        return Ok(()); // nothing aggregated yet
    }
    if st.session.is_none() {
        match connect(opts).await {
            Ok(s) => st.session = Some(Arc::new(s)),
            Err(e) => return survivable("load", e, st, b),
        }
    }
    let session = st.session.as_ref().expect("connected above");
    let hidden = Progress::hidden();
    match load::run_keeping(session, layout, &opts.load, &hidden, &mut st.kept).await {
        Ok(r) => {
            b.rows_loaded = r.counts.rows_written;
            b.rows_deleted = r.counts.rows_deleted;
            st.metrics.rows_loaded.inc_by(r.counts.rows_written);
            st.report.rows_loaded += r.counts.rows_written;
            acknowledge(st, b);
            Ok(())
        }
        Err(e) => {
            // Reconnect next time: the node may have been replaced.
            st.session = None;
            survivable("load", e, st, b)
        }
    }
}

/// Whether a stage has created `table` (its log folder is there): until then the stages
/// after it wait rather than fail, as a stream may start before its source.
async fn exists(layout: &Layout, table: Table) -> bool {
    delta::has_log(layout, table).await.unwrap_or(false)
}

async fn connect(opts: &RunOptions) -> Result<Session> {
    let session = cql::connect(&opts.load.scylla).await?;
    cql::schema::init(&session, &opts.load.scylla).await?;
    Ok(session)
}

/// The files whose rows are now served: their freshness ends here.
fn acknowledge(st: &mut State, b: &mut MicroBatch) {
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut max = None::<f64>;
    for landed in st.awaiting_load.drain(..) {
        let us = (now_us - landed).max(1) as u64;
        let _ = st.freshness.record(us.min(st.freshness.high()));
        let s = us as f64 / 1e6;
        st.metrics.freshness.observe(s);
        max = Some(max.map_or(s, |m| m.max(s)));
        b.freshness_s.push((s * 1e3).round() / 1e3);
        b.files_acknowledged += 1;
    }
    b.freshness_max_s = max;
}

fn finish(st: State, started: Instant) -> FollowReport {
    let h = &st.freshness;
    let mut r = st.report;
    r.backlog_files = (st.awaiting_aggregate.len() + st.awaiting_load.len()) as u64;
    r.freshness = Freshness {
        files: h.len(),
        p50_s: h.value_at_quantile(0.50) as f64 / 1e6,
        p99_s: h.value_at_quantile(0.99) as f64 / 1e6,
        max_s: h.max() as f64 / 1e6,
    };
    r.seconds = started.elapsed().as_secs_f64();
    r.peak_rss_bytes = crate::progress::peak_rss_bytes();
    r
}

impl FollowReport {
    /// Print the summary: text, or one JSON line (the last of the stream's JSON lines).
    pub fn print_last(&self, json: bool) {
        crate::report::mark_printed();
        if json {
            crate::report::stdout_line(&serde_json::to_string(self).expect("reports serialise"));
        } else {
            crate::report::stdout_line(&self.text());
        }
    }

    /// The session as a run history row: its totals as the stages' summaries.
    fn as_run(
        &self,
        started: chrono::DateTime<chrono::Utc>,
        ended: chrono::DateTime<chrono::Utc>,
    ) -> RunReport {
        // The stages the session ran (the row said "ingest, aggregate, load" whatever
        // --stages chose, and never named profiles).
        let stage = |stage: &'static str, rows: u64, files: u64| StageSummary {
            stage,
            skipped: rows == 0,
            summary: Summary {
                rows,
                files,
                ..Default::default()
            },
            seconds: self.seconds,
            ..Default::default()
        };
        RunReport {
            run_id: uuid::Uuid::new_v4().to_string(),
            started_at: crate::report::timestamp(started),
            ended_at: crate::report::timestamp(ended),
            outcome: format!(
                "follow: {} micro-batch(es), freshness p99 {:.2} s, stopped by {}",
                self.micro_batches, self.freshness.p99_s, self.stopped_by
            ),
            stages: self
                .stages
                .iter()
                .filter_map(|s| match s {
                    Stage::Ingest => Some(stage("ingest", self.rows_in, self.files)),
                    Stage::Aggregate => Some(stage("aggregate", self.rows_out, 0)),
                    Stage::Profiles => Some(stage("profiles", self.profile_rows, 0)),
                    Stage::Load => Some(stage("load", self.rows_loaded, 0)),
                    Stage::Generate => None,
                })
                .collect(),
            seconds: self.seconds,
            failed_in: None,
            history_version: None,
        }
    }
}
