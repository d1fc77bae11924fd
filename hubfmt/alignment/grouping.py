"""A checkpoint seen as an ordered list of layers, for template alignment (hubfmt.align).

Alignment matches LAYERS first (a conv's weight and bias, a batch norm's four tensors travel
together), then roles within them. This module groups tensors into layers, infers a layer's kind
when the checkpoint does not say (a names+shapes listing), decides whether two layers can hold the
same weights, and scores how alike two layer names are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from hubfmt.format.checkpoint import Checkpoint
from hubfmt.format.layouts import RNN_ROLE_PREFIXES
from hubfmt.alignment.table import conv1x1_shape, conv_fc_fits

# Role names other conventions use for the canonical ones (a listing may carry native names).
ROLE_SYNONYMS = {
    "gamma": "weight", "scale": "weight", "kernel": "weight", "beta": "bias",
    "moving_mean": "running_mean", "mean": "running_mean",
    "moving_var": "running_var", "moving_variance": "running_var", "var": "running_var", "variance": "running_var",
}
ROLES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
# Torch/OneFlow bookkeeping: created (as 0) or dropped by alignment, never a reason to fail.
OPTIONAL_ROLES = {"num_batches_tracked"}

# Layer kinds whose weights may stand in for each other (a 1x1 conv and a linear layer).
_FAMILY = {
    "linear": "affine", "conv1d": "affine", "conv2d": "affine", "conv3d": "affine",
    "depthwise_conv2d": "affine", "embedding": "affine",
    "conv_transpose1d": "deconv", "conv_transpose2d": "deconv", "conv_transpose3d": "deconv",
    "batch_norm": "norm", "layer_norm": "norm", "group_norm": "norm", "instance_norm": "norm",
    "lstm": "recurrent", "gru": "recurrent", "rnn": "recurrent", "prelu": "prelu",
}

# Tokens that mean the same thing in different implementations' module names.
TOKEN_SYNONYMS = {
    "bn": "norm", "batchnorm": "norm", "norm": "norm", "batch": "", "ln": "norm", "gn": "norm", "layernorm": "norm",
    "conv": "conv", "convolution": "conv", "cv": "conv",
    "fc": "fc", "dense": "fc", "linear": "fc", "classifier": "fc", "head": "fc", "logits": "fc",
    "dw": "dw", "depthwise": "dw", "dwconv": "dw",
    "se": "se", "squeeze": "se", "excite": "se", "excitation": "se",
    "downsample": "shortcut", "shortcut": "shortcut", "sc": "shortcut",
    "block": "block", "blocks": "block", "layer": "block", "layers": "block", "stage": "block", "stages": "block",
    "module": "", "model": "", "net": "", "backbone": "", "features": "", "feature": "", "body": "", "bias": "",
    "weight": "", "weights": "", "kernel": "", "gamma": "", "beta": "",
    # Attention projections and the roles of a block's norms: HF `query`/`q_proj`, timm's fused
    # `qkv[q]` (hubfmt.alignment.fusion), Keras `query_dense`; the output projection is `proj`
    # (timm), `o_proj`, `out_proj`, `output_dense` (Keras) or `attention.output.dense` (BERT).
    # "proj" says nothing (every one of them is a projection). A pre-norm block's first norm is
    # timm's norm1, HF ViT's layernorm_before; its second norm2, layernorm_after.
    "query": "q", "key": "k", "value": "v", "proj": "", "projection": "", "out": "o", "output": "o",
    "attention": "attn", "self": "", "before": "1", "pre": "1", "after": "2", "post": "2",
}


@dataclass
class Layer:
    """One layer of one side: its path, kind, and role -> (tensor name, shape)."""

    path: str
    kind: str
    kind_known: bool
    index: int
    tensors: dict[str, str] = field(default_factory=dict)     # role -> tensor name
    shapes: dict[str, tuple] = field(default_factory=dict)    # role -> shape
    tokens: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return _FAMILY.get(self.kind, "other")

    @property
    def required(self) -> frozenset[str]:
        return frozenset(r for r in self.tensors if r not in OPTIONAL_ROLES)

    def describe(self) -> str:
        shapes = ", ".join(f"{r} {list(self.shapes[r])}" for r in self.tensors if r not in OPTIONAL_ROLES)
        return f"{self.kind} {shapes}"


# torch nn.MultiheadAttention keeps its fused input projection as two bare parameters.
_BARE_LINEAR = re.compile(r"^(in_proj)_(weight|bias)$")


def _bare_linear(name: str) -> tuple[str, str] | None:
    """(layer path, role) of a linear layer's parameter stored without a module of its own:
    `attn.in_proj_weight` -> ("attn.in_proj", "weight"); None for any other name."""
    parent, _, last = name.rpartition(".")
    m = _BARE_LINEAR.match(last)
    return (f"{parent}.{m.group(1)}" if parent else m.group(1), m.group(2)) if m else None


def _role_of(name: str, info_role: str) -> str:
    role = info_role or name.rpartition(".")[2]
    role = ROLE_SYNONYMS.get(role, role)
    if role in ROLES or role.startswith(RNN_ROLE_PREFIXES):
        return role
    return ""


def _infer_kind(roles: dict[str, tuple]) -> str:
    if "running_mean" in roles or "running_var" in roles:
        return "batch_norm"
    if any(r.startswith(RNN_ROLE_PREFIXES) for r in roles):
        return "rnn"
    w = roles.get("weight")
    if w is None:
        return "tensor"
    return {1: "layer_norm", 2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}.get(len(w), "tensor")


def group_layers(ckpt: Checkpoint) -> list[Layer]:
    """`ckpt`'s tensors grouped into layers, in order of first appearance.

    A tensor whose role is not a known layer role (a position embedding, a class token) is a
    layer of its own, named by its full name.
    """
    layers: dict[str, Layer] = {}
    for name, e in ckpt.entries.items():
        role = _role_of(name, e.info.role)
        path = (e.info.layer or name.rpartition(".")[0]) if role else name
        bare = None if role else _bare_linear(name)
        if bare is not None:
            path, role = bare
        role = role or "tensor"
        layer = layers.get(path)
        if layer is None:
            kind = "linear" if bare is not None else e.info.kind
            layer = layers[path] = Layer(path, kind, kind not in ("", "tensor"), len(layers),
                                         tokens=name_tokens(path))
        if role in layer.tensors:   # two tensors claim one role: keep them apart, by full name
            layer = layers[name] = Layer(name, e.info.kind, True, len(layers), tokens=name_tokens(name))
            role = "tensor"
        layer.tensors[role] = name
        layer.shapes[role] = tuple(e.tensor.shape)
    for layer in layers.values():
        if not layer.kind_known:
            layer.kind = _infer_kind(layer.shapes)
    return list(layers.values())


def families_compatible(a: Layer, b: Layer) -> bool:
    if a.family == b.family:
        return True
    # An inferred kind is a guess from shapes: a rank-1 "weight" may be a norm or a prelu.
    return (not a.kind_known or not b.kind_known) and {a.family, b.family} <= {"norm", "prelu", "other"}


def transform_between(src: Layer, dst: Layer, *, same_name: bool = False) -> str | None:
    """"" when `src`'s tensors fit `dst` as they are, "conv1x1" when they fit after
    [out,in] <-> [out,in,1,1], "conv_fc" after [out,c*kh*kw] <-> [out,c,kh,kw], None when they cannot hold the same weights. Layers of the same
    name need not agree on their kind (a rules file may have fused per-gate linears into an LSTM)."""
    if src.required != dst.required:
        return None
    same_shapes = all(src.shapes[r] == dst.shapes[r] for r in src.required)
    if {src.family, dst.family} == {"affine", "deconv"}:
        # A state dict does not say whether a 4-d weight is a conv's or a transposed conv's: the
        # reader's kind is a guess. Equal shapes may pair (the caller reports the disagreement).
        return "" if same_shapes else None
    if not (same_name or families_compatible(src, dst)):
        return None
    if same_shapes:
        return ""
    if src.family == "affine" == dst.family and "weight" in src.required:
        if conv1x1_shape(src.shapes["weight"]) == dst.shapes["weight"] and all(
                src.shapes[r] == dst.shapes[r] for r in src.required if r != "weight"):
            return "conv1x1"
        if conv_fc_fits(src.shapes["weight"], dst.shapes["weight"]) and all(
                src.shapes[r] == dst.shapes[r] for r in src.required if r != "weight"):
            return "conv_fc"
    return None


def name_tokens(path: str) -> tuple[str, ...]:
    """Normalised tokens of a module path: split at separators, case and digit boundaries; synonyms folded.

    >>> name_tokens("_blocks.0._bn1"), name_tokens("stage1_conv0/BatchNorm")
    (('block', '0', 'norm', '1'), ('block', '1', 'conv', '0', 'norm'))
    """
    out = []
    for word in re.split(r"[._/:\-\s]+", path):
        for tok in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", word):
            tok = tok.lower()
            if tok.isdigit():
                out.append(str(int(tok)))
                continue
            tok = TOKEN_SYNONYMS.get(tok, tok)
            if tok and not (out and out[-1] == tok):   # squeeze_excite -> se, not se se
                out.append(tok)
    return tuple(out)


def name_similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Dice coefficient of two token multisets, in [0, 1].

    >>> round(name_similarity(name_tokens("_blocks.0._bn1"), name_tokens("0._bn1")), 2)
    0.86
    """
    if not a and not b:
        return 1.0
    pool = list(b)
    common = 0
    for t in a:
        if t in pool:
            pool.remove(t)
            common += 1
    return 2 * common / (len(a) + len(b))
