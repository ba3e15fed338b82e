//! Merges in the singular-vector subspaces of task matrices, on the CPU (see `linalg.rs`):
//! Task Singular Vector Merging (TSV-M, FusionBench `TaskSingularVectorMerging`) and isotropic
//! merging in the common subspace (ISO-C, `ISO_C_Merge`) and in the common and task-specific
//! subspaces (ISO-CTS, `ISO_CTS_Merge`).
//!
//! The independent SVDs of one tensor (one per task vector, and the two polar factors) run on
//! as many threads as there are cores (`parallel.rs`), the SVDs themselves are faer's. On a GPU
//! adapter the per-task SVDs of TSV-M and ISO-CTS and ISO-C's SVD of the summed task vectors
//! run instead on the device (`fusion_kernels::linalg`, f32); the choice is logged ([`crate::linalg::backend`]).
//!
//! Each acts on every 2-D float tensor not named in `exclude_keys`; other tensors (vectors, layer
//! norms, excluded keys) get the mean of the task vectors, as FusionBench does. Task vectors
//! are formed in f32 as torch does; the SVDs and products run in f64, and the merged task
//! vector is rounded to f32 before it is scaled and added to `_pretrained_` in f32.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{is_matrix, load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::{backend, orthogonalize, svd, truncated_svd, Backend, Matrix};
use crate::parallel::map_parallel;

/// `exclude_keys`: tensor names (exact) left out of the SVD and averaged instead.
fn exclude_keys(config: &Config) -> Result<Vec<String>> {
    Ok(config.get("exclude_keys")?.unwrap_or_default())
}

/// The 2-D tensors the method acts on; none is an error (the method would be a plain average).
fn matrices(
    inputs: &Inputs,
    exclude: &[String],
    algorithm: &str,
) -> Result<Vec<(String, TensorInfo)>> {
    let mut out = Vec::new();
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        if is_matrix(&info) && !exclude.contains(&name) {
            out.push((name, info));
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "{algorithm} works on the singular vectors of 2-D weights, and the models have none{}",
            if exclude.is_empty() {
                String::new()
            } else {
                " outside `exclude_keys`".to_string()
            }
        )));
    }
    Ok(out)
}

/// The running mean of FusionBench's TSV-M and ISO-CTS, in f32: m ← v₀, m ← m + (vᵢ − m)/(i+1).
fn running_mean(tvs: &[Vec<f32>]) -> Vec<f32> {
    let mut mean = tvs[0].clone();
    for (i, tv) in tvs.iter().enumerate().skip(1) {
        let d = (i + 1) as f32;
        mean.iter_mut()
            .zip(tv)
            .for_each(|(m, v)| *m += (v - *m) / d);
    }
    mean
}

/// θ₀ + λ·τ in f32.
fn add_scaled(inputs: &Inputs, name: &str, tv: &[f32], scale: f32) -> Result<Vec<f32>> {
    let mut base = load(inputs.base(), name)?;
    base.iter_mut().zip(tv).for_each(|(b, t)| *b += t * scale);
    Ok(base)
}

fn matrix(info: &TensorInfo, v: &[f32]) -> Matrix {
    Matrix::from_f32(info.shape[0], info.shape[1], v)
}

/// TSV-M's `alpha`: none (1), one factor for the merged task vector, or one per model applied
/// to the task vectors before the SVDs.
#[derive(Clone, Debug)]
enum Alpha {
    Merged(f64),
    PerModel(Vec<f64>),
}

/// Task Singular Vector Merging (Gargiulo et al., 2025). For each 2-D weight, with T task
/// vectors and k = min(rows, cols): keep the leading ⌊k/T⌋ singular triplets of each, stack the
/// left and the right singular vectors, replace each stack by its nearest orthonormal matrix
/// (the polar factor), and recombine them with the kept singular values. Other tensors get the
/// mean task vector. θ = θ₀ + α·τ.
///
/// Parameters (FusionBench's): `alpha` (a number scales the merged task vector; a list, one
/// per model, scales the task vectors first; null is 1; its config file sets 1), `exclude_keys`
/// (null), `return_single_task_models` (false; when true the method also returns, under each
/// model's pool name, θ₀ plus that model's share of the merged task vector, and the merged
/// model as `merged`, as FusionBench does).
pub struct TaskSingularVector {
    alpha: Alpha,
    exclude_keys: Vec<String>,
    return_single_task_models: bool,
}

