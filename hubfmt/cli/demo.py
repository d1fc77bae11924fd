"""The built-in example (`python -m hubfmt.demo`, or `scripts/dev demo`).

Builds a small CNN checkpoint (conv -> batch norm -> linear, float16 weights, an epoch and class
names), saves it as a PyTorch file with hubfmt's framework-free writer, converts it to a hub file,
from there into every other native format this installation writes, back again, and diffs the
result against the original. No framework needs to be installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

from hubfmt import registry
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.cli.diff import compare
from hubfmt.pipeline import convert, read, write
from hubfmt.cli.inspect import to_text


def example_checkpoint(seed: int = 0, half: bool = False) -> Checkpoint:
    """A conv -> batch norm -> linear checkpoint in canonical form, built from numpy.

    >>> ckpt = example_checkpoint(half=True)
    >>> ckpt["features.0.weight"].tensor.shape
    (8, 3, 3, 3)
    """
    rng = np.random.default_rng(seed)
    ft = np.float16 if half else np.float32
    ckpt = Checkpoint()
    ckpt.source.framework = "test"

    def add(name, arr, kind):
        ckpt.add(name, LazyTensor.from_array(np.asarray(arr).astype(ft) if np.asarray(arr).dtype.kind == "f" else np.asarray(arr)),
                 TensorInfo(kind=kind))

    add("features.0.weight", rng.standard_normal((8, 3, 3, 3)), "conv2d")
    add("features.0.bias", rng.standard_normal(8), "conv2d")
    for role, arr in (("weight", rng.random(8) + 0.5), ("bias", rng.standard_normal(8)),
                      ("running_mean", rng.standard_normal(8)), ("running_var", rng.random(8) + 0.5)):
        add(f"features.1.{role}", arr, "batch_norm")
    add("features.1.num_batches_tracked", np.array(7, dtype=np.int64), "batch_norm")
    ckpt.layers["features.1"] = LayerInfo("batch_norm", {"eps": 1e-5, "momentum": 0.1})
    add("classifier.weight", rng.standard_normal((4, 8)), "linear")
    add("classifier.bias", rng.standard_normal(4), "linear")
    ckpt.extra = {"epoch": 3, "names": ["cat", "dog", "emu", "yak"]}
    return ckpt


# Output names per framework for the tour; a framework missing here is skipped with a note.
_TOUR = (
    ("mindspore", "model.ckpt"),
    ("mxnet", "model.params"),
    ("tensorflow", "model.index"),
    ("keras", "model.weights.h5"),
    ("oneflow", "model.oneflow"),
    ("flax", "model.msgpack"),
)


def _step(title: str) -> None:
    print(f"\n== {title}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hubfmt.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo", help="working directory (replaced on each run)")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    available = registry.available()
    if "torch" not in available:
        print("the torch adapter is not installed; nothing to demonstrate", file=sys.stderr)
        return 2
    src = os.path.join(out, "model.pth")
    write(example_checkpoint(half=True), src, framework="torch", restore_dtype=True)
    _step(f"a PyTorch checkpoint written without torch: {src}")
    print(to_text(read(src)))

    hub = os.path.join(out, "model.safetensors")
    _step("PyTorch -> hub")
    print(convert(src, hub).to_text())

    ok = True
    for fw, name in _TOUR:
        if fw not in available:
            print(f"\n(skipping {fw}: adapter not installed)")
            continue
        native = os.path.join(out, name)
        back = os.path.join(out, f"back-from-{name}.pth")
        _step(f"hub -> {fw} ({name}) -> PyTorch")
        there = convert(hub, native, dst_framework=fw)
        print(there.to_text())
        home = convert(native, back, src_framework=fw, dst_framework="torch")
        print(home.to_text())
        # What the format in the middle cannot hold (MXNet keeps no BatchNorm step count) its
        # writer dropped and said so; that is not a difference. Anything else is a failure.
        _, fmt = registry.detect_input(native, fw)
        result = compare(read(src), read(back),
                         b_cannot_hold={r: f"{fmt.name} has no place for {r}" for r in fmt.cannot_hold})
        print(result.to_text())
        declared = set(there.names("dropped")) | set(home.names("dropped"))
        undeclared = [n for n in result.not_held if n not in declared]
        ok &= not (result.differs or undeclared)
    for fw in available:
        if registry.needs_template(fw):
            print(f"\n(skipping {fw}: its writer needs a template, an existing model to put the weights into)")
    print("\nevery round trip bit-exact" if ok else "\nSOME ROUND TRIPS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
