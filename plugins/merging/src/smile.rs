//! SMILE upscaling (FusionBench's `SmileUpscalingAlgorithm`, `smile_upscaling/smile_upscaling`):
//! a zero-shot sparse mixture of low-rank experts. Every linear layer some fine-tuned model
//! changed becomes a `SmileMoELinear`: the pretrained linear (shared), one low-rank expert per
//! fine-tuned model from the SVD of its task matrix `ΔWᵢ = Wᵢ − W₀` (`u = Uᵢ[:, :k]`,
//! `svh = diag(Sᵢ[:k]) Vᵢ[:, :k]ᵀ`, `bias = bᵢ − b₀`), and a gate whose rows are each task
//! matrix's `gate_k` leading right singular vectors. The tower that runs it routes each token to
//! the `top_k` experts whose subspaces hold most of it (`fusion_clip::gpu::moe`).
//!
//! The upscaled model crosses the plugin boundary as named tensors, under the names of
//! FusionBench's state dict: for a linear `P`, `P.gate.weights` `[E·gate_k, in]`,
//! `P.experts.I.u` `[out, k]`, `P.experts.I.svh` `[k, in]`, `P.experts.I.bias` `[out]`
//! (`P.experts.I.weight` `[out, in]`, the whole task matrix, when `k ≤ 0`), and
//! `P.pretrained_model.weight`/`.bias`. Linears no model changed (every difference within
//! 1e-8, torch's `allclose` to zero) stay plain, as FusionBench skips them. Other tensors are
//! `_pretrained_`'s, or with `average_experts: true` the fine-tuned models' mean for the
//! parameters of leaf modules (layer norms, embeddings; not `class_embedding`, which sits on a
//! module with children), as FusionBench averages leaf modules. The routing parameters the
//! state dict does not hold travel in the model's `config.json` under [`CONFIG_KEY`].
//!
//! Parameters (FusionBench's, with its defaults): `device` (cuda; the work runs on the CPU
//! here), `upscaling_accelerator` (null), `full_matrices` (true), `gate_k` (256), `k` (256),
//! `top_k` (1), `routing_use_diff` (true), `average_experts` (false), `model_path` (null;
//! FusionBench's torch.save cache, refused here: save with `merged_model_save_path`).
//!
//! Ranks: a `k` or `gate_k` above `min(out, in)` is clamped to it where FusionBench's shapes
//! allow (`full_matrices: false`, or a square matrix), and an error naming the tensor where
//! FusionBench's module would fail (full singular-vector matrices of a non-square matrix; an
//! `upscaling_accelerator` makes FusionBench compute full matrices whatever `full_matrices`
//! says, and so does the gate of `routing_use_diff: false`).
//!
//! The SVDs run in f64 through faer ([`crate::linalg`]) on the task matrices formed in f32 as
//! torch does; singular vectors are determined up to sign, so `u` and `svh` may differ from
//! FusionBench's by a sign per column/row pair while `u · svh`, the gate's routing norms and
//! the model's outputs agree.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::{self, json, Value};
use fusion_plugin_api::{f32_to_bytes, StateDict, TensorInfo};

use crate::cpu::load;
use crate::delta::is_linear_weight;
use crate::inputs::Inputs;
use crate::linalg::{truncated_svd, Matrix};
use crate::parallel::map_parallel;

/// The key of the upscaled model's `config.json` that carries the routing parameters.
pub const CONFIG_KEY: &str = "smile_upscaling";

/// FusionBench's `_is_all_zeros`: `torch.allclose(t, 0)`, i.e. every |value| ≤ 1e-8.
const ZERO_ATOL: f32 = 1e-8;

/// SMILE upscaling; see the module docs.
pub struct SmileUpscaling {
    full_matrices: bool,
    accelerator: Option<String>,
    gate_k: i64,
    k: i64,
    top_k: i64,
    routing_use_diff: bool,
    average_experts: bool,
}

