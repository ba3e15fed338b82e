//! mergekit's merge methods (`mergekit/merge_methods/*`, `mergekit/sparsify.py`) on one tensor,
//! on the CPU: elementwise arithmetic in f32 as torch does it on f32 tensors, reductions
//! (norms, dot products, sums of magnitudes) accumulated in f64, angles and scale factors in
//! f64. Each function documents the mergekit behaviour it follows where that is not obvious.

use std::collections::BTreeMap;

use fusion_plugin_api::{Error, Result};
use rayon::prelude::*;

use crate::cpu;

use crate::setting::Scalar;

/// Whether a method takes a base model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUse {
    Required,
    Optional,
    Unused,
}

/// Sparsification of task vectors (`sparsify.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    None,
    /// Keep the `density` largest magnitudes (TIES).
    Magnitude,
    /// Bernoulli(`density`) keep (DARE).
    Random,
    /// Drop the top `gamma` and the smallest magnitudes (breadcrumbs).
    MagnitudeOutliers,
    /// Keep with a probability that grows with the magnitude rank in the row (DELLA).
    DellaMagprune,
}

/// The merge methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Linear,
    Slerp,
    NuSlerp,
    MultiSlerp,
    Karcher,
    /// Generalized task arithmetic: task_arithmetic, ties, dare_*, breadcrumbs*, della*.
    Gta {
        consensus: bool,
        sparsify: Sparsify,
    },
    Sce,
    ModelStock,
    NearSwap,
    ArceeFusion,
    Ram,
    RamPlusTl,
    Passthrough,
}

/// A parameter a method reads, with mergekit's default (`None` and not required: unset).
#[derive(Clone, Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub default: Option<Scalar>,
    pub required: bool,
}

fn opt(name: &'static str, default: Scalar) -> ParamDef {
    ParamDef {
        name,
        default: Some(default),
        required: false,
    }
}
fn req(name: &'static str) -> ParamDef {
    ParamDef {
        name,
        default: None,
        required: true,
    }
}
fn num(x: f64) -> Scalar {
    Scalar::Num(x)
}
fn flag(b: bool) -> Scalar {
    Scalar::Bool(b)
}

/// A method with its parameters: `global` ones are read once per tensor, `tensor` ones per
/// input model (and may be set per model).
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub method: Method,
    pub base: BaseUse,
    pub global: Vec<ParamDef>,
    pub tensor: Vec<ParamDef>,
}

/// Every method name fusion-host runs, in mergekit's registry order.
pub const METHODS: &[&str] = &[
    "linear",
    "slerp",
    "nuslerp",
    "passthrough",
    "model_stock",
    "arcee_fusion",
    "karcher",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "multislerp",
    "nearswap",
    "sce",
    "ram",
    "ramplus_tl",
];

/// The method called `name`, with mergekit's parameters and defaults.
pub fn spec(name: &str) -> Option<Spec> {
    use BaseUse::*;
    let gta = |name: &'static str, consensus, sparsify, normalize, rescale| {
        let mut tensor = vec![req("weight"), opt("density", num(1.0))];
        match sparsify {
            Sparsify::MagnitudeOutliers => tensor.push(opt("gamma", num(0.01))),
            Sparsify::DellaMagprune => tensor.push(opt("epsilon", num(0.15))),
            _ => {}
        }
        Spec {
            name,
            method: Method::Gta {
                consensus,
                sparsify,
            },
            base: Required,
            global: vec![
                opt("int8_mask", flag(false)),
                opt("normalize", flag(normalize)),
                opt("rescale", flag(rescale)),
                opt("lambda", num(1.0)),
            ],
            tensor,
        }
    };
    let s = |name, method, base, global, tensor| Spec {
        name,
        method,
        base,
        global,
        tensor,
    };
    Some(match name {
        "linear" => s(
            "linear",
            Method::Linear,
            Unused,
            vec![opt("normalize", flag(true))],
            vec![req("weight")],
        ),
        "slerp" => s("slerp", Method::Slerp, Required, vec![req("t")], vec![]),
        "nuslerp" => s(
            "nuslerp",
            Method::NuSlerp,
            Optional,
            vec![
                opt("nuslerp_row_wise", flag(false)),
                opt("nuslerp_flatten", flag(true)),
            ],
            vec![req("weight")],
        ),
        "multislerp" => s(
            "multislerp",
            Method::MultiSlerp,
            Optional,
            vec![opt("normalize_weights", flag(true)), opt("eps", num(1e-8))],
            vec![req("weight")],
        ),
        "karcher" => s(
            "karcher",
            Method::Karcher,
            Unused,
            vec![opt("max_iter", num(10.0)), opt("tol", num(1e-5))],
            vec![],
        ),
        "task_arithmetic" => gta("task_arithmetic", false, Sparsify::None, false, false),
        "ties" => gta("ties", true, Sparsify::Magnitude, true, false),
        "dare_ties" => gta("dare_ties", true, Sparsify::Random, false, true),
        "dare_linear" => gta("dare_linear", false, Sparsify::Random, false, true),
        "breadcrumbs" => gta(
            "breadcrumbs",
            false,
            Sparsify::MagnitudeOutliers,
            false,
            false,
        ),
        "breadcrumbs_ties" => gta(
            "breadcrumbs_ties",
            true,
            Sparsify::MagnitudeOutliers,
            false,
            false,
        ),
        "della" => gta("della", true, Sparsify::DellaMagprune, true, true),
        "della_linear" => gta("della_linear", false, Sparsify::DellaMagprune, false, true),
        "sce" => s(
            "sce",
            Method::Sce,
            Required,
            vec![opt("int8_mask", flag(false)), opt("select_topk", num(1.0))],
            vec![],
        ),
        "model_stock" => s(
            "model_stock",
            Method::ModelStock,
            Required,
            vec![opt("filter_wise", flag(false))],
            vec![],
        ),
        "nearswap" => s(
            "nearswap",
            Method::NearSwap,
            Required,
            vec![req("t")],
            vec![],
        ),
        "arcee_fusion" => s(
            "arcee_fusion",
            Method::ArceeFusion,
            Required,
            vec![],
            vec![],
        ),
        "ram" => s(
            "ram",
            Method::Ram,
            Required,
            vec![opt("epsilon", num(1e-5))],
            vec![],
        ),
        "ramplus_tl" => s(
            "ramplus_tl",
            Method::RamPlusTl,
            Required,
            vec![
                opt("r", num(0.1)),
                opt("alpha", num(0.2)),
                opt("epsilon", num(1e-5)),
            ],
            vec![],
        ),
        "passthrough" => s(
            "passthrough",
            Method::Passthrough,
            Unused,
            vec![],
            vec![ParamDef {
                name: "scale",
                default: None,
                required: false,
            }],
        ),
        _ => return None,
    })
}

