"""Hugging Face style checkpoints, read and written without torch or transformers.

- a plain safetensors file with torch names and layouts (`safetensors.torch.save_file`, an HF
  `model.safetensors`): read as a `.pth` with the same state dict would be;
- an HF model directory: `config.json` (+ `generation_config.json`) and `model.safetensors`, or
  shards `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`, or the older
  `pytorch_model.bin` (+ `pytorch_model.bin.index.json` and its shards); an index file names the
  same set. One shard alone is refused with the index to pass instead.

Written: a directory `from_pretrained` loads (`model.safetensors`, or shards + index past
`--max-shard-size`, `"format": "pt"` in every file's metadata, the source's `config.json` when it
carried one), or a plain torch safetensors file.
"""
from __future__ import annotations

import json
import os
import re

from hubfmt.sdk import (Checkpoint, FormatError, LayerInfo, LazyTensor, Report, SourceInfo,
                        TensorInfo, atomic_output, check_input_file, safetensors,
                        write_safetensors)

from . import names
from .writer import out_dtype

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_INDEX, "model.safetensors", BIN_INDEX, "pytorch_model.bin")
CONFIG_FILES = ("config.json", "generation_config.json")
_SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-(?P<n>\d{5})\.(?P<ext>safetensors|bin)$")
# The safetensors "format" values whose files carry torch names and layouts.
TORCH_FLAVOURS = ("pt", "torch", "pytorch")
OTHER_FLAVOURS = {"tf": "tensorflow", "flax": "flax", "mlx": "mlx", "np": "numpy", "ms": "mindspore",
                  "mindspore": "mindspore"}
_NOT_TORCH = re.compile(r"(^|[./])(kernel|gamma|beta|moving_mean|moving_variance|moving_var)$|/|:\d+$")
_TORCH_ROLES = re.compile(r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
# config.json keys that change a norm layer's outputs -> the canonical attribute.
_NORM_EPS = ("layer_norm_eps", "rms_norm_eps", "layer_norm_epsilon", "norm_eps", "batch_norm_eps")


def flavour(path: str) -> tuple[str | None, str]:
    """(`"torch"`, `"other"` or None when undecided, why) for a plain safetensors file."""
    header, _, _ = safetensors.read_header(path)
    meta = header.pop("__metadata__", None) or {}
    fmt = str(meta.get("format", "")).lower()
    if fmt in TORCH_FLAVOURS:
        return "torch", f'metadata "format": "{fmt}"'
    if fmt in OTHER_FLAVOURS:
        return "other", f'metadata "format": "{fmt}" ({OTHER_FLAVOURS[fmt]} names and layouts)'
    keys = list(header)
    if keys and not any(_NOT_TORCH.search(n) for n in keys) and all(_TORCH_ROLES.search(n) for n in keys):
        return "torch", "every name ends in a torch role (weight, bias, running_mean, ...)"
    return None, "no \"format\" in its metadata and names that do not say whose they are"


def is_shard_of_a_set(path: str) -> tuple[str, bool] | None:
    """(the index file to name instead, whether it exists) when `path` is named as one shard of
    a sharded set (`stem-0000k-of-0000n.safetensors|bin`)."""
    m = _SHARD.match(os.path.basename(path))
    if not m:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    candidates = [f"{m['stem']}.{m['ext']}.index.json", SAFETENSORS_INDEX if m["ext"] == "safetensors" else BIN_INDEX]
    for name in candidates:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(os.path.dirname(path), name), True
    return os.path.join(os.path.dirname(path), candidates[0]), False


def refuse_lone_shard(path: str, *, index_required: bool) -> None:
    """One shard converted alone would silently be a partial model: refuse it, naming the index."""
    shard = is_shard_of_a_set(path)
    if shard is None or (index_required and not shard[1]):
        return
    index, exists = shard
    where = f"pass its index ({index}) or its directory" if exists else f"its index {index} is missing; pass the index"
    raise FormatError(f"one shard of a sharded checkpoint: {where}, which names every shard", path)


def model_directory_weights(path: str) -> str | None:
    """The weights file (or index) of an HF model directory, None when `path` is not one."""
    if not os.path.isdir(path):
        return None
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _index(path: str) -> dict[str, str]:
    """weight_map of an index file, every shard a plain file name in the index's directory."""
    check_input_file(path, "a shard index")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"not a shard index (JSON with a weight_map): {e}", path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError("not a shard index: no weight_map", path)
    for name, shard in weight_map.items():
        if not isinstance(name, str) or not isinstance(shard, str):
            raise FormatError("weight_map entries must be name: file name", path)
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"shard {shard!r} is not a file name in the index's directory", path)
    return weight_map


