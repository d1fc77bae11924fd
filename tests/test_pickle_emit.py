"""hubfmt.pickle_emit, the plain-data pickle emitter torch's and OneFlow's writers extend: every
dialect decodes with Python's own unpickler and with hubfmt's restricted one, and each dialect
choice writes the opcodes it names."""
from __future__ import annotations

import collections
import doctest
import pickle
import pickletools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfmt.codecs import pickle_emit
from hubfmt.codecs.pickle_emit import PickleEmitter
from hubfmt.codecs.safe_pickle import restricted_loads


def dialect(protocol: int, small_ints: bool, mark_empty: bool) -> type[PickleEmitter]:
    return type("Dialect", (PickleEmitter,), {"PROTOCOL": protocol, "SMALL_INTS": small_ints, "MARK_EMPTY": mark_empty})


DIALECTS = [dialect(p, s, m) for p in (2, 3) for s in (True, False) for m in (True, False)]


def emitted(cls, v) -> bytes:
    e = cls()
    e.value(v)
    return e.finish()


def test_doctests():
    assert doctest.testmod(pickle_emit).failed == 0


scalars = (st.none() | st.booleans() | st.integers(-(2**300), 2**300) | st.floats(allow_nan=False)
           | st.text(max_size=8) | st.binary(max_size=300))
keys = st.text(max_size=4) | st.integers(-5, 70000)
plain = st.recursive(scalars, lambda c: (st.lists(c, max_size=5) | st.lists(c, max_size=5).map(tuple)
                                          | st.dictionaries(keys, c, max_size=4)
                                          | st.dictionaries(keys, c, max_size=4).map(collections.OrderedDict)),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(plain, st.sampled_from(DIALECTS))
def test_plain_values_load_back_exactly(v, cls):
    raw = emitted(cls, v)
    assert raw[:2] == b"\x80" + bytes([cls.PROTOCOL]) and raw[-1:] == b"."
    for got in (pickle.loads(raw), restricted_loads(raw)):
        assert got == v and type(got) is type(v)
    assert all(op.proto <= cls.PROTOCOL for op, _, _ in pickletools.genops(raw))


def _ops(cls, v) -> list[str]:
    return [op.name for op, _, _ in pickletools.genops(emitted(cls, v))][1:-1]    # without PROTO, STOP


def test_each_choice_writes_the_opcodes_it_names():
    p2, p3 = dialect(2, True, False), dialect(3, False, True)
    assert _ops(p2, 7) == ["BININT1"] and _ops(p2, 300) == ["BININT2"] and _ops(p3, 7) == ["BININT"]
    assert _ops(p2, -1) == _ops(p3, -1) == ["BININT"] and _ops(p2, 2**40) == ["LONG1"]
    assert _ops(p2, b"x") == ["GLOBAL", "BINUNICODE", "BINUNICODE", "TUPLE2", "REDUCE"]    # _codecs.encode
    assert _ops(p3, b"x") == ["BINBYTES"]
    assert _ops(p2, []) == ["EMPTY_LIST"] and _ops(p3, []) == ["EMPTY_LIST", "MARK", "APPENDS"]
    assert _ops(p2, {}) == ["EMPTY_DICT"] and _ops(p3, {}) == ["EMPTY_DICT", "MARK", "SETITEMS"]
    assert _ops(p2, (1, 2, 3, 4))[0] == "MARK" and _ops(p2, (1, 2, 3))[-1] == "TUPLE3"
    assert _ops(p2, collections.OrderedDict())[:3] == ["GLOBAL", "EMPTY_TUPLE", "REDUCE"]


def test_limits_and_foreign_objects_are_refused():
    deep = []
    for _ in range(101):
        deep = [deep]
    with pytest.raises(ValueError, match="more than 100 levels"):
        emitted(PickleEmitter, deep)
    assert pickle.loads(emitted(type("Deeper", (PickleEmitter,), {"MAX_DEPTH": 200}), deep)) == deep
    with pytest.raises(ValueError, match="too large to pickle"):
        emitted(PickleEmitter, 2**3000)
    with pytest.raises(TypeError, match="cannot pickle a set"):
        emitted(PickleEmitter, [{1}])


def test_extension_receives_what_plain_data_does_not_cover():
    class Marked(PickleEmitter):
        def extension(self, v, depth):
            self.global_("collections", "OrderedDict")     # any allowed global: stands for a tensor opcode
            self.out += b")R"

    got = restricted_loads(emitted(Marked, {"w": object()}))
    assert got == {"w": collections.OrderedDict()}


@settings(max_examples=60, deadline=None)
@given(v=plain, protocol=st.integers(3, 5))      # 0-2 pickle bytes by a builtin, refused
def test_framed_and_unframed_pickles_load_in_memory_as_pickle_loads_them(v, protocol):
    # restricted_loads reads a pickle in memory without pickle's _Unframer (#18): FRAME opcodes
    # (protocol 4+) are skipped, their opcodes read inline; the result is what pickle.loads gives.
    data = pickle.dumps(v, protocol=protocol)
    assert restricted_loads(data) == pickle.loads(data)

