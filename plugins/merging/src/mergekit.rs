//! mergekit's generalized task arithmetic with its sparsifiers (`mergekit/merge_methods/
//! generalized_task_arithmetic.py`, `mergekit/sparsify.py`): `breadcrumbs`,
//! `breadcrumbs_ties`, `della` and `della_linear`.
//!
//! Per tensor: δᵢ = θᵢ − θ₀; each δᵢ is sparsified with its model's `density` (and `gamma` or
//! `epsilon`), optionally rescaled to keep its L1 norm; then either (`*_ties`, `della`) the
//! weighted deltas `wᵢδᵢ` whose sign agrees with the majority sign of `Σ wᵢδᵢ` are summed and
//! divided by the sum of their weights (`normalize`), or (`breadcrumbs`, `della_linear`) all
//! are summed and divided by `Σ wᵢ` (`normalize`); the result is scaled by `lambda` and added
//! to the base.
//!
//! Differences from mergekit, all deliberate:
//! - arithmetic is f32 for every checkpoint dtype (mergekit computes in the checkpoint's dtype);
//! - breadcrumbs keeps magnitudes in `[sorted[n_bot], sorted[N − n_top])` by value, so equal
//!   magnitudes at a cut are all kept or all dropped (mergekit cuts between equal values by
//!   sort order). When `n_top` is 0, mergekit's slice `[n_bot:-0]` is empty and zeroes the whole
//!   tensor (every tensor under 100 entries at the default `gamma`); here nothing is cut from
//!   the top instead;
//! - DELLA's draws are counter-based (Philox keyed by seed, model and tensor name; see
//!   `kernels/sparsify.wgsl`), not torch's global RNG; tensors of three or more dimensions are
//!   ranked over rows of `shape[0]` (mergekit ranks along dimension 1); a one-entry row keeps
//!   with probability `density` (mergekit's rank normalisation divides 0 by 0 there).
//!
//! The device holds at most nine tensors of one key (six for breadcrumbs) whatever the number
//! of models: with sign consensus each sparsified delta is computed twice (once for the
//! majority sign, once to merge), which the deterministic draws make identical.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::delta::random_key;
use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::kernels::{self, DellaDraw};
use crate::lazy::{Merged, TensorMerge};
use crate::params::{self, PerModel};

/// Which sparsifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sparsifier {
    /// `magnitude_outliers`: drop the top `gamma` and the smallest to reach `density`.
    Breadcrumbs,
    /// `della_magprune`: keep with a probability that grows with the magnitude rank.
    Della,
}

/// The settings shared by the four methods, before the pool size is known.
#[derive(Clone, Debug)]
struct GtaConfig {
    method: &'static str,
    sparsifier: Sparsifier,
    consensus: bool,
    weights: PerModel,
    density: PerModel,
    gamma: PerModel,
    epsilon: PerModel,
    lambda: f64,
    normalize: bool,
    rescale: bool,
    seed: Option<u64>,
}

impl GtaConfig {
    fn read(
        config: &Config,
        method: &'static str,
        sparsifier: Sparsifier,
        consensus: bool,
        normalize: bool,
        rescale: bool,
    ) -> Result<Self> {
        Ok(GtaConfig {
            method,
            sparsifier,
            consensus,
            // mergekit spells it `weight` (one per model); both are accepted.
            weights: match config.get::<fusion_plugin_api::serde_json::Value>("weights")? {
                Some(_) => PerModel::read(config, "weights", 1.0)?,
                None => PerModel::read(config, "weight", 1.0)?,
            },
            density: PerModel::read(config, "density", 1.0)?,
            gamma: PerModel::read(config, "gamma", 0.01)?,
            epsilon: PerModel::read(config, "epsilon", 0.15)?,
            lambda: config.get_or("lambda", 1.0)?,
            normalize: config.get_or("normalize", normalize)?,
            rescale: config.get_or("rescale", rescale)?,
            seed: config.get("seed")?,
        })
    }

    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let method = self.method;
        params::compute(ctx, method)?;
        let inputs = Inputs::open(pool, method, true, 1)?;
        let n = inputs.models.len();
        let weights = self.weights.resolve("weights", method, n)?;
        let density = self.density.resolve("density", method, n)?;
        let gamma = self.gamma.resolve("gamma", method, n)?;
        let epsilon = self.epsilon.resolve("epsilon", method, n)?;
        if self.sparsifier == Sparsifier::Della {
            for (m, (&d, &e)) in inputs.models.iter().zip(density.iter().zip(&epsilon)) {
                if d < 1.0 && d > 0.0 && (d + e >= 1.0 || d - e <= 0.0) {
                    return Err(Error::config(format!(
                        "{method}: model `{}`: `epsilon` {e} must keep density ± epsilon inside (0, 1) (density {d})",
                        m.name
                    )));
                }
            }
        }
        let seed = match self.sparsifier {
            Sparsifier::Della => params::seed(self.seed, ctx, method),
            Sparsifier::Breadcrumbs => 0,
        };
        tracing::info!(
            models = n,
            ?weights,
            ?density,
            lambda = self.lambda,
            "{method}"
        );
        let merge = GtaTensor {
            inputs: inputs.clone(),
            sparsifier: self.sparsifier,
            consensus: self.consensus,
            weights: weights.iter().map(|&w| w as f32).collect(),
            density,
            gamma,
            epsilon,
            lambda: self.lambda as f32,
            normalize: self.normalize,
            rescale: self.rescale,
            seed,
        };
        Merged::model(ctx, inputs, merge)
    }
}

