//! RanDeS, randomized delta superposition (Zhou et al., 2025, "RanDeS: Randomized Delta
//! Superposition for Multi-Model Compression"), FusionBench `SuperposedModelSoupAlgorithm`,
//! `SuperposedTaskArithmeticAlgorithm` and `SuperposedTaskArithmeticLoRAAlgorithm`
//! (`randes/*`), on the CPU.
//!
//! Each target tensor (by name: `mlp_w` an MLP weight, `attn_w` an attention weight, `mlp`,
//! `attn` with their biases, `all`; every `dropout_rate`-th one) of each model i is multiplied
//! along its last axis by a model's random context cᵢ and the products are summed into one
//! superposed tensor; model j is retrieved by multiplying the sum by its retrieval context
//! (`mode`: random signs, retrieved by themselves; random Gaussian scales, by their
//! reciprocals; a random rotation, scipy's `ortho_group`, by its transpose; a dense Gaussian
//! matrix, by its pseudo-inverse; the identity). Other tensors are the plain sum (or the
//! `absorber`). Superposed task arithmetic superposes task vectors and returns
//! θ₀ + λ·retrieved for each model; the superposed model soup superposes the weights
//! themselves, scaled by 1/N with `ms_mode: average`; the LoRA variant superposes the LoRA
//! factors of PEFT adapters and adds λ·B·A to the pretrained weights. With `shift_layers`, each
//! model's superposed tensors are first moved to other layer numbers (by i·k, or shuffled for
//! -1) and moved back after retrieval, as FusionBench does. All return one model per
//! pool model, under its name, as FusionBench returns its dict of models. FusionBench's
//! `joint_matrix_mode`, `rank` and `random_components` are required and unused (its
//! `svd_decomposition`, which reads them, is never called), as here.
//!
//! The contexts are FusionBench's draws, reproduced exactly: numpy's legacy generator
//! (`np.random.seed(s)`, then `binomial(1, 0.5)`, `randn` or, for rotations, `normal` and a QR)
//! seeded by `random_seed + i + hash(name) % 1e6` (with `different_across_layers`) or
//! `random_seed + i`. Python's `hash` of a string is salted per process unless `PYTHONHASHSEED`
//! is set, so FusionBench's own contexts change from run to run; fusion-host takes the hash of
//! `PYTHONHASHSEED=0` (SipHash-1-3 with a zero key), the only reproducible choice, and
//! matches FusionBench run with that setting. A rotation or dense context costs O(n³) for a
//! last axis of n, and each retrieved model draws every model's (N² per tensor for N models).

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;
use std::collections::HashMap;

use crate::cpu::{load, CpuMerge, CpuMerged};
use crate::inputs::Inputs;
use crate::linalg::Matrix;

/// The contexts' distribution (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// ±1 entries, `random_binary_diagonal_matrix`.
    Binary,
    /// N(0, 1) entries, retrieved by their reciprocals, `random_diagonal_matrix`.
    Gaussian,
    /// `identity_matrix`: plain superposition.
    Identity,
    /// `random_rotation_matrix`: a Haar-random orthogonal matrix (scipy's `ortho_group`),
    /// retrieved by its transpose.
    Rotation,
    /// `random_dense_matrix`: a dense N(0, 1) matrix, retrieved by its pseudo-inverse.
    Dense,
}

/// A context: multiplies a tensor along its last axis (n entries).
#[derive(Clone, Debug)]
enum Mix {
    /// `x * c`, c of n entries.
    Diagonal(Vec<f32>),
    /// `x @ C`, C n×n, row-major.
    Full(Vec<f32>),
}

impl Mix {
    /// The tensor `x` (its last axis n long) times this context, in f32 (each product summed in
    /// f64 and rounded, as a float GEMM nearly does).
    fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        match self {
            Mix::Diagonal(c) => x.iter().enumerate().map(|(k, v)| v * c[k % n]).collect(),
            Mix::Full(c) => {
                let rows = x.len() / n;
                Matrix::from_f32(rows, n, x)
                    .matmul(&Matrix::from_f32(n, n, c))
                    .expect("an n-wide tensor times an n×n context")
                    .to_f32()
            }
        }
    }
}