/// Evaluated parameters: a value, or `None` for an unset optional one.
pub type Values = BTreeMap<&'static str, Option<Scalar>>;

/// One tensor's merge: the inputs in source order (f32, same shape), and their parameters.
pub struct Job<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub tensors: Vec<Vec<f32>>,
    /// The base model's position in `tensors`.
    pub base: Option<usize>,
    pub global: &'a Values,
    pub per_model: &'a [Values],
    /// Per input: the key of its random draws (DARE, DELLA).
    pub random_keys: &'a [u64],
    /// The config's `dtype` when it is float16 or bfloat16: the methods mergekit computes in
    /// the input dtype (task arithmetic and its relatives) round every step to it.
    pub work: Option<fusion_plugin_api::DType>,
}

/// Round to the working precision (`Job::work`), as a tensor operation in that dtype does.
pub(crate) fn rounder(work: Option<fusion_plugin_api::DType>) -> fn(f32) -> f32 {
    use fusion_plugin_api::DType;
    match work {
        Some(DType::BF16) => |x| half_bf16(x),
        Some(DType::F16) => |x| half_f16(x),
        _ => |x| x,
    }
}

pub(crate) fn half_bf16(x: f32) -> f32 {
    // Round to nearest even on the upper 16 bits (NaN kept as it is). A select, not a
    // branch, so that loops over it vectorise.
    let b = x.to_bits();
    let r = f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000);
    if x.is_nan() {
        x
    } else {
        r
    }
}

pub(crate) fn half_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

impl Job<'_> {
    pub(crate) fn g(&self, name: &str) -> f64 {
        self.global
            .get(name)
            .copied()
            .flatten()
            .map_or(0.0, Scalar::num)
    }
    pub(crate) fn gflag(&self, name: &str) -> bool {
        self.global
            .get(name)
            .copied()
            .flatten()
            .is_some_and(Scalar::flag)
    }
    pub(crate) fn m(&self, i: usize, name: &str) -> Option<f64> {
        self.per_model[i]
            .get(name)
            .copied()
            .flatten()
            .map(Scalar::num)
    }
    pub(crate) fn weight(&self, i: usize) -> Result<f64> {
        self.m(i, "weight").ok_or_else(|| {
            Error::config(format!(
                "no `weight` for input {i} of tensor `{}`",
                self.name
            ))
        })
    }
    /// The inputs other than the base, as (index, tensor).
    pub(crate) fn others(&self) -> Vec<usize> {
        (0..self.tensors.len())
            .filter(|&i| Some(i) != self.base)
            .collect()
    }
    fn base_tensor(&self, method: &str) -> Result<&[f32]> {
        self.base
            .map(|b| self.tensors[b].as_slice())
            .ok_or_else(|| {
                Error::config(format!(
                    "{method}: tensor `{}` has no base model input",
                    self.name
                ))
            })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    cpu::sums3(a, b).2
}
fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}
fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}
fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Merge one tensor with `method`.
pub fn merge(method: Method, job: &Job<'_>) -> Result<Vec<f32>> {
    if job.tensors.is_empty() {
        return Err(Error::config(format!(
            "tensor `{}` has no inputs",
            job.name
        )));
    }
    match method {
        Method::Linear => linear(job),
        Method::Slerp => slerp(job),
        Method::NuSlerp => nuslerp(job),
        Method::MultiSlerp => multislerp(job),
        Method::Karcher => karcher(job),
        Method::Gta {
            consensus,
            sparsify,
        } => gta(job, consensus, sparsify),
        Method::Sce => sce(job),
        Method::ModelStock => model_stock(job),
        Method::NearSwap => nearswap(job),
        Method::ArceeFusion => arcee_fusion(job),
        Method::Ram => ram(job, false),
        Method::RamPlusTl => ram(job, true),
        Method::Passthrough => passthrough(job),
    }
}

/// The weights of a linear merge of `inputs` tensors and the divisor (Σ wᵢ when `normalize`).
/// `job.tensors` may be empty (the streaming path reads the inputs itself).
pub fn linear_weights(job: &Job<'_>, inputs: usize) -> Result<(Vec<f32>, Option<f32>)> {
    let w: Vec<f32> = (0..inputs)
        .map(|i| job.weight(i).map(|w| w as f32))
        .collect::<Result<_>>()?;
    let total: f32 = w.iter().sum();
    if !job.gflag("normalize") {
        return Ok((w, None));
    }
    if total == 0.0 {
        return Err(Error::config(format!(
            "linear: the weights of tensor `{}` sum to 0, so `normalize` cannot divide by them",
            job.name
        )));
    }
    Ok((w, Some(total)))
}

