//! `profiles`' options: one definition for the command line and `pipeline run`.

use clap::Args;
use serde::Serialize;

/// How profiles runs.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ProfilesOptions {
    /// Recompute every customer instead of only those whose days changed.
    #[arg(long = "full-profiles", id = "full_profiles")]
    pub full: bool,
    /// The day the profiles are as of (their 7- and 30-day windows end on it; aggregate rows
    /// after it are not counted): `auto` (the default) is the latest *active* day of the
    /// aggregates, one with at least 5% of the median day's customers, so a few stray rows
    /// on a far later day do not move every window; `latest` is the latest day with any
    /// row; or a date `YYYY-MM-DD`.
    #[arg(long, env = "PIPELINE_AS_OF_DAY", default_value = "auto", value_parser = parse_as_of)]
    #[serde(serialize_with = "as_of_text")]
    pub as_of_day: AsOf,
}

impl Default for ProfilesOptions {
    fn default() -> Self {
        crate::defaults()
    }
}

/// How the as-of day is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The latest active day ([`crate::dates::active_span`]).
    Auto,
    /// The latest day with any aggregate row.
    Latest,
    /// This day.
    Day(crate::dates::Day),
}

fn parse_as_of(s: &str) -> std::result::Result<AsOf, String> {
    match s {
        "auto" => Ok(AsOf::Auto),
        "latest" => Ok(AsOf::Latest),
        _ => crate::dates::parse(s)
            .map(AsOf::Day)
            .ok_or_else(|| format!("`{s}`: expected auto, latest or a date YYYY-MM-DD")),
    }
}

fn as_of_text<S: serde::Serializer>(v: &AsOf, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        AsOf::Auto => s.serialize_str("auto"),
        AsOf::Latest => s.serialize_str("latest"),
        AsOf::Day(d) => s.serialize_str(&crate::dates::format(*d)),
    }
}
