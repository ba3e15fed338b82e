//! RanDeS, randomized delta superposition (Zhou et al., 2025, "RanDeS: Randomized Delta
//! Superposition for Multi-Model Compression"), FusionBench `SuperposedModelSoupAlgorithm` and
//! `SuperposedTaskArithmeticAlgorithm` (`randes/*`), on the CPU.
//!
//! Each target tensor (by name: `mlp_w` an MLP weight, `attn_w` an attention weight, `mlp`,
//! `attn` with their biases, `all`; every `dropout_rate`-th one) of each model i is multiplied
//! along its last axis by a model's random context cᵢ and the products are summed into one
//! superposed tensor; model j is retrieved by multiplying the sum by its retrieval context
//! (cⱼ itself for random signs, 1/cⱼ for random Gaussian scales, nothing for the identity).
//! Other tensors are the plain sum (or the `absorber`). Superposed task arithmetic superposes
//! task vectors and returns θ₀ + λ·retrieved for each model; the superposed model soup
//! superposes the weights themselves, scaled by 1/N with `ms_mode: average`. Both return one
//! model per pool model, under its name, as FusionBench returns its dict of models.
//!
//! The contexts are FusionBench's draws, reproduced exactly: numpy's legacy generator
//! (`np.random.seed(s)`, then `binomial(1, 0.5)` or `randn`) seeded by
//! `random_seed + i + hash(name) % 1e6` (with `different_across_layers`) or `random_seed + i`.
//! Python's `hash` of a string is salted per process unless `PYTHONHASHSEED` is set, so
//! FusionBench's own contexts change from run to run; fusion-host takes the hash of
//! `PYTHONHASHSEED=0` (SipHash-1-3 with a zero key), the only reproducible choice, and
//! matches FusionBench run with that setting.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{load, CpuMerge, CpuMerged};
use crate::inputs::Inputs;

/// The contexts' distribution (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// ±1 entries, `random_binary_diagonal_matrix`.
    Binary,
    /// N(0, 1) entries, retrieved by their reciprocals, `random_diagonal_matrix`.
    Gaussian,
    /// `identity_matrix`: plain superposition.
    Identity,
}

/// One entry of `target_layer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    MlpW,
    AttnW,
    Mlp,
    Attn,
    All,
}

/// The absorber of the model soup's non-target tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Absorber {
    Average,
    Pretrained,
    None,
}

/// The parameters of FusionBench's `SuperposedAlgorithmBase`.
#[derive(Clone, Debug)]
struct Base {
    mode: Mode,
    targets: Vec<Target>,
    random_seed: i64,
    different_across_layers: bool,
    absorber: Absorber,
    ms_average: bool,
    dropout_rate: usize,
}

