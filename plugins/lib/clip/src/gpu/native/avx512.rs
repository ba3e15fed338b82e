//! An f32 matrix product for x86-64 CPUs with AVX-512: packed panels and a 6 x 64 register
//! tile (24 accumulators of 16 lanes), in the blocking of BLIS (the B block of `KC x NC` in L2,
//! one `MR x KC` strip of A in L1), threads from rayon over blocks of rows.
//!
//! The `gemm` crate, used elsewhere in this module, builds its AVX-512 kernels only with a
//! nightly compiler, so on stable Rust it runs 8-lane FMA kernels: about half of what these
//! cores do per cycle, and about half of PyTorch's (oneDNN/MKL) CPU GEMM on the encoder's
//! products. The AVX-512 intrinsics are stable (Rust 1.89), hence this kernel.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use rayon::prelude::*;

/// Rows of the register tile (A values broadcast per step).
pub(crate) const MR: usize = 6;
/// Columns of the register tile: four 16-lane vectors of B.
pub(crate) const NR: usize = 64;
/// Depth of one packed block: a `KC x NR` panel of B is 64 KiB, an `MR x KC` strip of A 6 KiB.
const KC: usize = 256;
/// Columns of one packed B block (`KC x NC` = 1 MiB, in a core's L2).
const NC: usize = 1024;

/// What happens to each element of C after its last partial product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Post {
    /// Nothing.
    None,
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
}

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// A raw pointer that rayon tasks may share; each task writes disjoint rows of C.
#[derive(Clone, Copy)]
struct Shared<T>(T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// `c[i * ldc + j] = (accumulate ? c[..] : 0) + alpha * sum_p a[i * a_rs + p * a_cs] * b[p * b_rs + j * b_cs]`
/// for `i < m`, `j < n`, then `post` on each element; `k > 0`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); every element the strides reach lies inside the
/// allocations behind `a`, `b` and `c`, and `c` overlaps neither input.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
    post: Post,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Row blocks: several per thread so that a thread slowed by other work is evened out by
    // stealing, each a whole number of register tiles.
    let tasks = if threads > 1 { threads * 4 } else { 1 };
    let rows_per_task = m.div_ceil(tasks).div_ceil(MR).max(1) * MR;
    let row_blocks = m.div_ceil(rows_per_task);
    let mut packed_b = vec![0.0f32; KC * NC.min(n.div_ceil(NR) * NR)];
    let (a, b, c) = (Shared(a), Shared(b), Shared(c));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta = accumulate || pc > 0;
            let last = pc + kc == k;
            let post = if last { post } else { Post::None };
            let pack = |(jp, panel): (usize, &mut [f32])| {
                let b = &b;
                let j0 = jc + jp * NR;
                pack_b(panel, b.0, (b_rs, b_cs), pc, kc, j0, NR.min(n - j0));
            };
            let packed = &mut packed_b[..panels * kc * NR];
            if threads > 1 && panels > 1 {
                packed.par_chunks_mut(kc * NR).enumerate().for_each(pack);
            } else {
                packed.chunks_mut(kc * NR).enumerate().for_each(pack);
            }
            let packed = &packed_b[..panels * kc * NR];
            let run = |t: usize| {
                let (a, c) = (a, c);
                let mut strip = [0.0f32; MR * KC];
                let rows = t * rows_per_task..((t + 1) * rows_per_task).min(m);
                for ir in rows.step_by(MR) {
                    let mr = MR.min(m - ir);
                    // Whole strips of a row-major A are read where they are (6 rows of `kc`
                    // values, in L1 across the block's panels); the others are packed.
                    let strip_a = if mr == MR && a_cs == 1 {
                        StripA {
                            ptr: a.0.add(ir * a_rs + pc),
                            rs: a_rs,
                            step: 1,
                        }
                    } else {
                        pack_a(&mut strip, a.0, (a_rs, a_cs), ir, mr, pc, kc);
                        StripA {
                            ptr: strip.as_ptr(),
                            rs: 1,
                            step: MR,
                        }
                    };
                    for jp in 0..panels {
                        let j0 = jc + jp * NR;
                        let nr = NR.min(n - j0);
                        tile(
                            kc,
                            strip_a,
                            packed.as_ptr().add(jp * kc * NR),
                            c.0.add(ir * ldc + j0),
                            ldc,
                            (mr, nr),
                            (alpha, beta),
                            post,
                        );
                    }
                }
            };
            if row_blocks > 1 {
                (0..row_blocks).into_par_iter().for_each(run);
            } else {
                run(0);
            }
        }
    }
}

