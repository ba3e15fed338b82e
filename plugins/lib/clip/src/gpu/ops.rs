//! The Rust functions that launch the neural-network kernels (the kernel library's
//! `shaders/src/nn/*.wgsl`, `fusion_kernels::wgsl::nn`)
//! through a [`Compute`] handle: matrix products, layer norm, softmax with attention masks,
//! activations, residual addition, embedding lookups and the patch embedding.
//!
//! Every tensor here is f32 (or u32 for indices and masks), row-major. Each launcher checks that
//! the elements it will touch lie inside the tensors it is given (an error names the operation
//! and the shapes), that no tensor exceeds one storage binding, and spreads its workgroups over
//! x/y/z within the device's `max_workgroups_per_dimension`.

use fusion_kernels::wgsl::nn;
use fusion_plugin_api::{Binding, Compute, ComputeLimits, DType, GpuTensor, KernelCall};

use crate::config::Activation;
use crate::error::{ClipError, Result};

/// Bytes of workgroup memory the matmul kernel stages its tiles in (2 x 256 vec4<f32>).
const MATMUL_WORKGROUP_BYTES: u32 = 8192;

// ---------------------------------------------------------------------------------------------
// Tensors

/// A GPU tensor released when dropped, so that scratch buffers of a forward pass are returned to
/// the host's pool on every path, errors included.
pub struct GpuBuffer<'c> {
    c: &'c dyn Compute,
    tensor: GpuTensor,
}

impl<'c> GpuBuffer<'c> {
    /// A zeroed f32 tensor of `shape`.
    pub fn zeros(c: &'c dyn Compute, shape: &[usize]) -> Result<Self> {
        check_binding(c, "allocating a GPU tensor", shape, 4)?;
        let tensor = c
            .create(DType::F32, shape, None)
            .map_err(ClipError::compute(format!(
                "creating an f32 tensor {shape:?}"
            )))?;
        Ok(Self { c, tensor })
    }

    /// An f32 tensor of `shape` holding `data`.
    pub fn from_f32(c: &'c dyn Compute, shape: &[usize], data: &[f32]) -> Result<Self> {
        check_len("GpuBuffer::from_f32", shape, data.len())?;
        check_binding(c, "uploading a GPU tensor", shape, 4)?;
        let tensor = c
            .create(DType::F32, shape, Some(bytemuck::cast_slice(data)))
            .map_err(ClipError::compute(format!(
                "uploading an f32 tensor {shape:?}"
            )))?;
        Ok(Self { c, tensor })
    }

    /// A u32 tensor of `shape` holding `data` (token ids, masks, row indices).
    pub fn from_u32(c: &'c dyn Compute, shape: &[usize], data: &[u32]) -> Result<Self> {
        check_len("GpuBuffer::from_u32", shape, data.len())?;
        check_binding(c, "uploading a GPU tensor", shape, 4)?;
        let tensor = c
            .create(DType::U32, shape, Some(bytemuck::cast_slice(data)))
            .map_err(ClipError::compute(format!(
                "uploading a u32 tensor {shape:?}"
            )))?;
        Ok(Self { c, tensor })
    }

    /// The tensor id.
    pub fn id(&self) -> GpuTensor {
        self.tensor
    }

    /// Reads the f32 values back (waits for queued work).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        read_f32(self.c, self.tensor)
    }

    /// Keeps the tensor alive past this guard; the caller must release it.
    pub fn into_raw(self) -> GpuTensor {
        let t = self.tensor;
        std::mem::forget(self);
        t
    }
}

impl Drop for GpuBuffer<'_> {
    fn drop(&mut self) {
        self.c.release(self.tensor);
    }
}

/// Reads an f32 tensor back.
pub fn read_f32(c: &dyn Compute, t: GpuTensor) -> Result<Vec<f32>> {
    let bytes = c
        .read(t)
        .map_err(ClipError::compute(format!("reading tensor {} back", t.0)))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(ClipError::input(
            op,
            format!("shape {shape:?} needs {n} values, got {len}"),
        ));
    }
    Ok(())
}

