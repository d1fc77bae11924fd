"""What a person reads (#17): reports whose numbers add up, renames in one direction, the JSON
report's schema and checksums, flags instead of Python keywords, inspect's summary, diff that
knows what a format cannot hold, and a CLI that takes no abbreviations."""
from __future__ import annotations

import json

import google_crc32c
import numpy as np
import pytest

import hubfmt
from hubfmt.io import hubfile

from conftest import run_cli
from helpers import small_cnn


@pytest.fixture
def hub(tmp_path):
    p = tmp_path / "m.safetensors"
    hubfile.write(small_cnn(), p)
    return p


def _stage_sums_hold(report: dict) -> None:
    assert report["stages"], report
    for s in report["stages"]:
        if s["tensors_in"] is not None:
            assert s["kept"] + s["renamed"] + s["dropped"] == s["tensors_in"], s
        assert s["kept"] + s["renamed"] + s["created"] == s["tensors_out"], s
    assert report["stages"][-1]["tensors_out"] == report["tensors_out"]


def test_json_report_adds_up_names_old_to_new_and_checksums_each_output_tensor(tmp_path, hub):
    out, rep = tmp_path / "m.params", tmp_path / "r.json"
    r = run_cli("convert", hub, out, "--report", rep)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["schema"] == "hubfmt-report/1" and report["hubfmt_version"] == hubfmt.__version__
    _stage_sums_hold(report)
    write = report["stages"][-1]
    assert (write["stage"], write["tensors_in"], write["tensors_out"], write["dropped"]) == ("write", 9, 8, 1)
    # MXNet names BatchNorm's scale gamma: the rename is old (canonical) -> new (MXNet), as a field.
    renamed = [e for e in report["events"] if e["action"] == "renamed"]
    assert renamed and all(e["name"] and e["to"] for e in renamed)
    assert {"name": "features.1.weight", "to": "features.1.gamma"}.items() <= next(
        e for e in renamed if e["name"] == "features.1.weight").items()
    # The end-to-end mapping: source name -> destination name, with a CRC-32C of the canonical
    # bytes, which equals the CRC-32C of the same tensor read from the source hub file.
    rows = {m["source"]: m for m in report["mapping"]}
    assert rows["features.1.weight"]["destination"] == "features.1.gamma"
    src = hubfmt.read(hub)
    for name in ("features.0.weight", "features.1.weight", "classifier.bias"):
        want = f"{google_crc32c.value(np.ascontiguousarray(src.tensor(name)).tobytes()):08x}"
        assert rows[name]["canonical_crc32c"] == want, name
    dropped = rows["features.1.num_batches_tracked"]
    assert dropped["destination"] is None and "step count" in dropped["dropped"] and "canonical_crc32c" not in dropped


def test_text_report_has_one_line_per_stage_and_says_what_went_where(tmp_path, hub):
    r = run_cli("convert", hub, tmp_path / "m.params")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("(mxnet): 8 tensors written (1.1 KiB), from 9 read"), lines[0]
    assert "  read   m.safetensors: 9 tensors = 9 kept" in lines
    assert "  write  m.params: 9 -> 8 tensors = 6 kept + 2 renamed + 1 dropped" in lines, lines
    assert "renamed (2), source name -> destination name:" in lines
    assert any(x.split() == ["features.1.weight", "->", "features.1.gamma"] for x in lines)
    assert "dropped at write (1):" in lines


def test_template_alignment_is_its_own_stage_and_the_mapping_is_end_to_end(tmp_path, hub):
    params = tmp_path / "m.params"
    assert run_cli("convert", hub, params, "--quiet").returncode == 0
    template = tmp_path / "init.pth"
    assert run_cli("convert", hub, template, "--quiet").returncode == 0
    rep = tmp_path / "r.json"
    r = run_cli("convert", params, tmp_path / "back.pth", "--template", template, "--report", rep)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    _stage_sums_hold(report)
    assert [s["stage"] for s in report["stages"]] == ["read", "align", "write"]
    rows = {m["source"]: m for m in report["mapping"]}
    # The MXNet file's name -> the template's (torch) name, with the alignment's confidence.
    assert rows["features.1.gamma"]["destination"] == "features.1.weight"
    assert all(isinstance(m["transforms"], list) for m in report["mapping"])


def test_report_file_is_refused_before_converting_when_it_would_clobber(tmp_path, hub):
    out, rep = tmp_path / "m.params", tmp_path / "r.json"
    rep.write_text("keep me")
    r = run_cli("convert", hub, out, "--report", rep)
    assert r.returncode == 2 and "--overwrite" in r.stderr and str(rep) in r.stderr
    assert rep.read_text() == "keep me" and not out.exists()       # checked before converting
    before = hub.read_bytes()
    r = run_cli("convert", hub, out, "--report", hub, "--overwrite")
    assert r.returncode == 2 and "replace an input" in r.stderr
    assert hub.read_bytes() == before and not out.exists()


