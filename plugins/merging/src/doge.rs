//! DOGE-TA (Wei et al., 2025, "Modeling Multi-Task Model Merging as Adaptive Projective
//! Gradient Descent"), FusionBench `DOGE_TA_Algorithm` (`doge_ta/doge_ta`), on the CPU.
//!
//! It acts on the weights FusionBench selects by name: those with `encoder` and `weight` in
//! their name and no `layer_norm` (a CLIP encoder's attention and MLP weights); every other
//! tensor is the pretrained one. For each such weight, with T task vectors τᵢ and
//! λᵢ = `lamda`/‖τᵢ‖ (this weight's norm):
//!
//! - the shared subspace: each τᵢ's leading ⌊k/T⌋ left singular vectors (k = min(m, n)) side
//!   by side, and the leading ⌊k/`subspace`⌋ left singular vectors Uₛ of that stack; P = UₛUₛᵀ;
//! - a modification δ (started at zero) takes 400 Adam steps (learning rate 1e-4, torch's
//!   update) on L(δ) = Σⱼ ‖rowsum(τⱼ ∘ (τⱼ − S − Λδ))‖², S = Σᵢ λᵢτᵢ, Λ = Σᵢ λᵢ, with its
//!   gradient ∇L = −2Λ Σⱼ diag(rⱼ) τⱼ (rⱼ the row sums) written out and projected off the
//!   subspace, ∇ ← ∇ − P∇, before each step;
//! - θ = θ₀ + Σᵢ λᵢ ((τᵢ + δ) ∘ mᵢ), mᵢ keeping the entries where |τᵢ| is in the top `K`% of
//!   task vector i's magnitudes over all the selected weights.
//!
//! The masks' thresholds need a pass over the task vectors; the rest is computed tensor by
//! tensor when the host asks for it.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::{svd, LinalgError, Matrix};

const NAME: &str = "DOGE_TA";
const STEPS: usize = 400;
const LR: f64 = 1e-4;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// DOGE-TA. Parameters (FusionBench's, all required; its config file sets them):
/// `subspace` (6: the shared subspace keeps k/`subspace` directions), `K` (30: the percentage
/// of each task vector's entries kept; a value ≤ 1 is a fraction), `lamda` (0.07: the task
/// vectors' scale, over their norm).
pub struct DogeTa {
    subspace: f64,
    keep: f64,
    lamda: f64,
}

impl FromConfig for DogeTa {
    fn from_config(config: &Config) -> Result<Self> {
        let subspace: f64 = config.require("subspace")?;
        if !(subspace.is_finite() && subspace > 0.0) {
            return Err(Error::config(format!(
                "{NAME}: `subspace` must be a positive number, got {subspace}"
            )));
        }
        let k: f64 = config.require("K")?;
        let keep = if k > 1.0 { k / 100.0 } else { k };
        if !(0.0..1.0).contains(&keep) {
            return Err(Error::config(format!(
                "{NAME}: `K` {k} keeps {}% of the entries; FusionBench's mask takes a percentage \
                 below 100 (or a fraction below 1)",
                keep * 100.0
            )));
        }
        let lamda: f64 = config.require("lamda")?;
        if !lamda.is_finite() {
            return Err(Error::config(format!(
                "{NAME}: `lamda` must be a number, got {lamda}"
            )));
        }
        Ok(DogeTa {
            subspace,
            keep,
            lamda,
        })
    }
}

/// FusionBench's selection: `encoder` and `weight` in the name, `layer_norm` not.
fn selected(name: &str) -> bool {
    name.contains("encoder") && !name.contains("layer_norm") && name.contains("weight")
}

