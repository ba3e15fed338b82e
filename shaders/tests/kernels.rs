//! Every kernel on a real adapter (Mesa lavapipe in CI; `FUSION_DEVICE` picks another) against
//! a plain CPU implementation, over sizes 1, 255, 256, 257 and beyond, for f32, f16 and bf16.
//! A second runtime with clamped limits (tiny bindings, 4 workgroups per dimension, 4 storage
//! buffers) drives the chunking, 2-D dispatch and batching paths on small data.

use std::sync::OnceLock;

use fusion_gpu::{DeviceChoice, LimitClamp, Runtime, RuntimeOptions};
use fusion_kernels as k;
use fusion_plugin_api::{Compute, DType, GpuTensor};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Set-up

fn choice() -> DeviceChoice {
    match std::env::var("FUSION_DEVICE") {
        Ok(s) => s.parse().expect("FUSION_DEVICE"),
        Err(_) => DeviceChoice::Cpu,
    }
}

fn open(options: RuntimeOptions) -> Runtime {
    Runtime::new(&choice(), options).unwrap_or_else(|e| {
        panic!(
            "GPU tests need a wgpu adapter; none could be opened for device `{}` \
             (FUSION_DEVICE, default cpu): {e}\n\
             Install Mesa lavapipe (apt-get install mesa-vulkan-drivers) or set FUSION_DEVICE.",
            choice()
        )
    })
}

/// The device with its own limits.
fn full() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open(RuntimeOptions::default()))
}

/// The device clamped so that 1024 f32 elements fill a binding, 4 workgroups of 32 fill a
/// dimension (a 1024-element chunk needs a 4x4 grid) and `storage_buffers` fill a stage; its
/// tensors are reached through staging copies, as on a discrete GPU, even where the full
/// runtime maps them directly (lavapipe).
fn open_clamped(storage_buffers: u32) -> Runtime {
    open(RuntimeOptions {
        clamp: LimitClamp {
            max_storage_binding_size: Some(4096),
            max_workgroups_per_dimension: Some(4),
            max_storage_buffers_per_stage: Some(storage_buffers),
            max_invocations_per_workgroup: Some(32),
            min_storage_offset_alignment: Some(256),
            ..Default::default()
        },
        unified_memory: Some(false),
        ..Default::default()
    })
}

/// [`open_clamped`] with 4 storage buffers: the multi-input kernels run in batches.
fn clamped() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open_clamped(4))
}

/// [`open_clamped`] with the twelve storage buffers the fused TIES launches bind, so that
/// they run in chunks and over a 2-D grid.
fn clamped_wide() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open_clamped(12))
}

fn runtimes() -> [(&'static str, &'static Runtime); 2] {
    [("full", full()), ("clamped", clamped())]
}

const SIZES: [usize; 6] = [1, 2, 255, 256, 257, 1001];
/// Past one clamped binding (1024 f32) several times, and past the clamped 4x4x32 grid.
const CLAMPED_SIZES: [usize; 4] = [1, 257, 1024, 5003];
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

// Tolerances. Kernels compute in f32 like the references, but the device may contract a*b+c
// into an fma and sums may be associated differently, so f32 results are allowed a few ulps;
// 16-bit outputs are allowed one unit in the last place of the 16-bit type (a rounding
// boundary can fall between two nearly equal f32 values).
const F32_REL: f32 = 4.0 * f32::EPSILON;
const F16_REL: f32 = 1.0 / 1024.0;
const BF16_REL: f32 = 1.0 / 128.0;
/// Reductions of n terms: relative to Σ|terms|.
const REDUCE_REL: f64 = 1e-5;

fn rel_tol(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => F16_REL,
        DType::BF16 => BF16_REL,
        _ => F32_REL,
    }
}

/// Round to `dtype` and back, as stored.
fn quantize(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        other => panic!("{other}"),
    }
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bytes
            .chunks(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("{other}"),
    }
}

fn upload(c: &dyn Compute, dtype: DType, values: &[f32]) -> GpuTensor {
    c.create(dtype, &[values.len()], Some(&encode(dtype, values)))
        .unwrap()
}

fn download(c: &dyn Compute, t: GpuTensor) -> Vec<f32> {
    let (dtype, _) = c.describe(t).unwrap();
    decode(dtype, &c.read(t).unwrap())
}

/// Values in [-2, 2) already representable in `dtype`.
fn random(rng: &mut StdRng, dtype: DType, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| quantize(dtype, rng.random_range(-2.0f32..2.0)))
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1e-3) + 1e-6;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

fn release(c: &dyn Compute, ts: &[GpuTensor]) {
    for &t in ts {
        c.release(t);
    }
}

// ---------------------------------------------------------------------------------------------
// convert

#[test]
fn convert_is_bit_exact_between_all_dtypes() {
    let mut rng = StdRng::seed_from_u64(1);
    let specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.0,
        65520.0,
        1e-8,
        -3e-8,
        6.0e-8,
        2.9802322e-8,
        6.1035156e-5,
        6.097555e-5,
        1.0e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.4e38,
        1.0 + 1.0 / 256.0,
        1.003_906_3,
        0.33333334,
    ];
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &SIZES
        } else {
            &CLAMPED_SIZES
        };
        for &n in sizes {
            let mut values: Vec<f32> = (0..n)
                .map(|_| {
                    rng.random_range(-70000.0f32..70000.0) * 10f32.powi(rng.random_range(-12..1))
                })
                .collect();
            for (v, s) in values.iter_mut().zip(specials) {
                *v = s;
            }
            for from in DTYPES {
                let x = upload(c, from, &values);
                let stored = decode(from, &encode(from, &values));
                for to in DTYPES {
                    let y = k::convert(c, x, to).unwrap();
                    let got = c.read(y).unwrap();
                    let want = encode(to, &stored);
                    assert_eq!(got, want, "{name}: convert {from} -> {to}, n = {n}");
                    c.release(y);
                }
                c.release(x);
            }
        }
    }
    // NaN stays NaN.
    let c = full();
    let x = upload(c, DType::F32, &[f32::NAN, 1.0]);
    for to in [DType::F16, DType::BF16] {
        let y = k::convert(c, x, to).unwrap();
        assert!(download(c, y)[0].is_nan(), "{to}");
        c.release(y);
    }
    c.release(x);
}

// ---------------------------------------------------------------------------------------------
// weighted sum, task vector, scale-and-add

fn cpu_weighted_sum(inputs: &[(Vec<f32>, f32)], n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| inputs.iter().fold(0.0f32, |acc, (x, w)| acc + w * x[i]))
        .collect()
}

#[test]
fn weighted_sum_matches_cpu_for_any_count_and_dtype_mix() {
    let mut rng = StdRng::seed_from_u64(2);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &SIZES
        } else {
            &CLAMPED_SIZES
        };
        for &n in sizes {
            // Mixed dtypes, then all f32 (eight slots or more take the vec4 `weighted_sum_q`).
            let cases = [1usize, 2, 3, 8, 11]
                .map(|count| (count, false))
                .into_iter()
                .chain([(8, true), (11, true), (16, true)]);
            for (count, all_f32) in cases {
                let out_dtypes: &[DType] = if all_f32 { &[DType::F32] } else { &DTYPES };
                for &out_dtype in out_dtypes {
                    let dtypes: Vec<DType> = (0..count)
                        .map(|i| {
                            if all_f32 {
                                DType::F32
                            } else {
                                DTYPES[(i + n) % 3]
                            }
                        })
                        .collect();
                    let data: Vec<(Vec<f32>, f32)> = dtypes
                        .iter()
                        .map(|&dt| (random(&mut rng, dt, n), rng.random_range(-1.0f32..1.0)))
                        .collect();
                    let tensors: Vec<GpuTensor> = data
                        .iter()
                        .zip(&dtypes)
                        .map(|((v, _), &dt)| upload(c, dt, v))
                        .collect();
                    let inputs: Vec<(GpuTensor, f32)> = tensors
                        .iter()
                        .zip(&data)
                        .map(|(&t, (_, w))| (t, *w))
                        .collect();
                    let out = k::weighted_sum(c, &inputs, out_dtype).unwrap();
                    let want: Vec<f32> = cpu_weighted_sum(&data, n)
                        .iter()
                        .map(|&v| quantize(out_dtype, v))
                        .collect();
                    // Sums of many terms round more; scale the f32 allowance by the count.
                    let rel = rel_tol(out_dtype).max(F32_REL * count as f32);
                    assert_close(
                        &format!("{name}: weighted_sum of {count} -> {out_dtype}, n = {n}"),
                        &download(c, out),
                        &want,
                        rel,
                    );
                    c.release(out);
                    release(c, &tensors);
                }
            }
        }
    }
}