/// Fails when a tensor of `shape` would not fit one storage binding (every kernel binds whole
/// tensors) or would need element indices past u32.
pub(crate) fn check_binding(
    c: &dyn Compute,
    op: &str,
    shape: &[usize],
    elem_bytes: u64,
) -> Result<()> {
    let n: u64 = shape.iter().map(|&d| d as u64).product();
    let bytes = n * elem_bytes;
    let max = c
        .checked_limits()
        .map_err(ClipError::compute(op))?
        .max_storage_binding_size;
    if bytes > max || n > u64::from(u32::MAX) {
        return Err(ClipError::DeviceLimit {
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
    let (_, shape) = c.describe(t).map_err(ClipError::compute(format!(
        "{op}: describing tensor {}",
        t.0
    )))?;
    Ok((shape.iter().product(), shape))
}

/// Fails unless `t` holds at least `needed` elements.
fn check_extent(c: &dyn Compute, op: &str, what: &str, t: GpuTensor, needed: u64) -> Result<()> {
    let (n, shape) = numel(c, op, t)?;
    if (n as u64) < needed {
        return Err(ClipError::Input {
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
    let groups = items.div_ceil(u64::from(wg.max(1)));
    let max = u64::from(limits.max_workgroups_per_dimension.max(1));
    if groups > max * max * max {
        return Err(ClipError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "{groups} workgroups exceed {max}^3, the most one dispatch can hold on this device"
            ),
        });
    }
    Ok(fusion_kernels::dispatch_1d(limits, items, wg))
}

/// Invocations per workgroup of the row kernels (layer norm, softmax): a power of two covering
/// a row of `cols` in one stride where possible, between 32 and 256 and within the device limit.
fn row_workgroup(limits: &ComputeLimits, cols: usize) -> u32 {
    let want = (cols.max(1).next_power_of_two() as u32).clamp(32, 256);
    want.min(fusion_kernels::workgroup_size(limits))
}

fn dispatch(
    c: &dyn Compute,
    op: &str,
    call: KernelCall<'_>,
    shapes: impl FnOnce() -> String,
) -> Result<()> {
    c.dispatch(&call).map_err(|cause| ClipError::Compute {
        op: format!("{op} ({})", shapes()),
        cause,
    })
}

fn fits_u32(op: &str, what: &str, v: u64) -> Result<()> {
    if v > u64::from(u32::MAX) {
        return Err(ClipError::DeviceLimit {
            op: op.to_string(),
            message: format!("{what} = {v} does not fit the kernels' 32-bit indices"),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Matrix product

/// Where one operand of a [`Matmul`] lives in its tensor, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// First element of batch (0, 0).
    pub offset: usize,
    /// Row stride (`lda`, `ldb`, `ldc`).
    pub ld: usize,
    /// Stride between batches of the outer batch index.
    pub stride0: usize,
    /// Stride between batches of the inner batch index.
    pub stride1: usize,
}

impl Operand {
    /// A dense matrix at offset 0 with row stride `ld`, the same for every batch.
    pub fn rows(ld: usize) -> Self {
        Self {
            offset: 0,
            ld,
            stride0: 0,
            stride1: 0,
        }
    }

    /// The same with batch strides.
    pub fn batched(offset: usize, ld: usize, stride0: usize, stride1: usize) -> Self {
        Self {
            offset,
            ld,
            stride0,
            stride1,
        }
    }

    /// One past the last element touched by `batch0 x batch1` batches of a `rows x cols` matrix.
    fn extent(&self, batch0: usize, batch1: usize, rows: usize, cols: usize) -> u64 {
        let u = |v: usize| v as u64;
        u(self.offset)
            + u(batch0 - 1) * u(self.stride0)
            + u(batch1 - 1) * u(self.stride1)
            + u(rows - 1) * u(self.ld)
            + u(cols)
    }
}

/// A batched matrix product `C[z] = alpha * A[z] B[z] (+ bias)` for `z` in
/// `batch0 x batch1` (see `nn/matmul.wgsl`).
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Outer batch count.
    pub batch0: usize,
    /// Inner batch count.
    pub batch1: usize,
    /// Scale of the product (not of the bias).
    pub alpha: f32,
    /// A, `[m, k]` per batch.
    pub a: Operand,
    /// B, `[k, n]` per batch, or `[n, k]` when `b_transposed` (nn.Linear's `[out, in]`).
    pub b: Operand,
    /// Whether B is stored transposed.
    pub b_transposed: bool,
    /// C, `[m, n]` per batch.
    pub c: Operand,
}

impl Matmul {
    /// `y[rows, out] = x[rows, in] W^T` with `W: [out, in]`: nn.Linear.
    pub fn linear(rows: usize, in_dim: usize, out_dim: usize) -> Self {
        Self {
            m: rows,
            n: out_dim,
            k: in_dim,
            batch0: 1,
            batch1: 1,
            alpha: 1.0,
            a: Operand::rows(in_dim),
            b: Operand::rows(in_dim),
            b_transposed: true,
            c: Operand::rows(out_dim),
        }
    }
}

/// Which matmul kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// `nn/matmul.wgsl`: 64 x 64 tiles staged in workgroup memory; for hardware GPUs.
    Tiled,
    /// `nn/matmul_reg.wgsl`: 8 x 8 register blocks, no workgroup memory or barriers; for
    /// software adapters (llvmpipe), where it runs about 4 times faster than the tiled one.
    Registers,
}

impl MatmulKernel {
    /// `FUSION_MATMUL=tiled|registers` when set, else [`MatmulKernel::Registers`] on a
    /// software adapter (its name says llvmpipe, lavapipe, SwiftShader or WARP) and
    /// [`MatmulKernel::Tiled`] on anything else.
    pub fn for_device(c: &dyn Compute) -> Result<Self> {
        if let Ok(v) = std::env::var("FUSION_MATMUL") {
            match v.trim().to_ascii_lowercase().as_str() {
                "tiled" => return Ok(Self::Tiled),
                "registers" | "reg" => return Ok(Self::Registers),
                "" | "auto" => {}
                other => {
                    return Err(ClipError::input(
                        "FUSION_MATMUL",
                        format!("`{other}` is not one of tiled, registers, auto"),
                    ))
                }
            }
        }
        let software = fusion_kernels::is_software_adapter(&c.device_name());
        Ok(if software {
            Self::Registers
        } else {
            Self::Tiled
        })
    }
}

/// Runs `out = alpha * a b (+ bias)` as described by `mm`; `bias` has `mm.n` values. The kernel
/// is [`MatmulKernel::for_device`].
pub fn matmul(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    matmul_with(MatmulKernel::for_device(c)?, c, a, b, bias, out, mm)
}

/// [`matmul`] with the kernel chosen by the caller.
pub fn matmul_with(
    kernel: MatmulKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    const OP: &str = "matmul";
    if mm.m == 0 || mm.n == 0 || mm.batch0 == 0 || mm.batch1 == 0 {
        return Ok(());
    }
    if mm.k == 0 {
        return Err(ClipError::input("gpu matmul", format!("{mm:?}: k is 0")));
    }
    let (brows, bcols) = if mm.b_transposed {
        (mm.n, mm.k)
    } else {
        (mm.k, mm.n)
    };
    let ext_a = mm.a.extent(mm.batch0, mm.batch1, mm.m, mm.k);
    let ext_b = mm.b.extent(mm.batch0, mm.batch1, brows, bcols);
    let ext_c = mm.c.extent(mm.batch0, mm.batch1, mm.m, mm.n);
    check_extent(c, OP, "A", a, ext_a)?;
    check_extent(c, OP, "B", b, ext_b)?;
    check_extent(c, OP, "C", out, ext_c)?;
    if let Some(bias) = bias {
        check_extent(c, OP, "bias", bias, mm.n as u64)?;
    }
    for (what, v) in [
        ("A extent", ext_a),
        ("B extent", ext_b),
        ("C extent", ext_c),
    ] {
        fits_u32(OP, what, v)?;
    }

    let limits = c.limits();
    if limits.max_invocations_per_workgroup < 64 {
        return Err(ClipError::DeviceLimit {
            op: OP.into(),
            message: format!(
                "needs 64 invocations per workgroup, the device allows {}",
                limits.max_invocations_per_workgroup
            ),
        });
    }
    let b_trans = ("B_TRANS", if mm.b_transposed { 1.0 } else { 0.0 });
    // Per kernel: the side of the square of C one workgroup (tiled) or one invocation
    // (registers) computes, the invocations one dispatched workgroup count covers, and the
    // kernel's source, entry points and constants.
    let (block, per_group, label, source, entries, constants) = match kernel {
        MatmulKernel::Tiled => {
            // 16 x 16 invocations with 4 x 4 outputs each (64 x 64 tiles) where the device
            // runs 256 invocations per workgroup (WebGPU guarantees it), else 8 x 8 (32 x 32).
            let t: u32 = if limits.max_invocations_per_workgroup >= 256 {
                16
            } else {
                8
            };
            if limits.max_workgroup_storage_size < MATMUL_WORKGROUP_BYTES {
                return Err(ClipError::DeviceLimit {
                    op: OP.into(),
                    message: format!(
                        "needs {MATMUL_WORKGROUP_BYTES} bytes of workgroup memory, the device has {}",
                        limits.max_workgroup_storage_size
                    ),
                });
            }
            (
                4 * t as usize,
                1,
                "nn_matmul",
                nn::MATMUL,
                ["matmul", "matmul_bias"],
                vec![("T", f64::from(t)), b_trans],
            )
        }
        // One invocation per 8 x 8 block of C, 64 per workgroup.
        MatmulKernel::Registers => (
            8,
            64,
            "nn_matmul_reg",
            nn::MATMUL_REG,
            ["matmul_reg", "matmul_reg_bias"],
            vec![b_trans],
        ),
    };
    let (tiles_m, tiles_n) = (mm.m.div_ceil(block), mm.n.div_ceil(block));
    let total = (tiles_m * tiles_n) as u64 * (mm.batch0 * mm.batch1) as u64;
    fits_u32(OP, "tiles", total)?;
    let uniforms = matmul_params(mm, tiles_m, tiles_n, total);
    let mut bindings = vec![Binding::read(a), Binding::read(b), Binding::write(out)];
    if let Some(bias) = bias {
        bindings.push(Binding::read(bias));
    }
    dispatch(
        c,
        OP,
        KernelCall {
            label,
            source,
            entry_point: entries[usize::from(bias.is_some())],
            constants: &constants,
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, total, per_group)?,
        },
        || format!("{mm:?}"),
    )
}

/// The uniform block both matmul kernels read (`Params` in `nn_matmul*.wgsl`); `tiles_*` count
/// the kernel's output tiles or blocks.
fn matmul_params(mm: &Matmul, tiles_m: usize, tiles_n: usize, total: u64) -> Vec<u8> {
    Params::default()
        .u(mm.m)
        .u(mm.n)
        .u(mm.k)
        .u(mm.batch1)
        .u(tiles_m)
        .u(tiles_n)
        .u(total as usize)
        .f(mm.alpha)
        .u(mm.a.offset)
        .u(mm.a.ld)
        .u(mm.a.stride0)
        .u(mm.a.stride1)
        .u(mm.b.offset)
        .u(mm.b.ld)
        .u(mm.b.stride0)
        .u(mm.b.stride1)
        .u(mm.c.offset)
        .u(mm.c.ld)
        .u(mm.c.stride0)
        .u(mm.c.stride1)
        .0
}

/// nn.Linear on `rows` rows: `out[rows, out_dim] = x[rows, in_dim] W^T (+ bias)`, with the
/// dimensions taken from `weight: [out_dim, in_dim]`.
pub fn linear(
    c: &dyn Compute,
    x: GpuTensor,
    weight: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    rows: usize,
) -> Result<()> {
    let (_, shape) = numel(c, "linear", weight)?;
    let &[out_dim, in_dim] = shape.as_slice() else {
        return Err(ClipError::input(
            "gpu linear",
            format!("weight has shape {shape:?}, expected [out, in]"),
        ));
    };
    matmul(
        c,
        x,
        weight,
        bias,
        out,
        &Matmul::linear(rows, in_dim, out_dim),
    )
}

// ---------------------------------------------------------------------------------------------
// Row kernels

/// Which rows a [`layer_norm`] reads and where it writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// Number of rows.
    pub rows: usize,
    /// Values per row (the normalized width).
    pub cols: usize,
    /// First input element.
    pub in_offset: usize,
    /// Elements between the starts of consecutive input rows.
    pub in_stride: usize,
    /// Elements between the starts of consecutive output rows.
    pub out_stride: usize,
}

impl RowLayout {
    /// `rows` dense rows of `cols`, in and out.
    pub fn dense(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            in_offset: 0,
            in_stride: cols,
            out_stride: cols,
        }
    }
}

/// `y = layer_norm(x) * weight + bias` over the rows described by `layout`.
pub fn layer_norm(
    c: &dyn Compute,
    x: GpuTensor,
    weight: GpuTensor,
    bias: GpuTensor,
    y: GpuTensor,
    layout: RowLayout,
    eps: f64,
) -> Result<()> {
    const OP: &str = "layer_norm";
    let RowLayout {
        rows,
        cols,
        in_offset,
        in_stride,
        out_stride,
    } = layout;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ext_x = (in_offset + (rows - 1) * in_stride + cols) as u64;
    let ext_y = ((rows - 1) * out_stride + cols) as u64;
    check_extent(c, OP, "x", x, ext_x)?;
    check_extent(c, OP, "weight", weight, cols as u64)?;
    check_extent(c, OP, "bias", bias, cols as u64)?;
    check_extent(c, OP, "y", y, ext_y)?;
    fits_u32(OP, "x extent", ext_x)?;
    fits_u32(OP, "y extent", ext_y)?;
    let limits = c.limits();
    let wg = row_workgroup(&limits, cols);
    let uniforms = Params::default()
        .u(rows)
        .u(cols)
        .u(in_offset)
        .u(in_stride)
        .u(out_stride)
        .f(eps as f32)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_layer_norm",
            source: nn::LAYER_NORM,
            entry_point: "layer_norm",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::read(x),
                Binding::read(weight),
                Binding::read(bias),
                Binding::write(y),
            ],
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("{layout:?}"),
    )
}

