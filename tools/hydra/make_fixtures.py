#!/usr/bin/env python3
"""Generate the golden fixtures of fusion-config with real Hydra / OmegaConf.

Usage:  pip install hydra-core omegaconf   (tested with hydra-core 1.3.2, omegaconf 2.3.0)
        python3 tools/hydra/make_fixtures.py

For every config tree defined below, this script writes the tree to
`host/config/tests/fixtures/<tree>/configs/` and then composes each run with Hydra's compose
API, writing `host/config/tests/fixtures/<tree>/expected.json`:

    {"hydra_version": ..., "omegaconf_version": ..., "runs": [
        {"name", "config_name", "overrides", "env", "now", "output_dir",
         "culprits":  strings an error message must contain (case-insensitive),
         "composed":  the job config, unresolved (OmegaConf.to_container(resolve=False)),
         "resolved":  the job config, resolved (to_container(resolve=True)),
         "compose_error" / "resolve_error": Hydra's exception text}]}

The Rust tests (`host/config/tests/hydra_fixtures.rs`) compose and resolve every run with
fusion-config and compare structurally, key order included, plus the `--cfg job` text. Each
run is its own test there (`<tree>::<run>`): when adding a run here, add its name to the
`fixture_tests!` list (a test fails until the lists agree). `fixtures/emit/expected.json` holds
`OmegaConf.to_yaml` of tricky scalars for the YAML emitter. Python is not needed at test time.
Output is deterministic: rerunning the script rewrites identical files.
"""

import datetime
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import hydra
import omegaconf
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "host" / "config" / "tests" / "fixtures"
NOW = datetime.datetime(2024, 5, 17, 13, 45, 9)
OUTPUT_DIR = "/tmp/fusion_host_out"
JOB_NAME = "fusion_host"


def y(s):
    return textwrap.dedent(s).lstrip("\n")


# ---------------------------------------------------------------------------------------------
# Config trees
# ---------------------------------------------------------------------------------------------

DATASETS = ["sun397", "stanford-cars", "mnist"]

