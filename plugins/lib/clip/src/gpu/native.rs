//! The op API in host memory: the `gemm` crate (the GEMM candle uses) on every core for the
//! matrix products, rayon for the row ops, with fused epilogues (bias and activation, bias and
//! residual) and attention fused per sequence and head (scores, mask, softmax and `P V` in one
//! pass over a small per-task buffer, never a `[batch, heads, seq, seq]` tensor).
//!
//! Why `gemm` rather than `matrixmultiply`: on the 2-core AVX-512 test machine both reach about
//! PyTorch's CPU GEMM on the encoder's large products (60-75 GFLOP/s at 1600 x 768 x 3072), but
//! `gemm` is about twice as fast on the 50-row products of a batch of one image and the
//! attention-sized ones, and takes its threads from rayon per call, which lets attention run
//! single-threaded GEMMs inside a parallel loop (BENCHMARKS.md).
//!
//! On x86-64 CPUs with AVX-512 the large products (the encoder's linears and the patch
//! embedding: at least [`AVX512_MIN_ROWS`] rows, a batch of 3 images or more) run on this
//! module's own kernel instead (`avx512`): `gemm` builds its 16-lane kernels only with a
//! nightly compiler, and its 8-lane ones reach about half of what PyTorch's CPU GEMM
//! (oneDNN/MKL) does on these cores. That kernel also applies `quick_gelu` to each tile as it
//! leaves the registers. `FUSION_CLIP_NATIVE_GEMM=gemm` keeps every product on `gemm`.

#[cfg(target_arch = "x86_64")]
mod avx512;

use rayon::prelude::*;

use crate::config::Activation;
use crate::error::{ClipError, Result};
use crate::gpu::backend::{AttentionShape, Backend, Epilogue, LinearW, NormW, PatchW};
use crate::tensor::softmax_in_place;
use fusion_kernels::nn::{PatchGeometry, RowLayout};

/// Host-memory implementation of [`Backend`]; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Native;

/// Most f32 activations one pass may hold per tensor (1 GiB); larger batches run in passes.
const MAX_PASS_ELEMENTS: u64 = 1 << 28;

fn input(op: &'static str, message: String) -> ClipError {
    ClipError::input(op, message)
}

/// Fails unless `len` covers `rows` rows of `cols` starting `stride` apart from `offset`.
fn check_rows(
    op: &'static str,
    what: &str,
    len: usize,
    offset: usize,
    rows: usize,
    stride: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let need = offset + (rows - 1) * stride + cols;
    if len < need {
        return Err(input(
            op,
            format!("{what} holds {len} values, the op touches {need} ({rows} rows of {cols}, stride {stride}, offset {offset})"),
        ));
    }
    Ok(())
}

/// `c[i, j] (+)= alpha * sum_p a[i, p] b[p, j]` with explicit element strides; `accumulate`
/// adds to `c` instead of overwriting it. Bounds are checked from the strides (all
/// non-negative), so the call is safe for any arguments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    c: &mut [f32],
    c_strides: (usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    mnk: (usize, usize, usize),
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    gemm_post(
        c,
        c_strides,
        a,
        a_strides,
        b,
        b_strides,
        mnk,
        alpha,
        accumulate,
        parallel,
        Post::None,
    )
}

/// What a product does to each element of C once its sum is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Post {
    None,
    /// `quick_gelu`: fused into the AVX-512 kernel's write-back, a pass over C otherwise.
    QuickGelu,
}

/// Fewest rows of A for which a product takes the AVX-512 kernel: below this, packing the
/// whole of B per call costs more than `gemm`'s kernels lose (a batch of one image's 50 rows,
/// one attention head).
const AVX512_MIN_ROWS: usize = 128;

/// Whether a `m x n x k` product writing C with column stride `c_cs` runs on the AVX-512
/// kernel (`FUSION_CLIP_NATIVE_GEMM=gemm` keeps every product on the `gemm` crate).
#[cfg(target_arch = "x86_64")]
fn avx512_takes(m: usize, n: usize, k: usize, c_cs: usize) -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    m >= AVX512_MIN_ROWS
        && n >= 16
        && k > 0
        && c_cs == 1
        && *ON.get_or_init(|| {
            avx512::available()
                && std::env::var("FUSION_CLIP_NATIVE_GEMM").map_or(true, |v| v != "gemm")
        })
}

