//! WUDI merging (Cheng et al., 2025, "Whoever Started the Interference Should End It"),
//! FusionBench `WUDIMerging`, with its Adam loop on the compute device (WGSL) or on the CPU.
//!
//! For each 2-D weight with task vectors τᵢ, the merged task vector x starts at Σᵢ τᵢ and takes
//! `iter_num` Adam steps (learning rate 1e-5, β = (0.9, 0.999), ε = 1e-8, as FusionBench) on
//! the interference loss L(x) = Σᵢ ‖(x − τᵢ) τᵢᵀ‖²_F / ‖τᵢ‖²_F. Other tensors get the mean task
//! vector. θ = θ₀ + x.
//!
//! The gradient ∇L = 2 Σᵢ (x − τᵢ) τᵢᵀτᵢ / ‖τᵢ‖² = 2 (x·A − B), with A = Σᵢ τᵢᵀτᵢ/‖τᵢ‖² (n×n) and
//! B = Σᵢ τᵢ τᵢᵀτᵢ/‖τᵢ‖² (m×n) fixed, so each step costs one m×n by n×n product instead of
//! FusionBench's autograd through every task's m×m product; A and B are formed in f64. The
//! parameter and Adam's moments are kept in f32 and updated with torch's formulas, as
//! FusionBench's optimizer does.
//!
//! Where the loop runs is chosen per adapter as for the SVD methods
//! ([`crate::linalg::backend_for`]: the device on a GPU, the CPU on a CPU adapter,
//! `FUSION_LINALG=cpu|device` to force). On the device A and B are formed by products
//! (`fusion_kernels::nn::gemm`, f32, one task vector on the device at a time) and each step is
//! one product x·A and one fused Adam kernel (`fusion_kernels::linalg::adam_step`), the
//! parameter and the moments staying on the device until the last step.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{is_matrix, load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::{backend_for, Backend, Matrix};

// Python floats in FusionBench's optimizer; torch casts each scalar to f32 where it meets a tensor.
const LR: f64 = 1e-5;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// WUDI merging. Parameters (FusionBench's): `iter_num` (required; its config file sets 400),
/// `exclude_keys` (null: tensor names averaged instead).
pub struct Wudi {
    iter_num: usize,
    exclude_keys: Vec<String>,
}

impl FromConfig for Wudi {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(Wudi {
            iter_num: config.require("iter_num")?,
            exclude_keys: config.get("exclude_keys")?.unwrap_or_default(),
        })
    }
}

impl Algorithm for Wudi {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        const NAME: &str = "wudi";
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        let mut matrices = 0;
        for name in inputs.names()? {
            if is_matrix(&inputs.info(&name)?) && !self.exclude_keys.contains(&name) {
                matrices += 1;
            }
        }
        if matrices == 0 {
            return Err(Error::config(format!(
                "{NAME} optimizes the 2-D weights' task vectors, and the models have none{}",
                if self.exclude_keys.is_empty() {
                    ""
                } else {
                    " outside `exclude_keys`"
                }
            )));
        }
        tracing::info!(
            models = inputs.models.len(),
            iter_num = self.iter_num,
            matrices,
            "WUDI merging"
        );
        let backend = backend_for(
            ctx,
            NAME,
            "the Adam loop",
            "WGSL products and a fused Adam kernel, f32",
            "f64 products, f32 Adam",
        );
        Ok(CpuMerged::model(
            inputs,
            WudiMerge {
                iter_num: self.iter_num,
                exclude_keys: self.exclude_keys.clone(),
                backend,
            },
        ))
    }
}

struct WudiMerge {
    iter_num: usize,
    exclude_keys: Vec<String>,
    backend: Backend,
}

impl CpuMerge for WudiMerge {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let mut sum = tvs[0].clone();
        for tv in &tvs[1..] {
            sum.iter_mut().zip(tv).for_each(|(a, x)| *a += x);
        }
        let x = if is_matrix(info) && !self.exclude_keys.iter().any(|k| k == name) {
            tracing::debug!(tensor = name, shape = ?info.shape, "wudi: optimizing");
            optimize_on(
                &self.backend,
                info.shape[0],
                info.shape[1],
                &tvs,
                sum,
                self.iter_num,
            )?
        } else {
            let n = tvs.len() as f32;
            sum.iter_mut().for_each(|a| *a /= n);
            sum
        };
        let mut base = load(inputs.base(), name)?;
        base.iter_mut().zip(&x).for_each(|(b, t)| *b += t);
        Ok(base)
    }
}

/// `iter_num` Adam steps of WUDI's interference loss for the task vectors `tvs` (each m×n,
/// row-major) from `x` (FusionBench starts from their sum), on `backend`: the merged task
/// vector.
pub fn optimize_on(
    backend: &Backend,
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    x: Vec<f32>,
    iter_num: usize,
) -> Result<Vec<f32>> {
    if tvs.iter().any(|t| t.len() != m * n) || x.len() != m * n {
        return Err(Error::model(format!(
            "wudi: the task vectors and the start must each hold {m}x{n} values"
        )));
    }
    match backend {
        Backend::Cpu => optimize(m, n, tvs, x, iter_num),
        Backend::Device(ctx) => optimize_device(ctx.compute()?, m, n, tvs, x, iter_num),
    }
}