FUSIONBENCH = {
    "fabric_model_fusion.yaml": y("""
        defaults:
          - hydra: default # Hydra framework configuration
          - fabric: auto
          - path: default
          # --- Core Components ---
          - modelpool: CLIPVisionModelPool/clip-vit-base-patch32_TA8
          - method: dummy
          - taskpool: dummy
          - _self_
        _target_: fusion_bench.programs.FabricModelFusionProgram
        _recursive_: false
        seed: null
        fast_dev_run: false
        dry_run: false
        print_config: true
        print_function_call: true
        merged_model_save_path: null
        merged_model_save_kwargs: null
        report_save_path: "{log_dir}/program_report.json"
    """),
    "hydra/default.yaml": y("""
        defaults:
          - override help: fusion_bench_help
          - override job_logging: rich_logging
        run:
          dir: ${path.log_dir}
        sweep:
          dir: ${path.root_dir}/outputs/multirun/${hydra.job.config_name}
        output_subdir: ""
        job:
          env_set:
            HYDRA_FULL_ERROR: ${oc.env:HYDRA_FULL_ERROR,1}
    """),
    "hydra/help/fusion_bench_help.yaml": y("""
        app_name: fusion_bench
        header: == ${hydra.help.app_name} ==
    """),
    "hydra/job_logging/rich_logging.yaml": y("""
        version: 1
        root:
          level: INFO
    """),
    "fabric/auto.yaml": y("""
        defaults:
          - loggers: tensorboard_logger
          - _self_
        _target_: lightning.Fabric
        _recursive_: true
        devices: 1
        strategy: auto
        accelerator: auto
        precision: null
    """),
    "fabric/loggers/tensorboard_logger.yaml": y("""
        _target_: lightning.fabric.loggers.TensorBoardLogger
        root_dir: ${path.log_dir}
        name: ""
        version: ""
    """),
    "fabric/loggers/csv_logger.yaml": y("""
        _target_: lightning.fabric.loggers.CSVLogger
        root_dir: ${path.log_dir}
        name: ""
    """),
    "path/default.yaml": y("""
        root_dir: ${oc.env:FUSION_BENCH_PROJECT_ROOT,"."}
        output_dir: ${.root_dir}/outputs
        data_dir: ${oc.env:FUSION_BENCH_DATA_DIR,${.root_dir}/data}
        cache_dir: ${oc.env:FUSION_BENCH_CACHE_DIR,${.output_dir}/cache}
        log_dir: ${.output_dir}/${hydra:job.config_name}/${now:%Y-%m-%d_%H-%M-%S}
    """),
    "method/dummy.yaml": y("""
        _target_: fusion_bench.method.DummyAlgorithm
    """),
    "method/task_arithmetic.yaml": y("""
        _target_: fusion_bench.method.TaskArithmeticAlgorithm
        scaling_factor: 0.3
    """),
    "method/ties_merging.yaml": y("""
        _target_: fusion_bench.method.TiesMergingAlgorithm
        # Scaling factor $\\lambda$
        scaling_factor: 0.3
        threshold: 20
        remove_keys: []
        merge_func: sum
    """),
    "method/adamerging/clip.yaml": y("""
        name: clip_layer_wise_adamerging
        weights: null
        optimizer: adam
        lr: 1e-3
        init_values: 0.3
        clamp_weights: false
        fast_dev_run: ${fast_dev_run}
        save_merging_weights: 'merging_weights.pt'
        cache_dir: outputs
        max_steps: 1000
    """),
    "modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TA8.yaml": y("""
        # tasks defined in the task arithmetic paper (trimmed)
        defaults:
          - /dataset/image_classification/train@train_datasets:
              - sun397
              - stanford-cars
              - mnist
          - /dataset/image_classification/test@test_datasets:
              - sun397
              - stanford-cars
              - mnist
          - _self_
        _target_: fusion_bench.modelpool.CLIPVisionModelPool
        _recursive_: False
        processor: openai/clip-vit-base-patch32
        models:
          _pretrained_: openai/clip-vit-base-patch32
          sun397: tanganke/clip-vit-base-patch32_sun397
          stanford-cars: tanganke/clip-vit-base-patch32_stanford-cars
          mnist: tanganke/clip-vit-base-patch32_mnist
        platform: hf
    """),
    "modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TA8_model_only.yaml": y("""
        _target_: fusion_bench.modelpool.CLIPVisionModelPool
        _recursive_: False
        processor: openai/clip-vit-base-patch32
        models:
          _pretrained_: openai/clip-vit-base-patch32
          sun397: tanganke/clip-vit-base-patch32_sun397
        platform: hf
    """),
    "taskpool/dummy.yaml": y("""
        _target_: fusion_bench.taskpool.DummyTaskPool
        model_save_path: null
    """),
    "taskpool/CLIPVisionModelTaskPool/_template.yaml": y("""
        _target_: fusion_bench.taskpool.CLIPVisionModelTaskPool
        _recursive_: false
        test_datasets: ???
        base_model: openai/clip-vit-base-patch32
        clip_model: ${.base_model}
        processor: ${.base_model}
        data_processor: ${.processor}
        dataloader_kwargs:
          batch_size: 128
          num_workers: 8
          model: ${..base_model}
        fast_dev_run: ${fast_dev_run}
    """),
    "taskpool/CLIPVisionModelTaskPool/clip-vit-classification_TA8.yaml": y("""
        defaults:
          - CLIPVisionModelTaskPool@: _template
          - /dataset/image_classification/test@test_datasets:
              - sun397
              - stanford-cars
              - mnist
    """),
}
for _split in ["train", "test"]:
    for _d in DATASETS:
        FUSIONBENCH[f"dataset/image_classification/{_split}/{_d}.yaml"] = y(f"""
            {_d}:
              _target_: datasets.load_dataset
              path: tanganke/{_d}
              split: {_split}
        """)

