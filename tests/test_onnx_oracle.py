"""onnx + onnxruntime + torch as oracles: a torch model exported with torch.onnx.export, its
fine-tuned .pth written into the exported .onnx (template) runs in onnxruntime as torch runs it;
ONNX initializers -> torch state dict loads strict; external data, typed fields, in memory."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import assert_same_outputs, require, run_cli
from hubfmt.adapters import onnx as adapter
from hubfmt.errors import ConversionError
from onnx_models import build, example_input, export, perturbed

torch = require("torch")
onnx = require("onnx")
ort = require("onnxruntime")
from onnx import numpy_helper  # noqa: E402


def _run_ort(path: str, x) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy()})[0]


def _torch_out(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


# (model, constant folding): the CNN unfolded (folding would fuse BatchNorm into the convs), the
# transformer both ways (folded: MatMul weights stored [in, out] as onnx::MatMul_N).
CASES = [("cnn", False), ("block", False), ("block", True)]


@pytest.mark.parametrize("kind,fold", CASES)
def test_finetuned_pth_into_exported_onnx_runs_as_torch(tmp_path, kind, fold):
    model = build(kind)
    x = example_input(kind)
    tpl = export(model, x, str(tmp_path / "model.onnx"), fold=fold)
    before = _run_ort(tpl, x)
    assert_same_outputs(before, _torch_out(model, x))
    tuned = perturbed(model, seed=7)                       # "fine-tuning"
    torch.save(tuned.state_dict(), tmp_path / "ft.pth")
    want = _torch_out(tuned, x)
    assert not np.allclose(want, before, atol=1e-3), "the perturbation must change the outputs"
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "model_ft.onnx", "--template", tpl)
    assert r.returncode == 0, r.stderr
    got = _run_ort(str(tmp_path / "model_ft.onnx"), x)
    assert_same_outputs(got, want, tol=1e-5)
    onnx.checker.check_model(str(tmp_path / "model_ft.onnx"))
    # the graph is the template's: same nodes, inputs, outputs, opsets; only initializer data differs
    a, b = onnx.load(tpl), onnx.load(str(tmp_path / "model_ft.onnx"))
    assert a.graph.node == b.graph.node and a.graph.input == b.graph.input and a.opset_import == b.opset_import
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    assert _outside_initializers(tpl) == _outside_initializers(str(tmp_path / "model_ft.onnx"))


def _outside_initializers(path: str) -> list[bytes]:
    """Every byte of the model but the initializers' (and the graph's length prefix)."""
    from hubfmt.adapters.onnx import proto
    m = proto.scan(path)
    data = open(path, "rb").read()
    top = [data[s:e] for i, (_, s, e) in enumerate(m.top) if i != m.graph_field]
    return top + [data[s:e] for num, s, e in m.graph if num != 5]


@pytest.mark.parametrize("kind,fold", CASES)
def test_onnx_initializers_load_strict_into_torch(tmp_path, kind, fold):
    model = build(kind)
    x = example_input(kind)
    path = export(model, x, str(tmp_path / "model.onnx"), fold=fold)
    ckpt = adapter.read(path)
    fresh = build(kind).__class__()
    state = fresh.state_dict()
    loaded = {n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt}
    missing = [n for n in state if n not in loaded and not n.endswith("num_batches_tracked")]
    assert not missing, missing
    for n in state:
        if n.endswith("num_batches_tracked"):
            loaded[n] = state[n]
    fresh.load_state_dict(loaded, strict=True)
    fresh.eval()
    for n, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[n], v) or n.endswith("num_batches_tracked"), n
    assert_same_outputs(_torch_out(fresh, x), _torch_out(model, x), tol=1e-6)
    # and through the CLI, into a .pth torch loads strict
    torch.save(build(kind).state_dict(), tmp_path / "init.pth")
    r = run_cli("convert", path, tmp_path / "back.pth", "--template", tmp_path / "init.pth")
    assert r.returncode == 0, r.stderr
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    again = build(kind).__class__()
    again.load_state_dict(back, strict=True)
    assert_same_outputs(_torch_out(again.eval(), x), _torch_out(model, x), tol=1e-6)


def test_names_of_folded_initializers_come_from_their_nodes(tmp_path):
    model = build("block")
    path = export(model, example_input("block"), str(tmp_path / "m.onnx"), fold=True)
    raw = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert any(n.startswith("onnx::MatMul") for n in raw)
    ckpt = adapter.read(path)
    e = ckpt["mlp.0.weight"]
    assert e.info.original_name.startswith("onnx::MatMul") and e.info.original_layout == "IO"
    assert e.info.kind == "linear" and e.tensor.shape == (32, 16)
    assert np.array_equal(ckpt.tensor("mlp.0.weight"), model.mlp[0].weight.detach().numpy())
    assert ckpt.layers["ln1"].kind == "layer_norm" and ckpt["emb.weight"].info.kind == "embedding"


def test_cnn_kinds_and_batchnorm_eps(tmp_path):
    model = build("cnn")
    path = export(model, example_input("cnn"), str(tmp_path / "m.onnx"), fold=False)
    ckpt = adapter.read(path)
    assert ckpt["conv1.weight"].info.kind == "conv2d" and ckpt["fc.weight"].info.original_layout == ""
    assert ckpt["block.1.running_var"].info.role == "running_var"
    assert ckpt.layers["bn1"].kind == "batch_norm"
    assert abs(ckpt.layers["bn1"].attrs["eps"] - 1e-5) < 1e-9


def test_fused_conv_bn_model_does_not_take_unfused_weights(tmp_path):
    """Folded in eval mode, BatchNorm is gone from the graph: the .pth has tensors with no place."""
    model = build("cnn")
    path = export(model, example_input("cnn"), str(tmp_path / "m.onnx"), fold=True)
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "out.onnx", "--template", path)
    assert r.returncode != 0
    assert not (tmp_path / "out.onnx").exists()


def test_external_data_read_and_written(tmp_path):
    model = build("cnn")
    x = example_input("cnn")
    path = export(model, x, str(tmp_path / "m.onnx"), fold=False)
    os.mkdir(tmp_path / "ext")
    m = onnx.load(path)
    onnx.save_model(m, str(tmp_path / "ext" / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=100)
    ext = str(tmp_path / "ext" / "m.onnx")
    ckpt = adapter.read(ext)
    assert ckpt["fc.weight"].tensor.span.path.endswith("weights.bin")
    for t in onnx.load(path).graph.initializer:
        assert np.array_equal(ckpt.tensor(t.name), numpy_helper.to_array(t)), t.name
    tuned = perturbed(model, seed=3)
    torch.save(tuned.state_dict(), tmp_path / "ft.pth")
    out = tmp_path / "out" / "ft.onnx"
    os.mkdir(out.parent)
    r = run_cli("convert", tmp_path / "ft.pth", out, "--template", ext)
    assert r.returncode == 0, r.stderr
    assert (out.parent / "ft.onnx.data").is_file()          # the template's data file is not touched
    assert_same_outputs(_run_ort(str(out), x), _torch_out(tuned, x), tol=1e-5)
    # forced inline from an external template, and forced external from an inline one
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "inline.onnx", "--template", ext, "-W", "external_data=false")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "inline.onnx.data").exists()
    assert_same_outputs(_run_ort(str(tmp_path / "inline.onnx"), x), _torch_out(tuned, x), tol=1e-5)
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "big.onnx", "--template", path, "-W", "external_data=true")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "big.onnx.data").stat().st_size > 10_000
    assert_same_outputs(_run_ort(str(tmp_path / "big.onnx"), x), _torch_out(tuned, x), tol=1e-5)


def test_typed_fields_are_read(tmp_path):
    """Tensors stored in float_data / int32_data / int64_data / double_data (as onnx.helper
    makes them without raw=True), float16 and bool in int32_data."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32),
              "b.weight": rng.standard_normal((5,)).astype(np.float16),
              "c.weight": rng.integers(-9, 9, (2, 3)).astype(np.int64),
              "d.weight": rng.integers(-9, 9, (4,)).astype(np.int32),
              "e.weight": rng.standard_normal((2,)).astype(np.float64),
              "f.weight": np.array([True, False, True]),
              "g.weight": rng.integers(0, 200, (3,)).astype(np.uint8)}
    inits = [helper.make_tensor(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, a.flatten().tolist())
             for n, a in arrays.items()]
    nodes = [helper.make_node("Identity", [n], [n + "_out"]) for n in arrays]
    outs = [helper.make_tensor_value_info(n + "_out", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in arrays.items()]
    g = helper.make_graph(nodes, "g", [], outs, inits)
    path = str(tmp_path / "typed.onnx")
    onnx.save(helper.make_model(g), path)
    assert not any(t.raw_data for t in onnx.load(path).graph.initializer)
    ckpt = adapter.read(path)
    for n, a in arrays.items():
        assert ckpt[n].tensor.dtype == {"bool": "bool"}.get(str(a.dtype), str(a.dtype))
        assert np.array_equal(ckpt.tensor(n), a), n
    # written back through the template: raw_data now, same values, onnxruntime agrees
    out = str(tmp_path / "out.onnx")
    adapter.write(ckpt, out, template=path)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    for (n, a), got in zip(arrays.items(), sess.run(None, {}), strict=True):
        assert np.array_equal(got, a), n
    assert TensorProto.FLOAT == 1


def test_in_memory_model_proto(tmp_path):
    model = build("block")
    x = example_input("block")
    path = export(model, x, str(tmp_path / "m.onnx"), fold=True)
    proto = onnx.load(path)
    ckpt = adapter.from_model(proto)
    assert np.array_equal(ckpt.tensor("q.weight"), model.q.weight.detach().numpy())
    tuned = perturbed(model, seed=5)
    from hubfmt.adapters import torch as ta
    adapter.to_model(ta.from_model(tuned), proto)
    onnx.save(proto, str(tmp_path / "mem.onnx"))
    assert_same_outputs(_run_ort(str(tmp_path / "mem.onnx"), x), _torch_out(tuned, x), tol=1e-5)


def test_writing_without_a_template_says_one_is_needed(tmp_path):
    ckpt = adapter.read(export(build("cnn"), example_input("cnn"), str(tmp_path / "m.onnx"), fold=False))
    with pytest.raises(ConversionError, match="template"):
        adapter.write(ckpt, str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()
    # the CLI says so before reading anything, also when the template is not an ONNX model
    torch.save(build("cnn").state_dict(), tmp_path / "ft.pth")
    for extra in ([], ["--template", str(tmp_path / "ft.pth")]):
        r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "x.onnx", *extra)
        assert r.returncode != 0 and "writes only into an existing model" in r.stderr, r.stderr
        assert not (tmp_path / "x.onnx").exists()


def test_shape_mismatch_is_refused(tmp_path):
    model = build("cnn")
    path = export(model, example_input("cnn"), str(tmp_path / "m.onnx"), fold=False)
    ckpt = adapter.read(path)
    t = ckpt["fc.weight"].tensor
    from hubfmt.sdk import LazyTensor
    ckpt.entries["fc.weight"].tensor = LazyTensor.from_array(np.zeros((t.shape[0], t.shape[1] + 1), np.float32))
    with pytest.raises(ConversionError, match="fc.weight"):
        adapter.write(ckpt, str(tmp_path / "x.onnx"), template=path)
    assert not (tmp_path / "x.onnx").exists()


def test_initializers_the_exporter_merged_are_tied_aliases(tmp_path):
    """A fresh CNN: BatchNorm weights are all ones and biases / means all zeros, so
    torch.onnx.export keeps one initializer per value and feeds the rest through Identity nodes
    named as the dropped parameters. Read: every state-dict name, the merged ones tied. Written:
    fine while the values stay equal, an error once they differ (the model cannot hold them)."""
    from onnx_models import CNN
    model = CNN().eval()
    x = example_input("cnn")
    path = export(model, x, str(tmp_path / "m.onnx"), fold=False)
    assert len(onnx.load(path).graph.initializer) < len([n for n in model.state_dict() if "num_batches" not in n])
    ckpt = adapter.read(path)
    assert ckpt["block.1.running_var"].info.tied_to == "bn1.weight"
    fresh = CNN()
    state = {n: torch.from_numpy(ckpt.tensor(n).copy()) for n in ckpt}
    state.update({n: v for n, v in fresh.state_dict().items() if n.endswith("num_batches_tracked")})
    fresh.load_state_dict(state, strict=True)
    assert_same_outputs(_torch_out(fresh.eval(), x), _torch_out(model, x), tol=1e-6)
    torch.save(model.state_dict(), tmp_path / "same.pth")
    r = run_cli("convert", tmp_path / "same.pth", tmp_path / "same.onnx", "--template", path)
    assert r.returncode == 0, r.stderr
    assert_same_outputs(_run_ort(str(tmp_path / "same.onnx"), x), _torch_out(model, x), tol=1e-5)
    tuned = perturbed(model, seed=4)
    torch.save(tuned.state_dict(), tmp_path / "ft.pth")
    r = run_cli("convert", tmp_path / "ft.pth", tmp_path / "ft.onnx", "--template", path)
    assert r.returncode != 0 and "merged" in r.stderr, r.stderr
    assert not (tmp_path / "ft.onnx").exists()
