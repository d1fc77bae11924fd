"""Hostile and broken torch files: refused with one line naming the file, nothing run, nothing
written. The canary file proves a payload never ran."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import hubfmt
from conftest import require, run_cli
from hubfmt.adapters import torch as pt
from hubfmt.adapters.torch import legacy
from hubfmt.adapters.torch.pickler import TensorRecord, emit
from hubfmt.format.checkpoint import Checkpoint
from hubfmt.format.tensor import LazyTensor


def _zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _payloads(canary: str) -> dict[str, bytes]:
    cmd = f"touch {canary}".encode()
    code = f"open({canary!r}, 'w').write('ran')".encode()
    return {
        "os.system": b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.",
        "posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "builtins.eval": b"cbuiltins\neval\n(S\"" + code + b"\"\ntR.",
        "builtins.exec": b"c__builtin__\nexec\n(S\"" + code + b"\"\ntR.",
        "builtins.getattr": (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'"
                             + cmd + b"'\ntR."),
        "subprocess.call": b"csubprocess\ncall\n((S'touch'\nS'" + canary.encode() + b"'\nltR.",
    }


@pytest.mark.parametrize("variant", list(_payloads("x")))
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, variant, container):
    canary = tmp_path / "canary"
    payload = _payloads(str(canary))[variant]
    path = tmp_path / "evil.pth"
    if container == "zip":
        _zip(path, {"evil/data.pkl": payload, "evil/byteorder": b"little"})
    else:
        head = b"".join(__import__("pickle").dumps(v, protocol=2) for v in
                        (legacy.MAGIC, legacy.PROTOCOL, {"little_endian": True, "protocol_version": 1001}))
        path.write_bytes(head + payload)
    with pytest.raises(hubfmt.UnsafePickleError) as e:
        pt.read(path)
    assert str(path) in str(e.value) and "refused" in str(e.value)
    assert not canary.exists()
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", path, out, "--from", "torch")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr
    assert not canary.exists() and not out.exists()


def test_payload_in_a_real_torch_save_file_is_real_and_refused(tmp_path):
    """The canary mechanism works (torch.load with weights_only=False runs the payload); our
    reader refuses the same file before anything runs."""
    torch = require("torch")
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {canary}",)

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(3), "note": Evil()}, path)
    with pytest.raises(hubfmt.UnsafePickleError):
        pt.read(path)
    assert not canary.exists()
    torch.load(path, weights_only=False)          # the oracle: this one does run it
    assert canary.exists()


def _good_file(tmp_path) -> str:
    ck = Checkpoint()
    ck.add("fc.weight", LazyTensor.from_array(np.arange(12, dtype=np.float32).reshape(3, 4)))
    ck.add("fc.bias", LazyTensor.from_array(np.ones(3, dtype=np.float32)))
    path = tmp_path / "good.pth"
    pt.write(ck, path)
    return path


def _storage_short(tmp_path):
    p = tmp_path / "short.pth"
    rec = TensorRecord("0", "float32", 6, (2, 3), (3, 1))
    _zip(p, {"m/data.pkl": emit({"w": rec}), "m/data/0": b"\0" * 12})
    return p


def _view_past_storage(tmp_path):
    p = tmp_path / "view.pth"
    rec = TensorRecord("0", "float32", 2, (4,), (1,))
    _zip(p, {"m/data.pkl": emit({"w": rec}), "m/data/0": b"\0" * 8})
    return p


def _missing_storage(tmp_path):
    p = tmp_path / "nostorage.pth"
    _zip(p, {"m/data.pkl": emit({"w": TensorRecord("0", "float32", 2, (2,), (1,))})})
    return p


def _truncated_zip(tmp_path):
    good = _good_file(tmp_path).read_bytes()
    p = tmp_path / "truncated.pth"
    p.write_bytes(good[: len(good) // 2])
    return p


def _truncated_member(tmp_path):
    # The central directory claims more bytes for a storage than the file holds.
    good = bytearray(_good_file(tmp_path).read_bytes())
    name = b"good/data/0"
    entry = good.index(name, good.index(b"PK\x01\x02")) - 46
    assert good[entry:entry + 4] == b"PK\x01\x02"
    good[entry + 20:entry + 28] = (10**6).to_bytes(4, "little") * 2
    p = tmp_path / "hole.pth"
    p.write_bytes(bytes(good))
    return p


def _not_torch_zip(tmp_path):
    p = tmp_path / "notes.pth"
    _zip(p, {"notes.txt": b"hello"})
    return p


def _corrupt_pickle(tmp_path):
    p = tmp_path / "corrupt.pth"
    _zip(p, {"m/data.pkl": b"\x80\x02}q\x00(X\x01\x00", "m/byteorder": b"little"})
    return p


def _truncated_legacy(tmp_path):
    torch = require("torch")
    p = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(100.0)}, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    return p


def _text_file(tmp_path):
    p = tmp_path / "model.pth"
    p.write_text("not a checkpoint at all\n")
    return p


BAD = {
    "storage shorter than claimed": (_storage_short, "shorter than"),
    "view past its storage": (_view_past_storage, "past its storage"),
    "storage member missing": (_missing_storage, "missing from the archive"),
    "truncated zip": (_truncated_zip, "zip"),
    "truncated member": (_truncated_member, "past the end of the file"),
    "zip that is not a torch checkpoint": (_not_torch_zip, "not a torch checkpoint"),
    "corrupt pickle": (_corrupt_pickle, "pickle"),
    "truncated legacy file": (_truncated_legacy, "truncated"),
    "text file": (_text_file, "not a torch checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_format_error_naming_the_file(tmp_path, case):
    make, words = BAD[case]
    path = make(tmp_path)
    with pytest.raises(hubfmt.FormatError) as e:
        ck = pt.read(path)
        for entry in ck.entries.values():          # lazy: damage may show only when data is read
            entry.tensor.load()
    msg = str(e.value)
    assert str(path) in msg and words in msg and "\n" not in msg


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_input_exit_2_no_traceback_no_output(tmp_path, case):
    make, _ = BAD[case]
    path = make(tmp_path)
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    r = run_cli("convert", path, out, "--from", "torch")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert str(path) in r.stderr
    assert os.listdir(out.parent) == []


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(hubfmt.FormatError, match="no such file"):
        pt.read(path)
    r = run_cli("convert", path, tmp_path / "x.safetensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(path) in r.stderr


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    src = _good_file(tmp_path)
    dst = tmp_path / "dst.pth"
    dst.write_bytes(b"keep me")
    with pytest.raises(hubfmt.OutputError):
        pt.write(pt.read(src), dst)
    assert dst.read_bytes() == b"keep me"
    pt.write(pt.read(src), dst, overwrite=True)
    assert pt.sniff(dst) == "torch-zip"
    assert [p.name for p in tmp_path.iterdir() if "hubfmt-tmp" in p.name] == []


def test_shared_reference_bomb_is_refused_not_expanded(tmp_path):
    """A few hundred bytes of pickle sharing one list 2**40 times over: refused, not walked."""
    torch = require("torch")
    bomb = [0]
    for _ in range(40):
        bomb = [bomb, bomb]
    path = tmp_path / "bomb.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "notes": bomb}, path)
    assert path.stat().st_size < 10_000
    with pytest.raises(hubfmt.FormatError, match="more than"):
        pt.read(path)