#[test]
fn task_vector_scale_add_and_accumulate() {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, c) in runtimes() {
        for &n in &[1usize, 257, 5003] {
            for dt in DTYPES {
                let ft = random(&mut rng, dt, n);
                let base = random(&mut rng, dt, n);
                let (tf, tb) = (upload(c, dt, &ft), upload(c, dt, &base));
                let tv = k::task_vector(c, tf, tb, DType::F32).unwrap();
                let want: Vec<f32> = ft.iter().zip(&base).map(|(a, b)| a - b).collect();
                // One subtraction of exactly representable values: one rounding, exact here.
                assert_eq!(download(c, tv), want, "{name}: task_vector {dt}, n = {n}");
                let merged = k::scale_add(c, tb, tv, 0.3, dt).unwrap();
                let want_m: Vec<f32> = base
                    .iter()
                    .zip(&want)
                    .map(|(b, t)| quantize(dt, b + 0.3 * t))
                    .collect();
                assert_close(
                    &format!("{name}: scale_add {dt}"),
                    &download(c, merged),
                    &want_m,
                    rel_tol(dt),
                );
                // acc += 2 ft - base, in place.
                k::accumulate(c, tv, &[(tf, 2.0), (tb, -1.0)]).unwrap();
                let want_a: Vec<f32> = want
                    .iter()
                    .zip(ft.iter().zip(&base))
                    .map(|(t, (f, b))| t + 2.0 * f - b)
                    .collect();
                assert_close(
                    &format!("{name}: accumulate {dt}"),
                    &download(c, tv),
                    &want_a,
                    3.0 * F32_REL,
                );
                release(c, &[tf, tb, tv, merged]);
            }
        }
    }
    let c = full();
    let a = upload(c, DType::F32, &[1.0; 4]);
    let b = c.create(DType::F32, &[5], None).unwrap();
    let e = k::task_vector(c, a, b, DType::F32).unwrap_err();
    assert!(e.message().contains("shape [5], expected [4]"), "{e}");
    let e = k::weighted_sum_into(c, &[(a, 1.0)], a).unwrap_err();
    assert!(e.message().contains("also an input"), "{e}");
    let i = c.create(DType::I64, &[4], None).unwrap();
    assert!(k::convert(c, i, DType::F32).is_err());
    release(c, &[a, b, i]);
}

/// One launch past 65535 x 256 invocations on the device's own limits: the 1-D job has to be
/// spread over y. 2 x 65535 x 256 + 6 bf16 elements (pairs > 65535 x 256), 64 MiB per tensor.
/// Host-side work is kept to memcpy-speed (a repeated period, spot checks) so the test stays
/// fast in a debug build.
#[test]
fn past_the_real_dispatch_limit() {
    let c = full();
    let l = c.limits();
    let n = 2 * l.max_workgroups_per_dimension as usize * 256 + 6;
    let wg = k::workgroup_size(&l);
    assert!(
        k::dispatch_1d(&l, (n as u64).div_ceil(2), wg)[1] > 1,
        "the job must need a second dimension"
    );
    const PERIOD: usize = 256;
    let value = |i: usize| (i % PERIOD) as f32 * 0.5; // exact in bf16 (8 significant bits)
    let period: Vec<u8> = encode(DType::BF16, &(0..PERIOD).map(value).collect::<Vec<_>>());
    let mut bytes = period.repeat(n / PERIOD + 1);
    bytes.truncate(2 * n);
    let ta = c.create(DType::BF16, &[n], Some(&bytes)).unwrap();
    let tb = c.create(DType::BF16, &[n], Some(&bytes)).unwrap();
    drop(bytes);
    let out = k::weighted_sum(c, &[(ta, 0.5), (tb, 0.25)], DType::BF16).unwrap();
    let got = c.read(out).unwrap();
    for i in (0..n).step_by(9973).chain(n - 8..n) {
        let g = bf16::from_le_bytes([got[2 * i], got[2 * i + 1]]).to_f32();
        assert_eq!(g, quantize(DType::BF16, 0.75 * value(i)), "element {i}");
    }
    let period_sq: f64 = (0..PERIOD).map(|i| f64::from(value(i)).powi(2)).sum();
    let want_dot = period_sq * (n / PERIOD) as f64
        + (0..n % PERIOD)
            .map(|i| f64::from(value(i)).powi(2))
            .sum::<f64>();
    let got_dot = f64::from(k::dot(c, ta, tb).unwrap());
    assert!(
        (got_dot - want_dot).abs() <= REDUCE_REL * want_dot,
        "dot {got_dot} vs {want_dot}"
    );
    release(c, &[ta, tb, out]);
}

// ---------------------------------------------------------------------------------------------
// radix histogram of |x - base| (TIES thresholds without a task-vector tensor)

/// The histogram of `digit` of abs_bits(x - base), counting elements whose bits under
/// `state.mask` equal `state.prefix`; the difference in f32 after decoding, like the kernel.
fn cpu_delta_histogram(
    x: &[f32],
    base: &[f32],
    digit: k::RadixDigit,
    state: k::RadixState,
) -> Vec<u64> {
    let mut h = vec![0u64; digit.bins() as usize];
    for (a, b) in x.iter().zip(base) {
        let bits = (a - b).to_bits() & 0x7fff_ffff;
        if bits & state.mask == state.prefix {
            h[((bits >> digit.shift) & ((1 << digit.bits) - 1)) as usize] += 1;
        }
    }
    h
}

