//! The WGSL sources, embedded at compile time.
//!
//! WGSL has no `#include`; each kernel file whose first line is `// requires: <file>` is
//! compiled after that file (itself composed the same way): `// requires: common.wgsl` puts
//! `common.wgsl` in front, and `common.wgsl` itself requires plugin-api's
//! [`HALF_WGSL`](fusion_plugin_api::kernel::HALF_WGSL), the one copy of the f16/bf16 codecs.
//! The constants here are those complete sources, ready for
//! [`fusion_plugin_api::KernelCall::source`].

/// The total length of `parts`, for `join!`.
const fn joined_len(parts: &[&str]) -> usize {
    let mut len = 0;
    let mut i = 0;
    while i < parts.len() {
        len += parts[i].len();
        i += 1;
    }
    len
}

/// The bytes of `parts` one after another (`N` must be their [`joined_len`]), for `join!`.
const fn join_bytes<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < parts.len() {
        let bytes = parts[i].as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(at == N, "join_bytes: N is not the joined length");
    out
}

/// `&'static str` constants joined at compile time. `concat!` takes only literals, and the
/// codecs in front of `common.wgsl` are another crate's constant, not a file here.
macro_rules! join {
    ($($part:expr),+ $(,)?) => {{
        const PARTS: &[&str] = &[$($part),+];
        const BYTES: [u8; joined_len(PARTS)] = join_bytes(PARTS);
        match std::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("joined WGSL sources are not UTF-8"),
        }
    }};
}

macro_rules! with_common {
    ($file:literal) => {
        join!(COMMON, "\n", include_str!($file))
    };
}

/// Shared codecs and indexing (no entry points): plugin-api's f16/bf16 codecs, then
/// `common.wgsl`; a prefix of every other source here.
pub const COMMON: &str = join!(
    fusion_plugin_api::kernel::HALF_WGSL,
    "\n",
    include_str!("common.wgsl")
);
/// `convert`: dtype conversion.
pub const CONVERT: &str = with_common!("convert.wgsl");
/// The template of `weighted_sum` and `weighted_sum_q`, `out = [out +] Σ w_k x_k`, as written
/// (no inputs); [`weighted_sum`] gives the source for N inputs.
pub const WEIGHTED_SUM: &str = with_common!("weighted_sum.wgsl");
/// `radix_histogram`: one pass of the k-th largest magnitude select.
pub const SELECT: &str = with_common!("select.wgsl");
/// `ties_elect_delta`, `ties_elect_delta_n`, `ties_elect_delta_q`: sums of trimmed differences
/// of fine-tuned tensors and the base.
pub const TIES_ELECT: &str = with_common!("ties_elect.wgsl");
/// The template of `ties_elect_sum`, the sum of trimmed task vectors, as written (no inputs);
/// [`ties_elect_sum`] gives the source for N inputs.
pub const TIES_ELECT_SUM: &str = with_common!("ties_elect_sum.wgsl");
/// `ties_votes`: global counts of elected signs.
pub const TIES_VOTES: &str = with_common!("ties_votes.wgsl");
/// `ties_merge_sum` (a template, see [`ties_merge_sum`]), `ties_merge_delta`, `ties_finalize`:
/// the disjoint merge, model by model into accumulators.
pub const TIES_MERGE: &str = with_common!("ties_merge.wgsl");
/// `ties_merge_delta_n`, `ties_merge_delta_q`, `ties_elect_merge_delta_q`: trim, elect and
/// disjoint merge of one key in one launch (`ties_fused.wgsl` after [`TIES_MERGE`], whose
/// helpers it uses).
pub const TIES_FUSED: &str = join!(TIES_MERGE, "\n", include_str!("ties_fused.wgsl"));
/// `ties_bracket_merge_delta_q`: the fused merge while the thresholds are bracketed
/// (`ties_bracket.wgsl` after [`TIES_FUSED`]).
pub const TIES_BRACKET: &str = join!(TIES_FUSED, "\n", include_str!("ties_bracket.wgsl"));
/// `dare`, `dare_delta`: random drop and rescale.
pub const DARE: &str = with_common!("dare.wgsl");
/// `magnitude_band`: keep entries whose magnitude lies in a band (breadcrumbs).
pub const BAND: &str = with_common!("band.wgsl");
/// `reduce_partial`, `reduce_dot`: sums, sums of squares, dot products.
pub const REDUCE: &str = with_common!("reduce.wgsl");
/// `mk_*`: mergekit's task arithmetic and linear merge step by step (see `mergekit.rs`).
pub const MERGEKIT: &str = with_common!("mergekit.wgsl");

