//! Continual model merging: OPCM (Tang et al., 2025, "Merging Models on the Fly Without
//! Retraining: A Sequential Approach to Scalable Continual Model Merging"; FusionBench `OPCM`,
//! `opcm/opcm_general`) and FusionBench's continual baselines in its `opcm` config folder
//! (continual task arithmetic, TIES-merging and weight average), on the CPU.
//!
//! Each takes the models one at a time, in the pool's order or shuffled (`shuffle_order`, with
//! `seed`: Python's `random.shuffle` after Lightning's `seed_everything`, reproduced exactly, so
//! a seeded run takes the models in FusionBench's order), and updates a merged model after each.
//! Steps depend on whole-model figures (OPCM's task-vector norms, TIES' trim thresholds and
//! majority sign), so a first pass runs the steps over the whole model, held in f32, with the
//! inputs read one tensor at a time. The final model is what that pass leaves in memory; with
//! `save_on_every_step` the model after each step is written to a temporary file as the pass
//! makes it (removed when the model is dropped), so no step is computed twice. DOP, whose
//! tensors' steps depend on each tensor alone, computes its final model tensor by tensor when
//! the host asks, and its per-step models by one pass over the tensors.
//!
//! With `save_on_every_step: true` (the config files' default) the method returns the model
//! after every step, under the names FusionBench saves them by (`merged_model_K` for OPCM and
//! weight average, `model_K` for task arithmetic and TIES), the last being the one FusionBench
//! returns; the host evaluates and saves each. With `false` it returns the final model alone.
//! `evaluate_on_every_step` is accepted: the host evaluates every returned model on the whole
//! task pool (FusionBench's CLIP variants evaluate step K on the tasks seen so far).

mod baselines;
mod order;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{f32_to_bytes, StateDict, TensorInfo, PRETRAINED};

use crate::cpu::load;
use crate::inputs::{Inputs, Member};
use crate::linalg::{svd, LinalgError, Matrix};

pub use baselines::{ContinualTaskArithmetic, ContinualTiesMerging, ContinualWeightAverage};
pub(crate) use order::{Order, PyRandom};

/// The models of a continual run, in the order merged, and their float tensors.
pub(crate) struct Run {
    pub inputs: Inputs,
    /// Float, non-empty tensors of the reference, in its order.
    pub floats: Vec<(String, TensorInfo)>,
}

impl Run {
    pub(crate) fn base(&self) -> &Member {
        self.inputs.base()
    }

    pub(crate) fn model(&self, t: usize) -> &Member {
        &self.inputs.models[t]
    }
}

/// One continual method: FusionBench's loop over the models, one step per model.
pub(crate) trait Continual: Send + Sync + 'static {
    /// The whole-model figures of one step that its per-tensor update needs.
    type Step: Clone + Send + Sync + 'static;
    /// The method's name in messages.
    const NAME: &'static str;
    /// Whether it needs `_pretrained_`.
    const WITH_BASE: bool = true;
    /// Whether the model of step 0 is the first model itself (OPCM, weight average) rather than
    /// `_pretrained_` updated by the first model (task arithmetic, TIES).
    const FROM_FIRST: bool;

    /// The name FusionBench saves the model after step `t` by.
    fn step_name(t: usize) -> String;

    /// The figures of every step when they need no pass over the whole model (each tensor's
    /// steps depend on that tensor alone): the first pass is then skipped.
    fn without_pass(&self) -> Option<Self::Step> {
        None
    }

    /// Run step `t` on the whole model (`state`: the float tensors of `run.floats`, f32), and
    /// return the figures its per-tensor update used.
    fn advance(&mut self, run: &Run, state: &mut [Vec<f32>], t: usize) -> Result<Self::Step>;

    /// Step `t` on one tensor, with that step's figures: what `advance` does to it.
    fn replay(
        &self,
        run: &Run,
        name: &str,
        info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        step: &Self::Step,
    ) -> Result<()>;
}