impl FromConfig for TaskSingularVector {
    fn from_config(config: &Config) -> Result<Self> {
        let alpha = match config.get::<Value>("alpha")? {
            None => Alpha::Merged(1.0),
            Some(Value::Array(_)) => Alpha::PerModel(config.require("alpha")?),
            Some(_) => Alpha::Merged(config.require("alpha")?),
        };
        Ok(TaskSingularVector {
            alpha,
            exclude_keys: exclude_keys(config)?,
            return_single_task_models: config.get_or("return_single_task_models", false)?,
        })
    }
}

impl Algorithm for TaskSingularVector {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let (inputs, tsvm) = self.prepare(pool, ctx)?;
        Ok(CpuMerged::model(inputs, tsvm))
    }

    fn run_models(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Vec<(String, Model)>> {
        if !self.return_single_task_models {
            return Ok(vec![(String::new(), self.run(pool, ctx)?)]);
        }
        let (inputs, tsvm) = self.prepare(pool, ctx)?;
        // FusionBench's dict: each model's own share under its pool name, then `merged`. Each
        // model computes its tensors when asked for, repeating the SVDs of that tensor, so that
        // memory holds one tensor of each input rather than T + 1 whole models.
        let mut models: Vec<(String, Model)> = (0..inputs.models.len())
            .map(|index| {
                let single = TsvmSingle {
                    index,
                    pre: tsvm.pre.clone(),
                    exclude_keys: tsvm.exclude_keys.clone(),
                    backend: tsvm.backend.clone(),
                };
                (
                    inputs.models[index].name.clone(),
                    CpuMerged::model(inputs.clone(), single),
                )
            })
            .collect();
        if models.iter().any(|(name, _)| name == "merged") {
            return Err(Error::config(
                "task_singular_vector: with `return_single_task_models: true` the merged model \
                 is returned as `merged`, and the pool has a model of that name; rename it",
            ));
        }
        models.push(("merged".to_string(), CpuMerged::model(inputs, tsvm)));
        Ok(models)
    }
}

impl TaskSingularVector {
    /// Open and check the models; the merge of the merged model.
    fn prepare(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<(Inputs, Tsvm)> {
        const NAME: &str = "task_singular_vector";
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        let t = inputs.models.len();
        let pre = match &self.alpha {
            Alpha::PerModel(a) if a.len() != t => {
                return Err(Error::config(format!(
                    "{NAME}: `alpha` has {} values for {t} models",
                    a.len()
                )))
            }
            Alpha::PerModel(a) => Some(a.iter().map(|&x| x as f32).collect()),
            Alpha::Merged(_) => None,
        };
        for (name, info) in matrices(&inputs, &self.exclude_keys, NAME)? {
            let k = info.shape[0].min(info.shape[1]);
            if k < t {
                return Err(Error::config(format!(
                    "{NAME}: tensor `{name}` ({}x{}) has rank at most {k}, too small to give each \
                     of the {t} task vectors one singular direction; name it in `exclude_keys` to \
                     average it instead",
                    info.shape[0], info.shape[1]
                )));
            }
        }
        let post = match self.alpha {
            Alpha::Merged(a) => a as f32,
            Alpha::PerModel(_) => 1.0,
        };
        tracing::info!(models = t, alpha = ?self.alpha, "task singular vector merging");
        Ok((
            inputs,
            Tsvm {
                pre,
                post,
                exclude_keys: self.exclude_keys.clone(),
                backend: backend(ctx, NAME),
            },
        ))
    }
}

struct Tsvm {
    pre: Option<Vec<f32>>,
    post: f32,
    exclude_keys: Vec<String>,
    backend: Backend,
}

impl CpuMerge for Tsvm {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = self.task_vectors(inputs, name)?;
        let merged = if is_matrix(info) && !self.exclude_keys.iter().any(|k| k == name) {
            tsvm_matrix(info, &tvs, &self.backend)?
        } else {
            running_mean(&tvs)
        };
        add_scaled(inputs, name, &merged, self.post)
    }
}

impl Tsvm {
    /// The task vectors of `name`, each scaled by its per-model `alpha` when there is one.
    fn task_vectors(&self, inputs: &Inputs, name: &str) -> Result<Vec<Vec<f32>>> {
        let mut tvs = task_vectors(inputs, name)?;
        if let Some(a) = &self.pre {
            for (tv, &a) in tvs.iter_mut().zip(a) {
                tv.iter_mut().for_each(|x| *x *= a);
            }
        }
        Ok(tvs)
    }
}

