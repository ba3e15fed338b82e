//! Command-line parsing (clap) and dispatch to the commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fusion_plugin_api::host::API_VERSION;

use crate::plugins::Registry;
use crate::program::{self, RunRequest};
use crate::{logging, paths};

/// Deep model fusion: compose a FusionBench-style config, merge models with a plugin algorithm,
/// evaluate the result.
///
/// Examples:
///   fusion-host method=task_arithmetic method.scaling_factor=0.3 modelpool=... taskpool=...
///   fusion-host --cfg job method=ties_merging
///   fusion-host -m method=task_arithmetic method.scaling_factor=0.1,0.3,0.5 modelpool=... taskpool=...
///   fusion-host report outputs/
///   fusion-host plugins
///
/// Other commands are executables named fusion-host-NAME beside this one or on PATH, run as
/// `fusion-host NAME ...`: `embed` (CLIP embeddings), `bench` (the GPU benchmark), `mergekit` (a
/// mergekit YAML config).
#[derive(Parser, Debug)]
#[command(
    name = "fusion-host",
    version,
    about,
    verbatim_doc_comment,
    subcommand_precedence_over_arg = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// A folder of configs to search (before the built-in ones); repeatable. Hydra's `-cp`.
    #[arg(long = "config-path", value_name = "DIR")]
    config_path: Vec<PathBuf>,

    /// An extra folder of configs, searched after the --config-path folders and the built-in
    /// ones (it adds configs, it does not shadow them); repeatable. Hydra's `-cd`.
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dir: Vec<PathBuf>,

    /// The primary config (in a config folder, `.yaml` optional). Hydra's `-cn`.
    #[arg(
        long = "config-name",
        value_name = "NAME",
        default_value = "fabric_model_fusion"
    )]
    config_name: String,

    /// Print the composed config (`job`: without `hydra`; `hydra`: only `hydra`; `all`: both)
    /// and exit.
    #[arg(long = "cfg", short = 'c', value_name = "WHAT", value_parser = ["job", "hydra", "all"])]
    cfg: Option<String>,

    /// With --cfg: print only this package (dotted key), e.g. `-p method`.
    #[arg(long, short = 'p', value_name = "PACKAGE", requires = "cfg")]
    package: Option<String>,

    /// With --cfg: resolve `${...}` interpolations before printing.
    #[arg(long)]
    resolve: bool,

    /// A folder of plugin libraries to load (before FUSION_PLUGIN_PATH and the executable's
    /// folder); repeatable.
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dir: Vec<PathBuf>,

    /// The compute device: `auto` (a hardware GPU if there is one, else software), `gpu`, `cpu`
    /// (the software adapter, e.g. lavapipe), or a substring of an adapter name
    /// (see `fusion-host devices`).
    #[arg(
        long,
        value_name = "DEVICE",
        env = "FUSION_DEVICE",
        default_value = "auto",
        global = true
    )]
    device: String,

    /// More logging (-v debug, -vv trace). FUSION_LOG=... sets a filter.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// Never touch the network: Hugging Face hub files must already be in the cache (as
    /// HF_HUB_OFFLINE=1 does).
    #[arg(long, global = true)]
    offline: bool,

    /// Run a sweep (Hydra's multirun): `key=a,b,c`, `key=range(start,stop[,step])`,
    /// `key=choice(...)`, `group=glob(pattern)`; one job per combination, in
    /// `hydra.sweep.dir/hydra.sweep.subdir`, then a summary there. `hydra/launcher=joblib
    /// hydra.launcher.n_jobs=N` runs N jobs at a time.
    #[arg(short = 'm', long)]
    multirun: bool,

    /// (Set by a sweep's launcher) the job's output folder.
    #[arg(
        long = "job-dir",
        value_name = "DIR",
        hide = true,
        requires = "job_num"
    )]
    job_dir: Option<PathBuf>,

    /// (Set by a sweep's launcher) the job's number, `hydra.job.num`.
    #[arg(long = "job-num", value_name = "N", hide = true, requires = "job_dir")]
    job_num: Option<usize>,

    /// Config overrides, Hydra style: `group=option`, `a.b=value`, `+a.b=value`, `++a.b=value`,
    /// `~a.b`.
    #[arg(value_name = "OVERRIDE")]
    overrides: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Collect the `program_report.json` of runs and sweeps (found under each folder) into one
    /// table: markdown on stdout, CSV with --csv, and SVG plots of the average accuracy against
    /// each numeric override that varies between the runs.
    Report {
        /// Run folders, sweep folders, or any folder above them.
        #[arg(value_name = "DIR", required = true)]
        dirs: Vec<PathBuf>,
        /// Also write the table as CSV to this file.
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Write the plots (`accuracy_vs_<key>.svg`) into this folder.
        #[arg(long = "plot-dir", value_name = "DIR")]
        plot_dir: Option<PathBuf>,
    },
    /// List every plugin component found: target names, kind, library file, description.
    Plugins,
    /// List the GPU adapters: backend, type, driver and the limits that matter.
    Devices,
}

