// requires: common.wgsl
//
// DARE drop-and-rescale (FusionBench dare/utils.py param_random_drop_): keep an element when
// its uniform draw u satisfies u > p (torch: `rand_like(x) > sparsity`), then multiply kept
// elements by `scale` (1 / (1 - p) when rescaling, else 1).
//
// The draw is counter-based, so a mask depends only on (seed, tensor key, element index), not
// on launch order or chunking: Philox4x32-10 (Salmon et al., SC'11) with counter
// (index_lo, index_hi, key_lo, key_hi) and key (seed_lo, seed_hi); u = (word0 >> 8) * 2^-24, the
// 24-bit resolution of torch.rand for f32. The host turns p into the integer `keep_above` =
// floor(p * 2^24), and u > p is then exactly (word0 >> 8) > keep_above, with no float rounding
// on the device.
//
// Entry points:
//   dare:       0 = out (read_write, OUT_DTYPE), 1 = x (read, X_DTYPE), 2 = uniform Params
//   dare_delta: 0 = out, 1 = x (fine-tuned), 2 = base (BASE_DTYPE), 3 = uniform Params;
//               drops from the task vector x - base without materializing it.

override OUT_DTYPE: u32 = 0u;
override X_DTYPE: u32 = 0u;
override BASE_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    // Global element index of this chunk's first element (64-bit).
    first_lo: u32,
    first_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    key_lo: u32,
    key_hi: u32,
    keep_above: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<uniform> pd: Params;

// 32x32 -> 64-bit product as (hi, lo); WGSL has no 64-bit integers.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let m0 = mulhilo(0xD2511F53u, c.x);
        let m1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

fn keep(q: Params, local: u32) -> bool {
    let lo = q.first_lo + local;
    let hi = q.first_hi + select(0u, 1u, lo < local);
    let r = philox4x32_10(vec4<u32>(lo, hi, q.key_lo, q.key_hi), vec2<u32>(q.seed_lo, q.seed_hi));
    return (r.x >> 8u) > q.keep_above;
}

fn apply(q: Params, t: u32, v: vec2<f32>) -> vec2<f32> {
    let a = select(0.0, v.x * q.scale, keep(q, 2u * t));
    let b = select(0.0, v.y * q.scale, keep(q, 2u * t + 1u));
    return vec2<f32>(a, b);
}

fn store(t: u32, v: vec2<f32>, n: u32) {
    if (OUT_DTYPE == DT_F32) {
        out[2u * t] = bitcast<u32>(v.x);
        if (2u * t + 1u < n) {
            out[2u * t + 1u] = bitcast<u32>(v.y);
        }
    } else {
        out[t] = encode_pair16(v, OUT_DTYPE);
    }
}

@compute @workgroup_size(WG)
fn dare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t >= pair_count(n)) {
        return;
    }
    let v = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
    store(t, apply(p, t, v), n);
}

@compute @workgroup_size(WG)
fn dare_delta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = pd.n;
    if (t >= pair_count(n)) {
        return;
    }
    let v = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
    let b = decode_pair(base[word_lo(t, BASE_DTYPE)], base[word_hi(t, BASE_DTYPE, n)], BASE_DTYPE);
    store(t, apply(pd, t, v - b), n);
}
