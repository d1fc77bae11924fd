"""Conversion benchmark (issue 8): wall time and peak memory of every file-to-file conversion.

Builds a float32 checkpoint (default 2 GiB, 177 tensors, the largest 32 MiB) as a hub file and, with
hubfmt's own writers, in every native format this installation writes. Then runs, each in its own
child process: `cp` of the source (the yardstick), every conversion pair among those formats with
`python -m hubfmt convert`, and the hand-written framework route (torch.load -> numpy -> framework
save) for the frameworks installed. Prints one table row per run: wall seconds, ratio to `cp`, and
peak resident memory from the kernel (os.wait4 rusage of that child, so children never mix).

    .venv/bin/python benchmarks/convert_bench.py                  # 2 GiB, a few minutes
    .venv/bin/python benchmarks/convert_bench.py --size 256MB     # quick look
    .venv/bin/python benchmarks/convert_bench.py --pairs hub:torch,torch:mindspore

Targets: wall <= 2x cp, peak RSS <= 300 MB + the largest tensor. hubfmt fsyncs what it publishes
(atomic output), so the table also gives the ratio to `cp` followed by `sync` of the copy, and
judges each pair against both.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo, registry
from hubfmt.pipeline import convert
from hubfmt.io import hubfile
from hubfmt.cli.parser import _size

MiB = 2**20


# ---- the checkpoint -------------------------------------------------------------------------

def plan_shapes(total: int) -> list[tuple[str, str, str, tuple]]:
    """(name, kind, dtype, shape) for 177 tensors summing to about `total` bytes, shaped like a
    network every format can hold: 60 conv/linear layers (weight + bias) share 15/16 of the bytes
    (weights of 32 MiB at 2 GiB), 14 batch norms (weight, bias, running_mean, running_var) and
    one num_batches_tracked the rest."""
    big_n, norm_n = 60, 14
    big = max(total * 15 // 16 // big_n // 4, 1)           # float32 elements per big weight
    out = []
    for i in range(big_n):
        if i % 3 == 0:                                     # conv2d [out, in, 3, 3]
            o = max(int((big / 9) ** 0.5), 1)
            out.append((f"blocks.{i}.conv.weight", "conv2d", "float32", (o, max(big // (9 * o), 1), 3, 3)))
            out.append((f"blocks.{i}.conv.bias", "conv2d", "float32", (o,)))
        else:                                              # linear [out, in]
            o = max(int(big ** 0.5) // 2, 1)
            out.append((f"blocks.{i}.fc.weight", "linear", "float32", (o, max(big // o, 1))))
            out.append((f"blocks.{i}.fc.bias", "linear", "float32", (o,)))
    used = sum(int(np.prod(s)) for _, _, _, s in out) * 4
    per_norm = max((total - used) // norm_n // 16, 1)      # 4 float32 vectors per norm
    for j in range(norm_n):
        c = max(int(per_norm * (0.5 + j / norm_n)), 1)
        for role in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"norms.{j}.{role}", "batch_norm", "float32", (c,)))
    out.append((f"norms.{norm_n - 1}.num_batches_tracked", "batch_norm", "int64", ()))
    return out


def synthetic_checkpoint(total: int) -> Checkpoint:
    """A lazy checkpoint: each tensor is generated when the writer asks for it."""
    ckpt = Checkpoint()
    ckpt.source.framework = "benchmark"
    for i, (name, kind, dtype, shape) in enumerate(plan_shapes(total)):
        def gen(i=i, shape=shape, dtype=dtype):
            if dtype == "int64":
                return np.full(shape, 1000, dtype=np.int64)
            return np.random.default_rng(i).standard_normal(shape, dtype=np.float32)
        ckpt.add(name, LazyTensor(shape, dtype, gen), TensorInfo(kind=kind))
    for j in range(14):
        ckpt.layers[f"norms.{j}"] = LayerInfo("batch_norm", {"eps": 1e-5, "momentum": 0.1})
    return ckpt


def native_targets() -> dict[str, str]:
    """framework -> an output file name in its first writable format (file or prefix layout)."""
    out = {}
    for fw in registry.available():
        try:
            mod = registry.adapter(fw)
        except ImportError:
            continue
        for fmt in mod.FORMATS:
            if fmt.writes and fmt.extensions:
                out[fw] = "model" + fmt.extensions[0]
                break
    return out


def build_sources(ckpt: Checkpoint, hub: str, work: str, *, first: str | None = None, only: set[str] | None = None,
                  skip_failures: bool = False) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Write `ckpt` (already at `hub`) in every native format this installation writes, with
    hubfmt's own writers: (framework -> file, including "hub"; framework -> the convert arguments a
    destination needs). `first` is built first and kept even outside `only`; with
    `skip_failures` a format that cannot hold these tensors is reported and left out."""
    files = {"hub": hub}
    templates: dict[str, list[str]] = {}
    for fw, name in sorted(native_targets().items(), key=lambda kv: kv[0] != first):
        if only and fw not in only and fw != first:
            continue
        files[fw] = os.path.join(work, name)
        opts = {}
        if fw == "onnx":
            # ONNX is written into an existing model: a template holding the same initializers
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
            from onnx_template import bare_model
            tpl = bare_model(ckpt, os.path.join(work, "template.onnx"))
            templates[fw] = ["--template", tpl]
            opts = {"write_options": {"template": tpl}}
        try:
            convert(hub, files[fw], dst_framework=fw, show_progress=False, **opts)
        except Exception as e:
            if not skip_failures:
                raise
            print(f"  ! cannot build the {fw} file: {type(e).__name__}: {e}", file=sys.stderr)
            del files[fw]
    return files, templates