/// A continual method run to the end: the steps' figures, from which any step's model is
/// recomputed tensor by tensor.
struct Plan<C: Continual> {
    method: C,
    run: Run,
    /// `None` for step 0 of a method that starts from the first model.
    steps: Vec<Option<C::Step>>,
    /// Each float tensor's position in `run.floats`, and its byte offset in a step file.
    index: HashMap<String, usize>,
    offsets: Vec<u64>,
}

impl<C: Continual> Plan<C> {
    fn reference(&self) -> &Member {
        if C::FROM_FIRST {
            self.run.model(0)
        } else {
            self.run.base()
        }
    }

    /// Tensor `name` after step `upto`.
    fn tensor(&self, name: &str, info: &TensorInfo, upto: usize) -> Result<Vec<f32>> {
        let mut value = load(self.reference(), name)?;
        for (t, step) in self.steps.iter().enumerate().take(upto + 1) {
            if let Some(step) = step {
                self.method
                    .replay(&self.run, name, info, &mut value, t, step)?;
            }
        }
        Ok(value)
    }
}

/// Where a step's model takes its float tensors from.
enum Values {
    /// Recomputed from the inputs by replaying the steps (each tensor's steps depend on that
    /// tensor alone, and only the final model is asked for).
    Replay,
    /// Held in memory: the final model of the first pass.
    Memory(Vec<Vec<f32>>),
    /// Written by the first pass to a temporary file.
    File(StepFile),
}

/// One step's float tensors in a temporary file (f32, in `Run::floats` order), removed when the
/// model is dropped.
struct StepFile {
    path: std::path::PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

impl StepFile {
    fn create(algorithm: &str, step: usize) -> Result<StepFile> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "fusion-host-{algorithm}-{}-{}-step{step}.f32",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                Error::io(format!(
                    "{algorithm}: cannot create {} for the model after step {step}: {e}",
                    path.display()
                ))
            })?;
        Ok(StepFile {
            path,
            file: std::sync::Mutex::new(file),
        })
    }

    fn append(&self, values: &[f32]) -> Result<()> {
        use std::io::Write;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut file = self.file.lock().expect("step file lock");
        file.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}: {e}", self.path.display())))
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<f32>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = vec![0u8; len * 4];
        let mut file = self.file.lock().expect("step file lock");
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| Error::io(format!("reading {}: {e}", self.path.display())))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl Drop for StepFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The model after one step.
struct StepModel<C: Continual> {
    plan: Arc<Plan<C>>,
    upto: usize,
    values: Values,
}

impl<C: Continual> StepModel<C> {
    fn tensor(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let index = || {
            self.plan.index.get(name).copied().ok_or_else(|| {
                Error::model(format!("tensor `{name}` is not among the merged tensors"))
            })
        };
        match &self.values {
            Values::Replay => self.plan.tensor(name, info, self.upto),
            Values::Memory(state) => Ok(state[index()?].clone()),
            Values::File(file) => {
                let i = index()?;
                file.read(self.plan.offsets[i], info.numel())
            }
        }
    }
}

