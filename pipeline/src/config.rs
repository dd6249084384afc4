//! Configuration in one place. Every option of every command is a flag, an environment
//! variable and a key of `pipeline.toml`, all from the one `clap` definition of the option:
//! this module gives each option without an environment variable of its own the name
//! `PIPELINE_<OPTION>`, and makes the file's values the options' defaults, so clap applies
//! [`PRECEDENCE`] by itself (default < file < environment < flag).
//!
//! An option whose name means different things in different commands (`--from` is a day in
//! `lookup` and a stage in `run`) is per command: `PIPELINE_LOOKUP_FROM`, and in the file only
//! under `[lookup]`.
//!
//! Secrets are never options: the ScyllaDB password comes from `SCYLLA_PASSWORD` or a file
//! (`--scylla-password-file`), AWS credentials from the `AWS_*` environment variables, and
//! the file may not name either.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

use crate::error::{Error, Result};

/// The file's name, looked for in the data dir when `--config` is not given.
pub const FILE_NAME: &str = "pipeline.toml";

/// How an option's value is chosen: written once, shown at the end of every `--help`.
pub const PRECEDENCE: &str = "\
Configuration: each option is, from lowest to highest precedence, its default, its key in \
pipeline.toml (DATA_DIR/pipeline.toml, or the file given by --config or PIPELINE_CONFIG), its \
environment variable (shown as [env: ...]), or its flag. Secrets are never flags or file keys: \
SCYLLA_PASSWORD (or --scylla-password-file) and the AWS_* variables. Keys and variables: \
docs/configuration.md.";

/// Options that are not configuration: clap's own, and `--config` itself.
const NOT_CONFIG: [&str; 3] = ["help", "version", "config"];

/// What a file may not say, and where it goes instead.
fn secret_hint(key: &str) -> Option<&'static str> {
    if key.starts_with("aws_") {
        Some("AWS settings and credentials come from the AWS_* environment variables")
    } else if key.contains("password") && key != "scylla_password_file" {
        Some(
            "a password is never read from pipeline.toml: set SCYLLA_PASSWORD, or put it in a \
             file of its own and set scylla_password_file",
        )
    } else if key.contains("secret") || key.contains("token") {
        Some("secrets are never read from pipeline.toml: use the environment")
    } else {
        None
    }
}

/// An option as configuration sees it.
struct Opt {
    /// The commands that have it (`""` for the top level's global options).
    commands: BTreeSet<String>,
    /// Whether it is per command (see the module's documentation).
    per_command: bool,
}

/// Every configurable option by its id (`batch_size`), from the command tree.
fn options(root: &Command) -> BTreeMap<String, Opt> {
    // What an option means: its environment variable if it names one (the same variable is
    // the same setting), else its help text.
    let mut meanings: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut visit = |command: &str, arg: &Arg| {
        let id = arg.get_id().as_str();
        if arg.is_positional() || NOT_CONFIG.contains(&id) {
            return;
        }
        let meaning = match arg.get_env() {
            Some(env) => format!("env:{}", env.to_string_lossy()),
            None => arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
        };
        let entry = meanings.entry(id.to_string()).or_default();
        entry.0.insert(command.to_string());
        entry.1.insert(meaning);
    };
    for arg in root.get_arguments() {
        visit("", arg);
    }
    for sub in root.get_subcommands() {
        for arg in sub.get_arguments() {
            visit(sub.get_name(), arg);
        }
    }
    meanings
        .into_iter()
        .map(|(id, (commands, meanings))| {
            let per_command = meanings.len() > 1;
            (
                id,
                Opt {
                    commands,
                    per_command,
                },
            )
        })
        .collect()
}

/// The environment variable of an option without one of its own.
fn env_name(command: &str, id: &str, per_command: bool) -> String {
    let name = if per_command {
        format!("PIPELINE_{command}_{id}")
    } else {
        format!("PIPELINE_{id}")
    };
    name.replace('-', "_").to_ascii_uppercase()
}