def test_messages_name_cli_flags_not_python_keywords(tmp_path, hub):
    r = run_cli("convert", hub, tmp_path / "m.params", "-W", "no_such=1")
    assert r.returncode == 2 and "-W no_such" in r.stderr and "=True" not in r.stderr
    r = run_cli("convert", hub, tmp_path / "m.pth", "--prefer-ema", "--quiet")
    assert r.returncode == 2 and "--prefer-ema" in r.stderr, r.stderr


def test_no_abbreviations_and_typos_get_usage_and_a_suggestion(tmp_path, hub):
    r = run_cli("convert", hub, tmp_path / "x.pth", "--overwr")
    assert r.returncode == 2 and "usage: hubfmt convert" in r.stderr and "did you mean --overwrite?" in r.stderr
    assert not (tmp_path / "x.pth").exists()
    r = run_cli("convrt", hub, tmp_path / "x.pth")
    assert r.returncode == 2 and "did you mean convert?" in r.stderr
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"hubfmt {hubfmt.__version__} (hub format ")
    r = run_cli("convert", "--help")
    assert "the checkpoint to read" in r.stdout and "--template" in r.stdout and "-R KEY=VALUE" in r.stdout


def test_output_suffix_of_another_format_and_read_only_suffixes_are_said(tmp_path, hub):
    r = run_cli("convert", hub, tmp_path / "x.ckpt", "--to", "torch")
    assert r.returncode == 0, r.stderr
    assert "the suffix means mindspore-ckpt" in r.stdout and hubfmt.read(tmp_path / "x.ckpt").source.format == "torch-zip"
    r = run_cli("convert", hub, tmp_path / "x.h5")
    assert r.returncode == 2 and "reads but does not write" in r.stderr and ".weights.h5" in r.stderr
    assert not (tmp_path / "x.h5").exists()


def test_a_directory_is_not_no_such_file(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    for fw in ("torch", "mxnet", "mindspore"):
        r = run_cli("inspect", d, "--from", fw)
        assert r.returncode == 2 and "is a directory" in r.stderr and "no such file" not in r.stderr, (fw, r.stderr)


def test_sharded_output_names_its_files(tmp_path, hub):
    r = run_cli("convert", hub, tmp_path / "s.safetensors", "--max-shard-size", "300B")
    assert r.returncode == 0, r.stderr
    assert "4 files: s-00001-of-00003.safetensors" in r.stdout and "s.safetensors.index.json" in r.stdout


def test_inspect_starts_with_a_summary_and_groups_by_module(tmp_path, hub):
    pth = tmp_path / "m.pth"
    assert run_cli("convert", hub, pth, "-W", "layout=training", "--quiet").returncode == 0
    r = run_cli("inspect", pth)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{pth}: torch-zip (torch adapter)"
    assert lines[1] == "  9 tensors, 293 parameters, 1.1 KiB"
    assert lines[2] == "  dtypes: float32 8, int64 1"
    assert lines[3] == "  layers: 1 conv2d, 1 batch_norm, 1 linear"
    assert lines[4] == "  non-tensor content: epoch, names"
    assert "features.1  [batch_norm]" in lines
    assert lines[lines.index("features.1  [batch_norm]") + 1].split() == ["features.1.weight", "8", "float32"]
    j = json.loads(run_cli("inspect", pth, "--json").stdout)
    assert (j["adapter"], j["format"], j["summary"]["parameters"]) == ("torch", "torch-zip", 293)
    assert j["summary"]["dtypes"] == {"float32": 8, "int64": 1} and j["summary"]["non_tensor"]["epoch"] == "3"


def test_diff_does_not_count_what_a_format_cannot_hold(tmp_path, hub):
    params = tmp_path / "m.params"
    assert run_cli("convert", hub, params, "--quiet").returncode == 0
    r = run_cli("diff", hub, params)
    assert r.returncode == 0, r.stdout
    assert "not compared: mxnet-params (m.params) has no place for num_batches_tracked" in r.stdout
    assert r.stdout.rstrip().endswith("EQUAL")
    r = run_cli("diff", hub, params, "--strict")
    assert r.returncode == 1 and "only in A   features.1.num_batches_tracked" in r.stdout
    r = run_cli("diff", hub, params, "--strict", "--ignore", "*.num_batches_tracked")
    assert r.returncode == 0 and "1 ignored (--ignore)" in r.stdout
    # A real difference is still one.
    other = tmp_path / "other.safetensors"
    hubfile.write(small_cnn(seed=1), other)
    r = run_cli("diff", other, params, "--json")
    j = json.loads(r.stdout)
    assert r.returncode == 1 and not j["equal"] and j["not_held"] == {
        "features.1.num_batches_tracked": "mxnet-params (m.params) has no place for num_batches_tracked"}
