"""Pre-activation ResNets written several ways, aligned with a template: a batch norm must never
land on the wrong norm without a report. Every norm and conv of a block has the same channel
count, so shapes cannot tell them apart; the oracle is torch (outputs equal, eval mode, random
batch-norm statistics, so a swapped pair of norms changes the outputs)."""
from __future__ import annotations

import numpy as np
import pytest

from hubfmt import Checkpoint
from hubfmt.convert import rename
from hubfmt.errors import AlignmentError

from conftest import assert_same_outputs, require
from torch_nets import as_numpy, checkpoint_of, load_into, randomize

torch = require("torch")
nn = torch.nn
F = nn.functional

C, BLOCKS = 8, 3
X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
# A block's layers in data-flow order: x + conv2(relu(mid(conv1(relu(inp(x))))))
ROLES = ("inp", "conv1", "mid", "conv2")


class PreActNet(nn.Module):
    """stem conv, BLOCKS pre-activation blocks, final norm, classifier. `top` names those four
    (stage "" puts the blocks' layers on the net itself); `name(b, role)` is a layer's path inside
    the stage; `order` is the order a block registers its roles in."""

    def __init__(self, top, name, order):
        super().__init__()
        self.top, self.name = top, name
        stem, stage, final, head = top
        self.add_module(stem, nn.Conv2d(3, C, 3, 1, 1, bias=False))
        holder = self
        if stage:
            holder = nn.Module()
            self.add_module(stage, holder)
        for b in range(BLOCKS):
            for role in order:
                *parents, leaf = name(b, role).split(".")
                parent = holder
                for p in parents:
                    if not hasattr(parent, p):
                        parent.add_module(p, nn.Module())
                    parent = getattr(parent, p)
                parent.add_module(leaf, nn.Conv2d(C, C, 3, 1, 1, bias=False) if "conv" in role else nn.BatchNorm2d(C))
        self.add_module(final, nn.BatchNorm2d(C))
        self.add_module(head, nn.Linear(C, 10))

    def layer(self, b, role) -> str:
        stage = self.top[1]
        return f"{stage}.{self.name(b, role)}" if stage else self.name(b, role)

    def forward(self, x):
        x = self.get_submodule(self.top[0])(x)
        for b in range(BLOCKS):
            m = {r: self.get_submodule(self.layer(b, r)) for r in ROLES}
            x = x + m["conv2"](F.relu(m["mid"](m["conv1"](F.relu(m["inp"](x))))))
        x = F.relu(self.get_submodule(self.top[2])(x))
        return self.get_submodule(self.top[3])(x.mean((2, 3)))


def named(**names):
    return lambda b, role: f"{b}.{names[role]}"


NESTED = ("stem", "stage1", "post_norm", "head")
KERAS = named(inp="preact_bn", conv1="conv1", mid="bn1", conv2="conv2")   # a norm named after the conv before it
CONV_FIRST = named(inp="norm_a", conv1="conv_a", mid="norm_b", conv2="conv_b")
VARIANTS = {
    # kuangliu/pytorch-cifar PreActBlock: bn1 feeds conv1, registered in data-flow order
    "torch": lambda: PreActNet(("conv1", "layer1", "bn", "linear"),
                               named(inp="bn1", conv1="conv1", mid="bn2", conv2="conv2"), ROLES),
    # Keras ResNetV2 names, data-flow order: `bn1` is the norm AFTER conv1 (torch's bn2)
    "keras": lambda: PreActNet(NESTED, KERAS, ROLES),
    # no block modules: per-stage counters (MXNet Gluon's ResNetV2: stage1_batchnorm0,
    # stage1_conv0, ...), data-flow order; `1.conv1` and `conv1` share tokens, not a layer
    "gluon": lambda: PreActNet(NESTED, lambda b, r: {"inp": f"batchnorm{2 * b}", "conv1": f"conv{2 * b}",
                                                     "mid": f"batchnorm{2 * b + 1}", "conv2": f"conv{2 * b + 1}"}[r], ROLES),
    # the same names in alphabetical order, as a sorted checkpoint index lists them
    "keras sorted": lambda: PreActNet(NESTED, KERAS, ("mid", "conv1", "conv2", "inp")),
    # each conv registered before the norm that feeds it
    "conv first": lambda: PreActNet(NESTED, CONV_FIRST, ("conv1", "inp", "conv2", "mid")),
    # no block modules: per-stage counters (Gluon-like), each conv before the norm feeding it
    "flat counters": lambda: PreActNet(NESTED, lambda b, r: {"inp": f"batchnorm{2 * b}", "conv1": f"conv{2 * b}",
                                                             "mid": f"batchnorm{2 * b + 1}", "conv2": f"conv{2 * b + 1}"}[r],
                                       ("conv1", "inp", "conv2", "mid")),
    # no modules at all
    "flat": lambda: PreActNet(("stem", "", "post_norm", "head"),
                              lambda b, r: {"inp": f"bn{2 * b}", "conv1": f"conv{2 * b}",
                                            "mid": f"bn{2 * b + 1}", "conv2": f"conv{2 * b + 1}"}[r],
                              ("conv1", "inp", "conv2", "mid")),
    # registered exactly like "conv first" (same names, shapes and order), but norm_a normalises
    # conv_a's output and norm_b, registered last, is the block's input norm
    "conv first twin": lambda: PreActNet(NESTED, named(inp="norm_b", conv1="conv_a", mid="norm_a", conv2="conv_b"),
                                         ("conv1", "mid", "conv2", "inp")),
}


