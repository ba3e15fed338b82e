//! TIES-merging (Yadav et al. 2023) with FusionBench's exact semantics
//! (`fusion_bench/method/ties_merging/ties_merging_utils.py`):
//!
//! 1. trim: each model's task vector keeps `|x| >= threshold` (see
//!    [`crate::ties_threshold`], computed over the whole flattened model);
//! 2. elect: `s = sign(Σ_models trimmed)` per element; `s = 0` becomes the majority sign
//!    `sign(Σ_elements s)` over the *whole* model ([`SignVotes`]);
//! 3. disjoint merge: keep entries with `(s > 0 ? v > 0 : v < 0)`, then sum, mean (over the
//!    count kept, at least 1) or max |v| times s ([`TiesMerge`]).
//!
//! Step 2 needs every tensor's signs before any tensor is merged, so a plugin makes two sweeps
//! over the keys: [`SignVotes::add`] for each key, then [`ties_merge`] for each key with
//! [`SignVotes::majority_sign`].
//!
//! ```no_run
//! # fn demo(c: &dyn fusion_plugin_api::Compute,
//! #         base: &[fusion_plugin_api::GpuTensor],
//! #         // models[i][key]: model i's task vector for each key, in sorted key order
//! #         models: &[Vec<fusion_plugin_api::GpuTensor>]) -> fusion_plugin_api::Result<()> {
//! use fusion_kernels::{scale_add, ties_merge, ties_threshold, SignVotes, TiesMerge};
//! use fusion_plugin_api::DType;
//! let thresholds: Vec<f32> =
//!     models.iter().map(|keys| ties_threshold(c, keys, 20.0)).collect::<Result<_, _>>()?;
//! let column = |key: usize| models.iter().map(|m| m[key]).collect::<Vec<_>>();
//! let votes = SignVotes::new(c)?;
//! for key in 0..base.len() {
//!     votes.add(&column(key), &thresholds)?;
//! }
//! let majority = votes.majority_sign()?;
//! for key in 0..base.len() {
//!     let tv = ties_merge(c, &column(key), &thresholds, majority, TiesMerge::Sum, DType::F32)?;
//!     let merged = scale_add(c, base[key], tv, 0.3, DType::F32)?; // θ0 + λ·τ
//!     c.release(tv);
//!     // ... save `merged`, then release it
//! #   c.release(merged);
//! }
//! # Ok(()) }
//! ```

use std::str::FromStr;

use fusion_plugin_api::{
    Binding, Compute, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result,
};

use crate::launch::{
    arity, chunks, constants, dispatch_1d, dtype_code, info, same_shape, workgroup_size, QuadLoop,
    X_DTYPE_NAMES,
};
use crate::uniforms::{
    len32, words8, BracketMergeParams, FinalParams, LenParams, MergeNParams, MergeParams,
    TrimParams, UndecidedParams,
};
use crate::wgsl;

/// How agreeing entries are combined (FusionBench's `merge_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TiesMerge {
    /// Sum of the kept entries (FusionBench's default).
    #[default]
    Sum,
    /// Sum of the kept entries divided by how many were kept (at least 1): the TIES paper's.
    Mean,
    /// The largest kept |entry|, with the elected sign.
    Max,
}

impl TiesMerge {
    fn code(self) -> f64 {
        match self {
            TiesMerge::Sum => 0.0,
            TiesMerge::Mean => 1.0,
            TiesMerge::Max => 2.0,
        }
    }
}

impl FromStr for TiesMerge {
    type Err = Error;

    /// `sum`, `mean`, `max`, also with a prefix such as `dis-mean` (FusionBench splits on `-`
    /// and takes the last part).
    fn from_str(s: &str) -> Result<Self> {
        match s
            .rsplit('-')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "sum" => Ok(TiesMerge::Sum),
            "mean" => Ok(TiesMerge::Mean),
            "max" => Ok(TiesMerge::Max),
            _ => Err(Error::config(format!(
                "merge_func {s:?}: expected sum, mean or max"
            ))),
        }
    }
}

fn check(
    c: &dyn Compute,
    op: &str,
    task_vectors: &[GpuTensor],
    thresholds: &[f32],
) -> Result<(Vec<usize>, Vec<DType>)> {
    let first = task_vectors
        .first()
        .ok_or_else(|| Error::config(format!("{op}: no task vectors")))?;
    if thresholds.len() != task_vectors.len() {
        return Err(Error::config(format!(
            "{op}: {} thresholds for {} task vectors",
            thresholds.len(),
            task_vectors.len()
        )));
    }
    let (_, shape, _) = info(c, *first)?;
    let dtypes = same_shape(c, op, task_vectors, &shape)?;
    Ok((shape, dtypes))
}

fn threshold_bits(thresholds: &[f32]) -> Vec<u32> {
    // Compared with abs_bits(v) >= bits; a negative threshold keeps everything, like |v| >= t.
    thresholds
        .iter()
        .map(|t| if *t <= 0.0 { 0 } else { t.to_bits() })
        .collect()
}

