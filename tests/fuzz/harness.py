"""Byte-mutation fuzzing of hubfmt's framework-free readers (issue 9).

A sample checkpoint is written in each format by hubfmt itself (or by the real framework for
formats hubfmt only reads); hypothesis draws a few mutations (bit flips, interesting integers over
length and offset fields, truncation, insertion, deletion, copied chunks) of one of its files; the
mutated checkpoint is read with `hubfmt.read` and every tensor is loaded. The contract: each input
either reads fully or raises hubfmt.HubfmtError. Anything else — another exception, a MemoryError
under the caller's RLIMIT_AS, more than `per_input_seconds` — is a finding.

    stats = run("hub", max_examples=200)        # or seconds=60
    assert not stats.unexpected
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from typing import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import hubfmt
from hubfmt import registry
from hubfmt.io import hubfile
from hubfmt.cli.demo import example_checkpoint

INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               2**40, 2**62, 2**63 - 1, 2**64 - 1]


class _BudgetSpent(Exception):
    """Ends a time-budgeted hypothesis run."""


class Hang(BaseException):
    """Raised by the alarm: a BaseException so no reader's `except Exception` can swallow it."""


# ---- samples --------------------------------------------------------------------------------

def _hub(d: str) -> str:
    p = os.path.join(d, "m.safetensors")
    ckpt = example_checkpoint(half=True)
    ckpt.add("head.weight", ckpt["classifier.weight"].tensor,
             hubfmt.TensorInfo(kind="linear", tied_to="classifier.weight"))
    hubfile.write(ckpt, p, keep_dtype=True)
    return p


def _hub_sharded(d: str) -> str:
    p = os.path.join(d, "m.safetensors")
    hubfile.write(example_checkpoint(), p, max_shard_size=300)
    return p + hubfile.INDEX_SUFFIX


def _native(fw: str, ext: str) -> Callable[[str], str]:
    def build(d: str) -> str:
        p = os.path.join(d, "model" + ext)      # the suffix selects the adapter's format
        hubfmt.write(example_checkpoint(), p, framework=fw)
        return p
    return build


def readers() -> dict[str, tuple[str, Callable[[str], str]]]:
    """reader name -> (framework for hubfmt.read, sample builder). Grows as adapters land."""
    out = {"hub": ("hub", _hub), "hub-sharded": ("hub", _hub_sharded)}
    for fw in registry.available():
        for fmt in registry.adapter(fw).FORMATS:
            if fmt.writes and fmt.extensions:
                out[f"{fw}:{fmt.name}"] = (fw, _native(fw, fmt.extensions[0]))
    for name, (fw, build) in EXTRA_SAMPLES.items():
        if fw in registry.available():
            out[name] = (fw, build)
    return out


def _torch_legacy(d: str) -> str:
    import torch
    p = os.path.join(d, "legacy.pt")
    ckpt = example_checkpoint()
    torch.save({n: torch.from_numpy(ckpt.tensor(n)) for n in ckpt}, p, _use_new_zipfile_serialization=False)
    return p


def _keras_model():
    import keras
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                             keras.layers.Flatten(), keras.layers.Dense(5)])


def _keras_archive(d: str) -> str:
    p = os.path.join(d, "model.keras")
    _keras_model().save(p)
    return p


def _keras_legacy_h5(d: str) -> str:
    p = os.path.join(d, "model.h5")
    _keras_model().save(p)         # Keras 3 still writes the legacy HDF5 model format
    return p


def _oneflow_legacy(d: str) -> str:
    # Built by hand from the layout that tests/test_oneflow_oracle.py shows flow.load reads
    # (OneFlow itself only lives in the side environment).
    from hubfmt.adapters.oneflow import meta
    p = os.path.join(d, "snap")
    os.mkdir(p)
    open(os.path.join(p, "snapshot_done"), "wb").close()
    ckpt = example_checkpoint()
    for name in ckpt:
        arr = ckpt.tensor(name)
        os.mkdir(os.path.join(p, name))
        with open(os.path.join(p, name, "out"), "wb") as f:
            f.write(arr.tobytes())
        with open(os.path.join(p, name, "meta"), "wb") as f:
            f.write(meta.render(arr.shape, ckpt[name].tensor.dtype))
    return p