/// `linear.py`: Σ wᵢxᵢ, divided by Σ wᵢ when `normalize`.
fn linear(job: &Job<'_>) -> Result<Vec<f32>> {
    let (w, divisor) = linear_weights(job, job.tensors.len())?;
    let (normalize, total) = (divisor.is_some(), divisor.unwrap_or(1.0));
    let mut acc = vec![0f32; job.tensors[0].len()];
    // One pass per chunk over every input (torch's addcmul_ is a fused multiply-add on the
    // CPU), then the division, while the chunk is in cache.
    cpu::par_fill(&mut acc, |start, a| {
        for (x, &wi) in job.tensors.iter().zip(&w) {
            cpu::fused_axpy(a, &x[start..start + a.len()], wi);
        }
        if normalize {
            a.iter_mut().for_each(|v| *v /= total);
        }
    });
    Ok(acc)
}

/// `slerp.py`: whole-tensor SLERP from the base (t = 0) to the other model; lerp when the
/// directions are within `|cos| > 0.9995`.
fn slerp(job: &Job<'_>) -> Result<Vec<f32>> {
    if job.tensors.len() == 1 {
        return Ok(job.tensors[0].clone());
    }
    let others = job.others();
    if job.tensors.len() != 2 || others.len() != 1 {
        return Err(Error::config(format!(
            "slerp merges exactly two models, one of them the base model (tensor `{}` has {} inputs)",
            job.name,
            job.tensors.len()
        )));
    }
    let v0 = job.base_tensor("slerp")?;
    let v1 = &job.tensors[others[0]];
    let t = job.g("t");
    Ok(slerp_pair(t, v0, v1))
}

fn slerp_pair(t: f64, v0: &[f32], v1: &[f32]) -> Vec<f32> {
    let eps = 1e-8;
    // The norms and the dot product in one pass.
    let (s00, s11, s01) = cpu::sums3(v0, v1);
    let (n0, n1) = (s00.sqrt(), s11.sqrt());
    let d0 = if n0 > eps { n0 } else { 1.0 };
    let d1 = if n1 > eps { n1 } else { 1.0 };
    let dot = s01 / (d0 * d1);
    let (s0, s1) = if dot.abs() > 0.9995 {
        ((1.0 - t) as f32, t as f32)
    } else {
        let theta0 = dot.acos();
        let sin0 = theta0.sin();
        let theta_t = theta0 * t;
        (
            ((theta0 - theta_t).sin() / sin0) as f32,
            (theta_t.sin() / sin0) as f32,
        )
    };
    let mut out = vec![0f32; v0.len()];
    cpu::par_fill(&mut out, |start, o| {
        let (x, y) = (&v0[start..start + o.len()], &v1[start..start + o.len()]);
        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
            *o = s0 * x + s1 * y;
        }
    });
    out
}

/// `nuslerp.py`: SLERP of two models with `t = w₂/(w₁+w₂)`, over the flattened tensor
/// (default), its rows (`nuslerp_row_wise`) or its last-dimension vectors; with a base model,
/// of the two task vectors.
fn nuslerp(job: &Job<'_>) -> Result<Vec<f32>> {
    if job.tensors.len() == 1 {
        return Ok(job.tensors[0].clone());
    }
    let others = job.others();
    if others.len() != 2 || (job.base.is_some() && job.tensors.len() != 3) {
        return Err(Error::config(format!(
            "nuslerp merges exactly two models (plus an optional base model that is neither of them); tensor `{}` has {} inputs",
            job.name,
            job.tensors.len()
        )));
    }
    let (wa, wb) = (job.weight(others[0])?, job.weight(others[1])?);
    let t = if (wa + wb).abs() < 1e-6 {
        0.5
    } else {
        wb / (wa + wb)
    };
    let flatten = job.gflag("nuslerp_flatten");
    let row_wise = job.gflag("nuslerp_row_wise");
    let (a, b) = (&job.tensors[others[0]], &job.tensors[others[1]]);
    let (va, vb) = match job.base {
        Some(bi) => (sub(a, &job.tensors[bi]), sub(b, &job.tensors[bi])),
        None => (a.clone(), b.clone()),
    };
    let n = va.len();
    // The vectors to interpolate, as lists of flat indices.
    let groups: Vec<Vec<usize>> = if flatten || job.shape.len() <= 1 {
        vec![(0..n).collect()]
    } else if row_wise {
        // dim 0: one vector per index of the other dimensions.
        let d0 = job.shape[0];
        let rest = n / d0;
        (0..rest)
            .map(|j| (0..d0).map(|i| i * rest + j).collect())
            .collect()
    } else {
        let last = *job.shape.last().expect("shape");
        (0..n / last)
            .map(|r| (r * last..(r + 1) * last).collect())
            .collect()
    };
    let mut out = vec![0f32; n];
    for g in groups {
        let x: Vec<f32> = g.iter().map(|&i| va[i]).collect();
        let y: Vec<f32> = g.iter().map(|&i| vb[i]).collect();
        let nx = norm(&x).max(1e-7);
        let ny = norm(&y).max(1e-7);
        let cos = (dot(&x, &y) / (nx * ny)).clamp(-1.0, 1.0);
        // Colinear (mergekit 0.1.5: 1 − cos² ≤ eps², eps 1e-8): linear interpolation.
        let colinear = 1.0 - cos * cos <= 1e-16;
        let theta = cos.acos();
        let sin = theta.sin();
        let r: Vec<f32> = if colinear {
            let (p, q) = ((1.0 - t) as f32, t as f32);
            x.iter().zip(&y).map(|(&u, &v)| p * u + q * v).collect()
        } else {
            let (p, q) = (((1.0 - t) * theta).sin(), (t * theta).sin());
            x.iter()
                .zip(&y)
                .map(|(&u, &v)| ((p * u as f64 + q * v as f64) / sin) as f32)
                .collect()
        };
        for (k, &i) in g.iter().enumerate() {
            out[i] = r[k];
        }
    }
    if let Some(bi) = job.base {
        return Ok(add(&job.tensors[bi], &out));
    }
    Ok(out)
}

