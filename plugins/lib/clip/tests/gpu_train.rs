//! The vision tower's backward pass on the compute device (`fusion_clip::gpu::train`, WGSL
//! kernels through wgpu; Mesa lavapipe by default, `FUSION_DEVICE` picks another adapter):
//!
//! * its helper kernels (the merge's `scaled_add`, the `dot` reduction behind `∂L/∂λ`, the
//!   head's row normalization and its backward) against plain CPU references;
//! * the whole tower against PyTorch autograd on the tiny golden CLIP (`tests/data/grad`,
//!   made by `tools/make_grad_golden.py`): every vision weight gradient, the visual projection's,
//!   and `∂L/∂λ` of the layer-wise merge, for the entropy loss and cross-entropy, with the
//!   tolerance of `golden.rs`'s autograd test;
//! * the whole tower against `fusion_clip::autograd` (the CPU reference) on a second, random
//!   tower of other shapes (gelu, a sequence off every tile size).

mod common;

use common::{
    assert_close, clip_config, device, grad_fixture, grad_task_vectors, model_dir, Golden,
    MODEL_TOL,
};
use fusion_clip::autograd::{
    loss_and_gradients, LayerWiseMerge, Objective, VisionParams, ZeroShotHead,
};
use fusion_clip::gpu::train::{
    self, download_params, upload_params, DeviceHead, DeviceLayerWiseMerge,
};
use fusion_clip::{Activation, ClipVisionConfig, Tensor, WeightStore};
use fusion_kernels::nn;
use fusion_plugin_api::Compute;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn c() -> &'static dyn Compute {
    device()
}

/// Per tensor, the largest difference relative to the tensor's largest value (as `golden.rs`).
const GRAD_TOL: f32 = 1e-4;

/// Asserts the normwise relative error is within `tol` and returns it: the largest difference
/// over the largest `|want|`, or over `floor` if that is larger (a gradient that is zero in
/// exact arithmetic, such as `k_proj.bias`'s under softmax's shift invariance, is rounding
/// noise in every implementation).
#[track_caller]
fn rel_err(what: &str, got: &[f32], want: &[f32], floor: f32, tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs())).max(1e-30);
    let mut diff = 0.0f32;
    for (a, b) in got.iter().zip(want) {
        assert!(a.is_finite(), "{what}: got {a}");
        diff = diff.max((a - b).abs());
    }
    let err = diff / scale;
    assert!(
        err <= tol,
        "{what}: max abs diff {diff:.3e} is {err:.2e} of the largest value {scale:.3e}"
    );
    err
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

// ---------------------------------------------------------------------------------------------
// The helper kernels against CPU references

#[test]
fn scaled_add_and_dot_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    for n in [1usize, 255, 256, 257, 4097, 70_001] {
        let x = rand_vec(&mut rng, n, 1.0);
        let y = rand_vec(&mut rng, n, 1.0);
        let xt = nn::from_f32(c(), &[n], &x).unwrap();
        let yt = nn::from_f32(c(), &[n], &y).unwrap();
        nn::scaled_add(c(), xt.id(), yt.id(), n, -0.375).unwrap();
        let got = nn::read_f32(c(), yt.id()).unwrap();
        for (i, ((g, a), b)) in got.iter().zip(&x).zip(&y).enumerate() {
            let want = b + -0.375 * a;
            assert!(
                (g - want).abs() <= 1e-6,
                "scaled_add n={n} [{i}]: {g} vs {want}"
            );
        }
        // Three dots into one tensor; the last one accumulates onto the second slot.
        let out = nn::zeros(c(), &[3]).unwrap();
        nn::dot(c(), xt.id(), yt.id(), n, out.id(), 2, false).unwrap();
        nn::dot(c(), xt.id(), xt.id(), n, out.id(), 0, false).unwrap();
        nn::dot(c(), yt.id(), yt.id(), n, out.id(), 2, true).unwrap();
        let got = nn::read_f32(c(), out.id()).unwrap();
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum()
        };
        let y2: Vec<f32> = y.iter().zip(&x).map(|(b, a)| b + -0.375 * a).collect();
        let want = [dot(&x, &x), 0.0, dot(&x, &y2) + dot(&y2, &y2)];
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-5 * (n as f64).sqrt() * (w.abs() + 1.0);
            assert!(
                (f64::from(*g) - w).abs() <= tol,
                "dot n={n} slot {k}: {g} vs {w} (tolerance {tol:.2e})"
            );
        }
    }
}

