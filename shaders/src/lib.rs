//! The kernel library of fusion-host: WGSL kernels (one concern per file in `shaders/`) and the
//! Rust functions that launch them through a plugin's [`Compute`](fusion_plugin_api::Compute)
//! handle. Depends only on `fusion-plugin-api`, so any plugin can use it.
//!
//! Tensors may be f32, f16 or bf16 (16-bit ones packed two per word); arithmetic is f32 and
//! outputs are rounded to nearest even. Every function fits its launches to the device's
//! limits: 1-D jobs spread over x/y ([`dispatch_1d`]), tensors past one storage binding run in
//! aligned chunks ([`chunks`]), inputs beyond the storage-buffer limit run in batches.
//!
//! ```no_run
//! # fn demo(c: &dyn fusion_plugin_api::Compute, base: fusion_plugin_api::GpuTensor,
//! #         ft: &[fusion_plugin_api::GpuTensor]) -> fusion_plugin_api::Result<()> {
//! use fusion_plugin_api::DType;
//! // Task arithmetic for one tensor: base + 0.3 * Σ (ft_i - base).
//! let mut inputs: Vec<_> = ft.iter().map(|&t| (t, 0.3)).collect();
//! inputs.push((base, 1.0 - 0.3 * ft.len() as f32));
//! let merged = fusion_kernels::weighted_sum(c, &inputs, DType::F32)?;
//! # let _ = merged; Ok(()) }
//! ```

#![warn(missing_docs)]

mod band;
mod dare;
mod elementwise;
mod launch;
pub mod linalg;
pub mod mergekit;
pub mod nn;
mod reduce;
mod select;
mod slerp;
mod ties;
mod uniforms;
pub mod wgsl;

pub use band::{breadcrumbs, breadcrumbs_counts, magnitude_band};
pub use dare::{dare, dare_delta, dare_keep, philox4x32_10, tensor_key, Dare};
pub use elementwise::{
    accumulate, convert, convert_into, scale_add, scatter32, task_vector, weighted_sum,
    weighted_sum_into,
};
pub use launch::{
    chunk_elements, chunks, dispatch_1d, dtype_code, is_software_adapter, loop_rows, quads,
    set_loop_rows, workgroup_size, Chunk, SOFTWARE_LOOP_ROWS,
};
pub use reduce::{
    count_nonfinite, count_nonfinite_into, count_nonfinite_slots, dot, l2_norm, sum, sum_counts,
    sum_squares,
};
pub use select::{
    histogram_max_workgroups, histogram_workgroups, kth_largest_magnitude,
    kth_largest_magnitude_with, pick_bin, radix_bracket_delta, radix_bracket_fits, radix_histogram,
    radix_histogram_delta, radix_plan, radix_plan_fits, ties_threshold, topk_rank_from_top,
    RadixBracket, RadixDigit, RadixState, BRACKET_MAX_MODELS, HISTOGRAM_MAX_WORKGROUPS,
    LOCAL_DIGIT_BITS, LOOP_MAX_WORKGROUPS, MAX_BRACKET_BINS, RADIX_BYTES, RADIX_TWO_PASS,
    SOFTWARE_HISTOGRAM_WORKGROUPS, TWO_PASS_MIN_ELEMENTS,
};
pub use slerp::{slerp, slerp_weights, SLERP_DOT_THRESHOLD, SLERP_EPS};
pub use ties::{
    ties_bracket_merge_delta, ties_bracket_merge_fits, ties_elect_delta, ties_elect_merge_delta,
    ties_elected_sum, ties_elected_sum_delta, ties_fused_fits, ties_merge, ties_merge_delta_scaled,
    ScaledTiesMerge, SignVotes, TiesAccumulator, TiesBracketPass, TiesMerge, TIES_FUSED_MAX_MODELS,
};
