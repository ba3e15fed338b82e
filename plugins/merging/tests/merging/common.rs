//! Shared test fixtures: the device, a counting compute wrapper, an in-memory model pool, the
//! merge-tiny golden fixtures, and comparisons.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_merging::*;
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{ComputeLimits, MemoryStateDict};

/// The shared runtime (one device for the whole test binary).
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        let choice: DeviceChoice = match std::env::var("FUSION_DEVICE") {
            Ok(s) => s.parse().expect("FUSION_DEVICE"),
            Err(_) => DeviceChoice::Cpu,
        };
        Arc::new(
            Runtime::new(&choice, RuntimeOptions::default()).unwrap_or_else(|e| {
                panic!(
                    "these tests need a wgpu adapter; `{choice}` could not be opened: {e}\n\
                 Install Mesa lavapipe (mesa-vulkan-drivers) or set FUSION_DEVICE."
                )
            }),
        )
    })
    .clone()
}

/// A context with the shared device and `seed`.
pub fn ctx(seed: Option<u64>) -> Context {
    Context::local(seed, false, Some(runtime() as Arc<dyn Compute>))
}

/// A compute handle that counts the tensors created through it and not yet released.
pub struct Counting {
    inner: Arc<dyn Compute>,
    live: AtomicI64,
    peak: AtomicI64,
}

impl Counting {
    pub fn new() -> Arc<Self> {
        Arc::new(Counting {
            inner: runtime(),
            live: AtomicI64::new(0),
            peak: AtomicI64::new(0),
        })
    }
    pub fn live(&self) -> i64 {
        self.live.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> i64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Compute for Counting {
    fn device_name(&self) -> String {
        self.inner.device_name()
    }
    fn limits(&self) -> ComputeLimits {
        self.inner.limits()
    }
    fn create(&self, dtype: DType, shape: &[usize], data: Option<&[u8]>) -> Result<GpuTensor> {
        let t = self.inner.create(dtype, shape, data)?;
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(live, Ordering::SeqCst);
        Ok(t)
    }
    fn write(&self, tensor: GpuTensor, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write(tensor, offset, data)
    }
    fn read(&self, tensor: GpuTensor) -> Result<Vec<u8>> {
        self.inner.read(tensor)
    }
    fn describe(&self, tensor: GpuTensor) -> Result<(DType, Vec<usize>)> {
        self.inner.describe(tensor)
    }
    fn release(&self, tensor: GpuTensor) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.inner.release(tensor)
    }
    fn dispatch(&self, call: &KernelCall<'_>) -> Result<()> {
        self.inner.dispatch(call)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}

/// An in-memory model pool over named models, in the given order.
pub struct Pool(pub Vec<(String, Model)>);

impl ModelPool for Pool {
    fn all_model_names(&self) -> Result<Vec<String>> {
        Ok(self.0.iter().map(|(n, _)| n.clone()).collect())
    }
    fn load_model(&self, name: &str) -> Result<Model> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| Error::config(format!("no model `{name}` in the test pool")))
    }
}

/// The merge-tiny fixture folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/merge-tiny")
}

/// A fixture model by pool name (`_pretrained_`, `task_a` ...).
pub fn fixture_model(name: &str) -> Model {
    let path = fixtures()
        .join("models")
        .join(format!("{name}.safetensors"));
    fusion_checkpoint::open_model(path.to_str().unwrap()).expect("fixture model")
}

/// A pool of fixture models.
pub fn fixture_pool(names: &[&str]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| (n.to_string(), fixture_model(n)))
            .collect(),
    )
}

/// A copy of `model` with every float tensor stored as `dtype`.
pub fn as_dtype(model: &Model, dtype: DType) -> Model {
    let mut sd = MemoryStateDict::new();
    for name in model.names().unwrap() {
        let (v, shape) = model.to_f32(&name).unwrap();
        sd.insert_f32(name, shape, &v, dtype).unwrap();
    }
    Model::new(sd)
}

