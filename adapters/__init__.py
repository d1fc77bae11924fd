"""The spokes: one package per framework, installed as hubfmt.adapters.<framework>.

Every adapter exposes the same names, so reading one teaches all of them:

    FRAMEWORK        CLI name: "torch", "tensorflow", "mxnet", "mindspore", "oneflow"
    FRAMEWORK_MODULE the framework's import name ("torch", "tensorflow", ...)
    PIP_NAME         what to `pip install` for the in-memory functions
    FORMATS          tuple of hubfmt.registry.NativeFormat it reads/writes without the framework
    sniff(path)      -> format name if `path` holds one of FORMATS, else None (cheap, no framework)
    read(path, **options) -> hubfmt.Checkpoint
                     native file -> canonical, lazy checkpoint; framework-free; raises
                     hubfmt.FormatError naming the file on bad input
    write(ckpt, path, *, overwrite=False, progress=None, restore_dtype=True, **options) -> Report
                     canonical -> native file, streaming, atomic (hubfmt.atomic); framework-free
    from_model(model, **options) -> hubfmt.Checkpoint      in-memory model -> canonical (needs the framework)
    to_model(ckpt, model, *, strict=True) -> Report          canonical -> in-memory model (needs the framework)

Rules: an adapter imports its framework only inside from_model/to_model (never at module level);
it never imports another adapter; it talks to the hub through hubfmt's public modules only.
"""
