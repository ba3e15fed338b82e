//! The runtime: one wgpu device and queue, the tensors on it, the pipeline cache and the buffer
//! pool. It implements [`fusion_plugin_api::Compute`], the handle lent to plugins.

use std::collections::hash_map::DefaultHasher;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fusion_plugin_api::{Compute, ComputeLimits, DType, DeviceType, GpuTensor, KernelCall, Result};
use wgpu::util::DeviceExt;

use crate::adapter::{self, AdapterReport, DeviceChoice};
use crate::pool::{size_class, BufferPool, PoolStats};
use crate::GpuError;

/// Upper bounds applied on top of the adapter's limits when the device is created.
///
/// The device is *requested* with the clamped values, so wgpu itself enforces them: tests use
/// this to force tiny bindings and dispatch limits and so exercise the chunking paths on small
/// data. `None` keeps the adapter's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitClamp {
    /// Cap on the largest storage binding, bytes.
    pub max_storage_binding_size: Option<u64>,
    /// Cap on the largest buffer, bytes.
    pub max_buffer_size: Option<u64>,
    /// Cap on workgroups per dispatch dimension.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Cap on storage buffers per shader stage.
    pub max_storage_buffers_per_stage: Option<u32>,
    /// Cap on invocations per workgroup (and on the workgroup's x size).
    pub max_invocations_per_workgroup: Option<u32>,
    /// A *larger* binding offset alignment than the adapter's (a power of two), to exercise
    /// alignment handling on adapters whose own alignment is small.
    pub min_storage_offset_alignment: Option<u32>,
}

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Limit caps (see [`LimitClamp`]).
    pub clamp: LimitClamp,
    /// Most bytes of released buffers kept for reuse; beyond it released buffers are freed.
    pub pool_capacity: u64,
    /// Whether the host maps tensor buffers directly (no staging copies): `None` decides by the
    /// adapter (see [`Runtime::unified_memory`]); `Some(true)` where the adapter cannot is
    /// ignored.
    pub unified_memory: Option<bool>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            clamp: LimitClamp::default(),
            pool_capacity: 4 << 30,
            unified_memory: None,
        }
    }
}

struct TensorEntry {
    buffer: wgpu::Buffer,
    dtype: DType,
    shape: Vec<usize>,
    /// Bytes of data (`dtype.size() * numel`).
    nbytes: u64,
    /// `nbytes` rounded up to 4: what kernels see as the tensor's array.
    padded: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    source: u64,
    entry_point: String,
    /// `(name, value bits)`, as given.
    constants: Vec<(String, u64)>,
    /// Read-only flag of each storage binding, then whether a uniform follows.
    layout: Vec<bool>,
    uniform: bool,
}

struct CachedPipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Where the uniform block sits; storage binding `i` of a call goes to `slots[i]`.
    uniform_slot: u32,
    slots: Vec<u32>,
}

/// The `@binding` of the uniform block that `entry_point` uses in group 0, read from the WGSL;
/// `None` when it uses none or the source does not parse (the compiler reports that later).
///
/// This is what lets a kernel keep its uniforms at a fixed binding (say 0) whatever the number of
/// storage tensors it binds: the storage bindings of a call fill the remaining slots in order.
/// Kernels that declare the uniform block after their storage bindings, as the ABI documents,
/// get the same layout as before.
fn declared_uniform_binding(source: &str, entry_point: &str) -> Option<u32> {
    let module = naga::front::wgsl::parse_str(source).ok()?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .ok()?;
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == entry_point)?;
    let uses = info.get_entry_point(index);
    let found = module.global_variables.iter().find_map(|(handle, var)| {
        let binding = var.binding.as_ref()?;
        (var.space == naga::AddressSpace::Uniform && binding.group == 0 && !uses[handle].is_empty())
            .then_some(binding.binding)
    });
    found
}

/// Binding slots for `storage` storage tensors around a uniform block at `uniform`.
fn storage_slots(storage: usize, uniform: Option<u32>) -> Vec<u32> {
    (0u32..)
        .filter(|&slot| Some(slot) != uniform)
        .take(storage)
        .collect()
}

struct State {
    tensors: HashMap<u64, TensorEntry>,
    next_id: u64,
    pool: BufferPool,
    modules: HashMap<u64, wgpu::ShaderModule>,
    pipelines: HashMap<PipelineKey, Arc<CachedPipeline>>,
    /// The declared uniform binding per (source hash, entry point): pipelines that differ only in
    /// their constants or storage layout reflect the WGSL once.
    uniform_bindings: HashMap<(u64, String), Option<u32>>,
}

