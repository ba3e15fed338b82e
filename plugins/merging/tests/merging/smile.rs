//! SMILE upscaling against fusion-bench's own `SmileUpscalingAlgorithm` on tiny CLIP vision
//! towers (`tests/data/smile-tiny`, made by `make_smile_golden.py` there): the upscaled state
//! dict (names, shapes; the SVD factors through sign-free products), the upscaled tower's
//! outputs (fusion-clip's native path) on FusionBench's state dict and on ours, layer 0's
//! routing, and the errors on bad input.

use std::path::PathBuf;

use fusion_clip::gpu::moe::MoeLinear;
use fusion_clip::gpu::{BackendChoice, GpuClipVision};
use fusion_clip::{CheckpointConfig, ClipVisionConfig, Tensor, WeightStore};
use fusion_merging::SmileUpscaling;
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::{self, json};
use fusion_plugin_api::MemoryStateDict;

use crate::common::*;

fn smile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/smile-tiny")
}

fn open(path: PathBuf) -> Model {
    fusion_checkpoint::open_model(path.to_str().unwrap()).unwrap()
}

fn smile_pool(names: &[String]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| (n.clone(), open(smile_dir().join("models").join(n))))
            .collect(),
    )
}

fn upscale(method: serde_json::Value, pool: &Pool) -> Result<Model> {
    let cfg = Config::new("fusion_bench.method.SmileUpscalingAlgorithm", method)?;
    let algorithm = SmileUpscaling::from_config(&cfg)?;
    cfg.check_parameters()?;
    algorithm.run(pool, &Context::local(Some(0), false, None))
}

fn f32s(model: &Model, name: &str) -> (Vec<f32>, Vec<usize>) {
    model
        .to_f32(name)
        .unwrap_or_else(|e| panic!("`{name}`: {e}"))
}

/// `max|a − b| / max|b|`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())))
        / scale
}

/// `a [m, k] · b [k, n]`.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                out[i * n + j] += x * b[p * n + j];
            }
        }
    }
    out
}

/// Each expert's gate block as the projection `Gₑᵀ Gₑ` (free of the singular vectors' signs).
fn gate_projections(g: &[f32], shape: &[usize], experts: usize) -> Vec<f32> {
    let (rows, n) = (shape[0], shape[1]);
    let gk = rows / experts;
    let mut out = Vec::new();
    for e in 0..experts {
        let block = &g[e * gk * n..(e + 1) * gk * n];
        let mut t = vec![0f32; n * gk];
        for i in 0..gk {
            for j in 0..n {
                t[j * gk + i] = block[i * n + j];
            }
        }
        out.extend(matmul(&t, block, n, gk, n));
    }
    out
}

/// Our upscaled state dict against fusion-bench's: the same names and shapes; `u · svh` per
/// expert and the gate's projections to 1e-4 relative, every other tensor to 1e-5.
fn compare_state_dicts(ours: &Model, theirs: &Model, experts: usize, case: &str) -> f64 {
    let mut got = ours.names().unwrap();
    let mut want = theirs.names().unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{case}: tensor names");
    let mut worst: f64 = 0.0;
    for name in &want {
        let (a, sa) = f32s(ours, name);
        let (b, sb) = f32s(theirs, name);
        assert_eq!(sa, sb, "{case}: shape of `{name}`");
        let (err, tol) = if name.ends_with(".u") {
            continue; // checked with its svh
        } else if let Some(p) = name.strip_suffix(".svh") {
            let (ua, us) = f32s(ours, &format!("{p}.u"));
            let (ub, _) = f32s(theirs, &format!("{p}.u"));
            let (m, k, n) = (us[0], us[1], sa[1]);
            (
                rel(&matmul(&ua, &a, m, k, n), &matmul(&ub, &b, m, k, n)),
                1e-4,
            )
        } else if name.ends_with(".gate.weights") {
            (
                rel(
                    &gate_projections(&a, &sa, experts),
                    &gate_projections(&b, &sb, experts),
                ),
                1e-4,
            )
        } else {
            (rel(&a, &b), 1e-5)
        };
        assert!(
            err <= tol,
            "{case}: `{name}` relative error {err:.3e} > {tol:e}"
        );
        worst = worst.max(err);
    }
    worst
}

/// `tensors` with the files of `files`.
fn with_files(tensors: &Model, files: &Model) -> Model {
    let mut sd = MemoryStateDict::new();
    for name in tensors.names().unwrap() {
        let info = tensors.info(&name).unwrap();
        let data = tensors.data(&name).unwrap().into_owned();
        sd.insert_bytes(name, info.dtype, info.shape, data).unwrap();
    }
    for f in files.file_names().unwrap() {
        sd.insert_file(f.clone(), files.file(&f).unwrap());
    }
    Model::new(sd)
}

