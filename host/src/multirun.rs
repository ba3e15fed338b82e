//! `--multirun`: Hydra's basic sweeper and its local launchers. The sweep overrides expand into
//! jobs (their cartesian product, Hydra's order); each job runs as a child `fusion-host` with its
//! overrides, in its own folder `hydra.sweep.dir/hydra.sweep.subdir` (FusionBench:
//! `outputs/multirun/<config>/<time>/<job.num>`), one after another or `hydra.launcher.n_jobs`
//! at a time (`hydra/launcher=joblib`). A child process per job keeps a failing or crashing job
//! from taking the others down, and gives each its own log and device. At the end: a summary
//! (`summary.csv`, `summary.md`, `accuracy_vs_<key>.svg`) in the sweep folder, the markdown
//! table on stdout, and an error naming the jobs that failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context as _;
use fusion_config::sweep;
use fusion_config::ResolveContext;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use crate::error::usage;
use crate::program::{self, RunRequest};
use crate::summary::{self, Row};

/// The hidden options a launcher gives a job's `fusion-host`.
pub const JOB_DIR_ARG: &str = "--job-dir";
pub const JOB_NUM_ARG: &str = "--job-num";

/// One job of the sweep.
#[derive(Debug, Clone)]
pub struct Job {
    pub num: usize,
    pub overrides: Vec<String>,
    pub dir: PathBuf,
}

/// How a job ended.
#[derive(Debug, Clone)]
struct Outcome {
    code: Option<i32>,
    error: Option<String>,
}

