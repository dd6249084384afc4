//! A lakehouse ETL pipeline: synthetic transactions -> Delta Lake -> daily aggregates -> ScyllaDB.
//!
//! Each stage is a module with an options struct and a `run` returning a serialisable report.
//! Every stage is idempotent: what it consumed is committed atomically with its output in the
//! Delta log (application transactions), never in a side store.

pub mod aggregate;
pub mod delta;
pub mod error;
pub mod generate;
pub mod ingest;
pub mod layout;
pub mod maintain;
pub mod progress;
pub mod rules;
pub mod run;
pub mod schema;
pub mod serve;

pub use error::{Error, Result};
pub use layout::Layout;

/// Environment variable naming failpoints (comma-separated) at which the process aborts, as if
/// killed: used by the crash tests to stop a stage at an exact point, e.g. between writing data
/// files and committing them.
pub const FAILPOINTS_ENV: &str = "PIPELINE_FAILPOINTS";

/// Abort the process here if `name` is listed in [`FAILPOINTS_ENV`]. `abort` runs no
/// destructors and flushes nothing, like SIGKILL.
pub fn failpoint(name: &str) {
    if let Ok(list) = std::env::var(FAILPOINTS_ENV)
        && list.split(',').any(|p| p.trim() == name)
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