impl FromConfig for SmileUpscaling {
    fn from_config(config: &Config) -> Result<Self> {
        let device: String = config.get_or("device", "cuda".to_string())?;
        let accelerator: Option<String> = config.get("upscaling_accelerator")?;
        let model_path: Option<String> = config.get("model_path")?;
        if let Some(p) = model_path {
            return Err(Error::config(format!(
                "smile_upscaling: `model_path` ({p}) is FusionBench's torch.save cache of the upscaled \
                 module, which fusion-host cannot read or write; set it to null and save the \
                 upscaled model with `merged_model_save_path`"
            )));
        }
        let s = SmileUpscaling {
            full_matrices: config.get_or("full_matrices", true)?,
            accelerator,
            gate_k: config.get_or("gate_k", 256)?,
            k: config.get_or("k", 256)?,
            top_k: config.get_or("top_k", 1)?,
            routing_use_diff: config.get_or("routing_use_diff", true)?,
            average_experts: config.get_or("average_experts", false)?,
        };
        if s.gate_k < 1 {
            return Err(Error::config(format!(
                "smile_upscaling: `gate_k` must be at least 1 (the gate's singular vectors per expert), got {}",
                s.gate_k
            )));
        }
        if s.top_k < 1 {
            return Err(Error::config(format!(
                "smile_upscaling: `top_k` must be at least 1 (experts per token), got {}",
                s.top_k
            )));
        }
        tracing::debug!(%device, "smile_upscaling: `device` is FusionBench's; the work runs on the CPU");
        Ok(s)
    }
}

/// How many singular triplets one linear keeps, after FusionBench's clamping.
#[derive(Clone, Copy, Debug)]
struct Ranks {
    /// The gate's rows per expert.
    gate_k: usize,
    /// The experts' rank; `None` for full task matrices (`k ≤ 0`).
    k: Option<usize>,
}

impl SmileUpscaling {
    /// Whether FusionBench's SVD returns full singular-vector matrices for the task matrices.
    fn full(&self) -> bool {
        self.full_matrices || self.accelerator.is_some()
    }

    /// The ranks of linear `name` (`[out, in]`), or the error FusionBench's shapes imply.
    fn ranks(&self, name: &str, out: usize, inp: usize) -> Result<Ranks> {
        let r = out.min(inp);
        let too_large = |what: &str, value: i64, why: &str| {
            Error::config(format!(
                "smile_upscaling: `{what}` = {value} is larger than the rank of `{name}` \
                 ({out}×{inp}, at most {r}): {why}; lower `{what}` to at most {r}"
            ))
        };
        // The gate keeps the leading `gate_k` columns of V (n×n when full) and of S (r): the
        // two agree only while gate_k ≤ r or V has no more than r columns (in ≤ out).
        let gate_full = if self.routing_use_diff {
            self.full()
        } else {
            true
        };
        let gate_k = self.gate_k as usize;
        if gate_k > r && gate_full && inp > out {
            return Err(too_large(
                "gate_k",
                self.gate_k,
                "FusionBench's gate takes that many right singular vectors of the full SVD and \
                 fails to shape them",
            ));
        }
        let k = if self.k > 0 {
            let k = self.k as usize;
            if k > r && self.full() && out != inp {
                return Err(too_large(
                    "k",
                    self.k,
                    "FusionBench's experts take that many singular vectors of the full SVD of a \
                     non-square matrix and fail (`full_matrices: false` keeps them all instead)",
                ));
            }
            Some(k.min(r))
        } else {
            None
        };
        Ok(Ranks {
            gate_k: gate_k.min(r),
            k,
        })
    }
}

/// One linear layer the method upscales.
struct MoeLinear {
    /// The module path (`...mlp.fc1`).
    prefix: String,
    out: usize,
    inp: usize,
    has_bias: bool,
    ranks: Ranks,
}

/// Where a tensor of the upscaled model comes from.
#[derive(Clone, Debug)]
enum Source {
    /// `_pretrained_`'s tensor of that name.
    Pretrained(String),
    /// The fine-tuned models' mean of that tensor.
    Average(String),
    /// Part of upscaled linear number `.0`.
    Moe(usize, Part),
}

#[derive(Clone, Copy, Debug)]
enum Part {
    Gate,
    U(usize),
    Svh(usize),
    Weight(usize),
    Bias(usize),
}

/// The factors of one upscaled linear, f32 row-major.
struct Factors {
    gate: Vec<f32>,
    /// Per expert: `u` and `svh`, or the task matrix as `u` (and `svh` empty) when `k ≤ 0`.
    experts: Vec<(Vec<f32>, Vec<f32>)>,
    biases: Vec<Vec<f32>>,
}

