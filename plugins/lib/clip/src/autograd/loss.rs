//! Row softmax, L2 normalization, and the two losses on classification logits: cross-entropy
//! against labels, and the Shannon entropy of the prediction (AdaMerging's unsupervised loss,
//! `fusion_bench.method.adamerging.entropy_loss`). Both losses are means over the rows and
//! return their gradient with respect to the logits.

use super::check_len;
use crate::error::{ClipError, Result};

/// Softmax of every `cols`-wide row, the maximum subtracted first (as torch).
pub fn softmax_forward(x: &[f32], cols: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    if cols > 0 {
        y.chunks_mut(cols).for_each(crate::tensor::softmax_in_place);
    }
    y
}

/// `∂L/∂x = y ⊙ (∂L/∂y - Σ_j y_j ∂L/∂y_j)` per row, from the softmax output `y`.
pub fn softmax_backward(y: &[f32], dy: &[f32], cols: usize) -> Result<Vec<f32>> {
    check_len("softmax_backward", "dy", dy.len(), y.len())?;
    let mut dx = vec![0.0; y.len()];
    if cols == 0 {
        return Ok(dx);
    }
    for ((dxr, yr), dyr) in dx.chunks_mut(cols).zip(y.chunks(cols)).zip(dy.chunks(cols)) {
        let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
        for ((d, &p), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *d = p * (g - dot);
        }
    }
    Ok(dx)
}

/// `x / ‖x‖₂` per row, with each row's norm (the backward pass needs it).
pub fn l2_normalize_forward(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let mut y = x.to_vec();
    let mut norms = Vec::with_capacity(x.len() / cols.max(1));
    if cols > 0 {
        for row in y.chunks_mut(cols) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            norms.push(norm);
        }
    }
    (y, norms)
}

/// `∂L/∂x = (∂L/∂y - y (y · ∂L/∂y)) / ‖x‖` per row, from the output `y` and the norms.
pub fn l2_normalize_backward(
    y: &[f32],
    norms: &[f32],
    dy: &[f32],
    cols: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "l2_normalize_backward";
    check_len(OP, "dy", dy.len(), y.len())?;
    check_len(OP, "norms", norms.len() * cols, y.len())?;
    let mut dx = vec![0.0; y.len()];
    if cols == 0 {
        return Ok(dx);
    }
    for (((dxr, yr), dyr), &n) in dx
        .chunks_mut(cols)
        .zip(y.chunks(cols))
        .zip(dy.chunks(cols))
        .zip(norms)
    {
        let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
        for ((d, &v), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *d = (g - v * dot) / n;
        }
    }
    Ok(dx)
}

/// A loss and its gradient with respect to the logits.
#[derive(Clone, Debug)]
pub struct LossGrad {
    /// The loss (a mean over rows).
    pub loss: f32,
    /// `∂loss/∂logits`, shaped as the logits.
    pub dlogits: Vec<f32>,
}

fn rows_of(op: &'static str, logits: &[f32], classes: usize) -> Result<usize> {
    if classes == 0 || !logits.len().is_multiple_of(classes) || logits.is_empty() {
        return Err(ClipError::input(
            op,
            format!(
                "{} logits do not form rows of {classes} classes",
                logits.len()
            ),
        ));
    }
    Ok(logits.len() / classes)
}

/// `torch.nn.functional.cross_entropy(logits, labels)` (mean over rows):
/// `mean(logsumexp(z) - z[label])`, gradient `(softmax(z) - onehot(label)) / rows`.
pub fn cross_entropy(logits: &[f32], labels: &[u32], classes: usize) -> Result<LossGrad> {
    const OP: &str = "cross_entropy";
    let rows = rows_of(OP, logits, classes)?;
    check_len(OP, "labels", labels.len(), rows)?;
    if let Some((i, &bad)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(ClipError::input(
            OP,
            format!("label {bad} of row {i} is not one of the {classes} classes"),
        ));
    }
    let mut dlogits = softmax_forward(logits, classes);
    let mut total = 0.0f64;
    for ((d, z), &label) in dlogits
        .chunks_mut(classes)
        .zip(logits.chunks(classes))
        .zip(labels)
    {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = f64::from(max)
            + z.iter()
                .map(|&v| f64::from(v - max).exp())
                .sum::<f64>()
                .ln();
        total += lse - f64::from(z[label as usize]);
        d[label as usize] -= 1.0;
        d.iter_mut().for_each(|v| *v /= rows as f32);
    }
    Ok(LossGrad {
        loss: (total / rows as f64) as f32,
        dlogits,
    })
}

/// AdaMerging's entropy loss, `mean_rows(-Σ_j p_j log(p_j + eps))` with `p = softmax(z)`
/// (`eps = 1e-8` in FusionBench). With `h_j = -(log(p_j + eps) + p_j / (p_j + eps))`, the
/// gradient of a row's entropy with respect to `p` is `h`, and to `z` it is
/// `p ⊙ (h - Σ p h)`, divided by the number of rows for the mean.
pub fn entropy(logits: &[f32], classes: usize, eps: f32) -> Result<LossGrad> {
    const OP: &str = "entropy";
    let rows = rows_of(OP, logits, classes)?;
    let p = softmax_forward(logits, classes);
    let mut dp = vec![0.0; p.len()];
    let mut total = 0.0f64;
    for (pr, dr) in p.chunks(classes).zip(dp.chunks_mut(classes)) {
        for (&pj, d) in pr.iter().zip(dr.iter_mut()) {
            let log = (pj + eps).ln();
            total -= f64::from(pj * log);
            *d = -(log + pj / (pj + eps)) / rows as f32;
        }
    }
    Ok(LossGrad {
        loss: (total / rows as f64) as f32,
        dlogits: softmax_backward(&p, &dp, classes)?,
    })
}
