//! The text tower on the GPU (`CLIPTextTransformer`).

use fusion_plugin_api::{Compute, GpuTensor};

use crate::config::ClipTextConfig;
use crate::encoder::EncoderDims;
use crate::error::{ClipError, Result};
use crate::gpu::encoder::{EncoderMask, GpuEncoder, GpuLayerNorm, Uploaded};
use crate::gpu::ops::{self, GpuBuffer};
use crate::gpu::vision::{max_items, passes};
use crate::tensor::Tensor;
use crate::text::{pooling_position, ClipTextTransformer, TextOutput, TokenBatch};

/// A CLIP text tower whose weights live on the compute device. Built from a CPU tower with
/// [`GpuClipText::from_cpu`], or as part of a [`crate::gpu::GpuClipModel`].
pub struct GpuClipText<'c> {
    c: &'c dyn Compute,
    config: ClipTextConfig,
    /// Owns (and on drop releases) every tensor below.
    _weights: Uploaded<'c>,
    token_embedding: GpuTensor,
    position_embedding: GpuTensor,
    encoder: GpuEncoder,
    final_layer_norm: GpuLayerNorm,
}

/// What one pass over a slice of the batch produced on the device.
pub(crate) struct TextPass<'c> {
    /// `final_layer_norm` of each sequence's pooled token, `[batch, D]`.
    pub(crate) pooled: GpuBuffer<'c>,
    /// With `full`: `final_layer_norm` of every token, `[batch, seq, D]`.
    pub(crate) last: Option<GpuBuffer<'c>>,
}

impl<'c> GpuClipText<'c> {
    /// Uploads the weights of a CPU tower.
    pub fn from_cpu(c: &'c dyn Compute, tower: &ClipTextTransformer) -> Result<Self> {
        let cfg = tower.config().clone();
        let mut up = Uploaded::new(c);
        let e = tower.embeddings();
        let token_embedding = up.tensor(
            "text_model.embeddings.token_embedding.weight",
            e.token_embedding().weight(),
        )?;
        let position_embedding = up.tensor(
            "text_model.embeddings.position_embedding.weight",
            e.position_embedding().weight(),
        )?;
        let dims = EncoderDims {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_attention_heads,
            num_layers: cfg.num_hidden_layers,
            activation: cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
        };
        let encoder = GpuEncoder::upload(&mut up, "text_model.encoder", tower.encoder(), &dims)?;
        let final_layer_norm =
            up.layer_norm("text_model.final_layer_norm", tower.final_layer_norm())?;
        Ok(Self {
            c,
            config: cfg,
            _weights: up,
            token_embedding,
            position_embedding,
            encoder,
            final_layer_norm,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The most sequences of length `seq` one pass can take (every activation must fit one
    /// storage binding); larger batches are split into passes of this size.
    pub fn max_batch(&self, seq: usize) -> Result<usize> {
        let per_seq = self
            .encoder
            .elements_per_sequence(seq)
            .max(seq * self.config.hidden_size);
        max_items(self.c, "GpuClipText", per_seq as u64, "sequence")
    }

    /// Runs the tower, reading back the last hidden state and the pooled output (as
    /// [`ClipTextTransformer::forward`]).
    pub fn forward(&self, tokens: &TokenBatch) -> Result<TextOutput> {
        self.check_tokens(tokens)?;
        let (batch, seq, d) = (tokens.batch_size, tokens.seq_len, self.config.hidden_size);
        let mut last = Vec::with_capacity(batch * seq * d);
        let mut pooled = Vec::with_capacity(batch * d);
        for (start, len) in passes(batch, self.max_batch(seq)?) {
            let pass = self.run(tokens, start, len, true)?;
            pooled.extend(pass.pooled.to_vec()?);
            if let Some(l) = pass.last {
                last.extend(l.to_vec()?);
            }
        }
        Ok(TextOutput {
            last_hidden_state: Tensor::new(vec![batch, seq, d], last)?,
            pooler_output: Tensor::new(vec![batch, d], pooled)?,
        })
    }

    /// The pooled output only, `[batch, D]`.
    pub fn pooled(&self, tokens: &TokenBatch) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        let (batch, seq, d) = (tokens.batch_size, tokens.seq_len, self.config.hidden_size);
        let mut pooled = Vec::with_capacity(batch * d);
        for (start, len) in passes(batch, self.max_batch(seq)?) {
            pooled.extend(self.run(tokens, start, len, false)?.pooled.to_vec()?);
        }
        Tensor::new(vec![batch, d], pooled)
    }

    /// Fails on a sequence longer than the position table or a token id outside the vocabulary
    /// (the kernel would clamp it silently).
    pub(crate) fn check_tokens(&self, tokens: &TokenBatch) -> Result<()> {
        let max_pos = self.config.max_position_embeddings;
        if tokens.seq_len > max_pos {
            return Err(ClipError::input(
                "GpuClipText::forward",
                format!(
                    "sequence length {} exceeds max_position_embeddings {max_pos}",
                    tokens.seq_len
                ),
            ));
        }
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ClipError::input(
                "GpuClipText::forward",
                format!("token id {id} out of range for vocab_size {vocab}"),
            ));
        }
        Ok(())
    }

    /// One pass over sequences `start..start + len`. With `full`, `final_layer_norm` runs on every
    /// token (for `last_hidden_state`); otherwise only on the pooled tokens, which gives the same
    /// pooled values because layer norm works row by row.
    pub(crate) fn run(
        &self,
        tokens: &TokenBatch,
        start: usize,
        len: usize,
        full: bool,
    ) -> Result<TextPass<'c>> {
        let c = self.c;
        let (seq, d) = (tokens.seq_len, self.config.hidden_size);
        let rows = len * seq;
        let span = start * seq..(start + len) * seq;
        let ids = GpuBuffer::from_u32(c, &[len, seq], &tokens.input_ids[span.clone()])?;
        let mask = GpuBuffer::from_u32(c, &[len, seq], &tokens.attention_mask[span])?;
        let x = GpuBuffer::zeros(c, &[len, seq, d])?;
        ops::token_position_embed(
            c,
            self.token_embedding,
            ids.id(),
            self.position_embedding,
            x.id(),
            rows,
            seq,
        )?;
        drop(ids);
        // Causal, and padded keys hidden too, as transformers does (see
        // ClipTextTransformer::forward).
        let encoder_mask = EncoderMask {
            causal: true,
            key_padding: Some(mask.id()),
        };
        self.encoder
            .forward(c, x.id(), len, seq, encoder_mask, |_| Ok(()))?;
        drop(mask);

        let positions: Vec<u32> = (start..start + len)
            .enumerate()
            .map(|(i, b)| {
                (i * seq + pooling_position(self.config.eos_token_id, tokens.ids(b))) as u32
            })
            .collect();
        let positions = GpuBuffer::from_u32(c, &[len], &positions)?;
        let pooled = GpuBuffer::zeros(c, &[len, d])?;
        if full {
            let last = GpuBuffer::zeros(c, &[len, seq, d])?;
            self.final_layer_norm.dense(c, x.id(), last.id(), rows)?;
            ops::gather_rows(c, last.id(), positions.id(), pooled.id(), len)?;
            Ok(TextPass {
                pooled,
                last: Some(last),
            })
        } else {
            let picked = GpuBuffer::zeros(c, &[len, d])?;
            ops::gather_rows(c, x.id(), positions.id(), picked.id(), len)?;
            self.final_layer_norm
                .dense(c, picked.id(), pooled.id(), len)?;
            Ok(TextPass { pooled, last: None })
        }
    }
}
