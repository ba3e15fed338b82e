//! The host side of the boundary: loading plugin libraries and driving their components.
//!
//! Plugin authors do not need this module; `fusion-host` uses it so that it never touches an
//! abi_stable type itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::library::{lib_header_from_path, LibraryError, RawLibrary, RootModule};
use abi_stable::std_types::{RStr, RString};
use abi_stable::StableAbi;

use crate::abi::{
    self, AlgorithmObj, Constructor, HostLink, HubExport, HubObj, ModelPoolObj, ModelPoolProxy,
    ModelsAlgorithmObj, ModelsConstructor, ModelsExport, PluginModule_Ref, TaskPoolObj,
};
use crate::hub::Hub;
use crate::{Context, Error, Model, ModelPool, Result};

/// The version of plugin-api this host was built with.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The kinds of component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    /// A fusion algorithm (config key `method`).
    Algorithm,
    /// A model pool (config key `modelpool`).
    ModelPool,
    /// A task pool (config key `taskpool`).
    TaskPool,
}

impl ComponentKind {
    /// The config key FusionBench uses for this kind.
    pub fn config_key(self) -> &'static str {
        match self {
            ComponentKind::Algorithm => "method",
            ComponentKind::ModelPool => "modelpool",
            ComponentKind::TaskPool => "taskpool",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComponentKind::Algorithm => "algorithm",
            ComponentKind::ModelPool => "modelpool",
            ComponentKind::TaskPool => "taskpool",
        })
    }
}

