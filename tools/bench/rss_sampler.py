#!/usr/bin/env python3
"""Sample the resident memory of the benchmark's runs, split into anonymous and file-backed pages.

    python3 tools/bench/rss_sampler.py /tmp/fusion-bench-data/full/runs OUT.json [interval_s]

`/usr/bin/time -v`'s "Maximum resident set size" counts file-backed pages too, so a tool that
memory-maps its inputs shows their size there even when its own (anonymous) memory is small.
This polls every process whose working directory lies under RUNS (the script runs each tool in
its own folder there) and keeps, per folder, the peaks of RssAnon, RssFile and RssAnon+RssFile
from /proc/PID/status, until it is killed; OUT.json is rewritten as the peaks change.
"""

import json
import os
import sys
import time


def main() -> None:
    runs, out = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
    peaks: dict[str, dict[str, int]] = {}
    while True:
        changed = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if not cwd.startswith(runs):
                    continue
                comm = open(f"/proc/{pid}/comm").read().strip()
                if comm == "time":
                    continue
                vals = {}
                for line in open(f"/proc/{pid}/status"):
                    k, _, v = line.partition(":")
                    if k in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                        vals[k] = int(v.split()[0])
            except OSError:
                continue
            key = os.path.basename(cwd.rstrip("/"))
            p = peaks.setdefault(key, {"comm": comm})
            vals["RssAnon+RssFile"] = vals.get("RssAnon", 0) + vals.get("RssFile", 0)
            for k, v in vals.items():
                if v > p.get(k + "_peak_kb", -1):
                    p[k + "_peak_kb"] = v
                    changed = True
        if changed:
            with open(out + ".tmp", "w") as f:
                json.dump(peaks, f, indent=2)
            os.replace(out + ".tmp", out)
        time.sleep(interval)


if __name__ == "__main__":
    main()
