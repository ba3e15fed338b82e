//! Fitting a job to the device: workgroup size, 1-D dispatch spread over x/y/z, chunks of
//! tensors larger than one storage binding, and scratch tensors (the uniform blocks are
//! `#[repr(C)]` structs in `uniforms.rs`).

use fusion_plugin_api::{Compute, ComputeLimits, DType, Error, GpuTensor, Result};

pub use fusion_plugin_api::kernel::{chunk_elements, chunks, workgroup_size, Chunk};

/// [`fusion_plugin_api::kernel::dispatch_1d`] for jobs known to fit: the kernels here take
/// tensors that already fit one buffer, far below `max³ · workgroup_size` items.
///
/// # Panics
/// If even three dimensions cannot hold the job.
pub fn dispatch_1d(limits: &ComputeLimits, n_items: u64, workgroup_size: u32) -> [u32; 3] {
    fusion_plugin_api::kernel::dispatch_1d(limits, n_items, workgroup_size)
        .unwrap_or_else(|e| panic!("{}", e.message()))
}

/// Whether a kernel with a four-elements-per-invocation (`vec4`) entry point may take it for
/// tensors of `dtypes`: all f32, and chunks of a multiple of four elements (every device whose
/// storage offset alignment is at least 8 bytes; WebGPU's is at least 32).
pub fn quads(limits: &ComputeLimits, dtypes: &[DType]) -> bool {
    dtypes.iter().all(|&d| d == DType::F32) && chunk_elements(limits) % 4 == 0
}

/// The dtype code kernels use (`DT_F32`, `DT_F16`, `DT_BF16` in common.wgsl).
pub fn dtype_code(op: &str, dtype: DType) -> Result<f64> {
    match dtype {
        DType::F32 => Ok(0.0),
        DType::F16 => Ok(1.0),
        DType::BF16 => Ok(2.0),
        other => Err(Error::unsupported(format!(
            "{op}: kernels take f32, f16 or bf16 tensors, not {other}"
        ))),
    }
}

/// The dtype, shape and element count of a tensor.
pub(crate) fn info(c: &dyn Compute, t: GpuTensor) -> Result<(DType, Vec<usize>, u64)> {
    let (dtype, shape) = c.describe(t)?;
    let n = shape.iter().map(|&d| d as u64).product();
    Ok((dtype, shape, n))
}

/// Check that every tensor has `shape`; the error names the operation and the input.
pub(crate) fn same_shape(
    c: &dyn Compute,
    op: &str,
    tensors: &[GpuTensor],
    shape: &[usize],
) -> Result<Vec<DType>> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let (dtype, s) = c.describe(t)?;
            if s != shape {
                return Err(Error::model(format!(
                    "{op}: input {i} has shape {s:?}, expected {shape:?}"
                )));
            }
            Ok(dtype)
        })
        .collect()
}

/// How many inputs one launch of a multi-input kernel may bind, given `fixed` other storage
/// bindings.
pub(crate) fn arity(limits: &ComputeLimits, op: &str, fixed: u32) -> Result<usize> {
    let free = limits.max_storage_buffers_per_stage.saturating_sub(fixed);
    if free == 0 {
        return Err(Error::unsupported(format!(
            "{op}: needs {} storage buffers per shader stage, the device allows {}",
            fixed + 1,
            limits.max_storage_buffers_per_stage
        )));
    }
    Ok((free as usize).min(crate::wgsl::MAX_ARITY))
}