/// scipy's `ortho_group.rvs(n, random_state=seed)`: Z with N(0, 1) entries (numpy's legacy
/// `normal`, row by row), Q of its QR decomposition with R's diagonal made positive, which
/// makes Q unique: here faer's Householder QR in f64 (LAPACK's agrees to rounding).
/// Row-major, rounded to f32 as FusionBench does.
fn ortho_group(seed: u32, n: usize) -> Vec<f32> {
    let mut rng = NumpyLegacy::new(seed);
    let z: Vec<f64> = (0..n * n).map(|_| rng.gauss()).collect();
    let qr = faer::MatRef::from_row_major_slice(&z, n, n).qr();
    let q = qr.compute_Q();
    let r = qr.R();
    let mut out = vec![0.0f32; n * n];
    for j in 0..n {
        let sign = if r[(j, j)] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..n {
            out[i * n + j] = (q[(i, j)] * sign) as f32;
        }
    }
    out
}

/// torch's `linalg.pinv` of a square f32 matrix (row-major): V·diag(1/s)·Uᵀ over the singular
/// values above n·ε(f32)·max(s), torch's default cutoff; in f64, rounded to f32.
fn pinv(c: &[f32], n: usize) -> Vec<f32> {
    let d = crate::linalg::svd(&crate::linalg::Matrix::from_f32(n, n, c));
    let smax = d.s.iter().cloned().fold(0.0, f64::max);
    let cutoff = n as f64 * f64::from(f32::EPSILON) * smax;
    let mut out = vec![0.0f32; n * n];
    // pinv[i][j] = Σ_k V[i][k] / s_k · U[j][k], V = vtᵀ
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0.0;
            for (k, s) in d.s.iter().enumerate() {
                if *s > cutoff {
                    acc += d.vt[(k, i)] / s * d.u[(j, k)];
                }
            }
            out[i * n + j] = acc as f32;
        }
    }
    out
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
    /// `shift_layers`: 0, a shift of the layer numbers per model, or -1 (a shuffle).
    shift: i64,
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
            "random_rotation_matrix" => Mode::Rotation,
            "random_dense_matrix" => Mode::Dense,
            other => {
                return Err(Error::config(format!(
                    "{name}: unsupported `mode` {other:?} (FusionBench raises `Unsupported mode` \
                     for it too); one of random_binary_diagonal_matrix, random_diagonal_matrix, \
                     random_rotation_matrix, random_dense_matrix, identity_matrix"
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
        if mode == Mode::Rotation && different_across_layers {
            return Err(Error::config(format!(
                "{name}: `mode: random_rotation_matrix` with `different_across_layers: true` \
                 fails in FusionBench: its seed random_seed + i + hash(name) % 1e6 is a float, \
                 which scipy's ortho_group refuses as a random_state; set \
                 `different_across_layers: false` (one rotation per model, the same in every \
                 layer)"
            )));
        }
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
            shift,
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

    /// The seed of model `i`'s context for tensor `name`, checked against numpy's range.
    fn seed(&self, name: &str, i: usize) -> Result<u32> {
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
        Ok(seed as u32)
    }

    /// Model `i`'s context and retrieval context for tensor `name` (`n` entries, the last axis).
    fn contexts(&self, name: &str, i: usize, n: usize) -> Result<(Mix, Mix)> {
        if self.mode == Mode::Identity {
            return Ok((Mix::Diagonal(vec![1.0; n]), Mix::Diagonal(vec![1.0; n])));
        }
        let seed = self.seed(name, i)?;
        let mut rng = NumpyLegacy::new(seed);
        Ok(match self.mode {
            Mode::Binary => {
                let c: Vec<f32> = (0..n)
                    .map(|_| if rng.binomial_half() { 1.0 } else { -1.0 })
                    .collect();
                (Mix::Diagonal(c.clone()), Mix::Diagonal(c))
            }
            Mode::Gaussian => {
                let c: Vec<f32> = (0..n).map(|_| rng.gauss() as f32).collect();
                let r = c.iter().map(|x| 1.0 / x).collect();
                (Mix::Diagonal(c), Mix::Diagonal(r))
            }
            Mode::Rotation => {
                let c = ortho_group(seed, n);
                let mut t = vec![0.0f32; n * n];
                for r in 0..n {
                    for k in 0..n {
                        t[k * n + r] = c[r * n + k];
                    }
                }
                (Mix::Full(c), Mix::Full(t))
            }
            Mode::Dense => {
                let c: Vec<f32> = (0..n * n).map(|_| rng.gauss() as f32).collect();
                let r = pinv(&c, n);
                (Mix::Full(c), Mix::Full(r))
            }
            Mode::Identity => unreachable!(),
        })
    }
}

/// Each model's renaming of the superposed tensors under `shift_layers` (none for 0): model i's
/// tensor X is superposed at `forward[i][X]`, and what is superposed at Y came from
/// `backward[i][Y]`. Model j is retrieved at X from what is superposed at `forward[j][X]`, which
/// is where FusionBench's shift back takes it from.
#[derive(Default)]
struct Shifts {
    forward: Vec<HashMap<String, String>>,
    backward: Vec<HashMap<String, String>>,
}

/// Python's `str.isdigit()` for an ASCII part.
fn is_digits(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

impl Shifts {
    fn forward<'a>(&'a self, i: usize, name: &'a str) -> &'a str {
        self.forward
            .get(i)
            .and_then(|m| m.get(name))
            .map_or(name, String::as_str)
    }

    fn backward<'a>(&'a self, i: usize, name: &'a str) -> &'a str {
        self.backward
            .get(i)
            .and_then(|m| m.get(name))
            .map_or(name, String::as_str)
    }

    /// FusionBench's layer shifts of the superposed tensors `targets` (in checkpoint order) for
    /// `models` models. A shift k moves model i's layer ℓ to (ℓ + i·k) mod (L + 1), L the
    /// largest layer number (the first all-digit part of a name); -1 shuffles each model's
    /// layer numbers with Python's `random.shuffle` after `random.seed(random_seed + i)`, per
    /// group of tensors that differ only in the layer number (the position of the last
    /// target's first all-digit part).
    fn of(base: &Base, targets: &[String], models: usize, algorithm: &str) -> Result<Shifts> {
        let mut out = Shifts::default();
        if base.shift == 0 {
            return Ok(out);
        }
        let set: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
        let renumber = |name: &str, at: usize, number: u64| -> String {
            name.split('.')
                .enumerate()
                .map(|(k, p)| {
                    if k == at {
                        number.to_string()
                    } else {
                        p.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        };
        let mut maps: Vec<Vec<(String, String)>> = vec![Vec::new(); models];
        if base.shift == -1 {
            let Some(at) = targets
                .iter()
                .filter_map(|t| t.split('.').position(is_digits))
                .next_back()
            else {
                return Err(Error::config(format!(
                    "{algorithm}: `shift_layers: -1` shuffles layer numbers, and no superposed \
                     tensor's name has one (FusionBench fails on this too)"
                )));
            };
            // groups: the names without the layer number, each with its numbers in order
            let mut groups: Vec<(String, Vec<(u64, String)>)> = Vec::new();
            for t in targets {
                let parts: Vec<&str> = t.split('.').collect();
                if at >= parts.len() || !is_digits(parts[at]) {
                    continue;
                }
                let number: u64 = parts[at].parse().map_err(|_| {
                    Error::config(format!("{algorithm}: layer number of `{t}` is too large"))
                })?;
                let mut rest = parts.clone();
                rest.remove(at);
                let key = rest.join(".");
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push((number, t.clone())),
                    None => groups.push((key, vec![(number, t.clone())])),
                }
            }
            for (i, map) in maps.iter_mut().enumerate() {
                let seed = (base.random_seed + i as i64).unsigned_abs();
                for (_, members) in &groups {
                    let mut shuffled: Vec<u64> = members.iter().map(|(n, _)| *n).collect();
                    crate::opcm::PyRandom::new(seed).shuffle(&mut shuffled);
                    for ((_, name), to) in members.iter().zip(&shuffled) {
                        map.push((name.clone(), renumber(name, at, *to)));
                    }
                }
            }
        } else {
            let numbered: Vec<(usize, u64, &String)> = targets
                .iter()
                .filter_map(|t| {
                    let at = t.split('.').position(is_digits)?;
                    let number = t.split('.').nth(at)?.parse().ok()?;
                    Some((at, number, t))
                })
                .collect();
            let layers = numbered.iter().map(|(_, n, _)| *n).max().unwrap_or(0) as i128 + 1;
            for (i, map) in maps.iter_mut().enumerate() {
                for (at, number, name) in &numbered {
                    let to = (*number as i128 + i as i128 * base.shift as i128).rem_euclid(layers);
                    map.push(((*name).clone(), renumber(name, *at, to as u64)));
                }
            }
        }
        for map in &maps {
            for (from, to) in map {
                if !set.contains(to.as_str()) {
                    return Err(Error::config(format!(
                        "{algorithm}: `shift_layers: {}` moves `{from}` to `{to}`, which is no \
                         superposed tensor; shifting needs every target in every layer",
                        base.shift
                    )));
                }
            }
        }
        out.forward = maps.iter().map(|m| m.iter().cloned().collect()).collect();
        out.backward = maps
            .iter()
            .map(|m| m.iter().map(|(a, b)| (b.clone(), a.clone())).collect())
            .collect();
        Ok(out)
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
/// `random_components`, `shift_layers`, `absorber`, `debug`, `ms_mode`, `verbose`,
/// `dropout_rate`), `scaling_factor` (required), `model_path` (null; the host saves the models).
pub struct SuperposedTaskArithmetic {
    base: Base,
    scaling_factor: f32,
}

impl FromConfig for SuperposedTaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        let (base, scaling_factor) = read_scaled(config, "superposed_task_arithmetic")?;
        Ok(SuperposedTaskArithmetic {
            base,
            scaling_factor,
        })
    }
}

/// The base parameters and `scaling_factor` of the scaled methods (`name` in messages); a
/// `model_path` is warned about (the host saves the retrieved models).
fn read_scaled(config: &Config, name: &str) -> Result<(Base, f32)> {
    let base = Base::read(config, name)?;
    let s: f64 = config.require("scaling_factor")?;
    if let Some(path) = config.get::<String>("model_path")? {
        tracing::warn!(
            "{name}: `model_path` {path}: fusion-host saves the retrieved models where \
             `merged_model_save_path` says"
        );
    }
    Ok((base, s as f32))
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

/// Superposed task arithmetic over LoRA adapters (`SuperposedTaskArithmeticLoRAAlgorithm`,
/// `randes/superposed_task_arithmetic_lora`). The pool holds `_pretrained_` (a whole model) and
/// one PEFT LoRA state dict per task (`base_model.model.<module>.lora_A.weight`, r×in, and
/// `...lora_B.weight`, out×r, as an adapter's `adapter_model.safetensors` names them). The LoRA
/// tensors themselves are superposed (targets by name, as for the other methods; the others
/// summed over the models) and retrieved per model; model j is `_pretrained_` with
/// `<module>.weight` += `scaling_factor`·B·A of its retrieved pair. As in FusionBench, the
/// adapters' `lora_alpha / r` scale is not applied (the class multiplies B·A by
/// `scaling_factor` alone) and no `absorber` applies. Parameters: as
/// [`SuperposedTaskArithmetic`].
pub struct SuperposedTaskArithmeticLora {
    base: Base,
    scaling_factor: f32,
}

impl FromConfig for SuperposedTaskArithmeticLora {
    fn from_config(config: &Config) -> Result<Self> {
        let (base, scaling_factor) = read_scaled(config, "superposed_task_arithmetic_lora")?;
        Ok(SuperposedTaskArithmeticLora {
            base,
            scaling_factor,
        })
    }
}

/// One LoRA pair of an adapter: the names of its A and B tensors.
#[derive(Clone, Debug, Default)]
struct LoraPair {
    a: Option<String>,
    b: Option<String>,
}

impl Algorithm for SuperposedTaskArithmeticLora {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        Ok(self.run_models(pool, ctx)?.swap_remove(0).1)
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        const NAME: &str = "superposed_task_arithmetic_lora";
        if !pool.has_pretrained()? {
            return Err(Error::config(format!(
                "{NAME} needs a `_pretrained_` model in the pool (the model the adapters apply to)"
            )));
        }
        let names = pool.model_names()?;
        if names.is_empty() {
            return Err(Error::config(format!(
                "{NAME} needs at least 1 LoRA adapter besides `_pretrained_`, the pool has none"
            )));
        }
        let pretrained = pool.load_pretrained()?;
        let loras = names
            .iter()
            .map(|n| pool.load_model(n))
            .collect::<Result<Vec<_>>>()?;
        let keys = loras[0].names()?;
        // every adapter has the first one's tensors, with the same shapes
        for (m, model) in names.iter().zip(&loras).skip(1) {
            let mine = model.names()?;
            for key in &keys {
                if !mine.contains(key) {
                    return Err(Error::model(format!(
                        "{NAME}: adapter `{m}` lacks tensor `{key}` of adapter `{}`",
                        names[0]
                    )));
                }
                let (a, b) = (loras[0].info(key)?, model.info(key)?);
                if a.shape != b.shape {
                    return Err(Error::model(format!(
                        "{NAME}: tensor `{key}` is {:?} in adapter `{}` and {:?} in `{m}`",
                        a.shape, names[0], b.shape
                    )));
                }
            }
            if let Some(extra) = mine.iter().find(|k| !keys.contains(k)) {
                return Err(Error::model(format!(
                    "{NAME}: adapter `{m}` has tensor `{extra}`, which adapter `{}` lacks",
                    names[0]
                )));
            }
        }
        // FusionBench's module weight of a LoRA tensor: its name without the first two parts
        // (`base_model.model`) and the `lora_A`/`lora_B` part.
        let mut pairs: Vec<(String, LoraPair)> = Vec::new();
        for key in &keys {
            let parts: Vec<&str> = key.split('.').collect();
            let kind = if parts.len() >= 4 {
                parts[parts.len() - 2]
            } else {
                ""
            };
            if kind != "lora_A" && kind != "lora_B" {
                return Err(Error::model(format!(
                    "{NAME}: tensor `{key}` of adapter `{}` is not a LoRA tensor \
                     (`base_model.model.<module>.lora_A.weight` or `...lora_B.weight`); the \
                     models besides `_pretrained_` must be PEFT LoRA state dicts",
                    names[0]
                )));
            }
            let mut target: Vec<&str> = parts[2..parts.len() - 2].to_vec();
            target.push(parts[parts.len() - 1]);
            let target = target.join(".");
            let at = match pairs.iter().position(|(t, _)| *t == target) {
                Some(i) => i,
                None => {
                    pairs.push((target, LoraPair::default()));
                    pairs.len() - 1
                }
            };
            let slot = if kind == "lora_A" {
                &mut pairs[at].1.a
            } else {
                &mut pairs[at].1.b
            };
            *slot = Some(key.clone());
        }
        let pre_names = pretrained.names()?;
        let mut checked = std::collections::HashMap::new();
        for (target, pair) in &pairs {
            let (Some(a), Some(b)) = (&pair.a, &pair.b) else {
                return Err(Error::model(format!(
                    "{NAME}: the LoRA of `{target}` has only its {} tensor",
                    if pair.a.is_some() { "lora_A" } else { "lora_B" }
                )));
            };
            if !pre_names.contains(target) {
                return Err(Error::model(format!(
                    "{NAME}: the adapters' `{a}` applies to `{target}`, which `_pretrained_` lacks"
                )));
            }
            let (ia, ib, iw) = (
                loras[0].info(a)?,
                loras[0].info(b)?,
                pretrained.info(target)?,
            );
            let ok = ia.shape.len() == 2
                && ib.shape.len() == 2
                && iw.shape.len() == 2
                && ib.shape[1] == ia.shape[0]
                && iw.shape == [ib.shape[0], ia.shape[1]]
                && iw.dtype.is_float();
            if !ok {
                return Err(Error::model(format!(
                    "{NAME}: `{b}` {:?} · `{a}` {:?} does not fit `_pretrained_`'s `{target}` \
                     {:?} ({:?})",
                    ib.shape, ia.shape, iw.shape, iw.dtype
                )));
            }
            checked.insert(target.clone(), (a.clone(), b.clone(), ia.shape[0]));
        }
        let superposed = self.base.superposed(&keys);
        let ordered: Vec<String> = keys
            .iter()
            .filter(|n| superposed.contains(*n))
            .cloned()
            .collect();
        let shifts = Shifts::of(&self.base, &ordered, loras.len(), NAME)?;
        if self.base.mode != Mode::Identity {
            for t in superposed.iter() {
                for i in 0..loras.len() {
                    self.base.seed(t, i)?;
                }
            }
        }
        tracing::info!(
            adapters = loras.len(),
            pairs = checked.len(),
            superposed = superposed.len(),
            mode = ?self.base.mode,
            "{NAME} (CPU)"
        );
        let shared = std::sync::Arc::new(LoraShared {
            base: self.base.clone(),
            scaling_factor: self.scaling_factor,
            pretrained,
            loras,
            pairs: checked,
            superposed,
            shifts,
        });
        Ok(names
            .iter()
            .enumerate()
            .map(|(j, n)| {
                (
                    n.clone(),
                    Model::new(LoraRetrieved {
                        shared: shared.clone(),
                        model: j,
                    }),
                )
            })
            .collect())
    }
}

/// What every model retrieved from LoRA adapters shares.
struct LoraShared {
    base: Base,
    scaling_factor: f32,
    pretrained: Model,
    loras: Vec<Model>,
    /// Each adapted weight's (A, B, rank).
    pairs: std::collections::HashMap<String, (String, String, usize)>,
    superposed: std::collections::HashSet<String>,
    shifts: Shifts,
}

impl LoraShared {
    /// LoRA tensor `key` as model `j` retrieves it.
    fn retrieve(&self, key: &str, j: usize) -> Result<Vec<f32>> {
        let t = self.loras.len();
        let operand_of = |k: &str, i: usize| -> Result<Vec<f32>> { Ok(self.loras[i].to_f32(k)?.0) };
        let operand = |i: usize| operand_of(key, i);
        if self.superposed.contains(key) {
            let n = self.loras[0].info(key)?.shape.last().copied().unwrap_or(1);
            let at = self.shifts.forward(j, key);
            let from = |i: usize| operand_of(self.shifts.backward(i, at), i);
            superpose_and_retrieve(&self.base, at, n, t, j, None, from)
        } else {
            let mut sum = operand(0)?;
            for i in 1..t {
                sum.iter_mut().zip(operand(i)?).for_each(|(s, v)| *s += v);
            }
            Ok(sum)
        }
    }
}

/// One model retrieved from LoRA adapters: `_pretrained_` with its adapted weights updated.
struct LoraRetrieved {
    shared: std::sync::Arc<LoraShared>,
    model: usize,
}

impl fusion_plugin_api::StateDict for LoraRetrieved {
    fn names(&self) -> Result<Vec<String>> {
        self.shared.pretrained.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.shared.pretrained.info(name)
    }

    fn data(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let sh = &self.shared;
        let Some((a, b, r)) = sh.pairs.get(name) else {
            return Ok(std::borrow::Cow::Owned(
                sh.pretrained.data(name)?.into_owned(),
            ));
        };
        let info = sh.pretrained.info(name)?;
        let (out, inp) = (info.shape[0], info.shape[1]);
        let ra = sh.retrieve(a, self.model)?;
        let rb = sh.retrieve(b, self.model)?;
        let (mut w, _) = sh.pretrained.to_f32(name)?;
        // w += scaling_factor · (B·A), each product rounded to f32 first, as torch does
        for o in 0..out {
            for c in 0..inp {
                let mut acc = 0.0f64;
                for k in 0..*r {
                    acc += f64::from(rb[o * r + k]) * f64::from(ra[k * inp + c]);
                }
                w[o * inp + c] += (acc as f32) * sh.scaling_factor;
            }
        }
        Ok(std::borrow::Cow::Owned(fusion_plugin_api::f32_to_bytes(
            &w, info.dtype,
        )?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.shared.pretrained.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.shared.pretrained.file(name)
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
    let cache = matches!(base.mode, Mode::Rotation | Mode::Dense)
        .then(|| std::sync::Arc::new(SumCache::default()));
    let ordered: Vec<String> = names
        .iter()
        .filter(|n| superposed.contains(*n))
        .cloned()
        .collect();
    let shifts = std::sync::Arc::new(Shifts::of(base, &ordered, inputs.models.len(), name)?);
    tracing::info!(
        models = inputs.models.len(),
        superposed = superposed.len(),
        mode = ?base.mode,
        "{name} (CPU)"
    );
    // Every context seed is checked before any work.
    if base.mode != Mode::Identity {
        for t in superposed.iter() {
            for i in 0..inputs.models.len() {
                base.seed(t, i)?;
            }
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
                        cache: cache.clone(),
                        shifts: shifts.clone(),
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

/// The superposed tensors of the rotation and dense modes, whose contexts cost O(n³) to draw,
/// kept until every retrieved model has taken its copy (each retrieval then draws only its own
/// context, instead of all N to superpose again). A tensor asked for again after that is
/// superposed again: the cache saves work and never changes a value.
#[derive(Default)]
struct SumCache {
    /// Each tensor's superposed values and how many retrievals have yet to take them.
    sums: std::sync::Mutex<HashMap<String, Shared>>,
}

type Shared = (std::sync::Arc<Vec<f32>>, usize);

impl SumCache {
    /// The superposed tensor `name`, for one of `t` retrievals.
    fn take(
        &self,
        name: &str,
        t: usize,
        compute: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<std::sync::Arc<Vec<f32>>> {
        {
            let mut sums = self.sums.lock().expect("sum cache lock");
            if let Some((sum, left)) = sums.get_mut(name) {
                let sum = sum.clone();
                *left -= 1;
                if *left == 0 {
                    sums.remove(name);
                }
                return Ok(sum);
            }
        }
        let sum = std::sync::Arc::new(compute()?);
        if t > 1 {
            let mut sums = self.sums.lock().expect("sum cache lock");
            sums.entry(name.to_string())
                .or_insert_with(|| (sum.clone(), t - 1));
        }
        Ok(sum)
    }
}

/// Tensor `name` (last axis `n` long) of the `t` operands superposed under their contexts, and
/// retrieved by model `model`'s retrieval context; with a `cache`, the superposed tensor is
/// shared between the retrievals.
fn superpose_and_retrieve(
    base: &Base,
    name: &str,
    n: usize,
    t: usize,
    model: usize,
    cache: Option<&SumCache>,
    operand: impl Fn(usize) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let superpose = || -> Result<Vec<f32>> {
        let mut sum: Vec<f32> = Vec::new();
        for i in 0..t {
            let (c, _) = base.contexts(name, i, n)?;
            let p = c.apply(&operand(i)?, n);
            if i == 0 {
                sum = p;
            } else {
                sum.iter_mut().zip(&p).for_each(|(s, p)| *s += p);
            }
        }
        Ok(sum)
    };
    let (_, retrieval) = base.contexts(name, model, n)?;
    Ok(match cache {
        Some(cache) => retrieval.apply(&cache.take(name, t, superpose)?, n),
        None => retrieval.apply(&superpose()?, n),
    })
}

/// Model `model`'s retrieval, tensor by tensor.
struct Retrieve {
    base: Base,
    kind: Kind,
    model: usize,
    /// The superposed tensors shared by the retrievals (rotation and dense modes).
    cache: Option<std::sync::Arc<SumCache>>,
    superposed: std::sync::Arc<std::collections::HashSet<String>>,
    shifts: std::sync::Arc<Shifts>,
}

impl CpuMerge for Retrieve {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let pre = load(inputs.base(), name)?;
        // what is superposed: task vectors, or the weights themselves
        // what is superposed: task vectors, or the weights themselves (of tensor `key`)
        let operand_of = |key: &str, i: usize| -> Result<Vec<f32>> {
            let mut v = load(&inputs.models[i], key)?;
            if let Kind::TaskArithmetic { .. } = self.kind {
                let pre_key;
                let pre = if key == name {
                    &pre
                } else {
                    pre_key = load(inputs.base(), key)?;
                    &pre_key
                };
                v.iter_mut().zip(pre).for_each(|(x, p)| *x -= p);
            }
            Ok(v)
        };
        let operand = |i: usize| operand_of(name, i);
        let t = inputs.models.len();
        let retrieved = if self.superposed.contains(name) {
            let n = info.shape.last().copied().unwrap_or(1);
            let cache = self.cache.as_deref();
            // superposed where this model's shift put the tensor, from each model's tensor there
            let at = self.shifts.forward(self.model, name);
            let from = |i: usize| operand_of(self.shifts.backward(i, at), i);
            superpose_and_retrieve(&self.base, at, n, t, self.model, cache, from)?
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

    /// `scipy.stats.ortho_group.rvs(3, random_state=5)` (scipy 1.17).
    #[test]
    fn scipy_ortho_group() {
        let want = [
            0.42360449,
            -0.81065093,
            0.40423297,
            -0.24202336,
            0.32874177,
            0.912882,
            -0.87291691,
            -0.48453474,
            -0.05693997,
        ];
        let got = ortho_group(5, 3);
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-7, "{got:?}");
        }
    }

    /// The pseudo-inverse of a full-rank square matrix is its inverse; a full context applies
    /// along the last axis.
    #[test]
    fn pinv_and_full_context() {
        let n = 5;
        let mut rng = NumpyLegacy::new(3);
        let c: Vec<f32> = (0..n * n).map(|_| rng.gauss() as f32).collect();
        let p = pinv(&c, n);
        let x: Vec<f32> = (0..2 * n).map(|i| (i as f32 * 0.7).sin()).collect();
        let back = Mix::Full(p).apply(&Mix::Full(c).apply(&x, n), n);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-4, "{back:?} {x:?}");
        }
    }

    /// The superposed tensor is computed once for the N retrievals, then dropped; asked again,
    /// it is computed again.
    #[test]
    fn sum_cache_serves_each_retrieval_once() {
        let cache = SumCache::default();
        let computed = std::cell::Cell::new(0);
        let take = || {
            cache
                .take("w", 3, || {
                    computed.set(computed.get() + 1);
                    Ok(vec![1.0, 2.0])
                })
                .unwrap()
        };
        for _ in 0..3 {
            assert_eq!(*take(), [1.0, 2.0]);
        }
        assert_eq!(computed.get(), 1);
        assert!(cache.sums.lock().unwrap().is_empty());
        take();
        assert_eq!(computed.get(), 2);
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
