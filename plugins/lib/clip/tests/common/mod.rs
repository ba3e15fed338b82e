//! Set-up shared by this crate's test binaries: the tiny golden CLIP (`tests/data/clip-tiny`:
//! a random-weight checkpoint and what transformers computed for it), the wgpu runtime the
//! device tests run on, and the tolerance check. Each binary uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fusion_clip::autograd::VisionParams;
use fusion_clip::{CheckpointConfig, ClipConfig, ClipVisionConfig, Tensor, TokenBatch};
use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use safetensors::{Dtype, SafeTensors};

/// Model outputs computed from the golden inputs.
pub const MODEL_TOL: f32 = 1e-4;

/// `tests/data/clip-tiny`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tiny")
}

/// The tiny `CLIPModel` checkpoint.
pub fn model_dir() -> PathBuf {
    data_dir().join("model")
}

/// The tiny checkpoint's `CLIPConfig`.
pub fn clip_config() -> ClipConfig {
    match CheckpointConfig::from_file(model_dir().join("config.json")).unwrap() {
        CheckpointConfig::Clip(c) => c,
        CheckpointConfig::Vision(_) => panic!("expected a CLIPModel config"),
    }
}

/// The adapter the device tests run on: `FUSION_DEVICE`, else the CPU one (Mesa lavapipe).
pub fn choice() -> DeviceChoice {
    match std::env::var("FUSION_DEVICE") {
        Ok(s) => s.parse().expect("FUSION_DEVICE"),
        Err(_) => DeviceChoice::Cpu,
    }
}

/// A runtime on [`choice`], or a panic that says how to get an adapter.
pub fn open(options: RuntimeOptions) -> Runtime {
    Runtime::new(&choice(), options).unwrap_or_else(|e| {
        panic!(
            "GPU tests need a wgpu adapter; none could be opened for FUSION_DEVICE={}: {e}\n\
             Install Mesa lavapipe (apt-get install mesa-vulkan-drivers) or set FUSION_DEVICE.",
            choice()
        )
    })
}

/// The binary's shared runtime with the adapter's own limits.
pub fn device() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open(RuntimeOptions::default()))
}

/// The golden tensors: f32 ones as [`Tensor`], i64 ones as `u32` vectors with their shape.
pub struct Golden {
    floats: HashMap<String, Tensor>,
    ints: HashMap<String, (Vec<usize>, Vec<u32>)>,
}

impl Golden {
    /// Read once per test binary.
    pub fn get() -> &'static Golden {
        static G: OnceLock<Golden> = OnceLock::new();
        G.get_or_init(Golden::load)
    }

    fn load() -> Self {
        let bytes = std::fs::read(data_dir().join("golden.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut floats = HashMap::new();
        let mut ints = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            match view.dtype() {
                Dtype::F32 => {
                    let data = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    floats.insert(name, Tensor::new(shape, data).unwrap());
                }
                Dtype::I64 => {
                    let data = view
                        .data()
                        .chunks_exact(8)
                        .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
                        .collect();
                    ints.insert(name, (shape, data));
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        Self { floats, ints }
    }

    /// The f32 tensor `name`.
    pub fn f(&self, name: &str) -> &Tensor {
        self.floats
            .get(name)
            .unwrap_or_else(|| panic!("golden has no {name}"))
    }

    /// The golden token batch (`input_ids`, `attention_mask`).
    pub fn tokens(&self) -> TokenBatch {
        let (shape, ids) = &self.ints["input_ids"];
        let (_, mask) = &self.ints["attention_mask"];
        TokenBatch::new(ids.clone(), mask.clone(), shape[0], shape[1]).unwrap()
    }

    /// The texts the golden tokens were made from (`golden.json`).
    pub fn texts() -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data_dir().join("golden.json")).unwrap())
                .unwrap();
        json["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }
}

/// Asserts `actual` matches `expected` within `tol` and returns the largest difference.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f32) -> f32 {
    let diff = actual
        .max_abs_diff(expected)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    println!("{what}: max abs diff {diff:.3e}");
    assert!(diff <= tol, "{what}: max abs diff {diff} > {tol}");
    diff
}

/// `tests/data/grad/grad.safetensors` (PyTorch autograd's gradients for the tiny tower, made by
/// `tools/make_grad_golden.py`): each tensor's shape and values as f32.
pub fn grad_fixture() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/grad");
    let bytes = std::fs::read(dir.join("grad.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

/// The two task vectors of `tests/data/grad` for a tower of `cfg`: tensor l of task i is
/// [`grad_task_vector`]`(i, l, ..)`.
pub fn grad_task_vectors(cfg: &ClipVisionConfig) -> Vec<VisionParams> {
    (0..2)
        .map(|i| {
            let mut l = 0;
            VisionParams::from_fn(cfg, |_, shape| {
                l += 1;
                Ok(grad_task_vector(i, l - 1, shape.iter().product()))
            })
            .unwrap()
        })
        .collect()
}

/// The task vector the fixture generator builds from its integer hash (exact in both).
pub fn grad_task_vector(i: u32, l: u32, n: usize) -> Vec<f32> {
    (0..n as u32)
        .map(|j| {
            let mut h = i
                .wrapping_mul(0x9E37_79B1)
                .wrapping_add(l.wrapping_mul(0x85EB_CA77))
                .wrapping_add(j.wrapping_mul(0xC2B2_AE3D))
                .wrapping_add(0x27D4_EB2F);
            h ^= h >> 15;
            h = h.wrapping_mul(0x2C1B_3C6D);
            h ^= h >> 12;
            h = h.wrapping_mul(0x297A_2D39);
            h ^= h >> 15;
            0.01f32 * ((f64::from(h >> 8) / f64::from(1u32 << 23) - 1.0) as f32)
        })
        .collect()
}
