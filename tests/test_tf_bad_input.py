"""Damaged TensorFlow checkpoints: a one-line FormatError naming the file, exit status 2 from the
CLI, and nothing written. No TensorFlow needed."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import run_cli

from hubfmt.adapters import tensorflow as tfa
from hubfmt.codecs import protowire
from hubfmt.adapters.tensorflow import bundle, bundle_write, sstable
from hubfmt.adapters.tensorflow.sstable import crc32c, mask
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.errors import FormatError


def good(tmp_path, name="m", shards=None):
    c = Checkpoint()
    rng = np.random.default_rng(0)
    for i in range(4):
        c.add(f"layer{i}.weight", LazyTensor.from_array(rng.standard_normal((6, 5)).astype(np.float32)),
              TensorInfo(kind="linear"))
    tfa.write(c, tmp_path / name, max_shard_size=shards, update_state=False)
    return tmp_path / name


def data(prefix, i=0, n=1):
    return prefix.parent / f"{prefix.name}.data-{i:05d}-of-{n:05d}"


def index(prefix):
    return prefix.parent / f"{prefix.name}.index"


def expect_error(prefix, culprit, match, *, on_load=False):
    """read (and load every tensor when on_load) -> FormatError naming `culprit`; the CLI says the
    same in one line with exit 2 and writes nothing."""
    with pytest.raises(FormatError, match=match) as err:
        ckpt = tfa.read(prefix)
        if on_load:
            for n in ckpt:
                ckpt.tensor(n)
    assert err.value.path == str(culprit) and "\n" not in str(err.value)
    out = prefix.parent / "out.safetensors"
    r = run_cli("convert", prefix, out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(culprit) in lines[0], r.stderr
    assert not out.exists() and not [f for f in os.listdir(prefix.parent) if "hubfmt-tmp" in f]


def test_truncated_index(tmp_path):
    p = good(tmp_path)
    raw = index(p).read_bytes()
    index(p).write_bytes(raw[: len(raw) // 2])
    expect_error(p, index(p), "bad table magic")


def test_index_shorter_than_a_footer(tmp_path):
    p = good(tmp_path)
    index(p).write_bytes(b"\x00" * 10)
    expect_error(p, index(p), "too short")


def test_truncated_data_shard(tmp_path):
    p = good(tmp_path)
    raw = data(p).read_bytes()
    data(p).write_bytes(raw[:-7])
    expect_error(p, data(p), "past the end of the shard")


def test_missing_shard(tmp_path):
    p = good(tmp_path, shards=200)
    shards = sorted(f for f in os.listdir(tmp_path) if ".data-" in f)
    assert len(shards) > 1
    os.unlink(tmp_path / shards[1])
    expect_error(p, tmp_path / shards[1], "missing data shard")


def test_corrupt_table_block(tmp_path):
    p = good(tmp_path)
    raw = bytearray(index(p).read_bytes())
    raw[12] ^= 0x40                                   # inside the first data block
    index(p).write_bytes(bytes(raw))
    expect_error(p, index(p), "bad checksum")


def _index_with(entries: list[tuple[str, bytes]], num_shards=1) -> bytes:
    header = protowire.field_varint(1, num_shards) + protowire.field_bytes(3, protowire.field_varint(1, 1))
    return sstable.write_table([(b"", header)] + [(k.encode(), v) for k, v in entries])


def _entry(shape, offset, size, shard=0, dtype=1):
    return bundle_write._encode_entry(dtype, shape, shard, offset, size, 0)


def test_offset_past_end_of_shard(tmp_path):
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 64)
    index(p).write_bytes(_index_with([("w", _entry((4,), 1 << 40, 16))]))
    expect_error(p, data(p), "past the end of the shard")


def test_size_not_matching_shape(tmp_path):
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 64)
    index(p).write_bytes(_index_with([("w", _entry((4, 4), 0, 16))]))
    expect_error(p, index(p), "do not hold float32")


def test_shard_id_out_of_range(tmp_path):
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 64)
    index(p).write_bytes(_index_with([("w", _entry((4,), 0, 16, shard=3))]))
    expect_error(p, index(p), "names shard 3 of 1")


def test_corrupt_tensor_data_caught_by_its_checksum(tmp_path):
    p = good(tmp_path)
    raw = bytearray(data(p).read_bytes())
    raw[5] ^= 0x01
    data(p).write_bytes(bytes(raw))
    expect_error(p, data(p), "checksum mismatch", on_load=True)


def test_snappy_block_refused_clearly(tmp_path):
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 16)
    table = bytearray(_index_with([("w", _entry((4,), 0, 16))]))
    # mark the first data block snappy-compressed, with a valid checksum for that type byte
    footer = bytes(table[-48:])
    _, pos = protowire.read_varint(footer, 0)
    _, pos = protowire.read_varint(footer, pos)
    ioff, pos = protowire.read_varint(footer, pos)
    isize, _ = protowire.read_varint(footer, pos)
    first = sstable._entries(sstable._block(bytes(table), ioff, isize, "index"), "index")[0][1]
    off, n = protowire.read_varint(first, 0)[0], protowire.read_varint(first, protowire.read_varint(first, 0)[1])[0]
    table[off + n] = 1
    table[off + n + 1: off + n + 5] = struct.pack("<I", mask(crc32c(bytes(table[off:off + n + 1]))))
    index(p).write_bytes(bytes(table))
    expect_error(p, index(p), "snappy-compressed")


def test_damaged_source_leaves_no_tf_output(tmp_path):
    """A conversion into a TF checkpoint that fails midway publishes nothing (shards and index)."""
    p = good(tmp_path)
    raw = bytearray(data(p).read_bytes())
    raw[-3] ^= 0x01
    data(p).write_bytes(bytes(raw))
    ckpt = tfa.read(p)                                   # linear kernels: transposed, so loaded and checked
    with pytest.raises(FormatError, match="checksum"):
        tfa.write(ckpt, tmp_path / "dst")
    assert sorted(os.listdir(tmp_path)) == sorted([index(p).name, data(p).name])


def test_corrupt_data_not_laundered_by_a_file_to_file_copy(tmp_path):
    """Untransposed tensors are copied in the kernel, never loaded: the TF writer still checks
    the source CRC against the bytes it copied."""
    p = good(tmp_path)
    raw = bytearray(data(p).read_bytes())
    raw[-3] ^= 0x01
    data(p).write_bytes(bytes(raw))
    ckpt = tfa.read(p, kinds={f"layer{i}": "tensor" for i in range(4)})   # no layout change: kernel copies
    assert all(e.tensor.span is not None for e in ckpt.entries.values())
    with pytest.raises(FormatError, match="checksum") as err:
        tfa.write(ckpt, tmp_path / "dst")
    assert err.value.path == str(data(p))
    assert sorted(os.listdir(tmp_path)) == sorted([index(p).name, data(p).name])


def test_partitioned_variable_with_a_missing_piece(tmp_path):
    from hubfmt.adapters.tensorflow.partitioned import slice_key

    def extent(start, length):
        return protowire.field_bytes(1, protowire.field_varint(1, start) + protowire.field_varint(2, length))
    pieces = [[(0, 2), (0, 4)], [(2, 2), (0, 4)]]
    full = _entry((4, 4), 0, 0) + b"".join(protowire.field_bytes(7, extent(*a) + extent(*b)) for a, b in pieces)
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 32)
    header = protowire.field_varint(1, 1) + protowire.field_bytes(3, protowire.field_varint(1, 1))
    index(p).write_bytes(sstable.write_table([(b"", header), (slice_key("emb/embeddings", pieces[0]), _entry((2, 4), 0, 32)),
                                              (b"emb/embeddings", full)]))
    expect_error(p, index(p), r"piece \[\(2, 2\), \(0, 4\)\] of the partitioned variable is missing")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_index_gives_format_error_or_a_checked_bundle(tmp_path_factory, fuzz):
    """Any damage to the index: a FormatError naming a file of the checkpoint, never another
    exception; a bundle that still opens only names bytes inside its shard."""
    tmp = tmp_path_factory.mktemp("fuzz")
    p = good(tmp)
    raw = bytearray(index(p).read_bytes())
    how = fuzz.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        for _ in range(fuzz.draw(st.integers(1, 4))):
            i = fuzz.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= fuzz.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[: fuzz.draw(st.integers(0, len(raw) - 1))]
    else:
        i = fuzz.draw(st.integers(0, len(raw) - 1))
        raw[i:i] = fuzz.draw(st.binary(min_size=1, max_size=16))
    index(p).write_bytes(bytes(raw))
    try:
        b = bundle.open_bundle(str(p))
    except FormatError as e:
        assert e.path in (str(index(p)), str(data(p))) and "\n" not in e.message
        return
    size = data(p).stat().st_size
    assert all(e.offset + e.size <= size for e in b.entries.values())


def test_v1_single_file_checkpoint_refused_clearly(tmp_path):
    p = tmp_path / "model.ckpt-1000"
    p.write_bytes(sstable.write_table([(b"w", b"x")]))       # V1 files are tables themselves
    expect_error(p, p, "V1 checkpoint")


def test_unsupported_dtype_dropped_with_its_name(tmp_path):
    p = tmp_path / "m"
    data(p).write_bytes(b"\x00" * 16)
    index(p).write_bytes(_index_with([("c128", _entry((1,), 0, 16, dtype=18))]))
    ckpt = tfa.read(p)
    assert len(ckpt) == 0 and "complex128" in ckpt.report.of("dropped")[0].detail
