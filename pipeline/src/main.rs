//! `pipeline`: the command line. Parses flags, sets up logging, runs one command, prints its
//! report, and maps the outcome to the exit codes documented in the README.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pipeline::error::exit;
use pipeline::progress::Progress;
use pipeline::report::{Report, print};
use pipeline::{Error, Layout, Result};
use pipeline::{
    aggregate, cql, generate, html, ingest, load, lookup, maintain, profiles, run, sql, store,
    verify,
};

/// Lakehouse ETL: synthetic transactions -> Delta Lake -> daily aggregates -> ScyllaDB.
///
/// Every stage is idempotent and incremental: rerun it at any time, after any crash.
#[derive(Parser)]
#[command(version = pipeline::VERSION, propagate_version = true)]
struct Cli {
    /// Where the tables live (raw landing files, Delta tables, quarantine): a local folder,
    /// or `s3://bucket/prefix` on S3 or an S3-compatible store (credentials and endpoint from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
    #[arg(long, global = true, env = "PIPELINE_DATA_DIR", default_value = "data")]
    data_dir: String,
    /// Local scratch space (spilled batches, landing files downloaded from an object store,
    /// rows a load could not write). Default: DATA_DIR/_scratch, or the system's temporary
    /// folder when the data dir is on an object store.
    #[arg(long, global = true, env = "PIPELINE_SCRATCH_DIR")]
    scratch_dir: Option<PathBuf>,
    /// A sub-folder of the landing folder (e.g. `east`): generate writes there and ingest
    /// reads only there, as its own stream with its own progress, so several ingest
    /// processes, each on its own prefix, can commit into the same tables at once.
    #[arg(
        long,
        global = true,
        env = "PIPELINE_LANDING_PREFIX",
        default_value = ""
    )]
    landing_prefix: String,
    /// A configuration file (TOML; default: DATA_DIR/pipeline.toml when the data dir is a
    /// local folder). Keys are the options' long names with `_` for `-`; a `[command]`
    /// section holds one command's options (docs/configuration.md).
    #[arg(long, global = true, env = "PIPELINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long a failed object-store request is retried, in seconds: past it the command
    /// fails with the store's error, having committed nothing half-way, and a rerun resumes.
    #[arg(
        long,
        global = true,
        env = "PIPELINE_STORE_RETRY_SECS",
        default_value_t = store::DEFAULT_RETRY_SECS,
        value_name = "SECONDS"
    )]
    store_retry_secs: u64,
    /// Print the report as JSON on stdout instead of the text summary.
    #[arg(long, global = true)]
    json: bool,
    /// Do not draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Log lines on stderr as text or JSON (one object per line). Which ones: RUST_LOG
    /// (`info` for a line per stage started and finished; default: warnings only).
    #[arg(
        long,
        global = true,
        env = "PIPELINE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: pipeline::process::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; `run` holds every stage's options