#[test]
fn radix_histogram_delta_counts_the_task_vector_it_never_writes() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &[1, 255, 256, 257, 3000, 600_000]
        } else {
            &[1, 257, 5003]
        };
        for &n in sizes {
            for (xt, bt) in [
                (DType::F32, DType::F32),
                (DType::F16, DType::F32),
                (DType::BF16, DType::BF16),
            ] {
                let base: Vec<f32> = (0..n)
                    .map(|_| quantize(bt, rng.random_range(-1.0f32..1.0)))
                    .collect();
                // Fine-tuned = base + small noise, some entries unchanged (task vector 0).
                let x: Vec<f32> = base
                    .iter()
                    .map(|&b| match rng.random_range(0..5) {
                        0 => quantize(xt, b),
                        _ => quantize(xt, b + rng.random_range(-0.01f32..0.01)),
                    })
                    .collect();
                let (xg, bg) = (upload(c, xt, &x), upload(c, bt, &base));
                // Each plan: the first digit over all elements, then the next restricted to the
                // fullest bin of the first (counted in workgroup memory for bytes and 12 bits,
                // straight into global bins for the 19-bit digit).
                for plan in [k::RADIX_BYTES, k::RADIX_TWO_PASS] {
                    if !k::radix_plan_fits(&c.limits(), plan) {
                        continue;
                    }
                    let start = k::RadixState::new(1);
                    let top = cpu_delta_histogram(&x, &base, plan[0], start);
                    let fullest = (0..top.len()).max_by_key(|&b| top[b]).unwrap() as u32;
                    let narrowed = k::RadixState {
                        prefix: fullest << plan[0].shift,
                        mask: plan[0].mask(),
                        rank: 1,
                    };
                    for (digit, state) in [(plan[0], start), (plan[1], narrowed)] {
                        let hist = c
                            .create(DType::U32, &[2 * digit.bins() as usize], None)
                            .unwrap();
                        k::radix_histogram_delta(
                            c,
                            fusion_plugin_api::Binding::write(hist),
                            xg,
                            bg,
                            digit,
                            state,
                        )
                        .unwrap();
                        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(hist).unwrap());
                        let got: Vec<u64> = (0..digit.bins() as usize)
                            .map(|b| u64::from(words[2 * b]) | (u64::from(words[2 * b + 1]) << 32))
                            .collect();
                        assert!(
                            got == cpu_delta_histogram(&x, &base, digit, state),
                            "{name}: n = {n}, {xt} - {bt}, {digit:?} under {state:?}"
                        );
                        c.release(hist);
                    }
                }
                let short = upload(c, bt, &base[..n.saturating_sub(1).max(1)]);
                let hist = c.create(DType::U32, &[512], None).unwrap();
                if n > 1 {
                    let e = k::radix_histogram_delta(
                        c,
                        fusion_plugin_api::Binding::write(hist),
                        xg,
                        short,
                        k::RADIX_BYTES[0],
                        k::RadixState::new(1),
                    )
                    .unwrap_err();
                    assert!(e.message().contains("elements, the base"), "{e}");
                }
                let e = k::radix_histogram_delta(
                    c,
                    fusion_plugin_api::Binding::write(hist),
                    xg,
                    bg,
                    k::RadixDigit { shift: 24, bits: 9 },
                    k::RadixState::new(1),
                )
                .unwrap_err();
                assert!(e.message().contains("not within the 32 bits"), "{e}");
                c.release(hist);
                release(c, &[xg, bg, short]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// k-th largest magnitude

#[test]
fn radix_bracket_counts_above_and_inside_each_models_range() {
    let mut rng = StdRng::seed_from_u64(44);
    for (name, c, sizes) in [
        ("full", full(), &[1usize, 255, 256, 257, 3001][..]),
        ("clamped to 12 buffers", clamped_wide(), &[1, 257, 5003][..]),
    ] {
        for &n in sizes {
            for (xt, bt, models) in [
                (DType::F32, DType::F32, 8),
                (DType::F16, DType::F32, 3),
                (DType::BF16, DType::BF16, 1),
                (DType::F32, DType::F16, 6),
            ] {
                let label = format!("{name}: n = {n}, {models} x {xt} - {bt}");
                let base_v = random(&mut rng, bt, n);
                let rows: Vec<Vec<f32>> = (0..models).map(|_| random(&mut rng, xt, n)).collect();
                let base = upload(c, bt, &base_v);
                let xs: Vec<GpuTensor> = rows.iter().map(|r| upload(c, xt, r)).collect();
                // |x - base| bits on the CPU, sorted from the top.
                let bits: Vec<Vec<u32>> = rows
                    .iter()
                    .map(|r| {
                        let mut b: Vec<u32> = r
                            .iter()
                            .zip(&base_v)
                            .map(|(&x, &b)| (x - b).abs().to_bits())
                            .collect();
                        b.sort_unstable_by(|a, b| b.cmp(a));
                        b
                    })
                    .collect();
                // Brackets around a rank (model k's at rank k·n/8), of a few values, one
                // empty; with a gap of unused words between models.
                let rank = |k: usize| (k * n / 8).max(1) as u64;
                let mut offset = 5u64;
                let brackets: Vec<k::RadixBracket> = (0..models)
                    .map(|m| {
                        let r = rank(m) as usize;
                        let hi_at = r.saturating_sub(3).max(1);
                        let lo_at = (r + 2).min(n);
                        let (lo, hi) = if m == 2 {
                            (bits[m][r - 1], bits[m][r - 1])
                        } else {
                            // Narrow enough for the counts to fit one binding (the
                            // clamped one holds 1024 words), still around the rank's value.
                            let v = bits[m][r - 1];
                            let half = if name == "full" { 50_000 } else { 25 };
                            (
                                bits[m][lo_at - 1].max(v.saturating_sub(half)),
                                (bits[m][hi_at - 1] + 1).min(v + half),
                            )
                        };
                        let b = k::RadixBracket { lo, hi, offset };
                        offset += b.words() + 3;
                        b
                    })
                    .collect();
                let counts = c.create(DType::U32, &[offset as usize], None).unwrap();
                k::radix_bracket_delta(c, counts, &xs, base, &brackets).unwrap();
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(counts).unwrap());
                let mut want = vec![0u32; offset as usize];
                for (m, b) in brackets.iter().enumerate() {
                    let at = b.offset as usize;
                    for &v in &bits[m] {
                        if v >= b.hi {
                            want[at] += 1;
                        } else if v >= b.lo {
                            want[at + 2 + 2 * (v - b.lo) as usize] += 1;
                        }
                    }
                }
                assert_eq!(words, want, "{label}: counts");
                for (m, b) in brackets.iter().enumerate() {
                    let w = &words[b.offset as usize..(b.offset + b.words()) as usize];
                    let r = rank(m);
                    let got = b.resolve(w, r);
                    if m == 2 {
                        assert_eq!(got, None, "{label}: an empty bracket settles nothing");
                    } else {
                        assert_eq!(got, Some(bits[m][r as usize - 1]), "{label}: model {m}");
                    }
                    // Ranks outside the bracket are not settled by it.
                    let above = u64::from(w[0]);
                    if above > 0 {
                        assert_eq!(b.resolve(w, above), None, "{label}: model {m}");
                    }
                    let inside: u64 = w[2..].iter().step_by(2).map(|&c| u64::from(c)).sum();
                    assert_eq!(b.resolve(w, above + inside + 1), None, "{label}: model {m}");
                }
                release(c, &[counts, base]);
                release(c, &xs);
            }
        }
    }
    // A bracket wider than the limit, one past the counts, nine models: errors that say so.
    let c = full();
    let x = upload(c, DType::F32, &[1.0]);
    let counts = c.create(DType::U32, &[4], None).unwrap();
    let wide = k::RadixBracket {
        lo: 0,
        hi: 1 << 21,
        offset: 0,
    };
    let e = k::radix_bracket_delta(c, counts, &[x], x, &[wide]).unwrap_err();
    assert!(e.message().contains("wider than"), "{e}");
    let past = k::RadixBracket {
        lo: 0,
        hi: 2,
        offset: 0,
    };
    let e = k::radix_bracket_delta(c, counts, &[x], x, &[past]).unwrap_err();
    assert!(e.message().contains("past the 4 words"), "{e}");
    let e = k::radix_bracket_delta(c, counts, &[x; 9], x, &[past; 9]).unwrap_err();
    assert!(e.message().contains("1 to 8 models"), "{e}");
    release(c, &[x, counts]);
}

fn cpu_kth_largest(values: &[f32], k: usize) -> f32 {
    let mut m: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    m.sort_by(|a, b| b.total_cmp(a));
    m[k - 1]
}

#[test]
fn kth_largest_magnitude_matches_a_sort_across_tensors() {
    let mut rng = StdRng::seed_from_u64(4);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            // 600 000 is past HISTOGRAM_MAX_WORKGROUPS x 256 invocations x 2 elements, so the
            // histogram's invocations loop (grid stride).
            &[1, 255, 256, 257, 3000, 600_000]
        } else {
            &[1, 257, 5003]
        };
        for &n in sizes {
            // Three tensors of different dtypes and sizes; values from a small set so that ties
            // at the threshold are common, plus zeros and negative zeros.
            let parts: Vec<(DType, Vec<f32>)> = DTYPES
                .iter()
                .enumerate()
                .map(|(j, &dt)| {
                    let len = n + j * 7;
                    let v = (0..len)
                        .map(|_| match rng.random_range(0..10) {
                            0 => 0.0,
                            1 => -0.0,
                            2..=4 => quantize(dt, rng.random_range(-1.0f32..1.0)),
                            x => (x as f32 - 6.0) * 0.5,
                        })
                        .collect();
                    (dt, v)
                })
                .collect();
            let tensors: Vec<GpuTensor> = parts.iter().map(|(dt, v)| upload(c, *dt, v)).collect();
            let all: Vec<f32> = parts.iter().flat_map(|(_, v)| v.clone()).collect();
            let total = all.len();
            for kk in [1, 2, total / 5 + 1, total / 2, total - 1, total]
                .into_iter()
                .filter(|&x| x >= 1)
            {
                let want = cpu_kth_largest(&all, kk).to_bits();
                let got = k::kth_largest_magnitude(c, &tensors, kk as u64).unwrap();
                assert_eq!(got.to_bits(), want, "{name}: n = {n}, k = {kk}");
                // Both digit plans, whatever the size picks.
                for plan in [k::RADIX_BYTES, k::RADIX_TWO_PASS] {
                    if !k::radix_plan_fits(&c.limits(), plan) {
                        assert_eq!(name, "clamped");
                        continue;
                    }
                    let got = k::kth_largest_magnitude_with(c, &tensors, kk as u64, plan).unwrap();
                    assert_eq!(got.to_bits(), want, "{name}: n = {n}, k = {kk}, {plan:?}");
                }
            }
            assert!(k::kth_largest_magnitude(c, &tensors, 0).is_err());
            assert!(k::kth_largest_magnitude(c, &tensors, total as u64 + 1).is_err());
            release(c, &tensors);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Breadcrumbs

/// mergekit `magnitude_outliers`: ascending argsort of |x|, keep positions n_bot .. n - n_top
/// (nothing when n_top == 0).
fn cpu_breadcrumbs(x: &[f32], density: f64, gamma: f64) -> Vec<f32> {
    let (n_bot, n_top) = k::breadcrumbs_counts(x.len() as u64, density, gamma);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()));
    let mut out = vec![0.0; x.len()];
    if n_top > 0 {
        for &i in &order[n_bot as usize..x.len() - n_top as usize] {
            out[i] = x[i];
        }
    }
    out
}