/// `S = Σ_models trim(x)` (f32) for one key: the elected sign is `sign(S)`.
pub fn ties_elected_sum(
    c: &dyn Compute,
    task_vectors: &[GpuTensor],
    thresholds: &[f32],
) -> Result<GpuTensor> {
    let (shape, dtypes) = check(c, "ties_elect", task_vectors, thresholds)?;
    let s = DeviceTensor::zeros(c, DType::F32, &shape)?;
    let n = shape.iter().map(|&d| d as u64).product();
    let l = c.limits();
    let batch = arity(&l, "ties_elect", 1)?;
    let wg = workgroup_size(&l);
    let bits = threshold_bits(thresholds);
    for (b, ((group, group_dtypes), group_bits)) in task_vectors
        .chunks(batch)
        .zip(dtypes.chunks(batch))
        .zip(bits.chunks(batch))
        .enumerate()
    {
        let mut extra = vec![("ACCUMULATE", if b > 0 { 1.0 } else { 0.0 })];
        for (k, &dt) in group_dtypes.iter().enumerate() {
            extra.push((X_DTYPE_NAMES[k], dtype_code("ties_elect", dt)?));
        }
        let consts = constants(&l, &extra);
        for ch in chunks(&l, n) {
            let mut bindings = vec![ch.binding(s.id(), DType::F32, false)];
            bindings.extend(
                group
                    .iter()
                    .zip(group_dtypes)
                    .map(|(&t, &dt)| ch.binding(t, dt, true)),
            );
            c.dispatch(&KernelCall {
                label: "ties_elect_sum",
                source: wgsl::ties_elect_sum(group.len()),
                entry_point: "ties_elect_sum",
                constants: &consts,
                bindings: &bindings,
                uniforms: bytemuck::bytes_of(&trim_params(ch.len, group_bits)),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
            })?;
        }
    }
    Ok(s.into_raw())
}

/// Running counts of elected signs over a whole model, for the majority sign that replaces
/// `sign(S) = 0` (FusionBench `resolve_zero_signs(..., "majority")`). Counters live on the device;
/// only [`SignVotes::counts`] reads them back.
pub struct SignVotes<'c> {
    c: &'c dyn Compute,
    counters: DeviceTensor<'c>,
}

impl<'c> SignVotes<'c> {
    /// Zeroed counters.
    pub fn new(c: &'c dyn Compute) -> Result<Self> {
        Ok(SignVotes {
            c,
            counters: DeviceTensor::zeros(c, DType::U32, &[4])?,
        })
    }

    /// Count the elected signs of one key (the same tensor of every model's task vector, with
    /// each model's trim threshold).
    pub fn add(&self, task_vectors: &[GpuTensor], thresholds: &[f32]) -> Result<()> {
        let c = self.c;
        let s = DeviceTensor::adopt(c, ties_elected_sum(c, task_vectors, thresholds)?);
        let (_, _, n) = info(c, s.id())?;
        let l = c.limits();
        let consts = constants(&l, &[]);
        let wg = workgroup_size(&l);
        for ch in chunks(&l, n) {
            let bindings = [
                Binding::write(self.counters.id()),
                ch.binding(s.id(), DType::F32, true),
            ];
            c.dispatch(&KernelCall {
                label: "ties_votes",
                source: wgsl::TIES_VOTES,
                entry_point: "ties_votes",
                constants: &consts,
                bindings: &bindings,
                uniforms: bytemuck::bytes_of(&LenParams::new(ch.len)),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
            })?;
        }
        Ok(())
    }

    /// `(positive, negative)` elected signs counted so far.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let w: Vec<u32> = bytemuck::pod_collect_to_vec(&self.c.read(self.counters.id())?);
        Ok((
            u64::from(w[0]) | u64::from(w[1]) << 32,
            u64::from(w[2]) | u64::from(w[3]) << 32,
        ))
    }

    /// `sign(Σ s)`: 1.0, -1.0, or 0.0 on a tie.
    pub fn majority_sign(&self) -> Result<f32> {
        let (pos, neg) = self.counts()?;
        Ok(match pos.cmp(&neg) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Less => -1.0,
            std::cmp::Ordering::Equal => 0.0,
        })
    }
}

/// The TIES-merged task vector of one key, in `dtype`: trim with `thresholds`, elect
/// (`sign(S)`, `majority` where that is 0), disjoint `merge`. The caller scales it and adds
/// the base (`crate::scale_add`).
pub fn ties_merge(
    c: &dyn Compute,
    task_vectors: &[GpuTensor],
    thresholds: &[f32],
    majority: f32,
    merge: TiesMerge,
    dtype: DType,
) -> Result<GpuTensor> {
    let (shape, dtypes) = check(c, "ties_merge", task_vectors, thresholds)?;
    let s = DeviceTensor::adopt(c, ties_elected_sum(c, task_vectors, thresholds)?);
    let batch = arity(&c.limits(), "ties_merge", 3)?;
    let bits = threshold_bits(thresholds);
    let mut acc = TiesAccumulator::new(c, &shape, merge, majority)?;
    for ((group, group_dtypes), group_bits) in task_vectors
        .chunks(batch)
        .zip(dtypes.chunks(batch))
        .zip(bits.chunks(batch))
    {
        acc.launch(s.id(), group, group_dtypes, None, group_bits)?;
    }
    acc.finish(s.id(), dtype)
}

