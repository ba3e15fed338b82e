//! Task arithmetic, TIES, DARE and breadcrumbs (`generalized_task_arithmetic.py` with no,
//! magnitude, random or magnitude-outlier sparsification) block by block, from the inputs'
//! stored bytes to the output's bytes. (DELLA ranks within rows and stays whole-tensor.)
//!
//! The whole-tensor path (`methods::merge`) holds every input, every task vector, its mask and
//! the output in f32: about eight copies of the largest tensor (the embeddings) for a TIES of
//! three models. Here the memory is a block budget ([`BLOCK_BYTES`]) whatever the tensor's size,
//! and every pass runs on all cores:
//!
//! 1. TIES needs each task vector's k-th largest magnitude over the whole tensor first. One pass
//!    counts the magnitudes by their upper 16 bits (32 768 bins: non-negative floats order as
//!    their bits), which finds the bin that holds the k-th largest. Where some magnitude has
//!    non-zero lower bits (task vectors not in bfloat16), a second pass counts the lower 16 bits
//!    of the entries in that bin. Either way the threshold is exact, and so is the number of
//!    entries above it: of the entries equal to it the first ones by position are kept, as
//!    `cpu::top_k_magnitude` (a stable sort) keeps them. Breadcrumbs keeps a window of ascending
//!    ranks: two such ranks from the bottom, from the same count. DARE's rescale needs each task vector's
//!    L1 norm before and after its random mask: the same pass sums them per chunk.
//! 2. Then block by block: the block's task vectors, and per chunk the number of entries equal to
//!    the threshold (which gives each chunk its share of the ties left); then per chunk the
//!    masks, the weights, the sign election and sum (`methods::Mix`, the code of the whole-tensor
//!    path) and the output's encoding.
//!
//! The results equal the whole-tensor path's bit for bit (`tests::blocks_equal_whole_tensors`).

use std::time::Instant;

use fusion_plugin_api::{DType, Error, Result, StateDict};
use rayon::prelude::*;

use crate::cpu::{self, CHUNK};
use crate::methods::{self, Job, Method, Mix, MixScratch, Rng, Sparsify};

/// The default budget of one block's f32 buffers (the base and every task vector of the block).
pub const BLOCK_BYTES: usize = 64 << 20;

/// The block budget of a merge: [`BLOCK_BYTES`], or `FUSION_MERGEKIT_BLOCK_MB` MiB where that is
/// set (a knob for measurements; `0` turns the block path off, so that the whole-tensor path
/// runs, as before it existed). `None`: off.
fn block_budget() -> Option<usize> {
    match std::env::var("FUSION_MERGEKIT_BLOCK_MB") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => None,
            Ok(mb) => Some(mb << 20),
            Err(_) => {
                tracing::warn!(
                    "FUSION_MERGEKIT_BLOCK_MB={v}: not a number of MiB; using the default"
                );
                Some(BLOCK_BYTES)
            }
        },
        Err(_) => Some(BLOCK_BYTES),
    }
}

/// Bins of the first count: the upper 16 bits of a magnitude (its sign bit is 0).
const HI_BINS: usize = 1 << 15;
/// Bins of the refining count: the lower 16 bits.
const LO_BINS: usize = 1 << 16;

/// One input tensor as stored.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
    /// Called with each stretch of `bytes` once read, where they are memory-mapped pages that
    /// can be dropped from the resident set (a tensor larger than a block): so a pass over the
    /// tensor holds a block of it, not all of it.
    pub release: Option<&'a Release<'a>>,
}

/// What [`Source::release`] calls.
pub type Release<'a> = dyn Fn(&[u8]) + Sync + 'a;

/// A selection by magnitude rank: the magnitudes (as bits) beyond `threshold` (above it when
/// `top`, below it otherwise), and the first `ties` entries equal to it by position.
#[derive(Clone, Copy, Debug)]
struct Sel {
    threshold: u32,
    ties: usize,
    top: bool,
}

impl Sel {
    /// Whether an entry of magnitude bits `bits` is in, `left` the ties this chunk may still take.
    #[inline(always)]
    fn take(&self, bits: u32, left: &mut usize) -> bool {
        let beyond = if self.top {
            bits > self.threshold
        } else {
            bits < self.threshold
        };
        let tie = bits == self.threshold && *left > 0;
        *left -= tie as usize;
        beyond || tie
    }
}