/// `multislerp.py`: barycentric interpolation on the hypersphere (of the task vectors when
/// there is a base model), rescaled by the weighted mean norm. The unit vectors are never
/// stored: each is its input over its norm, so the method holds two vectors besides the inputs.
fn multislerp(job: &Job<'_>) -> Result<Vec<f32>> {
    let others = job.others();
    if others.len() == 1 {
        return Ok(job.tensors[others[0]].clone());
    }
    let base = job.base.map(|b| job.tensors[b].as_slice());
    let xs: Vec<Vec<f32>> = others
        .iter()
        .map(|&i| match base {
            Some(b) => sub(&job.tensors[i], b),
            None => job.tensors[i].clone(),
        })
        .collect();
    let mut w: Vec<f64> = others
        .iter()
        .map(|&i| job.weight(i))
        .collect::<Result<_>>()?;
    if job.gflag("normalize_weights") {
        let s: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= s);
    }
    let eps = job.g("eps");
    let n = xs[0].len();
    let norms: Vec<f64> = xs.iter().map(|x| norm(x)).collect();
    // Σ wᵢ uᵢ with uᵢ = xᵢ / (‖xᵢ‖ + eps).
    let coef: Vec<f64> = norms
        .iter()
        .zip(&w)
        .map(|(nn, wi)| wi / (nn + eps))
        .collect();
    let mut mean: Vec<f32> = (0..n)
        .map(|j| {
            xs.iter()
                .zip(&coef)
                .map(|(x, c)| x[j] as f64 * c)
                .sum::<f64>() as f32
        })
        .collect();
    let mean_norm = norm(&mean);
    if mean_norm < eps {
        if xs.len() == 2 {
            let out: Vec<f32> = (0..n)
                .map(|j| (xs[0][j] as f64 * w[0] + xs[1][j] as f64 * w[1]) as f32)
                .collect();
            return Ok(match base {
                Some(b) => add(&out, b),
                None => out,
            });
        }
        return Err(Error::config(format!(
            "multislerp: the weighted sum of the inputs of tensor `{}` is zero (antipodal inputs with balancing weights)",
            job.name
        )));
    }
    mean.iter_mut()
        .for_each(|m| *m = (*m as f64 / mean_norm) as f32);
    // Tangent vectors uᵢ − (uᵢ·m) m, weighted and summed.
    let dots: Vec<f64> = xs
        .iter()
        .zip(&norms)
        .map(|(x, nn)| dot(x, &mean) / (nn + eps))
        .collect();
    let dsum: f64 = dots.iter().zip(&w).map(|(d, wi)| d * wi).sum();
    let tangent: Vec<f32> = (0..n)
        .map(|j| {
            let u: f64 = xs.iter().zip(&coef).map(|(x, c)| x[j] as f64 * c).sum();
            (u - dsum * mean[j] as f64) as f32
        })
        .collect();
    let tn = norm(&tangent) + eps;
    let avg_norm: f64 = norms.iter().zip(&w).map(|(a, b)| a * b).sum();
    let (c, s) = (tn.cos(), tn.sin() / tn);
    let out: Vec<f32> = (0..n)
        .map(|j| ((mean[j] as f64 * c + tangent[j] as f64 * s) * avg_norm) as f32)
        .collect();
    Ok(match base {
        Some(b) => add(&out, b),
        None => out,
    })
}

/// `karcher.py`: the Riemannian mean of the unit directions with equal weights (per-model
/// weights are not read), scaled by the mean norm. The unit vectors are the inputs over their
/// norms, computed where used; the iterate is float32 as in mergekit.
fn karcher(job: &Job<'_>) -> Result<Vec<f32>> {
    let k = job.tensors.len();
    if k == 1 {
        return Ok(job.tensors[0].clone());
    }
    let max_iter = job.g("max_iter") as usize;
    let tol = job.g("tol");
    let n = job.tensors[0].len();
    let alphas = vec![1.0 / k as f64; k];
    let norms: Vec<f64> = job.tensors.iter().map(|t| norm(t)).collect();
    let valid: Vec<usize> = (0..k).filter(|&i| norms[i] > tol).collect();
    if valid.is_empty() {
        return Ok(vec![0.0; n]);
    }
    let xs: Vec<&[f32]> = valid.iter().map(|&i| job.tensors[i].as_slice()).collect();
    let inv: Vec<f64> = valid.iter().map(|&i| 1.0 / norms[i]).collect();
    let asum: f64 = valid.iter().map(|&i| alphas[i]).sum();
    let a: Vec<f64> = valid.iter().map(|&i| alphas[i] / asum).collect();
    let mut u: Vec<f32> = (0..n)
        .map(|j| {
            xs.iter()
                .zip(&inv)
                .zip(&a)
                .map(|((x, s), ai)| ai * x[j] as f64 * s)
                .sum::<f64>() as f32
        })
        .collect();
    let nu = norm(&u);
    if nu < tol {
        u = xs[0].iter().map(|&v| (v as f64 * inv[0]) as f32).collect();
    } else {
        u.iter_mut().for_each(|x| *x = (*x as f64 / nu) as f32);
    }
    for _ in 0..max_iter {
        // T = Σ aᵢ θᵢ/sin θᵢ (uᵢ − cos θᵢ u), as coefficients of xᵢ and of u.
        let mut cx = vec![0f64; xs.len()];
        let mut cu = 0f64;
        for (i, x) in xs.iter().enumerate() {
            let d = (dot(&u, x) * inv[i]).clamp(-1.0, 1.0);
            let theta = d.acos();
            if theta < tol {
                continue;
            }
            let f = a[i] * theta / theta.sin();
            cx[i] = f * inv[i];
            cu -= f * d;
        }
        let tv: Vec<f32> = (0..n)
            .map(|j| {
                (xs.iter()
                    .zip(&cx)
                    .map(|(x, c)| x[j] as f64 * c)
                    .sum::<f64>()
                    + cu * u[j] as f64) as f32
            })
            .collect();
        let nt = norm(&tv);
        if nt < tol {
            break;
        }
        let (c, s) = (nt.cos(), nt.sin() / nt);
        u.iter_mut()
            .zip(&tv)
            .for_each(|(x, &t)| *x = (c * *x as f64 + s * t as f64) as f32);
        let un = norm(&u);
        if un > tol {
            u.iter_mut().for_each(|x| *x = (*x as f64 / un) as f32);
        }
    }
    let scale: f64 = alphas.iter().zip(&norms).map(|(a, n)| a * n).sum();
    Ok(u.iter().map(|&x| (scale * x as f64) as f32).collect())
}