#[test]
fn breadcrumbs_matches_mergekit_without_ties() {
    let mut rng = StdRng::seed_from_u64(9);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &[1, 50, 255, 256, 257, 1001]
        } else {
            &[257, 5003]
        };
        for &n in sizes {
            // Distinct magnitudes (a shuffled ramp), so argsort order is unambiguous.
            let mut x: Vec<f32> = (0..n)
                .map(|i| (i as f32 + 1.0) * 0.001 * if i % 3 == 0 { -1.0 } else { 1.0 })
                .collect();
            for i in (1..n).rev() {
                x.swap(i, rng.random_range(0..=i));
            }
            let t = upload(c, DType::F32, &x);
            for (density, gamma) in [(0.9, 0.01), (0.5, 0.1), (0.995, 0.01), (1.0, 0.01)] {
                let want = if density >= 1.0 {
                    x.clone()
                } else {
                    cpu_breadcrumbs(&x, density, gamma)
                };
                let out = k::breadcrumbs(c, t, density, gamma, DType::F32).unwrap();
                assert_eq!(
                    download(c, out),
                    want,
                    "{name}: n = {n}, density {density}, gamma {gamma}"
                );
                c.release(out);
            }
            c.release(t);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TIES

/// FusionBench's TIES on the flattened [T, D] matrix, transcribed from
/// `ties_merging_utils.py` (topk_values_mask, resolve_sign, disjoint_merge).
fn cpu_ties(rows: &[Vec<f32>], k_param: f64, merge: k::TiesMerge) -> Vec<f32> {
    let d = rows[0].len();
    let trimmed: Vec<Vec<f32>> = rows
        .iter()
        .map(|row| {
            let frac = if k_param > 1.0 {
                k_param / 100.0
            } else {
                k_param
            };
            let kk = d - (d as f64 * frac) as usize;
            let mut m: Vec<f32> = row.iter().map(|v| v.abs()).collect();
            m.sort_by(f32::total_cmp);
            let kth = m[kk - 1];
            row.iter()
                .map(|&v| if v.abs() >= kth { v } else { 0.0 })
                .collect()
        })
        .collect();
    let sum: Vec<f32> = (0..d)
        .map(|i| trimmed.iter().map(|r| r[i]).sum::<f32>())
        .collect();
    let sign = |v: f32| {
        if v > 0.0 {
            1.0f32
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let mut s: Vec<f32> = sum.iter().map(|&v| sign(v)).collect();
    let majority = sign(s.iter().sum());
    for v in &mut s {
        if *v == 0.0 {
            *v = majority;
        }
    }
    (0..d)
        .map(|i| {
            let kept: Vec<f32> = trimmed
                .iter()
                .map(|r| r[i])
                .filter(|&v| if s[i] > 0.0 { v > 0.0 } else { v < 0.0 })
                .collect();
            match merge {
                k::TiesMerge::Sum => kept.iter().sum(),
                k::TiesMerge::Mean => kept.iter().sum::<f32>() / (kept.len().max(1) as f32),
                k::TiesMerge::Max => kept.iter().fold(0.0f32, |m, v| m.max(v.abs())) * s[i],
            }
        })
        .collect()
}

/// The plugin-side TIES flow, first sweep: trim thresholds per model over all its keys, then
/// the majority sign from the votes of all keys.
fn gpu_ties_prepare(c: &dyn Compute, models: &[Vec<GpuTensor>], k_param: f64) -> (Vec<f32>, f32) {
    let thresholds: Vec<f32> = models
        .iter()
        .map(|keys| k::ties_threshold(c, keys, k_param).unwrap())
        .collect();
    let votes = k::SignVotes::new(c).unwrap();
    for key in 0..models[0].len() {
        let column: Vec<GpuTensor> = models.iter().map(|m| m[key]).collect();
        votes.add(&column, &thresholds).unwrap();
    }
    (thresholds, votes.majority_sign().unwrap())
}

/// Second sweep: the merge of each key.
fn gpu_ties_merge(
    c: &dyn Compute,
    models: &[Vec<GpuTensor>],
    (thresholds, majority): &(Vec<f32>, f32),
    merge: k::TiesMerge,
    dtype: DType,
) -> Vec<Vec<f32>> {
    (0..models[0].len())
        .map(|key| {
            let column: Vec<GpuTensor> = models.iter().map(|m| m[key]).collect();
            let t = k::ties_merge(c, &column, thresholds, *majority, merge, dtype).unwrap();
            let v = download(c, t);
            c.release(t);
            v
        })
        .collect()
}

fn gpu_ties(
    c: &dyn Compute,
    models: &[Vec<GpuTensor>],
    k_param: f64,
    merge: k::TiesMerge,
    dtype: DType,
) -> Vec<Vec<f32>> {
    gpu_ties_merge(
        c,
        models,
        &gpu_ties_prepare(c, models, k_param),
        merge,
        dtype,
    )
}

#[test]
fn ties_matches_fusionbench_for_every_merge_function() {
    let mut rng = StdRng::seed_from_u64(5);
    for (name, c) in runtimes() {
        // (models, key sizes): 3 models in one batch; 10 models span batches on both runtimes.
        let cases: &[(usize, &[usize])] = if name == "full" {
            &[(3, &[1, 255, 257]), (10, &[256, 1001])]
        } else {
            &[(3, &[257, 2100]), (10, &[1, 1500])]
        };
        for &(t, key_sizes) in cases {
            for in_dtype in DTYPES {
                let rows: Vec<Vec<Vec<f32>>> = (0..t)
                    .map(|_| {
                        key_sizes
                            .iter()
                            .map(|&n| random(&mut rng, in_dtype, n))
                            .collect()
                    })
                    .collect();
                let models: Vec<Vec<GpuTensor>> = rows
                    .iter()
                    .map(|keys| keys.iter().map(|v| upload(c, in_dtype, v)).collect())
                    .collect();
                let flat: Vec<Vec<f32>> = rows.iter().map(|keys| keys.concat()).collect();
                let prepared = gpu_ties_prepare(c, &models, 20.0);
                let out_dtypes: &[DType] = if in_dtype == DType::F32 {
                    &[DType::F32]
                } else {
                    &[DType::F32, in_dtype]
                };
                for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
                    for &out_dtype in out_dtypes {
                        let want: Vec<f32> = cpu_ties(&flat, 20.0, merge)
                            .iter()
                            .map(|&v| quantize(out_dtype, v))
                            .collect();
                        let got: Vec<f32> =
                            gpu_ties_merge(c, &models, &prepared, merge, out_dtype).concat();
                        let rel = rel_tol(out_dtype).max(F32_REL * t as f32);
                        assert_close(
                            &format!("{name}: ties {merge:?} T={t} {in_dtype}->{out_dtype}"),
                            &got,
                            &want,
                            rel,
                        );
                    }
                }
                for m in &models {
                    release(c, m);
                }
            }
        }
    }
}

/// The streamed flow a plugin uses when it holds one model at a time: the elected sum built by
/// `ties_elect_delta` from fine-tuned and base tensors, and the disjoint merge accumulated by
/// `TiesAccumulator` (task vectors and fine-tuned/base pairs mixed), must equal the batched
/// kernels over task vectors bit for bit (same f32 additions in the same order).
#[test]
fn streamed_ties_from_fine_tuned_tensors_equals_the_batched_merge() {
    let mut rng = StdRng::seed_from_u64(12);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &[1, 255, 257, 3001]
        } else {
            &[1, 257, 2100]
        };
        for &n in sizes {
            for (xt, bt, models) in [
                (DType::F32, DType::F32, 3),
                (DType::F16, DType::F16, 10),
                (DType::BF16, DType::F32, 4),
            ] {
                let base_v = random(&mut rng, bt, n);
                let base = upload(c, bt, &base_v);
                let xs: Vec<GpuTensor> = (0..models)
                    .map(|_| {
                        let v: Vec<f32> = base_v
                            .iter()
                            .map(|&b| quantize(xt, b + rng.random_range(-0.5f32..0.5)))
                            .collect();
                        upload(c, xt, &v)
                    })
                    .collect();
                let tvs: Vec<GpuTensor> = xs
                    .iter()
                    .map(|&x| k::task_vector(c, x, base, DType::F32).unwrap())
                    .collect();
                let thresholds: Vec<f32> = (0..models).map(|i| 0.05 * i as f32).collect();
                let s_batched = k::ties_elected_sum(c, &tvs, &thresholds).unwrap();
                let s = c.create(DType::F32, &[n], None).unwrap();
                for (i, &x) in xs.iter().enumerate() {
                    k::ties_elect_delta(c, s, x, base, thresholds[i], i > 0).unwrap();
                }
                let label = format!("{name}: n = {n}, {models} x {xt} - {bt}");
                assert_eq!(
                    c.read(s).unwrap(),
                    c.read(s_batched).unwrap(),
                    "{label}: elected sum"
                );
                for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
                    for majority in [1.0f32, -1.0] {
                        let want = k::ties_merge(c, &tvs, &thresholds, majority, merge, DType::F32)
                            .unwrap();
                        let mut acc = k::TiesAccumulator::new(c, &[n], merge, majority).unwrap();
                        for i in 0..models {
                            if i % 2 == 0 {
                                acc.add(s, tvs[i], thresholds[i]).unwrap();
                            } else {
                                acc.add_delta(s, xs[i], base, thresholds[i]).unwrap();
                            }
                        }
                        let got = acc.finish(s, DType::F32).unwrap();
                        assert_eq!(
                            c.read(got).unwrap(),
                            c.read(want).unwrap(),
                            "{label}: {merge:?}, majority {majority}"
                        );
                        release(c, &[got, want]);
                    }
                }
                release(c, &[s, s_batched, base]);
                release(c, &xs);
                release(c, &tvs);
            }
        }
    }
}

#[test]
fn ties_zero_sums_take_the_majority_sign() {
    let c = full();
    // Key 0 decides the majority (+); key 1 has opposite values that cancel (S = 0), so the
    // majority sign picks the positive entries.
    let m1 = vec![
        upload(c, DType::F32, &[1.0, 2.0, 3.0]),
        upload(c, DType::F32, &[0.5, -0.5]),
    ];
    let m2 = vec![
        upload(c, DType::F32, &[1.0, 2.0, 3.0]),
        upload(c, DType::F32, &[-0.5, 0.5]),
    ];
    let models = vec![m1, m2];
    let rows: Vec<Vec<f32>> = vec![
        vec![1.0, 2.0, 3.0, 0.5, -0.5],
        vec![1.0, 2.0, 3.0, -0.5, 0.5],
    ];
    for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
        let got = gpu_ties(c, &models, 1.0 - 1e-9, merge, DType::F32).concat();
        assert_eq!(got, cpu_ties(&rows, 1.0 - 1e-9, merge), "{merge:?}");
        assert_eq!(&got[3..], &[0.5, 0.5], "{merge:?}");
    }
    // A tied vote leaves the majority at 0, so S = 0 keeps s = 0, and FusionBench's
    // `where(s > 0, v > 0, v < 0)` then keeps the negative entries: sum/mean -0.5, max 0.
    let tied = vec![
        vec![upload(c, DType::F32, &[1.0, -1.0, 0.5])],
        vec![upload(c, DType::F32, &[1.0, -1.0, -0.5])],
    ];
    let tied_rows = vec![vec![1.0, -1.0, 0.5], vec![1.0, -1.0, -0.5]];
    for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
        let got = gpu_ties(c, &tied, 1.0 - 1e-9, merge, DType::F32).concat();
        assert_eq!(got, cpu_ties(&tied_rows, 1.0 - 1e-9, merge), "{merge:?}");
        assert_eq!(
            got[2],
            if merge == k::TiesMerge::Max {
                0.0
            } else {
                -0.5
            },
            "{merge:?}"
        );
    }
    for m in &tied {
        release(c, m);
    }
    // A threshold of 100% keeps everything (FusionBench would fail on kthvalue(0)).
    assert_eq!(k::ties_threshold(c, &models[0], 100.0).unwrap(), 0.0);
    for m in &models {
        release(c, m);
    }
}

/// Each row with the entries below its threshold in magnitude set to zero (TIES's trim).
fn cpu_trimmed(rows: &[Vec<f32>], thresholds: &[f32]) -> Vec<Vec<f32>> {
    rows.iter()
        .zip(thresholds)
        .map(|(r, &thr)| {
            r.iter()
                .map(|&v| if v.abs() >= thr { v } else { 0.0 })
                .collect()
        })
        .collect()
}

