//! The three component kinds a plugin can provide, and what they are given.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Compute, Error, Model, Result};

/// A fusion algorithm (FusionBench's `BaseAlgorithm`): turns a pool of models into one model.
pub trait Algorithm: Send + Sync + 'static {
    /// Merge the models of `pool`. Load models lazily with [`ModelPool::load_model`]; use
    /// `ctx` for the GPU, progress bars, the seed and `fast_dev_run`.
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model>;

    /// Every model the method makes, by name, for methods that return several (FusionBench
    /// methods that return a dict of models, such as TSV-M's single-task models beside
    /// `merged`). The host calls this one: it evaluates each model and reports them under their
    /// names, and saves each into its own folder. The default is [`run`](Algorithm::run)'s model
    /// alone, unnamed, which the host treats as the one merged model. Names must be unique,
    /// non-empty and usable as a folder name when there are several.
    ///
    /// A name is a path into the report, its parts separated by `/`, so that the report takes
    /// the shape FusionBench gives the dict or list a method returns: `models/task_a` reports
    /// under `{"models": {"task_a": ...}}` (TALL masks' `{"models": {...}, "metadata": ...}`),
    /// and a part `[i]` is position i of a list (`[0]`, `[1]`, ... report as `[..., ...]`; the
    /// positions of one list must be 0 to n − 1). An entry made by [`Model::report_value`] is
    /// put into the report as it is (FusionBench's `metadata`). Model `a/b` is saved to
    /// `merged_model_save_path/a/b`.
    fn run_models(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Vec<(String, Model)>> {
        Ok(vec![(String::new(), self.run(pool, ctx)?)])
    }
}

/// A pool of models (FusionBench's `BaseModelPool`).
///
/// Names wrapped in underscores, such as `_pretrained_`, are special: they are served by
/// [`load_model`](ModelPool::load_model) but are not among the models to merge.
pub trait ModelPool: Send + Sync + 'static {
    /// Every model name in the pool, special ones included, in config order.
    fn all_model_names(&self) -> Result<Vec<String>>;
    /// Open one model by name (lazily: tensors are read when asked for).
    fn load_model(&self, name: &str) -> Result<Model>;
}

impl dyn ModelPool + '_ {
    /// The models to merge: every name that is not wrapped in underscores.
    pub fn model_names(&self) -> Result<Vec<String>> {
        Ok(self
            .all_model_names()?
            .into_iter()
            .filter(|n| !is_special_model_name(n))
            .collect())
    }

    /// Whether the pool has a `_pretrained_` model.
    pub fn has_pretrained(&self) -> Result<bool> {
        Ok(self.all_model_names()?.iter().any(|n| n == PRETRAINED))
    }

    /// Load the `_pretrained_` model.
    pub fn load_pretrained(&self) -> Result<Model> {
        self.load_model(PRETRAINED)
    }

    /// The `_pretrained_` model if there is one, else the first model to merge
    /// (what FusionBench's `DummyAlgorithm` returns).
    pub fn load_pretrained_or_first(&self) -> Result<Model> {
        if self.has_pretrained()? {
            return self.load_pretrained();
        }
        let names = self.model_names()?;
        let first = names
            .first()
            .ok_or_else(|| Error::config("the model pool has no models"))?;
        self.load_model(first)
    }
}

/// The name FusionBench gives the base model of a pool.
pub const PRETRAINED: &str = "_pretrained_";

/// Whether `name` is special (wrapped in underscores, like `_pretrained_`).
pub fn is_special_model_name(name: &str) -> bool {
    name.len() >= 2 && name.starts_with('_') && name.ends_with('_')
}

/// A pool of evaluation tasks (FusionBench's `BaseTaskPool`).
pub trait TaskPool: Send + Sync + 'static {
    /// Evaluate `model` and return the report: a JSON object, by convention one entry per task
    /// (`{"accuracy": .., "loss": ..}`), plus `average` and `model_info`, as FusionBench does.
    fn evaluate(&self, model: &Model, ctx: &Context) -> Result<Value>;
}

/// Components are built from their config subtree.
pub trait FromConfig: Sized {
    /// Build the component. Return [`Error::config`] naming the parameter when the config is
    /// invalid.
    fn from_config(config: &Config) -> Result<Self>;
}