macro_rules! gta_method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $sparsifier:expr, $consensus:expr, $normalize:expr, $rescale:expr) => {
        $(#[$doc])*
        pub struct $ty(GtaConfig);

        impl FromConfig for $ty {
            fn from_config(config: &Config) -> Result<Self> {
                Ok($ty(GtaConfig::read(config, $name, $sparsifier, $consensus, $normalize, $rescale)?))
            }
        }

        impl Algorithm for $ty {
            fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
                self.0.run(pool, ctx)
            }
        }
    };
}

gta_method!(
    /// mergekit `breadcrumbs`: drop the top `gamma` (0.01) and the smallest magnitudes down to
    /// `density` (1.0: nothing dropped) of each task vector, then `base + lambda · Σ wᵢδᵢ`.
    /// Parameters (mergekit's defaults): `weights` (per model or one for all; 1.0),
    /// `density` 1.0, `gamma` 0.01, `lambda` 1.0, `normalize` false, `rescale` false.
    Breadcrumbs, "breadcrumbs", Sparsifier::Breadcrumbs, false, false, false
);
gta_method!(
    /// mergekit `breadcrumbs_ties`: breadcrumbs with sign consensus. As `breadcrumbs`.
    BreadcrumbsTies, "breadcrumbs_ties", Sparsifier::Breadcrumbs, true, false, false
);
gta_method!(
    /// mergekit `della`: MagPrune keeps each entry with probability `density ± epsilon` by
    /// magnitude rank within its row, L1 rescale, sign consensus. `weights` 1.0, `density` 1.0,
    /// `epsilon` 0.15, `lambda` 1.0, `normalize` true, `rescale` true, `seed` (default: the
    /// program's seed).
    Della, "della", Sparsifier::Della, true, true, true
);
gta_method!(
    /// mergekit `della_linear`: `della` without sign consensus; `normalize` false.
    DellaLinear, "della_linear", Sparsifier::Della, false, false, true
);

struct GtaTensor {
    inputs: Inputs,
    sparsifier: Sparsifier,
    consensus: bool,
    weights: Vec<f32>,
    density: Vec<f64>,
    gamma: Vec<f64>,
    epsilon: Vec<f64>,
    lambda: f32,
    normalize: bool,
    rescale: bool,
    seed: u64,
}