impl Base {
    fn read(config: &Config, name: &str) -> Result<Self> {
        // FusionBench's constructor takes every one of these without a default.
        let required = |key: &str| -> Result<Value> {
            config.get::<Value>(key)?.ok_or_else(|| {
                Error::config(format!(
                    "{name}: `{key}` is required (FusionBench's SuperposedAlgorithmBase takes it \
                     without a default, and FusionBench fails the same way without it; \
                     superposed_task_arithmetic.yaml lacks `absorber` and `ms_mode`: add \
                     `absorber: None` and `ms_mode: average`)"
                ))
            })
        };
        let text = |key: &str| -> Result<String> {
            match required(key)? {
                Value::String(s) => Ok(s),
                other => Ok(other.to_string()),
            }
        };
        let mode = text("mode")?;
        let mode = match mode.as_str() {
            "random_binary_diagonal_matrix" => Mode::Binary,
            "random_diagonal_matrix" => Mode::Gaussian,
            "identity_matrix" => Mode::Identity,
            "random_rotation_matrix" | "random_dense_matrix" => {
                return Err(Error::config(format!(
                    "{name}: `mode: {mode}` draws its contexts with scipy's ortho_group or a dense \
                     Gaussian inverted by torch.linalg.pinv, which fusion-host does not \
                     reproduce; use random_binary_diagonal_matrix, random_diagonal_matrix or \
                     identity_matrix"
                )))
            }
            other => {
                return Err(Error::config(format!(
                    "{name}: unsupported `mode` {other:?} (FusionBench raises `Unsupported mode` \
                     for it too); one of random_binary_diagonal_matrix, random_diagonal_matrix, \
                     identity_matrix (FusionBench also has random_rotation_matrix and \
                     random_dense_matrix)"
                )))
            }
        };
        let targets = match required("target_layer")? {
            Value::String(s) => vec![s],
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(Error::config(format!(
                        "{name}: `target_layer` entries are names, got {other}"
                    ))),
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(Error::config(format!(
                    "{name}: `target_layer` is a list of names, got {other}"
                )))
            }
        };
        let targets = targets
            .iter()
            .map(|t| match t.as_str() {
                "mlp_w" => Ok(Target::MlpW),
                "attn_w" => Ok(Target::AttnW),
                "mlp" => Ok(Target::Mlp),
                "attn" => Ok(Target::Attn),
                "all" => Ok(Target::All),
                other => Err(Error::config(format!(
                    "{name}: unsupported `target_layer` {other:?}; one of mlp_w, attn_w, mlp, \
                     attn, all"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        required("random_seed")?;
        let random_seed: i64 = config.require("random_seed")?;
        required("different_across_layers")?;
        let different_across_layers: bool = config.require("different_across_layers")?;
        // Taken and unused by these modes, as in FusionBench.
        for key in [
            "joint_matrix_mode",
            "rank",
            "random_components",
            "debug",
            "verbose",
        ] {
            required(key)?;
        }
        required("shift_layers")?;
        let shift: i64 = config.require("shift_layers")?;
        if shift != 0 {
            return Err(Error::config(format!(
                "{name}: `shift_layers: {shift}` (layer shifting before superposition) is not \
                 supported by fusion-host; set it to 0"
            )));
        }
        let absorber = match text("absorber")?.as_str() {
            "average" => Absorber::Average,
            "pretrained" => Absorber::Pretrained,
            "None" => Absorber::None,
            other => {
                return Err(Error::config(format!(
                    "{name}: unsupported `absorber` {other:?}; one of average, pretrained, None"
                )))
            }
        };
        let ms_average = match text("ms_mode")?.as_str() {
            "average" => true,
            "original" => false,
            other => {
                return Err(Error::config(format!(
                    "{name}: unsupported `ms_mode` {other:?}; one of average, original"
                )))
            }
        };
        required("dropout_rate")?;
        let dropout_rate: usize = config.require("dropout_rate")?;
        if dropout_rate == 0 {
            return Err(Error::config(format!(
                "{name}: `dropout_rate` must be at least 1 (every n-th target tensor is \
                 superposed)"
            )));
        }
        Ok(Base {
            mode,
            targets,
            random_seed,
            different_across_layers,
            absorber,
            ms_average,
            dropout_rate,
        })
    }

    /// FusionBench's `_target_layer_flag`.
    fn is_target(&self, name: &str) -> bool {
        let mlp = name.contains("mlp") || name.contains("Dense");
        let attn = name.contains("attn") || name.contains("Attention");
        let bias = name.contains("bias");
        self.targets.iter().any(|t| match t {
            Target::MlpW => mlp && !bias,
            Target::AttnW => attn && !bias,
            Target::Mlp => mlp,
            Target::Attn => attn,
            Target::All => true,
        })
    }

    /// The superposed tensors: every `dropout_rate`-th target, counted in the checkpoint's
    /// tensor order (FusionBench counts in the modules' registration order, which a checkpoint
    /// does not keep; the two agree for `dropout_rate: 1`, the config files' value).
    fn superposed(&self, names: &[String]) -> std::collections::HashSet<String> {
        let mut count = 0;
        let mut out = std::collections::HashSet::new();
        for name in names {
            if self.is_target(name) {
                count += 1;
                if count == self.dropout_rate {
                    out.insert(name.clone());
                    count = 0;
                }
            }
        }
        out
    }

    /// Model `i`'s context and retrieval context for tensor `name` (`n` entries, the last axis).
    fn contexts(&self, name: &str, i: usize, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        if self.mode == Mode::Identity {
            return Ok((vec![1.0; n], vec![1.0; n]));
        }
        let mut seed = (self.random_seed + i as i64) as f64;
        if self.different_across_layers {
            seed += py_mod(python_str_hash(name) as f64, 1e6);
        }
        let seed = seed.trunc();
        if !(0.0..=f64::from(u32::MAX)).contains(&seed) {
            return Err(Error::config(format!(
                "randes: the context seed {seed} of tensor `{name}` (model {i}) is outside \
                 numpy's range 0..2³²; choose another `random_seed`"
            )));
        }
        let mut rng = NumpyLegacy::new(seed as u32);
        Ok(match self.mode {
            Mode::Binary => {
                let c: Vec<f32> = (0..n)
                    .map(|_| if rng.binomial_half() { 1.0 } else { -1.0 })
                    .collect();
                (c.clone(), c)
            }
            Mode::Gaussian => {
                let c: Vec<f32> = (0..n).map(|_| rng.gauss() as f32).collect();
                let r = c.iter().map(|x| 1.0 / x).collect();
                (c, r)
            }
            Mode::Identity => unreachable!(),
        })
    }
}

/// Python's float `%`: the result takes the divisor's sign.
fn py_mod(x: f64, y: f64) -> f64 {
    let mut r = x % y;
    if r != 0.0 && (r < 0.0) != (y < 0.0) {
        r += y;
    }
    r
}

/// Python's `hash(s)` of an ASCII or Latin-1 string under `PYTHONHASHSEED=0` (CPython 3.11:
/// SipHash-1-3 of its one-byte-per-character data, zero key; -1 becomes -2). Other strings
/// use the same hash of their UTF-8 bytes, which CPython would hash in UCS-2 or UCS-4.
fn python_str_hash(s: &str) -> i64 {
    let bytes: Vec<u8> = if s.chars().all(|c| (c as u32) < 256) {
        s.chars().map(|c| c as u8).collect()
    } else {
        s.as_bytes().to_vec()
    };
    if bytes.is_empty() {
        return 0;
    }
    let h = siphash13(0, 0, &bytes) as i64;
    if h == -1 {
        -2
    } else {
        h
    }
}

/// SipHash-1-3 (one compression round, three finalization rounds), 64-bit output.
fn siphash13(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13);
        *v1 ^= *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16);
        *v3 ^= *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21);
        *v3 ^= *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17);
        *v1 ^= *v2;
        *v2 = v2.rotate_left(32);
    };
    let chunks = data.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let m = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    let mut last = (data.len() as u64 & 0xff) << 56;
    for (i, b) in tail.iter().enumerate() {
        last |= u64::from(*b) << (8 * i);
    }
    v3 ^= last;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= last;
    v2 ^= 0xff;
    for _ in 0..3 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    v0 ^ v1 ^ v2 ^ v3
}