/// A deterministic stream of uniform draws (splitmix64) for one input's tensor.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The stream of `key` from its draw number `i` on (the state is a counter, so any
    /// stretch of the tensor can be drawn on its own).
    pub(crate) fn at(key: u64, i: usize) -> Rng {
        Rng(key.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64)))
    }
    pub(crate) fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `Σ|x|` in f64 over one chunk of `cpu::CHUNK` entries (or fewer, the last).
#[inline]
pub(crate) fn chunk_l1(x: &[f32]) -> f64 {
    x.iter().map(|v| v.abs() as f64).sum()
}

/// `Σ|x|` in f64, as the in-order sum of the sums of `cpu::CHUNK`-entry chunks: the same value
/// whether the tensor is summed whole (here) or block by block (`blocks`).
pub(crate) fn l1(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(cpu::CHUNK).map(chunk_l1).collect();
    parts.iter().sum()
}

/// `rescaled_masked_tensor` with the L1 norm: scale `masked` back to `before` (the `Σ|δ|` of
/// the unmasked task vector) unless either side is under 1e-7.
fn rescale_l1_from(before: f64, masked: &mut [f32]) {
    let after = l1(masked);
    if before < 1e-7 || after < 1e-7 {
        return;
    }
    let s = (before / after) as f32;
    masked.iter_mut().for_each(|v| *v *= s);
}

/// Indices sorted by magnitude (ascending), ties by position.
fn by_magnitude(x: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()).then(a.cmp(&b)));
    idx
}

/// One task vector sparsified as `sparsify.py` does.
#[allow(clippy::too_many_arguments)]
fn sparsify(
    job: &Job<'_>,
    method: Sparsify,
    delta: Vec<f32>,
    density: f64,
    gamma: f64,
    epsilon: f64,
    rescale: bool,
    key: u64,
) -> Result<Vec<f32>> {
    if method == Sparsify::None || density >= 1.0 {
        return Ok(delta);
    }
    let n = delta.len();
    let mut mask = vec![false; n];
    match method {
        Sparsify::None => unreachable!("returned above"),
        Sparsify::Magnitude => {
            // mergekit 0.1.5: a positive density keeps at least one entry.
            if density <= 0.0 || n == 0 {
                return Ok(vec![0.0; n]);
            }
            let k = ((density * n as f64) as usize).max(1);
            mask = cpu::top_k_magnitude(&delta, k);
        }
        Sparsify::MagnitudeOutliers => {
            let target = (density * n as f64) as i64;
            let mut n_top = (gamma * n as f64) as i64;
            let mut n_bot = n as i64 - target - n_top;
            if n_bot < 0 {
                n_top += n_bot;
                n_bot = 0;
            }
            // The ascending ranks [n_bot, n − n_top), as mergekit 0.1.5 keeps them (its
            // `[n_bot : n_bot + target]`; older sources sliced `[n_bot:-n_top]`, which is
            // empty when n_top is 0).
            let order = by_magnitude(&delta);
            let end = (n as i64 - n_top).max(n_bot) as usize;
            for &i in &order[n_bot as usize..end] {
                mask[i] = true;
            }
        }
        Sparsify::Random => {
            let mut rng = Rng(key);
            mask.iter_mut().for_each(|m| *m = rng.next() < density);
        }
        Sparsify::DellaMagprune => {
            if density <= 0.0 {
                return Ok(vec![0.0; n]);
            }
            if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
                return Err(Error::config(format!(
                    "della: `epsilon` {epsilon} must keep density ± epsilon inside (0, 1) (density {density})"
                )));
            }
            // Ranks within each row (a vector is one row); mergekit ranks along dimension 1.
            let row = if job.shape.len() < 2 {
                n
            } else {
                n / job.shape[0]
            };
            let mut rng = Rng(key);
            for (r, chunk) in delta.chunks(row.max(1)).enumerate() {
                let order = by_magnitude(chunk);
                let len = chunk.len();
                for (rank, &j) in order.iter().enumerate() {
                    let norm = if len > 1 {
                        rank as f64 / (len - 1) as f64
                    } else {
                        0.5
                    };
                    let p = density - epsilon + norm * 2.0 * epsilon;
                    mask[r * row + j] = rng.next() < p;
                }
            }
        }
    }
    // In place (one tensor less held at a time); the L1 norm before masking is kept for
    // the rescale.
    let before: f64 = if rescale { l1(&delta) } else { 0.0 };
    let mut out = delta;
    out.iter_mut()
        .zip(&mask)
        .for_each(|(v, &m)| *v = if m { *v } else { 0.0 });
    drop(mask);
    if rescale {
        rescale_l1_from(before, &mut out);
    }
    Ok(out)
}

