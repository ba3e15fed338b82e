// requires: common.wgsl
//
// Magnitude band mask: keep x where lower <= |x| and (no upper bound, or |x| < upper), else 0.
// With thresholds from the radix select this is Model Breadcrumbs' `magnitude_outliers` (drop
// the smallest and the largest magnitudes). Bounds are f32 bit patterns compared as ordered
// bits (abs_bits), the order the select used.
//
// Bindings: 0 = out (read_write, OUT_DTYPE), 1 = x (read, X_DTYPE), 2 = uniform Params.

override OUT_DTYPE: u32 = 0u;
override X_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    lower: u32,
    upper: u32,
    has_upper: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

fn band(v: f32) -> f32 {
    let m = abs_bits(v);
    let keep = m >= p.lower && (p.has_upper == 0u || m < p.upper);
    return select(0.0, v, keep);
}

@compute @workgroup_size(WG)
fn magnitude_band(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t >= pair_count(n)) {
        return;
    }
    let v = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
    let r = vec2<f32>(band(v.x), band(v.y));
    if (OUT_DTYPE == DT_F32) {
        out[2u * t] = bitcast<u32>(r.x);
        if (2u * t + 1u < n) {
            out[2u * t + 1u] = bitcast<u32>(r.y);
        }
    } else {
        out[t] = encode_pair16(r, OUT_DTYPE);
    }
}
