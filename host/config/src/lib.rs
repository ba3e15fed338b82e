//! Hydra 1.3 / OmegaConf 2.3-style config composition for fusion-host.
//!
//! [`compose`] builds a config from a search path of config roots, a primary config and
//! command-line overrides, following Hydra's defaults-list algorithm (config groups, nested
//! groups, `_self_`, `optional`, `override`, package directives `group@pkg`, `@_here_`,
//! `@_global_`, `# @package` headers, option lists, relative and absolute includes).
//! [`resolve`] then resolves OmegaConf interpolations, [`find_missing`] lists the `???`
//! values still to be given, and [`to_yaml`] prints the config as `--cfg job` does.
//!
//! ```no_run
//! use fusion_config::{compose, resolve, to_yaml, ComposeOptions, ResolveContext};
//! let composed = compose(&ComposeOptions {
//!     search_path: vec!["configs".into()],
//!     config_name: Some("fabric_model_fusion".into()),
//!     overrides: vec!["method=task_arithmetic".into(), "method.scaling_factor=0.3".into()],
//! })?;
//! let resolved = resolve(&composed.config, &ResolveContext::new(&composed.config_name))?;
//! print!("{}", to_yaml(&resolved));
//! # Ok::<(), fusion_config::ConfigError>(())
//! ```
//!
//! # Search path
//! Every entry of [`ComposeOptions::search_path`] is a config root. **Later entries take
//! precedence**: a config path (`method/dummy`) is looked up from the last root to the first
//! and the first file found wins, so appending a user folder to the built-in `configs/` lets
//! the user shadow any config (as Hydra's `--config-path`/`--config-dir` do). The options of a
//! group are the union over all roots.
//!
//! # Departures from Hydra
//! - Hydra's own `hydra/config` takes part in the defaults tree as in Hydra (its groups
//!   `hydra/help`, `hydra/job_logging`, `hydra/launcher`, ... can be chosen or overridden, e.g. by
//!   FusionBench's `hydra/default.yaml` with `override help: fusion_bench_help`), but the content
//!   of Hydra's built-in options (logging schema, help text, launcher) is not composed; an
//!   option a config root provides is. A `hydra` group in the user's tree is composed like any
//!   group, and overrides under `hydra.` may add keys (Hydra accepts them because its schema
//!   declares them). The `hydra` node is removed from [`Composed::config`] and returned in
//!   [`Composed::hydra`].
//! - Sweeps (`a=1,2`, `choice(...)`, `range(...)`) are rejected by [`compose`]; [`sweep::expand`]
//!   expands them into the jobs of a multirun. Cast functions are rejected.
//! - Structured-config schemas / ConfigStore are not supported (YAML files only).
//! - YAML is parsed as YAML 1.2 (serde_norway): `yes`/`no`/`on`/`off` stay strings, where
//!   OmegaConf's YAML 1.1 loader reads them as booleans.
//! - Deleting a list item (`~a.list.0`) works here; Hydra 1.3 fails with a `TypeError`.
//! - Merging a mapping onto a node that is an interpolation to a mapping replaces the
//!   interpolation instead of merging into its target, and a whole-string interpolation that
//!   copies a container resolves the container's own interpolations at their original place.

#![warn(missing_docs)]

mod compose;
mod defaults;
mod emit;
mod error;
mod interp;
pub mod overrides;
mod repo;
pub mod sweep;
pub mod value;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_norway::Value;

pub use error::ConfigError;
pub use overrides::{parse_override, Override, OverrideKind};

/// What to compose.
#[derive(Debug, Clone, Default)]
pub struct ComposeOptions {
    /// Config roots. Later entries take precedence (see the crate docs).
    pub search_path: Vec<PathBuf>,
    /// The primary config, e.g. `fabric_model_fusion` (`.yaml` optional); None composes an
    /// empty primary config (only `+group=option` and `+key=value` overrides add content).
    pub config_name: Option<String>,
    /// Command-line overrides exactly as typed (`method=ties_merging`, `+a.b=1`, `~c`).
    pub overrides: Vec<String>,
}

/// One config that went into the composition, in merge order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    /// The config path, e.g. `method/task_arithmetic`.
    pub config_path: String,
    /// The dotted package its content was merged at (empty for the root).
    pub package: String,
    /// The file it was read from (None for the implicit empty primary).
    pub file: Option<PathBuf>,
    /// True for the `_self_` content of a config that has a defaults list.
    pub is_self: bool,
    /// True for the primary config.
    pub primary: bool,
    /// The config whose defaults list included it.
    pub parent: Option<String>,
    /// The override key of a group default (`method`, `dataset/test@test_datasets`).
    pub override_key: Option<String>,
}

