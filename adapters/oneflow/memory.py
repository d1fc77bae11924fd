"""In-memory OneFlow models <-> canonical checkpoints. These need OneFlow (Python 3.10 side
environment); it is imported inside the functions only."""
from __future__ import annotations

from hubfmt.sdk import dtypes
from hubfmt.sdk import Checkpoint, LayerInfo, LazyTensor, TensorInfo
from hubfmt.sdk import ConversionError, MissingFrameworkError
from hubfmt.sdk import Report, flatten

from .names import kind_from_names, kind_of_module, layer_attrs


def _flow(what: str):
    try:
        import oneflow
    except ImportError:
        raise MissingFrameworkError("oneflow", "oneflow", what) from None
    return oneflow


def _dtype_name(flow_dtype) -> str:
    name = str(flow_dtype).rpartition(".")[2]          # "oneflow.float16" -> "float16"
    if name not in dtypes.DTYPES:
        raise ConversionError(f"OneFlow dtype {flow_dtype} has no canonical equivalent")
    return name


def _numpy(t, dtype: str):
    t = t.detach().cpu()
    if dtype == "bfloat16":                             # numpy has no bfloat16: carry its bits
        return dtypes.convert(t.float().numpy(), "float32", "bfloat16")
    return t.numpy()


def from_model(model) -> Checkpoint:
    """A canonical checkpoint of a OneFlow module (or of a state dict of OneFlow tensors).

    >>> ckpt = from_model(flow.nn.Conv2d(3, 8, 3))      # doctest: +SKIP
    >>> ckpt.layers[""].attrs["stride"]                  # doctest: +SKIP
    [1, 1]
    """
    flow = _flow("reading a OneFlow model")
    if isinstance(model, flow.nn.Module):
        state = model.state_dict()
        modules = dict(model.named_modules())
    elif isinstance(model, dict):
        state, modules = model, {}
    else:
        raise ConversionError(f"from_model takes a oneflow.nn.Module or a state dict, not {type(model).__name__}")
    guessed = kind_from_names({n: tuple(t.shape) for n, t in state.items()})
    ckpt = Checkpoint()
    ckpt.report.stage = "read"
    ckpt.source.framework = "oneflow"
    ckpt.source.framework_version = flow.__version__
    ckpt.source.format = "oneflow-module" if modules else "oneflow-state-dict"
    first_of: dict[int, str] = {}
    for name, t in state.items():
        if not isinstance(t, flow.Tensor):
            raise ConversionError(f"state dict entry {name!r} is a {type(t).__name__}, not a OneFlow tensor")
        layer, _, role = name.rpartition(".")
        module = modules.get(layer)
        kind = kind_of_module(module) if module is not None else guessed[name]
        dt = _dtype_name(t.dtype)
        tensor = LazyTensor(tuple(t.shape), dt, lambda t=t, dt=dt: _numpy(t, dt))
        tied = first_of.get(id(t))
        first_of.setdefault(id(t), name)
        ckpt.add(name, tensor, TensorInfo(kind=kind, role=role, layer=layer, original_name=name,
                                          original_dtype=dt, tied_to=tied))
        if kind != "tensor" and layer not in ckpt.layers:
            ckpt.layers[layer] = LayerInfo(kind, layer_attrs(module, kind) if module is not None else {})
        if tied:
            ckpt.report.add("tied", name, f"the same tensor as {tied}")
    ckpt.report.tensors_in = len(ckpt)
    return ckpt


def to_model(ckpt: Checkpoint, module, *, strict: bool = True) -> Report:
    """Load `ckpt` into a OneFlow module, casting each tensor to the parameter's dtype.

    With strict=True a missing, unexpected or mis-shaped tensor is a ConversionError (nothing is
    loaded); with strict=False those are reported and the rest is loaded.

    >>> report = to_model(hubfmt.read("yolo.safetensors"), model)     # doctest: +SKIP
    >>> print(report.to_text())                                        # doctest: +SKIP
    """
    flow = _flow("loading into a OneFlow model")
    flatten.check_decided(ckpt)     # a Dense's row order after a Flatten its reader could not tell
    report = Report(stage="write", destination=type(module).__name__)
    target = module.state_dict()
    new = {}
    for name, ref in target.items():
        if name not in ckpt:
            layer = name.rpartition(".")[0]
            if name.endswith("num_batches_tracked") and f"{layer}.running_var" in ckpt:
                # Sources other than torch/OneFlow have no BatchNorm counter (as the writer does).
                new[name] = flow.zeros((), dtype=flow.int64)
                report.add("created", name, "OneFlow BatchNorm counter the source lacks (0)")
            else:
                report.add("missing", name, "the module has it, the checkpoint does not")
            continue
        src = ckpt.entries[name].tensor
        if tuple(src.shape) != tuple(ref.shape):
            report.add("mismatch", name, f"checkpoint {list(src.shape)} vs module {list(ref.shape)}")
            continue
        want = _dtype_name(ref.dtype)
        data = src.load()
        if want == "bfloat16":
            new[name] = flow.tensor(dtypes.convert(data, src.dtype, "float32")).to(flow.bfloat16)
        else:
            new[name] = flow.tensor(dtypes.convert(data, src.dtype, want))
        if want != src.dtype:
            report.add("cast", name, f"{src.dtype}->{want}")
        else:
            report.add("matched", name)
    for name in ckpt:
        if name not in target:
            report.add("unexpected", name, "in the checkpoint, not in the module")
    if strict and report.problems:
        first = report.problems[0]
        raise ConversionError(f"{len(report.problems)} tensor(s) do not fit the module (first: {first.action} "
                              f"{first.name}: {first.detail}); pass strict=False to load the rest")
    module.load_state_dict(new, strict=strict)
    report.tensors_in = len(ckpt)
    report.tensors_out = len(new)
    return report
