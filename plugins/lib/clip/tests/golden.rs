//! fusion-clip against transformers: the tiny random-weight CLIP checkpoint in
//! `tests/data/clip-tiny` and the outputs transformers computed for it (see the README there).

use std::path::Path;

mod common;

use common::{
    assert_close, data_dir, grad_fixture, grad_task_vectors, model_dir, Golden, MODEL_TOL,
};
use fusion_clip::oracle::{ClipModel, ClipVisionModel};
use fusion_clip::{
    decode_image, resize, CheckpointConfig, ClipError, ClipTokenizer, ImageProcessor, Padding,
    Resample, Tensor,
};
use safetensors::{Dtype, SafeTensors};

/// Preprocessing from PNG bytes (the reference is PIL's resampler): the shared README's bound
/// for resamplers that are not Pillow's.
const PIXEL_TOL: f32 = 2e-2;
/// What the Pillow port actually achieves: the same 8-bit pixels, so only f32 rounding is left.
const PIXEL_EXACT_TOL: f32 = 1e-6;

#[test]
fn config_parses_both_towers() {
    let CheckpointConfig::Clip(cfg) =
        CheckpointConfig::from_file(model_dir().join("config.json")).unwrap()
    else {
        panic!("expected a CLIPModel config");
    };
    assert_eq!(cfg.projection_dim, 24);
    assert_eq!(
        (
            cfg.vision_config.hidden_size,
            cfg.vision_config.num_hidden_layers
        ),
        (64, 3)
    );
    assert_eq!(
        (cfg.vision_config.image_size, cfg.vision_config.patch_size),
        (32, 8)
    );
    assert_eq!(
        (
            cfg.text_config.hidden_size,
            cfg.text_config.num_attention_heads
        ),
        (32, 2)
    );
    assert_eq!(cfg.text_config.eos_token_id, Some(49407));
}