/// The masks of attention scores `[batch, heads, q_len, k_len]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxMask {
    /// Hide keys after the query (`j > i`).
    pub causal: bool,
    /// `[batch, k_len]` u32, zero where the key is padding.
    pub key_mask: Option<GpuTensor>,
}

/// In-place softmax over each row of `x`, seen as `[batch, heads, q_len, k_len]` (`rows =
/// batch * heads * q_len`, `cols = k_len`), with `mask` applied first.
pub fn softmax_rows(
    c: &dyn Compute,
    x: GpuTensor,
    rows: usize,
    cols: usize,
    q_len: usize,
    heads: usize,
    mask: SoftmaxMask,
) -> Result<()> {
    const OP: &str = "softmax";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if q_len == 0 || heads == 0 || rows % (q_len * heads) != 0 {
        return Err(ClipError::input(
            "gpu softmax",
            format!(
                "{rows} rows are not a whole number of [heads = {heads}, q_len = {q_len}] blocks"
            ),
        ));
    }
    let ext = (rows * cols) as u64;
    check_extent(c, OP, "x", x, ext)?;
    fits_u32(OP, "elements", ext)?;
    if let Some(m) = mask.key_mask {
        check_extent(c, OP, "key mask", m, (rows / (q_len * heads) * cols) as u64)?;
    }
    let limits = c.limits();
    let wg = row_workgroup(&limits, cols);
    let uniforms = Params::default()
        .u(rows)
        .u(cols)
        .u(q_len)
        .u(heads)
        .u(usize::from(mask.causal))
        .0;
    let mut bindings = vec![Binding::write(x)];
    if let Some(m) = mask.key_mask {
        bindings.push(Binding::read(m));
    }
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_softmax",
            source: nn::SOFTMAX,
            entry_point: if mask.key_mask.is_some() {
                "softmax_rows_masked"
            } else {
                "softmax_rows"
            },
            constants: &[("WG", f64::from(wg))],
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, cols {cols}, q_len {q_len}, heads {heads}, {mask:?}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels

/// Runs a 1-D kernel over `n` elements.
fn elementwise(
    c: &dyn Compute,
    op: &str,
    source: &str,
    entry_point: &str,
    bindings: &[Binding],
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    fits_u32(op, "elements", n as u64)?;
    let limits = c.limits();
    let wg = fusion_kernels::workgroup_size(&limits);
    let uniforms = Params::default().u(n).0;
    dispatch(
        c,
        op,
        KernelCall {
            label: op,
            source,
            entry_point,
            constants: &[("WG", f64::from(wg))],
            bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, op, n as u64, wg)?,
        },
        || format!("{n} elements"),
    )
}

