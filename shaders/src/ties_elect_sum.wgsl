// requires: common.wgsl
//
// TIES sign election, step 1, over task vectors: S = [S +] sum_k trim(x_k), trim(v) = v where
// |v| >= threshold_k else 0 (FusionBench topk_values_mask keeps |v| >= the k-th value, ties
// included), in f32. The elected sign is sign(S) (ties_votes.wgsl counts signs for the global
// majority). Thresholds come as f32 bit patterns compared as ordered bits (abs_bits), the order
// the radix select used to find them. ties_elect.wgsl holds the variants that take fine-tuned
// tensors and the base instead of task vectors.
//
// A template for N = 1 .. 8 inputs, expanded by fusion_kernels::wgsl::ties_elect_sum(N) (every
// `//@each` line once per input k; see weighted_sum.wgsl). Bindings: 0 = uniform Params,
// 1 = S (read_write f32), 2 + k = x_k (read, X{k}_DTYPE).

override ACCUMULATE: bool = false;
//@each override X{k}_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    thr: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> s_out: array<u32>;
//@each @group(0) @binding({k+2}) var<storage, read> x{k}: array<u32>;

fn trim(v: vec2<f32>, thr: u32) -> vec2<f32> {
    return vec2<f32>(select(0.0, v.x, abs_bits(v.x) >= thr), select(0.0, v.y, abs_bits(v.y) >= thr));
}

@compute @workgroup_size(WG)
fn ties_elect_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = vec2<f32>(0.0);
    if (ACCUMULATE) {
        acc = decode_pair(s_out[2u * t], s_out[min(2u * t + 1u, n - 1u)], DT_F32);
    }
//@each     acc += trim(decode_pair(x{k}[word_lo(t, X{k}_DTYPE)], x{k}[word_hi(t, X{k}_DTYPE, n)], X{k}_DTYPE), p.thr[{k/4}][{k%4}]);
    s_out[2u * t] = bitcast<u32>(acc.x);
    if (2u * t + 1u < n) {
        s_out[2u * t + 1u] = bitcast<u32>(acc.y);
    }
}
