//! # fusion-merging: FusionBench's data-free merging algorithms on the GPU
//!
//! The algorithms of FusionBench's core merging table, under FusionBench's names, class paths,
//! parameters and defaults, plus mergekit's breadcrumbs and DELLA:
//!
//! | `_target_` | FusionBench class | parameters (defaults) |
//! |---|---|---|
//! | `simple_average` | `SimpleAverageAlgorithm` | — |
//! | `weighted_average` | `WeightedAverageAlgorithm` | `weights` (required), `normalize` true |
//! | `task_arithmetic` | `TaskArithmeticAlgorithm` | `scaling_factor` 0.3 |
//! | `ties_merging` | `TiesMergingAlgorithm` | `scaling_factor` 0.3, `threshold` 20, `remove_keys` [], `merge_func` sum |
//! | `dare_task_arithmetic` | `DareTaskArithmetic` | `scaling_factor` 0.3, `sparsity_ratio` 0.5, `only_on_linear_weights` false, `rescale` true, `seed` |
//! | `dare_simple_average` | `DareSimpleAverage` | `sparsity_ratio` 0.5, `only_on_linear_weights` false, `rescale` true, `seed` |
//! | `dare_ties_merging` | `DareTiesMerging` | as DARE, plus `scaling_factor` 0.5, `threshold` 20, `remove_keys` [], `merge_func` sum |
//! | `slerp` | `SlerpMergeAlgorithm` | `t` 0.5, `DOT_THRESHOLD` 0.9995, `epsilon` 1e-8 |
//! | `model_stock` | `model_stock.ModelStock` | `ignore_keys` [] |
//! | `breadcrumbs`, `breadcrumbs_ties` | mergekit | `weights` 1, `density` 1, `gamma` 0.01, `lambda` 1, `normalize` false, `rescale` false |
//! | `della`, `della_linear` | mergekit | `weights` 1, `density` 1, `epsilon` 0.15, `lambda` 1, `normalize` true/false, `rescale` true, `seed` |
//! | `magmax` | `MagMaxAlgorithm` | `scaling_factor` 0.5, `inplace` true |
//! | `expo` | `ExPOAlgorithm` | `extrapolation_factor` (required) |
//! | `linear_interpolation` | `LinearInterpolationAlgorithm` | `t` (required) |
//! | `magnitude_diff_pruning` | `MagnitudeDiffPruningAlgorithm` | `prune_ratio` (required), `rescale` null, `extract_names` null, `prune_type` minor |
//! | `task_singular_vector` | `TaskSingularVectorMerging` | `alpha` null (1), `exclude_keys` null, `return_single_task_models` false (true: each model's share and `merged`) |
//! | `iso_c` | `ISO_C_Merge` | `scaling_factor` (required), `exclude_keys` null |
//! | `iso_cts` | `ISO_CTS_Merge` | `scaling_factor`, `common_space_fraction` (required), `exclude_keys` null |
//! | `wudi` | `WUDIMerging` | `iter_num` (required), `exclude_keys` null |
//! | `singular_value_calibration` | `SingularValueCalibrationWithBaseMethod` | `alpha`, `base_method` (required), `accelerator` |
//! | `singular_value_calibration_task_arithmetic` | `SingularValueCalibrationArithmeticTask` | `alpha`, `scaling_factor` (required), `accelerator` |
//! | `tall_mask` | `TallMaskTaskArithmeticAlgorithm` | `tall_mask_lambda` (required), `debug`, `verbose`; returns `models/NAME` per task and `metadata` |
//! | `emr_merging` | `EMRMerging` | —; returns one model per task, under its pool name |
//! | `task_vector_cos_similarity` | `TaskVectorCosSimilarity` | `plot_heatmap` (required), `trainable_only` true, `max_points_per_model` null, `output_path` null; writes CSV and PNG |
//! | `task_vector_violin_plot` | `TaskVectorViolinPlot` | `trainable_only` (required), `max_points_per_model` 1000, `fig_kwargs` null, `output_path` null; writes two PNGs |
//! | `opcm` | `opcm_general.OPCM`, `OPCMForCLIP` | `alpha` (required), `shuffle_order` true, `seed` null, `save_on_every_step` true (the model after every step, `merged_model_K`), `evaluate_on_every_step`, `num_ray_actors` 0 |
//! | `continual_task_arithmetic` | `ContinualTaskArithmeticForCLIP` | `scaling_factor` (required), `shuffle_order`, `seed`, `save_on_every_step` (`model_K`), `evaluate_on_every_step` |
//! | `continual_ties_merging` | `ContinualTiesMergingForCLIP` | `scaling_factor`, `threshold` (required), `remove_keys` [], `merge_func` sum, as above |
//! | `continual_weight_average` | `ContinualWeightAverageForCLIP` | `shuffle_order`, `seed`, `save_on_every_step` (`merged_model_K`), `evaluate_on_every_step` |
//! | `dop` | `dop_general.DOPMerging` | `alpha` (required), `lr` 1e-4, `num_steps` 200, `mgda` true, `ema` true, `ema_beta` 0.99, `svd_epsilon` 1, `svd_proj_space` uv, `exclude_keys`, `shuffle_order` false, `seed`, `save_on_every_step` |
//! | `dop_clip` | `dop.ContinualDOPForCLIP` | as `dop` without `exclude_keys` and `num_ray_actors`; no `seed`: a clock seed; `evaluate_on_every_step` also returns every step |
//! | `doge_ta` | `DOGE_TA_Algorithm` | `subspace`, `K`, `lamda` (required) |
//! | `superposed_model_soup` | `randes.SuperposedModelSoupAlgorithm` | RanDeS base parameters (all required), one model per pool model |
//! | `superposed_task_arithmetic` | `randes.SuperposedTaskArithmeticAlgorithm` | RanDeS base parameters, `scaling_factor` (required), `model_path` null |
//! | `superposed_task_arithmetic_lora` | `randes.SuperposedTaskArithmeticLoRAAlgorithm` | as `superposed_task_arithmetic`, over PEFT LoRA state dicts |
//! | `smile_upscaling` | `SmileUpscalingAlgorithm` | `device` cuda, `upscaling_accelerator` null, `full_matrices` true, `gate_k` 256, `k` 256, `top_k` 1, `routing_use_diff` true, `average_experts` false, `model_path` null; returns the upscaled (mixture-of-experts) model |
//!
//! The rows from `magmax` on (and the causal-LM methods) run on the CPU in f32 (the SVDs in
//! f64 through faer, [`linalg`]; TSV-M and ISO-C/CTS take the device SVD on a GPU adapter),
//! tensor by tensor when the host asks for one; they need no compute device (SVC's base method
//! may). The others run their arithmetic on the
//! host's compute device (`ctx.compute()`; an error
//! when there is none) with the `fusion-kernels` library, plus three small kernels of its own
//! (`kernels/sparsify.wgsl`) for the mergekit methods. f32, f16, bf16 (and f64, computed in
//! f32) checkpoints are merged into the input dtype, with f32 arithmetic.
//!
//! ## Streaming
//!
//! The merged model is lazy: a tensor is computed when the host asks for it, from the same
//! tensor of every model, one model at a time, and its device buffers are released before the
//! next. Whole-model statistics are computed first by passes over the models (TIES' trim
//! thresholds and majority sign), and the merge uses them as scalars. So the device holds a
//! few tensors of one key, no matter how many or how large the models are (peaks measured by
//! the tests, reduction scratch included: 2 for averages, 4 for task arithmetic and DARE, 6
//! for TIES and breadcrumbs, 9 for DELLA); Model Stock, whose angles are pairwise, holds the k
//! task vectors of one key (k + 4).
//!
//! Models are checked before any work: every model must have the reference model's tensor
//! names with the same shapes; a mismatch names the tensor and both models. Non-float tensors
//! (such as integer position ids) are copied from the reference model (`_pretrained_`, or the
//! first model for averages and SLERP).

