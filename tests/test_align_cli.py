"""`hubfmt align` and `hubfmt convert --template/--rules` on hub files: exit statuses, tables, no output on failure."""
from __future__ import annotations

import json

import numpy as np

from hubfmt.io import hubfile
from hubfmt.alignment.rules import load_rules

from align_cases import ambiguous_pair, dpn_pair, efficientnet_pair
from conftest import run_cli


def _files(tmp_path, pair):
    src, tmpl, *rest = pair
    s, t = tmp_path / "src.safetensors", tmp_path / "template.safetensors"
    hubfile.write(src, s)
    hubfile.write(tmpl, t)
    return s, t, (rest[0] if rest else None)


def _failed_unmatched(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hubfmt: error: cannot align"), r.stderr
    for n in needles:
        assert n in r.stdout, r.stdout


def test_convert_with_a_template_renames_and_reshapes(tmp_path):
    s, t, expected = _files(tmp_path, dpn_pair())
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", s, out, "--template", t, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    src, got = hubfile.read(s), hubfile.read(out)
    assert list(got) == list(hubfile.read(t))
    for a, b in expected.items():
        np.testing.assert_array_equal(src.tensor(a).reshape(got[b].tensor.shape), got.tensor(b))
    assert got["classifier.weight"].info.kind == "linear"
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["counts"]["renamed"] == 8 and rep["counts"]["reshaped"] == 1 and rep["counts"]["created"] == 1
    assert "renamed" in r.stdout and "reshaped" in r.stdout


def test_align_shows_table_saves_rules_and_the_rules_convert(tmp_path):
    s, t, expected = _files(tmp_path, efficientnet_pair())
    rules = tmp_path / "effnet.toml"
    r = run_cli("align", s, t, "--save-rules", rules)
    assert r.returncode == 0, r.stderr
    assert "_blocks.0._bn1.weight" in r.stdout and "0.dw_bn.weight" in r.stdout and "no problems" in r.stdout
    assert rules.read_text().startswith("# hubfmt align") and len(load_rules(rules).rules) == 29
    assert run_cli("align", s, t, "--save-rules", rules).returncode == 2          # exists: refuse
    out = tmp_path / "renamed.safetensors"
    r = run_cli("convert", s, out, "--rules", rules, "-q")
    assert r.returncode == 0, r.stderr
    got = hubfile.read(out)
    for b in expected.values():
        assert b in got, b
    j = json.loads(run_cli("align", s, t, "--json").stdout)
    assert j["problems"] == [] and len(j["layers"]) == 29


def test_ambiguous_alignment_fails_with_exit_1_and_no_output(tmp_path):
    s, t, _ = _files(tmp_path, ambiguous_pair())
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", s, out, "--template", t, "--allow-missing", "--allow-unexpected")
    _failed_unmatched(r, "ambiguous (2):", "candidates body")
    assert "2 ambiguous" in r.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    r = run_cli("align", s, t)
    assert r.returncode == 1 and "ambiguous (2):" in r.stdout and r.stderr == ""


def test_width_mismatch_prints_the_mismatch_table(tmp_path):
    s, t, _ = _files(tmp_path, efficientnet_pair(target_widths=((8, 8), (8, 8), (8, 24), (24, 24))))
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", s, out, "--template", t)
    _failed_unmatched(r, "mismatch (", "_fc.weight", "-> classifier.weight: source [10, 64] vs template [10, 96]")
    assert not out.exists()


def test_missing_is_an_error_unless_allowed_and_is_then_listed(tmp_path):
    src, tmpl, _ = efficientnet_pair()
    del tmpl.entries["classifier.weight"], tmpl.entries["classifier.bias"]
    s, t, _ = _files(tmp_path, (tmpl, src))        # the template has a classifier the source lacks
    out = tmp_path / "out.safetensors"
    _failed_unmatched(run_cli("convert", s, out, "--template", t), "missing (2):", "_fc.weight")
    assert not out.exists()
    r = run_cli("convert", s, out, "--template", t, "--allow-missing")
    assert r.returncode == 0, r.stderr
    assert "missing at align (2):" in r.stdout and "_fc.weight" in r.stdout
    assert "_fc.weight" not in hubfile.read(out)


def test_dry_run_writes_nothing(tmp_path):
    s, t, _ = _files(tmp_path, dpn_pair())
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", s, out, "--template", t, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "fc6.weight" in r.stdout and "conv1x1" in r.stdout and not out.exists()
    rules = tmp_path / "r.toml"
    rules.write_text("[[rule]]\nglob = 'fc6.*'\nreplace = 'head.\\1'\n")
    r = run_cli("convert", s, out, "--rules", rules, "--dry-run")
    assert r.returncode == 0 and "rule 1: glob fc6.*" in r.stdout and not out.exists()
    r = run_cli("convert", s, out, "--dry-run")
    assert r.returncode == 2 and "--rules and/or --template" in r.stderr


def test_listing_template_and_bad_rules_file(tmp_path):
    s, t, expected = _files(tmp_path, dpn_pair())
    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(f"{n} {list(e.tensor.shape)}" for n, e in hubfile.read(t).entries.items()))
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", s, out, "--template", listing, "-q")
    assert r.returncode == 0, r.stderr
    assert list(hubfile.read(out)) == list(hubfile.read(t))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\nglob = 'a'\n")
    r = run_cli("convert", s, tmp_path / "o2.safetensors", "--rules", bad)
    assert r.returncode == 2 and str(bad) in r.stderr and "'replace'" in r.stderr
    assert not (tmp_path / "o2.safetensors").exists()


def test_dry_run_with_problems_shows_the_whole_table_and_exits_1(tmp_path):
    s, t, _ = _files(tmp_path, ambiguous_pair())
    rules = tmp_path / "r.toml"
    rules.write_text("[[rule]]\nglob = 'stem.*'\nreplace = 'stem.\\1'\n")
    r = run_cli("convert", s, tmp_path / "out.safetensors", "--template", t, "--rules", rules, "--dry-run")
    assert r.returncode == 1 and r.stderr == ""
    assert "rule 1: glob stem.*" in r.stdout and "stem.weight  stem.weight" in r.stdout and "ambiguous (2):" in r.stdout
    assert not (tmp_path / "out.safetensors").exists()