GROUPS = {
    "config.yaml": y("""
        defaults:
          - db: mysql
          - optional server: apache
          - optional nonexistent_group: whatever
          - /misc/extra@extras.one
          - misc/plain
          - _self_
        top: 1
        db:
          timeout: 10
    """),
    "db/mysql.yaml": y("""
        driver: mysql
        port: 3306
        user: ${oc.env:DB_USER,root}
    """),
    "db/postgresql.yaml": y("""
        defaults:
          - schema: public
          - _self_
        driver: postgresql
        port: 5432
    """),
    "db/sqlite.yaml": y("""
        driver: sqlite
        file: ${oc.select:..name,nameless}.db
    """),
    "db/schema/public.yaml": y("""
        name: public
        owner: ${..driver}
    """),
    "db/schema/private.yaml": y("""
        name: private
    """),
    "server/apache.yaml": y("""
        defaults:
          - /db@backend: sqlite
          - _self_
        name: apache
        port: 80
    """),
    "server/nginx.yaml": y("""
        name: nginx
        port: 8080
    """),
    "misc/extra.yaml": y("""
        a: 1
        b: [1, 2]
    """),
    "misc/plain.yaml": y("""
        plain: true
    """),
    "extra_group/one.yaml": y("""
        value: one
    """),
    "extra_group/two.yaml": y("""
        value: two
    """),
    "global/g.yaml": y("""
        # @package _global_
        gkey: from_global
        nested:
          g: 1
    """),
    "header/h.yaml": y("""
        # @package some.where
        hkey: 1
    """),
    "packages.yaml": y("""
        defaults:
          - db@_here_: mysql
          - db@dbs.second: postgresql
          - server@_global_: nginx
          - global: g
          - header: h
          - db@all_dbs: [mysql, sqlite]
          - _self_
        name: packages
    """),
    "selfless.yaml": y("""
        defaults:
          - db: mysql
        db:
          port: 1
    """),
    "selffirst.yaml": y("""
        defaults:
          - _self_
          - db: mysql
        db:
          port: 1
    """),
    "missing_choice.yaml": y("""
        defaults:
          - db: ???
          - _self_
        x: 1
    """),
    "with_override.yaml": y("""
        defaults:
          - db: mysql
          - server: apache
          - _self_
          - override db: postgresql
          - override db/schema: private
        y: 2
    """),
    "no_defaults.yaml": y("""
        only: content
    """),
    "dup_self.yaml": y("""
        defaults:
          - _self_
          - db: mysql
          - _self_
        z: 1
    """),
    "bad_order.yaml": y("""
        defaults:
          - override db: postgresql
          - db: mysql
        z: 1
    """),
    "twice.yaml": y("""
        defaults:
          - db: mysql
          - db: postgresql
    """),
    "broken_include.yaml": y("""
        defaults:
          - broken: bad
    """),
    "broken/bad.yaml": "key: value\nother: [unclosed\nthird: 3\n",
    "platform/cpu.yaml": "device: cpu\n",
    "platform/gpu.yaml": "device: cuda\n",
    "backend/cpu_be.yaml": "kernels: scalar\n",
    "backend/gpu_be.yaml": "kernels: wgsl\n",
    "interp_defaults.yaml": y("""
        defaults:
          - platform: cpu
          - backend: ${platform}_be
          - _self_
        hydra:
          job:
            chdir: false
        top: ${platform.device}
    """),
}