mod analysis;
mod average;
mod bracket;
mod cache;
mod causal_lm;
mod cpu;
mod delta;
mod device;
mod doge;
mod dop;
mod elementwise;
mod emr;
mod ensemble;
mod inputs;
mod kernels;
mod lazy;
pub mod linalg;
mod llm_pruning;
mod mergekit;
mod model_stock;
mod opcm;
mod parallel;
mod params;
mod randes;
mod slerp;
mod smile;
mod subspace;
mod svc;
mod tall_mask;
mod task_arithmetic;
mod ties;
mod wudi;

pub use analysis::{TaskVectorCosSimilarity, TaskVectorViolinPlot};
pub use average::{SimpleAverage, WeightedAverage};
pub use causal_lm::{
    CausalLmBase, ExpoForLlama, ExpoWithDareForLlama, ForCausalLM, SimpleAverageForCausalLM,
    SlerpForCausalLM, TaskArithmeticForCausalLM, TiesMergingForCausalLM, WeightedAverageForLlama,
};
pub use doge::DogeTa;
pub use dop::{ContinualDopForClip, Dop};
pub use elementwise::{ExPO, LinearInterpolation, MagMax, MagnitudeDiffPruning};
pub use emr::EmrMerging;
pub use ensemble::{MaxModelPredictor, SimpleEnsemble, WeightedEnsemble};
pub use kernels::wgsl_source;
pub use llm_pruning::{MagnitudePruningForLlama, RandomPruningForLlama};
pub use mergekit::{breadcrumbs_band, Breadcrumbs, BreadcrumbsTies, Della, DellaLinear};
pub use model_stock::{model_stock_angle, model_stock_ratio, ModelStock};
pub use opcm::{ContinualTaskArithmetic, ContinualTiesMerging, ContinualWeightAverage, Opcm};
pub use randes::{SuperposedModelSoup, SuperposedTaskArithmetic, SuperposedTaskArithmeticLora};
pub use slerp::{slerp_coefficients, Slerp};
pub use smile::{SmileUpscaling, CONFIG_KEY as SMILE_CONFIG_KEY};
pub use subspace::{iso_c_on, IsoC, IsoCts, TaskSingularVector};
pub use svc::{svc_on, SvcTaskArithmetic, SvcWithBaseMethod};
pub use tall_mask::TallMask;
pub use task_arithmetic::{DareSimpleAverage, DareTaskArithmetic, TaskArithmetic};
pub use ties::{DareTiesMerging, TiesMerging};
pub use wudi::{optimize_on as wudi_optimize, Wudi};

