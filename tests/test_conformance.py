"""Round trips of generated checkpoints through every installed format (tests/conformance.py)."""
from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

import conformance as cf

CASES = Counter()
FORMATS = cf.installed()
PAIRS = [(a, b) for a, b in itertools.permutations(FORMATS, 2) if a.framework != "hub" and b.framework != "hub"]


def _run(fn, *args, key):
    work = tempfile.mkdtemp(prefix="hubfmt-conf-")
    try:
        fn(*args, work)
        CASES[key] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label)
def test_source_hub_source_is_bit_exact(fmt):
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cf.checkpoints(fmt.dtypes, fmt.rank0))
    def check(ckpt):
        _run(cf.through_hub, ckpt, fmt, key=f"{fmt.label} -> hub -> {fmt.label}")
    check()


@pytest.mark.parametrize("fmt, other", PAIRS, ids=lambda f: f.label)
def test_source_hub_other_hub_source_is_bit_exact(fmt, other):
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cf.checkpoints(fmt.dtypes & other.dtypes, fmt.rank0 and other.rank0))
    def check(ckpt):
        _run(cf.across, ckpt, fmt, other, key=f"{fmt.label} -> hub -> {other.label} -> hub -> {fmt.label}")
    check()


def test_zz_case_count():
    """The figures the report quotes (run with -s)."""
    for k, n in sorted(CASES.items()):
        print(f"\n  {n:4d} cases  {k}", end="")
    print(f"\n  {sum(CASES.values())} round-trip cases in all")
