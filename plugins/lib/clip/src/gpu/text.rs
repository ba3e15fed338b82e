//! The text tower (`CLIPTextTransformer`), written once over the op API; the public type holds
//! it on the backend [`BackendChoice`] picks for the compute handle.

use fusion_plugin_api::Compute;

use crate::config::ClipTextConfig;
use crate::encoder::EncoderDims;
use crate::error::{ClipError, Result};
use crate::gpu::backend::{
    upload_norm, upload_tensor, Backend, BackendChoice, BackendKind, NormW, Wgsl,
};
use crate::gpu::encoder::{dense_norm, Encoder, EncoderMask};
use crate::gpu::native::Native;
use crate::gpu::vision::passes;
use crate::tensor::Tensor;
use crate::text::{pooling_position, ClipTextTransformer, TextOutput, TokenBatch};

/// A CLIP text tower whose weights live on the compute device (or in host memory for the
/// native path). Built from a CPU tower with [`GpuClipText::from_cpu`], or as part of a
/// [`crate::gpu::GpuClipModel`].
pub struct GpuClipText<'c> {
    config: ClipTextConfig,
    engine: TextEngine<'c>,
}

enum TextEngine<'c> {
    Wgsl(Wgsl<'c>, TextTower<Wgsl<'c>>),
    Native(Native, TextTower<Native>),
}

macro_rules! with_tower {
    ($engine:expr, |$b:ident, $t:ident| $body:expr) => {
        match $engine {
            TextEngine::Wgsl($b, $t) => $body,
            TextEngine::Native($b, $t) => $body,
        }
    };
}

struct TextTower<B: Backend> {
    config: ClipTextConfig,
    token_embedding: B::Buf,
    position_embedding: B::Buf,
    encoder: Encoder<B>,
    final_layer_norm: NormW<B>,
}

/// What one pass over a slice of the batch produced, read back.
pub(crate) struct TextPass {
    /// `final_layer_norm` of each sequence's pooled token, `[batch, D]`.
    pub(crate) pooled: Vec<f32>,
    /// With `full`: `final_layer_norm` of every token, `[batch, seq, D]`.
    pub(crate) last: Option<Vec<f32>>,
}

impl<B: Backend> TextTower<B> {
    fn upload(b: &B, tower: &ClipTextTransformer) -> Result<Self> {
        let cfg = tower.config().clone();
        let e = tower.embeddings();
        let dims = EncoderDims {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_attention_heads,
            num_layers: cfg.num_hidden_layers,
            activation: cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            token_embedding: upload_tensor(
                b,
                "text_model.embeddings.token_embedding.weight",
                e.token_embedding().weight(),
            )?,
            position_embedding: upload_tensor(
                b,
                "text_model.embeddings.position_embedding.weight",
                e.position_embedding().weight(),
            )?,
            encoder: Encoder::upload(b, "text_model.encoder", tower.encoder(), &dims)?,
            final_layer_norm: upload_norm(
                b,
                "text_model.final_layer_norm",
                tower.final_layer_norm(),
            )?,
            config: cfg,
        })
    }

    fn max_batch(&self, b: &B, seq: usize) -> Result<usize> {
        let per_seq = self
            .encoder
            .elements_per_sequence(seq)
            .max(seq * self.config.hidden_size);
        b.max_items("GpuClipText", per_seq as u64, "sequence")
    }

    fn run(
        &self,
        b: &B,
        tokens: &TokenBatch,
        (start, len): (usize, usize),
        full: bool,
    ) -> Result<TextPass> {
        let (seq, d) = (tokens.seq_len, self.config.hidden_size);
        let rows = len * seq;
        let span = start * seq..(start + len) * seq;
        let mask = b.upload_mask(&[len, seq], &tokens.attention_mask[span.clone()])?;
        let mut x = b.zeros(&[len, seq, d])?;
        b.token_embed(
            &tokens.input_ids[span],
            &self.token_embedding,
            &self.position_embedding,
            &mut x,
            seq,
        )?;
        // Causal, and padded keys hidden too, as transformers does (see
        // ClipTextTransformer::forward).
        let encoder_mask = EncoderMask {
            causal: true,
            key_padding: Some(&mask),
        };
        self.encoder
            .forward(b, &mut x, len, seq, encoder_mask, |_| Ok(()))?;
        drop(mask);

        let positions: Vec<u32> = (start..start + len)
            .enumerate()
            .map(|(i, s)| {
                (i * seq + pooling_position(self.config.eos_token_id, tokens.ids(s))) as u32
            })
            .collect();
        let mut pooled = b.zeros(&[len, d])?;
        if full {
            let mut last = b.zeros(&[len, seq, d])?;
            dense_norm(b, &self.final_layer_norm, &x, &mut last, rows)?;
            b.gather_rows(&last, &positions, &mut pooled, d)?;
            Ok(TextPass {
                pooled: b.read(&pooled)?,
                last: Some(b.read(&last)?),
            })
        } else {
            let mut picked = b.zeros(&[len, d])?;
            b.gather_rows(&x, &positions, &mut picked, d)?;
            dense_norm(b, &self.final_layer_norm, &picked, &mut pooled, len)?;
            Ok(TextPass {
                pooled: b.read(&pooled)?,
                last: None,
            })
        }
    }
}

