//! The fusion program (FusionBench's `FabricModelFusionProgram`): compose the config, instantiate
//! the model pool, the method and the task pool, `merged = method.run(modelpool)`, save it when
//! asked, `report = taskpool.evaluate(merged)`, print and save the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use fusion_checkpoint::save::{check_destination, reopen_saved, save_model, SaveOptions};
use fusion_config::{ComposeOptions, ResolveContext};
use fusion_plugin_api::host::ComponentKind;
use fusion_plugin_api::Context;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use crate::error::{plugin, usage};
use crate::plugins::Registry;
use crate::profile::Profiler;
use crate::{hub, targets};
use crate::{logging, outputs, paths, progress};

/// What to run.
#[derive(Clone)]
pub struct RunRequest {
    /// `--config-path`: searched first (they shadow the built-in configs).
    pub config_paths: Vec<PathBuf>,
    /// `--config-dir`: searched last (they add configs).
    pub config_dirs: Vec<PathBuf>,
    pub config_name: String,
    pub overrides: Vec<String>,
    /// `--cfg job|hydra|all`: print the composed config and stop.
    pub print_cfg: Option<String>,
    /// `--package` with `--cfg`: print only this subtree.
    pub package: Option<String>,
    /// `--resolve` with `--cfg`: resolve interpolations before printing.
    pub resolve: bool,
    pub plugin_dirs: Vec<PathBuf>,
    /// The compute device to lend the components (created on first use).
    pub device: crate::device::Device,
    /// `--offline`: never touch the network; hub files must already be in the cache.
    pub offline: bool,
    /// `--quiet`: no download progress bars either.
    pub quiet: bool,
    /// Set when this run is one job of a `--multirun` sweep.
    pub job: Option<JobSpec>,
}

/// One job of a sweep, as its launcher gives it: the job's output folder (Hydra's
/// `hydra.sweep.dir/hydra.sweep.subdir`, which is also its `path.log_dir`) and its number.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub dir: PathBuf,
    pub num: usize,
}

/// Convert the composed YAML tree into JSON for the components (YAML keys that are not strings,
/// such as `1:`, become their string form; non-finite floats become strings).
pub fn yaml_to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Json::Number)
                    .unwrap_or_else(|| Json::String(f.to_string()))
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(s) => Json::Array(s.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => serde_norway::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(t) => yaml_to_json(&t.value),
    }
}

fn root_bool(cfg: &Json, key: &str, default: bool) -> anyhow::Result<bool> {
    match cfg.get(key) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(usage(format!("`{key}` must be true or false, got {other}"))),
    }
}

/// A path option that may be null, false (off) or a string with `{log_dir}` in it.
fn root_path(cfg: &Json, key: &str, log_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    match cfg.get(key) {
        None | Some(Json::Null) | Some(Json::Bool(false)) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) => Ok(Some(PathBuf::from(
            s.replace("{log_dir}", &log_dir.to_string_lossy()),
        ))),
        Some(other) => Err(usage(format!(
            "`{key}` must be a path or null, got {other}"
        ))),
    }
}

pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fusion_checkpoint::save::write_file_atomic(path, contents)
}

/// The run's log folder: `base` when no other run has it, else `base_1`, `base_2`, ... A run owns
/// the folder whose `fusion-host.log` it created; creating that file with `create_new` is atomic,
/// so two runs started in the same second never share a folder (a folder that exists without a
/// log, such as an empty one made for the run, is taken as it is).
fn claim_log_dir(base: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    const TRIES: usize = 1000;
    // `.` or `..` has no name to number: number the folder it stands for.
    let base = match base.file_name() {
        Some(_) => base.to_path_buf(),
        None => base.canonicalize().unwrap_or_else(|_| base.to_path_buf()),
    };
    let base = base.as_path();
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    for i in 0..TRIES {
        let dir = match i {
            0 => base.to_path_buf(),
            _ => base.with_file_name(format!("{name}_{i}")),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(LOG_FILE))
        {
            Ok(file) => return Ok((dir, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating the log file {}", dir.join(LOG_FILE).display())
                })
            }
        }
    }
    Err(anyhow::anyhow!(
        "{} and {TRIES} numbered folders next to it all hold another run's {LOG_FILE}",
        base.display()
    ))
}

/// The run's log, in its output folder.
const LOG_FILE: &str = "fusion-host.log";