/// The disjoint merge of already trimmed rows with a given majority sign (FusionBench's, as in
/// `cpu_ties`), and the elected sums.
fn cpu_disjoint(trimmed: &[Vec<f32>], majority: f32, merge: k::TiesMerge) -> (Vec<f32>, Vec<f32>) {
    let d = trimmed[0].len();
    let sums: Vec<f32> = (0..d)
        .map(|i| trimmed.iter().map(|r| r[i]).sum::<f32>())
        .collect();
    let merged = sums
        .iter()
        .enumerate()
        .map(|(i, &sum)| {
            let s = if sum > 0.0 {
                1.0f32
            } else if sum < 0.0 {
                -1.0
            } else {
                majority
            };
            let kept: Vec<f32> = trimmed
                .iter()
                .map(|r| r[i])
                .filter(|&v| if s > 0.0 { v > 0.0 } else { v < 0.0 })
                .collect();
            match merge {
                k::TiesMerge::Sum => kept.iter().sum(),
                k::TiesMerge::Mean => kept.iter().sum::<f32>() / (kept.len().max(1) as f32),
                k::TiesMerge::Max => kept.iter().fold(0.0f32, |m, v| m.max(v.abs())) * s,
            }
        })
        .collect();
    (merged, sums)
}

/// Whether entry `i` is one another majority sign would change (what `ties_undecided`
/// counts): its elected sum is 0 and, but for `max`, some trimmed entry agrees with `majority`.
fn cpu_undecided(
    trimmed: &[Vec<f32>],
    sums: &[f32],
    i: usize,
    majority: f32,
    merge: k::TiesMerge,
) -> bool {
    let agrees = |v: f32| if majority > 0.0 { v > 0.0 } else { v < 0.0 };
    sums[i] == 0.0 && (merge == k::TiesMerge::Max || trimmed.iter().any(|r| agrees(r[i])))
}

#[test]
fn ties_undecided_counts_what_another_majority_would_change() {
    let mut rng = StdRng::seed_from_u64(21);
    for (name, c) in runtimes() {
        for &n in &SIZES {
            // Values from a small set, so that elected sums cancel to exactly 0 often.
            let rows: Vec<Vec<f32>> = (0..3)
                .map(|_| {
                    (0..n)
                        .map(|_| [-1.0f32, -0.5, 0.0, 0.5, 1.0][rng.random_range(0..5)])
                        .collect()
                })
                .collect();
            let tvs: Vec<GpuTensor> = rows.iter().map(|r| upload(c, DType::F32, r)).collect();
            let thresholds: Vec<f32> = tvs
                .iter()
                .map(|&t| k::ties_threshold(c, &[t], 60.0).unwrap())
                .collect();
            let trimmed = cpu_trimmed(&rows, &thresholds);
            for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
                let (plus, sums) = cpu_disjoint(&trimmed, 1.0, merge);
                let want = (0..n)
                    .filter(|&i| {
                        sums[i] == 0.0
                            && (merge == k::TiesMerge::Max || trimmed.iter().any(|r| r[i] > 0.0))
                    })
                    .count() as u64;
                // Cancellations are common with these values: the count is not trivially 0.
                assert!(n < 255 || want > 0, "{name}: n = {n}, {merge:?}");
                // What the count promises: outside the counted entries, any other majority
                // gives the same merged values, bit for bit.
                for majority in [-1.0, 0.0] {
                    let (other, _) = cpu_disjoint(&trimmed, majority, merge);
                    let differ = (0..n)
                        .filter(|&i| plus[i].to_bits() != other[i].to_bits())
                        .count();
                    assert!(differ as u64 <= want, "{name}: n = {n}, {merge:?}");
                }
                let s = k::ties_elected_sum(c, &tvs, &thresholds).unwrap();
                let mut acc = k::TiesAccumulator::new(c, &[n], merge, 1.0).unwrap();
                for (&tv, &thr) in tvs.iter().zip(&thresholds) {
                    acc.add(s, tv, thr).unwrap();
                }
                let counters = c.create(DType::U32, &[6], None).unwrap();
                acc.count_undecided(s, counters, 1).unwrap();
                let e = acc.count_undecided(s, counters, 3).unwrap_err();
                assert!(e.message().contains("for slot 3"), "{e}");
                let merged = acc.finish(s, DType::F32).unwrap();
                assert_eq!(download(c, merged), plus, "{name}: n = {n}, {merge:?}");
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(counters).unwrap());
                assert_eq!(
                    words[2] as u64 | (words[3] as u64) << 32,
                    want,
                    "{name}: n = {n}, {merge:?}"
                );
                assert_eq!([words[0], words[1], words[4], words[5]], [0; 4]);
                release(c, &[s, counters, merged]);
            }
            release(c, &tvs);
        }
    }
}

#[test]
fn fused_ties_launches_equal_the_per_model_merge_and_the_cpu() {
    let mut rng = StdRng::seed_from_u64(33);
    let lambda = 0.3f32;
    for (name, c, sizes) in [
        ("full", full(), &[1usize, 255, 256, 257, 3001][..]),
        ("clamped to 12 buffers", clamped_wide(), &[1, 257, 5003][..]),
    ] {
        for &n in sizes {
            for (xt, bt, models) in [
                (DType::F32, DType::F32, 8),
                (DType::F16, DType::F16, 3),
                (DType::BF16, DType::F32, 1),
                (DType::F32, DType::BF16, 5),
            ] {
                let label = format!("{name}: n = {n}, {models} x {xt} - {bt}");
                let base_v = random(&mut rng, bt, n);
                // Values on a coarse grid, so that elected sums cancel to exactly 0 at times.
                let rows: Vec<Vec<f32>> = (0..models)
                    .map(|_| {
                        base_v
                            .iter()
                            .map(|&b| quantize(xt, b + 0.25 * rng.random_range(-2i32..=2) as f32))
                            .collect()
                    })
                    .collect();
                let base = upload(c, bt, &base_v);
                let xs: Vec<GpuTensor> = rows.iter().map(|r| upload(c, xt, r)).collect();
                let thresholds: Vec<f32> = (0..models).map(|i| 0.2 * (i % 3) as f32).collect();
                // CPU: task vectors in f32 after decoding, trimmed at |v| >= threshold.
                let taus: Vec<Vec<f32>> = rows
                    .iter()
                    .map(|r| r.iter().zip(&base_v).map(|(&x, &b)| x - b).collect())
                    .collect();
                let trimmed = cpu_trimmed(&taus, &thresholds);

                let votes = k::SignVotes::new(c).unwrap();
                let s = k::ties_elected_sum_delta(c, &xs, base, &thresholds, Some(&votes)).unwrap();
                let s_ref = c.create(DType::F32, &[n], None).unwrap();
                for (i, &x) in xs.iter().enumerate() {
                    k::ties_elect_delta(c, s_ref, x, base, thresholds[i], i > 0).unwrap();
                }
                assert_eq!(c.read(s).unwrap(), c.read(s_ref).unwrap(), "{label}: S");
                let (_, cpu_sums) = cpu_disjoint(&trimmed, 1.0, k::TiesMerge::Sum);
                assert_close(&label, &download(c, s), &cpu_sums, F32_REL);
                // The signs of S, counted with it (the padding past n is not).
                let s_exact = download(c, s_ref);
                let pos = s_exact.iter().filter(|&&v| v > 0.0).count() as u64;
                let neg = s_exact.iter().filter(|&&v| v < 0.0).count() as u64;
                assert_eq!(votes.counts().unwrap(), (pos, neg), "{label}: votes");

                for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
                    for majority in [1.0f32, -1.0] {
                        for out_dtype in [DType::F32, bt] {
                            let what =
                                format!("{label}: {merge:?}, majority {majority}, {out_dtype}");
                            let counters = c.create(DType::U32, &[4], None).unwrap();
                            let m = k::ScaledTiesMerge {
                                thresholds: &thresholds,
                                majority,
                                merge,
                                lambda,
                                dtype: out_dtype,
                            };
                            let got = k::ties_merge_delta_scaled(c, s, &xs, base, m, (counters, 1))
                                .unwrap();
                            // The per-model launches it replaces, bit for bit.
                            let ref_counters = c.create(DType::U32, &[4], None).unwrap();
                            let mut acc =
                                k::TiesAccumulator::new(c, &[n], merge, majority).unwrap();
                            for (i, &x) in xs.iter().enumerate() {
                                acc.add_delta(s, x, base, thresholds[i]).unwrap();
                            }
                            acc.count_undecided(s, ref_counters, 1).unwrap();
                            let merged = acc.finish(s, DType::F32).unwrap();
                            let want =
                                k::weighted_sum(c, &[(base, 1.0), (merged, lambda)], out_dtype)
                                    .unwrap();
                            assert_eq!(c.read(got).unwrap(), c.read(want).unwrap(), "{what}");
                            assert_eq!(
                                c.read(counters).unwrap(),
                                c.read(ref_counters).unwrap(),
                                "{what}: undecided"
                            );
                            // And the CPU's formula.
                            let (cpu_merged, sums) = cpu_disjoint(&trimmed, majority, merge);
                            let cpu_out: Vec<f32> = base_v
                                .iter()
                                .zip(&cpu_merged)
                                .map(|(&b, &v)| quantize(out_dtype, b + lambda * v))
                                .collect();
                            assert_close(&what, &download(c, got), &cpu_out, rel_tol(out_dtype));
                            let undecided = (0..n)
                                .filter(|&i| cpu_undecided(&trimmed, &sums, i, majority, merge))
                                .count() as u32;
                            if n >= 255 && models > 1 {
                                assert!(undecided > 0, "{what}: no cancellations to count");
                            }
                            let words: Vec<u32> =
                                bytemuck::pod_collect_to_vec(&c.read(counters).unwrap());
                            assert_eq!(words, [0, 0, undecided, 0], "{what}: undecided");
                            // Election and merge from the inputs alone (one launch where all
                            // is f32): the same bits, votes and count.
                            let one_votes = k::SignVotes::new(c).unwrap();
                            let one_counters = c.create(DType::U32, &[4], None).unwrap();
                            let one = k::ties_elect_merge_delta(
                                c,
                                &xs,
                                base,
                                m,
                                Some(&one_votes),
                                (one_counters, 1),
                            )
                            .unwrap();
                            assert_eq!(c.read(one).unwrap(), c.read(got).unwrap(), "{what}: one");
                            assert_eq!(one_votes.counts().unwrap(), (pos, neg), "{what}: votes");
                            assert_eq!(
                                c.read(one_counters).unwrap(),
                                c.read(counters).unwrap(),
                                "{what}: one, undecided"
                            );
                            release(c, &[got, want, merged, counters, ref_counters]);
                            release(c, &[one, one_counters]);
                        }
                    }
                }
                release(c, &[s, s_ref, base]);
                release(c, &xs);
            }
        }
    }
    // Nine models, or a device with fewer storage buffers, are errors that say so.
    let c = full();
    let xs: Vec<GpuTensor> = (0..9).map(|_| upload(c, DType::F32, &[1.0])).collect();
    let e = k::ties_elected_sum_delta(c, &xs, xs[0], &[0.0; 9], None).unwrap_err();
    assert!(e.message().contains("1 to 8 models"), "{e}");
    release(c, &xs);
    let c = clamped();
    assert!(!k::ties_fused_fits(c, 2));
    let x = upload(c, DType::F32, &[1.0]);
    let e = k::ties_elected_sum_delta(c, &[x], x, &[0.0], None).unwrap_err();
    assert!(e.message().contains("the device allows 4"), "{e}");
    release(c, &[x]);
}

