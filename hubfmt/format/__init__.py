"""The neutral format itself, with no I/O: the lazy canonical checkpoint and what its manifest says.

    tensor.py      LazyTensor (shape/dtype up front, data on demand) and FileSpan
    checkpoint.py  Checkpoint, Entry, TensorInfo, LayerInfo, SourceInfo
    dtypes.py      canonical dtype names and conversions (bfloat16, float8)
    layouts.py     layer kinds, roles, canonical layouts
    manifest.py    the manifest inside a hub file's __metadata__ (spec/hubfmt-v1.md)
    jsonstream.py  JSON objects whose big members (a million tensors' entries) are taken entry by entry
    extra.py       non-tensor content as plain data, msgpack-encoded
"""
