// What every gemm kernel shares (`gemm.wgsl`, `ext/gemm_subgroup.wgsl`, `ext/gemm_coop.wgsl`
// are each compiled after `include/act.wgsl` and this file; see `wgsl.rs`): the overrides, the
// uniform block and bindings, operand reads, batch bases and the fused epilogue. For every
// batch z = (z0, z1) and element (r, col) of C:
//
//     C[z][r, col] = act(alpha * (op(A[z]) op(B[z]))[r, col] + bias[col]) + R[z][r, col]
//                    (+ beta * C[z][r, col] with ACCUMULATE)
//
// op(A) is [M, K]: A stored row-major [M, K] with row stride lda, or with A_TRANS stored [K, M]
// (A[m, k] = a[k * lda + m]). op(B) is [K, N]: stored [K, N], or with B_TRANS [N, K]. Offsets and
// the two batch strides of every operand are in elements. The bias term is there with BIAS, the
// activation with ACT (0 none, 1 quick_gelu, 2 gelu), the residual R (laid out as C: same
// offset, row stride and batch strides, in its own tensor) with RESIDUAL. An in-place residual
// (R = C) is ACCUMULATE with beta = 1; the host turns one into the other.
//
// Bindings: 0 = A, 1 = B, 2 = C (read_write), 3 = uniform Params, 4 = bias [N], 5 = R. The host
// binds all six; without BIAS or RESIDUAL it binds A again in their place (never read).

override A_TRANS: bool = false;
override B_TRANS: bool = false;
override ACCUMULATE: bool = false;
override BIAS: bool = false;
override ACT: u32 = 0u;
override RESIDUAL: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch1: u32,
    tiles_m: u32,
    tiles_n: u32,
    total_tiles: u32,
    alpha: f32,
    beta: f32,
    a_off: u32,
    lda: u32,
    a_s0: u32,
    a_s1: u32,
    b_off: u32,
    ldb: u32,
    b_s0: u32,
    b_s1: u32,
    c_off: u32,
    ldc: u32,
    c_s0: u32,
    c_s1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> bias_v: array<f32>;
@group(0) @binding(5) var<storage, read> resid: array<f32>;

// op(A)[r, kk] of the batch starting at `base` (no bounds check).
fn a_at(base: u32, r: u32, kk: u32) -> f32 {
    if (A_TRANS) {
        return a[base + kk * p.lda + r];
    }
    return a[base + r * p.lda + kk];
}

// op(B)[kk, cc] of the batch starting at `base` (no bounds check).
fn b_at(base: u32, kk: u32, cc: u32) -> f32 {
    if (B_TRANS) {
        return b[base + cc * p.ldb + kk];
    }
    return b[base + kk * p.ldb + cc];
}

// Where batch z (flat, z0 * batch1 + z1) of each operand starts.
struct Bases {
    a: u32,
    b: u32,
    c: u32,
}

fn bases_of(z: u32) -> Bases {
    let z0 = z / p.batch1;
    let z1 = z % p.batch1;
    var out: Bases;
    out.a = p.a_off + z0 * p.a_s0 + z1 * p.a_s1;
    out.b = p.b_off + z0 * p.b_s0 + z1 * p.b_s1;
    out.c = p.c_off + z0 * p.c_s0 + z1 * p.c_s1;
    return out;
}

// Stores the epilogue of the product `v` at C[idx], column `col` (both in range).
fn store_one(idx: u32, col: u32, v: f32) {
    var out = p.alpha * v;
    if (BIAS) {
        out += bias_v[col];
    }
    if (ACT == 1u) {
        out = act_quick_gelu(out);
    } else if (ACT == 2u) {
        out = act_gelu(out);
    }
    if (RESIDUAL) {
        out += resid[idx];
    }
    if (ACCUMULATE) {
        out += p.beta * c[idx];
    }
    c[idx] = out;
}

// Stores C[r, col..col + 4] of the batch at c_base from the products `v`, dropping columns
// past N.
fn store4(c_base: u32, r: u32, col: u32, v: vec4<f32>) {
    let base = c_base + r * p.ldc + col;
    for (var j = 0u; j < 4u; j++) {
        if (col + j < p.n) {
            store_one(base + j, col + j, v[j]);
        }
    }
}

// store4, dropping a row past M.
fn store_row(c_base: u32, r: u32, col: u32, v: vec4<f32>) {
    if (r < p.m) {
        store4(c_base, r, col, v);
    }
}
