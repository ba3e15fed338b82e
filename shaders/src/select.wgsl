// requires: common.wgsl
//
// One pass of a radix select over |x| for the k-th largest magnitude (TIES trimming): a
// histogram of one digit of abs_bits(x), the `digit_mask` bits at `shift`, counting only
// elements whose higher bits equal `prefix` (under `prefix_mask`). The host scans the bins
// between passes; the digits of a select (shaders/src/select.rs, RadixDigit) cover all 31 bits,
// so the last pass pins down the exact f32 bit pattern.
//
// For non-NaN floats the order of abs_bits is the order of |x|, so bins need no float compares.
//
// Two ways to count:
// - radix_histogram (digits of up to 12 bits, 4096 bins): invocations loop over the elements
//   with a grid stride (launch at most HISTOGRAM_MAX_WORKGROUPS workgroups, see
//   shaders/src/select.rs) and count into workgroup memory first, then add their non-zero bins
//   to the global counters, so global atomics are few.
// - radix_histogram_direct (any digit width, e.g. the 19 low bits after a 12-bit first digit):
//   each matching element adds to the global bin itself. Meant for a pass after the first, where
//   only the elements of one bin of the previous digit (a few percent) match, and the bins
//   (2^19) are too many for workgroup memory.
// Either way the global bins are 64-bit (lo, hi) counters, so a model of more than 2^32
// parameters still counts exactly; a carry is added by the one invocation whose add wrapped.
//
// Bindings: 0 = histogram (read_write, 2 words per bin: bin b at 2b, 2b+1), 1 = x (read,
// X_DTYPE), 2 = uniform Params. The `_delta` entry points count |x - base| instead (a task
// vector that is never written out): 0 = histogram, 1 = x (X_DTYPE), 2 = base (B_DTYPE),
// 3 = uniform Params. The difference is taken in f32 after decoding both, exactly as the
// task_vector kernel computes it.

override X_DTYPE: u32 = 0u;
override B_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    shift: u32,
    prefix: u32,
    prefix_mask: u32,
    // (1 << digit bits) - 1; at most 0xfff for radix_histogram.
    digit_mask: u32,
}

const LOCAL_BINS: u32 = 4096u;

@group(0) @binding(0) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<uniform> pd: Params;

var<workgroup> local_hist: array<atomic<u32>, LOCAL_BINS>;

fn add64(bin: u32, c: u32) {
    let old = atomicAdd(&hist[2u * bin], c);
    if (old > 0xffffffffu - c) {
        atomicAdd(&hist[2u * bin + 1u], 1u);
    }
}

fn count_local(v: f32, q: Params) {
    let bits = abs_bits(v);
    if ((bits & q.prefix_mask) == q.prefix) {
        atomicAdd(&local_hist[(bits >> q.shift) & q.digit_mask], 1u);
    }
}

fn count_direct(v: f32, q: Params) {
    let bits = abs_bits(v);
    if ((bits & q.prefix_mask) == q.prefix) {
        add64((bits >> q.shift) & q.digit_mask, 1u);
    }
}

fn clear_local(lid: u32, bins: u32) {
    for (var b = lid; b < bins; b += WG) {
        atomicStore(&local_hist[b], 0u);
    }
    workgroupBarrier();
}

fn flush_local(lid: u32, bins: u32) {
    workgroupBarrier();
    for (var b = lid; b < bins; b += WG) {
        let c = atomicLoad(&local_hist[b]);
        if (c != 0u) {
            add64(b, c);
        }
    }
}

fn load_x(t: u32, n: u32) -> vec2<f32> {
    return decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
}

fn load_delta(t: u32, n: u32) -> vec2<f32> {
    let bv = decode_pair(base[word_lo(t, B_DTYPE)], base[word_hi(t, B_DTYPE, n)], B_DTYPE);
    return load_x(t, n) - bv;
}

// Grid-stride loops: a dispatch may have fewer invocations than pairs (the launchers cap it), so
// each workgroup's bin clearing and flushing is paid once per many elements.

@compute @workgroup_size(WG)
fn radix_histogram(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = p;
    let bins = min(q.digit_mask + 1u, LOCAL_BINS);
    clear_local(lid, bins);
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let v = load_x(t, n);
        count_local(v.x, q);
        if (2u * t + 1u < n) {
            count_local(v.y, q);
        }
    }
    flush_local(lid, bins);
}

@compute @workgroup_size(WG)
fn radix_histogram_delta(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = pd;
    let bins = min(q.digit_mask + 1u, LOCAL_BINS);
    clear_local(lid, bins);
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let v = load_delta(t, n);
        count_local(v.x, q);
        if (2u * t + 1u < n) {
            count_local(v.y, q);
        }
    }
    flush_local(lid, bins);
}

@compute @workgroup_size(WG)
fn radix_histogram_direct(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let q = p;
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let v = load_x(t, n);
        count_direct(v.x, q);
        if (2u * t + 1u < n) {
            count_direct(v.y, q);
        }
    }
}