/// A component's config subtree (the YAML under `method:`, `modelpool:` or `taskpool:`, with
/// interpolations resolved), plus the `_target_` it was selected by.
///
/// The config remembers which parameters the component read ([`get`](Config::get) and the
/// like): the host refuses an algorithm config that holds a parameter its algorithm never read,
/// as FusionBench's `instantiate` refuses an unexpected keyword, so a misspelt
/// `treshold` is an error instead of a silent default.
#[derive(Clone, Debug)]
pub struct Config {
    target: String,
    value: Value,
    /// The parameters read so far (shared by clones).
    read: Arc<Mutex<BTreeSet<String>>>,
}

/// Keys a FusionBench method config may hold that no algorithm reads: v0.1 configs select the
/// algorithm with `name:` (the host resolves it), and FusionBench's Hydra `instantiate` consumes
/// the underscore keys (`_target_`, `_recursive_`, `_convert_`, `_partial_`, ...) itself.
const PASSED_THROUGH: &[&str] = &["name"];

impl Config {
    /// A config for `target` from a JSON value (an object, or null for an empty config).
    pub fn new(target: impl Into<String>, value: Value) -> Result<Self> {
        let target = target.into();
        let value = match value {
            Value::Null => Value::Object(Default::default()),
            v @ Value::Object(_) => v,
            other => {
                return Err(Error::config(format!(
                    "the config of `{target}` must be a mapping, got {other}"
                )))
            }
        };
        Ok(Self {
            target,
            value,
            read: Arc::default(),
        })
    }

    fn mark_read(&self, key: &str) {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
    }

    /// Declare a parameter the component takes and ignores (FusionBench passes it, fusion-host
    /// does the job elsewhere), so that it is not reported as unknown.
    pub fn accept(&self, key: &str) {
        self.mark_read(key);
    }

    /// The parameters read so far, sorted: the ones the component takes.
    pub fn read_parameters(&self) -> Vec<String> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The keys of the config that the component never read, in config order, leaving out
    /// underscore keys (`_target_`, ...) and what FusionBench passes through (`name`).
    pub fn unread_parameters(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let Value::Object(m) = &self.value else {
            return Vec::new();
        };
        m.keys()
            .filter(|k| !(k.len() >= 2 && k.starts_with('_') && k.ends_with('_')))
            .filter(|k| !PASSED_THROUGH.contains(&k.as_str()))
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect()
    }

    /// An error naming every parameter the component did not read, with the closest parameter
    /// it takes and the list of all it takes; Ok when every key was read. The host calls this
    /// after building an algorithm.
    pub fn check_parameters(&self) -> Result<()> {
        let unknown = self.unread_parameters();
        if unknown.is_empty() {
            return Ok(());
        }
        let takes = self.read_parameters();
        let hint = |k: &String| {
            closest(k, &takes)
                .map(|c| format!("`{k}` (did you mean `{c}`?)"))
                .unwrap_or_else(|| format!("`{k}`"))
        };
        let takes = if takes.is_empty() {
            "it takes no parameters".to_string()
        } else {
            format!(
                "it takes: {}",
                takes
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::config(format!(
            "`{}`: unknown parameter{} {}; {takes}",
            self.target,
            if unknown.len() > 1 { "s" } else { "" },
            unknown.iter().map(hint).collect::<Vec<_>>().join(", ")
        )))
    }

    /// The `_target_` (or v0.1 `name`/`type`) the component was selected by.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The whole subtree.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// A parameter, or `None` when it is absent or null.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.mark_read(key);
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                Error::config(format!("`{}`: parameter `{key}` = {v}: {e}", self.target))
            }),
        }
    }

    /// A parameter, or `default` when it is absent or null.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// A required parameter.
    pub fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        self.get(key)?.ok_or_else(|| {
            Error::config(format!(
                "`{}`: required parameter `{key}` is missing",
                self.target
            ))
        })
    }

    /// Deserialize the whole subtree into `T`, leaving out Hydra's underscore keys (`_target_`,
    /// `_recursive_`, ...).
    /// Every key counts as read: give `T` `#[serde(deny_unknown_fields)]` to refuse unknown ones.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        if let Value::Object(m) = &self.value {
            for k in m.keys() {
                self.mark_read(k);
            }
        }
        let mut v = self.value.clone();
        if let Value::Object(m) = &mut v {
            m.retain(|k, _| !(k.starts_with('_') && k.ends_with('_')));
        }
        serde_json::from_value(v).map_err(|e| Error::config(format!("`{}`: {e}", self.target)))
    }
}

