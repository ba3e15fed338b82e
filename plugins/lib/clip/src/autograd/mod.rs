//! Reverse-mode gradients on the CPU, in f32: each op of the CLIP vision tower as a forward
//! function and a backward function that returns the gradients with respect to its inputs and
//! weights, and the whole tower (with FusionBench's zero-shot head and layer-wise
//! task-arithmetic merge) built from them. This is the foundation of the data-driven merging
//! methods (AdaMerging, Fisher merging, RegMean), which need `∂loss/∂θ` or `∂loss/∂λ`.
//!
//! The tower is the one [`crate::arch`] defines: its parameters ([`VisionParams`]: names,
//! shapes, transformers' order), dimensions and attention shape are those the inference towers
//! of [`crate::gpu`] load and run with. Its layer walk is its own, because it keeps a tape of
//! activations; a test holds its forward pass equal to the op-API tower's on the same weights.
//!
//! The ops are explicit rather than a general tape: each forward returns what its backward
//! needs, and [`VisionParams::backward`] walks the layers in reverse. Matrix products go
//! through the `gemm` crate on every core (as the native forward path does), row ops through
//! rayon. Every backward is checked against central finite differences of an f64 reference
//! (see the tests), and the tower against PyTorch autograd (`tests/golden.rs`, fixture made by
//! `tools/make_grad_golden.py`).
//!
//! ```no_run
//! use fusion_clip::autograd::{loss_and_gradients, LayerWiseMerge, Objective, VisionParams, ZeroShotHead};
//! # fn demo(pre: VisionParams, finetuned: Vec<VisionParams>, head: ZeroShotHead, pixels: &[f32]) -> fusion_clip::Result<()> {
//! let merge = LayerWiseMerge::from_finetuned(pre, &finetuned)?;
//! let lambdas = vec![0.3; merge.num_models() * merge.num_tensors()];
//! let merged = merge.merge(&lambdas)?;
//! let g = loss_and_gradients(&merged, &head, pixels, 16, Objective::Entropy { eps: 1e-8 })?;
//! let d_lambda = merge.lambda_gradients(&g.weights)?; // what AdaMerging's optimizer steps on
//! # let _ = d_lambda; Ok(()) }
//! ```

mod activation;
mod attention;
mod embed;
mod gemm;
mod loss;
mod matmul;
mod norm;
mod vision;

#[cfg(test)]
mod tests;

pub use activation::{activation_backward, activation_derivative, activation_forward};
pub use attention::{Attention, AttentionGrad};
pub use embed::{PatchEmbed, PatchEmbedGrad, PatchEmbedOutput};
pub use loss::{
    cross_entropy, entropy, l2_normalize_backward, l2_normalize_forward, softmax_backward,
    softmax_forward, LossGrad,
};
pub use matmul::{Linear, LinearGrad, MatMul, MatMulGrad};
pub use norm::{LayerNorm, LayerNormGrad, LayerNormSaved};
pub use vision::{
    loss_and_gradients, vision_param_names, Gradients, HeadTape, LayerParams, LayerWiseMerge,
    LinearParams, NormParams, Objective, VisionParams, VisionTape, ZeroShotHead,
};

use rayon::prelude::*;

use crate::error::{ClipError, Result};

/// Fails unless a buffer holds exactly the values its shape needs.
pub(crate) fn check_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(ClipError::input(
            op,
            format!("{what} holds {len} values, the shapes need {want}"),
        ));
    }
    Ok(())
}

/// Rows per rayon task for row-wise work: big enough to amortize the task.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// The sum over rows of `x: [rows, cols]` (`x.sum(0)`): the reduction behind every bias
/// gradient, and the backward of a broadcast over rows. Partial sums per block of rows, then
/// added up, so it runs on every core.
pub fn sum_rows(x: &[f32], cols: usize) -> Result<Vec<f32>> {
    if cols == 0 {
        return Ok(Vec::new());
    }
    if !x.len().is_multiple_of(cols) {
        return Err(ClipError::input(
            "sum_rows",
            format!("{} values do not form rows of {cols}", x.len()),
        ));
    }
    let per = rows_per_task(cols).max(64);
    Ok(x.par_chunks(cols * per)
        .map(|block| {
            let mut acc = vec![0.0f32; cols];
            for row in block.chunks(cols) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .reduce(
            || vec![0.0f32; cols],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        ))
}

/// The mean over rows of `x: [rows, cols]`; its backward is `∂L/∂y / rows` broadcast to every
/// row ([`mean_rows_backward`]).
pub fn mean_rows(x: &[f32], cols: usize) -> Result<Vec<f32>> {
    let rows = x.len() / cols.max(1);
    let mut s = sum_rows(x, cols)?;
    s.iter_mut().for_each(|v| *v /= rows.max(1) as f32);
    Ok(s)
}

/// The backward of [`mean_rows`]: `∂L/∂x[r] = ∂L/∂y / rows` for every row.
pub fn mean_rows_backward(dy: &[f32], rows: usize) -> Vec<f32> {
    let scale = 1.0 / rows.max(1) as f32;
    (0..rows)
        .flat_map(|_| dy.iter().map(move |g| g * scale))
        .collect()
}