def truth(src: PreActNet, dst: PreActNet) -> dict[str, str]:
    """Layer path in `src` -> the layer of `dst` doing the same job."""
    out = dict(zip(src.top[:1] + src.top[2:], dst.top[:1] + dst.top[2:]))
    out.update({src.layer(b, r): dst.layer(b, r) for b in range(BLOCKS) for r in ROLES})
    return out


def moved(src: PreActNet, dst: PreActNet, layers: dict[str, str]) -> Checkpoint:
    """`src`'s weights under `dst`'s names, layer by layer as `layers` says."""
    ckpt, out = checkpoint_of(src), Checkpoint()
    for name in ckpt:
        layer, _, role = name.rpartition(".")
        out.add(f"{layers[layer]}.{role}", ckpt.entries[name].tensor, ckpt.entries[name].info)
    return out


def pair(src_name: str, dst_name: str):
    torch.manual_seed(0)
    return randomize(VARIANTS[src_name](), 1), randomize(VARIANTS[dst_name](), 2)


@pytest.mark.parametrize("name", [v for v in VARIANTS if v != "torch"])
def test_the_variants_compute_the_same_function(name):
    """The oracle itself: each variant computes the torch one's function under the known mapping,
    and a mapping with one block's two norms swapped does not."""
    src, dst = pair("torch", name)
    layers = truth(src, dst)
    load_into(dst, moved(src, dst, layers))
    assert_same_outputs(as_numpy(dst, X), as_numpy(src, X))
    a, b = src.layer(1, "inp"), src.layer(1, "mid")
    layers[a], layers[b] = layers[b], layers[a]
    load_into(dst, moved(src, dst, layers))
    with pytest.raises(AssertionError, match="outputs differ"):
        assert_same_outputs(as_numpy(dst, X), as_numpy(src, X))


@pytest.mark.parametrize("src_name, dst_name", [("torch", "keras"), ("keras", "torch"), ("torch", "gluon"), ("gluon", "torch")])
def test_names_that_mean_other_layers_do_not_beat_order(src_name, dst_name):
    """Keras's `bn1` follows conv1, torch's `bn1` feeds it; Gluon counts per stage, torch per
    block. Before the fix the names won: every block's two norms silently swapped (Keras), two
    convs and two norms silently crossed between blocks (Gluon); relative output difference ~1."""
    src, dst = pair(src_name, dst_name)
    ckpt, table = rename(checkpoint_of(src), template=checkpoint_of(dst))
    assert "no problems" in table
    load_into(dst, ckpt)
    assert_same_outputs(as_numpy(dst, X), as_numpy(src, X))


@pytest.mark.parametrize("other", ["keras sorted", "conv first", "conv first twin", "flat counters", "flat"])
@pytest.mark.parametrize("direction", ["from torch", "to torch"])
def test_norms_registered_on_the_other_side_of_their_convs_are_ambiguous(other, direction):
    """One side registers a norm before the conv it feeds, the other after it. Before the fix each
    of these converted without a word: wrongly, except "conv first", right by order, where its
    twin got the same mapping, wrong for it. Now every block norm is reported ambiguous."""
    src, dst = pair("torch", other) if direction == "from torch" else pair(other, "torch")
    with pytest.raises(AlignmentError) as e:
        rename(checkpoint_of(src), template=checkpoint_of(dst), allow_missing=True, allow_unexpected=True)
    reported = {line.split()[0] for line in e.value.table.splitlines() if "candidates" in line}
    assert {src.layer(b, r) for b in range(BLOCKS) for r in ("inp", "mid")} <= reported, e.value.table


def test_conv_first_and_its_twin_cannot_be_told_apart():
    """Why "ambiguous" is the only right answer for "conv first": its twin has the same state dict
    layout, and the mapping that is right for one is wrong for the other."""
    src, a, b = (randomize(VARIANTS[n](), k) for k, n in enumerate(["torch", "conv first", "conv first twin"]))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    layers = truth(src, a)
    for model in (a, b):
        load_into(model, moved(src, a, layers))
    assert_same_outputs(as_numpy(a, X), as_numpy(src, X))
    with pytest.raises(AssertionError, match="outputs differ"):
        assert_same_outputs(as_numpy(b, X), as_numpy(src, X))
