//! The ABI-stable layer. The only module that handles abi_stable's `R*` types.
//!
//! Plugin authors never use this module directly: [`export_plugin!`](crate::export_plugin) builds
//! the root module, and the types in [`crate::host`] wrap what the host loads. Each plain trait
//! ([`StateDict`], [`ModelPool`], [`Algorithm`], [`TaskPool`], [`Compute`], [`HostServices`],
//! [`Hub`]) has
//! an ABI twin here (`*Abi`, a `#[sabi_trait]`), an adapter that implements the twin over the
//! plain trait (catching panics), and a proxy that implements the plain trait over the twin.
//!
//! # Evolving the ABI
//! Prefix types ([`PluginModule`], [`RunContext`]) and `#[sabi_trait]` vtables may only gain
//! fields or methods *after* their `#[sabi(last_prefix_field)]` marker; fields are never removed,
//! renamed or reordered (names are part of the layout). Mind the direction abi_stable checks:
//! a loaded library's root module may have *more* fields than the host's, never fewer, so a
//! field appended to [`PluginModule`] locks every older plugin out of a newer host. The same
//! holds for the `#[sabi_trait]` vtables that cross in both directions ([`StateDict`],
//! [`Compute`]): checked in 2026-12, a plugin built before a method was appended to `ComputeAbi`
//! (`device_type`) or to `StateDictAbi` is refused by the newer host as an ABI mismatch. So what
//! is added later goes through separate, versioned library symbols ([`HubExport`],
//! [`ModelsExport`]), which older libraries simply lack, or through an existing method with a
//! reserved request (the device-tensor request of [`StateDict`] rides on `file`).

#![allow(non_camel_case_types, missing_docs, non_local_definitions)]

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    prefix_type::{PrefixTypeTrait, WithMetadata},
    sabi_trait,
    sabi_trait::prelude::TD_Opaque,
    sabi_types::VersionStrings,
    std_types::{
        RArc, RBox, RCow, RCowSlice, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2,
    },
    StableAbi,
};

use crate::component::{Algorithm, Context, HostServices, ModelPool, TaskPool};
use crate::compute::{Binding, Compute, ComputeLimits, DeviceType, GpuTensor, KernelCall};
use crate::hub::{Hub, RepoKind};
use crate::model::{Model, StateDict};
use crate::{DType, Error, ErrorKind, Result, TensorInfo};

// ---------------------------------------------------------------------------------------------
// Plain data

/// [`TensorInfo`] across the boundary.
#[repr(C)]
#[derive(Clone, Debug, StableAbi)]
pub struct TensorInfoAbi {
    pub dtype: DType,
    pub shape: RVec<u64>,
}

impl From<TensorInfo> for TensorInfoAbi {
    fn from(i: TensorInfo) -> Self {
        Self {
            dtype: i.dtype,
            shape: i.shape.iter().map(|&d| d as u64).collect(),
        }
    }
}

impl From<TensorInfoAbi> for TensorInfo {
    fn from(i: TensorInfoAbi) -> Self {
        Self {
            dtype: i.dtype,
            shape: i.shape.iter().map(|&d| d as usize).collect(),
        }
    }
}

/// [`Binding`] across the boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, StableAbi)]
pub struct BindingAbi {
    pub tensor: GpuTensor,
    pub offset: u64,
    pub size: ROption<u64>,
    pub read_only: bool,
}

/// [`KernelCall`] across the boundary.
#[repr(C)]
#[derive(StableAbi)]
pub struct KernelCallAbi<'a> {
    pub label: RStr<'a>,
    pub source: RStr<'a>,
    pub entry_point: RStr<'a>,
    pub constants: RSlice<'a, Tuple2<RStr<'a>, f64>>,
    pub bindings: RSlice<'a, BindingAbi>,
    pub uniforms: RSlice<'a, u8>,
    pub workgroups: [u32; 3],
}

// ---------------------------------------------------------------------------------------------
// Trait objects

