// f16 and bf16 codecs for 16-bit tensors bound as array<u32>, two elements a word (element 2i
// in the low half). Integer operations, not unpack2x16float / pack2x16float, which WGSL lets
// round either way: these round to nearest even, bit-identical to the `half` crate on every
// vendor. This file is `fusion_plugin_api::HALF_WGSL`, the one copy: plugin kernels get it from
// `Kernel::with_half_prelude`, and fusion-kernels puts it in front of its `common.wgsl`.

fn f16_bits_to_f32(h: u32) -> f32 {
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

fn f32_to_f16_bits(x: f32) -> u32 {
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

fn bf16_bits_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn f32_to_bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        // NaN stays a (quiet) NaN.
        return ((b >> 16u) | 0x40u) & 0xffffu;
    }
    return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}

fn unpack_f16x2(w: u32) -> vec2<f32> {
    return vec2<f32>(f16_bits_to_f32(w & 0xffffu), f16_bits_to_f32(w >> 16u));
}

fn pack_f16x2(v: vec2<f32>) -> u32 {
    return f32_to_f16_bits(v.x) | (f32_to_f16_bits(v.y) << 16u);
}

fn unpack_bf16x2(w: u32) -> vec2<f32> {
    return vec2<f32>(bf16_bits_to_f32(w & 0xffffu), bf16_bits_to_f32(w >> 16u));
}

fn pack_bf16x2(v: vec2<f32>) -> u32 {
    return f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u);
}