enum Command {
    /// Write a batch of deterministic synthetic transactions to the raw landing folder
    /// (or, with --follow, keep landing small files at --rate rows per second).
    Generate {
        #[command(flatten)]
        options: generate::GenerateOptions,
        #[command(flatten, next_help_heading = "Follow (a continuous producer)")]
        follow: generate::FollowGenerate,
    },
    /// Load new raw files into the `customer_transactions` Delta table (bad rows to quarantine).
    Ingest(ingest::IngestOptions),
    /// Recompute daily per-customer totals for the days changed since the last run.
    Aggregate(aggregate::AggregateOptions),
    /// Recompute the customer profiles whose days changed since the last run.
    Profiles(profiles::ProfilesOptions),
    /// Create the ScyllaDB keyspace and tables if missing (load does this too).
    InitScylla(cql::ScyllaOptions),
    /// Write the aggregates (then the profiles) changed since the last load into ScyllaDB.
    Load(load::LoadOptions),
    /// Print a customer's daily totals (or, with --profile, profile) from ScyllaDB.
    Lookup(lookup::LookupOptions),
    /// Compare ScyllaDB with the Delta aggregates and profiles at the last loaded versions.
    Verify(verify::VerifyOptions),
    /// Run the stages in order (ingest -> aggregate -> profiles -> load; generate with
    /// --generate), once or, with --follow, continuously.
    Run(run::RunOptions),
    /// Show recorded runs, newest first.
    History(run::HistoryOptions),
    /// Compact small files, write checkpoints and vacuum old files, for every table.
    Maintain(maintain::MaintainOptions),
    /// Ask the tables a question in SQL (read-only; --as-of for an older version).
    Sql(sql::SqlOptions),
    /// Write one self-contained HTML file of charts over the tables (--out report.html).
    Report(html::ReportOptions),
    /// Check that an object store (s3://bucket/prefix) refuses a second create of the same
    /// key, which safe Delta commits need.
    CheckStore(store::CheckStoreOptions),
    /// Check that a running `run --follow` answers on its metrics endpoint (exit 0 if so, or
    /// when no endpoint is configured; 1 if not): the container's HEALTHCHECK.
    Health(run::metrics::HealthOptions),
    /// Print a shell completion script: `source <(pipeline completions bash)`, or save it
    /// where the shell looks (zsh: a `_pipeline` file on $fpath; fish:
    /// ~/.config/fish/completions/pipeline.fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the command commits to the Delta tables or writes landing files (on an object
    /// store it first checks that the store honours conditional writes).
    fn commits(&self) -> bool {
        matches!(
            self,
            Command::Generate { .. }
                | Command::Ingest(_)
                | Command::Aggregate(_)
                | Command::Profiles(_)
                | Command::Run(_)
                | Command::Maintain(_)
        )
    }

    /// Whether the command only reads or tidies what earlier stages made, so a local data
    /// dir that does not exist is a mistake (a typo in --data-dir), not "nothing to do"
    /// (`history`, `report` and `maintain` exited 0 there, `maintain: 0 table(s)`).
    fn needs_existing_data_dir(&self) -> bool {
        matches!(
            self,
            Command::History(_) | Command::Report(_) | Command::Maintain(_)
        )
    }
}

fn main() -> ExitCode {
    pipeline::process::tune_malloc();
    let (cli, command, config) = match parse() {
        Ok(parsed) => parsed,
        Err(code) => return ExitCode::from(code),
    };
    pipeline::process::init_logging(cli.log_format);
    let started = std::time::Instant::now();
    tracing::info!(command = %command, version = pipeline::VERSION, data_dir = %cli.data_dir, "{command} started");
    if let Some(file) = &config {
        tracing::info!(config = %file.display(), "configuration from {}", file.display());
    }
    // With --json, a command that fails before printing its report prints the error as JSON
    // on stdout too (it printed nothing there); `sql` prints rows, not reports.
    let json_error = cli.json && !matches!(cli.command, Command::Sql(_));
    let code = match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            if json_error && !pipeline::report::printed() {
                let error = serde_json::json!({
                    "error": e.chain(),
                    "exit_code": e.exit_code(),
                });
                pipeline::report::stdout_line(&serde_json::to_string_pretty(&error).expect("json"));
            }
            e.exit_code()
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(command = %command, exit_code = code, seconds, "{command} finished: exit {code}");
    ExitCode::from(code)
}

/// End now, by the signal that stopped the run (its exit code is 128 + its number): a shell
/// stops a script at Ctrl-C only when the program died by SIGINT (an `exit(130)` would let a
/// loop of runs go on), and dropping the runtime would wait for the stopped stage's blocking
/// work.
fn die_by_signal(code: u8) -> ! {
    let signal = i32::from(code) - 128;
    // SAFETY: resetting a signal's disposition, unblocking it in this thread, and sending it
    // to this process. The kernel may deliver it to any thread, a moment later: wait for it
    // (under a test harness one run in ten exited 130 by the fallback after a bare raise).
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::process::exit(code.into())
}