/// numpy's legacy `RandomState` (MT19937 seeded by `np.random.seed(int)`), the draws RanDeS
/// uses.
struct NumpyLegacy {
    mt: [u32; 624],
    index: usize,
    gauss: Option<f64>,
}

impl NumpyLegacy {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        NumpyLegacy {
            mt,
            index: 624,
            gauss: None,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// A double in [0, 1) from 53 random bits.
    fn next_double(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `binomial(n=1, p=0.5)` by numpy's inversion: 1 when the uniform exceeds P(0) = 0.5.
    fn binomial_half(&mut self) -> bool {
        let q: f64 = 0.5;
        // n = 1: qⁿ = exp(n·ln q)
        let qn = q.ln().exp();
        let bound = (1.0f64).min(0.5 + 10.0 * (0.5 * q + 1.0).sqrt());
        let mut x = 0.0;
        let mut px = qn;
        let mut u = self.next_double();
        while u > px {
            x += 1.0;
            if x > bound {
                x = 0.0;
                px = qn;
                u = self.next_double();
            } else {
                u -= px;
                px = ((1.0 - x + 1.0) * 0.5 * px) / (x * q);
            }
        }
        x > 0.0
    }

    /// `randn()`: the legacy polar method, which keeps its second value for the next call.
    fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_double() - 1.0;
            let x2 = 2.0 * self.next_double() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// Superposed task arithmetic (`SuperposedTaskArithmeticAlgorithm`,
/// `randes/superposed_task_arithmetic`): the task vectors superposed, each model retrieved as
/// θ₀ + `scaling_factor`·retrieved. Parameters: FusionBench's base parameters (all required:
/// `mode`, `target_layer`, `random_seed`, `different_across_layers`, `joint_matrix_mode`, `rank`,
/// `random_components`, `shift_layers` (0 only), `absorber`, `debug`, `ms_mode`, `verbose`,
/// `dropout_rate`), `scaling_factor` (required), `model_path` (null; the host saves the models).
pub struct SuperposedTaskArithmetic {
    base: Base,
    scaling_factor: f32,
}

impl FromConfig for SuperposedTaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = "superposed_task_arithmetic";
        let base = Base::read(config, NAME)?;
        let s: f64 = config.require("scaling_factor")?;
        if let Some(path) = config.get::<String>("model_path")? {
            tracing::warn!(
                "{NAME}: `model_path` {path}: fusion-host saves the retrieved models where \
                 `merged_model_save_path` says"
            );
        }
        Ok(SuperposedTaskArithmetic {
            base,
            scaling_factor: s as f32,
        })
    }
}

/// Superposed model soup (`SuperposedModelSoupAlgorithm`, `randes/superposed_model_soup`):
/// the weights superposed, each model retrieved and scaled by 1/N (`ms_mode: average`) or not
/// (`original`). Non-target tensors are the sum of the weights, or the `absorber` (the
/// average or the pretrained weights, which `average` also scales by 1/N, as FusionBench does).
/// Parameters: FusionBench's base parameters (see [`SuperposedTaskArithmetic`]).
pub struct SuperposedModelSoup {
    base: Base,
}

impl FromConfig for SuperposedModelSoup {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(SuperposedModelSoup {
            base: Base::read(config, "superposed_model_soup")?,
        })
    }
}