/// [`gemm_strided`], then `post` on every element of C.
#[allow(clippy::too_many_arguments)]
fn gemm_post(
    c: &mut [f32],
    (c_rs, c_cs): (usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    accumulate: bool,
    parallel: bool,
    post: Post,
) -> Result<()> {
    const OP: &str = "native gemm";
    if m == 0 || n == 0 {
        return Ok(());
    }
    let last = |rs: usize, cs: usize, r: usize, cols: usize| (r - 1) * rs + (cols - 1) * cs + 1;
    let need_c = last(c_rs, c_cs, m, n);
    if c.len() < need_c {
        return Err(input(
            OP,
            format!(
                "C holds {} values, a {m} x {n} x {k} product touches {need_c}",
                c.len()
            ),
        ));
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                let v = &mut c[i * c_rs + j * c_cs];
                if !accumulate {
                    *v = 0.0;
                }
                if post == Post::QuickGelu {
                    *v = Activation::QuickGelu.apply(*v);
                }
            }
        }
        return Ok(());
    }
    for (what, len, need) in [
        ("A", a.len(), last(a_rs, a_cs, m, k)),
        ("B", b.len(), last(b_rs, b_cs, k, n)),
    ] {
        if len < need {
            return Err(input(
                OP,
                format!("{what} holds {len} values, a {m} x {n} x {k} product touches {need}"),
            ));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if avx512_takes(m, n, k, c_cs) {
        let post = match post {
            Post::None => avx512::Post::None,
            Post::QuickGelu => avx512::Post::QuickGelu,
        };
        // SAFETY: the CPU has AVX-512F (avx512_takes), every element the strides reach lies
        // inside the slices (checked above), and `c` is borrowed mutably, so it aliases
        // neither input.
        unsafe {
            avx512::sgemm(
                (m, n, k),
                a.as_ptr(),
                (a_rs, a_cs),
                b.as_ptr(),
                (b_rs, b_cs),
                c.as_mut_ptr(),
                c_rs,
                alpha,
                accumulate,
                post,
                parallel,
            );
        }
        return Ok(());
    }
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the strides reach lies inside the slices (checked above); `c` is
    // borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
    if post == Post::QuickGelu {
        if (c_rs, c_cs) == (n, 1) {
            apply_activation(&mut c[..m * n], Activation::QuickGelu);
        } else {
            for i in 0..m {
                for j in 0..n {
                    let v = &mut c[i * c_rs + j * c_cs];
                    *v = Activation::QuickGelu.apply(*v);
                }
            }
        }
    }
    Ok(())
}

/// `sum f(x)` over `x` in f64, in 8 independent partial sums.
#[inline]
fn lanes_sum(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(f64::from(v));
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(f64::from(v))).sum();
    acc.iter().sum::<f64>() + tail
}

/// Rows per rayon task for row-wise elementwise work: big enough to amortize the task.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

impl Backend for Native {
    type Buf = Vec<f32>;
    type Mask = Vec<u32>;

