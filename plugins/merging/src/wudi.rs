//! WUDI merging (Cheng et al., 2025, "Whoever Started the Interference Should End It"),
//! FusionBench `WUDIMerging`, on the CPU.
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

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{is_matrix, load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::Matrix;

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
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
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
            "WUDI merging (CPU)"
        );
        Ok(CpuMerged::model(
            inputs,
            WudiMerge {
                iter_num: self.iter_num,
                exclude_keys: self.exclude_keys.clone(),
            },
        ))
    }
}

struct WudiMerge {
    iter_num: usize,
    exclude_keys: Vec<String>,
}

impl CpuMerge for WudiMerge {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let mut sum = tvs[0].clone();
        for tv in &tvs[1..] {
            sum.iter_mut().zip(tv).for_each(|(a, x)| *a += x);
        }
        let x = if is_matrix(info) && !self.exclude_keys.iter().any(|k| k == name) {
            optimize(info.shape[0], info.shape[1], &tvs, sum, self.iter_num)?
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

/// `iter_num` Adam steps on the interference loss from `x` (m×n, row-major).
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