def _safetensors_tensors(path: str, inside: str | None = None) -> list[tuple[str, LazyTensor]]:
    check_input_file(path, "a safetensors file" if inside is None else "a shard", inside=inside)
    return safetensors.read_tensors(path)[1]       # header checked (unknown dtypes refused), file order


def _bin_tensors(path: str, report: Report) -> tuple[list[tuple[str, LazyTensor]], dict]:
    from .loading import load
    from .reader import _Reading
    from .tensors import to_lazy

    obj, _ = load(path)
    reading = _Reading(path, False)
    tensors, extra = reading.weights(obj)
    report.extend(reading.report)
    return [(n, to_lazy(t, n, path)) for n, t in tensors], extra


def _read_set(weights: str, report: Report) -> tuple[list[tuple[str, LazyTensor]], dict]:
    """Every tensor of a weights file or index, in the index's order."""
    if weights.endswith(".index.json"):
        folder = os.path.dirname(weights)
        weight_map = _index(weights)
        by_file: dict[str, list[tuple[str, LazyTensor]]] = {}
        extra: dict = {}
        for shard in dict.fromkeys(weight_map.values()):
            shard_path = os.path.join(folder, shard)
            if shard.endswith(".safetensors"):
                by_file[shard] = _safetensors_tensors(shard_path, inside=folder or ".")
            else:
                check_input_file(shard_path, "a shard", inside=folder or ".")
                by_file[shard], more = _bin_tensors(shard_path, report)
                extra.update(more)
        found = {n: (f, t) for f, ts in by_file.items() for n, t in ts}
        out = []
        for name, shard in weight_map.items():
            if name not in found:
                raise FormatError(f"the index puts {name!r} in {shard}, which does not hold it", weights)
            if found[name][0] != shard:
                raise FormatError(f"the index puts {name!r} in {shard}, but it is in {found[name][0]}", weights)
            out.append((name, found[name][1]))
        stray = [n for n in found if n not in weight_map]
        if stray:
            raise FormatError(f"shards hold tensors the index does not list: {', '.join(stray[:5])}", weights)
        return out, extra
    if weights.endswith(".safetensors"):
        return _safetensors_tensors(weights), {}
    return _bin_tensors(weights, report)


def read(path: str) -> Checkpoint:
    """A plain torch safetensors file, an HF model directory or an index file, as a Checkpoint."""
    report = Report(stage="read")
    folder, weights, fmt = None, path, "torch-safetensors"
    directory = model_directory_weights(path)
    if directory is not None:
        folder, weights, fmt = path, directory, "hf"
    elif path.endswith(".index.json"):
        folder, fmt = os.path.dirname(path) or ".", "hf"
    else:
        refuse_lone_shard(path, index_required=False)
    tensors, extra = _read_set(weights, report)
    ckpt = Checkpoint(source=SourceInfo(framework="torch", file=os.path.basename(os.path.normpath(path)), format=fmt))
    layer_kinds, ckpt.layers = names.classify({n: t.shape for n, t in tensors}, {})
    for name, t in tensors:
        if name in ckpt:
            raise FormatError(f"tensor name {name!r} appears twice", path)
        ckpt.add(name, t, TensorInfo(kind=layer_kinds.get(name.rpartition(".")[0], "tensor"), original_name=name,
                                     original_dtype=t.dtype, original_shape=tuple(t.shape)))
    if folder is not None:
        for cfg in CONFIG_FILES:
            p = os.path.join(folder, cfg)
            if os.path.isfile(p):
                extra[cfg] = _config(p)
                report.add("stored", f"extra[{cfg!r}]", f"{cfg} kept as non-tensor content")
        _norm_attrs(ckpt, extra.get("config.json"), report)
    ckpt.extra = extra
    ckpt.report = report
    report.tensors_in = len(ckpt)
    return ckpt


def _config(path: str) -> dict:
    check_input_file(path, "a JSON config")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"not a JSON config: {e}", path) from None
    if not isinstance(data, dict):
        raise FormatError("a config.json holds a JSON object", path)
    return data