impl<'c> GpuClipText<'c> {
    /// Uploads the weights of a CPU tower.
    pub fn from_cpu(c: &'c dyn Compute, tower: &ClipTextTransformer) -> Result<Self> {
        Self::from_cpu_with(c, tower, BackendChoice::Auto)
    }

    /// [`GpuClipText::from_cpu`] on the backend `choice` names.
    pub fn from_cpu_with(
        c: &'c dyn Compute,
        tower: &ClipTextTransformer,
        choice: BackendChoice,
    ) -> Result<Self> {
        let engine = match choice.resolve(c)? {
            BackendKind::Wgsl => {
                let b = Wgsl { c };
                TextEngine::Wgsl(b, TextTower::upload(&b, tower)?)
            }
            BackendKind::Native => TextEngine::Native(Native, TextTower::upload(&Native, tower)?),
        };
        Ok(Self {
            config: tower.config().clone(),
            engine,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The backend the tower runs on (`"wgsl"` or `"native"`).
    pub fn backend(&self) -> &'static str {
        with_tower!(&self.engine, |b, _t| b.label())
    }

    /// The most sequences of `seq` tokens one pass can take (see
    /// [`GpuClipVision::max_batch`](crate::gpu::GpuClipVision::max_batch)).
    pub fn max_batch(&self, seq: usize) -> Result<usize> {
        with_tower!(&self.engine, |b, t| t.max_batch(b, seq))
    }

    /// Runs the tower on a token batch, reading back the last hidden state and the pooled
    /// output.
    pub fn forward(&self, tokens: &TokenBatch) -> Result<TextOutput> {
        self.check_tokens(tokens)?;
        let (batch, seq, d) = (tokens.batch_size, tokens.seq_len, self.config.hidden_size);
        let mut last = Vec::with_capacity(batch * seq * d);
        let mut pooled = Vec::with_capacity(batch * d);
        for pass in passes(batch, self.max_batch(seq)?) {
            let out = self.run(tokens, pass, true)?;
            pooled.extend(out.pooled);
            last.extend(out.last.unwrap_or_default());
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
        for pass in passes(batch, self.max_batch(seq)?) {
            pooled.extend(self.run(tokens, pass, false)?.pooled);
        }
        Tensor::new(vec![batch, d], pooled)
    }

    /// Fails on sequences longer than the position table or token ids past the vocabulary.
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

    /// One pass over sequences `start..start + len`.
    pub(crate) fn run(
        &self,
        tokens: &TokenBatch,
        pass: (usize, usize),
        full: bool,
    ) -> Result<TextPass> {
        with_tower!(&self.engine, |b, t| t.run(b, tokens, pass, full))
    }
}
