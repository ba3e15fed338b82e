#!/usr/bin/env bash
# Run every implemented merging method on the demo pool and print the per-task accuracy table
# (Markdown) that the README shows. Usage: bash tools/demo_table.sh [path/to/fusion-host]
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-target/release/fusion-host}
tasks=(fashion_tops fashion_other fashion_negative digits_low digits_high digits_negative)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The demo pool cut to `_pretrained_` and fashion_tops, for the methods that take two models.
two_models=""
for t in "${tasks[@]:1}"; do two_models+=" ~modelpool.models.$t"; done

# label | overrides
methods=(
  "pretrained (dummy)|method=dummy"
  "simple_average|method=simple_average"
  "weighted_average (uniform)|method=linear/weighted_average method.weights=[1,1,1,1,1,1]"
  "task_arithmetic (λ=0.3)|method=task_arithmetic"
  "ties_merging (λ=0.3, top 20%)|method=ties_merging"
  "dare/task_arithmetic (p=0.5)|method=dare/task_arithmetic seed=0"
  "dare/simple_average (p=0.5)|method=dare/simple_average seed=0"
  "dare/ties_merging (p=0.2)|method=dare/ties_merging method.sparsity_ratio=0.2 seed=0"
  "model_stock|method=model_stock/model_stock"
  "mergekit/breadcrumbs (density 0.9)|method=mergekit/breadcrumbs method.weights=0.3"
  "mergekit/breadcrumbs_ties (density 0.9, weights 0.2)|method=mergekit/breadcrumbs_ties method.weights=0.2"
  "mergekit/della (density 0.7, λ=0.6)|method=mergekit/della method.density=0.7 method.lambda=0.6 seed=0"
  "mergekit/della_linear (density 0.5)|method=mergekit/della_linear method.weights=0.3 seed=0"
  "task_singular_vector (TSV-M, α=1)|method=task_singular_vector/TaskSingularVectorMerging"
  "isotropic_merging/iso_c (scaling 1.0)|method=isotropic_merging/iso_c"
  "isotropic_merging/iso_cts (scaling 1.0, common space 0.8)|method=isotropic_merging/iso_cts"
  "wudi (400 Adam steps)|method=wudi/wudi"
  "singular_value_calibration/task_arithmetic (λ=0.3, α=0.1)|method=singular_value_calibration/task_arithmetic"
  "singular_value_calibration/simple_average (α=0.1)|method=singular_value_calibration/simple_average"
  "singular_value_calibration/ties_merging (λ=0.3, top 20%, α=0.1)|method=singular_value_calibration/ties_merging"
  "singular_value_calibration/dare_task_arithmetic (p=0.5, seed 0, α=0.1)|method=singular_value_calibration/dare_task_arithmetic seed=0"
  "singular_value_calibration/task_singular_vector (α=1.0)|method=singular_value_calibration/task_singular_vector"
  "singular_value_calibration/iso_c (scaling 1.5, α=0.1)|method=singular_value_calibration/iso_c"
  "singular_value_calibration/iso_cts (scaling 1.5, α=0.2)|method=singular_value_calibration/iso_cts"
  "singular_value_calibration/wudi (400 steps, α=1.0)|method=singular_value_calibration/wudi"
  "magmax (scaling 0.5)|method=magmax/magmax"
  "linear/expo (α=0.1 past the six models' average)|method=linear/expo"
  "opcm/opcm_general (α=0.5, seed 0, final model)|method=opcm/opcm_general method.save_on_every_step=false seed=0"
  "opcm/task_arithmetic (continual, λ=0.3, seed 0, final model)|method=opcm/task_arithmetic method.save_on_every_step=false seed=0"
  "opcm/ties_merging (continual, λ=0.5, top 20%, seed 0, final model)|method=opcm/ties_merging method.save_on_every_step=false seed=0"
  "opcm/weight_average (continual, seed 0, final model)|method=opcm/weight_average method.save_on_every_step=false seed=0"
  "doge_ta (K=30, λ=0.07)|method=doge_ta/doge_ta"
  "dop/dop_general (α=0.8, 200 Adam steps, seed 0)|method=dop/dop_general seed=0"
  "dop/dop (ContinualDOPForCLIP: final model, seed 0)|method=dop/dop method.seed=0 method.evaluate_on_every_step=false"
  "ensemble/simple_ensemble|method=ensemble/simple_ensemble"
  "ensemble/weighted_ensemble (uniform)|method=ensemble/weighted_ensemble"
  "ensemble/max_model_predictor|method=ensemble/max_model_predictor"
  "smile_upscaling/smile_upscaling (k=32, gate_k=1, top-1; upscaled, not merged)|method=smile_upscaling/smile_upscaling method.k=32"
  "smile_upscaling/smile_upscaling (k=32, gate_k=16, top-1; upscaled, not merged)|method=smile_upscaling/smile_upscaling method.k=32 method.gate_k=16"
)
# Print the table header, then one row per "label|overrides" entry (extra overrides in $extra).
table() {
  printf '| method |'; for t in "${tasks[@]}"; do printf ' %s |' "$t"; done; printf ' **average** |\n'
  printf '|---|'; for _ in "${tasks[@]}"; do printf -- '---:|'; done; printf -- '---:|\n'
  local entry label
  for entry in "$@"; do
    label=${entry%%|*}
    read -r -a overrides <<< "${entry#*|} $extra"
    "$host" -q modelpool=CLIPVisionModelPool/demo taskpool=CLIPVisionModelTaskPool/demo \
      print_config=false report_save_path=null "${overrides[@]}" > "$out/report.json" 2> "$out/err.log" \
      || { echo "| $label | failed: $(tail -1 "$out/err.log") |"; continue; }
    python3 - "$label" "$out/report.json" "${tasks[@]}" <<'PY'
import json, sys
label, path, tasks = sys.argv[1], sys.argv[2], sys.argv[3:]
r = json.load(open(path))
cells = [f"{100 * r[t]['accuracy']:.1f}" for t in tasks]
print(f"| {label} | " + " | ".join(cells) + f" | **{100 * r['average']['accuracy']:.1f}** |")
PY
  done
}

