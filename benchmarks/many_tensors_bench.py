"""Many-tensor benchmark (issue 18 part 1, issue 13's resource figures): per-tensor cost.

Builds a checkpoint of N tiny float32 tensors (default 20,000 of 1 KiB, MoE-like) as a hub file
and, with hubfmt's own writers, in every native format this installation writes (torch first).
Then runs, each in its own child process with its peak RSS (benchmarks/convert_bench.measure):
torch -> hub, hub -> every format, every format -> hub, and safetensors' own `load_file` +
`save_file` of the same tensors (safetensors.numpy: no framework import). Start-up (interpreter
and imports) is timed with an import-only child of each kind and subtracted, so the per-tensor
overhead column is what the tensors cost. Target: every pair within 2x safetensors' load+save,
net of start-up, measured in the same run.

Then the resource figures: a torch file of 1,000,000 one-byte tensors (written by hubfmt) and a
torch file of 1,000,000 views of one storage (written by torch.save, when torch is installed),
each converted torch -> hub (sharded: a hub header over the 100 MiB read limit is refused, and
the unsharded attempt is run to show the refusal and how soon it comes), hub -> torch and
hub -> MindSpore. Target: each under 20 s and 1 GB peak RSS.

    .venv/bin/python benchmarks/many_tensors_bench.py                       # a few minutes
    .venv/bin/python benchmarks/many_tensors_bench.py --count 5000 --tensor-bytes 4KiB --no-resource
    .venv/bin/python benchmarks/many_tensors_bench.py --quick               # CI: seconds, asserts nothing about time
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_bench import _installed, _rm, build_sources, measure, warm  # noqa: E402  (the measuring helpers)

from hubfmt import Checkpoint, LazyTensor, TensorInfo  # noqa: E402
from hubfmt.cli.parser import _size  # noqa: E402
from hubfmt.io import hubfile  # noqa: E402

MiB = 2**20

_ST_ROUNDTRIP = """
import sys
from safetensors.numpy import load_file, save_file
save_file(load_file(sys.argv[1]), sys.argv[2])
"""
_ST_IMPORT = "import sys; from safetensors.numpy import load_file, save_file"
# What `python -m hubfmt convert SRC DST --from A --to B` imports before it touches a tensor: the
# CLI, the adapters --from/--to select (their formats.py), A's reader and B's writer.
_HUBFMT_IMPORT = """
import sys
import hubfmt.cli.main
from hubfmt import registry
for arg in sys.argv[1:]:                     # "torch:read", "mxnet:write", "hub:write"
    fw, _, use = arg.partition(":")
    registry.select(fw)
    if fw != registry.HUB:
        getattr(registry.adapter(fw), use)
