//! The transformer encoder both towers share: `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`
//! and `CLIPEncoder` of transformers' `modeling_clip.py`, with the same weight names.

use super::nn::{LayerNorm, Linear};
use crate::arch::EncoderDims;
use crate::config::Activation;
use crate::error::{ClipError, Result};
use crate::tensor::{dot, par_rows, softmax_in_place, Tensor};
use crate::weights::VarBuilder;

/// Which keys each query may attend to.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMask<'a> {
    /// Query `i` sees keys `j <= i` only (the text tower).
    pub causal: bool,
    /// `[batch, seq]`, non-zero where the key is a real token, zero where it is padding.
    pub key_padding: Option<&'a [u32]>,
}

/// Multi-head self-attention (`CLIPAttention`).
#[derive(Clone, Debug)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    /// Loads `{q,k,v,out}_proj.{weight,bias}`.
    pub fn load(vb: &VarBuilder<'_>, dims: &EncoderDims) -> Result<Self> {
        let d = dims.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), d, d)?,
            k_proj: Linear::load(&vb.pp("k_proj"), d, d)?,
            v_proj: Linear::load(&vb.pp("v_proj"), d, d)?,
            out_proj: Linear::load(&vb.pp("out_proj"), d, d)?,
            num_heads: dims.num_heads,
            head_dim: d / dims.num_heads,
        })
    }

    /// The query, key, value and output projections, in that order.
    pub fn projections(&self) -> [&Linear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj]
    }

    /// `x: [batch, seq, hidden]` to `[batch, seq, hidden]`.
    pub fn forward(&self, x: &Tensor, mask: AttentionMask<'_>) -> Result<Tensor> {
        let &[batch, seq, hidden] = x.shape() else {
            return Err(ClipError::input(
                "ClipAttention::forward",
                format!("expected [batch, seq, hidden], got {:?}", x.shape()),
            ));
        };
        if let Some(kp) = mask.key_padding {
            if kp.len() != batch * seq {
                return Err(ClipError::input(
                    "ClipAttention::forward",
                    format!(
                        "attention mask has {} entries, expected {batch}x{seq}",
                        kp.len()
                    ),
                ));
            }
        }
        // q is scaled after its projection (bias included), as transformers does.
        let scale = (self.head_dim as f32).powf(-0.5);
        let mut q = self.q_proj.forward(x)?;
        q.data_mut().iter_mut().for_each(|v| *v *= scale);
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let (q, k, v) = (q.data(), k.data(), v.data());
        let hd = self.head_dim;

        let mut context = vec![0.0f32; batch * seq * hidden];
        // One output row per (batch, query position), all heads at once.
        par_rows(&mut context, hidden, |row, out| {
            let (b, i) = (row / seq, row % seq);
            let mut scores = vec![0.0f32; seq];
            for h in 0..self.num_heads {
                let qi = &q[row * hidden + h * hd..][..hd];
                for (j, s) in scores.iter_mut().enumerate() {
                    let kj = &k[(b * seq + j) * hidden + h * hd..][..hd];
                    let masked = (mask.causal && j > i)
                        || mask.key_padding.is_some_and(|kp| kp[b * seq + j] == 0);
                    // An additive minimum rather than -inf, like transformers' eager path, so a
                    // row whose keys are all masked degrades to uniform weights, not NaN.
                    *s = dot(qi, kj) + if masked { f32::MIN } else { 0.0 };
                }
                softmax_in_place(&mut scores);
                let oh = &mut out[h * hd..(h + 1) * hd];
                for (j, &p) in scores.iter().enumerate() {
                    let vj = &v[(b * seq + j) * hidden + h * hd..][..hd];
                    oh.iter_mut().zip(vj).for_each(|(o, vv)| *o += p * vv);
                }
            }
        });
        let context = Tensor::new(vec![batch, seq, hidden], context)?;
        self.out_proj.forward(&context)
    }
}