def checkpoint_files(path: str) -> list[str]:
    """The files of a checkpoint: a file, a directory's files, or a TF bundle (`x.index` or the
    prefix `x`) with its data shards."""
    if os.path.isdir(path):
        return [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    d, base = os.path.split(path)
    prefix = base[:-len(".index")] if base.endswith(".index") else base
    if base.endswith(".index") or not os.path.exists(path):
        return [os.path.join(d, f) for f in os.listdir(d) if f == prefix + ".index" or f.startswith(prefix + ".data-")]
    return [path]


# ---- measuring ------------------------------------------------------------------------------

def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit status) of `cmd` run as a child process.

    Through /usr/bin/time when present: a child forked straight from this (large) Python process
    inherits its peak RSS into ru_maxrss at exec, which would inflate small figures such as cp's."""
    with tempfile.NamedTemporaryFile("r") as stats:
        timed = ["/usr/bin/time", "-q", "-f", "%e %M", "-o", stats.name, *cmd] if os.path.exists("/usr/bin/time") else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        rss_kb = usage.ru_maxrss
        if timed is not cmd:
            fields = stats.read().split()
            if len(fields) >= 2:
                rss_kb = int(fields[-1])
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if rc != 0:
        print(f"  ! {' '.join(cmd[-6:])} failed ({rc}): {err.strip().splitlines()[-3:]}", file=sys.stderr)
    return wall, rss_kb / 1024, rc


