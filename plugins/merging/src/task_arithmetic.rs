//! `task_arithmetic` (FusionBench `TaskArithmeticAlgorithm`): θ = θ₀ + λ Σᵢ (θᵢ − θ₀), and the
//! DARE variants that drop and rescale each task vector first (`DareTaskArithmetic`,
//! `DareSimpleAverage`).

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::delta::{DareSpec, Delta};
use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;

/// θ = θ₀ + λ Σᵢ τᵢ with `scaling_factor` λ (default 0.3). FusionBench's `inplace` is accepted
/// and has no effect.
pub struct TaskArithmetic {
    scaling_factor: f64,
}

impl FromConfig for TaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        let _: bool = config.get_or("inplace", true)?;
        Ok(TaskArithmetic {
            scaling_factor: config.get_or("scaling_factor", 0.3)?,
        })
    }
}

impl Algorithm for TaskArithmetic {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        run(
            pool,
            ctx,
            "task_arithmetic",
            Lambda::Fixed(self.scaling_factor),
            Delta::Plain,
        )
    }
}

/// DARE then task arithmetic (FusionBench `DareTaskArithmetic`): `scaling_factor` 0.3,
/// `sparsity_ratio` 0.5, `rescale` true, `only_on_linear_weights` false, `seed` (default: the
/// program's seed).
pub struct DareTaskArithmetic {
    scaling_factor: f64,
    dare: DareConfig,
}

/// DARE then the average of the task vectors added to the base (FusionBench
/// `DareSimpleAverage`: DARE task arithmetic with λ = 1/N).
pub struct DareSimpleAverage {
    dare: DareConfig,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct DareConfig {
    pub p: f64,
    pub rescale: bool,
    pub only_on_linear_weights: bool,
    pub seed: Option<u64>,
}

impl DareConfig {
    pub(crate) fn read(config: &Config) -> Result<Self> {
        let (p, rescale, only_on_linear_weights, seed) = DareSpec::read(config)?;
        Ok(DareConfig {
            p,
            rescale,
            only_on_linear_weights,
            seed,
        })
    }

    /// The task-vector rule for a run, with the seed resolved against the program's.
    pub(crate) fn delta(&self, ctx: &Context, algorithm: &str) -> Delta {
        let seed = params::seed(self.seed, ctx, algorithm);
        tracing::info!(
            sparsity_ratio = self.p,
            rescale = self.rescale,
            seed,
            "{algorithm}: DARE"
        );
        Delta::Dare(DareSpec {
            dare: fusion_kernels::Dare {
                p: self.p,
                rescale: self.rescale,
                seed,
            },
            only_on_linear_weights: self.only_on_linear_weights,
        })
    }
}

impl FromConfig for DareTaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(DareTaskArithmetic {
            scaling_factor: config.get_or("scaling_factor", 0.3)?,
            dare: DareConfig::read(config)?,
        })
    }
}

impl Algorithm for DareTaskArithmetic {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let name = "dare_task_arithmetic";
        params::compute(ctx, name)?;
        run(
            pool,
            ctx,
            name,
            Lambda::Fixed(self.scaling_factor),
            self.dare.delta(ctx, name),
        )
    }
}

impl FromConfig for DareSimpleAverage {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(DareSimpleAverage {
            dare: DareConfig::read(config)?,
        })
    }
}

impl Algorithm for DareSimpleAverage {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let name = "dare_simple_average";
        params::compute(ctx, name)?;
        run(
            pool,
            ctx,
            name,
            Lambda::InverseCount,
            self.dare.delta(ctx, name),
        )
    }
}

enum Lambda {
    Fixed(f64),
    InverseCount,
}

fn run(
    pool: &dyn ModelPool,
    ctx: &Context,
    algorithm: &str,
    lambda: Lambda,
    delta: Delta,
) -> Result<Model> {
    params::compute(ctx, algorithm)?;
    let inputs = Inputs::open(pool, algorithm, true, 1)?;
    let lambda = match lambda {
        Lambda::Fixed(l) => l,
        Lambda::InverseCount => 1.0 / inputs.models.len() as f64,
    } as f32;
    tracing::info!(
        models = inputs.models.len(),
        scaling_factor = lambda,
        "{algorithm}"
    );
    let merge = SumOfTaskVectors {
        inputs: inputs.clone(),
        lambda,
        delta,
    };
    Merged::model(ctx, inputs, merge)
}

/// θ₀ + λ Σᵢ τᵢ. Plain task vectors go in weighted sums over groups of models; DARE ones are summed model by model in f32 (FusionBench's order), with the base, the
/// sum, one model's tensor and its task vector resident.
struct SumOfTaskVectors {
    inputs: Inputs,
    lambda: f32,
    delta: Delta,
}

impl TensorMerge for SumOfTaskVectors {
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let b = self.inputs.base();
        let base = upload(c, &b.model, &b.name, name)?;
        if let Delta::Plain = self.delta {
            // Plain task vectors: θ₀ + λ Σᵢ (θᵢ − θ₀) = (1 − nλ) θ₀ + λ Σᵢ θᵢ, as weighted sums
            // over up to MAX_ARITY models per pass (f32 arithmetic) instead of two passes per
            // model; resident are the base, the f32 sum and one group of models. It rounds
            // differently from summing task vectors one by one, by about n ulps of |θ|, within
            // the golden cases' tolerance.
            let n = self.inputs.models.len() as f32;
            let acc = Gpu::zeros(c, DType::F32, &info.shape)?;
            for group in self.inputs.models.chunks(fusion_kernels::wgsl::MAX_ARITY) {
                let mut uploaded = Vec::with_capacity(group.len());
                for m in group {
                    uploaded.push(upload(c, &m.model, &m.name, name)?);
                }
                let terms: Vec<_> = uploaded.iter().map(|x| (x.id(), self.lambda)).collect();
                fusion_kernels::accumulate(c, acc.id(), &terms)?;
            }
            let out = fusion_kernels::weighted_sum(
                c,
                &[(base.id(), 1.0 - n * self.lambda), (acc.id(), 1.0)],
                kernel_dtype(info.dtype),
            )?;
            return Ok(Gpu::adopt(c, out));
        }
        let tau = Gpu::zeros(c, DType::F32, &info.shape)?;
        for m in &self.inputs.models {
            let x = upload(c, &m.model, &m.name, name)?;
            let tv = self.delta.compute(c, &x, &base, &m.name, name, info)?;
            drop(x);
            fusion_kernels::accumulate(c, tau.id(), &[(tv.id(), 1.0)])?;
        }
        let out = fusion_kernels::weighted_sum(
            c,
            &[(base.id(), 1.0), (tau.id(), self.lambda)],
            kernel_dtype(info.dtype),
        )?;
        Ok(Gpu::adopt(c, out))
    }
}