VALUES = {
    "values.yaml": y("""
        i: 1
        f: 0.5
        s: hello
        b: true
        n: null
        lst: [1, 2, {name: x}]
        d:
          a: 1
          b:
            c: 2
        req: ???
    """),
    "interp.yaml": y("""
        a: 1
        b: ${a}
        c: "${a}/x"
        d:
          e: ${.f}
          f: 2
          g:
            h: ${..f}
            k: ${...a}
        m:
          x: 1
          y: [1, 2]
        n: ${m}
        ny: ${m.y}
        idx: ${m.y.1}
        s: ${oc.select:nope,fallback}
        s2: ${oc.select:a,0}
        s3: ${oc.select:d.f}
        s4: ${oc.select:nothing}
        env1: ${oc.env:TEST_VAR}
        env2: ${oc.env:UNSET_VAR_XYZ,"dflt"}
        env3: ${oc.env:UNSET_VAR_XYZ,${c}}
        env4: ${oc.env:UNSET_VAR_XYZ,null}
        env5: ${oc.env:UNSET_VAR_XYZ,'single quoted'}
        env6: ${oc.env:TEST_VAR,unused}
        key: a
        key2: f
        nested: ${${key}}
        dotnested: ${d.${key2}}
        t: true
        nn: null
        bools: ${t} and ${nn}
        flt: 1e-3
        fl: ${flt}
        fls: x${flt}
        esc: \\${a}
        esc2: a\\\\${a}
        esc3: "${a} \\\\${a}"
        miss: ???
        lst: [1, "${a}", "${a}x", {q: "${a}"}]
        time: ${now:%Y-%m-%d_%H-%M-%S}
        when: run at ${now:%H:%M}
        hyd: ${hydra:job.config_name}
        hydname: ${hydra:job.name}
        outd: ${hydra:runtime.output_dir}/sub
        spaced: ${ a }
        deep: ${d.g.h}
        chain1: ${chain2}
        chain2: ${chain3}
        chain3: 42
        text: plain \\ backslash
        dollar: costs $5
        decode: ${oc.decode:'[1, 2]'}
    """),
}

BADYAML = {
    "config.yaml": "a: 1\nb:\n  - x\n c: 2\n",
    "ok.yaml": "defaults:\n  - grp: broken\nk: 1\n",
    "grp/broken.yaml": "fine: 1\nbad: {x: 1\nmore: 2\n",
    "grp/dupkey.yaml": "a: 1\na: 2\n",
    "dup.yaml": "defaults:\n  - grp: dupkey\n",
}

# ---------------------------------------------------------------------------------------------
# Runs: (name, config_name, overrides, env, culprits, expect)
# expect: "ok", "compose_error" or "resolve_error" (asserted against Hydra here)
# ---------------------------------------------------------------------------------------------

FB_ENV = {"TEST_VAR": "from_env"}

