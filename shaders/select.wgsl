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