impl<C: Continual> StateDict for StepModel<C> {
    fn names(&self) -> Result<Vec<String>> {
        self.plan.reference().model.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.plan.reference().model.info(name)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let reference = &self.plan.reference().model;
        let info = reference.info(name)?;
        if !info.dtype.is_float() || info.numel() == 0 {
            return Ok(Cow::Owned(reference.data(name)?.into_owned()));
        }
        let values = self
            .tensor(name, &info)
            .map_err(|e| e.context(format!("merging tensor `{name}`")))?;
        Ok(Cow::Owned(f32_to_bytes(&values, info.dtype)?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.plan.reference().model.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.plan.reference().model.file(name)
    }
}

/// Run a continual method over `pool` and return the model of every step (`every_step`) or
/// the last one, unnamed.
pub(crate) fn run_continual<C: Continual>(
    method: C,
    order: &Order,
    every_step: bool,
    pool: &dyn ModelPool,
    ctx: &Context,
) -> Result<Vec<(String, Model)>> {
    let names = pool.model_names()?;
    if names.is_empty() {
        return Err(Error::config(format!(
            "{} needs at least 1 model to merge besides `_pretrained_`, the pool has none",
            C::NAME
        )));
    }
    let names = order.apply(names, ctx, C::NAME);
    run_continual_in(method, &names, every_step, pool, ctx)
}

/// [`run_continual`] over the pool's models `names`, taken in that order (not empty).
pub(crate) fn run_continual_in<C: Continual>(
    mut method: C,
    names: &[String],
    every_step: bool,
    pool: &dyn ModelPool,
    ctx: &Context,
) -> Result<Vec<(String, Model)>> {
    let inputs = Inputs::open_named(pool, C::NAME, C::WITH_BASE, names, 1)?;
    let reference = if C::FROM_FIRST {
        &inputs.models[0]
    } else {
        inputs.base()
    };
    let mut floats = Vec::new();
    for name in reference.model.names()? {
        let info = reference.model.info(&name)?;
        if info.dtype.is_float() && info.numel() > 0 {
            floats.push((name, info));
        }
    }
    let n = inputs.models.len();
    let first = usize::from(C::FROM_FIRST);
    let index = floats
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), i))
        .collect();
    let offsets = floats
        .iter()
        .scan(0u64, |at, (_, info)| {
            let here = *at;
            *at += info.numel() as u64 * 4;
            Some(here)
        })
        .collect();
    // Every step's model is computed once, by a first pass, and kept in a temporary file; the
    // final model alone is kept in memory, or, when each tensor's steps depend on that tensor
    // alone, computed when asked for.
    let files = if every_step {
        (0..n)
            .map(|t| StepFile::create(C::NAME, t))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let progress = ctx.progress(C::NAME, n as u64);
    let mut steps = vec![None; first];
    let (run, last) = if let Some(step) = method.without_pass() {
        steps.resize(n, Some(step));
        let run = Run { inputs, floats };
        if every_step {
            let start = if C::FROM_FIRST {
                run.model(0)
            } else {
                run.base()
            };
            for (name, info) in &run.floats {
                let mut value = load(start, name)?;
                for (t, step) in steps.iter().enumerate() {
                    if let Some(step) = step {
                        method
                            .replay(&run, name, info, &mut value, t, step)
                            .map_err(|e| e.context(format!("merging tensor `{name}`")))?;
                    }
                    files[t].append(&value)?;
                }
            }
            progress.advance(n as u64);
        }
        (run, Values::Replay)
    } else {
        let mut state: Vec<Vec<f32>> = floats
            .iter()
            .map(|(name, _)| load(reference, name))
            .collect::<Result<_>>()?;
        let run = Run { inputs, floats };
        if every_step && first == 1 {
            state.iter().try_for_each(|v| files[0].append(v))?;
        }
        progress.advance(first as u64);
        for t in first..n {
            let step = method.advance(&run, &mut state, t).map_err(|e| {
                e.context(format!(
                    "{}: step {t} (model `{}`)",
                    C::NAME,
                    run.model(t).name
                ))
            })?;
            steps.push(Some(step));
            if let Some(file) = files.get(t) {
                state.iter().try_for_each(|v| file.append(v))?;
            }
            progress.advance(1);
        }
        (run, Values::Memory(state))
    };
    let plan = Arc::new(Plan {
        method,
        run,
        steps,
        index,
        offsets,
    });
    let model = |upto, values| {
        Model::new(StepModel {
            plan: plan.clone(),
            upto,
            values,
        })
    };
    Ok(if every_step {
        files
            .into_iter()
            .enumerate()
            .map(|(t, f)| (C::step_name(t), model(t, Values::File(f))))
            .collect()
    } else {
        vec![(String::new(), model(n - 1, last))]
    })
}

/// The parameters every continual method reads besides its own: `shuffle_order`, `seed`,
/// `save_on_every_step`, `evaluate_on_every_step`.
#[derive(Clone, Debug)]
pub(crate) struct Common {
    pub order: Order,
    pub save_on_every_step: bool,
}

