// requires: common.wgsl
//
// mergekit's generalized task arithmetic (`generalized_task_arithmetic.py`) and linear merge,
// step by step in the order fusion-mergekit's CPU path computes them, so that the device and
// the CPU agree bit for bit where the arithmetic is the same. All tensors are f32, one element
// per invocation. `ROUND` rounds every step to the working dtype as mergekit's tensors in that
// dtype are: 0 = none (float32), 1 = bfloat16 (round to nearest even on the upper 16 bits).
//
// Entry points (each binds its own resources; shared binding numbers belong to different entry
// points, which WGSL allows):
//   mk_delta:       0 = out (rw), 1 = x (read), 2 = y (read), 3 = uniform P   out = q(x - y)
//   mk_random_keep: 0 = out (rw), 1 = uniform P   out = 0 where the splitmix64 draw of the
//                   element's global index is not below the density (DARE's Bernoulli keep)
//   mk_abs:         0 = out (rw), 1 = x (read), 2 = uniform P              out = |x|
//   mk_scale:       0 = out (rw), 1 = uniform P        out = q((out * s) * w)
//   mk_add:         0 = out (rw), 1 = x (read), 2 = uniform P              out = out + x
//   mk_agree_add:   0 = mixed (rw), 1 = div (rw), 2 = s (read), 3 = x (read), 4 = uniform P
//                   consensus: where x != 0 and sign(x) is the majority sign of s (+ where
//                   s >= 0), mixed += x and div += w; otherwise mixed += x everywhere
//   mk_finish:      0 = out (rw, holds mixed), 1 = base (read), 2 = div (read), 3 = uniform P
//                   the normalisation, lambda and the base, each step rounded
//   mk_axpy:        0 = out (rw), 1 = x (read), 2 = uniform P              out = fma(x, w, out)
//   mk_div:         0 = out (rw), 1 = uniform P                            out = out / s
//   mk_della_keep:  0 = out (rw), 1 = x (read), 2 = thresholds (read, u32 pairs), 3 = uniform P
//                   DELLA's MagPrune keep: in each row of `a` elements, the element of
//                   magnitude rank k (ascending, ties by position) takes draw row_start + k of
//                   the splitmix64 stream keyed (b, c) and stays where it is below T[k]

override ROUND: u32 = 0u;

struct P {
    n: u32,
    // mk_random_keep: the first element's global index (lo, hi), the key (lo, hi), the
    // threshold T (lo, hi) of `(z >> 11) < T`. Others: flags and f32 bit patterns.
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> x1: array<f32>;
@group(0) @binding(2) var<storage, read> y2: array<f32>;
@group(0) @binding(3) var<uniform> p3: P;

@group(0) @binding(1) var<uniform> p1: P;

@group(0) @binding(2) var<uniform> p2: P;

@group(0) @binding(2) var<storage, read> thresholds: array<u32>;

@group(0) @binding(1) var<storage, read_write> div_rw: array<f32>;
@group(0) @binding(2) var<storage, read> s2: array<f32>;
@group(0) @binding(3) var<storage, read> x3: array<f32>;
@group(0) @binding(4) var<uniform> p4: P;


fn q(v: f32) -> f32 {
    if (ROUND == 0u) {
        return v;
    }
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return v; // NaN stays as it is
    }
    return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
}

// 64-bit unsigned arithmetic on (lo, hi) pairs.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let p = mul32(a.x, b.x);
    return vec2<u32>(p.x, p.y + a.x * b.y + a.y * b.x);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// a >> s for 0 < s < 32.
fn shr64(a: vec2<u32>, s: u32) -> vec2<u32> {
    return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}

fn xor_shr64(a: vec2<u32>, s: u32) -> vec2<u32> {
    return a ^ shr64(a, s);
}

@compute @workgroup_size(WG)
fn mk_delta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p3.n) {
        return;
    }
    out[i] = q(x1[i] - y2[i]);
}