/// The command line (flags, environment, configuration file: [`pipeline::config`]), the
/// command's name (for the log lines), and the configuration file read. A mistake is printed
/// here; the error is the exit code.
fn parse() -> std::result::Result<(Cli, String, Option<PathBuf>), u8> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = pipeline::config::with_env(Cli::command());
    let file = match pipeline::config::apply(&command, &args, &|k| std::env::var(k).ok()) {
        Ok(file) => file,
        // A broken file does not stand between a user and the help that explains it.
        Err(_) if asks_for_help(&args) => Default::default(),
        Err(e) => {
            eprintln!("error: {}", e.chain());
            if args.iter().any(|a| a == "--json") {
                let error = serde_json::json!({"error": e.chain(), "exit_code": e.exit_code()});
                pipeline::report::stdout_line(&serde_json::to_string_pretty(&error).expect("json"));
            }
            return Err(e.exit_code());
        }
    };
    for (name, value) in &file.env {
        // SAFETY: the process has one thread here (no runtime, no logging yet).
        unsafe { std::env::set_var(name, value) };
    }
    // clap reads an option's variable when the option is defined: define them again.
    let command = pipeline::config::with_env(Cli::command());
    let clap_error = |e: clap::Error| {
        let _ = e.print();
        if e.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        }
    };
    let matches = command.try_get_matches_from(args).map_err(clap_error)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
    let name = matches.subcommand_name().unwrap_or("pipeline").to_string();
    if let Some((sub_name, sub)) = matches.subcommand() {
        check_follow_flags(sub_name, sub)?;
    }
    if let (Command::Run(o), Some((_, sub))) = (&mut cli.command, matches.subcommand()) {
        // Named anywhere (flag, environment, file), ScyllaDB is expected to answer.
        o.scylla_configured =
            sub.value_source("scylla_uri") != Some(clap::parser::ValueSource::DefaultValue);
    }
    Ok((cli, name, file.path))
}