#[sabi_trait]
pub trait StateDictAbi: Clone + Send + Sync {
    fn names(&self) -> RResult<RVec<RString>, Error>;
    fn info(&self, name: RStr<'_>) -> RResult<TensorInfoAbi, Error>;
    fn data(&self, name: RStr<'_>) -> RResult<RCowSlice<'_, u8>, Error>;
    fn file_names(&self) -> RResult<RVec<RString>, Error>;
    /// Also carries [`StateDict::device_tensor`] (see [`DEVICE_TENSOR_FILE`]).
    #[sabi(last_prefix_field)]
    fn file(&self, name: RStr<'_>) -> RResult<RVec<u8>, Error>;
}

/// [`StateDict::device_tensor`] crosses the boundary as a request for an auxiliary file of this
/// reserved name followed by the tensor's name, not as a method appended to [`StateDictAbi`]:
/// abi_stable refuses a library whose vtable has *fewer* methods than the host's, so an
/// appended method would lock every plugin built before it out of a newer host (checked: a
/// plugin built at 79bc41e was refused by a host with the method appended). A state dict of a
/// library built before this answers the request as an unknown file, an error, which reads as
/// "not on the device". The NUL bytes keep the name apart from any real file's.
pub const DEVICE_TENSOR_FILE: &str = "\0fusion-host:device_tensor\0";

/// How a reply to a [`DEVICE_TENSOR_FILE`] request starts; one tag byte follows: 0 = not on
/// the device, 1 = the tensor (its id, 8 bytes little-endian), 2 = an error (its kind code,
/// then its UTF-8 message).
const DEVICE_TENSOR_REPLY: &[u8] = b"\0fusion-host:device_tensor\0";

fn encode_device_tensor(reply: RResult<Option<GpuTensor>, Error>) -> RVec<u8> {
    let mut out = DEVICE_TENSOR_REPLY.to_vec();
    match reply {
        RResult::ROk(None) => out.push(0),
        RResult::ROk(Some(t)) => {
            out.push(1);
            out.extend_from_slice(&t.0.to_le_bytes());
        }
        RResult::RErr(e) => {
            out.push(2);
            out.push(e.kind as u8);
            out.extend_from_slice(e.message.as_bytes());
        }
    }
    RVec::from(out)
}

/// [`crate::Model::device_tensor`]: ask `obj` through [`DEVICE_TENSOR_FILE`].
pub(crate) fn device_tensor(obj: &StateDictObj, name: &str) -> Result<Option<GpuTensor>> {
    let request = format!("{DEVICE_TENSOR_FILE}{name}");
    // An error is the answer of a state dict built before the request existed.
    let Ok(reply) = obj.file(request.as_str().into()).into_result() else {
        return Ok(None);
    };
    let Some(rest) = reply.as_slice().strip_prefix(DEVICE_TENSOR_REPLY) else {
        return Ok(None);
    };
    match rest {
        [0] => Ok(None),
        [1, id @ ..] if id.len() == 8 => Ok(Some(GpuTensor(u64::from_le_bytes(
            id.try_into().expect("8 bytes"),
        )))),
        [2, kind, message @ ..] => {
            let kind = [
                ErrorKind::Config,
                ErrorKind::Io,
                ErrorKind::Model,
                ErrorKind::Compute,
                ErrorKind::Unsupported,
                ErrorKind::Panic,
            ]
            .into_iter()
            .find(|k| *k as u8 == *kind)
            .unwrap_or(ErrorKind::Other);
            Err(Error::new(kind, String::from_utf8_lossy(message)))
        }
        _ => Err(Error::other(format!(
            "tensor `{name}`: a malformed reply to the request for it on the device"
        ))),
    }
}

#[sabi_trait]
pub trait ModelPoolAbi: Clone + Send + Sync {
    fn all_model_names(&self) -> RResult<RVec<RString>, Error>;
    #[sabi(last_prefix_field)]
    fn load_model(&self, name: RStr<'_>) -> RResult<Model, Error>;
}

#[sabi_trait]
pub trait AlgorithmAbi: Send + Sync {
    #[sabi(last_prefix_field)]
    fn run(&self, pool: ModelPoolObj, ctx: RunContext_Ref) -> RResult<Model, Error>;
}

#[sabi_trait]
pub trait TaskPoolAbi: Send + Sync {
    /// Returns the report as JSON text.
    #[sabi(last_prefix_field)]
    fn evaluate(&self, model: Model, ctx: RunContext_Ref) -> RResult<RString, Error>;
}

#[sabi_trait]
pub trait HostServicesAbi: Clone + Send + Sync {
    fn progress_start(&self, label: RStr<'_>, total: u64) -> u64;
    fn progress_advance(&self, id: u64, delta: u64);
    #[sabi(last_prefix_field)]
    fn progress_finish(&self, id: u64);
}

/// [`Hub`] across the boundary; `kind` is [`RepoKind`]'s code, paths are UTF-8.
#[sabi_trait]
pub trait HubAbi: Clone + Send + Sync {
    fn file(
        &self,
        kind: u8,
        repo: RStr<'_>,
        revision: ROption<RStr<'_>>,
        filename: RStr<'_>,
    ) -> RResult<RString, Error>;
    #[sabi(last_prefix_field)]
    fn list(
        &self,
        kind: u8,
        repo: RStr<'_>,
        revision: ROption<RStr<'_>>,
    ) -> RResult<RVec<RString>, Error>;
}

#[sabi_trait]
pub trait ComputeAbi: Clone + Send + Sync {
    fn device_name(&self) -> RString;
    fn limits(&self) -> ComputeLimits;
    fn create(
        &self,
        dtype: DType,
        shape: RSlice<'_, u64>,
        data: ROption<RSlice<'_, u8>>,
    ) -> RResult<GpuTensor, Error>;
    fn write(&self, tensor: GpuTensor, offset: u64, data: RSlice<'_, u8>) -> RResult<(), Error>;
    fn read(&self, tensor: GpuTensor) -> RResult<RVec<u8>, Error>;
    fn describe(&self, tensor: GpuTensor) -> RResult<TensorInfoAbi, Error>;
    fn release(&self, tensor: GpuTensor);
    fn dispatch(&self, call: KernelCallAbi<'_>) -> RResult<(), Error>;
    #[sabi(last_prefix_field)]
    fn synchronize(&self) -> RResult<(), Error>;
    /// Appended after the prefix: a host built before it lacks the method, and abi_stable then
    /// calls this default body instead ([`DeviceType::Unknown`]).
    fn device_type(&self) -> u8 {
        DeviceType::Unknown.code()
    }
}

pub type StateDictObj = StateDictAbi_TO<'static, RArc<()>>;
pub type ModelPoolObj = ModelPoolAbi_TO<'static, RArc<()>>;
pub type AlgorithmObj = AlgorithmAbi_TO<'static, RBox<()>>;
pub type TaskPoolObj = TaskPoolAbi_TO<'static, RBox<()>>;
pub type HostServicesObj = HostServicesAbi_TO<'static, RArc<()>>;
pub type ComputeObj = ComputeAbi_TO<'static, RArc<()>>;
pub type HubObj = HubAbi_TO<'static, RArc<()>>;

// ---------------------------------------------------------------------------------------------
// Prefix types: the run context and the root module

/// What a component receives when it runs. A prefix type: fields may be appended.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = RunContext_Ref)))]
pub struct RunContext {
    pub seed: ROption<u64>,
    pub fast_dev_run: bool,
    // References: prefix-type accessors return fields by value, so fields must be `Copy`; the
    // objects are leaked with the context (one per run).
    pub services: &'static HostServicesObj,
    #[sabi(last_prefix_field)]
    pub compute: ROption<&'static ComputeObj>,
    /// Appended after the prefix: the run's log folder. A plugin reads it as `None` from a host
    /// built before it.
    pub log_dir: ROption<RStr<'static>>,
}

/// How a plugin reaches the host: given to the plugin once, right after loading.
#[repr(C)]
#[derive(Clone, Copy, StableAbi)]
pub struct HostLink {
    /// Receives the plugin's `tracing` events: level (1 = error … 5 = trace), plugin name,
    /// target, message.
    pub log: extern "C" fn(u8, RStr<'_>, RStr<'_>, RStr<'_>),
    /// The most verbose level the host wants (1 = error … 5 = trace).
    pub max_level: u8,
}

/// How a component is built from its config (JSON text) and the target name it was selected by.
#[repr(u8)]
#[derive(Clone, Copy, StableAbi)]
pub enum Constructor {
    Algorithm(extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<AlgorithmObj, Error>),
    ModelPool(extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<ModelPoolObj, Error>),
    TaskPool(extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<TaskPoolObj, Error>),
}

/// One component a library provides.
#[repr(C)]
#[derive(Clone, StableAbi)]
pub struct ComponentDescriptor {
    /// The `_target_` names it answers to: a short name and FusionBench class paths.
    pub names: RVec<RString>,
    /// One line for `fusion-host plugins`.
    pub description: RString,
    pub constructor: Constructor,
}

/// The root module every plugin library exports. A prefix type: fields may be appended.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin crate's name.
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// Called once by the host before anything else.
    pub init: extern "C" fn(HostLink),
    #[sabi(last_prefix_field)]
    pub components: extern "C" fn() -> RVec<ComponentDescriptor>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "fusion_plugin";
    const NAME: &'static str = "fusion_plugin";
    // The version of *this* crate (plugin-api) that the library was built against.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Build the root module (called by `export_plugin!`).
pub fn build_module(
    name: &'static str,
    version: &'static str,
    init: extern "C" fn(HostLink),
    components: extern "C" fn() -> RVec<ComponentDescriptor>,
) -> PluginModule_Ref {
    PluginModule {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        init,
        components,
    }
    .leak_into_prefix()
}

/// The symbol under which every library exports its [`HubExport`] (versioned: a change to
/// `HubExport` itself takes a new name).
pub const HUB_EXPORT_SYMBOL: &str = "fusion_plugin_hub_v1";

/// How the host hands a library its Hugging Face hub: a static exported beside the root module
/// under [`HUB_EXPORT_SYMBOL`] by `export_plugin!`.
///
/// It is not a field of [`PluginModule`] because abi_stable refuses a library whose root module
/// has *fewer* fields than the host's (only newer libraries may have more), so a new field there
/// would lock every plugin built before it out of a newer host. A separate symbol is simply
/// absent from older libraries, and the host then skips the call.
#[repr(C)]
pub struct HubExport {
    /// The layout of [`HubObj`] the library was built with; the host checks it against its own
    /// before the first call.
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    /// Gives the library the host's hub (called once, right after `init`).
    pub set_hub: extern "C" fn(HubObj),
}

// SAFETY: a reference to an immutable, 'static type layout and a function pointer.
unsafe impl Sync for HubExport {}

/// The library's [`HubExport`] (used by `export_plugin!`).
pub const fn hub_export() -> HubExport {
    HubExport {
        layout: <HubObj as StableAbi>::LAYOUT,
        set_hub: plugin_set_hub,
    }
}

/// The library's side of `set_hub`: this copy of plugin-api's [`crate::hub`] serves the host's
/// hub from now on.
extern "C" fn plugin_set_hub(hub: HubObj) {
    crate::hub::install(Arc::new(HubProxy(hub)));
}

/// The host's hub as the object handed to libraries.
pub(crate) fn hub_to_obj(hub: Arc<dyn Hub>) -> HubObj {
    HubAbi_TO::from_ptr(RArc::new(HubAdapter(hub)), TD_Opaque)
}

/// `hub` wrapped into its ABI twin and back, as a plugin sees the host's hub.
#[cfg(test)]
pub(crate) fn hub_through_abi(hub: Arc<dyn Hub>) -> Arc<dyn Hub> {
    Arc::new(HubProxy(hub_to_obj(hub)))
}

/// Called by the generated `init`: remember the plugin's name, route its logs and panics to the
/// host.
pub fn plugin_init(plugin: &'static str, link: HostLink) {
    crate::logging::install(plugin, link);
}

pub(crate) fn build_context(
    seed: Option<u64>,
    fast_dev_run: bool,
    services: Arc<dyn HostServices>,
    compute: Option<Arc<dyn Compute>>,
) -> Context {
    let services: &'static HostServicesObj = Box::leak(Box::new(HostServicesAbi_TO::from_ptr(
        RArc::new(ServicesAdapter(services)),
        TD_Opaque,
    )));
    let compute_obj = compute.clone().map(|c| {
        &*Box::leak(Box::new(ComputeAbi_TO::from_ptr(
            RArc::new(ComputeAdapter(c)),
            TD_Opaque,
        )))
    });
    let abi = WithMetadata::new(RunContext {
        seed: seed.into(),
        fast_dev_run,
        services,
        compute: compute_obj.into(),
        log_dir: ROption::RNone,
    });
    // One context per run; leaking it keeps the prefix reference 'static as abi_stable requires.
    let abi = RunContext_Ref(Box::leak(Box::new(abi)).static_as_prefix());
    Context { abi, compute }
}

/// `ctx` with `dir` as the run's log folder (a new leaked context, as `build_context` makes).
pub(crate) fn with_log_dir(ctx: &Context, dir: &std::path::Path) -> Context {
    let old = ctx.abi;
    let dir: &'static str = Box::leak(dir.to_string_lossy().into_owned().into_boxed_str());
    let abi = WithMetadata::new(RunContext {
        seed: old.seed(),
        fast_dev_run: old.fast_dev_run(),
        services: old.services(),
        compute: old.compute(),
        log_dir: ROption::RSome(RStr::from_str(dir)),
    });
    let abi = RunContext_Ref(Box::leak(Box::new(abi)).static_as_prefix());
    Context {
        abi,
        compute: ctx.compute.clone(),
    }
}

fn context_from_abi(abi: RunContext_Ref) -> Context {
    let compute = abi
        .compute()
        .into_option()
        .map(|obj| Arc::new(ComputeProxy(obj.clone())) as Arc<dyn Compute>);
    Context { abi, compute }
}

impl Context {
    pub(crate) fn abi(&self) -> RunContext_Ref {
        self.abi
    }
}

// ---------------------------------------------------------------------------------------------
// Panic guard

/// Run `f`, turning a panic into an [`ErrorKind::Panic`] error that names `origin` and the panic
/// location.
pub fn guard<T>(origin: &str, f: impl FnOnce() -> Result<T>) -> RResult<T, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.into(),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            let location = crate::logging::take_panic_location()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default();
            RResult::RErr(Error::new(
                ErrorKind::Panic,
                format!("{origin} panicked{location}: {msg}"),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Adapters: plain trait -> ABI twin

#[derive(Clone)]
struct StateDictAdapter {
    inner: Arc<dyn StateDict>,
    origin: Arc<str>,
}

fn names_to_r(v: Vec<String>) -> RVec<RString> {
    v.into_iter().map(RString::from).collect()
}

impl StateDictAbi for StateDictAdapter {
    fn names(&self) -> RResult<RVec<RString>, Error> {
        guard(&self.origin, || self.inner.names().map(names_to_r))
    }
    fn info(&self, name: RStr<'_>) -> RResult<TensorInfoAbi, Error> {
        guard(&self.origin, || {
            self.inner.info(name.as_str()).map(Into::into)
        })
    }
    fn data(&self, name: RStr<'_>) -> RResult<RCowSlice<'_, u8>, Error> {
        guard(&self.origin, || {
            self.inner.data(name.as_str()).map(|c| match c {
                Cow::Borrowed(s) => RCow::Borrowed(RSlice::from_slice(s)),
                Cow::Owned(v) => RCow::Owned(RVec::from(v)),
            })
        })
    }
    fn file_names(&self) -> RResult<RVec<RString>, Error> {
        guard(&self.origin, || self.inner.file_names().map(names_to_r))
    }
    fn file(&self, name: RStr<'_>) -> RResult<RVec<u8>, Error> {
        if let Some(tensor) = name.as_str().strip_prefix(DEVICE_TENSOR_FILE) {
            let reply = guard(&self.origin, || self.inner.device_tensor(tensor));
            return RResult::ROk(encode_device_tensor(reply));
        }
        guard(&self.origin, || {
            self.inner.file(name.as_str()).map(RVec::from)
        })
    }
}

pub(crate) fn state_dict_to_obj(sd: impl StateDict, origin: Arc<str>) -> StateDictObj {
    StateDictAbi_TO::from_ptr(
        RArc::new(StateDictAdapter {
            inner: Arc::new(sd),
            origin,
        }),
        TD_Opaque,
    )
}

#[derive(Clone)]
struct ModelPoolAdapter {
    inner: Arc<dyn ModelPool>,
    origin: Arc<str>,
}

impl ModelPoolAbi for ModelPoolAdapter {
    fn all_model_names(&self) -> RResult<RVec<RString>, Error> {
        guard(&self.origin, || {
            self.inner.all_model_names().map(names_to_r)
        })
    }
    fn load_model(&self, name: RStr<'_>) -> RResult<Model, Error> {
        guard(&self.origin, || self.inner.load_model(name.as_str()))
    }
}

pub(crate) fn model_pool_to_obj(pool: Arc<dyn ModelPool>, origin: Arc<str>) -> ModelPoolObj {
    ModelPoolAbi_TO::from_ptr(
        RArc::new(ModelPoolAdapter {
            inner: pool,
            origin,
        }),
        TD_Opaque,
    )
}

struct AlgorithmAdapter<T> {
    inner: T,
    origin: Arc<str>,
}

impl<T: Algorithm> AlgorithmAbi for AlgorithmAdapter<T> {
    fn run(&self, pool: ModelPoolObj, ctx: RunContext_Ref) -> RResult<Model, Error> {
        guard(&self.origin, || {
            let pool = ModelPoolProxy(pool);
            self.inner.run(&pool, &context_from_abi(ctx))
        })
    }
}

struct TaskPoolAdapter<T> {
    inner: T,
    origin: Arc<str>,
}

impl<T: TaskPool> TaskPoolAbi for TaskPoolAdapter<T> {
    fn evaluate(&self, model: Model, ctx: RunContext_Ref) -> RResult<RString, Error> {
        guard(&self.origin, || {
            let report = self.inner.evaluate(&model, &context_from_abi(ctx))?;
            Ok(RString::from(report.to_string()))
        })
    }
}

#[derive(Clone)]
struct ServicesAdapter(Arc<dyn HostServices>);

impl HostServicesAbi for ServicesAdapter {
    fn progress_start(&self, label: RStr<'_>, total: u64) -> u64 {
        self.0.progress_start(label.as_str(), total)
    }
    fn progress_advance(&self, id: u64, delta: u64) {
        self.0.progress_advance(id, delta)
    }
    fn progress_finish(&self, id: u64) {
        self.0.progress_finish(id)
    }
}

#[derive(Clone)]
struct HubAdapter(Arc<dyn Hub>);

const HUB_ORIGIN: &str = "the host's Hugging Face hub";

fn path_to_r(path: std::path::PathBuf) -> Result<RString> {
    path.into_os_string()
        .into_string()
        .map(RString::from)
        .map_err(|p| {
            Error::io(format!(
                "{}: the path is not UTF-8, which plugins cannot receive",
                std::path::Path::new(&p).display()
            ))
        })
}

impl HubAbi for HubAdapter {
    fn file(
        &self,
        kind: u8,
        repo: RStr<'_>,
        revision: ROption<RStr<'_>>,
        filename: RStr<'_>,
    ) -> RResult<RString, Error> {
        guard(HUB_ORIGIN, || {
            let path = self.0.file(
                RepoKind::from_code(kind)?,
                repo.as_str(),
                revision.into_option().map(|r| r.as_str()),
                filename.as_str(),
            )?;
            path_to_r(path)
        })
    }
    fn list(
        &self,
        kind: u8,
        repo: RStr<'_>,
        revision: ROption<RStr<'_>>,
    ) -> RResult<RVec<RString>, Error> {
        guard(HUB_ORIGIN, || {
            self.0
                .list(
                    RepoKind::from_code(kind)?,
                    repo.as_str(),
                    revision.into_option().map(|r| r.as_str()),
                )
                .map(names_to_r)
        })
    }
}

#[derive(Clone)]
struct ComputeAdapter(Arc<dyn Compute>);

const COMPUTE_ORIGIN: &str = "the host's compute runtime";

impl ComputeAbi for ComputeAdapter {
    fn device_name(&self) -> RString {
        self.0.device_name().into()
    }
    fn limits(&self) -> ComputeLimits {
        self.0.limits()
    }
    fn create(
        &self,
        dtype: DType,
        shape: RSlice<'_, u64>,
        data: ROption<RSlice<'_, u8>>,
    ) -> RResult<GpuTensor, Error> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        guard(COMPUTE_ORIGIN, || {
            self.0
                .create(dtype, &shape, data.into_option().map(|s| s.as_slice()))
        })
    }
    fn write(&self, tensor: GpuTensor, offset: u64, data: RSlice<'_, u8>) -> RResult<(), Error> {
        guard(COMPUTE_ORIGIN, || {
            self.0.write(tensor, offset, data.as_slice())
        })
    }
    fn read(&self, tensor: GpuTensor) -> RResult<RVec<u8>, Error> {
        guard(COMPUTE_ORIGIN, || self.0.read(tensor).map(RVec::from))
    }
    fn describe(&self, tensor: GpuTensor) -> RResult<TensorInfoAbi, Error> {
        guard(COMPUTE_ORIGIN, || {
            self.0
                .describe(tensor)
                .map(|(dtype, shape)| TensorInfo { dtype, shape }.into())
        })
    }
    fn release(&self, tensor: GpuTensor) {
        self.0.release(tensor)
    }
    fn dispatch(&self, call: KernelCallAbi<'_>) -> RResult<(), Error> {
        let constants: Vec<(&str, f64)> =
            call.constants.iter().map(|t| (t.0.as_str(), t.1)).collect();
        let bindings: Vec<Binding> = call
            .bindings
            .iter()
            .map(|b| Binding {
                tensor: b.tensor,
                offset: b.offset,
                size: b.size.into_option(),
                read_only: b.read_only,
            })
            .collect();
        let plain = KernelCall {
            label: call.label.as_str(),
            source: call.source.as_str(),
            entry_point: call.entry_point.as_str(),
            constants: &constants,
            bindings: &bindings,
            uniforms: call.uniforms.as_slice(),
            workgroups: call.workgroups,
        };
        guard(COMPUTE_ORIGIN, || self.0.dispatch(&plain))
    }
    fn synchronize(&self) -> RResult<(), Error> {
        guard(COMPUTE_ORIGIN, || self.0.synchronize())
    }
    fn device_type(&self) -> u8 {
        catch_unwind(AssertUnwindSafe(|| self.0.device_type()))
            .unwrap_or_default()
            .code()
    }
}

// ---------------------------------------------------------------------------------------------
// Proxies: ABI twin -> plain trait

/// A model pool that lives behind the ABI (possibly in another plugin).
#[derive(Clone)]
pub struct ModelPoolProxy(pub(crate) ModelPoolObj);

impl ModelPool for ModelPoolProxy {
    fn all_model_names(&self) -> Result<Vec<String>> {
        self.0
            .all_model_names()
            .into_result()
            .map(|v| v.into_iter().map(Into::into).collect())
    }
    fn load_model(&self, name: &str) -> Result<Model> {
        self.0.load_model(name.into()).into_result()
    }
}

/// The host's hub, as a plugin library sees it.
struct HubProxy(HubObj);

impl Hub for HubProxy {
    fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<std::path::PathBuf> {
        self.0
            .file(
                kind.code(),
                repo.into(),
                revision.map(RStr::from_str).into(),
                filename.into(),
            )
            .into_result()
            .map(|p| std::path::PathBuf::from(p.into_string()))
    }
    fn list(&self, kind: RepoKind, repo: &str, revision: Option<&str>) -> Result<Vec<String>> {
        self.0
            .list(
                kind.code(),
                repo.into(),
                revision.map(RStr::from_str).into(),
            )
            .into_result()
            .map(|v| v.into_iter().map(Into::into).collect())
    }
}

struct ComputeProxy(ComputeObj);

impl Compute for ComputeProxy {
    fn device_name(&self) -> String {
        self.0.device_name().into()
    }
    fn limits(&self) -> ComputeLimits {
        self.0.limits()
    }
    fn create(&self, dtype: DType, shape: &[usize], data: Option<&[u8]>) -> Result<GpuTensor> {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        self.0
            .create(
                dtype,
                RSlice::from_slice(&shape),
                data.map(RSlice::from_slice).into(),
            )
            .into_result()
    }
    fn write(&self, tensor: GpuTensor, offset: u64, data: &[u8]) -> Result<()> {
        self.0
            .write(tensor, offset, RSlice::from_slice(data))
            .into_result()
    }
    fn read(&self, tensor: GpuTensor) -> Result<Vec<u8>> {
        self.0.read(tensor).into_result().map(RVec::into_vec)
    }
    fn describe(&self, tensor: GpuTensor) -> Result<(DType, Vec<usize>)> {
        self.0.describe(tensor).into_result().map(|i| {
            let i: TensorInfo = i.into();
            (i.dtype, i.shape)
        })
    }
    fn release(&self, tensor: GpuTensor) {
        self.0.release(tensor)
    }
    fn dispatch(&self, call: &KernelCall<'_>) -> Result<()> {
        let constants: Vec<Tuple2<RStr<'_>, f64>> = call
            .constants
            .iter()
            .map(|(k, v)| Tuple2(RStr::from_str(k), *v))
            .collect();
        let bindings: Vec<BindingAbi> = call
            .bindings
            .iter()
            .map(|b| BindingAbi {
                tensor: b.tensor,
                offset: b.offset,
                size: b.size.into(),
                read_only: b.read_only,
            })
            .collect();
        self.0
            .dispatch(KernelCallAbi {
                label: call.label.into(),
                source: call.source.into(),
                entry_point: call.entry_point.into(),
                constants: RSlice::from_slice(&constants),
                bindings: RSlice::from_slice(&bindings),
                uniforms: RSlice::from_slice(call.uniforms),
                workgroups: call.workgroups,
            })
            .into_result()
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize().into_result()
    }
    fn device_type(&self) -> DeviceType {
        DeviceType::from_code(self.0.device_type())
    }
}

// ---------------------------------------------------------------------------------------------
// Constructors generated per component type

fn parse_config(json: RStr<'_>, target: RStr<'_>) -> Result<crate::Config> {
    let value: serde_json::Value = serde_json::from_str(json.as_str())
        .map_err(|e| Error::config(format!("`{target}`: the config is not valid JSON: {e}")))?;
    crate::Config::new(target.as_str(), value)
}

/// An algorithm selected by `_target_` gets what FusionBench's `instantiate` gives a constructor,
/// which raises for an unexpected keyword: a parameter the algorithm never read is an error. A
/// v0.1 config (selected by `name:`) hands FusionBench's algorithm the whole config, which reads
/// what it needs and ignores the rest: a warning then.
fn check_algorithm_parameters(config: &crate::Config) -> Result<()> {
    match config.check_parameters() {
        Err(e) if config.value().get("_target_").is_none() => {
            tracing::warn!("{}", e.message());
            Ok(())
        }
        r => r,
    }
}

fn origin_for(target: RStr<'_>) -> Arc<str> {
    format!(
        "plugin `{}` component `{}`",
        crate::logging::plugin_name(),
        target
    )
    .into()
}

extern "C" fn construct_algorithm<T: Algorithm + crate::FromConfig>(
    config: RStr<'_>,
    target: RStr<'_>,
) -> RResult<AlgorithmObj, Error> {
    let origin = origin_for(target);
    guard(&origin.clone(), || {
        let config = parse_config(config, target)?;
        let inner = T::from_config(&config)?;
        check_algorithm_parameters(&config)?;
        Ok(AlgorithmAbi_TO::from_value(
            AlgorithmAdapter { inner, origin },
            TD_Opaque,
        ))
    })
}

extern "C" fn construct_model_pool<T: ModelPool + crate::FromConfig>(
    config: RStr<'_>,
    target: RStr<'_>,
) -> RResult<ModelPoolObj, Error> {
    let origin = origin_for(target);
    guard(&origin.clone(), || {
        let inner = T::from_config(&parse_config(config, target)?)?;
        Ok(model_pool_to_obj(Arc::new(inner), origin))
    })
}

extern "C" fn construct_task_pool<T: TaskPool + crate::FromConfig>(
    config: RStr<'_>,
    target: RStr<'_>,
) -> RResult<TaskPoolObj, Error> {
    let origin = origin_for(target);
    guard(&origin.clone(), || {
        let inner = T::from_config(&parse_config(config, target)?)?;
        Ok(TaskPoolAbi_TO::from_value(
            TaskPoolAdapter { inner, origin },
            TD_Opaque,
        ))
    })
}

fn descriptor(names: &[&str], description: &str, constructor: Constructor) -> ComponentDescriptor {
    ComponentDescriptor {
        names: names.iter().map(|n| RString::from(*n)).collect(),
        description: description.into(),
        constructor,
    }
}

/// Describe an algorithm component (used by `export_plugin!`).
pub fn algorithm<T: Algorithm + crate::FromConfig>(
    names: &[&str],
    description: &str,
) -> ComponentDescriptor {
    descriptor(
        names,
        description,
        Constructor::Algorithm(construct_algorithm::<T>),
    )
}

/// Describe a model pool component (used by `export_plugin!`).
pub fn modelpool<T: ModelPool + crate::FromConfig>(
    names: &[&str],
    description: &str,
) -> ComponentDescriptor {
    descriptor(
        names,
        description,
        Constructor::ModelPool(construct_model_pool::<T>),
    )
}

/// Describe a task pool component (used by `export_plugin!`).
pub fn taskpool<T: TaskPool + crate::FromConfig>(
    names: &[&str],
    description: &str,
) -> ComponentDescriptor {
    descriptor(
        names,
        description,
        Constructor::TaskPool(construct_task_pool::<T>),
    )
}

// ---------------------------------------------------------------------------------------------
// Algorithms that return several models: a separate, versioned symbol (see `ModelsExport`)

/// [`Algorithm::run_models`] across the boundary: every model an algorithm makes, by name.
#[sabi_trait]
pub trait ModelsAlgorithmAbi: Send + Sync {
    #[sabi(last_prefix_field)]
    fn run_models(
        &self,
        pool: ModelPoolObj,
        ctx: RunContext_Ref,
    ) -> RResult<RVec<Tuple2<RString, Model>>, Error>;
}

pub type ModelsAlgorithmObj = ModelsAlgorithmAbi_TO<'static, RBox<()>>;

/// Builds one algorithm component as a [`ModelsAlgorithmObj`] from its config (JSON text) and
/// the target it was selected by.
#[repr(C)]
#[derive(Clone, Copy, StableAbi)]
pub struct ModelsConstructor {
    pub construct: extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<ModelsAlgorithmObj, Error>,
}

/// The symbol under which every library exports its [`ModelsExport`] (versioned: a change to
/// `ModelsExport` itself takes a new name).
pub const MODELS_EXPORT_SYMBOL: &str = "fusion_plugin_models_v1";

/// How the host runs a library's algorithms for several models: a static exported beside the
/// root module under [`MODELS_EXPORT_SYMBOL`] by `export_plugin!`.
///
/// Not a method appended to [`AlgorithmAbi`]: abi_stable's layout check refuses a library
/// whose vtable (reached from the root module through the constructors) has *fewer* methods
/// than the host's, so an appended method would lock every plugin built before it out of a
/// newer host. A library without this symbol is run through [`AlgorithmAbi::run`], one model.
#[repr(C)]
pub struct ModelsExport {
    /// The layout of [`ModelsConstructor`] the library was built with; the host checks it
    /// against its own before using any.
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    /// One entry per component, in the order of the root module's `components`: a constructor
    /// for each algorithm, none for the other kinds.
    pub constructors: extern "C" fn() -> RVec<ROption<ModelsConstructor>>,
}

// SAFETY: a reference to an immutable, 'static type layout and a function pointer.
unsafe impl Sync for ModelsExport {}

/// The library's [`ModelsExport`] (used by `export_plugin!`).
pub const fn models_export(
    constructors: extern "C" fn() -> RVec<ROption<ModelsConstructor>>,
) -> ModelsExport {
    ModelsExport {
        layout: <ModelsConstructor as StableAbi>::LAYOUT,
        constructors,
    }
}

/// The [`ModelsExport`] entry of a component, by kind (used by `export_plugin!`).
pub mod models_constructor {
    use super::*;

    /// An algorithm's constructor.
    pub fn algorithm<T: Algorithm + crate::FromConfig>() -> ROption<ModelsConstructor> {
        ROption::RSome(ModelsConstructor {
            construct: construct_models_algorithm::<T>,
        })
    }

    /// None: a model pool returns no models.
    pub fn modelpool<T>() -> ROption<ModelsConstructor> {
        ROption::RNone
    }

    /// None: a task pool returns no models.
    pub fn taskpool<T>() -> ROption<ModelsConstructor> {
        ROption::RNone
    }
}

impl<T: Algorithm> ModelsAlgorithmAbi for AlgorithmAdapter<T> {
    fn run_models(
        &self,
        pool: ModelPoolObj,
        ctx: RunContext_Ref,
    ) -> RResult<RVec<Tuple2<RString, Model>>, Error> {
        guard(&self.origin, || {
            let pool = ModelPoolProxy(pool);
            let models = self.inner.run_models(&pool, &context_from_abi(ctx))?;
            Ok(models
                .into_iter()
                .map(|(name, model)| Tuple2(RString::from(name), model))
                .collect())
        })
    }
}

extern "C" fn construct_models_algorithm<T: Algorithm + crate::FromConfig>(
    config: RStr<'_>,
    target: RStr<'_>,
) -> RResult<ModelsAlgorithmObj, Error> {
    let origin = origin_for(target);
    guard(&origin.clone(), || {
        let config = parse_config(config, target)?;
        let inner = T::from_config(&config)?;
        check_algorithm_parameters(&config)?;
        Ok(ModelsAlgorithmAbi_TO::from_value(
            AlgorithmAdapter { inner, origin },
            TD_Opaque,
        ))
    })
}