/// The Adam loop on the device (see the module comment).
fn optimize_device(
    c: &dyn Compute,
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    x: Vec<f32>,
    iter_num: usize,
) -> Result<Vec<f32>> {
    use fusion_kernels::linalg::{adam_step, AdamStep};
    use fusion_kernels::nn::{gemm, Gemm};
    use fusion_plugin_api::DeviceTensor;
    let zeros = |shape: &[usize]| DeviceTensor::zeros(c, DType::F32, shape);
    let (a, b, g) = (zeros(&[n, n])?, zeros(&[m, n])?, zeros(&[n, n])?);
    let mut first = true;
    for tv in tvs {
        let l2: f64 = tv.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        if l2 == 0.0 {
            tracing::warn!("wudi: a task vector is zero; it is left out of the loss");
            continue;
        }
        let t = DeviceTensor::from_f32(c, &[m, n], tv)?;
        let inv = (1.0 / l2) as f32;
        // g = τᵀτ; A += g/‖τ‖²; B += τ·g/‖τ‖².
        let gram = Gemm::dense(n, n, m, true, false);
        gemm(c, t.id(), t.id(), g.id(), &gram)?;
        gemm(
            c,
            t.id(),
            t.id(),
            a.id(),
            &Gemm {
                alpha: inv,
                accumulate: !first,
                ..gram
            },
        )?;
        gemm(
            c,
            t.id(),
            g.id(),
            b.id(),
            &Gemm {
                alpha: inv,
                accumulate: !first,
                ..Gemm::dense(m, n, n, false, false)
            },
        )?;
        first = false;
    }
    let x = DeviceTensor::from_f32(c, &[m, n], &x)?;
    if first {
        // Every task vector zero: no loss, no gradient; torch's Adam steps by 0.
        return Ok(fusion_kernels::nn::read_f32(c, x.id())?);
    }
    let (m1, m2, xa) = (zeros(&[m, n])?, zeros(&[m, n])?, zeros(&[m, n])?);
    let product = Gemm::dense(m, n, n, false, false);
    for step in 1..=iter_num {
        gemm(c, x.id(), a.id(), xa.id(), &product)?;
        // ∇L = 2 (x·A − B)
        adam_step(
            c,
            x.id(),
            m1.id(),
            m2.id(),
            xa.id(),
            b.id(),
            m * n,
            2.0,
            &AdamStep {
                lr: LR,
                beta1: BETA1,
                beta2: BETA2,
                eps: EPS,
                step,
            },
        )?;
        if step % 100 == 0 {
            tracing::debug!(step, iter_num, "wudi: Adam steps on the device");
        }
    }
    Ok(fusion_kernels::nn::read_f32(c, x.id())?)
}

/// `iter_num` Adam steps on the interference loss from `x` (m×n, row-major), on the CPU.
fn optimize(
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    mut x: Vec<f32>,
    iter_num: usize,
) -> Result<Vec<f32>> {
    let map = |e: crate::linalg::LinalgError| Error::model(e.to_string());
    let mut a = Matrix::zeros(n, n);
    let mut b = Matrix::zeros(m, n);
    for tv in tvs {
        let t = Matrix::from_f32(m, n, tv);
        let l2: f64 = t.data().iter().map(|v| v * v).sum();
        if l2 == 0.0 {
            // FusionBench divides by zero here (NaN); a zero task vector adds no interference.
            tracing::warn!("wudi: a task vector is zero; it is left out of the loss");
            continue;
        }
        let gram = t.t().matmul(&t).map_err(map)?;
        let tg = t.matmul(&gram).map_err(map)?;
        a = add_scaled(&a, &gram, 1.0 / l2);
        b = add_scaled(&b, &tg, 1.0 / l2);
    }
    let mut m1 = vec![0.0f32; m * n];
    let mut m2 = vec![0.0f32; m * n];
    for step in 1..=iter_num {
        let xm = Matrix::from_f32(m, n, &x);
        let xa = xm.matmul(&a).map_err(map)?;
        // Python floats in torch's Adam: the bias corrections in f64, used as f32 scalars.
        let bc1 = 1.0 - BETA1.powi(step as i32);
        let bc2 = 1.0 - BETA2.powi(step as i32);
        let step_size = (LR / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (w1, beta2, w2, eps) = (
            (1.0 - BETA1) as f32,
            BETA2 as f32,
            (1.0 - BETA2) as f32,
            EPS as f32,
        );
        for (i, ((p, g_a), g_b)) in x.iter_mut().zip(xa.data()).zip(b.data()).enumerate() {
            let g = (2.0 * (g_a - g_b)) as f32;
            // torch: exp_avg.lerp_(grad, 1 − β1); exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1 − β2)
            m1[i] += (g - m1[i]) * w1;
            m2[i] = m2[i] * beta2 + w2 * g * g;
            let denom = m2[i].sqrt() / bc2_sqrt + eps;
            *p -= step_size * (m1[i] / denom);
        }
    }
    Ok(x)
}

fn add_scaled(acc: &Matrix, m: &Matrix, s: f64) -> Matrix {
    let data = acc
        .data()
        .iter()
        .zip(m.data())
        .map(|(a, b)| a + s * b)
        .collect();
    Matrix::from_rows(acc.rows(), acc.cols(), data)
}
