"""spec/: the examples validate, the golden file is what the writer writes today."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import hubfmt
from hubfmt.codecs import safetensors as st_codec
from hubfmt.io import hubfile
from hubfmt.format import manifest
from hubfmt.errors import VersionError

from conftest import REPO
from helpers import attention_example, flatten_example, small_cnn

SPEC = REPO / "spec"
EXAMPLES = SPEC / "examples"


def test_manifest_example_in_the_spec_parses():
    text = (SPEC / "hubfmt-v1.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    meta = {manifest.KEY_VERSION: manifest.FORMAT_VERSION, manifest.KEY_MANIFEST: block}
    infos, layers, source, _ = manifest.parse(meta, "spec")
    assert infos["features.0.weight"].original_dtype == "float16"
    assert layers["features.1"].attrs["momentum"] == 0.01
    assert source.framework == "torch"


def test_spec_version_matches_the_library():
    text = (SPEC / "hubfmt-v1.md").read_text()
    assert f"version {manifest.FORMAT_VERSION}" in text.splitlines()[0]
    assert re.search(rf"^- {re.escape(manifest.FORMAT_VERSION)} \(", text, re.M), "changelog line for this version"


@pytest.mark.parametrize("name", ["small-cnn.safetensors", "tied.safetensors", "flatten-dense.safetensors",
                                  "attention.safetensors"])
def test_examples_conform(name):
    assert hubfmt.validate(EXAMPLES / name) == []


def test_golden_file_is_what_the_writer_writes(tmp_path):
    out = tmp_path / "small-cnn.safetensors"
    hubfile.write(small_cnn(half=True), out)
    assert out.read_bytes() == (EXAMPLES / "small-cnn.safetensors").read_bytes()
    meta = json.loads((EXAMPLES / "small-cnn.metadata.json").read_text())
    header, _, _ = st_codec.read_header(str(out))
    assert json.loads(header["__metadata__"]["hubfmt.manifest"]) == meta["hubfmt.manifest"]


def test_golden_values():
    ckpt = hubfile.read(EXAMPLES / "small-cnn.safetensors")
    ref = small_cnn(half=True)
    for name in ref:
        assert np.array_equal(ckpt.tensor(name).astype(ref.tensor(name).dtype), ref.tensor(name))


def test_future_major_version_is_refused():
    with pytest.raises(VersionError, match="2.0.*1.0"):
        hubfile.read(EXAMPLES / "future-major.safetensors")


def test_flatten_example_is_channels_first(tmp_path):
    """spec 3.5: input c*H*W + h*W + w of the Dense is channel c at (h, w); the Keras kernel had it
    at row (h*W + w)*C + c. The example file is what the writer writes today."""
    ckpt, kernel = flatten_example()
    out = tmp_path / "f.safetensors"
    hubfile.write(ckpt, out)
    assert out.read_bytes() == (EXAMPLES / "flatten-dense.safetensors").read_bytes()
    back = hubfile.read(EXAMPLES / "flatten-dense.safetensors")
    assert back.layers["fc"].attrs == {"flatten": [4, 4, 3], "flatten_source": "HWC"}
    w = back.array("fc.weight")
    C, H, W = 4, 4, 3
    for c in range(C):
        for h in range(H):
            for x in range(W):
                assert np.array_equal(w[:, c * H * W + h * W + x], kernel[(h * W + x) * C + c])


def test_attention_example_is_head_major_and_q_k_v(tmp_path):
    """spec 3.6: a per-head query kernel [d, H, hd] is weight [H*hd, d] whose row h*hd + j is head
    h's feature j; the output kernel [H, hd, d] is weight [d, H*hd]; a fused projection's rows are
    q, then k, then v. The example file is what the writer writes today."""
    ckpt, natives = attention_example()
    out = tmp_path / "a.safetensors"
    hubfile.write(ckpt, out)
    assert out.read_bytes() == (EXAMPLES / "attention.safetensors").read_bytes()
    back = hubfile.read(EXAMPLES / "attention.safetensors")
    q, o = back.array("mha.query_dense.weight"), back.array("mha.output_dense.weight")
    kq, ko = natives["mha.query_dense"], natives["mha.output_dense"]
    heads, hd = kq.shape[1], kq.shape[2]
    for h in range(heads):
        for j in range(hd):
            assert np.array_equal(q[h * hd + j], kq[:, h, j])
            assert np.array_equal(o[:, h * hd + j], ko[h, j, :])
    assert np.array_equal(back.array("mha.query_dense.bias"), natives["mha.query_dense.bias"].reshape(-1))
    assert back["mha.query_dense.weight"].info.original_layout == "IHD"
    assert back.layers["mha.output_dense"].attrs == {"heads": 2}
    assert back.layers["attn.qkv"].attrs == {"fused": ["q", "k", "v"]}
    d = q.shape[1]
    fused = back.array("attn.qkv.weight")
    for i, part in enumerate("qkv"):
        assert np.array_equal(fused[i * d:(i + 1) * d], natives[part])