/// [`open_clamped`] with the fourteen storage buffers of the bracketed TIES pass.
fn clamped_bracket() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open_clamped(14))
}

#[test]
fn bracketed_ties_pass_counts_merges_and_marks_what_its_brackets_leave_open() {
    let mut rng = StdRng::seed_from_u64(35);
    let lambda = 0.3f32;
    let bracket_around = |v: f32, offset: u64| k::RadixBracket {
        lo: v.to_bits() - 2,
        hi: v.to_bits() + 3,
        offset,
    };
    for (name, c, sizes) in [
        ("full", full(), &[1usize, 255, 257, 3001][..]),
        (
            "clamped to 14 buffers",
            clamped_bracket(),
            &[1, 257, 5003][..],
        ),
    ] {
        assert!(k::ties_bracket_merge_fits(c, 8));
        for &n in sizes {
            for models in [8usize, 3, 1] {
                let label = format!("{name}: n = {n}, {models} models");
                let base_v = random(&mut rng, DType::F32, n);
                // Task vectors on a grid: 0 is below every bracket, 0.25 inside the brackets of
                // even models and below those of odd ones, 0.5 above the former and inside the
                // latter; sums cancel to exactly 0 at times.
                let taus: Vec<Vec<f32>> = (0..models)
                    .map(|_| {
                        (0..n)
                            .map(|_| 0.25 * rng.random_range(-2i32..=2) as f32)
                            .collect()
                    })
                    .collect();
                let rows: Vec<Vec<f32>> = taus
                    .iter()
                    .map(|t| t.iter().zip(&base_v).map(|(&t, &b)| b + t).collect())
                    .collect();
                // What the kernels see: x - base in f32.
                let taus: Vec<Vec<f32>> = rows
                    .iter()
                    .map(|r| r.iter().zip(&base_v).map(|(&x, &b)| x - b).collect())
                    .collect();
                let mut brackets = Vec::new();
                let mut words = 0u64;
                for m in 0..models {
                    let b = bracket_around(if m % 2 == 0 { 0.25 } else { 0.5 }, words);
                    words += b.words();
                    brackets.push(b);
                }
                let tops: Vec<f32> = brackets.iter().map(|b| f32::from_bits(b.hi)).collect();
                let base = upload(c, DType::F32, &base_v);
                let xs: Vec<GpuTensor> = rows.iter().map(|r| upload(c, DType::F32, r)).collect();
                // The CPU: dirty positions, and the merge trimmed at the brackets' tops.
                let inside = |m: usize, v: f32| {
                    let bits = v.abs().to_bits();
                    brackets[m].lo <= bits && bits < brackets[m].hi
                };
                let dirty: Vec<bool> = (0..n)
                    .map(|i| (0..models).any(|m| inside(m, taus[m][i])))
                    .collect();
                let trimmed = cpu_trimmed(&taus, &tops);
                if n > 255 {
                    assert!(dirty.iter().any(|&d| d) && dirty.iter().any(|&d| !d));
                }
                let ref_counts = c.create(DType::U32, &[words as usize], None).unwrap();
                k::radix_bracket_delta(c, ref_counts, &xs, base, &brackets).unwrap();
                for merge in [k::TiesMerge::Sum, k::TiesMerge::Mean, k::TiesMerge::Max] {
                    for majority in [1.0f32, -1.0] {
                        let what = format!("{label}: {merge:?}, majority {majority}");
                        let m = k::ScaledTiesMerge {
                            thresholds: &tops,
                            majority,
                            merge,
                            lambda,
                            dtype: DType::F32,
                        };
                        let counts = c.create(DType::U32, &[words as usize], None).unwrap();
                        let dirty_at = 3u64;
                        let dirty_words = dirty_at as usize + n.div_ceil(32) + 1;
                        let dirty_t = c.create(DType::U32, &[dirty_words], None).unwrap();
                        let votes = k::SignVotes::new(c).unwrap();
                        let counters = c.create(DType::U32, &[4], None).unwrap();
                        let pass = k::TiesBracketPass {
                            brackets: &brackets,
                            counts,
                            dirty: dirty_t,
                            dirty_at,
                        };
                        let out = k::ties_bracket_merge_delta(
                            c,
                            &xs,
                            base,
                            m,
                            pass,
                            &votes,
                            (counters, 1),
                        )
                        .unwrap();
                        // The bracket pass's counts, and the merge at the tops, bit for bit.
                        assert_eq!(
                            c.read(counts).unwrap(),
                            c.read(ref_counts).unwrap(),
                            "{what}: counts"
                        );
                        let ref_counters = c.create(DType::U32, &[4], None).unwrap();
                        let want =
                            k::ties_elect_merge_delta(c, &xs, base, m, None, (ref_counters, 1))
                                .unwrap();
                        assert_eq!(c.read(out).unwrap(), c.read(want).unwrap(), "{what}: out");
                        // Dirty bits where a model's |τ| is inside its bracket, none elsewhere.
                        let bits: Vec<u32> =
                            bytemuck::pod_collect_to_vec(&c.read(dirty_t).unwrap());
                        let mut expect = vec![0u32; dirty_words];
                        for (i, _) in dirty.iter().enumerate().filter(|(_, &d)| d) {
                            expect[dirty_at as usize + i / 32] |= 1 << (i % 32);
                        }
                        assert_eq!(bits, expect, "{what}: dirty bits");
                        // Votes and the undecided count over the clean positions only.
                        let (_, sums) = cpu_disjoint(&trimmed, majority, merge);
                        let clean = |i: &usize| !dirty[*i];
                        let pos = (0..n).filter(clean).filter(|&i| sums[i] > 0.0).count();
                        let neg = (0..n).filter(clean).filter(|&i| sums[i] < 0.0).count();
                        assert_eq!(
                            votes.counts().unwrap(),
                            (pos as u64, neg as u64),
                            "{what}: votes"
                        );
                        let undecided = (0..n)
                            .filter(clean)
                            .filter(|&i| cpu_undecided(&trimmed, &sums, i, majority, merge))
                            .count() as u32;
                        let words: Vec<u32> =
                            bytemuck::pod_collect_to_vec(&c.read(counters).unwrap());
                        assert_eq!(words, [0, 0, undecided, 0], "{what}: undecided");
                        release(c, &[out, want, counts, dirty_t, counters, ref_counters]);
                    }
                }
                release(c, &[base, ref_counts]);
                release(c, &xs);
            }
        }
    }
    // Fewer storage buffers, or other dtypes, are errors that say so.
    let c = clamped_wide();
    assert!(!k::ties_bracket_merge_fits(c, 2));
    let c = full();
    let x = upload(c, DType::F16, &[1.0]);
    let counts = c.create(DType::U32, &[4], None).unwrap();
    let pass = k::TiesBracketPass {
        brackets: &[bracket_around(0.25, 0)],
        counts,
        dirty: counts,
        dirty_at: 0,
    };
    let m = k::ScaledTiesMerge {
        thresholds: &[0.0],
        majority: 1.0,
        merge: k::TiesMerge::Sum,
        lambda: 1.0,
        dtype: DType::F32,
    };
    let votes = k::SignVotes::new(c).unwrap();
    let e = k::ties_bracket_merge_delta(c, &[x], x, m, pass, &votes, (counts, 0)).unwrap_err();
    assert!(e.message().contains("f32 tensors only"), "{e}");
    release(c, &[x, counts]);
}

