//! The CPU's share of a merge's time, made small: dtype conversion of whole tensors, and the
//! element-wise loops of the common methods, spread over the cores (rayon) in fixed chunks, so
//! that sums come out the same on every run and every machine, whatever the thread count.
//!
//! A merge of LLM checkpoints reads every input tensor once and writes every output tensor
//! once; what is left between is a few passes over memory per tensor. These passes are written
//! so that the compiler vectorises them: plain loops over slices, bit operations for the half
//! dtypes, and a fused multiply-add compiled for the FMA unit where the CPU has one (chosen at
//! run time: without the target feature `f32::mul_add` is a library call per element).

use fusion_plugin_api::{DType, Error, Result};
use rayon::prelude::*;

/// Elements per parallel chunk: large enough to amortise the hand-over, small enough to share
/// one tensor among the cores.
pub const CHUNK: usize = 1 << 16;

/// `bytes` (little-endian values of `dtype`) as f32, converted in parallel.
pub fn decode(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    let size = dtype.size();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::model(format!("cannot convert {dtype} to f32")));
    }
    let n = bytes.len() / size;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * size))
        .for_each(|(o, b)| decode_into(b, dtype, o));
    Ok(out)
}

/// `b` (values of `dtype`, one of f32, f16, bf16, f64) into `o`.
pub fn decode_into(b: &[u8], dtype: DType, o: &mut [f32]) {
    match dtype {
        DType::BF16 => o.iter_mut().zip(b.chunks_exact(2)).for_each(|(o, c)| {
            *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)
        }),
        DType::F32 => o
            .iter_mut()
            .zip(b.chunks_exact(4))
            .for_each(|(o, c)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        DType::F16 => o
            .iter_mut()
            .zip(b.chunks_exact(2))
            .for_each(|(o, c)| *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        DType::F64 => o
            .iter_mut()
            .zip(b.chunks_exact(8))
            .for_each(|(o, c)| *o = f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32),
        _ => unreachable!("checked by decode"),
    }
}

/// f32 to bfloat16 bits, rounding to nearest even (NaN stays a quiet NaN).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((b >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

/// `values` as little-endian bytes of `dtype` (rounding to nearest even), converted in
/// parallel.
pub fn encode(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::model(format!("cannot store f32 values as {dtype}")));
    }
    let size = dtype.size();
    let mut out = vec![0u8; values.len() * size];
    out.par_chunks_mut(CHUNK * size)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(o, v)| encode_into(v, dtype, o));
    Ok(out)
}

/// `v` into `o` as values of `dtype` (one of f32, f16, bf16, f64), rounding to nearest even.
pub fn encode_into(v: &[f32], dtype: DType, o: &mut [u8]) {
    match dtype {
        DType::BF16 => o
            .chunks_exact_mut(2)
            .zip(v)
            .for_each(|(o, &x)| o.copy_from_slice(&bf16_bits(x).to_le_bytes())),
        DType::F32 => o
            .chunks_exact_mut(4)
            .zip(v)
            .for_each(|(o, &x)| o.copy_from_slice(&x.to_le_bytes())),
        DType::F16 => o
            .chunks_exact_mut(2)
            .zip(v)
            .for_each(|(o, &x)| o.copy_from_slice(&half::f16::from_f32(x).to_le_bytes())),
        DType::F64 => o
            .chunks_exact_mut(8)
            .zip(v)
            .for_each(|(o, &x)| o.copy_from_slice(&(x as f64).to_le_bytes())),
        _ => unreachable!("checked by the callers"),
    }
}

/// Round every value to `dtype`'s precision in place (bfloat16 or float16; others unchanged).
pub fn round_to(values: &mut [f32], dtype: DType) {
    values
        .par_chunks_mut(CHUNK)
        .for_each(|c| round_slice(c, dtype));
}

/// [`round_to`] on the calling thread (for one chunk).
pub fn round_slice(values: &mut [f32], dtype: DType) {
    match dtype {
        DType::BF16 => values
            .iter_mut()
            .for_each(|x| *x = f32::from_bits((bf16_bits(*x) as u32) << 16)),
        DType::F16 => values
            .iter_mut()
            .for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        _ => {}
    }
}

/// `acc[i] = fma(x[i], w, acc[i])`, one rounding per element as torch's `addcmul_` on the CPU.
pub fn fused_axpy(acc: &mut [f32], x: &[f32], w: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            unsafe { fused_axpy_fma(acc, x, w) };
            return;
        }
    }
    acc.iter_mut()
        .zip(x)
        .for_each(|(a, &v)| *a = v.mul_add(w, *a));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_axpy_fma(acc: &mut [f32], x: &[f32], w: f32) {
    acc.iter_mut()
        .zip(x)
        .for_each(|(a, &v)| *a = v.mul_add(w, *a));
}