/// Packs `B[pc..pc + kc, j0..j0 + nr]` as `kc` rows of `NR` values (zeros past `nr`).
unsafe fn pack_b(
    panel: &mut [f32],
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    pc: usize,
    kc: usize,
    j0: usize,
    nr: usize,
) {
    if b_cs == 1 {
        for p in 0..kc {
            let src = std::slice::from_raw_parts(b.add((pc + p) * b_rs + j0), nr);
            let dst = &mut panel[p * NR..(p + 1) * NR];
            dst[..nr].copy_from_slice(src);
            dst[nr..].fill(0.0);
        }
    } else {
        // A transposed operand (a weight `[n, k]` read as `B = W^T`): row p of the panel
        // gathers one value from each of `nr` weight rows. Going down the panel row by row
        // keeps the `nr` source lines (4 KiB) in L1 while each is read 16 times, and writes
        // the panel in order; column-by-column writes (256 bytes apart, over a 64 KiB panel
        // larger than L1) spent most of the packing time waiting on stores.
        for p in 0..kc {
            let src = b.add((pc + p) * b_rs + j0 * b_cs);
            let dst = panel.as_mut_ptr().add(p * NR);
            for j in 0..nr {
                *dst.add(j) = *src.add(j * b_cs);
            }
            for j in nr..NR {
                *dst.add(j) = 0.0;
            }
        }
    }
}

/// `MR` rows of A for the kernel: element `(i, p)` at `ptr + i * rs + p * step`.
#[derive(Clone, Copy)]
struct StripA {
    ptr: *const f32,
    rs: usize,
    step: usize,
}

/// Packs `A[i0..i0 + mr, pc..pc + kc]` as `kc` columns of `MR` values (zeros past `mr`).
unsafe fn pack_a(
    strip: &mut [f32; MR * KC],
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    i0: usize,
    mr: usize,
    pc: usize,
    kc: usize,
) {
    for i in 0..MR {
        if i < mr {
            let row = a.add((i0 + i) * a_rs + pc * a_cs);
            for p in 0..kc {
                *strip.get_unchecked_mut(p * MR + i) = *row.add(p * a_cs);
            }
        } else {
            for p in 0..kc {
                *strip.get_unchecked_mut(p * MR + i) = 0.0;
            }
        }
    }
}

/// One `MR x NR` tile of C from a packed strip of A and panel of B; partial tiles (`mr < MR`
/// or `nr < NR`) go through a buffer so the kernel always runs whole.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kc: usize,
    a: StripA,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    (mr, nr): (usize, usize),
    (alpha, beta): (f32, bool),
    post: Post,
) {
    if mr == MR && nr == NR {
        kernel(kc, a, b, c, ldc, alpha, beta, post);
        return;
    }
    let mut buf = [0.0f32; MR * NR];
    if beta {
        for i in 0..mr {
            buf[i * NR..i * NR + nr]
                .copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), nr));
        }
    }
    kernel(kc, a, b, buf.as_mut_ptr(), NR, alpha, true, post);
    for i in 0..mr {
        std::slice::from_raw_parts_mut(c.add(i * ldc), nr)
            .copy_from_slice(&buf[i * NR..i * NR + nr]);
    }
}

/// The register tile: `C[0..6, 0..64] (+)= A_strip B_panel`, then `post`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: StripA,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: bool,
    post: Post,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.add(i * a.rs));
    let mut b = b;
    let mut off = 0;
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        let b2 = _mm512_loadu_ps(b.add(32));
        let b3 = _mm512_loadu_ps(b.add(48));
        for (row, r) in acc.iter_mut().zip(rows) {
            let ai = _mm512_set1_ps(*r.add(off));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            row[2] = _mm512_fmadd_ps(ai, b2, row[2]);
            row[3] = _mm512_fmadd_ps(ai, b3, row[3]);
        }
        off += a.step;
        b = b.add(NR);
    }
    let alpha = _mm512_set1_ps(alpha);
    for (i, row) in acc.iter().enumerate() {
        let out = c.add(i * ldc);
        for (v, &x) in row.iter().enumerate() {
            let p = out.add(16 * v);
            let x = _mm512_mul_ps(x, alpha);
            let mut x = if beta {
                _mm512_add_ps(_mm512_loadu_ps(p), x)
            } else {
                x
            };
            if post == Post::QuickGelu {
                x = quick_gelu16(x);
            }
            _mm512_storeu_ps(p, x);
        }
    }
}

/// `e^x` on 16 lanes: Cephes' `expf` polynomial on `x - n ln 2`, scaled by `2^n` (relative
/// error about 1e-7; `scalef` saturates to 0 and infinity past the f32 range).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(100.0)),
        _mm512_set1_ps(-100.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(p, n)
}

/// `x / (1 + e^(-1.702 x))` on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn quick_gelu16(x: __m512) -> __m512 {
    let e = exp16(_mm512_mul_ps(x, _mm512_set1_ps(-1.702)));
    _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// `quick_gelu` over a slice, 16 lanes at a time (the tail through a padded vector).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn quick_gelu_slice(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        _mm512_storeu_ps(c.as_mut_ptr(), quick_gelu16(_mm512_loadu_ps(c.as_ptr())));
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0.0f32; 16];
        buf[..tail.len()].copy_from_slice(tail);
        _mm512_storeu_ps(
            buf.as_mut_ptr(),
            quick_gelu16(_mm512_loadu_ps(buf.as_ptr())),
        );
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}