def _onnx_model(d: str) -> str:
    # hubfmt writes ONNX only into a template model: onnx.helper makes one holding the sample
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from onnx_template import model_with
    ckpt = example_checkpoint()
    return model_with({n: ckpt.tensor(n) for n in ckpt}, os.path.join(d, "model.onnx"))


def _onnx_external(d: str) -> str:
    tpl = _onnx_model(tempfile.mkdtemp(dir=d))
    p = os.path.join(d, "model.onnx")
    hubfmt.write(example_checkpoint(), p, framework="onnx", template=tpl, external_data=True)
    shutil.rmtree(os.path.dirname(tpl))
    return p


# Formats hubfmt reads but does not write (or writes only with a template): the real framework
# makes the sample (tests only), or the test by hand where the framework is not at hand.
# Overrides the generic sample of the same name.
def _mindspore_without_crc(d: str) -> str:
    """A .ckpt as hubfmt writes it minus its crc_num trailer (as older MindSpore saves are): with
    the trailer every mutation of a record is caught by the CRC, so this keeps the parser itself
    under the fuzzer."""
    p = os.path.join(d, "model.ckpt")
    hubfmt.write(example_checkpoint(), p, framework="mindspore")
    with open(p, "rb+") as f:
        f.truncate(os.path.getsize(p) - 17)
    return p


def _torch_deflated(d: str) -> str:
    """A torch zip whose members are deflated (torch reads these too): storages go through the
    inflate-once path instead of region reads."""
    import zipfile
    src = os.path.join(d, "stored.pt")
    hubfmt.write(example_checkpoint(), src, framework="torch")
    p = os.path.join(d, "deflated.pt")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    os.unlink(src)
    return p


EXTRA_SAMPLES: dict[str, tuple[str, Callable[[str], str]]] = {
    "mindspore:ckpt-without-crc": ("mindspore", _mindspore_without_crc),
    "torch:zip-deflated": ("torch", _torch_deflated),
    "torch:legacy": ("torch", _torch_legacy),
    "oneflow:legacy": ("oneflow", _oneflow_legacy),
    "keras:keras-archive": ("keras", _keras_archive),
    "keras:keras-h5": ("keras", _keras_legacy_h5),
    "onnx:onnx-model": ("onnx", _onnx_model),
    "onnx:external-data": ("onnx", _onnx_external),
}


def sample_files(path: str) -> list[str]:
    """The files making up a checkpoint at `path` (a file, a directory, a prefix or an index)."""
    if os.path.isdir(path):
        return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
    d, base = os.path.split(path)
    stem = base[: -len(".index")] if base.endswith(".index") else base
    stem = stem[: -len(hubfile.INDEX_SUFFIX)] if stem.endswith(hubfile.INDEX_SUFFIX) else stem
    stem = stem[: -len(".safetensors")] if stem.endswith(".safetensors") else stem
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f == base or f.startswith(stem))


# ---- mutations ------------------------------------------------------------------------------

@st.composite
def mutations(draw, n_files: int):
    which = draw(st.integers(0, n_files - 1))
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "int", "int", "truncate", "insert", "delete", "copy"]))
        # Positions: a fraction of the way through the file, often near either end, where
        # headers, lengths and zip directories live.
        where = draw(st.one_of(st.integers(0, 600), st.integers(-600, -1), st.floats(0, 1)))
        if kind == "flip":
            ops.append((kind, where, draw(st.integers(0, 7))))
        elif kind == "byte":
            ops.append((kind, where, draw(st.integers(0, 255))))
        elif kind == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)))
            ops.append((kind, where, width, value, draw(st.sampled_from(["little", "big"]))))
        elif kind == "truncate":
            ops.append((kind, where))
        elif kind == "insert":
            ops.append((kind, where, draw(st.binary(min_size=1, max_size=16))))
        elif kind == "delete":
            ops.append((kind, where, draw(st.integers(1, 64))))
        else:
            ops.append((kind, where, draw(st.one_of(st.integers(0, 600), st.floats(0, 1))), draw(st.integers(1, 64))))
    return which, ops