/// The key of DARE's and DELLA's random draws for one model's tensor (model and tensor name):
/// masks differ between models and depend on nothing else, so they can be reproduced.
pub fn random_key(model: &str, tensor: &str) -> u64 {
    delta::random_key(model, tensor)
}

fusion_plugin_api::export_plugin! {
    algorithm SimpleAverage {
        names: ["simple_average", "fusion_bench.method.SimpleAverageAlgorithm"],
        description: "Average of the models to merge, θ = (1/N) Σ θᵢ.",
    }
    algorithm WeightedAverage {
        names: ["weighted_average", "fusion_bench.method.WeightedAverageAlgorithm"],
        description: "Weighted average θ = Σ wᵢθᵢ, weights normalized to sum 1 unless normalize: false.",
    }
    algorithm TaskArithmetic {
        names: ["task_arithmetic", "fusion_bench.method.TaskArithmeticAlgorithm"],
        description: "Task arithmetic θ = θ₀ + λ Σ (θᵢ − θ₀).",
    }
    algorithm TiesMerging {
        names: ["ties_merging", "fusion_bench.method.TiesMergingAlgorithm"],
        description: "TIES-merging: trim each task vector to its top-k% magnitudes, elect signs, disjoint merge.",
    }
    algorithm DareTaskArithmetic {
        names: [
            "dare_task_arithmetic",
            "fusion_bench.method.DareTaskArithmetic",
            "fusion_bench.method.dare.DareTaskArithmetic",
        ],
        description: "DARE (random drop and rescale of task vectors), then task arithmetic.",
    }
    algorithm DareSimpleAverage {
        names: [
            "dare_simple_average",
            "fusion_bench.method.DareSimpleAverage",
            "fusion_bench.method.dare.DareSimpleAverage",
        ],
        description: "DARE, then task arithmetic with λ = 1/N.",
    }
    algorithm DareTiesMerging {
        names: [
            "dare_ties_merging",
            "fusion_bench.method.DareTiesMerging",
            "fusion_bench.method.dare.DareTiesMerging",
        ],
        description: "DARE, then TIES-merging of the dropped task vectors.",
    }
    algorithm Slerp {
        names: ["slerp", "fusion_bench.method.SlerpMergeAlgorithm", "fusion_bench.method.slerp.SlerpMergeAlgorithm"],
        description: "Spherical linear interpolation of each tensor of two models.",
    }
    algorithm ModelStock {
        names: ["model_stock", "fusion_bench.method.model_stock.ModelStock", "fusion_bench.method.ModelStock"],
        description: "Model Stock: interpolate the fine-tuned average towards the base by the task vectors' angle.",
    }
    algorithm Breadcrumbs {
        names: ["breadcrumbs", "mergekit.breadcrumbs"],
        description: "mergekit breadcrumbs: drop the largest and smallest task-vector entries, then task arithmetic.",
    }
    algorithm BreadcrumbsTies {
        names: ["breadcrumbs_ties", "mergekit.breadcrumbs_ties"],
        description: "mergekit breadcrumbs with TIES sign consensus.",
    }
    algorithm Della {
        names: ["della", "mergekit.della"],
        description: "mergekit DELLA: magnitude-ranked random drop (MagPrune), L1 rescale, sign consensus.",
    }
    algorithm DellaLinear {
        names: ["della_linear", "mergekit.della_linear"],
        description: "mergekit DELLA without sign consensus.",
    }
    algorithm MagMax {
        names: ["magmax", "fusion_bench.method.MagMaxAlgorithm", "fusion_bench.method.magmax.MagMaxAlgorithm"],
        description: "MagMax: per entry, the task-vector value of largest magnitude, θ = θ₀ + λτ* (CPU).",
    }
    algorithm ExPO {
        names: ["expo", "fusion_bench.method.ExPOAlgorithm", "fusion_bench.method.linear.ExPOAlgorithm"],
        description: "ExPO: extrapolate past the fine-tuned model, θ = θ₁ + α(θ₁ − θ₀) (CPU).",
    }
    algorithm LinearInterpolation {
        names: [
            "linear_interpolation",
            "fusion_bench.method.LinearInterpolationAlgorithm",
            "fusion_bench.method.linear.LinearInterpolationAlgorithm",
        ],
        description: "Linear interpolation of two models, θ = (1 − t)θ₁ + tθ₂ (CPU).",
    }
    algorithm MagnitudeDiffPruning {
        names: [
            "magnitude_diff_pruning",
            "fusion_bench.method.MagnitudeDiffPruningAlgorithm",
            "fusion_bench.method.pruning.MagnitudeDiffPruningAlgorithm",
        ],
        description: "Row-wise magnitude pruning of a fine-tuned model's difference from the pretrained one (CPU).",
    }
    algorithm TaskSingularVector {
        names: [
            "task_singular_vector",
            "fusion_bench.method.TaskSingularVectorMerging",
            "fusion_bench.method.task_singular_vector.TaskSingularVectorMerging",
        ],
        description: "TSV-M: per 2-D weight, each task's leading singular vectors, orthogonalized and recombined (CPU SVD).",
    }
    algorithm IsoC {
        names: [
            "iso_c",
            "fusion_bench.method.ISO_C_Merge",
            "fusion_bench.method.isotropic_merging.ISO_C_Merge",
        ],
        description: "ISO-C: per 2-D weight, the summed task vectors with a flat (isotropic) spectrum (CPU SVD).",
    }
    algorithm IsoCts {
        names: [
            "iso_cts",
            "fusion_bench.method.ISO_CTS_Merge",
            "fusion_bench.method.isotropic_merging.ISO_CTS_Merge",
        ],
        description: "ISO-CTS: ISO-C over a common subspace plus task-specific subspaces (CPU SVD).",
    }
    algorithm Wudi {
        names: ["wudi", "fusion_bench.method.WUDIMerging", "fusion_bench.method.wudi.WUDIMerging"],
        description: "WUDI: per 2-D weight, Adam on the task vectors' interference loss from their sum (CPU).",
    }
    algorithm SvcWithBaseMethod {
        names: [
            "singular_value_calibration",
            "fusion_bench.method.singular_value_calibration.generic.SingularValueCalibrationWithBaseMethod",
            "fusion_bench.method.singular_value_calibration.SingularValueCalibrationWithBaseMethod",
        ],
        description: "SVC: run a nested base_method, then rescale each 2-D weight's merged singular values by the tasks' agreement (CPU).",
    }
    algorithm SvcTaskArithmetic {
        names: [
            "singular_value_calibration_task_arithmetic",
            "fusion_bench.method.singular_value_calibration.task_arithmetic.SingularValueCalibrationArithmeticTask",
            "fusion_bench.method.singular_value_calibration.SingularValueCalibrationArithmeticTask",
        ],
        description: "SVC after task arithmetic (CPU).",
    }
    algorithm SimpleEnsemble {
        names: [
            "simple_ensemble",
            "fusion_bench.method.SimpleEnsembleAlgorithm",
            "fusion_bench.method.ensemble.SimpleEnsembleAlgorithm",
        ],
        description: "Ensemble: the task pool averages the models' outputs (nothing is merged).",
    }
    algorithm WeightedEnsemble {
        names: [
            "weighted_ensemble",
            "fusion_bench.method.WeightedEnsembleAlgorithm",
            "fusion_bench.method.ensemble.WeightedEnsembleAlgorithm",
        ],
        description: "Ensemble: the task pool sums the models' outputs with weights (normalized unless normalize: false).",
    }
    algorithm MaxModelPredictor {
        names: [
            "max_model_predictor",
            "fusion_bench.method.MaxModelPredictorAlgorithm",
            "fusion_bench.method.ensemble.MaxModelPredictorAlgorithm",
        ],
        description: "Ensemble: the task pool takes the elementwise maximum of the models' outputs.",
    }
    algorithm SimpleAverageForCausalLM {
        names: [
            "simple_average_for_causallm",
            "fusion_bench.method.SimpleAverageForCausalLM",
            "fusion_bench.method.SimpleAverageForLlama",
            "fusion_bench.method.linear.SimpleAverageForCausalLM",
            "fusion_bench.method.linear.SimpleAverageForLlama",
        ],
        description: "Simple average of causal LMs; merge_backbone: the decoder layers only, the rest from _pretrained_; saves to model_save_path.",
    }
    algorithm TaskArithmeticForCausalLM {
        names: [
            "task_arithmetic_for_causallm",
            "fusion_bench.method.TaskArithmeticForCausalLM",
            "fusion_bench.method.TaskArithmeticForLlama",
            "fusion_bench.method.linear.TaskArithmeticForCausalLM",
            "fusion_bench.method.linear.TaskArithmeticForLlama",
        ],
        description: "Task arithmetic of causal LMs; merge_backbone: the decoder layers only; saves to model_save_path.",
    }
    algorithm TiesMergingForCausalLM {
        names: [
            "ties_merging_for_causallm",
            "fusion_bench.method.TiesMergingForCausalLM",
            "fusion_bench.method.linear.TiesMergingForCausalLM",
        ],
        description: "TIES-merging of causal LMs; merge_backbone: the decoder layers only; saves to model_save_path.",
    }
    algorithm WeightedAverageForLlama {
        names: [
            "weighted_average_for_llama",
            "fusion_bench.method.WeightedAverageForLLama",
            "fusion_bench.method.weighted_average.WeightedAverageForLLama",
        ],
        description: "Weighted average of causal LMs; backbone_only keeps the base model's lm_head; saves to merged_model_save_path.",
    }
    algorithm SlerpForCausalLM {
        names: [
            "slerp_lm",
            "fusion_bench.method.SlerpForCausalLM",
            "fusion_bench.method.slerp.SlerpForCausalLM",
        ],
        description: "SLERP of two causal LMs, tensor by tensor; saves to model_save_path.",
    }
    algorithm ExpoForLlama {
        names: [
            "llama_expo",
            "fusion_bench.method.ExPOAlgorithmForLlama",
            "fusion_bench.method.linear.ExPOAlgorithmForLlama",
        ],
        description: "ExPO on a Llama-style LM's decoder-layer linear weights (attention scaled, layers fixed, delta pruning) (CPU).",
    }
    algorithm ExpoWithDareForLlama {
        names: [
            "llama_expo_with_dare",
            "fusion_bench.method.linear.llama_expo.ExPOWithDareForLLama",
        ],
        description: "ExPO for Llama from the DARE average of the aligned models.",
    }
    algorithm MagnitudePruningForLlama {
        names: [
            "llama_magnitude_pruning",
            "fusion_bench.method.MagnitudePruningForLlama",
            "fusion_bench.method.pruning.MagnitudePruningForLlama",
        ],
        description: "Magnitude pruning of a Llama-style LM's decoder-layer linear weights, unstructured or n:m (CPU).",
    }
    algorithm RandomPruningForLlama {
        names: [
            "llama_random_pruning",
            "fusion_bench.method.RandomPruningForLlama",
            "fusion_bench.method.pruning.RandomPruningForLlama",
        ],
        description: "Seeded random pruning of a Llama-style LM's decoder-layer linear weights, unstructured or n:m (CPU).",
    }
    algorithm TallMask {
        names: [
            "tall_mask",
            "fusion_bench.method.tall_mask.TallMaskTaskArithmeticAlgorithm",
            "fusion_bench.method.TallMaskTaskArithmeticAlgorithm",
        ],
        description: "TALL masks: one model per task, θ₀ + maskₜ ⊙ Σ τ (CPU; returns several models).",
    }
    algorithm EmrMerging {
        names: [
            "emr_merging",
            "fusion_bench.method.emr_merging.EMRMerging",
        ],
        description: "EMR merging: elected unified task vector, per-task masks and rescalers (CPU; returns one model per task).",
    }
    algorithm TaskVectorCosSimilarity {
        names: [
            "task_vector_cos_similarity",
            "fusion_bench.method.TaskVectorCosSimilarity",
            "fusion_bench.method.analysis.TaskVectorCosSimilarity",
        ],
        description: "Analysis: pairwise cosine similarity of the task vectors, as CSV and a heatmap PNG in the log folder; returns the pretrained model.",
    }
    algorithm TaskVectorViolinPlot {
        names: [
            "task_vector_violin_plot",
            "fusion_bench.method.TaskVectorViolinPlot",
            "fusion_bench.method.analysis.TaskVectorViolinPlot",
        ],
        description: "Analysis: violin plots (PNG) of the task vectors' values and magnitudes in the log folder; returns the pretrained model.",
    }
    algorithm Opcm {
        names: [
            "opcm",
            "fusion_bench.method.opcm.opcm_general.OPCM",
            "fusion_bench.method.opcm.opcm.OPCMForCLIP",
            "fusion_bench.method.opcm.OPCMForCLIP",
            "fusion_bench.method.OPCMForCLIP",
        ],
        description: "OPCM: continual merging, each task vector projected off the merged one's singular directions, norm-rescaled; the model after every step (CPU).",
    }
    algorithm ContinualTaskArithmetic {
        names: [
            "continual_task_arithmetic",
            "fusion_bench.method.opcm.task_arithmetic.ContinualTaskArithmeticForCLIP",
            "fusion_bench.method.opcm.ContinualTaskArithmeticForCLIP",
        ],
        description: "Continual task arithmetic: θ ← θ + λτₜ one model at a time; the model after every step (CPU).",
    }
    algorithm ContinualTiesMerging {
        names: [
            "continual_ties_merging",
            "fusion_bench.method.opcm.ties_merging.ContinualTiesMergingForCLIP",
            "fusion_bench.method.opcm.ContinualTiesMergingForCLIP",
        ],
        description: "Continual TIES-merging of the merged task vector with each next one; the model after every step (CPU).",
    }
    algorithm ContinualWeightAverage {
        names: [
            "continual_weight_average",
            "fusion_bench.method.opcm.weight_average.ContinualWeightAverageForCLIP",
            "fusion_bench.method.opcm.ContinualWeightAverageForCLIP",
        ],
        description: "Continual weight average (the running mean of the models); the model after every step (CPU).",
    }
    algorithm Dop {
        names: [
            "dop",
            "fusion_bench.method.dop.dop_general.DOPMerging",
            "fusion_bench.method.dop.DOPMerging",
        ],
        description: "DOP: continual merging, each linear weight optimized (Adam, MGDA) against both models' singular-vector projections (CPU).",
    }
    algorithm ContinualDopForClip {
        names: [
            "dop_clip",
            "fusion_bench.method.dop.dop.ContinualDOPForCLIP",
            "fusion_bench.method.dop.ContinualDOPForCLIP",
            "fusion_bench.method.ContinualDOPForCLIP",
        ],
        description: "DOP for CLIP (ContinualDOPForCLIP): DOP's continual merge of every linear weight, shuffled by its own or a clock seed; the model after every step when saving or evaluating each (CPU).",
    }
    algorithm DogeTa {
        names: [
            "doge_ta",
            "fusion_bench.method.DOGE_TA_Algorithm",
            "fusion_bench.method.doge_ta.DOGE_TA_Algorithm",
            "fusion_bench.method.doge_ta.doge_ta.DOGE_TA_Algorithm",
        ],
        description: "DOGE-TA: task arithmetic with a shared modification of the encoder weights' task vectors, optimized by projected Adam, top-K masks (CPU).",
    }
    algorithm SuperposedModelSoup {
        names: [
            "superposed_model_soup",
            "fusion_bench.method.randes.SuperposedModelSoupAlgorithm",
            "fusion_bench.method.randes.modelsoup.SuperposedModelSoupAlgorithm",
        ],
        description: "RanDeS superposed model soup: the weights superposed under random contexts, every model retrieved (CPU).",
    }
    algorithm SuperposedTaskArithmetic {
        names: [
            "superposed_task_arithmetic",
            "fusion_bench.method.randes.SuperposedTaskArithmeticAlgorithm",
            "fusion_bench.method.randes.task_arithmetic.SuperposedTaskArithmeticAlgorithm",
        ],
        description: "RanDeS superposed task arithmetic: the task vectors superposed under random contexts, every model retrieved (CPU).",
    }
    algorithm SuperposedTaskArithmeticLora {
        names: [
            "superposed_task_arithmetic_lora",
            "fusion_bench.method.randes.SuperposedTaskArithmeticLoRAAlgorithm",
            "fusion_bench.method.randes.task_arithmetic.SuperposedTaskArithmeticLoRAAlgorithm",
        ],
        description: "RanDeS superposed task arithmetic over LoRA adapters: the LoRA tensors superposed under random contexts, every model retrieved as the pretrained one plus its B·A (CPU).",
    }
    algorithm SmileUpscaling {
        names: [
            "smile_upscaling",
            "fusion_bench.method.SmileUpscalingAlgorithm",
            "fusion_bench.method.smile_upscaling.SmileUpscalingAlgorithm",
            "fusion_bench.method.smile_upscaling.smile_upscaling.SmileUpscalingAlgorithm",
        ],
        description: "SMILE upscaling: each trained linear becomes a zero-shot mixture of low-rank experts (SVDs of the task matrices) with a routing gate (CPU).",
    }
}
