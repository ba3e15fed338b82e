//! `nn.LayerNorm` over the last dimension with its backward pass.

use rayon::prelude::*;

use super::{check_len, rows_per_task};
use crate::error::Result;

/// Layer norm of `rows` rows of `cols` values: `y = (x - mean) / sqrt(var + eps) · w + b`,
/// with the biased variance, as torch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// Number of rows.
    pub rows: usize,
    /// Width of a row (the normalized dimension).
    pub cols: usize,
    /// Added to the variance under the square root.
    pub eps: f64,
}

/// What the backward pass needs from the forward one besides `x`: each row's mean and
/// `1 / sqrt(var + eps)`.
#[derive(Clone, Debug)]
pub struct LayerNormSaved {
    /// Per-row mean.
    pub mean: Vec<f32>,
    /// Per-row reciprocal standard deviation.
    pub rstd: Vec<f32>,
}

/// The gradients of a [`LayerNorm`].
#[derive(Clone, Debug)]
pub struct LayerNormGrad {
    /// `∂L/∂x`, `[rows, cols]`.
    pub dx: Vec<f32>,
    /// `∂L/∂w`, `[cols]`.
    pub dw: Vec<f32>,
    /// `∂L/∂b`, `[cols]`.
    pub db: Vec<f32>,
}

impl LayerNorm {
    fn check(&self, op: &'static str, x: &[f32], w: &[f32]) -> Result<()> {
        check_len(op, "x", x.len(), self.rows * self.cols)?;
        check_len(op, "weight", w.len(), self.cols)
    }

    /// `y`, `[rows, cols]`, and what the backward pass needs.
    pub fn forward(&self, x: &[f32], w: &[f32], b: &[f32]) -> Result<(Vec<f32>, LayerNormSaved)> {
        const OP: &str = "LayerNorm::forward";
        self.check(OP, x, w)?;
        check_len(OP, "bias", b.len(), self.cols)?;
        let (rows, cols) = (self.rows, self.cols);
        let mut y = vec![0.0; rows * cols];
        let mut stats = vec![(0.0f32, 0.0f32); rows];
        if cols > 0 {
            let per = rows_per_task(cols);
            y.par_chunks_mut(cols * per)
                .zip(stats.par_chunks_mut(per))
                .enumerate()
                .for_each(|(t, (block, st))| {
                    for (i, (yr, s)) in block.chunks_mut(cols).zip(st).enumerate() {
                        let r = t * per + i;
                        let xr = &x[r * cols..(r + 1) * cols];
                        // Statistics in f64: rows are short, and it keeps the forward exact to
                        // f32 rounding, like the oracle in `nn.rs`.
                        let n = cols as f64;
                        let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                        let var = xr
                            .iter()
                            .map(|&v| (f64::from(v) - mean).powi(2))
                            .sum::<f64>()
                            / n;
                        let rstd = 1.0 / (var + self.eps).sqrt();
                        for (((o, &v), wi), bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                            *o = ((f64::from(v) - mean) * rstd) as f32 * wi + bi;
                        }
                        *s = (mean as f32, rstd as f32);
                    }
                });
        }
        let (mean, rstd) = stats.into_iter().unzip();
        Ok((y, LayerNormSaved { mean, rstd }))
    }

    /// With `x̂ = (x - mean) · rstd` and `g = ∂L/∂y · w`:
    /// `∂L/∂x = rstd · (g - mean(g) - x̂ · mean(g · x̂))`, `∂L/∂w = Σ_rows ∂L/∂y · x̂`,
    /// `∂L/∂b = Σ_rows ∂L/∂y`.
    pub fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        saved: &LayerNormSaved,
        dy: &[f32],
    ) -> Result<LayerNormGrad> {
        const OP: &str = "LayerNorm::backward";
        self.check(OP, x, w)?;
        let (rows, cols) = (self.rows, self.cols);
        check_len(OP, "dy", dy.len(), rows * cols)?;
        check_len(OP, "saved mean", saved.mean.len(), rows)?;
        check_len(OP, "saved rstd", saved.rstd.len(), rows)?;
        let mut dx = vec![0.0; rows * cols];
        if cols == 0 || rows == 0 {
            return Ok(LayerNormGrad {
                dx,
                dw: vec![0.0; cols],
                db: vec![0.0; cols],
            });
        }
        let per = rows_per_task(cols);
        // Each task returns its partial sums of dw and db; they are added up below.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(cols * per)
            .enumerate()
            .map(|(t, block)| {
                let mut dw = vec![0.0f32; cols];
                let mut db = vec![0.0f32; cols];
                let mut xhat = vec![0.0f32; cols];
                for (i, dxr) in block.chunks_mut(cols).enumerate() {
                    let r = t * per + i;
                    let (xr, dyr) = (&x[r * cols..][..cols], &dy[r * cols..][..cols]);
                    let (mean, rstd) = (saved.mean[r], saved.rstd[r]);
                    let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                    for c in 0..cols {
                        let xh = (xr[c] - mean) * rstd;
                        xhat[c] = xh;
                        let g = dyr[c] * w[c];
                        sum_g += f64::from(g);
                        sum_gx += f64::from(g * xh);
                        dw[c] += dyr[c] * xh;
                        db[c] += dyr[c];
                    }
                    let (mg, mgx) = ((sum_g / cols as f64) as f32, (sum_gx / cols as f64) as f32);
                    for c in 0..cols {
                        dxr[c] = rstd * (dyr[c] * w[c] - mg - xhat[c] * mgx);
                    }
                }
                (dw, db)
            })
            .collect();
        let mut dw = vec![0.0; cols];
        let mut db = vec![0.0; cols];
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        Ok(LayerNormGrad { dx, dw, db })
    }
}