/// FusionBench's state dict with a `config.json` carrying the routing (`top_k`), as our
/// upscaled model carries it.
fn with_routing(model: &Model, top_k: i64) -> Model {
    let mut sd = MemoryStateDict::new();
    for name in model.names().unwrap() {
        let info = model.info(&name).unwrap();
        sd.insert_bytes(
            name.clone(),
            info.dtype,
            info.shape,
            model.data(&name).unwrap().into_owned(),
        )
        .unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(smile_dir().join("models/_pretrained_/config.json")).unwrap(),
    )
    .unwrap();
    config["smile_upscaling"] = json!({ "top_k": top_k });
    sd.insert_file("config.json", serde_json::to_vec(&config).unwrap());
    Model::new(sd)
}

fn vision_config() -> ClipVisionConfig {
    CheckpointConfig::from_file(smile_dir().join("models/_pretrained_/config.json"))
        .unwrap()
        .vision_config()
        .clone()
}

fn golden_tensor(file: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    f32s(&open(smile_dir().join(file)), name)
}

/// The upscaled tower (native backend) on the golden pixels: last hidden state and pooled
/// output against fusion-bench's.
fn tower_error(model: &Model, outputs: &str) -> f64 {
    tower_error_on(model, outputs, BackendChoice::Native)
}

fn tower_error_on(model: &Model, outputs: &str, backend: BackendChoice) -> f64 {
    let ctx = ctx(Some(0));
    let vision =
        GpuClipVision::from_model_with(ctx.compute().unwrap(), model, &vision_config(), backend)
            .unwrap_or_else(|e| panic!("{e}"));
    let (px, shape) = golden_tensor("inputs.safetensors", "pixel_values");
    let out = vision
        .forward(&Tensor::new(shape, px).unwrap(), false)
        .unwrap();
    let (last, _) = golden_tensor(outputs, "last_hidden_state");
    let (pooled, _) = golden_tensor(outputs, "pooler_output");
    rel(out.last_hidden_state.data(), &last).max(rel(out.pooler_output.data(), &pooled))
}