/// Why a library could not be loaded. Every variant names the file (`path`).
#[derive(Debug)]
#[allow(missing_docs)]
pub enum LoadError {
    /// The file could not be opened as a shared library.
    Open { path: PathBuf, message: String },
    /// The file is a shared library but not a fusion-host plugin.
    NotAPlugin { path: PathBuf },
    /// Built against an incompatible plugin-api version.
    IncompatibleVersion {
        path: PathBuf,
        plugin_api: String,
        host_api: String,
    },
    /// Built against a plugin-api whose types have a different layout.
    AbiMismatch {
        path: PathBuf,
        plugin_api: String,
        host_api: String,
        detail: String,
    },
    /// Anything else abi_stable reports (a panicking or failing initializer, a different
    /// abi_stable version).
    Other { path: PathBuf, message: String },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { path, message } => {
                write!(f, "cannot open plugin library {}: {message}", path.display())
            }
            LoadError::NotAPlugin { path } => write!(
                f,
                "{} is not a fusion-host plugin (it exports no plugin root module)",
                path.display()
            ),
            LoadError::IncompatibleVersion { path, plugin_api, host_api } => write!(
                f,
                "plugin {} was built against plugin-api {plugin_api}, which is incompatible with \
                 this host's plugin-api {host_api}; rebuild the plugin against plugin-api {host_api}",
                path.display()
            ),
            LoadError::AbiMismatch { path, plugin_api, host_api, detail } => write!(
                f,
                "plugin {} (plugin-api {plugin_api}) does not match the ABI of this host \
                 (plugin-api {host_api}); rebuild the plugin. Layout check: {detail}",
                path.display()
            ),
            LoadError::Other { path, message } => {
                write!(f, "cannot load plugin {}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded plugin library and the components it provides.
#[derive(Clone)]
pub struct Library {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The plugin crate's name.
    pub name: String,
    /// The plugin crate's version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// Its components.
    pub components: Vec<Component>,
    hub_export: Option<&'static HubExport>,
}

impl Library {
    /// Give the library the host's Hugging Face hub (what [`crate::hub::current`] returns inside
    /// it). Returns false, and does nothing, for a library built before plugin-api had hub
    /// support (or with a hub interface this host cannot serve).
    pub fn connect_hub(&self, hub: &Arc<dyn Hub>) -> bool {
        match self.hub_export {
            Some(export) => {
                (export.set_hub)(abi::hub_to_obj(hub.clone()));
                true
            }
            None => false,
        }
    }
}

/// The library's [`HubExport`], when it has one whose hub interface this host implements.
fn find_hub_export(path: &Path) -> Option<&'static HubExport> {
    let raw = RawLibrary::load_at(path).ok()?;
    let symbol = format!("{}\0", abi::HUB_EXPORT_SYMBOL);
    // SAFETY: the symbol is the `HubExport` static `export_plugin!` writes (its name is
    // versioned with its type); the library stays loaded for good (leaked below, and abi_stable
    // already leaked it).
    let export: &'static HubExport =
        unsafe { *raw.get::<&'static HubExport>(symbol.as_bytes()).ok()? };
    std::mem::forget(raw);
    // The library calls the hub's methods: its view of the vtable must be one the host's
    // implementation satisfies.
    match check_layout_compatibility(export.layout, <HubObj as StableAbi>::LAYOUT) {
        Ok(()) => Some(export),
        Err(e) => {
            let detail = e.to_string();
            tracing::warn!(
                "plugin {}: its Hugging Face hub interface does not match this host's, so its \
                 components cannot reach the hub; rebuild it. Layout check: {}",
                path.display(),
                detail.lines().take(6).collect::<Vec<_>>().join(" | ")
            );
            None
        }
    }
}

/// The constructors of the library's [`ModelsExport`], one per component, when it has one whose
/// layout this host shares.
fn find_models_constructors(path: &Path) -> Option<Vec<Option<ModelsConstructor>>> {
    let raw = RawLibrary::load_at(path).ok()?;
    let symbol = format!("{}\0", abi::MODELS_EXPORT_SYMBOL);
    // SAFETY: the symbol is the `ModelsExport` static `export_plugin!` writes (its name is
    // versioned with its type); the library stays loaded for good (leaked below, and abi_stable
    // already leaked it).
    let export: &'static ModelsExport =
        unsafe { *raw.get::<&'static ModelsExport>(symbol.as_bytes()).ok()? };
    std::mem::forget(raw);
    // The host calls the library's objects: the library's layout must satisfy the host's.
    match check_layout_compatibility(<ModelsConstructor as StableAbi>::LAYOUT, export.layout) {
        Ok(()) => Some(
            (export.constructors)()
                .into_iter()
                .map(|c| c.into_option())
                .collect(),
        ),
        Err(e) => {
            let detail = e.to_string();
            tracing::warn!(
                "plugin {}: its interface for methods that return several models does not match \
                 this host's, so its methods return one model each; rebuild it. Layout check: {}",
                path.display(),
                detail.lines().take(6).collect::<Vec<_>>().join(" | ")
            );
            None
        }
    }
}

/// One component of a loaded library.
#[derive(Clone)]
pub struct Component {
    /// `_target_` names it answers to.
    pub names: Vec<String>,
    /// Its kind.
    pub kind: ComponentKind,
    /// One-line description.
    pub description: String,
    /// The plugin's name.
    pub plugin: String,
    /// The library file.
    pub library: PathBuf,
    constructor: Constructor,
    /// The constructor that can run the algorithm for several models (absent in libraries
    /// built before plugin-api had it).
    models: Option<ModelsConstructor>,
}

extern "C" fn host_log(level: u8, plugin: RStr<'_>, target: RStr<'_>, message: RStr<'_>) {
    let (plugin, target, message) = (plugin.as_str(), target.as_str(), message.as_str());
    match level {
        1 => tracing::error!(target: "plugin", plugin, source = target, "{message}"),
        2 => tracing::warn!(target: "plugin", plugin, source = target, "{message}"),
        3 => tracing::info!(target: "plugin", plugin, source = target, "{message}"),
        4 => tracing::debug!(target: "plugin", plugin, source = target, "{message}"),
        _ => tracing::trace!(target: "plugin", plugin, source = target, "{message}"),
    }
}

fn current_max_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Load one plugin library (never unloaded: abi_stable leaks every library it opens).
///
/// Each file is loaded on its own through its header, rather than with abi_stable's
/// `load_from_directory`, which keeps a single module per root-module type.
pub fn load_library(path: &Path) -> std::result::Result<Library, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path: path.to_owned(),
            message: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin {
            path: path.to_owned(),
        },
        other => LoadError::Other {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })?;
    let plugin_api = header.version_strings().version.to_string();
    let host_api = PluginModule_Ref::VERSION_STRINGS.version.to_string();
    let module: PluginModule_Ref = header.init_root_module().map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber { .. } | LibraryError::ParseVersionError(_) => {
            LoadError::IncompatibleVersion {
                path: path.to_owned(),
                plugin_api: plugin_api.clone(),
                host_api: host_api.clone(),
            }
        }
        LibraryError::AbiInstability(detail) => {
            let detail = detail.to_string();
            // abi_stable prints a full layout diff; its first lines say what differs.
            let short: Vec<&str> = detail
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            LoadError::AbiMismatch {
                path: path.to_owned(),
                plugin_api: plugin_api.clone(),
                host_api: host_api.clone(),
                detail: short.join(" | "),
            }
        }
        other => LoadError::Other {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })?;

    (module.init())(HostLink {
        log: host_log,
        max_level: current_max_level(),
    });
    let hub_export = find_hub_export(path);
    let name = module.name().to_string();
    let descriptors = (module.components())();
    let models = find_models_constructors(path).filter(|m| m.len() == descriptors.len());
    let components = descriptors
        .into_iter()
        .enumerate()
        .map(|(i, d)| Component {
            names: d.names.iter().map(RString::to_string).collect(),
            kind: match d.constructor {
                Constructor::Algorithm(_) => ComponentKind::Algorithm,
                Constructor::ModelPool(_) => ComponentKind::ModelPool,
                Constructor::TaskPool(_) => ComponentKind::TaskPool,
            },
            description: d.description.to_string(),
            plugin: name.clone(),
            library: path.to_owned(),
            constructor: d.constructor,
            models: models.as_ref().and_then(|m| m[i]),
        })
        .collect();
    Ok(Library {
        path: path.to_owned(),
        name,
        version: module.version().to_string(),
        api_version: plugin_api,
        components,
        hub_export,
    })
}

impl Component {
    fn wrong_kind(&self, wanted: ComponentKind) -> Error {
        Error::config(format!(
            "`{}` is a {} (from plugin `{}`), not a {wanted}",
            self.names.first().map(String::as_str).unwrap_or("?"),
            self.kind,
            self.plugin
        ))
    }