/// One model of TSV-M's `return_single_task_models`: θ₀ plus model `index`'s term of the
/// merged task vector (its block of the orthogonalized singular vectors, with its own singular
/// values) on the 2-D weights, plus the mean task vector elsewhere; the global `alpha` is not
/// applied, as in FusionBench.
struct TsvmSingle {
    index: usize,
    pre: Option<Vec<f32>>,
    exclude_keys: Vec<String>,
    backend: Backend,
}

impl CpuMerge for TsvmSingle {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let tsvm = Tsvm {
            pre: self.pre.clone(),
            post: 1.0,
            exclude_keys: Vec::new(),
            backend: self.backend.clone(),
        };
        let tvs = tsvm.task_vectors(inputs, name)?;
        let delta = if is_matrix(info) && !self.exclude_keys.iter().any(|k| k == name) {
            tsvm_blocks(info, &tvs, &self.backend)?.single(self.index)?
        } else {
            running_mean(&tvs)
        };
        add_scaled(inputs, name, &delta, 1.0)
    }
}

/// TSV-M's factors of one 2-D weight: the orthogonalized stacks of every task's leading `r`
/// left and right singular vectors, and their singular values.
struct TsvmBlocks {
    u: Matrix,
    s: Vec<f64>,
    vt: Matrix,
    r: usize,
}

impl TsvmBlocks {
    /// The merged task vector: U·diag(s)·Vᵀ.
    fn merged(&self) -> Result<Vec<f32>> {
        let out = self
            .u
            .scale_columns(&self.s)
            .matmul(&self.vt)
            .map_err(|e| Error::model(e.to_string()))?;
        Ok(out.to_f32())
    }

    /// Task `i`'s term of the merged task vector: its `r` columns of U, singular values and
    /// rows of Vᵀ.
    fn single(&self, i: usize) -> Result<Vec<f32>> {
        let (from, to) = (i * self.r, (i + 1) * self.r);
        let out = self
            .u
            .columns(from, to)
            .scale_columns(&self.s[from..to])
            .matmul(&self.vt.row_range(from, to))
            .map_err(|e| Error::model(e.to_string()))?;
        Ok(out.to_f32())
    }
}

/// TSV-M's merged task vector of one 2-D weight.
fn tsvm_matrix(info: &TensorInfo, tvs: &[Vec<f32>], backend: &Backend) -> Result<Vec<f32>> {
    tsvm_blocks(info, tvs, backend)?.merged()
}

fn tsvm_blocks(info: &TensorInfo, tvs: &[Vec<f32>], backend: &Backend) -> Result<TsvmBlocks> {
    let t = tvs.len();
    let k = info.shape[0].min(info.shape[1]);
    // int(k * (1 / T)) in Python's float arithmetic.
    let r = (k as f64 * (1.0 / t as f64)).floor() as usize;
    // The T truncated SVDs are independent: spread over the cores, or one batch on the device.
    let mats: Vec<Matrix> = tvs.iter().map(|tv| matrix(info, tv)).collect();
    let svds = backend.truncated_svds(&mats, r)?;
    let mut us = Vec::with_capacity(t);
    let mut s = Vec::with_capacity(t * r);
    let mut vts = Vec::with_capacity(t);
    for d in svds {
        us.push(d.u);
        s.extend_from_slice(&d.s);
        vts.push(d.vt);
    }
    // FusionBench pads the stacks with zero columns up to k, whose polar-factor columns meet
    // zero singular values; the product is the same without them.
    let (u, vt) = polar_pair(
        Matrix::hcat(&us).map_err(|e| Error::model(e.to_string()))?,
        Matrix::vcat(&vts).map_err(|e| Error::model(e.to_string()))?,
    )?;
    Ok(TsvmBlocks { u, s, vt, r })
}

/// ISO-C (Marczak et al., 2025): for each 2-D weight, the sum of the task vectors with every
/// singular value replaced by their mean (its spectrum made isotropic); other tensors get the
/// mean task vector. θ = θ₀ + λ·τ. Parameters: `scaling_factor` λ (required; FusionBench's config
/// file sets 1.0), `exclude_keys` (null).
pub struct IsoC {
    scaling_factor: f32,
    exclude_keys: Vec<String>,
}