/// mergekit's `get_mask` with the "sum" method: per entry, the majority sign is that of the
/// sum over models (0 counts as +); an entry agrees when its sign equals it (0 never does).
fn sign_mask(deltas: &[Vec<f32>]) -> Vec<Vec<bool>> {
    let n = deltas[0].len();
    let majority: Vec<f32> = (0..n)
        .map(|j| {
            let s: f32 = deltas.iter().map(|d| d[j]).sum();
            if s >= 0.0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    deltas
        .iter()
        .map(|d| {
            d.iter()
                .zip(&majority)
                .map(|(&v, &m)| v != 0.0 && v.signum() == m)
                .collect()
        })
        .collect()
}

/// The per-entry step of `generalized_task_arithmetic.py` once the task vectors are sparsified
/// and weighted: the sign election (with `consensus`), the sum of the agreeing (or all) weighted
/// task vectors, the division by their weights (`normalize`), λ and the base, each step rounded
/// (`q`) as mergekit's tensors in the working dtype are. Shared by the whole-tensor path and the
/// block path (`blocks`), so that both give the same bits.
#[derive(Clone, Copy)]
pub(crate) struct Mix<'a> {
    consensus: bool,
    normalize: bool,
    lambda: f32,
    total: f32,
    weights: &'a [f32],
}

impl<'a> Mix<'a> {
    /// `weights`: the (rounded) weight of each task vector, in order.
    pub(crate) fn new(
        job: &Job<'_>,
        consensus: bool,
        weights: &'a [f32],
        q: impl Fn(f32) -> f32,
    ) -> Mix<'a> {
        Mix {
            consensus,
            normalize: job.gflag("normalize"),
            lambda: job.g("lambda") as f32,
            total: q(weights.iter().sum()),
            weights,
        }
    }

    /// One chunk of output: `out` holds the base's values and gets the merged ones; `wd[i]` is
    /// the i-th weighted task vector's chunk. Column by column (each pass over the chunk
    /// vectorises), in the order of additions of an entry-by-entry loop, so with its bits.
    pub(crate) fn apply(
        &self,
        out: &mut [f32],
        wd: &[&[f32]],
        sc: &mut MixScratch,
        q: impl Fn(f32) -> f32,
    ) {
        let len = out.len();
        let mixed = &mut sc.mixed;
        mixed.clear();
        mixed.resize(len, 0.0);
        let div = &mut sc.div;
        div.clear();
        if self.consensus {
            // mergekit's `get_mask`, "sum": the sign of the sum (0 counts as +); an entry
            // agrees when its sign is that one (0 never does).
            let sum = &mut sc.sum;
            sum.clear();
            sum.resize(len, 0.0);
            for d in wd {
                sum.iter_mut().zip(&d[..len]).for_each(|(s, &v)| *s += v);
            }
            sum.iter_mut()
                .for_each(|s| *s = if *s >= 0.0 { 1.0 } else { -1.0 });
            div.resize(len, 0.0);
            for (d, &w) in wd.iter().zip(self.weights) {
                for (((m, dv), &v), &major) in mixed
                    .iter_mut()
                    .zip(div.iter_mut())
                    .zip(&d[..len])
                    .zip(sum.iter())
                {
                    // (Adding 0 leaves the sums as they are: they are never −0.)
                    let agree = v != 0.0 && v.signum() == major;
                    *m += if agree { v } else { 0.0 };
                    *dv += if agree { w } else { 0.0 };
                }
            }
            div.iter_mut()
                .for_each(|d| *d = if *d == 0.0 { 1.0 } else { q(*d) });
        } else {
            for d in wd {
                mixed.iter_mut().zip(&d[..len]).for_each(|(m, &v)| *m += v);
            }
            let total = if self.total.abs() < 1e-8 {
                1.0
            } else {
                self.total
            };
            div.resize(len, total);
        }
        let (normalize, lambda) = (self.normalize, self.lambda);
        for ((o, &m), &divisor) in out.iter_mut().zip(mixed.iter()).zip(div.iter()) {
            let mut m = q(m);
            if normalize {
                m = q(m / divisor);
            }
            if lambda != 1.0 {
                m = q(m * lambda);
            }
            *o = q(*o + m);
        }
    }
}

/// The per-thread buffers of [`Mix::apply`].
#[derive(Default)]
pub(crate) struct MixScratch {
    sum: Vec<f32>,
    mixed: Vec<f32>,
    div: Vec<f32>,
}

/// `generalized_task_arithmetic.py`. Every step is rounded to the working dtype (`q`), as
/// mergekit's tensors in that dtype are; in float32 `q` does nothing.
fn gta(job: &Job<'_>, consensus: bool, method: Sparsify) -> Result<Vec<f32>> {
    // One copy of the loops per rounding, so that it inlines (an `fn` pointer is a call per
    // step).
    match job.work {
        Some(fusion_plugin_api::DType::BF16) => gta_in(job, consensus, method, half_bf16),
        Some(fusion_plugin_api::DType::F16) => gta_in(job, consensus, method, half_f16),
        _ => gta_in(job, consensus, method, |x: f32| x),
    }
}

