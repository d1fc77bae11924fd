"""LLM-scale benchmark (issue 18, parts 2-4): a Llama-shaped bf16 checkpoint, sharded as Hugging
Face writes it, converted to and from every format hubfmt writes with dtypes kept; a sharded TF
checkpoint; the same conversions pinned to one core; and the peers users would otherwise run.

The source is an HF directory (`config.json`, `model-0000k-of-0000n.safetensors`,
`model.safetensors.index.json`): embed_tokens, per layer q/k/v/o_proj, gate/up/down_proj,
input_layernorm and post_attention_layernorm, the final norm and lm_head, all bfloat16. Dims scale
with `--size` (at 8 GiB: hidden 4096, 18 layers, 165 tensors, the largest 500 MiB). Each native
source is built from the hub file, its pairs run, and it is deleted before the next is built, so
the disk holds about three copies at once.

Every run is a child process (measured as benchmarks/convert_bench.py measures: wall, peak RSS by
/usr/bin/time) with a warm source; a pair's figure is the median of `--repeat` runs. Its yardstick
is `cp -r` + `sync` of the source's files (the durable copy: hubfmt fsyncs what it publishes).
Pairs whose work is CPU bound run again pinned to one core (`taskset -c 0`), and the table shows
the speed-up the second core gives.

    .venv/bin/python benchmarks/llm_bench.py                       # 8 GiB, long (an hour or more)
    .venv/bin/python benchmarks/llm_bench.py --size 2GiB --repeat 3
    .venv/bin/python benchmarks/llm_bench.py --quick               # CI: tiny, every row once
    .venv/bin/python benchmarks/llm_bench.py --size 1GiB --only hf,tensorflow --no-peers

Targets (issue 18): each pair within 1.3x cp + sync, peak RSS <= 300 MB + the largest tensor.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_bench import _REFERENCE, _installed, checkpoint_files, measure, warm  # noqa: E402

import hubfmt  # noqa: E402
from hubfmt import Checkpoint, LayerInfo, LazyTensor, TensorInfo  # noqa: E402
from hubfmt.cli.parser import _size  # noqa: E402

MiB = 2**20
GiB = 2**30

# Native formats written from the hub, with their output name and the options the pair needs.
# OneFlow 0.9 cannot store bfloat16 (its writer stores float32, exactly): the table says so.
TARGETS = {
    "hf": ("hf-out", []),
    "torch": ("model.pth", []),
    "tensorflow": ("model.index", []),
    "keras": ("model.weights.h5", []),
    "mxnet": ("model.params", []),
    "mindspore": ("model.ckpt", []),
    "oneflow": ("model.oneflow", []),
    "onnx": ("model.onnx", []),          # + --template (a bare model of the same initializers)
    "flax": ("model.msgpack", []),
}
# Pairs whose work is CPU bound (transposes, CRCs, HDF5 element copies): also run on one core.
CPU_BOUND = {"tensorflow", "tf-sharded", "keras", "mindspore", "torch", "flax", "onnx"}


# ---- the checkpoint -------------------------------------------------------------------------

def llama_dims(total: int) -> dict:
    """Llama-shaped dims whose bf16 tensors sum to about `total` bytes: at 8 GiB hidden 4096,
    intermediate 11008, vocab 64000 (embed_tokens and lm_head 500 MiB each), 18 layers. Smaller
    sizes shrink the widths by sqrt(total / 8 GiB) and keep the depth (so the tensor count too),
    down to 2 layers for tiny runs."""
    scale = (total / (8 * GiB)) ** 0.5
    h = max(int(4096 * scale) // 64 * 64, 64)
    inter = max(int(11008 * scale) // 64 * 64, 64)
    vocab = max(int(64000 * scale) // 64 * 64, 64)
    per_layer = (4 * h * h + 3 * h * inter + 2 * h) * 2
    fixed = (2 * vocab * h + h) * 2
    layers = max(round((total - fixed) / per_layer), 2)
    return {"hidden": h, "intermediate": inter, "vocab": vocab, "layers": layers}


def plan_shapes(dims: dict) -> list[tuple[str, str, tuple]]:
    """(name, kind, shape) in HF order."""
    h, inter, v = dims["hidden"], dims["intermediate"], dims["vocab"]
    out = [("model.embed_tokens.weight", "embedding", (v, h))]
    for i in range(dims["layers"]):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{x}_proj.weight", "linear", (h, h)) for x in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", "linear", (inter, h)), (p + "mlp.up_proj.weight", "linear", (inter, h)),
                (p + "mlp.down_proj.weight", "linear", (h, inter)),
                (p + "input_layernorm.weight", "rms_norm", (h,)), (p + "post_attention_layernorm.weight", "rms_norm", (h,))]
    return out + [("model.norm.weight", "rms_norm", (h,)), ("lm_head.weight", "linear", (v, h))]


_POOL: list[np.ndarray] = []


def _bf16(shape: tuple, seed: int) -> np.ndarray:
    """Plausible bf16 weights (|w| < 0.25, both signs) as uint16 bits: a 16 MiB random pool
    rotated per tensor, so building 8 GiB costs memory bandwidth, not random generation."""
    if not _POOL:
        rng = np.random.default_rng(0)
        bits = rng.integers(0x3800, 0x3E80, size=8 * MiB, dtype=np.uint16)
        _POOL.append(bits | (rng.integers(0, 2, size=bits.size, dtype=np.uint16) << 15))
    pool, n = _POOL[0], int(np.prod(shape))
    start = (seed * 7919) % pool.size
    reps = -(-(n + start) // pool.size)
    return np.tile(pool, reps)[start:start + n].reshape(shape) if reps > 1 else pool[start:start + n].reshape(shape).copy()


def synthetic_llama(dims: dict) -> Checkpoint:
    """A lazy bf16 checkpoint: each tensor generated when the writer asks for it."""
    ckpt = Checkpoint()
    ckpt.source.framework = "benchmark"
    for i, (name, kind, shape) in enumerate(plan_shapes(dims)):
        ckpt.add(name, LazyTensor(shape, "bfloat16", lambda s=shape, i=i: _bf16(s, i)),
                 TensorInfo(kind=kind, original_dtype="bfloat16"))
        layer = name.rpartition(".")[0]
        if layer not in ckpt.layers:
            ckpt.layers[layer] = LayerInfo(kind, {"eps": 1e-5} if kind == "rms_norm" else {})
    ckpt.extra["config.json"] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"], "num_hidden_layers": dims["layers"],
        "num_attention_heads": max(dims["hidden"] // 128, 1), "vocab_size": dims["vocab"],
        "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    return ckpt


# ---- one source: build, run its pairs, delete -----------------------------------------------

def files_bytes(path: str) -> int:
    return sum(os.path.getsize(f) for f in checkpoint_files(path))


def remove(path: str) -> None:
    """Delete a checkpoint: a directory, a file, or a TF prefix's index and shards."""
    if os.path.isdir(path):
        shutil.rmtree(path)
        return
    for f in checkpoint_files(path):
        os.unlink(f)
    for extra in (os.path.join(os.path.dirname(path), "checkpoint"), path[:-len(".params")] + "-symbol.json", path + ".data"):
        if os.path.isfile(extra):
            os.unlink(extra)


