"""Byte-level codecs the adapters share (an adapter never imports another adapter, so what two
formats have in common lives here once).

    safe_pickle.py  the one restricted unpickler (pickles never run code)
    pickle_emit.py  writing plain-data pickles opcode by opcode
    protowire.py    protocol-buffer wire format (TF bundles, MindSpore checkpoints, OneFlow meta)
    safetensors.py  the safetensors container: header read (checked) and written
    ziparchive.py   zip archives as containers (torch files, .keras): checked open, members in place
    filecursor.py   bounds-checked field-by-field reads over a file (MXNet, MindSpore headers)
"""