/// Compose the config from the request.
pub(crate) fn compose(req: &RunRequest) -> anyhow::Result<fusion_config::Composed> {
    // Later roots take precedence: --config-dir folders only add configs (as Hydra's do), the
    // user's --config-path shadows the built-in configs.
    let mut search_path = Vec::new();
    for dir in &req.config_dirs {
        if !dir.is_dir() {
            return Err(usage(format!(
                "--config-dir {}: no such folder",
                dir.display()
            )));
        }
        search_path.push(dir.clone());
    }
    search_path.extend(paths::builtin_config_roots());
    for dir in &req.config_paths {
        // Hydra refuses a config folder that is not there, rather than composing without it.
        if !dir.is_dir() {
            return Err(usage(format!(
                "--config-path {}: {}",
                dir.display(),
                if dir.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                }
            )));
        }
        search_path.push(dir.clone());
    }
    if search_path.is_empty() {
        return Err(usage(
            "no config folder found: pass --config-path DIR or set FUSION_CONFIG_PATH".to_string(),
        ));
    }
    tracing::debug!(?search_path, config = %req.config_name, "composing");
    Ok(fusion_config::compose(&ComposeOptions {
        search_path,
        config_name: Some(req.config_name.clone()),
        overrides: req.overrides.clone(),
    })?)
}

/// A per-task table of a FusionBench-shaped report (`{task: {accuracy, loss}, ..., average}`),
/// or None when the report has no accuracies.
fn task_table(report: &Json) -> Option<String> {
    let rows: Vec<(&String, f64, Option<f64>)> = report
        .as_object()?
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k,
                v.get("accuracy")?.as_f64()?,
                v.get("loss").and_then(Json::as_f64),
            ))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:>9}  {:>8}\n", "task", "accuracy", "loss");
    for (task, acc, loss) in rows {
        let loss = loss.map(|l| format!("{l:.4}")).unwrap_or_default();
        out.push_str(&format!(
            "{task:<width$}  {:>8.2}%  {loss:>8}\n",
            acc * 100.0
        ));
    }
    Some(out)
}

/// `--cfg job|hydra|all [-p PACKAGE] [--resolve]`, printed as Hydra prints it.
fn print_cfg(
    composed: &fusion_config::Composed,
    what: &str,
    package: Option<&str>,
    resolve: bool,
    rctx: &ResolveContext,
) -> anyhow::Result<()> {
    let hydra = composed
        .hydra
        .clone()
        .unwrap_or(Yaml::Mapping(Default::default()));
    let mut cfg = match what {
        "hydra" => {
            let mut m = serde_norway::Mapping::new();
            m.insert(Yaml::String("hydra".into()), hydra);
            Yaml::Mapping(m)
        }
        "all" => {
            // Hydra's composed config starts with its `hydra` node.
            let mut m = serde_norway::Mapping::new();
            m.insert(Yaml::String("hydra".into()), hydra);
            if let Yaml::Mapping(job) = &composed.config {
                m.extend(job.clone());
            }
            Yaml::Mapping(m)
        }
        _ => composed.config.clone(),
    };
    if resolve {
        cfg = fusion_config::resolve(&cfg, rctx)?;
    }
    let package = package.filter(|p| !p.is_empty() && *p != "_global_");
    let Some(package) = package else {
        return crate::cli::stdout(&fusion_config::to_yaml(&cfg));
    };
    let mut node = &cfg;
    for key in package.split('.') {
        node = match node {
            Yaml::Mapping(m) => m.get(key),
            Yaml::Sequence(s) => key.parse::<usize>().ok().and_then(|i| s.get(i)),
            _ => None,
        }
        .filter(|v| !v.is_null())
        .ok_or_else(|| usage(format!("package '{package}' not found in config")))?;
    }
    crate::cli::stdout(&match node {
        Yaml::Mapping(_) | Yaml::Sequence(_) => {
            format!("# @package {package}\n{}", fusion_config::to_yaml(node))
        }
        scalar => format!("{}\n", fusion_config::value::scalar_to_string(scalar)),
    })
}

/// The paths of the entries `models` (what the method returned) when they are several named
/// entries rather than the one merged model (see `outputs`); an empty list, or a name that
/// cannot be a path into the report, is an error naming the method.
fn model_paths(
    models: &[(String, fusion_plugin_api::Model)],
    method: &str,
) -> anyhow::Result<Option<Vec<Vec<outputs::Part>>>> {
    match models {
        [] => anyhow::bail!("method `{method}` returned no model"),
        [(name, _)] if name.is_empty() => Ok(None),
        _ => {
            let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
            outputs::parse_paths(&names, method).map(Some)
        }
    }
}