/// The host's GPU: a device and queue on one adapter, with the tensors that live there.
///
/// All methods take `&self`; state is behind a mutex, and work is submitted in call order.
pub struct Runtime {
    device: wgpu::Device,
    queue: wgpu::Queue,
    report: AdapterReport,
    device_type: DeviceType,
    limits: ComputeLimits,
    lost: Arc<Mutex<Option<String>>>,
    lost_flag: Arc<AtomicBool>,
    state: Mutex<State>,
    pending: Mutex<Pending>,
    timing: Timing,
    unified: bool,
    /// Every batch below this one has finished on the device (set by the queue's callbacks).
    done_batches: Arc<AtomicU64>,
}

/// Where a runtime's host time went, summed over its life and logged (debug) at the end of a
/// run and when it closes: the numbers to look at before tuning a merge on a real GPU, where no
/// profiler may be at hand.
#[derive(Default)]
struct Timing {
    /// Recording launches (bind group, uniform, pipeline look-up).
    launches: Tally,
    /// Copying uploads into staging memory.
    uploads: Tally,
    /// Read-backs, from submitting to having the bytes (the device finishing earlier work
    /// included).
    reads: Tally,
    /// Queue submissions (on a software adapter that runs the work inside the submit, its
    /// execution time).
    submits: Tally,
}

/// How many, how many bytes, how many nanoseconds.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    bytes: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    /// Run `f`, counting it with `bytes` and its time.
    fn time<T>(&self, bytes: u64, f: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = f();
        self.ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        out
    }

    fn get(&self) -> (u64, u64, f64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed) >> 20,
            self.ns.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

impl Timing {
    fn log(&self) {
        let (launches, _, launch_ms) = self.launches.get();
        let (uploads, upload_mib, upload_ms) = self.uploads.get();
        let (reads, read_mib, read_ms) = self.reads.get();
        let (submits, _, submit_ms) = self.submits.get();
        tracing::debug!(
            submits,
            submit_ms,
            launches,
            launch_ms,
            uploads,
            upload_mib,
            upload_ms,
            reads,
            read_mib,
            read_ms,
            "GPU runtime host time"
        );
    }
}

/// Launches recorded but not yet submitted. Submitting every launch on its own costs more than
/// a small kernel on a real GPU (a merge makes tens of thousands), so launches are recorded in
/// one encoder and submitted together: before anything that goes through the queue's own
/// write path (whose copies run at the start of the *next* submission, so they would overtake
/// recorded launches), before a read-back or a wait, and every [`MAX_PENDING_LAUNCHES`].
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    launches: u32,
    /// The number of the batch being recorded (the next submission); batches count from 1.
    batch: u64,
    /// Recent submissions: batch number and index.
    submitted: std::collections::VecDeque<(u64, wgpu::SubmissionIndex)>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            encoder: None,
            launches: 0,
            batch: 1,
            submitted: Default::default(),
        }
    }
}

/// Most launches recorded before a submission.
const MAX_PENDING_LAUNCHES: u32 = 256;

