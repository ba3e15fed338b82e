//! FusionBench's pruning of Llama-style causal LMs: `MagnitudePruningForLlama` and
//! `RandomPruningForLlama` (`fusion_bench/method/pruning/llama_{magnitude,random}_prune.py`).
//!
//! Both prune the weight of every linear layer of the decoder layers (`model.model.layers`:
//! the 2-D `model.layers.N.….weight` tensors, i.e. the attention and MLP projections) of
//! `_pretrained_`, or of the pool's first model when there is none; embeddings, norms and
//! `lm_head` are left as they are. Pruned entries become exact zeros, the others keep their
//! bits.
//!
//! - `unstructured`: in each row, the `⌊cols · sparsity_ratio⌋` entries of smallest score are
//!   zeroed (a stable sort, so ties go to the lower column, as torch's `sort(stable=True)`).
//! - `semistructured` (n:m): in each group of `m` consecutive columns of a row, the `n` entries
//!   of smallest score are zeroed (2:4 prunes 2 of every 4, the pattern sparse tensor cores
//!   take). FusionBench's comments call `n` "the number to keep", but its code (`topk(…,
//!   largest=False)` then zero) prunes `n`; this follows the code. A last group shorter than `n`
//!   is an error, where torch's `topk` raises.
//!
//! The score is `|w|` for magnitude pruning (computed in `dtype` when one is given, as
//! FusionBench converts the weight first) and a uniform draw in [0, 1) for random pruning.
//! FusionBench draws from torch's global RNG; here the draw of entry `i` of tensor `name` is
//! Philox4x32-10 of `(i, key(name))` under the seed (the method's `seed`, else the program's),
//! as DARE's: the same seed gives the same pruned model in every run.
//!
//! The work is done on the CPU, tensor by tensor when the host asks for it.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{TensorInfo, PRETRAINED};

use crate::cpu::{load, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::params;

/// The prefix of the decoder layers' tensors in Hugging Face causal LMs (`model.model.layers`).
pub(crate) const LAYERS: &str = "model.layers.";

/// How the entries of a row are pruned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum PruneMode {
    /// The `⌊cols · ratio⌋` lowest scores of each row.
    Unstructured { ratio: f64 },
    /// The `n` lowest scores of each group of `m` columns.
    Semistructured { n: usize, m: usize },
}

impl PruneMode {
    /// FusionBench's `prune_type` (`unstructured` or `semistructured`) with `sparsity_ratio`
    /// (0.5), `n` (2) and `m` (4).
    fn read(config: &Config, algorithm: &str) -> Result<Self> {
        let prune_type: String = config.require("prune_type")?;
        let ratio: f64 = config.get_or("sparsity_ratio", 0.5)?;
        let n: i64 = config.get_or("n", 2)?;
        let m: i64 = config.get_or("m", 4)?;
        match prune_type.as_str() {
            "unstructured" => Ok(PruneMode::Unstructured {
                ratio: params::unit_interval(ratio, "sparsity_ratio", algorithm)?,
            }),
            "semistructured" => {
                if n < 0 || m < 1 || n > m {
                    return Err(Error::config(format!(
                        "{algorithm}: semistructured pruning prunes `n` of every `m` weights and \
                         needs 0 <= n <= m, m >= 1; got n = {n}, m = {m}"
                    )));
                }
                Ok(PruneMode::Semistructured {
                    n: n as usize,
                    m: m as usize,
                })
            }
            "structured" => Err(Error::config(format!(
                "{algorithm}: `prune_type: structured` is a FusionBench PruningType that this \
                 method does not implement (FusionBench raises too); choose unstructured or \
                 semistructured"
            ))),
            other => Err(Error::config(format!(
                "{algorithm}: unknown `prune_type` `{other}`; choose unstructured or \
                 semistructured (n:m, e.g. n: 2, m: 4)"
            ))),
        }
    }

