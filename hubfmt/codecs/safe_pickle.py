"""The one restricted unpickler every reader uses when it meets a pickle (torch, OneFlow, ...).

A pickle is a program: GLOBAL/STACK_GLOBAL/INST/OBJ name a callable and REDUCE/NEWOBJ/BUILD call
it. `find_class` is the only door to callables, so we never let Python's default run:

- names on the allow-list resolve to hubfmt's own safe implementations (not the originals);
- names in modules that can run code (os, subprocess, builtins' eval/exec/getattr, pickle itself,
  importlib, ...) are refused with UnsafePickleError;
- any other name resolves, when the caller allows it, to an inert `OpaqueObject` subclass that
  only records its arguments and state. That is how a YOLOv5-style checkpoint that pickles
  `models.yolo.Model` is read without its source tree and without running any of its code.

Adapters pass their own allow-list (e.g. torch's `_rebuild_tensor_v2`); the common one here covers
Python containers, numpy arrays/scalars/dtypes and `_codecs.encode`.

Two more doors are closed because the C unpickler cannot be told to:
- memory: it sizes its memo table by the largest index a PUT names and zero-fills it, so an
  11-byte pickle (`LONG_BINPUT 0x1ffffff0`) makes it touch 8 GB. We run Python's own
  `pickle._Unpickler`, whose memo is a dict: work and memory stay proportional to the input.
  The opcodes torch.save emits run inline in one loop over the pickle's bytes (`_load_in_memory`),
  with the same state and checks; a checkpoint of a million tensors is ~30 million opcodes.
- BUILD: on an object without `__setstate__`, BUILD sets attributes. Aimed at a callable (one of
  the allow-listed functions or classes) it would rewrite hubfmt's own code objects' defaults or
  methods for the rest of the process. BUILD is accepted only on plain data objects.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import struct
import types
from typing import Any, Callable, Mapping

import numpy as np

from hubfmt.errors import UnsafePickleError

# Modules whose names are never resolved, not even to an inert stub: naming them is the mark of a
# payload, and the user deserves to know the file tried.
_FORBIDDEN_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket",
    "importlib", "runpy", "pickle", "_pickle", "cPickle", "marshal", "types", "code", "codeop",
    "ctypes", "pty", "commands", "webbrowser", "io", "_io", "operator", "functools", "itertools",
    "multiprocessing", "threading", "asyncio", "signal", "inspect", "pydoc", "timeit", "trace",
    "pdb", "bdb", "tempfile", "glob", "pathlib", "urllib", "http", "ftplib", "smtplib",
    "telnetlib", "dill", "cloudpickle", "joblib", "torch.hub", "torch.serialization",
    "torch._C", "torch.ops", "torch.jit", "numpy.testing", "numpy.f2py", "numpy.distutils",
    "numpy.lib.format", "numpy.ctypeslib", "site", "sysconfig", "platform", "zipimport",
    "copyreg", "copy_reg", "_codecs_only_encode_is_allowed", "ast", "compileall", "py_compile",
)


# Names never given an inert stand-in, whatever the module: a pickle naming them (numpy.load,
# torch.load, a re-exported eval...) is a payload, not a data class the model forgot to ship.
_FORBIDDEN_NAMES = frozenset({
    "load", "loads", "eval", "exec", "execfile", "compile", "system", "popen", "Popen", "spawn",
    "spawnv", "execv", "execve", "fork", "call", "run", "check_call", "check_output", "getoutput",
    "open", "getattr", "setattr", "delattr", "globals", "locals", "vars", "__import__",
    "import_module", "run_path", "run_module", "rmtree", "remove", "unlink", "rename",
    "attrgetter", "methodcaller", "partial", "apply", "input", "breakpoint",
})


def _forbidden(module: str, name: str = "") -> bool:
    return name in _FORBIDDEN_NAMES or any(module == m or module.startswith(m + ".") for m in _FORBIDDEN_MODULES)


class OpaqueObject:
    """An object of a class we will not import. Records what the pickle gave it; runs nothing."""

    _hubfmt_class = "?"
    # Class-level defaults: NEWOBJ builds instances with cls.__new__, skipping __init__.
    args: tuple = ()
    kwargs: dict = {}
    state: Any = None

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.state = None

    def __setstate__(self, state):
        self.state = state

    # pickle's BUILD falls back to __dict__ updates; __setstate__ above always wins.
    def __reduce__(self):  # pragma: no cover - hubfmt never re-pickles these
        raise TypeError("opaque objects are not picklable")

    @property
    def class_name(self) -> str:
        return self._hubfmt_class

    def attributes(self) -> dict:
        """The instance dictionary the original object would have had (state dict or
        (dict, slots) tuple), or {}."""
        s = self.state
        if isinstance(s, tuple) and len(s) == 2 and (s[0] is None or isinstance(s[0], dict)):
            merged = dict(s[0] or {})
            if isinstance(s[1], dict):
                merged.update(s[1])
            return merged
        return s if isinstance(s, dict) else {}

    def __hubfmt_plain__(self):
        return {"__object__": self._hubfmt_class, "state": self.state if self.state is not None else list(self.args)}

    def __repr__(self) -> str:
        return f"<opaque {self._hubfmt_class}>"


_opaque_classes: dict[str, type] = {}


def opaque_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    cls = _opaque_classes.get(key)
    if cls is None:
        # type() with a fixed base and a plain dict: creates a class, runs no code from the pickle.
        cls = type(name if name.isidentifier() else "Opaque", (OpaqueObject,), {"_hubfmt_class": key})
        _opaque_classes[key] = cls
    return cls


# ---- safe stand-ins for the common callables ------------------------------------------------

def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Python 2/protocol-2 pickles of bytes use _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError("_codecs.encode called with unexpected arguments")
    return text.encode(encoding, errors)


def _np_dtype(spec, align=False, copy=False):
    dt = np.dtype(spec)
    if dt.hasobject:
        raise UnsafePickleError("numpy object dtype in pickle")
    return dt


class _NdarrayStub:
    """numpy.core.multiarray._reconstruct(ndarray, shape, dtype) + BUILD(state): rebuilt with
    frombuffer, never through numpy's own __setstate__ (which accepts object arrays)."""

    def __init__(self, *args):
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError("numpy array pickle with unexpected state")
        _version, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, fortran)


