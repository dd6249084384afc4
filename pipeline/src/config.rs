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
                    arg.env(env)
                }
                _ => arg,
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

/// The value of `--name` on a command line (`--name V` or `--name=V`), before `--`.
fn flag_value(args: &[OsString], name: &str) -> Option<OsString> {
    let long = format!("--{name}");
    let with_eq = format!("--{name}=");
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == long {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix(&with_eq) {
            return Some(v.into());
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
    if let Some(path) = flag_value(args, "config")
        .map(PathBuf::from)
        .or_else(|| env("PIPELINE_CONFIG").map(PathBuf::from))
    {
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "config file {} does not exist (given by --config or PIPELINE_CONFIG)",
                path.display()
            )));
        }
        return Ok(Some((path, true)));
    }
    let data_dir = flag_value(args, "data-dir")
        .map(|v| v.to_string_lossy().to_string())
        .or_else(|| env("PIPELINE_DATA_DIR"))
        .unwrap_or_else(|| "data".to_string());
    if data_dir.contains("://") {
        // On an object store the file is given by --config.
        return Ok(None);
    }
    let path = Path::new(&data_dir).join(FILE_NAME);
    Ok(path.is_file().then_some((path, false)))
}

/// A value of the file as command-line text (arrays: one per element).
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
                out.extend(as_text(item).filter(|v| v.len() == 1)?);
            }
            out
        }
        toml::Value::Table(_) => return None,
    })
}

/// Check one value with the option's own parser, so a mistake names the file and the key
/// (not a `--flag` the user never typed).
fn check_value(arg: &Arg, values: &[String]) -> std::result::Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match values {
            [v] if v == "true" || v == "false" => Ok(()),
            _ => Err("expected true or false".into()),
        };
    }
    let multiple = matches!(arg.get_action(), ArgAction::Append);
    if values.len() != 1 && !multiple {
        return Err("expected one value, not a list".into());
    }
    let probe = Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .action(if multiple {
            ArgAction::Append
        } else {
            ArgAction::Set
        })
        .allow_hyphen_values(true);
    let probe = match arg.get_value_delimiter() {
        Some(d) => probe.value_delimiter(d),
        None => probe,
    };
    let mut argv = vec!["--value".to_string()];
    argv.push(values.join(&arg.get_value_delimiter().unwrap_or(',').to_string()));
    Command::new("check")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|e| {
            use std::error::Error as _;
            match e.source() {
                Some(s) => s.to_string(),
                None => e.kind().to_string(),
            }
        })
}

/// The closest key to a mistyped one, if any is close.
fn suggest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .map(|k| (strsim_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (keys are short).
fn strsim_distance(a: &str, b: &str) -> usize {
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
    /// The options it set: (command, or "" for every command that has it; option id).
    pub set: BTreeSet<(String, String)>,
}

impl Loaded {
    /// Whether the file set option `id` for `command`.
    pub fn sets(&self, command: &str, id: &str) -> bool {
        [command, ""]
            .iter()
            .any(|c| self.set.contains(&(c.to_string(), id.to_string())))
    }
}

/// The command line with the configuration file's values as the options' defaults, and what
/// the file set. `env` reads the environment (a parameter for tests).
pub fn apply(
    root: Command,
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Command, Loaded)> {
    let Some((path, explicit)) = locate(args, env)? else {
        return Ok((root, Loaded::default()));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("cannot read config file {}", path.display()), e))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Error::Invalid(format!(
            "config file {} is not valid TOML: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    let file = path.display().to_string();
    let opts = options(&root);
    let commands: BTreeSet<String> = root
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    // (command or "" for every command that has the option, key, values); sections last, so
    // they override the top level.
    let mut settings: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut sections = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) if commands.contains(key) => {
                sections.push((key.clone(), section))
            }
            _ => settings.push((String::new(), key.clone(), Vec::new())),
        }
    }
    let mut checked = Vec::new();
    let mut check = |command: &str, key: &str, value: &toml::Value| -> Result<()> {
        let id = key.replace('-', "_");
        let place = if command.is_empty() {
            format!("{file}: `{key}`")
        } else {
            format!("{file}: [{command}] `{key}`")
        };
        if let Some(hint) = secret_hint(&id) {
            return Err(Error::Invalid(format!("{place}: {hint}")));
        }
        let Some(opt) = opts.get(&id) else {
            let near = suggest(&id, opts.keys())
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "{place} is not an option{near}; keys are the long flags with `_` for `-` \
                 (`rows_per_file` for --rows-per-file), and [command] sections hold one \
                 command's options"
            )));
        };
        if command.is_empty() && opt.per_command {
            let named: Vec<_> = opt.commands.iter().map(|c| format!("[{c}]")).collect();
            return Err(Error::Invalid(format!(
                "{place} means different things in different commands: put it under {}",
                named.join(" or ")
            )));
        }
        if !command.is_empty() && !opt.commands.contains(command) && !opt.commands.contains("") {
            return Err(Error::Invalid(format!(
                "{place}: `{command}` has no option `{id}`"
            )));
        }
        if id == "data_dir" && !explicit {
            return Err(Error::Invalid(format!(
                "{place}: the pipeline.toml found in the data dir cannot move the data dir; \
                 give a file that names data_dir with --config"
            )));
        }
        let values = as_text(value).ok_or_else(|| {
            Error::Invalid(format!(
                "{place}: expected a string, number, boolean or list, not a table"
            ))
        })?;
        checked.push((command.to_string(), id, values));
        Ok(())
    };
    for (command, key, _) in &settings {
        check(command, key, &table[key])?;
    }
    for (command, section) in &sections {
        for (key, value) in section.iter() {
            check(command, key, value)?;
        }
    }
    let mut root = root;
    let mut set = BTreeSet::new();
    for (command, id, values) in checked {
        root = set_default(root, &command, &id, &values, &file)?;
        set.insert((command, id));
    }
    Ok((
        root,
        Loaded {
            path: Some(path),
            set,
        },
    ))
}