/// Which RanDeS method a retrieval belongs to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    TaskArithmetic { scaling_factor: f32 },
    ModelSoup,
}

fn run_models(
    base: &Base,
    kind: Kind,
    name: &str,
    pool: &dyn ModelPool,
) -> Result<Vec<(String, Model)>> {
    let inputs = Inputs::open(pool, name, true, 1)?;
    let names = inputs.names()?;
    let superposed = std::sync::Arc::new(base.superposed(&names));
    tracing::info!(
        models = inputs.models.len(),
        superposed = superposed.len(),
        mode = ?base.mode,
        "{name} (CPU)"
    );
    // Every context seed is checked before any work.
    for t in superposed.iter() {
        let info = inputs.info(t)?;
        let n = info.shape.last().copied().unwrap_or(1);
        for i in 0..inputs.models.len() {
            base.contexts(t, i, n.min(1))?;
        }
    }
    Ok((0..inputs.models.len())
        .map(|j| {
            (
                inputs.models[j].name.clone(),
                CpuMerged::model(
                    inputs.clone(),
                    Retrieve {
                        base: base.clone(),
                        kind,
                        model: j,
                        superposed: superposed.clone(),
                    },
                ),
            )
        })
        .collect())
}

impl Algorithm for SuperposedTaskArithmetic {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        Ok(self.run_models(pool, ctx)?.swap_remove(0).1)
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        let kind = Kind::TaskArithmetic {
            scaling_factor: self.scaling_factor,
        };
        run_models(&self.base, kind, "superposed_task_arithmetic", pool)
    }
}

impl Algorithm for SuperposedModelSoup {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        Ok(self.run_models(pool, ctx)?.swap_remove(0).1)
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        run_models(&self.base, Kind::ModelSoup, "superposed_model_soup", pool)
    }
}

/// Model `model`'s retrieval, tensor by tensor.
struct Retrieve {
    base: Base,
    kind: Kind,
    model: usize,
    superposed: std::sync::Arc<std::collections::HashSet<String>>,
}