/// Hydra's two-letter short options (`-cn`, `-cp`, `-cd`) are not expressible in clap; map them
/// to their long forms first. Every argument must be UTF-8 (config text, overrides, paths that
/// end up in the config): one that is not is refused, named in its lossy form.
fn hydra_short_options(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> anyhow::Result<Vec<String>> {
    args.enumerate()
        .map(|(i, a)| {
            let a = a.into_string().map_err(|bad| {
                crate::error::usage(format!(
                    "argument {i} ({:?}) is not valid UTF-8; fusion-host takes UTF-8 arguments only",
                    bad.to_string_lossy()
                ))
            })?;
            Ok(match a.as_str() {
                "-cn" => "--config-name".to_string(),
                "-cp" => "--config-path".to_string(),
                "-cd" => "--config-dir".to_string(),
                _ => a,
            })
        })
        .collect()
}

/// Where the `--device` value came from, for error messages.
fn device_origin(matches: &clap::ArgMatches) -> &'static str {
    match matches.value_source("device") {
        Some(clap::parser::ValueSource::EnvVariable) => "FUSION_DEVICE",
        _ => "--device",
    }
}

/// Every `--plugin-dir` must be a folder: a misspelt one would otherwise just find no plugins.
fn check_plugin_dirs(dirs: &[PathBuf]) -> anyhow::Result<()> {
    for dir in dirs {
        if !dir.is_dir() {
            return Err(crate::error::usage(format!(
                "--plugin-dir {}: {}",
                dir.display(),
                if dir.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                }
            )));
        }
    }
    Ok(())
}

/// Write `text` to standard output, reporting a failed write (a full disk, a closed pipe) as an
/// error instead of panicking as `print!` does.
pub fn stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

/// Parse the command line and run.
pub fn run() -> anyhow::Result<ExitCode> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let args = hydra_short_options(std::env::args_os())?;
    // `fusion-host NAME ...` for a NAME that is no command of ours: `fusion-host-NAME`.
    if let Some(ext) = crate::external::find(&Cli::command(), &args) {
        return crate::external::run(Cli::command(), &ext);
    }
    let matches = Cli::command().get_matches_from(args);
    let origin = device_origin(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(cli.verbose, cli.quiet);
    check_plugin_dirs(&cli.plugin_dir)?;
    let device = || crate::device::parse_choice(&cli.device, origin);
    match cli.command {
        Some(Command::Plugins) => {
            logging::no_file();
            list_plugins(&cli.plugin_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Devices) => {
            logging::no_file();
            crate::device::list()?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Report {
            ref dirs,
            ref csv,
            ref plot_dir,
        }) => {
            logging::no_file();
            crate::report::run(dirs, csv.as_deref(), plot_dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let child_args = if cli.multirun {
                job_args(&cli, &matches)
            } else {
                Vec::new()
            };
            let job = match (cli.job_dir, cli.job_num) {
                (Some(dir), Some(num)) => Some(program::JobSpec { dir, num }),
                _ => None,
            };
            let req = RunRequest {
                device: device()?,
                config_paths: cli.config_path,
                config_dirs: cli.config_dir,
                config_name: cli.config_name.trim_end_matches(".yaml").to_string(),
                overrides: cli.overrides,
                print_cfg: cli.cfg,
                package: cli.package,
                resolve: cli.resolve,
                plugin_dirs: cli.plugin_dir,
                offline: cli.offline,
                quiet: cli.quiet,
                job,
            };
            if cli.multirun {
                logging::no_file();
                crate::multirun::run(&req, &child_args)?;
            } else {
                program::run(&req)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The options every job of a sweep gets from the sweep's command line (all but the overrides).
fn job_args(cli: &Cli, matches: &clap::ArgMatches) -> Vec<String> {
    let mut args = Vec::new();
    for p in &cli.config_path {
        args.push("--config-path".to_string());
        args.push(p.to_string_lossy().to_string());
    }
    for p in &cli.config_dir {
        args.push("--config-dir".to_string());
        args.push(p.to_string_lossy().to_string());
    }
    args.push("--config-name".to_string());
    args.push(cli.config_name.clone());
    for p in &cli.plugin_dir {
        args.push("--plugin-dir".to_string());
        args.push(p.to_string_lossy().to_string());
    }
    if matches.value_source("device") == Some(clap::parser::ValueSource::CommandLine) {
        args.push("--device".to_string());
        args.push(cli.device.clone());
    }
    if cli.verbose > 0 {
        args.push(format!("-{}", "v".repeat(cli.verbose as usize)));
    }
    if cli.quiet {
        args.push("--quiet".to_string());
    }
    if cli.offline {
        args.push("--offline".to_string());
    }
    if let Some(cfg) = &cli.cfg {
        args.push("--cfg".to_string());
        args.push(cfg.clone());
        if let Some(p) = &cli.package {
            args.push("--package".to_string());
            args.push(p.clone());
        }
        if cli.resolve {
            args.push("--resolve".to_string());
        }
    }
    args
}

fn list_plugins(cli_dirs: &[PathBuf]) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let dirs = paths::plugin_dirs(cli_dirs);
    let registry = Registry::load(&dirs);
    // Built whole, written once: a failed write is one error, not a panic halfway.
    let mut out = String::new();
    writeln!(
        out,
        "plugin-api {API_VERSION}; searched: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    for lib in &registry.libraries {
        writeln!(out)?;
        writeln!(
            out,
            "{} {} ({}; plugin-api {})",
            lib.name,
            lib.version,
            lib.path.display(),
            lib.api_version
        )?;
        let mut comps: Vec<_> = lib.components.iter().collect();
        comps.sort_by_key(|c| c.kind);
        for c in comps {
            writeln!(out, "  {:<10} {}", c.kind.to_string(), c.names.join(" | "))?;
            writeln!(out, "  {:<10} {}", "", c.description)?;
        }
    }
    for e in &registry.refused {
        writeln!(out)?;
        writeln!(out, "refused: {e}")?;
    }
    stdout(&out)
}