// The (index + 1)-th splitmix64 output from `key`, shifted to its top 53 bits.
fn draw53(index0: vec2<u32>, key: vec2<u32>) -> vec2<u32> {
    let index = add64(index0, vec2<u32>(1u, 0u));
    var z = add64(key, mul64(index, vec2<u32>(0x7F4A7C15u, 0x9E3779B9u)));
    z = mul64(xor_shr64(z, 30u), vec2<u32>(0x1CE4E5B9u, 0xBF58476Du));
    z = mul64(xor_shr64(z, 27u), vec2<u32>(0x133111EBu, 0x94D049BBu));
    z = xor_shr64(z, 31u);
    return shr64(z, 11u);
}

@compute @workgroup_size(WG)
fn mk_della_keep(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p3.n) {
        return;
    }
    let len = p3.a;
    let start = i / len * len;
    let mine = abs_bits(x1[i]);
    var rank = 0u;
    for (var j = start; j < start + len; j = j + 1u) {
        let m = abs_bits(x1[j]);
        if (m < mine || (m == mine && j < i)) {
            rank = rank + 1u;
        }
    }
    let r = draw53(vec2<u32>(start + rank, 0u), vec2<u32>(p3.b, p3.c));
    let t = vec2<u32>(thresholds[2u * rank], thresholds[2u * rank + 1u]);
    let below = r.y < t.y || (r.y == t.y && r.x < t.x);
    out[i] = select(0.0, x1[i], below);
}

@compute @workgroup_size(WG)
fn mk_random_keep(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p1.n) {
        return;
    }
    // The (index + 1)-th splitmix64 output from the key, as the CPU's sequential stream gives
    // it to element `index`.
    let index = add64(vec2<u32>(p1.a, p1.b), vec2<u32>(i + 1u, 0u));
    var z = add64(vec2<u32>(p1.c, p1.d), mul64(index, vec2<u32>(0x7F4A7C15u, 0x9E3779B9u)));
    z = mul64(xor_shr64(z, 30u), vec2<u32>(0x1CE4E5B9u, 0xBF58476Du));
    z = mul64(xor_shr64(z, 27u), vec2<u32>(0x133111EBu, 0x94D049BBu));
    z = xor_shr64(z, 31u);
    let r = shr64(z, 11u);
    let below = r.y < p1.f || (r.y == p1.f && r.x < p1.e);
    if (!below) {
        out[i] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn mk_abs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p2.n) {
        return;
    }
    out[i] = abs(x1[i]);
}

@compute @workgroup_size(WG)
fn mk_scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p1.n) {
        return;
    }
    let s = bitcast<f32>(p1.a);
    let w = bitcast<f32>(p1.b);
    out[i] = q((out[i] * s) * w);
}

@compute @workgroup_size(WG)
fn mk_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p2.n) {
        return;
    }
    out[i] = out[i] + x1[i];
}

@compute @workgroup_size(WG)
fn mk_agree_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p4.n) {
        return;
    }
    let v = x3[i];
    if (p4.a == 0u) {
        out[i] = out[i] + v;
        return;
    }
    let majority = select(-1.0, 1.0, s2[i] >= 0.0);
    if (v != 0.0 && sign(v) == majority) {
        out[i] = out[i] + v;
        div_rw[i] = div_rw[i] + bitcast<f32>(p4.b);
    }
}

@compute @workgroup_size(WG)
fn mk_finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p3.n) {
        return;
    }
    // a = normalize, b = consensus, c = total (f32 bits), d = lambda (f32 bits).
    var mixed = q(out[i]);
    if (p3.a != 0u) {
        var divisor = bitcast<f32>(p3.c);
        if (p3.b != 0u) {
            let d = y2[i];
            divisor = select(q(d), 1.0, d == 0.0);
        } else if (abs(divisor) < 1e-8) {
            divisor = 1.0;
        }
        mixed = q(mixed / divisor);
    }
    let lambda = bitcast<f32>(p3.d);
    if (lambda != 1.0) {
        mixed = q(mixed * lambda);
    }
    out[i] = q(x1[i] + mixed);
}

@compute @workgroup_size(WG)
fn mk_axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p2.n) {
        return;
    }
    out[i] = fma(x1[i], bitcast<f32>(p2.a), out[i]);
}

@compute @workgroup_size(WG)
fn mk_div(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p1.n) {
        return;
    }
    out[i] = out[i] / bitcast<f32>(p1.a);
}