    fn label(&self) -> &'static str {
        "native"
    }

    fn zeros(&self, shape: &[usize]) -> Result<Self::Buf> {
        Ok(vec![0.0; shape.iter().product()])
    }

    fn upload(&self, name: &str, shape: &[usize], data: &[f32]) -> Result<Self::Buf> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ClipError::input(
                "native upload",
                format!(
                    "`{name}`: shape {shape:?} needs {n} values, got {}",
                    data.len()
                ),
            ));
        }
        Ok(data.to_vec())
    }

    fn upload_mask(&self, shape: &[usize], data: &[u32]) -> Result<Self::Mask> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ClipError::input(
                "native mask",
                format!("shape {shape:?} needs {n} values, got {}", data.len()),
            ));
        }
        Ok(data.to_vec())
    }

    fn read(&self, x: &Self::Buf) -> Result<Vec<f32>> {
        Ok(x.clone())
    }

    fn max_items(&self, op: &str, per_item: u64, what: &str) -> Result<usize> {
        if per_item > MAX_PASS_ELEMENTS {
            return Err(ClipError::DeviceLimit {
                op: op.to_string(),
                message: format!(
                    "one {what} needs activations of {per_item} values, more than the {MAX_PASS_ELEMENTS} one native pass holds"
                ),
            });
        }
        Ok((MAX_PASS_ELEMENTS / per_item.max(1)) as usize)
    }

    fn layer_norm(
        &self,
        x: &Self::Buf,
        n: &NormW<Self>,
        y: &mut Self::Buf,
        layout: RowLayout,
    ) -> Result<()> {
        const OP: &str = "native layer_norm";
        let RowLayout {
            rows,
            cols,
            in_offset,
            in_stride,
            out_stride,
        } = layout;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        if out_stride < cols {
            return Err(input(OP, format!("{layout:?}: output rows overlap")));
        }
        check_rows(OP, "x", x.len(), in_offset, rows, in_stride, cols)?;
        check_rows(OP, "y", y.len(), 0, rows, out_stride, cols)?;
        if n.weight.len() < cols || n.bias.len() < cols {
            return Err(input(
                OP,
                format!(
                    "weight/bias hold {}/{} values, rows have {cols}",
                    n.weight.len(),
                    n.bias.len()
                ),
            ));
        }
        let (w, b, eps) = (&n.weight[..cols], &n.bias[..cols], n.eps);
        let row = |r: usize, out: &mut [f32]| {
            let xr = &x[in_offset + r * in_stride..][..cols];
            // Mean and variance in f64, as the reference, summed in 8 lanes so the sums
            // vectorize (a single f64 chain waits on every add).
            let len = cols as f64;
            let mean = lanes_sum(xr, |v| v) / len;
            let var = lanes_sum(xr, |v| (v - mean) * (v - mean)) / len;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, &v), wi), bi) in out[..cols].iter_mut().zip(xr).zip(w).zip(b) {
                *o = ((f64::from(v) - mean) * inv) as f32 * wi + bi;
            }
        };
        let per = rows_per_task(cols);
        y[..(rows - 1) * out_stride + cols]
            .par_chunks_mut(out_stride * per)
            .enumerate()
            .for_each(|(t, block)| {
                for (i, out) in block.chunks_mut(out_stride).enumerate() {
                    let r = t * per + i;
                    if r < rows {
                        row(r, out);
                    }
                }
            });
        Ok(())
    }

    fn linear(
        &self,
        x: &Self::Buf,
        l: &LinearW<Self>,
        out: &mut Self::Buf,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<()> {
        const OP: &str = "native linear";
        let (k, n) = (l.in_dim, l.out_dim);
        if rows == 0 || n == 0 {
            return Ok(());
        }
        check_rows(OP, "x", x.len(), 0, rows, k, k)?;
        check_rows(OP, "out", out.len(), 0, rows, n, n)?;
        check_rows(OP, "weight", l.weight.len(), 0, n, k, k)?;
        if let Some(bias) = &l.bias {
            if bias.len() < n {
                return Err(input(
                    OP,
                    format!("bias holds {} values, expected {n}", bias.len()),
                ));
            }
        }
        let out = &mut out[..rows * n];
        let per = rows_per_task(n);
        // The bias is written (or, for a residual, added) first, so the product accumulates
        // onto it: one pass over `out` fewer than a separate bias epilogue.
        let accumulate = match (epilogue, &l.bias) {
            (Epilogue::Residual, Some(bias)) => {
                out.par_chunks_mut(n * per).for_each(|block| {
                    for row in block.chunks_mut(n) {
                        row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                    }
                });
                true
            }
            (Epilogue::Residual, None) => true,
            (_, Some(bias)) => {
                out.par_chunks_mut(n * per).for_each(|block| {
                    for row in block.chunks_mut(n) {
                        row.copy_from_slice(&bias[..n]);
                    }
                });
                true
            }
            (_, None) => false,
        };
        let post = match epilogue {
            Epilogue::Activation(Activation::QuickGelu) => Post::QuickGelu,
            _ => Post::None,
        };
        // W is [n, k] row-major, so B = W^T has row stride 1 and column stride k.
        gemm_post(
            out,
            (n, 1),
            &x[..rows * k],
            (k, 1),
            &l.weight[..n * k],
            (1, k),
            (rows, n, k),
            1.0,
            accumulate,
            true,
            post,
        )?;
        if let Epilogue::Activation(act @ Activation::Gelu) = epilogue {
            apply_activation(out, act);
        }
        Ok(())
    }

    fn attention_scratch(&self, _a: &AttentionShape) -> Result<Self::Buf> {
        // Scores live in a per-task buffer of attention().
        Ok(Vec::new())
    }

    fn attention(
        &self,
        qkv: &Self::Buf,
        _scratch: &mut Self::Buf,
        context: &mut Self::Buf,
        a: &AttentionShape,
        key_padding: Option<&Self::Mask>,
    ) -> Result<()> {
        const OP: &str = "native attention";
        let AttentionShape {
            batch,
            seq,
            heads,
            head_dim: hd,
            scale,
            causal,
        } = *a;
        let d = a.hidden();
        if batch == 0 || seq == 0 || d == 0 {
            return Ok(());
        }
        check_rows(OP, "qkv", qkv.len(), 0, batch * seq, 3 * d, 3 * d)?;
        check_rows(OP, "context", context.len(), 0, batch * seq, d, d)?;
        if let Some(m) = key_padding {
            if m.len() < batch * seq {
                return Err(input(
                    OP,
                    format!(
                        "key mask holds {} values, expected {batch} x {seq}",
                        m.len()
                    ),
                ));
            }
        }
        // One task per (sequence, head); each writes its own `[seq, hd]` block of the context,
        // gathered below, so tasks share nothing mutable.
        let blocks: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|z| -> Result<Vec<f32>> {
                let (s, h) = (z / heads, z % heads);
                let base = s * seq * 3 * d + h * hd;
                let q = &qkv[base..];
                let k = &qkv[base + d..];
                let v = &qkv[base + 2 * d..];
                let mut scores = vec![0.0f32; seq * seq];
                gemm_strided(
                    &mut scores,
                    (seq, 1),
                    q,
                    (3 * d, 1),
                    k,
                    (1, 3 * d),
                    (seq, seq, hd),
                    scale,
                    false,
                    false,
                )?;
                let keys = key_padding.map(|m| &m[s * seq..(s + 1) * seq]);
                for (i, row) in scores.chunks_mut(seq).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        let masked = (causal && j > i) || keys.is_some_and(|m| m[j] == 0);
                        // An additive minimum, as the reference and transformers' eager path:
                        // a row whose keys are all masked becomes uniform, not NaN.
                        if masked {
                            *v += f32::MIN;
                        }
                    }
                    softmax_in_place(row);
                }
                let mut out = vec![0.0f32; seq * hd];
                gemm_strided(
                    &mut out,
                    (hd, 1),
                    &scores,
                    (seq, 1),
                    v,
                    (3 * d, 1),
                    (seq, hd, seq),
                    1.0,
                    false,
                    false,
                )?;
                Ok(out)
            })
            .collect::<Result<_>>()?;
        context[..batch * seq * d]
            .par_chunks_mut(seq * d)
            .enumerate()
            .for_each(|(s, ctx)| {
                for h in 0..heads {
                    let block = &blocks[s * heads + h];
                    for (i, row) in block.chunks_exact(hd).enumerate() {
                        ctx[i * d + h * hd..][..hd].copy_from_slice(row);
                    }
                }
            });
        Ok(())
    }

    fn patch_embed(
        &self,
        pixels: &[f32],
        w: &PatchW<Self>,
        out: &mut Self::Buf,
        g: PatchGeometry,
    ) -> Result<()> {
        const OP: &str = "native patch_embed";
        if g.patch == 0 || !g.image.is_multiple_of(g.patch) {
            return Err(input(OP, format!("{g:?}: patch does not divide the image")));
        }
        let (d, grid, p, s) = (w.dim, g.grid(), g.patch, g.image);
        let (grid2, plen) = (grid * grid, g.patch_len());
        let seq = grid2 + 1;
        let per_image = g.channels * s * s;
        if pixels.len() != g.batch * per_image {
            return Err(input(
                OP,
                format!("{} pixel values for {g:?}", pixels.len()),
            ));
        }
        check_rows(OP, "weight", w.weight.len(), 0, d, plen, plen)?;
        check_rows(OP, "position", w.position.len(), 0, seq, d, d)?;
        check_rows(OP, "out", out.len(), 0, g.batch * seq, d, d)?;
        if w.class.len() < d {
            return Err(input(
                OP,
                format!("class embedding holds {} values", w.class.len()),
            ));
        }
        if g.batch == 0 || d == 0 {
            return Ok(());
        }
        // im2col: patch t of image b is row b * G^2 + t, laid out (channel, y, x) like the
        // conv weight.
        let mut patches = vec![0.0f32; g.batch * grid2 * plen];
        patches
            .par_chunks_mut(plen)
            .enumerate()
            .for_each(|(r, row)| {
                let (b, t) = (r / grid2, r % grid2);
                let (py, px) = (t / grid, t % grid);
                let img = &pixels[b * per_image..];
                for ch in 0..g.channels {
                    for y in 0..p {
                        let src = ch * s * s + (py * p + y) * s + px * p;
                        row[(ch * p + y) * p..][..p].copy_from_slice(&img[src..src + p]);
                    }
                }
            });
        // One product over every patch of the batch (rows enough for the AVX-512 kernel),
        // then each image's rows move to rows 1.. of its block, after the class token.
        let mut products = vec![0.0f32; g.batch * grid2 * d];
        gemm_strided(
            &mut products,
            (d, 1),
            &patches,
            (plen, 1),
            &w.weight[..d * plen],
            (1, plen),
            (g.batch * grid2, d, plen),
            1.0,
            false,
            true,
        )?;
        drop(patches);
        let (class, pos) = (&w.class[..d], &w.position[..seq * d]);
        out[..g.batch * seq * d]
            .par_chunks_mut(seq * d)
            .zip(products.par_chunks(grid2 * d))
            .for_each(|(img, prod)| {
                img[..d].copy_from_slice(class);
                img[d..].copy_from_slice(prod);
                img.iter_mut().zip(pos).for_each(|(o, p)| *o += p);
            });
        Ok(())
    }

    fn token_embed(
        &self,
        ids: &[u32],
        table: &Self::Buf,
        position: &Self::Buf,
        out: &mut Self::Buf,
        seq: usize,
    ) -> Result<()> {
        const OP: &str = "native token_embed";
        let rows = ids.len();
        if rows == 0 {
            return Ok(());
        }
        let seq = seq.max(1);
        let d = out.len() / rows;
        if d == 0 || table.len() < d || position.len() < seq.min(rows) * d {
            return Err(input(
                OP,
                format!(
                    "{rows} tokens into {} values; table {} values, positions {}",
                    out.len(),
                    table.len(),
                    position.len()
                ),
            ));
        }
        let vocab = table.len() / d;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(input(
                OP,
                format!("token id {bad} is past the table's {vocab} rows"),
            ));
        }
        out[..rows * d]
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(r, o)| {
                let t = &table[ids[r] as usize * d..][..d];
                let p = &position[(r % seq) * d..][..d];
                for ((o, t), p) in o.iter_mut().zip(t).zip(p) {
                    *o = t + p;
                }
            });
        Ok(())
    }

    fn gather_rows(
        &self,
        x: &Self::Buf,
        idx: &[u32],
        out: &mut Self::Buf,
        dim: usize,
    ) -> Result<()> {
        const OP: &str = "native gather_rows";
        check_rows(OP, "out", out.len(), 0, idx.len(), dim, dim)?;
        let rows = x.len() / dim.max(1);
        for (i, &r) in idx.iter().enumerate() {
            if r as usize >= rows {
                return Err(input(OP, format!("row {r} is past the {rows} rows of x")));
            }
            out[i * dim..(i + 1) * dim].copy_from_slice(&x[r as usize * dim..][..dim]);
        }
        Ok(())
    }
}

