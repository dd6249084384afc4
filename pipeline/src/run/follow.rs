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
use std::sync::Arc;
use std::time::Instant;

use scylla::client::session::Session;

use super::follow_report::{FollowReport, Freshness, MicroBatch};
use super::housekeeping::Housekeeping;
use super::metrics::Metrics;
use super::options::{RunOptions, Stage};
use super::profiles_task::{Done, Profiles};
use super::steps::{self, Kept};
use super::stop::Stop;
use crate::error::{Error, Result};
use crate::ingest::{self, IngestOptions, OnBadFile};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::report::Report;
use crate::tables::Table;
use crate::{delta, load};

/// What the loop carries from one micro-batch to the next.
struct State {
    ingest: IngestOptions,
    /// The stages' tables and session, open from one micro-batch to the next.
    kept: Kept,
    load_selected: bool,
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
    let mut load_selected = selected.contains(&Stage::Load);
    if load_selected && let Some(why) = steps::load_skipped(opts).await {
        eprintln!("following without load: {why}");
        load_selected = false;
    }
    let state = State {
        ingest: IngestOptions {
            // A stream sets a bad file aside rather than stopping (unless told to stop).
            on_bad_file: Some(opts.ingest.on_bad_file(OnBadFile::Skip)),
            // Its housekeeping merges the large tiers of the id index in the background.
            inline_index_merge_bytes: Some(ingest::STREAM_INLINE_MERGE_BYTES),
            ..opts.ingest.clone()
        },
        kept: Kept::default(),
        load_selected,
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
    st.kept.connected().filter(|_| st.load_selected)
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
    // A stream may start before its source: wait for the landing folder (said once). A
    // topic's absence is the ingest step's error, said at every try.
    let exists = match st.ingest.source {
        Some(_) => Ok(true),
        None => ingest::landing_exists(layout).await,
    };
    let exists = match exists {
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
    let r = match steps::ingest(layout, &st.ingest, &Progress::hidden(), &mut st.kept).await {
        Ok(r) => r,
        Err(e) => return survivable("ingest", e, st, b),
    };
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
    if let Some(read) = &r.kafka {
        m.kafka_lag(read);
    }
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
    match steps::aggregate(layout, &opts.aggregate, &hidden, &mut st.kept).await {
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
    let hidden = Progress::hidden();
    let apart = load::Profiles::Apart;
    match steps::load(layout, &opts.load, &hidden, &mut st.kept, apart).await {
        Ok(r) => {
            b.rows_loaded = r.counts.rows_written;
            b.rows_deleted = r.counts.rows_deleted;
            st.metrics.rows_loaded.inc_by(r.counts.rows_written);
            st.report.rows_loaded += r.counts.rows_written;
            acknowledge(st, b);
            Ok(())
        }
        Err(e) => survivable("load", e, st, b),
    }
}

/// Whether a stage has created `table` (its log folder is there): until then the stages
/// after it wait rather than fail, as a stream may start before its source.
async fn exists(layout: &Layout, table: Table) -> bool {
    delta::has_log(layout, table).await.unwrap_or(false)
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
