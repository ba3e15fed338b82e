#!/usr/bin/env python3
"""Golden fixtures for fusion-config's sweep expansion (`fusion_config::sweep::expand`), made with
Hydra's own basic sweeper.

Usage:  pip install hydra-core   (tested with hydra-core 1.3.8)
        python3 tools/hydra/make_sweep_fixtures.py

For each command line below, writes the jobs Hydra's BasicSweeper launches (the override list of
every job, in launch order) to `host/config/tests/fixtures/sweeps/expected.json`; sweeps that
Hydra refuses or that give no job are listed with `"error": true`. `glob(...)` runs against the
option list in GROUP_OPTIONS. host/config/tests/hydra_fixtures.rs compares. Deterministic output.
"""

import json
from pathlib import Path

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "host" / "config" / "tests" / "fixtures" / "sweeps" / "expected.json"

GROUP_OPTIONS = {
    "method": ["dummy", "simple_average", "task_arithmetic", "ties_merging"],
}

CASES = [
    ["method=task_arithmetic", "method.scaling_factor=0.1,0.3,0.5"],
    ["a=1,2", "b=x,y,z"],
    ["b=x,y", "a=1,2", "c=3"],
    ["a=1,2", "b=0", "a=3,4"],
    ["a=range(0,1,0.1)"],
    ["a=range(0.1,0.6,0.2)"],
    ["a=range(1,10,3)"],
    ["a=range(3,0,-1)"],
    ["a=range(start=0.5,stop=2.5,step=0.5)"],
    ["a=range(-1.5,1.5,0.7)"],
    ["a=range(0,0.001,0.0002)"],
    ["a=choice(1,2.0,true,[3])"],
    ["a=choice('x y',z)"],
    ["a=0.10,1e-5,1e16,1_000,.5"],
    ["a='q,1',\"q2\",[1, 2],{k: v}"],
    ["+new=1,2", "~old"],
    ["method=glob(*)"],
    ["method=glob(t*)", "x=1,2"],
    ["method=glob([dummy,ti*])"],
    ["method=glob(*,exclude=[dummy,simple_*])"],
    ["a=sort(3,1,2)"],
    ["a=sort(range(1,4),reverse=true)"],
    ["a=sort(b,a,c)"],
    ["a=interval(0,1)"],
]


class FakeLoader:
    def get_group_options(self, group, results_filter=None, config_path=None, overrides=None):
        return GROUP_OPTIONS.get(group, [])


def main() -> None:
    parser = OverridesParser.create(config_loader=FakeLoader())
    runs = []
    for case in CASES:
        try:
            overrides = parser.parse_overrides(case)
            batches = BasicSweeper.split_arguments(overrides, None)
            jobs = [job for batch in batches for job in batch]
            runs.append({"overrides": case, "jobs": jobs, "error": False})
        except Exception as e:  # noqa: BLE001 - any refusal is an expected error
            runs.append({"overrides": case, "jobs": [], "error": True, "message": str(e)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"hydra_version": hydra.__version__, "runs": runs}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
