//! The dense (neural-network) operations: the Rust functions that launch the kernels of
//! `src/nn/*.wgsl` ([`crate::wgsl::nn`]) through a [`Compute`] handle, each beside its WGSL
//! file: matrix products ([`gemm`], with fused bias / activation / residual epilogues:
//! [`gemm_epilogue`]; [`matmul`] and [`linear`] on it), layer norm ([`layer_norm`]), softmax with attention
//! masks ([`softmax_rows`]), activations ([`activation`]), residual addition ([`add_inplace`]),
//! stacking ([`copy_into`]), embedding lookups ([`gather_rows`], [`token_position_embed`]) and the patch embedding
//! ([`im2col`], [`class_position`]). The CLIP towers (`fusion-clip`) are written over them.
//!
//! Backward passes: the general product [`gemm`] (transposed operands, batches, accumulation;
//! its kernel chosen per adapter by [`gemm_kernel`], tuned on first use and cached), and on it
//! [`matmul_backward`], [`bias_grad`], [`layer_norm_backward`], [`softmax_backward`],
//! [`activation_backward`], [`attention_backward`], and the losses [`cross_entropy`] and
//! [`entropy_loss`] with their gradients. Mixed precision ([`Precision`]) may use the
//! cooperative-matrix kernel ([`gemm_kernel_for`]).
//!
//! Every tensor here is f32 (or u32 for indices and masks), row-major, owned as a plugin-api
//! [`DeviceTensor`] ([`zeros`], [`from_f32`], [`from_u32`] check the device's binding limit).
//! Each launcher checks that the elements it will touch lie inside the tensors it is given (an
//! [`NnError`] names the operation and the shapes), that no tensor exceeds one storage binding,
//! and spreads its workgroups over x/y/z within the device's `max_workgroups_per_dimension`.
//!
//! ```no_run
//! # fn demo(c: &dyn fusion_plugin_api::Compute) -> fusion_kernels::nn::Result<()> {
//! use fusion_kernels::nn;
//! // nn.Linear: y[2, 3] = x[2, 4] W^T + b with W: [3, 4].
//! let x = nn::from_f32(c, &[2, 4], &[1.0; 8])?;
//! let w = nn::from_f32(c, &[3, 4], &[0.5; 12])?;
//! let b = nn::from_f32(c, &[3], &[0.0, 1.0, 2.0])?;
//! let y = nn::zeros(c, &[2, 3])?;
//! nn::linear(c, x.id(), w.id(), Some(b.id()), y.id(), 2)?;
//! nn::activation(c, y.id(), 6, nn::Activation::QuickGelu)?;
//! let values = nn::read_f32(c, y.id())?;
//! # let _ = values; Ok(()) }
//! ```

use fusion_plugin_api::{Compute, ComputeLimits, DType, DeviceTensor, GpuTensor, KernelCall};

mod activation;
mod add;
mod embedding;
mod gemm;
mod grad;
mod layer_norm;
mod matmul;
mod patch;
mod softmax;
mod tune;

pub use activation::{activation, Activation};
pub use add::{add_inplace, copy_into};
pub use embedding::{gather_rows, token_position_embed};
pub use layer_norm::{layer_norm, RowLayout};
pub use matmul::{linear, matmul, matmul_with, Matmul, Operand};
pub use patch::{class_position, im2col, PatchGeometry};
pub use softmax::{softmax_rows, SoftmaxMask};

// Backward passes and the per-adapter kernel choice.
pub use gemm::{
    bias_grad, gemm, gemm_epilogue, gemm_epilogue_with, gemm_with, matmul_backward,
    matmul_backward_with, Gemm, GemmEpilogue, GemmKernel, MatmulGrads,
};
pub use grad::{
    activation_backward, attention_backward, attention_backward_with, cross_entropy, entropy_loss,
    layer_norm_backward, softmax_backward, AttentionShape, LayerNormGrads,
};
// Training helpers: the layer-wise merge, dL/dλ reductions, the zero-shot head's normalization.
pub use grad::{dot, l2_normalize_backward, l2_normalize_rows, scaled_add};
pub use tune::{
    cache_dir, cooperative_matrix_available, default_gemm_kernel, device_key, gemm_kernel,
    gemm_kernel_for, resolve_gemm_kernel, set_gemm_override, subgroup_size, ChoiceSource,
    GemmChoice, Precision, TUNING_FILE, TUNING_SIZE,
};