/// The `WG` override plus `extra`.
pub(crate) fn constants<'a>(
    limits: &ComputeLimits,
    extra: &[(&'a str, f64)],
) -> Vec<(&'a str, f64)> {
    let mut v = vec![("WG", f64::from(workgroup_size(limits)))];
    v.extend_from_slice(extra);
    v
}

/// The dtype-override names `X0_DTYPE` .. `X7_DTYPE`.
pub(crate) const X_DTYPE_NAMES: [&str; 8] = [
    "X0_DTYPE", "X1_DTYPE", "X2_DTYPE", "X3_DTYPE", "X4_DTYPE", "X5_DTYPE", "X6_DTYPE", "X7_DTYPE",
];

/// Whether `device_name` (from [`Compute::device_name`](fusion_plugin_api::Compute::device_name))
/// is a software rasterizer on the CPU (Mesa llvmpipe/lavapipe, SwiftShader, Microsoft WARP):
/// its "device memory" is host memory and its kernels run on the CPU cores, so launch shapes
/// and caching choices differ from a real GPU's.
pub fn is_software_adapter(device_name: &str) -> bool {
    let name = device_name.to_ascii_lowercase();
    [
        "llvmpipe",
        "lavapipe",
        "swiftshader",
        "warp",
        "basic render",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// Quads per invocation in the row-blocked loops of the vec4 TIES and bracket kernels (`ROWS`
/// and `row_item` in common.wgsl): [`SOFTWARE_LOOP_ROWS`] on software adapters, 1
/// elsewhere. [`set_loop_rows`], then `FUSION_LOOP_ROWS` (1 to 256), override it, for tests and
/// measurements.
pub fn loop_rows(c: &dyn Compute) -> u32 {
    let set = LOOP_ROWS_SET.load(std::sync::atomic::Ordering::Relaxed);
    if set != 0 {
        return set;
    }
    if let Some(rows) = std::env::var("FUSION_LOOP_ROWS")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|r| (1..=256).contains(r))
    {
        return rows;
    }
    if is_software_adapter(&c.device_name()) {
        SOFTWARE_LOOP_ROWS
    } else {
        1
    }
}

/// [`loop_rows`] on software adapters. There each invocation of a counting kernel ends with a
/// few global atomic adds (votes, undecided entries, bracket counts), run lane by lane and
/// contended by the cores: with one quad per invocation they cost more than its loads. With 16
/// rows the one-read TIES launch took 89–92 ms (median of 12, three processes) against
/// 107–150 ms for 8 × 2,359,296 entries on lavapipe; 64 and 256 rows were no better. A GPU
/// keeps one quad per invocation, which keeps it busy.
pub const SOFTWARE_LOOP_ROWS: u32 = 16;

/// [`set_loop_rows`]'s value, 0 for none.
static LOOP_ROWS_SET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Make [`loop_rows`] answer `rows` (clamped to 1..=256) in this process from now on, or its
/// default again with `None`: for benchmarks that compare settings in one process (changing
/// the environment while the driver's threads read it is not safe).
pub fn set_loop_rows(rows: Option<u32>) {
    let v = rows.map_or(0, |r| r.clamp(1, 256));
    LOOP_ROWS_SET.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The launch shape of the row-blocked quad loops (`row_item` in common.wgsl) on one device:
/// its workgroup size and [`loop_rows`] quads per invocation.
pub(crate) struct QuadLoop {
    limits: ComputeLimits,
    /// Invocations per workgroup ([`workgroup_size`]), for the launches beside the loop too.
    pub(crate) wg: u32,
    rows: u32,
}

impl QuadLoop {
    pub(crate) fn new(c: &dyn Compute) -> Self {
        let limits = c.limits();
        QuadLoop {
            limits,
            wg: workgroup_size(&limits),
            rows: loop_rows(c),
        }
    }

    /// The pipeline overrides: `WG`, `extra`, then `ROWS`.
    pub(crate) fn constants<'a>(&self, extra: &[(&'a str, f64)]) -> Vec<(&'a str, f64)> {
        let mut v = constants(&self.limits, extra);
        v.push(("ROWS", f64::from(self.rows)));
        v
    }

    /// The dispatch over chunk `ch` (`len` elements, four per quad): enough invocations for one
    /// step each, at most [`LOOP_MAX_WORKGROUPS`](crate::LOOP_MAX_WORKGROUPS) workgroups (more
    /// quads loop).
    pub(crate) fn workgroups(&self, ch: Chunk) -> [u32; 3] {
        let invocations = ch
            .len
            .div_ceil(4)
            .div_ceil(u64::from(self.rows))
            .clamp(1, crate::LOOP_MAX_WORKGROUPS * u64::from(self.wg.max(1)));
        dispatch_1d(&self.limits, invocations, self.wg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_adapters_are_recognised_by_name() {
        for name in [
            "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)",
            "SwiftShader Device (Subzero) (Vulkan)",
            "Microsoft Basic Render Driver (Dx12)",
        ] {
            assert!(is_software_adapter(name), "{name}");
        }
        for name in ["NVIDIA H100 80GB HBM3 (Vulkan)", "Apple M2 (Metal)"] {
            assert!(!is_software_adapter(name), "{name}");
        }
    }

    #[test]
    fn uniforms_layout() {
        // The uniform blocks are `#[repr(C)]` structs now (crate::uniforms): the layout the
        // hand packer produced for (7, 1.5, [1, 2]) is MergeParams's.
        let p = crate::uniforms::MergeParams {
            n: 7,
            majority: 1.5,
            _pad: [0; 2],
            thr: crate::uniforms::words8(&[1, 2]),
        };
        let u = bytemuck::bytes_of(&p);
        assert_eq!(u.len(), 48);
        assert_eq!(&u[0..4], &7u32.to_le_bytes());
        assert_eq!(&u[16..20], &1u32.to_le_bytes());
        assert_eq!(&u[20..24], &2u32.to_le_bytes());
    }
}
