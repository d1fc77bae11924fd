"""MXNet parameter names <-> canonical names.

MXNet names come in three shapes:
- symbol / Module checkpoints and Gluon `export()`: `arg:resnetv10_stage1_conv0_weight`,
  `aux:resnetv10_stage1_batchnorm0_running_mean` (`arg:` learnable, `aux:` running statistics);
- Gluon `save_parameters` (MXNet >= 1.3): structured `features.0.weight`, `1.gamma`;
- older Gluon `save_params`: the flat names without a prefix, `hybridsequential0_conv0_weight`.

Canonical name = module path + '.' + role. A flat name's module path is the name without its role
suffix, underscores kept (`resnetv10_stage1_conv0_weight` -> `resnetv10_stage1_conv0.weight`):
underscores cannot be told apart from separators, so turning them into dots would not be
reversible, and no model prefix is stripped for the same reason. Structured names keep their dots.
"""
from __future__ import annotations

import os

# MXNet role suffix -> canonical role. Longest first, so `running_mean` wins over `mean`.
ROLES = {
    "running_mean": "running_mean", "running_var": "running_var",
    "moving_mean": "running_mean", "moving_var": "running_var",
    "weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
}
AUX_ROLES = frozenset({"running_mean", "running_var", "moving_mean", "moving_var"})
# canonical role -> MXNet role, for layers whose scale/shift MXNet calls gamma/beta
NORM_ROLE = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def strip_prefix(name: str) -> tuple[str, str]:
    """('arg'|'aux'|'', name without it)."""
    head, sep, rest = name.partition(":")
    if sep and head in ("arg", "aux"):
        return head, rest
    return "", name


def split(name: str) -> tuple[str, str]:
    """(layer path, MXNet role) of a name without arg:/aux:; role '' when none is recognised.

    >>> split("resnetv10_stage1_conv0_weight"), split("features.1.gamma")
    (('resnetv10_stage1_conv0', 'weight'), ('features.1', 'gamma'))
    """
    layer, dot, last = name.rpartition(".")
    if dot and last in ROLES:
        return layer, last
    for role in ROLES:
        if name.endswith("_" + role) and len(name) > len(role) + 1:
            return name[: -len(role) - 1], role
    return "", ""


def canonical(name: str) -> tuple[str, str, str]:
    """(canonical name, layer, canonical role) of a native name; the name itself when unknown.

    >>> canonical("aux:hybridsequential0_batchnorm0_running_var")[0]
    'hybridsequential0_batchnorm0.running_var'
    """
    _, bare = strip_prefix(name)
    layer, role = split(bare)
    if not role:
        return bare, "", ""
    return f"{layer}.{ROLES[role]}", layer, ROLES[role]


def native_role(role: str, kind: str) -> str:
    """The MXNet role suffix for a canonical role of a layer of `kind`."""
    if kind.endswith("_norm"):
        return NORM_ROLE.get(role, role)
    return role


def native(layer: str, role: str, kind: str, style: str) -> str:
    """Canonical (layer, role) -> an MXNet name, without arg:/aux:.

    style "module": flat, '.' -> '_' (`features.0.weight` -> `features_0_weight`);
    style "gluon": structured, as Block.save_parameters writes (`features.1.gamma`).
    """
    r = native_role(role, kind)
    if not layer:
        return r
    if style == "gluon":
        return f"{layer}.{r}"
    return f"{layer.replace('.', '_')}_{r}"


def model_prefix(bare_names) -> str:
    """The prefix every flat name shares, up to and including an '_' (Gluon's `resnetv10_`,
    which changes with how many models a process built); '' when there is none.

    >>> model_prefix(["resnetv10_conv0_weight", "resnetv10_dense0_bias"])
    'resnetv10_'
    """
    bare_names = list(bare_names)
    if not bare_names or any("." in n for n in bare_names):
        return ""
    common = os.path.commonprefix(bare_names)
    cut = common.rfind("_") + 1
    return common[:cut] if all(len(n) > cut for n in bare_names) else ""


def is_aux(bare_name: str) -> bool:
    """Running statistics are MXNet auxiliary states (`aux:`), everything else an argument."""
    return split(bare_name)[1] in AUX_ROLES
