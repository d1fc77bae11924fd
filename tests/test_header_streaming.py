"""Headers, manifests and shard indexes of many tensors, made and parsed entry by entry (#13, #18):
the text is exactly what json makes, the parse is what json.loads gives, and what is malformed
is refused as before. Framework-free."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hubfmt
from hubfmt import Checkpoint, LazyTensor, TensorInfo
from hubfmt.format import jsonstream
from hubfmt.codecs import safetensors as st_codec
from hubfmt.errors import FormatError
from hubfmt.format import dtypes, manifest
from hubfmt.io import hubfile
from hubfmt.report import MappingRows

names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")
texts = st.text(max_size=20)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=10)


def _reference_header(meta: dict, entries) -> bytes:
    """What header_bytes wrote before it was made entry by entry: json.dumps of the dicts."""
    header: dict = {"__metadata__": meta}
    pos = 0
    for name, dt, shape in entries:
        n = dtypes.itemsize(dt) * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtypes.to_safetensors(dt), "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(texts, texts, max_size=3),
       st.dictionaries(names, st.tuples(st.sampled_from(sorted(dtypes.DTYPES)),
                                        st.lists(st.integers(0, 4), max_size=3).map(tuple)), max_size=6))
def test_header_bytes_is_json_dumps_of_the_header(meta, tensors):
    entries = [(n, dt, shape) for n, (dt, shape) in tensors.items()]
    head, _ = st_codec.header_bytes(meta, entries)
    assert head == _reference_header(meta, entries)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(texts, texts | json_values, max_size=4), st.dictionaries(names, texts, max_size=5))
def test_index_text_is_json_dumps_with_indent_1(metadata, weight_map):
    assert hubfile.index_text(metadata, weight_map) == json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=1)


def _checkpoint(n: int = 5) -> Checkpoint:
    ckpt = Checkpoint()
    for i in range(n):
        info = TensorInfo(kind="linear", original_layout="IO" if i % 2 else "", original_shape=(i, 2) if i % 3 else None,
                          original_name=f"ü/{i}\"")
        ckpt.add(f"l{i}.weight", LazyTensor.from_array(np.full((2, 2), i, np.float32)), info)
    ckpt.add("tied.weight", LazyTensor.from_array(np.zeros((2, 2), np.float32)), TensorInfo(tied_to="l0.weight"))
    ckpt.layers["l1"] = hubfmt.LayerInfo("linear", {"heads": 2})
    ckpt.source.framework = "torch"
    return ckpt


def test_manifest_text_is_json_dumps_of_the_entries_and_streams_into_the_index():
    ckpt = _checkpoint(9000)            # more than one piece of 4096 entries
    want = json.dumps({"source": {"framework": "torch"}, "tensors": {n: e.info.to_json() for n, e in ckpt.entries.items()},
                       "layers": {"l1": {"kind": "linear", "attrs": {"heads": 2}}}}, separators=(",", ":"))
    deferred = manifest.ManifestText(ckpt)
    assert str(deferred) == want
    meta = {"a": "b", manifest.KEY_MANIFEST: deferred}
    assert hubfile.index_text(meta, {"x": "f"}) == json.dumps({"metadata": {"a": "b", manifest.KEY_MANIFEST: want},
                                                               "weight_map": {"x": "f"}}, indent=1)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(texts, json_values, max_size=4), st.dictionaries(texts, json_values, max_size=4),
       st.sampled_from(["", " ", "\n  "]))
def test_jsonstream_gives_what_json_loads_gives(doc, streamed, space):
    text = json.dumps({**doc, "big": streamed}, indent=len(space) or None)
    seen: list = []
    out = jsonstream.loads(text, {"big": lambda k, v: seen.append((k, v))})
    want = json.loads(text)
    assert list(seen) == list(want.pop("big").items())
    assert out.pop("big") is jsonstream.STREAMED and out == want
    seen.clear()
    assert jsonstream.members(text, lambda k, v: seen.append((k, v))) == {}
    assert seen == list(json.loads(text).items())


@pytest.mark.parametrize("text", ['{"big":{"a":1}', '{"big":{"a":1}} x', '{"big":{"a":}}', '{"a" 1}', '{"big":{"a":1,}}', ""])
def test_jsonstream_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonstream.loads(text, {"big": lambda k, v: None})


def _write_raw(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def test_a_header_naming_a_tensor_twice_is_refused(tmp_path):
    path = tmp_path / "dup.safetensors"
    entry = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    raw = ('{"x":' + entry + ',"x":' + entry + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0")
    with pytest.raises(FormatError, match="'x' appears twice"):
        hubfmt.read(path, framework="hub")


def test_empty_tensors_keep_the_header_order_beside_a_tensor_at_the_same_offset(tmp_path):
    path = tmp_path / "empty.safetensors"
    _write_raw(path, {"b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                      "c": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]},
                      "a": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]},
                      "d": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]},
                      "e": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]}}, b"\1\2\3")
    assert list(hubfmt.read(path, framework="hub")) == ["b", "c", "a", "d", "e"]
    _write_raw(path, {"b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                      "z": {"dtype": "U8", "shape": [0], "data_offsets": [1, 1]}}, b"\1\2")
    with pytest.raises(FormatError, match="'z': data_offsets overlap or leave a hole"):
        hubfmt.read(path, framework="hub")


def _sharded(tmp_path) -> str:
    path = str(tmp_path / "m.safetensors")
    hubfile.write(_checkpoint(6), path, max_shard_size=40)
    return path


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    path = _sharded(tmp_path)
    index = json.load(open(path + hubfile.INDEX_SUFFIX))
    first, second = sorted(set(index["weight_map"].values()))[:2]
    header, _, _ = st_codec.read_header(os.path.join(tmp_path, first))
    name = next(n for n in header if n != "__metadata__")
    moved = dict(st_codec.read_header(os.path.join(tmp_path, second))[0])
    meta = moved.pop("__metadata__")
    entries = [(name, "float32", (2, 2))] + [(n, "float32", tuple(d["shape"])) for n, d in moved.items()]
    head, size = st_codec.header_bytes(meta, entries)
    with open(os.path.join(tmp_path, second), "wb") as f:
        f.write(head + b"\0" * size)
    with pytest.raises(FormatError, match=f"{name!r} is stored in more than one shard"):
        hubfmt.read(path, framework="hub")


def test_a_manifest_entry_without_stored_data_is_refused(tmp_path):
    path = str(tmp_path / "m.safetensors")
    ckpt = _checkpoint(2)
    hubfile.write(ckpt, path)
    header, _, _ = st_codec.read_header(path)
    meta = header.pop("__metadata__")
    doc = json.loads(meta[manifest.KEY_MANIFEST])
    doc["tensors"]["ghost.weight"] = {"kind": "linear", "role": "weight"}
    meta[manifest.KEY_MANIFEST] = json.dumps(doc)
    head, size = st_codec.header_bytes(meta, [(n, "float32", tuple(d["shape"])) for n, d in header.items()])
    with open(path, "wb") as f:
        f.write(head + b"\0" * size)
    with pytest.raises(FormatError, match="manifest lists tensor 'ghost.weight', which the file does not store"):
        hubfmt.read(path, framework="hub")


@pytest.mark.parametrize("manifest_text", ['{"tensors":[1]}', '{"tensors":null}', '{"tensors":{"a":{}}',
                                           '{"tensors":{"a":3}}', "[]"])
def test_a_malformed_manifest_is_one_clear_error(manifest_text):
    with pytest.raises(FormatError, match="malformed hubfmt manifest"):
        manifest.parse({manifest.KEY_VERSION: "1.0", manifest.KEY_MANIFEST: manifest_text}, "m.safetensors")


def test_sharded_round_trip_and_the_mapping_rows_are_made_when_read(tmp_path):
    path = _sharded(tmp_path)
    out = str(tmp_path / "back.safetensors")
    report = hubfmt.convert(path, out)
    assert isinstance(report.mapping, MappingRows) and report.mapping._rows is None   # not made yet
    assert [r["canonical"] for r in report.mapping] == list(hubfmt.read(path))
    assert report.to_json()["mapping"] == list(report.mapping)
    back, want = hubfmt.read(out), hubfmt.read(path)
    assert list(back) == list(want)
    for n in want:
        assert back[n].info == want[n].info and np.array_equal(back.array(n), want.array(n))


_MALLOC = textwrap.dedent("""
    import sys
    from hubfmt.io import malloc
    if sys.argv[1] == "allowed":
        malloc.allow_reuse()
    print(malloc.for_tensors(1 << 20), malloc.for_tensors(64 << 20))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_only_when_allowed_and_a_tensor_needs_it():
    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _MALLOC, mode], capture_output=True, text=True, check=True).stdout.split()
    assert run("allowed") == ["False", "True"]        # 1 MiB: glibc reuses it anyway; 64 MiB: switched
    assert run("library") == ["False", "False"]       # a library caller's process is left alone


infos = st.builds(TensorInfo, kind=texts, role=texts, layer=texts, original_name=texts, original_dtype=texts,
                  original_layout=texts, original_shape=st.none() | st.lists(st.integers(0, 9), max_size=3).map(tuple),
                  tied_to=st.none() | texts)


@settings(max_examples=200, deadline=None)
@given(infos)
def test_a_manifest_entry_is_json_dumps_of_to_json(info):
    assert manifest._info_text(info) == json.dumps(info.to_json(), separators=(",", ":"))


@pytest.mark.parametrize("weight_map", [None, [], "x"])
def test_a_shard_index_without_a_weight_map_object_is_refused(tmp_path, weight_map):
    path = _sharded(tmp_path)
    index = json.load(open(path + hubfile.INDEX_SUFFIX))
    index["weight_map"] = weight_map
    with open(path + hubfile.INDEX_SUFFIX, "w") as f:
        json.dump(index, f)
    with pytest.raises(FormatError, match="malformed shard index: no weight_map object"):
        hubfmt.read(path, framework="hub")