/// What one task vector keeps.
#[derive(Clone, Copy, Debug)]
enum Keep {
    All,
    Nothing,
    /// TIES: the k largest magnitudes (ties by position, as a stable descending sort).
    Top(Sel),
    /// Breadcrumbs: the ascending ranks `[n_bot, end)` (a stable ascending sort): in the lowest
    /// `end`, not in the lowest `n_bot`.
    Window(Sel, Sel),
    /// DARE: the entries whose draw is under `density`.
    Random {
        key: u64,
        density: f64,
    },
}

impl Keep {
    fn sels(&self) -> [Option<Sel>; 2] {
        match *self {
            Keep::Top(a) => [Some(a), None],
            Keep::Window(a, b) => [Some(a), Some(b)],
            _ => [None, None],
        }
    }
}

/// A rank to find: `count` entries of task `task`'s magnitudes from the top (`top`) or bottom.
struct Want {
    task: usize,
    count: usize,
    top: bool,
}

struct Task {
    /// Its input's position.
    src: usize,
    weight: f32,
    keep: Keep,
    /// DARE's rescale factor, once known.
    scale: Option<f32>,
    /// Whether pass 1 sums its L1 norms (DARE with `rescale`).
    sums: bool,
}

/// `job`'s merge (its parameters: `job.tensors` is not read) of `sources` (in the job's input
/// order), read as f32 and each rounded to `read_as` where stored in another dtype, as bytes of
/// `out`. `None` where this path does not apply and the caller merges the whole tensor: another
/// method, no task vector, or a magnitude mask (TIES, breadcrumbs) with `rescale`. `block_bytes`: the budget of
/// a block's buffers (at least one chunk of every input).
pub fn gta(
    job: &Job<'_>,
    method: Method,
    sources: &[Source<'_>],
    read_as: Option<DType>,
    out: DType,
    block_bytes: usize,
) -> Result<Option<Vec<u8>>> {
    let Method::Gta {
        consensus,
        sparsify,
    } = method
    else {
        return Ok(None);
    };
    if !matches!(
        sparsify,
        Sparsify::None | Sparsify::Magnitude | Sparsify::Random | Sparsify::MagnitudeOutliers
    ) {
        return Ok(None);
    }
    let args = (job, consensus, sparsify, sources, read_as, out, block_bytes);
    // One copy of the loops per rounding, so that it inlines.
    match job.work {
        Some(DType::BF16) => gta_in(args, methods::half_bf16),
        Some(DType::F16) => gta_in(args, methods::half_f16),
        _ => gta_in(args, |x: f32| x),
    }
}

type Args<'a, 'b> = (
    &'a Job<'b>,
    bool,
    Sparsify,
    &'a [Source<'b>],
    Option<DType>,
    DType,
    usize,
);

/// Chunk `c` (`out.len()` entries from `start`) of `src` as f32, rounded as the inputs are read.
#[inline]
fn load(src: &Source<'_>, start: usize, out: &mut [f32], read_as: Option<DType>) {
    let s = src.dtype.size();
    let bytes = &src.bytes[start * s..(start + out.len()) * s];
    cpu::decode_into(bytes, src.dtype, out);
    if let Some(release) = src.release {
        release(bytes);
    }
    if let Some(d) = read_as.filter(|d| *d != src.dtype) {
        cpu::round_slice(out, d);
    }
}

/// The task vector `q(x − b)` in place of `x`.
#[inline]
fn delta(x: &mut [f32], b: &[f32], q: impl Fn(f32) -> f32) {
    x.iter_mut().zip(b).for_each(|(x, b)| *x = q(*x - b));
}

/// The bin where, counting from the top (`top`) or the bottom, the `k`-th entry falls, and the
/// count beyond it (above or below). `k` 0 from the bottom: bin 0, nothing below.
fn find(hist: &[u64], k: u64, top: bool) -> (usize, u64) {
    let mut beyond = 0u64;
    let step = |b: usize, beyond: &mut u64| {
        let c = hist[b];
        if *beyond + c >= k {
            return true;
        }
        *beyond += c;
        false
    };
    if top {
        for b in (0..hist.len()).rev() {
            if step(b, &mut beyond) {
                return (b, beyond);
            }
        }
    } else {
        for b in 0..hist.len() {
            if step(b, &mut beyond) {
                return (b, beyond);
            }
        }
    }
    (0, beyond)
}

