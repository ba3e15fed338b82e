//! The text tower: `CLIPTextEmbeddings` and `CLIPTextTransformer` of transformers'
//! `modeling_clip.py`, weights under `text_model.`.

use crate::config::ClipTextConfig;
use crate::encoder::{AttentionMask, ClipEncoder, EncoderDims};
use crate::error::{ClipError, Result};
use crate::nn::{Embedding, LayerNorm};
use crate::tensor::Tensor;

use crate::weights::VarBuilder;

/// A batch of token sequences of equal length: the text tower's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[batch, seq]` token ids, row-major.
    pub input_ids: Vec<u32>,
    /// `[batch, seq]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Number of sequences.
    pub batch_size: usize,
    /// Length of every sequence.
    pub seq_len: usize,
}

impl TokenBatch {
    /// Builds a batch, checking that both buffers hold `batch_size * seq_len` values.
    pub fn new(
        input_ids: Vec<u32>,
        attention_mask: Vec<u32>,
        batch_size: usize,
        seq_len: usize,
    ) -> Result<Self> {
        let n = batch_size * seq_len;
        if input_ids.len() != n || attention_mask.len() != n {
            return Err(ClipError::input(
                "TokenBatch::new",
                format!(
                    "{} input ids and {} mask values for a batch of {batch_size}x{seq_len}",
                    input_ids.len(),
                    attention_mask.len()
                ),
            ));
        }
        Ok(Self {
            input_ids,
            attention_mask,
            batch_size,
            seq_len,
        })
    }

    /// The ids of sequence `b`.
    pub fn ids(&self, b: usize) -> &[u32] {
        &self.input_ids[b * self.seq_len..(b + 1) * self.seq_len]
    }

    /// The mask of sequence `b`.
    pub fn mask(&self, b: usize) -> &[u32] {
        &self.attention_mask[b * self.seq_len..(b + 1) * self.seq_len]
    }
}

