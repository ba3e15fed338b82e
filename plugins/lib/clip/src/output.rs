//! What the towers return: transformers' `BaseModelOutputWithPooling` of each tower and
//! `CLIPOutput` of the whole model, read back to the host.

use crate::tensor::Tensor;

/// What a vision tower returns (`BaseModelOutputWithPooling`).
#[derive(Clone, Debug)]
pub struct VisionOutput {
    /// Output of the last encoder layer, `[batch, positions, D]` (no final layer norm: in CLIP
    /// `post_layernorm` applies to the pooled class token only).
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the class token, `[batch, D]`.
    pub pooler_output: Tensor,
    /// When requested: the embeddings after `pre_layrnorm` (the encoder input), then the output
    /// of each layer; `num_hidden_layers + 1` tensors of `[batch, positions, D]`.
    pub hidden_states: Option<Vec<Tensor>>,
}

/// What a text tower returns (`BaseModelOutputWithPooling`).
#[derive(Clone, Debug)]
pub struct TextOutput {
    /// `final_layer_norm` of the last encoder layer's output, `[batch, seq, D]`.
    pub last_hidden_state: Tensor,
    /// The row of `last_hidden_state` at each sequence's end-of-text token, `[batch, D]`.
    pub pooler_output: Tensor,
}

/// What a whole `CLIPModel` forward pass returns (`CLIPOutput`).
#[derive(Clone, Debug)]
pub struct ClipOutput {
    /// `exp(logit_scale) * image_embeds @ text_embeds.T`, `[images, texts]`.
    pub logits_per_image: Tensor,
    /// The transpose, `[texts, images]`.
    pub logits_per_text: Tensor,
    /// L2-normalized projected text features, `[texts, projection_dim]`.
    pub text_embeds: Tensor,
    /// L2-normalized projected image features, `[images, projection_dim]`.
    pub image_embeds: Tensor,
    /// The text tower's outputs.
    pub text_output: TextOutput,
    /// The vision tower's outputs (without hidden states).
    pub vision_output: VisionOutput,
}