/// `S = [S +] trim(x - base)` for one model of one key (`accumulate` after the first model):
/// the elected sum built model by model from the fine-tuned and base tensors, without a task
/// vector tensor. The difference is taken in f32 after decoding (bit for bit what
/// [`task_vector`](crate::task_vector) holds), so the sum equals [`ties_elected_sum`] over the
/// task vectors. `s` is f32; `x` and `base` f32, f16 or bf16, all of one size.
pub fn ties_elect_delta(
    c: &dyn Compute,
    s: GpuTensor,
    x: GpuTensor,
    base: GpuTensor,
    threshold: f32,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "ties_elect_delta";
    let (st, shape, n) = info(c, s)?;
    if st != DType::F32 {
        return Err(Error::config(format!("{OP}: S must be f32, got {st}")));
    }
    let dtypes = same_shape(c, OP, &[x, base], &shape)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let consts = constants(
        &l,
        &[
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("X0_DTYPE", dtype_code(OP, dtypes[0])?),
            ("B_DTYPE", dtype_code(OP, dtypes[1])?),
        ],
    );
    let bits = threshold_bits(&[threshold]);
    for ch in chunks(&l, n) {
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::TIES_ELECT,
            entry_point: OP,
            constants: &consts,
            bindings: &[
                ch.binding(s, DType::F32, false),
                ch.binding(x, dtypes[0], true),
                ch.binding(base, dtypes[1], true),
            ],
            uniforms: bytemuck::bytes_of(&trim_params(ch.len, &bits)),
            workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
        })?;
    }
    Ok(())
}

/// Models one fused launch ([`ties_elected_sum_delta`], [`ties_merge_delta_scaled`]) takes.
pub const TIES_FUSED_MAX_MODELS: usize = 8;

/// Storage buffers `ties_merge_delta_n` binds: out, base, S, eight inputs, the counters.
const FUSED_STORAGE_BUFFERS: u32 = 12;

/// Whether the fused one-key launches can take `models` fine-tuned tensors on this device: at
/// most [`TIES_FUSED_MAX_MODELS`], and twelve storage buffers per shader stage (WebGPU's
/// default limit is 8; Vulkan drivers, lavapipe included, allow far more).
pub fn ties_fused_fits(c: &dyn Compute, models: usize) -> bool {
    (1..=TIES_FUSED_MAX_MODELS).contains(&models)
        && c.limits().max_storage_buffers_per_stage >= FUSED_STORAGE_BUFFERS
}

/// The checks of the fused launches: `xs` (1 to 8) and `base` of one shape, one threshold per
/// model; returns the shape, the element count and the dtypes of `xs` then `base`.
fn fused_inputs(
    c: &dyn Compute,
    op: &str,
    xs: &[GpuTensor],
    base: GpuTensor,
    thresholds: &[f32],
) -> Result<(Vec<usize>, u64, Vec<DType>)> {
    if !ties_fused_fits(c, xs.len()) {
        return Err(Error::unsupported(format!(
            "{op}: takes 1 to {TIES_FUSED_MAX_MODELS} models with {FUSED_STORAGE_BUFFERS} storage buffers per shader stage; got {} models, the device allows {}",
            xs.len(),
            c.limits().max_storage_buffers_per_stage
        )));
    }
    if thresholds.len() != xs.len() {
        return Err(Error::config(format!(
            "{op}: {} thresholds for {} models",
            thresholds.len(),
            xs.len()
        )));
    }
    let (_, shape, n) = info(c, base)?;
    let mut all = xs.to_vec();
    all.push(base);
    let dtypes = same_shape(c, op, &all, &shape)?;
    Ok((shape, n, dtypes))
}

/// The storage bindings of eight input slots over chunk `ch`: `xs`, then `xs[0]` again for
/// the slots a launch with fewer models leaves unread (WGSL binds every slot an entry point
/// declares).
fn input_slots(ch: crate::Chunk, xs: &[GpuTensor], dtypes: &[DType]) -> Vec<Binding> {
    (0..TIES_FUSED_MAX_MODELS)
        .map(|k| {
            let k = if k < xs.len() { k } else { 0 };
            ch.binding(xs[k], dtypes[k], true)
        })
        .collect()
}

/// The dtype overrides of the fused launches: `X<k>_DTYPE` of each model, `B_DTYPE`, `INPUTS`.
fn fused_constants(op: &str, dtypes: &[DType]) -> Result<Vec<(&'static str, f64)>> {
    let (xs, base) = dtypes.split_at(dtypes.len() - 1);
    let mut extra = vec![
        ("INPUTS", xs.len() as f64),
        ("B_DTYPE", dtype_code(op, base[0])?),
    ];
    for (k, &dt) in xs.iter().enumerate() {
        extra.push((X_DTYPE_NAMES[k], dtype_code(op, dt)?));
    }
    Ok(extra)
}

