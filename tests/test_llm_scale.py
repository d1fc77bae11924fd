"""LLM-scale checkpoints (issue 18): a sharded bf16 Hugging Face directory converts to each native
format and back in bounded memory (an address-space limit well below the checkpoint's size, in a
child process); the checksum and transpose work split over cores gives the same bytes as one
pass; benchmarks/llm_bench.py --quick runs. No wall-clock asserts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import hubfmt
from hubfmt.format import checksums
from hubfmt.io import parallel
from hubfmt.io.permute import permute

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import llm_bench  # noqa: E402

MiB = 2**20


# ---- the checkpoint and its bounded conversions ---------------------------------------------

@pytest.fixture(scope="module")
def llama_hf(tmp_path_factory):
    """A Llama-shaped bf16 HF directory of ~256 MiB in 4 shards (the largest tensor ~16 MiB)."""
    dims = llm_bench.llama_dims(256 * MiB)
    ckpt = llm_bench.synthetic_llama(dims)
    d = tmp_path_factory.mktemp("llama") / "hf"
    hubfmt.write(ckpt, d, framework="hf", max_shard_size=ckpt.total_bytes() // 4 + 1)
    return d, ckpt.total_bytes(), max(e.tensor.nbytes for e in ckpt.entries.values())


# Address space above start-up (every adapter imported, the CLI ready): a quarter of the model.
# It counts what is mapped, not what is touched: thread stacks (8 MiB each) and malloc arenas too,
# so where a thread cannot start the engine must still work in the one thread it has.
_LIMITED = textwrap.dedent("""
    import resource, sys
    import hubfmt
    from hubfmt import registry
    from hubfmt.cli import main
    for fw in registry.available():
        registry.adapter(fw)
    with open("/proc/self/statm") as f:
        start = int(f.read().split()[0]) * resource.getpagesize()
    limit = start + int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(sys.argv[2:]))
""")
TARGETS = {"hub": "x.safetensors", "torch": "x.pth", "tensorflow": "x.index", "keras": "x.weights.h5",
           "mindspore": "x.ckpt", "mxnet": "x.params", "hf": "x-hf"}


def _limited(headroom: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LIMITED, str(headroom), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_the_limit_would_catch_the_model_held_in_memory(llama_hf):
    d, total, largest = llama_hf
    r = subprocess.run([sys.executable, "-c", _LIMITED.replace("sys.exit(main(sys.argv[2:]))", textwrap.dedent("""
        ckpt = hubfmt.read(sys.argv[2])
        try:
            held = [ckpt.tensor(n) for n in ckpt]
        except MemoryError:
            print("MemoryError"); sys.exit(0)
        print("held", sum(a.nbytes for a in held))
    """)), str(total // 4), str(d)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "MemoryError", (r.stdout, r.stderr[-2000:])


@pytest.mark.parametrize("fw", sorted(TARGETS))
def test_sharded_bf16_hf_converts_under_an_address_space_limit(tmp_path, llama_hf, fw):
    d, total, largest = llama_hf
    available = set(hubfmt.registry.available()) | {"hub", "hf"}
    if fw not in available:
        pytest.skip(f"{fw} adapter not installed")
    native = tmp_path / TARGETS[fw]
    keep = ["--keep-dtype"] if fw == "hub" else []
    r = _limited(total // 4, "convert", d, native, "-q", "--from", "torch", "--to", fw, *keep)
    assert r.returncode == 0, r.stderr[-3000:]
    back = tmp_path / "back.safetensors"
    r = _limited(total // 4, "convert", native, back, "-q", "--from", "torch" if fw == "hf" else fw, "--keep-dtype")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = hubfmt.read(d), hubfmt.read(back)
    assert {b[n].tensor.dtype for n in b} == {"bfloat16"}
    names = sorted(a)
    for name in (names[0], names[len(names) // 2], "lm_head.weight"):
        other = name if name in b else next(n for n in b if b[n].info.original_name == a[name].info.original_name)
        assert np.array_equal(a.tensor(name), b.tensor(other)), name


# ---- work split over cores ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["crc32", "crc32c"])
def test_combined_checksums_equal_one_pass(algorithm):
    rng = np.random.default_rng(1)
    f = checksums.updater(algorithm)
    for _ in range(30):
        a, b = (rng.integers(0, 256, size=int(rng.integers(0, 5000)), dtype=np.uint8).tobytes() for _ in "ab")
        seed = int(rng.integers(0, 2**32))
        assert parallel.combine(algorithm, f(a, seed), f(b, 0), len(b)) == f(a + b, seed)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_fold_file_in_parts_equals_one_pass(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(parallel, "_MIN_PART", 1 << 16)
    data = np.random.default_rng(2).integers(0, 256, size=(1 << 20) + 12345, dtype=np.uint8).tobytes()
    p = tmp_path / "blob"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        for alg in ("crc32", "crc32c"):
            assert parallel.fold_file(fd, 7, len(data) - 11, alg, 5, parts=parts) == \
                checksums.compute(alg, data[7:-4], 5)
    finally:
        os.close(fd)


def test_behind_writer_folds_in_order(tmp_path):
    data = os.urandom(3 << 20)
    p = tmp_path / "out"
    with open(p, "w+b") as f, parallel.BehindWriter(f.fileno(), "crc32") as fold:
        for i in range(0, len(data), 100_000):
            f.write(data[i:i + 100_000])
            f.flush()
            fold.advance(f.tell())
        assert fold.value() == zlib.crc32(data)


def test_split_covers_every_part_once():
    seen: list[tuple[int, int]] = []
    parallel.split(lambda lo, hi: seen.append((lo, hi)), 1000, step=64, min_part=100)
    covered = sorted(seen)
    assert covered[0][0] == 0 and covered[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert all(lo % 64 == 0 for lo, _ in covered)


@pytest.mark.parametrize("shape,dtype", [((4096, 2304), np.uint16), ((2304, 4096), np.float32), ((64, 300_000), np.uint16)])
def test_permute_split_over_cores_is_exact(shape, dtype):
    x = np.random.default_rng(3).integers(0, 60000, size=shape).astype(dtype)
    assert np.array_equal(permute(x, (1, 0)), x.T)


# ---- the benchmark --------------------------------------------------------------------------

def test_llm_bench_quick_runs(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "llm_bench.py"), "--quick", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for row in ("| cp -r + sync", "| hf -> hub", "| hf -> tensorflow", "| tensorflow -> hf", "| hf -> keras",
                "| keras -> hub", "| tf (", "| safetensors load_file + save_file", "machine: "):
        assert row in r.stdout, row
    assert "FAIL" not in r.stdout


def test_split_works_in_a_forked_child():
    """The helper threads do not survive fork: a child starts its own instead of waiting forever."""
    x = np.random.default_rng(5).integers(0, 60000, size=(4096, 2304)).astype(np.uint16)
    assert np.array_equal(permute(x, (1, 0)), x.T)          # the parent's helpers are running
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.array_equal(permute(x, (1, 0)), x.T) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