/// Σ f(a[i], b[i]) for three sums at once (f64), over fixed chunks summed in order: the same
/// result for any number of threads.
pub fn sums3(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let parts: Vec<(f64, f64, f64)> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| {
            let (mut aa, mut bb, mut ab) = (0f64, 0f64, 0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (x as f64, y as f64);
                aa += x * x;
                bb += y * y;
                ab += x * y;
            }
            (aa, bb, ab)
        })
        .collect();
    parts
        .iter()
        .fold((0.0, 0.0, 0.0), |s, p| (s.0 + p.0, s.1 + p.1, s.2 + p.2))
}

/// `out[i] = f(i, …)` over the chunks of `out` in parallel; `f` gets the chunk's start index.
pub fn par_fill(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, o)| f(c * CHUNK, o));
}

/// Which entries of `x` are its `k` largest magnitudes, ties taken in order of position (the
/// first of equal magnitudes first): as a stable descending sort by `|x|` would pick them, in
/// linear time (a selection of the threshold, then one pass).
pub fn top_k_magnitude(x: &[f32], k: usize) -> Vec<bool> {
    let n = x.len();
    if k >= n {
        return vec![true; n];
    }
    if k == 0 {
        return vec![false; n];
    }
    // Non-negative floats order as their bits (NaN above infinity, as `total_cmp` orders it).
    let mut bits: Vec<u32> = x.par_iter().map(|v| v.abs().to_bits()).collect();
    let (_, &mut threshold, _) = bits.select_nth_unstable(n - k);
    // Per chunk, the entries above the threshold and those at it; the ties are then given out
    // chunk by chunk in order of position, and each chunk marks its own in parallel.
    let counts: Vec<(usize, usize)> = x
        .par_chunks(CHUNK)
        .map(|c| {
            c.iter().fold((0, 0), |(a, t), v| {
                let b = v.abs().to_bits();
                (a + (b > threshold) as usize, t + (b == threshold) as usize)
            })
        })
        .collect();
    let above: usize = counts.iter().map(|c| c.0).sum();
    let mut ties_left = k - above;
    let quota: Vec<usize> = counts
        .iter()
        .map(|&(_, t)| {
            let q = t.min(ties_left);
            ties_left -= q;
            q
        })
        .collect();
    let mut mask = vec![false; n];
    mask.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(quota.par_iter())
        .for_each(|((m, c), &q)| {
            let mut left = q;
            for (m, v) in m.iter_mut().zip(c) {
                let b = v.abs().to_bits();
                let tie = b == threshold && left > 0;
                *m = b > threshold || tie;
                left -= tie as usize;
            }
        });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusion_plugin_api::{bytes_to_f32, f32_to_bytes};

    fn values(n: usize) -> Vec<f32> {
        let mut s = 0x1234_5678u32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 97 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => -0.0,
                    3 => 3.0e38,
                    _ => (s as i32 as f32) * 1e-9,
                }
            })
            .collect()
    }

    /// The conversions agree with plugin-api's plain ones (half's rounding), over sizes around
    /// the chunk, NaN, infinities and values that round to infinity included.
    #[test]
    fn conversions_match_the_plain_ones() {
        for n in [0, 1, 255, 256, 257, CHUNK - 1, CHUNK + 3, 3 * CHUNK + 17] {
            let v = values(n);
            for d in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let fast = encode(&v, d).unwrap();
                let plain = f32_to_bytes(&v, d).unwrap();
                let (a, b) = (decode(&fast, d).unwrap(), bytes_to_f32(&plain, d).unwrap());
                assert_eq!(a.len(), b.len());
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{d} n={n} [{i}]: {x} vs {y}"
                    );
                }
                let mut r = v.clone();
                round_to(&mut r, d);
                if matches!(d, DType::BF16 | DType::F16) {
                    for (x, y) in r.iter().zip(&b) {
                        assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
                    }
                }
            }
        }
    }

    #[test]
    fn fused_axpy_rounds_once() {
        let x = values(CHUNK + 5);
        let mut acc: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
        let want: Vec<f32> = x
            .iter()
            .zip(&acc)
            .map(|(v, a)| v.mul_add(0.3, *a))
            .collect();
        fused_axpy(&mut acc, &x, 0.3);
        for (a, w) in acc.iter().zip(&want) {
            assert!(a.to_bits() == w.to_bits() || (a.is_nan() && w.is_nan()));
        }
    }

    /// The selection keeps what a stable sort by descending magnitude keeps, ties included.
    #[test]
    fn top_k_matches_a_stable_sort() {
        // Few distinct magnitudes over several chunks: runs of ties cross chunk boundaries.
        let x: Vec<f32> = (0..3 * CHUNK + 100)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 4.0)
            .collect();
        for k in [
            0,
            1,
            2,
            10,
            333,
            500,
            CHUNK + 7,
            2 * CHUNK,
            x.len() - 1,
            x.len(),
        ] {
            let mut order: Vec<usize> = (0..x.len()).collect();
            order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
            let mut want = vec![false; x.len()];
            order.iter().take(k).for_each(|&i| want[i] = true);
            assert_eq!(top_k_magnitude(&x, k), want, "k={k}");
        }
    }
}
