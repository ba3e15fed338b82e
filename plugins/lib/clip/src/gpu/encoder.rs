//! The transformer encoder both towers share, written once over the op API
//! ([`Backend`]): weights uploaded once, a forward pass whose activations stay on the backend.

use crate::config::Activation;
use crate::encoder::{ClipEncoder, ClipEncoderLayer, EncoderDims};
use crate::error::Result;
use crate::gpu::backend::{
    load_linear, load_norm, upload_linear, upload_norm, AttentionShape, Backend, Epilogue, LinearW,
    NormW, WeightSource,
};
use fusion_kernels::nn::RowLayout;

struct EncoderLayer<B: Backend> {
    layer_norm1: NormW<B>,
    /// q, k and v projections fused into one `[3D, D]` weight (rows q, then k, then v), so the
    /// three run as one matrix product; attention then reads each head's q, k and v through
    /// strides into the `[rows, 3D]` result.
    qkv: LinearW<B>,
    out_proj: LinearW<B>,
    layer_norm2: NormW<B>,
    fc1: LinearW<B>,
    fc2: LinearW<B>,
}

/// The attention mask of one encoder pass.
pub(crate) struct EncoderMask<'m, B: Backend> {
    pub(crate) causal: bool,
    /// `[batch, seq]`, zero at padding.
    pub(crate) key_padding: Option<&'m B::Mask>,
}

/// `CLIPEncoder` on a backend.
pub(crate) struct Encoder<B: Backend> {
    layers: Vec<EncoderLayer<B>>,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    activation: Activation,
}

/// Uploads a layer norm in `[dim]` rows.
pub(crate) fn dense_norm<B: Backend>(
    b: &B,
    n: &NormW<B>,
    x: &B::Buf,
    y: &mut B::Buf,
    rows: usize,
) -> Result<()> {
    b.layer_norm(x, n, y, RowLayout::dense(rows, n.dim))
}