/// `S = Σᵢ trim(xᵢ − base)` (f32) of one key from up to eight fine-tuned tensors in one
/// launch: each tensor is read once, where [`ties_elect_delta`] per model reads and writes `S`
/// each time. Sums in model order, so `S` is bit for bit the per-model result. With `votes`,
/// the elected signs of `S` are counted too ([`SignVotes::add`]; in the same launch where every
/// tensor is f32). Needs [`ties_fused_fits`].
pub fn ties_elected_sum_delta(
    c: &dyn Compute,
    xs: &[GpuTensor],
    base: GpuTensor,
    thresholds: &[f32],
    votes: Option<&SignVotes<'_>>,
) -> Result<GpuTensor> {
    const OP: &str = "ties_elect_delta_n";
    let (shape, n, dtypes) = fused_inputs(c, OP, xs, base, thresholds)?;
    let s = DeviceTensor::zeros(c, DType::F32, &shape)?;
    let l = c.limits();
    let lp = QuadLoop::new(c);
    let consts = lp.constants(&fused_constants(OP, &dtypes)?);
    let bits = threshold_bits(thresholds);
    let quads = crate::launch::quads(&l, &dtypes);
    // The quad entry point counts votes itself, into `votes` or a scratch it drops.
    let scratch_votes;
    let vote_counters = match (quads, votes) {
        (false, _) => None,
        (true, Some(v)) => Some(v.counters.id()),
        (true, None) => {
            scratch_votes = DeviceTensor::zeros(c, DType::U32, &[4])?;
            Some(scratch_votes.id())
        }
    };
    for ch in chunks(&l, n) {
        let mut bindings = vec![ch.binding(s.id(), DType::F32, false)];
        bindings.extend(input_slots(ch, xs, &dtypes));
        bindings.push(ch.binding(base, dtypes[xs.len()], true));
        let (entry, workgroups) = match vote_counters {
            Some(v) => {
                bindings.push(Binding::write(v));
                ("ties_elect_delta_q", lp.workgroups(ch))
            }
            None => (OP, dispatch_1d(&l, ch.len.div_ceil(2), lp.wg)),
        };
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::TIES_ELECT,
            entry_point: entry,
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&trim_params(ch.len, &bits)),
            workgroups,
        })?;
    }
    if let (None, Some(v)) = (vote_counters, votes) {
        v.add(&[s.id()], &[0.0])?;
    }
    Ok(s.into_raw())
}

/// What [`ties_merge_delta_scaled`] does with one key.
#[derive(Clone, Copy, Debug)]
pub struct ScaledTiesMerge<'a> {
    /// Each model's trim threshold.
    pub thresholds: &'a [f32],
    /// The sign taken where `S = 0`.
    pub majority: f32,
    /// How kept entries combine.
    pub merge: TiesMerge,
    /// λ in `base + λ·τ`.
    pub lambda: f32,
    /// The output dtype.
    pub dtype: DType,
}

/// The merged model tensor of one key, `base + λ·ties_merge(xs − base)` in `m.dtype`, from up
/// to eight fine-tuned tensors, the base and the elected sum `s` in one launch: the same values
/// as [`TiesAccumulator::add_delta`] per model, [`TiesAccumulator::finish`] in f32 and a
/// two-input [`weighted_sum`](crate::weighted_sum) `(base, 1), (merged, λ)`, without the
/// accumulators and the f32 merged task vector between them. Adds to slot `undecided.1` of the
/// counters `undecided.0` what [`TiesAccumulator::count_undecided`] would count for this
/// majority. Needs [`ties_fused_fits`].
pub fn ties_merge_delta_scaled(
    c: &dyn Compute,
    s: GpuTensor,
    xs: &[GpuTensor],
    base: GpuTensor,
    m: ScaledTiesMerge<'_>,
    undecided: (GpuTensor, u32),
) -> Result<GpuTensor> {
    const OP: &str = "ties_merge_delta_n";
    let (shape, n, dtypes) = fused_inputs(c, OP, xs, base, m.thresholds)?;
    let (st, s_shape, _) = info(c, s)?;
    if st != DType::F32 || s_shape != shape {
        return Err(Error::config(format!(
            "{OP}: S must be f32 of shape {shape:?}, got {st} {s_shape:?}"
        )));
    }
    let (counters, slot) = undecided;
    check_counters(c, OP, counters, slot)?;
    let out = DeviceTensor::zeros(c, m.dtype, &shape)?;
    let l = c.limits();
    let lp = QuadLoop::new(c);
    let consts = lp.constants(&merge_constants(OP, &dtypes, &m)?);
    let bits = threshold_bits(m.thresholds);
    let mut all = dtypes.clone();
    all.push(m.dtype);
    let quads = crate::launch::quads(&l, &all);
    for ch in chunks(&l, n) {
        // All f32: four elements per invocation, few invocations looping over the chunk.
        let (entry, workgroups) = if quads {
            ("ties_merge_delta_q", lp.workgroups(ch))
        } else {
            (OP, dispatch_1d(&l, ch.len.div_ceil(2), lp.wg))
        };
        let third = ch.binding(s, DType::F32, true);
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::TIES_FUSED,
            entry_point: entry,
            constants: &consts,
            bindings: &merge_bindings(ch, out.id(), base, third, xs, &dtypes, m.dtype, counters),
            uniforms: bytemuck::bytes_of(&merge_uniforms(ch, &m, &bits, slot)),
            workgroups,
        })?;
    }
    Ok(out.into_raw())
}