/// A switch's variable takes any usual spelling (`1`, `yes`, `on`, `true`; `0`, `no`, `off`,
/// `false`), as clap recommends for switches read from the environment (only `true` and
/// `false` were accepted, with an error naming a `--json` flag nobody typed).
fn with_boolish(arg: Arg) -> Arg {
    if is_switch(&arg) {
        arg.value_parser(clap::builder::BoolishValueParser::new())
    } else {
        arg
    }
}

/// Give every option an environment variable, and every help the precedence.
pub fn with_env(root: Command) -> Command {
    let opts = options(&root);
    let add_env = |command: String| {
        let opts = &opts;
        move |arg: Arg| {
            let id = arg.get_id().as_str().to_string();
            match opts.get(&id) {
                Some(o) if arg.get_env().is_none() => {
                    let env = env_name(&command, &id, o.per_command);
                    with_boolish(arg.env(env))
                }
                Some(_) => with_boolish(arg),
                None => arg,
            }
        }
    };
    let root = root.mut_args(add_env(String::new()));
    root.after_help(PRECEDENCE).mut_subcommands(|sub| {
        let name = sub.get_name().to_string();
        sub.mut_args(add_env(name)).after_help(PRECEDENCE)
    })
}

/// Every environment variable that sets an option, with the commands and the option, in
/// name order (docs/configuration.md lists them; a test keeps it true).
pub fn variables(root: &Command) -> Vec<(String, String, String)> {
    let mut out = BTreeMap::new();
    let mut visit = |command: &str, arg: &Arg| {
        if let Some(env) = arg.get_env() {
            let entry = out
                .entry(env.to_string_lossy().to_string())
                .or_insert_with(|| (BTreeSet::new(), arg.get_id().to_string()));
            entry.0.insert(if command.is_empty() {
                "all".to_string()
            } else {
                command.to_string()
            });
        }
    };
    for arg in root.get_arguments() {
        visit("", arg);
    }
    for sub in root.get_subcommands() {
        for arg in sub.get_arguments() {
            // Global options are listed once, at the top level.
            if !arg.is_global_set() {
                visit(sub.get_name(), arg);
            }
        }
    }
    out.into_iter()
        .map(|(env, (commands, id))| (env, commands.into_iter().collect::<Vec<_>>().join(" "), id))
        .collect()
}

/// The value of the last `--name` on a command line (`--name V` or `--name=V`), before `--`;
/// `Some(None)` when the last one has no value (clap then says so).
fn flag_value(args: &[OsString], name: &str) -> Option<Option<OsString>> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut found = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == long {
            found = Some(it.next().cloned());
        } else if let Some(v) = s.strip_prefix(&with_eq) {
            found = Some(Some(v.into()));
        }
    }
    found
}

/// The command a command line invokes: the first word that is not a global option or its
/// value.
fn invoked(root: &Command, args: &[OsString]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if let Some(long) = s.strip_prefix("--") {
            let takes_value = root
                .get_arguments()
                .find(|arg| arg.get_long() == Some(long))
                .is_some_and(|arg| arg.get_action().takes_values());
            if takes_value {
                it.next();
            }
        } else if !s.starts_with('-') {
            return root
                .get_subcommands()
                .find(|c| c.get_name() == s)
                .map(|c| c.get_name().to_string());
        }
    }
    None
}

