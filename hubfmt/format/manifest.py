"""The manifest: hubfmt's metadata inside a safetensors file (spec/hubfmt-v1.md, 'Manifest')."""
from __future__ import annotations

import json
from typing import Iterator

from hubfmt.format import jsonstream
from hubfmt.format import extra as extra_codec
from hubfmt.format.checkpoint import Checkpoint, LayerInfo, SourceInfo, TensorInfo
from hubfmt.errors import FormatError, VersionError

FORMAT_VERSION = "1.0"
KEY_VERSION = "hubfmt.version"
KEY_MANIFEST = "hubfmt.manifest"
KEY_EXTRA = "hubfmt.extra"


def check_version(version: str, path: str | None) -> None:
    """Refuse a hub file whose major version this reader does not know."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise FormatError(f"malformed hubfmt version {version!r}", path) from None
    if major != int(FORMAT_VERSION.split(".")[0]):
        raise VersionError(f"hub format version {version} is not supported by this hubfmt (reads version {FORMAT_VERSION}); "
                           "use a hubfmt release that reads it", path)


def build(ckpt: Checkpoint, *, deferred: bool = False) -> dict:
    """The `__metadata__` dict for `ckpt` (spec section 4). With `deferred`, the manifest is a
    ManifestText that a writer turns into text when (and where) it writes it."""
    text = ManifestText(ckpt)
    meta: dict = {KEY_VERSION: FORMAT_VERSION, KEY_MANIFEST: text if deferred else str(text)}
    if ckpt.extra:
        meta[KEY_EXTRA] = extra_codec.encode(ckpt.extra)
    return meta


_enc = json.encoder.encode_basestring_ascii      # what json.dumps uses for a str (C)


class ManifestText:
    """The manifest of `ckpt` as compact JSON: exactly json.dumps({"source", "tensors", "layers"},
    separators=(",", ":")) of the dicts TensorInfo.to_json gives, made entry by entry (the dicts of
    a million tensors are never built, #13). `pieces()` yields it a few thousand entries at a
    time, for a writer that streams it (a shard index: the manifest of a million tensors is
    ~150 MB, never one string then); str() joins them."""

    __slots__ = ("ckpt",)

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    def pieces(self) -> Iterator[str]:
        ckpt = self.ckpt
        source = json.dumps({k: v for k, v in vars(ckpt.source).items() if v}, separators=(",", ":"))
        yield '{"source":' + source + ',"tensors":{'
        part: list[str] = []
        first = True
        for name, e in ckpt.entries.items():
            part.append(_enc(name) + ":" + _info_text(e.info))
            if len(part) == 4096:
                yield ("" if first else ",") + ",".join(part)
                part, first = [], False
        if part:
            yield ("" if first else ",") + ",".join(part)
        yield '},"layers":' + json.dumps({path: {"kind": li.kind, "attrs": li.attrs} for path, li in ckpt.layers.items()},
                                         separators=(",", ":")) + "}"

    def __str__(self) -> str:
        return "".join(self.pieces())


def resolved(meta: dict) -> dict[str, str]:
    """`meta` with a deferred manifest made text (for a header, which needs its size up front)."""
    return {k: str(v) if isinstance(v, ManifestText) else v for k, v in meta.items()}


def _info_text(info: TensorInfo) -> str:
    """json.dumps(info.to_json(), separators=(",", ":")), without the dict."""
    kind, role, layer, name = info.kind, info.role, info.layer, info.original_name
    dtype, layout, shape, tied = info.original_dtype, info.original_layout, info.original_shape, info.tied_to
    if not (type(kind) is str and type(role) is str and type(layer) is str and type(name) is str
            and type(dtype) is str and type(layout) is str and (tied is None or type(tied) is str)
            and (shape is None or (type(shape) is tuple and all(type(d) is int for d in shape)))):
        return json.dumps(info.to_json(), separators=(",", ":"))   # the uncommon entries
    # The common entry, in to_json's order, empty fields left out. Kinds, roles, dtypes and
    # layouts repeat: their fragments are made once (a bounded cache); the layer path and the
    # name are encoded for each entry.
    head = _HEADS.get((kind, role))
    if head is None:
        head = ",".join(f for f in (kind and '"kind":' + _enc(kind), role and '"role":' + _enc(role)) if f)
        if len(_HEADS) < 4096:
            _HEADS[(kind, role)] = head
    tail = _TAILS.get((dtype, layout))
    if tail is None:
        tail = ",".join(f for f in (dtype and '"original_dtype":' + _enc(dtype),
                                    layout and '"original_layout":' + _enc(layout)) if f)
        if len(_TAILS) < 4096:
            _TAILS[(dtype, layout)] = tail
    parts = [head] if head else []
    if layer:
        parts.append('"layer":' + _enc(layer))
    if name:
        parts.append('"original_name":' + _enc(name))
    if tail:
        parts.append(tail)
    if shape is not None:
        parts.append('"original_shape":[' + ",".join(map(str, shape)) + "]")
    if tied:
        parts.append('"tied_to":' + _enc(tied))
    return "{" + ",".join(parts) + "}"


_HEADS: dict[tuple, str] = {}
_TAILS: dict[tuple, str] = {}


# Layer attributes the spec defines (section 4.3), by the values they may take: writers compute
# with them, so a manifest saying `eps: "x"` is malformed, not a crash later.
_NUMBER_ATTRS = ("eps", "momentum", "forget_bias_folded")
_INT_ATTRS = ("groups",)
_BOOL_ATTRS = ("fix_gamma",)
_SPATIAL_ATTRS = ("stride", "padding", "dilation")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_attrs(layer: str, attrs: dict) -> None:
    """ValueError naming the attribute when a spec-defined layer attribute has the wrong type."""
    for k, v in attrs.items():
        ok = True
        if k in _NUMBER_ATTRS:
            ok = _is_number(v)
        elif k in _INT_ATTRS:
            ok = _is_int(v) and v >= 1
        elif k in _BOOL_ATTRS:
            ok = isinstance(v, bool)
        elif k in _SPATIAL_ATTRS:
            ok = (_is_int(v) and v >= 0) or v in ("same", "valid") or (
                isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v))
        if not ok:
            raise ValueError(f"layer {layer!r}: attribute {k!r} is {v!r}, which is not a valid value for it")


def parse(meta: dict, path: str | None) -> tuple[dict, dict, SourceInfo, dict] | None:
    """(tensor infos, layers, source, extra) from `__metadata__`, or None for a foreign
    safetensors file (no hubfmt keys)."""
    if not meta or KEY_VERSION not in meta:
        return None
    check_version(meta[KEY_VERSION], path)
    try:
        infos: dict[str, TensorInfo] = {}

        def tensor(name: str, d) -> None:
            info = infos[name] = TensorInfo.from_json(d)      # a later duplicate wins, as in json.loads
            if info.original_name == name:
                info.original_name = name       # the key's string, not an equal copy (~60 B a tensor)

        # One entry's JSON object at a time: a million entries (~500 bytes each as parsed JSON)
        # never exist together (#13).
        m = jsonstream.loads(meta.get(KEY_MANIFEST, "{}"), {"tensors": tensor})
        if not isinstance(m, dict):
            raise ValueError("the manifest is not a JSON object")
        if m.get("tensors", jsonstream.STREAMED) is not jsonstream.STREAMED:
            raise ValueError("'tensors' is not a JSON object")
        layers = {p: LayerInfo(d["kind"], dict(d.get("attrs", {}))) for p, d in m.get("layers", {}).items()}
        for p, li in layers.items():
            check_attrs(p, li.attrs)
        source = SourceInfo(**{k: str(v) for k, v in m.get("source", {}).items() if k in SourceInfo.__dataclass_fields__})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"malformed hubfmt manifest: {e}", path) from None
    try:
        extra = extra_codec.decode(meta[KEY_EXTRA]) if KEY_EXTRA in meta else {}
    except Exception as e:  # base64/msgpack errors have no common base
        raise FormatError(f"malformed hubfmt.extra: {type(e).__name__}: {e}", path) from None
    return infos, layers, source, extra