/// Per-split accumulator of pass 1 / the refining pass.
struct Acc {
    hist: Vec<u64>,
    low: Vec<u32>,
    /// (chunk, task, L1 before, L1 after)
    sums: Vec<(usize, usize, f64, f64)>,
    b: Vec<f32>,
    x: Vec<f32>,
}

impl Acc {
    fn new(bins: usize) -> Acc {
        Acc {
            hist: vec![0; bins],
            low: Vec::new(),
            sums: Vec::new(),
            b: vec![0.0; CHUNK],
            x: vec![0.0; CHUNK],
        }
    }
    fn merge(mut self, o: Acc) -> Acc {
        self.hist.iter_mut().zip(&o.hist).for_each(|(a, b)| *a += b);
        if self.low.len() < o.low.len() {
            self.low.resize(o.low.len(), 0);
        }
        self.low.iter_mut().zip(&o.low).for_each(|(a, b)| *a |= b);
        self.sums.extend(o.sums);
        self
    }
}

fn gta_in(
    args: Args<'_, '_>,
    q: impl Fn(f32) -> f32 + Sync + Send + Copy,
) -> Result<Option<Vec<u8>>> {
    let (job, consensus, sparsify, sources, read_as, out_dtype, block_bytes) = args;
    let base = job.base.ok_or_else(|| {
        Error::config(format!(
            "task arithmetic: tensor `{}` has no base model input",
            job.name
        ))
    })?;
    let others: Vec<usize> = (0..sources.len()).filter(|&i| i != base).collect();
    if others.is_empty() {
        return Ok(None);
    }
    let bsrc = sources[base];
    let n = bsrc.bytes.len() / bsrc.dtype.size();
    if let Some(i) =
        (0..sources.len()).find(|&i| sources[i].bytes.len() / sources[i].dtype.size() != n)
    {
        return Err(Error::model(format!(
            "tensor `{}`: input {i} has {} entries, the base {n}",
            job.name,
            sources[i].bytes.len() / sources[i].dtype.size()
        )));
    }
    let rescale = job.gflag("rescale");
    let mut tasks = Vec::with_capacity(others.len());
    // The ranks to find, in order: one per TIES task vector, two per breadcrumbs one.
    let mut wants: Vec<Want> = Vec::new();
    for &i in &others {
        let density = job.m(i, "density").unwrap_or(1.0);
        let t = tasks.len();
        let mut task = Task {
            src: i,
            weight: q(job.weight(i)? as f32),
            keep: Keep::All,
            scale: None,
            sums: false,
        };
        if sparsify != Sparsify::None && density < 1.0 {
            match sparsify {
                Sparsify::Magnitude => {
                    // mergekit 0.1.5: a positive density keeps at least one entry.
                    if density <= 0.0 || n == 0 {
                        task.keep = Keep::Nothing;
                    } else {
                        let k = ((density * n as f64) as usize).max(1);
                        if k < n {
                            if rescale {
                                return Ok(None);
                            }
                            wants.push(Want {
                                task: t,
                                count: k,
                                top: true,
                            });
                        }
                    }
                }
                Sparsify::MagnitudeOutliers => {
                    if rescale {
                        return Ok(None);
                    }
                    // As `methods::sparsify`: the ascending ranks [n_bot, end).
                    let gamma = job.m(i, "gamma").unwrap_or(0.0);
                    let target = (density * n as f64) as i64;
                    let mut n_top = (gamma * n as f64) as i64;
                    let mut n_bot = n as i64 - target - n_top;
                    if n_bot < 0 {
                        n_top += n_bot;
                        n_bot = 0;
                    }
                    let end = (n as i64 - n_top).max(n_bot) as usize;
                    wants.push(Want {
                        task: t,
                        count: end,
                        top: false,
                    });
                    wants.push(Want {
                        task: t,
                        count: n_bot as usize,
                        top: false,
                    });
                }
                Sparsify::Random => {
                    task.keep = Keep::Random {
                        key: job.random_keys[i],
                        density,
                    };
                    task.sums = rescale;
                }
                _ => unreachable!("checked by gta"),
            }
        }
        tasks.push(task);
    }
    let t0 = Instant::now();
    let chunks = n.div_ceil(CHUNK);
    // The task vectors counted (one histogram each), in order.
    let mut counted: Vec<usize> = wants.iter().map(|w| w.task).collect();
    counted.dedup();
    if !counted.is_empty() || tasks.iter().any(|t| t.sums) {
        // Pass 1: the magnitudes' upper bits of the ranked task vectors, DARE's L1 norms.
        let acc = (0..chunks)
            .into_par_iter()
            .fold(
                || {
                    let mut a = Acc::new(counted.len() * HI_BINS);
                    a.low = vec![0; counted.len()];
                    a
                },
                |mut a, c| {
                    let start = c * CHUNK;
                    let len = CHUNK.min(n - start);
                    load(&bsrc, start, &mut a.b[..len], read_as);
                    for (t, task) in tasks.iter().enumerate() {
                        let slot = counted.iter().position(|&x| x == t);
                        if slot.is_none() && !task.sums {
                            continue;
                        }
                        load(&sources[task.src], start, &mut a.x[..len], read_as);
                        delta(&mut a.x[..len], &a.b[..len], q);
                        let d = &a.x[..len];
                        if let Some(s) = slot {
                            let h = &mut a.hist[s * HI_BINS..(s + 1) * HI_BINS];
                            let mut low = 0u32;
                            for v in d {
                                let bits = v.abs().to_bits();
                                h[(bits >> 16) as usize] += 1;
                                low |= bits & 0xFFFF;
                            }
                            a.low[s] |= low;
                        }
                        if let Keep::Random { key, density } = task.keep {
                            let before = methods::chunk_l1(d);
                            let mut rng = Rng::at(key, start);
                            let after: f64 = d
                                .iter()
                                .map(|v| {
                                    if rng.next() < density {
                                        v.abs() as f64
                                    } else {
                                        0.0
                                    }
                                })
                                .sum();
                            a.sums.push((c, t, before, after));
                        }
                    }
                    a
                },
            )
            .reduce(|| Acc::new(counted.len() * HI_BINS), Acc::merge);
        // DARE's rescale: the chunks' sums in order, as `methods::l1` adds them.
        let mut sums = acc.sums;
        sums.sort_by_key(|s| (s.1, s.0));
        for (t, task) in tasks.iter_mut().enumerate() {
            if !task.sums {
                continue;
            }
            let mine: Vec<&(usize, usize, f64, f64)> = sums.iter().filter(|s| s.1 == t).collect();
            let before: f64 = mine.iter().map(|s| s.2).collect::<Vec<_>>().iter().sum();
            let after: f64 = mine.iter().map(|s| s.3).collect::<Vec<_>>().iter().sum();
            if before >= 1e-7 && after >= 1e-7 {
                task.scale = Some((before / after) as f32);
            }
        }
        // Each rank's bin; exact unless lower bits are in use, then refined.
        let mut sels: Vec<Sel> = Vec::with_capacity(wants.len());
        let mut refine = Vec::new();
        for (w, want) in wants.iter().enumerate() {
            let s = counted
                .iter()
                .position(|&x| x == want.task)
                .expect("counted");
            let (bin, beyond) = find(
                &acc.hist[s * HI_BINS..(s + 1) * HI_BINS],
                want.count as u64,
                want.top,
            );
            sels.push(Sel {
                threshold: (bin as u32) << 16,
                ties: want.count - beyond as usize,
                top: want.top,
            });
            if acc.low[s] != 0 {
                refine.push(w);
            }
        }
        if !refine.is_empty() {
            // The refining pass: the lower 16 bits of the magnitudes in each rank's bin.
            let acc = (0..chunks)
                .into_par_iter()
                .fold(
                    || Acc::new(refine.len() * LO_BINS),
                    |mut a, c| {
                        let start = c * CHUNK;
                        let len = CHUNK.min(n - start);
                        load(&bsrc, start, &mut a.b[..len], read_as);
                        let mut loaded = usize::MAX;
                        for (s, &w) in refine.iter().enumerate() {
                            let t = wants[w].task;
                            if loaded != t {
                                load(&sources[tasks[t].src], start, &mut a.x[..len], read_as);
                                delta(&mut a.x[..len], &a.b[..len], q);
                                loaded = t;
                            }
                            let bin = sels[w].threshold >> 16;
                            let h = &mut a.hist[s * LO_BINS..(s + 1) * LO_BINS];
                            for v in &a.x[..len] {
                                let bits = v.abs().to_bits();
                                if bits >> 16 == bin {
                                    h[(bits & 0xFFFF) as usize] += 1;
                                }
                            }
                        }
                        a
                    },
                )
                .reduce(|| Acc::new(refine.len() * LO_BINS), Acc::merge);
            for (s, &w) in refine.iter().enumerate() {
                let sel = &mut sels[w];
                let (lo, beyond) = find(
                    &acc.hist[s * LO_BINS..(s + 1) * LO_BINS],
                    sel.ties as u64,
                    sel.top,
                );
                sel.threshold |= lo as u32;
                sel.ties -= beyond as usize;
            }
        }
        for (w, want) in wants.iter().enumerate() {
            let task = &mut tasks[want.task];
            task.keep = match task.keep {
                Keep::All if want.top => Keep::Top(sels[w]),
                Keep::All => Keep::Window(sels[w], sels[w]),
                Keep::Window(a, _) => Keep::Window(a, sels[w]),
                k => k,
            };
        }
    }
    let t1 = Instant::now();

    // Pass 2, block by block.
    let m = tasks.len();
    let per = 1 + m;
    let block = (block_bytes / (per * 4) / CHUNK).max(1) * CHUNK;
    let osize = out_dtype.size();
    let mut out = vec![0u8; n * osize];
    let mut buf = vec![0f32; per * block.min(n)];
    let mut ties_left: Vec<[usize; 2]> = tasks
        .iter()
        .map(|t| t.keep.sels().map(|s| s.map_or(0, |s| s.ties)))
        .collect();
    let weights: Vec<f32> = tasks.iter().map(|t| t.weight).collect();
    let mix = Mix::new(job, consensus, &weights, q);
    let region = per * CHUNK;
    for bs in (0..n).step_by(block) {
        let be = (bs + block).min(n);
        let buf = &mut buf[..per * (be - bs)];
        // The block's base and task vectors (per chunk: the base, then each task vector), and
        // each chunk's count of magnitudes equal to each threshold.
        let counts: Vec<Vec<[usize; 2]>> = buf
            .par_chunks_mut(region)
            .enumerate()
            .map(|(c, r)| {
                let len = r.len() / per;
                let start = bs + c * CHUNK;
                let (b, rest) = r.split_at_mut(len);
                load(&bsrc, start, b, read_as);
                tasks
                    .iter()
                    .zip(rest.chunks_mut(len))
                    .map(|(task, d)| {
                        load(&sources[task.src], start, d, read_as);
                        delta(d, b, q);
                        task.keep.sels().map(|s| {
                            s.map_or(0, |s| {
                                d.iter()
                                    .filter(|v| v.abs().to_bits() == s.threshold)
                                    .count()
                            })
                        })
                    })
                    .collect()
            })
            .collect();
        // The ties taken, chunk by chunk in order of position.
        let quotas: Vec<Vec<[usize; 2]>> = counts
            .iter()
            .map(|cs| {
                cs.iter()
                    .zip(ties_left.iter_mut())
                    .map(|(c, left)| {
                        let mut q = [0; 2];
                        for k in 0..2 {
                            q[k] = c[k].min(left[k]);
                            left[k] -= q[k];
                        }
                        q
                    })
                    .collect()
            })
            .collect();
        let out_block = &mut out[bs * osize..be * osize];
        buf.par_chunks_mut(region)
            .zip(out_block.par_chunks_mut(CHUNK * osize))
            .zip(quotas.par_iter().zip(counts.par_iter()))
            .enumerate()
            .for_each_init(MixScratch::default, |sc, (c, ((r, o), (quota, count)))| {
                let len = r.len() / per;
                let start = bs + c * CHUNK;
                let (b, rest) = r.split_at_mut(len);
                for (((task, d), quota), count) in
                    tasks.iter().zip(rest.chunks_mut(len)).zip(quota).zip(count)
                {
                    match task.keep {
                        Keep::All => {}
                        Keep::Nothing => d.fill(0.0),
                        // Every tie of the chunk, or none: no count to carry (vectorises).
                        Keep::Top(a) if quota[0] == count[0] => d.iter_mut().for_each(|v| {
                            *v = if v.abs().to_bits() < a.threshold {
                                0.0
                            } else {
                                *v
                            }
                        }),
                        Keep::Top(a) if quota[0] == 0 => d.iter_mut().for_each(|v| {
                            *v = if v.abs().to_bits() <= a.threshold {
                                0.0
                            } else {
                                *v
                            }
                        }),
                        Keep::Top(a) => {
                            let mut left = quota[0];
                            for v in d.iter_mut() {
                                if !a.take(v.abs().to_bits(), &mut left) {
                                    *v = 0.0;
                                }
                            }
                        }
                        Keep::Window(a, z) => {
                            let (mut la, mut lz) = (quota[0], quota[1]);
                            for v in d.iter_mut() {
                                let bits = v.abs().to_bits();
                                let (ina, inz) = (a.take(bits, &mut la), z.take(bits, &mut lz));
                                if !ina || inz {
                                    *v = 0.0;
                                }
                            }
                        }
                        Keep::Random { key, density } => {
                            let mut rng = Rng::at(key, start);
                            for v in d.iter_mut() {
                                if rng.next() >= density {
                                    *v = 0.0;
                                }
                            }
                        }
                    }
                    if let Some(s) = task.scale {
                        d.iter_mut().for_each(|v| *v *= s);
                    }
                    let w = task.weight;
                    d.iter_mut().for_each(|v| *v = q(*v * w));
                }
                let wd: Vec<&[f32]> = rest.chunks(len).collect();
                mix.apply(b, &wd, sc, q);
                cpu::encode_into(b, out_dtype, o);
            });
    }
    tracing::debug!(
        tensor = job.name,
        entries = n,
        select_ms = (t1 - t0).as_millis() as u64,
        merge_ms = t1.elapsed().as_millis() as u64,
        "task arithmetic in blocks of {block} entries"
    );
    Ok(Some(out))
}

