//! Writing your own GPU kernel: a prepared [`Kernel`], owned [`DeviceTensor`]s, uniforms as a
//! plain `#[repr(C)]` struct, dispatch grids and chunks that fit the device.
//!
//! This is the layer over [`Compute`] that a plugin author works with. The rules it encodes:
//!
//! - **Tensors are owned.** A [`DeviceTensor`] frees its buffer when dropped, also when an error
//!   returns early; [`DeviceTensor::into_raw`] hands it over when it must outlive the scope.
//!   f16 and bf16 tensors are converted to and from f32 at the edges
//!   ([`DeviceTensor::from_model_f32`], [`DeviceTensor::to_f32`]), so kernels compute in f32.
//! - **Uniforms are a struct.** Derive `bytemuck::Pod` on a `#[repr(C)]` struct whose fields
//!   mirror the WGSL `struct` (4-byte scalars; a `vec4` starts on 16 bytes), and pass it to
//!   [`Kernel::launch`]. Declare the block at a fixed binding, say `@binding(0)`, and the storage
//!   tensors after it: the host binds the uniform block where the entry point declares it, and
//!   the call's storage tensors, in order, in the remaining slots. (A block declared after the
//!   storage bindings, as in older kernels, works too.)
//! - **Grids fit the device.** [`Kernel::launch_1d`] spreads a 1-D job over x/y/z when x alone
//!   would exceed the device's workgroup limit; kernels rebuild the flat index with
//!   [`PRELUDE_WGSL`]'s `flat_index` and bounds-check it.
//! - **Bindings fit the device.** A tensor larger than one storage binding is processed in
//!   [`chunks`]: bind a chunk with [`Chunk::binding`] and pass its length in the uniforms.
//! - **Variants are constants.** Specialize with WGSL `override` constants
//!   ([`Kernel::constant`]); the host caches one pipeline per kernel and set of constants.
//!
//! ```no_run
//! use fusion_plugin_api::kernel::{chunks, DeviceTensor, Kernel, PRELUDE_WGSL};
//! use fusion_plugin_api::{bytemuck, Compute, Result};
//!
//! #[repr(C)]
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
//! #[bytemuck(crate = "fusion_plugin_api::bytemuck")]
//! struct Params {
//!     len: u32,
//!     scale: f32,
//! }
//!
//! const SCALE_WGSL: &str = r#"
//! struct Params { len: u32, scale: f32 }
//! @group(0) @binding(0) var<uniform> p: Params;
//! @group(0) @binding(1) var<storage, read_write> x: array<f32>;
//! @compute @workgroup_size(256)
//! fn main(@builtin(global_invocation_id) gid: vec3<u32>,
//!         @builtin(num_workgroups) nwg: vec3<u32>) {
//!     let i = flat_index(gid, nwg, 256u);
//!     if (i < p.len) { x[i] = x[i] * p.scale; }
//! }
//! "#;
//!
//! fn scale(c: &dyn Compute, data: &[f32], by: f32) -> Result<Vec<f32>> {
//!     let kernel = Kernel::with_prelude("scale", SCALE_WGSL, "main").workgroup_size(256);
//!     let x = DeviceTensor::from_f32(c, &[data.len()], data)?;
//!     for chunk in chunks(&c.limits(), data.len() as u64) {
//!         let params = Params { len: chunk.len as u32, scale: by };
//!         kernel.launch_1d(c, &[chunk.binding(x.id(), x.dtype()?, false)], &params, chunk.len)?;
//!     }
//!     x.to_f32() // waits for the launches
//! }
//! ```

use std::borrow::Cow;

use crate::{
    bytes_to_f32, Binding, Compute, ComputeLimits, DType, Error, GpuTensor, KernelCall, Model,
    Result,
};

/// WGSL helpers that [`Kernel::with_prelude`] puts before a kernel's source:
///
/// - `flat_index(gid, nwg, wg)`: the flat invocation index of a grid laid out by
///   [`dispatch_1d`] (`gid` = `global_invocation_id`, `nwg` = `num_workgroups`, `wg` = the
///   workgroup size). Up to one row of workgroups may run past the job: bounds-check it.
pub const PRELUDE_WGSL: &str = "\
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + nwg.x * wg * (gid.y + nwg.y * gid.z);
}
";

/// A kernel ready to launch: WGSL source, entry point, specialization constants and the
/// workgroup size its entry point declares.
#[derive(Clone, Debug)]
pub struct Kernel {
    label: String,
    source: Cow<'static, str>,
    entry_point: String,
    constants: Vec<(String, f64)>,
    workgroup_size: u32,
}