#[test]
fn l2_normalize_and_its_backward_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for (rows, cols) in [(1usize, 1usize), (3, 7), (5, 256), (2, 257), (4, 1000)] {
        let x = rand_vec(&mut rng, rows * cols, 2.0);
        let dy = rand_vec(&mut rng, rows * cols, 1.0);
        let xt = nn::from_f32(c(), &[rows, cols], &x).unwrap();
        let yt = nn::zeros(c(), &[rows, cols]).unwrap();
        let nt = nn::zeros(c(), &[rows]).unwrap();
        nn::l2_normalize_rows(c(), xt.id(), yt.id(), nt.id(), rows, cols).unwrap();
        let (want_y, want_n) = fusion_clip::autograd::l2_normalize_forward(&x, cols);
        let y = nn::read_f32(c(), yt.id()).unwrap();
        rel_err("l2 normalize y", &y, &want_y, 0.0, 1e-5);
        rel_err(
            "l2 normalize norms",
            &nn::read_f32(c(), nt.id()).unwrap(),
            &want_n,
            0.0,
            1e-5,
        );
        let dt = nn::from_f32(c(), &[rows, cols], &dy).unwrap();
        nn::l2_normalize_backward(c(), yt.id(), nt.id(), dt.id(), rows, cols).unwrap();
        let want =
            fusion_clip::autograd::l2_normalize_backward(&want_y, &want_n, &dy, cols).unwrap();
        rel_err(
            &format!("l2 normalize backward {rows}x{cols}"),
            &nn::read_f32(c(), dt.id()).unwrap(),
            &want,
            0.0,
            1e-4,
        );
    }
}