/// Save `model` to `dest` and return what the task pool should evaluate: the checkpoint just
/// written when it holds the model's own values (a lazily merged model would otherwise compute
/// every tensor a second time), else `model` itself.
fn save(
    profiler: &mut Profiler,
    model: &fusion_plugin_api::Model,
    dest: &Path,
    opts: &SaveOptions,
    will_evaluate: bool,
) -> anyhow::Result<fusion_plugin_api::Model> {
    let summary = profiler.stage("save merged model", || save_model(model, dest, opts))?;
    tracing::info!(
        path = %summary.path.display(),
        shards = summary.shards,
        tensors = summary.tensors,
        bytes = summary.bytes,
        "merged model saved"
    );
    if !will_evaluate {
        return Ok(model.clone());
    }
    Ok(match reopen_saved(model, &summary)? {
        Some(saved) => {
            tracing::info!("the evaluation reads the saved checkpoint (memory-mapped)");
            saved
        }
        None => {
            tracing::info!(
                "the save converted {} tensors to another dtype; the evaluation computes the \
                 merged model again in its own dtype",
                summary.converted
            );
            model.clone()
        }
    })
}

/// Run the program; returns the report, or None for `--cfg` / `dry_run`.
pub fn run(req: &RunRequest) -> anyhow::Result<Option<Json>> {
    let mut profiler = Profiler::default();
    let composed = profiler.stage("compose config", || compose(req))?;
    let now = chrono::Local::now().naive_local();
    let default_log_dir = PathBuf::from("outputs")
        .join(if composed.config_name.is_empty() {
            "default"
        } else {
            &composed.config_name
        })
        .join(now.format("%Y-%m-%d_%H-%M-%S").to_string());
    let mut rctx = ResolveContext::new(&composed.config_name);
    rctx.now = now;
    rctx.hydra = composed.hydra.clone();
    let mut composed = composed;
    let default_log_dir = match &req.job {
        None => default_log_dir,
        Some(job) => {
            // A sweep's job writes into the folder its launcher gave it (Hydra's job output
            // folder), whatever `path.log_dir` says, and knows its `hydra.job.num`.
            let dir_text = job.dir.to_string_lossy().to_string();
            if let Some(Yaml::Mapping(path)) = composed.config.get_mut("path") {
                if path.contains_key("log_dir") {
                    path.insert(Yaml::from("log_dir"), Yaml::from(dir_text));
                }
            }
            let mut hydra = rctx
                .hydra
                .take()
                .unwrap_or(Yaml::Mapping(Default::default()));
            if let Yaml::Mapping(h) = &mut hydra {
                let job_node = h
                    .entry(Yaml::from("job"))
                    .or_insert_with(|| Yaml::Mapping(Default::default()));
                if let Yaml::Mapping(j) = job_node {
                    j.insert(Yaml::from("num"), Yaml::from(job.num as u64));
                }
            }
            rctx.hydra = Some(hydra);
            job.dir.clone()
        }
    };
    rctx.output_dir = Some(default_log_dir.to_string_lossy().to_string());

    if let Some(what) = &req.print_cfg {
        print_cfg(&composed, what, req.package.as_deref(), req.resolve, &rctx)?;
        logging::no_file();
        return Ok(None);
    }

    let resolved = fusion_config::resolve(&composed.config, &rctx)?;
    let missing = fusion_config::find_missing(&resolved);
    if !missing.is_empty() {
        return Err(usage(format!(
            "missing mandatory value{}: {} (`???` in the config); set {} on the command line, e.g. `{}=...`",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" },
            missing[0]
        )));
    }
    let mut cfg = yaml_to_json(&resolved);
    let mut log_dir = cfg
        .pointer("/path/log_dir")
        .and_then(Json::as_str)
        .map(PathBuf::from)
        .unwrap_or_else(|| default_log_dir.clone());
    let mut resolved = resolved;
    let dry_run = root_bool(&cfg, "dry_run", false)?;

    // The run's own folder, claimed before anything else is written, so that its log records
    // every later error. Another run's folder (one started in the same second) is never shared.
    if !dry_run {
        let (dir, log_file) = claim_log_dir(&log_dir)?;
        if dir != log_dir {
            // Resolve again with the folder this run got: `${path.log_dir}` may be used elsewhere.
            let mut composed_cfg = composed.config.clone();
            let dir_text = dir.to_string_lossy().to_string();
            if let Some(Yaml::Mapping(path)) = composed_cfg.get_mut("path") {
                if path.contains_key("log_dir") {
                    path.insert(Yaml::from("log_dir"), Yaml::from(dir_text.clone()));
                }
            }
            if log_dir == default_log_dir {
                rctx.output_dir = Some(dir_text);
            }
            resolved = fusion_config::resolve(&composed_cfg, &rctx)?;
            cfg = yaml_to_json(&resolved);
            log_dir = dir;
        }
        logging::open_file(log_file)
            .with_context(|| format!("writing the log file in {}", log_dir.display()))?;
        tracing::info!(log_dir = %log_dir.display(), "run started");
        write_atomic(
            &log_dir.join("config.yaml"),
            fusion_config::to_yaml(&resolved).as_bytes(),
        )?;
        // The command-line overrides, as Hydra's `overrides.yaml` keeps them: `fusion-host
        // report` reads them to tell runs apart.
        write_atomic(
            &log_dir.join("overrides.yaml"),
            serde_norway::to_string(&req.overrides)?.as_bytes(),
        )?;
    }

    let seed = match cfg.get("seed") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| usage(format!("`seed` must be a non-negative integer, got {v}")))?,
        ),
    };
    let fast_dev_run = root_bool(&cfg, "fast_dev_run", false)?;
    let print_config = root_bool(&cfg, "print_config", false)?;
    let save_path = root_path(&cfg, "merged_model_save_path", &log_dir)?;
    let mut save_opts = SaveOptions::from_kwargs(cfg.get("merged_model_save_kwargs"))?;
    save_opts.overflow_is_error = fusion_checkpoint::save::nonfinite_is_error()?;
    let report_path = match cfg.get("report_save_path") {
        // FusionBench's default when the key is absent.
        None => Some(log_dir.join("program_report.json")),
        Some(_) => root_path(&cfg, "report_save_path", &log_dir)?,
    };

    // Paths that cannot be written are found before any work.
    if let Some(dest) = &save_path {
        check_destination(dest)?;
    }
    if let Some(path) = report_path.as_ref().filter(|p| p.is_dir()) {
        return Err(usage(format!(
            "report_save_path {} is a folder; give the path of the JSON file to write, e.g. {}",
            path.display(),
            path.join("program_report.json").display()
        )));
    }

    if print_config {
        progress::eprint(&fusion_config::to_yaml(&resolved));
    }

    // Which components: find every target before any work (and before dry_run returns).
    let registry = profiler.stage("load plugins", || {
        Registry::load(&paths::plugin_dirs(&req.plugin_dirs))
    });
    let section = |kind: ComponentKind| -> Option<&Json> {
        cfg.get(kind.config_key()).filter(|v| !v.is_null())
    };
    let pool_cfg = section(ComponentKind::ModelPool)
        .ok_or_else(|| usage("the config has no `modelpool`; choose one, e.g. `modelpool=...`"))?;
    let method_cfg = section(ComponentKind::Algorithm)
        .ok_or_else(|| usage("the config has no `method`; choose one, e.g. `method=dummy`"))?;
    let task_cfg = section(ComponentKind::TaskPool);

    let pick = |kind: ComponentKind, c: &Json| -> anyhow::Result<_> {
        let sel = targets::selector(kind, c)?;
        let comp = targets::resolve(&registry, kind, &sel)?;
        tracing::info!(
            "{}: {} (plugin `{}`, {})",
            kind.config_key(),
            sel.target,
            comp.plugin,
            comp.library.display()
        );
        Ok((sel, comp))
    };
    let (pool_sel, pool_comp) = pick(ComponentKind::ModelPool, pool_cfg)?;
    let (method_sel, method_comp) = pick(ComponentKind::Algorithm, method_cfg)?;
    let task = task_cfg
        .map(|c| pick(ComponentKind::TaskPool, c))
        .transpose()?;
    // The hub settings (HF_* variables) are configuration too: checked before any work. Nothing
    // is downloaded before the components are built, so their config errors come first as well.
    hub::connect(&registry, req.offline, req.quiet)?;

    if dry_run {
        tracing::info!(
            "dry_run: the config composes and every component resolves; nothing was run"
        );
        logging::no_file();
        return Ok(None);
    }

    let lazy = Arc::new(req.device.lazy());
    let compute: Arc<dyn fusion_plugin_api::Compute> = lazy.clone();
    let ctx = Context::with_services(
        seed,
        fast_dev_run,
        Arc::new(progress::Services::default()),
        Some(compute),
    )
    .with_log_dir(&log_dir);

    let pool = profiler.stage("instantiate modelpool", || {
        pool_comp
            .model_pool(&pool_sel.target, pool_cfg)
            .map_err(plugin)
    })?;
    let method = profiler.stage("instantiate method", || {
        method_comp
            .algorithm(&method_sel.target, method_cfg)
            .map_err(plugin)
    })?;
    let taskpool = task
        .as_ref()
        .map(|(sel, comp)| {
            profiler.stage("instantiate taskpool", || {
                comp.task_pool(&sel.target, task_cfg.expect("present"))
                    .map_err(plugin)
            })
        })
        .transpose()?;

    let models = profiler
        .stage("run method", || {
            method.run_models(&pool, &ctx).map_err(plugin)
        })
        .with_context(|| format!("running method `{}`", method_sel.target))?;
    // One unnamed model is the merged model; several are named by their paths in the report,
    // as the dict or list of models some FusionBench methods return: each is saved into its
    // own folder and reported where its path says (`outputs`).
    let paths = model_paths(&models, &method_sel.target)?;
    let several = paths.is_some();

    let mut report = Json::Object(Default::default());
    let mut entries = Vec::new();
    let mut tables = Vec::new();
    for (i, (name, merged)) in models.iter().enumerate() {
        let path = paths.as_ref().map(|p| p[i].clone());
        if let Some(value) = merged.as_report_value().map_err(plugin)? {
            // FusionBench's `metadata` beside the models: into the report as it is.
            let Some(path) = path else {
                anyhow::bail!(
                    "method `{}` returned a report value where a model was expected",
                    method_sel.target
                );
            };
            entries.push((path, value));
            continue;
        }
        let dest = save_path.as_ref().map(|d| match &path {
            Some(path) => outputs::save_path(d, path),
            None => d.clone(),
        });
        let evaluated = match &dest {
            Some(dest) => save(&mut profiler, merged, dest, &save_opts, taskpool.is_some())
                .with_context(|| {
                    if several {
                        format!("saving model `{name}` to {}", dest.display())
                    } else {
                        format!("saving the merged model to {}", dest.display())
                    }
                })?,
            None => merged.clone(),
        };
        let Some(tp) = &taskpool else {
            continue;
        };
        let one = profiler
            .stage("evaluate", || tp.evaluate(&evaluated, &ctx).map_err(plugin))
            .with_context(|| {
                let target = &task.as_ref().expect("present").0.target;
                if several {
                    format!("evaluating model `{name}` with taskpool `{target}`")
                } else {
                    format!("evaluating with taskpool `{target}`")
                }
            })?;
        if let Some(table) = task_table(&one) {
            tables.push(if several {
                format!("model `{name}`\n{table}")
            } else {
                table
            });
        }
        match path {
            Some(path) => entries.push((path, one)),
            None => report = one,
        }
    }
    if several && taskpool.is_some() {
        report = outputs::assemble(entries);
    }
    if taskpool.is_none() {
        tracing::info!("no taskpool: nothing to evaluate");
    }

    let text = serde_json::to_string_pretty(&report)?;
    // A failed write to stdout (a full disk, a closed pipe) still leaves the report file and the
    // rest of the outputs written; the run then fails with that error.
    let printed = crate::cli::stdout(&format!("{text}\n"));
    if let Some(path) = &report_path {
        write_atomic(path, text.as_bytes())?;
        tracing::info!(path = %path.display(), "report saved");
    }
    for table in &tables {
        progress::eprint(table);
    }
    progress::eprint(&profiler.summary());
    lazy.log_timing();
    if let Err(e) = printed {
        return Err(anyhow::anyhow!(
            "{e:#} ({})",
            match &report_path {
                Some(p) => format!("the report is saved in {}", p.display()),
                None => "the report is not saved: report_save_path is null".to_string(),
            }
        ));
    }
    Ok(Some(report))
}
