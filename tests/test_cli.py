"""The command line on hub files: exit statuses, one-line errors, no partial output."""
from __future__ import annotations

import json

from hubfmt.io import hubfile

from conftest import run_cli
from helpers import small_cnn


def _hub(tmp_path, name="m.safetensors", **kw):
    p = tmp_path / name
    hubfile.write(small_cnn(**kw), p)
    return p


def test_inspect_lists_tensors_and_manifest(tmp_path):
    p = _hub(tmp_path, half=True)
    r = run_cli("inspect", p)
    assert r.returncode == 0, r.stderr
    assert "features.0.weight" in r.stdout and "conv2d" in r.stdout and "float16" in r.stdout
    assert '"eps": 1e-05' in r.stdout and "non-tensor content: epoch, names" in r.stdout
    j = json.loads(run_cli("inspect", p, "--json").stdout)
    assert [t["name"] for t in j["tensors"]][:2] == ["features.0.weight", "features.0.bias"]


def test_validate_and_diff(tmp_path):
    a = _hub(tmp_path, "a.safetensors")
    b = _hub(tmp_path, "b.safetensors")
    c = _hub(tmp_path, "c.safetensors", seed=1)
    assert run_cli("validate", a).returncode == 0
    same = run_cli("diff", a, b)
    assert same.returncode == 0 and "EQUAL" in same.stdout
    differ = run_cli("diff", a, c, "--json")
    assert differ.returncode == 1
    j = json.loads(differ.stdout)
    assert not j["equal"] and all(t["max_abs"] > 0 for t in j["tensors"] if t["name"] != "features.1.num_batches_tracked")


def test_convert_hub_to_hub_keeps_dtype_on_request(tmp_path):
    a = _hub(tmp_path, "a.safetensors")
    r = run_cli("convert", a, tmp_path / "k.safetensors", "--keep-dtype", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["tensors_out"] == 9 and rep["counts"]["matched"] >= 9


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubfmt: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert str(n) in lines[0]


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.safetensors"
    _one_line_error(run_cli("convert", missing, tmp_path / "o.safetensors"), missing, "no such file")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":")
    _one_line_error(run_cli("inspect", broken, "--from", "hub"), broken)
    assert not (tmp_path / "o.safetensors").exists()


def test_output_rules(tmp_path):
    a = _hub(tmp_path, "a.safetensors")
    _one_line_error(run_cli("convert", a, a), "destination is the source")
    existing = _hub(tmp_path, "e.safetensors")
    before = existing.read_bytes()
    _one_line_error(run_cli("convert", a, existing), existing, "exists")
    assert existing.read_bytes() == before
    assert run_cli("convert", a, existing, "--overwrite", "-q").returncode == 0
    _one_line_error(run_cli("convert", a, tmp_path / "out.unknownext"), "--to")


def test_formats_lists_every_framework():
    r = run_cli("formats")
    assert r.returncode == 0, r.stderr
    for fw in ("hub", "torch", "tensorflow", "mxnet", "mindspore", "oneflow"):
        assert fw in r.stdout


def test_adapter_options_pass_through_and_unknown_ones_are_refused(tmp_path):
    from hubfmt import read

    a = _hub(tmp_path, "a.safetensors")
    out = tmp_path / "t.pth"
    r = run_cli("convert", a, out, "-W", "layout=training", "-W", "restore_dtype=false", "-q")
    assert r.returncode == 0, r.stderr
    back = read(out)
    assert back.extra.get("epoch") == 3                     # training layout keeps non-tensor content
    assert back["features.0.weight"].tensor.dtype == "float32"
    _one_line_error(run_cli("convert", a, tmp_path / "u.pth", "-W", "colour=blue"), "torch-zip writer", "colour", "layout")
    assert not (tmp_path / "u.pth").exists()
    assert run_cli("convert", a, tmp_path / "v.pth", "-W", "nonsense").returncode == 2
