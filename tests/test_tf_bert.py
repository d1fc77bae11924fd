"""Google-style TF1 BERT checkpoints <-> Hugging Face BertModel with `--template` alone (#14, part 3).

Google's BERT (and the checkpoints released with it) names its variables `bert/embeddings/
word_embeddings` (a bare table), `bert/encoder/layer_N/attention/self/query/kernel` ([in, out]) and
`.../LayerNorm/gamma|beta`. The oracle, independent of hubfmt, is Hugging Face's own reader of such
checkpoints, transformers 4.x's `load_tf_weights_in_bert` (removed in 5.x: it runs in a child
process, conftest.run_transformers4), into a BertModel whose weights are NaN until loaded, so a
variable it does not find shows as non-finite outputs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import hubfmt
import zoo
from conftest import assert_same_outputs, require, run_cli, run_transformers4

torch = require("torch")
tf = require("tensorflow")

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=16)


def _inputs():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, CONFIG["vocab_size"], (2, 7))
    types = rng.integers(0, CONFIG["type_vocab_size"], (2, 7))
    return ids, types


def _hf_outputs(model) -> np.ndarray:
    ids, types = _inputs()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()


def _google_names(state_dict) -> dict[str, np.ndarray]:
    """HF BertModel weights under the names and layouts of Google's TF1 BERT (modeling.py)."""
    out = {}
    for k, v in state_dict.items():
        a = v.numpy()
        if k.endswith("_embeddings.weight"):                 # a bare table: bert/embeddings/word_embeddings
            out["bert/" + k.removesuffix(".weight").replace(".", "/")] = a
            continue
        n = k.replace("encoder.layer.", "encoder/layer_").replace(".", "/")
        n = n.replace("LayerNorm/weight", "LayerNorm/gamma").replace("LayerNorm/bias", "LayerNorm/beta")
        if n.endswith("/weight"):                             # Dense kernels are [in, out]
            n, a = n.removesuffix("/weight") + "/kernel", a.T
        out["bert/" + n] = np.ascontiguousarray(a)
    return out


def _save_tf1(variables: dict[str, np.ndarray], prefix: str) -> None:
    """A TF1 name-based checkpoint as Google's run_pretraining.py saves one (Saver, global_step)."""
    graph = tf.Graph()
    with graph.as_default():
        for name, a in variables.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(a))
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix)


ORACLE = """
import json, sys
import numpy as np
import zoo
zoo.import_torchvision()
import torch, transformers
assert transformers.__version__.startswith("4."), transformers.__version__
from transformers.models.bert.modeling_bert import BertConfig, BertModel, load_tf_weights_in_bert
transformers.logging.set_verbosity_error()
cfg = BertConfig(**json.loads(sys.argv[2]))
model = BertModel(cfg)
with torch.no_grad():
    for p in model.parameters():
        p.fill_(float("nan"))        # a variable the reader does not find leaves NaN outputs
load_tf_weights_in_bert(model, cfg, sys.argv[1])
model.eval()
inputs = np.load(sys.argv[3])
with torch.no_grad():
    out = model(input_ids=torch.from_numpy(inputs["ids"]), token_type_ids=torch.from_numpy(inputs["types"]))
np.save(sys.argv[4], out.last_hidden_state.numpy())
"""


