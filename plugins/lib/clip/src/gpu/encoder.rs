//! The transformer encoder both towers share, written once over the op API ([`Backend`]):
//! pre-LN residual blocks (`x + out_proj(attention(ln1(x)))`, then `x + fc2(act(fc1(ln2(x))))`),
//! weights loaded once, a forward pass whose activations stay on the backend.

use crate::arch::{EncoderDims, LayerParams, LinearParams};
use crate::error::Result;
use crate::gpu::backend::{Backend, Epilogue, LinearW, NormW, WeightSource};
use crate::gpu::moe::LayerMoe;
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
    /// SMILE mixture-of-experts linears of an upscaled model (none for a plain layer).
    moe: LayerMoe,
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
    dims: EncoderDims,
}

/// Layer norm `n` over `rows` dense rows of `x` into `y`.
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
    /// The encoder of `layers` (loaded through the parameter table, [`LayerParams`]), with
    /// each layer's q, k and v projections fused through `src`; `prefix` (e.g.
    /// `vision_model.encoder`) names the fused weights in errors.
    pub(crate) fn new(
        src: &impl WeightSource<B>,
        prefix: &str,
        layers: Vec<LayerParams<B::Buf>>,
        dims: &EncoderDims,
    ) -> Result<Self> {
        let (d, inter, eps) = (
            dims.hidden_size,
            dims.intermediate_size,
            dims.layer_norm_eps,
        );
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let attn = format!("{prefix}.layers.{i}.self_attn");
                let [q, k, v] = [l.q_proj, l.k_proj, l.v_proj];
                let qkv = LinearParams {
                    weight: src.stack(
                        &format!("{attn}.{{q,k,v}}_proj.weight"),
                        vec![q.weight, k.weight, v.weight],
                        &[3 * d, d],
                    )?,
                    bias: src.stack(
                        &format!("{attn}.{{q,k,v}}_proj.bias"),
                        vec![q.bias, k.bias, v.bias],
                        &[3 * d],
                    )?,
                };
                Ok(EncoderLayer {
                    layer_norm1: NormW::new(l.layer_norm1, d, eps),
                    qkv: LinearW::new(qkv, d, 3 * d),
                    out_proj: LinearW::new(l.out_proj, d, d),
                    layer_norm2: NormW::new(l.layer_norm2, d, eps),
                    fc1: LinearW::new(l.fc1, d, inter),
                    fc2: LinearW::new(l.fc2, inter, d),
                    moe: LayerMoe::load(src.store(), &format!("{prefix}.layers.{i}"), d, inter)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            dims: *dims,
        })
    }

    /// The largest per-sequence element count of any activation a pass allocates, for `seq`
    /// tokens: what limits how many sequences fit one pass.
    pub(crate) fn elements_per_sequence(&self, seq: usize) -> usize {
        let d = self.dims.hidden_size;
        (seq * 3 * d)
            .max(seq * self.dims.intermediate_size)
            .max(self.dims.num_heads * seq * seq)
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
        let d = self.dims.hidden_size;
        let rows = batch * seq;
        // q is scaled after its projection, as transformers does; folding the scale into the
        // QK^T product changes nothing but rounding (and for power-of-two head widths not even
        // that).
        let shape = self.dims.attention(batch, seq, mask.causal);
        let mut normed = b.zeros(&[rows, d])?;
        let mut qkv = b.zeros(&[rows, 3 * d])?;
        let mut scratch = b.attention_scratch(&shape)?;
        let mut context = b.zeros(&[rows, d])?;
        let mut mlp = b.zeros(&[rows, self.dims.intermediate_size])?;
        for layer in &self.layers {
            dense_norm(b, &layer.layer_norm1, x, &mut normed, rows)?;
            b.linear(&normed, &layer.qkv, &mut qkv, rows, Epilogue::None)?;
            layer.moe.after_qkv(b, &normed, &mut qkv, rows)?;
            b.attention(&qkv, &mut scratch, &mut context, &shape, mask.key_padding)?;
            b.linear(&context, &layer.out_proj, x, rows, Epilogue::Residual)?;
            layer.moe.after_out_proj(b, &context, x, rows)?;

            dense_norm(b, &layer.layer_norm2, x, &mut normed, rows)?;
            let act = layer.moe.fc1_epilogue(self.dims.activation);
            b.linear(&normed, &layer.fc1, &mut mlp, rows, act)?;
            layer
                .moe
                .after_fc1(b, &normed, &mut mlp, rows, self.dims.activation)?;
            b.linear(&mlp, &layer.fc2, x, rows, Epilogue::Residual)?;
            layer.moe.after_fc2(b, &mlp, x, rows)?;
            on_layer(x)?;
        }
        Ok(())
    }
}
