"""The one round-trip conformance suite every format plugs into (issue 9; fsspec/meshio style).

A format is declared in one line of FORMATS: its framework name, an output file name (the suffix
picks the format), and the dtypes it stores. tests/test_conformance.py then runs, for every
declared format whose adapter is installed, hypothesis-generated checkpoints (random names, ranks
0-5, empty dimensions, every declared dtype, NaN/Inf/-0.0/subnormals, every bfloat16 bit pattern,
tied tensors) through

    source -> hub -> source                       bit-exact, every format
    source -> hub -> other -> hub -> source       bit-exact, every pair, on the dtypes both hold

"source" is the native file hubfmt's own writer makes; the framework oracle tests check that the
real frameworks read those files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hubfmt
from hubfmt import Checkpoint, LazyTensor, TensorInfo, registry
from hubfmt.format import dtypes

ALL = frozenset(dtypes.DTYPES)
WITHOUT_FP8 = ALL - dtypes.FLOAT8        # float8: only the hub, torch and HF files hold it (NativeFormat.dtypes_not_held)


@dataclass(frozen=True)
class Format:
    framework: str              # "hub" or an adapter's FRAMEWORK
    output: str                 # file (or prefix/directory) name; its suffix selects the format
    dtypes: frozenset           # dtypes stored bit-exactly
    ties: str = "kept"          # "kept"; "copied" (each name its own copy); "dropped" (alias removed, reported)
    rank0: bool = True          # 0-d tensors keep shape () (MXNet NDArrays are at least 1-d)
    ordered: bool = True        # tensor order kept (a TF bundle is a table sorted by name)
    template: bool = False      # the writer needs a native template (ONNX: the model to fill)

    @property
    def label(self) -> str:
        return f"{self.framework}({self.output})"

    @property
    def installed(self) -> bool:
        return self.framework == "hub" or self.framework in registry.available()


# One line per format. A new adapter adds its line here. Keras files (.weights.h5, .keras) are not
# here: they hold layers of known kinds, not arbitrary named tensors, so generated state dicts do
# not fit them (the TensorFlow adapter's oracle tests round-trip real Keras models instead).
FORMATS = [
    Format("hub", "x.safetensors", ALL),
    Format("torch", "x.pth", ALL),
    Format("mxnet", "x.params", WITHOUT_FP8 - {"complex64"}, ties="copied", rank0=False),
    Format("tensorflow", "x.index", WITHOUT_FP8, ties="dropped", ordered=False),
    Format("mindspore", "x.ckpt", WITHOUT_FP8 - {"complex64"}, ties="dropped"),
    Format("mindspore", "x.safetensors", WITHOUT_FP8 - {"complex64"}, ties="dropped"),
    Format("oneflow", "x.oneflow", frozenset({"bool", "float16", "float32", "float64", "int8", "int32", "int64", "uint8"})),
    # ONNX writes into a model: the template is one holding the checkpoint's names, shapes, dtypes
    Format("onnx", "x.onnx", WITHOUT_FP8, ties="copied", template=True),
]


def installed() -> list[Format]:
    return [f for f in FORMATS if f.installed]


# ---- generated checkpoints ------------------------------------------------------------------

_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,7}(\.[a-z0-9_]{1,6}){0,3}", fullmatch=True)


def _array(dtype: str, rank0: bool):
    shapes = hnp.array_shapes(min_dims=0 if rank0 else 1, max_dims=5, min_side=0, max_side=3)
    if dtype == "bfloat16":        # any 16-bit pattern: NaNs with payloads, subnormals, -0.0
        return hnp.arrays(np.uint16, shapes)
    st_dt = dtypes.storage_dtype(dtype)
    if dtype in dtypes.FLOATING:
        # NaN (several payloads), +-Inf, -0.0, subnormals all drawn on purpose
        return hnp.arrays(st_dt, shapes, elements=st.floats(width=8 * st_dt.itemsize, allow_subnormal=True))
    return hnp.arrays(st_dt, shapes)


@st.composite
def checkpoints(draw, allowed: frozenset, rank0: bool = True):
    ckpt = Checkpoint()
    names = draw(st.lists(_NAME, min_size=1, max_size=6, unique=True))
    stored = []
    for name in names:
        nonempty = [n for n in stored if ckpt[n].tensor.nbytes]   # a tie of no bytes says nothing
        if nonempty and draw(st.integers(0, 5)) == 0:        # a tie to an earlier tensor
            first = draw(st.sampled_from(nonempty))
            ckpt.add(name, ckpt[first].tensor, TensorInfo(tied_to=first))
            continue
        dt = draw(st.sampled_from(sorted(allowed)))
        arr = draw(_array(dt, rank0))
        ckpt.add(name, LazyTensor.from_array(arr, dtype=dt))
        stored.append(name)
    return ckpt


# ---- the round trips --------------------------------------------------------------------------

HUB = FORMATS[0]


def write(ckpt: Checkpoint, fmt: Format, directory: str, keep_dtype: bool = True) -> str:
    """Write `ckpt` in `fmt`. A hub file as a format of its own keeps every dtype; as the middle of
    a round trip it follows the default policy (floats widened to float32) unless told otherwise."""
    path = os.path.join(directory, fmt.output)
    opts: dict = {"keep_dtype": keep_dtype} if fmt.framework == "hub" else {}
    if fmt.template:
        from onnx_template import bare_model
        opts["template"] = bare_model(ckpt, os.path.join(directory, "template-" + fmt.output))
    report = hubfmt.write(ckpt, path, framework=fmt.framework, **opts)
    if fmt.ties == "dropped":
        # Never silent: an alias the format cannot hold must be reported as dropped.
        aliases = {n for n, e in ckpt.entries.items() if e.info.tied_to}
        missing = aliases - set(report.names("dropped"))
        assert not missing, f"{fmt.label} writer dropped tie aliases without reporting them: {sorted(missing)}"
    return path


def read(path: str, fmt: Format) -> Checkpoint:
    return hubfmt.read(path, framework=fmt.framework)


def as_stored(ckpt: Checkpoint, fmt: Format) -> Checkpoint:
    """`ckpt` as `fmt` can hold it: without tie aliases when the format drops them."""
    if fmt.ties != "dropped":
        return ckpt
    out = Checkpoint()
    for name, e in ckpt.entries.items():
        if not e.info.tied_to:
            out.add(name, e.tensor, e.info)
    return out


def assert_bit_exact(got: Checkpoint, want: Checkpoint, ties: bool, where: str, ordered: bool = True) -> None:
    """Same names (in the same order if `ordered`), same dtype names, shapes and bytes; ties kept
    if `ties`."""
    names, wanted = (list(got), list(want)) if ordered else (sorted(got), sorted(want))
    assert names == wanted, f"{where}: names {names} != {wanted}"
    for name in want:
        g, w = got[name].tensor, want[name].tensor
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{where}: {name} is {g.dtype}{g.shape}, want {w.dtype}{w.shape}"
        assert got.tensor(name).tobytes() == want.tensor(name).tobytes(), f"{where}: {name} bytes differ"
        if ties:
            assert got[name].info.tied_to == want[name].info.tied_to, f"{where}: {name} tie {got[name].info.tied_to!r}"


def through_hub(ckpt: Checkpoint, fmt: Format, work: str) -> None:
    """source -> hub -> source, bit-exact. Float64 needs the hub's keep-dtype policy (the default
    stores float32, a narrowing the writer reports)."""
    keep = any(e.tensor.dtype == "float64" for e in ckpt.entries.values())
    src_dir, hub_dir, back_dir = (os.path.join(work, d) for d in ("src", "hub", "back"))
    for d in (src_dir, hub_dir, back_dir):
        os.makedirs(d)
    source = read(write(ckpt, fmt, src_dir), fmt)
    assert_bit_exact(source, as_stored(ckpt, fmt), fmt.ties == "kept", f"{fmt.label} writer/reader", fmt.ordered)
    hub = hubfmt.read(write(source, HUB, hub_dir, keep_dtype=keep))
    if fmt is HUB:
        # The hub's own round trip: the widened file narrows back to the original bytes.
        for name in source:
            original = hub[name].info.original_dtype
            narrowed = dtypes.convert(hub.tensor(name), hub[name].tensor.dtype, original)
            assert original == source[name].tensor.dtype and narrowed.tobytes() == source.tensor(name).tobytes(), name
        return
    back = read(write(hub, fmt, back_dir), fmt)
    assert_bit_exact(back, source, fmt.ties == "kept", f"{fmt.label} -> hub -> {fmt.label}", fmt.ordered)


def across(ckpt: Checkpoint, fmt: Format, other: Format, work: str) -> None:
    """source -> hub -> other -> hub -> source, bit-exact."""
    keep = any(e.tensor.dtype == "float64" for e in ckpt.entries.values())
    dirs = [os.path.join(work, str(i)) for i in range(5)]
    for d in dirs:
        os.makedirs(d)
    source = read(write(ckpt, fmt, dirs[0]), fmt)
    hub = hubfmt.read(write(source, HUB, dirs[1], keep_dtype=keep))
    mid = read(write(hub, other, dirs[2]), other)
    hub2 = hubfmt.read(write(mid, HUB, dirs[3], keep_dtype=keep))
    back = read(write(hub2, fmt, dirs[4]), fmt)
    assert_bit_exact(back, as_stored(source, other), fmt.ties == other.ties == "kept",
                     f"{fmt.label} -> hub -> {other.label} -> hub -> {fmt.label}", fmt.ordered and other.ordered)