impl Kernel {
    /// A kernel from complete WGSL `source` (often `include_str!("my_kernel.wgsl")`); `label`
    /// names it in logs and errors. The workgroup size defaults to 64: say what the entry point
    /// declares with [`Kernel::workgroup_size`].
    pub fn new(label: &str, source: impl Into<Cow<'static, str>>, entry_point: &str) -> Self {
        Kernel {
            label: label.to_string(),
            source: source.into(),
            entry_point: entry_point.to_string(),
            constants: Vec::new(),
            workgroup_size: 64,
        }
    }

    /// A kernel whose source is [`PRELUDE_WGSL`] followed by `source`.
    pub fn with_prelude(label: &str, source: &str, entry_point: &str) -> Self {
        Self::new(label, format!("{PRELUDE_WGSL}\n{source}"), entry_point)
    }

    /// Set a WGSL `override` constant.
    pub fn constant(mut self, name: &str, value: f64) -> Self {
        match self.constants.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.constants.push((name.to_string(), value)),
        }
        self
    }

    /// The invocations per workgroup that the entry point declares (`@workgroup_size(N)`), used
    /// by [`Kernel::launch_1d`] to size the grid.
    pub fn workgroup_size(mut self, size: u32) -> Self {
        self.workgroup_size = size.max(1);
        self
    }

    /// The kernel's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Launch on `workgroups` = `[x, y, z]`, with storage `bindings` in declaration order and
    /// `uniforms` (any `bytemuck::Pod` value; `&()` for none).
    pub fn launch<U: bytemuck::Pod>(
        &self,
        c: &dyn Compute,
        bindings: &[Binding],
        uniforms: &U,
        workgroups: [u32; 3],
    ) -> Result<()> {
        let limits = c.limits();
        if self.workgroup_size > limits.max_invocations_per_workgroup {
            return Err(Error::compute(format!(
                "kernel `{}`: workgroup size {} exceeds the device's maximum of {} invocations",
                self.label, self.workgroup_size, limits.max_invocations_per_workgroup
            )));
        }
        let constants: Vec<(&str, f64)> = self
            .constants
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        c.dispatch(&KernelCall {
            label: &self.label,
            source: &self.source,
            entry_point: &self.entry_point,
            constants: &constants,
            bindings,
            uniforms: bytemuck::bytes_of(uniforms),
            workgroups,
        })
        .map_err(|e| e.context(format!("kernel `{}`", self.label)))
    }

    /// Launch one invocation per item (`items` of them), the grid spread over x/y/z by
    /// [`dispatch_1d`]. Nothing is launched for zero items.
    pub fn launch_1d<U: bytemuck::Pod>(
        &self,
        c: &dyn Compute,
        bindings: &[Binding],
        uniforms: &U,
        items: u64,
    ) -> Result<()> {
        if items == 0 {
            return Ok(());
        }
        let grid = dispatch_1d(&c.limits(), items, self.workgroup_size)
            .map_err(|e| e.context(format!("kernel `{}`", self.label)))?;
        self.launch(c, bindings, uniforms, grid)
    }
}

/// A tensor on the host's compute device, freed when dropped.
pub struct DeviceTensor<'c> {
    compute: &'c dyn Compute,
    id: Option<GpuTensor>,
}

impl<'c> DeviceTensor<'c> {
    /// A zero-filled tensor.
    pub fn zeros(c: &'c dyn Compute, dtype: DType, shape: &[usize]) -> Result<Self> {
        Ok(Self::adopt(c, c.create(dtype, shape, None)?))
    }

    /// A tensor filled from raw little-endian bytes (`dtype.size() * numel` of them).
    pub fn from_bytes(
        c: &'c dyn Compute,
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<Self> {
        Ok(Self::adopt(c, c.create(dtype, shape, Some(bytes))?))
    }

    /// An f32 tensor filled from `data`.
    pub fn from_f32(c: &'c dyn Compute, shape: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_bytes(c, DType::F32, shape, bytemuck::cast_slice(data))
    }

    /// Tensor `name` of `model` as an f32 tensor on the device (f16 and bf16 converted), with the
    /// model's shape.
    pub fn from_model_f32(c: &'c dyn Compute, model: &Model, name: &str) -> Result<Self> {
        let (data, shape) = model.to_f32(name)?;
        Self::from_f32(c, &shape, &data)
    }

    /// Take ownership of an existing tensor: it is freed when the guard drops.
    pub fn adopt(c: &'c dyn Compute, tensor: GpuTensor) -> Self {
        DeviceTensor {
            compute: c,
            id: Some(tensor),
        }
    }

    /// The tensor's id, for bindings.
    pub fn id(&self) -> GpuTensor {
        self.id
            .expect("a DeviceTensor holds its tensor until dropped or handed over")
    }

    /// Bind the whole tensor for reading.
    pub fn read_binding(&self) -> Binding {
        Binding::read(self.id())
    }

    /// Bind the whole tensor for reading and writing.
    pub fn write_binding(&self) -> Binding {
        Binding::write(self.id())
    }

    /// The dtype it was created with.
    pub fn dtype(&self) -> Result<DType> {
        Ok(self.compute.describe(self.id())?.0)
    }

    /// The shape it was created with.
    pub fn shape(&self) -> Result<Vec<usize>> {
        Ok(self.compute.describe(self.id())?.1)
    }

    /// Its raw bytes (waits for the work queued before).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.compute.read(self.id())
    }