/// Where the configuration file is: `--config` (or `PIPELINE_CONFIG`), which must exist;
/// else `pipeline.toml` in a local data dir, if there is one.
fn locate(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(PathBuf, bool)>> {
    let named = match flag_value(args, "config") {
        Some(None) => return Ok(None), // `--config` without a file: clap says so
        Some(Some(v)) => Some(PathBuf::from(v)),
        None => env("PIPELINE_CONFIG").map(PathBuf::from),
    };
    if let Some(path) = named {
        if !path.is_file() {
            let what = if path.is_dir() {
                "is a folder, not a file"
            } else {
                "does not exist"
            };
            return Err(Error::Invalid(format!(
                "config file {} {what} (given by --config or PIPELINE_CONFIG)",
                path.display()
            )));
        }
        return Ok(Some((path, true)));
    }
    let data_dir = flag_value(args, "data-dir")
        .flatten()
        .map(|v| v.to_string_lossy().to_string())
        .or_else(|| env("PIPELINE_DATA_DIR"))
        .unwrap_or_else(|| "data".to_string());
    if data_dir.contains("://") {
        // On an object store the file is given by --config.
        return Ok(None);
    }
    let path = Path::new(&data_dir).join(FILE_NAME);
    if path.is_file() {
        return Ok(Some((path, false)));
    }
    if path.symlink_metadata().is_ok() {
        return Err(Error::Invalid(format!(
            "{} is not a readable file (a folder, a broken link or a pipe): remove it, or \
             name another file with --config",
            path.display()
        )));
    }
    Ok(None)
}

/// A value of the file as command-line text (lists: one per element).
fn as_text(value: &toml::Value) -> Option<Vec<String>> {
    Some(match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Datetime(d) => vec![d.to_string()],
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => return None,
                    _ => out.extend(as_text(item)?),
                }
            }
            out
        }
        toml::Value::Table(_) => return None,
    })
}

/// Whether an option is a switch (`--json`): true or false, no value on the command line.
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// The file's value of one option as its environment variable would hold it, checked with
/// the option's own parser, so a mistake names the file and the key (not a `--flag` the user
/// never typed).
fn env_value(arg: &Arg, values: &[String]) -> std::result::Result<String, String> {
    if is_switch(arg) {
        return match values {
            [v] if v == "true" || v == "false" => Ok(v.clone()),
            _ => Err("expected true or false".into()),
        };
    }
    let delimiter = arg.get_value_delimiter();
    let text = match (values, delimiter) {
        ([one], _) => one.clone(),
        (many, Some(d)) if !many.is_empty() => many.join(&d.to_string()),
        _ => return Err("expected one value, not a list".into()),
    };
    let probe = Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .action(arg.get_action().clone())
        .allow_hyphen_values(true);
    let probe = match delimiter {
        Some(d) => probe.value_delimiter(d),
        None => probe,
    };
    Command::new("check")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(["--value", text.as_str()])
        .map(|_| text.clone())
        .map_err(|e| {
            use std::error::Error as _;
            if let Some(s) = e.source() {
                return s.to_string();
            }
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            if choices.is_empty() {
                e.kind().to_string()
            } else {
                format!("expected one of {}", choices.join(", "))
            }
        })
}

/// The closest key to a mistyped one, if any is close.
fn suggest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .map(|k| (distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < key.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (keys are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The configuration file read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Its path (`None`: no file).
    pub path: Option<PathBuf>,
    /// The environment variables that stand for its values, for the invoked command, each
    /// one the environment does not set itself. Set before parsing, they rank the file below
    /// the environment and the flags, and clap's rules between options (`--until-idle`
    /// requires `--follow`, `--stages` conflicts with `--from`) see them as it sees any
    /// variable (as defaults they were invisible to those rules: a file's `follow = true`
    /// made `--until-idle` an error, and its `stages` silently beat a `--from` flag).
    pub env: Vec<(String, String)>,
}

/// Read the configuration file for this command line (`root` is [`with_env`]'s command) and
/// check all of it; `env` reads the environment (a parameter for tests).
pub fn apply(
    root: &Command,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded> {
    let Some((path, explicit)) = locate(args, env)? else {
        return Ok(Loaded::default());
    };
    let table = read_table(&path)?;
    let file = File {
        root,
        opts: options(root),
        invoked: invoked(root, args),
        shown: path.display().to_string(),
        path: &path,
        explicit,
    };
    let mut env_values: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (section, key, value) in file.settings(&table) {
        let id = key.replace('-', "_");
        if !seen.insert((section.clone(), id.clone())) {
            return Err(Error::Invalid(format!(
                "{}: `{key}` is set twice{} (as `{id}` and with dashes): keep one",
                file.shown,
                if section.is_empty() {
                    String::new()
                } else {
                    format!(" in [{section}]")
                }
            )));
        }
        if let Some((name, text)) = file.setting(&section, key, &id, value)?
            && env(&name).is_none()
        {
            env_values.insert(name, text);
        }
    }
    Ok(Loaded {
        path: Some(path),
        env: env_values.into_iter().collect(),
    })
}

/// The file's text as a TOML table; an error names the line and column, not the line's text
/// (it may hold a password).
fn read_table(path: &Path) -> Result<toml::Table> {
    let file = path.display().to_string();
    let text =
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read config file {file}"), e))?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::Invalid(format!("config file {file} is not UTF-8 text")))?;
    text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        Error::Invalid(format!(
            "config file {file} is not valid TOML{at}: {}",
            e.message()
        ))
    })
}

/// A configuration file being read: the command line it is read for and its options.
struct File<'a> {
    root: &'a Command,
    opts: BTreeMap<String, Opt>,
    /// The subcommand invoked.
    invoked: Option<String>,
    /// The file, as said in messages.
    shown: String,
    path: &'a Path,
    /// Given with --config (or its variable), not found in the data dir.
    explicit: bool,
}

