// Shared helpers: element codecs for packed f16/bf16 storage, pair indexing, and the flat
// invocation index of a 1-D job spread over x/y/z. fusion-kernels prepends this file to every
// kernel whose first line is `// requires: common.wgsl`.
//
// Storage layout (plugin-api compute.rs): every tensor is an array<u32>. f32 elements are one
// word each; f16 and bf16 are packed two per word, element 2i in the low half. Each invocation
// handles one *pair* of elements (2t, 2t+1), so a 16-bit output word has exactly one writer.
//
// The f16/bf16 conversions are done with integer operations, not unpack2x16float /
// pack2x16float, because WGSL lets those round either way; these round to nearest even,
// bit-identical to the `half` crate on every vendor.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// Invocations per workgroup (1-D). Set from the device limits by the host side.
override WG: u32 = 256u;

// Items (quads) per invocation in the row-blocked loops of `row_item`. Set by the host side
// (fusion_kernels::loop_rows): many on software adapters, where an invocation's closing atomic
// adds cost more than the loads of one quad, one on GPUs.
override ROWS: u32 = 1u;

fn f16_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24, a normal (exact) f32.
        let v = f32(m) * 5.9604644775390625e-8;
        return select(v, -v, s != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let s = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        // Inf stays inf; NaN stays a (quiet) NaN.
        return s | 0x7c00u | select(0u, 0x200u | ((a >> 13u) & 0x3ffu), a > 0x7f800000u);
    }
    if (a >= 0x477ff000u) {
        // >= 65520 rounds past the largest f16.
        return s | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        // Normal f16: rebias the exponent, round to nearest even at bit 13.
        let r = a + 0x0fffu + ((a >> 13u) & 1u);
        return s | ((r - 0x38000000u) >> 13u);
    }
    if (a < 0x33000000u) {
        // Below half the smallest subnormal (2^-25 itself ties to even, i.e. to zero).
        return s;
    }
    // Subnormal f16: count units of 2^-24, rounding to nearest even.
    let e = a >> 23u;
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    let q = m >> shift;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    let up = select(0u, 1u, rem > half || (rem == half && (q & 1u) == 1u));
    return s | (q + up);
}

fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return ((b >> 16u) | 0x40u) & 0xffffu;
    }
    return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}

// Number of element pairs (invocations) for n elements.
fn pair_count(n: u32) -> u32 {
    return (n >> 1u) + (n & 1u);
}

// Word index of the first element of pair t.
fn word_lo(t: u32, dt: u32) -> u32 {
    return select(t, 2u * t, dt == DT_F32);
}

// Word index of the second element of pair t (clamped to the last element for odd n).
fn word_hi(t: u32, dt: u32, n: u32) -> u32 {
    return select(t, min(2u * t + 1u, n - 1u), dt == DT_F32);
}

// The two elements of a pair, as f32, from the words at word_lo / word_hi.
fn decode_pair(lo: u32, hi: u32, dt: u32) -> vec2<f32> {
    if (dt == DT_F32) {
        return vec2<f32>(bitcast<f32>(lo), bitcast<f32>(hi));
    }
    if (dt == DT_F16) {
        return vec2<f32>(f16_to_f32(lo & 0xffffu), f16_to_f32(lo >> 16u));
    }
    return vec2<f32>(bf16_to_f32(lo & 0xffffu), bf16_to_f32(lo >> 16u));
}

// A pair packed into one word of a 16-bit dtype.
fn encode_pair16(v: vec2<f32>, dt: u32) -> u32 {
    if (dt == DT_F16) {
        return f32_to_f16(v.x) | (f32_to_f16(v.y) << 16u);
    }
    return f32_to_bf16(v.x) | (f32_to_bf16(v.y) << 16u);
}

// The flat invocation index of a 1-D job spread over x, y and z (see dispatch_1d); invocations
// past the end of the job must bounds-check it.
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

// Item `i` of invocation `f` (its flat index) in a row-blocked grid-stride loop over a grid of
// `grid` invocations: each workgroup takes a block of ROWS rows of WG consecutive items, lane
// `f % WG` of every row (so neighbouring invocations read neighbouring items, as in a plain grid
// stride, and the rows run through memory in order), then the block `grid * ROWS` items on.
// Increasing in `i`: loop while it is below the item count. With ROWS = 1 it is `f + i * grid`.
fn row_item(f: u32, i: u32, grid: u32) -> u32 {
    let lane = f % WG;
    return (f - lane) * ROWS + lane + (i / ROWS) * grid * ROWS + (i % ROWS) * WG;
}

// |x| as ordered bits: for non-NaN floats, a >= b exactly when bits(a) >= bits(b). Selection and
// trimming compare these, so a threshold found by the radix select trims exactly the same set
// no matter how the device treats subnormals.
fn abs_bits(x: f32) -> u32 {
    return bitcast<u32>(x) & 0x7fffffffu;
}
