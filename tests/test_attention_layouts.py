"""Attention layouts between model zoos, with `--template` alone (#14 part 2).

- A fused q/k/v projection ([3d, d]: timm ViT `attn.qkv`, torch nn.MultiheadAttention
  `in_proj_weight`) against three [d, d] ones (HF ViT `q_proj/k_proj/v_proj`, Keras
  MultiHeadAttention): template alignment splits or concatenates it (spec: Attention projections).
- Norm roles by name: timm registers norm1 before the attention and norm2 before the MLP, HF ViT
  registers layernorm_before/layernorm_after beside them; names pair them, not registration order.
- Keras MultiHeadAttention's per-head kernels ([d, H, hd], output [H, hd, d]) are linear layers.

The oracles are the frameworks themselves: timm's forward_features (blocks, then the final norm)
against HF ViTModel's last_hidden_state (no pooler: the same final layernorm), a Keras model against
torch twins. Tolerance 1e-5 relative (float32; measured: 0 for the ViTs, ~5e-7 Keras/torch).
"""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest

import hubfmt

from conftest import assert_same_outputs, require, run_cli
import zoo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

D, HEADS, SEQ = 64, 4, 5


# ---- timm ViT <-> HF ViT ---------------------------------------------------------------------

def _timm_vit(seed: int, mlp_ratio: float = 4.0):
    torch = require("torch")
    zoo.import_torchvision()
    timm = require("timm")
    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS, mlp_ratio=mlp_ratio, num_classes=0).eval()


def _hf_vit(seed: int, intermediate: int = 4 * D, image_size: int = 32):
    torch = require("torch")
    tf = zoo.transformers()
    torch.manual_seed(seed)
    cfg = tf.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=intermediate,
                       image_size=image_size, patch_size=16, layer_norm_eps=1e-6, qkv_bias=True)
    return tf.ViTModel(cfg, add_pooling_layer=False).eval()


def _randomized(model, seed: int):
    """Every parameter random (HF initialises biases and LayerNorms to constants, which would hide
    a bias or a norm paired with the wrong layer)."""
    torch = require("torch")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0     # norm scales near 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + gain)
    return model


def _pixels():
    torch = require("torch")
    return torch.from_numpy(np.random.default_rng(3).normal(0, 1, (2, 3, 32, 32)).astype(np.float32))


