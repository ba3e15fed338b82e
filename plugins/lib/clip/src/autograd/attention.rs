//! Multi-head scaled dot-product attention with its backward pass, over the packed
//! `[batch, seq, 3·hidden]` layout of the forward path (`q | k | v` per row, each `hidden =
//! heads · head_dim` wide). One rayon task per (sequence, head) runs single-threaded GEMMs on
//! strided views, so neither pass ever builds a transposed or per-head copy of the inputs.

use rayon::prelude::*;

use super::check_len;
use super::gemm::{gemm, Strides};
use crate::error::Result;
use crate::tensor::softmax_in_place;

/// The shape of one attention call: `softmax(scale · q kᵀ + mask) v` per sequence and head;
/// the same shape the op API's attention takes (one definition, in [`crate::arch`]).
pub type Attention = crate::arch::AttentionShape;

/// The gradient of an [`Attention`] with respect to its packed input.
#[derive(Clone, Debug)]
pub struct AttentionGrad {
    /// `∂L/∂(q | k | v)`, `[batch, seq, 3·hidden]`.
    pub dqkv: Vec<f32>,
}

impl Attention {
    fn check(&self, op: &'static str, qkv: &[f32], key_padding: Option<&[u32]>) -> Result<()> {
        let d = self.hidden();
        check_len(op, "qkv", qkv.len(), self.batch * self.seq * 3 * d)?;
        if let Some(m) = key_padding {
            check_len(op, "key mask", m.len(), self.batch * self.seq)?;
        }
        Ok(())
    }

    /// The (sequence, head) block views: the head's `q`, `k`, `v` columns inside `qkv`.
    fn views(&self, z: usize) -> (Strides, Strides, Strides) {
        let (seq, d) = (self.seq, self.hidden());
        let (s, h) = (z / self.heads, z % self.heads);
        let base = Strides::rows(3 * d).at(s * seq * 3 * d + h * self.head_dim);
        (base, base.at(d), base.at(2 * d))
    }

    /// The context `[batch, seq, hidden]` and the attention probabilities
    /// `[batch, heads, seq, seq]` (kept for the backward pass). `key_padding`, `[batch, seq]`,
    /// is zero where a key is padding; masked scores get an additive `f32::MIN`, as the
    /// forward path and transformers' eager attention, so a fully masked row is uniform.
    pub fn forward(
        &self,
        qkv: &[f32],
        key_padding: Option<&[u32]>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check("Attention::forward", qkv, key_padding)?;
        let Self {
            batch,
            seq,
            heads,
            head_dim: hd,
            scale,
            causal,
        } = *self;
        let d = self.hidden();
        let mut probs = vec![0.0f32; batch * heads * seq * seq];
        let mut blocks = vec![0.0f32; batch * heads * seq * hd];
        if probs.is_empty() || blocks.is_empty() {
            return Ok((vec![0.0; batch * seq * d], probs));
        }
        probs
            .par_chunks_mut(seq * seq)
            .zip(blocks.par_chunks_mut(seq * hd))
            .enumerate()
            .try_for_each(|(z, (p, out))| -> Result<()> {
                let (q, k, v) = self.views(z);
                let s = z / heads;
                gemm(
                    p,
                    Strides::rows(seq),
                    qkv,
                    q,
                    qkv,
                    k.t(),
                    (seq, seq, hd),
                    scale,
                    false,
                    false,
                )?;
                let keys = key_padding.map(|m| &m[s * seq..(s + 1) * seq]);
                for (i, row) in p.chunks_mut(seq).enumerate() {
                    if causal || keys.is_some() {
                        for (j, v) in row.iter_mut().enumerate() {
                            if (causal && j > i) || keys.is_some_and(|m| m[j] == 0) {
                                *v += f32::MIN;
                            }
                        }
                    }
                    softmax_in_place(row);
                }
                gemm(
                    out,
                    Strides::rows(hd),
                    p,
                    Strides::rows(seq),
                    qkv,
                    v,
                    (seq, hd, seq),
                    1.0,
                    false,
                    false,
                )
            })?;
        let mut ctx = vec![0.0f32; batch * seq * d];
        ctx.par_chunks_mut(seq * d).enumerate().for_each(|(s, c)| {
            for h in 0..heads {
                let block = &blocks[(s * heads + h) * seq * hd..][..seq * hd];
                for (i, row) in block.chunks_exact(hd).enumerate() {
                    c[i * d + h * hd..][..hd].copy_from_slice(row);
                }
            }
        });
        Ok((ctx, probs))
    }