@compute @workgroup_size(WG)
fn radix_histogram_direct_delta(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let q = pd;
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let v = load_delta(t, n);
        count_direct(v.x, q);
        if (2u * t + 1u < n) {
            count_direct(v.y, q);
        }
    }
}

// radix_bracket_delta_n: one pass that settles the select of up to eight task vectors at once
// once a bracket [lo, hi) of abs_bits is known to hold each one's k-th largest magnitude (the
// host guesses the brackets from a sample and checks them with these counts; see
// shaders/src/select.rs, radix_bracket_delta). For model k, every element of |x_k - base| with
// bits >= hi_k is counted in one 64-bit "above" counter, and each with lo_k <= bits < hi_k in
// its own bin, bits - lo_k; the rest are not counted. Model k's counters start at word off_k of
// the counts buffer: above (lo, hi words), then bin b at off_k + 2 + 2b.
//
// Invocations loop with a grid stride (launch few workgroups) and keep their "above" counts in
// registers, so that only elements inside a bracket (a few percent) touch memory atomically.
//
// Bindings: 0 = counts (read_write), 1..8 = x0..x7 (X_DTYPE, X1_DTYPE.. X7_DTYPE; slots past
// INPUTS are bound to x0 and never read), 9 = base (B_DTYPE), 10 = uniform BracketParams.

override INPUTS: u32 = 8u;
override X1_DTYPE: u32 = 0u;
override X2_DTYPE: u32 = 0u;
override X3_DTYPE: u32 = 0u;
override X4_DTYPE: u32 = 0u;
override X5_DTYPE: u32 = 0u;
override X6_DTYPE: u32 = 0u;
override X7_DTYPE: u32 = 0u;

struct BracketParams {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    lo: array<vec4<u32>, 2>,
    hi: array<vec4<u32>, 2>,
    off: array<vec4<u32>, 2>,
}

@group(0) @binding(2) var<storage, read> bx1: array<u32>;
@group(0) @binding(3) var<storage, read> bx2: array<u32>;
@group(0) @binding(4) var<storage, read> bx3: array<u32>;
@group(0) @binding(5) var<storage, read> bx4: array<u32>;
@group(0) @binding(6) var<storage, read> bx5: array<u32>;
@group(0) @binding(7) var<storage, read> bx6: array<u32>;
@group(0) @binding(8) var<storage, read> bx7: array<u32>;
@group(0) @binding(9) var<storage, read> b_base: array<u32>;
@group(0) @binding(10) var<uniform> pb: BracketParams;

var<workgroup> local_above: array<atomic<u32>, 8>;

fn add64_at(w: u32, c: u32) {
    let old = atomicAdd(&hist[w], c);
    if (old > 0xffffffffu - c) {
        atomicAdd(&hist[w + 1u], 1u);
    }
}

// Count the pair v of model k: returns how many of its elements are above the bracket and adds
// those inside it to their bins. `second` says whether v.y is an element (odd n).
fn bracket_pair(k: u32, v: vec2<f32>, second: bool) -> u32 {
    let lo = pb.lo[k / 4u][k % 4u];
    let hi = pb.hi[k / 4u][k % 4u];
    let off = pb.off[k / 4u][k % 4u];
    var above = 0u;
    let bx = abs_bits(v.x);
    if (bx >= hi) {
        above += 1u;
    } else if (bx >= lo) {
        add64_at(off + 2u + 2u * (bx - lo), 1u);
    }
    if (second) {
        let by = abs_bits(v.y);
        if (by >= hi) {
            above += 1u;
        } else if (by >= lo) {
            add64_at(off + 2u + 2u * (by - lo), 1u);
        }
    }
    return above;
}

fn bl0(t: u32, n: u32) -> vec2<f32> { return load_x(t, n); }
fn bl1(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx1[word_lo(t, X1_DTYPE)], bx1[word_hi(t, X1_DTYPE, n)], X1_DTYPE); }
fn bl2(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx2[word_lo(t, X2_DTYPE)], bx2[word_hi(t, X2_DTYPE, n)], X2_DTYPE); }
fn bl3(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx3[word_lo(t, X3_DTYPE)], bx3[word_hi(t, X3_DTYPE, n)], X3_DTYPE); }
fn bl4(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx4[word_lo(t, X4_DTYPE)], bx4[word_hi(t, X4_DTYPE, n)], X4_DTYPE); }
fn bl5(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx5[word_lo(t, X5_DTYPE)], bx5[word_hi(t, X5_DTYPE, n)], X5_DTYPE); }
fn bl6(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx6[word_lo(t, X6_DTYPE)], bx6[word_hi(t, X6_DTYPE, n)], X6_DTYPE); }
fn bl7(t: u32, n: u32) -> vec2<f32> { return decode_pair(bx7[word_lo(t, X7_DTYPE)], bx7[word_hi(t, X7_DTYPE, n)], X7_DTYPE); }
fn bl_base(t: u32, n: u32) -> vec2<f32> { return decode_pair(b_base[word_lo(t, B_DTYPE)], b_base[word_hi(t, B_DTYPE, n)], B_DTYPE); }

