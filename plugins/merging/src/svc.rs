//! Singular value calibration (SVC, "When Shared Knowledge Hurts: Spectral Over-Accumulation in
//! Model Merging"), FusionBench's `SingularValueCalibrationWithBaseMethod` (a nested
//! `base_method` merges first) and `SingularValueCalibrationArithmeticTask` (task arithmetic
//! first), in f64 as FusionBench's accelerated implementation computes; on a GPU adapter the
//! SVD of the merged task matrix runs on the device in f32 ([`crate::linalg::backend`]).
//!
//! For each 2-D float tensor with merged task matrix ΔM = M − W₀ = U·diag(s)·Vᵀ and task
//! matrices Δᵢ = Wᵢ − W₀: along each left singular vector u_r, the merged response
//! a_r = u_rᵀ ΔM and the task responses a_rᵢ = u_rᵀ Δᵢ give projection coefficients
//! c_rᵢ = ⟨a_r, a_rᵢ⟩ / max(‖a_rᵢ‖², 1e-12) (NaN and −∞ read as α); the singular value s_r is
//! scaled by γ_r = K / Σᵢ max(c_rᵢ, α). Other tensors are the base method's.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{is_matrix, load, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::{backend, svd, Backend, Matrix};

/// The merging methods of this plugin a `base_method` may name, by every name they answer to.
fn base_algorithm(config: &Value) -> Result<Box<dyn Algorithm>> {
    use crate::*;
    let target = config
        .get("_target_")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::config(
                "singular_value_calibration: `base_method` needs a `_target_` naming the merging \
                 method to calibrate",
            )
        })?
        .to_string();
    let cfg = Config::new(&target, config.clone())?;
    let short = target.rsplit('.').next().unwrap_or(&target);
    fn boxed<A: Algorithm + 'static>(a: A) -> Box<dyn Algorithm> {
        Box::new(a)
    }
    Ok(match short {
        "simple_average" | "SimpleAverageAlgorithm" => boxed(SimpleAverage::from_config(&cfg)?),
        "weighted_average" | "WeightedAverageAlgorithm" => {
            boxed(WeightedAverage::from_config(&cfg)?)
        }
        "task_arithmetic" | "TaskArithmeticAlgorithm" => boxed(TaskArithmetic::from_config(&cfg)?),
        "ties_merging" | "TiesMergingAlgorithm" => boxed(TiesMerging::from_config(&cfg)?),
        "dare_task_arithmetic" | "DareTaskArithmetic" => {
            boxed(DareTaskArithmetic::from_config(&cfg)?)
        }
        "dare_simple_average" | "DareSimpleAverage" => boxed(DareSimpleAverage::from_config(&cfg)?),
        "dare_ties_merging" | "DareTiesMerging" => boxed(DareTiesMerging::from_config(&cfg)?),
        "model_stock" | "ModelStock" => boxed(ModelStock::from_config(&cfg)?),
        "magmax" | "MagMaxAlgorithm" => boxed(MagMax::from_config(&cfg)?),
        "task_singular_vector" | "TaskSingularVectorMerging" => {
            boxed(TaskSingularVector::from_config(&cfg)?)
        }
        "iso_c" | "ISO_C_Merge" => boxed(IsoC::from_config(&cfg)?),
        "iso_cts" | "ISO_CTS_Merge" => boxed(IsoCts::from_config(&cfg)?),
        "wudi" | "WUDIMerging" => boxed(Wudi::from_config(&cfg)?),
        _ => {
            return Err(Error::config(format!(
                "singular_value_calibration: `base_method._target_: {target}` is not a merging \
                 method fusion-host can calibrate; use one of simple_average, weighted_average, \
                 task_arithmetic, ties_merging, dare_task_arithmetic, dare_simple_average, \
                 dare_ties_merging, model_stock, magmax, task_singular_vector, iso_c, iso_cts, \
                 wudi (or their FusionBench class names)"
            )))
        }
    })
}

fn alpha(config: &Config) -> Result<f64> {
    let _: Option<Value> = config.get("accelerator")?;
    config.require("alpha")
}

/// SVC around a nested `base_method` (a FusionBench method config). Parameters: `alpha`
/// (required), `base_method` (required), `accelerator` (accepted; the calibration runs on the
/// CPU).
pub struct SvcWithBaseMethod {
    alpha: f64,
    base: Box<dyn Algorithm>,
}

impl FromConfig for SvcWithBaseMethod {
    fn from_config(config: &Config) -> Result<Self> {
        let base: Value = config.require("base_method")?;
        Ok(SvcWithBaseMethod {
            alpha: alpha(config)?,
            base: base_algorithm(&base)?,
        })
    }
}

impl Algorithm for SvcWithBaseMethod {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        calibrate(pool, ctx, self.base.as_ref(), self.alpha)
    }
}

/// SVC after task arithmetic. Parameters: `scaling_factor` and `alpha` (required),
/// `accelerator` (accepted; CPU).
pub struct SvcTaskArithmetic {
    alpha: f64,
    base: crate::TaskArithmetic,
}

