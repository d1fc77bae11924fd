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
