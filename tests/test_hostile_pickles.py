"""No code execution, ever: hostile pickles are refused by the restricted unpickler and by every
reader that meets a pickle, and a canary file proves no payload ran (issue 9)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from hubfmt import registry
from hubfmt.errors import FormatError, UnsafePickleError
from hubfmt.codecs.safe_pickle import restricted_loads

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "tests" / "hostile"))
import corpus  # noqa: E402

CANARY = "/tmp/hubfmt-hostile-canary"         # fixed: the corpus is built once, at collection
CODE = {**corpus.code_execution(CANARY), **corpus.state_tampering()}


@pytest.fixture(autouse=True)
def no_canary():
    if os.path.exists(CANARY):
        os.unlink(CANARY)
    yield
    assert not os.path.exists(CANARY), "a hostile payload ran: the canary file exists"


@pytest.mark.parametrize("opaque", [False, True], ids=["strict", "opaque"])
@pytest.mark.parametrize("name", sorted(CODE))
def test_restricted_unpickler_refuses(name, opaque):
    with pytest.raises(FormatError) as e:          # UnsafePickleError is a FormatError
        restricted_loads(CODE[name], opaque=opaque, source="evil.pkl")
    assert "evil.pkl" in str(e.value)
    if name.startswith(("reduce-", "inst-", "obj-", "getattr", "nested-", "numpy-", "torch-", "build-")):
        assert isinstance(e.value, UnsafePickleError), e.value


def test_allowed_functions_are_not_modified_by_build():
    from hubfmt.codecs import safe_pickle
    before = {n: (f.__defaults__, f.__kwdefaults__) for n, f in vars(safe_pickle).items() if callable(f) and hasattr(f, "__defaults__")}
    for name in corpus.state_tampering():
        with pytest.raises(FormatError):
            restricted_loads(CODE[name], opaque=True)
    after = {n: (f.__defaults__, f.__kwdefaults__) for n, f in vars(safe_pickle).items() if callable(f) and hasattr(f, "__defaults__")}
    assert before == after
    assert safe_pickle._NdarrayStub.__setstate__.__name__ == "__setstate__"


def test_benign_pickles_still_load():
    import collections

    import numpy as np
    obj = {"epoch": 3, "names": ["a", "b"], "od": collections.OrderedDict(x=1), "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
           "scalar": np.float64(2.5), "set": {1, 2}, "bytes": b"\x00\xff", "shared": None}
    obj["shared"] = [obj["names"], obj["names"]]
    for proto in range(0, 6):
        back = restricted_loads(pickle.dumps(obj, protocol=proto))
        assert back["epoch"] == 3 and back["od"] == {"x": 1} and back["set"] == {1, 2} and back["bytes"] == b"\x00\xff"
        assert np.array_equal(back["arr"], obj["arr"]) and back["scalar"] == 2.5
        assert back["shared"][0] is back["shared"][1]


_RESOURCE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    import corpus
    from hubfmt.codecs.safe_pickle import restricted_loads
    from hubfmt.errors import HubfmtError
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))      # 1 GiB of address space in all
    def hang(*_): raise TimeoutError("more than 20 s")
    signal.signal(signal.SIGALRM, hang)
    out = {}
    for name, data in corpus.resource_exhaustion().items():
        signal.alarm(20)
        try:
            restricted_loads(data, opaque=True)
            out[name] = "loaded"
        except HubfmtError as e:
            out[name] = "refused: " + str(e)[:80]
        except BaseException as e:
            out[name] = "UNEXPECTED " + type(e).__name__ + ": " + str(e)[:80]
        signal.alarm(0)
    print(json.dumps(out))
""")


def test_resource_exhaustion_pickles_stay_small_and_quick():
    """Memo-index, 1 TB length fields, shared-reference bombs, deep nesting: each either loads
    (harmlessly) or is refused, inside 1 GiB of address space and 20 s each."""
    proc = subprocess.run([sys.executable, "-c", _RESOURCE_CHILD, str(REPO / "tests" / "hostile")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert set(results) == set(corpus.resource_exhaustion())
    bad = {k: v for k, v in results.items() if v.startswith("UNEXPECTED")}
    assert not bad
    assert results["bytearray-of-1tb"].startswith("refused") and results["deep-nesting-100k"].startswith("refused")


# ---- the readers that meet pickles -----------------------------------------------------------

def _oneflow_dirs(hostile: bytes) -> dict[str, dict[str, bytes]]:
    benign = pickle.dumps({"protocol_version": 1, "data": {}}, protocol=3)
    return {
        "oneflow-pickled-data": {"pickled_data": hostile},
        "oneflow-extra-sidecar": {"pickled_data": benign, "hubfmt_extra/pickled_data": hostile},
        "oneflow-tensor-folder-pickle": {"pickled_data": hostile, "tensor_0/out": b"\0" * 4, "tensor_0/meta": b""},
    }


def _containers(fw: str, hostile: bytes) -> dict[str, dict[str, bytes] | bytes]:
    if fw == "torch":
        return {**corpus.torch_zips(hostile), **corpus.torch_legacy(hostile)}
    if fw == "oneflow":
        return _oneflow_dirs(hostile)
    return {}


PICKLE_READERS = [fw for fw in ("torch", "oneflow") if fw in registry.available()]
PAYLOADS = {k: v for k, v in CODE.items() if k.startswith(("reduce-", "inst-", "obj-", "getattr", "nested-pickle-", "build-"))}


def _materialise(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, dict):
        for rel, data in content.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
    else:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("fw", PICKLE_READERS)
def test_every_pickle_reader_refuses_every_payload(tmp_path, fw):
    import hubfmt
    tried, refused = 0, set()
    for pname, payload in PAYLOADS.items():
        for cname, content in _containers(fw, payload).items():
            path = _materialise(tmp_path, f"{pname}-{cname}", content)
            for framework in (fw, None):        # named, and found by sniffing
                try:
                    ckpt = hubfmt.read(path, framework=framework)
                    for name in ckpt:           # a reader may defer work to the tensors
                        ckpt.tensor(name)
                except hubfmt.HubfmtError as e:
                    if "refused" in str(e):
                        refused.add(pname)
                tried += 1
                assert not os.path.exists(CANARY), f"{pname} in {cname} ran through the {fw} reader"
    assert tried >= len(PAYLOADS) * 2
    # Every payload reached the unpickler in some container and was refused there (not merely
    # rejected earlier for a structural reason).
    assert refused == set(PAYLOADS), set(PAYLOADS) - refused


@pytest.mark.parametrize("fw", PICKLE_READERS)
def test_cli_refuses_hostile_checkpoints_with_one_line(tmp_path, fw):
    for cname, content in _containers(fw, CODE["reduce-os-system-p2"]).items():
        path = _materialise(tmp_path, cname, content)
        out = tmp_path / f"{cname}.safetensors"
        r = run_cli("convert", path, out, "--from", fw)
        assert r.returncode == 2, (cname, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not out.exists() and not os.path.exists(CANARY)


def test_corpus_size():
    """The numbers the report quotes (printed with -s)."""
    n_fw = sum(len(_containers(fw, b"x")) for fw in PICKLE_READERS)
    print(f"\nhostile corpus: {len(CODE)} code/state payloads x 2 modes, {len(corpus.resource_exhaustion())} resource bombs, "
          f"{len(PAYLOADS)} payloads x {n_fw} containers via readers {PICKLE_READERS}")
    assert len(CODE) >= 60
