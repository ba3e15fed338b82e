//! The transformer encoder both towers share, on the GPU: weights uploaded once as f32 tensors,
//! and a forward pass whose activations never leave the device.

use fusion_plugin_api::{Compute, GpuTensor};

use crate::config::Activation;
use crate::encoder::{ClipEncoder, ClipEncoderLayer, EncoderDims};
use crate::error::Result;
use crate::gpu::ops::{self, GpuBuffer, Matmul, Operand, RowLayout, SoftmaxMask};
use crate::nn::{LayerNorm, Linear};
use crate::tensor::Tensor;

/// The weight tensors of one model on the device, released together when dropped.
pub(crate) struct Uploaded<'c> {
    c: &'c dyn Compute,
    tensors: Vec<GpuTensor>,
}

impl<'c> Uploaded<'c> {
    pub(crate) fn new(c: &'c dyn Compute) -> Self {
        Self {
            c,
            tensors: Vec::new(),
        }
    }

    /// Uploads `data` with `shape`; `name` (the checkpoint name) appears in errors.
    pub(crate) fn raw(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<GpuTensor> {
        ops::check_binding(self.c, &format!("uploading weight `{name}`"), shape, 4)?;
        let t = GpuBuffer::from_f32(self.c, shape, data)?.into_raw();
        self.tensors.push(t);
        Ok(t)
    }

    pub(crate) fn tensor(&mut self, name: &str, t: &Tensor) -> Result<GpuTensor> {
        self.raw(name, t.shape(), t.data())
    }

    pub(crate) fn linear(&mut self, name: &str, l: &Linear) -> Result<GpuLinear> {
        Ok(GpuLinear {
            weight: self.tensor(&format!("{name}.weight"), l.weight())?,
            bias: l
                .bias()
                .map(|b| self.tensor(&format!("{name}.bias"), b))
                .transpose()?,
            out_dim: l.out_dim(),
        })
    }

    pub(crate) fn layer_norm(&mut self, name: &str, ln: &LayerNorm) -> Result<GpuLayerNorm> {
        Ok(GpuLayerNorm {
            weight: self.tensor(&format!("{name}.weight"), ln.weight())?,
            bias: self.tensor(&format!("{name}.bias"), ln.bias())?,
            dim: ln.weight().elem_count(),
            eps: ln.eps(),
        })
    }
}

impl Drop for Uploaded<'_> {
    fn drop(&mut self) {
        for t in self.tensors.drain(..) {
            self.c.release(t);
        }
    }
}

/// nn.Linear on the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuLinear {
    pub(crate) weight: GpuTensor,
    pub(crate) bias: Option<GpuTensor>,
    pub(crate) out_dim: usize,
}

impl GpuLinear {
    /// `out[rows, out_dim] = x[rows, in] W^T + b`.
    pub(crate) fn forward(
        &self,
        c: &dyn Compute,
        x: GpuTensor,
        out: GpuTensor,
        rows: usize,
    ) -> Result<()> {
        ops::linear(c, x, self.weight, self.bias, out, rows)
    }
}

/// nn.LayerNorm on the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuLayerNorm {
    pub(crate) weight: GpuTensor,
    pub(crate) bias: GpuTensor,
    pub(crate) dim: usize,
    pub(crate) eps: f64,
}

impl GpuLayerNorm {
    pub(crate) fn forward(
        &self,
        c: &dyn Compute,
        x: GpuTensor,
        y: GpuTensor,
        layout: RowLayout,
    ) -> Result<()> {
        ops::layer_norm(c, x, self.weight, self.bias, y, layout, self.eps)
    }

    pub(crate) fn dense(
        &self,
        c: &dyn Compute,
        x: GpuTensor,
        y: GpuTensor,
        rows: usize,
    ) -> Result<()> {
        self.forward(c, x, y, RowLayout::dense(rows, self.dim))
    }
}

struct GpuEncoderLayer {
    layer_norm1: GpuLayerNorm,
    /// q, k and v projections fused into one `[3D, D]` weight (rows q, then k, then v), so the
    /// three run as one matrix product; attention then reads each head's q, k and v through
    /// strides into the `[rows, 3D]` result.
    qkv: GpuLinear,
    out_proj: GpuLinear,
    layer_norm2: GpuLayerNorm,
    fc1: GpuLinear,
    fc2: GpuLinear,
}

/// The attention mask of one encoder pass.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EncoderMask {
    pub(crate) causal: bool,
    /// `[batch, seq]` u32, zero at padding.
    pub(crate) key_padding: Option<GpuTensor>,
}

/// `CLIPEncoder` on the device.
pub(crate) struct GpuEncoder {
    layers: Vec<GpuEncoderLayer>,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    activation: Activation,
}