/// Applies `act` in place to the first `n` values of `x`.
pub fn activation(c: &dyn Compute, x: GpuTensor, n: usize, act: Activation) -> Result<()> {
    let (op, entry) = match act {
        Activation::QuickGelu => ("nn_quick_gelu", "quick_gelu"),
        Activation::Gelu => ("nn_gelu", "gelu"),
    };
    check_extent(c, op, "x", x, n as u64)?;
    elementwise(c, op, nn::ACTIVATION, entry, &[Binding::write(x)], n)
}

/// `x[i] += y[i]` for the first `n` values.
pub fn add_inplace(c: &dyn Compute, x: GpuTensor, y: GpuTensor, n: usize) -> Result<()> {
    const OP: &str = "nn_add";
    check_extent(c, OP, "x", x, n as u64)?;
    check_extent(c, OP, "y", y, n as u64)?;
    elementwise(
        c,
        OP,
        nn::ADD,
        "add_inplace",
        &[Binding::write(x), Binding::read(y)],
        n,
    )
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The tensors of one embedding lookup.
struct Lookup {
    table: GpuTensor,
    idx: GpuTensor,
    out: GpuTensor,
    pos: Option<GpuTensor>,
}

/// Runs an `nn/embedding.wgsl` entry over `rows` indices; the row width is the table's last
/// dimension.
fn embedding_call(
    c: &dyn Compute,
    op: &str,
    entry: &str,
    t: Lookup,
    rows: usize,
    seq: usize,
) -> Result<()> {
    let (table_len, table_shape) = numel(c, op, t.table)?;
    let dim = table_shape.last().copied().unwrap_or(1);
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let table_rows = table_len / dim;
    if table_rows == 0 {
        return Err(ClipError::input(
            "gpu embedding",
            format!("{op}: table {table_shape:?} is empty"),
        ));
    }
    check_extent(c, op, "indices", t.idx, rows as u64)?;
    check_extent(c, op, "out", t.out, (rows * dim) as u64)?;
    if let Some(pos) = t.pos {
        check_extent(c, op, "position table", pos, (seq.min(rows) * dim) as u64)?;
    }
    fits_u32(op, "elements", (rows * dim) as u64)?;
    fits_u32(op, "table elements", table_len as u64)?;
    let limits = c.limits();
    let wg = fusion_kernels::workgroup_size(&limits);
    let uniforms = Params::default()
        .u(rows)
        .u(dim)
        .u(table_rows)
        .u(seq.max(1))
        .0;
    let mut bindings = vec![
        Binding::read(t.table),
        Binding::read(t.idx),
        Binding::write(t.out),
    ];
    if let Some(pos) = t.pos {
        bindings.push(Binding::read(pos));
    }
    dispatch(
        c,
        op,
        KernelCall {
            label: op,
            source: nn::EMBEDDING,
            entry_point: entry,
            constants: &[("WG", f64::from(wg))],
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, op, (rows * dim) as u64, wg)?,
        },
        || format!("table {table_shape:?}, {rows} rows"),
    )
}

