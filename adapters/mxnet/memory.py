"""In-memory Gluon Blocks <-> canonical Checkpoint (needs MXNet; imported only in here)."""
from __future__ import annotations

import numpy as np

from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, SourceInfo, TensorInfo
from hubfmt.sdk import ConversionError, MissingFrameworkError
from hubfmt.sdk import Report, flatten

from . import names, symbol

# Gluon block class -> the operator it runs (convolutions say so themselves: `_op_name`)
_OPS = {"Dense": "FullyConnected", "BatchNorm": "BatchNorm", "SyncBatchNorm": "BatchNorm",
        "Embedding": "Embedding", "LayerNorm": "LayerNorm", "InstanceNorm": "InstanceNorm",
        "GroupNorm": "GroupNorm"}


def import_mxnet():
    """Import mxnet 1.x under numpy >= 1.24, which removed aliases mxnet still uses."""
    for alias, value in (("bool", bool), ("int", int), ("float", float), ("object", object),
                         ("str", str), ("complex", complex)):
        if alias not in np.__dict__:
            setattr(np, alias, value)
    try:
        import mxnet
    except ImportError:
        raise MissingFrameworkError("mxnet", "mxnet", "a Gluon model") from None
    return mxnet


def _layers(block, prefix: str = "") -> dict[str, LayerInfo]:
    """Canonical layer kinds and attributes of a block tree, by structured path."""
    out = {}
    for name, child in block._children.items():
        child = child() if not hasattr(child, "_children") else child     # weakref in some versions
        path = f"{prefix}{name}"
        op = getattr(child, "_op_name", None) or _OPS.get(type(child).__name__)
        if op:
            raw = {k: str(v) for k, v in (getattr(child, "_kwargs", None) or {}).items()}
            if op == "FullyConnected":
                raw["flatten"] = str(getattr(child, "_flatten", True))
            kind, attrs = symbol.layer_of(op, raw)
            if kind != "tensor":
                out[path] = LayerInfo(kind, attrs)
        out.update(_layers(child, path + "."))
    return out


def from_model(block, **options) -> Checkpoint:
    """A Gluon Block's parameters (structured names, as save_parameters writes) as a Checkpoint.

    >>> ckpt = from_model(gluon.model_zoo.vision.resnet18_v1())     # doctest: +SKIP
    """
    if options:
        raise ConversionError(f"option(s) not supported for a Gluon model: {', '.join(sorted(options))}")
    mx = import_mxnet()
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source = SourceInfo("mxnet", mx.__version__, type(block).__name__, "gluon-block")
    ckpt.extra = {"mxnet": {"style": "gluon"}}
    layers = _layers(block)
    first: dict[int, str] = {}      # a Parameter shared by two blocks appears under both names
    for gname, param in block._collect_params_with_prefix().items():
        try:
            arr = param.data().asnumpy()
        except RuntimeError as e:     # not initialised, or deferred: shapes unknown until a forward pass
            raise ConversionError(f"parameter {gname!r} has no data yet ({type(e).__name__}): initialise the block "
                                  "and run one forward pass first") from None
        canon, layer, role = names.canonical(gname)
        li = layers.get(layer)
        kind = li.kind if li else "tensor"
        if kind == "conv2d" and li.attrs.get("groups", 1) > 1 and arr.ndim == 4 and arr.shape[1] == 1:
            kind = "depthwise_conv2d"
        if li:
            ckpt.layers.setdefault(layer, LayerInfo(kind, dict(li.attrs)))
        tensor = LazyTensor.from_array(arr)
        if kind == "batch_norm" and role == "weight" and li.attrs.get("fix_gamma"):
            tensor = LazyTensor.from_array(np.ones_like(arr))
            ckpt.report.add("warning", gname, "fix_gamma=True (scale=False): MXNet ignores gamma; taken as ones")
        ckpt.add(canon, tensor, TensorInfo(kind=kind, role=role, layer=layer, original_name=gname,
                                           tied_to=first.get(id(param))))
        first.setdefault(id(param), canon)
        if canon != gname:
            ckpt.report.renamed(gname, canon)
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def _fits(have: tuple, want: tuple) -> bool:
    # Gluon leaves unknown (deferred) dimensions as 0
    return len(have) == len(want) and all(w in (0, h) for h, w in zip(have, want, strict=True))