impl GtaTensor {
    /// Model `i`'s sparsified (and rescaled) task vector of `name`.
    fn delta<'c>(
        &self,
        c: &'c dyn Compute,
        base: &Gpu<'_>,
        i: usize,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        let m = &self.inputs.models[i];
        let x = upload(c, &m.model, &m.name, name)?;
        let tv = Gpu::adopt(
            c,
            fusion_kernels::task_vector(c, x.id(), base.id(), DType::F32)?,
        );
        drop(x);
        let density = self.density[i];
        if density >= 1.0 {
            return Ok(tv);
        }
        let kept = match self.sparsifier {
            Sparsifier::Breadcrumbs => {
                breadcrumbs(c, &tv, info.numel() as u64, density, self.gamma[i])?
            }
            Sparsifier::Della if density <= 0.0 => Gpu::zeros(c, DType::F32, &info.shape)?,
            Sparsifier::Della => {
                let row_len = match info.shape.len() {
                    0 | 1 => info.numel() as u64,
                    _ => (info.numel() / info.shape[0]) as u64,
                };
                let draw = DellaDraw {
                    p_low: (density - self.epsilon[i]) as f32,
                    p_span: (2.0 * self.epsilon[i]) as f32,
                    seed: self.seed,
                    key: random_key(&m.name, name),
                };
                kernels::della_keep(c, &tv, row_len, &draw)?
            }
        };
        if !self.rescale {
            return Ok(kept);
        }
        // mergekit's rescaled_masked_tensor with the L1 norm: match Σ|δ|, unless either is tiny.
        let before = kernels::l1_norm(c, &tv)?;
        let after = kernels::l1_norm(c, &kept)?;
        if before < 1e-7 || after < 1e-7 {
            return Ok(kept);
        }
        let scaled = fusion_kernels::weighted_sum(c, &[(kept.id(), before / after)], DType::F32)?;
        Ok(Gpu::adopt(c, scaled))
    }
}

/// mergekit `magnitude_outliers`: of `n` entries keep those between the `n_bot` smallest and
/// the `n_top` largest magnitudes (see the module docs for ties and `n_top = 0`).
fn breadcrumbs<'c>(
    c: &'c dyn Compute,
    tv: &Gpu<'_>,
    n: u64,
    density: f64,
    gamma: f64,
) -> Result<Gpu<'c>> {
    let (lo_idx, hi_idx) = breadcrumbs_band(n, density, gamma);
    let (_, shape) = c.describe(tv.id())?;
    if lo_idx >= hi_idx {
        return Gpu::zeros(c, DType::F32, &shape);
    }
    // Ascending index j is the (n − j)-th largest.
    let lo = if lo_idx == 0 {
        0.0
    } else {
        fusion_kernels::kth_largest_magnitude(c, &[tv.id()], n - lo_idx)?
    };
    let hi = if hi_idx == n {
        None
    } else {
        Some(fusion_kernels::kth_largest_magnitude(
            c,
            &[tv.id()],
            n - hi_idx,
        )?)
    };
    kernels::band_keep(c, tv, lo, hi)
}

/// The kept range `[lo, hi)` of ascending magnitude indices (mergekit's `n_bot`, `n − n_top`).
pub fn breadcrumbs_band(n: u64, density: f64, gamma: f64) -> (u64, u64) {
    let target = (density * n as f64) as i64;
    let mut n_top = (gamma * n as f64) as i64;
    let mut n_bot = n as i64 - target - n_top;
    if n_bot < 0 {
        n_top += n_bot;
        n_bot = 0;
    }
    (n_bot as u64, n - n_top.max(0) as u64)
}

impl TensorMerge for GtaTensor {
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let b = self.inputs.base();
        let base = upload(c, &b.model, &b.name, name)?;
        let n = self.inputs.models.len();
        let dtype = kernel_dtype(info.dtype);
        // Σ wᵢδᵢ: the mix without consensus, the sign reference with it.
        let sum = Gpu::zeros(c, DType::F32, &info.shape)?;
        for i in 0..n {
            let d = self.delta(c, &base, i, name, info)?;
            fusion_kernels::accumulate(c, sum.id(), &[(d.id(), self.weights[i])])?;
        }
        if !self.consensus {
            let total: f32 = self.weights.iter().sum();
            let divisor = if self.normalize && total.abs() >= 1e-8 {
                total
            } else {
                1.0
            };
            let out = fusion_kernels::weighted_sum(
                c,
                &[(base.id(), 1.0), (sum.id(), self.lambda / divisor)],
                dtype,
            )?;
            return Ok(Gpu::adopt(c, out));
        }
        let mixed = Gpu::zeros(c, DType::F32, &info.shape)?;
        let div = Gpu::zeros(c, DType::F32, &info.shape)?;
        for i in 0..n {
            let d = self.delta(c, &base, i, name, info)?;
            kernels::consensus_add(c, &mixed, &div, &sum, &d, self.weights[i])?;
        }
        drop(sum);
        if self.normalize {
            kernels::safe_divide(c, &mixed, &div)?;
        }
        drop(div);
        let out =
            fusion_kernels::weighted_sum(c, &[(base.id(), 1.0), (mixed.id(), self.lambda)], dtype)?;
        Ok(Gpu::adopt(c, out))
    }
}
