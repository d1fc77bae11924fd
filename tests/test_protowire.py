"""hubfmt.protowire, the hand-written protobuf wire codec TensorFlow bundles and MindSpore .ckpt
share, against the real protobuf runtime (google.protobuf) as the oracle."""
from __future__ import annotations

import doctest

import pytest
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfmt.codecs import protowire
from hubfmt.codecs.protowire import Malformed


def test_doctests():
    assert doctest.testmod(protowire).failed == 0


@pytest.fixture(scope="module")
def Probe():
    """A message with one field of every wire type we read and write, built at run time."""
    require("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    T = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="hubfmt_probe.proto", package="hubfmt_probe", syntax="proto2")
    m = f.message_type.add(name="Probe")
    for num, name, ftype, label in [(1, "i64", T.TYPE_INT64, T.LABEL_OPTIONAL), (2, "raw", T.TYPE_BYTES, T.LABEL_OPTIONAL),
                                    (3, "f32", T.TYPE_FIXED32, T.LABEL_OPTIONAL), (4, "f64", T.TYPE_FIXED64, T.LABEL_OPTIONAL),
                                    (5, "dims", T.TYPE_INT64, T.LABEL_REPEATED), (300, "u64", T.TYPE_UINT64, T.LABEL_OPTIONAL)]:
        m.field.add(name=name, number=num, type=ftype, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("hubfmt_probe.Probe"))


int64s = st.integers(-(2**63), 2**63 - 1)
uint64s = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(i64=int64s, raw=st.binary(max_size=300), f32=st.integers(0, 2**32 - 1), dims=st.lists(int64s, max_size=4), u64=uint64s)
def test_encoding_matches_protobuf_and_decodes_back(Probe, i64, raw, f32, dims, u64):
    ours = (protowire.field_varint(1, i64) + protowire.field_bytes(2, raw) + protowire.field_fixed32(3, f32)
            + b"".join(protowire.field_varint(5, d) for d in dims) + protowire.field_varint(300, u64))
    theirs = Probe(i64=i64, raw=raw, f32=f32, dims=dims, u64=u64).SerializeToString(deterministic=True)
    assert ours == theirs
    got = list(protowire.fields(theirs))
    assert [(n, w) for n, w, _ in got] == [(1, 0), (2, 2), (3, 5), *[(5, 0)] * len(dims), (300, 0)]
    assert protowire.signed64(got[0][2]) == i64 and got[1][2] == raw and got[2][2] == f32
    assert [protowire.signed64(v) for _, _, v in got[3:-1]] == dims and got[-1][2] == u64


def test_fixed64_and_length_prefix_read_what_protobuf_wrote(Probe):
    theirs = Probe(f64=2**64 - 2, raw=b"x" * 200).SerializeToString()
    assert dict((n, v) for n, _, v in protowire.fields(theirs)) == {2: b"x" * 200, 4: 2**64 - 2}
    assert protowire.field_length(2, 200) + b"x" * 200 == Probe(raw=b"x" * 200).SerializeToString()


@given(st.integers(0, 2**64 - 1), st.binary(max_size=3))
def test_varint_round_trip_and_limits(value, tail):
    enc = protowire.encode_varint(value)
    assert protowire.read_varint(enc + tail, 0) == (value, len(enc))
    with pytest.raises(Malformed, match="runs past the end"):
        protowire.read_varint(enc, 0, len(enc) - 1)
    if len(enc) > 5:
        with pytest.raises(Malformed, match="longer than 5 bytes"):
            protowire.read_varint(enc, 0, max_bytes=5)


@pytest.mark.parametrize("raw, problem", [
    (b"\x08", "varint runs past the end"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x00\x01", "field number 0"),
    (b"\x12\x05abc", "field 2 of 5 bytes runs past the end"),
    (b"\x1d\x01\x02", "fixed32 field runs past the end"),
    (b"\x21" + b"\x00" * 7, "fixed64 field runs past the end"),
    (b"\x0b", "unsupported wire type 3"),
])
def test_malformed_messages_are_named(raw, problem):
    with pytest.raises(Malformed, match=problem):
        list(protowire.fields(raw))
