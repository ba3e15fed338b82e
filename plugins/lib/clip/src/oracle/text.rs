//! The text tower: `CLIPTextEmbeddings` and `CLIPTextTransformer` of transformers'
//! `modeling_clip.py`, weights under `text_model.`.

use super::encoder::{AttentionMask, ClipEncoder};
use super::nn::{Embedding, LayerNorm};
use crate::arch::{pooling_position, EncoderDims};
use crate::config::ClipTextConfig;
use crate::error::{ClipError, Result};
use crate::output::TextOutput;
use crate::tensor::Tensor;
use crate::tokenizer::TokenBatch;

use crate::weights::VarBuilder;

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
        let dims = EncoderDims::from(cfg);
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
            let pos = pooling_position(self.config.eos_token_id, tokens.ids(b));
            let row = (b * tokens.seq_len + pos) * d;
            pooled.extend_from_slice(&last.data()[row..row + d]);
        }
        Ok(TextOutput {
            pooler_output: Tensor::new(vec![tokens.batch_size, d], pooled)?,
            last_hidden_state: last,
        })
    }
}
