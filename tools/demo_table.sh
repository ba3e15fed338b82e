#!/usr/bin/env bash
# Run every implemented merging method on the demo pool and print the per-task accuracy table
# (Markdown) that the README shows. Usage: bash tools/demo_table.sh [path/to/fusion-host]
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:-target/release/fusion-host}
tasks=(fashion_tops fashion_other fashion_negative digits_low digits_high digits_negative)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

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
  "ensemble/simple_ensemble|method=ensemble/simple_ensemble"
  "ensemble/weighted_ensemble (uniform)|method=ensemble/weighted_ensemble"
  "ensemble/max_model_predictor|method=ensemble/max_model_predictor"
)
printf '| method |'; for t in "${tasks[@]}"; do printf ' %s |' "$t"; done; printf ' **average** |\n'
printf '|---|'; for _ in "${tasks[@]}"; do printf -- '---:|'; done; printf -- '---:|\n'
for entry in "${methods[@]}"; do
  label=${entry%%|*}
  read -r -a overrides <<< "${entry#*|}"
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