/// [`ties_elected_sum_delta`] then [`ties_merge_delta_scaled`] for one key, from the fine-tuned
/// tensors and the base alone: the merged model tensor `base + λ·ties_merge(xs − base)` with
/// majority sign `m.majority`, the elected signs counted in `votes` (where given) and the
/// entries another majority would change added to slot `undecided.1` of `undecided.0`. Where
/// every tensor, the output included, is f32, one launch does it all (`S` stays in registers);
/// else the two launches. Same bits either way. Needs [`ties_fused_fits`].
pub fn ties_elect_merge_delta(
    c: &dyn Compute,
    xs: &[GpuTensor],
    base: GpuTensor,
    m: ScaledTiesMerge<'_>,
    votes: Option<&SignVotes<'_>>,
    undecided: (GpuTensor, u32),
) -> Result<GpuTensor> {
    const OP: &str = "ties_elect_merge_delta_q";
    let (shape, n, dtypes) = fused_inputs(c, OP, xs, base, m.thresholds)?;
    let l = c.limits();
    let mut all = dtypes.clone();
    all.push(m.dtype);
    if !crate::launch::quads(&l, &all) {
        let s = DeviceTensor::adopt(c, ties_elected_sum_delta(c, xs, base, m.thresholds, votes)?);
        return ties_merge_delta_scaled(c, s.id(), xs, base, m, undecided);
    }
    let (counters, slot) = undecided;
    check_counters(c, OP, counters, slot)?;
    let scratch_votes;
    let vote_counters = match votes {
        Some(v) => v.counters.id(),
        None => {
            scratch_votes = DeviceTensor::zeros(c, DType::U32, &[4])?;
            scratch_votes.id()
        }
    };
    let out = DeviceTensor::zeros(c, m.dtype, &shape)?;
    let lp = QuadLoop::new(c);
    let consts = lp.constants(&merge_constants(OP, &dtypes, &m)?);
    let bits = threshold_bits(m.thresholds);
    for ch in chunks(&l, n) {
        let workgroups = lp.workgroups(ch);
        let third = Binding::write(vote_counters);
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::TIES_FUSED,
            entry_point: OP,
            constants: &consts,
            bindings: &merge_bindings(ch, out.id(), base, third, xs, &dtypes, m.dtype, counters),
            uniforms: bytemuck::bytes_of(&merge_uniforms(ch, &m, &bits, slot)),
            workgroups,
        })?;
    }
    Ok(out.into_raw())
}

/// The bindings of the fused merges over chunk `ch`: 0 = out (`out_dtype`), 1 = base, 2 =
/// `third` (S or the vote counters), 3..10 = the inputs, 11 = the undecided counters.
#[allow(clippy::too_many_arguments)]
fn merge_bindings(
    ch: crate::Chunk,
    out: GpuTensor,
    base: GpuTensor,
    third: Binding,
    xs: &[GpuTensor],
    dtypes: &[DType],
    out_dtype: DType,
    counters: GpuTensor,
) -> Vec<Binding> {
    let mut bindings = vec![
        ch.binding(out, out_dtype, false),
        ch.binding(base, dtypes[xs.len()], true),
        third,
    ];
    bindings.extend(input_slots(ch, xs, dtypes));
    bindings.push(Binding::write(counters));
    bindings
}

/// The uniform `MergeNParams` of the fused merges over chunk `ch`.
fn merge_uniforms(
    ch: crate::Chunk,
    m: &ScaledTiesMerge<'_>,
    bits: &[u32],
    slot: u32,
) -> MergeNParams {
    MergeNParams {
        n: len32(ch.len),
        majority: m.majority,
        w_base: 1.0,
        lambda: m.lambda,
        thr: words8(bits),
        slot,
        _pad: [0; 3],
    }
}

/// The uniform `Params` of the trim and elect launches over a chunk of `len` elements.
fn trim_params(len: u64, bits: &[u32]) -> TrimParams {
    TrimParams {
        n: len32(len),
        _pad: [0; 3],
        thr: words8(bits),
    }
}

/// The overrides of the fused merges: [`fused_constants`], `MERGE`, `OUT_DTYPE`, `ANY_ZERO`.
fn merge_constants(
    op: &str,
    dtypes: &[DType],
    m: &ScaledTiesMerge<'_>,
) -> Result<Vec<(&'static str, f64)>> {
    let mut extra = fused_constants(op, dtypes)?;
    extra.push(("MERGE", m.merge.code()));
    extra.push(("OUT_DTYPE", dtype_code(op, m.dtype)?));
    extra.push((
        "ANY_ZERO",
        if m.merge == TiesMerge::Max { 1.0 } else { 0.0 },
    ));
    Ok(extra)
}

/// Storage buffers `ties_bracket_merge_delta_q` binds: those of the fused merge, the bracket
/// counts and the dirty bits.
const BRACKET_MERGE_STORAGE_BUFFERS: u32 = 14;

