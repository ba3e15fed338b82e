//! The text tower (`CLIPTextTransformer`), written once over the op API; the public type holds
//! it on the backend [`BackendChoice`] picks for the compute handle.

use fusion_plugin_api::Compute;

use crate::arch::{pooling_position, position_ids_buffer, EncoderDims, TextParams};
use crate::config::ClipTextConfig;
use crate::error::{ClipError, Result};
use crate::gpu::backend::{on_engine, Backend, BackendChoice, Engine, NormW, Tower, WeightSource};
use crate::gpu::encoder::{dense_norm, Encoder, EncoderMask};
use crate::gpu::vision::passes;
use crate::output::TextOutput;
use crate::tensor::Tensor;
use crate::tokenizer::TokenBatch;
use crate::weights::WeightStore;

/// A CLIP text tower whose weights live on the compute device (or in host memory for the
/// native path). Loaded from a checkpoint with [`GpuClipText::load_with`], or as part of a
/// [`crate::gpu::GpuClipModel`].
pub struct GpuClipText<'c> {
    config: ClipTextConfig,
    engine: Engine<'c, Text>,
}

/// The text tower as a [`Tower`] family.
pub(crate) struct Text;

impl Tower for Text {
    type On<B: Backend> = TextTower<B>;
    type Config = ClipTextConfig;

    /// Builds the tower from `src` through the parameter table ([`TextParams::build`]); the
    /// persisted `position_ids` buffer is accepted and checked.
    fn load<B: Backend>(src: &impl WeightSource<B>, cfg: &ClipTextConfig) -> Result<TextTower<B>> {
        let (name, shape) = position_ids_buffer("text_model", cfg.max_position_embeddings);
        src.store().skip_buffer(&name, &shape)?;
        let p = TextParams::build(cfg, |name, shape| src.get(name, shape))?;
        let dims = EncoderDims::from(cfg);
        Ok(TextTower {
            config: cfg.clone(),
            token_embedding: p.token_embedding,
            position_embedding: p.position_embedding,
            encoder: Encoder::new(src, "text_model.encoder", p.layers, &dims)?,
            final_layer_norm: NormW::new(p.final_layer_norm, cfg.hidden_size, cfg.layer_norm_eps),
        })
    }
}

pub(crate) struct TextTower<B: Backend> {
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
    /// Loads the tower (`text_model.*`) from a `CLIPModel` checkpoint's weights on the backend
    /// `choice` names, strictly: every tensor must be present with the shape the config
    /// implies, and no `text_model.*` tensor may be left unused.
    pub fn load_with(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &ClipTextConfig,
        choice: BackendChoice,
    ) -> Result<Self> {
        let (engine, _) = Engine::load(c, store, config, choice)?;
        store.check_all_used(|name| name.starts_with("text_model."))?;
        Ok(Self {
            config: config.clone(),
            engine,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The backend the tower runs on (`"wgsl"` or `"native"`).
    pub fn backend(&self) -> &'static str {
        on_engine!(&self.engine, |b, _t| b.label())
    }

    /// The most sequences of `seq` tokens one pass can take (see
    /// [`GpuClipVision::max_batch`](crate::gpu::GpuClipVision::max_batch)).
    pub fn max_batch(&self, seq: usize) -> Result<usize> {
        on_engine!(&self.engine, |b, t| t.max_batch(b, seq))
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
        on_engine!(&self.engine, |b, t| t.run(b, tokens, pass, full))
    }
}