impl FromConfig for IsoC {
    fn from_config(config: &Config) -> Result<Self> {
        let s: f64 = config.require("scaling_factor")?;
        Ok(IsoC {
            scaling_factor: s as f32,
            exclude_keys: exclude_keys(config)?,
        })
    }
}

impl Algorithm for IsoC {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        const NAME: &str = "iso_c";
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        matrices(&inputs, &self.exclude_keys, NAME)?;
        tracing::info!(
            models = inputs.models.len(),
            scaling_factor = self.scaling_factor,
            "ISO-C"
        );
        Ok(CpuMerged::model(
            inputs,
            Iso {
                scaling_factor: self.scaling_factor,
                exclude_keys: self.exclude_keys.clone(),
                common_space_fraction: None,
                backend: backend(ctx, NAME),
            },
        ))
    }
}

/// ISO-CTS (Marczak et al., 2025): for each 2-D weight with k = min(rows, cols), the leading
/// singular vectors of the summed task vectors span a common subspace (a `common_space_fraction`
/// of k, adjusted so the rest divides evenly among the tasks); each task vector, its common part
/// removed, gives its leading singular vectors for the rest. The left and right stacks are
/// orthogonalized (polar factor) and recombined with every singular value set to the mean of
/// the kept ones. Other tensors get the mean task vector. θ = θ₀ + λ·τ. Parameters:
/// `scaling_factor` λ and `common_space_fraction` (both required; FusionBench's config file
/// sets 1.0 and 0.8), `exclude_keys` (null).
pub struct IsoCts {
    scaling_factor: f32,
    common_space_fraction: f64,
    exclude_keys: Vec<String>,
}

impl FromConfig for IsoCts {
    fn from_config(config: &Config) -> Result<Self> {
        let s: f64 = config.require("scaling_factor")?;
        let f: f64 = config.require("common_space_fraction")?;
        let f = crate::params::unit_interval(f, "common_space_fraction", "iso_cts")?;
        Ok(IsoCts {
            scaling_factor: s as f32,
            common_space_fraction: f,
            exclude_keys: exclude_keys(config)?,
        })
    }
}

impl Algorithm for IsoCts {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        const NAME: &str = "iso_cts";
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        matrices(&inputs, &self.exclude_keys, NAME)?;
        tracing::info!(
            models = inputs.models.len(),
            scaling_factor = self.scaling_factor,
            common_space_fraction = self.common_space_fraction,
            "ISO-CTS"
        );
        Ok(CpuMerged::model(
            inputs,
            Iso {
                scaling_factor: self.scaling_factor,
                exclude_keys: self.exclude_keys.clone(),
                common_space_fraction: Some(self.common_space_fraction),
                backend: backend(ctx, NAME),
            },
        ))
    }
}

/// ISO-C (`common_space_fraction` none) or ISO-CTS.
struct Iso {
    scaling_factor: f32,
    exclude_keys: Vec<String>,
    common_space_fraction: Option<f64>,
    backend: Backend,
}

impl CpuMerge for Iso {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let n = tvs.len() as f32;
        let svd_key = is_matrix(info) && !self.exclude_keys.iter().any(|k| k == name);
        let merged = match (svd_key, self.common_space_fraction) {
            (false, None) => {
                // sum(tvs) / n
                let mut sum = tvs[0].clone();
                for tv in &tvs[1..] {
                    sum.iter_mut().zip(tv).for_each(|(a, x)| *a += x);
                }
                sum.iter_mut().for_each(|a| *a /= n);
                sum
            }
            (false, Some(_)) => running_mean(&tvs),
            (true, None) => iso_c_matrix(info, &tvs, &self.backend)?,
            (true, Some(f)) => iso_cts_matrix(info, &tvs, f, &self.backend)?,
        };
        add_scaled(inputs, name, &merged, self.scaling_factor)
    }
}

fn sum_matrix(info: &TensorInfo, tvs: &[Vec<f32>]) -> Matrix {
    let mut sum = vec![0.0f64; tvs[0].len()];
    for tv in tvs {
        sum.iter_mut()
            .zip(tv)
            .for_each(|(a, &x)| *a += f64::from(x));
    }
    Matrix::from_rows(info.shape[0], info.shape[1], sum)
}

fn mean(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len() as f64
}

