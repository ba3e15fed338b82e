//! The uniform blocks of the kernels, one `#[repr(C)]` struct per WGSL `struct`, field for
//! field, passed to a launch with `bytemuck::bytes_of`. WGSL's uniform layout puts an
//! `array<vec4<u32>, 2>` (eight words) on a 16-byte boundary and rounds the block up to 16
//! bytes: the explicit `_pad` fields say where, and the size test below holds them to it.

use bytemuck::{Pod, Zeroable};

/// Eight words of a per-input `array<vec4<_>, 2>` (thresholds, weights, bracket bounds),
/// zero past `values`.
pub(crate) fn words8<T: Copy + Default>(values: &[T]) -> [T; 8] {
    let mut out = [T::default(); 8];
    out[..values.len()].copy_from_slice(values);
    out
}

/// An element count that must fit the kernels' u32 indices (chunks hold at most 2^30).
pub(crate) fn len32(n: u64) -> u32 {
    u32::try_from(n).expect("chunks hold at most 2^30 elements")
}

/// `Params { n }` of convert.wgsl and ties_votes.wgsl's `ties_votes`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct LenParams {
    pub n: u32,
    pub _pad: [u32; 3],
}

impl LenParams {
    pub(crate) fn new(n: u64) -> Self {
        LenParams {
            n: len32(n),
            _pad: [0; 3],
        }
    }
}

/// `ScatterParams` of convert.wgsl's `scatter32`: `n` values into a tensor of `len`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ScatterParams {
    pub n: u32,
    pub len: u32,
    pub _pad: [u32; 2],
}

/// `Params` of reduce.wgsl: the chunk length and the first partial (or counter) slot.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct ReduceParams {
    pub n: u32,
    pub offset: u32,
    pub _pad: [u32; 2],
}

/// `Params` of band.wgsl: keep `lower <= |x| < upper` (bits; no upper bound unless
/// `has_upper`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BandParams {
    pub n: u32,
    pub lower: u32,
    pub upper: u32,
    pub has_upper: u32,
}

/// `Params` of dare.wgsl: the chunk, its first element's global index, the seed and the
/// tensor's key (64-bit values as lo/hi words), the keep threshold and the rescale factor.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct DareParams {
    pub n: u32,
    pub first_lo: u32,
    pub first_hi: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub key_lo: u32,
    pub key_hi: u32,
    pub keep_above: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// `Params` of select.wgsl's `radix_histogram`: the digit at `shift` (`digit_mask` wide) of
/// the entries whose bits under `prefix_mask` equal `prefix`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct SelectParams {
    pub n: u32,
    pub shift: u32,
    pub prefix: u32,
    pub prefix_mask: u32,
    pub digit_mask: u32,
    pub _pad: [u32; 3],
}

/// `BracketParams` of select.wgsl: each model's bracket `[lo, hi)` of bits and the offset of
/// its counters.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BracketParams {
    pub n: u32,
    pub _pad: [u32; 3],
    pub lo: [u32; 8],
    pub hi: [u32; 8],
    pub off: [u32; 8],
}

/// `Params` of weighted_sum.wgsl: one weight per input.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct WeightedSumParams {
    pub n: u32,
    pub _pad: [u32; 3],
    pub w: [f32; 8],
}

/// `Params` of ties_elect.wgsl and ties_elect_sum.wgsl: each model's trim threshold as the
/// bits of `|threshold|` (compared with `abs_bits`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct TrimParams {
    pub n: u32,
    pub _pad: [u32; 3],
    pub thr: [u32; 8],
}

/// `UndecidedParams` of ties_votes.wgsl's `ties_undecided`: the counter slot it adds to.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct UndecidedParams {
    pub n: u32,
    pub slot: u32,
    pub _pad: [u32; 2],
}

/// `Params` of ties_merge.wgsl's `ties_merge_sum` and `ties_merge_delta`: the majority sign
/// and each model's threshold bits.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MergeParams {
    pub n: u32,
    pub majority: f32,
    pub _pad: [u32; 2],
    pub thr: [u32; 8],
}

/// `FinalParams` of ties_merge.wgsl's `ties_finalize`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct FinalParams {
    pub n: u32,
    pub majority: f32,
    pub _pad: [u32; 2],
}

/// `MergeNParams` of ties_fused.wgsl: `out = base * w_base + λ · merged`, thresholds, and
/// the slot of the undecided counter.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MergeNParams {
    pub n: u32,
    pub majority: f32,
    pub w_base: f32,
    pub lambda: f32,
    pub thr: [u32; 8],
    pub slot: u32,
    pub _pad: [u32; 3],
}

/// `BracketMergeParams` of ties_bracket.wgsl: [`MergeNParams`] with brackets instead of
/// thresholds, and the first dirty-bit word of the chunk.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BracketMergeParams {
    pub n: u32,
    pub majority: f32,
    pub w_base: f32,
    pub lambda: f32,
    pub lo: [u32; 8],
    pub hi: [u32; 8],
    pub off: [u32; 8],
    pub slot: u32,
    pub dirty_at: u32,
    pub _pad: [u32; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn blocks_have_the_wgsl_sizes_and_offsets() {
        // Sizes of the WGSL structs in the uniform address space (16-byte rounded).
        assert_eq!(size_of::<LenParams>(), 16);
        assert_eq!(size_of::<ScatterParams>(), 16);
        assert_eq!(size_of::<ReduceParams>(), 16);
        assert_eq!(size_of::<BandParams>(), 16);
        assert_eq!(size_of::<DareParams>(), 48);
        assert_eq!(size_of::<SelectParams>(), 32);
        assert_eq!(size_of::<BracketParams>(), 112);
        assert_eq!(size_of::<WeightedSumParams>(), 48);
        assert_eq!(size_of::<TrimParams>(), 48);
        assert_eq!(size_of::<UndecidedParams>(), 16);
        assert_eq!(size_of::<MergeParams>(), 48);
        assert_eq!(size_of::<FinalParams>(), 16);
        assert_eq!(size_of::<MergeNParams>(), 64);
        assert_eq!(size_of::<BracketMergeParams>(), 128);
        // The per-input arrays start on 16 bytes, in lane order.
        let p = MergeNParams {
            n: 7,
            majority: -1.0,
            w_base: 1.0,
            lambda: 0.3,
            thr: words8(&[1, 2]),
            slot: 5,
            _pad: [0; 3],
        };
        let b = bytemuck::bytes_of(&p);
        assert_eq!(&b[0..4], &7u32.to_le_bytes());
        assert_eq!(&b[4..8], &(-1.0f32).to_le_bytes());
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(&b[24..48], &[0u8; 24]);
        assert_eq!(&b[48..52], &5u32.to_le_bytes());
        let m = BracketMergeParams {
            n: 1,
            majority: 1.0,
            w_base: 1.0,
            lambda: 1.0,
            lo: words8(&[3]),
            hi: words8(&[4]),
            off: words8(&[9]),
            slot: 2,
            dirty_at: 6,
            _pad: [0; 2],
        };
        let b = bytemuck::bytes_of(&m);
        for (at, v) in [(16, 3u32), (48, 4), (80, 9), (112, 2), (116, 6)] {
            assert_eq!(&b[at..at + 4], &v.to_le_bytes(), "word at {at}");
        }
    }
}
