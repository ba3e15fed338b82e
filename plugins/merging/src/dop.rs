//! DOP: continual merging by dual projections (Tang et al., NeurIPS 2025, "Continual Model
//! Merging without Data: Dual Projections for Balancing Stability and Plasticity"), FusionBench
//! `DOPMerging` (`dop/dop_general`) and `ContinualDOPForCLIP` (`dop/dop`, see
//! [`ContinualDopForClip`] for what differs), on the CPU.
//!
//! The merged model starts as the first model; each next model is merged with it layer by
//! layer. For a linear layer's weight, with W₁ the merged weight, W₂ the new model's and W₀
//! the pretrained one, each task vector τᵢ = Wᵢ − W₀ gives its leading singular triplets
//! (Uᵢ, sᵢ, Vᵢ: the shortest prefix whose cumulative share of the singular values reaches
//! `svd_epsilon`), and X, started at (W₁ + W₂)/2, takes `num_steps` Adam steps (torch's update,
//! learning rate `lr`) on Σᵢ cᵢ Lᵢ(X) with
//!
//! Lᵢ(X) = ‖diag(sᵢ) Uᵢᵀ (X − Wᵢ)‖²_F + ‖(X − Wᵢ) Vᵢ diag(sᵢ)‖²_F
//!
//! (`svd_proj_space` u keeps the first term, v the second, uv both). The gradient is written
//! out: ∇Lᵢ = 2 Uᵢ diag(sᵢ²) Uᵢᵀ Δᵢ + 2 Δᵢ Vᵢ diag(sᵢ²) Vᵢᵀ, Δᵢ = X − Wᵢ. The weights cᵢ are
//! (`alpha`, 1 − `alpha`), or with `mgda` the two-task min-norm solution (MGDA, Sener & Koltun)
//! of the loss-normalized gradients at each step, smoothed from (`alpha`, 1 − `alpha`) with
//! decay `ema_beta` when `ema`. Biases, the parameters of other leaf modules and the weights of
//! layers named in `exclude_keys` get (W₁ + W₂)/2; parameters of modules with submodules are
//! the pretrained ones (FusionBench rebuilds each step's model from the pretrained one, leaf
//! module by leaf module). Module kinds are inferred from tensor names as OPCM does.
//!
//! Each tensor's steps depend on that tensor alone, so the final model is computed tensor by
//! tensor when the host asks for it, with no pass over the whole model (with
//! `save_on_every_step`, one pass over the tensors writes every step's model).

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cpu::load;
use crate::linalg::{svd, LinalgError, Matrix};
use crate::opcm::{
    continual_algorithm, roles, run_continual, run_continual_in, split_name, Common, Continual,
    Role, Run,
};

/// Which terms of the projection loss DOP uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProjSpace {
    U,
    V,
    Uv,
}

#[derive(Clone, Debug)]
struct Settings {
    lr: f64,
    num_steps: usize,
    mgda: bool,
    ema: bool,
    ema_beta: f64,
    alpha: f64,
    svd_epsilon: f64,
    proj: ProjSpace,
    exclude_keys: Vec<String>,
}

/// DOP merging. Parameters (FusionBench's `DOPMerging`, its config file's values in brackets):
/// `seed` (null: the program's seed orders the shuffle, as FusionBench's unseeded
/// `random.shuffle` follows the program's seeding; a seed here orders it instead, where
/// FusionBench's `DOPMerging` takes the parameter and leaves it unused), `shuffle_order` (true), `save_on_every_step`
/// (false; true returns the model after every step as `merged_model_K`),
/// `evaluate_on_every_step` (true; the host evaluates every returned model), `lr` (1e-4),
/// `num_steps` (200), `mgda` (true), `alpha` (0.8; required, in [0, 1]), `ema` (true),
/// `ema_beta` (0.999), `svd_epsilon` (0.99999, in [0, 1]), `svd_proj_space` (uv; u, v),
/// `exclude_keys` (null: module names whose weights are averaged), `num_ray_actors` (0; runs
/// in-process).
pub struct Dop {
    settings: Settings,
    common: Common,
}

