"""A corpus of hostile pickles and the containers that smuggle them (issue 9).

Every payload, if it ran, would create the canary file (or spend gigabytes / hours): the tests feed
each one to hubfmt.safe_pickle and to every reader that meets pickles, then check that hubfmt refused
it with its own error and that the canary does not exist. Pickles are written opcode by opcode or
with classes whose __reduce__ names the payload: pickling them runs nothing, only unpickling would.

    python tests/hostile/corpus.py OUTDIR CANARY     # write the corpus as files, to look at
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import zipfile


class _Reduce:
    """An object whose pickle calls `fn(*args)` when loaded."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _global(module: str, name: str, proto: int) -> bytes:
    if proto >= 4:      # STACK_GLOBAL with SHORT_BINUNICODE strings
        m, n = module.encode(), name.encode()
        return b"\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93"
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _call(module: str, name: str, *args: str, proto: int = 2) -> bytes:
    """GLOBAL module.name, a tuple of string args, REDUCE (no PROTO/STOP)."""
    return _global(module, name, proto) + b"(" + b"".join(_str(a) for a in args) + b"tR"


def _wrap(body: bytes, proto: int = 2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def code_execution(canary: str) -> dict[str, bytes]:
    """Pickles that would run code: each creates `canary` if executed."""
    import builtins
    import subprocess

    touch = f"touch {canary}"
    py = f"open({canary!r}, 'w').write('pwned')"
    out: dict[str, bytes] = {}
    for proto in (0, 1, 2, 3, 4, 5):
        out[f"reduce-os-system-p{proto}"] = pickle.dumps(_Reduce(os.system, touch), protocol=proto)
    out["reduce-posix-system"] = _wrap(_call("posix", "system", touch))
    out["reduce-nt-system"] = _wrap(_call("nt", "system", touch))
    out["reduce-subprocess-popen"] = pickle.dumps(_Reduce(subprocess.Popen, ["touch", canary]), protocol=2)
    out["reduce-subprocess-call"] = _wrap(_call("subprocess", "call", touch))
    out["reduce-subprocess-check-output"] = _wrap(_call("subprocess", "check_output", touch))
    out["reduce-eval"] = pickle.dumps(_Reduce(builtins.eval, py), protocol=2)
    out["reduce-exec"] = pickle.dumps(_Reduce(builtins.exec, py), protocol=4)
    out["reduce-compile-exec"] = _wrap(_call("builtins", "exec", py, proto=4), 4)
    out["reduce-dunder-builtin-eval"] = _wrap(_call("__builtin__", "eval", py))
    out["reduce-open-write"] = _wrap(_call("builtins", "open", canary, "w"))
    out["reduce-io-open"] = _wrap(_call("io", "open", canary, "w"))
    out["reduce-pathlib-touch"] = _wrap(_call("pathlib", "Path", canary))
    # builtins.getattr(builtins.__import__('os'), 'system')('touch ...'): a chain of REDUCEs.
    out["getattr-import-chain"] = _wrap(
        _global("builtins", "getattr", 2) + b"(" + _call("builtins", "__import__", "os") + _str("system") + b"tR"
        + b"(" + _str(touch) + b"tR")
    out["getattr-chain-stack-global"] = _wrap(
        _global("builtins", "getattr", 4) + b"(" + _call("builtins", "__import__", "os", proto=4) + _str("system")
        + b"tR(" + _str(touch) + b"tR", 4)
    out["importlib-import-module"] = _wrap(
        _global("builtins", "getattr", 2) + b"(" + _call("importlib", "import_module", "os") + _str("system")
        + b"tR(" + _str(touch) + b"tR")
    # STACK_GLOBAL whose module and name strings come back from the memo (a static scanner that
    # reads only the strings next to the opcode misses it; picklescan issue 22's CTF sample).
    out["stack-global-from-memo"] = (b"\x80\x04" + b"\x8c\x02os\x94" + b"0" + b"\x8c\x06system\x94" + b"0"
                                     + b"h\x00h\x01\x93(" + _str(touch) + b"tR.")
    # Slaviero's "sour pickles" (BlackHat 2011): globals(), compile(), eval() and getattr chained.
    out["sour-pickles-compile-eval"] = (
        b"c__builtin__\nglobals\n(tRp100\n0c__builtin__\ncompile\n(S'" + py.replace("'", '"').encode()
        + b"'\nS''\nS'exec'\ntRp101\n0c__builtin__\neval\n(g101\ng100\ntRp102\n0g102\n.")
    out["operator-attrgetter"] = _wrap(_call("operator", "attrgetter", "system"))
    out["operator-methodcaller"] = _wrap(_call("operator", "methodcaller", "system", touch))
    out["functools-partial-system"] = _wrap(
        _global("functools", "partial", 2) + b"(" + _global("os", "system", 2) + _str(touch) + b"tR)R")
    out["runpy-run-path"] = _wrap(_call("runpy", "run_path", canary))
    out["code-interact"] = _wrap(_call("code", "InteractiveInterpreter") + b"")
    out["pty-spawn"] = _wrap(_call("pty", "spawn", "touch", canary))
    out["shutil-rmtree"] = _wrap(_call("shutil", "rmtree", os.path.dirname(canary) + "/nothing"))
    out["webbrowser-open"] = _wrap(_call("webbrowser", "open", "file://" + canary))
    out["ctypes-cdll"] = _wrap(_call("ctypes", "CDLL", "libc.so.6"))
    out["socket"] = _wrap(_global("socket", "socket", 2) + b")R")
    out["types-functiontype"] = _wrap(_call("types", "FunctionType", "x"))
    out["sys-modules"] = _wrap(_global("sys", "modules", 2))
    out["os-path-dotted-module"] = _wrap(_call("os.path", "exists", canary))
    out["dotted-name-proto4"] = _wrap(_call("builtins", "getattr.__self__", proto=4), 4)
    out["numpy-load-pickle"] = _wrap(_call("numpy", "load", canary))
    out["numpy-testing-runstring"] = _wrap(_call("numpy.testing", "rundocs", canary))
    out["numpy-f2py-compile"] = _wrap(_call("numpy.f2py", "compile", "x"))
    out["numpy-object-array"] = pickle.dumps(__import__("numpy").array([_Reduce(os.system, touch)], dtype=object), protocol=2)
    out["numpy-object-dtype"] = _wrap(_call("numpy", "dtype", "O") + b"")
    out["torch-load"] = _wrap(_call("torch", "load", canary))
    out["torch-jit-load"] = _wrap(_call("torch.jit", "load", canary))
    out["torch-serialization-load"] = _wrap(_call("torch.serialization", "load", canary))
    out["torch-hub-load"] = _wrap(_call("torch.hub", "load", "x/y", "m"))
    out["torch-c-import"] = _wrap(_call("torch._C", "_jit_pass_inline", "x"))
    # INST and OBJ (protocol 0/1 ways of calling a class), classic payloads.
    out["inst-os-system"] = b"(S'" + touch.encode() + b"'\nios\nsystem\n."
    out["inst-subprocess-popen"] = b"((lp0\nS'touch'\naS'" + canary.encode() + b"'\naisubprocess\nPopen\n."
    out["obj-os-system"] = b"(cos\nsystem\nS'" + touch.encode() + b"'\no."
    out["obj-builtins-eval"] = b"(cbuiltins\neval\nS\"" + py.encode() + b"\"\no."
    out["obj-proto2-eval"] = b"\x80\x02(" + _global("builtins", "eval", 2) + _str(py) + b"o."
    # Nested pickles: the outer pickle asks to unpickle an inner hostile one.
    inner = out["reduce-os-system-p2"]
    for module, name in (("pickle", "loads"), ("_pickle", "loads"), ("cPickle", "loads"), ("dill", "loads"),
                         ("cloudpickle", "loads"), ("joblib", "load"), ("marshal", "loads"), ("numpy", "loads")):
        out[f"nested-{module}-{name}"] = _wrap(_global(module, name, 2) + b"(C" + bytes([len(inner)]) + inner + b"tR", 3)
    out["nested-pickle-via-codecs"] = _wrap(
        _global("pickle", "loads", 2) + b"(" + _call("_codecs", "encode", inner.decode("latin1"), "latin1") + b"tR")
    # Extension registry (EXT1): resolved through copyreg's table, then find_class.
    out["ext1-unregistered"] = b"\x80\x02\x82\x01."
    out["persistent-id-without-handler"] = b"\x80\x02X\x01\x00\x00\x00xQ."
    out["copyreg-reconstructor-os"] = _wrap(
        _global("copyreg", "_reconstructor", 2) + b"(" + _global("os", "system", 2) + _global("builtins", "object", 2) + b"NtR")
    return out


def state_tampering() -> dict[str, bytes]:
    """BUILD aimed at hubfmt's own allow-listed callables: would rewrite them for the process."""
    out = {}
    # GLOBAL collections.OrderedDict (our stand-in function) then BUILD (None, {'__defaults__': ...})
    out["build-on-allowed-function"] = _wrap(
        _global("collections", "OrderedDict", 2) + b"N}" + _str("__defaults__") + b"(" + _str("x") + b"ts\x86b")
    out["build-dict-on-allowed-function"] = _wrap(
        _global("collections", "OrderedDict", 2) + b"}" + _str("__kwdefaults__") + b"}sb")
    out["build-on-allowed-class"] = _wrap(
        _global("numpy", "ndarray", 2) + b"N}" + _str("__setstate__") + _global("builtins", "set", 2) + b"s\x86b")
    out["build-on-codecs-encode"] = _wrap(
        _global("_codecs", "encode", 2) + b"N}" + _str("__code__") + b"Ns\x86b")
    return out


def resource_exhaustion() -> dict[str, bytes]:
    """Small pickles that would take gigabytes or hours from a naive unpickler."""
    out = {}
    # The C unpickler sizes its memo by the index and zero-fills it: 8 GB for these 11 bytes.
    out["memo-index-2e29"] = b"\x80\x02]r" + struct.pack("<I", 0x1FFFFFF0) + b"."
    out["memo-index-2e31"] = b"\x80\x02]r" + struct.pack("<I", 0x7FFFFFF0) + b"."
    out["binbytes8-claims-1tb"] = b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx."
    out["binunicode8-claims-1tb"] = b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"xx."
    out["bytearray8-claims-1tb"] = b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"xx."
    out["bytearray8-claims-2gb"] = b"\x80\x05\x96" + struct.pack("<Q", 2**31 + 12345) + b"xx."
    out["long4-claims-2gb"] = b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"xx."
    out["frame-claims-1tb"] = b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N."
    out["bytearray-of-1tb"] = _wrap(_global("builtins", "bytearray", 2) + b"(\x8a\x06" + (2**40).to_bytes(6, "little") + b"tR")
    # Two references to the same list at every level: 2**64 paths through 64 levels.
    laughs = b"\x80\x02]q\x00"                           # L0 = [] memo 0
    for i in range(1, 65):
        laughs += b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e" if i < 256 else b""
    out["shared-references-2e64"] = laughs + b"."
    out["deep-nesting-100k"] = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    out["long-decimal-1e6-digits"] = b"L" + b"9" * 1_000_000 + b"L\n."
    return out


# ---- containers: where the readers meet pickles ----------------------------------------------

def torch_zips(hostile: bytes) -> dict[str, bytes]:
    """torch.save zip archives smuggling `hostile` under names a reader might unpickle."""
    def z(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as f:
            for name, data in entries.items():
                f.writestr(name, data)
        return buf.getvalue()

    benign = pickle.dumps({"epoch": 1}, protocol=2)
    meta = {"archive/version": b"3\n", "archive/byteorder": b"little"}
    return {
        "zip-data-pkl": z({"archive/data.pkl": hostile, **meta}),
        "zip-root-data-pkl": z({"data.pkl": hostile, "version": b"3\n"}),
        "zip-other-prefix-first": z({"evil/data.pkl": hostile, "archive/data.pkl": benign, **meta}),
        "zip-nested-data-pkl": z({"archive/data/data.pkl": hostile, "archive/data.pkl": hostile, **meta}),
        "zip-constants-pkl": z({"archive/data.pkl": benign, "archive/constants.pkl": hostile, **meta}),
        "zip-traversal-name": z({"../data.pkl": hostile, "archive/data.pkl": hostile, **meta}),
    }


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def torch_legacy(hostile: bytes) -> dict[str, bytes]:
    """Legacy (pre-1.6) torch.save streams with `hostile` at each of the pickles it chains."""
    magic = pickle.dumps(LEGACY_MAGIC, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    keys = pickle.dumps([], protocol=2)
    body = pickle.dumps({}, protocol=2)
    return {
        "legacy-magic": hostile + proto + info + body + keys,
        "legacy-sys-info": magic + proto + hostile + body + keys,
        "legacy-main": magic + proto + info + hostile + keys,
        "legacy-storage-keys": magic + proto + info + body + hostile,
    }


# ---- hostile torch files: valid vocabulary, hostile structure (issue 13) -----------------------

def _v(value) -> bytes:
    """Plain `value` as protocol-2 opcodes without PROTO/STOP and without memo writes."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.fast = True
    p.dump(value)
    return buf.getvalue()[2:-1]


def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)      # LONG_BINPUT


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)      # LONG_BINGET


def _storage_pid(key: str = "0", numel: int = 16, cls: str = "FloatStorage", view: tuple | None = None) -> bytes:
    """BINPERSID of ('storage', torch.<cls>, key, 'cpu', numel[, view])."""
    return (b"(" + _v("storage") + _global("torch", cls, 2) + _v(key) + _v("cpu") + _v(numel)
            + (_v(view) if view is not None else b"") + b"tQ")


def _rebuild(storage: bytes, offset: int = 0, shape: tuple = (4,), stride: tuple = (1,)) -> bytes:
    """_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())."""
    return (_global("torch._utils", "_rebuild_tensor_v2", 2) + b"(" + storage + _v(offset) + _v(shape)
            + _v(stride) + b"\x89" + _global("collections", "OrderedDict", 2) + b")RtR")


def _build(state: dict) -> bytes:
    """BUILD with (None, slotstate): how pickle sets attributes on a __slots__ object. Values are
    opcodes (bytes) or plain values."""
    body = b"".join(_v(k) + (v if isinstance(v, bytes) else _v(v)) for k, v in state.items())
    return b"N}(" + body + b"u\x86b"


def torch_zip(pickle_body: bytes, storages: dict[str, bytes] | None = None, compress: bool = False) -> bytes:
    """A torch.save-style zip: archive/data.pkl = PROTO 2 + `pickle_body` + STOP, the storages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as f:
        f.writestr("archive/data.pkl", b"\x80\x02" + pickle_body + b".")
        f.writestr("archive/byteorder", b"little")
        for key, data in (storages if storages is not None else {"0": bytes(range(64))}).items():
            f.writestr(f"archive/data/{key}", data)
        f.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _state_dict(*items: tuple[str, bytes]) -> bytes:
    return b"}(" + b"".join(_v(k) + v for k, v in items) + b"u"


def torch_view_tampering() -> dict[str, bytes]:
    """BUILD aimed at hubfmt's own stand-ins after the rebuild function validated them: if the
    rewritten view reached numpy, the output would hold process memory (or the process crash)."""
    t = _rebuild(_storage_pid())
    out = {
        "build-tensor-negative-stride": _state_dict(("w", t + _build({"stride": (-2**40,)}))),
        "build-tensor-huge-stride": _state_dict(("w", t + _build({"stride": (2**40,)}))),
        "build-tensor-huge-offset": _state_dict(("w", t + _build({"offset": 2**40}))),
        "build-tensor-negative-offset": _state_dict(("w", t + _build({"offset": -2**30}))),
        "build-tensor-huge-shape": _state_dict(("w", t + _build({"shape": (2**31, 2**31)}))),
        "build-tensor-storage-not-storage": _state_dict(("w", t + _build({"storage": "x"}))),
        "build-tensor-dtype": _state_dict(("w", t + _build({"dtype": "float64", "shape": (16,)}))),
        # the storage claims more elements than the file holds for it
        "build-storage-numel": _state_dict(("w", _rebuild(_storage_pid() + _build({"numel": 2**20}), 0, (2**20,), (1,)))),
        # a storage whose root is itself: walking to the root would never end
        "build-storage-self-root": _state_dict(("w", _rebuild(_storage_pid() + _put(900) + _build({"root": _get(900)})))),
        "build-storage-data": _state_dict(("w", _rebuild(_storage_pid() + _build({"data": "x"})))),
        "build-storage-type": _storage_pid() + _build({"type_name": "UntypedStorage"}),
        "build-torch-dtype-global": _global("torch", "float32", 2) + b"}" + _v("hub") + _v("float64") + b"sb",
        "build-tensor-class": _global("torch", "Tensor", 2) + _build({"name": "Parameter"}),
        "build-storage-class": _global("torch", "FloatStorage", 2) + _build({"dtype": "float64"}),
    }
    return {name: torch_zip(body) for name, body in out.items()}


def _shared_tuple_levels(levels: int, first: int = 1000) -> bytes:
    """t0 = (); t_i = (t_{i-1}, t_{i-1}): `levels` memo-shared levels, t_levels left on the stack."""
    s = b")" + _put(first) + b"0"
    for i in range(1, levels + 1):
        s += _get(first + i - 1) + _get(first + i - 1) + b"\x86" + _put(first + i) + b"0"
    return s + _get(first + levels)


def amplification_bombs() -> dict[str, bytes]:
    """Torch files of a few KB whose naive reading takes 2**64 steps or re-reads a member per view."""
    out: dict[str, bytes] = {}
    w = ("w", _rebuild(_storage_pid()))
    # hash() of a tuple walks every path: a dict key of 64 shared levels is 2**64 nodes
    key = _shared_tuple_levels(64)
    out["bomb-shared-tuple-dict-key"] = torch_zip(b"}(" + _v("w") + w[1] + key + _v(1) + b"u")
    out["bomb-shared-tuple-set"] = torch_zip(_state_dict(w, ("s", _global("builtins", "set", 2) + b"((" + key + b"ltR")))
    out["bomb-shared-tuple-frozenset-op"] = torch_zip(_state_dict(w, ("s", b"\x80\x04(" + key + b"\x91")))
    # torch.storage._load_from_bytes of a file that calls it 300 times on its own nested copy
    leaf = torch_zip(_state_dict(w))
    for _ in range(4):
        body = _v(leaf) + _put(950) + b"0(" + b"".join(
            _global("torch.storage", "_load_from_bytes", 2) + b"(" + _get(950) + b"tR" for _ in range(300)) + b"l"
        leaf = torch_zip(_state_dict(w, ("nested", body)))
    out["bomb-nested-load-from-bytes"] = leaf
    # a pickled module tree whose every level holds the level below twice, with shared _parameters
    mod = _global("torch.nn.modules.linear", "Linear", 2) + b")\x81"
    params = _put(800) + b"}(" + _v("weight") + _rebuild(_storage_pid()) + b"u" + _put(801)
    s = mod + _put(810) + _build({"_parameters": params, "_buffers": {}, "_modules": {}}) + b"0"
    for i in range(1, 40):
        s += (mod + _put(810 + i) + b"N}(" + _v("_parameters") + _get(801) + _v("_buffers") + b"}" + _v("_modules")
              + b"}(" + _v("a") + _get(810 + i - 1) + _v("b") + _get(810 + i - 1) + b"uu\x86b0")
    out["bomb-shared-module-tree"] = torch_zip(b"}(" + _v("model") + s + _get(810 + 39) + b"u")
    # one deflated storage, 2000 small views: inflated once, not once per view
    member = bytes(8 << 20)
    views = [(f"v{i}", _rebuild(_get(700), i * 1024, (256,), (1,))) for i in range(2000)]
    body = _storage_pid("0", len(member) // 4) + _put(700) + b"0" + _state_dict(*views)
    out["bomb-deflated-storage-many-views"] = torch_zip(body, {"0": member}, compress=True)
    return out



def corpus(canary: str) -> dict[str, bytes]:
    """Every bare hostile pickle, by name."""
    return {**code_execution(canary), **state_tampering(), **resource_exhaustion()}


def main(argv: list[str]) -> int:
    out, canary = argv
    os.makedirs(out, exist_ok=True)
    for name, data in corpus(canary).items():
        with open(os.path.join(out, name + ".pkl"), "wb") as f:
            f.write(data)
    payload = code_execution(canary)["reduce-os-system-p2"]
    for name, data in {**torch_zips(payload), **torch_legacy(payload)}.items():
        with open(os.path.join(out, name + ".pt"), "wb") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