impl CpuMerge for Retrieve {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let pre = load(inputs.base(), name)?;
        // what is superposed: task vectors, or the weights themselves
        let operand = |i: usize| -> Result<Vec<f32>> {
            let mut v = load(&inputs.models[i], name)?;
            if let Kind::TaskArithmetic { .. } = self.kind {
                v.iter_mut().zip(&pre).for_each(|(x, p)| *x -= p);
            }
            Ok(v)
        };
        let t = inputs.models.len();
        let retrieved = if self.superposed.contains(name) {
            let n = info.shape.last().copied().unwrap_or(1);
            let mut sum = vec![0.0f32; info.numel()];
            let mut retrieval = Vec::new();
            for i in 0..t {
                let (c, r) = self.base.contexts(name, i, n)?;
                let x = operand(i)?;
                for (k, (s, v)) in sum.iter_mut().zip(&x).enumerate() {
                    let p = v * c[k % n];
                    *s = if i == 0 { p } else { *s + p };
                }
                if i == self.model {
                    retrieval = r;
                }
            }
            sum.iter_mut()
                .enumerate()
                .for_each(|(k, s)| *s *= retrieval[k % n]);
            sum
        } else {
            match (self.kind, self.base.absorber) {
                (Kind::ModelSoup, Absorber::Pretrained) => pre.clone(),
                (Kind::ModelSoup, Absorber::Average) => {
                    let mut sum = vec![0.0f32; info.numel()];
                    for i in 0..t {
                        sum.iter_mut().zip(operand(i)?).for_each(|(s, v)| *s += v);
                    }
                    sum.iter_mut().for_each(|s| *s /= t as f32);
                    sum
                }
                _ => {
                    let mut sum = operand(0)?;
                    for i in 1..t {
                        sum.iter_mut().zip(operand(i)?).for_each(|(s, v)| *s += v);
                    }
                    sum
                }
            }
        };
        Ok(match self.kind {
            Kind::TaskArithmetic { scaling_factor } => pre
                .iter()
                .zip(&retrieved)
                .map(|(p, r)| p + r * scaling_factor)
                .collect(),
            Kind::ModelSoup if self.base.ms_average => {
                let c = (1.0 / t as f64) as f32;
                retrieved.iter().map(|r| r * c).collect()
            }
            Kind::ModelSoup => retrieved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PYTHONHASHSEED=0 python3 -c 'print(hash(s))'` (CPython 3.11).
    #[test]
    fn python_string_hash() {
        assert_eq!(python_str_hash("abc"), -4_594_863_902_769_663_758);
        assert_eq!(python_str_hash(""), 0);
        assert_eq!(python_str_hash("a"), 4_644_417_185_603_328_019);
        assert_eq!(
            python_str_hash("encoder.layers.0.mlp.fc1.weight"),
            -8_445_164_930_158_720_715
        );
        assert_eq!(
            python_str_hash("vision_model.encoder.layers.11.self_attn.out_proj.weight"),
            751_063_456_379_144_647
        );
        // hash % 1e6 as Python computes it (the hash rounded to a double first)
        assert_eq!(py_mod(-4_594_863_902_769_663_758i64 as f64, 1e6), 336_000.0);
        assert_eq!(py_mod(-8_445_164_930_158_720_715i64 as f64, 1e6), 278_976.0);
    }

    /// `np.random.seed(s); np.random.binomial(p=0.5, n=1, size=(1, k))`, and `randn`.
    #[test]
    fn numpy_legacy_draws() {
        let mut r = NumpyLegacy::new(123);
        let b: Vec<u8> = (0..10).map(|_| u8::from(r.binomial_half())).collect();
        assert_eq!(b, [1, 0, 0, 1, 1, 0, 1, 1, 0, 0]);
        let mut r = NumpyLegacy::new(u32::MAX);
        let b: Vec<u8> = (0..5).map(|_| u8::from(r.binomial_half())).collect();
        assert_eq!(b, [0, 1, 1, 1, 0]);
        let mut r = NumpyLegacy::new(7);
        let want = [
            1.690525703800356,
            -0.4659373705408328,
            0.0328201636785844,
            0.40751628299650783,
            -0.7889230286257386,
        ];
        for w in want {
            assert!((r.gauss() - w).abs() < 1e-15);
        }
    }
}