/// Services the host offers while a component runs.
pub trait HostServices: Send + Sync + 'static {
    /// Start a progress bar with `total` steps (0 for unknown); returns its id.
    fn progress_start(&self, label: &str, total: u64) -> u64;
    /// Advance a progress bar.
    fn progress_advance(&self, id: u64, delta: u64);
    /// Finish a progress bar.
    fn progress_finish(&self, id: u64);
}

/// Host services that do nothing: for running components in-process (tests, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHostServices;

impl HostServices for NoHostServices {
    fn progress_start(&self, _label: &str, _total: u64) -> u64 {
        0
    }
    fn progress_advance(&self, _id: u64, _delta: u64) {}
    fn progress_finish(&self, _id: u64) {}
}

/// What a component is given when it runs: the GPU, progress reporting, the seed, and
/// `fast_dev_run`.
#[derive(Clone)]
pub struct Context {
    pub(crate) abi: crate::abi::RunContext_Ref,
    pub(crate) compute: Option<Arc<dyn Compute>>,
}

impl Context {
    /// A context for running components in-process, without a host (tests, tools).
    pub fn local(
        seed: Option<u64>,
        fast_dev_run: bool,
        compute: Option<Arc<dyn Compute>>,
    ) -> Context {
        Self::with_services(seed, fast_dev_run, Arc::new(NoHostServices), compute)
    }

    /// A context with the given host services. The host builds its context this way.
    pub fn with_services(
        seed: Option<u64>,
        fast_dev_run: bool,
        services: Arc<dyn HostServices>,
        compute: Option<Arc<dyn Compute>>,
    ) -> Context {
        crate::abi::build_context(seed, fast_dev_run, services, compute)
    }

    /// The run's seed (the program's `seed`), if one was set.
    pub fn seed(&self) -> Option<u64> {
        self.abi.seed().into_option()
    }

    /// Whether this is a quick test run (FusionBench's `fast_dev_run`): evaluate one batch per
    /// task, take one optimisation step.
    pub fn fast_dev_run(&self) -> bool {
        self.abi.fast_dev_run()
    }

    /// The run's log folder (the program's `path.log_dir`, where its report and log go), when
    /// the host gives one: analysis methods write their files there unless told otherwise. A
    /// host built before this field existed gives none.
    pub fn log_dir(&self) -> Option<std::path::PathBuf> {
        self.abi
            .log_dir()
            .and_then(|d| d.into_option())
            .map(|d| std::path::PathBuf::from(d.as_str()))
    }

    /// This context with `dir` as the run's log folder (see [`Context::log_dir`]).
    pub fn with_log_dir(&self, dir: &std::path::Path) -> Context {
        crate::abi::with_log_dir(self, dir)
    }

    /// The host's GPU compute handle, or an error when the host runs without a device.
    pub fn compute(&self) -> Result<&dyn Compute> {
        self.compute
            .as_deref()
            .ok_or_else(|| Error::compute("no compute device is available to this run"))
    }

    /// Start a progress bar that the host draws; it finishes when dropped.
    pub fn progress(&self, label: &str, total: u64) -> Progress {
        let services = self.abi.services().clone();
        let id = services.progress_start(label.into(), total);
        Progress { services, id }
    }
}

/// A progress bar drawn by the host. Finishes when dropped.
pub struct Progress {
    services: crate::abi::HostServicesObj,
    id: u64,
}

impl Progress {
    /// Advance by `delta` steps.
    pub fn advance(&self, delta: u64) {
        self.services.progress_advance(self.id, delta);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.services.progress_finish(self.id);
    }
}

/// The candidate closest to `name` by edit distance, when it is close (a typo, not another
/// word).
fn closest(name: &str, candidates: &[String]) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    let lower = name.to_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}
