// requires: fusion_plugin_api::HALF_WGSL
// Shared helpers: element codecs for packed f16/bf16 storage, pair indexing, and the flat
// invocation index of a 1-D job spread over x/y/z. fusion-kernels prepends this file to every
// kernel whose first line is `// requires: common.wgsl`.
//
// Storage layout (plugin-api compute.rs): every tensor is an array<u32>. f32 elements are one
// word each; f16 and bf16 are packed two per word, element 2i in the low half. Each invocation
// handles one *pair* of elements (2t, 2t+1), so a 16-bit output word has exactly one writer.
//
// The f16/bf16 conversions are plugin-api's HALF_WGSL (`unpack_f16x2`, `pack_f16x2`, ...: integer
// operations that round to nearest even, bit-identical to the `half` crate on every vendor),
// which fusion-kernels puts in front of this file.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// Invocations per workgroup (1-D). Set from the device limits by the host side.
override WG: u32 = 256u;

// Items (quads) per invocation in the row-blocked loops of `row_item`. Set by the host side
// (fusion_kernels::loop_rows): many on software adapters, where an invocation's closing atomic
// adds cost more than the loads of one quad, one on GPUs.
override ROWS: u32 = 1u;

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
        return unpack_f16x2(lo);
    }
    return unpack_bf16x2(lo);
}

// A pair packed into one word of a 16-bit dtype.
fn encode_pair16(v: vec2<f32>, dt: u32) -> u32 {
    if (dt == DT_F16) {
        return pack_f16x2(v);
    }
    return pack_bf16x2(v);
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