def _convert(src, dst, template, *extra):
    proc = run_cli("convert", src, dst, "--template", template, "--overwrite", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("mlp_ratio", [4.0, 3.0], ids=["mlp4", "mlp3-fc1-looks-fused"])
def test_timm_vit_to_hf_vit_splits_the_fused_qkv(tmp_path, mlp_ratio):
    """timm -> HF: each block's qkv [192, 64] becomes q_proj, k_proj, v_proj by template alone.
    With mlp_ratio 3 the MLP's fc1 is [192, 64] too: only the layers HF has no twin of are split."""
    torch = require("torch")
    timm_model = _randomized(_timm_vit(0, mlp_ratio), 10)
    hf = _hf_vit(1, int(D * mlp_ratio))
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    torch.save(hf.state_dict(), tmp_path / "hf.pth")
    shown = run_cli("align", tmp_path / "timm.pth", tmp_path / "hf.pth")
    assert shown.returncode == 0, shown.stdout[-3000:]
    assert "4 tensors split" in shown.stdout
    for block in (0, 1):
        assert f"blocks.{block}.attn.qkv.weight" in shown.stdout
    proc = _convert(tmp_path / "timm.pth", tmp_path / "out.pth", tmp_path / "hf.pth")
    assert "4 split" in proc.stdout            # qkv weight and bias of two blocks, into 12 tensors
    hf.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
    x = _pixels()
    with torch.no_grad():
        assert_same_outputs(hf(pixel_values=x).last_hidden_state, timm_model.forward_features(x))


def test_hf_vit_to_timm_vit_concatenates_q_k_v(tmp_path):
    torch = require("torch")
    hf = _randomized(_hf_vit(0), 11)
    timm_model = _timm_vit(1)
    torch.save(hf.state_dict(), tmp_path / "hf.pth")
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    a = hubfmt.align(str(tmp_path / "hf.pth"), str(tmp_path / "timm.pth"))
    a.check()
    merges = {m.targets[0]: m.sources for m in a.mapping.moves if m.op == "merge"}
    assert merges["blocks.1.attn.qkv.weight"] == tuple(f"layers.1.attention.{p}_proj.weight" for p in "qkv")
    assert merges["blocks.0.attn.qkv.bias"] == tuple(f"layers.0.attention.{p}_proj.bias" for p in "qkv")
    # the norms pair by role: norm1 is the one before the attention, norm2 the one before the MLP
    rows = {m.targets[0]: m.sources[0] for m in a.mapping.moves if m.op == ""}
    assert rows["blocks.0.norm1.weight"] == "layers.0.layernorm_before.weight"
    assert rows["blocks.1.norm2.bias"] == "layers.1.layernorm_after.bias"
    assert rows["norm.weight"] == "layernorm.weight"
    aligned = a.apply(hubfmt.read(str(tmp_path / "hf.pth")))
    assert aligned.layers["blocks.1.attn.qkv"].attrs == {"fused": ["q", "k", "v"]}      # spec 3.6
    proc = _convert(tmp_path / "hf.pth", tmp_path / "out.pth", tmp_path / "timm.pth")
    assert "12 concatenated" in proc.stdout     # q, k, v weight and bias of two blocks, into 4 tensors
    timm_model.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
    x = _pixels()
    with torch.no_grad():
        assert_same_outputs(timm_model.forward_features(x), hf(pixel_values=x).last_hidden_state)


def test_norms_pair_by_role_names_against_registration_order(tmp_path):
    """A template that registers each block's layernorm_after before its layernorm_before (and the
    attention after the MLP): names (before ~ norm1, after ~ norm2, query ~ q) decide, not order."""
    torch = require("torch")
    timm_model = _randomized(_timm_vit(0), 12)
    hf = _hf_vit(1)
    sd = hf.state_dict()

    def rank(name):
        order = ("layernorm_after", "layernorm_before", "mlp", "attention.v_proj", "attention.k_proj",
                 "attention.q_proj", "attention.o_proj")
        return next((i for i, k in enumerate(order) if k in name), -1)

    reordered = collections.OrderedDict()
    for block in (None, 0, 1):
        keys = [k for k in sd if (k.startswith(f"layers.{block}.") if block is not None else not k.startswith("layers."))]
        for k in sorted(keys, key=rank) if block is not None else keys:
            reordered[k] = sd[k]
    assert list(reordered)[4:6] != list(sd)[4:6] and set(reordered) == set(sd)
    torch.save(reordered, tmp_path / "hf_reordered.pth")
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    _convert(tmp_path / "timm.pth", tmp_path / "out.pth", tmp_path / "hf_reordered.pth")
    hf.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
    x = _pixels()
    with torch.no_grad():
        assert_same_outputs(hf(pixel_values=x).last_hidden_state, timm_model.forward_features(x))


def test_norms_whose_names_say_nothing_are_refused_naming_the_candidates(tmp_path):
    """HF ViT registers both norms after the attention, timm one before it: with names that carry
    no role (`ln_x`, `ln_y`) order is no evidence, and the conversion stops naming both candidates
    of each norm instead of guessing."""
    torch = require("torch")
    sd = _hf_vit(1).state_dict()
    anon = collections.OrderedDict((k.replace("layernorm_before", "ln_x").replace("layernorm_after", "ln_y"), v)
                                   for k, v in sd.items())
    torch.save(anon, tmp_path / "hf_anon.pth")
    torch.save(_timm_vit(0).state_dict(), tmp_path / "timm.pth")
    proc = run_cli("convert", tmp_path / "timm.pth", tmp_path / "out.pth", "--template", tmp_path / "hf_anon.pth")
    assert proc.returncode != 0 and not (tmp_path / "out.pth").exists()
    out = proc.stdout + proc.stderr
    assert "4 ambiguous" in out
    for block in (0, 1):
        for norm in ("norm1", "norm2"):
            assert f"blocks.{block}.{norm}  layer_norm weight [64], bias [64]: candidates layers.{block}.ln_x, " \
                   f"layers.{block}.ln_y" in out


def test_a_vit_of_another_image_size_is_refused_naming_the_position_embedding(tmp_path):
    """Not about attention: a position embedding of another length ([1, 5, 64] vs [1, 10, 64]) has
    no place in the template; the refusal names it instead of converting."""
    torch = require("torch")
    torch.save(_timm_vit(0).state_dict(), tmp_path / "timm.pth")
    torch.save(_hf_vit(1, image_size=48).state_dict(), tmp_path / "hf48.pth")
    proc = run_cli("convert", tmp_path / "timm.pth", tmp_path / "out.pth", "--template", tmp_path / "hf48.pth")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "pos_embed" in out and "position_embeddings" in out
    assert not (tmp_path / "out.pth").exists()


# ---- Keras MultiHeadAttention <-> torch ------------------------------------------------------

KD = 16       # Keras/torch twin width: 4 heads of 4


def _keras_net(keras, seed: int):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((SEQ, KD))
    x = L.LayerNormalization(epsilon=1e-5, name="norm")(inp)
    x = L.MultiHeadAttention(num_heads=HEADS, key_dim=KD // HEADS, name="attn")(x, x)
    out = L.Dense(8, name="fc")(x)
    m = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for v in m.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    return m


def _torch_twin(fused: bool, seed: int):
    torch = require("torch")
    nn = torch.nn

    class Separate(nn.Module):
        """Attention written out with separate projections (as HF and mindcv do)."""

        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(KD, KD) for _ in range(4))

        def forward(self, x):
            b, n, _ = x.shape

            def heads(t):
                return t.view(b, n, HEADS, KD // HEADS).transpose(1, 2)
            y = nn.functional.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
            return self.o(y.transpose(1, 2).reshape(b, n, KD))

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(KD)
            self.attn = nn.MultiheadAttention(KD, HEADS, batch_first=True) if fused else Separate()
            self.fc = nn.Linear(KD, 8)

        def forward(self, x):
            x = self.norm(x)
            y = self.attn(x, x, x, need_weights=False)[0] if fused else self.attn(x)
            return self.fc(y)

    torch.manual_seed(seed)
    m = Twin().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def _tokens():
    return np.random.default_rng(5).normal(0, 1, (2, SEQ, KD)).astype(np.float32)


def _torch_out(model, x):
    torch = require("torch")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fused", [True, False], ids=["nn.MultiheadAttention", "separate-linears"])
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_keras_multi_head_attention_to_torch(keras, tmp_path, fused, suffix):
    torch = require("torch")
    k = _keras_net(keras, 0)
    src = tmp_path / f"k{suffix}"
    k.save(src) if suffix == ".keras" else k.save_weights(src)
    twin = _torch_twin(fused, 1)
    torch.save(twin.state_dict(), tmp_path / "twin.pth")
    proc = _convert(src, tmp_path / "out.pth", tmp_path / "twin.pth")
    assert ("6 concatenated" in proc.stdout) == fused, proc.stdout
    twin.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
    x = _tokens()
    assert_same_outputs(_torch_out(twin, x), np.asarray(k(x)))


@pytest.mark.parametrize("fused", [True, False], ids=["nn.MultiheadAttention", "separate-linears"])
@pytest.mark.parametrize("suffix,template_suffix", [(".keras", ".keras"), (".weights.h5", ".keras"),
                                                    (".weights.h5", ".weights.h5")])
def test_torch_to_keras_multi_head_attention(keras, tmp_path, fused, suffix, template_suffix):
    """A bare .weights.h5 template has no config: its projections are known by their saved names."""
    torch = require("torch")
    twin = _torch_twin(fused, 2)
    torch.save(twin.state_dict(), tmp_path / "twin.pth")
    template = tmp_path / f"template{template_suffix}"
    _keras_net(keras, 3).save(template) if template_suffix == ".keras" else _keras_net(keras, 3).save_weights(template)
    _convert(tmp_path / "twin.pth", tmp_path / f"out{suffix}", template)
    k = _keras_net(keras, 4)
    if suffix == ".keras":
        k = keras.saving.load_model(tmp_path / f"out{suffix}")
    else:
        k.load_weights(tmp_path / f"out{suffix}")
    x = _tokens()
    assert_same_outputs(np.asarray(k(x)), _torch_out(twin, x))


def test_keras_attention_in_memory_both_ways(keras):
    """from_model/to_model: the live model's projections are the file's (`attn.query_dense`)."""
    from hubfmt.adapters.keras import memory
    from hubfmt.adapters.torch import memory as torch_memory

    k = _keras_net(keras, 6)
    ckpt = memory.from_model(k)
    assert ckpt["attn.query_dense.weight"].tensor.shape == (KD, KD)
    assert ckpt["attn.output_dense.weight"].info.kind == "linear"
    assert ckpt.layers["attn.output_dense"].attrs == {"heads": HEADS}
    twin = _torch_twin(True, 7)
    a = hubfmt.align(ckpt, torch_memory.from_model(twin))
    a.check()
    torch_memory.to_model(a.apply(ckpt), twin)
    x = _tokens()
    assert_same_outputs(_torch_out(twin, x), np.asarray(k(x)))

    back = _torch_twin(True, 8)
    k2 = _keras_net(keras, 9)
    src = torch_memory.from_model(back)
    b = hubfmt.align(src, memory.from_model(k2))
    b.check()
    memory.to_model(b.apply(src), k2)
    assert_same_outputs(np.asarray(k2(x)), _torch_out(back, x))


def test_keras_attention_round_trips_through_the_hub_without_a_template(keras, tmp_path):
    """Canonical linear tensors in the hub, per-head kernels again in Keras (by the `heads`
    attribute and the h5 paths the tensors came from): the same outputs."""
    k = _keras_net(keras, 10)
    k.save(tmp_path / "k.keras")
    assert run_cli("convert", tmp_path / "k.keras", tmp_path / "k.safetensors").returncode == 0
    hub = hubfmt.read(str(tmp_path / "k.safetensors"))
    assert hub["attn.value_dense.weight"].info.original_layout == "IHD"
    assert hub["attn.value_dense.bias"].tensor.shape == (KD,)
    proc = run_cli("convert", tmp_path / "k.safetensors", tmp_path / "back.weights.h5")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    k2 = _keras_net(keras, 11)
    k2.load_weights(tmp_path / "back.weights.h5")
    x = _tokens()
    assert_same_outputs(np.asarray(k2(x)), np.asarray(k(x)), tol=0.0)


def test_saved_rules_split_the_fused_qkv_as_the_alignment_does(tmp_path):
    """`hubfmt align --save-rules` writes the split rows as split rules: converting by those rules
    gives the same tensors as converting by the template."""
    torch = require("torch")
    torch.save(_randomized(_timm_vit(0), 13).state_dict(), tmp_path / "timm.pth")
    torch.save(_hf_vit(1).state_dict(), tmp_path / "hf.pth")
    assert run_cli("align", tmp_path / "timm.pth", tmp_path / "hf.pth", "--save-rules", tmp_path / "r.toml").returncode == 0
    rules = (tmp_path / "r.toml").read_text()
    assert "replace = 'layers.1.attention.{part}_proj.weight'" in rules and 'parts = ["q", "k", "v"]' in rules
    _convert(tmp_path / "timm.pth", tmp_path / "by_template.pth", tmp_path / "hf.pth")
    proc = run_cli("convert", tmp_path / "timm.pth", tmp_path / "by_rules.pth", "--rules", tmp_path / "r.toml")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    a, b = torch.load(tmp_path / "by_rules.pth"), torch.load(tmp_path / "by_template.pth")
    assert set(a) == set(b)          # the rules keep the source order, the template its own
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bert_encoder_onto_torch_transformer_encoder_merges_q_k_v_and_refuses_the_post_norms(tmp_path):
    """HF BERT's encoder against torch nn.TransformerEncoder (both post-norm): query/key/value
    concatenate into `self_attn.in_proj_weight` by template alone, but BERT registers each
    LayerNorm after the linear it follows and torch both norms after linear2, and neither
    `attention.output.LayerNorm` nor `norm1` says which is which: refused, naming the candidates
    (a --rules file decides), never paired by registration order."""
    torch = require("torch")
    bert = zoo.tiny_bert()
    layer = torch.nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, activation="gelu", batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    torch.save(bert.encoder.state_dict(), tmp_path / "bert.pth")
    torch.save(encoder.state_dict(), tmp_path / "encoder.pth")
    proc = run_cli("align", tmp_path / "bert.pth", tmp_path / "encoder.pth")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "layers.1.self_attn.in_proj_weight   merge" in out
    assert "ambiguous (4):" in out
    for block in (0, 1):
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            assert f"layer.{block}.{norm}" in out
        assert f"candidates layers.{block}.norm1, layers.{block}.norm2" in out


@pytest.mark.parametrize("direction", ["torchvision->hf", "hf->torchvision"])
def test_torchvision_vit_and_hf_vit_for_image_classification(tmp_path, direction):
    """torchvision's VisionTransformer keeps nn.MultiheadAttention (`self_attention.in_proj_weight`)
    and ln_1/ln_2; HF ViTForImageClassification separate q/k/v and layernorm_before/after. The
    logits (head on the class token after the final norm, in both) agree both ways."""
    torch = require("torch")
    tv = zoo.import_torchvision()
    tf = zoo.transformers()
    torch.manual_seed(0)
    tv_model = _randomized(tv.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=HEADS,
                                                       hidden_dim=D, mlp_dim=4 * D, num_classes=10).eval(), 14)
    cfg = tf.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=4 * D,
                       image_size=32, patch_size=16, layer_norm_eps=1e-6, qkv_bias=True, num_labels=10)
    hf = tf.ViTForImageClassification(cfg).eval()
    if direction == "hf->torchvision":
        hf, tv_model = _randomized(hf, 15), tv.models.VisionTransformer(
            image_size=32, patch_size=16, num_layers=2, num_heads=HEADS, hidden_dim=D, mlp_dim=4 * D, num_classes=10).eval()
        src, dst = hf, tv_model
    else:
        src, dst = tv_model, hf
    torch.save(src.state_dict(), tmp_path / "src.pth")
    torch.save(dst.state_dict(), tmp_path / "template.pth")
    proc = _convert(tmp_path / "src.pth", tmp_path / "out.pth", tmp_path / "template.pth")
    assert ("4 split" if direction == "torchvision->hf" else "12 concatenated") in proc.stdout
    dst.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
    x = _pixels()
    with torch.no_grad():
        assert_same_outputs(hf(pixel_values=x).logits, tv_model(x))
