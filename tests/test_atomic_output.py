"""Atomic output under SIGKILL and a full disk; inputs opened read-only and never changed (issue 9).

A child `python -m hubfmt convert` of a ~120 MB checkpoint is killed at random moments of its run;
afterwards the destination must be absent or complete and equal to the source, and nothing but
hubfmt's dot-prefixed temporaries may exist beside it. A file-size limit (RLIMIT_FSIZE, the CLI
ignores SIGXFSZ) stands in for a full disk: a one-line error, exit 2, nothing published.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hubfmt
from hubfmt import Checkpoint, LazyTensor, TensorInfo, registry
from hubfmt.io import hubfile

from helpers import template_args, template_options

KILL_POINTS = int(os.environ.get("HUBFMT_KILL_POINTS", "6"))
TMP_MARK = ".hubfmt-tmp-"


def _source_checkpoint() -> Checkpoint:
    """40 float16 tensors of 1.5 M elements (~120 MB), generated on demand; written as float32 by
    the hub writer, so the conversion spends real time in Python, not only in the kernel."""
    ckpt = Checkpoint()
    for i in range(40):
        def gen(i=i):
            return np.random.default_rng(i).standard_normal((1000, 1500), dtype=np.float32).astype(np.float16)
        ckpt.add(f"layers.{i}.weight", LazyTensor((1000, 1500), "float16", gen), TensorInfo(kind="linear"))
    return ckpt


def _targets() -> dict[str, list[str]]:
    """name -> (output file name, extra CLI args): the hub, a sharded hub, every native writer."""
    out = {"hub": ["out.safetensors"], "hub-sharded": ["out.safetensors", "--max-shard-size", "30MB"]}
    for fw in registry.available():
        for fmt in registry.adapter(fw).FORMATS:
            if fmt.writes and fmt.extensions:
                out[fw] = ["out" + fmt.extensions[0], "--to", fw]
                break
    return out


TARGETS = _targets()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    p = d / "src.safetensors"
    hubfile.write(_source_checkpoint(), p, keep_dtype=True)
    return p


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _published(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if TMP_MARK not in f)


def _check_complete(dst: str, framework: str | None, expected: Checkpoint) -> None:
    back = hubfmt.read(dst, framework=framework)
    assert list(back) == list(expected)
    for name in expected:
        got = back.tensor(name).astype(np.float32)
        want = expected.tensor(name).astype(np.float32)
        assert np.array_equal(got, want), f"{dst}: {name} differs"


_TEMPLATE_ARGS: dict[str, list[str]] = {}


def _convert_cmd(source, d, target):
    name, *args = TARGETS[target]
    if not target.startswith("hub"):
        # ONNX writes into a model: a template beside the source, outside the output directory
        if target not in _TEMPLATE_ARGS:
            _TEMPLATE_ARGS[target] = template_args(target, hubfmt.read(source), os.path.dirname(source))
        args += _TEMPLATE_ARGS[target]
    return [sys.executable, "-m", "hubfmt", "convert", str(source), str(d / name), "-q", *args], str(d / name)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_sigkill_leaves_nothing_or_a_complete_checkpoint(tmp_path, source, target):
    before = _digest(source)
    expected = hubfmt.read(source)
    fw = None if target.startswith("hub") else target
    # One undisturbed run gives the span to draw kill moments from.
    d0 = tmp_path / "full"
    d0.mkdir()
    cmd, dst = _convert_cmd(source, d0, target)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, timeout=600)
    span = time.monotonic() - t0
    _check_complete(dst, fw, expected)
    rng = random.Random(f"{target}-{KILL_POINTS}-{os.getpid()}")
    outcomes = {"absent": 0, "complete": 0}
    for k in range(KILL_POINTS):
        d = tmp_path / f"kill{k}"
        d.mkdir()
        cmd, dst = _convert_cmd(source, d, target)
        proc = subprocess.Popen(cmd)
        time.sleep(rng.uniform(0.0, span))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        published = _published(d)
        if not published:
            outcomes["absent"] += 1
            continue
        if target == "hub-sharded" and not (d / "out.safetensors.index.json").exists():
            # Shards go first, the index last: without the index nothing is published as the
            # checkpoint, and every shard already renamed into place is itself complete.
            for shard in published:
                hubfile.read(d / shard)
            outcomes["absent"] += 1
            continue
        _check_complete(dst, fw, expected)
        outcomes["complete"] += 1
    print(f"\n{target}: {KILL_POINTS} kill points over {span:.2f} s: {outcomes}")
    assert _digest(source) == before


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_full_disk_gives_one_line_and_no_partial_file(tmp_path, source, target):
    cmd, dst = _convert_cmd(source, tmp_path, target)
    limit = 2 * 2**20      # per file: smaller than one tensor (3 MB as float16), so one-file-per-tensor formats fail too

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_disk, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubfmt: error: ") and "File too large" in lines[0], r.stderr[-2000:]
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)     # no output, no temporaries


_AUDITED = """
import json, os, sys
src = os.path.realpath(sys.argv[1])
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT
seen, bad = [], []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.path.realpath(os.fsdecode(args[0]))
        if p == src or p.startswith(src + os.sep) or os.path.dirname(p) == os.path.dirname(src) and os.path.basename(p).startswith(os.path.basename(src).split(".")[0]):
            mode, flags = args[1], args[2] or 0
            seen.append(p)
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & WRITE:
                bad.append([p, mode, flags])
    elif event == "mmap.__new__" and args[2] not in (1,):      # mmap.ACCESS_READ == 1
        bad.append(["mmap", repr(args)])