/// `act` over every value, in parallel (`quick_gelu` 16 lanes at a time where the CPU has
/// AVX-512, as the kernel's fused epilogue computes it).
fn apply_activation(x: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if act == Activation::QuickGelu && avx512::available() {
        // SAFETY: the CPU has AVX-512F.
        x.par_chunks_mut(16384)
            .for_each(|c| unsafe { avx512::quick_gelu_slice(c) });
        return;
    }
    x.par_chunks_mut(16384)
        .for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
}

#[cfg(test)]
mod tests {
    //! Each native op against a plain loop over the same definition, over shapes that include
    //! 1, odd sizes and 255/256/257 (the blocking boundaries of the GEMM kernels).

    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let (i, diff) = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .enumerate()
            .fold((0, 0.0f32), |b, (i, d)| if d > b.1 { (i, d) } else { b });
        assert!(
            diff <= tol,
            "{what}: element {i} is {} vs {} (relative error {diff})",
            got[i],
            want[i]
        );
    }

    fn linear_w(in_dim: usize, out_dim: usize, bias: bool, seed: u32) -> LinearW<Native> {
        LinearW {
            weight: values(out_dim * in_dim, seed),
            bias: bias.then(|| values(out_dim, seed + 1)),
            in_dim,
            out_dim,
        }
    }

    /// `x W^T + b` by plain loops, in f64.
    fn linear_ref(x: &[f32], l: &LinearW<Native>, rows: usize) -> Vec<f32> {
        let (k, n) = (l.in_dim, l.out_dim);
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = l.bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
                for p in 0..k {
                    acc += f64::from(x[r * k + p]) * f64::from(l.weight[j * k + p]);
                }
                out[r * n + j] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn linear_and_its_epilogues_match_plain_loops_on_edge_shapes() {
        let shapes = [
            (1, 1, 1),
            (1, 3, 5),
            (7, 257, 1),
            (255, 256, 257),
            (256, 255, 256),
            (257, 257, 255),
            (50, 64, 3),
        ];
        for (seed, &(rows, k, n)) in shapes.iter().enumerate() {
            let seed = seed as u32 * 10;
            for bias in [false, true] {
                let l = linear_w(k, n, bias, seed);
                let x = values(rows * k, seed + 2);
                let want = linear_ref(&x, &l, rows);
                let tol = 1e-5 * (k as f32).sqrt().max(1.0);
                let what = format!("{rows}x{k}x{n}, bias {bias}");

                let mut out = vec![f32::NAN; rows * n];
                Native
                    .linear(&x, &l, &mut out, rows, Epilogue::None)
                    .unwrap();
                assert_close(&format!("linear {what}"), &out, &want, tol);

                for act in [Activation::QuickGelu, Activation::Gelu] {
                    let mut out = vec![f32::NAN; rows * n];
                    Native
                        .linear(&x, &l, &mut out, rows, Epilogue::Activation(act))
                        .unwrap();
                    let acted: Vec<f32> = want.iter().map(|&v| act.apply(v)).collect();
                    assert_close(&format!("linear + {act:?} {what}"), &out, &acted, tol);
                }

                let residual = values(rows * n, seed + 3);
                let mut out = residual.clone();
                Native
                    .linear(&x, &l, &mut out, rows, Epilogue::Residual)
                    .unwrap();
                let summed: Vec<f32> = want.iter().zip(&residual).map(|(a, b)| a + b).collect();
                assert_close(&format!("linear + residual {what}"), &out, &summed, tol);
            }
        }
    }

    /// `gemm_post` against f64 loops on shapes that cross the AVX-512 kernel's register tile
    /// (6 x 64), depth block (256) and column block (1024) edges, with strided and transposed
    /// operands, `alpha`, accumulation and the fused `quick_gelu`; rows below 128 take the
    /// `gemm` crate, the same checks apply.
    #[test]
    fn products_match_plain_loops_across_kernel_block_edges() {
        let shapes = [
            (128, 1, 16),
            (131, 513, 1030),
            (200, 256, 64),
            (133, 257, 65),
            (185, 300, 130),
            (40, 70, 90),
        ];
        for (seed, &(m, k, n)) in shapes.iter().enumerate() {
            let seed = 100 + seed as u32 * 10;
            // A with a padded row stride; B either a plain [k, n] or a weight [n, k] read
            // transposed.
            let a_rs = k + 3;
            let a = values(m * a_rs, seed);
            let w = values(n * k, seed + 1);
            for transposed in [false, true] {
                let b_strides = if transposed { (1, k) } else { (n, 1) };
                for (alpha, accumulate, post) in [
                    (1.0, false, Post::None),
                    (0.5, true, Post::None),
                    (1.0, false, Post::QuickGelu),
                    (1.0, true, Post::QuickGelu),
                ] {
                    let start = values(m * n, seed + 2);
                    let mut c = if accumulate {
                        start.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    gemm_post(
                        &mut c,
                        (n, 1),
                        &a,
                        (a_rs, 1),
                        &w,
                        b_strides,
                        (m, n, k),
                        alpha,
                        accumulate,
                        true,
                        post,
                    )
                    .unwrap();
                    let mut want = vec![0.0f32; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            let mut acc = 0.0f64;
                            for p in 0..k {
                                let b = w[p * b_strides.0 + j * b_strides.1];
                                acc += f64::from(a[i * a_rs + p]) * f64::from(b);
                            }
                            let mut v = (acc * f64::from(alpha)) as f32;
                            if accumulate {
                                v += start[i * n + j];
                            }
                            if post == Post::QuickGelu {
                                v = Activation::QuickGelu.apply(v);
                            }
                            want[i * n + j] = v;
                        }
                    }
                    let what = format!(
                        "{m}x{k}x{n}, transposed {transposed}, alpha {alpha}, accumulate {accumulate}, {post:?}"
                    );
                    assert_close(&what, &c, &want, 1e-5 * (k as f32).sqrt());
                }
            }
        }
    }

    /// The 16-lane `quick_gelu` (AVX-512 epilogue) against the scalar definition, from deep in
    /// the negative tail (where `e^(-1.702 x)` overflows) to large positive values.
    #[test]
    fn vector_quick_gelu_matches_the_scalar_definition() {
        let mut x: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.06).collect();
        x.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            1e4,
            -1e4,
            f32::MAX,
            f32::MIN,
        ]);
        let want: Vec<f32> = x.iter().map(|&v| Activation::QuickGelu.apply(v)).collect();
        let mut got = x.clone();
        apply_activation(&mut got, Activation::QuickGelu);
        for ((g, w), v) in got.iter().zip(&want).zip(&x) {
            let err = (g - w).abs() / w.abs().max(1e-3);
            assert!(err <= 2e-6, "quick_gelu({v}) = {g}, want {w}");
        }
    }

    #[test]
    fn linear_rejects_short_tensors_with_the_shapes() {
        let l = linear_w(4, 3, true, 1);
        let mut out = vec![0.0; 6];
        let err = Native
            .linear(&vec![0.0; 7], &l, &mut out, 2, Epilogue::None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x holds 7 values") && err.contains('8'),
            "{err}"
        );
    }

    #[test]
    fn layer_norm_matches_plain_loops_on_dense_and_strided_rows() {
        for &(rows, cols) in &[(1, 1), (1, 257), (3, 255), (257, 256), (5, 768)] {
            let n = NormW::<Native> {
                weight: values(cols, 5),
                bias: values(cols, 6),
                dim: cols,
                eps: 1e-5,
            };
            // Strided input (every other row block, offset 3), dense output.
            let in_stride = 2 * cols + 1;
            let x = values(3 + rows * in_stride, 7);
            let layout = RowLayout {
                rows,
                cols,
                in_offset: 3,
                in_stride,
                out_stride: cols,
            };
            let mut y = vec![f32::NAN; rows * cols];
            Native.layer_norm(&x, &n, &mut y, layout).unwrap();
            let mut want = vec![0.0; rows * cols];
            for r in 0..rows {
                let xr = &x[3 + r * in_stride..][..cols];
                let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / cols as f64;
                let var = xr
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / cols as f64;
                for c in 0..cols {
                    let v = (f64::from(xr[c]) - mean) / (var + 1e-5).sqrt();
                    want[r * cols + c] = v as f32 * n.weight[c] + n.bias[c];
                }
            }
            assert_close(&format!("layer_norm {rows}x{cols}"), &y, &want, 1e-5);
        }
    }

    /// Attention by plain loops: per sequence, head and query, masked scores, softmax, sum.
    fn attention_ref(qkv: &[f32], a: &AttentionShape, mask: Option<&[u32]>) -> Vec<f32> {
        let (seq, hd, d) = (a.seq, a.head_dim, a.hidden());
        let mut out = vec![0.0; a.batch * seq * d];
        for s in 0..a.batch {
            for h in 0..a.heads {
                for i in 0..seq {
                    let q = &qkv[(s * seq + i) * 3 * d + h * hd..][..hd];
                    let mut scores: Vec<f64> = (0..seq)
                        .map(|j| {
                            let k = &qkv[(s * seq + j) * 3 * d + d + h * hd..][..hd];
                            let dot: f64 = q
                                .iter()
                                .zip(k)
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum();
                            let masked =
                                (a.causal && j > i) || mask.is_some_and(|m| m[s * seq + j] == 0);
                            if masked {
                                f64::NEG_INFINITY
                            } else {
                                dot * f64::from(a.scale)
                            }
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    scores.iter_mut().for_each(|v| *v = (*v - max).exp());
                    let sum: f64 = scores.iter().sum();
                    for c in 0..hd {
                        let mut acc = 0.0;
                        for (j, p) in scores.iter().enumerate() {
                            acc += p / sum
                                * f64::from(qkv[(s * seq + j) * 3 * d + 2 * d + h * hd + c]);
                        }
                        out[(s * seq + i) * d + h * hd + c] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_plain_loops_with_and_without_masks() {
        for &(batch, seq, heads, hd) in &[(1, 1, 1, 1), (2, 5, 3, 4), (3, 17, 2, 8), (1, 257, 1, 3)]
        {
            let a = AttentionShape {
                batch,
                seq,
                heads,
                head_dim: hd,
                scale: (hd as f32).powf(-0.5),
                causal: false,
            };
            let d = a.hidden();
            let qkv = values(batch * seq * 3 * d, 11);
            // Padding at the end of every sequence but the first; the first key stays visible.
            let mask: Vec<u32> = (0..batch * seq)
                .map(|r| u32::from(r / seq == 0 || r % seq < seq.div_ceil(2)))
                .collect();
            for causal in [false, true] {
                for m in [None, Some(&mask)] {
                    let a = AttentionShape { causal, ..a };
                    let mut ctx = vec![f32::NAN; batch * seq * d];
                    let mut scratch = Native.attention_scratch(&a).unwrap();
                    Native
                        .attention(&qkv, &mut scratch, &mut ctx, &a, m)
                        .unwrap();
                    let want = attention_ref(&qkv, &a, m.map(Vec::as_slice));
                    assert_close(
                        &format!("attention {a:?}, mask {}", m.is_some()),
                        &ctx,
                        &want,
                        1e-5,
                    );
                }
            }
        }
    }

    #[test]
    fn patch_embedding_matches_a_plain_convolution() {
        for &(batch, channels, image, patch, d) in
            &[(1, 1, 1, 1, 1), (2, 3, 6, 3, 5), (1, 3, 64, 32, 257)]
        {
            let g = PatchGeometry {
                batch,
                channels,
                image,
                patch,
            };
            let grid = image / patch;
            let seq = grid * grid + 1;
            let w = PatchW::<Native> {
                weight: values(d * g.patch_len(), 21),
                class: values(d, 22),
                position: values(seq * d, 23),
                dim: d,
            };
            let pixels = values(batch * channels * image * image, 24);
            let mut out = vec![f32::NAN; batch * seq * d];
            Native.patch_embed(&pixels, &w, &mut out, g).unwrap();
            let mut want = vec![0.0f32; batch * seq * d];
            for b in 0..batch {
                for o in 0..d {
                    want[b * seq * d + o] = w.class[o] + w.position[o];
                }
                for t in 0..grid * grid {
                    let (py, px) = (t / grid, t % grid);
                    for o in 0..d {
                        let mut acc = 0.0f64;
                        for c in 0..channels {
                            for y in 0..patch {
                                for x in 0..patch {
                                    let pix = pixels[((b * channels + c) * image + py * patch + y)
                                        * image
                                        + px * patch
                                        + x];
                                    let wt = w.weight[((o * channels + c) * patch + y) * patch + x];
                                    acc += f64::from(pix) * f64::from(wt);
                                }
                            }
                        }
                        want[(b * seq + t + 1) * d + o] = acc as f32 + w.position[(t + 1) * d + o];
                    }
                }
            }
            assert_close(&format!("patch_embed {g:?}, d {d}"), &out, &want, 1e-4);
        }
        let g = PatchGeometry {
            batch: 1,
            channels: 1,
            image: 5,
            patch: 2,
        };
        let w = PatchW::<Native> {
            weight: vec![0.0; 4],
            class: vec![0.0],
            position: vec![0.0; 5],
            dim: 1,
        };
        let err = Native
            .patch_embed(&[0.0; 25], &w, &mut vec![0.0; 5], g)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not divide"), "{err}");
    }

    #[test]
    fn token_embedding_and_row_gathers_pick_the_right_rows() {
        let (vocab, d, seq) = (7, 3, 2);
        let table = values(vocab * d, 31);
        let pos = values(seq * d, 32);
        let ids = [6u32, 0, 3, 3];
        let mut out = vec![0.0; ids.len() * d];
        Native
            .token_embed(&ids, &table, &pos, &mut out, seq)
            .unwrap();
        for (r, &id) in ids.iter().enumerate() {
            for c in 0..d {
                assert_eq!(
                    out[r * d + c],
                    table[id as usize * d + c] + pos[(r % seq) * d + c]
                );
            }
        }
        let err = Native
            .token_embed(&[7], &table, &pos, &mut vec![0.0; d], seq)
            .unwrap_err()
            .to_string();
        assert!(err.contains("token id 7"), "{err}");

        let mut picked = vec![0.0; 2 * d];
        Native.gather_rows(&out, &[3, 1], &mut picked, d).unwrap();
        assert_eq!(&picked[..d], &out[3 * d..4 * d]);
        assert_eq!(&picked[d..], &out[d..2 * d]);
        let err = Native
            .gather_rows(&out, &[4], &mut vec![0.0; d], d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 4"), "{err}");
    }
}