impl FromConfig for Dop {
    fn from_config(config: &Config) -> Result<Self> {
        let (settings, common) = read(config, DopMerge::NAME, false)?;
        Ok(Dop { settings, common })
    }
}

/// The parameters both DOP classes read; `clip` for `ContinualDOPForCLIP`, which has no
/// `exclude_keys` or `num_ray_actors`.
fn read(config: &Config, name: &str, clip: bool) -> Result<(Settings, Common)> {
    let alpha: Option<f64> = config.get("alpha")?;
    let alpha = alpha.ok_or_else(|| {
        Error::config(format!(
            "{name}: `alpha` is required (the first task's weight, in [0, 1]; FusionBench's \
             config file sets 0.8)"
        ))
    })?;
    let alpha = crate::params::unit_interval(alpha, "alpha", name)?;
    let svd_epsilon = config.get_or("svd_epsilon", 1.0)?;
    let svd_epsilon = crate::params::unit_interval(svd_epsilon, "svd_epsilon", name)?;
    let proj: String = config.get_or("svd_proj_space", "uv".to_string())?;
    let proj = match proj.as_str() {
        "u" => ProjSpace::U,
        "v" => ProjSpace::V,
        "uv" => ProjSpace::Uv,
        other => {
            return Err(Error::config(format!(
                "{name}: `svd_proj_space` {other:?} is not one of u, v, uv"
            )))
        }
    };
    let lr: f64 = config.get_or("lr", 1e-4)?;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::config(format!(
            "{name}: `lr` must be a positive number, got {lr}"
        )));
    }
    let exclude_keys = if clip {
        Vec::new()
    } else {
        let actors: u64 = config.get_or("num_ray_actors", 0)?;
        if actors > 0 {
            tracing::info!("{name}: num_ray_actors {actors}: the merge runs in-process");
        }
        config
            .get::<Vec<String>>("exclude_keys")?
            .unwrap_or_default()
    };
    let settings = Settings {
        lr,
        num_steps: config.get_or("num_steps", 200)?,
        mgda: config.get_or("mgda", true)?,
        ema: config.get_or("ema", true)?,
        ema_beta: config.get_or("ema_beta", 0.99)?,
        alpha,
        svd_epsilon,
        proj,
        exclude_keys,
    };
    // Both classes' own defaults differ from the config files' for these two.
    let mut common = Common::read(config, name)?;
    if config.get::<bool>("shuffle_order")?.is_none() {
        common.order.shuffle = false;
    }
    Ok((settings, common))
}

continual_algorithm!(Dop);

impl Dop {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        self.merge(pool, ctx, None, every_step)
    }

    /// The merge, in the pool's order after `shuffle_order` or in `order`.
    fn merge(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        order: Option<&[String]>,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        const NAME: &str = DopMerge::NAME;
        if !pool.has_pretrained()? {
            return Err(Error::config(format!(
                "{NAME} needs a `_pretrained_` model in the pool (the base of the task vectors)"
            )));
        }
        let reference = pool.load_pretrained()?;
        let names = reference.names()?;
        let roles = roles(&names, |n| reference.info(n))?;
        let linear = roles.values().filter(|r| **r == Role::Linear).count();
        if linear == 0 {
            return Err(Error::config(format!(
                "{NAME} optimizes linear layers' weights (2-D `weight`s of leaf modules), and the \
                 models have none"
            )));
        }
        tracing::info!(
            linear,
            lr = self.settings.lr,
            num_steps = self.settings.num_steps,
            mgda = self.settings.mgda,
            "DOP merging (CPU)"
        );
        let merge = DopMerge {
            settings: self.settings.clone(),
            roles: Arc::new(roles),
        };
        match order {
            Some(names) => run_continual_in(merge, names, every_step, pool, ctx),
            None => run_continual(merge, &self.common.order, every_step, pool, ctx),
        }
    }

    /// The merge over the pool's models `names`, in that order.
    fn models_in(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        names: &[String],
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        self.merge(pool, ctx, Some(names), every_step)
    }
}