    /// Build the algorithm from its config subtree.
    pub fn algorithm(&self, target: &str, config: &serde_json::Value) -> Result<AlgorithmHandle> {
        match (self.constructor, self.models) {
            (Constructor::Algorithm(_), Some(models)) => {
                let json = config.to_string();
                (models.construct)(json.as_str().into(), target.into())
                    .into_result()
                    .map(|obj| AlgorithmHandle {
                        obj: AlgorithmObject::Several(obj),
                    })
            }
            (Constructor::Algorithm(f), None) => {
                let json = config.to_string();
                f(json.as_str().into(), target.into())
                    .into_result()
                    .map(|obj| AlgorithmHandle {
                        obj: AlgorithmObject::One(obj),
                    })
            }
            _ => Err(self.wrong_kind(ComponentKind::Algorithm)),
        }
    }

    /// Build the model pool from its config subtree.
    pub fn model_pool(&self, target: &str, config: &serde_json::Value) -> Result<ModelPoolHandle> {
        match self.constructor {
            Constructor::ModelPool(f) => {
                let json = config.to_string();
                f(json.as_str().into(), target.into())
                    .into_result()
                    .map(|obj| ModelPoolHandle(ModelPoolProxy(obj)))
            }
            _ => Err(self.wrong_kind(ComponentKind::ModelPool)),
        }
    }

    /// Build the task pool from its config subtree.
    pub fn task_pool(&self, target: &str, config: &serde_json::Value) -> Result<TaskPoolHandle> {
        match self.constructor {
            Constructor::TaskPool(f) => {
                let json = config.to_string();
                f(json.as_str().into(), target.into())
                    .into_result()
                    .map(|obj| TaskPoolHandle { obj })
            }
            _ => Err(self.wrong_kind(ComponentKind::TaskPool)),
        }
    }
}

/// A loaded algorithm.
pub struct AlgorithmHandle {
    obj: AlgorithmObject,
}

enum AlgorithmObject {
    /// From a library built before algorithms could return several models.
    One(AlgorithmObj),
    Several(ModelsAlgorithmObj),
}

impl AlgorithmHandle {
    /// Run it on a pool, for its one model (an error naming the count if it makes several).
    pub fn run(&self, pool: &ModelPoolHandle, ctx: &Context) -> Result<Model> {
        let mut models = self.run_models(pool, ctx)?;
        if models.len() != 1 {
            return Err(Error::other(format!(
                "the method returned {} models where one was expected",
                models.len()
            )));
        }
        Ok(models.remove(0).1)
    }

    /// Run it on a pool, for every model it makes (see [`crate::Algorithm::run_models`]): one
    /// unnamed model for most methods.
    pub fn run_models(
        &self,
        pool: &ModelPoolHandle,
        ctx: &Context,
    ) -> Result<Vec<(String, Model)>> {
        match &self.obj {
            AlgorithmObject::One(obj) => {
                let model = obj.run(pool.0 .0.clone(), ctx.abi()).into_result()?;
                Ok(vec![(String::new(), model)])
            }
            AlgorithmObject::Several(obj) => Ok(obj
                .run_models(pool.0 .0.clone(), ctx.abi())
                .into_result()?
                .into_iter()
                .map(|t| (t.0.into_string(), t.1))
                .collect()),
        }
    }
}

/// A loaded model pool (also usable as a plain [`ModelPool`]).
#[derive(Clone)]
pub struct ModelPoolHandle(ModelPoolProxy);

impl ModelPoolHandle {
    /// Wrap an in-process pool so it can be handed to a loaded algorithm.
    pub fn from_local(pool: Arc<dyn ModelPool>) -> Self {
        let obj: ModelPoolObj = abi::model_pool_to_obj(pool, "the host".into());
        ModelPoolHandle(ModelPoolProxy(obj))
    }
}

impl ModelPool for ModelPoolHandle {
    fn all_model_names(&self) -> Result<Vec<String>> {
        self.0.all_model_names()
    }
    fn load_model(&self, name: &str) -> Result<Model> {
        self.0.load_model(name)
    }
}

/// A loaded task pool.
pub struct TaskPoolHandle {
    obj: TaskPoolObj,
}

impl TaskPoolHandle {
    /// Evaluate a model; returns the report.
    pub fn evaluate(&self, model: &Model, ctx: &Context) -> Result<serde_json::Value> {
        let text = self.obj.evaluate(model.clone(), ctx.abi()).into_result()?;
        serde_json::from_str(text.as_str()).map_err(|e| {
            Error::other(format!(
                "the task pool returned a report that is not JSON: {e}"
            ))
        })
    }
}
