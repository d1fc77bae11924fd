"""The restricted unpickler's inline opcode loop (#18) against pickle itself and against the
generic one-method-per-opcode loop it falls back to: same objects (sharing included), same
failures on damaged bytes, memo slots skipped only where no GET can read them (and a pickle
that needs them after all loaded again with every slot kept)."""
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


@pytest.mark.parametrize("protocol", [2, 3])
def test_damaged_big_pickles_fail_as_the_generic_loop_does(protocol):
    # Over the size from which memo slots are skipped: a flipped byte can make a GET of any slot,
    # a MEMOIZE, a text GET... the outcome is still the generic loop's (which keeps every slot).
    rng = random.Random(protocol)
    data = pickle.dumps(_sample(13000), protocol=protocol)
    assert len(data) >= safe_pickle._SCAN_FROM
    for _ in range(6):
        cut = bytearray(data)
        for _ in range(3):
            cut[rng.randrange(len(cut) // 2, len(cut))] = rng.choice([104, 106, 103, 148, rng.randrange(256)])
        cut = bytes(cut)
        assert _outcome(lambda d: RestrictedUnpickler(io.BytesIO(d)).load(), cut) == _outcome(_generic, cut)


def _gets(data: bytes) -> set[int]:
    """The memo indices the GET opcodes of `data` read, parsed exactly (pickletools)."""
    import pickletools
    return {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GET", "BINGET", "LONG_BINGET")}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3])
def test_memo_scan_finds_every_slot_a_get_reads(protocol):
    rng = random.Random(protocol)
    for n in (3, 300, 3000):
        shared = [[i] for i in range(rng.randrange(1, 400))]       # > 256 slots: LONG_BINGET too
        obj = [rng.choice(shared) if rng.random() < 0.5 else f"w{i}ght\n{i}" for i in range(n)]
        data = pickle.dumps(obj, protocol=protocol)
        got = safe_pickle._memo_reads(data, 0)
        assert got is not None and _gets(data) <= got


def test_memo_scan_keeps_every_slot_from_protocol_4():
    # MEMOIZE stores at len(memo): no slot may be skipped
    assert safe_pickle._memo_reads(pickle.dumps([1], protocol=4), 0) is None
    shared = [1]
    assert 1 in safe_pickle._memo_reads(pickle.dumps([shared, shared], protocol=2), 0)


def _memo_size(data: bytes) -> int:
    u = pickle._Unpickler(io.BytesIO(data))      # type: ignore[attr-defined]
    u.load()
    return len(u.memo)


def test_memoize_after_skipped_slots_loads_as_pickle_does():
    # Protocol 2 ending in MEMOIZE (CPython never writes that), then a GET of the slot MEMOIZE
    # filled: len(memo), which skipping slots would change. The unpickler loads it again keeping
    # every slot, and gives what pickle gives.
    obj = [[f"x{i}" * 3] for i in range(60_000)]
    data = pickle.dumps(obj, protocol=2)
    n = _memo_size(data)
    crafted = data[:-1] + pickle.MEMOIZE + pickle.POP + pickle.LONG_BINGET + n.to_bytes(4, "little") + pickle.STOP
    assert len(crafted) >= safe_pickle._SCAN_FROM
    assert len(safe_pickle._memo_reads(crafted, 0)) < n      # the first pass does skip slots
    got = restricted_loads(crafted)
    assert got == pickle.loads(crafted) == obj


def test_text_get_of_a_binput_slot_loads_as_pickle_does():
    # Text GETs spelled as int() reads them (" 0_1", "+0001") of a slot BINPUT filled, after
    # enough other slots that some are skipped: the scan finds them, and sharing survives.
    head = (pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + pickle.BINPUT + b"\x00" + pickle.MARK
            + pickle.EMPTY_LIST + pickle.BINPUT + b"\x01" + pickle.SHORT_BINUNICODE + b"\x04keep" + pickle.APPEND)
    items = b"".join(pickle.BINUNICODE + len(s := f"x{i}" * 9).to_bytes(4, "little") + s.encode()
                     + pickle.BINPUT + bytes([2 + i % 200]) for i in range(30_000))
    tail = pickle.APPENDS + pickle.STOP
    plain = head + items + tail
    crafted = head + items + pickle.GET + b" 0_1\n" + pickle.GET + b"+0001\n" + tail
    assert len(crafted) >= safe_pickle._SCAN_FROM
    assert 1 not in safe_pickle._memo_reads(plain, 0) and 1 in safe_pickle._memo_reads(crafted, 0)
    got = restricted_loads(crafted)
    assert got == pickle.loads(crafted) and got[0] == ["keep"]
    assert got[0] is got[-1] is got[-2]