impl Common {
    pub(crate) fn read(config: &Config, algorithm: &str) -> Result<Self> {
        let order = Order::read(config, algorithm)?;
        let save_on_every_step = config.get_or("save_on_every_step", true)?;
        let evaluate: bool = config.get_or("evaluate_on_every_step", false)?;
        if evaluate {
            tracing::debug!(
                "{algorithm}: evaluate_on_every_step: the host evaluates every returned model \
                 on the whole task pool"
            );
        }
        Ok(Common {
            order,
            save_on_every_step,
        })
    }
}

/// `Algorithm` for continual methods, each with a `common: Common` field and a
/// `models(pool, ctx, every_step)` that merges in order and returns the last model, or every
/// step's when `every_step`: `run` takes the last, `run_models` follows `save_on_every_step`.
macro_rules! continual_algorithm {
    ($($method:ty),+) => {$(
        impl Algorithm for $method {
            fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
                let mut models = self.models(pool, ctx, false)?;
                Ok(models.pop().expect("one model").1)
            }

            fn run_models(
                &self,
                pool: &dyn ModelPool,
                ctx: &Context,
            ) -> Result<Vec<(String, Model)>> {
                self.models(pool, ctx, self.common.save_on_every_step)
            }
        }
    )+};
}
pub(crate) use continual_algorithm;

/// OPCM (`OPCM`, `opcm/opcm_general`; `OPCMForCLIP`, `opcm/opcm`). The merged model starts as
/// the first model; each next model's task vector τ joins it by, for each linear layer's weight,
/// projecting τ onto the singular vectors U, V of the merged task vector M, removing the
/// diagonal (UᵢᵀτVᵢ) and the leading block (the first r singular directions, r the first index
/// where the cumulative share of M's singular values exceeds `alpha`), and adding the rest,
/// θ = θ₀ + λₜ₋₁M + τ', while biases and the parameters of other leaf modules take
/// θ₀ + λₜ₋₁M + τ whole. The merged task vector is then rescaled to the mean norm of the task
/// vectors seen so far, and λₜ is its norm over that mean. Parameters of modules that have
/// submodules (CLIP's `class_embedding`) are only rescaled, as FusionBench's loop over leaf
/// modules leaves them.
///
/// From a state dict the module types are inferred from the names: a module is a leaf when no
/// tensor lies deeper under it; a leaf's 2-D `weight` (with at most a `bias` beside it) is a
/// linear layer unless the module's name says embedding (`embed` in its last part, `wte`,
/// `wpe`), whose weight is merged whole as FusionBench does for `nn.Embedding`.
///
/// Parameters (FusionBench's): `alpha` (required; the config file sets 0.5), `shuffle_order`
/// (true), `seed` (null), `save_on_every_step` (true), `evaluate_on_every_step` (false),
/// `num_ray_actors` (0; the merge runs in-process).
pub struct Opcm {
    alpha: f64,
    common: Common,
}

impl FromConfig for Opcm {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = "opcm";
        let alpha: f64 = config.require("alpha")?;
        if !alpha.is_finite() {
            return Err(Error::config(format!(
                "{NAME}: `alpha` must be a number, got {alpha}"
            )));
        }
        let actors: u64 = config.get_or("num_ray_actors", 0)?;
        if actors > 0 {
            tracing::info!("{NAME}: num_ray_actors {actors}: the merge runs in-process");
        }
        Ok(Opcm {
            alpha,
            common: Common::read(config, NAME)?,
        })
    }
}

continual_algorithm!(Opcm);

impl Opcm {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        let names = pool.all_model_names()?;
        let roles = Arc::new(OpcmMerge::roles_of(pool, &names)?);
        let linear = roles.values().filter(|r| **r == Role::Linear).count();
        if linear == 0 {
            tracing::warn!(
                "opcm: no linear-layer weight found (2-D `weight` of a leaf module); every \
                 tensor is merged whole"
            );
        }
        tracing::info!(alpha = self.alpha, linear, "OPCM (CPU)");
        run_continual(
            OpcmMerge {
                alpha: self.alpha,
                roles,
                norms: Vec::new(),
                prev_lambda: 1.0,
            },
            &self.common.order,
            every_step,
            pool,
            ctx,
        )
    }
}