def _array_from_bytes(raw, dtype, shape, fortran: bool) -> np.ndarray:
    """A numpy array rebuilt from a pickle's raw bytes, refusing object data and size mismatches."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError("numpy array pickle with object data")
    arr = np.frombuffer(raw, dtype=dtype)
    count = int(np.prod(shape)) if len(shape) else 1
    if arr.size != count:
        raise UnsafePickleError("numpy array pickle whose data does not match its shape")
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def _np_reconstruct(cls, shape, dtype):
    return _NdarrayStub()


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("numpy scalar pickle with object data")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _np_frombuffer(buf, dtype, shape, order="C"):
    # Protocol-5 pickles of arrays: numpy.core.numeric._frombuffer(bytes, dtype, shape, order).
    return _array_from_bytes(buf, dtype, shape, order == "F")


def _copyreg_reconstructor(cls, base, state=None):
    # Protocol 0/1 pickles of plain objects: copyreg._reconstructor(cls, object, None). Only ever
    # instantiate our own inert classes.
    if isinstance(cls, type) and issubclass(cls, (OpaqueObject, _NdarrayStub)):
        return cls.__new__(cls)
    raise UnsafePickleError("copyreg._reconstructor on a class outside the allow-list")


def _ordered_dict(*args):
    if not args:                # torch's backward_hooks, once per tensor
        return collections.OrderedDict()
    return collections.OrderedDict(*(_check_keys(a.items() if isinstance(a, dict) else a) for a in args))


def _defaultdict(factory=None, *args):
    # The factory would be called on a missing key: drop it, keep the data.
    return dict(*(_check_keys(a.items() if isinstance(a, dict) else a) for a in args))


def _set(*args):
    return set(*(_check_keys(a, pairs=False) for a in args))


def _frozenset(*args):
    return frozenset(*(_check_keys(a, pairs=False) for a in args))


def _complex(*args):
    return complex(*(float(a) for a in args))


def _slice(*args):
    return slice(*args)


def _bytearray(data=b"", *args):
    # bytearray(n) would allocate n zero bytes: a few pickle bytes must not ask for gigabytes.
    if not isinstance(data, (bytes, bytearray, str)):
        raise UnsafePickleError("bytearray() in a pickle with a size instead of data")
    return bytearray(data, *args)


COMMON_ALLOWED: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("collections", "defaultdict"): _defaultdict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "complex"): _complex,
    ("builtins", "slice"): _slice,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "set"): _set,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "ndarray"): _NdarrayStub,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
}


_CHUNK = 1 << 20
_MAX_LINE = 64 << 20


class _BoundedReader:
    """The unpickler's view of its stream: a length field can claim terabytes, but read(n) only
    ever allocates what the stream actually holds (file.read(n) would allocate n bytes first),
    and a text line stops at 64 MiB."""

    def __init__(self, f):
        self._f = f

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n <= _CHUNK:
            return self._f.read(n)
        parts = []
        while n > 0:
            part = self._f.read(min(n, _CHUNK))
            if not part:
                break
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def readline(self) -> bytes:
        return self._f.readline(_MAX_LINE)

    def readinto(self, b) -> int:
        return self._f.readinto(b)


# A tuple used as a dict key or set element may hold at most this many tuples, nested at most
# MAX_DEPTH deep. hash() of a tuple is not cached and walks every path: 64 levels of memo-shared
# pairs are 2**64 nodes in a pickle of a few hundred bytes. Real checkpoint keys are a few values.
MAX_KEY_TUPLES = 256


def check_key(key: Any, cache: dict | None = None) -> None:
    """Refuse a hash key (dict key, set element) whose hash would walk more than MAX_KEY_TUPLES
    tuples or nest deeper than MAX_DEPTH. Counting is by object (memo by id), so sharing costs
    nothing here; `cache` (id -> (tuple,)) remembers keys already checked (the tuple is kept
    alive so its id is not reused)."""
    if not isinstance(key, tuple) or not key:
        return
    if cache is not None and id(key) in cache:
        return
    sizes: dict[int, int] = {}
    stack: list[tuple[tuple, int, bool]] = [(key, 0, False)]
    while stack:
        t, depth, done = stack.pop()
        if done:
            n = 1 + sum(sizes[id(c)] for c in t if isinstance(c, tuple) and c)
            if n > MAX_KEY_TUPLES:
                raise UnsafePickleError(f"a dictionary key or set element nests more than {MAX_KEY_TUPLES} tuples "
                                        "(hashing it would walk every path through them)")
            sizes[id(t)] = n
            continue
        if id(t) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise UnsafePickleError(f"a dictionary key or set element nests deeper than {MAX_DEPTH} levels")
        stack.append((t, depth, True))
        stack.extend((c, depth + 1, False) for c in t if isinstance(c, tuple) and c and id(c) not in sizes)
    if cache is not None:
        cache[id(key)] = (key,)


def _check_keys(items, pairs: bool = True) -> list:
    """`items` (key, value) pairs (or set elements: pairs=False) as a list, every key checked."""
    items = list(items)
    for it in items:
        check_key(it[0] if pairs and isinstance(it, (tuple, list)) and len(it) == 2 else it)
    return items


# Instances a pickle may BUILD (set state on): inert opaque objects, numpy's array and dtype
# stand-ins, and OrderedDict (torch's state dicts carry `_metadata`). Stand-ins an adapter wants
# BUILT (OneFlow's tensor, whose state names its folder) set `_hubfmt_accepts_build = True` and
# check that state in __setstate__.
def accepts_build(inst: Any) -> bool:
    return (isinstance(inst, (OpaqueObject, _NdarrayStub, collections.OrderedDict, np.dtype))
            or getattr(type(inst), "_hubfmt_accepts_build", False) is True)


_U32, _I32, _U16, _F64 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<H"), struct.Struct(">d")
# Pickles smaller than this keep every memo slot (their memo is small; the scan is not free).
_SCAN_FROM = 1 << 20
_SCAN_CHUNK = 8 << 20            # bytes compared at once (bounds the scan's temporaries)
# A text GET: "g", then what int() may read as a number (ASCII whitespace, sign, digits,
# underscores; a few more characters than int() takes, which only keeps a slot more), then the
# newline. Runs of these characters after different "g"s cannot overlap: one pass finds them all.
_TEXT_GET = re.compile(rb"g(?=([ \t\r\x0b\x0c\x1c-\x1f+\-0-9_]*)\n)")


class _Rescan(Exception):
    """The memo slots skipped so far were needed after all: load again keeping every slot."""


def _memo_reads(data: bytes, pos: int) -> set[int] | None:
    """A superset of the memo indices the GET opcodes of the pickle at data[pos:] read, or None
    (keep every slot) for protocol 4 and later, whose MEMOIZE stores at len(memo).

    Found without parsing opcodes (#18: a Python loop over the 30 million opcodes of a million
    tensors took 3.3 s): the byte after every 0x68 (BINGET), the four after every 0x6a
    (LONG_BINGET), and every text GET's number (what int() reads between a "g" and a newline),
    wherever those bytes sit, opcodes or arguments, so no GET is missed. What skipping does
    change is MEMOIZE's slot, len(memo): a MEMOIZE in such a pickle (CPython writes none below
    protocol 4) makes the unpickler load it again keeping every slot (_Rescan), so what it gives
    is exactly pickle's."""
    if data[pos:pos + 1] == pickle.PROTO and pos + 1 < len(data) and data[pos + 1] >= 4:
        return None
    whole = np.frombuffer(data, dtype=np.uint8)
    reads: set[int] = set()
    for at in range(pos, len(data), _SCAN_CHUNK):
        a = whole[at:at + _SCAN_CHUNK + 4]           # with the arguments of the chunk's last opcodes
        ops = a[:_SCAN_CHUNK]
        get = np.flatnonzero(ops == pickle.BINGET[0])
        get = get[get + 1 < len(a)]
        reads.update(np.unique(a[get + 1]).tolist())
        get = np.flatnonzero(ops == pickle.LONG_BINGET[0])
        get = get[get + 4 < len(a)]
        index = (a[get + 1].astype(np.uint32) | a[get + 2].astype(np.uint32) << 8
                 | a[get + 3].astype(np.uint32) << 16 | a[get + 4].astype(np.uint32) << 24)
        reads.update(np.unique(index).tolist())
    for m in _TEXT_GET.finditer(data, pos):
        try:
            reads.add(int(m[1]))
        except ValueError:
            pass
    return reads