RUNS = {
    "fusionbench": [
        ("default", "fabric_model_fusion", [], {}, [], "ok"),
        ("task_arithmetic_ta8", "fabric_model_fusion",
         ["method=task_arithmetic", "method.scaling_factor=0.7",
          "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8_model_only",
          "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8"], {}, [], "ok"),
        ("adamerging_nested_option", "fabric_model_fusion",
         ["method=adamerging/clip", "fast_dev_run=true", "fabric/loggers=csv_logger"], {}, [], "ok"),
        ("edit_forms", "fabric_model_fusion",
         ["method=ties_merging", "~method.remove_keys", "method.merge_func=null",
          "+method.new_param=v", "++modelpool.x={k: v, l: [1, 2]}", "++seed=42",
          "fabric.devices=4", "taskpool.model_save_path='${path.log_dir}/model'"], {}, [], "ok"),
        ("escaped_interpolation", "fabric_model_fusion",
         ["merged_model_save_path=$\\{path.log_dir\\}/merged_model",
          "report_save_path=\\${path.log_dir}/report.json"], {}, [], "ok"),
        ("env_root", "fabric_model_fusion", [],
         {"FUSION_BENCH_PROJECT_ROOT": "/proj", "FUSION_BENCH_CACHE_DIR": "/cache"}, [], "ok"),
        ("taskpool_list_index", "fabric_model_fusion",
         ["taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8",
          "taskpool.test_datasets.mnist.split=val", "+taskpool.extra=[a, b]",
          "taskpool.extra.1=c"], {}, [], "ok"),
        ("hydra_override", "fabric_model_fusion", ["hydra.run.dir=somewhere"], {}, [], "ok"),
        ("hydra_builtin_group", "fabric_model_fusion",
         ["hydra/job_logging=disabled", "hydra/hydra_logging=none"], {}, [], "ok"),
        ("err_hydra_builtin_option", "fabric_model_fusion", ["hydra/help=nope"], {},
         ["hydra/help", "nope"], "compose_error"),
        ("err_unknown_option", "fabric_model_fusion", ["method=task_arithmetc"], {},
         ["method/task_arithmetc", "task_arithmetic", "ties_merging"], "compose_error"),
        ("err_unknown_nested_option", "fabric_model_fusion",
         ["modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA9"], {},
         ["modelpool/CLIPVisionModelPool/clip-vit-base-patch32_TA9",
          "clip-vit-base-patch32_TA8"], "compose_error"),
        ("err_key_missing", "fabric_model_fusion", ["method.scaling_factr=1"], {},
         ["method.scaling_factr", "+method.scaling_factr=1"], "compose_error"),
        ("err_not_group", "fabric_model_fusion", ["metod=dummy"], {},
         ["metod", "+metod=dummy"], "compose_error"),
        ("err_group_not_in_defaults", "fabric_model_fusion", ["dataset=foo"], {},
         ["dataset", "+dataset=foo"], "compose_error"),
        ("err_append_exists", "fabric_model_fusion", ["+dry_run=true"], {},
         ["dry_run", "++dry_run=true"], "compose_error"),
        ("err_group_twice", "fabric_model_fusion", ["+method=task_arithmetic"], {},
         ["method"], "compose_error"),
        ("err_missing_value", "fabric_model_fusion",
         ["taskpool=CLIPVisionModelTaskPool/_template", "+taskpool.p=${taskpool.test_datasets}"],
         {}, ["taskpool.test_datasets"], "resolve_error"),
    ],
    "groups": [
        ("default", "config", [], {}, [], "ok"),
        ("choose_postgresql", "config", ["db=postgresql", "db.port=6543"], {"DB_USER": "alice"}, [], "ok"),
        ("nested_group_choice", "config", ["db=postgresql", "db/schema=private"], {}, [], "ok"),
        ("delete_group", "config", ["~server"], {}, [], "ok"),
        ("delete_group_value", "config", ["~server=apache"], {}, [], "ok"),
        ("append_group", "config", ["+extra_group=one"], {}, [], "ok"),
        ("append_group_pkg", "config", ["+extra_group@here.there=two"], {}, [], "ok"),
        ("option_list_override", "config", ["db=[mysql,postgresql]"], {}, [], "ok"),
        ("inner_package_override", "config", ["db@server.backend=mysql"], {}, [], "ok"),
        ("value_under_group", "config", ["server.port=81", "extras.one.b=[3]"], {}, [], "ok"),
        ("packages", "packages", [], {}, [], "ok"),
        ("packages_override", "packages", ["db@dbs.second=sqlite", "global=g"], {}, [], "ok"),
        ("self_implicit_last", "selfless", [], {}, [], "ok"),
        ("self_first", "selffirst", [], {}, [], "ok"),
        ("missing_choice_given", "missing_choice", ["db=sqlite"], {}, [], "ok"),
        ("with_override", "with_override", [], {}, [], "ok"),
        ("with_override_cli_wins", "with_override", ["db/schema=public"], {}, [], "ok"),
        ("err_override_unused", "with_override", ["db=sqlite"], {}, ["db/schema", "with_override"], "compose_error"),
        ("no_defaults", "no_defaults", ["+db=mysql"], {}, [], "ok"),
        ("no_primary", None, ["+db=mysql", "+k=1"], {}, [], "ok"),
        ("primary_with_ext", "no_defaults.yaml", [], {}, [], "ok"),
        ("defaults_interpolation", "interp_defaults", [], {}, [], "ok"),
        ("defaults_interpolation_override", "interp_defaults", ["platform=gpu"], {}, [], "ok"),
        ("append_group_global", "config", ["+extra_group@_global_=one"], {}, [], "ok"),
        ("err_missing_choice", "missing_choice", [], {}, ["db", "mysql", "postgresql", "sqlite"], "compose_error"),
        ("err_unknown_group_option", "config", ["db=oracle"], {}, ["db/oracle", "mysql"], "compose_error"),
        ("err_extra_group_not_in_defaults", "config", ["extra_group=one"], {}, ["extra_group", "+extra_group=one"], "compose_error"),
        ("err_delete_group_absent", "config", ["~extra_group"], {}, ["extra_group"], "compose_error"),
        ("err_delete_group_wrong_value", "config", ["~server=nginx"], {}, ["server=nginx"], "compose_error"),
        ("err_force_add_group", "config", ["++db=mysql"], {}, ["++db=mysql"], "compose_error"),
        ("err_package_not_in_defaults", "config", ["db@nowhere=mysql"], {}, ["db@nowhere"], "compose_error"),
        ("err_no_such_primary", "nope", [], {}, ["nope"], "compose_error"),
        ("err_dup_self", "dup_self", [], {}, ["_self_", "dup_self"], "compose_error"),
        ("err_override_order", "bad_order", [], {}, ["db", "bad_order"], "compose_error"),
        ("err_group_twice", "twice", [], {}, ["db"], "compose_error"),
        ("err_broken_yaml_include", "broken_include", [], {}, ["bad.yaml"], "compose_error"),
        ("err_bad_group_key_override", "config", ["nosuchgroup@pkg=x"], {}, ["nosuchgroup"], "compose_error"),
    ],
    "values": [
        ("plain", "values", [], {}, [], "ok"),
        ("typed_values", "values",
         ["i=2", "f=1e-3", "s='quoted str'", "b=false", "n=5", "+new=[1,2]",
          "+d.b.e={x: [1, y]}", "lst.2.name=z", "d.a=null", "req=given"], {}, [], "ok"),
        ("strings_and_adds", "values",
         ["s=\"double ${i}\"", "+t=unquoted words here ", "++i=3", "++brand=new", "~b", "~f=0.5",
          "+colon=a:b", "+ws=c\\ d", "+empty=", "+nul=null", "+tr=True", "+int_=1_000",
          "+flo=.5", "+neg=-7", "+sci=2E+3", "+lead0=007", "+ver=1.2.3", "+path=/a/b-c_d.txt"],
         {}, [], "ok"),
        ("escapes", "values", ["+esc=\\${i}", "+esc2=$\\{i\\}", "+inter=${i}", "+mix=x_${s}_y"], {}, [], "ok"),
        ("dict_merge", "values", ["d={b: {c: 9}}", "lst=[9]", "+d.b={z: 1}"], {}, [], "ok"),
        ("nested_add", "values", ["+x.y.z=1", "++d.q.r=2"], {}, [], "ok"),
        ("add_to_null", "values", ["+n=3"], {}, [], "ok"),
        ("interp", "interp", [], {"TEST_VAR": "from_env"}, [], "ok"),
        ("err_key_missing", "values", ["nokey=1"], {}, ["nokey", "+nokey=1"], "compose_error"),
        ("err_nested_key_missing", "values", ["d.zz=1"], {}, ["d.zz"], "compose_error"),
        ("err_dict_adds_key", "values", ["d={zz: 1}"], {}, ["zz"], "compose_error"),
        ("err_append_exists", "values", ["+i=5"], {}, ["i", "++i=5"], "compose_error"),
        ("err_delete_missing", "values", ["~nokey"], {}, ["nokey"], "compose_error"),
        ("err_delete_null", "values", ["~n"], {}, ["n"], "compose_error"),
        ("err_delete_mismatch", "values", ["~i=7"], {}, ["i", "7"], "compose_error"),
        ("err_sweep", "values", ["i=1,2"], {}, ["i=1,2"], "compose_error"),
        ("err_syntax", "values", ["i=[1"], {}, ["[1"], "compose_error"),
        ("err_syntax_quote", "values", ["s='open"], {}, ["s='open"], "compose_error"),
        ("err_interp_key", "values", ["+bad=${nokey}"], {}, ["nokey"], "resolve_error"),
        ("err_interp_cycle", "values", ["+c1=${c2}", "+c2=${c1}"], {}, ["c1"], "resolve_error"),
        ("err_interp_missing", "values", ["+mm=${req}"], {}, ["req"], "resolve_error"),
        ("err_unknown_resolver", "values", ["+r=${foo:bar}"], {}, ["foo"], "resolve_error"),
        ("err_env_unset", "values", ["+e=${oc.env:SURELY_UNSET_VAR_42}"], {}, ["SURELY_UNSET_VAR_42"], "resolve_error"),
        ("err_relative_too_far", "values", ["+d.rr=${...i}"], {}, ["...i"], "resolve_error"),
    ],
    "badyaml": [
        ("err_primary_syntax", "config", [], {}, ["config.yaml", "line 4"], "compose_error"),
        ("err_group_syntax", "ok", [], {}, ["broken.yaml"], "compose_error"),
        ("err_duplicate_key", "dup", [], {}, ["dupkey.yaml"], "compose_error"),
    ],
}