#[test]
fn scatter_writes_the_values_at_their_indices() {
    let mut rng = StdRng::seed_from_u64(36);
    for (name, c) in runtimes() {
        for &n in &[1usize, 257, 1024] {
            let mut dst: Vec<f32> = random(&mut rng, DType::F32, n);
            let t = upload(c, DType::F32, &dst);
            let picks: Vec<u32> = (0..n as u32).filter(|_| rng.random_bool(0.3)).collect();
            let values: Vec<f32> = picks.iter().map(|&i| i as f32 + 0.5).collect();
            // One index past the end: skipped.
            let mut idx = picks.clone();
            idx.push(n as u32);
            let mut vals = values.clone();
            vals.push(-1.0);
            let it = c
                .create(DType::U32, &[idx.len()], Some(bytemuck::cast_slice(&idx)))
                .unwrap();
            let vt = upload(c, DType::F32, &vals);
            k::scatter32(c, t, it, vt).unwrap();
            for (&i, &v) in picks.iter().zip(&values) {
                dst[i as usize] = v;
            }
            assert_eq!(download(c, t), dst, "{name}: n = {n}");
            release(c, &[t, it, vt]);
        }
    }
    let c = full();
    let t = upload(c, DType::F16, &[1.0]);
    let e = k::scatter32(c, t, t, t).unwrap_err();
    assert!(e.message().contains("32-bit"), "{e}");
    release(c, &[t]);
}

// ---------------------------------------------------------------------------------------------
// Row-blocked loops (common.wgsl `row_item`)

/// Counts, for each of `p.items` items, how many invocations visited it in a row-blocked loop.
const ROW_ITEM_PROBE: &str = r#"
struct ProbeParams { items: u32 }
@group(0) @binding(0) var<storage, read_write> hits: array<atomic<u32>>;
@group(0) @binding(1) var<uniform> probe: ProbeParams;

@compute @workgroup_size(WG)
fn probe_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let grid = nwg.x * nwg.y * nwg.z * WG;
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < probe.items; i++) {
        atomicAdd(&hits[row_item(f, i, grid)], 1u);
    }
}
"#;

/// Every item is visited exactly once and nothing past the end, whatever the rows per
/// invocation and however few invocations loop (outer steps), on a 1-D grid and on the clamped
/// runtime's 2-D and 3-D grids.
#[test]
fn row_blocked_loops_visit_every_item_once() {
    let source = format!("{}\n{ROW_ITEM_PROBE}", k::wgsl::COMMON);
    for (name, c) in runtimes() {
        let l = c.limits();
        let wg = k::workgroup_size(&l);
        // The clamped runtime binds 1024 words: its counts fit one binding up to 960 items.
        let fits = |&&items: &&u32| u64::from(items) + 64 <= l.max_storage_binding_size / 4;
        for &items in [1u32, 255, 256, 257, 960, 5003].iter().filter(fits) {
            for &rows in &[1u32, 3, 16] {
                // One invocation per `rows` items, then a grid too small for one step.
                let full_grid = u64::from(items.div_ceil(rows));
                for invocations in [full_grid, full_grid.div_ceil(7)] {
                    let hits = c.create(DType::U32, &[items as usize + 64], None).unwrap();
                    let workgroups = k::dispatch_1d(&l, invocations.max(1), wg);
                    c.dispatch(&fusion_plugin_api::KernelCall {
                        label: "probe_rows",
                        source: &source,
                        entry_point: "probe_rows",
                        constants: &[("WG", f64::from(wg)), ("ROWS", f64::from(rows))],
                        bindings: &[fusion_plugin_api::Binding::write(hits)],
                        uniforms: &items.to_le_bytes(),
                        workgroups,
                    })
                    .unwrap();
                    let got: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(hits).unwrap());
                    let what = format!(
                        "{name}: {items} items, {rows} rows, {invocations} invocations ({workgroups:?})"
                    );
                    assert!(
                        got[..items as usize].iter().all(|&h| h == 1),
                        "{what}: {got:?}"
                    );
                    assert!(
                        got[items as usize..].iter().all(|&h| h == 0),
                        "{what}: past the end"
                    );
                    release(c, &[hits]);
                }
            }
        }
    }
}

/// The vec4 TIES and bracket launches take `FUSION_LOOP_ROWS` quads per invocation (16 on
/// software adapters, 1 on GPUs): run their tests again in a child process with one, as a GPU
/// would, so that both settings are checked on whichever adapter runs the tests.
#[test]
fn fused_ties_tests_pass_with_one_quad_per_invocation() {
    if std::env::var_os("FUSION_LOOP_ROWS").is_some() {
        return; // the child process itself
    }
    let tests = [
        "fused_ties_launches_equal_the_per_model_merge_and_the_cpu",
        "bracketed_ties_pass_counts_merges_and_marks_what_its_brackets_leave_open",
        "radix_bracket_counts_above_and_inside_each_models_range",
        "streamed_ties_from_fine_tuned_tensors_equals_the_batched_merge",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads", "1"])
        .env("FUSION_LOOP_ROWS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "with FUSION_LOOP_ROWS=1:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 passed"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// DARE

#[test]
fn dare_masks_are_reproducible_exact_and_fair() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = 100_000;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let key = k::tensor_key("vision_model.encoder.layers.0.mlp.fc1.weight");
    for p in [0.1, 0.5, 0.9] {
        let params = k::Dare {
            p,
            rescale: true,
            seed: 42,
        };
        let outs: Vec<Vec<u8>> = runtimes()
            .into_iter()
            .map(|(_, c)| {
                let t = upload(c, DType::F32, &x);
                let out = k::dare(c, t, key, &params, DType::F32).unwrap();
                let bytes = c.read(out).unwrap();
                release(c, &[t, out]);
                bytes
            })
            .collect();
        // Same bits on the full and the clamped (chunked, 2-D) device.
        assert_eq!(outs[0], outs[1], "p = {p}: chunking changed the result");
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&outs[0]);
        let scale = params.scale();
        let mut kept = 0usize;
        for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
            let keep = k::dare_keep(&params, key, i as u64);
            // Rescale exact: one correctly rounded product.
            let want = if keep { v * scale } else { 0.0 };
            assert_eq!(g.to_bits(), want.to_bits(), "p = {p}, element {i}");
            kept += usize::from(keep);
        }
        // Kept count is Binomial(n, 1 - p): within 6 standard deviations.
        let mean = n as f64 * (1.0 - p);
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (kept as f64 - mean).abs() < 6.0 * sd,
            "p = {p}: kept {kept}, expected {mean} ± {sd}"
        );
    }
}

#[test]
fn dare_is_independent_of_visit_order_and_keyed_by_name_and_seed() {
    let c = full();
    let mut rng = StdRng::seed_from_u64(7);
    let names = ["a.weight", "a.bias", "b.weight"];
    let data: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, DType::BF16, 777)).collect();
    let params = k::Dare {
        p: 0.3,
        rescale: true,
        seed: 9,
    };
    let run = |order: &[usize]| -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new(); 3];
        for &i in order {
            let t = upload(c, DType::BF16, &data[i]);
            let o = k::dare(c, t, k::tensor_key(names[i]), &params, DType::BF16).unwrap();
            out[i] = c.read(o).unwrap();
            release(c, &[t, o]);
        }
        out
    };
    let forward = run(&[0, 1, 2]);
    assert_eq!(forward, run(&[2, 0, 1]));
    assert_eq!(forward, run(&[0, 1, 2]), "two runs differ");
    assert_ne!(
        forward[0], forward[2],
        "different names must draw different masks"
    );
    let other_seed = {
        let t = upload(c, DType::BF16, &data[0]);
        let o = k::dare(
            c,
            t,
            k::tensor_key(names[0]),
            &k::Dare { seed: 10, ..params },
            DType::BF16,
        )
        .unwrap();
        let b = c.read(o).unwrap();
        release(c, &[t, o]);
        b
    };
    assert_ne!(forward[0], other_seed);
    // dare_delta(ft, base) == dare(ft - base), bit for bit, and without rescale kept = x.
    let ft = upload(c, DType::F16, &data[1]);
    let base = upload(c, DType::F16, &data[2]);
    let tv = k::task_vector(c, ft, base, DType::F32).unwrap();
    let no_rescale = k::Dare {
        rescale: false,
        ..params
    };
    let a = k::dare(c, tv, 5, &no_rescale, DType::F32).unwrap();
    let b = k::dare_delta(c, ft, base, 5, &no_rescale, DType::F32).unwrap();
    assert_eq!(c.read(a).unwrap(), c.read(b).unwrap());
    let tvv = download(c, tv);
    for (i, v) in download(c, a).iter().enumerate() {
        assert_eq!(
            *v,
            if k::dare_keep(&no_rescale, 5, i as u64) {
                tvv[i]
            } else {
                0.0
            }
        );
    }
    release(c, &[ft, base, tv, a, b]);
}

// ---------------------------------------------------------------------------------------------
// SLERP

/// FusionBench's slerp on flattened tensors, in f64 on the host.
fn cpu_slerp(v0: &[f32], v1: &[f32], t: f64) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let dot: f64 = v0
        .iter()
        .zip(v1)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    let (s0, s1) = k::slerp_weights(norm(v0), norm(v1), dot, t);
    v0.iter()
        .zip(v1)
        .map(|(&a, &b)| (s0 * f64::from(a) + s1 * f64::from(b)) as f32)
        .collect()
}

