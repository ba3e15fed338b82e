// requires: common.wgsl
//
// Convert a chunk of n elements between f32, f16 and bf16 (round to nearest even).
//
// Bindings: 0 = out (read_write, OUT_DTYPE), 1 = x (read, X_DTYPE), 2 = uniform Params.

override OUT_DTYPE: u32 = 0u;
override X_DTYPE: u32 = 0u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn convert(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t >= pair_count(n)) {
        return;
    }
    let v = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
    if (OUT_DTYPE == DT_F32) {
        out[2u * t] = bitcast<u32>(v.x);
        if (2u * t + 1u < n) {
            out[2u * t + 1u] = bitcast<u32>(v.y);
        }
    } else {
        out[t] = encode_pair16(v, OUT_DTYPE);
    }
}

// scatter32: out[idx[i]] = values[i] for i < n, for 32-bit elements; indices at or past `len`
// (out's element count) are skipped. Binds 0 = out (read_write), 1 = values, 2 = idx,
// 3 = uniform ScatterParams.

struct ScatterParams {
    n: u32,
    len: u32,
}

@group(0) @binding(2) var<storage, read> sc_idx: array<u32>;
@group(0) @binding(3) var<uniform> psc: ScatterParams;

@compute @workgroup_size(WG)
fn scatter32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= psc.n) {
        return;
    }
    let at = sc_idx[i];
    if (at < psc.len) {
        out[at] = x[i];
    }
}
