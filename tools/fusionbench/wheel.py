"""Fetch and unpack the fusion-bench wheel from PyPI (shared by the tools/fusionbench scripts).

The wheel carries FusionBench's config tree (`fusion_bench_config/`) and the class names and
prompt templates of its CLIP tasks (`fusion_bench/tasks/clip_classification/*.py`). It is
downloaded with pip (`pip download fusion-bench==VERSION --no-deps`) into a cache folder and
unpacked next to it; nothing is installed and no FusionBench code is imported.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

# The release the reference notes (../shared/reference/fusionbench.md) describe.
DEFAULT_VERSION = "0.2.33"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusion-host" / "fusion-bench"


def fetch(version: str = DEFAULT_VERSION, wheel: str | None = None) -> Path:
    """Return the folder of the unpacked wheel (with `fusion_bench_config/` in it).

    `wheel` names an already downloaded .whl file; otherwise pip downloads `version`.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        name = f"fusion_bench-{version}-py3-none-any.whl"
        path = cache / name
        if not path.is_file():
            cmd = [sys.executable, "-m", "pip", "download", f"fusion-bench=={version}",
                   "--no-deps", "--only-binary=:all:", "-d", str(cache)]
            print("+", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=sys.stderr)
        if not path.is_file():
            raise SystemExit(f"pip did not produce {path}")
    else:
        path = Path(wheel)
    out = cache / path.stem
    if not (out / "fusion_bench_config").is_dir():
        with zipfile.ZipFile(path) as z:
            z.extractall(out)
    if not (out / "fusion_bench_config").is_dir():
        raise SystemExit(f"{path} has no fusion_bench_config/ folder")
    return out


def version_of(unpacked: Path) -> str:
    """The version in the wheel's metadata."""
    for d in unpacked.glob("fusion_bench-*.dist-info"):
        for line in (d / "METADATA").read_text().splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"