/// ISO-C's task matrix: mean(s)·U·Vᵀ of the summed task vectors, the SVD on `backend`.
fn iso_c_matrix(info: &TensorInfo, tvs: &[Vec<f32>], backend: &Backend) -> Result<Vec<f32>> {
    let sum = sum_matrix(info, tvs);
    let d = match backend {
        Backend::Cpu => svd(&sum),
        Backend::Device(_) => {
            let k = sum.rows().min(sum.cols());
            let mut d = backend.truncated_svds(std::slice::from_ref(&sum), k)?;
            d.pop().expect("one SVD per matrix")
        }
    };
    let s = vec![mean(&d.s); d.s.len()];
    let out =
        d.u.scale_columns(&s)
            .matmul(&d.vt)
            .map_err(|e| Error::model(e.to_string()))?;
    Ok(out.to_f32())
}

/// ISO-C's merged task matrix (before `scaling_factor`) of the task vectors `tvs` (each m×n,
/// row-major) with its SVD on `backend`: the device path's check against the CPU's.
pub fn iso_c_on(backend: &Backend, m: usize, n: usize, tvs: &[Vec<f32>]) -> Result<Vec<f32>> {
    if tvs.is_empty() || tvs.iter().any(|t| t.len() != m * n) {
        return Err(Error::model(format!(
            "iso_c: needs task vectors of {m}x{n} values each"
        )));
    }
    let info = TensorInfo {
        dtype: DType::F32,
        shape: vec![m, n],
    };
    iso_c_matrix(&info, tvs, backend)
}

/// The polar factors of the stacked left and right singular vectors, on two threads.
fn polar_pair(u: Matrix, vt: Matrix) -> Result<(Matrix, Matrix)> {
    let mut out = map_parallel(&[u, vt], |m| Ok(orthogonalize(m)))?.into_iter();
    let (u, vt) = (out.next(), out.next());
    Ok((u.expect("two factors"), vt.expect("two factors")))
}

/// Python's `round`: to the nearest integer, halves to even.
fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// ISO-CTS's task matrix (see [`IsoCts`]).
fn iso_cts_matrix(
    info: &TensorInfo,
    tvs: &[Vec<f32>],
    fraction: f64,
    backend: &Backend,
) -> Result<Vec<f32>> {
    let map = |e: crate::linalg::LinalgError| Error::model(e.to_string());
    let t = tvs.len();
    let k = info.shape[0].min(info.shape[1]);
    // FusionBench's sizes, in its float arithmetic: the common space, then the task-specific
    // total rounded to a multiple of T, and the common space again as what is left.
    let common0 = (k as f64 * fraction).floor() as usize;
    let specific_total = round_half_even((k - common0) as f64 / t as f64) as usize * t;
    let common = k - specific_total;
    let per_task = specific_total / t;

    let common_svd = truncated_svd(&sum_matrix(info, tvs), common).map_err(map)?;
    let uc = common_svd.u;
    let uct = uc.t();
    // Each task's specific part is independent: spread over the cores; their SVDs run on the
    // CPU likewise, or as one batch on the device.
    let parts = map_parallel(tvs, |tv| {
        let w = matrix(info, tv);
        // w − Uc·Ucᵀ·w: the part outside the common space.
        w.sub(&uc.matmul(&uct.matmul(&w).map_err(map)?).map_err(map)?)
            .map_err(map)
    })?;
    let svds = backend.truncated_svds(&parts, per_task)?;
    let mut us = Vec::with_capacity(t + 1);
    let mut s = Vec::with_capacity(k);
    let mut vts = Vec::with_capacity(t + 1);
    for d in svds {
        us.push(d.u);
        s.extend_from_slice(&d.s);
        vts.push(d.vt);
    }
    us.push(uc);
    s.extend_from_slice(&common_svd.s);
    vts.push(common_svd.vt);
    let (u, vt) = polar_pair(
        Matrix::hcat(&us).map_err(map)?,
        Matrix::vcat(&vts).map_err(map)?,
    )?;
    let m = mean(&s);
    let out = u
        .scale_columns(&vec![m; u.cols()])
        .matmul(&vt)
        .map_err(map)?;
    Ok(out.to_f32())
}

#[cfg(test)]
mod tests {
    use super::round_half_even;

    #[test]
    fn python_round() {
        for (x, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (2.4, 2.0),
            (2.6, 3.0),
            (7.0, 7.0),
        ] {
            assert_eq!(round_half_even(x), want, "round({x})");
        }
    }
}