/// DOP for CLIP (`ContinualDOPForCLIP`, `dop/dop`): the merge of [`Dop`], with the CLIP class's
/// differences. Every linear layer's weight is optimized (it has no `exclude_keys` or
/// `num_ray_actors`); without a `seed` the order is shuffled by a seed from the clock, not by
/// the program's (the class calls `seed_everything_by_time`), logged; the order is written to
/// the log folder as `model_names.json`, as the class writes it. The class saves the model after
/// every step (`save_on_every_step`) and evaluates it on the tasks seen so far
/// (`evaluate_on_every_step`, the config file's true), returning the last; here either flag
/// returns every step's model as `merged_model_K` (the name the class saves it by), which the
/// host evaluates, on the whole task pool, and saves. Parameters (the class's defaults, the
/// config file's in brackets): `alpha` (required; 0.8), `seed` (null), `shuffle_order` (false;
/// true), `save_on_every_step` (true; false), `evaluate_on_every_step` (false; true), `lr`
/// (1e-4), `num_steps` (200), `mgda` (true), `ema` (true), `ema_beta` (0.99; 0.999),
/// `svd_epsilon` (1; 0.99999), `svd_proj_space` (uv).
pub struct ContinualDopForClip {
    inner: Dop,
    common: Common,
}

impl FromConfig for ContinualDopForClip {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = "dop (ContinualDOPForCLIP)";
        let (settings, mut common) = read(config, NAME, true)?;
        common.order.by_time = true;
        let evaluate: bool = config.get_or("evaluate_on_every_step", false)?;
        common.save_on_every_step |= evaluate;
        Ok(ContinualDopForClip {
            inner: Dop {
                settings,
                common: common.clone(),
            },
            common,
        })
    }
}

continual_algorithm!(ContinualDopForClip);

impl ContinualDopForClip {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        let names = pool.model_names()?;
        if names.is_empty() {
            return Err(Error::config(
                "dop (ContinualDOPForCLIP) needs at least 1 model to merge besides \
                 `_pretrained_`, the pool has none",
            ));
        }
        let names = self.common.order.apply(names, ctx, "dop");
        if let Some(dir) = ctx.log_dir() {
            let path = dir.join("model_names.json");
            let text = fusion_plugin_api::serde_json::to_string_pretty(&names)
                .map_err(|e| Error::io(format!("model_names.json: {e}")))?;
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, text))
                .map_err(|e| Error::io(format!("writing {}: {e}", path.display())))?;
        }
        self.inner.models_in(pool, ctx, &names, every_step)
    }
}

struct DopMerge {
    settings: Settings,
    roles: Arc<HashMap<String, Role>>,
}

impl Continual for DopMerge {
    type Step = ();
    const NAME: &'static str = "dop";
    const FROM_FIRST: bool = true;

    fn step_name(t: usize) -> String {
        format!("merged_model_{t}")
    }

    fn without_pass(&self) -> Option<()> {
        Some(())
    }

    fn advance(&mut self, _run: &Run, _state: &mut [Vec<f32>], _t: usize) -> Result<()> {
        unreachable!("DOP's steps need no pass over the model")
    }

    fn replay(
        &self,
        run: &Run,
        name: &str,
        info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        _step: &(),
    ) -> Result<()> {
        let pre = load(run.base(), name)?;
        let role = self.roles.get(name).copied().unwrap_or(Role::Other);
        if role == Role::Frozen {
            *value = pre;
            return Ok(());
        }
        let new = load(run.model(t), name)?;
        let excluded = self
            .settings
            .exclude_keys
            .iter()
            .any(|k| k == split_name(name).0);
        if role == Role::Linear && !excluded {
            *value = optimize(
                &self.settings,
                info.shape[0],
                info.shape[1],
                &pre,
                [value.as_slice(), new.as_slice()],
            )
            .map_err(|e| Error::model(e.to_string()))?;
        } else {
            for (v, x) in value.iter_mut().zip(&new) {
                *v = (*v + x) / 2.0;
            }
        }
        Ok(())
    }
}

