//! The compute handle: how a plugin runs WGSL kernels on the GPU that the host owns.
//!
//! wgpu objects cannot cross a shared-library boundary (each cdylib would get its own copy of
//! wgpu's statics), so the host keeps the instance, adapter, device and queue, and lends plugins
//! this handle. Tensors on the device are opaque [`GpuTensor`] ids with a dtype and a shape; a
//! kernel is WGSL source plus an entry point, the tensors it binds (in binding order, group 0), an
//! optional uniform block (bound after the tensors) and a workgroup count.
//!
//! Storage layout on the device: every tensor is a byte buffer padded to a multiple of 16 bytes
//! (zeros past the data of an uploaded tensor), so that a kernel may handle whole `vec4`s.
//! `f32`/`i32`/`u32` tensors are `array<f32>`/`array<i32>`/`array<u32>` in WGSL; `f16` and `bf16`
//! tensors are packed two to a `u32` (little-endian, element `2i` in the low half), so kernels can
//! read them without the `shader-f16` feature.

use crate::{DType, Result};

/// An opaque id of a tensor that lives on the host's compute device.
///
/// Ids are only meaningful to the handle that created them. Release a tensor with
/// [`Compute::release`] when it is no longer needed; the host pools and reuses its buffer.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, abi_stable::StableAbi)]
pub struct GpuTensor(pub u64);

/// The limits of the compute device that matter when writing and dispatching kernels, read from
/// the adapter (never hard-coded).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, abi_stable::StableAbi)]
pub struct ComputeLimits {
    /// Largest storage-buffer binding, in bytes. A tensor larger than this must be processed in
    /// chunks (bind a sub-range with [`Binding::range`]).
    pub max_storage_binding_size: u64,
    /// Largest single buffer, in bytes.
    pub max_buffer_size: u64,
    /// Most workgroups in one dispatch dimension.
    pub max_workgroups_per_dimension: u32,
    /// Most invocations in one workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Most storage buffers one kernel may bind.
    pub max_storage_buffers_per_stage: u32,
    /// Bytes of workgroup (shared) memory.
    pub max_workgroup_storage_size: u32,
    /// Required alignment, in bytes, of a binding's offset.
    pub min_storage_offset_alignment: u32,
    /// Whether WGSL `f16` (`enable f16;`) is available.
    pub shader_f16: bool,
}

/// What kind of device runs the kernels, as the adapter reports it (wgpu's `DeviceType`).
///
/// A plugin may pick a different implementation per kind: on a [`DeviceType::Cpu`] adapter
/// (Mesa lavapipe/llvmpipe, WARP) the "GPU" is a software rasterizer on the same cores the
/// plugin runs on, and native code for dense math can beat WGSL compiled for it by a wide margin.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DeviceType {
    /// Not reported (a host that predates [`Compute::device_type`]).
    #[default]
    Unknown = 0,
    /// A discrete GPU.
    DiscreteGpu = 1,
    /// A GPU integrated with the CPU.
    IntegratedGpu = 2,
    /// A virtualized GPU.
    VirtualGpu = 3,
    /// A software adapter running on the CPU cores.
    Cpu = 4,
    /// Anything else.
    Other = 5,
}

impl DeviceType {
    /// The code that crosses the ABI.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind for `code`; an unknown code (from a newer host) is [`DeviceType::Unknown`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::DiscreteGpu,
            2 => Self::IntegratedGpu,
            3 => Self::VirtualGpu,
            4 => Self::Cpu,
            5 => Self::Other,
            _ => Self::Unknown,
        }
    }
}

/// One tensor bound to a kernel, with an optional byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The tensor to bind.
    pub tensor: GpuTensor,
    /// Byte offset into the tensor's buffer; a multiple of
    /// [`ComputeLimits::min_storage_offset_alignment`].
    pub offset: u64,
    /// Bytes to bind from `offset`; `None` binds to the end of the (padded) buffer.
    pub size: Option<u64>,
    /// Whether the kernel only reads it (`var<storage, read>`) or also writes it
    /// (`var<storage, read_write>`). Must match the WGSL declaration.
    pub read_only: bool,
}