fn gta_in(
    job: &Job<'_>,
    consensus: bool,
    method: Sparsify,
    q: impl Fn(f32) -> f32 + Sync + Copy,
) -> Result<Vec<f32>> {
    let base = job.base_tensor("task arithmetic")?;
    let others = job.others();
    if others.is_empty() {
        return Ok(base.to_vec());
    }
    let rescale = job.gflag("rescale");
    let mut weighted = Vec::new();
    let mut weights = Vec::new();
    for &i in &others {
        let x = &job.tensors[i];
        let mut delta = vec![0f32; base.len()];
        cpu::par_fill(&mut delta, |start, d| {
            let (x, b) = (&x[start..start + d.len()], &base[start..start + d.len()]);
            for ((d, x), b) in d.iter_mut().zip(x).zip(b) {
                *d = q(x - b);
            }
        });
        let density = job.m(i, "density").unwrap_or(1.0);
        let gamma = job.m(i, "gamma").unwrap_or(0.0);
        let epsilon = job.m(i, "epsilon").unwrap_or(0.0);
        let mut d = sparsify(
            job,
            method,
            delta,
            density,
            gamma,
            epsilon,
            rescale,
            job.random_keys[i],
        )?;
        let w = q(job.weight(i)? as f32);
        d.par_chunks_mut(cpu::CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v = q(*v * w)));
        weighted.push(d);
        weights.push(w);
    }
    let mix = Mix::new(job, consensus, &weights, q);
    let mut out = base.to_vec();
    out.par_chunks_mut(cpu::CHUNK)
        .enumerate()
        .for_each_init(MixScratch::default, |sc, (c, o)| {
            let start = c * cpu::CHUNK;
            let wd: Vec<&[f32]> = weighted
                .iter()
                .map(|w| &w[start..start + o.len()])
                .collect();
            mix.apply(o, &wd, sc, q);
        });
    Ok(out)
}

/// `sce.py`: select the top `select_topk` positions by variance across task vectors, elect
/// signs, weight each task vector by its mean square.
fn sce(job: &Job<'_>) -> Result<Vec<f32>> {
    let base = job.base_tensor("sce")?;
    let others = job.others();
    if others.is_empty() {
        return Ok(base.to_vec());
    }
    let mut tvs: Vec<Vec<f32>> = others.iter().map(|&i| sub(&job.tensors[i], base)).collect();
    let n = base.len();
    let k_models = tvs.len() as f64;
    let topk = job.g("select_topk");
    if topk < 1.0 {
        let keep: Vec<bool> = if topk <= 0.0 {
            vec![false; n]
        } else {
            let var: Vec<f64> = (0..n)
                .map(|j| {
                    let mean = tvs.iter().map(|t| t[j] as f64).sum::<f64>() / k_models;
                    tvs.iter()
                        .map(|t| (t[j] as f64 - mean).powi(2))
                        .sum::<f64>()
                        / k_models
                })
                .collect();
            let nonzero = var.iter().filter(|v| **v != 0.0).count();
            let k = (nonzero as f64 * topk) as usize;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
            let mut keep = vec![false; n];
            idx.iter().take(k).for_each(|&i| keep[i] = true);
            keep
        };
        for t in &mut tvs {
            t.iter_mut()
                .zip(&keep)
                .filter(|(_, k)| !**k)
                .for_each(|(v, _)| *v = 0.0);
        }
    }
    let mask = sign_mask(&tvs);
    let ms: Vec<f64> = tvs.iter().map(|t| dot(t, t) / n as f64).collect();
    let total: f64 = ms.iter().sum();
    let w: Vec<f32> = if total.abs() < 1e-6 {
        vec![(1.0 / k_models) as f32; tvs.len()]
    } else {
        ms.iter().map(|m| (m / total) as f32).collect()
    };
    let out = (0..n)
        .map(|j| {
            let mut num = 0f32;
            let mut den = 0f32;
            for (i, t) in tvs.iter().enumerate() {
                if mask[i][j] {
                    num += t[j] * w[i];
                    den += w[i];
                }
            }
            base[j] + num / den.max(1e-6)
        })
        .collect();
    Ok(out)
}

/// `model_stock.py`: interpolate the fine-tuned average towards the base by the mean pairwise
/// cosine of the task vectors (over the whole tensor, or per row with `filter_wise`).
fn model_stock(job: &Job<'_>) -> Result<Vec<f32>> {
    let base = job.base_tensor("model_stock")?;
    if job.tensors.len() == 1 {
        return Ok(base.to_vec());
    }
    let others = job.others();
    if others.len() < 2 {
        return Err(Error::config(format!(
            "model_stock needs at least three models (the base plus two or more); tensor `{}` has {}",
            job.name,
            job.tensors.len()
        )));
    }
    let n = base.len();
    let row = if job.gflag("filter_wise") && !job.shape.is_empty() {
        *job.shape.last().expect("shape")
    } else {
        n
    };
    let offsets: Vec<Vec<f32>> = others.iter().map(|&i| sub(&job.tensors[i], base)).collect();
    let k = others.len();
    let mut out = vec![0f32; n];
    for r in 0..n / row.max(1) {
        let span = r * row..(r + 1) * row;
        let mut cos_sum = 0f64;
        let mut pairs = 0usize;
        for i in 0..k {
            for j in i + 1..k {
                let (a, b) = (&offsets[i][span.clone()], &offsets[j][span.clone()]);
                let c = (dot(a, b) / (norm(a) * norm(b)).max(1e-6)).clamp(-1.0, 1.0);
                cos_sum += c;
                pairs += 1;
            }
        }
        let cos = cos_sum / pairs as f64;
        // mergekit 0.1.5: t = 0 where the denominator vanishes.
        let den = 1.0 + (k as f64 - 1.0) * cos;
        let t = if den.abs() < 1e-6 {
            0.0
        } else {
            (k as f64 * cos) / den
        };
        let t32 = t as f32;
        for j in span {
            let avg = others.iter().map(|&i| job.tensors[i][j]).sum::<f32>() / k as f32;
            out[j] = t32 * avg + (1.0 - t32) * base[j];
        }
    }
    Ok(out)
}