#[test]
fn vision_tower_matches_every_hidden_state() {
    let golden = Golden::get();
    let model = ClipVisionModel::from_pretrained_dir(model_dir()).unwrap();
    let out = model.forward(golden.f("pixel_values"), true).unwrap();
    let states = out.hidden_states.unwrap();
    assert_eq!(states.len(), 4);
    for (i, h) in states.iter().enumerate() {
        assert_close(
            &format!("vision.hidden_states.{i}"),
            h,
            golden.f(&format!("vision.hidden_states.{i}")),
            MODEL_TOL,
        );
    }
    assert_close(
        "vision.embeddings",
        &states[0],
        golden.f("vision.embeddings"),
        MODEL_TOL,
    );
    assert_close(
        "vision.last_hidden_state",
        &out.last_hidden_state,
        golden.f("vision.last_hidden_state"),
        MODEL_TOL,
    );
    assert_close(
        "vision.pooler_output",
        &out.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
}

#[test]
fn full_model_matches_text_outputs_embeddings_and_logits() {
    let golden = Golden::get();
    let model = ClipModel::from_pretrained_dir(model_dir()).unwrap();
    let tokens = golden.tokens();
    let text = model.text_model().forward(&tokens).unwrap();
    assert_close(
        "text.last_hidden_state",
        &text.last_hidden_state,
        golden.f("text.last_hidden_state"),
        MODEL_TOL,
    );
    assert_close(
        "text.pooler_output",
        &text.pooler_output,
        golden.f("text.pooler_output"),
        MODEL_TOL,
    );

    let out = model.forward(golden.f("pixel_values"), &tokens).unwrap();
    assert_close(
        "image_embeds",
        &out.image_embeds,
        golden.f("image_embeds"),
        MODEL_TOL,
    );
    assert_close(
        "text_embeds",
        &out.text_embeds,
        golden.f("text_embeds"),
        MODEL_TOL,
    );
    assert_close(
        "logits_per_image",
        &out.logits_per_image,
        golden.f("logits_per_image"),
        MODEL_TOL,
    );
    assert_close(
        "vision.pooler_output (CLIPModel)",
        &out.vision_output.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
    // logits_per_text is the transpose.
    let (i, t) = (6, 7);
    for a in 0..i {
        for b in 0..t {
            assert_eq!(
                out.logits_per_image.data()[a * t + b],
                out.logits_per_text.data()[b * i + a]
            );
        }
    }
}

#[test]
fn vision_tower_from_full_checkpoint_equals_clip_model_tower() {
    // Loading only the vision tower of a CLIPModel checkpoint skips the text tower and the
    // projections without complaint, and swapping it into a CLIPModel changes nothing.
    let golden = Golden::get();
    let vision = ClipVisionModel::from_pretrained_dir(model_dir()).unwrap();
    let mut model = ClipModel::from_pretrained_dir(model_dir()).unwrap();
    model
        .replace_vision_model(vision.into_vision_model())
        .unwrap();
    let features = model.get_image_features(golden.f("pixel_values")).unwrap();
    let normalized = fusion_clip::l2_normalize_rows(&features);
    assert_close(
        "image_embeds (swapped tower)",
        &normalized,
        golden.f("image_embeds"),
        MODEL_TOL,
    );
}

#[test]
fn tokenizer_json_matches_golden_ids_exactly() {
    let golden = Golden::get();
    let tok = ClipTokenizer::from_dir(model_dir()).unwrap();
    let texts = Golden::texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&texts, Padding::MaxLength, 77).unwrap();
    assert_eq!(batch, golden.tokens());
}

#[test]
fn vocab_and_merges_files_tokenize_like_tokenizer_json() {
    // Write vocab.json and merges.txt (the slow tokenizer's files) from tokenizer.json.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("vocab.json"),
        json["model"]["vocab"].to_string(),
    )
    .unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in json["model"]["merges"].as_array().unwrap() {
        let pair = m.as_array().unwrap();
        merges += &format!(
            "{} {}\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        );
    }
    std::fs::write(tmp.path().join("merges.txt"), merges).unwrap();
    std::fs::copy(
        model_dir().join("tokenizer_config.json"),
        tmp.path().join("tokenizer_config.json"),
    )
    .unwrap();

    let golden = Golden::get();
    let tok = ClipTokenizer::from_dir(tmp.path()).unwrap();
    let texts = Golden::texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(
        tok.encode_batch(&texts, Padding::MaxLength, 77).unwrap(),
        golden.tokens()
    );
}

#[test]
fn tokenizer_matches_hf_tokenizers_on_hard_cases() {
    // Unicode normalization, casing, digits, contractions, CJK, emoji, special tokens in text:
    // ids from the `tokenizers` library itself (see tests/data/tokenizer/).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/cases.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = ClipTokenizer::from_dir(model_dir()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text), expected, "text {text:?}");
    }
}

#[test]
fn longest_padding_and_special_tokens_in_text() {
    let tok = ClipTokenizer::from_dir(model_dir()).unwrap();
    let batch = tok
        .encode_batch(&["a photo of a dog.", ""], Padding::Longest, 77)
        .unwrap();
    assert_eq!(batch.seq_len, 8);
    assert_eq!(
        batch.ids(0),
        &[49406, 320, 1125, 539, 320, 1929, 269, 49407]
    );
    assert_eq!(
        batch.ids(1),
        &[49406, 49407, 49407, 49407, 49407, 49407, 49407, 49407]
    );
    assert_eq!(batch.mask(1), &[1, 1, 0, 0, 0, 0, 0, 0]);
    // A special token written in the text is one token, not BPE pieces.
    let ids = tok.encode("dog<|endoftext|>dog");
    assert_eq!(ids, vec![49406, 1929, 49407, 1929, 49407]);
}