    /// Its values as f32 (f16 and bf16 converted; waits for the work queued before).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let dtype = self.dtype()?;
        bytes_to_f32(&self.to_bytes()?, dtype)
    }

    /// Hand the tensor over without freeing it: the caller must release it.
    pub fn into_raw(mut self) -> GpuTensor {
        self.id
            .take()
            .expect("a DeviceTensor holds its tensor until dropped or handed over")
    }
}

impl Drop for DeviceTensor<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.id.take() {
            self.compute.release(t);
        }
    }
}

/// Invocations per workgroup for generic kernels: the largest power of two no larger than 256
/// and the device's limit (reductions need a power of two; 256 bounds workgroup memory).
pub fn workgroup_size(limits: &ComputeLimits) -> u32 {
    let cap = limits.max_invocations_per_workgroup.clamp(1, 256);
    1 << (31 - cap.leading_zeros())
}

/// Workgroup counts `[x, y, z]` covering `n_items` invocations of `workgroup_size` each,
/// spread over y (and z) when x alone would exceed the device's
/// `max_workgroups_per_dimension`. Kernels rebuild the flat index as
/// `gid.x + nwg.x * wg * (gid.y + nwg.y * gid.z)` ([`PRELUDE_WGSL`]'s `flat_index`) and must
/// bounds-check it: up to one row of workgroups may be idle. An error when even three
/// dimensions cannot hold the job (more than `max³ · workgroup_size` items).
pub fn dispatch_1d(limits: &ComputeLimits, n_items: u64, workgroup_size: u32) -> Result<[u32; 3]> {
    let groups = n_items.div_ceil(u64::from(workgroup_size.max(1)));
    let max = u64::from(limits.max_workgroups_per_dimension.max(1));
    if groups <= max {
        return Ok([groups as u32, 1, 1]);
    }
    let z = groups.div_ceil(max * max);
    if z > max {
        return Err(Error::compute(format!(
            "{n_items} items do not fit in one dispatch of {max}^3 workgroups of {workgroup_size}"
        )));
    }
    let per_z = groups.div_ceil(z);
    let y = per_z.div_ceil(max);
    let x = per_z.div_ceil(y);
    Ok([x as u32, y as u32, z as u32])
}

/// A range of elements `[start, start + len)` of a tensor, processed by one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First element.
    pub start: u64,
    /// Number of elements.
    pub len: u64,
}

impl Chunk {
    /// The binding of this chunk of `tensor` (elements of `dtype`): byte offset
    /// `start * size`, length rounded up to 16 bytes (chunks start on 16 bytes, and the last
    /// one ends within the tensor's padding, see the [`compute`](crate::compute) docs), so that
    /// kernels that take four elements per invocation see whole `vec4`s.
    pub fn binding(&self, tensor: GpuTensor, dtype: DType, read_only: bool) -> Binding {
        let size = dtype.size() as u64;
        let b = if read_only {
            Binding::read(tensor)
        } else {
            Binding::write(tensor)
        };
        b.range(self.start * size, (self.len * size).div_ceil(16) * 16)
    }
}

/// Elements per chunk: the most that fit one storage binding at 4 bytes each, a multiple of the
/// offset alignment in 2-byte elements (so chunk offsets are aligned for f32, f16 and bf16
/// alike, and 16-bit chunks start on a word), and at most 2^30 so element indices stay far
/// from u32 overflow inside kernels.
pub fn chunk_elements(limits: &ComputeLimits) -> u64 {
    let unit = u64::from(limits.min_storage_offset_alignment / 2).max(2);
    let fit = (limits.max_storage_binding_size / 4).min(1 << 30);
    (fit / unit * unit).max(unit)
}