impl Algorithm for SmileUpscaling {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let inputs = Inputs::open(pool, "smile_upscaling", true, 1)?;
        let experts = inputs.models.len();
        if self.top_k as usize > experts {
            return Err(Error::config(format!(
                "smile_upscaling: `top_k` = {} experts per token, but the pool has {experts} \
                 fine-tuned model(s) (one expert each)",
                self.top_k
            )));
        }
        let names = inputs.names()?;
        let infos = names
            .iter()
            .map(|n| inputs.info(n))
            .collect::<Result<Vec<_>>>()?;
        let all: BTreeSet<&str> = names.iter().map(String::as_str).collect();

        // Which linears some model changed: one pass over their weights.
        let candidates: Vec<usize> = (0..names.len())
            .filter(|&i| infos[i].dtype.is_float() && is_linear_weight(&names[i], &infos[i]))
            .collect();
        let progress = ctx.progress("SMILE: finding trained linears", candidates.len() as u64);
        let trained = map_parallel(&candidates, |&i| {
            let base = load(inputs.base(), &names[i])?;
            for m in &inputs.models {
                let w = load(m, &names[i])?;
                if w.iter()
                    .zip(&base)
                    .any(|(a, b)| (a - b).abs() > ZERO_ATOL || (a - b).is_nan())
                {
                    progress.advance(1);
                    return Ok(true);
                }
            }
            progress.advance(1);
            Ok(false)
        })?;
        drop(progress);

        let mut linears = Vec::new();
        let mut moe_of: HashMap<String, usize> = HashMap::new();
        for (&i, _) in candidates.iter().zip(&trained).filter(|(_, &t)| t) {
            let name = &names[i];
            let prefix = name
                .strip_suffix(".weight")
                .expect("a linear weight")
                .to_string();
            let (out, inp) = (infos[i].shape[0], infos[i].shape[1]);
            let bias = format!("{prefix}.bias");
            let has_bias = all.contains(bias.as_str());
            let ranks = self.ranks(name, out, inp)?;
            moe_of.insert(prefix.clone(), linears.len());
            linears.push(MoeLinear {
                prefix,
                out,
                inp,
                has_bias,
                ranks,
            });
        }
        if linears.is_empty() {
            tracing::warn!(
                "smile_upscaling: no linear weight differs from `_pretrained_` in any model; the result is the pretrained model"
            );
        }

        // The state dict, in the pretrained model's order, each upscaled linear's tensors
        // where its weight was (FusionBench replaces the module in place).
        let mut order = Vec::new();
        let mut entries: HashMap<String, (TensorInfo, Source)> = HashMap::new();
        let mut emitted = BTreeSet::new();
        for (name, info) in names.iter().zip(&infos) {
            let module = name.rsplit_once('.').map_or("", |(m, _)| m);
            if let Some(&l) = moe_of.get(module) {
                if !emitted.insert(l) {
                    continue; // the bias, emitted with the weight
                }
                let lin = &linears[l];
                let dtype = inputs.info(&format!("{}.weight", lin.prefix))?.dtype;
                let mut push = |n: String, shape: Vec<usize>, src: Source| {
                    order.push(n.clone());
                    entries.insert(n, (TensorInfo { dtype, shape }, src));
                };
                let p = &lin.prefix;
                push(
                    format!("{p}.gate.weights"),
                    vec![experts * lin.ranks.gate_k, lin.inp],
                    Source::Moe(l, Part::Gate),
                );
                for e in 0..experts {
                    match lin.ranks.k {
                        Some(k) => {
                            push(
                                format!("{p}.experts.{e}.u"),
                                vec![lin.out, k],
                                Source::Moe(l, Part::U(e)),
                            );
                            push(
                                format!("{p}.experts.{e}.svh"),
                                vec![k, lin.inp],
                                Source::Moe(l, Part::Svh(e)),
                            );
                        }
                        None => push(
                            format!("{p}.experts.{e}.weight"),
                            vec![lin.out, lin.inp],
                            Source::Moe(l, Part::Weight(e)),
                        ),
                    }
                    if lin.has_bias {
                        push(
                            format!("{p}.experts.{e}.bias"),
                            vec![lin.out],
                            Source::Moe(l, Part::Bias(e)),
                        );
                    }
                }
                push(
                    format!("{p}.pretrained_model.weight"),
                    vec![lin.out, lin.inp],
                    Source::Pretrained(format!("{p}.weight")),
                );
                if lin.has_bias {
                    push(
                        format!("{p}.pretrained_model.bias"),
                        vec![lin.out],
                        Source::Pretrained(format!("{p}.bias")),
                    );
                }
                continue;
            }
            let source = if self.average_experts
                && info.dtype.is_float()
                && is_leaf_module(module, &names)
                && !is_linear_module(module, &names, &infos)
            {
                Source::Average(name.clone())
            } else {
                Source::Pretrained(name.clone())
            };
            order.push(name.clone());
            entries.insert(name.clone(), (info.clone(), source));
        }