TREES = {"fusionbench": FUSIONBENCH, "groups": GROUPS, "values": VALUES, "badyaml": BADYAML}

# Culprits that only our messages carry (Hydra words some messages differently).
RUST_ONLY_CULPRITS = {
    ("badyaml", "err_primary_syntax"): {"line 4"},
    ("groups", "err_broken_yaml_include"): {"bad.yaml"},
    ("badyaml", "err_group_syntax"): {"broken.yaml"},
    ("badyaml", "err_duplicate_key"): {"dupkey.yaml"},
    ("values", "err_interp_cycle"): {"c1"},
    ("values", "err_relative_too_far"): {"...i"},
    ("fusionbench", "err_unknown_nested_option"): {"clip-vit-base-patch32_TA8"},
}


def write_tree(case, files):
    base = FIXTURES / case / "configs"
    if base.exists():
        shutil.rmtree(base)
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return base


def set_env(env, previous):
    for k in list(previous):
        os.environ.pop(k, None)
    os.environ.update(env)


def run_one(config_dir, case, run):
    name, config_name, overrides, env, culprits, expect = run
    record = {
        "name": name,
        "config_name": config_name,
        "overrides": overrides,
        "env": env,
        "now": NOW.strftime("%Y-%m-%dT%H:%M:%S"),
        "output_dir": OUTPUT_DIR,
        "culprits": culprits,
        "expect": expect,
    }
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None, job_name=JOB_NAME):
        OmegaConf.register_new_resolver("now", lambda pattern: NOW.strftime(pattern),
                                        use_cache=True, replace=True)
        try:
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        except Exception as e:  # noqa: BLE001 - we record whatever Hydra raises
            # Keep fixtures machine-independent: no absolute paths in recorded messages.
            record["compose_error"] = f"{type(e).__name__}: {e}".replace(str(config_dir), "<configs>")
            return record
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = OUTPUT_DIR
        HydraConfig.instance().set_config(cfg)
        job = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(job):
            del job["hydra"]
        record["composed"] = OmegaConf.to_container(job, resolve=False)
        record["yaml"] = OmegaConf.to_yaml(job)  # what `--cfg job` prints
        record["choices"] = dict(cfg.hydra.runtime.choices.items())
        try:
            record["resolved"] = OmegaConf.to_container(job, resolve=True)
        except Exception as e:  # noqa: BLE001
            record["resolve_error"] = f"{type(e).__name__}: {e}"
    return record


