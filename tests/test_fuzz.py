"""A short fuzzing budget for every framework-free reader, as CI runs it (issue 9).

Each reader is fuzzed in a child process under RLIMIT_AS (benchmarks/fuzz.py), so a header that
makes a reader allocate for a 1 TB tensor shows up as a MemoryError finding. Longer runs:
`benchmarks/fuzz.py --seconds 60`.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "fuzz"))
import harness  # noqa: E402

EXAMPLES = 150


@pytest.mark.parametrize("reader", sorted(harness.readers()))
def test_mutated_inputs_read_or_raise_hubfmt_error(reader):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--reader", reader,
                           "--examples", str(EXAMPLES), "--json"], capture_output=True, text=True, timeout=900)
    assert proc.stdout, proc.stderr[-3000:]
    (stats,) = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{reader}: {stats['executions']} executions, {stats['outcomes']}")
    assert stats["executions"] == EXAMPLES
    assert not stats["unexpected"], "\n".join(stats["unexpected"])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_mutations_change_the_input():
    data = bytes(range(256)) * 4
    assert harness.mutate(data, [("flip", 3, 0)]) != data
    assert harness.mutate(data, [("truncate", 0.5)]) == data[:512]
    assert harness.mutate(data, [("int", 8, 8, 2**40, "little")])[8:16] == (2**40).to_bytes(8, "little")
    assert harness.mutate(data, [("insert", -1, b"xy")])[-3:-1] == b"xy"


def test_a_slow_input_is_a_finding(tmp_path):
    """The harness must be able to fail: an input that takes longer than the bound raises Hang,
    which no reader can swallow (it is not an Exception)."""
    _, build = harness.readers()["hub"]
    sample = build(str(tmp_path))
    with pytest.raises(harness.Hang):
        harness.check_one(sample, "hub", 1e-6)
