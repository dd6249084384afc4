//! `run`'s options: which stages, how often to retry, and every stage's own options (one
//! definition each, shared with the stage's command), and those of `run --follow`.

use std::net::SocketAddr;
use std::time::Duration;

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
    pub follow: FollowOptions,
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