/// The chunks covering `n` elements (none for `n == 0`).
pub fn chunks(limits: &ComputeLimits, n: u64) -> impl Iterator<Item = Chunk> {
    let step = chunk_elements(limits);
    (0..n.div_ceil(step)).map(move |i| {
        let start = i * step;
        Chunk {
            start,
            len: step.min(n - start),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_wg: u32, binding: u64, align: u32) -> ComputeLimits {
        ComputeLimits {
            max_storage_binding_size: binding,
            max_buffer_size: 1 << 40,
            max_workgroups_per_dimension: max_wg,
            max_invocations_per_workgroup: 256,
            max_storage_buffers_per_stage: 8,
            max_workgroup_storage_size: 16384,
            min_storage_offset_alignment: align,
            shader_f16: false,
        }
    }

    #[test]
    fn dispatch_spreads_over_dimensions_and_covers_the_job() {
        let l = limits(65535, 1 << 27, 256);
        let grid = |l: &ComputeLimits, n: u64, wg: u32| dispatch_1d(l, n, wg).unwrap();
        assert_eq!(grid(&l, 0, 256), [0, 1, 1]);
        assert_eq!(grid(&l, 1, 256), [1, 1, 1]);
        assert_eq!(grid(&l, 257, 256), [2, 1, 1]);
        assert_eq!(grid(&l, 65535 * 256, 256), [65535, 1, 1]);
        let [x, y, z] = grid(&l, 65535 * 256 + 1, 256);
        assert_eq!((y, z), (2, 1));
        assert!(x <= 65535 && u64::from(x) * 2 * 256 > 65535 * 256);
        let small = limits(4, 1 << 27, 256);
        for n in [1u64, 5, 16, 17, 33, 47, 63, 64] {
            let [x, y, z] = grid(&small, n, 1);
            assert!(x <= 4 && y <= 4 && z <= 4, "{n}: {x} {y} {z}");
            let total = u64::from(x) * u64::from(y) * u64::from(z);
            assert!(total >= n, "{n}: {total}");
            // Less than one y-column of slack per z layer keeps idle workgroups few.
            assert!(total - n < u64::from((y + 1) * z), "{n}: {total}");
        }
        let l = limits(100, 1 << 20, 256);
        for n in [
            1u64,
            255,
            256,
            257,
            25_600,
            25_601,
            2_560_000,
            2_560_001,
            100 * 100 * 100 * 64,
        ] {
            let [x, y, z] = grid(&l, n, 64);
            assert!(x <= 100 && y <= 100 && z <= 100, "{n}: {x} {y} {z}");
            let covered = u64::from(x) * u64::from(y) * u64::from(z) * 64;
            assert!(covered >= n, "{n}: {covered}");
            // At most one row of workgroups idle.
            assert!(covered - n < u64::from(x) * 64 * 2, "{n}: {x} {y} {z}");
        }
        let err = dispatch_1d(&l, 100 * 100 * 100 * 64 + 1, 64).unwrap_err();
        assert!(err.message().contains("do not fit"), "{err}");
    }

    #[test]
    fn chunks_are_aligned_and_cover_everything() {
        let l = limits(65535, 1000, 16);
        let e = chunk_elements(&l);
        assert_eq!(e, 248);
        let all: Vec<Chunk> = chunks(&l, 1000).collect();
        assert_eq!(all.len(), 5);
        assert_eq!(all.iter().map(|c| c.len).sum::<u64>(), 1000);
        for c in &all {
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let b = c.binding(GpuTensor(1), dt, true);
                assert_eq!(b.offset % 16, 0);
                assert!(b.size.unwrap() <= 1000);
                assert_eq!(b.size.unwrap() % 4, 0);
            }
        }
        assert_eq!(chunks(&l, 0).count(), 0);
        assert_eq!(workgroup_size(&limits(1, 1, 4)), 256);
        let mut odd = limits(1, 1, 4);
        odd.max_invocations_per_workgroup = 100;
        assert_eq!(workgroup_size(&odd), 64);
        // With a 256-byte offset alignment, chunks start on 256 bytes for 2-byte elements too.
        let l = limits(65535, 1000, 256);
        let step = chunk_elements(&l);
        assert_eq!(
            step, 128,
            "250 f32s fit, rounded down to 128 two-byte units of 256 bytes"
        );
        for n in [0u64, 1, 127, 128, 129, 1000] {
            let cs: Vec<Chunk> = chunks(&l, n).collect();
            assert_eq!(cs.iter().map(|c| c.len).sum::<u64>(), n);
            for (i, c) in cs.iter().enumerate() {
                assert_eq!(c.start, i as u64 * step);
                assert_eq!((c.start * 2) % 256, 0);
                let b = c.binding(GpuTensor(1), DType::F32, true);
                assert_eq!(b.offset, c.start * 4);
                assert_eq!(b.size.unwrap() % 16, 0);
            }
        }
    }

    #[test]
    fn constants_are_set_once_by_name() {
        let k = Kernel::new("k", "", "main")
            .constant("A", 1.0)
            .constant("B", 2.0)
            .constant("A", 3.0);
        assert_eq!(
            k.constants,
            vec![("A".to_string(), 3.0), ("B".to_string(), 2.0)]
        );
        assert!(Kernel::with_prelude("k", "fn main() {}", "main")
            .source
            .starts_with("fn flat_index"));
    }
}
