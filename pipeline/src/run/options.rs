//! `run`'s options: which stages, how often to retry, and every stage's own options (one
//! definition each, shared with the stage's command).

use clap::Args;
use serde::Serialize;

use crate::aggregate::AggregateOptions;
use crate::generate::GenerateOptions;
use crate::ingest::IngestOptions;
use crate::load::LoadOptions;
use crate::profiles::ProfilesOptions;

/// A stage of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Synthetic raw files.
    Generate,
    /// Raw files into `customer_transactions`.
    Ingest,
    /// Daily aggregates.
    Aggregate,
    /// Customer profiles from the aggregates.
    Profiles,
    /// Aggregates into ScyllaDB.
    Load,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [
        Stage::Generate,
        Stage::Ingest,
        Stage::Aggregate,
        Stage::Profiles,
        Stage::Load,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Generate => "generate",
            Stage::Ingest => "ingest",
            Stage::Aggregate => "aggregate",
            Stage::Profiles => "profiles",
            Stage::Load => "load",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown stage `{s}` (generate, ingest, aggregate, profiles, load)")
            })
    }
}

/// How `run` runs.
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Generate a batch first (with the generate options).
    #[arg(long)]
    pub generate: bool,
    /// Run exactly these stages (comma-separated: generate,ingest,aggregate,profiles,load).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "to"])]
    pub stages: Vec<Stage>,
    /// First stage to run.
    #[arg(long)]
    pub from: Option<Stage>,
    /// Last stage to run.
    #[arg(long)]
    pub to: Option<Stage>,
    /// Attempts per stage for transient failures (a concurrent commit, ScyllaDB trouble).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Continuous mode.
    #[command(flatten, next_help_heading = "Follow (continuous mode)")]
    pub follow: super::follow::FollowOptions,
    /// Generate options.
    #[command(flatten, next_help_heading = "Generate")]
    pub generate_options: GenerateOptions,
    /// Ingest options.
    #[command(flatten, next_help_heading = "Ingest")]
    pub ingest: IngestOptions,
    /// Aggregate options.
    #[command(flatten, next_help_heading = "Aggregate")]
    pub aggregate: AggregateOptions,
    /// Profiles options.
    #[command(flatten, next_help_heading = "Profiles")]
    pub profiles: ProfilesOptions,
    /// Load options (and where ScyllaDB is).
    #[command(flatten, next_help_heading = "Load")]
    pub load: LoadOptions,
    /// Whether `--scylla-uri` was given (flag, environment or configuration file).
    #[arg(skip)]
    pub scylla_configured: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

impl RunOptions {
    /// The stages to run, in pipeline order: `--stages`, or `--from`..`--to` (from ingest by
    /// default); `--generate` adds generate to either (it was dropped beside `--stages`, so
    /// `run --generate --stages ingest,...` ingested nothing and exited 0).
    pub fn selected(&self) -> Vec<Stage> {
        let mut v: Vec<Stage> = if self.stages.is_empty() {
            let from = self.from.unwrap_or(Stage::Ingest);
            let to = self.to.unwrap_or(Stage::Load);
            Stage::ALL
                .into_iter()
                .filter(|s| *s >= from && *s <= to)
                .collect()
        } else {
            self.stages.clone()
        };
        if self.generate {
            v.push(Stage::Generate);
        }
        v.sort();
        v.dedup();
        v
    }

    /// A selection of no stage is a mistake, not a run that succeeds doing nothing
    /// (`run --from load --to ingest` printed "succeeded in 0.00 s" and recorded an empty run).
    pub fn check(&self) -> crate::error::Result<()> {
        if !self.selected().is_empty() {
            return Ok(());
        }
        let named = |o: Option<Stage>, default: Stage| match o {
            Some(s) => s.name().to_string(),
            None => format!("{} (the default)", default.name()),
        };
        let order: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        Err(crate::error::Error::Invalid(format!(
            "run: --from {} comes after --to {}, so no stage would run. Stages run in the order {}: \
             swap them, or name the stages with --stages",
            named(self.from, Stage::Ingest),
            named(self.to, Stage::Load),
            order.join(", ")
        )))
    }

    /// Load was asked for explicitly (otherwise it is skipped when ScyllaDB does not answer).
    pub fn load_requested(&self) -> bool {
        self.stages.contains(&Stage::Load) || self.to == Some(Stage::Load) || self.scylla_configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunOptions,
    }

    fn selected(args: &[&str]) -> Vec<&'static str> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
        cli.run.selected().iter().map(|s| s.name()).collect()
    }

    #[test]
    fn generate_is_added_to_any_selection() {
        assert_eq!(selected(&[]), ["ingest", "aggregate", "profiles", "load"]);
        assert_eq!(
            selected(&["--generate"]),
            ["generate", "ingest", "aggregate", "profiles", "load"]
        );
        assert_eq!(
            selected(&["--generate", "--stages", "ingest,aggregate"]),
            ["generate", "ingest", "aggregate"]
        );
        assert_eq!(
            selected(&["--generate", "--from", "aggregate", "--to", "profiles"]),
            ["generate", "aggregate", "profiles"]
        );
        assert_eq!(
            selected(&["--from", "generate", "--to", "ingest"]),
            ["generate", "ingest"]
        );
        assert_eq!(selected(&["--stages", "load,ingest"]), ["ingest", "load"]);
    }
}
