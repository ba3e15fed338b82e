// requires: common.wgsl
//
// Weighted sum of N tensors over one chunk: out = [out +] sum_k w_k * x_k, arithmetic in f32.
// Also the task vector (w = 1, -1), scale-and-add (w = 1, lambda) and, with ACCUMULATE, the
// running accumulation of more inputs than one launch can bind.
//
// A template for N = 1 .. 8 inputs: WGSL cannot vary the number of bindings with an override,
// so fusion_kernels::wgsl::weighted_sum(N) writes every line that starts with `//@each` once per
// input k (see wgsl::expand_inputs), and the launch binds exactly N inputs. As written here (no
// inputs) the file is valid WGSL too.
//
// Bindings: 0 = uniform Params, 1 = out (read_write), 2 + k = x_k (read).

override ACCUMULATE: bool = false;
override OUT_DTYPE: u32 = 0u;
//@each override X{k}_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    w: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
//@each @group(0) @binding({k+2}) var<storage, read> x{k}: array<u32>;

fn start(t: u32, n: u32) -> vec2<f32> {
    if (ACCUMULATE) {
        return decode_pair(out[word_lo(t, OUT_DTYPE)], out[word_hi(t, OUT_DTYPE, n)], OUT_DTYPE);
    }
    return vec2<f32>(0.0);
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

// One pair of elements per invocation, inputs of any mix of f32/f16/bf16 (X{k}_DTYPE).
@compute @workgroup_size(WG)
fn weighted_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
//@each     acc += p.w[{k/4}][{k%4}] * decode_pair(x{k}[word_lo(t, X{k}_DTYPE)], x{k}[word_hi(t, X{k}_DTYPE, n)], X{k}_DTYPE);
    store(t, acc, n);
}

// weighted_sum_q: the same for f32 inputs into an f32 out, four elements per invocation
// through vec4 loads (software adapters run it about twice as fast as pairs of scalar loads).
// Same arithmetic in the same order, same bindings. Tensors are padded to 16 bytes by the
// runtime, so the last quad reads zeros past n and writes into the padding.

@group(0) @binding(1) var<storage, read_write> q_out: array<vec4<f32>>;
//@each @group(0) @binding({k+2}) var<storage, read> q_x{k}: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn weighted_sum_q(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    if (t >= (p.n + 3u) / 4u) {
        return;
    }
    var acc = vec4<f32>(0.0);
    if (ACCUMULATE) {
        acc = q_out[t];
    }
//@each     acc += p.w[{k/4}][{k%4}] * q_x{k}[t];
    q_out[t] = acc;
}