impl GpuEncoder {
    /// Uploads every layer of `enc`; `prefix` (e.g. `vision_model.encoder`) names weights in
    /// errors.
    pub(crate) fn upload(
        up: &mut Uploaded<'_>,
        prefix: &str,
        enc: &ClipEncoder,
        dims: &EncoderDims,
    ) -> Result<Self> {
        let layers = enc
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| upload_layer(up, &format!("{prefix}.layers.{i}"), l))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            hidden: dims.hidden_size,
            intermediate: dims.intermediate_size,
            heads: dims.num_heads,
            activation: dims.activation,
        })
    }

    /// The largest per-sequence element count of any activation a pass allocates, for `seq`
    /// tokens: what limits how many sequences fit one pass.
    pub(crate) fn elements_per_sequence(&self, seq: usize) -> usize {
        let d = self.hidden;
        (seq * 3 * d)
            .max(seq * self.intermediate)
            .max(self.heads * seq * seq)
    }

    /// Runs every layer in place on `x: [batch * seq, D]`, calling `on_layer` with `x` after
    /// each one.
    pub(crate) fn forward(
        &self,
        c: &dyn Compute,
        x: GpuTensor,
        batch: usize,
        seq: usize,
        mask: EncoderMask,
        mut on_layer: impl FnMut(GpuTensor) -> Result<()>,
    ) -> Result<()> {
        let (d, h) = (self.hidden, self.heads);
        let hd = d / h;
        let rows = batch * seq;
        let normed = GpuBuffer::zeros(c, &[rows, d])?;
        let qkv = GpuBuffer::zeros(c, &[rows, 3 * d])?;
        let scores = GpuBuffer::zeros(c, &[batch, h, seq, seq])?;
        let context = GpuBuffer::zeros(c, &[rows, d])?;
        let branch = GpuBuffer::zeros(c, &[rows, d])?;
        let mlp = GpuBuffer::zeros(c, &[rows, self.intermediate])?;
        // q is scaled after its projection, as transformers does; folding the scale into the
        // QK^T product changes nothing but rounding (and for power-of-two head widths not even
        // that).
        let scale = (hd as f32).powf(-0.5);
        // Batch z0 = sequence, z1 = head: Q_z = qkv[z0 * seq.., z1 * hd..], K_z the same at
        // column D, V_z at 2D; scores_z = scores[z0, z1]; context_z = context[z0 * seq.., z1 * hd..].
        let qk = Matmul {
            m: seq,
            n: seq,
            k: hd,
            batch0: batch,
            batch1: h,
            alpha: scale,
            a: Operand::batched(0, 3 * d, seq * 3 * d, hd),
            b: Operand::batched(d, 3 * d, seq * 3 * d, hd),
            b_transposed: true,
            c: Operand::batched(0, seq, h * seq * seq, seq * seq),
        };
        let pv = Matmul {
            m: seq,
            n: hd,
            k: seq,
            batch0: batch,
            batch1: h,
            alpha: 1.0,
            a: Operand::batched(0, seq, h * seq * seq, seq * seq),
            b: Operand::batched(2 * d, 3 * d, seq * 3 * d, hd),
            b_transposed: false,
            c: Operand::batched(0, d, seq * d, hd),
        };
        let softmax_mask = SoftmaxMask {
            causal: mask.causal,
            key_mask: mask.key_padding,
        };
        for layer in &self.layers {
            layer.layer_norm1.dense(c, x, normed.id(), rows)?;
            layer.qkv.forward(c, normed.id(), qkv.id(), rows)?;
            ops::matmul(c, qkv.id(), qkv.id(), None, scores.id(), &qk)?;
            ops::softmax_rows(c, scores.id(), batch * h * seq, seq, seq, h, softmax_mask)?;
            ops::matmul(c, scores.id(), qkv.id(), None, context.id(), &pv)?;
            layer.out_proj.forward(c, context.id(), branch.id(), rows)?;
            ops::add_inplace(c, x, branch.id(), rows * d)?;

            layer.layer_norm2.dense(c, x, normed.id(), rows)?;
            layer.fc1.forward(c, normed.id(), mlp.id(), rows)?;
            ops::activation(c, mlp.id(), rows * self.intermediate, self.activation)?;
            layer.fc2.forward(c, mlp.id(), branch.id(), rows)?;
            ops::add_inplace(c, x, branch.id(), rows * d)?;
            on_layer(x)?;
        }
        Ok(())
    }
}

fn upload_layer(
    up: &mut Uploaded<'_>,
    prefix: &str,
    l: &ClipEncoderLayer,
) -> Result<GpuEncoderLayer> {
    let [q, k, v, o] = l.self_attn().projections();
    let d = q.in_dim();
    let mut w = Vec::with_capacity(3 * d * d);
    let mut b = Vec::with_capacity(3 * d);
    for p in [q, k, v] {
        w.extend_from_slice(p.weight().data());
        b.extend_from_slice(p.bias().map_or(&[][..], |t| t.data()));
    }
    let attn = format!("{prefix}.self_attn");
    let qkv = GpuLinear {
        weight: up.raw(&format!("{attn}.{{q,k,v}}_proj.weight"), &[3 * d, d], &w)?,
        bias: Some(up.raw(&format!("{attn}.{{q,k,v}}_proj.bias"), &[3 * d], &b)?),
        out_dim: 3 * d,
    };
    let [ln1, ln2] = l.layer_norms();
    let [fc1, fc2] = l.mlp().layers();
    Ok(GpuEncoderLayer {
        layer_norm1: up.layer_norm(&format!("{prefix}.layer_norm1"), ln1)?,
        qkv,
        out_proj: up.linear(&format!("{attn}.out_proj"), o)?,
        layer_norm2: up.layer_norm(&format!("{prefix}.layer_norm2"), ln2)?,
        fc1: up.linear(&format!("{prefix}.mlp.fc1"), fc1)?,
        fc2: up.linear(&format!("{prefix}.mlp.fc2"), fc2)?,
    })
}