impl<B: Backend> Encoder<B> {
    /// Uploads every layer of `enc`; `prefix` (e.g. `vision_model.encoder`) names weights in
    /// errors.
    pub(crate) fn upload(
        b: &B,
        prefix: &str,
        enc: &ClipEncoder,
        dims: &EncoderDims,
    ) -> Result<Self> {
        let layers = enc
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| upload_layer(b, &format!("{prefix}.layers.{i}"), l))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            hidden: dims.hidden_size,
            intermediate: dims.intermediate_size,
            heads: dims.num_heads,
            activation: dims.activation,
        })
    }

    /// Loads every layer from `src` by name (`prefix`, e.g. `vision_model.encoder`, then
    /// `layers.{i}.…`), in the order [`ClipEncoder::load`] reads them.
    pub(crate) fn load(
        src: &impl WeightSource<B>,
        prefix: &str,
        dims: &EncoderDims,
    ) -> Result<Self> {
        let (d, eps) = (dims.hidden_size, dims.layer_norm_eps);
        let layers = (0..dims.num_layers)
            .map(|i| {
                let p = format!("{prefix}.layers.{i}");
                let attn = format!("{p}.self_attn");
                let (mut w, mut bias) = (Vec::with_capacity(3), Vec::with_capacity(3));
                for proj in ["q_proj", "k_proj", "v_proj"] {
                    w.push(src.get(&format!("{attn}.{proj}.weight"), &[d, d])?);
                    bias.push(src.get(&format!("{attn}.{proj}.bias"), &[d])?);
                }
                let qkv = LinearW {
                    weight: src.stack(&format!("{attn}.{{q,k,v}}_proj.weight"), w, &[3 * d, d])?,
                    bias: Some(src.stack(
                        &format!("{attn}.{{q,k,v}}_proj.bias"),
                        bias,
                        &[3 * d],
                    )?),
                    in_dim: d,
                    out_dim: 3 * d,
                };
                let out_proj = load_linear(src, &format!("{attn}.out_proj"), d, d)?;
                let layer_norm1 = load_norm(src, &format!("{p}.layer_norm1"), d, eps)?;
                let fc1 = load_linear(src, &format!("{p}.mlp.fc1"), d, dims.intermediate_size)?;
                let fc2 = load_linear(src, &format!("{p}.mlp.fc2"), dims.intermediate_size, d)?;
                let layer_norm2 = load_norm(src, &format!("{p}.layer_norm2"), d, eps)?;
                Ok(EncoderLayer {
                    layer_norm1,
                    qkv,
                    out_proj,
                    layer_norm2,
                    fc1,
                    fc2,
                })
            })
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
        b: &B,
        x: &mut B::Buf,
        batch: usize,
        seq: usize,
        mask: EncoderMask<'_, B>,
        mut on_layer: impl FnMut(&B::Buf) -> Result<()>,
    ) -> Result<()> {
        let (d, h) = (self.hidden, self.heads);
        let hd = d / h;
        let rows = batch * seq;
        let shape = AttentionShape {
            batch,
            seq,
            heads: h,
            head_dim: hd,
            // q is scaled after its projection, as transformers does; folding the scale into
            // the QK^T product changes nothing but rounding (and for power-of-two head widths
            // not even that).
            scale: (hd as f32).powf(-0.5),
            causal: mask.causal,
        };
        let mut normed = b.zeros(&[rows, d])?;
        let mut qkv = b.zeros(&[rows, 3 * d])?;
        let mut scratch = b.attention_scratch(&shape)?;
        let mut context = b.zeros(&[rows, d])?;
        let mut mlp = b.zeros(&[rows, self.intermediate])?;
        for layer in &self.layers {
            dense_norm(b, &layer.layer_norm1, x, &mut normed, rows)?;
            b.linear(&normed, &layer.qkv, &mut qkv, rows, Epilogue::None)?;
            b.attention(&qkv, &mut scratch, &mut context, &shape, mask.key_padding)?;
            b.linear(&context, &layer.out_proj, x, rows, Epilogue::Residual)?;

            dense_norm(b, &layer.layer_norm2, x, &mut normed, rows)?;
            let act = Epilogue::Activation(self.activation);
            b.linear(&normed, &layer.fc1, &mut mlp, rows, act)?;
            b.linear(&mlp, &layer.fc2, x, rows, Epilogue::Residual)?;
            on_layer(x)?;
        }
        Ok(())
    }
}

fn upload_layer<B: Backend>(b: &B, prefix: &str, l: &ClipEncoderLayer) -> Result<EncoderLayer<B>> {
    let [q, k, v, o] = l.self_attn().projections();
    let d = q.in_dim();
    let mut w = Vec::with_capacity(3 * d * d);
    let mut bias = Vec::with_capacity(3 * d);
    for p in [q, k, v] {
        w.extend_from_slice(p.weight().data());
        bias.extend_from_slice(p.bias().map_or(&[][..], |t| t.data()));
    }
    let attn = format!("{prefix}.self_attn");
    let qkv = LinearW {
        weight: b.upload(&format!("{attn}.{{q,k,v}}_proj.weight"), &[3 * d, d], &w)?,
        bias: Some(b.upload(&format!("{attn}.{{q,k,v}}_proj.bias"), &[3 * d], &bias)?),
        in_dim: d,
        out_dim: 3 * d,
    };
    let [ln1, ln2] = l.layer_norms();
    let [fc1, fc2] = l.mlp().layers();
    Ok(EncoderLayer {
        layer_norm1: upload_norm(b, &format!("{prefix}.layer_norm1"), ln1)?,
        qkv,
        out_proj: upload_linear(b, &format!("{attn}.out_proj"), o)?,
        layer_norm2: upload_norm(b, &format!("{prefix}.layer_norm2"), ln2)?,
        fc1: upload_linear(b, &format!("{prefix}.mlp.fc1"), fc1)?,
        fc2: upload_linear(b, &format!("{prefix}.mlp.fc2"), fc2)?,
    })
}