def check(case, run, record):
    name, _, _, _, culprits, expect = run
    got = ("compose_error" if "compose_error" in record
           else "resolve_error" if "resolve_error" in record else "ok")
    if got != expect:
        raise SystemExit(f"{case}/{name}: expected {expect}, Hydra gave {got}: {record}")
    if expect != "ok":
        msg = record[expect].lower()
        skip = RUST_ONLY_CULPRITS.get((case, name), set())
        for c in culprits:
            if c in skip:
                continue
            if c.lower() not in msg:
                raise SystemExit(f"{case}/{name}: Hydra's error does not mention {c!r}: {msg}")


def make_emit_fixture():
    """`OmegaConf.to_yaml` of tricky scalars, to check fusion-config's YAML emitter."""
    import random

    rng = random.Random(1234)
    picked = ["", " ", "a", "y", "n", "Y", "no", "On", "~", "null", "Null", "NULL", "<<", "=",
              "true", "False", "1", "-1", "+1", "1_000", "1__0", "0b101", "0x1F", "017", "0o17",
              "1:20", "1:20.5", "1.5", "1.", ".5", "1e3", "1E+3", "1.0e+3", "1_0.5_", ".inf",
              "-.Inf", ".nan", "inf", "nan", "Infinity", "2024-05-17", "2024-5-7 1:02:03",
              "2024-05-17T13:45:09.5Z", "2024-05-17 13:45:09 +01:00", "???", "${a.b}",
              "${oc.env:X,'d'}", "{log_dir}/x", "[1, 2]", "a: b", "a:b", "a:", ":a", "- x", "-x",
              "? x", "?x", "#c", "a #c", "a#c", "it's", "'q'", '"dq"', "a\\b", "tab\tin",
              "line1\nline2", "trail\n", "\nlead", "sp ace", " lead", "trail ", "a  b",
              "héllo", "日本語", "emoji \U0001F600", "nbsp\u00a0x", "bell\x07", "---", "...x",
              "%x", "@x", "`x", "!x", "&x", "*x", "|x", ">x", ",x", "x,y", "x]", "x}",
              "word " * 30, ("word " * 30).strip(), "a" * 90 + " " + "b" * 10,
              '"' + "x " * 60, "p " * 45 + "end", "x\n" * 3, " \n x", "x \ny"]
    picked = [p.encode().decode("unicode_escape") if "\\" in p else p for p in picked]
    alphabet = "ab :#-'\"\n\t{}[],?*&!|>%@`~=<.0123456789eExyn_é"
    for _ in range(300):
        n = rng.choice([1, 2, 3, 5, 8, 20, 90])
        picked.append("".join(rng.choice(alphabet) for _ in range(n)))
    values = [1, -7, 0.5, 1e-5, 1e20, 2000.0, True, None, [], {}, [[1, 2], []], {"k": [1, {"z": None}]}]
    cases = []
    for i, v in enumerate(picked + values):
        node = {"key": v, "k" + str(i): {"nested": v, "list": [v, [v], {"in": v}]}}
        if isinstance(v, str) and v:
            node[v] = "as key"
        cases.append({"value": node, "yaml": OmegaConf.to_yaml(OmegaConf.create(node))})
    out = FIXTURES / "emit" / "expected.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"omegaconf_version": omegaconf.__version__, "cases": cases},
                              indent=1, ensure_ascii=False) + "\n")
    print(f"emit: {len(cases)} cases")


def main():
    os.environ.pop("FUSION_BENCH_PROJECT_ROOT", None)
    os.environ.pop("FUSION_BENCH_DATA_DIR", None)
    os.environ.pop("FUSION_BENCH_CACHE_DIR", None)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    for case, files in TREES.items():
        config_dir = write_tree(case, files)
        records = []
        prev_env = {}
        for run in RUNS[case]:
            set_env(run[3], prev_env)
            prev_env = run[3]
            rec = run_one(config_dir, case, run)
            check(case, run, rec)
            records.append(rec)
        set_env({}, prev_env)
        out = {
            "hydra_version": hydra.__version__,
            "omegaconf_version": omegaconf.__version__,
            "runs": records,
        }
        (FIXTURES / case / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"{case}: {len(records)} runs")
    make_emit_fixture()
    return 0


if __name__ == "__main__":
    sys.exit(main())