impl Binding {
    /// Bind the whole tensor for reading.
    pub fn read(tensor: GpuTensor) -> Self {
        Self {
            tensor,
            offset: 0,
            size: None,
            read_only: true,
        }
    }
    /// Bind the whole tensor for reading and writing.
    pub fn write(tensor: GpuTensor) -> Self {
        Self {
            tensor,
            offset: 0,
            size: None,
            read_only: false,
        }
    }
    /// Restrict the binding to `size` bytes starting at `offset`.
    pub fn range(mut self, offset: u64, size: u64) -> Self {
        self.offset = offset;
        self.size = Some(size);
        self
    }
}

/// A kernel launch.
#[derive(Clone, Copy, Debug)]
pub struct KernelCall<'a> {
    /// A short name used in logs, errors and the pipeline cache key (e.g. `"weighted_sum"`).
    pub label: &'a str,
    /// Complete WGSL source.
    pub source: &'a str,
    /// The `@compute` entry point to run.
    pub entry_point: &'a str,
    /// Values for WGSL `override` constants (pipeline specialization), by name.
    pub constants: &'a [(&'a str, f64)],
    /// Storage bindings, at `@group(0) @binding(0..n)` in this order.
    pub bindings: &'a [Binding],
    /// Bytes of a uniform block bound at `@group(0) @binding(n)` (right after the storage
    /// bindings); empty for none. Padded by the host to 16 bytes.
    pub uniforms: &'a [u8],
    /// Workgroup counts in x, y, z; each at most
    /// [`ComputeLimits::max_workgroups_per_dimension`].
    pub workgroups: [u32; 3],
}

/// The GPU compute service the host lends to plugins.
///
/// Work is queued in order; [`Compute::read`] waits for everything queued before it. All methods
/// take `&self`: the handle is shared and internally synchronized.
pub trait Compute: Send + Sync {
    /// The adapter's name and backend, for reports (e.g. `"llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"`).
    fn device_name(&self) -> String;
    /// The device's limits. A host whose device could not be created answers all zeros (this
    /// method cannot fail); use [`checked_limits`](trait.Compute.html#method.checked_limits)
    /// where limits are checked before any other call, so the user sees why.
    fn limits(&self) -> ComputeLimits;
    /// Create a tensor of `dtype` and `shape`, filled from `data` (its raw little-endian bytes,
    /// exactly `dtype.size() * numel` long) or zeroed when `data` is `None`.
    fn create(&self, dtype: DType, shape: &[usize], data: Option<&[u8]>) -> Result<GpuTensor>;
    /// Overwrite bytes of a tensor starting at byte `offset`.
    fn write(&self, tensor: GpuTensor, offset: u64, data: &[u8]) -> Result<()>;
    /// Read a tensor's bytes back (unpadded: `dtype.size() * numel` bytes).
    fn read(&self, tensor: GpuTensor) -> Result<Vec<u8>>;
    /// The dtype and shape a tensor was created with.
    fn describe(&self, tensor: GpuTensor) -> Result<(DType, Vec<usize>)>;
    /// Free a tensor; its buffer returns to the host's pool.
    fn release(&self, tensor: GpuTensor);
    /// Queue a kernel launch.
    fn dispatch(&self, call: &KernelCall<'_>) -> Result<()>;
    /// Wait until all queued work has finished.
    fn synchronize(&self) -> Result<()>;
    /// The kind of device the adapter reports. The default, [`DeviceType::Unknown`], is what a
    /// plugin sees from a host that predates this method.
    fn device_type(&self) -> DeviceType {
        DeviceType::Unknown
    }
}

impl dyn Compute + '_ {
    /// The device's limits, or the error that kept the device from being created (a host that
    /// creates its device on first use reports all-zero limits for a device it could not
    /// create; every call that can fail then says why).
    pub fn checked_limits(&self) -> Result<ComputeLimits> {
        let limits = self.limits();
        if limits.max_storage_binding_size > 0 {
            return Ok(limits);
        }
        self.synchronize()?;
        Err(crate::Error::compute(format!(
            "the compute device `{}` could not be created (it reports no storage buffers)",
            self.device_name()
        )))
    }
}
