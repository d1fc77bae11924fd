"""Transposing copies: hubfmt.permute against numpy's own, on the layout changes TensorFlow needs.

Steady state (buffers reused as the `hubfmt` command arranges, hubfmt.malloc), GB/s of source
bytes, best of 5 after 2 warm-up runs:

    .venv/bin/python benchmarks/permute_bench.py            # 32 MiB kernels
    .venv/bin/python benchmarks/permute_bench.py --mib 8
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hubfmt.io.malloc import reuse_freed_memory
from hubfmt.io.permute import permute


def cases(mib: int) -> list[tuple[str, tuple, tuple]]:
    n = mib * 2**20 // 4                                  # float32 elements
    c = int((n / 9) ** 0.5)                               # a 3x3 conv with C in, C out
    o = int(n ** 0.5) // 2                                # a dense layer with 4x more inputs
    return [("conv HWIO -> OIHW", (3, 3, c, c), (3, 2, 0, 1)),
            ("conv OIHW -> HWIO", (c, c, 3, 3), (2, 3, 1, 0)),
            ("dense IO -> OI", (n // o, o), (1, 0)),
            ("dense IO -> OI, 8 KiB rows", (n // 2048, 2048), (1, 0))]


def best_rate(fn, nbytes: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return nbytes / min(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=32, help="tensor size (default 32 MiB)")
    a = p.parse_args()
    reuse_freed_memory()
    print(f"| layout change ({a.mib} MiB float32) | shape | numpy GB/s | permute GB/s |")
    print("|---|---|---|---|")
    for name, shape, axes in cases(a.mib):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        assert np.array_equal(permute(x, axes), x.transpose(axes))
        ref = best_rate(lambda x=x, axes=axes: np.ascontiguousarray(x.transpose(axes)), x.nbytes)
        ours = best_rate(lambda x=x, axes=axes: permute(x, axes), x.nbytes)
        print(f"| {name} | {list(shape)} | {ref:.2f} | {ours:.2f} |")


if __name__ == "__main__":
    main()
