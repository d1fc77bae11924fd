"""jax + flax + torch as oracles: a Flax CNN with BatchNorm and a small Flax transformer block
against torch models of the same architecture, converted both ways with --template (outputs
<= 1e-5); files flax.serialization writes read right and files we write restore right."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_same_outputs, require, run_cli
from hubfmt.adapters import flax as adapter
from hubfmt.errors import ConversionError
from onnx_models import Block, perturbed

torch = require("torch")
jax = require("jax")
flax = require("flax")
import flax.linen as fnn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import serialization  # noqa: E402

tnn = torch.nn


class TorchCNN(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = tnn.BatchNorm2d(8)
        self.conv2 = tnn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = tnn.BatchNorm2d(8)
        self.fc = tnn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))          # pooled: no NCHW/NHWC flatten order to undo


class FlaxCNN(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.relu(fnn.BatchNorm(use_running_average=True, epsilon=1e-5)(fnn.Conv(8, (3, 3), padding=1)(x)))
        x = fnn.Conv(8, (3, 3), padding="VALID", use_bias=False)(x)
        x = fnn.relu(fnn.BatchNorm(use_running_average=True, epsilon=1e-5)(x))
        return fnn.Dense(10)(x.mean((1, 2)))


class FlaxBlock(fnn.Module):
    """onnx_models.Block in Flax: Embed, LayerNorm, MultiHeadDotProductAttention (DenseGeneral
    query/key/value [d, heads, head_dim], out [heads, head_dim, d]), LayerNorm, Dense-GELU-Dense."""

    @fnn.compact
    def __call__(self, ids):
        x = fnn.Embed(50, 16)(ids)
        y = fnn.LayerNorm(epsilon=1e-5)(x)
        x = x + fnn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, out_features=16)(y)
        y = fnn.Dense(16)(fnn.gelu(fnn.Dense(32)(fnn.LayerNorm(epsilon=1e-5)(x)), approximate=False))
        return x + y


def _pair(kind: str):
    """(torch model, flax module, torch input, flax input)."""
    g = torch.Generator().manual_seed(1)
    if kind == "cnn":
        x = torch.randn(2, 3, 8, 8, generator=g)
        return TorchCNN(), FlaxCNN(), x, jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    ids = torch.randint(0, 50, (2, 5), generator=g)
    return Block(), FlaxBlock(), ids, jnp.asarray(ids.numpy())


def _perturb_flax(variables, seed: int):
    """Fine-tuning, as jax does it: through tree_map, which sorts every dict's keys (the file then
    lists `key`, `out`, `query`, `value`: no evidence of the model's order)."""
    rng = np.random.default_rng(seed)

    def move(path, a):
        a = np.asarray(a)
        out = a + rng.standard_normal(a.shape).astype(a.dtype) * 0.1
        if any(getattr(k, "key", None) == "var" for k in path):
            out = np.abs(out) + 0.5
        return jnp.asarray(out)
    return jax.tree_util.tree_map_with_path(move, variables)


def _torch_out(model, x):
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.parametrize("kind", ["cnn", "block"])
def test_flax_to_torch_with_template(tmp_path, kind):
    tmodel, fmodel, tx, fx = _pair(kind)
    variables = _perturb_flax(fmodel.init(jax.random.PRNGKey(0), fx), seed=3)
    (tmp_path / "ft.msgpack").write_bytes(serialization.to_bytes(variables))
    want = np.asarray(fmodel.apply(variables, fx))
    torch.save(tmodel.state_dict(), tmp_path / "init.pth")
    r = run_cli("convert", tmp_path / "ft.msgpack", tmp_path / "out.pth", "--template", tmp_path / "init.pth")
    assert r.returncode == 0, r.stderr
    fresh = _pair(kind)[0]
    fresh.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True), strict=True)
    assert_same_outputs(_torch_out(fresh, tx), want, tol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "block"])
def test_torch_to_flax_with_template(tmp_path, kind):
    tmodel, fmodel, tx, fx = _pair(kind)
    tuned = perturbed(tmodel, seed=5)
    torch.save(tuned.state_dict(), tmp_path / "ft.pth")
    init = fmodel.init(jax.random.PRNGKey(0), fx)
    (tmp_path / "init.msgpack").write_bytes(serialization.to_bytes(init))
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "out.msgpack", "--template", tmp_path / "init.msgpack")
    assert r.returncode == 0, r.stderr
    restored = serialization.from_bytes(init, (tmp_path / "out.msgpack").read_bytes())
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(init)
    assert_same_outputs(np.asarray(fmodel.apply(restored, fx)), _torch_out(tuned, tx), tol=1e-5)


def test_flax_files_read_lazily_with_canonical_layouts(tmp_path):
    _, fmodel, _, fx = _pair("block")
    variables = fmodel.init(jax.random.PRNGKey(0), fx)
    p = tmp_path / "v.msgpack"
    p.write_bytes(serialization.to_bytes(variables))
    assert adapter.sniff(p) == "flax-msgpack"
    ckpt = adapter.read(p)
    q = ckpt["MultiHeadDotProductAttention_0.query.weight"]
    assert q.tensor.shape == (16, 16) and q.info.original_shape == (16, 2, 8) and q.info.kind == "linear"
    kernel = np.asarray(variables["params"]["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    assert np.array_equal(ckpt.tensor(q.info.original_name.replace("/", ".").replace("params.", "").replace(
        ".kernel", ".weight")), kernel.reshape(16, 16).T)
    out = ckpt["MultiHeadDotProductAttention_0.out.weight"]
    assert out.tensor.shape == (16, 16) and out.info.original_shape == (2, 8, 16)
    assert ckpt["Embed_0.weight"].info.kind == "embedding" and ckpt["LayerNorm_0.weight"].info.kind == "layer_norm"
    # without a template, a Flax source comes back byte for byte
    adapter.write(ckpt, tmp_path / "again.msgpack")
    assert (tmp_path / "again.msgpack").read_bytes() == p.read_bytes()


