//! The GPU towers against transformers' golden outputs for the tiny random-weight checkpoint in
//! `tests/data/clip-tiny` (the same data `golden.rs` checks the CPU forward with), on Mesa
//! lavapipe by default (`FUSION_DEVICE` picks another adapter). Also: loading a merged vision
//! tower from a plugin-api `Model` with strict name and shape checks, and batches split into
//! passes when a device's storage bindings are small. The model tests run twice: on the WGSL
//! kernels and on the native CPU path ([`BackendChoice`]).

use std::borrow::Cow;
use std::sync::Arc;

mod common;

use common::{assert_close, clip_config, device, model_dir, open, Golden, MODEL_TOL};
use fusion_clip::gpu::{BackendChoice, BackendKind, GpuClipModel, GpuClipVision};
use fusion_clip::{CheckpointConfig, ClipError, WeightStore};
use fusion_gpu::{LimitClamp, Runtime, RuntimeOptions};
use fusion_plugin_api::{
    Compute, DType, DeviceType, GpuTensor, MemoryStateDict, Model, StateDict, TensorInfo,
};

/// The `vision_model.*` tensors of the tiny checkpoint as a plugin-api model (what a merging
/// algorithm hands to the task pool), stored as `dtype`.
fn vision_state_dict(dtype: DType) -> MemoryStateDict {
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let mut sd = MemoryStateDict::new();
    let names: Vec<String> = store
        .names()
        .filter(|n| n.starts_with("vision_model."))
        .map(str::to_string)
        .collect();
    for name in names {
        let shape = store.shape(&name).unwrap().to_vec();
        let t = store.get(&name, &shape).unwrap();
        sd.insert_f32(name, shape, t.data(), dtype).unwrap();
    }
    sd
}

