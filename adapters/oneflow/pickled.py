"""`pickled_data`, the pickle at the top of a `oneflow.save` directory, both ways.

What OneFlow 0.9 writes (check_point_v2.save; seen with pickletools on real saves):

    {'protocol_version': 1,
     'data': OrderedDict([('conv.weight', <oneflow.nn.Parameter>), ('bn.running_mean', <oneflow.Tensor>), ...])}

where every tensor is `NEWOBJ(oneflow.nn.Parameter or oneflow.Tensor, ())` followed by
`BUILD({'path': 'tensor_7'})`: Tensor.__setstate__ then loads the sibling folder tensor_7/ (`out` +
`meta`). No persistent ids, no rebuild functions. The state dict's OrderedDict is BUILT with
{'_metadata': OrderedDict()}, as torch-style state dicts carry.

Reading goes through hubfmt.safe_pickle with stand-ins that only record the folder name; the writer
extends hubfmt.pickle_emit to produce the same structure (the same globals) from plain data.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from hubfmt.sdk import FormatError
from hubfmt.sdk import PickleEmitter
from hubfmt.sdk import restricted_loads

PROTOCOL_VERSION = 1
PICKLE_FILENAME = "pickled_data"
_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class TensorRef:
    """Stand-in for `oneflow.Tensor`: NEWOBJ makes it empty, BUILD gives it the tensor's folder."""

    folder: str | None = None
    # The one BUILD this stand-in takes (hubfmt.safe_pickle refuses BUILD on stand-ins that do
    # not say so); a second one is refused below.
    _hubfmt_accepts_build = True

    def __setstate__(self, state):
        if self.folder is not None:
            raise ValueError("a OneFlow tensor given its folder twice")
        if not (isinstance(state, dict) and set(state) == {"path"} and isinstance(state["path"], str)):
            raise ValueError("a OneFlow tensor whose pickled state is not {'path': folder}")
        folder = state["path"]
        # One path component inside the checkpoint directory: never '..', never absolute.
        if not _FOLDER.fullmatch(folder) or folder in (".", ".."):
            raise ValueError(f"a OneFlow tensor names folder {folder!r}, outside its checkpoint directory")
        self.folder = folder


class ParameterRef(TensorRef):
    """Stand-in for `oneflow.nn.Parameter` (what OneFlow pickles for a module's parameters)."""


ALLOWED = {
    ("oneflow", "Tensor"): TensorRef,
    ("oneflow.nn", "Parameter"): ParameterRef,
}


def load(data: bytes, source: str):
    """The object inside a `pickled_data` (its 'data' entry), tensors as TensorRef stand-ins.

    >>> load(dumps({"epoch": 3}), "pickled_data")
    {'epoch': 3}
    """
    obj = restricted_loads(data, allowed=ALLOWED, opaque=False, source=source)
    if not (isinstance(obj, dict) and "data" in obj and "protocol_version" in obj):
        raise FormatError("not a oneflow.save pickle: no {'protocol_version', 'data'} dictionary", source)
    if obj["protocol_version"] != PROTOCOL_VERSION:
        raise FormatError(f"oneflow.save protocol_version {obj['protocol_version']!r} (hubfmt knows {PROTOCOL_VERSION})", source)
    return obj["data"]


# ---- writing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSlot:
    """A tensor to emit: its folder, and whether OneFlow would pickle it as a Parameter."""

    folder: str
    parameter: bool


class StateDict:
    """An ordered name -> TensorSlot mapping, emitted as OneFlow emits a module's state dict."""

    def __init__(self, items):
        self.items = list(items)


class _Emitter(PickleEmitter):
    """Protocol 3, plain values as hubfmt.pickle_emit writes them, OneFlow tensors and state dicts.
    Small ints as BININT and empty containers with their MARK: the bytes this writer has always
    produced (both valid pickle)."""

    PROTOCOL = 3
    SMALL_INTS = False
    MARK_EMPTY = True
    MAX_DEPTH = 200     # hubfmt.extra.to_plain allows 100 levels; its array and big-int markers add two

    def __init__(self):
        super().__init__()
        self.memo: dict[str, int] = {}            # tensor folder -> memo index (ties)

    def extension(self, v, depth: int) -> None:
        if isinstance(v, StateDict):
            self.state_dict(v)
        elif isinstance(v, TensorSlot):
            self.tensor(v)
        else:
            raise TypeError(f"cannot write {type(v).__name__} into a OneFlow pickle")

    def tensor(self, slot: TensorSlot) -> None:
        if slot.folder in self.memo:        # the same tensor again: OneFlow's pickle shares it
            self.out += b"j" + struct.pack("<I", self.memo[slot.folder])
            return
        if slot.parameter:
            self.global_("oneflow.nn", "Parameter")
        else:
            self.global_("oneflow", "Tensor")
        self.out += b")\x81"                     # EMPTY_TUPLE NEWOBJ
        self.value({"path": slot.folder})
        self.out += b"b"                         # BUILD -> Tensor.__setstate__ loads the folder
        self.memo[slot.folder] = len(self.memo)
        self.out += b"r" + struct.pack("<I", self.memo[slot.folder])

    def state_dict(self, sd: StateDict) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R("                       # OrderedDict() then its items
        for name, slot in sd.items:
            self.value(name)
            self.tensor(slot)
        self.out += b"u}("                       # BUILD state: {'_metadata': OrderedDict()}
        self.value("_metadata")
        self.global_("collections", "OrderedDict")
        self.out += b")Rub"


def dumps(data) -> bytes:
    """A complete `pickled_data`: {'protocol_version': 1, 'data': data}. `data` is plain Python
    data (None, bool, int, float, str, bytes, list, tuple, dict, OrderedDict) with
    StateDict/TensorSlot inside.

    >>> dumps({"epoch": 3})[:2]
    b'\\x80\\x03'
    """
    em = _Emitter()
    em.out += b"}("
    em.value("protocol_version")
    em.value(PROTOCOL_VERSION)
    em.value("data")
    em.value(data)
    em.out += b"u"
    return em.finish()

