"""Hugging Face style checkpoints (#15): model directories, shard indexes (safetensors and
pytorch_model.bin), plain safetensors of each flavour, and HF directories as output, checked with
the real transformers (save_pretrained / from_pretrained) as the oracle."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import hubfmt
from hubfmt.codecs import safetensors as st_codec

import zoo
from conftest import rel_diff, require, run_cli

torch = require("torch")


def _ids():
    return torch.tensor([[1, 5, 9, 33, 2, 7, 60, 3]])


def _outputs(model) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=_ids())
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each tiny model saved the ways people find them: safetensors, sharded, .bin, sharded .bin."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, make in (("bert", zoo.tiny_bert), ("llama", zoo.tiny_llama)):
        model = make()
        model.save_pretrained(root / name)
        model.save_pretrained(root / f"{name}_sharded", max_shard_size="20KB")
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        (root / f"{name}_bin").mkdir()
        (root / f"{name}_bin_sharded").mkdir()
        for d in ("_bin", "_bin_sharded"):
            for cfg in ("config.json", "generation_config.json"):
                if (root / name / cfg).exists():
                    shutil.copy(root / name / cfg, root / f"{name}{d}" / cfg)
        torch.save(sd, root / f"{name}_bin" / "pytorch_model.bin")
        names = list(sd)
        weight_map = {}
        for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
            f = f"pytorch_model-{i + 1:05d}-of-00002.bin"
            torch.save({n: sd[n] for n in part}, root / f"{name}_bin_sharded" / f)
            weight_map.update(dict.fromkeys(part, f))
        (root / f"{name}_bin_sharded" / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
        out[name] = (model, _outputs(model))
    return root, out


@pytest.mark.parametrize("name", ["bert", "llama"])
@pytest.mark.parametrize("layout", ["", "_sharded", "_bin", "_bin_sharded"])
def test_every_hf_layout_reads_as_the_models_state_dict(models, name, layout):
    root, made = models
    model, _ = made[name]
    ckpt = hubfmt.read(root / f"{name}{layout}")
    sd = model.state_dict()
    assert ckpt.source.format == "hf" and ckpt.extra["config.json"]["model_type"] == name
    assert set(ckpt) == set(sd)
    for n in sd:
        assert np.array_equal(ckpt.array(n), sd[n].numpy()), n
    norms = {ckpt[n].info.kind for n in ckpt if "norm" in n.lower()}
    assert norms == ({"layer_norm"} if name == "bert" else {"rms_norm"})
    eps = {li.attrs.get("eps") for li in ckpt.layers.values() if li.kind in ("layer_norm", "rms_norm")}
    assert eps == {model.config.layer_norm_eps if name == "bert" else model.config.rms_norm_eps}
    if layout in ("_sharded", "_bin_sharded"):
        index = next((root / f"{name}{layout}").glob("*.index.json"))
        assert set(hubfmt.read(index)) == set(sd)          # the index names the same set


def test_one_shard_alone_is_refused_naming_the_index(models, tmp_path):
    root, _ = models
    for shard in (next((root / "bert_sharded").glob("model-00002-*.safetensors")),
                  root / "bert_bin_sharded" / "pytorch_model-00001-of-00002.bin"):
        r = run_cli("convert", shard, tmp_path / "x.safetensors")
        assert r.returncode == 2 and "one shard of a sharded checkpoint" in r.stderr and "index.json" in r.stderr, r.stderr
    hub = tmp_path / "h.safetensors"
    assert run_cli("convert", root / "bert", hub, "--max-shard-size", "30KB", "-q").returncode == 0
    r = run_cli("inspect", tmp_path / "h-00001-of-00003.safetensors")
    assert r.returncode == 2 and "h.safetensors.index.json" in r.stderr, r.stderr


# Formats each model goes through and comes back from; llama's RMSNorm has no TF/Keras form here.
_ROUTES = {"bert": ("safetensors", "pth", "ckpt", "params", "oneflow", "index", "weights.h5"),
           "llama": ("safetensors", "pth", "ckpt", "params", "oneflow")}


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_hf_directory_through_every_format_and_back_loads_in_from_pretrained(models, tmp_path, name):
    tf = zoo.transformers()
    root, made = models
    _, want = made[name]
    cls = tf.BertModel if name == "bert" else tf.LlamaForCausalLM
    for ext in _ROUTES[name]:
        there, back = tmp_path / f"{name}.{ext}", tmp_path / f"back_{ext}"
        r = run_cli("convert", root / f"{name}_sharded", there, "-q")
        assert r.returncode == 0, (ext, r.stderr)
        r = run_cli("convert", there, back, "--to", "hf", "--template", root / name)
        assert r.returncode == 0, (ext, r.stdout[-2000:], r.stderr)
        got = _outputs(cls.from_pretrained(back).eval())
        assert rel_diff(got, want) <= 1e-5, (ext, rel_diff(got, want))
        header, _, _ = st_codec.read_header(str(back / "model.safetensors"))
        assert header["__metadata__"]["format"] == "pt"


def test_rms_norm_goes_through_tensorflow_and_keras_exactly(models, tmp_path):
    """TF checkpoints and Keras files refused RMSNorms until Keras 3's RMSNormalization (one
    variable, `scale`) became their home (issue 18): a Llama goes there and back bit for bit,
    its norms read back as rms_norm."""
    root, _ = models
    src = hubfmt.read(root / "llama")
    for ext in ("index", "weights.h5"):
        r = run_cli("convert", root / "llama", tmp_path / f"l.{ext}")
        assert r.returncode == 0, r.stderr
        back = hubfmt.read(tmp_path / f"l.{ext}")
        norms = [n for n in src if src[n].info.kind == "rms_norm"]
        assert norms and len(back) == len(src)
        # Keras files name layers by position: each source tensor is matched by kind, shape and bytes
        held: dict[tuple, list[bytes]] = {}
        for n in back:
            held.setdefault((back[n].info.kind, back[n].tensor.shape), []).append(back.tensor(n).tobytes())
        for n in src:
            key = (src[n].info.kind, src[n].tensor.shape)
            assert src.tensor(n).tobytes() in held.get(key, []), (ext, n)


def test_hf_output_shards_with_an_index_from_pretrained_loads(models, tmp_path):
    tf = zoo.transformers()
    root, made = models
    out = tmp_path / "sharded"
    r = run_cli("convert", root / "llama_bin", out, "--to", "hf", "--max-shard-size", "25KB")
    assert r.returncode == 0, r.stderr
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists() and (out / "config.json").exists()
    assert (out / "generation_config.json").exists()
    got = _outputs(tf.LlamaForCausalLM.from_pretrained(out).eval())
    assert rel_diff(got, made["llama"][1]) <= 1e-5


def _torch_cnn_file(tmp_path, **metadata):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 3, 6, 6))
    path = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=metadata or None)
    return path, net


@pytest.mark.parametrize("metadata", [{"format": "pt"}, {}])
def test_plain_torch_safetensors_converts_like_a_pth(tmp_path, metadata):
    path, net = _torch_cnn_file(tmp_path, **metadata)
    ckpt = hubfmt.read(path)
    assert ckpt.source.format == "torch-safetensors" and ckpt["0.weight"].info.kind == "conv2d"
    assert ckpt["1.running_var"].info.kind == "batch_norm"
    # To TensorFlow: the conv kernel is transposed to HWIO (and the Linear after the Flatten of a
    # 4x4 map, which a TF checkpoint cannot show, needs its rows decided); to MindSpore: BatchNorm's
    # own names.
    assert run_cli("convert", path, tmp_path / "tf", "--to", "tensorflow", "-q").returncode == 2
    assert run_cli("convert", path, tmp_path / "tf", "--to", "tensorflow", "-q", "-W", "flatten=4x4").returncode == 0
    bundle = hubfmt.read(tmp_path / "tf")
    assert bundle["0.weight"].info.original_layout == "HWIO"
    assert run_cli("convert", path, tmp_path / "m.ckpt", "-q").returncode == 0
    names = {hubfmt.read(tmp_path / "m.ckpt")[n].info.original_name for n in net.state_dict() if "num_batches" not in n}
    assert {"1.gamma", "1.beta", "1.moving_mean", "1.moving_variance"} <= names
    assert run_cli("convert", path, tmp_path / "x.pth", "--from", "torch", "-q").returncode == 0
    back = torch.load(tmp_path / "x.pth", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_plain_safetensors_of_unknown_flavour_asks_instead_of_guessing(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "anon.safetensors"
    save_file({"a": np.ones((3, 3), np.float32), "b": np.zeros(3, np.float32)}, str(path))
    r = run_cli("convert", path, tmp_path / "out.index")
    assert r.returncode == 2 and "--from torch" in r.stderr and "--from hub" in r.stderr, r.stderr
    assert not list(tmp_path.glob("out*"))
    r = run_cli("convert", path, tmp_path / "o.safetensors", "--from", "hub", "-q")
    assert r.returncode == 0, r.stderr
    tf_file = tmp_path / "tf.safetensors"
    save_file({"conv/kernel": np.ones((3, 3, 3, 8), np.float32)}, str(tf_file), metadata={"format": "tf"})
    r = run_cli("inspect", tf_file)
    assert r.returncode == 2 and '"format" metadata: tf' in r.stderr, r.stderr


def test_hub_files_say_their_layouts_are_torchs(tmp_path):
    path, _ = _torch_cnn_file(tmp_path)
    assert run_cli("convert", path, tmp_path / "hub.safetensors", "-q").returncode == 0
    header, _, _ = st_codec.read_header(str(tmp_path / "hub.safetensors"))
    assert header["__metadata__"]["format"] == "pt" and "hubfmt.manifest" in header["__metadata__"]


def test_sharded_pytorch_model_bin_output_loads_in_from_pretrained(models, tmp_path):
    tf = zoo.transformers()
    root, made = models
    out = tmp_path / "bin"
    out.mkdir()
    shutil.copy(root / "bert" / "config.json", out / "config.json")
    r = run_cli("convert", root / "bert", out / "pytorch_model.bin", "--max-shard-size", "30KB")
    assert r.returncode == 0, r.stderr
    shards = sorted(p.name for p in out.glob("pytorch_model-*.bin"))
    assert len(shards) == 3 and (out / "pytorch_model.bin.index.json").exists() and "4 files:" in r.stdout
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:          # each shard a state dict torch loads with weights_only
        assert torch.load(out / shard, weights_only=True)
    got = _outputs(tf.BertModel.from_pretrained(out).eval())
    assert rel_diff(got, made["bert"][1]) <= 1e-5
    assert set(hubfmt.read(out)) == set(made["bert"][0].state_dict())