def _norm_attrs(ckpt: Checkpoint, config, report: Report) -> None:
    """The norm eps config.json states, on every norm layer (it changes their outputs); norms of a
    model whose config names rms_norm_eps, with a weight and no bias, are RMSNorms (no mean is
    subtracted: not a LayerNorm, whatever their name)."""
    if not isinstance(config, dict):
        return
    eps = next((config[k] for k in _NORM_EPS if isinstance(config.get(k), (int, float))), None)
    if eps is None:
        return
    if "rms_norm_eps" in config:
        for name in ckpt:
            info = ckpt[name].info
            if info.kind == "layer_norm" and f"{info.layer}.bias" not in ckpt:
                info.kind = "rms_norm"
                if info.layer in ckpt.layers:
                    ckpt.layers[info.layer].kind = "rms_norm"
    for layer in dict.fromkeys(ckpt[n].info.layer for n in ckpt):
        kind = ckpt[f"{layer}.weight"].info.kind if f"{layer}.weight" in ckpt else ""
        if kind in ("layer_norm", "group_norm", "rms_norm"):
            info = ckpt.layers.setdefault(layer, LayerInfo(kind))
            info.attrs.setdefault("eps", float(eps))


# ---- writing ------------------------------------------------------------------------------------

def _plan(ckpt: Checkpoint, restore_dtype: bool, report: Report) -> tuple[list[str], dict[str, str]]:
    stored = ckpt.stored_names()
    out: dict[str, str] = {}
    for name in stored:
        e = ckpt[name]
        want = out_dtype(e, restore_dtype)
        out[name] = want
        if want != e.tensor.dtype:
            report.add("cast", name, f"{e.tensor.dtype}->{want} (restored source dtype)")
        else:
            report.add("matched", name)
    for name, e in ckpt.entries.items():
        if e.info.tied_to:
            # from_pretrained re-ties shared weights itself; a safetensors file cannot alias.
            report.add("dropped", name, f"tied to {e.info.tied_to}: stored once, as safetensors requires "
                                        "(from_pretrained ties it again)")
    return stored, out


def write_plain(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress=None,
                restore_dtype: bool = True, max_shard_size: int | None = None) -> Report:
    """A plain safetensors file (or shards + index) with torch names and `"format": "pt"`."""
    path = os.fspath(path)
    report = Report(stage="write")
    names, out_dtypes = _plan(ckpt, restore_dtype, report)
    for k in ckpt.extra:
        report.add("dropped", f"extra[{k!r}]", "non-tensor content: a plain safetensors file holds tensors only "
                                               "(write an hf directory to keep config.json)")
    return write_safetensors(ckpt, path, names, out_dtypes, {"format": "pt"}, report, overwrite=overwrite,
                             max_shard_size=max_shard_size, progress=progress, shard_metadata={"format": "pt"})


def write_directory(ckpt: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, progress=None,
                    restore_dtype: bool = True, max_shard_size: int | None = None, template=None) -> Report:
    """An HF model directory: model.safetensors (or shards + model.safetensors.index.json) and
    the source's config.json / generation_config.json when it carried them, else the `template`
    directory's (`--template` an HF directory: the model the weights are for)."""
    path = os.fspath(path)
    report = Report(stage="write")
    names, out_dtypes = _plan(ckpt, restore_dtype, report)
    configs = {k: v for k, v in ckpt.extra.items() if k in CONFIG_FILES and isinstance(v, dict)}
    if template is not None and os.path.isdir(os.fspath(template)):
        for cfg in CONFIG_FILES:
            p = os.path.join(os.fspath(template), cfg)
            if cfg not in configs and os.path.isfile(p):
                configs[cfg] = _config(p)
                report.add("stored", cfg, f"from the template {os.fspath(template)} (the source has none)")
    with atomic_output(path, overwrite=overwrite) as tmp:
        os.mkdir(tmp)
        inner = write_safetensors(ckpt, os.path.join(tmp, "model.safetensors"), names, out_dtypes, {"format": "pt"},
                                  report, max_shard_size=max_shard_size, progress=progress,
                                  shard_metadata={"format": "pt"})
        for k, v in configs.items():
            with open(os.path.join(tmp, k), "w", encoding="utf-8") as f:
                json.dump(v, f, indent=2)
            if k in ckpt.extra:
                report.add("stored", f"extra[{k!r}]", f"as {os.path.basename(path)}/{k}")
        for k in ckpt.extra:
            if k not in configs:
                report.add("dropped", f"extra[{k!r}]", "non-tensor content other than config.json has no place "
                                                       "in an HF model directory")
    if "config.json" not in configs:
        report.add("warning", os.path.basename(path), "no config.json in the source: from_pretrained needs one "
                                                      "(--template MODEL_DIR copies the model's own)")
    inner.files = [os.path.join(path, os.path.basename(f)) for f in inner.files]
    return inner
