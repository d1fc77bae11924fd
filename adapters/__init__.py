"""The spokes: one package per adapter, installed as hubfmt.adapters.<name>: torch, tensorflow
(TF1/TF2 checkpoint bundles), keras (Keras files; its FRAMEWORK is tensorflow too), mxnet,
mindspore, oneflow.

hubfmt.sdk states the contract every adapter keeps (NAME, FRAMEWORK, FRAMEWORK_MODULE, PIP_NAME,
FORMATS with their options as data, sniff, read, write, from_model, to_model) and is the only hub
module an adapter imports; hubfmt.contract.AdapterContract checks it (tests/test_contract.py).
Every adapter has the same modules for the same jobs:

    __init__.py   re-exports only
    formats.py    NAME, FRAMEWORK, ..., FORMATS (NativeFormat + Option declarations) and sniff
    reader.py     read: native file -> canonical, lazy Checkpoint (framework-free)
    writer.py     write: canonical -> native file, streaming and atomic (framework-free)
    names.py      the naming vocabulary: native names, kinds and layouts <-> canonical ones
    memory.py     from_model / to_model (the only place the framework is imported)

plus the codecs of its format (tensorflow: bundle, sstable, objgraph; keras: store, files; ...).
An adapter never imports another adapter (tests/test_layering.py).
"""
