//! The vision tower's input: im2col for the patch embedding, class token and position
//! embeddings (`patch.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{check_extent, dispatch, fits_u32, grid, NnError, Params, Result};
use crate::wgsl::nn;

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
        return Err(NnError::input(
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
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
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
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
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