#[test]
fn preprocessing_from_png_matches_clip_image_processor() {
    let golden = Golden::get();
    let processor = ImageProcessor::from_dir(model_dir()).unwrap();
    let expected = golden.f("pixel_values");
    let mut images = Vec::new();
    for i in 0..6 {
        let bytes = std::fs::read(data_dir().join(format!("images/{i}.png"))).unwrap();
        images.push(decode_image(&bytes).unwrap());
    }
    let actual = processor.preprocess_batch(&images).unwrap();
    assert_close("pixel_values", &actual, expected, PIXEL_TOL);
    // Stricter: the resampler is a port of Pillow's, so the pixels are the same.
    assert_close("pixel_values (exact)", &actual, expected, PIXEL_EXACT_TOL);
    // Per image too, from bytes, so a failure names the image.
    for i in 0..6 {
        let bytes = std::fs::read(data_dir().join(format!("images/{i}.png"))).unwrap();
        let one = processor.preprocess_bytes(&bytes).unwrap();
        assert_close(
            &format!("pixel_values[{i}]"),
            &one,
            &expected
                .narrow0(i, 1)
                .unwrap()
                .reshape(vec![3, 32, 32])
                .unwrap(),
            PIXEL_TOL,
        );
    }
}

#[test]
fn grayscale_png_is_converted_to_rgb() {
    // Re-encode a Fashion-MNIST image as 8-bit grayscale: it must preprocess like its RGB copy.
    let rgb = decode_image(&std::fs::read(data_dir().join("images/2.png")).unwrap()).unwrap();
    let gray: Vec<u8> = rgb.data().chunks(3).map(|p| p[0]).collect();
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, rgb.width() as u32, rgb.height() as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&gray).unwrap();
    }
    let decoded = decode_image(&png_bytes).unwrap();
    assert_eq!(decoded, rgb);
}

#[test]
fn resize_is_bit_exact_with_pillow_for_every_filter() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/resize");
    let source = decode_image(&std::fs::read(dir.join("source.png")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    for (name, view) in expected.tensors() {
        let (filter, size) = name.split_once('_').unwrap();
        let filter = Resample::from_pil(filter.parse().unwrap()).unwrap();
        let (w, h) = size.split_once('x').unwrap();
        let out = resize(&source, w.parse().unwrap(), h.parse().unwrap(), filter).unwrap();
        assert_eq!(view.shape(), &[out.height(), out.width(), 3], "{name}");
        assert!(out.data() == view.data(), "{name}: differs from Pillow");
        cases += 1;
    }
    assert_eq!(cases, 24);
}

#[test]
fn jpeg_decodes_like_pillow() {
    // Decoders may differ in IDCT rounding and chroma upsampling by a level or two; a wrong
    // color conversion or orientation would be off by tens.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg");
    for (name, max_level_diff) in [("color", 4), ("gray", 1)] {
        let img = decode_image(&std::fs::read(dir.join(format!("{name}.jpg"))).unwrap()).unwrap();
        let expected = std::fs::read(dir.join(format!("{name}.rgb"))).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64), "{name}");
        let diffs: Vec<u8> = img
            .data()
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        println!("jpeg {name}: max level diff {max}, mean {mean:.3}");
        assert!(
            max <= max_level_diff && mean < 0.5,
            "{name}: max {max}, mean {mean}"
        );
    }
}

#[test]
fn unknown_image_format_is_an_error() {
    let err = decode_image(b"GIF89a....").unwrap_err();
    assert!(matches!(err, ClipError::ImageDecode { .. }), "{err:?}");
}

// ---- strict loading: modified copies of the checkpoint -------------------------------------

/// Copies the checkpoint to a temp dir, passing each tensor through `edit` (return `None` to
/// drop it) and adding `extra`.
fn modified_checkpoint(
    edit: impl Fn(&str, Vec<usize>) -> Option<Vec<usize>>,
    extra: &[(&str, Vec<usize>)],
) -> tempfile::TempDir {
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let Some(shape) = edit(&name, view.shape().to_vec()) else {
            continue;
        };
        let n: usize = shape.iter().product();
        let data = if shape == view.shape() {
            view.data().to_vec()
        } else {
            vec![0u8; n * 4]
        };
        tensors.push((name, shape, data));
    }
    for (name, shape) in extra {
        let n: usize = shape.iter().product();
        tensors.push((name.to_string(), shape.clone(), vec![0u8; n * 4]));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    tmp
}