/// Whether [`ties_bracket_merge_delta`] can take `models` fine-tuned tensors on this device:
/// 1 to [`TIES_FUSED_MAX_MODELS`], fourteen storage buffers per shader stage, and chunks of a
/// multiple of 32 elements (the dirty bits of a chunk start a word).
pub fn ties_bracket_merge_fits(c: &dyn Compute, models: usize) -> bool {
    let l = c.limits();
    (1..=TIES_FUSED_MAX_MODELS).contains(&models)
        && l.max_storage_buffers_per_stage >= BRACKET_MERGE_STORAGE_BUFFERS
        && crate::launch::chunk_elements(&l) % 32 == 0
}

/// What [`ties_bracket_merge_delta`] does besides the merge.
#[derive(Clone, Copy, Debug)]
pub struct TiesBracketPass<'a> {
    /// Each model's bracket of `|τ|` bits, known to hold its threshold if the guess is right,
    /// with its counters' offset in `counts` (as [`radix_bracket_delta`](crate::radix_bracket_delta)).
    pub brackets: &'a [crate::RadixBracket],
    /// The bracket counters (u32 words).
    pub counts: GpuTensor,
    /// The dirty bits (u32 words): element `i` of the key is bit `i % 32` of word
    /// `dirty_at + i / 32`.
    pub dirty: GpuTensor,
    /// The key's first word in `dirty`.
    pub dirty_at: u64,
}

/// One pass over a key's f32 tensors before the thresholds are known: what
/// [`radix_bracket_delta`](crate::radix_bracket_delta) counts for `pass.brackets`, and the merged
/// model tensor (f32) of [`ties_elect_merge_delta`] with each threshold at its bracket's top,
/// which is the exact result wherever no model's `|τ|` lies inside its bracket. Positions where
/// one does are set in `pass.dirty` and left out of `votes` and the undecided count (slot
/// `undecided.1` of `undecided.0`): merge them again once the counts settle the thresholds.
/// `m.thresholds` is ignored (pass the brackets' tops or anything of the same length); `m.dtype`
/// must be f32. Needs [`ties_bracket_merge_fits`].
pub fn ties_bracket_merge_delta(
    c: &dyn Compute,
    xs: &[GpuTensor],
    base: GpuTensor,
    m: ScaledTiesMerge<'_>,
    pass: TiesBracketPass<'_>,
    votes: &SignVotes<'_>,
    undecided: (GpuTensor, u32),
) -> Result<GpuTensor> {
    const OP: &str = "ties_bracket_merge_delta_q";
    if !ties_bracket_merge_fits(c, xs.len()) {
        return Err(Error::unsupported(format!(
            "{OP}: takes 1 to {TIES_FUSED_MAX_MODELS} models with {BRACKET_MERGE_STORAGE_BUFFERS} storage buffers per shader stage; got {} models, the device allows {}",
            xs.len(),
            c.limits().max_storage_buffers_per_stage
        )));
    }
    let (shape, n, dtypes) = fused_inputs(c, OP, xs, base, m.thresholds)?;
    if dtypes.iter().chain([&m.dtype]).any(|&d| d != DType::F32) {
        return Err(Error::unsupported(format!(
            "{OP}: takes f32 tensors only; got {dtypes:?} into {}",
            m.dtype
        )));
    }
    if pass.brackets.len() != xs.len() {
        return Err(Error::config(format!(
            "{OP}: {} brackets for {} models",
            pass.brackets.len(),
            xs.len()
        )));
    }
    let (ct, _, count_words) = info(c, pass.counts)?;
    for (k, b) in pass.brackets.iter().enumerate() {
        if ct != DType::U32
            || b.lo > b.hi
            || b.bins() > crate::MAX_BRACKET_BINS
            || b.offset + b.words() > count_words
        {
            return Err(Error::config(format!(
                "{OP}: bracket {k} ({b:?}) is inverted, wider than {} bins or past the {count_words} {ct} words of the counts",
                crate::MAX_BRACKET_BINS
            )));
        }
    }
    let (dt, _, dirty_words) = info(c, pass.dirty)?;
    if dt != DType::U32 || pass.dirty_at + n.div_ceil(32) > dirty_words {
        return Err(Error::config(format!(
            "{OP}: the dirty bits of {n} elements from word {} do not fit {dirty_words} {dt} words",
            pass.dirty_at
        )));
    }
    let (counters, slot) = undecided;
    check_counters(c, OP, counters, slot)?;
    let out = DeviceTensor::zeros(c, DType::F32, &shape)?;
    let l = c.limits();
    let lp = QuadLoop::new(c);
    let consts = lp.constants(&merge_constants(OP, &dtypes, &m)?);
    let lo: Vec<u32> = pass.brackets.iter().map(|b| b.lo).collect();
    let hi: Vec<u32> = pass.brackets.iter().map(|b| b.hi).collect();
    let off: Vec<u32> = pass.brackets.iter().map(|b| b.offset as u32).collect();
    for ch in chunks(&l, n) {
        let workgroups = lp.workgroups(ch);
        let third = Binding::write(votes.counters.id());
        let mut bindings =
            merge_bindings(ch, out.id(), base, third, xs, &dtypes, DType::F32, counters);
        bindings.push(Binding::write(pass.counts));
        bindings.push(Binding::write(pass.dirty));
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::TIES_BRACKET,
            entry_point: OP,
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&BracketMergeParams {
                n: len32(ch.len),
                majority: m.majority,
                w_base: 1.0,
                lambda: m.lambda,
                lo: words8(&lo),
                hi: words8(&hi),
                off: words8(&off),
                slot,
                dirty_at: (pass.dirty_at + ch.start / 32) as u32,
                _pad: [0; 2],
            }),
            workgroups,
        })?;
    }
    Ok(out.into_raw())
}