/// Run a sweep. `child_args` are the global options to pass on to every job (config paths,
/// config name, plugin folders, device, verbosity).
pub fn run(req: &RunRequest, child_args: &[String]) -> anyhow::Result<()> {
    // Hydra composes the sweep's own config from the overrides that are not sweeps; its `hydra`
    // node says where the jobs go and how they are launched.
    let plain: Vec<String> = req
        .overrides
        .iter()
        .filter(|o| !sweep::is_sweep(o))
        .cloned()
        .collect();
    let master_req = RunRequest {
        overrides: plain,
        ..req.clone()
    };
    let composed = program::compose(&master_req).context("composing the sweep's config")?;
    let hydra = composed
        .hydra
        .clone()
        .unwrap_or(Yaml::Mapping(Default::default()));

    let mut all = sweeper_params(&hydra);
    all.extend(req.overrides.iter().cloned());
    let search_path = composed.search_path.clone();
    let (overrides, keyed) =
        sweep::expand(&all, &|g| fusion_config::group_options(&search_path, g))?;
    let swept: Vec<String> = keyed
        .iter()
        .filter(|k| k.is_sweep)
        .map(|k| k.key.clone())
        .collect();
    if let Some(k) = swept
        .iter()
        .find(|k| is_hydra_key(k.trim_start_matches(['+', '~'])))
    {
        // As Hydra: the sweep's own settings are one for all jobs.
        let typed = all
            .iter()
            .rev()
            .find(|o| o.trim().starts_with(&format!("{k}=")))
            .map_or(k.as_str(), |o| o.trim());
        return Err(usage(format!(
            "'{typed}': sweeping over Hydra's configuration ('{k}') is not supported: the launcher and the sweep folder are the same for every job"
        )));
    }

    if req.print_cfg.is_some() {
        // `--cfg` per job: each job prints its config; nothing is written.
        let mut failed = Vec::new();
        for (num, ov) in overrides.iter().enumerate() {
            crate::cli::stdout(&format!("# job {num}: {}\n", ov.join(" ")))?;
            let status = Command::new(exe()?)
                .args(child_args)
                .args(ov)
                .status()
                .context("starting a job's fusion-host")?;
            if !status.success() {
                failed.push(format!("#{num} ({})", ov.join(" ")));
            }
        }
        return finish_failed(&failed, overrides.len(), None);
    }

    let now = chrono::Local::now().naive_local();
    let mut rctx = ResolveContext::new(&composed.config_name);
    rctx.now = now;
    // Everything that can be wrong with the settings is found before a folder is made.
    let planned_dir = sweep_path(&composed.config, &hydra, &rctx, None, "dir")?;
    let subdirs: Vec<PathBuf> = overrides
        .iter()
        .enumerate()
        .map(|(num, ov)| sweep_path(&composed.config, &hydra, &rctx, Some((num, ov)), "subdir"))
        .collect::<anyhow::Result<_>>()?;
    let launcher = resolve_value(
        &composed.config,
        &hydra,
        &rctx,
        None,
        hydra.get("launcher").cloned().unwrap_or(Yaml::Null),
    )
    .context("resolving hydra.launcher")?;
    let slurm = crate::slurm::selected(Some(&launcher));
    let n_jobs = if slurm {
        let here = Path::new(".");
        crate::slurm::script(&launcher, &[], here, &[], here, here)?;
        1
    } else {
        parallelism(&hydra)?
    };

    let sweep_dir = claim_sweep_dir(&planned_dir)?;
    let jobs: Vec<Job> = overrides
        .iter()
        .zip(subdirs)
        .enumerate()
        .map(|(num, (ov, sub))| Job {
            num,
            overrides: ov.clone(),
            dir: sweep_dir.join(sub),
        })
        .collect();
    tracing::info!(
        "multirun: {} job{} in {} ({})",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        sweep_dir.display(),
        if slurm {
            "as one Slurm job array".to_string()
        } else if n_jobs > 1 {
            format!("{n_jobs} at a time")
        } else {
            "one after another".to_string()
        }
    );
    write_sweep_file(&sweep_dir, &composed.config_name, &jobs)?;

    let outcomes = if slurm {
        crate::slurm::launch(&launcher, &jobs, child_args, &sweep_dir)?;
        jobs.iter()
            .map(|j| {
                let code = std::fs::read_to_string(j.dir.join(crate::slurm::EXIT_CODE_FILE))
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok());
                outcome(j, code)
            })
            .collect()
    } else {
        launch_local(&jobs, child_args, n_jobs)?
    };

    // The summary.
    let rows: Vec<Row> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(job, out)| Row {
            label: job.num.to_string(),
            values: job
                .overrides
                .iter()
                .filter_map(|o| {
                    let (k, v) = o.split_once('=')?;
                    swept
                        .contains(&k.to_string())
                        .then(|| (k.to_string(), v.to_string()))
                })
                .collect(),
            status: match (out.code, &out.error) {
                (Some(0), _) => "ok".to_string(),
                (Some(c), _) => format!("failed (exit {c})"),
                (None, _) => "failed (no exit status)".to_string(),
            },
            report: read_report(&job.dir),
        })
        .collect();
    let table = summary::table("job", &swept, &rows);
    program::write_atomic(&sweep_dir.join("summary.csv"), table.csv().as_bytes())?;
    let md = table.markdown();
    program::write_atomic(&sweep_dir.join("summary.md"), md.as_bytes())?;
    let plots = summary::write_plots(&sweep_dir, &swept, &rows)?;
    crate::cli::stdout(&md)?;
    tracing::info!(
        "summary: {}{}",
        sweep_dir.join("summary.md").display(),
        plots
            .iter()
            .map(|p| format!(", {}", p.display()))
            .collect::<String>()
    );
    let failed: Vec<String> = jobs
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.code != Some(0))
        .map(|(j, o)| {
            format!(
                "#{} ({}){}",
                j.num,
                j.overrides.join(" "),
                o.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    finish_failed(&failed, jobs.len(), Some(&sweep_dir))
}

/// A key of Hydra's own config (`hydra.launcher.n_jobs`, `hydra/launcher`).
fn is_hydra_key(key: &str) -> bool {
    key == "hydra" || key.starts_with("hydra.") || key.starts_with("hydra/")
}

fn finish_failed(failed: &[String], total: usize, dir: Option<&Path>) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "{} of {total} job{} failed: {}{}",
        failed.len(),
        if total == 1 { "" } else { "s" },
        failed.join("; "),
        dir.map(|d| format!(" (their logs are in {}/<job>/)", d.display()))
            .unwrap_or_default()
    ))
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the fusion-host executable to launch the jobs")
}

/// `hydra.sweeper.params` (Hydra 1.2+): sweeps given in the config, before the command line's.
fn sweeper_params(hydra: &Yaml) -> Vec<String> {
    let Some(Yaml::Mapping(params)) = hydra.get("sweeper").and_then(|s| s.get("params")) else {
        return Vec::new();
    };
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                fusion_config::value::scalar_to_string(k),
                fusion_config::value::scalar_to_string(v)
            )
        })
        .collect()
}