# Targets SETITEM(S) may fill inline: exactly these types (a subclass goes through dispatch).
_PLAIN_DICTS = (dict, collections.OrderedDict)

_CALLABLE_TYPES = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)


class RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python pickle unpickler with an allow-list (see the module docstring for why not
    the C one).

    allowed:          (module, name) -> our callable, merged over COMMON_ALLOWED
    persistent_load:  the format's persistent-id handler (torch storages), or None to refuse
    opaque:           True to stand in inert OpaqueObject classes for unknown, non-forbidden
                      names; False to refuse them
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    # pickle._Unpickler's internals, which typeshed does not describe
    stack: list
    metastack: list
    memo: dict
    read: Callable[[int], bytes]
    append: Callable[[Any], None]

    def __init__(self, file, *, allowed: Mapping[tuple[str, str], Callable] | None = None,
                 persistent_load: Callable[[Any], Any] | None = None, opaque: bool = False,
                 source: str = "pickle"):
        # A pickle already in memory cannot make read(n) allocate more than it holds: read it
        # straight from the BytesIO (C methods; the wrapper cost a Python call per opcode, #18).
        self._in_memory = file if isinstance(file, io.BytesIO) else None
        super().__init__(self._in_memory or _BoundedReader(file), encoding="latin1")
        self._allowed = {**COMMON_ALLOWED, **(allowed or {})}
        self._persistent = persistent_load
        self._opaque = opaque
        self._source = source
        self.opaque_classes: set[str] = set()
        self._key_cache: dict[int, tuple] = {}

    def find_class(self, module: str, name: str):
        fn = self._allowed.get((module, name))
        if fn is not None:
            return fn
        qual = f"{module}.{name}"
        if _forbidden(module, name) or not self._opaque or "." in name or name.startswith("__"):
            raise UnsafePickleError(f"refused to load {qual!r} from the pickle (hubfmt never runs code from a checkpoint)", self._source)
        self.opaque_classes.add(qual)
        return opaque_class(module, name)

    def load(self):
        """The unpickled object. Every failure is a FormatError naming the source (an
        UnsafePickleError when the pickle asked for code), except MemoryError: a bounded input
        must never cause one, so it stays visible as the bug it is."""
        from hubfmt.errors import FormatError, HubfmtError

        try:
            return self._load_in_memory() if self._in_memory is not None else super().load()
        except HubfmtError as e:
            if e.path is None:
                raise type(e)(e.message, self._source) from None
            raise
        except MemoryError:
            raise
        except RecursionError:
            raise FormatError("pickle nests too deeply", self._source) from None
        except Exception as e:      # struct.error, EOFError, ValueError... from damaged bytes
            raise FormatError(f"corrupt pickle: {type(e).__name__}: {e}", self._source) from None

    def _load_in_memory(self):
        """pickle._Unpickler.load for a pickle already in memory (#18): the opcodes torch.save
        and pickle emit for containers, strings, ints, memo and calls are run inline from the bytes
        (an index and struct.unpack_from, a local stack), not one method call and one read() each,
        which was ~45% of reading a torch file of many tiny tensors. Each inline opcode does what
        pickle's own does plus the checks this class adds (find_class, check_key); anything else,
        and any opcode whose arguments or stack are not exactly the plain case (truncated bytes,
        an empty stack, a target other than a plain list or dict), goes to the generic dispatch
        with the same state, so it fails or works exactly as pickle's would. BUILD always does."""
        f = self._in_memory
        assert f is not None
        self.read, self.readinto, self.readline = f.read, f.readinto, f.readline
        if type(self) is not RestrictedUnpickler:
            # A subclass may change any opcode: run them all through its dispatch.
            self.metastack, self.stack = [], []
            self.append = self.stack.append
            self.proto = 0
            dispatch, read = self.dispatch, f.read
            try:
                while True:
                    key = read(1)
                    if not key:
                        raise EOFError
                    dispatch[key[0]](self)  # type: ignore[arg-type]
            except pickle._Stop as stop:  # type: ignore[attr-defined]
                return stop.value
        data = f.getvalue()             # the BytesIO's own bytes, not a copy
        start = f.tell()
        # Memo slots no GET ever reads need not be filled: torch.save memoizes every object it
        # writes, and keeping each tensor's argument tuples and persistent ids alive until the end
        # was half the peak memory of reading a million views (#18). None: keep every slot.
        wanted = _memo_reads(data, start) if len(data) - start >= _SCAN_FROM else None
        try:
            return self._inline(f, data, start, wanted)
        except _Rescan:
            self.memo.clear()
            f.seek(start)
            return self._inline(f, data, start, None)

    def _inline(self, f: io.BytesIO, data: bytes, pos: int, wanted: set[int] | None) -> Any:
        """The opcode loop of _load_in_memory from data[pos], memo slots outside `wanted` skipped
        (None: none skipped)."""
        metastack: list[list[Any]] = []
        stack: list[Any] = []
        self.metastack, self.stack, self.append = metastack, stack, stack.append
        self.proto = 0
        dispatch = self.dispatch
        end = len(data)
        memo = self.memo
        key_cache = self._key_cache
        persistent_load = self.persistent_load
        find_class = self.find_class
        # GLOBAL's two lines (the raw bytes) -> what find_class gave for them: find_class is a
        # pure function of (module, name) for one load (it only ever adds the same name to
        # opaque_classes again), and a torch pickle names the same few globals per tensor.
        found: dict[Any, Any] = {}
        u32, i32, u16, f64 = _U32.unpack_from, _I32.unpack_from, _U16.unpack_from, _F64.unpack_from
        dicts = _PLAIN_DICTS
        try:
            while True:
                if pos >= end:
                    raise EOFError
                op = data[pos]
                pos += 1
                if op == 113:                                   # BINPUT
                    if pos < end and stack:
                        if wanted is None or data[pos] in wanted:
                            memo[data[pos]] = stack[-1]
                        pos += 1
                        continue
                elif op == 88:                                  # BINUNICODE
                    if pos + 4 <= end:
                        n = pos + 4 + u32(data, pos)[0]
                        if n <= end:
                            stack.append(str(data[pos + 4:n], "utf-8", "surrogatepass"))
                            pos = n
                            continue
                elif op == 104:                                 # BINGET
                    if pos < end:
                        try:
                            stack.append(memo[data[pos]])
                        except KeyError:
                            pass
                        else:
                            pos += 1
                            continue
                elif op == 40:                                  # MARK
                    metastack.append(stack)
                    stack = []
                    continue
                elif op == 75:                                  # BININT1
                    if pos < end:
                        stack.append(data[pos])
                        pos += 1
                        continue
                elif op == 116:                                 # TUPLE
                    if metastack:
                        items = tuple(stack)
                        stack = metastack.pop()
                        stack.append(items)
                        continue
                elif op == 82:                                  # REDUCE
                    if len(stack) > 1:
                        args = stack.pop()
                        stack[-1] = stack[-1](*args)
                        continue
                elif op == 41:                                  # EMPTY_TUPLE
                    stack.append(())
                    continue
                elif op == 99:                                  # GLOBAL
                    nl = data.find(b"\n", pos)
                    nl2 = data.find(b"\n", nl + 1) if nl >= 0 else -1
                    if nl2 >= 0:
                        line = data[pos:nl2]
                        g = found.get(line)
                        if g is None:
                            g = found[line] = find_class(data[pos:nl].decode("utf-8"), data[nl + 1:nl2].decode("utf-8"))
                        stack.append(g)
                        pos = nl2 + 1
                        continue
                elif op == 81:                                  # BINPERSID
                    if stack:
                        stack[-1] = persistent_load(stack[-1])
                        continue
                elif op == 133:                                 # TUPLE1
                    if stack:
                        stack[-1] = (stack[-1],)
                        continue
                elif op == 134:                                 # TUPLE2
                    if len(stack) > 1:
                        b = stack.pop()
                        stack[-1] = (stack[-1], b)
                        continue
                elif op == 135:                                 # TUPLE3
                    if len(stack) > 2:
                        c = stack.pop()
                        b = stack.pop()
                        stack[-1] = (stack[-1], b, c)
                        continue
                elif op == 137:                                 # NEWFALSE
                    stack.append(False)
                    continue
                elif op == 136:                                 # NEWTRUE
                    stack.append(True)
                    continue
                elif op == 78:                                  # NONE
                    stack.append(None)
                    continue
                elif op == 74:                                  # BININT
                    if pos + 4 <= end:
                        stack.append(i32(data, pos)[0])
                        pos += 4
                        continue
                elif op == 77:                                  # BININT2
                    if pos + 2 <= end:
                        stack.append(u16(data, pos)[0])
                        pos += 2
                        continue
                elif op == 140:                                 # SHORT_BINUNICODE
                    if pos < end:
                        n = pos + 1 + data[pos]
                        if n <= end:
                            stack.append(str(data[pos + 1:n], "utf-8", "surrogatepass"))
                            pos = n
                            continue
                elif op == 148:                                 # MEMOIZE
                    if stack:
                        if wanted is not None:
                            raise _Rescan       # its slot is len(memo), which skipping changed
                        memo[len(memo)] = stack[-1]
                        continue
                elif op == 114:                                 # LONG_BINPUT
                    if pos + 4 <= end and stack:
                        i = u32(data, pos)[0]
                        if wanted is None or i in wanted:
                            memo[i] = stack[-1]
                        pos += 4
                        continue
                elif op == 106:                                 # LONG_BINGET
                    if pos + 4 <= end:
                        try:
                            stack.append(memo[u32(data, pos)[0]])
                        except KeyError:
                            pass
                        else:
                            pos += 4
                            continue
                elif op == 117:                                 # SETITEMS
                    if metastack and not len(stack) % 2:
                        below = metastack[-1]
                        if below and type(below[-1]) in dicts:
                            for k in stack[::2]:
                                if isinstance(k, tuple):
                                    check_key(k, key_cache)
                            below[-1].update(zip(stack[::2], stack[1::2], strict=True))
                            stack = metastack.pop()
                            continue
                elif op == 115:                                 # SETITEM
                    if len(stack) > 2 and type(stack[-3]) in dicts:
                        check_key(stack[-2], key_cache)
                        v = stack.pop()
                        k = stack.pop()
                        stack[-1][k] = v
                        continue
                elif op == 101:                                 # APPENDS
                    if metastack:
                        below = metastack[-1]
                        if below and type(below[-1]) is list:
                            below[-1].extend(stack)
                            stack = metastack.pop()
                            continue
                elif op == 97:                                  # APPEND
                    if len(stack) > 1 and type(stack[-2]) is list:
                        v = stack.pop()
                        stack[-1].append(v)
                        continue
                elif op == 125:                                 # EMPTY_DICT
                    stack.append({})
                    continue
                elif op == 93:                                  # EMPTY_LIST
                    stack.append([])
                    continue
                elif op == 71:                                  # BINFLOAT
                    if pos + 8 <= end:
                        stack.append(f64(data, pos)[0])
                        pos += 8
                        continue
                elif op == 67:                                  # SHORT_BINBYTES
                    if pos < end:
                        n = pos + 1 + data[pos]
                        if n <= end:
                            stack.append(data[pos + 1:n])
                            pos = n
                            continue
                elif op == 147:                                 # STACK_GLOBAL
                    if len(stack) > 1 and type(stack[-1]) is str and type(stack[-2]) is str:
                        name = stack.pop()
                        pair = (stack[-1], name)
                        g = found.get(pair)
                        if g is None:
                            g = found[pair] = find_class(stack[-1], name)
                        stack[-1] = g
                        continue
                elif op == 149:                                 # FRAME: the opcodes follow inline
                    if pos + 8 <= end:
                        pos += 8
                        continue
                elif op == 46:                                  # STOP
                    if stack:
                        f.seek(pos)
                        return stack.pop()
                # Everything else, and the cases above that are not plain: pickle's own code
                # (with this class's overrides), on the same stack, memo and position.
                f.seek(pos)
                self.stack = stack
                self.append = stack.append
                dispatch[op](self)  # type: ignore[arg-type]
                pos = f.tell()
                stack = self.stack
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def load_frame(self):
        if self._in_memory is None:
            return pickle._Unpickler.load_frame(self)  # type: ignore[attr-defined]
        if len(self.read(8)) != 8:
            raise EOFError
    dispatch[pickle.FRAME[0]] = load_frame            # type: ignore[assignment]

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError("unexpected persistent id in the pickle", self._source)
        return self._persistent(pid)

    def load_build(self):
        inst = self.stack[-2]       # [..., inst, state]
        if isinstance(inst, _CALLABLE_TYPES) or (callable(inst) and not isinstance(inst, OpaqueObject)):
            raise UnsafePickleError(f"refused BUILD on {type(inst).__name__} {getattr(inst, '__name__', '')!r}: "
                                    "a pickle may set state only on data objects", self._source)
        if not accepts_build(inst):
            # hubfmt's own stand-ins (a tensor view, a storage, a dtype) are checked when they are
            # made; BUILD after that would rewrite them behind the check.
            raise UnsafePickleError(f"refused BUILD on {type(inst).__name__}: a pickle may set state only on "
                                    "opaque objects, numpy arrays and dtypes, and dictionaries", self._source)
        super().load_build()     # type: ignore[misc]

    dispatch[pickle.BUILD[0]] = load_build           # type: ignore[assignment]

    # Opcodes that hash what they insert: a tuple's hash is not cached and walks every path, so a
    # key must be small (see check_key).
    def load_setitem(self):
        check_key(self.stack[-2], self._key_cache)
        super().load_setitem()      # type: ignore[misc]

    dispatch[pickle.SETITEM[0]] = load_setitem        # type: ignore[assignment]

    def load_setitems(self):
        for k in self.stack[::2]:   # the items since the mark: key, value, key, value...
            check_key(k, self._key_cache)
        super().load_setitems()     # type: ignore[misc]

    dispatch[pickle.SETITEMS[0]] = load_setitems      # type: ignore[assignment]

    def load_dict(self):
        for k in self.stack[::2]:
            check_key(k, self._key_cache)
        super().load_dict()         # type: ignore[misc]

    dispatch[pickle.DICT[0]] = load_dict              # type: ignore[assignment]

    def load_additems(self):
        for k in self.stack:
            check_key(k, self._key_cache)
        super().load_additems()     # type: ignore[misc]

    dispatch[pickle.ADDITEMS[0]] = load_additems      # type: ignore[assignment]

    def load_frozenset(self):
        for k in self.stack:
            check_key(k, self._key_cache)
        super().load_frozenset()    # type: ignore[misc]

    dispatch[pickle.FROZENSET[0]] = load_frozenset    # type: ignore[assignment]

    def load_bytearray8(self):
        # Python's version allocates bytearray(claimed length) before reading: read first.
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8  # type: ignore[assignment]


