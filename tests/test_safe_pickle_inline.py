"""The restricted unpickler's inline opcode loop (#18) against pickle itself and against the
generic one-method-per-opcode loop it falls back to: same objects (sharing included), same
failures on damaged bytes, memo slots no GET reads skipped only when the scan is exact."""
from __future__ import annotations

import collections
import io
import pickle
import random

import pytest

from hubfmt.codecs import safe_pickle
from hubfmt.codecs.safe_pickle import RestrictedUnpickler, restricted_loads
from hubfmt.errors import FormatError


def _sample(n: int):
    shared = ["s" * 10, (1, 2)]
    return {"l": [[shared, i, f"x{i}", (i, shared), 1.5, b"b" * 3, None, True, -7, 70000, 2**70] for i in range(n)],
            "d": collections.OrderedDict((str(i), (shared, float(i))) for i in range(n // 3)),
            "t": "é" * 10, "k": {(1, 2): 3, "z": [1, 2]}, "s": {1, 2, (3, 4)}, "e": ()}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("n", [3, 40_000])      # 40,000: over the size from which memo reads are scanned
def test_same_objects_as_pickle(protocol, n):
    obj = _sample(n)
    data = pickle.dumps(obj, protocol=protocol)
    got = restricted_loads(data)
    assert got == obj
    # memo sharing survives: one list object, wherever the pickle named it again
    assert got["l"][0][0] is got["l"][-1][0] is got["l"][1][3][1]


def _generic(data: bytes):
    """The same unpickler, every opcode through its dispatch (the stream is not a BytesIO)."""
    class Stream:
        def __init__(self):
            self._b = io.BytesIO(data)
            self.read, self.readline, self.readinto = self._b.read, self._b.readline, self._b.readinto
    return RestrictedUnpickler(Stream()).load()


def _outcome(load, data):
    try:
        return ("ok", repr(load(data)))
    except FormatError as e:
        return ("error", e.message.split(":")[0])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_damaged_bytes_fail_as_the_generic_loop_does(protocol):
    rng = random.Random(protocol)
    data = pickle.dumps(_sample(20), protocol=protocol)
    for _ in range(150):
        cut = bytearray(data[:rng.randrange(len(data))])
        if cut and rng.random() < 0.5:
            cut[rng.randrange(len(cut))] = rng.randrange(256)
        cut = bytes(cut)
        assert _outcome(lambda d: RestrictedUnpickler(io.BytesIO(d)).load(), cut) == _outcome(_generic, cut)


def test_memo_scan_gives_up_on_what_it_cannot_parse_exactly():
    assert safe_pickle._memo_reads(pickle.dumps([1], protocol=4), 0) is None            # MEMOIZE
    assert safe_pickle._memo_reads(b"\x80\x02]q\x00h\x00a", 0) is None                  # no STOP
    assert safe_pickle._memo_reads(b"\xff.", 0) is None                                 # unknown opcode
    shared = [1]
    assert safe_pickle._memo_reads(pickle.dumps([shared, shared], protocol=2), 0) == {1}
