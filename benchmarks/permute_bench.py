"""Transposing copies: hubfmt.permute against numpy's own, on the layout changes TensorFlow needs.

Steady state (buffers reused as the `hubfmt` command arranges, hubfmt.malloc), GB/s of source
bytes. Each round times both routes of every case alternately (2 warm-up runs, then the median
of 5); `--rounds` rounds (default 5) give the median and the range printed, so a neighbour's
load on a shared machine shows as a wide range rather than as a wrong winner.

    .venv/bin/python benchmarks/permute_bench.py            # 32 MiB float32 kernels, bf16 LLM linears
    .venv/bin/python benchmarks/permute_bench.py --mib 8 --rounds 9
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hubfmt.io.malloc import reuse_freed_memory
from hubfmt.io.permute import permute


def cases(mib: int) -> list[tuple[str, tuple, tuple, type]]:
    n = mib * 2**20 // 4                                  # float32 elements
    c = int((n / 9) ** 0.5)                               # a 3x3 conv with C in, C out
    o = int(n ** 0.5) // 2                                # a dense layer with 4x more inputs
    return [("conv HWIO -> OIHW", (3, 3, c, c), (3, 2, 0, 1), np.float32),
            ("conv OIHW -> HWIO", (c, c, 3, 3), (2, 3, 1, 0), np.float32),
            ("dense IO -> OI", (n // o, o), (1, 0), np.float32),
            ("dense IO -> OI, 8 KiB rows", (n // 2048, 2048), (1, 0), np.float32),
            # Llama-7B linears in bfloat16 (2-byte elements, as uint16 bits): q_proj, up_proj, down_proj
            ("bf16 [4096, 4096] -> T", (4096, 4096), (1, 0), np.uint16),
            ("bf16 [11008, 4096] -> T", (11008, 4096), (1, 0), np.uint16),
            ("bf16 [4096, 11008] -> T", (4096, 11008), (1, 0), np.uint16)]


def median_rate(fn, nbytes: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=32, help="float32 tensor size (default 32 MiB)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over every case (default 5)")
    a = p.parse_args()
    reuse_freed_memory()
    arrays = []
    for name, shape, axes, dt in cases(a.mib):
        x = np.random.default_rng(0).integers(0, 60000, size=shape).astype(dt)
        assert np.array_equal(permute(x, axes), x.transpose(axes))
        arrays.append((name, x, axes))
    rates: dict[str, tuple[list, list]] = {name: ([], []) for name, _, _ in arrays}
    for _ in range(a.rounds):
        for name, x, axes in arrays:
            rates[name][0].append(median_rate(lambda x=x, axes=axes: np.ascontiguousarray(x.transpose(axes)), x.nbytes))
            rates[name][1].append(median_rate(lambda x=x, axes=axes: permute(x, axes), x.nbytes))
    print(f"| layout change | shape | numpy GB/s (median, range of {a.rounds}) | permute GB/s (median, range) | permute / numpy |")
    print("|---|---|---|---|---|")
    for name, x, _ in arrays:
        ref, ours = rates[name]
        print(f"| {name} | {list(x.shape)} | {statistics.median(ref):.2f} ({min(ref):.2f}-{max(ref):.2f}) "
              f"| {statistics.median(ours):.2f} ({min(ours):.2f}-{max(ours):.2f}) "
              f"| {statistics.median(ours) / statistics.median(ref):.2f} |")


if __name__ == "__main__":
    main()