#[test]
fn the_device_merge_equals_the_cpu_merge() {
    let cfg = small_config();
    let mut rng = StdRng::seed_from_u64(3);
    let pre = random_tower(&cfg, &mut rng);
    let tvs: Vec<VisionParams> = (0..3).map(|_| random_delta(&cfg, &mut rng)).collect();
    let cpu = LayerWiseMerge::new(pre.clone(), tvs.clone()).unwrap();
    let dev = DeviceLayerWiseMerge::upload(c(), &pre, &tvs).unwrap();
    assert_eq!(dev.num_models(), 3);
    assert_eq!(dev.num_tensors(), cpu.num_tensors());
    let lambdas = rand_vec(&mut rng, 3 * cpu.num_tensors(), 1.0);
    let want = cpu.merge(&lambdas).unwrap();
    let got = download_params(c(), &dev.merge(&lambdas).unwrap()).unwrap();
    for (((name, _), g), w) in want.names().iter().zip(got.params()).zip(want.params()) {
        rel_err(name, g, w, 0.0, 1e-6);
    }
    let err = dev.merge(&lambdas[1..]).err().unwrap().to_string();
    assert!(err.contains("lambdas"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The tower against PyTorch autograd (`tests/data/grad`)

/// A tensor of the tiny checkpoint at its stored shape.
fn checkpoint_tensor(store: &WeightStore, name: &str) -> Vec<f32> {
    let shape = store.shape(name).unwrap().to_vec();
    store.get(name, &shape).unwrap().into_data()
}

#[test]
fn device_gradients_match_torch_autograd() {
    let fx = grad_fixture();
    let get = |n: &str| &fx.get(n).unwrap_or_else(|| panic!("fixture has no {n}")).1;
    let cfg = clip_config().vision_config;
    let store = WeightStore::open_dir(model_dir()).unwrap();
    let pre = VisionParams::from_store(&store, &cfg).unwrap();
    let pixels = get("pixel_values");
    let batch = fx["pixel_values"].0[0];

    // The training forward alone agrees with transformers' pooler output.
    let pre_dev = upload_params(c(), &pre).unwrap();
    let pooled = train::pooled_output(c(), &pre_dev, pixels, batch).unwrap();
    let want = Golden::get().f("vision.pooler_output");
    let pooled = Tensor::new(want.shape().to_vec(), pooled).unwrap();
    assert_close(
        "device training forward pooler_output",
        &pooled,
        want,
        MODEL_TOL,
    );
    drop(pre_dev);

    let task_vectors = grad_task_vectors(&cfg);
    let merge = DeviceLayerWiseMerge::upload(c(), &pre, &task_vectors).unwrap();
    let merged = merge.merge(get("lambdas")).unwrap();
    let classes = fx["text_embeds"].0[0];
    let logit_scale = checkpoint_tensor(&store, "logit_scale")[0];
    let head = DeviceHead::new(
        c(),
        &checkpoint_tensor(&store, "visual_projection.weight"),
        cfg.hidden_size,
        get("text_embeds"),
        classes,
        logit_scale.exp(),
    )
    .unwrap();
    assert_eq!(head.classes(), classes);
    let names = pre.names();
    let labels: Vec<u32> = get("labels").iter().map(|&v| v as u32).collect();

    for (key, objective) in [
        ("entropy", Objective::Entropy { eps: 1e-8 }),
        ("cross_entropy", Objective::CrossEntropy { labels: &labels }),
    ] {
        let g = train::loss_and_gradients(c(), &merged, &head, pixels, batch, objective).unwrap();
        let want_loss = get(&format!("{key}.loss"))[0];
        println!("{key}: loss {} (torch {want_loss})", g.loss);
        assert!((g.loss - want_loss).abs() < 1e-5, "{key} loss");
        if let Some(want) = fx.get(&format!("{key}.logits")) {
            rel_err("logits", &g.logits, &want.1, 0.0, GRAD_TOL);
        }
        let dl = merge.lambda_gradients(&g.weights).unwrap();
        let lambda_err = rel_err(
            &format!("{key} dL/dλ"),
            &dl,
            get(&format!("{key}.grad.lambdas")),
            0.0,
            GRAD_TOL,
        );
        // Weight gradients, where the fixture holds them.
        let grads = download_params(c(), &g.weights).unwrap();
        let wanted: Vec<(&String, &Vec<f32>)> = names
            .iter()
            .filter_map(|(n, _)| fx.get(&format!("{key}.grad.{n}")).map(|t| (n, &t.1)))
            .collect();
        let floor = 1e-3
            * wanted
                .iter()
                .flat_map(|(_, w)| w.iter())
                .fold(0.0f32, |m, v| m.max(v.abs()));
        let mut worst = (String::new(), 0.0f32);
        for (name, want) in &wanted {
            let err = rel_err(name, grads.get(name).unwrap(), want, floor, GRAD_TOL);
            if err > worst.1 {
                worst = ((*name).clone(), err);
            }
        }
        if let Some(want) = fx.get(&format!("{key}.grad.visual_projection.weight")) {
            let proj = nn::read_f32(c(), g.projection.id()).unwrap();
            rel_err("visual_projection", &proj, &want.1, 0.0, GRAD_TOL);
        }
        println!(
            "{key}: {} weight gradients compared, worst {:.2e} ({}); dL/dλ {lambda_err:.2e}",
            wanted.len(),
            worst.1,
            worst.0
        );
        if key == "entropy" {
            assert_eq!(
                wanted.len(),
                names.len(),
                "the fixture holds every gradient"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tower against the CPU autograd on a random tower of other shapes

/// gelu, 3 heads of 16, 26 positions (off every tile size), 2 layers.
fn small_config() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 48,
        intermediate_size: 80,
        projection_dim: 24,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        num_channels: 3,
        image_size: 30,
        patch_size: 6,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-5,
    }
}

fn random_tower(cfg: &ClipVisionConfig, rng: &mut StdRng) -> VisionParams {
    VisionParams::from_fn(cfg, |name, shape| {
        let n: usize = shape.iter().product();
        let norm_weight = name.contains("layrnorm.weight")
            || name.contains("layernorm.weight")
            || name.contains("layer_norm1.weight")
            || name.contains("layer_norm2.weight");
        Ok(if norm_weight {
            (0..n).map(|_| 1.0 + rng.random_range(-0.2..0.2)).collect()
        } else {
            let fan_in = *shape.last().unwrap() as f32;
            rand_vec(rng, n, 1.5 / fan_in.sqrt())
        })
    })
    .unwrap()
}

fn random_delta(cfg: &ClipVisionConfig, rng: &mut StdRng) -> VisionParams {
    VisionParams::from_fn(cfg, |_, shape| {
        Ok(rand_vec(rng, shape.iter().product(), 0.02))
    })
    .unwrap()
}

#[test]
fn device_gradients_match_the_cpu_autograd_on_a_random_tower() {
    let cfg = small_config();
    let mut rng = StdRng::seed_from_u64(2026);
    let pre = random_tower(&cfg, &mut rng);
    let tvs: Vec<VisionParams> = (0..2).map(|_| random_delta(&cfg, &mut rng)).collect();
    let batch = 3;
    let classes = 7;
    let pixels = rand_vec(&mut rng, batch * 3 * 30 * 30, 2.0);
    let projection = rand_vec(&mut rng, cfg.projection_dim * cfg.hidden_size, 0.3);
    let mut text = rand_vec(&mut rng, classes * cfg.projection_dim, 1.0);
    for row in text.chunks_mut(cfg.projection_dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let lambdas = rand_vec(&mut rng, 2 * pre.params().len(), 1.0);
    let labels = [6u32, 0, 3];

    let cpu_merge = LayerWiseMerge::new(pre.clone(), tvs.clone()).unwrap();
    let cpu_merged = cpu_merge.merge(&lambdas).unwrap();
    let cpu_head = ZeroShotHead::new(
        projection.clone(),
        cfg.hidden_size,
        text.clone(),
        classes,
        20.0,
    )
    .unwrap();
    let merge = DeviceLayerWiseMerge::upload(c(), &pre, &tvs).unwrap();
    let merged = merge.merge(&lambdas).unwrap();
    let head = DeviceHead::new(c(), &projection, cfg.hidden_size, &text, classes, 20.0).unwrap();

    for objective in [
        Objective::Entropy { eps: 1e-8 },
        Objective::CrossEntropy { labels: &labels },
    ] {
        let want = loss_and_gradients(&cpu_merged, &cpu_head, &pixels, batch, objective).unwrap();
        let got =
            train::loss_and_gradients(c(), &merged, &head, &pixels, batch, objective).unwrap();
        println!("{objective:?}: loss {} (cpu {})", got.loss, want.loss);
        assert!((got.loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0));
        rel_err("logits", &got.logits, &want.logits, 0.0, GRAD_TOL);
        let grads = download_params(c(), &got.weights).unwrap();
        let floor = 1e-3
            * want
                .weights
                .params()
                .iter()
                .flat_map(|v| v.iter())
                .fold(0.0f32, |m, v| m.max(v.abs()));
        for (((name, _), g), w) in pre
            .names()
            .iter()
            .zip(grads.params())
            .zip(want.weights.params())
        {
            rel_err(name, g, w, floor, GRAD_TOL);
        }
        rel_err(
            "visual_projection",
            &nn::read_f32(c(), got.projection.id()).unwrap(),
            &want.projection,
            0.0,
            GRAD_TOL,
        );
        rel_err(
            "dL/dλ",
            &merge.lambda_gradients(&got.weights).unwrap(),
            &cpu_merge.lambda_gradients(&want.weights).unwrap(),
            0.0,
            GRAD_TOL,
        );
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_culprit() {
    let cfg = small_config();
    let mut rng = StdRng::seed_from_u64(5);
    let pre = random_tower(&cfg, &mut rng);
    let dev = upload_params(c(), &pre).unwrap();
    let head = DeviceHead::new(
        c(),
        &vec![0.1; cfg.projection_dim * cfg.hidden_size],
        cfg.hidden_size,
        &vec![0.1; 2 * cfg.projection_dim],
        2,
        1.0,
    )
    .unwrap();
    let err = train::loss_and_gradients(
        c(),
        &dev,
        &head,
        &[0.0; 10],
        2,
        Objective::Entropy { eps: 1e-8 },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("pixel values"), "{err}");
    let err = train::loss_and_gradients(
        c(),
        &dev,
        &head,
        &vec![0.0; 3 * 30 * 30],
        1,
        Objective::CrossEntropy { labels: &[2] },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("label 2"), "{err}");
    let err = DeviceHead::new(c(), &[0.0; 10], cfg.hidden_size, &[], 1, 1.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("projection"), "{err}");
}