/// How OPCM merges a tensor, from its module's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A linear layer's weight: the projected task vector.
    Linear,
    /// Another parameter of a leaf module: the whole task vector.
    Other,
    /// A parameter of a module with submodules: only rescaled.
    Frozen,
}

struct OpcmMerge {
    alpha: f64,
    roles: Arc<HashMap<String, Role>>,
    /// The task vectors' norms so far.
    norms: Vec<f32>,
    prev_lambda: f32,
}

#[derive(Clone, Debug)]
struct OpcmStep {
    /// λₜ₋₁.
    prev_lambda: f32,
    /// The rescale of the merged task vector: mean norm / its norm.
    scale: f32,
}

/// The module of a tensor name and the parameter's own name.
pub(crate) fn split_name(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

impl OpcmMerge {
    /// Each tensor's role, from the names of every tensor of the reference model.
    fn roles_of(pool: &dyn ModelPool, all: &[String]) -> Result<HashMap<String, Role>> {
        let reference =
            match all.iter().find(|n| *n == PRETRAINED) {
                Some(n) => n.clone(),
                None => return Err(Error::config(
                    "opcm needs a `_pretrained_` model in the pool (the base of the task vectors)",
                )),
            };
        let model = pool.load_model(&reference)?;
        let names = model.names()?;
        roles(&names, |n| model.info(n))
    }
}

/// OPCM's role of every tensor (see [`Opcm`]).
pub(crate) fn roles(
    names: &[String],
    info: impl Fn(&str) -> Result<TensorInfo>,
) -> Result<HashMap<String, Role>> {
    // Modules with submodules: every proper ancestor of a tensor's module.
    let mut parents: HashSet<&str> = HashSet::new();
    let mut params: HashMap<&str, Vec<&str>> = HashMap::new();
    for name in names {
        let (module, param) = split_name(name);
        params.entry(module).or_default().push(param);
        if !module.is_empty() {
            parents.insert("");
        }
        let mut m = module;
        while let Some((up, _)) = m.rsplit_once('.') {
            parents.insert(up);
            m = up;
        }
    }
    let mut out = HashMap::new();
    for name in names {
        let (module, param) = split_name(name);
        let role = if parents.contains(module) {
            Role::Frozen
        } else {
            let last = module.rsplit('.').next().unwrap_or(module).to_lowercase();
            let embedding = last.contains("embed") || last == "wte" || last == "wpe";
            let siblings = &params[module];
            let w = info(name)?;
            let linear = param == "weight"
                && w.shape.len() == 2
                && !embedding
                && siblings.iter().all(|p| *p == "weight" || *p == "bias")
                && match siblings.contains(&"bias") {
                    false => true,
                    true => {
                        let b = info(&format!("{module}.bias"))?;
                        b.shape == [w.shape[0]]
                    }
                };
            if linear {
                Role::Linear
            } else {
                Role::Other
            }
        };
        out.insert(name.clone(), role);
    }
    Ok(out)
}

/// The f32 difference a − b.
fn diff(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn sum_sq(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(x - y);
            d * d
        })
        .sum()
}

impl OpcmMerge {
    /// One tensor's update before the rescale: θ₀ + λₜ₋₁M + τ (τ projected for linear weights).
    fn unscaled(
        &self,
        name: &str,
        info: &TensorInfo,
        merged: &mut [f32],
        pre: &[f32],
        task: &[f32],
        prev_lambda: f32,
    ) -> Result<()> {
        let role = self.roles.get(name).copied().unwrap_or(Role::Other);
        if role == Role::Frozen {
            return Ok(());
        }
        let prev_tv = diff(merged, pre);
        let task_tv = diff(task, pre);
        let task_tv = if role == Role::Linear {
            clean(info.shape[0], info.shape[1], &prev_tv, &task_tv, self.alpha)
                .map_err(|e| Error::model(e.to_string()))?
        } else {
            task_tv
        };
        for (((m, p), tv), c) in merged.iter_mut().zip(pre).zip(&prev_tv).zip(&task_tv) {
            *m = p + (prev_lambda * tv + c);
        }
        Ok(())
    }
}

