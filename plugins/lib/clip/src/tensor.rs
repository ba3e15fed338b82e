//! A minimal dense f32 tensor (row-major, owned) and the few CPU primitives the CLIP forward
//! pass needs. This is the reference the WGSL kernels are tested against, so every primitive is
//! written plainly and in f32, with accumulations that favour accuracy over speed.

use crate::error::{ClipError, Result};

/// A dense, row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor; fails when `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ClipError::input(
                "Tensor::new",
                format!(
                    "shape {shape:?} needs {expected} values, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major, mutably.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning its values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.data.len()
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The same values under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self> {
        Self::new(shape, self.data)
    }

    /// Rows `[start, start + len)` of the first dimension, as a new tensor.
    pub fn narrow0(&self, start: usize, len: usize) -> Result<Self> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if start + len > rows {
            return Err(ClipError::input(
                "Tensor::narrow0",
                format!(
                    "rows {start}..{} out of range for shape {:?}",
                    start + len,
                    self.shape
                ),
            ));
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        Ok(Self {
            shape,
            data: self.data[start * row..(start + len) * row].to_vec(),
        })
    }

    /// Largest absolute difference to `other`; fails on a shape mismatch. Meant for tests and
    /// for comparing GPU kernels with this reference.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(ClipError::input(
                "Tensor::max_abs_diff",
                format!("shapes differ: {:?} vs {:?}", self.shape, other.shape),
            ));
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    }
}

/// Dot product with eight independent accumulators: it vectorizes, and the pairwise-ish
/// summation keeps the rounding error well below the golden tolerance for widths in the
/// thousands.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `f(row_index, row)` for every `width`-sized row of `out` (the last one shorter when
/// `width` does not divide the length), spreading rows over the available cores. Rows are
/// independent in every caller, so this only changes speed, never results. (The oracle's
/// row loops.)
#[cfg(any(test, feature = "oracle"))]
pub(crate) fn par_rows<F>(out: &mut [f32], width: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len().div_ceil(width);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows);
    // For small outputs, starting threads costs more than it saves.
    if threads <= 1 || out.len() < 1 << 12 {
        for (r, row) in out.chunks_mut(width).enumerate() {
            f(r, row);
        }
        return;
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, block) in out.chunks_mut(rows_per_thread * width).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (i, row) in block.chunks_mut(width).enumerate() {
                    f(t * rows_per_thread + i, row);
                }
            });
        }
    });
}

/// In-place softmax of one row, in f32 with the maximum subtracted first (as torch does).
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Divides each row (last dimension) by its L2 norm, like transformers'
/// `x / x.norm(p=2, dim=-1, keepdim=True)`.
pub fn l2_normalize_rows(t: &Tensor) -> Tensor {
    let width = t.last_dim();
    let mut out = t.clone();
    for row in out.data.chunks_mut(width.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
    out
}

/// `a @ b.T * scale` for `a: [m, k]`, `b: [n, k]`: the CLIP similarity matrix.
pub fn matmul_transposed(a: &Tensor, b: &Tensor, scale: f32) -> Result<Tensor> {
    let (&[m, k], &[n, k2]) = (a.shape(), b.shape()) else {
        return Err(ClipError::input(
            "matmul_transposed",
            format!(
                "expected 2-D tensors, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    };
    if k != k2 {
        return Err(ClipError::input(
            "matmul_transposed",
            format!(
                "inner dimensions differ: {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let mut out = vec![0.0; m * n];
    for (i, row) in out.chunks_mut(n.max(1)).enumerate() {
        let ai = &a.data[i * k..(i + 1) * k];
        for (j, o) in row.iter_mut().enumerate() {
            *o = dot(ai, &b.data[j * k..(j + 1) * k]) * scale;
        }
    }
    Tensor::new(vec![m, n], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        for len in [0, 1, 7, 8, 9, 33] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.25).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        let mut row = [1000.0, 1000.0, f32::MIN];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn par_rows_visits_every_row_once() {
        let width = 300;
        // 1000 full rows and a short one.
        let mut out = vec![0.0; width * 1000 + 7];
        par_rows(&mut out, width, |r, row| {
            row.iter_mut().for_each(|v| *v += r as f32)
        });
        for (r, row) in out.chunks(width).enumerate() {
            assert!(row.iter().all(|&v| v == r as f32));
        }
    }

    #[test]
    fn tensor_new_rejects_wrong_length() {
        let err = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("[2, 3]"), "{err}");
    }
}