/// A continuous-mode flag on the command line needs `--follow` (exit 2, as clap's own
/// mistakes); from the environment or `pipeline.toml` a batch run ignores it.
fn check_follow_flags(command: &str, m: &clap::ArgMatches) -> std::result::Result<(), u8> {
    let needs: &[&str] = match command {
        "run" => &run::FollowOptions::NEEDS_FOLLOW,
        "generate" => &generate::FollowGenerate::NEEDS_FOLLOW,
        _ => return Ok(()),
    };
    if m.get_flag("follow") {
        return Ok(());
    }
    match needs
        .iter()
        .find(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
    {
        Some(id) => {
            eprintln!(
                "error: --{} is for continuous mode: add --follow (pipeline {command} --follow ...)",
                id.replace('_', "-")
            );
            Err(exit::USAGE)
        }
        None => Ok(()),
    }
}

/// Whether the command line asks for help, the version or a completion script.
fn asks_for_help(args: &[std::ffi::OsString]) -> bool {
    args.iter().skip(1).any(|a| {
        ["-h", "--help", "-V", "--version", "help", "completions"].contains(&&*a.to_string_lossy())
    })
}

/// Run the command and print its report; returns the exit code.
fn execute(cli: Cli) -> Result<u8> {
    let (layout, rt) = prepare(&cli)?;
    if let Command::Sql(o) = &cli.command {
        // On a runtime of its own (see `QUERY_STACK`).
        drop(rt);
        return query_runtime()?.block_on(sql::run(&layout, o, cli.json));
    }
    // generate (synchronous) uploads to an object store through this runtime.
    let _entered = rt.enter();
    if let (Some(store), true) = (layout.store(), cli.command.commits()) {
        rt.block_on(store.require_conditional_writes())?;
    }
    dispatch(cli.command, &layout, &rt, (cli.json, !cli.no_progress))
}

/// The data dir, checked, and the runtime the command runs on.
fn prepare(cli: &Cli) -> Result<(Layout, tokio::runtime::Runtime)> {
    store::set_retry_window(cli.store_retry_secs);
    let layout = Layout::parse(&cli.data_dir)?
        .with_scratch(cli.scratch_dir.clone())
        .with_landing_prefix(&cli.landing_prefix)?;
    if let (Some(dir), true) = (layout.local_root(), cli.command.needs_existing_data_dir())
        && !dir.exists()
    {
        return Err(Error::Invalid(format!(
            "data dir {} does not exist: run `pipeline generate` and `pipeline run` first, or set --data-dir",
            dir.display()
        )));
    }
    if let Command::Run(o) = &cli.command {
        o.check()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    Ok((layout, rt))
}

/// Run `command` on `rt`: the match of commands to stages.
fn dispatch(
    command: Command,
    layout: &Layout,
    rt: &tokio::runtime::Runtime,
    (json, bars): (bool, bool),
) -> Result<u8> {
    let stage = |name: &str| Progress::new(name, bars);
    match command {
        Command::Generate { options, follow } if follow.follow => {
            done(json, generate::follow(layout, &options, &follow))
        }
        Command::Generate { options, .. } => {
            done(json, generate::run(layout, &options, &stage("generate")))
        }
        Command::Ingest(o) => done(json, rt.block_on(ingest::run(layout, &o, &stage("ingest")))),
        Command::Aggregate(o) => done(
            json,
            rt.block_on(aggregate::run(layout, &o, &stage("aggregate"))),
        ),
        Command::Profiles(o) => done(json, rt.block_on(profiles::run(layout, &o))),
        Command::InitScylla(o) => done(json, rt.block_on(cql::init(&o))),
        Command::Load(o) => match rt.block_on(load::run(layout, &o, &stage("load"))) {
            // An incomplete load still prints what it did (the error goes to stderr).
            Err(e @ Error::LoadIncomplete { .. }) if json => {
                if let Error::LoadIncomplete { report, .. } = &e {
                    pipeline::report::mark_printed();
                    pipeline::report::stdout_line(
                        &serde_json::to_string_pretty(report).expect("json"),
                    );
                }
                Err(e)
            }
            r => done(json, r),
        },
        Command::Lookup(o) => done(json, rt.block_on(lookup::run(&o))),
        Command::Verify(o) => done(json, rt.block_on(verify::run(layout, &o))),
        Command::Run(o) if o.follow.follow => {
            let (report, result) = rt.block_on(run::follow(layout, &o, json));
            report.print_last(json);
            result.map(|()| exit::OK)
        }
        Command::Run(o) => {
            let (report, result) = rt.block_on(run::run(layout, &o, bars));
            let code = print(json, &report);
            if let Err(e @ Error::Interrupted { .. }) = &result {
                eprintln!("error: {}", e.chain());
                tracing::info!(
                    command = "run",
                    exit_code = e.exit_code(),
                    "run finished: interrupted"
                );
                die_by_signal(e.exit_code());
            }
            result.map(|()| code)
        }
        Command::History(o) => done(json, rt.block_on(run::history(layout, &o))),
        Command::Maintain(o) => done(json, rt.block_on(maintain::run(layout, &o))),
        Command::CheckStore(o) => done(json, rt.block_on(store::check(&o))),
        Command::Health(o) => done(json, rt.block_on(run::metrics::health(&o))),
        Command::Completions { shell } => completions(shell),
        Command::Report(o) => done(json, rt.block_on(html::run(layout, &o))),
        Command::Sql(_) => unreachable!("sql runs on its own runtime (see execute)"),
    }
}

/// Print the completion script for `shell`.
fn completions(shell: clap_complete::Shell) -> Result<u8> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pipeline", &mut script);
    // A closed stdout (`| head`) ends the output quietly, as `sql` does.
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("cannot write the completion script", e))
        }
        _ => Ok(exit::OK),
    }
}

/// Stack per thread for a user's query: DataFusion recurses once per operator when it plans
/// and evaluates, so a long expression (`1+1+…`, 8,000 terms) overflowed 8 MiB. Only the
/// pages used are ever touched.
const QUERY_STACK: usize = 512 << 20;

/// The runtime `sql` runs on: threads with [`QUERY_STACK`] of stack.
fn query_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(QUERY_STACK)
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

/// Print a finished command's report; its exit code.
fn done<R: Report>(json: bool, report: Result<R>) -> Result<u8> {
    Ok(print(json, &report?))
}