def to_model(ckpt: Checkpoint, block, *, strict: bool = True) -> Report:
    """Load `ckpt` into a Gluon Block: by name (canonical or the MXNet original), else by order
    with shapes checked. strict: every block parameter filled and every tensor used.

    >>> to_model(hubfmt.read("resnet.safetensors"), net)          # doctest: +SKIP
    """
    mx = import_mxnet()
    flatten.check_decided(ckpt)     # a Dense's row order after a Flatten its reader could not tell
    report = Report(stage="write")
    params = block._collect_params_with_prefix()
    usable = [n for n in ckpt.entries if ckpt[n].info.role != "num_batches_tracked"]
    for n in ckpt.entries:
        if n not in usable:
            report.add("dropped", n, "MXNet BatchNorm keeps no step count")
    lookup = {}
    for n in usable:
        lookup.setdefault(n, n)
        lookup.setdefault(names.strip_prefix(ckpt[n].info.original_name)[1], n)
    pairs = {}
    for gname, p in params.items():
        layer, role = names.split(gname)
        cands = ([f"{layer}.{names.ROLES[role]}"] if role else []) + [gname, p.name]
        hit = next((lookup[c] for c in cands if c in lookup), None)
        if hit:
            pairs[gname] = hit
    if len(pairs) < len(params):
        # flat names of another instance of the model: `resnetv10_...` vs this block's `resnetv12_...`
        originals = {names.strip_prefix(ckpt[n].info.original_name)[1]: n for n in usable}
        src_pre = names.model_prefix(originals)
        by_unprefixed = {o[len(src_pre):]: n for o, n in originals.items()}
        mine = {g: p.name[len(block.prefix):] if p.name.startswith(block.prefix) else p.name for g, p in params.items()}
        if src_pre and all(m in by_unprefixed for m in mine.values()):
            pairs = {g: by_unprefixed[m] for g, m in mine.items()}
            report.add("warning", "block", f"matched by name without the model prefix {src_pre!r}")
    if len(pairs) < len(params):
        missing = [g for g in params if g not in pairs]
        if len(usable) == len(params) and (strict or not pairs):
            # The weakest evidence: both sides list layers in the same order (shapes checked)
            pairs = dict(zip(params, usable, strict=True))
            report.add("warning", "block", "names differ from the block's: matched by order, shapes checked")
        elif strict or not pairs:
            raise ConversionError(f"block has {len(params)} parameters, the checkpoint {len(usable)}; "
                                  f"unmatched block parameters: {missing[:5]}")
        else:
            for g in missing:
                report.add("missing", g, "not in the checkpoint; left as it was (strict=False)")
    used = set(pairs.values())
    extra = [n for n in usable if n not in used]
    if extra and strict:
        raise ConversionError(f"{len(extra)} tensor(s) have no place in the block (strict): {extra[:5]}")
    for n in extra:
        report.add("unexpected", n, "not in the block")
    for gname, c in pairs.items():
        p = params[gname]
        arr = ckpt[c].tensor.load()
        if ckpt[c].tensor.dtype == "bfloat16":
            arr = ckpt[c].tensor.astype("float32").load()
        want = tuple(p.shape or ())
        if want and not _fits(arr.shape, want):
            # a 1x1 conv classifier and a dense layer hold the same numbers: [o,i,1,1] <-> [o,i]
            if arr.ndim == 2 and len(want) == 4 and want[2:] == (1, 1) and _fits(arr.shape, want[:2]):
                shape = arr.shape + (1, 1)
            elif arr.ndim == 4 and arr.shape[2:] == (1, 1) and _fits(arr.shape[:2], want):
                shape = arr.shape[:2]
            else:
                raise ConversionError(f"{c!r} has shape {list(arr.shape)}, block parameter {gname!r} {list(want)}")
            report.add("reshaped", c, f"{list(arr.shape)} -> {list(shape)}")
            arr = arr.reshape(shape)
        dt = np.dtype(p.dtype)
        if arr.dtype != dt:
            report.add("cast", c, f"{arr.dtype}->{dt}")
            arr = arr.astype(dt)
        p._load_init(mx.nd.array(arr, dtype=dt), None)
        if c != gname:
            report.renamed(c, gname)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(pairs)
    return report