impl crate::Merge {
    /// [`gta`] on tensor `t`, straight from the inputs' bytes, where its inputs are of the
    /// output's shape and re-mapped to no other vocabulary. `None`: the caller merges it whole.
    pub(crate) fn stream_gta(&self, t: &crate::Planned) -> Result<Option<Vec<u8>>> {
        if !matches!(self.spec.method, Method::Gta { .. }) || t.vocab {
            return Ok(None);
        }
        let Some(budget) = block_budget() else {
            return Ok(None);
        };
        let mut datas = Vec::with_capacity(t.inputs.len());
        for (m, name) in &t.inputs {
            let ck = &self.models[*m].checkpoint;
            let info = ck.info(name)?;
            let plain = matches!(
                info.dtype,
                DType::F32 | DType::F16 | DType::BF16 | DType::F64
            );
            if info.shape != t.info.shape || !plain {
                return Ok(None);
            }
            datas.push((ck.data(name)?, info.dtype));
        }
        // The pages of an input larger than a block are dropped as they are read.
        let releases: Vec<Box<Release<'_>>> = t
            .inputs
            .iter()
            .map(|(m, _)| {
                let ck = &self.models[*m].checkpoint;
                Box::new(move |b: &[u8]| ck.release(b)) as Box<Release<'_>>
            })
            .collect();
        let sources: Vec<Source<'_>> = datas
            .iter()
            .zip(&releases)
            .map(|((b, d), r)| Source {
                bytes: b,
                dtype: *d,
                release: (b.len() > budget).then_some(&**r),
            })
            .collect();
        let work = self
            .compute_dtype
            .filter(|d| matches!(d, DType::F16 | DType::BF16));
        let job = t.job(work);
        gta(&job, self.spec.method, &sources, work, t.info.dtype, budget)
            .map_err(|e| e.context(self.spec.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{spec, Values};
    use crate::setting::Scalar;

    /// Three inputs of `n` entries: the base, and two fine-tunes. `ties`: changes of a few
    /// distinct sizes on a grid (exact differences, so runs of equal magnitudes cross chunks and
    /// blocks); otherwise changes of every size.
    fn inputs(n: usize, ties: bool) -> Vec<Vec<f32>> {
        let mut s = 0x9E37_79B9u32;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s
        };
        let base: Vec<f32> = (0..n)
            .map(|_| ((next() >> 8) % 512) as f32 / 256.0 - 1.0)
            .collect();
        let mut out = vec![base.clone()];
        for _ in 0..2 {
            out.push(
                base.iter()
                    .map(|&b| {
                        if ties {
                            b + (((next() >> 8) % 9) as f32 - 4.0) / 128.0
                        } else {
                            b + ((next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.037
                        }
                    })
                    .collect(),
            );
        }
        out
    }

    /// The whole-tensor path and the block path (blocks of one chunk) on the same stored
    /// inputs give the same bytes: TIES (threshold in bfloat16 bits and refined in float32
    /// bits, ties across chunks and blocks), breadcrumbs (two ranks), task arithmetic, DARE with
    /// its rescale, densities 0, 0.3, 1; rounding on reading and at every step.
    #[test]
    fn blocks_equal_whole_tensors() {
        let n = 2 * CHUNK + 1234;
        for ties in [true, false] {
            let raw = inputs(n, ties);
            for (stored, work) in [
                (DType::F32, None),
                (DType::BF16, Some(DType::BF16)),
                (DType::F32, Some(DType::BF16)),
                (DType::F16, Some(DType::F16)),
                (DType::BF16, None),
            ] {
                let bytes: Vec<Vec<u8>> = raw
                    .iter()
                    .map(|x| cpu::encode(x, stored).unwrap())
                    .collect();
                let sources: Vec<Source<'_>> = bytes
                    .iter()
                    .map(|b| Source {
                        bytes: b,
                        dtype: stored,
                        release: None,
                    })
                    .collect();
                let tensors: Vec<Vec<f32>> = bytes
                    .iter()
                    .map(|b| {
                        let mut x = cpu::decode(b, stored).unwrap();
                        if let Some(d) = work.filter(|d| *d != stored) {
                            cpu::round_to(&mut x, d);
                        }
                        x
                    })
                    .collect();
                for (name, densities, normalize, lambda, gamma) in [
                    ("ties", [0.3, 0.5], true, 1.0, 0.0),
                    ("ties", [0.3, 1.0], false, 0.7, 0.0),
                    ("ties", [0.0, 0.25], true, 1.0, 0.0),
                    ("task_arithmetic", [1.0, 1.0], false, 1.0, 0.0),
                    ("dare_ties", [0.4, 0.6], false, 1.0, 0.0),
                    ("dare_linear", [0.5, 0.0], true, 1.0, 0.0),
                    ("breadcrumbs_ties", [0.3, 0.6], true, 1.0, 0.01),
                    ("breadcrumbs", [0.8, 0.5], false, 1.0, 0.3),
                    ("breadcrumbs", [0.05, 0.0], false, 1.0, 0.0),
                ] {
                    let spec = spec(name).unwrap();
                    let mut global = Values::new();
                    for p in &spec.global {
                        global.insert(p.name, p.default);
                    }
                    global.insert("normalize", Some(Scalar::Bool(normalize)));
                    global.insert("lambda", Some(Scalar::Num(lambda)));
                    let mut per_model = vec![Values::new()];
                    for (d, w) in densities.iter().zip([0.6, 0.5]) {
                        let mut v = Values::new();
                        v.insert("weight", Some(Scalar::Num(w)));
                        v.insert("density", Some(Scalar::Num(*d)));
                        v.insert("gamma", Some(Scalar::Num(gamma)));
                        per_model.push(v);
                    }
                    let keys = [0, 17, 99];
                    let job = Job {
                        name: "t",
                        shape: &[n],
                        tensors: tensors.clone(),
                        base: Some(0),
                        global: &global,
                        per_model: &per_model,
                        random_keys: &keys,
                        work,
                    };
                    let whole = methods::merge(spec.method, &job).unwrap();
                    let whole = cpu::encode(&whole, stored).unwrap();
                    let case = format!("{name} {densities:?} ties {ties} {stored} work {work:?}");
                    for budget in [1, BLOCK_BYTES] {
                        let blocks = gta(&job, spec.method, &sources, work, stored, budget)
                            .unwrap()
                            .unwrap_or_else(|| panic!("{case}: not taken"));
                        assert_eq!(blocks.len(), whole.len());
                        let first = blocks.iter().zip(&whole).position(|(a, b)| a != b);
                        assert!(
                            first.is_none(),
                            "{case}, budget {budget}: byte {first:?} differs"
                        );
                    }
                }
            }
        }
    }
}