/// The result of [`compose`].
#[derive(Debug, Clone)]
pub struct Composed {
    /// The job config (a mapping, keys in Hydra's order), without the `hydra` node.
    pub config: Value,
    /// The `hydra` node, when some config defined one.
    pub hydra: Option<Value>,
    /// The primary config name (without `.yaml`; empty when none was given).
    pub config_name: String,
    /// The configs merged, in order (Hydra's final defaults list).
    pub defaults: Vec<LoadedConfig>,
    /// The group choices (Hydra's `hydra.runtime.choices`): override key → option
    /// (None for a group set to `null`).
    pub choices: Vec<(String, Option<String>)>,
    /// The search path used.
    pub search_path: Vec<PathBuf>,
}

/// What [`resolve`] needs besides the config.
#[derive(Debug, Clone)]
pub struct ResolveContext {
    /// `${hydra:job.config_name}`.
    pub config_name: String,
    /// `${hydra:job.name}` (Hydra's task name; defaults to `fusion_host`).
    pub job_name: String,
    /// `${hydra:runtime.output_dir}`; None leaves it undefined (an error if referenced).
    pub output_dir: Option<String>,
    /// The moment `${now:...}` formats, fixed so every `${now:}` of one run agrees.
    pub now: chrono::NaiveDateTime,
    /// Extra `hydra` node (e.g. [`Composed::hydra`]) visible to `${hydra:...}`.
    pub hydra: Option<Value>,
    /// Environment for `${oc.env:...}`; None reads the process environment.
    pub env: Option<BTreeMap<String, String>>,
}

impl ResolveContext {
    /// A context for `config_name` with the current local time and the process environment.
    pub fn new(config_name: &str) -> Self {
        ResolveContext {
            config_name: config_name.to_string(),
            job_name: "fusion_host".to_string(),
            output_dir: None,
            now: chrono::Local::now().naive_local(),
            hydra: None,
            env: None,
        }
    }

    /// Looks an environment variable up in [`ResolveContext::env`] or the process environment.
    pub fn env_var(&self, name: &str) -> Option<String> {
        match &self.env {
            Some(m) => m.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }
}

/// Composes a config: builds Hydra's defaults list from the primary config and the group
/// overrides, merges every config at its package, then applies the value overrides.
pub fn compose(opts: &ComposeOptions) -> Result<Composed, ConfigError> {
    compose::compose(opts)
}

/// The options of a config group over a search path (config names without `.yaml`, sorted), as
/// Hydra lists them for `glob(...)` sweeps; empty when `group` is not a group.
pub fn group_options(search_path: &[PathBuf], group: &str) -> Vec<String> {
    repo::Repo::new(search_path.to_vec()).group_options(group)
}

/// Resolves every interpolation in `config` (as `OmegaConf.resolve` does) and returns the
/// resolved copy. `???` values are left in place; an interpolation that points at one is an
/// error.
pub fn resolve(config: &Value, ctx: &ResolveContext) -> Result<Value, ConfigError> {
    interp::resolve(config, ctx)
}

/// Resolves the value of one top-level key of `config`, with the rest of the config (and
/// `hydra`, from `ctx`) visible to its interpolations but not itself resolved.
pub fn resolve_key(config: &Value, key: &str, ctx: &ResolveContext) -> Result<Value, ConfigError> {
    interp::resolve_key(config, key, ctx)
}

/// Dotted key paths (`method.scaling_factor`, `models.0.path`) of the values that are still
/// `???`, in document order.
pub fn find_missing(config: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, c) in m {
                    path.push(value::scalar_to_string(k));
                    walk(c, path, out);
                    path.pop();
                }
            }
            Value::Sequence(s) => {
                for (i, c) in s.iter().enumerate() {
                    path.push(i.to_string());
                    walk(c, path, out);
                    path.pop();
                }
            }
            other if value::is_missing(other) => out.push(path.join(".")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(config, &mut Vec::new(), &mut out);
    out
}

/// Renders a config as block YAML exactly as `--cfg job` prints it (`OmegaConf.to_yaml`:
/// PyYAML block style, OmegaConf's quoting of bool/int/float-like strings, folding at
/// column 80).
pub fn to_yaml(config: &Value) -> String {
    emit::to_yaml(config)
}