extra=""
table "${methods[@]}"

# Each fine-tuned model on its own task (FusionBench's "individual" row): the dummy method returns
# `_pretrained_`, here pointed at the fine-tuned tower.
cells=()
for t in "${tasks[@]}"; do
  "$host" -q modelpool=CLIPVisionModelPool/demo taskpool=CLIPVisionModelTaskPool/demo method=dummy \
    print_config=false report_save_path=null "modelpool.models._pretrained_=demo/models/$t" \
    > "$out/report.json" 2> "$out/err.log" || { echo "| individual | failed on $t |"; exit 1; }
  cells+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['accuracy'])" "$out/report.json" "$t")")
done
python3 - "${cells[@]}" <<'PY'
import sys
acc = [float(a) for a in sys.argv[1:]]
print("| individual (each fine-tuned model on its own task) | " + " | ".join(f"{100 * a:.1f}" for a in acc)
      + f" | **{100 * sum(acc) / len(acc):.1f}** |")
PY

# Methods that take exactly two models (`_pretrained_` and one fine-tuned model), on the demo pool
# cut to `_pretrained_` and fashion_tops, as a second table; its first two rows are the models themselves.
pair_methods=(
  "pretrained (dummy)|method=dummy"
  "fashion_tops alone|method=dummy modelpool.models._pretrained_=demo/models/fashion_tops"
  "linear/linear_interpolation (t=0.5)|method=linear/linear_interpolation"
  "slerp/slerp (t=0.5)|method=slerp/slerp"
  "pruning/magnitude_diff_pruning (rescale false: FusionBench returns the pretrained model)|method=pruning/magnitude_diff_pruning"
  "pruning/magnitude_diff_pruning (rescale null: half of each row's difference kept)|method=pruning/magnitude_diff_pruning method.rescale=null"
)
echo
extra=$two_models
table "${pair_methods[@]}"