/// Token and position embeddings (`CLIPTextEmbeddings`).
#[derive(Clone, Debug)]
pub struct ClipTextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    /// Loads `token_embedding.weight` and `position_embedding.weight`.
    pub fn load(vb: &VarBuilder<'_>, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.max_position_embeddings);
        // A persisted `arange` buffer in older checkpoints: accepted, recomputed.
        vb.skip_buffer("position_ids", &[1, p])?;
        Ok(Self {
            token_embedding: Embedding::load(&vb.pp("token_embedding"), cfg.vocab_size, d)?,
            position_embedding: Embedding::load(&vb.pp("position_embedding"), p, d)?,
        })
    }

    /// The token embeddings, `[vocab_size, D]`.
    pub fn token_embedding(&self) -> &Embedding {
        &self.token_embedding
    }

    /// The position embeddings, `[max_position_embeddings, D]`.
    pub fn position_embedding(&self) -> &Embedding {
        &self.position_embedding
    }

    /// `[batch, seq]` ids to `[batch, seq, D]`, positions `0..seq`.
    pub fn forward(&self, tokens: &TokenBatch) -> Result<Tensor> {
        let (batch, seq, d) = (
            tokens.batch_size,
            tokens.seq_len,
            self.token_embedding.dim(),
        );
        if seq > self.position_embedding.len() {
            return Err(ClipError::input(
                "ClipTextEmbeddings::forward",
                format!(
                    "sequence length {seq} exceeds max_position_embeddings {}",
                    self.position_embedding.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(batch * seq * d);
        for (i, &id) in tokens.input_ids.iter().enumerate() {
            let tok = self.token_embedding.row(id as usize).map_err(|_| {
                ClipError::input(
                    "ClipTextEmbeddings::forward",
                    format!(
                        "token id {id} out of range for vocab_size {}",
                        self.token_embedding.len()
                    ),
                )
            })?;
            let pos = self.position_embedding.row(i % seq)?;
            out.extend(tok.iter().zip(pos).map(|(t, p)| t + p));
        }
        Tensor::new(vec![batch, seq, d], out)
    }
}

/// What [`ClipTextTransformer::forward`] returns (`BaseModelOutputWithPooling`).
#[derive(Clone, Debug)]
pub struct TextOutput {
    /// `final_layer_norm` of the last encoder layer's output, `[batch, seq, D]`.
    pub last_hidden_state: Tensor,
    /// The row of `last_hidden_state` at each sequence's end-of-text token, `[batch, D]`.
    pub pooler_output: Tensor,
}

/// The text transformer (`CLIPTextTransformer`), weights under `text_model.`.
#[derive(Clone, Debug)]
pub struct ClipTextTransformer {
    config: ClipTextConfig,
    embeddings: ClipTextEmbeddings,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    /// Loads the tower from `vb`, which points at its root (usually `text_model`).
    pub fn load(vb: &VarBuilder<'_>, cfg: &ClipTextConfig) -> Result<Self> {
        let dims = EncoderDims {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_attention_heads,
            num_layers: cfg.num_hidden_layers,
            activation: cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            config: cfg.clone(),
            embeddings: ClipTextEmbeddings::load(&vb.pp("embeddings"), cfg)?,
            encoder: ClipEncoder::load(&vb.pp("encoder"), &dims)?,
            final_layer_norm: LayerNorm::load(
                &vb.pp("final_layer_norm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// The configuration the tower was loaded with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The embeddings.
    pub fn embeddings(&self) -> &ClipTextEmbeddings {
        &self.embeddings
    }

    /// The encoder.
    pub fn encoder(&self) -> &ClipEncoder {
        &self.encoder
    }

    /// The final layer norm.
    pub fn final_layer_norm(&self) -> &LayerNorm {
        &self.final_layer_norm
    }

    /// Runs the tower. Attention is causal, and padded keys (mask 0) are hidden as well: that
    /// changes only the outputs at padded positions, but transformers does it, so
    /// `last_hidden_state` matches there too.
    pub fn forward(&self, tokens: &TokenBatch) -> Result<TextOutput> {
        let x = self.embeddings.forward(tokens)?;
        let mask = AttentionMask {
            causal: true,
            key_padding: Some(&tokens.attention_mask),
        };
        let enc = self.encoder.forward(x, mask, false)?;
        let last = self.final_layer_norm.forward(&enc.last_hidden_state)?;
        let d = last.last_dim();
        let mut pooled = Vec::with_capacity(tokens.batch_size * d);
        for b in 0..tokens.batch_size {
            let pos = self.pooling_position(tokens.ids(b));
            let row = (b * tokens.seq_len + pos) * d;
            pooled.extend_from_slice(&last.data()[row..row + d]);
        }
        Ok(TextOutput {
            pooler_output: Tensor::new(vec![tokens.batch_size, d], pooled)?,
            last_hidden_state: last,
        })
    }

    /// Where the sequence is pooled, exactly as transformers picks it: with the legacy
    /// `eos_token_id == 2` (configs written before transformers PR #24773; also when the
    /// config has `eos_token_id: null`) the first position
    /// of the largest id (`<|endoftext|>` has the largest id of CLIP's vocabulary); otherwise
    /// the first position equal to `eos_token_id`, or 0 when there is none (torch's argmax of an
    /// all-zero row).
    pub(crate) fn pooling_position(&self, ids: &[u32]) -> usize {
        pooling_position(self.config.eos_token_id, ids)
    }
}

/// See [`ClipTextTransformer::pooling_position`]; shared with the GPU tower.
pub(crate) fn pooling_position(eos_token_id: Option<i64>, ids: &[u32]) -> usize {
    match eos_token_id {
        Some(2) | None => first_argmax(ids.iter().copied()),
        Some(eos) => ids.iter().position(|&id| i64::from(id) == eos).unwrap_or(0),
    }
}

/// Index of the first maximum (torch's `argmax` tie rule).
fn first_argmax(values: impl Iterator<Item = u32>) -> usize {
    let mut best: Option<(usize, u32)> = None;
    for (i, v) in values.enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::first_argmax;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(first_argmax([1u32, 5, 3, 5].into_iter()), 1);
        assert_eq!(first_argmax(std::iter::empty()), 0);
    }
}