/// The undecided counters of the fused merges: u32 with a (lo, hi) pair for `slot`.
fn check_counters(c: &dyn Compute, op: &str, counters: GpuTensor, slot: u32) -> Result<()> {
    let (ct, _, words) = info(c, counters)?;
    if ct != DType::U32 || words < 2 * (u64::from(slot) + 1) {
        return Err(Error::config(format!(
            "{op}: counters must be u32 with at least {} words for slot {slot}; got {ct} with {words}",
            2 * (u64::from(slot) + 1)
        )));
    }
    Ok(())
}

/// The disjoint merge of one key accumulated one model at a time, for plugins that stream task
/// vectors instead of holding them all ([`ties_merge`] takes them together). [`Self::add`] takes
/// a task vector, [`Self::add_delta`] a fine-tuned tensor and the base; [`Self::finish`] gives
/// the merged task vector. Results equal [`ties_merge`]'s over the same models in the same order.
pub struct TiesAccumulator<'c> {
    c: &'c dyn Compute,
    acc_a: DeviceTensor<'c>,
    acc_c: DeviceTensor<'c>,
    shape: Vec<usize>,
    merge: TiesMerge,
    majority: f32,
    steps: usize,
}

impl<'c> TiesAccumulator<'c> {
    /// Accumulators for a key of `shape` (f32 on the device: one tensor, two for `mean`).
    pub fn new(
        c: &'c dyn Compute,
        shape: &[usize],
        merge: TiesMerge,
        majority: f32,
    ) -> Result<Self> {
        Ok(TiesAccumulator {
            c,
            acc_a: DeviceTensor::zeros(c, DType::F32, shape)?,
            // The count is only read for `mean`; other modes bind a one-element placeholder.
            acc_c: DeviceTensor::zeros(
                c,
                DType::F32,
                if merge == TiesMerge::Mean {
                    shape
                } else {
                    &[1]
                },
            )?,
            shape: shape.to_vec(),
            merge,
            majority,
            steps: 0,
        })
    }

    /// Add one model's task vector `tv` (trimmed at `threshold`) given the elected sum `s`.
    pub fn add(&mut self, s: GpuTensor, tv: GpuTensor, threshold: f32) -> Result<()> {
        self.step(s, tv, None, threshold)
    }

    /// Add one model's task vector `x - base` (not formed, where the device binds the five
    /// storage buffers this takes) given the elected sum `s`.
    pub fn add_delta(
        &mut self,
        s: GpuTensor,
        x: GpuTensor,
        base: GpuTensor,
        threshold: f32,
    ) -> Result<()> {
        if self.c.limits().max_storage_buffers_per_stage < 5 {
            let tv = DeviceTensor::adopt(self.c, crate::task_vector(self.c, x, base, DType::F32)?);
            return self.step(s, tv.id(), None, threshold);
        }
        self.step(s, x, Some(base), threshold)
    }

    fn step(
        &mut self,
        s: GpuTensor,
        x: GpuTensor,
        base: Option<GpuTensor>,
        threshold: f32,
    ) -> Result<()> {
        let mut inputs = vec![s, x];
        inputs.extend(base);
        let dtypes = same_shape(self.c, "ties_merge", &inputs, &self.shape)?;
        let base = base.map(|b| (b, dtypes[2]));
        self.launch(s, &[x], &dtypes[1..2], base, &threshold_bits(&[threshold]))
    }

