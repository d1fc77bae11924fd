"""Attacks made by a public tool, on a public zoo model (#13).

fickling (Trail of Bits' pickle attack and analysis tool, pinned in requirements/main.txt) injects
payloads into torchvision's ResNet-18, saved both as a state dict and as a whole pickled module,
with every injection it offers: its PyTorch wrapper's "insertion" (a call spliced into data.pkl)
and "combination" (the model wrapped in a module whose __reduce__ runs the payload), and its
Pickled API's exec / eval / os.system / function-on-the-unpickled-object injections, run first
or last, and a pickle + zip polyglot. Each payload writes a canary file.

Each sample is first shown to be live: `torch.load(weights_only=False)`, in a child process, runs
it (the canary appears). Then hubfmt is run on it the ways a user would (convert, inspect, the
library's read): it must refuse with one line naming the file, write nothing, and the canary must
not appear.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import pytest

import hubfmt
from hubfmt.errors import FormatError

from conftest import CLEAN_ENV, require, run_cli


@pytest.fixture(scope="module")
def fickling():
    require("fickling")
    from fickling import fickle, pytorch
    return fickle, pytorch


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """torchvision's ResNet-18 (random weights: no download), as a state dict and a whole module."""
    torch = require("torch")
    import zoo

    tv = zoo.import_torchvision()
    d = tmp_path_factory.mktemp("resnet")
    model = tv.models.resnet18(weights=None).eval()
    torch.save(model.state_dict(), d / "state_dict.pth")
    torch.save(model, d / "module.pth")
    return d


def _payload(canary) -> str:
    return f"open({str(canary)!r}, 'w').write('pwned')"


def _inject_with_pickled(fickle, src, dst, how: str, canary) -> None:
    """Rewrite data.pkl of the torch zip `src` with one of fickling's Pickled injections."""
    with zipfile.ZipFile(src) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        p = fickle.Pickled.load(z.read(pkl))
    code = _payload(canary)
    if how == "exec":
        p.insert_python_exec(code)
    elif how == "eval-last":
        p.insert_python_eval(code, run_first=False)
    elif how == "eval-as-result":
        p.insert_python_eval(code, use_output_as_unpickle_result=True)
    elif how == "os-system":
        p.insert_python(f"touch {canary}", module="os", attr="system")
    elif how == "call-on-object":
        p.insert_function_call_on_unpickled_object(
            f"def tamper(obj):\n    {code}\n    return obj")
    else:
        raise AssertionError(how)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, p.dumps() if info.filename == pkl else zin.read(info.filename))


INJECTIONS = ["wrapper-insertion", "wrapper-combination", "exec", "eval-last", "eval-as-result", "os-system",
              "call-on-object", "pickle-zip-polyglot"]


def _make(fickle, pytorch, src, dst, how, canary) -> None:
    if how.startswith("wrapper-"):
        pytorch.PyTorchModelWrapper(src, force=True).inject_payload(
            _payload(canary), dst, injection=how.split("-", 1)[1])
    elif how == "pickle-zip-polyglot":
        # A hostile bare pickle with the benign torch zip appended: zipfile finds the archive by its
        # end record, torch.load looks at the first bytes and unpickles the payload.
        p = fickle.Pickled.load(pickle.dumps({"epoch": 1}))
        p.insert_python_exec(_payload(canary))
        dst.write_bytes(p.dumps() + src.read_bytes())
    else:
        _inject_with_pickled(fickle, src, dst, how, canary)


def _torch_load_runs_it(path, canary) -> None:
    # (torchvision imported first, through tests/zoo.py, so a pickled whole module can resolve)
    script = ("import sys, torch\nsys.path.insert(0, sys.argv[2])\nimport zoo\nzoo.import_torchvision()\n"
              "try:\n    torch.load(sys.argv[1], weights_only=False)\nexcept Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", script, str(path), os.path.dirname(__file__)], env=CLEAN_ENV,
                   capture_output=True, timeout=600)
    assert canary.exists(), f"the sample {path.name} is not live: torch.load did not run its payload"
    canary.unlink()


@pytest.mark.parametrize("how", INJECTIONS)
@pytest.mark.parametrize("saved", ["state_dict", "module"])
def test_fickling_injections_are_refused(fickling, resnet, tmp_path, saved, how):
    fickle, pytorch = fickling
    canary = tmp_path / "canary"
    evil = tmp_path / f"{saved}-{how}.pth"
    _make(fickle, pytorch, resnet / f"{saved}.pth", evil, how, canary)
    _torch_load_runs_it(evil, canary)
    before = evil.read_bytes()

    for args in (("convert", evil, tmp_path / "out.safetensors"), ("inspect", evil, "--from", "torch")):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hubfmt: error: ") and evil.name in lines[0], r.stderr
        assert "Traceback" not in r.stderr
        assert not canary.exists(), f"{how}: the payload ran"
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(FormatError):
        hubfmt.read(evil, framework="torch")
    assert not canary.exists()
    assert evil.read_bytes() == before                      # the input is never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == [evil.name]


def test_the_untouched_models_convert(resnet, tmp_path):
    # The same files without the injections convert: the refusals above are about the payloads.
    for saved in ("state_dict", "module"):
        r = run_cli("convert", resnet / f"{saved}.pth", tmp_path / f"{saved}.safetensors", "-q")
        assert r.returncode == 0, r.stderr
        assert len(hubfmt.read(tmp_path / f"{saved}.safetensors")) == 122     # resnet18's 122 tensors


def test_fickling_sees_the_injections(fickling, resnet, tmp_path):
    # The attack tool's own analysis agrees the samples are malicious (and the clean file is not):
    # the corpus is what its authors consider an attack, not a strawman.
    fickle, pytorch = fickling
    from fickling import analysis

    canary = tmp_path / "canary"
    evil = tmp_path / "evil.pth"
    _make(fickle, pytorch, resnet / "state_dict.pth", evil, "exec", canary)
    with zipfile.ZipFile(evil) as z:
        p = fickle.Pickled.load(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))
    assert analysis.check_safety(p).severity > analysis.Severity.LIKELY_SAFE
    assert not os.path.exists(canary)