/// A model from f32 tensors.
pub fn model_from(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Model {
    let mut sd = MemoryStateDict::new();
    for (name, shape, v) in tensors {
        sd.insert_f32(*name, shape.clone(), v, DType::F32).unwrap();
    }
    Model::new(sd)
}

/// The largest `max|a − b| / max|b|` over the tensors of `expected` (which `got` must match by
/// name and shape).
pub fn max_rel_error(got: &Model, expected: &Model) -> f64 {
    let mut names = got.names().unwrap();
    let mut want = expected.names().unwrap();
    names.sort();
    want.sort();
    assert_eq!(names, want, "tensor names differ");
    let mut worst = 0.0f64;
    for name in &want {
        let (g, gs) = got.to_f32(name).unwrap();
        let (e, es) = expected.to_f32(name).unwrap();
        assert_eq!(gs, es, "shape of `{name}`");
        let scale = e
            .iter()
            .fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
            .max(1e-30);
        let err = g
            .iter()
            .zip(&e)
            .fold(0.0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
        worst = worst.max(err / scale);
    }
    worst
}

/// Build an algorithm from a FusionBench-style `_target_` and config.
pub fn build(
    target: &str,
    config: fusion_plugin_api::serde_json::Value,
) -> Result<Box<dyn Algorithm>> {
    let cfg = Config::new(target, config)?;
    Ok(match target {
        "simple_average" | "fusion_bench.method.SimpleAverageAlgorithm" => {
            Box::new(SimpleAverage::from_config(&cfg)?)
        }
        "weighted_average" | "fusion_bench.method.WeightedAverageAlgorithm" => {
            Box::new(WeightedAverage::from_config(&cfg)?)
        }
        "task_arithmetic" | "fusion_bench.method.TaskArithmeticAlgorithm" => {
            Box::new(TaskArithmetic::from_config(&cfg)?)
        }
        "ties_merging" | "fusion_bench.method.TiesMergingAlgorithm" => {
            Box::new(TiesMerging::from_config(&cfg)?)
        }
        "dare_task_arithmetic" => Box::new(DareTaskArithmetic::from_config(&cfg)?),
        "dare_simple_average" => Box::new(DareSimpleAverage::from_config(&cfg)?),
        "dare_ties_merging" => Box::new(DareTiesMerging::from_config(&cfg)?),
        "slerp" | "fusion_bench.method.SlerpMergeAlgorithm" => Box::new(Slerp::from_config(&cfg)?),
        "model_stock" | "fusion_bench.method.model_stock.ModelStock" => {
            Box::new(ModelStock::from_config(&cfg)?)
        }
        "breadcrumbs" => Box::new(Breadcrumbs::from_config(&cfg)?),
        "breadcrumbs_ties" => Box::new(BreadcrumbsTies::from_config(&cfg)?),
        "della" => Box::new(Della::from_config(&cfg)?),
        "della_linear" => Box::new(DellaLinear::from_config(&cfg)?),
        "magmax" | "fusion_bench.method.MagMaxAlgorithm" => Box::new(MagMax::from_config(&cfg)?),
        "expo" | "fusion_bench.method.ExPOAlgorithm" => Box::new(ExPO::from_config(&cfg)?),
        "linear_interpolation" | "fusion_bench.method.LinearInterpolationAlgorithm" => {
            Box::new(LinearInterpolation::from_config(&cfg)?)
        }
        "magnitude_diff_pruning" | "fusion_bench.method.MagnitudeDiffPruningAlgorithm" => {
            Box::new(MagnitudeDiffPruning::from_config(&cfg)?)
        }
        "task_singular_vector" | "fusion_bench.method.TaskSingularVectorMerging" => {
            Box::new(TaskSingularVector::from_config(&cfg)?)
        }
        "iso_c" | "fusion_bench.method.ISO_C_Merge" => Box::new(IsoC::from_config(&cfg)?),
        "iso_cts" | "fusion_bench.method.ISO_CTS_Merge" => Box::new(IsoCts::from_config(&cfg)?),
        "wudi" | "fusion_bench.method.WUDIMerging" => Box::new(Wudi::from_config(&cfg)?),
        "singular_value_calibration"
        | "fusion_bench.method.singular_value_calibration.generic.SingularValueCalibrationWithBaseMethod" => {
            Box::new(SvcWithBaseMethod::from_config(&cfg)?)
        }
        "singular_value_calibration_task_arithmetic"
        | "fusion_bench.method.singular_value_calibration.task_arithmetic.SingularValueCalibrationArithmeticTask" => {
            Box::new(SvcTaskArithmetic::from_config(&cfg)?)
        }
        other => {
            return Err(Error::config(format!(
                "no such algorithm in this test: {other}"
            )))
        }
    })
}

/// Run `target` with `config` on `pool`.
pub fn merge(
    target: &str,
    config: fusion_plugin_api::serde_json::Value,
    pool: &Pool,
    ctx: &Context,
) -> Result<Model> {
    build(target, config)?.run(pool, ctx)
}

/// Materialize a lazy model into memory (every tensor computed once).
pub fn materialize(model: &Model) -> Model {
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
    Model::new(sd)
}