/// τ with its components on M's singular directions removed: with M = U·S·Vᵀ and
/// P = UᵀτV, the diagonal of P and its leading r×r block (r: the first index at which the
/// cumulative share of S exceeds `alpha`) are zeroed, τ' = U·P·Vᵀ. Only the first min(m, n)
/// singular directions meet zeroed entries, so the thin SVD serves.
fn clean(
    m: usize,
    n: usize,
    prev_tv: &[f32],
    task_tv: &[f32],
    alpha: f64,
) -> std::result::Result<Vec<f32>, LinalgError> {
    let k = m.min(n);
    let t = Matrix::from_f32(m, n, task_tv);
    if prev_tv.iter().all(|v| *v == 0.0) {
        // torch's SVD of a zero matrix has identity singular vectors, and the share is NaN
        // (no block): only the diagonal of τ goes.
        let mut out = task_tv.to_vec();
        for i in 0..k {
            out[i * n + i] = 0.0;
        }
        return Ok(out);
    }
    let d = svd(&Matrix::from_f32(m, n, prev_tv));
    let total: f64 = d.s.iter().sum();
    let mut acc = 0.0;
    let mut split = 0;
    for (i, s) in d.s.iter().enumerate() {
        acc += s;
        if acc / total > alpha {
            split = i;
            break;
        }
    }
    let v = d.vt.t();
    let mut p = d.u.t().matmul(&t)?.matmul(&v)?;
    for i in 0..k {
        for j in 0..k {
            if !(i == j || (i < split && j < split)) {
                p[(i, j)] = 0.0;
            }
        }
    }
    let removed = d.u.matmul(&p)?.matmul(&d.vt)?;
    Ok(t.sub(&removed)?.to_f32())
}

impl Continual for OpcmMerge {
    type Step = OpcmStep;
    const NAME: &'static str = "opcm";
    const FROM_FIRST: bool = true;

    fn step_name(t: usize) -> String {
        format!("merged_model_{t}")
    }

    fn advance(&mut self, run: &Run, state: &mut [Vec<f32>], t: usize) -> Result<OpcmStep> {
        if self.norms.is_empty() {
            self.norms.push(task_vector_norm(run, run.model(0))? as f32);
        }
        self.norms.push(task_vector_norm(run, run.model(t))? as f32);
        let avg = self.norms.iter().sum::<f32>() / self.norms.len() as f32;
        let prev_lambda = self.prev_lambda;
        let mut sq = 0.0;
        for ((name, info), value) in run.floats.iter().zip(state.iter_mut()) {
            let pre = load(run.base(), name)?;
            let task = load(run.model(t), name)?;
            self.unscaled(name, info, value, &pre, &task, prev_lambda)
                .map_err(|e| e.context(format!("tensor `{name}`")))?;
            sq += sum_sq(value, &pre);
        }
        let norm = sq.sqrt() as f32;
        if norm == 0.0 || !norm.is_finite() {
            return Err(Error::model(format!(
                "opcm: the merged task vector has norm {norm} after model `{}`, so it cannot be \
                 rescaled to the mean task-vector norm (are the models identical to \
                 `_pretrained_`?)",
                run.model(t).name
            )));
        }
        let step = OpcmStep {
            prev_lambda,
            scale: avg / norm,
        };
        self.prev_lambda = norm / avg;
        tracing::debug!(
            step = t,
            lambda = self.prev_lambda,
            avg_norm = avg,
            "opcm step"
        );
        for ((name, _), value) in run.floats.iter().zip(state.iter_mut()) {
            let pre = load(run.base(), name)?;
            rescale(value, &pre, step.scale);
        }
        Ok(step)
    }

    fn replay(
        &self,
        run: &Run,
        name: &str,
        info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        step: &OpcmStep,
    ) -> Result<()> {
        let pre = load(run.base(), name)?;
        let task = load(run.model(t), name)?;
        self.unscaled(name, info, value, &pre, &task, step.prev_lambda)?;
        rescale(value, &pre, step.scale);
        Ok(())
    }
}