impl FromConfig for SvcTaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        let scaling_factor: f64 = config.require("scaling_factor")?;
        let ta = Config::new(
            "task_arithmetic",
            fusion_plugin_api::serde_json::json!({ "scaling_factor": scaling_factor }),
        )?;
        Ok(SvcTaskArithmetic {
            alpha: alpha(config)?,
            base: crate::TaskArithmetic::from_config(&ta)?,
        })
    }
}

impl Algorithm for SvcTaskArithmetic {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        calibrate(pool, ctx, &self.base, self.alpha)
    }
}

fn calibrate(
    pool: &dyn ModelPool,
    ctx: &Context,
    base: &dyn Algorithm,
    alpha: f64,
) -> Result<Model> {
    const NAME: &str = "singular_value_calibration";
    let mut inputs = Inputs::open(pool, NAME, true, 1)?;
    let merged = base
        .run(pool, ctx)
        .map_err(|e| e.context(format!("{NAME}: running the base method")))?;
    let mut matrices = 0;
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        let theirs = merged.info(&name).map_err(|e| {
            e.context(format!(
                "{NAME}: the base method's model lacks tensor `{name}`"
            ))
        })?;
        if theirs.shape != info.shape {
            return Err(Error::model(format!(
                "{NAME}: the base method's tensor `{name}` has shape {:?}, the models {:?}",
                theirs.shape, info.shape
            )));
        }
        matrices += usize::from(is_matrix(&info));
    }
    if matrices == 0 {
        return Err(Error::config(format!(
            "{NAME} calibrates the singular values of 2-D weights, and the models have none"
        )));
    }
    tracing::info!(alpha, matrices, "singular value calibration");
    let backend = backend(ctx, NAME);
    // The result is the base method's model, calibrated: its tensors, names and files.
    inputs.reference = crate::inputs::Member {
        name: "_merged_".into(),
        model: merged.clone(),
    };
    Ok(CpuMerged::model(
        inputs,
        Svc {
            merged,
            alpha,
            backend,
        },
    ))
}

struct Svc {
    merged: Model,
    alpha: f64,
    backend: Backend,
}

impl CpuMerge for Svc {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let merged = self.merged.to_f32(name)?.0;
        if !is_matrix(info) {
            return Ok(merged);
        }
        let (m, n) = (info.shape[0], info.shape[1]);
        let base = load(inputs.base(), name)?;
        let tasks = inputs
            .models
            .iter()
            .map(|member| load(member, name))
            .collect::<Result<Vec<_>>>()?;
        svc_on(&self.backend, m, n, &base, &merged, &tasks, self.alpha)
    }
}

/// SVC's calibration of one m×n weight (row-major): `merged` the base method's, `base` the
/// pretrained one, `tasks` the fine-tuned ones; the SVD of the merged task matrix on `backend`
/// (f32 on the device), the rest in f64.
pub fn svc_on(
    backend: &Backend,
    m: usize,
    n: usize,
    base: &[f32],
    merged: &[f32],
    tasks: &[Vec<f32>],
    alpha: f64,
) -> Result<Vec<f32>> {
    if base.len() != m * n || merged.len() != m * n || tasks.iter().any(|t| t.len() != m * n) {
        return Err(Error::model(format!(
            "singular_value_calibration: needs weights of {m}x{n} values each"
        )));
    }
    let base = Matrix::from_f32(m, n, base);
    let map = |e: crate::linalg::LinalgError| Error::model(e.to_string());
    let dm = Matrix::from_f32(m, n, merged).sub(&base).map_err(map)?;
    let d = match backend {
        Backend::Cpu => svd(&dm),
        Backend::Device(_) => {
            let mut d = backend.truncated_svds(std::slice::from_ref(&dm), m.min(n))?;
            d.pop().expect("one SVD per matrix")
        }
    };
    let ut = d.u.t(); // R×m
    let merged_resp = ut.matmul(&dm).map_err(map)?; // R×n
    let r = d.s.len();
    let mut coef_sum = vec![0.0f64; r];
    for task in tasks {
        let delta = Matrix::from_f32(m, n, task).sub(&base).map_err(map)?;
        let resp = ut.matmul(&delta).map_err(map)?;
        for (k, sum) in coef_sum.iter_mut().enumerate() {
            let (a, t) = (merged_resp.row(k), resp.row(k));
            let denom = t.iter().map(|x| x * x).sum::<f64>().max(1e-12);
            let mut c = a.iter().zip(t).map(|(x, y)| x * y).sum::<f64>() / denom;
            if c.is_nan() || c == f64::NEG_INFINITY {
                c = alpha;
            }
            *sum += c.max(alpha);
        }
    }
    let k = tasks.len() as f64;
    let s: Vec<f64> = d.s.iter().zip(&coef_sum).map(|(s, c)| k / c * s).collect();
    let out = d.u.scale_columns(&s).matmul(&d.vt).map_err(map)?;
    Ok(out
        .data()
        .iter()
        .zip(base.data())
        .map(|(x, b)| (x + b) as f32)
        .collect())
}