/// The feed-forward block (`CLIPMLP`): `fc2(act(fc1(x)))`.
#[derive(Clone, Debug)]
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl ClipMlp {
    /// Loads `fc1` and `fc2`.
    pub fn load(vb: &VarBuilder<'_>, dims: &EncoderDims) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("fc1"), dims.hidden_size, dims.intermediate_size)?,
            fc2: Linear::load(&vb.pp("fc2"), dims.intermediate_size, dims.hidden_size)?,
            activation: dims.activation,
        })
    }

    /// `fc1`, `fc2`.
    pub fn layers(&self) -> [&Linear; 2] {
        [&self.fc1, &self.fc2]
    }

    /// The activation between them.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// `[..., hidden]` to `[..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.fc1.forward(x)?;
        let act = self.activation;
        h.data_mut().iter_mut().for_each(|v| *v = act.apply(*v));
        self.fc2.forward(&h)
    }
}

/// One pre-LN transformer block (`CLIPEncoderLayer`):
/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Clone, Debug)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// Loads `self_attn`, `layer_norm1`, `mlp`, `layer_norm2`.
    pub fn load(vb: &VarBuilder<'_>, dims: &EncoderDims) -> Result<Self> {
        Ok(Self {
            self_attn: ClipAttention::load(&vb.pp("self_attn"), dims)?,
            layer_norm1: LayerNorm::load(
                &vb.pp("layer_norm1"),
                dims.hidden_size,
                dims.layer_norm_eps,
            )?,
            mlp: ClipMlp::load(&vb.pp("mlp"), dims)?,
            layer_norm2: LayerNorm::load(
                &vb.pp("layer_norm2"),
                dims.hidden_size,
                dims.layer_norm_eps,
            )?,
        })
    }

    /// The attention block.
    pub fn self_attn(&self) -> &ClipAttention {
        &self.self_attn
    }

    /// The MLP block.
    pub fn mlp(&self) -> &ClipMlp {
        &self.mlp
    }

    /// The layer norms before attention and before the MLP.
    pub fn layer_norms(&self) -> [&LayerNorm; 2] {
        [&self.layer_norm1, &self.layer_norm2]
    }

    /// `[batch, seq, hidden]` to `[batch, seq, hidden]`.
    pub fn forward(&self, x: &Tensor, mask: AttentionMask<'_>) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = add(x, &attn);
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        Ok(add(&x, &mlp))
    }
}

/// The stack of layers (`CLIPEncoder`).
#[derive(Clone, Debug)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

/// What [`ClipEncoder::forward`] returns.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// Output of the last layer.
    pub last_hidden_state: Tensor,
    /// When requested: the encoder input, then the output of each layer (`num_layers + 1`
    /// tensors), as transformers' `output_hidden_states=True`.
    pub hidden_states: Option<Vec<Tensor>>,
}

impl ClipEncoder {
    /// Loads `layers.{0..num_layers}`.
    pub fn load(vb: &VarBuilder<'_>, dims: &EncoderDims) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..dims.num_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp(i), dims))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The layers.
    pub fn layers(&self) -> &[ClipEncoderLayer] {
        &self.layers
    }

    /// Runs every layer on `x: [batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor,
        mask: AttentionMask<'_>,
        output_hidden_states: bool,
    ) -> Result<EncoderOutput> {
        let mut hidden_states = output_hidden_states.then(|| vec![x.clone()]);
        let mut h = x;
        for layer in &self.layers {
            h = layer.forward(&h, mask)?;
            if let Some(states) = hidden_states.as_mut() {
                states.push(h.clone());
            }
        }
        Ok(EncoderOutput {
            last_hidden_state: h,
            hidden_states,
        })
    }
}

fn add(a: &Tensor, b: &Tensor) -> Tensor {
    let mut out = a.clone();
    out.data_mut()
        .iter_mut()
        .zip(b.data())
        .for_each(|(x, y)| *x += y);
    out
}