    /// Zero the entries of `values` (rows of `cols`) with the lowest `scores`.
    pub(crate) fn apply(&self, values: &mut [f32], scores: &[f32], cols: usize) -> Result<()> {
        let mut order: Vec<usize> = Vec::with_capacity(cols);
        match *self {
            PruneMode::Unstructured { ratio } => {
                // Python's int(cols * ratio).
                let k = ((cols as f64) * ratio).floor() as usize;
                for (row, score) in values.chunks_mut(cols).zip(scores.chunks(cols)) {
                    order.clear();
                    order.extend(0..cols);
                    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
                    for &j in &order[..k.min(cols)] {
                        row[j] = 0.0;
                    }
                }
            }
            PruneMode::Semistructured { n, m } => {
                let last = cols % m;
                if last != 0 && last < n {
                    return Err(Error::config(format!(
                        "{cols} columns leave a last group of {last} < n = {n} in {n}:{m} pruning"
                    )));
                }
                for (row, score) in values.chunks_mut(cols).zip(scores.chunks(cols)) {
                    for start in (0..cols).step_by(m) {
                        let end = (start + m).min(cols);
                        order.clear();
                        order.extend(start..end);
                        order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
                        for &j in &order[..n] {
                            row[j] = 0.0;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A linear layer's weight inside the decoder layers: what the Llama pruning methods prune.
pub(crate) fn is_layer_linear_weight(name: &str, info: &TensorInfo) -> bool {
    name.starts_with(LAYERS)
        && name.ends_with(".weight")
        && info.shape.len() == 2
        && info.dtype.is_float()
}

/// The one model pruned: `_pretrained_`, else the first model, checked to have layers to prune.
fn open_target(pool: &dyn ModelPool, algorithm: &str) -> Result<(Inputs, usize)> {
    let name = if pool.has_pretrained()? {
        PRETRAINED.to_string()
    } else {
        pool.model_names()?
            .into_iter()
            .next()
            .ok_or_else(|| Error::config(format!("{algorithm}: the model pool has no models")))?
    };
    let inputs = Inputs::open_named(pool, algorithm, false, std::slice::from_ref(&name), 1)?;
    let mut count = 0;
    for n in inputs.names()? {
        if is_layer_linear_weight(&n, &inputs.info(&n)?) {
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::config(format!(
            "{algorithm}: model `{name}` has no linear-layer weights under `{LAYERS}N.` (it \
             prunes the decoder layers of a Llama-style causal LM, Hugging Face names such as \
             `model.layers.0.self_attn.q_proj.weight`)"
        )));
    }
    Ok((inputs, count))
}

/// FusionBench `MagnitudePruningForLlama`: `prune_type` (unstructured | semistructured),
/// `sparsity_ratio` 0.5, `n` 2, `m` 4, `dtype` (null: the weight's own; else the dtype the
/// magnitudes are compared in). `device` is accepted: the scores are computed on the CPU.
pub struct MagnitudePruningForLlama {
    mode: PruneMode,
    dtype: Option<DType>,
}

impl FromConfig for MagnitudePruningForLlama {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = "MagnitudePruningForLlama";
        let mode = PruneMode::read(config, NAME)?;
        let _: Option<String> = config.get("device")?;
        let dtype = match config.get::<String>("dtype")? {
            None => None,
            Some(d) => Some(fusion_plugin_api::parse_torch_dtype(&d, NAME, "dtype")?),
        };
        Ok(MagnitudePruningForLlama { mode, dtype })
    }
}

impl Algorithm for MagnitudePruningForLlama {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let (inputs, tensors) = open_target(pool, "MagnitudePruningForLlama")?;
        tracing::info!(model = %inputs.reference.name, mode = ?self.mode, tensors, "magnitude pruning (CPU)");
        Ok(CpuMerged::model(
            inputs,
            Prune {
                mode: self.mode,
                score: Score::Magnitude(self.dtype),
            },
        ))
    }
}

/// FusionBench `RandomPruningForLlama`: `prune_type` (unstructured | semistructured),
/// `sparsity_ratio` 0.5, `n` 2, `m` 4, plus `seed` (default: the program's seed).
pub struct RandomPruningForLlama {
    mode: PruneMode,
    seed: Option<u64>,
}

impl FromConfig for RandomPruningForLlama {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(RandomPruningForLlama {
            mode: PruneMode::read(config, "RandomPruningForLlama")?,
            seed: config.get("seed")?,
        })
    }
}

impl Algorithm for RandomPruningForLlama {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        const NAME: &str = "RandomPruningForLlama";
        let (inputs, tensors) = open_target(pool, NAME)?;
        let seed = params::seed(self.seed, ctx, NAME);
        tracing::info!(model = %inputs.reference.name, mode = ?self.mode, tensors, seed, "random pruning (CPU)");
        Ok(CpuMerged::model(
            inputs,
            Prune {
                mode: self.mode,
                score: Score::Random(seed),
            },
        ))
    }
}

#[derive(Clone, Copy, Debug)]
enum Score {
    /// `|w|`, with `w` rounded to this dtype first when one is given.
    Magnitude(Option<DType>),
    /// A uniform draw per entry under this seed.
    Random(u64),
}

/// The uniform draw in [0, 1) (24 bits) of entry `index` of the tensor with key `key`.
pub(crate) fn uniform(seed: u64, key: u64, index: u64) -> f32 {
    let r = fusion_kernels::philox4x32_10(
        [
            index as u32,
            (index >> 32) as u32,
            key as u32,
            (key >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    (r[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// `values` rounded to `dtype` (f32 and f64 leave f32 values as they are).
fn round_to(values: &[f32], dtype: DType) -> Result<Vec<f32>> {
    match dtype {
        DType::F16 | DType::BF16 => {
            fusion_plugin_api::bytes_to_f32(&fusion_plugin_api::f32_to_bytes(values, dtype)?, dtype)
        }
        _ => Ok(values.to_vec()),
    }
}

struct Prune {
    mode: PruneMode,
    score: Score,
}

impl CpuMerge for Prune {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let mut values = load(&inputs.reference, name)?;
        if !is_layer_linear_weight(name, info) {
            return Ok(values);
        }
        let scores: Vec<f32> = match self.score {
            Score::Magnitude(None) => values.iter().map(|v| v.abs()).collect(),
            Score::Magnitude(Some(d)) => round_to(&values, d)?.iter().map(|v| v.abs()).collect(),
            Score::Random(seed) => {
                let key = fusion_kernels::tensor_key(name);
                (0..values.len() as u64)
                    .map(|i| uniform(seed, key, i))
                    .collect()
            }
        };
        self.mode.apply(&mut values, &scores, info.shape[1])?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstructured_prunes_the_lowest_of_each_row_with_stable_ties() {
        let mut v = vec![3.0, -1.0, 2.0, 1.0, /**/ 0.5, -0.5, 4.0, 0.0];
        let s: Vec<f32> = v.iter().map(|x: &f32| x.abs()).collect();
        PruneMode::Unstructured { ratio: 0.5 }
            .apply(&mut v, &s, 4)
            .unwrap();
        // Row 1: |-1| and |1| tie; both among the two lowest. Row 2: 0 and the first 0.5.
        assert_eq!(v, vec![3.0, 0.0, 2.0, 0.0, /**/ 0.0, -0.5, 4.0, 0.0]);
    }

    #[test]
    fn two_four_prunes_two_of_every_four() {
        let mut v: Vec<f32> = (1..=16)
            .map(|i| i as f32 * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let s: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        PruneMode::Semistructured { n: 2, m: 4 }
            .apply(&mut v, &s, 8)
            .unwrap();
        for group in v.chunks(4) {
            assert_eq!(group.iter().filter(|x| **x == 0.0).count(), 2);
            assert_eq!(group[0], 0.0);
            assert_eq!(group[1], 0.0);
        }
        let e = PruneMode::Semistructured { n: 3, m: 4 }
            .apply(&mut [1.0; 6], &[1.0; 6], 6)
            .unwrap_err();
        assert!(e.message().contains("last group"), "{e}");
    }

    #[test]
    fn uniform_draws_are_spread_and_seeded() {
        let a: Vec<f32> = (0..4096).map(|i| uniform(7, 99, i)).collect();
        let b: Vec<f32> = (0..4096).map(|i| uniform(8, 99, i)).collect();
        assert!(a.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_ne!(a, b);
        assert_eq!(a[17], uniform(7, 99, 17));
    }
}