        let config = upscaled_config(
            &inputs,
            json!({
                "num_experts": experts,
                "top_k": self.top_k,
                "gate_k": self.gate_k,
                "k": self.k,
                "routing_use_diff": self.routing_use_diff,
                "full_matrices": self.full_matrices,
                "average_experts": self.average_experts,
            }),
        )?;
        tracing::info!(
            experts,
            upscaled_linears = linears.len(),
            gate_k = self.gate_k,
            k = self.k,
            top_k = self.top_k,
            "SMILE upscaling (CPU SVDs)"
        );
        Ok(Model::new(Upscaled {
            inputs,
            routing_use_diff: self.routing_use_diff,
            linears,
            order,
            entries,
            config,
            cache: Mutex::new(None),
        }))
    }
}

/// Whether `module` has no child module holding parameters (a tensor named `module.child.x`).
fn is_leaf_module(module: &str, names: &[String]) -> bool {
    let prefix = format!("{module}.");
    !names.iter().any(|n| {
        n.strip_prefix(&prefix)
            .is_some_and(|rest| rest.contains('.'))
    }) && !module.is_empty()
}

/// Whether `module` is a linear layer (FusionBench's first branch, never averaged).
fn is_linear_module(module: &str, names: &[String], infos: &[TensorInfo]) -> bool {
    let weight = format!("{module}.weight");
    names
        .iter()
        .zip(infos)
        .any(|(n, i)| *n == weight && is_linear_weight(n, i))
}

/// The reference's `config.json` with the routing parameters under [`CONFIG_KEY`] (a new one
/// holding only them when the reference has none).
fn upscaled_config(inputs: &Inputs, smile: Value) -> Result<Vec<u8>> {
    let reference = &inputs.reference.model;
    let mut config: Value = if reference.file_names()?.iter().any(|f| f == "config.json") {
        serde_json::from_slice(&reference.file("config.json")?).map_err(|e| {
            Error::model(format!(
                "`{}`'s config.json is not JSON: {e}",
                inputs.reference.name
            ))
        })?
    } else {
        json!({})
    };
    match config.as_object_mut() {
        Some(m) => {
            m.insert(CONFIG_KEY.to_string(), smile);
        }
        None => {
            return Err(Error::model(format!(
                "`{}`'s config.json is not a JSON object",
                inputs.reference.name
            )))
        }
    }
    serde_json::to_vec_pretty(&config).map_err(|e| Error::other(e.to_string()))
}

/// The upscaled model: tensors computed when asked for, one linear's SVDs at a time (the last
/// linear's factors are kept, so its tensors asked for in turn cost one set of SVDs).
struct Upscaled {
    inputs: Inputs,
    routing_use_diff: bool,
    linears: Vec<MoeLinear>,
    order: Vec<String>,
    entries: HashMap<String, (TensorInfo, Source)>,
    config: Vec<u8>,
    cache: Mutex<Option<(usize, Arc<Factors>)>>,
}