sys.addaudithook(hook)
from hubfmt.cli import main
rc = main(sys.argv[2:])
print(json.dumps({"rc": rc, "seen": len(seen), "bad": bad}))
"""


def _sources() -> list[str]:
    return ["hub", *[t for t in TARGETS if not t.startswith("hub")]]


@pytest.mark.parametrize("src_fmt", _sources())
def test_input_is_opened_read_only_and_unchanged(tmp_path, src_fmt):
    hub = _small_hub(tmp_path)
    if src_fmt == "hub":
        src = hub
    else:
        ckpt = hubfmt.read(hub)
        src = str(tmp_path / ("in" + TARGETS[src_fmt][0][3:]))
        tpl_dir = tmp_path / "tpl"
        tpl_dir.mkdir()
        hubfmt.write(ckpt, src, framework=src_fmt, **template_options(src_fmt, ckpt, tpl_dir))
    before = _tree_digest(src)
    dst = tmp_path / "o" / "out.safetensors"
    dst.parent.mkdir()
    r = subprocess.run([sys.executable, "-c", _AUDITED, src, "convert", src, str(dst), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    audit = json.loads(r.stdout.strip().splitlines()[-1])
    assert audit["rc"] == 0 and audit["seen"] > 0, audit
    assert audit["bad"] == [], audit["bad"]
    assert _tree_digest(src) == before


def _small_hub(tmp_path) -> str:
    from hubfmt.cli.demo import example_checkpoint
    p = tmp_path / "small.safetensors"
    hubfile.write(example_checkpoint(), p)
    return str(p)


def _tree_digest(path: str) -> dict:
    d, base = os.path.split(path)
    stem = base.split(".")[0]
    files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else \
        [os.path.join(d, f) for f in os.listdir(d) if f.startswith(stem)]
    return {f: (_digest(f), os.stat(f).st_mtime_ns) for f in sorted(files)}


@pytest.mark.parametrize("target", ["hub", "hub-sharded", "torch", "mindspore"])
def test_sigterm_mid_write_leaves_no_temporaries(tmp_path, source, target):
    """SIGTERM (what `kill`, systemd and CI runners send) while the temporary is being written:
    exit 143, nothing published and no temporary left (unlike SIGKILL, the process can clean up)."""
    if target not in TARGETS:
        pytest.skip(f"{target} adapter not available")
    cmd, dst = _convert_cmd(source, tmp_path, target)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(TMP_MARK in f for f in os.listdir(tmp_path)):
        assert proc.poll() is None, "the conversion ended before a temporary appeared"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.05)                        # inside the write, not at its first byte
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "hubfmt: terminated", err
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
