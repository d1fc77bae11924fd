"""Fuzz every framework-free reader for a fixed budget and print executions and findings (issue 9).

    .venv/bin/python benchmarks/fuzz.py --seconds 60            # each reader, one minute
    .venv/bin/python benchmarks/fuzz.py --examples 200 --reader hub --json

Runs under RLIMIT_AS (address space = what the interpreter needs + --memory-mb), so a reader that
believes a header claiming a 1 TB tensor fails with MemoryError, which counts as a finding. Exit
status 1 when any reader had an unexpected exception.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz"))
import harness  # noqa: E402


def _vm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, help="budget per reader (wall seconds)")
    p.add_argument("--examples", type=int, help="budget per reader (inputs)")
    p.add_argument("--reader", action="append", help="only this reader (repeatable); default: all")
    p.add_argument("--memory-mb", type=int, default=1024, help="address space allowed beyond start-up (default 1024)")
    p.add_argument("--per-input-seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.seconds is None and a.examples is None:
        a.seconds = 60.0
    names = a.reader or list(harness.readers())
    samples_root = tempfile.mkdtemp(prefix="hubfmt-fuzz-samples-")
    samples = {}
    for i, name in enumerate(names):        # samples first: some need a framework's address space
        d = os.path.join(samples_root, str(i))
        os.makedirs(d)
        samples[name] = harness.prepare(name, d)
    limit = (_vm_kb() * 1024) + a.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    results = []
    for name in names:
        s = harness.run(name, max_examples=a.examples, seconds=a.seconds, per_input_seconds=a.per_input_seconds,
                        sample=samples[name])
        results.append(s)
        if not a.json:
            print(f"{name:<28} {s.executions:>8} executions  read {s.outcomes['read']:>6}  "
                  f"refused {s.outcomes['error']:>6}  unexpected {s.outcomes['unexpected']}", flush=True)
            for u in s.unexpected:
                print(f"    {u}")
    shutil.rmtree(samples_root, ignore_errors=True)
    if a.json:
        print(json.dumps([{"reader": s.reader, "executions": s.executions, "outcomes": dict(s.outcomes),
                           "unexpected": s.unexpected} for s in results]))
    return 1 if any(s.outcomes["unexpected"] for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