impl Algorithm for DogeTa {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        let t = inputs.models.len();
        let mut keys = Vec::new();
        for name in inputs.names()? {
            if !selected(&name) {
                continue;
            }
            let info = inputs.info(&name)?;
            if !(info.dtype.is_float() && info.shape.len() == 2 && info.numel() > 0) {
                return Err(Error::config(format!(
                    "{NAME} works on the 2-D weights it selects by name (`encoder` and `weight` \
                     in the name, no `layer_norm`), and `{name}` has shape {:?}",
                    info.shape
                )));
            }
            let k = info.shape[0].min(info.shape[1]);
            if k < t {
                return Err(Error::config(format!(
                    "{NAME}: tensor `{name}` ({}x{}) has rank at most {k}, too small to give \
                     each of the {t} task vectors one singular direction",
                    info.shape[0], info.shape[1]
                )));
            }
            keys.push(name);
        }
        if keys.is_empty() {
            return Err(Error::config(format!(
                "{NAME} works on the weights with `encoder` and `weight` in their names (no \
                 `layer_norm`), and the models have none"
            )));
        }
        // The masks' thresholds: task vector i's k-th smallest magnitude over the selected
        // weights, k = d − ⌊d·K⌋.
        let mut thresholds = Vec::with_capacity(t);
        for i in 0..t {
            let mut mags = Vec::new();
            for name in &keys {
                let base = load(inputs.base(), name)?;
                let x = load(&inputs.models[i], name)?;
                mags.extend(x.iter().zip(&base).map(|(a, b)| (a - b).abs()));
            }
            let d = mags.len();
            let k = d - (d as f64 * self.keep) as usize;
            let (_, kth, _) = mags.select_nth_unstable_by(k - 1, f32::total_cmp);
            thresholds.push(*kth);
        }
        tracing::info!(
            models = t,
            weights = keys.len(),
            subspace = self.subspace,
            "DOGE-TA (CPU)"
        );
        Ok(CpuMerged::model(
            inputs,
            Doge {
                subspace: self.subspace,
                lamda: self.lamda,
                thresholds,
            },
        ))
    }
}

struct Doge {
    subspace: f64,
    lamda: f64,
    thresholds: Vec<f32>,
}

impl CpuMerge for Doge {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let mut base = load(inputs.base(), name)?;
        if !selected(name) {
            return Ok(base);
        }
        let tvs = task_vectors(inputs, name)?;
        let (m, n) = (info.shape[0], info.shape[1]);
        let lamdas: Vec<f32> = tvs
            .iter()
            .map(|tv| {
                let norm = tv.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt() as f32;
                self.lamda as f32 / norm
            })
            .collect();
        let delta = optimize(m, n, &tvs, &lamdas, self.subspace)
            .map_err(|e| Error::model(e.to_string()))?;
        // Σᵢ λᵢ((τᵢ + δ) ∘ mᵢ), summed in task order, added to θ₀.
        let mut sum = vec![0.0f32; m * n];
        for ((tv, l), kth) in tvs.iter().zip(&lamdas).zip(&self.thresholds) {
            for ((s, x), d) in sum.iter_mut().zip(tv).zip(&delta) {
                let kept = if x.abs() >= *kth { x + d } else { 0.0 };
                *s += kept * l;
            }
        }
        base.iter_mut().zip(&sum).for_each(|(b, s)| *b += s);
        Ok(base)
    }
}

/// The shared subspace's basis Uₛ (m × ⌊k/subspace⌋).
fn subspace_basis(
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    subspace: f64,
) -> std::result::Result<Matrix, LinalgError> {
    let k = m.min(n);
    let r = (k as f64 / tvs.len() as f64) as usize;
    // FusionBench pads the stack with zero columns up to k; they add only zero singular
    // values, so the leading left singular vectors are those of the T·r filled columns.
    let filled = r * tvs.len();
    let mut stack = Matrix::zeros(m, filled);
    for (i, tv) in tvs.iter().enumerate() {
        let d = svd(&Matrix::from_f32(m, n, tv));
        for row in 0..m {
            for c in 0..r {
                stack[(row, i * r + c)] = d.u[(row, c)];
            }
        }
    }
    let keep = ((k as f64 / subspace) as usize).min(filled);
    Ok(svd(&stack).u.columns(0, keep))
}

/// ∇L at δ (see the module docs) into `grad`: for each task j and row a, with
/// r = Σ_b τⱼ[a,b](τⱼ[a,b] − S[a,b] − Λδ[a,b]), ∂(r²)/∂δ[a,b] = −2rΛτⱼ[a,b].
fn gradient(
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    s: &[f32],
    big_lambda: f32,
    delta: &[f32],
    grad: &mut [f64],
) {
    grad.iter_mut().for_each(|g| *g = 0.0);
    for tv in tvs {
        for row in 0..m {
            let range = row * n..(row + 1) * n;
            let mut r = 0.0f64;
            for c in range.clone() {
                let v = f64::from(tv[c]);
                let d = f64::from(delta[c] * big_lambda);
                r += v * (v - f64::from(s[c]) - d);
            }
            let coef = -2.0 * r * f64::from(big_lambda);
            for c in range {
                grad[c] += coef * f64::from(tv[c]);
            }
        }
    }
}