#[test]
fn smile_upscaling_matches_fusion_bench_state_dicts_and_outputs() {
    let text = std::fs::read_to_string(smile_dir().join("cases.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let cases = cases["cases"].as_mapping().unwrap();
    assert_eq!(cases.len(), 6);
    for (name, case) in cases {
        let name = name.as_str().unwrap();
        let method: serde_json::Value = serde_json::to_value(&case["method"]).unwrap();
        let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
        let experts = models.len() - 1;
        let ours = upscale(method.clone(), &smile_pool(&models)).unwrap();
        let ours = with_files(&materialize(&ours), &ours);
        let theirs = open(smile_dir().join(case["expected"].as_str().unwrap()));
        let sd_err = compare_state_dicts(&ours, &theirs, experts, name);

        let outputs = case["outputs"].as_str().unwrap();
        let top_k = method["top_k"].as_i64().unwrap();
        let theirs_err = tower_error(&with_routing(&theirs, top_k), outputs);
        let ours_err = tower_error(&ours, outputs);
        eprintln!(
            "golden {name}: state dict {sd_err:.2e}, tower on fusion-bench's {theirs_err:.2e}, on ours {ours_err:.2e}"
        );
        // The experts matter: the pretrained tower alone is far off.
        let plain_err = tower_error(&open(smile_dir().join("models/_pretrained_")), outputs);
        assert!(
            plain_err > 1e-2,
            "{name}: the pretrained tower is within {plain_err:.3e}"
        );
        assert!(
            theirs_err <= 1e-4,
            "{name}: tower on fusion-bench's state dict: {theirs_err:.3e}"
        );
        assert!(
            ours_err <= 1e-4,
            "{name}: tower on our state dict: {ours_err:.3e}"
        );

        if name == "smile_top2_avg" {
            // The WGSL backend runs the pretrained linears as kernels and the routed experts
            // in host memory between them.
            let wgsl_err = tower_error_on(&ours, outputs, BackendChoice::Wgsl);
            eprintln!("golden {name}: WGSL backend {wgsl_err:.2e}");
            assert!(wgsl_err <= 1e-4, "{name}: WGSL backend: {wgsl_err:.3e}");
        }

        // Layer 0's fc1 routes every token as fusion-bench's gate did.
        let store = WeightStore::from_model("upscaled", &ours).unwrap();
        let fc1 = MoeLinear::load(&store, "vision_model.encoder.layers.0.mlp.fc1", 32, 64)
            .unwrap()
            .expect("fc1 is upscaled");
        let (x, xs) = golden_tensor(outputs, "fc1_input");
        let (want, _) = golden_tensor(outputs, "routing");
        let routes = fc1.route(&x, xs[0]).unwrap();
        for (t, sel) in routes.iter().enumerate() {
            let mut row = vec![0f32; experts];
            sel.iter().for_each(|&(e, w)| row[e] = w);
            let expected = &want[t * experts..(t + 1) * experts];
            assert!(
                rel(&row, expected) < 1e-4,
                "{name}: token {t} routed {row:?}, fusion-bench {expected:?}"
            );
        }
    }
}

/// The plain linear no model changed stays a plain linear; the upscaled model carries its
/// routing in config.json.
#[test]
fn smile_keeps_untrained_linears_plain_and_writes_the_routing_config() {
    let names: Vec<String> = ["_pretrained_", "task_a", "task_b"]
        .map(String::from)
        .to_vec();
    let model = upscale(
        json!({"k": 4, "gate_k": 1, "top_k": 2, "device": "cpu"}),
        &smile_pool(&names),
    )
    .unwrap();
    let tensors = model.names().unwrap();
    let plain = "vision_model.encoder.layers.1.self_attn.out_proj";
    assert!(tensors.contains(&format!("{plain}.weight")));
    assert!(!tensors
        .iter()
        .any(|n| n.starts_with(&format!("{plain}.gate"))));
    assert!(tensors.contains(&"vision_model.encoder.layers.0.mlp.fc1.experts.1.svh".to_string()));
    let config: serde_json::Value =
        serde_json::from_slice(&model.file("config.json").unwrap()).unwrap();
    assert_eq!(config["smile_upscaling"]["top_k"], 2);
    assert_eq!(config["smile_upscaling"]["num_experts"], 2);
    assert_eq!(config["hidden_size"], 32, "the pretrained config is kept");
}

#[test]
fn smile_refuses_bad_input_with_clear_errors() {
    let all: Vec<String> = ["_pretrained_", "task_a", "task_b", "task_c"]
        .map(String::from)
        .to_vec();
    let pool = smile_pool(&all);
    let err =
        |method: serde_json::Value, pool: &Pool| upscale(method, pool).unwrap_err().to_string();
    // k above the rank of the 64×32 fc1 with full singular-vector matrices: FusionBench fails.
    let e = err(
        json!({"k": 40, "gate_k": 1, "upscaling_accelerator": null}),
        &pool,
    );
    assert!(
        e.contains("`k` = 40 is larger than the rank of `vision_model.encoder.layers.0"),
        "{e}"
    );
    assert!(e.contains("at most 32"), "{e}");
    // The same k with full_matrices: false and no accelerator keeps whole updates: fine; an
    // accelerator makes FusionBench take full matrices anyway.
    upscale(json!({"k": 40, "gate_k": 1, "full_matrices": false}), &pool).unwrap();
    let e = err(
        json!({"k": 40, "gate_k": 1, "full_matrices": false, "upscaling_accelerator": "cuda"}),
        &pool,
    );
    assert!(e.contains("larger than the rank"), "{e}");
    // gate_k above the rank of the wide 32×64 fc2.
    let e = err(json!({"k": 4, "gate_k": 40}), &pool);
    assert!(e.contains("`gate_k` = 40 is larger than the rank of `vision_model.encoder.layers.0.mlp.fc2.weight`"), "{e}");
    // Too few models: none besides `_pretrained_`, or no `_pretrained_`.
    let only = smile_pool(&["_pretrained_".to_string()]);
    let e = err(json!({"k": 4, "gate_k": 1}), &only);
    assert!(
        e.contains("needs at least 1 model(s) to merge besides `_pretrained_`, the pool has 0"),
        "{e}"
    );
    let no_base = smile_pool(&["task_a".to_string(), "task_b".to_string()]);
    let e = err(json!({"k": 4, "gate_k": 1}), &no_base);
    assert!(e.contains("needs a `_pretrained_` model"), "{e}");
    // More experts per token than experts, and meaningless values.
    let e = err(json!({"k": 4, "gate_k": 1, "top_k": 4}), &pool);
    assert!(
        e.contains("`top_k` = 4 experts per token, but the pool has 3 fine-tuned model(s)"),
        "{e}"
    );
    let e = err(json!({"k": 4, "gate_k": 0}), &pool);
    assert!(e.contains("`gate_k` must be at least 1"), "{e}");
    let e = err(json!({"k": 4, "model_path": "/tmp/smile.pt"}), &pool);
    assert!(e.contains("`model_path`"), "{e}");
    let e = err(json!({"k": 4, "gate_kk": 1}), &pool);
    assert!(e.contains("gate_kk"), "{e}");
}