/// `hydra.sweep.dir` or `hydra.sweep.subdir` resolved (for a job: with its `hydra.job.num` and
/// `hydra.job.override_dirname`). Hydra's defaults where the config sets none.
const SWEEP_VALUE: &str = "__fusion_host_sweep_path__";

fn sweep_path(
    config: &Yaml,
    hydra: &Yaml,
    rctx: &ResolveContext,
    job: Option<(usize, &[String])>,
    which: &str,
) -> anyhow::Result<PathBuf> {
    let default = match which {
        "dir" => "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}",
        _ => "${hydra.job.num}",
    };
    let text = hydra
        .get("sweep")
        .and_then(|s| s.get(which))
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| Yaml::from(default));
    let resolved = resolve_value(config, hydra, rctx, job, text)
        .with_context(|| format!("resolving hydra.sweep.{which}"))?;
    let value = fusion_config::value::scalar_to_string(&resolved);
    if value.is_empty() {
        return Err(usage(format!("hydra.sweep.{which} is empty")));
    }
    Ok(PathBuf::from(value))
}

/// A value from the `hydra` node, resolved against the job config (a sweep folder may use
/// `${path.output_dir}`) and the `hydra` node (for a job: with its `hydra.job.num` and
/// `hydra.job.override_dirname`); only this value is resolved.
fn resolve_value(
    config: &Yaml,
    hydra: &Yaml,
    rctx: &ResolveContext,
    job: Option<(usize, &[String])>,
    value: Yaml,
) -> anyhow::Result<Yaml> {
    let mut hydra = hydra.clone();
    if let Yaml::Mapping(h) = &mut hydra {
        let job_node = h
            .entry(Yaml::from("job"))
            .or_insert_with(|| Yaml::Mapping(Default::default()));
        if let (Yaml::Mapping(j), Some((num, ov))) = (job_node, job) {
            j.insert(Yaml::from("num"), Yaml::from(num as u64));
            // Hydra's `hydra.job.override_dirname`: the job's own overrides (not `hydra.*`), sorted,
            // less `hydra.job.config.override_dirname.exclude_keys`.
            let exclude: Vec<String> = j
                .get("config")
                .and_then(|c| c.get("override_dirname"))
                .and_then(|o| o.get("exclude_keys"))
                .and_then(Yaml::as_sequence)
                .map(|s| {
                    s.iter()
                        .map(fusion_config::value::scalar_to_string)
                        .collect()
                })
                .unwrap_or_default();
            let mut sorted: Vec<String> = ov
                .iter()
                .filter(|o| {
                    let key = o
                        .split('=')
                        .next()
                        .unwrap_or(o)
                        .trim_start_matches(['+', '~']);
                    !is_hydra_key(key) && !exclude.iter().any(|e| e == key)
                })
                .cloned()
                .collect();
            sorted.sort();
            j.insert(Yaml::from("override_dirname"), Yaml::from(sorted.join(",")));
        }
    }
    let mut root = match config {
        Yaml::Mapping(m) => m.clone(),
        _ => Default::default(),
    };
    root.insert(Yaml::from(SWEEP_VALUE), value);
    let mut rctx = rctx.clone();
    rctx.hydra = Some(hydra);
    Ok(fusion_config::resolve_key(
        &Yaml::Mapping(root),
        SWEEP_VALUE,
        &rctx,
    )?)
}

/// The sweep folder: `dir`, or `dir_1`, `dir_2`... when another sweep (started in the same
/// second) has it. Creating the folder itself is atomic, so two sweeps never share one.
fn claim_sweep_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "sweep".into());
    for i in 0..1000 {
        let d = match i {
            0 => dir.to_path_buf(),
            _ => dir.with_file_name(format!("{name}_{i}")),
        };
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    Err(anyhow::anyhow!(
        "{} and 1000 numbered folders next to it already exist",
        dir.display()
    ))
}

