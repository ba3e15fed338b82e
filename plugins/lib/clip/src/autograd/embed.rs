//! CLIP's vision embeddings with their backward pass: the patch convolution
//! (`Conv2d(C, D, kernel = stride = P, bias = False)`) as a matrix product over the image's
//! patches, the class token prepended, and the position embeddings added.

use rayon::prelude::*;

use super::check_len;
use super::matmul::Linear;
use crate::error::{ClipError, Result};

/// The geometry of [`PatchEmbed`]: `pixels [batch, C, S, S]` to `[batch, (S/P)² + 1, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchEmbed {
    /// Number of images.
    pub batch: usize,
    /// Channels `C`.
    pub channels: usize,
    /// Image side `S`.
    pub image: usize,
    /// Patch side `P`; must divide `S`.
    pub patch: usize,
    /// Embedding width `D`.
    pub dim: usize,
}

/// What [`PatchEmbed::forward`] returns.
#[derive(Clone, Debug)]
pub struct PatchEmbedOutput {
    /// The embeddings, `[batch, positions, D]`.
    pub embeddings: Vec<f32>,
    /// The patches flattened in the weight's `(c, y, x)` order, `[batch · (S/P)², C·P·P]`
    /// (the backward pass multiplies by them).
    pub patches: Vec<f32>,
}

/// The gradients of a [`PatchEmbed`].
#[derive(Clone, Debug)]
pub struct PatchEmbedGrad {
    /// `∂L/∂weight`, `[D, C, P, P]`.
    pub weight: Vec<f32>,
    /// `∂L/∂class_embedding`, `[D]`.
    pub class: Vec<f32>,
    /// `∂L/∂position_embedding`, `[positions, D]`.
    pub position: Vec<f32>,
    /// `∂L/∂pixels`, `[batch, C, S, S]`, when asked for (else empty).
    pub pixels: Vec<f32>,
}

impl PatchEmbed {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image / self.patch.max(1)
    }

    /// Tokens per image: the patches and the class token.
    pub fn positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// `C · P · P`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    fn linear(&self) -> Linear {
        Linear {
            rows: self.batch * self.grid() * self.grid(),
            in_dim: self.patch_len(),
            out_dim: self.dim,
        }
    }

    fn check(&self, op: &'static str, weight: &[f32]) -> Result<()> {
        if self.patch == 0 || !self.image.is_multiple_of(self.patch) {
            return Err(ClipError::input(
                op,
                format!(
                    "patch size {} does not divide image size {}",
                    self.patch, self.image
                ),
            ));
        }
        check_len(
            op,
            "patch weight",
            weight.len(),
            self.dim * self.patch_len(),
        )
    }

    /// Embeds `pixels`, `[batch, C, S, S]`.
    pub fn forward(
        &self,
        pixels: &[f32],
        weight: &[f32],
        class: &[f32],
        position: &[f32],
    ) -> Result<PatchEmbedOutput> {
        const OP: &str = "PatchEmbed::forward";
        self.check(OP, weight)?;
        let Self {
            batch,
            channels: c,
            image: s,
            patch: p,
            dim: d,
        } = *self;
        check_len(OP, "pixels", pixels.len(), batch * c * s * s)?;
        check_len(OP, "class embedding", class.len(), d)?;
        let (grid, n, plen) = (self.grid(), self.positions(), self.patch_len());
        check_len(OP, "position embedding", position.len(), n * d)?;
        let mut patches = vec![0.0f32; batch * grid * grid * plen];
        if plen > 0 {
            patches
                .par_chunks_mut(plen)
                .enumerate()
                .for_each(|(r, row)| {
                    let (b, t) = (r / (grid * grid), r % (grid * grid));
                    let (py, px) = (t / grid, t % grid);
                    for ch in 0..c {
                        for y in 0..p {
                            let src = ((b * c + ch) * s + py * p + y) * s + px * p;
                            row[(ch * p + y) * p..][..p].copy_from_slice(&pixels[src..src + p]);
                        }
                    }
                });
        }
        let projected = self.linear().forward(&patches, weight, None)?;
        let mut embeddings = vec![0.0f32; batch * n * d];
        if d > 0 {
            embeddings
                .par_chunks_mut(n * d)
                .enumerate()
                .for_each(|(b, e)| {
                    e[..d].copy_from_slice(class);
                    e[d..].copy_from_slice(&projected[b * (n - 1) * d..(b + 1) * (n - 1) * d]);
                    e.iter_mut().zip(position).for_each(|(v, pe)| *v += pe);
                });
        }
        Ok(PatchEmbedOutput {
            embeddings,
            patches,
        })
    }

    /// From the forward's `patches` and `∂L/∂embeddings`. `need_pixels` also scatters the
    /// patch gradients back onto the image (a pixel belongs to exactly one patch).
    pub fn backward(
        &self,
        patches: &[f32],
        weight: &[f32],
        d_embeddings: &[f32],
        need_pixels: bool,
    ) -> Result<PatchEmbedGrad> {
        const OP: &str = "PatchEmbed::backward";
        self.check(OP, weight)?;
        let Self {
            batch,
            channels: c,
            image: s,
            patch: p,
            dim: d,
        } = *self;
        let (grid, n, plen) = (self.grid(), self.positions(), self.patch_len());
        check_len(OP, "d_embeddings", d_embeddings.len(), batch * n * d)?;
        let mut position = vec![0.0f32; n * d];
        let mut d_patches = vec![0.0f32; batch * (n - 1) * d];
        for b in 0..batch {
            let e = &d_embeddings[b * n * d..(b + 1) * n * d];
            position.iter_mut().zip(e).for_each(|(a, g)| *a += g);
            d_patches[b * (n - 1) * d..(b + 1) * (n - 1) * d].copy_from_slice(&e[d..]);
        }
        let class = position[..d].to_vec();
        let lin = self
            .linear()
            .backward(patches, weight, &d_patches, need_pixels)?;
        let mut pixels = Vec::new();
        if need_pixels {
            pixels = vec![0.0f32; batch * c * s * s];
            for r in 0..batch * grid * grid {
                let (b, t) = (r / (grid * grid), r % (grid * grid));
                let (py, px) = (t / grid, t % grid);
                let row = &lin.dx[r * plen..(r + 1) * plen];
                for ch in 0..c {
                    for y in 0..p {
                        let dst = ((b * c + ch) * s + py * p + y) * s + px * p;
                        pixels[dst..dst + p].copy_from_slice(&row[(ch * p + y) * p..][..p]);
                    }
                }
            }
        }
        Ok(PatchEmbedGrad {
            weight: lin.dw,
            class,
            position,
            pixels,
        })
    }
}
