"""Zoo benchmark for `convert_many` (#19): N checkpoints and one sharded checkpoint, converted with
--jobs 1, --jobs 2 and on a local Ray cluster; wall time, speed-up over --jobs 1, and the overhead
Ray adds per task.

    .venv/bin/python benchmarks/zoo_bench.py                      # 50 x 40 MB + a 4 GiB sharded one
    .venv/bin/python benchmarks/zoo_bench.py --quick              # 20 x 8 MB + 512 MiB, for a look
    .venv/bin/python benchmarks/zoo_bench.py --count 50 --size 40MB --sharded 4GiB --shard-size 500MB

The zoo is float32 hub files cycled into .pth, .ckpt, .params, TF, .weights.h5 and OneFlow sources
(every one converted to a hub file), plus one sharded hub file converted to a hub file shard by
shard. Each configuration runs --repeat times (default 2), the best kept; every run writes a fresh output tree (the ledger would skip everything otherwise); the
sources stay in the page cache after the first run, outputs are fsynced as always. Ray overhead
per task: the mean time of a no-op task through RayExecutor with 2 in flight, and (wall on Ray -
wall with --jobs 2) / tasks.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from hubfmt.batch import convert_many, mirror_tree
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.pipeline import convert, write
from hubfmt.registry import parse_size

FORMATS = [("hub", ".safetensors"), ("torch", ".pth"), ("mindspore", ".ckpt"), ("mxnet", ".params"),
           ("tensorflow", ".index"), ("tensorflow", ".weights.h5"), ("oneflow", ".oneflow")]


def _checkpoint(nbytes: int, seed: int, tensor_bytes: int = 4 << 20) -> Checkpoint:
    rng = np.random.default_rng(seed)
    ckpt = Checkpoint()
    left, i = nbytes, 0
    while left > 0:
        rows = max(1, min(tensor_bytes, left) // 4096)     # [rows, 1024] linear weights
        n = rows * 1024
        ckpt.add(f"block{i}.weight", LazyTensor.from_array(rng.standard_normal((rows, 1024), dtype=np.float32)),
                 TensorInfo(kind="linear"))
        left -= n * 4
        i += 1
    return ckpt


def make_zoo(root: str, count: int, size: int, sharded: int, shard_size: int) -> None:
    zoo = os.path.join(root, "zoo")
    os.makedirs(zoo)
    for i in range(count):
        fw, ext = FORMATS[i % len(FORMATS)]
        dst = os.path.join(zoo, f"m{i:03d}{ext}")
        if fw == "hub":
            write(_checkpoint(size, i), dst)
        else:
            hub = os.path.join(root, "staging.safetensors")
            write(_checkpoint(size, i), hub)
            convert(hub, dst, dst_framework=fw, show_progress=False)
            os.unlink(hub)
    if sharded:
        os.makedirs(os.path.join(zoo, "llm"))
        write(_checkpoint(sharded, 10_000, tensor_bytes=64 << 20), os.path.join(zoo, "llm", "big.safetensors"),
              max_shard_size=shard_size)


REPEAT = 2


def _run(label: str, src: str, out: str, **kw) -> tuple[float, int, float]:
    """The best wall time of REPEAT runs, each into a fresh output tree."""
    best = float("inf")
    for _ in range(REPEAT):
        shutil.rmtree(out, ignore_errors=True)
        # The previous run's deletions and dirty pages written back first: without it the later
        # configurations run on a quieter disk and look faster (measured: Ray first lost its lead).
        os.sync()
        time.sleep(1)
        items = mirror_tree(src, out, "hub")
        t0 = time.monotonic()
        batch = convert_many(items, show_progress=False, **kw)
        best = min(best, time.monotonic() - t0)
        if batch.failed:
            sys.exit(f"{label}: {batch.to_text()}")
    tasks = sum(r.tasks for r in batch.items)
    return best, tasks, batch.bytes_out


def _warm(_):
    import hubfmt.batch.worker  # noqa: F401 - what a first task imports
    return os.getpid()


def _noop(payload):
    return payload


def ray_noop_overhead(executor, n: int = 200) -> float:
    import concurrent.futures as cf

    t0 = time.monotonic()
    inflight: set = set()
    for i in range(n):
        if len(inflight) >= executor.capacity:
            done, inflight = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
        inflight.add(executor.submit(_noop, {"i": i}))
    cf.wait(inflight)
    return (time.monotonic() - t0) / n * executor.capacity


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--size", default="40MB", help="each zoo checkpoint's size")
    p.add_argument("--sharded", default="4GiB", help="the sharded checkpoint's size (0: none)")
    p.add_argument("--shard-size", default="500MB")
    p.add_argument("--quick", action="store_true", help="20 x 8 MB and a 512 MiB sharded checkpoint")
    p.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best is kept")
    a = p.parse_args(argv)
    global REPEAT
    REPEAT = a.repeat
    if a.quick:
        a.count, a.size, a.sharded, a.shard_size = 20, "8MB", "512MiB", "128MiB"
    size, sharded, shard_size = parse_size(a.size), parse_size(a.sharded) if a.sharded != "0" else 0, \
        parse_size(a.shard_size)
    root = a.dir or tempfile.mkdtemp(prefix="zoo-bench-")
    try:
        t0 = time.monotonic()
        make_zoo(root, a.count, size, sharded, shard_size)
        print(f"zoo: {a.count} x {size / 1e6:.0f} MB + sharded {sharded / 2**20:,.0f} MiB in "
              f"{-(-sharded // shard_size) if sharded else 0} shards, made in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
        src = os.path.join(root, "zoo")
        out = os.path.join(root, "out")
        rows = []
        _run("warm-up", src, out, jobs=2)      # sources into the page cache
        for jobs in (1, 2):
            wall, tasks, nbytes = _run(f"jobs {jobs}", src, out, jobs=jobs)
            rows.append((f"--jobs {jobs} (its own pool, as the CLI runs)", wall, tasks, nbytes))
        # The same with workers already started and hubfmt imported, as Ray's are after the no-op tasks.
        import concurrent.futures as cf
        import multiprocessing

        with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
            list(pool.map(_warm, range(4)))
            wall, tasks, nbytes = _run("warm pool", src, out, executor=pool, jobs=2)
        rows.append(("--jobs 2, workers already started", wall, tasks, nbytes))
        ray_note = ""
        if not a.no_ray:
            from hubfmt.batch.ray_executor import RayExecutor

            t0 = time.monotonic()
            ex = RayExecutor("local", num_cpus=2)
            start = time.monotonic() - t0
            try:
                noop = ray_noop_overhead(ex)
                wall, tasks, nbytes = _run("ray", src, out, executor=ex)
            finally:
                ex.shutdown()
            rows.append(("Ray, local cluster of 2 CPUs", wall, tasks, nbytes))
            extra = (wall - rows[2][1]) / tasks
            ray_note = (f"Ray: cluster start {start:.1f} s (not in the wall time); a no-op task costs "
                        f"{noop * 1000:.1f} ms of a worker slot; (wall on Ray - wall on the started pool of 2) / tasks = "
                        f"{extra * 1000:+.0f} ms per task")
        base = rows[0][1]
        print("| run | wall s | tasks | output GiB | GiB/s | speed-up vs --jobs 1 |")
        print("|---|---|---|---|---|---|")
        for label, wall, tasks, nbytes in rows:
            print(f"| {label} | {wall:.2f} | {tasks} | {nbytes / 2**30:.2f} | {nbytes / 2**30 / wall:.2f} | "
                  f"{base / wall:.2f} |")
        if ray_note:
            print("\n" + ray_note)
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