def restricted_loads(data: bytes, **kwargs) -> Any:
    """Unpickle `data` with RestrictedUnpickler(**kwargs); every failure is a FormatError.

    >>> restricted_loads(pickle.dumps({"epoch": 3}))
    {'epoch': 3}
    """
    from hubfmt.errors import FormatError, HubfmtError

    source = kwargs.get("source", "pickle")
    try:
        return unwrap(RestrictedUnpickler(io.BytesIO(data), **kwargs).load())
    except HubfmtError as e:
        if e.path is None:
            raise type(e)(e.message, source) from None
        raise
    except RecursionError:
        raise FormatError("pickle nests too deeply", source) from None


MAX_DEPTH = 200


# type -> whether unwrap returns its instances unchanged (no stand-in, no container inside).
_LEAVES: dict[type, bool] = {}
_WALKED = (_NdarrayStub, dict, list, tuple, OpaqueObject)


def _leaf(v: Any, leaves: dict) -> bool:
    """Whether unwrap leaves `v` as it is (remembered per type in `leaves`, when it is _LEAVES)."""
    if leaves is not _LEAVES:
        return False
    t = type(v)
    leaf = leaves[t] = not issubclass(t, _WALKED)
    return leaf


def unwrap(obj: Any, _depth: int = 0, _memo: dict | None = None) -> Any:
    """Replace numpy stand-ins by the arrays they rebuilt, throughout containers.

    Each object is visited once (memo by id): a pickle can share one list many times over, and a
    301-byte pickle of 40 levels of [a, a] would otherwise take 2**40 steps. Nesting deeper than
    MAX_DEPTH is refused rather than followed."""
    from hubfmt.errors import FormatError

    memo = {} if _memo is None else _memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if _depth > MAX_DEPTH:
        raise FormatError(f"pickle nests deeper than {MAX_DEPTH} levels")
    d = _depth + 1
    # A value of a type unwrap leaves as it is (a string, a number, an adapter's tensor stand-in)
    # is not recursed into: unwrap(v) would return v itself, unless v sits deeper than MAX_DEPTH.
    leaves = _LEAVES if d <= MAX_DEPTH else {}
    if isinstance(obj, _NdarrayStub):
        out = obj.array
    elif isinstance(obj, collections.OrderedDict):
        memo[key] = out = obj
        for k, v in obj.items():
            if not (leaves.get(type(v)) or _leaf(v, leaves)):
                obj[k] = unwrap(v, d, memo)
    elif isinstance(obj, dict):
        memo[key] = out = {}
        for k, v in obj.items():
            out[k] = v if leaves.get(type(v)) or _leaf(v, leaves) else unwrap(v, d, memo)
    elif isinstance(obj, list):
        memo[key] = out = []
        out.extend(v if leaves.get(type(v)) or _leaf(v, leaves) else unwrap(v, d, memo) for v in obj)
    elif isinstance(obj, tuple):
        out = tuple(unwrap(v, d, memo) for v in obj)
    elif isinstance(obj, OpaqueObject):
        memo[key] = out = obj
        if obj.state is not None:
            obj.state = unwrap(obj.state, d, memo)
    else:
        out = obj
    memo[key] = out
    return out
