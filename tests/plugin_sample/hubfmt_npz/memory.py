from hubfmt.sdk import ConversionError


def from_model(model, **options):
    raise ConversionError("numpy has no in-memory models")


def to_model(ckpt, model, *, strict: bool = True):
    raise ConversionError("numpy has no in-memory models")
