//! `profiles`' options: one definition for the command line and `pipeline run`.

use clap::Args;
use serde::Serialize;

/// How profiles runs.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ProfilesOptions {
    /// Recompute every customer instead of only those whose days changed.
    #[arg(long = "full-profiles", id = "full_profiles")]
    pub full: bool,
}
