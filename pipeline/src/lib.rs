//! A lakehouse ETL pipeline: synthetic transactions -> Delta Lake -> daily aggregates ->
//! ScyllaDB.
//!
//! Every stage is a module folder of the same shape: its options (one `clap` definition,
//! shared by its command and `pipeline run`), a plan, the execution steps, and a report that
//! prints itself ([`report::Report`]). Every stage is idempotent: what it consumed is
//! committed atomically with its output in the Delta log (application transactions), never
//! in a side store.
//!
//! Shared facts live once: the tables ([`tables`]), their schemas ([`schema`]), paths
//! ([`layout`]), days ([`dates`]), Delta access and commits ([`delta`]), the ScyllaDB
//! connection and codec ([`cql`]).

#![warn(missing_docs)]

pub mod aggregate;
pub mod config;
pub mod cql;
pub mod dates;
pub mod delta;
pub mod error;
pub mod failpoints;
pub mod generate;
pub mod html;
pub mod ingest;
pub mod kafka;
pub mod layout;
pub mod load;
pub mod lock;
pub mod lookup;
pub mod maintain;
pub mod process;
pub mod profiles;
pub mod progress;
pub mod report;
pub mod rules;
pub mod run;
pub mod schema;
pub mod sql;
pub mod store;
pub mod tables;
pub mod verify;

pub use error::{Error, Result};

/// `0.1.0 (commit 1a2b3c4d5e6f)`: the package version and the commit it was built from
/// (build.rs; "unknown" outside a git checkout without `PIPELINE_GIT_COMMIT`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PIPELINE_GIT_COMMIT"),
    ")"
);
pub use layout::Layout;

/// The defaults of a stage's options, as its command line defines them (one definition: the
/// `clap` attributes).
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every option has a default");
    T::from_arg_matches(&matches).expect("defaults match their own definition")
}