/// Every kernel source by file name, for tests and tools.
pub const ALL: &[(&str, &str)] = &[
    ("common.wgsl", COMMON),
    ("convert.wgsl", CONVERT),
    ("weighted_sum.wgsl", WEIGHTED_SUM),
    ("select.wgsl", SELECT),
    ("ties_elect.wgsl", TIES_ELECT),
    ("ties_elect_sum.wgsl", TIES_ELECT_SUM),
    ("ties_votes.wgsl", TIES_VOTES),
    ("ties_merge.wgsl", TIES_MERGE),
    ("ties_fused.wgsl", TIES_FUSED),
    ("ties_bracket.wgsl", TIES_BRACKET),
    ("dare.wgsl", DARE),
    ("band.wgsl", BAND),
    ("reduce.wgsl", REDUCE),
    ("mergekit.wgsl", MERGEKIT),
];

/// The most inputs one multi-input kernel (`weighted_sum`, `ties_elect_sum`, `ties_merge_sum`)
/// binds; more are processed in batches.
pub const MAX_ARITY: usize = 8;

/// The marker of a template line written once per input.
const EACH: &str = "//@each ";

/// Expand a kernel template for `inputs` inputs: every line that starts with `//@each ` is
/// written once per input `k` (0 ..= inputs − 1), the marker dropped, with `{k}`, `{k+1}`,
/// `{k+2}`, `{k/4}` and `{k%4}` replaced by those values; other lines stay as they are.
///
/// This is how one WGSL entry point serves any input count: WGSL cannot vary the number of
/// bindings with an `override`, and binding unused slots would need more storage buffers than
/// the device may allow.
pub fn expand_inputs(template: &str, inputs: usize) -> String {
    let mut out = String::with_capacity(template.len() + inputs * 256);
    for line in template.lines() {
        match line.strip_prefix(EACH) {
            Some(each) => {
                for k in 0..inputs {
                    let line = each
                        .replace("{k}", &k.to_string())
                        .replace("{k+1}", &(k + 1).to_string())
                        .replace("{k+2}", &(k + 2).to_string())
                        .replace("{k/4}", &(k / 4).to_string())
                        .replace("{k%4}", &(k % 4).to_string());
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// One expansion of `template` per input count 1 ..= [`MAX_ARITY`], made on first use and kept.
struct Expanded {
    name: &'static str,
    template: &'static str,
    sources: std::sync::OnceLock<Vec<String>>,
}

impl Expanded {
    const fn new(name: &'static str, template: &'static str) -> Self {
        Expanded {
            name,
            template,
            sources: std::sync::OnceLock::new(),
        }
    }

    fn get(&'static self, inputs: usize) -> &'static str {
        assert!(
            (1..=MAX_ARITY).contains(&inputs),
            "{} takes 1 to {MAX_ARITY} inputs per launch, not {inputs}",
            self.name
        );
        &self.sources.get_or_init(|| {
            (1..=MAX_ARITY)
                .map(|n| expand_inputs(self.template, n))
                .collect()
        })[inputs - 1]
    }
}

/// The `weighted_sum` / `weighted_sum_q` source for `inputs` inputs (1 ..= [`MAX_ARITY`]).
///
/// # Panics
/// If `inputs` is 0 or past [`MAX_ARITY`].
pub fn weighted_sum(inputs: usize) -> &'static str {
    static SOURCES: Expanded = Expanded::new("weighted_sum", WEIGHTED_SUM);
    SOURCES.get(inputs)
}

/// The `ties_elect_sum` source for `inputs` task vectors (1 ..= [`MAX_ARITY`]).
///
/// # Panics
/// If `inputs` is 0 or past [`MAX_ARITY`].
pub fn ties_elect_sum(inputs: usize) -> &'static str {
    static SOURCES: Expanded = Expanded::new("ties_elect_sum", TIES_ELECT_SUM);
    SOURCES.get(inputs)
}

/// The TIES merge source with `ties_merge_sum` expanded for `inputs` task vectors
/// (1 ..= [`MAX_ARITY`]); its other entry points are those of [`TIES_MERGE`].
///
/// # Panics
/// If `inputs` is 0 or past [`MAX_ARITY`].
pub fn ties_merge_sum(inputs: usize) -> &'static str {
    static SOURCES: Expanded = Expanded::new("ties_merge_sum", TIES_MERGE);
    SOURCES.get(inputs)
}

/// The dense (neural-network) kernels under `src/nn/`, launched by the CLIP model's op layer.
/// They do not use `common.wgsl`; the parts several of them share live under `src/nn/include/`
/// (no entry points) and are put in front of the files that use them here.
pub mod nn {
    use super::{join_bytes, joined_len};

    /// `nn/include/act.wgsl`: the activation functions (quick_gelu, gelu and its erf), shared
    /// by [`ACTIVATION`], [`GRAD`] and the gemm epilogue.
    pub const ACT_FNS: &str = include_str!("nn/include/act.wgsl");
    /// `nn/include/gemm_common.wgsl` after [`ACT_FNS`]: what every gemm kernel shares (overrides,
    /// uniform block, bindings, operand reads, batch bases, the fused epilogue).
    pub const GEMM_COMMON: &str = join!(ACT_FNS, "\n", include_str!("nn/include/gemm_common.wgsl"));
    /// `nn/layer_norm.wgsl`: row-wise layer norm.
    pub const LAYER_NORM: &str = include_str!("nn/layer_norm.wgsl");
    /// `nn/softmax.wgsl`: row-wise softmax with causal and key-padding masks.
    pub const SOFTMAX: &str = include_str!("nn/softmax.wgsl");
    /// `nn/activation.wgsl`: quick_gelu and exact gelu.
    pub const ACTIVATION: &str = join!(ACT_FNS, "\n", include_str!("nn/activation.wgsl"));
    /// `nn/add.wgsl`: in-place residual addition.
    pub const ADD: &str = include_str!("nn/add.wgsl");
    /// `nn/embedding.wgsl`: row gathers and token + position embeddings.
    pub const EMBEDDING: &str = include_str!("nn/embedding.wgsl");
    /// `nn/patch.wgsl`: im2col for the patch embedding, class token and position embeddings.
    pub const PATCH: &str = include_str!("nn/patch.wgsl");
    /// `nn/gemm.wgsl` after [`GEMM_COMMON`]: general strided batched product with transposed
    /// operands, accumulation and a fused bias / activation / residual epilogue, tiled and
    /// register-blocked.
    pub const GEMM: &str = join!(GEMM_COMMON, "\n", include_str!("nn/gemm.wgsl"));
    /// `nn/grad.wgsl`: backward passes of bias, activations, softmax and layer norm.
    pub const GRAD: &str = join!(ACT_FNS, "\n", include_str!("nn/grad.wgsl"));
    /// `nn/loss.wgsl`: cross-entropy and entropy of logits, with their gradients.
    pub const LOSS: &str = include_str!("nn/loss.wgsl");
    /// `nn/ext/gemm_subgroup.wgsl`: [`GEMM`]'s product with subgroup shuffles; needs wgpu's
    /// `SUBGROUP` feature.
    pub const GEMM_SUBGROUP: &str =
        join!(GEMM_COMMON, "\n", include_str!("nn/ext/gemm_subgroup.wgsl"));
    /// `nn/ext/subgroup_probe.wgsl`: whether subgroup operations work, and their width.
    pub const SUBGROUP_PROBE: &str = include_str!("nn/ext/subgroup_probe.wgsl");
    /// `nn/ext/gemm_coop.wgsl`: [`GEMM`]'s product on cooperative matrices (tensor cores), f16
    /// operands and f32 accumulation; needs wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX` and
    /// `SHADER_F16`.
    pub const GEMM_COOP: &str = join!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n\n",
        GEMM_COMMON,
        "\n",
        include_str!("nn/ext/gemm_coop.wgsl")
    );

    /// Every nn kernel source by its file name under `src/nn/`, for validation tests and tools
    /// (the composed source: it ends with the file's text).
    pub const ALL: &[(&str, &str)] = &[
        ("layer_norm.wgsl", LAYER_NORM),
        ("softmax.wgsl", SOFTMAX),
        ("activation.wgsl", ACTIVATION),
        ("add.wgsl", ADD),
        ("embedding.wgsl", EMBEDDING),
        ("patch.wgsl", PATCH),
        ("gemm.wgsl", GEMM),
        ("grad.wgsl", GRAD),
        ("loss.wgsl", LOSS),
    ];

    /// The kernels under `src/nn/ext/` that need a device feature beyond core WebGPU, by file
    /// name, with the naga capabilities they validate under (a device without them rejects
    /// the source; the host then uses a portable kernel).
    pub const EXTENSIONS: &[(&str, &str, &str)] = &[
        ("gemm_subgroup.wgsl", GEMM_SUBGROUP, "SUBGROUP"),
        ("subgroup_probe.wgsl", SUBGROUP_PROBE, "SUBGROUP"),
        (
            "gemm_coop.wgsl",
            GEMM_COOP,
            "COOPERATIVE_MATRIX|SHADER_FLOAT16",
        ),
    ];
}