def exists(path: str) -> bool:
    return os.path.exists(path) or (path.endswith(".index") and bool(checkpoint_files(path)))


def durable_copy(src: str, work: str, repeat: int) -> float:
    """Median wall of `cp -r` of the checkpoint's files + `sync`."""
    files = checkpoint_files(src)
    dst = os.path.join(work, "cp-copy")
    walls = []
    for _ in range(repeat):
        os.makedirs(dst)
        warm(src)
        wall, _, rc = measure(["sh", "-c", 'cp "$@" "$0" && sync', dst, *files])
        shutil.rmtree(dst)
        if rc == 0:
            walls.append(wall)
    return statistics.median(walls) if walls else float("nan")


def dtypes_of(path: str, fw: str) -> str:
    """The float dtypes the output holds ('bfloat16', or what the format stored instead)."""
    try:
        ckpt = hubfmt.read(path, framework=fw if fw != "hf" else "torch")
    except Exception as e:                                   # reported, not fatal: a table column
        return f"? ({type(e).__name__})"
    return ",".join(sorted({ckpt[n].tensor.dtype for n in ckpt.stored_names()}))


class Bench:
    def __init__(self, a, work: str, budget_mb: float):
        self.a, self.work, self.budget = a, work, budget_mb
        self.rows: list[dict] = []
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.py = sys.executable

    def _runs(self, cmd: list[str], src: str, dst: str, repeat: int, pin: bool = False,
              keep_last: bool = False) -> tuple[float, float, int]:
        """(median wall, largest peak RSS, worst exit status) of `repeat` runs; the output is
        removed after each run but, with keep_last, the last."""
        walls, rss, rc = [], 0.0, 0
        for i in range(repeat):
            warm(src)
            w, r, c = measure((["taskset", "-c", "0"] if pin else []) + cmd, self.env)
            walls.append(w)
            rss, rc = max(rss, r), c or rc
            if not (keep_last and i == repeat - 1 and c == 0) and exists(dst):
                remove(dst)
        return statistics.median(walls), rss, rc

    def pair(self, label: str, src: str, src_fw: str, dst_fw: str, yardstick: float, extra: list[str] | None = None,
             keep: bool = False) -> str | None:
        name, _ = TARGETS.get(dst_fw, ("model.safetensors", []))
        dst = os.path.join(self.work, "out-" + name)
        to = "hub" if dst_fw == "hub" else dst_fw
        cmd = [self.py, "-m", "hubfmt", "convert", src, dst, "-q", "--from", src_fw if src_fw != "hf" else "torch",
               "--to", to, *(["--keep-dtype"] if dst_fw == "hub" else []), *(extra or [])]
        one_core = None
        pin = not self.a.no_pin and (src_fw in CPU_BOUND or dst_fw in CPU_BOUND)
        if pin:
            one_core, _, _ = self._runs(cmd, src, dst, self.a.repeat, pin=True)
        wall, rss, rc = self._runs(cmd, src, dst, self.a.repeat, keep_last=True)
        held = dtypes_of(dst, dst_fw) if rc == 0 else ""
        if rc == 0 and not keep:
            remove(dst)
        self.rows.append({"pair": label, "wall": wall, "x": wall / yardstick, "rss": rss, "rc": rc,
                          "held": held, "one_core": one_core})
        return dst if keep and rc == 0 else None

    def peer(self, label: str, script: str, args: list[str], yardstick: float, cleanup: list[str]) -> None:
        warm(args[0])
        wall, rss, rc = measure([self.py, "-c", script, *args], self.env)
        for p in cleanup:
            if os.path.exists(p):
                remove(p)
        self.rows.append({"pair": label, "wall": wall, "x": wall / yardstick, "rss": rss, "rc": rc,
                          "held": "", "one_core": None, "peer": True})