def test_batch_stats_and_conv_layout(tmp_path):
    _, fmodel, _, fx = _pair("cnn")
    variables = _perturb_flax(fmodel.init(jax.random.PRNGKey(0), fx), seed=1)
    p = tmp_path / "v.msgpack"
    p.write_bytes(serialization.to_bytes(variables))
    ckpt = adapter.read(p)
    assert ckpt["BatchNorm_0.running_var"].info.original_name == "batch_stats/BatchNorm_0/var"
    assert ckpt.layers["BatchNorm_0"].kind == "batch_norm"
    k = np.asarray(variables["params"]["Conv_0"]["kernel"])
    assert np.array_equal(ckpt.tensor("Conv_0.weight"), k.transpose(3, 2, 0, 1))
    # from a torch source without a template: Flax names and layouts, restorable by flax
    tmodel = perturbed(TorchCNN(), seed=2)
    torch.save(tmodel.state_dict(), tmp_path / "t.pth")
    r = run_cli("convert", tmp_path / "t.pth", tmp_path / "t.msgpack")
    assert r.returncode == 0, r.stderr
    tree = serialization.msgpack_restore((tmp_path / "t.msgpack").read_bytes())
    assert np.array_equal(tree["params"]["conv1"]["kernel"], tmodel.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert np.array_equal(tree["batch_stats"]["bn1"]["var"], tmodel.bn1.running_var.numpy())
    assert np.array_equal(tree["params"]["fc"]["kernel"], tmodel.fc.weight.detach().numpy().T)


def test_in_memory_variables(tmp_path):
    tmodel, fmodel, tx, fx = _pair("block")
    variables = fmodel.init(jax.random.PRNGKey(0), fx)
    ckpt = adapter.from_model(variables)
    assert len(ckpt) == len(jax.tree_util.tree_leaves(variables))
    tuned = perturbed(tmodel, seed=9)
    from hubfmt.adapters import torch as ta
    src = ta.from_model(tuned)
    # torch names differ from Flax's: align first, as the CLI does with --template
    import hubfmt
    aligned = hubfmt.align(src, ckpt).apply(src)
    adapter.to_model(aligned, variables)
    assert_same_outputs(np.asarray(fmodel.apply(variables, fx)), _torch_out(tuned, tx), tol=1e-5)


def test_scalars_chunked_arrays_and_bfloat16(tmp_path):
    tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                       "h": jnp.asarray(np.array([1.5, -2.0]), dtype=jnp.bfloat16)},
            "step": 7, "name": "run-1", "lr": np.float32(0.5)}
    p = tmp_path / "t.msgpack"
    p.write_bytes(serialization.msgpack_serialize(tree))
    ckpt = adapter.read(p)
    assert ckpt.extra["step"] == 7 and ckpt.extra["name"] == "run-1"
    assert ckpt["h"].tensor.dtype == "bfloat16"
    # flax's chunked form for arrays over MAX_CHUNK_SIZE, made small by patching the limit
    import flax.serialization as fs
    big = np.arange(10, dtype=np.float32).reshape(5, 2)
    old = fs.MAX_CHUNK_SIZE
    fs.MAX_CHUNK_SIZE = 8
    try:
        data = fs.msgpack_serialize({"params": {"e": {"embedding": big}}})
    finally:
        fs.MAX_CHUNK_SIZE = old
    (tmp_path / "c.msgpack").write_bytes(data)
    assert np.array_equal(adapter.read(tmp_path / "c.msgpack").tensor("e.weight"), big)
    # and written in that form past the limit (patched small here too), restored by flax
    from hubfmt.adapters.flax import msgpack_tree
    ours = tmp_path / "ours.msgpack"
    limit = msgpack_tree.MAX_CHUNK_SIZE
    msgpack_tree.MAX_CHUNK_SIZE = 8
    try:
        adapter.write(adapter.read(tmp_path / "c.msgpack"), ours)
    finally:
        msgpack_tree.MAX_CHUNK_SIZE = limit
    assert b"__msgpack_chunked_array__" in ours.read_bytes()
    assert np.array_equal(serialization.msgpack_restore(ours.read_bytes())["params"]["e"]["embedding"], big)
    back = tmp_path / "back.msgpack"
    adapter.write(ckpt, back)
    again = serialization.msgpack_restore(back.read_bytes())
    assert np.array_equal(again["params"]["w"], tree["params"]["w"]) and again["step"] == 7
    assert np.array_equal(np.asarray(again["params"]["h"], np.float32), [1.5, -2.0])


def test_template_mismatch_is_refused(tmp_path):
    _, fmodel, _, fx = _pair("cnn")
    init = fmodel.init(jax.random.PRNGKey(0), fx)
    (tmp_path / "init.msgpack").write_bytes(serialization.to_bytes(init))
    ckpt = adapter.read(tmp_path / "init.msgpack")
    from hubfmt.sdk import LazyTensor
    ckpt.entries["Dense_0.weight"].tensor = LazyTensor.from_array(np.zeros((10, 9), np.float32))
    with pytest.raises(ConversionError, match="Dense_0.weight"):
        adapter.write(ckpt, tmp_path / "x.msgpack", template=str(tmp_path / "init.msgpack"))
    assert not (tmp_path / "x.msgpack").exists()
