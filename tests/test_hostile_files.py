"""Hostile torch files whose pickles use only torch's own vocabulary (issue 13): BUILD aimed at
hubfmt's stand-ins after they were checked, and amplification bombs of a few KB (shared tuple
keys, nested torch.storage._load_from_bytes, shared module trees, one deflated storage behind many
views). Each sample must be refused with a HubfmtError, or read fully, inside the fuzz harness's
bounds: 10 s and 1 GiB of address space above start-up, in a child process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hubfmt
from hubfmt.errors import FormatError

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "tests" / "hostile"))
import corpus  # noqa: E402

TAMPERING = corpus.torch_view_tampering()
BOMBS = corpus.amplification_bombs()

_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    import corpus, hubfmt
    from hubfmt.errors import HubfmtError
    class Hang(BaseException): pass
    def hang(*_): raise Hang()
    signal.signal(signal.SIGALRM, hang)
    import numpy, zipfile                                  # start-up, then 1 GiB on top of it
    with open("/proc/self/statm") as f:
        start = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (start + (1 << 30), start + (1 << 30)))
    samples = {**corpus.torch_view_tampering(), **corpus.amplification_bombs()}
    out = {}
    for name in sys.argv[3:]:
        path = os.path.join(sys.argv[2], name + ".pt")
        with open(path, "wb") as f:
            f.write(samples[name])
        t = time.monotonic()
        signal.alarm(10)
        try:
            ckpt = hubfmt.read(path, framework="torch")
            total = sum(int(ckpt.tensor(n).sum() != 0) for n in ckpt)
            out[name] = ["loaded", len(ckpt)]
        except HubfmtError as e:
            out[name] = ["refused", type(e).__name__ + ": " + str(e)]
        except BaseException as e:
            out[name] = ["UNEXPECTED", type(e).__name__ + ": " + str(e)[:200]]
        signal.alarm(0)
        out[name].append(round(time.monotonic() - t, 2))
    print(json.dumps(out))
""")


def _run(tmp_path, names) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO / "tests" / "hostile"), str(tmp_path), *names],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_build_on_stand_ins_is_refused(tmp_path):
    results = _run(tmp_path, sorted(TAMPERING))
    wrong = {k: v for k, v in results.items() if v[0] != "refused" or "refused BUILD" not in v[1]}
    assert not wrong, wrong


def test_amplification_bombs_are_bounded(tmp_path):
    results = _run(tmp_path, sorted(BOMBS))
    assert not {k: v for k, v in results.items() if v[0] == "UNEXPECTED"}, results
    for name in ("bomb-shared-tuple-dict-key", "bomb-shared-tuple-set", "bomb-shared-tuple-frozenset-op"):
        assert results[name][0] == "refused" and "256 tuples" in results[name][1], results[name]
    assert results["bomb-nested-load-from-bytes"][0] == "refused", results
    assert "torch.storage._load_from_bytes" in results["bomb-nested-load-from-bytes"][1]
    # the shared module tree is refused for its path count, from the object graph, not after a walk
    assert results["bomb-shared-module-tree"][0] == "refused" and "paths" in results["bomb-shared-module-tree"][1]
    assert results["bomb-shared-module-tree"][2] < 5, results
    # 2000 views of one deflated 8 MiB member: read, each view right, the member inflated once
    assert results["bomb-deflated-storage-many-views"][:2] == ["loaded", 2000]


def test_deflated_storage_views_read_right(tmp_path):
    member = np.arange(4096, dtype=np.float32)
    views = [(f"v{i}", corpus._rebuild(corpus._get(700), i * 3, (5,), (2,))) for i in range(300)]
    body = corpus._storage_pid("0", member.size) + corpus._put(700) + b"0" + corpus._state_dict(*views)
    path = tmp_path / "deflated.pt"
    path.write_bytes(corpus.torch_zip(body, {"0": member.tobytes()}, compress=True))
    ckpt = hubfmt.read(path, framework="torch")
    for i in range(300):
        assert np.array_equal(ckpt.tensor(f"v{i}"), member[i * 3: i * 3 + 10: 2])


def test_views_are_checked_where_they_are_used(tmp_path):
    """Whatever rewrites a stand-in after its rebuild (BUILD is one way), to_lazy checks it again."""
    from hubfmt.adapters.torch.tensors import FileBlob, to_lazy
    from hubfmt.adapters.torch.vocabulary import Storage, TensorRef

    p = tmp_path / "blob"
    p.write_bytes(bytes(64))
    good = Storage("0", "float32", 16, "FloatStorage", FileBlob(str(p), 0, 64))
    loop = Storage("1", "float32", 16, "FloatStorage", FileBlob(str(p), 0, 64))
    loop.root = loop
    short = Storage("2", "float32", 1 << 20, "FloatStorage", FileBlob(str(p), 0, 64))
    bad = [TensorRef(good, 0, (4,), (-1,), "float32"), TensorRef(good, -4, (4,), (1,), "float32"),
           TensorRef(good, 0, (4, 4), (1,), "float32"), TensorRef(good, 0, (4,), (1.5,), "float32"),
           TensorRef(good, 0, (17,), (1,), "float32"), TensorRef(good, 2**62, (1,), (1,), "float32"),
           TensorRef("x", 0, (4,), (1,), "float32"), TensorRef(loop, 0, (4,), (1,), "float32"),
           TensorRef(short, 0, (4,), (1,), "float32")]
    for t in bad:
        with pytest.raises(FormatError):
            to_lazy(t, "w", str(p))
    assert to_lazy(TensorRef(good, 12, (4,), (1,), "float32"), "w", str(p)).load().shape == (4,)


def test_cli_gives_one_line_for_hostile_torch_files(tmp_path):
    for name in ("build-tensor-negative-stride", "build-storage-self-root", "bomb-shared-tuple-dict-key"):
        src = tmp_path / f"{name}.pt"
        src.write_bytes({**TAMPERING, **BOMBS}[name])
        r = run_cli("convert", src, tmp_path / f"{name}.safetensors")
        assert r.returncode == 2 and r.stderr.startswith("hubfmt: error: ") and len(r.stderr.splitlines()) == 1, r.stderr
        assert not (tmp_path / f"{name}.safetensors").exists()


@pytest.mark.parametrize("member", ["archive/data.pkl", "archive/data/0"])
def test_duplicate_zip_members_are_refused(tmp_path, member):
    """torch.load reads the first of two members with one name, zipfile the last: refused."""
    import io
    import pickle
    import warnings
    import zipfile

    good = corpus.torch_zip(corpus._state_dict(("w", corpus._rebuild(corpus._storage_pid()))))
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")            # zipfile warns about the duplicate name
        for info in src.infolist():
            dst.writestr(info, src.read(info))
            if info.filename == member:
                other = pickle.dumps({"evil": 1}, protocol=2) if member.endswith(".pkl") else bytes(64)
                dst.writestr(member, other)
    path = tmp_path / "dup.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(FormatError, match="two members named"):
        hubfmt.read(path, framework="torch")