impl<'a> File<'a> {
    fn subcommand(&self, name: &str) -> Option<&'a Command> {
        self.root.get_subcommands().find(|c| c.get_name() == name)
    }

    /// Every setting as (section or "", key, value): the top level first, so a section
    /// overrides it.
    fn settings<'t>(&self, table: &'t toml::Table) -> Vec<(String, &'t String, &'t toml::Value)> {
        let mut settings = Vec::new();
        let mut sections = Vec::new();
        for (key, value) in table {
            match value {
                toml::Value::Table(section) if self.subcommand(key).is_some() => {
                    sections.push((key.clone(), section))
                }
                _ => settings.push((String::new(), key, value)),
            }
        }
        for (name, section) in sections {
            settings.extend(section.iter().map(|(k, v)| (name.clone(), k, v)));
        }
        settings
    }

    /// The option `id` a setting names, checked: known, in its place, not a secret.
    fn option(&self, section: &str, key: &str, id: &str, value: &toml::Value) -> Result<&Opt> {
        let place = self.place(section, key);
        if let Some(hint) = secret_hint(&id.to_ascii_lowercase()) {
            return Err(Error::Invalid(format!("{place}: {hint}")));
        }
        let Some(opt) = self.opts.get(id) else {
            let near = suggest(id, self.opts.keys())
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let hint = if matches!(value, toml::Value::Table(_)) {
                " nor a command (sections are commands: [generate], [run], ...)"
            } else {
                ""
            };
            return Err(Error::Invalid(format!(
                "{place} is not an option{hint}{near}; keys are the long flags with `_` for \
                 `-` (`rows_per_file` for --rows-per-file), and [command] sections hold one \
                 command's options"
            )));
        };
        if section.is_empty() && opt.per_command {
            let named: Vec<_> = opt.commands.iter().map(|c| format!("[{c}]")).collect();
            return Err(Error::Invalid(format!(
                "{place} means different things in different commands: put it under {}",
                named.join(" or ")
            )));
        }
        let global = opt.commands.contains("");
        if !section.is_empty() && !opt.commands.contains(section) && !global {
            return Err(Error::Invalid(format!(
                "{place}: `{section}` has no option `{id}`"
            )));
        }
        if id == "data_dir" && !self.explicit {
            return Err(Error::Invalid(format!(
                "{place}: the pipeline.toml found in the data dir cannot move the data dir; \
                 give a file that names data_dir with --config"
            )));
        }
        Ok(opt)
    }

    /// Where a setting is, as said in messages.
    fn place(&self, section: &str, key: &str) -> String {
        if section.is_empty() {
            format!("{}: `{key}`", self.shown)
        } else {
            format!("{}: [{section}] `{key}`", self.shown)
        }
    }

    /// A setting checked against its option's parser; the environment variable and text
    /// that stand for it when it applies to the invoked command (a key for other commands,
    /// or another command's section, is checked but not applied).
    fn setting(
        &self,
        section: &str,
        key: &str,
        id: &str,
        value: &toml::Value,
    ) -> Result<Option<(String, String)>> {
        let opt = self.option(section, key, id, value)?;
        let place = self.place(section, key);
        let mut values = as_text(value).ok_or_else(|| {
            Error::Invalid(format!(
                "{place}: expected a string, number, boolean or list of them"
            ))
        })?;
        // The option as the invoked command has it (a global one at the top level).
        let applies = section.is_empty() || self.invoked.as_deref() == Some(section);
        let arg = (self.root.get_arguments())
            .find(|a| a.get_id() == id)
            .or_else(|| {
                let sub = self.subcommand(self.invoked.as_deref()?)?;
                sub.get_arguments().find(|a| a.get_id() == id)
            });
        let checked_arg = arg.cloned().or_else(|| {
            let name = if section.is_empty() {
                opt.commands.first()?
            } else {
                section
            };
            self.subcommand(name)?
                .get_arguments()
                .find(|a| a.get_id() == id)
                .cloned()
        });
        let Some(checked_arg) = checked_arg else {
            return Ok(None);
        };
        if checked_arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>() {
            // A relative path in the file is relative to the file, not to where the
            // command runs.
            let dir = self.path.parent().unwrap_or(Path::new("."));
            for v in &mut values {
                if Path::new(v.as_str()).is_relative() && !dir.as_os_str().is_empty() {
                    *v = dir.join(&*v).display().to_string();
                }
            }
        }
        let text = env_value(&checked_arg, &values)
            .map_err(|e| Error::Invalid(format!("{place} = {:?}: {e}", values.join(","))))?;
        let (Some(arg), true) = (arg, applies) else {
            return Ok(None);
        };
        Ok(arg
            .get_env()
            .map(|e| (e.to_string_lossy().to_string(), text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[arg(long, global = true, default_value = "data")]
        data_dir: String,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Generate {
            /// Rows.
            #[arg(long, default_value_t = 10)]
            rows: u64,
            /// Keep going.
            #[arg(long)]
            follow: bool,
            /// Days.
            #[arg(long, value_delimiter = ',')]
            days: Vec<u32>,
            /// A file.
            #[arg(long)]
            ca_file: Option<PathBuf>,
        },
        Run {
            /// Rows.
            #[arg(long, default_value_t = 10)]
            rows: u64,
            /// Continuous mode.
            #[arg(long)]
            follow: bool,
        },
    }

    fn command() -> Command {
        with_env(<Cli as clap::CommandFactory>::command())
    }

    /// The variables the file sets for `args`, with `set` already in the environment. (clap
    /// reads a variable when an option is defined, so `main` defines the command again after
    /// setting them; the binary's tests check the outcome.)
    fn env_for(file: &str, args: &[&str], set: &[&str]) -> Result<Vec<(String, String)>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), file).unwrap();
        let mut argv: Vec<OsString> = vec!["p".into(), "--data-dir".into(), dir.path().into()];
        argv.extend(args.iter().map(OsString::from));
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let lookup = |k: &str| set.contains(&k.to_string()).then(|| "x".to_string());
        let mut env = apply(&command(), &argv, &lookup)?.env;
        for (_, v) in &mut env {
            if let Some(rest) = v.strip_prefix(&dir.path().display().to_string()) {
                *v = format!("DIR{rest}");
            }
        }
        Ok(env)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_values_stand_for_variables_the_environment_does_not_set() {
        let e = env_for("rows = 7\n", &["generate"], &[]).unwrap();
        assert_eq!(e, pairs(&[("PIPELINE_ROWS", "7")]));
        let e = env_for("rows = 7\n[run]\nrows = 8\n", &["run"], &[]).unwrap();
        assert_eq!(
            e,
            pairs(&[("PIPELINE_ROWS", "8")]),
            "a section overrides the top level"
        );
        let e = env_for("rows = 7\n[run]\nrows = 8\n", &["generate"], &[]).unwrap();
        assert_eq!(e, pairs(&[("PIPELINE_ROWS", "7")]));
        let e = env_for("rows = 7\n", &["generate"], &["PIPELINE_ROWS"]).unwrap();
        assert!(e.is_empty(), "the environment wins: {e:?}");
        let e = env_for(
            "[generate]\nfollow = true\ndays = [1, 2]\nca_file = \"s/ca.pem\"\n",
            &["--json", "generate"],
            &[],
        )
        .unwrap();
        assert_eq!(
            e,
            pairs(&[
                ("PIPELINE_CA_FILE", "DIR/s/ca.pem"),
                ("PIPELINE_DAYS", "1,2"),
                ("PIPELINE_GENERATE_FOLLOW", "true"),
            ])
        );
        // A global option in a section applies to that command only.
        let e = env_for("[run]\njson = true\n", &["generate"], &[]).unwrap();
        assert!(e.is_empty(), "{e:?}");
        let e = env_for("[run]\njson = true\n", &["run"], &[]).unwrap();
        assert_eq!(e, pairs(&[("PIPELINE_JSON", "true")]));
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let err = |file: &str| env_for(file, &["generate"], &[]).unwrap_err().to_string();
        let e = err("rowz = 7\n");
        assert!(
            e.contains("`rowz` is not an option (did you mean `rows`?)"),
            "{e}"
        );
        let e = err("rows = \"many\"\n");
        assert!(e.contains("`rows` = \"many\": invalid digit"), "{e}");
        let e = err("follow = true\n");
        assert!(e.contains("put it under [generate] or [run]"), "{e}");
        let e = err("[generate]\nfollow = 3\n");
        assert!(e.contains("expected true or false"), "{e}");
        let e = err("[run]\ndays = [1]\n");
        assert!(e.contains("`run` has no option `days`"), "{e}");
        let e = err("[run]\nrows = \"x\"\n");
        assert!(
            e.contains("[run] `rows` = \"x\""),
            "a section not invoked is checked: {e}"
        );
        let e = err("scylla_password = \"hunter2\"\n");
        assert!(
            e.contains("SCYLLA_PASSWORD") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("SCYLLA_PASSWORD = \"hunter2\"\n");
        assert!(
            e.contains("SCYLLA_PASSWORD") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("scylla_password = hunter2\n");
        assert!(
            e.contains("line 1, column") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("data_dir = \"/elsewhere\"\n");
        assert!(e.contains("cannot move the data dir"), "{e}");
        let e = err("ca_file = \"a\"\nca-file = \"b\"\n");
        assert!(e.contains("is set twice"), "{e}");
        let e = err("rows = [[1], [2]]\n");
        assert!(e.contains("list of them"), "{e}");
    }

    #[test]
    fn shared_options_have_one_variable_and_others_one_per_command() {
        let vars: Vec<String> = variables(&command())
            .into_iter()
            .map(|(v, _, _)| v)
            .collect();
        assert_eq!(
            vars,
            [
                "PIPELINE_CA_FILE",
                "PIPELINE_DATA_DIR",
                "PIPELINE_DAYS",
                "PIPELINE_GENERATE_FOLLOW",
                "PIPELINE_JSON",
                "PIPELINE_ROWS",
                "PIPELINE_RUN_FOLLOW",
            ]
        );
    }

    #[test]
    fn the_last_data_dir_and_a_named_file_count() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let a = argv(&["p", "--data-dir", "one", "generate", "--data-dir=two"]);
        assert_eq!(flag_value(&a, "data-dir"), Some(Some("two".into())));
        assert_eq!(invoked(&command(), &a).as_deref(), Some("generate"));
        let a = argv(&["p", "--config", "/nonexistent/pipeline.toml", "generate"]);
        let e = apply(&command(), &a, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/pipeline.toml does not exist"),
            "{e}"
        );
        let a = argv(&["p", "--config", "/tmp", "generate"]);
        let e = apply(&command(), &a, &|_| None).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
    }
}
