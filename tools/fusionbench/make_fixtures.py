#!/usr/bin/env python3
"""`--cfg job` fixtures: FusionBench's command lines composed by real Hydra, on FusionBench's own
config tree and on ours.

Usage:  python3 -m venv /tmp/hydra-venv && /tmp/hydra-venv/bin/pip install hydra-core==1.3.2
        /tmp/hydra-venv/bin/python tools/fusionbench/make_fixtures.py [--version 0.2.33] [--wheel F]

For every command line in RUNS (those of ../shared/reference/fusionbench.md section 1.6 and
../shared/DESIGN.md, plus the pools and task pools fusion-host mirrors), this script composes the
config with Hydra's compose API (as `fusion_bench --cfg job` does) on
  (b) FusionBench's `fusion_bench_config/` from the fusion-bench wheel (see wheel.py), and
  (a) fusion-host's `configs/`,
checks that (a) gives exactly the text (b) gives, and writes
  tests/data/fusionbench_config/configs/  the FusionBench files those runs load (copied as they
                                          are: fixture input, not part of fusion-host), and
  tests/data/fusionbench_config/expected.json
      {"fusion_bench_version", "hydra_version", "omegaconf_version",
       "runs": [{"name", "config_name", "overrides", "package", "trees", "yaml"}]}
where `yaml` is what `--cfg job [-p package]` prints and `trees` says which trees the run
composes on ("fusionbench" and, unless the run uses a config fusion-host does not mirror,
"ours"). tests/fusionbench_configs.rs runs `fusion-host --cfg job` on both trees and compares
the text. Python is not needed at test time; output is deterministic.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import hydra
import omegaconf
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OURS = ROOT / "configs"
OUT = ROOT / "tests" / "data" / "fusionbench_config"
FB_FABRIC = "fabric_model_fusion"
ROBUST = "clip-vit-base-patch32_robustness_corrupted"
TA8_POOL = "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8"
TA8_TASKS = "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8"

# (name, config_name, overrides, package, trees)
BOTH = ("fusionbench", "ours")
RUNS = [
    # The default program config as it stands.
    ("default", FB_FABRIC, [], None, BOTH),
    # docs/cli/fusion_bench.md
    ("task_arithmetic_ta8", FB_FABRIC,
     ["method=task_arithmetic", "method.scaling_factor=0.7", TA8_POOL, TA8_TASKS], None, BOTH),
    # ../shared/DESIGN.md
    ("design_task_arithmetic_ta8", FB_FABRIC,
     ["method=task_arithmetic", "method.scaling_factor=0.3", TA8_POOL, TA8_TASKS], None, BOTH),
    # +add, ++add-or-override, ~delete, =null
    ("edit_forms", FB_FABRIC,
     ["method=ties_merging", "+method.new_param=v", "++modelpool.x={k: v}",
      "~method.remove_keys", "method.threshold=null"], None, BOTH),
    ("fabric_devices", FB_FABRIC, ["fabric.accelerator=cpu", "fabric.devices=4"], None, BOTH),
    ("fabric_logger", FB_FABRIC,
     ["fabric.loggers.root_dir=outputs/logs/ViT-B-32", "fabric.loggers.name=task_arithmetic"],
     None, BOTH),
    ("path_log_dir", FB_FABRIC, ["path.log_dir=outputs/ViT-B-32/ties_merging"], None, BOTH),
    # docs/algorithms/ties_merging.md: an escaped interpolation kept for later
    ("escaped_save_path", FB_FABRIC,
     ["method=ties_merging", "merged_model_save_path=$\\{path.log_dir\\}/merged_model"],
     None, BOTH),
    ("fast_dev_run", FB_FABRIC, ["fast_dev_run=true", "method=simple_average"], None, BOTH),
    # --cfg job -p method
    ("package_method", FB_FABRIC, ["method=ties_merging"], "method", BOTH),
    ("package_scalar", FB_FABRIC, ["method=ties_merging"], "method.threshold", BOTH),
    # the robustness program, with its corruption interpolation and a list index
    ("robustness_default", ROBUST, [], None, BOTH),
    ("robustness_contrast", ROBUST, ["corruption=contrast", "method=task_arithmetic"], None, BOTH),
    ("robustness_list_index", ROBUST, ["taskpool.tasks.0.dataset.split=pixelate"], None, BOTH),
    # the model pools and task pools fusion-host mirrors
    ("ta8_model_only", FB_FABRIC,
     ["method=ties_merging", "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8_model_only",
      TA8_TASKS], None, BOTH),
    ("b16_ta8", FB_FABRIC,
     ["method=dare/ties_merging", "modelpool=CLIPVisionModelPool/clip-vit-base-patch16_TA8",
      "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8_B16"], None, BOTH),
    ("b16_ta8_model_only", FB_FABRIC,
     ["method=simple_average",
      "modelpool=CLIPVisionModelPool/clip-vit-base-patch16_TA8_model_only"], None, BOTH),
    ("l14_ta8", FB_FABRIC,
     ["method=model_stock/model_stock", "modelpool=CLIPVisionModelPool/clip-vit-large-patch14_TA8",
      "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8_L14"], None, BOTH),
    ("l14_ta8_model_only", FB_FABRIC,
     ["method=linear/weighted_average",
      "modelpool=CLIPVisionModelPool/clip-vit-large-patch14_TA8_model_only"], None, BOTH),
    ("b32_individual", FB_FABRIC,
     ["modelpool=CLIPVisionModelPool/clip-vit-base-patch32_individual", TA8_TASKS], None, BOTH),
    ("b16_individual", FB_FABRIC,
     ["modelpool=CLIPVisionModelPool/clip-vit-base-patch16_individual",
      "modelpool.base_model=tanganke/clip-vit-base-patch16_svhn",
      "taskpool=CLIPVisionModelTaskPool/clip-vit-single-task_svhn"], None, BOTH),
    ("l14_individual", FB_FABRIC,
     ["modelpool=CLIPVisionModelPool/clip-vit-large-patch14_individual",
      "taskpool=CLIPVisionModelTaskPool/clip-vit-single-task_dtd"], None, BOTH),
    ("robustness_clean_pool", FB_FABRIC,
     ["method=slerp/slerp", "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_robustness_clean"],
     None, BOTH),
    ("single_finetuned", FB_FABRIC,
     ["method=dare/task_arithmetic",
      "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_single_finetuned",
      "taskpool=CLIPVisionModelTaskPool/clip-vit-single-task_stanford-cars"], None, BOTH),
    # FusionBench configs of components fusion-host does not implement still compose.
    ("adamerging_v01", FB_FABRIC,
     ["method=adamerging/clip", TA8_POOL, TA8_TASKS, "fast_dev_run=true"], None, ("fusionbench",)),
    ("tsvm", FB_FABRIC, ["method=task_singular_vector/TaskSingularVectorMerging"], None,
     ("fusionbench",)),
]


def hydra_compose(config_dir: Path, config_name: str, overrides: list):
    """Compose like `--cfg job`: the job config (without `hydra`) and the configs loaded."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None,
                               job_name="fusion_host"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        defaults = loader.compute_defaults_list(config_name, overrides, RunMode.RUN)
        loaded = [d.config_path for d in defaults.defaults if d.config_path]
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, loaded


