"""Checkpoints of very many tiny tensors (issue 18 part 1, issue 13's resource figures): they
stream in memory that grows with the tensor count only by the per-tensor metadata, under an
address-space limit, and the benchmark that measures them runs."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

import hubfmt
from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.io import hubfile

from conftest import REPO

COUNT = 100_000

# Converts hub -> torch -> hub in this child under RLIMIT_AS: start-up plus 512 MiB of address
# space (thread stacks and malloc arenas included) for 100,000 tensors, ~5 KiB a tensor: what a
# tensor costs is its metadata, never its neighbours' bytes nor a copy of the whole file.
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import hubfmt, numpy, zipfile
    from hubfmt.pipeline import convert
    with open("/proc/self/statm") as f:
        start = int(f.read().split()[0]) * resource.getpagesize()
    limit = start + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    hub, pt, back = sys.argv[1:4]
    a = convert(hub, pt, show_progress=False)
    b = convert(pt, back, show_progress=False)
    print(json.dumps([a.tensors_out, b.tensors_out, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
""")


def _tiny(count: int) -> Checkpoint:
    ckpt = Checkpoint()
    for i in range(count):
        def gen(i=i):
            return np.full((2,), i % 251, dtype=np.float32)
        ckpt.add(f"moe.{i // 64}.e{i % 64}.bias", LazyTensor((2,), "float32", gen), TensorInfo(kind="linear"))
    return ckpt


def test_100k_tiny_tensors_stream_under_an_address_space_limit(tmp_path):
    hub, pt, back = tmp_path / "many.safetensors", tmp_path / "many.pt", tmp_path / "back.safetensors"
    hubfile.write(_tiny(COUNT), hub)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(hub), str(pt), str(back)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    to_torch, to_hub, _ = json.loads(proc.stdout)
    assert to_torch == to_hub == COUNT
    got = hubfmt.read(back)
    assert list(got.entries) == list(_tiny(COUNT).entries)
    for i in (0, 1, 63, 64, COUNT // 2, COUNT - 1):     # the bytes came through, in the right places
        name = f"moe.{i // 64}.e{i % 64}.bias"
        assert got.array(name).tolist() == [i % 251] * 2, name


def test_the_many_tensor_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "many_tensors_bench.py"), "--quick",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for row in ("safetensors load_file + save_file", "torch -> hub", "hub -> torch", "hub -> mindspore",
                "mindspore -> hub", "one-byte tensors", "torch -> hub (shards of"):
        assert row in out, row
    assert "us/tensor" in out and "peak RSS MB" in out