/// One task's projection: its leading singular vectors and values.
struct Projection {
    u: Matrix,
    v: Matrix,
    s2: Vec<f64>,
}

impl Projection {
    /// FusionBench's rank: `searchsorted(cumsum(s) / sum(s), ε)` in f32, the first index where
    /// the cumulative share reaches ε.
    fn of(m: usize, n: usize, tv: &[f32], epsilon: f64) -> Projection {
        if tv.iter().all(|v| *v == 0.0) {
            // A layer the model left unchanged: no direction to protect (FusionBench's shares
            // are 0/0 here, and its loss NaN).
            return Projection {
                u: Matrix::zeros(m, 0),
                v: Matrix::zeros(n, 0),
                s2: Vec::new(),
            };
        }
        let d = svd(&Matrix::from_f32(m, n, tv));
        let s32: Vec<f32> = d.s.iter().map(|&s| s as f32).collect();
        let total: f32 = s32.iter().sum();
        let eps = epsilon as f32;
        let mut acc = 0.0f32;
        let mut rank = s32.len();
        for (i, s) in s32.iter().enumerate() {
            acc += s;
            if acc / total >= eps {
                rank = i;
                break;
            }
        }
        Projection {
            u: d.u.columns(0, rank),
            v: d.vt.row_range(0, rank).t(),
            s2: d.s[..rank].iter().map(|s| s * s).collect(),
        }
    }

    /// The loss terms and the gradient at Δ = X − W.
    fn loss_grad(
        &self,
        delta: &Matrix,
        proj: ProjSpace,
    ) -> std::result::Result<(f64, Vec<f64>), LinalgError> {
        let (m, n) = (delta.rows(), delta.cols());
        let mut loss = 0.0;
        let mut grad = vec![0.0; m * n];
        if proj != ProjSpace::V {
            // Uᵀ Δ (r×n); loss ‖diag(s) UᵀΔ‖²; grad 2 U diag(s²) UᵀΔ.
            let mut ud = self.u.t().matmul(delta)?;
            for i in 0..ud.rows() {
                for j in 0..n {
                    loss += self.s2[i] * ud[(i, j)] * ud[(i, j)];
                    ud[(i, j)] *= 2.0 * self.s2[i];
                }
            }
            let g = self.u.matmul(&ud)?;
            grad.iter_mut().zip(g.data()).for_each(|(a, b)| *a += b);
        }
        if proj != ProjSpace::U {
            // Δ V (m×r); loss ‖ΔV diag(s)‖²; grad 2 ΔV diag(s²) Vᵀ.
            let mut dv = delta.matmul(&self.v)?;
            for i in 0..m {
                for j in 0..dv.cols() {
                    loss += self.s2[j] * dv[(i, j)] * dv[(i, j)];
                    dv[(i, j)] *= 2.0 * self.s2[j];
                }
            }
            let g = dv.matmul(&self.v.t())?;
            grad.iter_mut().zip(g.data()).for_each(|(a, b)| *a += b);
        }
        Ok((loss, grad))
    }
}