# ---- integrity checks: their cost -----------------------------------------------------------

# The CRC-32 of every zip member of a torch file, alone: the work torch -> X adds to verify the
# bytes it copies in the kernel (read back from the page cache, as the writer does).
_ZIP_CRCS = """
import sys, zipfile, zlib
from hubfmt.io.stream import fold_region
with open(sys.argv[1], "rb") as f, zipfile.ZipFile(f) as z:
    for m in z.infolist():
        f.seek(m.header_offset + 26)
        skip = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
        fold_region(f.fileno(), m.header_offset + 30 + skip, m.file_size, zlib.crc32)
"""


def integrity(b: "Bench", fw: str, native: str, yard: float) -> None:
    """X -> hub with the format's stored checksums not verified (-R verify_checksums=false, a
    reader option for salvaging damaged files), beside the default; for torch, the check's work
    alone (no switch turns it off)."""
    if fw in ("tensorflow", "mindspore"):
        b.pair(f"{fw} -> hub, checksums not verified", native, fw, "hub", yard, ["-R", "verify_checksums=false"])
    elif fw == "torch":
        b.peer("torch zip member CRC-32s alone (one core)", _ZIP_CRCS, [native], yard, [])


# ---- peers: what users run without hubfmt ---------------------------------------------------

_ST_ROUNDTRIP = """
import sys, os
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for f in sorted(os.listdir(src)):
    if f.endswith(".safetensors"):
        save_file(load_file(os.path.join(src, f)), os.path.join(dst, f), metadata={"format": "pt"})
"""
_HF_TO_PTH = """
import sys, os, torch
from safetensors.torch import load_file
src, dst = sys.argv[1], sys.argv[2]
sd = {}
for f in sorted(os.listdir(src)):
    if f.endswith(".safetensors"):
        sd.update(load_file(os.path.join(src, f)))
torch.save(sd, dst)
"""
_PTH_TO_PTH = """
import sys, torch
torch.save(torch.load(sys.argv[1], map_location="cpu", weights_only=True), sys.argv[2])
"""
_MS_TO_ST = """
import sys, mindspore as ms
ms.ckpt_to_safetensors(sys.argv[1], save_path=sys.argv[2])
"""
_MS_FROM_ST = """
import sys, mindspore as ms
ms.safetensors_to_ckpt(sys.argv[1], save_path=sys.argv[2])
"""