fn gpu_vision_tower_matches_every_hidden_state(choice: BackendChoice) {
    let golden = Golden::get();
    let config = CheckpointConfig::from_file(model_dir().join("config.json")).unwrap();
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let vision = GpuClipVision::load_with(device(), &store, &config, choice).unwrap();
    assert_eq!(vision.backend(), label(choice));
    let out = vision.forward(golden.f("pixel_values"), true).unwrap();
    let states = out.hidden_states.unwrap();
    assert_eq!(states.len(), 4);
    for (i, h) in states.iter().enumerate() {
        let name = format!("vision.hidden_states.{i}");
        assert_close(&format!("gpu {name}"), h, golden.f(&name), MODEL_TOL);
    }
    assert_close(
        "gpu vision.embeddings",
        &states[0],
        golden.f("vision.embeddings"),
        MODEL_TOL,
    );
    assert_close(
        "gpu vision.last_hidden_state",
        &out.last_hidden_state,
        golden.f("vision.last_hidden_state"),
        MODEL_TOL,
    );
    assert_close(
        "gpu vision.pooler_output",
        &out.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
    let pooled = vision.pooled(golden.f("pixel_values")).unwrap();
    assert_close(
        "gpu pooled()",
        &pooled,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
}

fn gpu_full_model_matches_text_outputs_embeddings_and_logits(choice: BackendChoice) {
    let golden = Golden::get();
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let model = GpuClipModel::load_with(device(), &store, &clip_config(), choice).unwrap();
    assert_eq!(model.text_model().backend(), label(choice));
    let tokens = golden.tokens();
    let out = model.forward(golden.f("pixel_values"), &tokens).unwrap();
    assert_close(
        "gpu text.last_hidden_state",
        &out.text_output.last_hidden_state,
        golden.f("text.last_hidden_state"),
        MODEL_TOL,
    );
    assert_close(
        "gpu text.pooler_output",
        &out.text_output.pooler_output,
        golden.f("text.pooler_output"),
        MODEL_TOL,
    );
    assert_close(
        "gpu vision.pooler_output (CLIPModel)",
        &out.vision_output.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
    assert_close(
        "gpu image_embeds",
        &out.image_embeds,
        golden.f("image_embeds"),
        MODEL_TOL,
    );
    assert_close(
        "gpu text_embeds",
        &out.text_embeds,
        golden.f("text_embeds"),
        MODEL_TOL,
    );
    assert_close(
        "gpu logits_per_image",
        &out.logits_per_image,
        golden.f("logits_per_image"),
        MODEL_TOL,
    );

    // The fast paths read back only the embeddings and agree with the full pass.
    let texts = model.encode_texts(&tokens).unwrap();
    assert_close(
        "gpu encode_texts",
        &texts,
        golden.f("text_embeds"),
        MODEL_TOL,
    );
    let images = model.encode_images(golden.f("pixel_values")).unwrap();
    assert_close(
        "gpu encode_images",
        &images,
        golden.f("image_embeds"),
        MODEL_TOL,
    );
    let logits = model.logits(&images, &texts).unwrap();
    assert_close(
        "gpu logits()",
        &logits,
        golden.f("logits_per_image"),
        MODEL_TOL,
    );
}

fn merged_vision_model_scores_through_the_text_only_model(choice: BackendChoice) {
    // FusionBench's evaluation: a merged CLIPVisionModel arrives as a lazy state dict and is
    // scored with the pretrained CLIPModel's text side and projections.
    let golden = Golden::get();
    let config = clip_config();
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let clip = GpuClipModel::load_text_only_with(device(), &store, &config, choice).unwrap();
    assert!(clip.vision_model().is_none());
    let head = clip.encode_texts(&golden.tokens()).unwrap();
    assert_close(
        "text-only encode_texts",
        &head,
        golden.f("text_embeds"),
        MODEL_TOL,
    );
    let err = clip
        .encode_images(golden.f("pixel_values"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("without its vision tower"), "{err}");

    let model = Model::new(vision_state_dict(DType::F32));
    let vision =
        GpuClipVision::from_model_with(device(), &model, &config.vision_config, choice).unwrap();
    let images = clip
        .encode_images_with(&vision, golden.f("pixel_values"))
        .unwrap();
    assert_close(
        "merged (f32) image_embeds",
        &images,
        golden.f("image_embeds"),
        MODEL_TOL,
    );
    let logits = clip.logits(&images, &head).unwrap();
    assert_close(
        "merged (f32) logits",
        &logits,
        golden.f("logits_per_image"),
        MODEL_TOL,
    );

    // bf16 storage converts on load: close to the f32 result, not equal.
    let model = Model::new(vision_state_dict(DType::BF16));
    let vision =
        GpuClipVision::from_model_with(device(), &model, &config.vision_config, choice).unwrap();
    let images_bf16 = clip
        .encode_images_with(&vision, golden.f("pixel_values"))
        .unwrap();
    let diff = images_bf16.max_abs_diff(&images).unwrap();
    assert!(
        diff > 0.0 && diff < 0.05,
        "bf16 vs f32 image embeds: {diff}"
    );
}

#[test]
fn gpu_vision_tower_matches_every_hidden_state_wgsl() {
    gpu_vision_tower_matches_every_hidden_state(BackendChoice::Wgsl);
}

#[test]
fn gpu_vision_tower_matches_every_hidden_state_native() {
    gpu_vision_tower_matches_every_hidden_state(BackendChoice::Native);
}

#[test]
fn gpu_full_model_matches_text_outputs_embeddings_and_logits_wgsl() {
    gpu_full_model_matches_text_outputs_embeddings_and_logits(BackendChoice::Wgsl);
}

#[test]
fn gpu_full_model_matches_text_outputs_embeddings_and_logits_native() {
    gpu_full_model_matches_text_outputs_embeddings_and_logits(BackendChoice::Native);
}

#[test]
fn merged_vision_model_scores_through_the_text_only_model_wgsl() {
    merged_vision_model_scores_through_the_text_only_model(BackendChoice::Wgsl);
}

#[test]
fn merged_vision_model_scores_through_the_text_only_model_native() {
    merged_vision_model_scores_through_the_text_only_model(BackendChoice::Native);
}

fn label(choice: BackendChoice) -> &'static str {
    match choice {
        BackendChoice::Native => "native",
        _ => "wgsl",
    }
}

/// The host reports lavapipe as a CPU adapter, and models on it take the native path unless
/// asked otherwise; on a hardware adapter they take the WGSL one.
#[test]
fn auto_backend_follows_the_reported_device_type() {
    let c: &dyn Compute = device();
    let want = match c.device_type() {
        DeviceType::Cpu => BackendKind::Native,
        DeviceType::Unknown => panic!("the runtime reports its device type"),
        _ => BackendKind::Wgsl,
    };
    if std::env::var_os("FUSION_CLIP_BACKEND").is_none() {
        assert_eq!(
            BackendChoice::Auto.resolve(c).unwrap(),
            want,
            "{}",
            c.device_name()
        );
    }
    assert_eq!(BackendChoice::Wgsl.resolve(c).unwrap(), BackendKind::Wgsl);
    assert_eq!(
        BackendChoice::Native.resolve(c).unwrap(),
        BackendKind::Native
    );
    let err = BackendChoice::parse("cuda").unwrap_err().to_string();
    assert!(err.contains("`cuda`") && err.contains("native"), "{err}");
}

#[test]
fn state_dict_loading_is_strict() {
    let config = clip_config().vision_config;
    let err_of = |sd: MemoryStateDict| -> ClipError {
        match GpuClipVision::from_model(device(), &Model::new(sd), &config) {
            Ok(_) => panic!("loading should fail"),
            Err(e) => e,
        }
    };

    // Missing: rebuild the state dict without one tensor.
    let full = vision_state_dict(DType::F32);
    let missing = "vision_model.encoder.layers.1.mlp.fc2.bias";
    let mut sd = MemoryStateDict::new();
    let source = Model::new(full.clone());
    for name in source.names().unwrap().into_iter().filter(|n| n != missing) {
        let (values, shape) = source.to_f32(&name).unwrap();
        sd.insert_f32(name, shape, &values, DType::F32).unwrap();
    }
    let err = err_of(sd);
    assert!(
        matches!(&err, ClipError::MissingTensor { name, .. } if name == missing),
        "{err}"
    );

    // Extra.
    let mut sd = full.clone();
    sd.insert_f32(
        "vision_model.encoder.layers.3.mlp.fc1.bias",
        vec![4],
        &[0.0; 4],
        DType::F32,
    )
    .unwrap();
    let err = err_of(sd).to_string();
    assert!(
        err.contains("vision_model.encoder.layers.3.mlp.fc1.bias"),
        "{err}"
    );

    // Mis-shaped.
    let mut sd = full.clone();
    sd.insert_f32(
        "vision_model.post_layernorm.weight",
        vec![63],
        &[1.0; 63],
        DType::F32,
    )
    .unwrap();
    let err = err_of(sd);
    assert!(
        matches!(&err, ClipError::ShapeMismatch { name, actual, .. }
            if name == "vision_model.post_layernorm.weight" && actual == &[63]),
        "{err}"
    );

    // Not a float.
    let mut sd = full;
    sd.insert_bytes(
        "vision_model.pre_layrnorm.bias",
        DType::I32,
        vec![64],
        vec![0; 256],
    )
    .unwrap();
    let err = err_of(sd).to_string();
    assert!(
        err.contains("vision_model.pre_layrnorm.bias") && err.contains("I32"),
        "{err}"
    );
}

#[test]
fn small_bindings_split_the_batch_into_passes() {
    // 64 KiB bindings: the largest vision weight (fc1, 256 x 64 f32) just fits, and one image's
    // largest activation (17 tokens x 256, 17 KiB) allows 3 images per pass, so the 6 golden
    // images run in 2 passes.
    let small = open(RuntimeOptions {
        clamp: LimitClamp {
            max_storage_binding_size: Some(65536),
            max_workgroups_per_dimension: Some(16),
            ..Default::default()
        },
        ..Default::default()
    });
    let golden = Golden::get();
    let config = CheckpointConfig::from_file(model_dir().join("config.json")).unwrap();
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let c: &dyn Compute = &small;
    // Bindings limit the WGSL path only.
    let vision = GpuClipVision::load_with(c, &store, &config, BackendChoice::Wgsl).unwrap();
    assert_eq!(vision.max_batch().unwrap(), 3);
    let out = vision.forward(golden.f("pixel_values"), true).unwrap();
    assert_close(
        "2 passes: vision.hidden_states.3",
        &out.hidden_states.unwrap()[3],
        golden.f("vision.hidden_states.3"),
        MODEL_TOL,
    );
    assert_close(
        "2 passes: vision.pooler_output",
        &out.pooler_output,
        golden.f("vision.pooler_output"),
        MODEL_TOL,
    );
    drop(vision);
    assert_eq!(
        small.live_tensors(),
        0,
        "weights and scratch tensors are released"
    );

    // Bindings below one weight: an error naming the weight and the limit.
    let tiny = open(RuntimeOptions {
        clamp: LimitClamp {
            max_storage_binding_size: Some(32768),
            ..Default::default()
        },
        ..Default::default()
    });
    let err = match GpuClipVision::load_with(&tiny, &store, &config, BackendChoice::Wgsl) {
        Ok(_) => panic!("a 48 KiB weight cannot fit 32 KiB bindings"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("vision_model.embeddings.patch_embedding.weight") && err.contains("32768"),
        "{err}"
    );
}

/// A merged model whose tensors live on the compute device, as the merging plugin's lazy model
/// hands them out: `device_tensor` makes a new device tensor that the caller owns, and `data`
/// fails, so a loader that reads the bytes back instead fails the test.
struct OnDevice {
    tensors: MemoryStateDict,
    runtime: Arc<Runtime>,
}

impl StateDict for OnDevice {
    fn names(&self) -> fusion_plugin_api::Result<Vec<String>> {
        self.tensors.names()
    }
    fn info(&self, name: &str) -> fusion_plugin_api::Result<TensorInfo> {
        self.tensors.info(name)
    }
    fn data(&self, name: &str) -> fusion_plugin_api::Result<Cow<'_, [u8]>> {
        Err(fusion_plugin_api::Error::model(format!(
            "`{name}` was read back as bytes"
        )))
    }
    fn device_tensor(&self, name: &str) -> fusion_plugin_api::Result<Option<GpuTensor>> {
        let info = self.tensors.info(name)?;
        let bytes = self.tensors.data(name)?;
        self.runtime
            .create(info.dtype, &info.shape, Some(&bytes))
            .map(Some)
    }
}

/// Issue 15: on the WGSL backend a merged vision tower whose weights are on the device is
/// built from them without a read-back (f32 as is, bf16 converted there), scores exactly as
/// the same weights read as bytes, and releases every tensor it was handed.
#[test]
fn merged_weights_on_the_device_are_taken_where_they_are() {
    let golden = Golden::get();
    let config = clip_config();
    // A runtime of its own, so that its live tensors are this test's only.
    let runtime = Arc::new(open(RuntimeOptions::default()));
    let c: &dyn Compute = &*runtime;
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let clip = GpuClipModel::load_text_only_with(c, &store, &config, BackendChoice::Wgsl).unwrap();
    let pixels = golden.f("pixel_values");
    for dtype in [DType::F32, DType::BF16] {
        let tensors = vision_state_dict(dtype);
        let weights = tensors
            .names()
            .unwrap()
            .iter()
            .filter(|n| !n.ends_with("position_ids"))
            .count();
        let bytes = Model::new(tensors.clone());
        let from_bytes =
            GpuClipVision::from_model_with(c, &bytes, &config.vision_config, BackendChoice::Wgsl)
                .unwrap();
        assert_eq!(from_bytes.weights_on_device(), 0, "{dtype}");
        let want = clip.encode_images_with(&from_bytes, pixels).unwrap();
        drop(from_bytes);

        let live = runtime.live_tensors();
        let on_device = Model::new(OnDevice {
            tensors,
            runtime: runtime.clone(),
        });
        let vision = GpuClipVision::from_model_with(
            c,
            &on_device,
            &config.vision_config,
            BackendChoice::Wgsl,
        )
        .unwrap();
        assert_eq!(vision.weights_on_device(), weights, "{dtype}");
        let got = clip.encode_images_with(&vision, pixels).unwrap();
        assert_eq!(
            got.data(),
            want.data(),
            "{dtype}: the same weights score the same"
        );
        drop(vision);
        assert_eq!(
            runtime.live_tensors(),
            live,
            "{dtype}: every tensor released"
        );
    }
}