    /// One accumulation launch over `group` (`ties_merge_sum`), or over one fine-tuned tensor
    /// and `base` (`ties_merge_delta`); the first launch starts the accumulators.
    fn launch(
        &mut self,
        s: GpuTensor,
        group: &[GpuTensor],
        group_dtypes: &[DType],
        base: Option<(GpuTensor, DType)>,
        bits: &[u32],
    ) -> Result<()> {
        const OP: &str = "ties_merge";
        let c = self.c;
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        let l = c.limits();
        let wg = workgroup_size(&l);
        let mut extra = vec![
            ("ACCUMULATE", if self.steps > 0 { 1.0 } else { 0.0 }),
            ("MERGE", self.merge.code()),
        ];
        for (k, &dt) in group_dtypes.iter().enumerate() {
            extra.push((X_DTYPE_NAMES[k], dtype_code(OP, dt)?));
        }
        if let Some((_, bt)) = base {
            extra.push(("B_DTYPE", dtype_code(OP, bt)?));
        }
        let consts = constants(&l, &extra);
        let (source, entry) = match base {
            Some(_) => (wgsl::TIES_MERGE, "ties_merge_delta"),
            None => (wgsl::ties_merge_sum(group.len()), "ties_merge_sum"),
        };
        for ch in chunks(&l, n) {
            let mut bindings = vec![
                ch.binding(self.acc_a.id(), DType::F32, false),
                count_binding(&self.acc_c, self.merge, ch, false),
                ch.binding(s, DType::F32, true),
            ];
            bindings.extend(
                group
                    .iter()
                    .zip(group_dtypes)
                    .map(|(&t, &dt)| ch.binding(t, dt, true)),
            );
            if let Some((b, bt)) = base {
                bindings.push(ch.binding(b, bt, true));
            }
            c.dispatch(&KernelCall {
                label: OP,
                source,
                entry_point: entry,
                constants: &consts,
                bindings: &bindings,
                uniforms: bytemuck::bytes_of(&MergeParams {
                    n: len32(ch.len),
                    majority: self.majority,
                    _pad: [0; 2],
                    thr: words8(bits),
                }),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
            })?;
        }
        self.steps += 1;
        Ok(())
    }

    /// Add to slot `slot` of `counters` (a u32 tensor of 64-bit (lo, hi) counts, slot `i` at
    /// words `2i`, `2i + 1`) the number of entries whose merged value a majority sign other than
    /// this accumulator's would change, given the elected sum `s`: `S = 0` with an entry kept
    /// (for `max`, every `S = 0`). Lets a merge accumulated with majority +1 before the
    /// majority sign is known stand when the count is 0 or the majority turns out +1 (see
    /// `shaders/src/ties_votes.wgsl`).
    pub fn count_undecided(&self, s: GpuTensor, counters: GpuTensor, slot: u32) -> Result<()> {
        const OP: &str = "ties_undecided";
        let c = self.c;
        let (ct, _, words) = info(c, counters)?;
        if ct != DType::U32 || words < 2 * (u64::from(slot) + 1) {
            return Err(Error::config(format!(
                "{OP}: counters must be u32 with at least {} words for slot {slot}; got {ct} with {words}",
                2 * (u64::from(slot) + 1)
            )));
        }
        same_shape(c, OP, &[s], &self.shape)?;
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        let l = c.limits();
        let wg = workgroup_size(&l);
        let any_zero = if self.merge == TiesMerge::Max {
            1.0
        } else {
            0.0
        };
        let consts = constants(&l, &[("ANY_ZERO", any_zero)]);
        for ch in chunks(&l, n) {
            c.dispatch(&KernelCall {
                label: OP,
                source: wgsl::TIES_VOTES,
                entry_point: OP,
                constants: &consts,
                bindings: &[
                    Binding::write(counters),
                    ch.binding(s, DType::F32, true),
                    ch.binding(self.acc_a.id(), DType::F32, true),
                ],
                uniforms: bytemuck::bytes_of(&UndecidedParams {
                    n: len32(ch.len),
                    slot,
                    _pad: [0; 2],
                }),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
            })?;
        }
        Ok(())
    }

    /// The merged task vector of the key in `dtype`, given the elected sum `s`.
    pub fn finish(self, s: GpuTensor, dtype: DType) -> Result<GpuTensor> {
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        let out = DeviceTensor::zeros(self.c, dtype, &self.shape)?;
        let l = self.c.limits();
        let wg = workgroup_size(&l);
        let out_code = dtype_code("ties_merge", dtype)?;
        let consts = constants(&l, &[("MERGE", self.merge.code()), ("OUT_DTYPE", out_code)]);
        for ch in chunks(&l, n) {
            let bindings = [
                ch.binding(out.id(), dtype, false),
                ch.binding(self.acc_a.id(), DType::F32, true),
                count_binding(&self.acc_c, self.merge, ch, true),
                ch.binding(s, DType::F32, true),
            ];
            self.c.dispatch(&KernelCall {
                label: "ties_finalize",
                source: wgsl::TIES_MERGE,
                entry_point: "ties_finalize",
                constants: &consts,
                bindings: &bindings,
                uniforms: bytemuck::bytes_of(&FinalParams {
                    n: len32(ch.len),
                    majority: self.majority,
                    _pad: [0; 2],
                }),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
            })?;
        }
        Ok(out.into_raw())
    }
}

fn count_binding(
    acc_c: &DeviceTensor<'_>,
    merge: TiesMerge,
    ch: crate::Chunk,
    read_only: bool,
) -> Binding {
    if merge == TiesMerge::Mean {
        ch.binding(acc_c.id(), DType::F32, read_only)
    } else if read_only {
        Binding::read(acc_c.id())
    } else {
        Binding::write(acc_c.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_merge_funcs() {
        assert_eq!("sum".parse::<TiesMerge>().unwrap(), TiesMerge::Sum);
        assert_eq!("dis-mean".parse::<TiesMerge>().unwrap(), TiesMerge::Mean);
        assert_eq!("MAX".parse::<TiesMerge>().unwrap(), TiesMerge::Max);
        assert!("median".parse::<TiesMerge>().is_err());
    }
}