/// `out[r, :] = table[idx[r], :]` for `rows` u32 indices into `table: [_, dim]`. Indices past
/// the table are clamped to its last row (check them before uploading).
pub fn gather_rows(
    c: &dyn Compute,
    table: GpuTensor,
    idx: GpuTensor,
    out: GpuTensor,
    rows: usize,
) -> Result<()> {
    let t = Lookup {
        table,
        idx,
        out,
        pos: None,
    };
    embedding_call(c, "nn_gather_rows", "gather_rows", t, rows, 1)
}

/// `out[r, :] = table[idx[r], :] + pos[r % seq, :]`: token plus position embeddings of
/// `rows = batch * seq` tokens.
pub fn token_position_embed(
    c: &dyn Compute,
    table: GpuTensor,
    idx: GpuTensor,
    pos: GpuTensor,
    out: GpuTensor,
    rows: usize,
    seq: usize,
) -> Result<()> {
    let t = Lookup {
        table,
        idx,
        out,
        pos: Some(pos),
    };
    embedding_call(
        c,
        "nn_token_position_embed",
        "token_position_embed",
        t,
        rows,
        seq,
    )
}

// ---------------------------------------------------------------------------------------------
// Patch embedding

/// Geometry of the vision tower's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGeometry {
    /// Images.
    pub batch: usize,
    /// Channels per image.
    pub channels: usize,
    /// Height and width of an image.
    pub image: usize,
    /// Height and width of a patch (divides `image`).
    pub patch: usize,
}

