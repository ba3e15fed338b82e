//! The WGSL sources, embedded at compile time.
//!
//! WGSL has no `#include`; each kernel file whose first line is `// requires: common.wgsl` is
//! compiled as `common.wgsl` followed by the file. The constants here are those complete
//! sources, ready for [`fusion_plugin_api::KernelCall::source`].

macro_rules! with_common {
    ($file:literal) => {
        concat!(
            include_str!("../common.wgsl"),
            "\n",
            include_str!(concat!("../", $file))
        )
    };
}

/// Shared codecs and indexing (no entry points); a prefix of every other source here.
pub const COMMON: &str = include_str!("../common.wgsl");
/// `convert`: dtype conversion.
pub const CONVERT: &str = with_common!("convert.wgsl");
/// `weighted_sum_1` .. `weighted_sum_8`: `out = [out +] Σ w_k x_k`.
pub const WEIGHTED_SUM: &str = with_common!("weighted_sum.wgsl");
/// `radix_histogram`: one pass of the k-th largest magnitude select.
pub const SELECT: &str = with_common!("select.wgsl");
/// `ties_elect_1` .. `ties_elect_8`: sum of trimmed task vectors.
pub const TIES_ELECT: &str = with_common!("ties_elect.wgsl");
/// `ties_votes`: global counts of elected signs.
pub const TIES_VOTES: &str = with_common!("ties_votes.wgsl");
/// `ties_merge_1` .. `ties_merge_8`, `ties_finalize`: disjoint merge.
pub const TIES_MERGE: &str = with_common!("ties_merge.wgsl");
/// `dare`, `dare_delta`: random drop and rescale.
pub const DARE: &str = with_common!("dare.wgsl");
/// `magnitude_band`: keep entries whose magnitude lies in a band (breadcrumbs).
pub const BAND: &str = with_common!("band.wgsl");
/// `reduce_partial`, `reduce_dot`: sums, sums of squares, dot products.
pub const REDUCE: &str = with_common!("reduce.wgsl");

/// Every kernel source by file name, for tests and tools.
pub const ALL: &[(&str, &str)] = &[
    ("common.wgsl", COMMON),
    ("convert.wgsl", CONVERT),
    ("weighted_sum.wgsl", WEIGHTED_SUM),
    ("select.wgsl", SELECT),
    ("ties_elect.wgsl", TIES_ELECT),
    ("ties_votes.wgsl", TIES_VOTES),
    ("ties_merge.wgsl", TIES_MERGE),
    ("dare.wgsl", DARE),
    ("band.wgsl", BAND),
    ("reduce.wgsl", REDUCE),
];

/// The most inputs one multi-input entry point (`weighted_sum_N`, `ties_elect_N`,
/// `ties_merge_N`) binds; more are processed in batches.
pub const MAX_ARITY: usize = 8;
