"""The manifest: hubfmt's metadata inside a safetensors file (spec/hubfmt-v1.md, 'Manifest')."""
from __future__ import annotations

import json

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


def build(ckpt: Checkpoint) -> dict[str, str]:
    """The `__metadata__` dict for `ckpt` (spec section 4)."""
    tensors = {}
    for name, e in ckpt.entries.items():
        tensors[name] = e.info.to_json()
    manifest = {
        "source": {k: v for k, v in vars(ckpt.source).items() if v},
        "tensors": tensors,
        "layers": {path: {"kind": li.kind, "attrs": li.attrs} for path, li in ckpt.layers.items()},
    }
    meta = {KEY_VERSION: FORMAT_VERSION, KEY_MANIFEST: json.dumps(manifest, separators=(",", ":"), sort_keys=False)}
    if ckpt.extra:
        meta[KEY_EXTRA] = extra_codec.encode(ckpt.extra)
    return meta


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
        m = json.loads(meta.get(KEY_MANIFEST, "{}"))
        infos = {n: TensorInfo.from_json(d) for n, d in m.get("tensors", {}).items()}
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
