"""What durable output costs: one conversion with hubfmt as shipped, and with its fsync and its
paced writeback patched out (as a `--no-sync` option would do), each in a fresh process.

    .venv/bin/python benchmarks/durability_cost.py model.safetensors --to torch --repeat 5

The README's "an option to skip the fsync was measured and not added" comes from this script.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

_RUN = r"""
import os, sys, time
from hubfmt.io.malloc import reuse_freed_memory
from hubfmt import convert
from hubfmt.io import atomic, writeback
reuse_freed_memory()                       # as the hubfmt command does
if sys.argv[1] != "durable":
    atomic._fsync_trees = lambda paths: None
    atomic.fsync_path = lambda path: None
if sys.argv[1] == "no-sync, kernel writeback":
    writeback._sync_file_range = None
t = time.perf_counter()
convert(sys.argv[2], sys.argv[3], dst_framework=sys.argv[4], show_progress=False)
print(time.perf_counter() - t)
"""
MODES = ("durable", "no-sync, paced writeback", "no-sync, kernel writeback")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("--to", default="hub", help="destination framework (default hub)")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="hubfmt-durability-", dir=os.path.dirname(os.path.abspath(a.source)))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for _ in range(a.repeat):
            for mode in MODES:                 # interleaved, so disk weather hits every mode alike
                dst = os.path.join(work, "out")
                out = subprocess.run([sys.executable, "-c", _RUN, mode, a.source, dst, a.to],
                                     capture_output=True, text=True, check=True).stdout
                times[mode].append(float(out.split()[-1]))
                shutil.rmtree(dst) if os.path.isdir(dst) else os.unlink(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| mode ({os.path.basename(a.source)} -> {a.to}) | min s | median s | max s |")
    print("|---|---|---|---|")
    for mode, ts in times.items():
        print(f"| {mode} | {min(ts):.2f} | {statistics.median(ts):.2f} | {max(ts):.2f} |")


if __name__ == "__main__":
    main()