impl Runtime {
    /// Open the adapter that `choice` selects, with the adapter's own limits (capped by
    /// `options.clamp`) and `SHADER_F16` and `SUBGROUP` when the adapter has them.
    pub fn new(choice: &DeviceChoice, options: RuntimeOptions) -> Result<Self, GpuError> {
        let instance = adapter::instance();
        let adapter = adapter::select(&instance, choice)?;
        let report = AdapterReport::of(&adapter);
        let device_type = match adapter.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu => DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu => DeviceType::VirtualGpu,
            wgpu::DeviceType::Cpu => DeviceType::Cpu,
            wgpu::DeviceType::Other => DeviceType::Other,
        };
        let required_limits = clamp_limits(adapter.limits(), &options.clamp);
        // A CPU adapter's "device memory" is host memory: mapping its buffers directly saves
        // the staging copy of every upload and read-back.
        let unified = adapter
            .features()
            .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
            && options
                .unified_memory
                .unwrap_or(adapter.get_info().device_type == wgpu::DeviceType::Cpu);
        // SUBGROUP where offered: fusion_kernels probes it and picks subgroup kernels.
        let mut required_features =
            adapter.features() & (wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        if unified {
            required_features |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
        }
        // Tensor cores for mixed-precision products (fusion_kernels' `gemm_coop`): requested
        // where the adapter lists the 16x16x16 f16 -> f32 shape that kernel uses, unless
        // FUSION_COOPERATIVE_MATRIX=0. The feature is experimental in wgpu.
        let coop = report.cooperative_f16_16
            && adapter.features().contains(
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16,
            )
            && std::env::var("FUSION_COOPERATIVE_MATRIX").map_or(true, |v| v.trim() != "0");
        if coop {
            required_features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fusion-host"),
            required_features,
            required_limits,
            // SAFETY: only the experimental cooperative-matrix feature is requested, and only
            // the `gemm_coop` kernel uses it (wgpu asks callers to acknowledge that
            // experimental features may have bugs).
            experimental_features: if coop {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| GpuError::RequestDevice {
            adapter: report.name.clone(),
            message: e.to_string(),
        })?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::new(AtomicBool::new(false));
        {
            let (lost, flag) = (lost.clone(), lost_flag.clone());
            device.set_device_lost_callback(move |reason, message| {
                tracing::error!(?reason, %message, "GPU device lost");
                *lost.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{reason:?}: {message}"));
                flag.store(true, Ordering::SeqCst);
            });
        }
        // Every call runs inside an error scope, so this only sees errors raised outside one
        // (e.g. from a drop); the default handler would panic.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            tracing::error!(error = %e, "uncaptured wgpu error");
        }));

        let l = device.limits();
        let limits = ComputeLimits {
            max_storage_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            // Kernels use 1-D workgroups, so the x size bounds them as much as the total.
            max_invocations_per_workgroup: l
                .max_compute_invocations_per_workgroup
                .min(l.max_compute_workgroup_size_x),
            max_storage_buffers_per_stage: l.max_storage_buffers_per_shader_stage,
            max_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            min_storage_offset_alignment: l.min_storage_buffer_offset_alignment,
            shader_f16: device.features().contains(wgpu::Features::SHADER_F16),
        };
        tracing::debug!(adapter = %report.name, ?limits, unified, "GPU runtime ready");
        Ok(Runtime {
            device,
            queue,
            report,
            device_type,
            limits,
            lost,
            lost_flag,
            pending: Mutex::new(Pending::default()),
            timing: Timing::default(),
            unified,
            done_batches: Arc::new(AtomicU64::new(1)),
            state: Mutex::new(State {
                tensors: HashMap::new(),
                next_id: 1,
                pool: BufferPool::new(options.pool_capacity, unified),
                modules: HashMap::new(),
                pipelines: HashMap::new(),
                uniform_bindings: HashMap::new(),
            }),
        })
    }

    /// Log (at debug level) the host time spent launching, uploading and reading back so far,
    /// with counts and bytes. Also logged when the runtime closes.
    pub fn log_timing(&self) {
        self.timing.log();
    }

    /// Whether tensor buffers are mapped by the host directly instead of through staging
    /// copies: on CPU adapters (lavapipe, llvmpipe, WARP) that offer `MAPPABLE_PRIMARY_BUFFERS`,
    /// unless [`RuntimeOptions::unified_memory`] says otherwise. Uploads then copy once, into
    /// the tensor's own memory, and read-backs copy once, out of it.
    pub fn unified_memory(&self) -> bool {
        self.unified
    }

    /// The adapter this runtime runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    /// The wgpu device, for host code that records its own work.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue that goes with [`Runtime::device`].
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Buffer-pool counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.lock().pool.stats()
    }

    /// Number of compiled pipelines in the cache.
    pub fn cached_pipelines(&self) -> usize {
        self.lock().pipelines.len()
    }

    /// Number of live tensors.
    pub fn live_tensors(&self) -> usize {
        self.lock().tensors.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent (every mutation
        // is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record commands into the pending encoder (submitted by [`Runtime::flush`]).
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let encoder = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fusion launches"),
                })
        });
        f(encoder);
        p.launches += 1;
        if p.launches >= MAX_PENDING_LAUNCHES {
            self.submit(&mut p);
        }
    }

    /// Submit the recorded commands.
    fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.submit(&mut p);
    }

    fn submit(&self, p: &mut Pending) {
        if let Some(encoder) = p.encoder.take() {
            let commands = encoder.finish();
            let index = self
                .timing
                .submits
                .time(0, || self.queue.submit([commands]));
            let batch = p.batch;
            let done = Arc::clone(&self.done_batches);
            self.queue.on_submitted_work_done(move || {
                done.fetch_max(batch + 1, Ordering::AcqRel);
            });
            p.submitted.push_back((batch, index));
            while p.submitted.len() > 4 {
                p.submitted.pop_front();
            }
            p.batch += 1;
            // With unified memory the host fills buffers while the device works (see
            // `BufferPool::take`); it stays at most one batch ahead, which bounds the buffers
            // in flight.
            if self.unified && p.submitted.len() >= 2 {
                let (before, index) = p.submitted[p.submitted.len() - 2].clone();
                if self.done_batches.load(Ordering::Acquire) <= before {
                    let _ = self.device.poll(wgpu::PollType::Wait {
                        submission_index: Some(index),
                        timeout: None,
                    });
                }
            }
        }
        p.launches = 0;
    }

    /// The last batch whose work may use a buffer released now: the batch being recorded if it
    /// holds launches, else the one before.
    fn release_batch(&self) -> u64 {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.launches > 0 {
            p.batch
        } else {
            p.batch - 1
        }
    }

    fn check_alive(&self) -> Result<(), GpuError> {
        if self.lost_flag.load(Ordering::SeqCst) {
            let why = self
                .lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(GpuError::DeviceLost(why));
        }
        Ok(())
    }

    /// Run `f` inside validation and out-of-memory error scopes; a captured error becomes
    /// `wrap(message)`.
    fn scoped<T>(
        &self,
        f: impl FnOnce() -> T,
        wrap: impl FnOnce(String) -> GpuError,
    ) -> Result<T, GpuError> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            Some(e) => Err(wrap(error_text(&e))),
            None => {
                self.check_alive()?;
                Ok(out)
            }
        }
    }

    fn pipeline(
        &self,
        state: &mut State,
        call: &KernelCall<'_>,
    ) -> Result<Arc<CachedPipeline>, GpuError> {
        let source = hash_of(call.source);
        let key = PipelineKey {
            source,
            entry_point: call.entry_point.to_string(),
            constants: call
                .constants
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_bits()))
                .collect(),
            layout: call.bindings.iter().map(|b| b.read_only).collect(),
            uniform: !call.uniforms.is_empty(),
        };
        if let Some(p) = state.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let kernel_err = |message: String| GpuError::Kernel {
            label: call.label.to_string(),
            entry_point: call.entry_point.to_string(),
            message,
        };
        let started = std::time::Instant::now();
        let module = match state.modules.entry(source) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.scoped(
                || {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(call.label),
                            source: wgpu::ShaderSource::Wgsl(call.source.into()),
                        })
                },
                |m| kernel_err(format!("WGSL does not compile: {m}")),
            )?),
        };
        let has_uniform = !call.uniforms.is_empty();
        let declared = if has_uniform {
            *state
                .uniform_bindings
                .entry((source, call.entry_point.to_string()))
                .or_insert_with(|| declared_uniform_binding(call.source, call.entry_point))
        } else {
            None
        };
        let uniform_slot = declared.unwrap_or(call.bindings.len() as u32);
        let slots = storage_slots(call.bindings.len(), has_uniform.then_some(uniform_slot));
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = call
            .bindings
            .iter()
            .zip(&slots)
            .map(|(b, &slot)| wgpu::BindGroupLayoutEntry {
                binding: slot,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: b.read_only,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        if has_uniform {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: uniform_slot,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let cached = self.scoped(
            || {
                let layout =
                    self.device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(call.label),
                            entries: &entries,
                        });
                let pipeline_layout =
                    self.device
                        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                            label: Some(call.label),
                            bind_group_layouts: &[Some(&layout)],
                            immediate_size: 0,
                        });
                let pipeline =
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(call.label),
                            layout: Some(&pipeline_layout),
                            module: &*module,
                            entry_point: Some(call.entry_point),
                            compilation_options: wgpu::PipelineCompilationOptions {
                                constants: call.constants,
                                zero_initialize_workgroup_memory: true,
                            },
                            cache: None,
                        });
                CachedPipeline {
                    pipeline,
                    layout,
                    uniform_slot,
                    slots,
                }
            },
            |m| kernel_err(format!("pipeline creation failed: {m}")),
        )?;
        let cached = Arc::new(cached);
        state.pipelines.insert(key, cached.clone());
        tracing::debug!(
            label = call.label,
            entry_point = call.entry_point,
            constants = ?call.constants,
            ms = started.elapsed().as_secs_f64() * 1e3,
            cached = state.pipelines.len(),
            "compiled compute pipeline"
        );
        Ok(cached)
    }

    fn dispatch_inner(&self, call: &KernelCall<'_>) -> Result<(), GpuError> {
        self.timing.launches.time(0, || self.launch(call))
    }

    fn launch(&self, call: &KernelCall<'_>) -> Result<(), GpuError> {
        let kernel_err = |message: String| GpuError::Kernel {
            label: call.label.to_string(),
            entry_point: call.entry_point.to_string(),
            message,
        };
        let l = &self.limits;
        if let Some(d) = call
            .workgroups
            .iter()
            .find(|&&d| d > l.max_workgroups_per_dimension)
        {
            return Err(kernel_err(format!(
                "{d} workgroups in one dimension exceeds the device maximum of {} (dispatch {:?}); \
                 spread the job with fusion_kernels::dispatch_1d",
                l.max_workgroups_per_dimension, call.workgroups
            )));
        }
        if call.bindings.len() as u64 > u64::from(l.max_storage_buffers_per_stage) {
            return Err(kernel_err(format!(
                "{} storage bindings exceed the device maximum of {} per stage",
                call.bindings.len(),
                l.max_storage_buffers_per_stage
            )));
        }
        let mut state = self.lock();
        // Resolve bindings first so a bad id or range is reported before anything compiles.
        let mut ranges = Vec::with_capacity(call.bindings.len());
        for (i, b) in call.bindings.iter().enumerate() {
            let t = state
                .tensors
                .get(&b.tensor.0)
                .ok_or(GpuError::UnknownTensor(b.tensor.0))?;
            let size = b.size.unwrap_or(t.padded.saturating_sub(b.offset));
            let bad =
                |why: String| kernel_err(format!("binding {i} (tensor {}): {why}", b.tensor.0));
            if b.offset % u64::from(l.min_storage_offset_alignment) != 0 {
                return Err(bad(format!(
                    "offset {} is not a multiple of the device's storage offset alignment {}",
                    b.offset, l.min_storage_offset_alignment
                )));
            }
            if size == 0 || size % 4 != 0 || b.offset + size > t.padded {
                return Err(bad(format!(
                    "range {}..{} is empty, not a multiple of 4 bytes, or outside the tensor's {} (padded) bytes",
                    b.offset,
                    b.offset + size,
                    t.padded
                )));
            }
            if size > l.max_storage_binding_size {
                return Err(bad(format!(
                    "{size} bytes exceed the device's max storage binding size of {} bytes; \
                     bind sub-ranges (fusion_kernels::chunks)",
                    l.max_storage_binding_size
                )));
            }
            if !b.read_only
                && call
                    .bindings
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && o.tensor == b.tensor)
            {
                return Err(bad(
                    "a writable binding's tensor is bound again in the same call".into(),
                ));
            }
            ranges.push((b.tensor.0, b.offset, size));
        }
        let cached = self.pipeline(&mut state, call)?;
        let state = &*state;
        self.scoped(
            || {
                // A fresh uniform buffer per launch: it is written at creation (mapped), so it
                // needs no queue write that could be reordered with earlier launches.
                let uniform = (!call.uniforms.is_empty()).then(|| {
                    let mut bytes = call.uniforms.to_vec();
                    bytes.resize(call.uniforms.len().div_ceil(16) * 16, 0);
                    self.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(call.label),
                            contents: &bytes,
                            usage: wgpu::BufferUsages::UNIFORM,
                        })
                });
                let mut entries: Vec<wgpu::BindGroupEntry<'_>> = ranges
                    .iter()
                    .zip(&cached.slots)
                    .map(|(&(id, offset, size), &slot)| wgpu::BindGroupEntry {
                        binding: slot,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &state.tensors[&id].buffer,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        }),
                    })
                    .collect();
                if let Some(u) = &uniform {
                    entries.push(wgpu::BindGroupEntry {
                        binding: cached.uniform_slot,
                        resource: u.as_entire_binding(),
                    });
                }
                let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(call.label),
                    layout: &cached.layout,
                    entries: &entries,
                });
                // Recorded in call order; `flush` submits before any queue write, so writes
                // never overtake the launches recorded before them.
                self.record(|encoder| {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(call.label),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&cached.pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    let [x, y, z] = call.workgroups;
                    pass.dispatch_workgroups(x, y, z);
                });
            },
            |m| kernel_err(format!("launch failed: {m}")),
        )
    }

    fn create_inner(
        &self,
        dtype: DType,
        shape: &[usize],
        data: Option<&[u8]>,
    ) -> Result<GpuTensor, GpuError> {
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        let nbytes = numel * dtype.size() as u64;
        // 16 bytes, so that kernels may read and write whole vec4s up to the end.
        let padded = nbytes.div_ceil(16).max(1) * 16;
        if padded > self.limits.max_buffer_size {
            return Err(GpuError::TooLarge {
                requested: padded,
                maximum: self.limits.max_buffer_size,
            });
        }
        if let Some(d) = data {
            if d.len() as u64 != nbytes {
                return Err(GpuError::DataSize {
                    op: "create",
                    expected: nbytes,
                    got: d.len() as u64,
                });
            }
        }
        // With unified memory an upload may take a new buffer rather than wait for one the
        // device still uses: submit what is recorded, and learn what has finished.
        let done = if self.unified && data.is_some() {
            self.flush();
            let _ = self.device.poll(wgpu::PollType::Poll);
            Some(self.done_batches.load(Ordering::Acquire))
        } else {
            None
        };
        let mut state = self.lock();
        let class = size_class(padded, self.limits.max_buffer_size);
        let (buffer, reused) = self.scoped(
            || state.pool.take(&self.device, class, data.is_some(), done),
            |m| GpuError::Wgpu {
                op: format!("allocating a {class}-byte buffer"),
                message: m,
            },
        )?;
        self.scoped(
            || match data {
                Some(d) => self.upload(&buffer, d, padded, reused),
                // New buffers are zeroed by wgpu; reused ones hold an old tensor.
                None if reused => {
                    self.record(|encoder| encoder.clear_buffer(&buffer, 0, Some(padded)));
                    Ok(())
                }
                None => Ok(()),
            },
            |m| GpuError::Wgpu {
                op: "initializing a tensor".into(),
                message: m,
            },
        )??;
        let id = state.next_id;
        state.next_id += 1;
        state.tensors.insert(
            id,
            TensorEntry {
                buffer,
                dtype,
                shape: shape.to_vec(),
                nbytes,
                padded,
            },
        );
        tracing::trace!(id, %dtype, ?shape, class, reused, "created tensor");
        Ok(GpuTensor(id))
    }

    /// Queue the copy of `data` into the first `padded` bytes of `buffer` (zeros after `data`).
    /// The bytes go straight into wgpu's staging memory, or with unified memory into the
    /// buffer itself (a new buffer comes mapped; a `reused` one is mapped once the device is
    /// done with it), copied by several threads when large (checkpoint tensors come from
    /// memory-mapped files, whose pages the copy faults in).
    fn upload(
        &self,
        buffer: &wgpu::Buffer,
        data: &[u8],
        padded: u64,
        reused: bool,
    ) -> Result<(), GpuError> {
        self.timing.uploads.time(data.len() as u64, || {
            if self.unified {
                self.upload_mapped(buffer, data, padded, reused)
            } else {
                self.upload_staged(buffer, data, padded);
                Ok(())
            }
        })
    }

    fn upload_mapped(
        &self,
        buffer: &wgpu::Buffer,
        data: &[u8],
        padded: u64,
        reused: bool,
    ) -> Result<(), GpuError> {
        let map_err = |message: String| GpuError::Wgpu {
            op: "mapping a buffer for an upload".into(),
            message,
        };
        if reused {
            self.map(buffer, 0, padded, wgpu::MapMode::Write, map_err)?;
        }
        {
            let mut view = buffer
                .get_mapped_range_mut(..padded)
                .map_err(|e| map_err(e.to_string()))?;
            let (body, mut tail) = view.slice(..).split_at(data.len());
            tail.fill(0);
            copy_parallel(body, data);
        }
        buffer.unmap();
        Ok(())
    }

    /// Map `size` bytes of `buffer` at `offset` (a multiple of [`wgpu::MAP_ALIGNMENT`]) once
    /// the work recorded so far is done with it. A lost device is reported as such; other
    /// failures go through `wrap`.
    fn map(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
        mode: wgpu::MapMode,
        wrap: impl Fn(String) -> GpuError,
    ) -> Result<(), GpuError> {
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        buffer
            .slice(offset..offset + size)
            .map_async(mode, move |r| {
                let _ = tx.send(r);
            });
        // The map resolves once the submissions that use the buffer are done: poll without
        // waiting (a buffer no unfinished work uses maps at once), then wait for the recent
        // submissions in order and stop at the first after which it has, so that later work
        // (launches recorded ahead of this read) keeps running meanwhile.
        let polls: Vec<wgpu::PollType> = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let waits = p.submitted.iter().map(|(_, i)| wgpu::PollType::Wait {
                submission_index: Some(i.clone()),
                timeout: None,
            });
            std::iter::once(wgpu::PollType::Poll).chain(waits).collect()
        };
        for poll in polls {
            self.device
                .poll(poll)
                .map_err(|e| wrap(format!("waiting for the device: {e}")))?;
            if let Ok(r) = rx.try_recv() {
                self.check_alive()?;
                return r.map_err(|e| wrap(e.to_string()));
            }
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| wrap(format!("waiting for the device: {e}")))?;
        self.check_alive()?;
        rx.recv()
            .map_err(|_| wrap("the map callback never ran".into()))?
            .map_err(|e| wrap(e.to_string()))
    }

    fn upload_staged(&self, buffer: &wgpu::Buffer, data: &[u8], padded: u64) {
        let Some(size) = wgpu::BufferSize::new(padded) else {
            return;
        };
        // The queue's write runs at the start of the next submission: submit the launches
        // recorded so far first, so that it cannot overtake them.
        self.flush();
        // None means wgpu rejected the write; the error scope around this call reports it.
        if let Some(mut view) = self.queue.write_buffer_with(buffer, 0, size) {
            let (body, mut tail) = view.slice(..).split_at(data.len());
            tail.fill(0);
            copy_parallel(body, data);
        }
    }

    /// Copy `size` bytes at `offset` (both multiples of 4) of a buffer back to the host.
    fn read_range(
        &self,
        id: u64,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, GpuError> {
        self.timing
            .reads
            .time(size, || self.read_range_untimed(id, buffer, offset, size))
    }

    fn read_range_untimed(
        &self,
        id: u64,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let read_err = |message: String| GpuError::Read { id, message };
        if self.unified {
            // Straight out of the tensor's buffer, mapped from an aligned start.
            let start = offset / wgpu::MAP_ALIGNMENT * wgpu::MAP_ALIGNMENT;
            let skip = (offset - start) as usize;
            self.map(
                buffer,
                start,
                size + skip as u64,
                wgpu::MapMode::Read,
                read_err,
            )?;
            let bytes = buffer
                .get_mapped_range(start..offset + size)
                .map(|view| view[skip..].to_vec())
                .map_err(|e| read_err(e.to_string()));
            buffer.unmap();
            return bytes;
        }
        let staging = self.scoped(
            || {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fusion readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.record(|encoder| {
                    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size)
                });
                self.flush();
                staging
            },
            read_err,
        )?;
        self.map(&staging, 0, size, wgpu::MapMode::Read, read_err)?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| read_err(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.flush();
        self.timing.log();
        let s = self.lock();
        tracing::debug!(stats = ?s.pool.stats(), pipelines = s.pipelines.len(), live = s.tensors.len(), "GPU runtime closing");
    }
}