/// `nearswap.py`: move the base towards the other model where they are close:
/// `w = clamp(t / |a − b|, 0, 1)`, `w·b + (1 − w)·a`.
fn nearswap(job: &Job<'_>) -> Result<Vec<f32>> {
    let a = job.base_tensor("nearswap")?;
    let others = job.others();
    if others.is_empty() {
        return Ok(a.to_vec());
    }
    if others.len() != 1 {
        return Err(Error::config(format!(
            "nearswap merges exactly two models, the base model and one other; tensor `{}` has {} inputs",
            job.name,
            job.tensors.len()
        )));
    }
    let b = &job.tensors[others[0]];
    let t = job.g("t") as f32;
    Ok(a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let w = (t / (x - y).abs().max(1e-6)).clamp(0.0, 1.0);
            w * y + (1.0 - w) * x
        })
        .collect())
}

/// `arcee_fusion.py`: keep the other model's change where its importance (|δ| times the KL
/// divergence of the softmaxed rows) reaches median + 1.5·IQR. The quantiles are exact (mergekit
/// samples 10⁶ entries of larger tensors at random; for those the results differ).
fn arcee_fusion(job: &Job<'_>) -> Result<Vec<f32>> {
    if job.tensors.len() == 1 {
        return Ok(job.tensors[0].clone());
    }
    let base = job.base_tensor("arcee_fusion")?;
    let others = job.others();
    if job.tensors.len() != 2 || others.len() != 1 {
        return Err(Error::config(format!(
            "arcee_fusion merges exactly two models, the base model and one other; tensor `{}` has {} inputs",
            job.name,
            job.tensors.len()
        )));
    }
    let x = &job.tensors[others[0]];
    let n = x.len();
    let row = if job.shape.is_empty() {
        n
    } else {
        *job.shape.last().expect("shape")
    };
    let softmax = |v: &[f32]| -> Vec<f32> {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = v.iter().map(|&a| (a - m).exp()).collect();
        // torch multiplies by the reciprocal of the sum.
        let r = 1.0 / e.iter().sum::<f32>();
        e.iter().map(|&a| a * r + 1e-8).collect()
    };
    let mut importance = vec![0f32; n];
    for r in 0..n / row.max(1) {
        let span = r * row..(r + 1) * row;
        let p = softmax(&x[span.clone()]);
        let q = softmax(&base[span.clone()]);
        let kl: f32 = p.iter().zip(&q).map(|(&a, &b)| a * (a / b).ln()).sum();
        for j in span {
            importance[j] = (x[j] - base[j]).abs() * kl;
        }
    }
    let mut sorted = importance.clone();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f32| sorted[(q * (n - 1) as f32) as usize];
    let threshold = at(0.5) + 1.5 * (at(0.75) - at(0.25));
    Ok((0..n)
        .map(|j| {
            if importance[j] >= threshold {
                base[j] + (x[j] - base[j])
            } else {
                base[j]
            }
        })
        .collect())
}

/// `ram.py`: entries changed (|δ| > ε) by one model take its change; entries changed by several
/// take the mean of their changes. RAM+ (tensor-local) scales each model's unique changes by
/// `1 + r·clamp(shared/unique, 0, α)`.
fn ram(job: &Job<'_>, plus: bool) -> Result<Vec<f32>> {
    let base = job.base_tensor("ram")?;
    let others = job.others();
    if others.is_empty() {
        return Ok(base.to_vec());
    }
    let eps = job.g("epsilon");
    let tvs: Vec<Vec<f32>> = others.iter().map(|&i| sub(&job.tensors[i], base)).collect();
    let n = base.len();
    let touched: Vec<Vec<bool>> = tvs
        .iter()
        .map(|t| t.iter().map(|v| (v.abs() as f64) > eps).collect())
        .collect();
    let counts: Vec<u32> = (0..n)
        .map(|j| touched.iter().filter(|t| t[j]).count() as u32)
        .collect();
    let lambdas: Vec<f32> = if plus {
        let (r, alpha) = (job.g("r"), job.g("alpha"));
        touched
            .iter()
            .map(|t| {
                let shared = (0..n).filter(|&j| t[j] && counts[j] > 1).count() as f64;
                let unique = (0..n).filter(|&j| t[j] && counts[j] == 1).count() as f64;
                let rho = (shared as f32 / (unique.max(eps) as f32)) as f64;
                (1.0 + r * rho.clamp(0.0, alpha)) as f32
            })
            .collect()
    } else {
        vec![1.0; tvs.len()]
    };
    Ok((0..n)
        .map(|j| {
            let c = counts[j];
            let mut s = 0f32;
            for (i, t) in tvs.iter().enumerate() {
                if !touched[i][j] {
                    continue;
                }
                if c == 1 {
                    s += t[j] * lambdas[i];
                } else {
                    s += t[j] / c as f32;
                }
            }
            base[j] + s
        })
        .collect())
}

/// `passthrough.py`: the one input, times its `scale` when set.
fn passthrough(job: &Job<'_>) -> Result<Vec<f32>> {
    if job.tensors.len() != 1 {
        return Err(Error::config(format!(
            "passthrough takes exactly one model per tensor; tensor `{}` has {} inputs (give one source per slice, and no base_model)",
            job.name,
            job.tensors.len()
        )));
    }
    let x = &job.tensors[0];
    Ok(match job.m(0, "scale") {
        Some(s) => x.iter().map(|&v| v * s as f32).collect(),
        None => x.clone(),
    })
}