/// MGDA's min-norm point between two vectors from their inner products (`_min_norm_element_from2`).
fn min_norm_2(v11: f64, v12: f64, v22: f64) -> f64 {
    if v12 >= v11 {
        return 0.999;
    }
    if v12 >= v22 {
        return 0.001;
    }
    -((v12 - v22) / (v11 + v22 - 2.0 * v12))
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// DOP's optimization of one linear weight (see the module docs).
fn optimize(
    s: &Settings,
    m: usize,
    n: usize,
    pre: &[f32],
    weights: [&[f32]; 2],
) -> std::result::Result<Vec<f32>, LinalgError> {
    let projections: Vec<Projection> = weights
        .iter()
        .map(|w| {
            let tv: Vec<f32> = w.iter().zip(pre).map(|(a, b)| a - b).collect();
            Projection::of(m, n, &tv, s.svd_epsilon)
        })
        .collect();
    let mut x: Vec<f32> = weights[0]
        .iter()
        .zip(weights[1])
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let mut ema = [s.alpha, 1.0 - s.alpha];
    let mut m1 = vec![0.0f32; m * n];
    let mut m2 = vec![0.0f32; m * n];
    for step in 1..=s.num_steps {
        let mut losses = [0.0f64; 2];
        let mut grads: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
        for (i, (w, p)) in weights.iter().zip(&projections).enumerate() {
            let delta: Vec<f32> = x.iter().zip(*w).map(|(a, b)| a - b).collect();
            let (loss, grad) = p.loss_grad(&Matrix::from_f32(m, n, &delta), s.proj)?;
            // torch's loss is an f32 scalar
            losses[i] = f64::from(loss as f32);
            grads[i] = grad.iter().map(|&g| g as f32).collect();
        }
        let sol = if s.mgda {
            // the gradients normalized by their losses, and their min-norm combination
            let g: Vec<Vec<f32>> = (0..2)
                .map(|i| {
                    let l = losses[i] as f32;
                    if l == 0.0 {
                        // a zero loss (an unchanged layer) gives no direction
                        return vec![0.0; grads[i].len()];
                    }
                    grads[i].iter().map(|v| v / l).collect()
                })
                .collect();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum::<f64>() as f32 as f64
            };
            let gamma = min_norm_2(dot(&g[0], &g[0]), dot(&g[0], &g[1]), dot(&g[1], &g[1]));
            let gamma = gamma as f32;
            let sol = [f64::from(gamma), f64::from(1.0 - gamma)];
            if s.ema {
                for (e, x) in ema.iter_mut().zip(sol) {
                    *e = s.ema_beta * *e + (1.0 - s.ema_beta) * x;
                }
                ema
            } else {
                sol
            }
        } else {
            [s.alpha, 1.0 - s.alpha]
        };
        let (c0, c1) = (sol[0] as f32, sol[1] as f32);
        let bc1 = 1.0 - BETA1.powi(step as i32);
        let bc2 = 1.0 - BETA2.powi(step as i32);
        let step_size = (s.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (w1, beta2, w2, eps) = (
            (1.0 - BETA1) as f32,
            BETA2 as f32,
            (1.0 - BETA2) as f32,
            EPS as f32,
        );
        for (i, p) in x.iter_mut().enumerate() {
            let g = c0 * grads[0][i] + c1 * grads[1][i];
            m1[i] += (g - m1[i]) * w1;
            m2[i] = m2[i] * beta2 + w2 * g * g;
            let denom = m2[i].sqrt() / bc2_sqrt + eps;
            *p -= step_size * (m1[i] / denom);
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The written-out gradient against central differences of the loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let (m, n) = (5, 3);
        let tv: Vec<f32> = (0..m * n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let p = Projection::of(m, n, &tv, 0.9);
        let delta: Vec<f64> = (0..m * n)
            .map(|i| ((i * 5 % 13) as f64 - 6.0) / 4.0)
            .collect();
        for proj in [ProjSpace::U, ProjSpace::V, ProjSpace::Uv] {
            let at = |d: &[f64]| {
                p.loss_grad(&Matrix::from_rows(m, n, d.to_vec()), proj)
                    .unwrap()
            };
            let (_, grad) = at(&delta);
            for k in 0..m * n {
                let h = 1e-5;
                let mut a = delta.clone();
                let mut b = delta.clone();
                a[k] += h;
                b[k] -= h;
                let fd = (at(&a).0 - at(&b).0) / (2.0 * h);
                assert!(
                    (fd - grad[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{proj:?} {k}"
                );
            }
        }
    }

    #[test]
    fn min_norm_of_two() {
        // orthogonal unit vectors: the midpoint
        assert!((min_norm_2(1.0, 0.0, 1.0) - 0.5).abs() < 1e-12);
        // one inside the other's shadow: the clamped ends
        assert_eq!(min_norm_2(1.0, 2.0, 5.0), 0.999);
        assert_eq!(min_norm_2(5.0, 2.0, 1.0), 0.001);
    }
}