/// Bytes below which one thread copies an upload (thread start-up would cost more).
const PARALLEL_COPY_MIN: usize = 1 << 20;

/// `dst.copy_from_slice(src)`, split over up to 8 threads for large copies.
fn copy_parallel(dst: wgpu::WriteOnly<'_, [u8]>, src: &[u8]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(src.len() / PARALLEL_COPY_MIN)
        .max(1);
    let mut dst = dst;
    if threads == 1 {
        dst.copy_from_slice(src);
        return;
    }
    // Page-aligned pieces, so that no two threads fault in the same page of the source.
    let piece = src.len().div_ceil(threads).next_multiple_of(4096);
    std::thread::scope(|scope| {
        let mut rest = src;
        while !rest.is_empty() {
            let n = piece.min(rest.len());
            let (head, tail) = dst.split_at(n);
            dst = tail;
            let (from, after) = rest.split_at(n);
            rest = after;
            let head = SendWriteOnly(head);
            scope.spawn(move || {
                let mut head = head;
                head.0.copy_from_slice(from);
            });
        }
    });
}

/// A disjoint piece of a write-only staging mapping handed to one copying thread.
struct SendWriteOnly<'a>(wgpu::WriteOnly<'a, [u8]>);

// SAFETY: wgpu implements `Send` for `WriteOnly<T>` with sized `T` only; a `[u8]` piece is a
// pointer and length into mapped memory like any `&mut [u8]`, and `split_at` makes the pieces
// disjoint, so moving one to another thread is as sound as moving a `&mut [u8]`.
unsafe impl Send for SendWriteOnly<'_> {}