    /// From `P` (the forward's probabilities) and `∂L/∂ctx`, per sequence and head:
    /// `∂L/∂v = Pᵀ ∂ctx`, `∂L/∂P = ∂ctx vᵀ`, `∂L/∂S = P ⊙ (∂L/∂P - rowsum(P ⊙ ∂L/∂P))`,
    /// `∂L/∂q = scale · ∂S k`, `∂L/∂k = scale · ∂Sᵀ q`. Masked keys have `P = 0`, so they get
    /// no gradient.
    pub fn backward(&self, qkv: &[f32], probs: &[f32], dctx: &[f32]) -> Result<AttentionGrad> {
        const OP: &str = "Attention::backward";
        self.check(OP, qkv, None)?;
        let Self {
            batch,
            seq,
            heads,
            head_dim: hd,
            scale,
            ..
        } = *self;
        let d = self.hidden();
        check_len(OP, "probs", probs.len(), batch * heads * seq * seq)?;
        check_len(OP, "dctx", dctx.len(), batch * seq * d)?;
        let mut dqkv = vec![0.0f32; batch * seq * 3 * d];
        if dqkv.is_empty() {
            return Ok(AttentionGrad { dqkv });
        }
        // Per (sequence, head): dq, dk, dv as three dense [seq, hd] blocks.
        let mut blocks = vec![0.0f32; batch * heads * 3 * seq * hd];
        blocks
            .par_chunks_mut(3 * seq * hd)
            .enumerate()
            .try_for_each(|(z, out)| -> Result<()> {
                let (q, k, v) = self.views(z);
                let (s, h) = (z / heads, z % heads);
                let p = &probs[z * seq * seq..][..seq * seq];
                let dc = Strides::rows(d).at(s * seq * d + h * hd);
                let (dq, rest) = out.split_at_mut(seq * hd);
                let (dk, dv) = rest.split_at_mut(seq * hd);
                let blk = Strides::rows(hd);
                // dv = Pᵀ dctx
                gemm(
                    dv,
                    blk,
                    p,
                    Strides::rows(seq).t(),
                    dctx,
                    dc,
                    (seq, hd, seq),
                    1.0,
                    false,
                    false,
                )?;
                // dP = dctx vᵀ, then dS in place.
                let mut ds = vec![0.0f32; seq * seq];
                gemm(
                    &mut ds,
                    Strides::rows(seq),
                    dctx,
                    dc,
                    qkv,
                    v.t(),
                    (seq, seq, hd),
                    1.0,
                    false,
                    false,
                )?;
                for (dr, pr) in ds.chunks_mut(seq).zip(p.chunks(seq)) {
                    let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(g, &pp)| *g = pp * (*g - dot));
                }
                gemm(
                    dq,
                    blk,
                    &ds,
                    Strides::rows(seq),
                    qkv,
                    k,
                    (seq, hd, seq),
                    scale,
                    false,
                    false,
                )?;
                gemm(
                    dk,
                    blk,
                    &ds,
                    Strides::rows(seq).t(),
                    qkv,
                    q,
                    (seq, hd, seq),
                    scale,
                    false,
                    false,
                )
            })?;
        dqkv.par_chunks_mut(seq * 3 * d)
            .enumerate()
            .for_each(|(s, rows)| {
                for h in 0..heads {
                    let block = &blocks[(s * heads + h) * 3 * seq * hd..][..3 * seq * hd];
                    for (part, b) in block.chunks_exact(seq * hd).enumerate() {
                        for (i, row) in b.chunks_exact(hd).enumerate() {
                            rows[i * 3 * d + part * d + h * hd..][..hd].copy_from_slice(row);
                        }
                    }
                }
            });
        Ok(AttentionGrad { dqkv })
    }
}