/// Make `values` the default of option `id` in `command` ("": wherever it is).
fn set_default(
    root: Command,
    command: &str,
    id: &str,
    values: &[String],
    file: &str,
) -> Result<Command> {
    let mut problem = None;
    let mut apply = |arg: Arg| -> Arg {
        if let Err(e) = check_value(&arg, values) {
            let section = match command {
                "" => String::new(),
                c => format!("[{c}] "),
            };
            problem.get_or_insert(format!(
                "{file}: {section}`{id}` = {:?}: {e}",
                values.join(",")
            ));
            return arg;
        }
        arg.default_values(values.iter().map(OsString::from))
    };
    let has = |cmd: &Command| cmd.get_arguments().any(|a| a.get_id() == id);
    // A global option lives at the top level until clap propagates it.
    let root = if has(&root) {
        root.mut_arg(id, &mut apply)
    } else {
        root.mut_subcommands(|sub| {
            if (command.is_empty() || sub.get_name() == command) && has(&sub) {
                sub.mut_arg(id, &mut apply)
            } else {
                sub
            }
        })
    };
    match problem {
        Some(p) => Err(Error::Invalid(p)),
        None => Ok(root),
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

    fn parse(file: &str, args: &[&str], env: &[(&str, &str)]) -> Result<clap::ArgMatches> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), file).unwrap();
        let mut argv: Vec<OsString> = vec!["p".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--data-dir".into());
        argv.push(dir.path().into());
        let env_map: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |k: &str| env_map.get(k).cloned();
        let (cmd, _) = apply(with_env(Cli::command_for_test()), &argv, &lookup)?;
        // clap reads the real environment; the tests name variables no one sets.
        Ok(cmd.try_get_matches_from(argv).expect("parses"))
    }

    impl Cli {
        fn command_for_test() -> Command {
            <Cli as clap::CommandFactory>::command()
        }
    }

    fn rows(m: &clap::ArgMatches) -> u64 {
        *m.subcommand().unwrap().1.get_one::<u64>("rows").unwrap()
    }

    #[test]
    fn file_values_are_defaults_that_flags_override() {
        let m = parse("rows = 7\n", &["generate"], &[]).unwrap();
        assert_eq!(rows(&m), 7);
        let m = parse("rows = 7\n[run]\nrows = 8\n", &["run"], &[]).unwrap();
        assert_eq!(rows(&m), 8, "a section overrides the top level");
        let m = parse("rows = 7\n[run]\nrows = 8\n", &["generate"], &[]).unwrap();
        assert_eq!(rows(&m), 7);
        let m = parse("rows = 7\n", &["generate", "--rows", "9"], &[]).unwrap();
        assert_eq!(rows(&m), 9);
        let m = parse(
            "[generate]\nfollow = true\ndays = [1, 2]\n",
            &["generate"],
            &[],
        )
        .unwrap();
        let g = m.subcommand().unwrap().1;
        assert!(g.get_flag("follow"));
        let days: Vec<u32> = g.get_many::<u32>("days").unwrap().copied().collect();
        assert_eq!(days, [1, 2]);
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let err = |file: &str| parse(file, &["generate"], &[]).unwrap_err().to_string();
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
        let e = err("scylla_password = \"hunter2\"\n");
        assert!(
            e.contains("SCYLLA_PASSWORD") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("data_dir = \"/elsewhere\"\n");
        assert!(e.contains("cannot move the data dir"), "{e}");
        let e = err("rows = \n");
        assert!(e.contains("is not valid TOML"), "{e}");
    }

    #[test]
    fn shared_options_have_one_variable_and_others_one_per_command() {
        let cmd = with_env(Cli::command_for_test());
        let vars: Vec<String> = variables(&cmd).into_iter().map(|(v, _, _)| v).collect();
        assert_eq!(
            vars,
            [
                "PIPELINE_DATA_DIR",
                "PIPELINE_DAYS",
                "PIPELINE_GENERATE_FOLLOW",
                "PIPELINE_ROWS",
                "PIPELINE_RUN_FOLLOW"
            ]
        );
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let argv: Vec<OsString> = ["p", "--config", "/nonexistent/pipeline.toml", "generate"]
            .iter()
            .map(OsString::from)
            .collect();
        let e = apply(Cli::command_for_test(), &argv, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/pipeline.toml does not exist"),
            "{e}"
        );
    }
}