def warm(path: str) -> None:
    """Read a checkpoint (file, directory, or TF prefix with its companions) into the page cache,
    as `cp`'s source is: hubfmt's writers drop what they wrote from the cache (hubfmt.writeback),
    so a source made by an earlier step would otherwise be read from disk by the first pair."""
    for f in checkpoint_files(path):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def _rm(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        d, base = os.path.split(path)
        for f in os.listdir(d):
            # the file, a TF prefix's shards, an ONNX model's external data (`x.onnx.data`)
            if (f == base or f == base + ".data"
                    or (f.startswith(base.rsplit(".", 1)[0] + ".") and base.endswith(".index"))):
                os.unlink(os.path.join(d, f))


# The hand-written routes: what people write without hubfmt. Each reads the torch file fully.
_REFERENCE = {
    "mindspore": """
import sys, torch, mindspore as ms
sd = torch.load(sys.argv[1], map_location="cpu")
ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.numpy())} for k, v in sd.items()], sys.argv[2])
""",
    "tensorflow": """
import sys, torch, tensorflow as tf
sd = torch.load(sys.argv[1], map_location="cpu")
vs = {k.replace(".", "/"): tf.Variable(v.numpy()) for k, v in sd.items()}
tf.train.Checkpoint(**{k.replace("/", "_"): v for k, v in vs.items()}).write(sys.argv[2])
""",
    "mxnet": """
import sys, numpy as np
for a, v in (("bool", bool), ("int", int), ("float", float), ("object", object), ("str", str), ("complex", complex)):
    if not hasattr(np, a): setattr(np, a, v)
import torch, mxnet as mx
sd = torch.load(sys.argv[1], map_location="cpu")
mx.nd.save(sys.argv[2], {k: mx.nd.array(v.numpy()) for k, v in sd.items()})
""",
    "hub": """
import sys, torch
from safetensors.torch import save_file
save_file(torch.load(sys.argv[1], map_location="cpu"), sys.argv[2])
""",
}
_REFERENCE_OUT = {"mindspore": "ref.ckpt", "tensorflow": "ref-tf", "mxnet": "ref.params", "hub": "ref.safetensors"}


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=_size, default=2 * 2**30, help="checkpoint size (default 2GiB; e.g. 256MB)")
    p.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    p.add_argument("--pairs", help="only these src:dst pairs, comma-separated (framework names or hub)")
    p.add_argument("--no-reference", action="store_true", help="skip the hand-written framework routes")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per pair, best wall time reported (default 3, as for cp; the slow "
                        "hand-written routes run once)")
    a = p.parse_args(argv)

    work = a.dir or tempfile.mkdtemp(prefix="hubfmt-bench-")
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    py = sys.executable
    try:
        ckpt = synthetic_checkpoint(a.size)
        largest = max(e.tensor.nbytes for e in ckpt.entries.values())
        hub = os.path.join(work, "model.safetensors")
        print(f"building {ckpt.total_bytes() / MiB:,.0f} MiB checkpoint: {len(ckpt)} float32 tensors, "
              f"largest {largest / MiB:.1f} MiB, in {work}", flush=True)
        hubfile.write(ckpt, hub)
        files, templates = build_sources(ckpt, hub, work)

        wanted = None
        if a.pairs:
            wanted = {tuple(x.split(":")) for x in a.pairs.split(",")}
        rows = []
        warm(files["hub"])
        cp_dst = os.path.join(work, "copy.safetensors")
        # The yardstick is the best of three: one cp run can be slowed by another's writeback.
        runs = []
        for _ in range(3):
            runs.append(measure(["cp", files["hub"], cp_dst]))
            os.unlink(cp_dst)
        cp_wall, cp_rss, _ = min(runs)
        rows.append(("cp (hub file), best of 3", cp_wall, cp_rss, 0))
        # hubfmt fsyncs what it publishes (atomic output); this is the durable copy to compare with.
        runs = []
        for _ in range(3):
            runs.append(measure(["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", files["hub"], cp_dst]))
            os.unlink(cp_dst)
        sync_wall, sync_rss, rc = min(runs)
        rows.append(("cp + sync (durable copy), best of 3", sync_wall, sync_rss, rc))
        for src_fw, src in files.items():
            for dst_fw in files:
                # Same-format pairs only for the hub: hub -> hub is the core's own copy path.
                if (src_fw == dst_fw and src_fw != "hub") or (wanted and (src_fw, dst_fw) not in wanted):
                    continue
                dst = os.path.join(work, "out-" + os.path.basename(files[dst_fw]))
                runs = []
                for _ in range(a.repeat):          # best wall time, like cp's; the largest RSS
                    warm(src)
                    runs.append(measure([py, "-m", "hubfmt", "convert", src, dst, "-q",
                                         "--from", src_fw, "--to", dst_fw, *templates.get(dst_fw, [])], env))
                    _rm(dst)
                rows.append((f"{src_fw} -> {dst_fw}", min(r[0] for r in runs), max(r[1] for r in runs),
                             max((r[2] for r in runs), key=abs)))
        if not a.no_reference and _installed("torch"):
            torch_src = files.get("torch")
            if torch_src is None:                      # no torch adapter: make the .pth with torch
                torch_src = os.path.join(work, "ref-source.pth")
                subprocess.run([py, "-c", "import sys, torch; from safetensors.torch import load_file;"
                                "torch.save(load_file(sys.argv[1]), sys.argv[2])", files["hub"], torch_src],
                               check=True, env=env)
            for fw, script in _REFERENCE.items():
                module = {"hub": "safetensors"}.get(fw, fw)
                if not _installed(module) or (wanted and ("torch-ref", fw) not in wanted):
                    continue
                dst = os.path.join(work, _REFERENCE_OUT[fw])
                warm(torch_src)
                wall, rss, rc = measure([py, "-c", script, torch_src, dst], env)
                for f in os.listdir(work):
                    if f.startswith(_REFERENCE_OUT[fw]) or f == "checkpoint":
                        _rm(os.path.join(work, f))
                rows.append((f"torch.load -> {fw} (hand-written)", wall, rss, rc))

        budget = 300 + largest / 1e6
        print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.platform()}")
        print(f"checkpoint: {ckpt.total_bytes() / MiB:,.0f} MiB float32, {len(ckpt)} tensors, largest {largest / MiB:.1f} MiB; "
              f"targets: wall <= 2x cp, peak RSS <= {budget:.0f} MB; each pair best of {a.repeat}\n")
        # Three verdicts, kept apart: the wall target against cp (page cache only, not
        # durable), the same against cp + sync (what hubfmt's fsynced output compares with), memory.
        print(f"| {'pair':<42} | {'wall s':>7} | {'x cp':>6} | {'x cp+sync':>9} | {'peak RSS MB':>11} "
              f"| <=2x cp | <=2x cp+sync | RSS ok |")
        print(f"|{'-' * 44}|{'-' * 9}|{'-' * 8}|{'-' * 11}|{'-' * 13}|---------|--------------|--------|")
        for name, wall, rss, rc in rows:
            if name.startswith("cp "):
                verdicts = ("", "", "")
            elif rc != 0:
                verdicts = ("FAIL",) * 3
            elif "hand-written" in name:
                verdicts = ("ref",) * 3
            else:
                verdicts = tuple("yes" if ok else "no" for ok in (wall <= 2 * cp_wall, wall <= 2 * sync_wall, rss <= budget))
            print(f"| {name:<42} | {wall:7.2f} | {wall / cp_wall:6.2f} | {wall / sync_wall:9.2f} | {rss:11,.0f} "
                  f"| {verdicts[0]:<7} | {verdicts[1]:<12} | {verdicts[2]:<6} |")
        return 0 if all(r[3] == 0 for r in rows) else 1
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