#[test]
fn missing_tensor_is_named() {
    let name = "vision_model.encoder.layers.1.mlp.fc1.bias";
    let dir = modified_checkpoint(|n, s| (n != name).then_some(s), &[]);
    let err = ClipVisionModel::from_pretrained_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ClipError::MissingTensor { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("[256]"), "{msg}");
    // The full model fails the same way.
    let err = ClipModel::from_pretrained_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let name = "text_model.encoder.layers.0.self_attn.k_proj.weight";
    let dir = modified_checkpoint(|n, s| Some(if n == name { vec![32, 31] } else { s }), &[]);
    let err = ClipModel::from_pretrained_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ClipError::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(name) && msg.contains("[32, 31]") && msg.contains("[32, 32]"),
        "{msg}"
    );
}

#[test]
fn extra_tensor_is_named() {
    // A fourth layer the config does not have: loading must not ignore it.
    let name = "vision_model.encoder.layers.3.mlp.fc2.bias";
    let dir = modified_checkpoint(|_, s| Some(s), &[(name, vec![64])]);
    let err = ClipVisionModel::from_pretrained_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, ClipError::UnexpectedTensors { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("[64]"), "{msg}");
    let err = ClipModel::from_pretrained_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn vision_only_load_ignores_text_tower_but_full_load_needs_it() {
    // Dropping a text tensor does not matter for the vision tower...
    let name = "text_model.final_layer_norm.bias";
    let dir = modified_checkpoint(|n, s| (n != name).then_some(s), &[]);
    ClipVisionModel::from_pretrained_dir(dir.path()).unwrap();
    // ...but does for the whole model.
    let err = ClipModel::from_pretrained_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn bare_vision_checkpoint_loads_and_rejects_stray_tensors() {
    // A CLIPVisionModel checkpoint: model_type clip_vision_model, only vision_model.* tensors.
    let src = model_dir();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut vision_cfg = cfg["vision_config"].clone();
    vision_cfg["architectures"] = serde_json::json!(["CLIPVisionModel"]);
    let dir = modified_checkpoint(|n, s| n.starts_with("vision_model.").then_some(s), &[]);
    std::fs::write(dir.path().join("config.json"), vision_cfg.to_string()).unwrap();

    let golden = Golden::get();
    let model = ClipVisionModel::from_pretrained_dir(dir.path()).unwrap();
    let out = model.forward(golden.f("pixel_values"), false).unwrap();
    assert_close(
        "vision.pooler_output (CLIPVisionModel)",
        &out.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
    // A full CLIPModel cannot be made from it.
    let err = ClipModel::from_pretrained_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip_vision_model"), "{err}");

    // In a bare vision checkpoint, a text tensor is unexpected.
    let stray = "text_projection.weight";
    let dir2 = modified_checkpoint(
        |n, s| n.starts_with("vision_model.").then_some(s),
        &[(stray, vec![24, 32])],
    );
    std::fs::write(dir2.path().join("config.json"), vision_cfg.to_string()).unwrap();
    let err = ClipVisionModel::from_pretrained_dir(dir2.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(stray), "{err}");
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    // Split the weights into two shards with an index, as save_pretrained does for big models.
    let src = model_dir();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut weight_map = serde_json::Map::new();
    let (text, rest): (Vec<_>, Vec<_>) = st
        .tensors()
        .into_iter()
        .partition(|(n, _)| n.starts_with("text_model."));
    for (i, shard) in [text, rest].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        safetensors::serialize_to_file(shard, None, &tmp.path().join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let golden = Golden::get();
    let model = ClipModel::from_pretrained_dir(tmp.path()).unwrap();
    let out = model
        .forward(golden.f("pixel_values"), &golden.tokens())
        .unwrap();
    assert_close(
        "logits_per_image (sharded)",
        &out.logits_per_image,
        golden.f("logits_per_image"),
        MODEL_TOL,
    );
}

#[test]
fn legacy_eos_token_id_pools_at_the_largest_id() {
    // Configs written before transformers PR #24773 say eos_token_id 2; transformers then pools
    // at the argmax of the ids, which is the same <|endoftext|> position for CLIP's vocabulary.
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["text_config"]["eos_token_id"] = serde_json::json!(2);
    cfg["text_config"]["bos_token_id"] = serde_json::json!(0);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();

    let golden = Golden::get();
    let model = ClipModel::from_pretrained_dir(tmp.path()).unwrap();
    let text = model.text_model().forward(&golden.tokens()).unwrap();
    assert_close(
        "text.pooler_output (legacy eos)",
        &text.pooler_output,
        golden.f("text.pooler_output"),
        MODEL_TOL,
    );
}

#[test]
fn half_precision_checkpoint_loads_close_to_f32() {
    // The same weights stored as bf16: loading converts to f32, outputs stay close.
    let src = model_dir();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let converted: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    half::bf16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            (name, v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<_> = converted
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::BF16, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();

    let golden = Golden::get();
    let model = ClipModel::from_pretrained_dir(tmp.path()).unwrap();
    let out = model
        .forward(golden.f("pixel_values"), &golden.tokens())
        .unwrap();
    // bf16 keeps 8 bits of mantissa: the embeddings move by about 1e-2, not more.
    assert_close(
        "image_embeds (bf16 weights)",
        &out.image_embeds,
        golden.f("image_embeds"),
        5e-2,
    );
}

#[test]
fn wrong_pixel_size_is_an_input_error() {
    let model = ClipVisionModel::from_pretrained_dir(model_dir()).unwrap();
    let err = model
        .forward(&Tensor::zeros(vec![1, 3, 16, 16]), false)
        .unwrap_err();
    assert!(matches!(err, ClipError::Input { .. }), "{err:?}");
    assert!(err.to_string().contains("[1, 3, 16, 16]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Gradients (`fusion_clip::autograd`) against PyTorch autograd: `tests/data/grad`, made by
// `tools/make_grad_golden.py` (see the README there).

mod grad {
    use super::*;
    use fusion_clip::autograd::{
        loss_and_gradients, LayerWiseMerge, Objective, VisionParams, ZeroShotHead,
    };

    /// Per tensor, the largest difference to torch relative to the tensor's largest value:
    /// f32 against f32 in another summation order.
    const GRAD_TOL: f32 = 1e-4;

    /// Asserts the normwise relative error is within `tol` and returns it: the largest
    /// difference over the tensor's largest value, or over `floor` if that is larger (a
    /// gradient that is zero in exact arithmetic, such as `k_proj.bias`'s under softmax's shift
    /// invariance, is rounding noise in both implementations).
    fn rel_err(what: &str, got: &[f32], want: &[f32], floor: f32, tol: f32) -> f32 {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(floor, |m, v| m.max(v.abs())).max(1e-30);
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let err = diff / scale;
        assert!(
            err <= tol,
            "{what}: max abs diff {diff:.3e} is {err:.2e} of the largest value {scale:.3e}"
        );
        err
    }

    #[test]
    fn tower_weight_and_merge_coefficient_gradients_match_torch_autograd() {
        let fx = grad_fixture();
        let get = |n: &str| &fx.get(n).unwrap_or_else(|| panic!("fixture has no {n}")).1;
        let model = ClipModel::from_pretrained_dir(model_dir()).unwrap();
        let cfg = model.vision_model().config().clone();
        let pre = VisionParams::from_transformer(model.vision_model()).unwrap();
        let store = fusion_clip::WeightStore::open_dir(model_dir()).unwrap();
        assert_eq!(VisionParams::from_store(&store, &cfg).unwrap(), pre);

        // The autograd forward alone agrees with transformers' pooler output.
        let pixels = get("pixel_values");
        let batch = fx["pixel_values"].0[0];
        let (pooled, _) = pre.forward(pixels, batch).unwrap();
        let golden = Golden::get();
        let want = golden.f("vision.pooler_output");
        let pooled = Tensor::new(want.shape().to_vec(), pooled).unwrap();
        assert_close("autograd forward pooler_output", &pooled, want, MODEL_TOL);

        let names = pre.names();
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/grad/grad.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let fixture_names: Vec<&str> = meta["param_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let ours: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(ours, fixture_names, "parameter order (the λ columns)");

        let task_vectors = grad_task_vectors(&cfg);
        let merge = LayerWiseMerge::new(pre, task_vectors).unwrap();
        let lambdas = get("lambdas");
        let merged = merge.merge(lambdas).unwrap();
        let classes = fx["text_embeds"].0[0];
        let head = ZeroShotHead::new(
            model.visual_projection().weight().data().to_vec(),
            cfg.hidden_size,
            get("text_embeds").clone(),
            classes,
            model.logit_scale().exp(),
        )
        .unwrap();

        let g = loss_and_gradients(
            &merged,
            &head,
            pixels,
            batch,
            Objective::Entropy { eps: 1e-8 },
        )
        .unwrap();
        let loss_diff = (g.loss - get("entropy.loss")[0]).abs();
        println!(
            "entropy loss {} (torch {}), diff {loss_diff:.2e}",
            g.loss,
            get("entropy.loss")[0]
        );
        assert!(loss_diff < 1e-5);
        let logits_err = rel_err("logits", &g.logits, get("entropy.logits"), 0.0, GRAD_TOL);
        // 1e-3 of the largest weight gradient anywhere in the tower.
        let floor = 1e-3
            * names
                .iter()
                .flat_map(|(n, _)| get(&format!("entropy.grad.{n}")).iter())
                .fold(0.0f32, |m, v| m.max(v.abs()));
        let mut worst = (String::new(), 0.0f32);
        for ((name, _), grad) in names.iter().zip(g.weights.params()) {
            let err = rel_err(
                name,
                grad,
                get(&format!("entropy.grad.{name}")),
                floor,
                GRAD_TOL,
            );
            if err > worst.1 {
                worst = (name.clone(), err);
            }
        }
        let proj_err = rel_err(
            "visual_projection",
            &g.projection,
            get("entropy.grad.visual_projection.weight"),
            0.0,
            GRAD_TOL,
        );
        let dl = merge.lambda_gradients(&g.weights).unwrap();
        let lambda_err = rel_err(
            "entropy dL/dλ",
            &dl,
            get("entropy.grad.lambdas"),
            0.0,
            GRAD_TOL,
        );
        println!(
            "relative errors: logits {logits_err:.2e}, worst weight gradient {:.2e} ({}), \
             visual_projection {proj_err:.2e}, dL/dλ {lambda_err:.2e}",
            worst.1, worst.0
        );

        let labels: Vec<u32> = get("labels").iter().map(|&v| v as u32).collect();
        let ce = loss_and_gradients(
            &merged,
            &head,
            pixels,
            batch,
            Objective::CrossEntropy { labels: &labels },
        )
        .unwrap();
        assert!((ce.loss - get("cross_entropy.loss")[0]).abs() < 1e-5);
        let dl = merge.lambda_gradients(&ce.weights).unwrap();
        let ce_err = rel_err(
            "cross-entropy dL/dλ",
            &dl,
            get("cross_entropy.grad.lambdas"),
            0.0,
            GRAD_TOL,
        );
        println!("cross-entropy dL/dλ relative error {ce_err:.2e}");
    }
}
