"""numpy .npz archives (numpy.savez) as a hubfmt adapter: a sample third-party spoke."""
from .formats import FORMATS, sniff
from .memory import from_model, to_model
from .reader import read
from .writer import write

NAME = "npz"
FRAMEWORK = "numpy"
FRAMEWORK_MODULE = "numpy_models_do_not_exist"   # no in-memory models: numpy has none
PIP_NAME = "numpy"

__all__ = ["NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write", "from_model", "to_model"]