def _pos(where, n: int) -> int:
    if isinstance(where, float):
        return min(int(where * n), max(n - 1, 0))
    return min(max(where if where >= 0 else n + where, 0), max(n - 1, 0))


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind, where = op[0], op[1]
        p = _pos(where, len(b))
        if kind == "flip" and b:
            b[p] ^= 1 << op[2]
        elif kind == "byte" and b:
            b[p] = op[2]
        elif kind == "int":
            width, value, order = op[2], op[3], op[4]
            raw = (value % (1 << (8 * width))).to_bytes(width, order)
            b[p:p + width] = raw
        elif kind == "truncate":
            del b[p:]
        elif kind == "insert":
            b[p:p] = op[2]
        elif kind == "delete":
            del b[p:p + op[2]]
        elif kind == "copy" and b:
            src = _pos(op[2], len(b))
            b[p:p + op[3]] = b[src:src + op[3]]
    return bytes(b)


# ---- running --------------------------------------------------------------------------------

@dataclasses.dataclass
class Stats:
    reader: str
    executions: int = 0
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    unexpected: list = dataclasses.field(default_factory=list)


def check_one(path: str, framework: str, per_input_seconds: float) -> str:
    """'read', or 'error' (a HubfmtError); raises anything else (the finding)."""
    def alarm(*_):
        raise Hang(f"more than {per_input_seconds} s on one input")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, per_input_seconds)
    try:
        try:
            registry.detect_input(path)
        except hubfmt.HubfmtError:
            pass
        ckpt = hubfmt.read(path, framework=framework)
        for name in ckpt:
            ckpt.tensor(name)
        return "read"
    except hubfmt.HubfmtError:
        return "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def prepare(reader: str, sample_dir: str) -> str:
    """Write `reader`'s sample checkpoint into the empty directory `sample_dir`; its path.
    Separate from run() so a caller can make every sample (some with a framework, which needs
    address space) before it lowers RLIMIT_AS for the fuzzing itself."""
    return readers()[reader][1](sample_dir)


def run(reader: str, *, max_examples: int | None = None, seconds: float | None = None,
        per_input_seconds: float = 10.0, keep: int = 5, sample: str | None = None) -> Stats:
    """Fuzz one reader for `max_examples` inputs or `seconds` of wall time, mutating `sample`
    (made by prepare(); by default made here)."""
    framework = readers()[reader][0]
    stats = Stats(reader)
    work = tempfile.mkdtemp(prefix="hubfmt-fuzz-")
    try:
        sample_dir = os.path.join(work, "sample")
        if sample is None:
            os.makedirs(sample_dir)
            sample = prepare(reader, sample_dir)
        else:
            shutil.copytree(os.path.dirname(sample), sample_dir)
            sample = os.path.join(sample_dir, os.path.basename(sample))
        files = sample_files(sample)
        originals = {f: open(f, "rb").read() for f in files}
        assert check_one(sample, framework, 60) == "read", f"the unmutated {reader} sample does not read"
        case_dir = os.path.join(work, "case")

        @settings(max_examples=max_examples or 10**9, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(mutations(len(files)))
        def one(m):
            if seconds is not None and time.monotonic() > stop:
                raise _BudgetSpent
            which, ops = m
            shutil.rmtree(case_dir, ignore_errors=True)
            shutil.copytree(sample_dir, case_dir)
            target = files[which].replace(sample_dir, case_dir, 1)
            with open(target, "wb") as f:
                f.write(mutate(originals[files[which]], ops))
            stats.executions += 1
            try:
                stats.outcomes[check_one(sample.replace(sample_dir, case_dir, 1), framework, per_input_seconds)] += 1
            except BaseException as e:      # noqa: BLE001 - every non-hubfmt exception is the finding
                if isinstance(e, KeyboardInterrupt):
                    raise
                stats.outcomes["unexpected"] += 1
                if len(stats.unexpected) < keep:
                    tb = traceback.extract_tb(e.__traceback__)[-3:]
                    where = " <- ".join(f"{os.path.basename(t.filename)}:{t.lineno}" for t in reversed(tb))
                    stats.unexpected.append(f"{type(e).__name__}: {str(e)[:200]} at {where}; "
                                            f"file {os.path.basename(target)} ops {ops}")

        stop = time.monotonic() + (seconds or 0)
        try:
            one()
        except _BudgetSpent:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats
