"""Builders shared by the hub tests (no framework needed)."""
from hubfmt.cli.demo import example_checkpoint as small_cnn  # noqa: F401  (one definition, pinned by spec/examples)


def template_options(framework: str, ckpt, directory) -> dict:
    """Writer options for a format that writes only into a template (registry.needs_template):
    ONNX gets a model holding `ckpt`'s tensors (names, shapes, dtypes), made in `directory`."""
    import os

    from hubfmt import registry

    if framework == "hub" or not registry.needs_template(framework):
        return {}
    if framework == "onnx":
        from onnx_template import bare_model
        return {"template": bare_model(ckpt, os.path.join(os.fspath(directory), "template.onnx"))}
    raise NotImplementedError(f"no template builder for {framework}")


def template_args(framework: str, ckpt, directory) -> list[str]:
    """template_options as command-line arguments."""
    opts = template_options(framework, ckpt, directory)
    return ["--template", opts["template"]] if opts else []


def flatten_example():
    """spec/examples/flatten-dense.safetensors: Keras Conv2D(4, 3x3) on a 6x5x3 input -> Flatten of
    the 4x3x4 map -> Dense(5), imported: the Dense's rows permuted from H,W,C to C,H,W (spec 3.5).
    Returns (checkpoint, the Keras kernel [48, 5] with H,W,C rows)."""
    import numpy as np

    from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
    from hubfmt.format.tensor import LazyTensor
    from hubfmt.io import flatten

    ckpt = Checkpoint()
    ckpt.source.framework = "tensorflow"
    ckpt.source.format = "keras-archive"
    conv = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 100
    kernel = np.arange(48 * 5, dtype=np.float32).reshape(48, 5)          # Keras Dense kernel [in, out]
    ckpt.add("conv.weight", LazyTensor.from_array(conv), TensorInfo(kind="conv2d", original_layout="HWIO"))
    ckpt.add("conv.bias", LazyTensor.from_array(np.zeros(4, np.float32)), TensorInfo(kind="conv2d"))
    fc = flatten.hwc_to_chw(LazyTensor.from_array(np.ascontiguousarray(kernel.T)), (4, 3, 4))
    ckpt.add("fc.weight", LazyTensor.from_array(fc.load()), TensorInfo(kind="linear", original_layout="IO"))
    ckpt.add("fc.bias", LazyTensor.from_array(np.zeros(5, np.float32)), TensorInfo(kind="linear"))
    ckpt.layers["fc"] = LayerInfo("linear", {flatten.ATTR: [4, 4, 3], flatten.ATTR_SOURCE: "HWC"})
    return ckpt, kernel


def attention_example():
    """spec/examples/attention.safetensors (spec 3.6): a Keras MultiHeadAttention (2 heads of 4 on
    width 8) imported, its per-head kernels as linear layers, and a fused q/k/v projection as an
    alignment writes it (rows q, k, v; layer attribute `fused`). Returns (checkpoint, {native
    name: array}) with the Keras query kernel [8, 2, 4], output kernel [2, 4, 8] and the q, k, v
    weights [8, 8] the fused one stacks."""
    import numpy as np

    from hubfmt.format.checkpoint import Checkpoint, LayerInfo, TensorInfo
    from hubfmt.format.tensor import LazyTensor
    from hubfmt.io import attention

    ckpt = Checkpoint()
    ckpt.source.framework = "tensorflow"
    ckpt.source.format = "keras-archive"
    query = np.arange(8 * 2 * 4, dtype=np.float32).reshape(8, 2, 4) / 64
    query_bias = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    output = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8) / 64 - 0.5
    natives = {"mha.query_dense": query, "mha.query_dense.bias": query_bias, "mha.output_dense": output}
    for name, a, layout in (("mha.query_dense.weight", query, "IHD"), ("mha.query_dense.bias", query_bias, "HD"),
                            ("mha.output_dense.weight", output, "HDO")):
        ckpt.add(name, LazyTensor.from_array(attention.to_linear(a, layout)),
                 TensorInfo(kind="linear", original_layout=layout, original_shape=a.shape))
    ckpt.add("mha.output_dense.bias", LazyTensor.from_array(np.zeros(8, np.float32)), TensorInfo(kind="linear"))
    for layer in ("mha.query_dense", "mha.output_dense"):
        ckpt.layers[layer] = LayerInfo("linear", {attention.ATTR_HEADS: 2})
    parts = [np.full((8, 8), i, np.float32) + np.eye(8, dtype=np.float32) for i in range(3)]
    natives.update(zip("qkv", parts, strict=True))
    ckpt.add("attn.qkv.weight", LazyTensor.from_array(np.concatenate(parts)), TensorInfo(kind="linear"))
    ckpt.add("attn.qkv.bias", LazyTensor.from_array(np.repeat(np.arange(3, dtype=np.float32), 8)),
             TensorInfo(kind="linear"))
    ckpt.layers["attn.qkv"] = LayerInfo("linear", {"fused": ["q", "k", "v"]})
    return ckpt, natives