@compute @workgroup_size(WG)
fn radix_bracket_delta_n(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid < 8u) {
        atomicStore(&local_above[lid], 0u);
    }
    workgroupBarrier();
    let n = pb.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    var above_a = vec4<u32>(0u);
    var above_b = vec4<u32>(0u);
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let b = bl_base(t, n);
        let second = 2u * t + 1u < n;
        above_a.x += bracket_pair(0u, bl0(t, n) - b, second);
        if (INPUTS > 1u) { above_a.y += bracket_pair(1u, bl1(t, n) - b, second); }
        if (INPUTS > 2u) { above_a.z += bracket_pair(2u, bl2(t, n) - b, second); }
        if (INPUTS > 3u) { above_a.w += bracket_pair(3u, bl3(t, n) - b, second); }
        if (INPUTS > 4u) { above_b.x += bracket_pair(4u, bl4(t, n) - b, second); }
        if (INPUTS > 5u) { above_b.y += bracket_pair(5u, bl5(t, n) - b, second); }
        if (INPUTS > 6u) { above_b.z += bracket_pair(6u, bl6(t, n) - b, second); }
        if (INPUTS > 7u) { above_b.w += bracket_pair(7u, bl7(t, n) - b, second); }
    }
    local_add(0u, above_a.x);
    local_add(1u, above_a.y);
    local_add(2u, above_a.z);
    local_add(3u, above_a.w);
    local_add(4u, above_b.x);
    local_add(5u, above_b.y);
    local_add(6u, above_b.z);
    local_add(7u, above_b.w);
    workgroupBarrier();
    if (lid < INPUTS) {
        let c = atomicLoad(&local_above[lid]);
        if (c != 0u) {
            add64_at(pb.off[lid / 4u][lid % 4u], c);
        }
    }
}

// radix_bracket_delta_q: radix_bracket_delta_n where every tensor is f32, four elements per
// invocation through vec4 loads; elements past n (the padding of the last quad) are not counted.

@group(0) @binding(1) var<storage, read> q_x0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> q_x1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q_x2: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> q_x3: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q_x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> q_x5: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> q_x6: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> q_x7: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> q_base: array<vec4<f32>>;

// Count the quad v of model k whose first `valid` lanes are elements: returns how many are
// above the bracket and adds those inside it to their bins.
fn bracket_quad(k: u32, v: vec4<f32>, valid: u32) -> u32 {
    let lo = pb.lo[k / 4u][k % 4u];
    let hi = pb.hi[k / 4u][k % 4u];
    let off = pb.off[k / 4u][k % 4u];
    let bits = bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu);
    let lanes = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(valid);
    let up = select(vec4<u32>(0u), vec4<u32>(1u), lanes & (bits >= vec4<u32>(hi)));
    let inside = lanes & (bits < vec4<u32>(hi)) & (bits >= vec4<u32>(lo));
    if (any(inside)) {
        for (var j = 0u; j < 4u; j++) {
            if (inside[j]) {
                add64_at(off + 2u + 2u * (bits[j] - lo), 1u);
            }
        }
    }
    return up.x + up.y + up.z + up.w;
}

@compute @workgroup_size(WG)
fn radix_bracket_delta_q(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = pb.n;
    let quads = (n + 3u) / 4u;
    let grid = nwg.x * nwg.y * nwg.z * WG;
    // Counts above, models 0..3 and 4..7 (vectors, not an array: nothing dynamic to spill).
    var above_a = vec4<u32>(0u);
    var above_b = vec4<u32>(0u);
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < quads; i++) {
        let t = row_item(f, i, grid);
        let b = q_base[t];
        let valid = min(n - 4u * t, 4u);
        above_a.x += bracket_quad(0u, q_x0[t] - b, valid);
        if (INPUTS > 1u) { above_a.y += bracket_quad(1u, q_x1[t] - b, valid); }
        if (INPUTS > 2u) { above_a.z += bracket_quad(2u, q_x2[t] - b, valid); }
        if (INPUTS > 3u) { above_a.w += bracket_quad(3u, q_x3[t] - b, valid); }
        if (INPUTS > 4u) { above_b.x += bracket_quad(4u, q_x4[t] - b, valid); }
        if (INPUTS > 5u) { above_b.y += bracket_quad(5u, q_x5[t] - b, valid); }
        if (INPUTS > 6u) { above_b.z += bracket_quad(6u, q_x6[t] - b, valid); }
        if (INPUTS > 7u) { above_b.w += bracket_quad(7u, q_x7[t] - b, valid); }
    }
    // Few invocations loop over the chunk: each adds its counts itself (no barrier).
    global_above(0u, above_a.x);
    global_above(1u, above_a.y);
    global_above(2u, above_a.z);
    global_above(3u, above_a.w);
    global_above(4u, above_b.x);
    global_above(5u, above_b.y);
    global_above(6u, above_b.z);
    global_above(7u, above_b.w);
}

fn global_above(k: u32, c: u32) {
    if (c != 0u) {
        add64_at(pb.off[k / 4u][k % 4u], c);
    }
}


fn local_add(k: u32, c: u32) {
    if (c != 0u) {
        atomicAdd(&local_above[k], c);
    }
}