/// Shorthand for results of the dense operations.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

/// What can go wrong launching a dense operation. The messages name the operation and the
/// shapes involved.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// An operation's arguments are inconsistent (shapes, extents, counts).
    #[error("{op}: {message}")]
    Input {
        /// The operation that rejected its input.
        op: &'static str,
        /// What is wrong, with the shapes involved.
        message: String,
    },

    /// A compute-handle call (tensor creation, kernel launch, read-back) failed.
    #[error("GPU {op}: {cause}")]
    Compute {
        /// The operation, with the shapes involved.
        op: String,
        /// What the compute handle reported. Part of the message, not a `source()`: an error
        /// chain printed with `{:#}` would repeat it.
        cause: fusion_plugin_api::Error,
    },

    /// A job does not fit the compute device's limits (binding size, workgroups, invocations).
    #[error("{op}: {message}")]
    DeviceLimit {
        /// The operation.
        op: String,
        /// Which limit, the value needed and the device's maximum.
        message: String,
    },
}

impl NnError {
    /// Wraps a compute-handle error with the operation that raised it.
    pub fn compute(op: impl Into<String>) -> impl FnOnce(fusion_plugin_api::Error) -> Self {
        let op = op.into();
        move |cause| NnError::Compute { op, cause }
    }

    /// Shorthand for an [`NnError::Input`] error.
    pub fn input(op: &'static str, message: impl Into<String>) -> Self {
        NnError::Input {
            op,
            message: message.into(),
        }
    }
}

/// Across the plugin boundary: limits are compute errors, bad arguments config errors.
impl From<NnError> for fusion_plugin_api::Error {
    fn from(e: NnError) -> Self {
        match e {
            NnError::Input { .. } => fusion_plugin_api::Error::config(e),
            NnError::Compute { .. } | NnError::DeviceLimit { .. } => {
                fusion_plugin_api::Error::compute(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensors

/// A zeroed f32 tensor of `shape`, freed when dropped; an error when it would not fit one
/// storage binding.
pub fn zeros<'c>(c: &'c dyn Compute, shape: &[usize]) -> Result<DeviceTensor<'c>> {
    check_binding(c, "allocating a GPU tensor", shape, 4)?;
    DeviceTensor::zeros(c, DType::F32, shape).map_err(NnError::compute(format!(
        "creating an f32 tensor {shape:?}"
    )))
}

/// An f32 tensor of `shape` holding `data`, freed when dropped.
pub fn from_f32<'c>(c: &'c dyn Compute, shape: &[usize], data: &[f32]) -> Result<DeviceTensor<'c>> {
    check_len("nn::from_f32", shape, data.len())?;
    check_binding(c, "uploading a GPU tensor", shape, 4)?;
    DeviceTensor::from_f32(c, shape, data).map_err(NnError::compute(format!(
        "uploading an f32 tensor {shape:?}"
    )))
}

/// A u32 tensor of `shape` holding `data` (token ids, masks, row indices), freed when dropped.
pub fn from_u32<'c>(c: &'c dyn Compute, shape: &[usize], data: &[u32]) -> Result<DeviceTensor<'c>> {
    check_len("nn::from_u32", shape, data.len())?;
    check_binding(c, "uploading a GPU tensor", shape, 4)?;
    DeviceTensor::from_bytes(c, DType::U32, shape, bytemuck::cast_slice(data)).map_err(
        NnError::compute(format!("uploading a u32 tensor {shape:?}")),
    )
}

/// Reads an f32 tensor back (waits for queued work).
pub fn read_f32(c: &dyn Compute, t: GpuTensor) -> Result<Vec<f32>> {
    let bytes = c
        .read(t)
        .map_err(NnError::compute(format!("reading tensor {} back", t.0)))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(NnError::input(
            op,
            format!("shape {shape:?} needs {n} values, got {len}"),
        ));
    }
    Ok(())
}

/// Fails when a tensor of `shape` with `elem_bytes` per element would not fit one storage
/// binding (every dense kernel binds whole tensors) or would need element indices past u32.
pub fn check_binding(c: &dyn Compute, op: &str, shape: &[usize], elem_bytes: u64) -> Result<()> {
    let n: u64 = shape.iter().map(|&d| d as u64).product();
    let bytes = n * elem_bytes;
    let max = c
        .checked_limits()
        .map_err(NnError::compute(op))?
        .max_storage_binding_size;
    if bytes > max || n > u64::from(u32::MAX) {
        return Err(NnError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "a tensor of shape {shape:?} takes {bytes} bytes, more than the device's max storage \
                 binding size of {max} bytes (use a smaller batch)"
            ),
        });
    }
    Ok(())
}

