//! The customer profiles of `run --follow`, brought up to date on their cadence
//! (`--profiles-every`) in a task beside the loop, as the housekeeping is.
//!
//! The profiles are a whole-table recompute and a serving diff (1.5–2 s at 50,000 rows/s
//! after an hour, measured): run inside a micro-batch, they held up the files that landed
//! meanwhile, and were most of the stream's late p99 freshness. Beside the loop they hold up
//! nothing: ingest, aggregate and load go on, and the profiles read the aggregates' snapshot
//! of their start (a later run picks up what changed since). One run at a time; the stream
//! waits for a run in flight before it stops, then brings the profiles up to date once more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session::Session;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::layout::Layout;
use crate::load::LoadOptions;
use crate::profiles::ProfilesOptions;
use crate::tables::Table;
use crate::{delta, load};

/// How soon a failed run is tried again (or the interval, when shorter): a commit that lost
/// a race (the housekeeping setting the new table's retention, say) should not leave the
/// profiles behind for a whole interval, and a ScyllaDB outage should not recompute them in
/// every micro-batch.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What a run did: each step's result and seconds.
pub struct Done {
    pub written: Result<u64>,
    pub seconds: f64,
    /// Serving (when the stream loads): its result and seconds.
    pub served: Option<(Result<()>, f64)>,
}

/// The profiles' cadence and the run in flight.
pub struct Profiles {
    every: Duration,
    /// The wait before the next run: `every`, or [`RETRY_AFTER`] after a failure.
    wait: Duration,
    /// When the last run started (None: not in this session).
    at: Option<Instant>,
    /// The aggregates changed since the last run started (or it failed).
    behind: bool,
    running: Option<JoinHandle<Done>>,
}

impl Profiles {
    /// A stream may start behind a batch run's aggregates: the first run is due at once.
    pub fn new(every: Duration) -> Self {
        Profiles {
            every,
            wait: every,
            at: None,
            behind: true,
            running: None,
        }
    }

    /// The aggregates changed.
    pub fn aggregates_changed(&mut self) {
        self.behind = true;
    }

    /// The last run failed: tried again soon.
    pub fn failed(&mut self) {
        self.behind = true;
        self.wait = self.every.min(RETRY_AFTER);
    }

    /// Behind the aggregates, none running, and the interval passed.
    pub fn due(&self) -> bool {
        self.behind && self.running.is_none() && self.at.is_none_or(|at| at.elapsed() >= self.wait)
    }

    /// A run is in flight (it writes the profiles table).
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Behind the aggregates (the stream brings them up to date before it stops).
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// Start a run (once the aggregates table exists); serve the result with `session`.
    pub async fn start(
        &mut self,
        layout: &Layout,
        profiles: &ProfilesOptions,
        load: &LoadOptions,
        session: Option<Arc<Session>>,
    ) {
        if !delta::has_log(layout, Table::Aggregates)
            .await
            .unwrap_or(false)
        {
            return;
        }
        self.at = Some(Instant::now());
        self.wait = self.every;
        self.behind = false;
        let (layout, profiles, load) = (layout.clone(), profiles.clone(), load.clone());
        self.running = Some(tokio::spawn(async move {
            let t = Instant::now();
            let written = super::steps::profiles(&layout, &profiles)
                .await
                .map(|r| r.rows_written);
            let seconds = t.elapsed().as_secs_f64();
            let served = match session {
                Some(session) => {
                    let t = Instant::now();
                    let r = load::serve_profiles(&session, &layout, &load).await;
                    Some((r.map(|_| ()), t.elapsed().as_secs_f64()))
                }
                None => None,
            };
            Done {
                written,
                seconds,
                served,
            }
        }));
    }

    /// The run in flight once it has finished (with `wait`, waits for it).
    pub async fn finished(&mut self, wait: bool) -> Option<Done> {
        if !wait && !self.running.as_ref()?.is_finished() {
            return None;
        }
        let handle = self.running.take()?;
        Some(handle.await.unwrap_or_else(|e| Done {
            written: Err(crate::error::Error::Invalid(format!(
                "internal error: the profiles task failed: {e}"
            ))),
            seconds: 0.0,
            served: None,
        }))
    }
}