def google_reader_outputs(prefix, tmp_path) -> np.ndarray:
    """last_hidden_state of a BertModel loaded from a TF1 checkpoint by transformers' own reader."""
    ids, types = _inputs()
    np.savez(tmp_path / "inputs.npz", ids=ids, types=types)
    out = tmp_path / "oracle_out.npy"
    run_transformers4(ORACLE, str(prefix), json.dumps(CONFIG), str(tmp_path / "inputs.npz"), str(out))
    return np.load(out)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(dir, HF model's outputs): hf.pth (a random HF BertModel's state dict) and google/bert_model.ckpt
    (the same weights as a Google TF1 checkpoint)."""
    root = tmp_path_factory.mktemp("bert")
    tfm = zoo.transformers()
    torch.manual_seed(0)
    model = tfm.BertModel(tfm.BertConfig(**CONFIG)).eval()
    sd = model.state_dict()
    torch.save(sd, root / "hf.pth")
    (root / "google").mkdir()
    _save_tf1(_google_names(sd), str(root / "google" / "bert_model.ckpt"))
    return root, _hf_outputs(model)


def _fresh_hf():
    tfm = zoo.transformers()
    torch.manual_seed(1)     # other weights than the source's
    return tfm.BertModel(tfm.BertConfig(**CONFIG)).eval()


def test_the_google_checkpoint_is_faithful(bert, tmp_path):
    root, expected = bert
    assert_same_outputs(google_reader_outputs(root / "google" / "bert_model.ckpt", tmp_path), expected)


def test_google_tables_read_as_embeddings_and_norms_as_layer_norms(bert):
    root, _ = bert
    ckpt = hubfmt.read(root / "google" / "bert_model.ckpt")
    for table, rows in (("word", 99), ("position", 64), ("token_type", 16)):
        e = ckpt[f"bert.embeddings.{table}_embeddings.weight"]
        assert (e.info.kind, e.info.role, e.tensor.shape) == ("embedding", "weight", (rows, 32))
        assert e.info.original_name == f"bert/embeddings/{table}_embeddings"
    ln = ckpt["bert.embeddings.LayerNorm.weight"]
    assert (ln.info.kind, ln.info.original_name) == ("layer_norm", "bert/embeddings/LayerNorm/gamma")
    q = ckpt["bert.encoder.layer_1.attention.self.query.weight"]
    assert (q.info.kind, q.info.original_layout) == ("linear", "IO")


def test_tf1_to_torch_with_the_template_alone(bert, tmp_path):
    root, expected = bert
    out = tmp_path / "bert.pth"
    proc = run_cli("convert", root / "google" / "bert_model.ckpt", out, "--template", root / "hf.pth")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "embeddings.word_embeddings.weight" in proc.stdout
    model = _fresh_hf()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert_same_outputs(_hf_outputs(model), expected)


def test_torch_to_tf1_with_the_template_alone(bert, tmp_path):
    root, expected = bert
    (tmp_path / "out").mkdir()
    prefix = tmp_path / "out" / "bert_model.ckpt"
    proc = run_cli("convert", root / "hf.pth", f"{prefix}.index", "--template", root / "google" / "bert_model.ckpt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = dict(tf.train.list_variables(str(prefix)))
    assert written == dict(tf.train.list_variables(str(root / "google" / "bert_model.ckpt")))
    assert_same_outputs(google_reader_outputs(prefix, tmp_path), expected)


def _listing(root, tmp_path):
    listing = tmp_path / "bert_tf_names.txt"
    listing.write_text("".join(f"{n} {'x'.join(map(str, s)) or 'scalar'}\n"
                               for n, s in tf.train.list_variables(str(root / "google" / "bert_model.ckpt"))))
    return listing


def test_a_listing_of_tf_names_is_read_as_tf_names(bert, tmp_path):
    root, expected = bert
    listing = _listing(root, tmp_path)
    target = hubfmt.align(root / "hf.pth", listing, template_framework="tensorflow").template
    word = target["bert.embeddings.word_embeddings.weight"]
    assert (word.info.kind, word.tensor.shape) == ("embedding", (99, 32))
    inter = target["bert.encoder.layer_0.intermediate.dense.weight"]      # listed [32, 37] (in, out)
    assert (inter.info.kind, inter.tensor.shape, inter.info.original_layout) == ("linear", (37, 32), "IO")
    assert target["bert.encoder.layer_0.output.LayerNorm.weight"].info.kind == "layer_norm"
    assert "global_step" not in target

    (tmp_path / "out").mkdir()
    prefix = tmp_path / "out" / "bert_model.ckpt"
    proc = run_cli("convert", root / "hf.pth", f"{prefix}.index", "--template", listing, "--template-from", "tensorflow")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = dict(tf.train.list_variables(str(prefix)))
    listed = dict(tf.train.list_variables(str(root / "google" / "bert_model.ckpt")))
    listed.pop("global_step")
    assert written == listed
    assert_same_outputs(google_reader_outputs(prefix, tmp_path), expected)


def test_without_template_from_a_listing_is_taken_literally(bert, tmp_path):
    root, _ = bert
    proc = run_cli("convert", root / "hf.pth", tmp_path / "x.ckpt.index", "--template", _listing(root, tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "bert/embeddings/word_embeddings" in proc.stdout + proc.stderr
    assert not (tmp_path / "x.ckpt.index").exists()