#[test]
fn slerp_matches_cpu_and_falls_back_to_lerp() {
    let mut rng = StdRng::seed_from_u64(10);
    let c = full();
    for &n in &[1usize, 255, 257, 4001] {
        for dt in DTYPES {
            let a = random(&mut rng, dt, n);
            let b = random(&mut rng, dt, n);
            let (ta, tb) = (upload(c, dt, &a), upload(c, dt, &b));
            for t in [0.0, 0.3, 1.0] {
                let out = k::slerp(c, ta, tb, t, DType::F32).unwrap();
                // The angle comes from f32 reductions: allow their relative error in the weights.
                assert_close(
                    &format!("slerp {dt} n = {n} t = {t}"),
                    &download(c, out),
                    &cpu_slerp(&a, &b, t),
                    1e-4,
                );
                c.release(out);
            }
            // Colinear (b = 2a): lerp.
            let twice: Vec<f32> = a.iter().map(|v| 2.0 * v).collect();
            let tt = upload(c, dt, &twice);
            let out = k::slerp(c, ta, tt, 0.25, DType::F32).unwrap();
            let want: Vec<f32> = a
                .iter()
                .zip(&twice)
                .map(|(x, y)| 0.75 * x + 0.25 * y)
                .collect();
            assert_close(
                &format!("lerp {dt} n = {n}"),
                &download(c, out),
                &want,
                1e-5,
            );
            release(c, &[ta, tb, tt, out]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions

/// The non-finite count on the device equals a CPU count, for NaN, +Inf and -Inf scattered
/// anywhere (first, last, odd tails of 16-bit pairs), large finite values (f16's 65504) and
/// chunked tensors.
#[test]
fn nonfinite_counts_match_cpu() {
    let mut rng = StdRng::seed_from_u64(16);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &[1, 255, 256, 257, 1001, 300_001]
        } else {
            &[1, 257, 5003, 40_001]
        };
        for &n in sizes {
            for dt in DTYPES {
                let mut a = random(&mut rng, dt, n);
                let big = if dt == DType::F16 { 65504.0 } else { 3.0e38 };
                for (i, v) in a.iter_mut().enumerate() {
                    let roll = rng.random_range(0..100u32);
                    *v = match roll {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => -big,
                        _ if i == n - 1 && n % 2 == 1 => f32::NAN,
                        _ => *v,
                    };
                }
                let want = a.iter().filter(|v| !v.is_finite()).count() as u64;
                let t = upload(c, dt, &a);
                let got = k::count_nonfinite(c, t).unwrap();
                assert_eq!(got, want, "{name}: {dt} n = {n}");
                release(c, &[t]);
            }
        }
        // A finite tensor counts zero.
        let t = upload(c, DType::F32, &[1.0, -0.0, f32::MAX, f32::MIN_POSITIVE]);
        assert_eq!(k::count_nonfinite(c, t).unwrap(), 0, "{name}");
        release(c, &[t]);
    }
}

#[test]
fn reductions_match_cpu_over_levels_and_chunks() {
    let mut rng = StdRng::seed_from_u64(8);
    for (name, c) in runtimes() {
        let sizes: &[usize] = if name == "full" {
            &[1, 255, 256, 257, 1001, 300_000]
        } else {
            &[1, 257, 5003, 40_000]
        };
        for &n in sizes {
            for dt in DTYPES {
                let a = random(&mut rng, dt, n);
                let b = random(&mut rng, DType::F32, n);
                let (ta, tb) = (upload(c, dt, &a), upload(c, DType::F32, &b));
                let sum_abs: f64 = a.iter().map(|&v| f64::from(v.abs())).sum();
                let want_sum: f64 = a.iter().map(|&v| f64::from(v)).sum();
                let want_sq: f64 = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                let want_dot: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum();
                let dot_abs: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| f64::from((x * y).abs()))
                    .sum();
                let what = format!("{name}: {dt} n = {n}");
                let got_sum = f64::from(k::sum(c, ta).unwrap());
                assert!(
                    (got_sum - want_sum).abs() <= REDUCE_REL * sum_abs + 1e-6,
                    "{what}: sum {got_sum} vs {want_sum}"
                );
                let got_sq = f64::from(k::sum_squares(c, ta).unwrap());
                assert!(
                    (got_sq - want_sq).abs() <= REDUCE_REL * want_sq + 1e-6,
                    "{what}: sumsq {got_sq} vs {want_sq}"
                );
                let got_norm = f64::from(k::l2_norm(c, ta).unwrap());
                assert!(
                    (got_norm - want_sq.sqrt()).abs() <= REDUCE_REL * want_sq.sqrt() + 1e-6,
                    "{what}: norm"
                );
                let got_dot = f64::from(k::dot(c, ta, tb).unwrap());
                assert!(
                    (got_dot - want_dot).abs() <= REDUCE_REL * dot_abs + 1e-6,
                    "{what}: dot {got_dot} vs {want_dot}"
                );
                release(c, &[ta, tb]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// plugin-api's kernel helpers: 2-D dispatch and the f16/bf16 WGSL codecs

const HALF_2D_WGSL: &str = r#"
struct P { pairs: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> words: array<u32>;
// W = pairs * rows words of packed f16, W of packed bf16, 2W f32 bits of words as f16, 2W as bf16.
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(8, 4)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cell = cell_2d(gid, nwg, 4u);
    if (cell.x >= p.pairs || cell.y >= p.rows) {
        return;
    }
    let nw = p.pairs * p.rows;
    let w = cell.y * p.pairs + cell.x;
    let v = vec2<f32>(x[2u * w], x[2u * w + 1u]);
    out[w] = pack_f16x2(v);
    out[nw + w] = pack_bf16x2(v);
    let h = unpack_f16x2(words[w]);
    out[2u * nw + 2u * w] = bitcast<u32>(h.x);
    out[2u * nw + 2u * w + 1u] = bitcast<u32>(h.y);
    let b = unpack_bf16x2(words[w]);
    out[4u * nw + 2u * w] = bitcast<u32>(b.x);
    out[4u * nw + 2u * w + 1u] = bitcast<u32>(b.y);
}
"#;

#[test]
fn plugin_api_half_codecs_and_2d_grid_match_the_host_side() {
    use fusion_plugin_api::kernel::{self as api, DeviceTensor, Kernel};
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct P {
        pairs: u32,
        rows: u32,
    }
    let kernel = Kernel::with_half_prelude("half_2d", HALF_2D_WGSL, "main").workgroup_size_2d(8, 4);
    let same =
        |a: u32, b: u32| a == b || (f32::from_bits(a).is_nan() && f32::from_bits(b).is_nan());
    // Full: every f16/bf16 pattern decoded (128 rows of 256 pairs). Clamped: 20 rows of 7 pairs
    // need 5 workgroup rows of 4 on a 4-per-dimension device, so rows fold into z.
    for (name, rt, pairs, rows) in [
        ("full", full(), 256u32, 128u32),
        ("clamped", clamped(), 7, 20),
    ] {
        let c: &dyn Compute = rt;
        let nw = (pairs * rows) as usize;
        let mut rng = StdRng::seed_from_u64(15);
        let mut xs: Vec<f32> = (0..2 * nw)
            .map(|i| match i % 4 {
                0 => rng.random_range(-70000.0..70000.0f32),
                1 => rng.random_range(-1.0..1.0f32) * 1e-6,
                2 => (rng.random_range(0..0x7c00u32) as f32 + 0.5) / 1024.0, // ties of f16
                _ => f32::from_bits(rng.random::<u32>() & 0xbfff_ffff), // finite, any magnitude
            })
            .collect();
        xs[0] = f32::INFINITY;
        xs[1] = -0.0;
        let words: Vec<u32> = (0..nw as u32)
            .map(|w| {
                if nw == 32768 {
                    (2 * w) | ((2 * w + 1) << 16)
                } else {
                    rng.random()
                }
            })
            .collect();
        let x = DeviceTensor::from_f32(c, &[2 * nw], &xs).unwrap();
        let wt =
            DeviceTensor::from_bytes(c, DType::U32, &[nw], bytemuck::cast_slice(&words)).unwrap();
        let out = DeviceTensor::zeros(c, DType::U32, &[6 * nw]).unwrap();
        let grid =
            api::dispatch_2d(&c.limits(), [u64::from(pairs), u64::from(rows)], [8, 4]).unwrap();
        if name == "clamped" {
            assert!(grid[2] > 1, "{name}: rows must fold into z, got {grid:?}");
        }
        kernel
            .launch_2d(
                c,
                &[x.read_binding(), wt.read_binding(), out.write_binding()],
                &P { pairs, rows },
                [u64::from(pairs), u64::from(rows)],
            )
            .unwrap();
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&out.to_bytes().unwrap());
        assert_eq!(&got[..nw], &api::pack_f16(&xs)[..], "{name}: pack_f16x2");
        assert_eq!(
            &got[nw..2 * nw],
            &api::pack_bf16(&xs)[..],
            "{name}: pack_bf16x2"
        );
        let f16s = api::unpack_f16(&words, 2 * nw).unwrap();
        let bf16s = api::unpack_bf16(&words, 2 * nw).unwrap();
        for i in 0..2 * nw {
            assert!(
                same(got[2 * nw + i], f16s[i].to_bits()),
                "{name}: unpack_f16x2 element {i}"
            );
            assert!(
                same(got[4 * nw + i], bf16s[i].to_bits()),
                "{name}: unpack_bf16x2 element {i}"
            );
        }
    }
}