/// `hydra.launcher.n_jobs` (Hydra's joblib launcher: -1 is every CPU, -2 all but one, ...); one
/// job at a time when the launcher has no such key (Hydra's basic launcher).
fn parallelism(hydra: &Yaml) -> anyhow::Result<usize> {
    let Some(v) = hydra
        .get("launcher")
        .and_then(|l| l.get("n_jobs"))
        .filter(|v| !v.is_null())
    else {
        return Ok(1);
    };
    let n = v.as_i64().ok_or_else(|| {
        usage(format!(
            "hydra.launcher.n_jobs must be an integer, got {}",
            fusion_config::value::scalar_to_string(v)
        ))
    })?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    match n {
        0 => Err(usage(
            "hydra.launcher.n_jobs must not be 0 (a positive count, or -1 for every CPU)",
        )),
        n if n > 0 => Ok(n as usize),
        n => Ok((cpus + 1 + n).max(1) as usize),
    }
}

/// `sweep.yaml` in the sweep folder: the config name and every job's number, folder and
/// overrides (what `fusion-host report` and a reader need to tell the jobs apart).
fn write_sweep_file(dir: &Path, config_name: &str, jobs: &[Job]) -> anyhow::Result<()> {
    let list: Vec<Json> = jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "num": j.num,
                "dir": j.dir.to_string_lossy(),
                "overrides": j.overrides,
            })
        })
        .collect();
    let doc = serde_json::json!({"config_name": config_name, "jobs": list});
    program::write_atomic(
        &dir.join("sweep.yaml"),
        serde_norway::to_string(&doc)?.as_bytes(),
    )
}

/// Run the jobs as child processes, `n_jobs` at a time; each one's stdout and stderr go to
/// `stdout.log` / `stderr.log` in its folder.
fn launch_local(
    jobs: &[Job],
    child_args: &[String],
    n_jobs: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let exe = exe()?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; jobs.len()]);
    let run_one = |job: &Job| -> Outcome {
        tracing::info!("job #{} : {}", job.num, job.overrides.join(" "));
        match run_job(&exe, child_args, job) {
            Ok(o) => {
                match (o.code, &o.error) {
                    (Some(0), _) => tracing::info!("job #{} done", job.num),
                    (_, Some(e)) => tracing::warn!("job #{} failed: {e}", job.num),
                    (_, None) => tracing::warn!("job #{} failed", job.num),
                }
                o
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::warn!("job #{} could not run: {message}", job.num);
                Outcome {
                    code: Some(1),
                    error: Some(message),
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..n_jobs.min(jobs.len()).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let out = run_one(job);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(out);
            });
        }
    });
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                code: None,
                error: None,
            })
        })
        .collect())
}

fn run_job(exe: &Path, child_args: &[String], job: &Job) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&job.dir).with_context(|| format!("creating {}", job.dir.display()))?;
    let file = |name: &str| -> anyhow::Result<std::fs::File> {
        let p = job.dir.join(name);
        std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
    };
    let status = Command::new(exe)
        .args(child_args)
        .args(&job.overrides)
        .arg(JOB_DIR_ARG)
        .arg(&job.dir)
        .arg(JOB_NUM_ARG)
        .arg(job.num.to_string())
        .stdin(Stdio::null())
        .stdout(file("stdout.log")?)
        .stderr(file("stderr.log")?)
        .status()
        .context("starting the job's fusion-host")?;
    Ok(outcome(job, status.code()))
}

/// How a job ended, from its exit status and its `stderr.log` (the `error:` paragraph).
fn outcome(job: &Job, code: Option<i32>) -> Outcome {
    let error = (code != Some(0)).then(|| {
        let text = std::fs::read_to_string(job.dir.join("stderr.log")).unwrap_or_default();
        // The child's one `error:` paragraph (it may run over several lines).
        text.match_indices("error: ")
            .filter(|(i, _)| *i == 0 || text.as_bytes()[i - 1] == b'\n')
            .last()
            .map(|(i, _)| {
                text[i + "error: ".len()..]
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| match code {
                Some(c) => format!("exit status {c}"),
                None => "it did not finish (no exit status)".to_string(),
            })
    });
    Outcome { code, error }
}

/// A run folder's `program_report.json`, when it holds a readable one.
pub fn read_report(dir: &Path) -> Option<Json> {
    let text = std::fs::read_to_string(dir.join("program_report.json")).ok()?;
    serde_json::from_str(&text).ok()
}