def peers(b: Bench, hf_dir: str, pth: str | None, yardstick: float) -> None:
    w = b.work
    if _installed("safetensors") and _installed("torch"):
        b.peer("safetensors load_file + save_file (per shard)", _ST_ROUNDTRIP, [hf_dir, os.path.join(w, "peer-st")],
               yardstick, [os.path.join(w, "peer-st")])
        if b.a.quick:
            return
        b.peer("torch: load_file all shards + torch.save", _HF_TO_PTH, [hf_dir, os.path.join(w, "peer.pth")],
               yardstick, [os.path.join(w, "peer.pth")])
        if pth:
            b.peer("torch.load + torch.save (.pth)", _PTH_TO_PTH, [pth, os.path.join(w, "peer2.pth")], yardstick,
                   [os.path.join(w, "peer2.pth")])
            # convert_bench's hand-written routes; torch's bf16 tensors have no .numpy(), so users
            # widen them first (what the route then saves is float32: twice the bytes)
            for fw, script in _REFERENCE.items():
                if b.a.quick or not _installed({"hub": "safetensors"}.get(fw, fw)):
                    continue
                out = os.path.join(w, f"peer-ref-{fw}")
                b.peer(f"torch.load -> {fw} (hand-written, float32)", script.replace("v.numpy()", "v.float().numpy()"),
                       [pth, out], yardstick, [out, os.path.join(w, "checkpoint")] + [
                           os.path.join(w, f) for f in os.listdir(w) if f.startswith(f"peer-ref-{fw}.")])


def mindspore_peers(b: Bench, ckpt: str, yardstick: float) -> None:
    """MindSpore's own converters: ckpt -> safetensors, and back from the safetensors it made."""
    if not _installed("mindspore"):
        return
    st_dir, back = os.path.join(b.work, "peer-ms-st"), os.path.join(b.work, "peer-ms-ckpt")
    os.makedirs(st_dir)
    b.peer("mindspore.ckpt_to_safetensors", _MS_TO_ST, [ckpt, st_dir], yardstick, [])
    made = [os.path.join(st_dir, f) for f in os.listdir(st_dir) if f.endswith(".safetensors")]
    if made:
        os.makedirs(back)
        b.peer("mindspore.safetensors_to_ckpt", _MS_FROM_ST, [made[0], back], yardstick, [back])
    shutil.rmtree(st_dir, ignore_errors=True)


# ---- the run --------------------------------------------------------------------------------