impl PatchGeometry {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image / self.patch
    }
    /// Values per flattened patch, `C * P * P`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// Patches over the batch.
    pub fn patches(&self) -> usize {
        self.batch * self.grid() * self.grid()
    }
}

/// `pixels [B, C, S, S]` to `patches [B * G * G, C * P * P]`.
pub fn im2col(
    c: &dyn Compute,
    pixels: GpuTensor,
    patches: GpuTensor,
    g: PatchGeometry,
) -> Result<()> {
    const OP: &str = "nn_im2col";
    if g.patch == 0 || g.image % g.patch != 0 {
        return Err(ClipError::input(
            "gpu im2col",
            format!("{g:?}: patch does not divide the image"),
        ));
    }
    let n = g.patches() * g.patch_len();
    check_extent(
        c,
        OP,
        "pixels",
        pixels,
        (g.batch * g.channels * g.image * g.image) as u64,
    )?;
    check_extent(c, OP, "patches", patches, n as u64)?;
    if n == 0 {
        return Ok(());
    }
    fits_u32(OP, "elements", n as u64)?;
    let limits = c.limits();
    let wg = fusion_kernels::workgroup_size(&limits);
    let uniforms = Params::default()
        .u(n)
        .u(g.channels)
        .u(g.image)
        .u(g.patch)
        .u(g.grid())
        .u(0)
        .u(0)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label: OP,
            source: nn::PATCH,
            entry_point: "im2col",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(pixels), Binding::write(patches)],
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, n as u64, wg)?,
        },
        || format!("{g:?}"),
    )
}