/// δ after DOGE's projected Adam steps.
fn optimize(
    m: usize,
    n: usize,
    tvs: &[Vec<f32>],
    lamdas: &[f32],
    subspace: f64,
) -> std::result::Result<Vec<f32>, LinalgError> {
    let us = subspace_basis(m, n, tvs, subspace)?;
    let ust = us.t();
    // S = Σᵢ λᵢτᵢ and Λ = Σᵢ λᵢ in f32, as torch sums the scaled stack.
    let mut s = vec![0.0f32; m * n];
    for (tv, l) in tvs.iter().zip(lamdas) {
        s.iter_mut().zip(tv).for_each(|(a, x)| *a += x * l);
    }
    let big_lambda: f32 = lamdas.iter().sum();
    let mut delta = vec![0.0f32; m * n];
    let mut m1 = vec![0.0f32; m * n];
    let mut m2 = vec![0.0f32; m * n];
    let mut grad = vec![0.0f64; m * n];
    for step in 1..=STEPS {
        gradient(m, n, tvs, &s, big_lambda, &delta, &mut grad);
        // grad − Uₛ(Uₛᵀ grad)
        let g = Matrix::from_rows(m, n, grad.clone());
        let along = us.matmul(&ust.matmul(&g)?)?;
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
        for (i, p) in delta.iter_mut().enumerate() {
            let g = (grad[i] - along.data()[i]) as f32;
            m1[i] += (g - m1[i]) * w1;
            m2[i] = m2[i] * beta2 + w2 * g * g;
            let denom = m2[i].sqrt() / bc2_sqrt + eps;
            *p -= step_size * (m1[i] / denom);
        }
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss of [`optimize`]'s gradient, for the finite-difference check.
    fn loss(m: usize, n: usize, tvs: &[Vec<f32>], lamdas: &[f32], delta: &[f64]) -> f64 {
        let big: f64 = lamdas.iter().map(|&l| f64::from(l)).sum();
        let mut s = vec![0.0f64; m * n];
        for (tv, l) in tvs.iter().zip(lamdas) {
            s.iter_mut()
                .zip(tv)
                .for_each(|(a, x)| *a += f64::from(*x) * f64::from(*l));
        }
        let mut total = 0.0;
        for tv in tvs {
            for row in 0..m {
                let r: f64 = (row * n..(row + 1) * n)
                    .map(|c| {
                        let v = f64::from(tv[c]);
                        v * (v - s[c] - big * delta[c])
                    })
                    .sum();
                total += r * r;
            }
        }
        total
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (m, n) = (3, 4);
        let tvs: Vec<Vec<f32>> = (0..2)
            .map(|t| {
                (0..m * n)
                    .map(|i| (((i + 3 * t) * 7 % 11) as f32 - 5.0) / 8.0)
                    .collect()
            })
            .collect();
        let lamdas = [0.25f32, 0.5];
        let s: Vec<f32> = (0..m * n)
            .map(|c| 0.25 * tvs[0][c] + 0.5 * tvs[1][c])
            .collect();
        let delta: Vec<f32> = (0..m * n).map(|i| (i as f32 - 5.0) / 64.0).collect();
        let mut grad = vec![0.0; m * n];
        gradient(m, n, &tvs, &s, 0.75, &delta, &mut grad);
        let at: Vec<f64> = delta.iter().map(|&d| f64::from(d)).collect();
        for k in 0..m * n {
            let h = 1e-6;
            let mut a = at.clone();
            let mut b = at.clone();
            a[k] += h;
            b[k] -= h;
            let fd = (loss(m, n, &tvs, &lamdas, &a) - loss(m, n, &tvs, &lamdas, &b)) / (2.0 * h);
            assert!((fd - grad[k]).abs() < 1e-6, "{k}: {fd} vs {}", grad[k]);
        }
    }

    /// T·⌊k/T⌋ < k (FusionBench's zero padding): the basis comes from the filled columns, with
    /// orthonormal columns, and no zero singular values to complete (6 tasks, k = 64 on the
    /// demo's 64-wide layers failed so).
    #[test]
    fn subspace_basis_when_the_tasks_do_not_fill_k() {
        let (m, n) = (8, 8);
        let tvs: Vec<Vec<f32>> = (0..3)
            .map(|t| {
                (0..m * n)
                    .map(|i| (((i + 5 * t) * 7 % 13) as f32 - 6.0) / 5.0)
                    .collect()
            })
            .collect();
        let u = subspace_basis(m, n, &tvs, 2.0).unwrap();
        assert_eq!((u.rows(), u.cols()), (8, 4));
        let g = u.t().matmul(&u).unwrap();
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((g[(i, j)] - want).abs() < 1e-9);
            }
        }
    }
}
