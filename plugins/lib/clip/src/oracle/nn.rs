//! The layers CLIP is built from (`nn.Linear`, `nn.LayerNorm`, `nn.Embedding`), loaded by name
//! and run on the CPU in f32.

use crate::error::{ClipError, Result};
use crate::tensor::{dot, par_rows, Tensor};
use crate::weights::VarBuilder;

/// `nn.Linear`: `y = x W^T + b` over the last dimension, with `W: [out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight: [out, in]` and `bias: [out]`.
    pub fn load(vb: &VarBuilder<'_>, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: Some(vb.get("bias", &[out_dim])?),
        })
    }

    /// Loads `weight: [out, in]` of a layer without bias (the CLIP projections).
    pub fn load_no_bias(vb: &VarBuilder<'_>, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: None,
        })
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Applies the layer to every row of `x: [..., in]`, giving `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (in_dim, out_dim) = (self.in_dim(), self.out_dim());
        if x.shape().is_empty() || x.last_dim() != in_dim {
            return Err(ClipError::input(
                "Linear::forward",
                format!(
                    "input shape {:?} does not end in {in_dim} (weight {:?})",
                    x.shape(),
                    self.weight.shape()
                ),
            ));
        }
        let rows = x.elem_count() / in_dim.max(1);
        let mut out = vec![0.0; rows * out_dim];
        let (w, b, xd) = (self.weight.data(), self.bias.as_ref(), x.data());
        // Rows are taken in tiles so each weight row, once in cache, serves the whole tile:
        // streaming the full weight matrix once per input row would make this memory-bound.
        const TILE: usize = 8;
        par_rows(&mut out, out_dim * TILE, |t, y| {
            let first = t * TILE;
            let tile_rows = y.len() / out_dim;
            for o in 0..out_dim {
                let wo = &w[o * in_dim..(o + 1) * in_dim];
                let bo = b.map_or(0.0, |b| b.data()[o]);
                for r in 0..tile_rows {
                    let xr = &xd[(first + r) * in_dim..(first + r + 1) * in_dim];
                    y[r * out_dim + o] = dot(xr, wo) + bo;
                }
            }
        });
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("checked non-scalar above") = out_dim;
        Tensor::new(shape, out)
    }
}

/// `nn.LayerNorm` over the last dimension: biased variance, `eps` inside the square root.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight: [dim]` and `bias: [dim]`.
    pub fn load(vb: &VarBuilder<'_>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            eps,
        })
    }

    /// The scale, `[dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift, `[dim]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalizes every row of `x: [..., dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.elem_count();
        if x.last_dim() != dim {
            return Err(ClipError::input(
                "LayerNorm::forward",
                format!("input shape {:?} does not end in {dim}", x.shape()),
            ));
        }
        let mut out = x.clone();
        let (w, b) = (self.weight.data(), self.bias.data());
        for row in out.data_mut().chunks_mut(dim) {
            // Mean and variance in f64: the reference should carry no error of its own.
            let n = dim as f64;
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let inv_std = 1.0 / (var + self.eps).sqrt();
            for ((v, wi), bi) in row.iter_mut().zip(w).zip(b) {
                *v = ((f64::from(*v) - mean) * inv_std) as f32 * wi + bi;
            }
        }
        Ok(out)
    }
}

/// `nn.Embedding`: a lookup table `[num, dim]`.
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// Loads `weight: [num, dim]`.
    pub fn load(vb: &VarBuilder<'_>, num: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[num, dim])?,
        })
    }

    /// The table, `[num, dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Row `index`; fails when out of range.
    pub fn row(&self, index: usize) -> Result<&[f32]> {
        if index >= self.len() {
            return Err(ClipError::input(
                "Embedding::row",
                format!(
                    "index {index} out of range for a table of {} rows",
                    self.len()
                ),
            ));
        }
        let dim = self.dim();
        Ok(&self.weight.data()[index * dim..(index + 1) * dim])
    }
}