/// On `hidden [batch, positions, dim]` whose rows `1..` hold patch embeddings: row 0 becomes
/// `class + pos[0]`, every other row gets `pos[t]` added.
pub fn class_position(
    c: &dyn Compute,
    hidden: GpuTensor,
    class: GpuTensor,
    pos: GpuTensor,
    batch: usize,
    positions: usize,
    dim: usize,
) -> Result<()> {
    const OP: &str = "nn_class_position";
    let n = batch * positions * dim;
    check_extent(c, OP, "hidden", hidden, n as u64)?;
    check_extent(c, OP, "class embedding", class, dim as u64)?;
    check_extent(c, OP, "position embedding", pos, (positions * dim) as u64)?;
    if n == 0 {
        return Ok(());
    }
    fits_u32(OP, "elements", n as u64)?;
    let limits = c.limits();
    let wg = fusion_kernels::workgroup_size(&limits);
    let uniforms = Params::default()
        .u(n)
        .u(0)
        .u(0)
        .u(0)
        .u(0)
        .u(dim)
        .u(positions)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label: OP,
            source: nn::PATCH,
            entry_point: "class_position",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::write(hidden),
                Binding::read(class),
                Binding::read(pos),
            ],
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, n as u64, wg)?,
        },
        || format!("[{batch}, {positions}, {dim}]"),
    )
}
