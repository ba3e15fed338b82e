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
//!   [`PRELUDE_WGSL`]'s `flat_index` and bounds-check it. A 2-D job (columns × rows, say a
//!   matrix) takes [`Kernel::launch_2d`]: columns on x, rows on y and, past the limit, z
//!   ([`dispatch_2d`]); the kernel finds its cell with the prelude's `cell_2d`.
//! - **16-bit tensors are packed words.** f16 and bf16 tensors are `array<u32>` on the device,
//!   two elements a word; [`HALF_WGSL`] ([`Kernel::with_half_prelude`]) decodes and encodes
//!   them in WGSL, [`pack_f16`] / [`unpack_f16`] and [`pack_bf16`] / [`unpack_bf16`] on the
//!   host, with the same rounding (to nearest even).
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
/// - `cell_2d(gid, nwg, wg_y)`: the `(column, row)` of an invocation in a 2-D grid laid out by
///   [`dispatch_2d`] (`wg_y` = the workgroup's height). Bounds-check both coordinates.
pub const PRELUDE_WGSL: &str = "\
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + nwg.x * wg * (gid.y + nwg.y * gid.z);
}
fn cell_2d(gid: vec3<u32>, nwg: vec3<u32>, wg_y: u32) -> vec2<u32> {
    return vec2<u32>(gid.x, gid.y + nwg.y * wg_y * gid.z);
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
    /// The `@workgroup_size(x, y)` of a 2-D entry point ([`Kernel::workgroup_size_2d`]).
    workgroup_2d: [u32; 2],
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
            workgroup_2d: [64, 1],
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
        self.workgroup_2d = [self.workgroup_size, 1];
        self
    }

    /// The workgroup shape that a 2-D entry point declares (`@workgroup_size(x, y)`), used by
    /// [`Kernel::launch_2d`] to size the grid; the invocations per workgroup are `x * y`.
    pub fn workgroup_size_2d(mut self, x: u32, y: u32) -> Self {
        self.workgroup_2d = [x.max(1), y.max(1)];
        self.workgroup_size = self.workgroup_2d[0] * self.workgroup_2d[1];
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

    /// Launch one invocation per cell of a `[columns, rows]` job, the grid laid out by
    /// [`dispatch_2d`] for the shape set with [`Kernel::workgroup_size_2d`]: columns on x, rows
    /// on y and, past the device's limit, z. The kernel finds its cell with [`PRELUDE_WGSL`]'s
    /// `cell_2d` and bounds-checks both coordinates. Nothing is launched for an empty job.
    pub fn launch_2d<U: bytemuck::Pod>(
        &self,
        c: &dyn Compute,
        bindings: &[Binding],
        uniforms: &U,
        size: [u64; 2],
    ) -> Result<()> {
        if size[0] == 0 || size[1] == 0 {
            return Ok(());
        }
        let grid = dispatch_2d(&c.limits(), size, self.workgroup_2d)
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

/// Workgroup counts `[x, y, z]` for a 2-D job of `size = [columns, rows]` invocations in
/// workgroups of `workgroup = [width, height]`: columns on x, rows on y, and the rows that do
/// not fit the device's `max_workgroups_per_dimension` folded into z (z slices of `y`
/// workgroup rows each). In WGSL, [`PRELUDE_WGSL`]'s `cell_2d(gid, nwg, height)` gives the
/// invocation's `(column, row)` = `(gid.x, gid.y + nwg.y * height * gid.z)`; both must be
/// bounds-checked, since the last workgroup column and up to one slice of rows may lie past the
/// job. An error names the limit when the columns alone need more than one dimension (put the
/// longer side on the rows) or the rows more than two.
pub fn dispatch_2d(
    limits: &ComputeLimits,
    size: [u64; 2],
    workgroup: [u32; 2],
) -> Result<[u32; 3]> {
    let [cols, rows] = size;
    if cols == 0 || rows == 0 {
        return Ok([0, 1, 1]);
    }
    let max = u64::from(limits.max_workgroups_per_dimension.max(1));
    let gx = cols.div_ceil(u64::from(workgroup[0].max(1)));
    let gy = rows.div_ceil(u64::from(workgroup[1].max(1)));
    if gx > max {
        return Err(Error::compute(format!(
            "{cols} columns need {gx} workgroups of width {} on x, past the device's \
             max_workgroups_per_dimension of {max}; put the longer side of the job on the rows",
            workgroup[0]
        )));
    }
    if gy <= max {
        return Ok([gx as u32, gy as u32, 1]);
    }
    let z = gy.div_ceil(max);
    if z > max {
        return Err(Error::compute(format!(
            "{rows} rows need {gy} workgroups of height {}, more than y and z hold \
             (max_workgroups_per_dimension {max})",
            workgroup[1]
        )));
    }
    let y = gy.div_ceil(z);
    Ok([gx as u32, y as u32, z as u32])
}

// ---------------------------------------------------------------------------------------------
// f16 and bf16 packed two per u32

/// f32 values as IEEE half-precision words packed two per `u32`, the layout of 16-bit device
/// tensors: element `2i` in the low half of word `i`, `2i + 1` in the high half (zero past an
/// odd length). Rounded to nearest, ties to even; NaN stays NaN, values past ±65504 become ±inf.
pub fn pack_f16(values: &[f32]) -> Vec<u32> {
    pack16(values, |v| half::f16::from_f32(v).to_bits())
}

/// The f32 values of the first `len` f16 elements of `words` (packed as [`pack_f16`] packs
/// them). An error when `words` holds fewer than `len` elements.
pub fn unpack_f16(words: &[u32], len: usize) -> Result<Vec<f32>> {
    unpack16(words, len, "f16", |h| half::f16::from_bits(h).to_f32())
}

/// f32 values as bfloat16 words packed two per `u32` (the layout of [`pack_f16`]): the upper
/// half of each f32, rounded to nearest, ties to even; NaN stays NaN.
pub fn pack_bf16(values: &[f32]) -> Vec<u32> {
    pack16(values, |v| half::bf16::from_f32(v).to_bits())
}

/// The f32 values of the first `len` bf16 elements of `words` (packed as [`pack_bf16`] packs
/// them). An error when `words` holds fewer than `len` elements.
pub fn unpack_bf16(words: &[u32], len: usize) -> Result<Vec<f32>> {
    unpack16(words, len, "bf16", |h| half::bf16::from_bits(h).to_f32())
}

fn pack16(values: &[f32], to_bits: impl Fn(f32) -> u16) -> Vec<u32> {
    values
        .chunks(2)
        .map(|p| u32::from(to_bits(p[0])) | u32::from(p.get(1).map_or(0, |&v| to_bits(v))) << 16)
        .collect()
}

fn unpack16(
    words: &[u32],
    len: usize,
    what: &str,
    to_f32: impl Fn(u16) -> f32,
) -> Result<Vec<f32>> {
    if len > 2 * words.len() {
        return Err(Error::config(format!(
            "unpack {len} {what} elements: {} words hold only {}",
            words.len(),
            2 * words.len()
        )));
    }
    Ok((0..len)
        .map(|i| to_f32((words[i / 2] >> (16 * (i % 2))) as u16))
        .collect())
}

/// WGSL codecs for 16-bit tensors, which kernels bind as `array<u32>` (two elements a word,
/// element `2i` in the low half, as [`pack_f16`] and [`pack_bf16`] lay them out):
///
/// - `unpack_f16x2(w) -> vec2<f32>`, `pack_f16x2(v) -> u32`,
/// - `unpack_bf16x2(w) -> vec2<f32>`, `pack_bf16x2(v) -> u32`,
/// - and the scalar `f16_bits_to_f32`, `f32_to_f16_bits`, `bf16_bits_to_f32`,
///   `f32_to_bf16_bits` they are built from.
///
/// The conversions use integer operations, not WGSL's `pack2x16float`, which may round either
/// way: these round to nearest even, bit for bit as [`pack_f16`] / [`pack_bf16`] on every
/// vendor, and need no `f16` extension. Have [`Kernel::with_half_prelude`] put them in front of
/// a kernel; an invocation that writes a packed output writes whole words (a pair of elements).
pub const HALF_WGSL: &str = include_str!("half.wgsl");

impl Kernel {
    /// A kernel whose source is [`PRELUDE_WGSL`], [`HALF_WGSL`], then `source`: for kernels
    /// that read or write f16/bf16 tensors as packed words.
    pub fn with_half_prelude(label: &str, source: &str, entry_point: &str) -> Self {
        Self::new(
            label,
            format!("{PRELUDE_WGSL}\n{HALF_WGSL}\n{source}"),
            entry_point,
        )
    }
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

    /// The grid of `dispatch_2d`, walked invocation by invocation as the device would, with
    /// `cell_2d`'s formula: every cell of the job once, nothing else in bounds.
    fn cells_2d(l: &ComputeLimits, size: [u64; 2], wg: [u32; 2]) -> Vec<u64> {
        let [gx, gy, gz] = dispatch_2d(l, size, wg).unwrap();
        let max = l.max_workgroups_per_dimension;
        assert!(
            gx <= max && gy <= max && gz <= max,
            "{size:?}: {gx} {gy} {gz}"
        );
        let mut seen = vec![0u64; (size[0] * size[1]) as usize];
        for z in 0..u64::from(gz) {
            for y in 0..u64::from(gy) * u64::from(wg[1]) {
                for x in 0..u64::from(gx) * u64::from(wg[0]) {
                    // cell_2d(gid, nwg, wg_y) = (gid.x, gid.y + nwg.y * wg_y * gid.z)
                    let (col, row) = (x, y + u64::from(gy) * u64::from(wg[1]) * z);
                    if col < size[0] && row < size[1] {
                        seen[(row * size[0] + col) as usize] += 1;
                    }
                }
            }
        }
        seen
    }

    #[test]
    fn dispatch_2d_covers_every_cell_once_and_folds_rows_into_z() {
        let l = limits(4, 1 << 27, 256);
        for size in [
            [1u64, 1],
            [3, 5],
            [8, 8],
            [8, 9],
            [16, 17],
            [5, 64],
            [7, 100],
            [1, 128],
        ] {
            for wg in [[1u32, 1], [2, 2], [4, 1], [1, 8]] {
                // Past 4 columns of workgroups, or 4 x 4 rows of them, is an error (below).
                if size[0].div_ceil(u64::from(wg[0])) > 4 || size[1].div_ceil(u64::from(wg[1])) > 16
                {
                    continue;
                }
                let seen = cells_2d(&l, size, wg);
                assert!(seen.iter().all(|&n| n == 1), "{size:?} {wg:?}: {seen:?}");
            }
        }
        // Rows past the limit go to z; columns that do not fit x, or rows past y·z, are errors.
        assert_eq!(dispatch_2d(&l, [4, 16], [1, 1]).unwrap(), [4, 4, 4]);
        assert_eq!(dispatch_2d(&l, [4, 4], [1, 1]).unwrap(), [4, 4, 1]);
        assert_eq!(dispatch_2d(&l, [4, 5], [1, 1]).unwrap(), [4, 3, 2]);
        assert_eq!(dispatch_2d(&l, [0, 9], [1, 1]).unwrap(), [0, 1, 1]);
        let err = dispatch_2d(&l, [5, 1], [1, 1]).unwrap_err();
        assert!(
            err.message().contains("5 columns")
                && err.message().contains("max_workgroups_per_dimension of 4"),
            "{err}"
        );
        let err = dispatch_2d(&l, [1, 17], [1, 1]).unwrap_err();
        assert!(err.message().contains("17 rows"), "{err}");
        let real = limits(65535, 1 << 27, 256);
        assert_eq!(
            dispatch_2d(&real, [768, 3072], [16, 16]).unwrap(),
            [48, 192, 1]
        );
        let [x, y, z] = dispatch_2d(&real, [64, 65535 * 16 + 1], [16, 16]).unwrap();
        assert_eq!((x, z), (4, 2));
        assert!(u64::from(y) * 2 * 16 > 65535 * 16 && y <= 65535);
        let k = Kernel::new("k", "", "main").workgroup_size_2d(16, 8);
        assert_eq!((k.workgroup_size, k.workgroup_2d), (128, [16, 8]));
        assert!(Kernel::with_prelude("k", "", "main")
            .source
            .contains("fn cell_2d("));
        let h = Kernel::with_half_prelude("k", "fn main() {}", "main");
        assert!(h.source.contains("fn flat_index(") && h.source.contains("fn pack_bf16x2("));
        assert!(h.source.ends_with("fn main() {}"));
    }

    /// An f16 bit pattern's value by the definition: (-1)^s · m · 2^-24 for subnormals,
    /// (-1)^s · (1024 + m) · 2^(e - 25) for normals.
    fn f16_value(h: u16) -> f64 {
        let (s, e, m) = (
            (h >> 15) & 1,
            i32::from((h >> 10) & 0x1f),
            f64::from(h & 0x3ff),
        );
        let sign = if s == 1 { -1.0 } else { 1.0 };
        match e {
            0 => sign * m * 2f64.powi(-24),
            31 if m == 0.0 => sign * f64::INFINITY,
            31 => f64::NAN,
            _ => sign * (1024.0 + m) * 2f64.powi(e - 25),
        }
    }

    /// The f16 nearest to `x` (ties to the even pattern), found by search over every finite
    /// f16: the reference for `pack_f16`.
    fn nearest_f16(x: f32, finite: &[(f64, u16)]) -> u16 {
        if x.is_nan() {
            return 0x7e00;
        }
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let a = f64::from(x.abs());
        // Past the largest f16 plus half its step (65504 + 16) the value rounds to inf.
        if a >= 65520.0 {
            return sign | 0x7c00;
        }
        let i = finite.partition_point(|&(v, _)| v <= a);
        let below = finite[i - 1];
        let bits = match finite.get(i) {
            None => below.1,
            Some(&above) => {
                let (db, da) = (a - below.0, above.0 - a);
                if db < da || (db == da && below.1 % 2 == 0) {
                    below.1
                } else {
                    above.1
                }
            }
        };
        sign | bits
    }

    #[test]
    fn f16_and_bf16_packing_matches_the_definitions() {
        // Unpacking: every f16 pattern against its defined value.
        let all: Vec<u32> = (0..=u16::MAX)
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|p| u32::from(p[0]) | u32::from(p[1]) << 16)
            .collect();
        let got = unpack_f16(&all, 65536).unwrap();
        for (h, g) in got.iter().enumerate() {
            let want = f16_value(h as u16);
            assert!(
                (want.is_nan() && g.is_nan()) || f64::from(*g) == want,
                "f16 {h:#06x}: {g} != {want}"
            );
        }
        let got = unpack_bf16(&all, 65536).unwrap();
        for (h, g) in got.iter().enumerate() {
            let want = f32::from_bits((h as u32) << 16);
            assert!(
                (want.is_nan() && g.is_nan()) || g.to_bits() == want.to_bits(),
                "bf16 {h:#06x}"
            );
        }
        // Packing: every f16 value, the midpoints between neighbours (ties to even) and a hair
        // either side, subnormals, overflow, signed zeros, inf, NaN and random f32s.
        let mut finite: Vec<(f64, u16)> = (0u16..0x7c00).map(|h| (f16_value(h), h)).collect();
        finite.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            -f32::INFINITY,
            f32::NAN,
            65504.0,
            65519.99,
            65520.0,
            -70000.0,
            1e-8,
            2.9802322e-8,
            2.9802326e-8,
            6e-8,
            -3e-5,
            f32::MIN_POSITIVE,
        ];
        for w in finite.windows(2) {
            let mid = (w[0].0 + w[1].0) / 2.0;
            xs.push(w[0].0 as f32);
            xs.push(mid as f32);
            xs.push(f32::from_bits((mid as f32).to_bits() + 1));
            xs.push(-f32::from_bits((mid as f32).to_bits() - 1));
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = f32::from_bits(state as u32);
            if v.is_finite() {
                xs.push(v);
                xs.push(v * 1e-30);
            }
        }
        let packed = pack_f16(&xs);
        assert_eq!(packed.len(), xs.len().div_ceil(2));
        for (i, &x) in xs.iter().enumerate() {
            let got = (packed[i / 2] >> (16 * (i % 2))) as u16;
            let want = nearest_f16(x, &finite);
            assert!(
                got == want || (x.is_nan() && got & 0x7c00 == 0x7c00 && got & 0x3ff != 0),
                "pack_f16({x:e} = {:#010x}): {got:#06x}, want {want:#06x}",
                x.to_bits()
            );
        }
        // bf16: the nearer of the two bf16 neighbours of x (ties to even), by f64 distance;
        // the pattern past the largest finite one counts as 2^128, where rounding reaches inf.
        let bf = |h: u32| -> f64 {
            let b = h & 0x7fff;
            if b == 0x7f80 {
                2f64.powi(128)
            } else {
                f64::from(f32::from_bits(b << 16))
            }
        };
        let packed = pack_bf16(&xs);
        for (i, &x) in xs.iter().enumerate() {
            let got = (packed[i / 2] >> (16 * (i % 2))) & 0xffff;
            if x.is_nan() {
                assert!(
                    got & 0x7f80 == 0x7f80 && got & 0x7f != 0,
                    "bf16 NaN: {got:#06x}"
                );
                continue;
            }
            let a = f64::from(x.abs());
            let lo = (x.abs().to_bits() >> 16) & 0x7fff;
            let want = if x.is_infinite() || bf(lo) == a {
                lo
            } else {
                let (dl, dh) = (a - bf(lo), bf(lo + 1) - a);
                if dl < dh || (dl == dh && lo % 2 == 0) {
                    lo
                } else {
                    lo + 1
                }
            } | if x.is_sign_negative() { 0x8000 } else { 0 };
            assert_eq!(got, want, "pack_bf16({x:e} = {:#010x})", x.to_bits());
        }
        // Layout: element 2i low, an odd tail padded with zero; a short unpack is an error.
        assert_eq!(pack_f16(&[1.0, -2.0, 0.5]), vec![0xc000_3c00, 0x0000_3800]);
        assert_eq!(pack_bf16(&[1.0]), vec![0x3f80]);
        assert_eq!(unpack_bf16(&[0xc000_3f80], 2).unwrap(), vec![1.0, -2.0]);
        let err = unpack_f16(&[0], 3).unwrap_err();
        assert!(err.message().contains("hold only 2"), "{err}");
    }
}