"""
_VIEWS = """
import sys, torch
n = int(sys.argv[2])
storage = torch.arange(n, dtype=torch.int64).to(torch.uint8)
torch.save({f"v.{i}": storage[i:i + 1] for i in range(n)}, sys.argv[1])
"""


def many_tensors(count: int, tensor_bytes: int, dtype: str = "float32", prefix: str = "experts") -> Checkpoint:
    """`count` lazy tensors of `tensor_bytes` each, named like an MoE model's experts (64 per layer,
    a linear weight and bias each), so every format (TF, Keras, ONNX included) can hold them."""
    item = np.dtype(dtype).itemsize
    n = max(tensor_bytes // item, 1)
    ckpt = Checkpoint()
    ckpt.source.framework = "benchmark"
    for i in range(count):
        if tensor_bytes <= item:
            shape: tuple = ()                               # one-byte (one-element) tensors: scalars
        elif i % 2 == 0:                                    # a weight [out, in] and its bias
            shape = (n // 16, 16) if n % 16 == 0 else (1, n)
        else:
            shape = (n,)

        def gen(i=i, shape=shape):
            return np.full(shape, i % 251, dtype=dtype)
        role = "bias" if i % 2 or not shape else "weight"
        j = i if not shape else i // 2                    # the expert's number
        ckpt.add(f"{prefix}.{j // 64}.e{j % 64}.{role}", LazyTensor(shape, dtype, gen), TensorInfo(kind="linear"))
    return ckpt


def _net(wall: float, start: float) -> float:
    return max(wall - start, 0.01)           # tiny (--quick) runs: start-up noise exceeds the work


def _print_table(rows, count: int, st_net: float, st_start: float, hub_start: float) -> None:
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.platform()}")
    print(f"start-up (import-only child, subtracted): hubfmt {hub_start:.2f} s, safetensors {st_start:.2f} s; "
          f"target: net wall <= 2x safetensors' load+save net ({2 * st_net:.2f} s)\n")
    print(f"| {'pair':<34} | {'wall s':>7} | {'net s':>6} | {'x st':>5} | {'us/tensor':>9} | {'peak RSS MB':>11} | <=2x st |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 8}|{'-' * 7}|{'-' * 11}|{'-' * 13}|---------|")
    for name, wall, start, rss, rc in rows:
        net = _net(wall, start)
        verdict = "FAIL" if rc != 0 else ("ref" if name.startswith("safetensors") else ("yes" if net <= 2 * st_net else "no"))
        print(f"| {name:<34} | {wall:7.2f} | {net:6.2f} | {net / st_net:5.2f} | {net / count * 1e6:9.1f} | {rss:11,.0f} | {verdict:<7} |")


def _best(cmd, env, repeat: int, src: str | None = None, dst: str | None = None):
    runs = []
    for _ in range(repeat):
        if src:
            warm(src)
        runs.append(measure(cmd, env))
        if dst and os.path.lexists(dst):
            _rm(dst)
    return min(r[0] for r in runs), max(r[1] for r in runs), max((r[2] for r in runs), key=abs)


def _rm_hub(path: str) -> None:
    """A hub output, sharded or not."""
    d, base = os.path.split(path)
    stem = base[: -len(".safetensors")]
    for f in os.listdir(d):
        if f == base or f == base + hubfile.INDEX_SUFFIX or (f.startswith(stem + "-") and f.endswith(".safetensors")):
            os.unlink(os.path.join(d, f))


def pairs_table(a, work: str, env: dict, py: str) -> int:
    ckpt = many_tensors(a.count, a.tensor_bytes)
    files = {"hub": os.path.join(work, "model.safetensors")}
    print(f"building {a.count:,} float32 tensors of {a.tensor_bytes:,} bytes ({ckpt.total_bytes() / MiB:,.1f} MiB) "
          f"in {work}", flush=True)
    hubfile.write(ckpt, files["hub"])
    wanted = set(a.formats.split(",")) if a.formats else None
    files, templates = build_sources(ckpt, files["hub"], work, first="torch", only=wanted, skip_failures=True)

    rows = []
    st_start, _, _ = _best([py, "-c", _ST_IMPORT], env, a.repeat)
    st_dst = os.path.join(work, "st-copy.safetensors")
    wall, rss, rc = _best([py, "-c", _ST_ROUNDTRIP, files["hub"], st_dst], env, a.repeat, files["hub"], st_dst)
    rows.append(("safetensors load_file + save_file", wall, st_start, rss, rc))
    st_net = _net(wall, st_start)
    starts: dict[tuple[str, str], float] = {}

    def pair(src_fw: str, dst_fw: str) -> None:
        src = files[src_fw]
        dst = os.path.join(work, "out-" + os.path.basename(files[dst_fw]))
        key = (src_fw, dst_fw)
        if key not in starts:
            uses = [f"{src_fw}:read", f"{dst_fw}:write"]
            starts[key] = _best([py, "-c", _HUBFMT_IMPORT, *uses], env, a.repeat)[0]
        wall, rss, rc = _best([py, "-m", "hubfmt", "convert", src, dst, "-q", "--from", src_fw, "--to", dst_fw,
                               *templates.get(dst_fw, [])], env, a.repeat, src, dst)
        for f in os.listdir(work):                   # a TF output updates a `checkpoint` state file
            if f == "checkpoint":
                os.unlink(os.path.join(work, f))
        rows.append((f"{src_fw} -> {dst_fw}", wall, starts[key], rss, rc))

    if "torch" in files:
        pair("torch", "hub")
    for fw in files:
        pair("hub", fw)
    for fw in files:
        if fw not in ("hub", "torch"):
            pair(fw, "hub")
    _print_table(rows, a.count, st_net, st_start, min(starts.values()))
    return 0 if all(r[4] == 0 for r in rows) else 1


def resource_figures(a, work: str, env: dict, py: str) -> int:
    """1,000,000 one-byte tensors, and 1,000,000 views of one storage: each under 20 s and 1 GB."""
    n = a.million
    sources = {}
    one = os.path.join(work, "million.pt")
    print(f"\nbuilding a torch file of {n:,} one-byte tensors (hubfmt's torch writer)", flush=True)
    convert_ckpt = many_tensors(n, 1, dtype="uint8", prefix="m")
    from hubfmt import registry
    registry.adapter("torch").write(convert_ckpt, one)
    sources[f"{n:,} one-byte tensors"] = one
    del convert_ckpt
    if _installed("torch"):
        views = os.path.join(work, "views.pt")
        print(f"building a torch file of {n:,} views of one storage (torch.save)", flush=True)
        subprocess.run([py, "-c", _VIEWS, views, str(n)], check=True, env=env)
        sources[f"{n:,} views of one storage"] = views
    start = _best([py, "-c", _HUBFMT_IMPORT, "torch:read", "torch:write", "mindspore:write"], env, 1)[0]
    # A shard of at most 256 KiB of data: 4 shards of 262,144 tensors at 1,000,000, each header
    # ~20 MB, under the 100 MiB safetensors read limit that one unsharded header would exceed.
    shard = max(n // 4, 1)
    rows = []
    for what, src in sources.items():
        hub = os.path.join(work, "million.safetensors")
        for label, cmd, dst in (
            ("torch -> hub (one file)", [src, hub], hub),
            (f"torch -> hub (shards of {shard:,} B)", [src, hub, "--max-shard-size", f"{shard}B"], None),
            ("hub -> torch", [hub, os.path.join(work, "back.pt")], os.path.join(work, "back.pt")),
            ("hub -> mindspore", [hub, os.path.join(work, "back.ckpt")], os.path.join(work, "back.ckpt")),
        ):
            src_file = cmd[0]
            if not os.path.exists(src_file) and not os.path.exists(src_file + hubfile.INDEX_SUFFIX):
                continue
            warm(src_file if os.path.exists(src_file) else src_file + hubfile.INDEX_SUFFIX)
            wall, rss, rc = measure([py, "-m", "hubfmt", "convert", *cmd, "-q"], env)
            if dst == hub and rc != 0:
                rows.append((what, label + ": refused", wall, rss, rc, _last_error(cmd, env, py)))
            else:
                rows.append((what, label, wall, rss, rc, ""))
            if dst == hub:
                _rm_hub(hub)                 # the sharded hub file is the source of the next pairs
            elif dst is not None and os.path.exists(dst):
                os.unlink(dst)
        _rm_hub(hub)
    print(f"\nresource figures (start-up {start:.2f} s included; target < 20 s and < 1,000 MB each):\n")
    print(f"| {'checkpoint':<28} | {'pair':<34} | {'wall s':>7} | {'peak RSS MB':>11} | ok |")
    print(f"|{'-' * 30}|{'-' * 36}|{'-' * 9}|{'-' * 13}|----|")
    bad = 0
    for what, label, wall, rss, rc, err in rows:
        refused = label.endswith("refused")
        ok = wall < 20 and rss < 1000 and (rc == 0 or refused)
        bad += not ok
        print(f"| {what:<28} | {label:<34} | {wall:7.2f} | {rss:11,.0f} | {'yes' if ok else 'no':<2} |")
        if err:
            print(f"|   {err[:120]}")
    return 0 if not bad else 1


def _last_error(args, env, py) -> str:
    """The error line of a refused conversion (run again to capture it)."""
    r = subprocess.run([py, "-m", "hubfmt", "convert", *args, "-q"], env=env, capture_output=True, text=True)
    return (r.stderr.strip().splitlines() or [""])[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=20000, help="tensors in the checkpoint (default 20000)")
    p.add_argument("--tensor-bytes", type=_size, default=1024, help="bytes per tensor (default 1KiB)")
    p.add_argument("--formats", help="only these native formats, comma-separated (torch is always built)")
    p.add_argument("--repeat", type=int, default=3, help="runs per pair, best wall time reported (default 3)")
    p.add_argument("--million", type=int, default=1_000_000, help="tensors of the resource figures (default 1,000,000)")
    p.add_argument("--no-resource", action="store_true", help="skip the resource figures")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one run each (CI; asserts nothing about time)")
    p.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    a = p.parse_args(argv)
    if a.quick:
        a.count, a.tensor_bytes, a.repeat, a.million = min(a.count, 300), min(a.tensor_bytes, 64), 1, min(a.million, 2000)
        a.formats = a.formats or "mindspore,mxnet"
    work = a.dir or tempfile.mkdtemp(prefix="hubfmt-many-")
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        rc = pairs_table(a, work, env, sys.executable)
        if not a.no_resource:
            rc |= resource_figures(a, work, env, sys.executable)
        return rc
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