def machine() -> str:
    disk = "?"
    try:
        dev = subprocess.run(["df", "--output=source", tempfile.gettempdir()], capture_output=True, text=True).stdout.split()[-1]
        base = os.path.basename(dev).rstrip("0123456789")
        with open(f"/sys/block/{base}/queue/rotational") as f:
            disk = f"{dev}, {'rotational' if f.read().strip() == '1' else 'non-rotational'}"
        if base.startswith("vd"):
            disk += " (virtio virtual disk)"
    except (OSError, IndexError):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, disk {disk}, "
            f"kernel {platform.release()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=_size, default=8 * GiB, help="checkpoint size (default 8GiB)")
    p.add_argument("--shards", type=int, default=4, help="HF and TF source shards (default 4)")
    p.add_argument("--repeat", type=int, default=3, help="runs per pair, the median reported (default 3)")
    p.add_argument("--quick", action="store_true", help="CI: 8 MiB, one run each, TF and Keras only (unless "
                   "--only), no pinned runs, safetensors the only peer")
    p.add_argument("--only", help="native formats to pair with, comma-separated (default: every one)")
    p.add_argument("--no-pin", action="store_true", help="skip the runs pinned to one core")
    p.add_argument("--no-peers", action="store_true", help="skip the peers (safetensors, torch, MindSpore)")
    p.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.repeat, a.no_pin, a.only = 8 * MiB, 1, True, a.only or "tensorflow,keras"

    work = a.dir or tempfile.mkdtemp(prefix="hubfmt-llm-")
    os.makedirs(work, exist_ok=True)
    try:
        dims = llama_dims(a.size)
        ckpt = synthetic_llama(dims)
        largest = max(e.tensor.nbytes for e in ckpt.entries.values())
        total = ckpt.total_bytes()
        shard = -(-total // a.shards) + 1
        b = Bench(a, work, 300 + largest / 1e6)
        print(f"building a Llama-shaped bf16 checkpoint: {total / MiB:,.0f} MiB, {len(ckpt)} tensors, largest "
              f"{largest / MiB:.1f} MiB ({dims}), in {work}", flush=True)
        hf = os.path.join(work, "hf")
        hubfmt.write(ckpt, hf, framework="hf", max_shard_size=shard)
        hub = os.path.join(work, "model.safetensors")
        hubfmt.convert(hf, hub, src_framework="torch", dst_framework="hub", write_options={"keep_dtype": True},
                       show_progress=False)
        yard = durable_copy(hf, work, a.repeat)
        b.rows.append({"pair": f"cp -r + sync ({len(checkpoint_files(hf))} files)", "wall": yard, "x": 1.0, "rss": 0,
                       "rc": 0, "held": "", "one_core": None, "peer": True})
        wanted = [fw for fw in TARGETS if not a.only or fw in a.only.split(",")]
        available = set(hubfmt.registry.available())
        b.pair("hf -> hub", hf, "hf", "hub", yard)
        b.pair("hub -> hf", hub, "hub", "hf", yard)
        pth = None
        for fw in wanted:
            if fw == "hf" or (fw != "keras" and fw not in available) or (fw == "keras" and "keras" not in available):
                continue
            extra = []
            if fw == "onnx":
                sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
                from onnx_template import bare_model
                extra = ["--template", bare_model(hubfmt.read(hub), os.path.join(work, "template.onnx"))]
            # hf -> fw builds the native source the reverse pairs read; kept until they ran
            src = b.pair(f"hf -> {fw}", hf, "hf", fw, yard, extra, keep=True)
            if src is None:
                continue
            native = os.path.join(work, "src-" + TARGETS[fw][0])
            for f in checkpoint_files(src) if fw == "tensorflow" else [src]:    # an index and its shards
                os.rename(f, os.path.join(work, "src-" + os.path.basename(f).removeprefix("out-")))
            b.pair(f"{fw} -> hub", native, fw, "hub", yard)
            b.pair(f"{fw} -> hf", native, fw, "hf", yard)
            if not a.quick:
                integrity(b, fw, native, yard)
            if fw == "torch":
                pth = native
                continue
            if fw == "mindspore" and not a.no_peers and not a.quick:
                mindspore_peers(b, native, yard)
            remove(native)
        if "tensorflow" in wanted and "tensorflow" in available:
            # a sharded TF checkpoint, as Saver writes big models: one data file per shard
            tf = os.path.join(work, "sharded.index")
            hubfmt.convert(hub, tf, dst_framework="tensorflow", write_options={"max_shard_size": shard},
                           show_progress=False)
            n = len(checkpoint_files(tf)) - 1
            b.pair(f"tf ({n} shards) -> hub", tf, "tensorflow", "hub", yard)
            b.pair(f"tf ({n} shards) -> hf", tf, "tensorflow", "hf", yard)
            remove(tf)
        if not a.no_peers:
            peers(b, hf, pth, yard)
        if pth:
            remove(pth)
        print_table(b, total, len(ckpt), largest, yard)
        return 0 if all(r["rc"] == 0 for r in b.rows if not r.get("peer")) else 1
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


def print_table(b: Bench, total: int, count: int, largest: int, yard: float) -> None:
    print(f"\n{machine()}")
    print(f"checkpoint: {total / MiB:,.0f} MiB bfloat16, {count} tensors, largest {largest / MiB:.1f} MiB; median of "
          f"{b.a.repeat} run(s); targets: wall <= 1.3x cp + sync ({yard:.2f} s), peak RSS <= {b.budget:.0f} MB\n")
    print(f"| {'pair':<48} | {'wall s':>7} | {'x cp+sync':>9} | {'peak RSS MB':>11} | {'1 core s':>8} | "
          f"{'2nd core':>8} | {'dtype out':<18} | <=1.3x | RSS ok |")
    print(f"|{'-' * 50}|{'-' * 9}|{'-' * 11}|{'-' * 13}|{'-' * 10}|{'-' * 10}|{'-' * 20}|--------|--------|")
    for r in b.rows:
        peer = r.get("peer")
        if r["rc"] != 0:
            ok = ("FAIL", "FAIL")
        elif peer:
            ok = ("", "")
        else:
            ok = ("yes" if r["x"] <= 1.3 else "no", "yes" if r["rss"] <= b.budget else "no")
        one = f"{r['one_core']:8.2f}" if r["one_core"] else f"{'':8}"
        gain = f"{r['one_core'] / r['wall']:7.2f}x" if r["one_core"] else f"{'':8}"
        held = r["held"] if r["held"] in ("", "bfloat16") else r["held"] + " !"
        print(f"| {r['pair']:<48} | {r['wall']:7.2f} | {r['x']:9.2f} | {r['rss']:11,.0f} | {one} | {gain} | {held:<18} "
              f"| {ok[0]:<6} | {ok[1]:<6} |")
    print("\n'!': the format cannot hold bfloat16 (OneFlow 0.9 stores it as float32, exactly; twice the bytes). "
          "Peers have no verdict; their x is against the same cp + sync.")


if __name__ == "__main__":
    sys.exit(main())
