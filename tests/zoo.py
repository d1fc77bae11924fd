"""Public model zoos in tests: torchvision, timm and transformers, imported beside this torch.

torchvision 0.28's compiled ops do not load beside the pinned torch CPU build ("operator
torchvision::nms does not exist"), and timm and transformers import torchvision when it is
installed. Its model definitions are plain Python; only its fake-kernel registrations need the
ops to exist. `import_torchvision()` defines each missing op with a generic schema (never called:
tests use no detection ops), then imports it.
"""
from __future__ import annotations

import re
import sys


def import_torchvision():
    import torch

    for _ in range(64):
        try:
            import torchvision
            return torchvision
        except RuntimeError as e:
            m = re.search(r"operator (torchvision::\w+) does not exist", str(e))
            if not m:
                raise
            for mod in [k for k in sys.modules if k.startswith("torchvision")]:
                del sys.modules[mod]
            torch.library.define(m.group(1), "(Tensor[] args) -> Tensor")
    raise RuntimeError("torchvision would not import")


def transformers():
    import_torchvision()
    import transformers as tf

    tf.logging.set_verbosity_error()
    return tf


def tiny_bert(seed: int = 0):
    tf = transformers()
    import torch

    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    return tf.BertModel(cfg).eval()


def tiny_llama(seed: int = 0):
    tf = transformers()
    import torch

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)
    return tf.LlamaForCausalLM(cfg).eval()