impl Upscaled {
    fn factors(&self, l: usize) -> Result<Arc<Factors>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, f)) = cache.as_ref() {
            if *cached == l {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(self.compute(&self.linears[l])?);
        *cache = Some((l, f.clone()));
        Ok(f)
    }

    /// The gate rows, experts and biases of one linear: one SVD per fine-tuned model (two
    /// when the gate comes from the fine-tuned weights themselves), on as many threads.
    fn compute(&self, lin: &MoeLinear) -> Result<Factors> {
        let p = &lin.prefix;
        let weight = format!("{p}.weight");
        let (out, inp) = (lin.out, lin.inp);
        let base = load(self.inputs.base(), &weight)?;
        let base_bias = if lin.has_bias {
            Some(load(self.inputs.base(), &format!("{p}.bias"))?)
        } else {
            None
        };
        let Ranks { gate_k, k } = lin.ranks;
        let per_expert = map_parallel(&self.inputs.models, |m| {
            let w = load(m, &weight)?;
            let diff: Vec<f32> = w.iter().zip(&base).map(|(a, b)| a - b).collect();
            let d = Matrix::from_f32(out, inp, &diff);
            let need = k
                .unwrap_or(0)
                .max(if self.routing_use_diff { gate_k } else { 0 });
            let svd = if need > 0 {
                Some(truncated_svd(&d, need).map_err(|e| {
                    Error::compute(format!(
                        "SVD of `{weight}` − `_pretrained_` of `{}`: {e}",
                        m.name
                    ))
                })?)
            } else {
                None
            };
            let gate = if self.routing_use_diff {
                let s = svd.as_ref().expect("an SVD for the gate");
                s.vt.row_range(0, gate_k).to_f32()
            } else {
                let full = Matrix::from_f32(out, inp, &w);
                truncated_svd(&full, gate_k)
                    .map_err(|e| Error::compute(format!("SVD of `{weight}` of `{}`: {e}", m.name)))?
                    .vt
                    .to_f32()
            };
            let expert = match k {
                Some(k) => {
                    let s = svd.as_ref().expect("an SVD for the experts");
                    let u = s.u.columns(0, k).to_f32();
                    let mut svh = s.vt.row_range(0, k);
                    for (i, sv) in s.s[..k].iter().enumerate() {
                        for j in 0..inp {
                            svh[(i, j)] *= sv;
                        }
                    }
                    (u, svh.to_f32())
                }
                None => (diff, Vec::new()),
            };
            let bias = match &base_bias {
                Some(b0) => {
                    let b = load(m, &format!("{p}.bias"))?;
                    b.iter().zip(b0).map(|(x, y)| x - y).collect()
                }
                None => Vec::new(),
            };
            Ok((gate, expert, bias))
        })?;
        let mut f = Factors {
            gate: Vec::with_capacity(self.inputs.models.len() * gate_k * inp),
            experts: Vec::new(),
            biases: Vec::new(),
        };
        for (gate, expert, bias) in per_expert {
            f.gate.extend(gate);
            f.experts.push(expert);
            f.biases.push(bias);
        }
        tracing::debug!(linear = %p, "SMILE: upscaled");
        Ok(f)
    }

    fn values(&self, source: &Source) -> Result<Vec<f32>> {
        Ok(match *source {
            Source::Pretrained(ref n) => load(self.inputs.base(), n)?,
            Source::Average(ref n) => {
                let mut sum = load(&self.inputs.models[0], n)?;
                for m in &self.inputs.models[1..] {
                    sum.iter_mut().zip(load(m, n)?).for_each(|(a, x)| *a += x);
                }
                let count = self.inputs.models.len() as f32;
                sum.iter_mut().for_each(|a| *a /= count);
                sum
            }
            Source::Moe(l, part) => {
                let f = self.factors(l)?;
                match part {
                    Part::Gate => f.gate.clone(),
                    Part::U(e) | Part::Weight(e) => f.experts[e].0.clone(),
                    Part::Svh(e) => f.experts[e].1.clone(),
                    Part::Bias(e) => f.biases[e].clone(),
                }
            }
        })
    }
}

impl StateDict for Upscaled {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.order.clone())
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.entries
            .get(name)
            .map(|(i, _)| i.clone())
            .ok_or_else(|| Error::model(format!("the upscaled model has no tensor `{name}`")))
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let (info, source) = self
            .entries
            .get(name)
            .ok_or_else(|| Error::model(format!("the upscaled model has no tensor `{name}`")))?;
        if let Source::Pretrained(n) = source {
            if !info.dtype.is_float() || info.numel() == 0 {
                return Ok(Cow::Owned(self.inputs.base().model.data(n)?.into_owned()));
            }
        }
        let values = self
            .values(source)
            .map_err(|e| e.context(format!("upscaling tensor `{name}`")))?;
        debug_assert_eq!(values.len(), info.numel(), "{name}");
        Ok(Cow::Owned(f32_to_bytes(&values, info.dtype)?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        let mut files = self.inputs.reference.model.file_names()?;
        if !files.iter().any(|f| f == "config.json") {
            files.push("config.json".to_string());
        }
        Ok(files)
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        if name == "config.json" {
            return Ok(self.config.clone());
        }
        self.inputs.reference.model.file(name)
    }
}
