"""Every built-in adapter against the adapter contract (hubfmt.contract): the suite a third-party
adapter reuses (tests/test_plugins.py runs it on one installed from outside)."""
from __future__ import annotations

from hubfmt.contract import AdapterContract

NUMERIC = ("float32", "float16", "int64", "bool")


class TestTorch(AdapterContract):
    adapter_name = "torch"
    output_name = "model.pth"
    dtypes = NUMERIC


class TestMXNet(AdapterContract):
    adapter_name = "mxnet"
    output_name = "model.params"
    dtypes = NUMERIC


class TestMindSpore(AdapterContract):
    adapter_name = "mindspore"
    output_name = "model.ckpt"
    dtypes = NUMERIC


class TestOneFlow(AdapterContract):
    adapter_name = "oneflow"
    output_name = "model.oneflow"
    dtypes = NUMERIC


class TestTensorFlow(AdapterContract):
    adapter_name = "tensorflow"
    output_name = "model.ckpt.index"
    dtypes = NUMERIC


class TestKeras(AdapterContract):
    adapter_name = "keras"
    output_name = "model.weights.h5"


class TestONNX(AdapterContract):
    adapter_name = "onnx"
    output_name = "model.onnx"
    dtypes = NUMERIC

    def write_options(self, ckpt):
        from onnx_template import bare_template_for

        return {"template": bare_template_for(ckpt)}


class TestFlax(AdapterContract):
    adapter_name = "flax"
    output_name = "model.msgpack"
    dtypes = NUMERIC
