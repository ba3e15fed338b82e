// requires: common.wgsl
//
// One pass of a radix select over |x| for the k-th largest magnitude (TIES trimming): a
// 256-bin histogram of byte `shift/8` of abs_bits(x), counting only elements whose higher
// bytes equal `prefix` (under `prefix_mask`). Four passes (shift 24, 16, 8, 0) pin down the
// exact f32 bit pattern; the host only scans the 256 bins between passes.
//
// For non-NaN floats the order of abs_bits is the order of |x|, so bins need no float compares.
// Invocations loop over the elements with a grid stride (launch at most
// HISTOGRAM_MAX_WORKGROUPS workgroups, see shaders/src/select.rs). Each workgroup counts into
// workgroup memory first, then adds its non-zero bins to the global
// 64-bit (lo, hi) counters, so global atomics are few and a model of more than 2^32 parameters
// still counts exactly.
//
// Bindings: 0 = histogram (read_write, 512 words: bin b at 2b, 2b+1), 1 = x (read, X_DTYPE),
// 2 = uniform Params.
//
// radix_histogram_delta counts |x - base| instead (a task vector that is never written out):
// 0 = histogram, 1 = x (X_DTYPE), 2 = base (B_DTYPE), 3 = uniform Params. The difference is
// taken in f32 after decoding both, exactly as the task_vector kernel computes it.

override X_DTYPE: u32 = 0u;
override B_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    shift: u32,
    prefix: u32,
    prefix_mask: u32,
}

@group(0) @binding(0) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<uniform> pd: Params;

var<workgroup> local_hist: array<atomic<u32>, 256>;

fn count(v: f32, q: Params) {
    let bits = abs_bits(v);
    if ((bits & q.prefix_mask) == q.prefix) {
        atomicAdd(&local_hist[(bits >> q.shift) & 0xffu], 1u);
    }
}

fn clear_local(lid: u32) {
    for (var b = lid; b < 256u; b += WG) {
        atomicStore(&local_hist[b], 0u);
    }
    workgroupBarrier();
}

fn flush_local(lid: u32) {
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG) {
        let c = atomicLoad(&local_hist[b]);
        if (c != 0u) {
            let old = atomicAdd(&hist[2u * b], c);
            if (old > 0xffffffffu - c) {
                atomicAdd(&hist[2u * b + 1u], 1u);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn radix_histogram(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    clear_local(lid);
    // Grid-stride: a dispatch may have fewer invocations than pairs (the launchers cap it), so
    // each workgroup's bin clearing and flushing is paid once per many elements.
    let q = p;
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let v = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
        count(v.x, q);
        if (2u * t + 1u < n) {
            count(v.y, q);
        }
    }
    flush_local(lid);
}

@compute @workgroup_size(WG)
fn radix_histogram_delta(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    clear_local(lid);
    let q = pd;
    let n = q.n;
    let pairs = pair_count(n);
    let stride = nwg.x * nwg.y * nwg.z * WG;
    for (var t = flat_index(gid, nwg); t < pairs; t += stride) {
        let xv = decode_pair(x[word_lo(t, X_DTYPE)], x[word_hi(t, X_DTYPE, n)], X_DTYPE);
        let bv = decode_pair(base[word_lo(t, B_DTYPE)], base[word_hi(t, B_DTYPE, n)], B_DTYPE);
        let v = xv - bv;
        count(v.x, q);
        if (2u * t + 1u < n) {
            count(v.y, q);
        }
    }
    flush_local(lid);
}
