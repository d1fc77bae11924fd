"""Pickle opcodes for plain data, written by hand: the writing counterpart of hubfmt.safe_pickle.

Some native formats are pickles (torch's data.pkl, OneFlow's pickled_data). hubfmt never calls
pickle.dump for them: what goes into a file is exactly what an emitter writes, plain values and the
GLOBALs an adapter names, nothing reduced from arbitrary objects. The plain part is the same for
every framework, so it lives here once; each adapter subclasses `PickleEmitter` and adds its own
tensor opcodes in `extension` (adapters never import each other).

Class attributes choose among equally valid encodings, so each writer keeps the bytes it has always
produced:

- PROTOCOL 2 or 3. Bytes differ: protocol 2 has no bytes opcode, so bytes go through
  `_codecs.encode(latin-1 text, "latin1")` as pickle itself does; protocol 3 has BINBYTES.
- SMALL_INTS: BININT1/BININT2 for 0..65535, as pickle does; False writes BININT for every 32-bit int.
- MARK_EMPTY: False writes an empty list/dict as EMPTY_LIST/EMPTY_DICT alone; True adds an empty
  MARK...APPENDS/SETITEMS pair, as if it had items.
- MAX_DEPTH: how deep values may nest before a ValueError (the emitter recurses).

>>> e = PickleEmitter()
>>> e.value({"epoch": 3, "lr": [0.1]})
>>> import pickle; pickle.loads(e.finish())
{'epoch': 3, 'lr': [0.1]}
"""
from __future__ import annotations

import collections
import struct

_U32 = struct.Struct("<I").pack


class PickleEmitter:
    """Appends the opcodes of plain values to `out` (None, bool, int, float, str, bytes, list,
    tuple, dict, OrderedDict); `extension` takes anything else.

    >>> e = PickleEmitter(); e.value((1, "a")); e.finish()
    b'\\x80\\x02K\\x01X\\x01\\x00\\x00\\x00a\\x86.'
    """

    PROTOCOL = 2
    SMALL_INTS = True
    MARK_EMPTY = False
    MAX_DEPTH = 100

    def __init__(self):
        self.out = bytearray(b"\x80" + bytes([self.PROTOCOL]))      # PROTO

    def finish(self) -> bytes:
        """The pickle: everything emitted, then STOP."""
        self.out += b"."
        return bytes(self.out)

    def global_(self, module: str, name: str) -> None:
        """GLOBAL `module.name`: pushes the class or function the loader resolves.

        >>> e = PickleEmitter(); e.global_("collections", "OrderedDict"); bytes(e.out[2:])
        b'ccollections\\nOrderedDict\\n'
        """
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def value(self, v, depth: int = 0) -> None:
        """Emit `v`; `depth` is how deep it sits in the object being written."""
        if depth > self.MAX_DEPTH:
            raise ValueError(f"non-tensor content nests more than {self.MAX_DEPTH} levels deep")
        out = self.out
        if type(v) is str:          # first: every key of a state dict is one (#18)
            raw = v.encode("utf-8", "surrogatepass")
            out += b"X" + _U32(len(raw)) + raw
        elif v is None:
            out += b"N"
        elif v is True:
            out += b"\x88"
        elif v is False:
            out += b"\x89"
        elif isinstance(v, int):
            self.integer(v)
        elif isinstance(v, float):
            out += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            raw = v.encode("utf-8", "surrogatepass")
            out += b"X" + _U32(len(raw)) + raw
        elif isinstance(v, (bytes, bytearray)):
            self.binary(bytes(v), depth)
        elif isinstance(v, tuple):
            self.tuple_(v, depth)
        elif isinstance(v, list):
            self.list_(v, depth)
        elif isinstance(v, dict):
            self.dict_(v, depth)
        else:
            self.extension(v, depth)

    def extension(self, v, depth: int) -> None:
        """A value that is not plain data: adapters override this with their tensor opcodes."""
        raise TypeError(f"cannot pickle a {type(v).__name__}")

    def integer(self, v: int) -> None:
        if self.SMALL_INTS and 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif self.SMALL_INTS and 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            if len(raw) > 255:
                raise ValueError(f"an integer of {len(raw)} bytes is too large to pickle")
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def binary(self, v: bytes, depth: int) -> None:
        if self.PROTOCOL >= 3:
            self.out += b"B" + struct.pack("<I", len(v)) + v
        else:
            self.global_("_codecs", "encode")
            self.value((v.decode("latin-1"), "latin1"), depth + 1)
            self.out += b"R"

    def tuple_(self, v: tuple, depth: int) -> None:
        if not v:
            self.out += b")"
            return
        if len(v) > 3:
            self.out += b"("
        for item in v:
            self.value(item, depth + 1)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(v), b"t")

    def list_(self, v: list, depth: int) -> None:
        self.out += b"]"
        if v or self.MARK_EMPTY:
            self.out += b"("
            for item in v:
                self.value(item, depth + 1)
            self.out += b"e"

    def dict_(self, v: dict, depth: int) -> None:
        if isinstance(v, collections.OrderedDict):
            self.global_("collections", "OrderedDict")
            self.out += b")R"
        else:
            self.out += b"}"
        if v or self.MARK_EMPTY:
            self.out += b"("
            value, depth = self.value, depth + 1
            for k, item in v.items():
                value(k, depth)
                value(item, depth)
            self.out += b"u"