fn hash_of(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn error_text(e: &wgpu::Error) -> String {
    // wgpu's Display is one line; the description carries the nested validation detail.
    match e {
        wgpu::Error::Validation { description, .. } | wgpu::Error::Internal { description, .. } => {
            description.trim().to_string()
        }
        other => other.to_string(),
    }
}

fn clamp_limits(mut l: wgpu::Limits, c: &LimitClamp) -> wgpu::Limits {
    fn cap<T: Ord + Copy>(v: &mut T, c: Option<T>) {
        if let Some(c) = c {
            *v = (*v).min(c);
        }
    }
    cap(
        &mut l.max_storage_buffer_binding_size,
        c.max_storage_binding_size,
    );
    cap(&mut l.max_buffer_size, c.max_buffer_size);
    cap(
        &mut l.max_compute_workgroups_per_dimension,
        c.max_workgroups_per_dimension,
    );
    cap(
        &mut l.max_storage_buffers_per_shader_stage,
        c.max_storage_buffers_per_stage,
    );
    cap(
        &mut l.max_compute_invocations_per_workgroup,
        c.max_invocations_per_workgroup,
    );
    cap(
        &mut l.max_compute_workgroup_size_x,
        c.max_invocations_per_workgroup,
    );
    if let Some(a) = c.min_storage_offset_alignment {
        l.min_storage_buffer_offset_alignment = l.min_storage_buffer_offset_alignment.max(a);
    }
    l
}

impl Compute for Runtime {
    fn device_name(&self) -> String {
        // The driver is part of the name: kernel choices tuned on one driver are cached under
        // it (fusion_kernels::nn::device_key).
        let driver = format!("{} {}", self.report.driver, self.report.driver_info);
        match driver.trim() {
            "" => format!("{} ({})", self.report.name, self.report.backend),
            d => format!("{} ({}; {d})", self.report.name, self.report.backend),
        }
    }

    fn limits(&self) -> ComputeLimits {
        self.limits
    }

    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn create(&self, dtype: DType, shape: &[usize], data: Option<&[u8]>) -> Result<GpuTensor> {
        Ok(self.create_inner(dtype, shape, data)?)
    }

    fn write(&self, tensor: GpuTensor, offset: u64, data: &[u8]) -> Result<()> {
        let state = self.lock();
        let t = state
            .tensors
            .get(&tensor.0)
            .ok_or(GpuError::UnknownTensor(tensor.0))?;
        let end = offset + data.len() as u64;
        if end > t.nbytes {
            return Err(GpuError::DataSize {
                op: "write (offset + length vs tensor bytes)",
                expected: t.nbytes,
                got: end,
            }
            .into());
        }
        if data.is_empty() {
            return Ok(());
        }
        // write_buffer needs 4-byte alignment; widen an unaligned write with the bytes already
        // there (only f16/bf16/u8 element writes hit this).
        let start = offset / 4 * 4;
        let stop = end.div_ceil(4) * 4;
        let bytes = if start == offset && stop == end {
            data.to_vec()
        } else {
            let mut around = self.read_range(tensor.0, &t.buffer, start, stop - start)?;
            around[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
            around
        };
        self.scoped(
            || {
                self.flush();
                self.queue.write_buffer(&t.buffer, start, &bytes)
            },
            |m| GpuError::Wgpu {
                op: format!("writing tensor {}", tensor.0),
                message: m,
            },
        )?;
        Ok(())
    }

    fn read(&self, tensor: GpuTensor) -> Result<Vec<u8>> {
        let state = self.lock();
        let t = state
            .tensors
            .get(&tensor.0)
            .ok_or(GpuError::UnknownTensor(tensor.0))?;
        let mut bytes = self.read_range(tensor.0, &t.buffer, 0, t.padded)?;
        bytes.truncate(t.nbytes as usize);
        Ok(bytes)
    }

    fn describe(&self, tensor: GpuTensor) -> Result<(DType, Vec<usize>)> {
        let state = self.lock();
        let t = state
            .tensors
            .get(&tensor.0)
            .ok_or(GpuError::UnknownTensor(tensor.0))?;
        Ok((t.dtype, t.shape.clone()))
    }

    fn release(&self, tensor: GpuTensor) {
        let mut state = self.lock();
        match state.tensors.remove(&tensor.0) {
            Some(t) => {
                let batch = self.release_batch();
                state.pool.give(t.buffer, batch);
                tracing::trace!(id = tensor.0, stats = ?state.pool.stats(), "released tensor");
            }
            None => tracing::debug!(id = tensor.0, "release of an unknown tensor id ignored"),
        }
    }

    fn dispatch(&self, call: &KernelCall<'_>) -> Result<()> {
        Ok(self.dispatch_inner(call)?)
    }

    fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Wgpu {
                op: "synchronize".into(),
                message: e.to_string(),
            })?;
        Ok(self.check_alive()?)
    }
}