fn numel(c: &dyn Compute, op: &str, t: GpuTensor) -> Result<(usize, Vec<usize>)> {
    let (_, shape) = c
        .describe(t)
        .map_err(NnError::compute(format!("{op}: describing tensor {}", t.0)))?;
    Ok((shape.iter().product(), shape))
}

/// Fails unless `t` holds at least `needed` elements.
fn check_extent(c: &dyn Compute, op: &str, what: &str, t: GpuTensor, needed: u64) -> Result<()> {
    let (n, shape) = numel(c, op, t)?;
    if (n as u64) < needed {
        return Err(NnError::Input {
            op: "gpu kernel",
            message: format!(
                "{op}: {what} has shape {shape:?} ({n} elements), the launch reads or writes {needed}"
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Launch helpers

/// A uniform block: 4-byte scalars in declaration order (the structs in the nn kernels hold only
/// u32 and f32, so there is no inner padding); the host pads it to 16 bytes.
#[derive(Default)]
struct Params(Vec<u8>);

impl Params {
    fn u(mut self, v: usize) -> Self {
        // Callers check that every extent fits u32 before they get here.
        self.0.extend_from_slice(&(v as u32).to_le_bytes());
        self
    }
    fn f(mut self, v: f32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// Workgroup counts covering `items` workgroups-worth of work (`items` invocations of `wg`),
/// spread over x/y/z; an error rather than a panic when even three dimensions cannot hold it.
fn grid(limits: &ComputeLimits, op: &str, items: u64, wg: u32) -> Result<[u32; 3]> {
    fusion_plugin_api::kernel::dispatch_1d(limits, items, wg).map_err(|_| {
        let groups = items.div_ceil(u64::from(wg.max(1)));
        let max = u64::from(limits.max_workgroups_per_dimension.max(1));
        NnError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "{groups} workgroups exceed {max}^3, the most one dispatch can hold on this device"
            ),
        }
    })
}

/// Invocations per workgroup of the row kernels (layer norm, softmax): a power of two covering
/// a row of `cols` in one stride where possible, between 32 and 256 and within the device limit.
fn row_workgroup(limits: &ComputeLimits, cols: usize) -> u32 {
    let want = (cols.max(1).next_power_of_two() as u32).clamp(32, 256);
    want.min(fusion_plugin_api::kernel::workgroup_size(limits))
}

fn dispatch(
    c: &dyn Compute,
    op: &str,
    call: KernelCall<'_>,
    shapes: impl FnOnce() -> String,
) -> Result<()> {
    c.dispatch(&call).map_err(|cause| NnError::Compute {
        op: format!("{op} ({})", shapes()),
        cause,
    })
}

fn fits_u32(op: &str, what: &str, v: u64) -> Result<()> {
    if v > u64::from(u32::MAX) {
        return Err(NnError::DeviceLimit {
            op: op.to_string(),
            message: format!("{what} = {v} does not fit the kernels' 32-bit indices"),
        });
    }
    Ok(())
}

/// Runs a 1-D kernel over `n` elements whose uniform block is `params` (starting with `n`).
fn elementwise(
    c: &dyn Compute,
    op: &str,
    source: &str,
    entry_point: &str,
    bindings: &[fusion_plugin_api::Binding],
    n: usize,
    params: Params,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    fits_u32(op, "elements", n as u64)?;
    let limits = c.limits();
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
    dispatch(
        c,
        op,
        KernelCall {
            label: op,
            source,
            entry_point,
            constants: &[("WG", f64::from(wg))],
            bindings,
            uniforms: &params.0,
            workgroups: grid(&limits, op, n as u64, wg)?,
        },
        || format!("{n} elements"),
    )
}

/// Workgroups and workgroup size covering `n` invocations of a 1-D kernel whose `WG` override
/// is the device's [`workgroup_size`](fusion_plugin_api::kernel::workgroup_size).
fn elementwise_grid(c: &dyn Compute, op: &str, n: usize) -> Result<([u32; 3], u32)> {
    fits_u32(op, "elements", n as u64)?;
    let limits = c.limits();
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
    Ok((grid(&limits, op, n as u64, wg)?, wg))
}
