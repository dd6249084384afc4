//! How `run --follow` is stopped: the first SIGINT/SIGTERM asks it to stop between
//! micro-batches, the second aborts at once (every stage is safe to kill).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Result, exit};

/// Stop requests: the first signal asks to stop between micro-batches, the second aborts.
#[derive(Clone)]
pub struct Stop {
    signals: Arc<AtomicU32>,
    wake: Arc<Notify>,
}

impl Stop {
    pub fn install() -> Result<Self> {
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

    pub fn requested(&self) -> bool {
        self.signals.load(Ordering::SeqCst) > 0
    }

    /// Sleep `d`, or less if a stop is requested.
    pub async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
        }
    }
}