/// θ₀ + (θ − θ₀)·c in f32.
fn rescale(value: &mut [f32], pre: &[f32], c: f32) {
    for (v, p) in value.iter_mut().zip(pre) {
        *v = p + (*v - p) * c;
    }
}

/// ‖θ − θ₀‖ over every float tensor.
fn task_vector_norm(run: &Run, model: &Member) -> Result<f64> {
    let mut sq = 0.0;
    for (name, _) in &run.floats {
        sq += sum_sq(&load(model, name)?, &load(run.base(), name)?);
    }
    Ok(sq.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusion_plugin_api::DType;

    fn roles_for(names: &[(&str, &[usize])]) -> HashMap<String, Role> {
        let list: Vec<String> = names.iter().map(|(n, _)| n.to_string()).collect();
        let shapes: HashMap<String, Vec<usize>> = names
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect();
        roles(&list, |n| {
            Ok(TensorInfo {
                dtype: DType::F32,
                shape: shapes[n].clone(),
            })
        })
        .unwrap()
    }

    /// Leaf modules, linear layers and embeddings from the names alone (CLIP's layout).
    #[test]
    fn module_roles_from_names() {
        let r = roles_for(&[
            ("vision_model.embeddings.class_embedding", &[8]),
            (
                "vision_model.embeddings.patch_embedding.weight",
                &[8, 3, 2, 2],
            ),
            ("vision_model.embeddings.position_embedding.weight", &[5, 8]),
            (
                "vision_model.encoder.layers.0.self_attn.q_proj.weight",
                &[8, 8],
            ),
            ("vision_model.encoder.layers.0.self_attn.q_proj.bias", &[8]),
            ("vision_model.encoder.layers.0.layer_norm1.weight", &[8]),
            ("head.weight", &[3, 8]),
            ("embed.weight", &[40, 8]),
        ]);
        let role = |n: &str| r[n];
        assert_eq!(
            role("vision_model.embeddings.class_embedding"),
            Role::Frozen
        );
        assert_eq!(
            role("vision_model.embeddings.patch_embedding.weight"),
            Role::Other
        );
        assert_eq!(
            role("vision_model.embeddings.position_embedding.weight"),
            Role::Other
        );
        assert_eq!(
            role("vision_model.encoder.layers.0.self_attn.q_proj.weight"),
            Role::Linear
        );
        assert_eq!(
            role("vision_model.encoder.layers.0.self_attn.q_proj.bias"),
            Role::Other
        );
        assert_eq!(
            role("vision_model.encoder.layers.0.layer_norm1.weight"),
            Role::Other
        );
        assert_eq!(role("head.weight"), Role::Linear);
        assert_eq!(role("embed.weight"), Role::Other);
    }

    /// The projection removes exactly the diagonal and the leading block of UᵀτV.
    #[test]
    fn clean_removes_the_diagonal_and_the_leading_block() {
        let (m, n) = (6, 4);
        let prev: Vec<f32> = (0..m * n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let task: Vec<f32> = (0..m * n)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
            .collect();
        let d = svd(&Matrix::from_f32(m, n, &prev));
        let total: f64 = d.s.iter().sum();
        let alpha = 0.5;
        let split =
            d.s.iter()
                .scan(0.0, |a, s| {
                    *a += s;
                    Some(*a / total > alpha)
                })
                .position(|x| x)
                .unwrap();
        let cleaned = clean(m, n, &prev, &task, alpha).unwrap();
        let p =
            d.u.t()
                .matmul(&Matrix::from_f32(m, n, &cleaned))
                .unwrap()
                .matmul(&d.vt.t())
                .unwrap();
        let full =
            d.u.t()
                .matmul(&Matrix::from_f32(m, n, &task))
                .unwrap()
                .matmul(&d.vt.t())
                .unwrap();
        for i in 0..n {
            for j in 0..n {
                let zeroed = i == j || (i < split && j < split);
                let want = if zeroed { 0.0 } else { full[(i, j)] };
                assert!((p[(i, j)] - want).abs() < 1e-5, "({i},{j}) split {split}");
            }
        }
    }
}