def cfg_text(cfg, package):
    """What `--cfg job [-p package]` prints (hydra/_internal/hydra.py, show_cfg)."""
    if package is None:
        return OmegaConf.to_yaml(cfg)
    node = OmegaConf.select(cfg, package)
    if isinstance(node, omegaconf.Container):
        return f"# @package {package}\n" + OmegaConf.to_yaml(node)
    return f"{node}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default=wheel.DEFAULT_VERSION)
    ap.add_argument("--wheel", help="an already downloaded fusion-bench .whl")
    args = ap.parse_args()
    for var in ["FUSION_BENCH_PROJECT_ROOT", "FUSION_BENCH_DATA_DIR", "FUSION_BENCH_CACHE_DIR"]:
        os.environ.pop(var, None)
    unpacked = wheel.fetch(args.version, args.wheel)
    fb = unpacked / "fusion_bench_config"
    copy = OUT / "configs"
    if copy.exists():
        shutil.rmtree(copy)

    records, needed, mismatches = [], set(), []
    for name, config_name, overrides, package, trees in RUNS:
        cfg, loaded = hydra_compose(fb, config_name, overrides)
        text = cfg_text(cfg, package)
        for path in loaded:
            if (fb / f"{path}.yaml").is_file():
                needed.add(path)
        if "ours" in trees:
            mine, _ = hydra_compose(OURS, config_name, overrides)
            if cfg_text(mine, package) != text:
                mismatches.append(name)
        records.append({"name": name, "config_name": config_name, "overrides": overrides,
                        "package": package, "trees": list(trees), "yaml": text})

    for path in sorted(needed):
        dst = copy / f"{path}.yaml"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fb / f"{path}.yaml", dst)
    # The copy must compose exactly as the whole tree does.
    for rec in records:
        cfg, _ = hydra_compose(copy, rec["config_name"], rec["overrides"])
        if cfg_text(cfg, rec["package"]) != rec["yaml"]:
            raise SystemExit(f"{rec['name']}: the copied subset composes differently")
    if mismatches:
        raise SystemExit("configs/ composes differently from FusionBench's tree in: "
                         + ", ".join(mismatches))

    out = {"fusion_bench_version": wheel.version_of(unpacked),
           "hydra_version": hydra.__version__, "omegaconf_version": omegaconf.__version__,
           "runs": records}
    (OUT / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(records)} runs, {len(needed)} FusionBench files copied to "
          f"{copy.relative_to(ROOT)}; configs/ agrees with FusionBench on every shared run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
