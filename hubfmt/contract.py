"""The adapter contract as a reusable test suite (fsspec's abstract test classes are the model).

Any adapter, built in or third-party, checks itself against the contract hubfmt.sdk states by
subclassing `AdapterContract` in its own tests (pytest collects the subclass):

    from hubfmt.contract import AdapterContract

    class TestMyAdapter(AdapterContract):
        adapter_name = "paddle"          # as registered in the entry-point group hubfmt.adapters
        output_name = "model.pdparams"   # a path its writer writes (its suffix selects the format)
        dtypes = ("float32", "int64")    # dtypes its format stores bit-exactly

        def write_options(self, ckpt):   # only for a writer that needs a template
            return {"template": make_template(ckpt)}

The suite needs pytest and numpy, nothing else; it never imports the adapter's framework.
"""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys

import numpy as np

from hubfmt import registry
from hubfmt.errors import FormatError, HubfmtError
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.registry import READ, WRITE

PUBLIC_NAMES = ("NAME", "FRAMEWORK", "FRAMEWORK_MODULE", "PIP_NAME", "FORMATS", "sniff", "read", "write",
                "from_model", "to_model")
_HUB_KEYWORDS = {"overwrite", "progress"}      # what the hub itself passes to every writer


class AdapterContract:
    adapter_name: str = ""
    output_name: str = ""
    dtypes: tuple[str, ...] = ("float32",)

    # ---- helpers -----------------------------------------------------------------------------

    @property
    def module(self):
        return registry.adapter(self.adapter_name)

    def sample(self) -> Checkpoint:
        """A small canonical checkpoint of the declared dtypes: a conv, its bias, a linear."""
        rng = np.random.default_rng(0)
        ckpt = Checkpoint()
        for i, dt in enumerate(self.dtypes):
            if dt in ("float32", "float64", "float16"):
                arr = rng.standard_normal((4, 3, 3, 3) if i == 0 else (5, 4)).astype(dt)
            elif dt == "bool":
                arr = rng.integers(0, 2, (5, 4)).astype(bool)
            else:
                arr = rng.integers(0, 100, (5, 4)).astype(dt)
            kind = "conv2d" if arr.ndim == 4 else "linear"
            ckpt.add(f"layer{i}.weight", LazyTensor.from_array(arr), TensorInfo(kind=kind))
        return ckpt

    def write_options(self, ckpt: Checkpoint) -> dict:
        """Writer options every write of the suite passes: a format whose writer needs a native
        template (ONNX: the model to put weights into) returns {"template": path} for `ckpt`, made
        outside the test's output directory (the suite lists that directory)."""
        return {}

    def _package_files(self) -> list[str]:
        mod = self.module
        root = os.path.dirname(mod.__file__)
        if os.path.basename(mod.__file__) != "__init__.py":
            return [mod.__file__]
        return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")]

    # ---- the contract --------------------------------------------------------------------------

    def test_exposes_the_public_names(self):
        mod = self.module
        missing = [n for n in PUBLIC_NAMES if not hasattr(mod, n)]
        assert not missing, f"{mod.__name__} lacks {missing}"
        assert mod.NAME == self.adapter_name
        assert mod.FORMATS and all(isinstance(f, registry.NativeFormat) for f in mod.FORMATS)
        assert len({f.name for f in mod.FORMATS}) == len(mod.FORMATS)

    def test_declared_options_are_what_read_and_write_take(self):
        """Options are data: the hub validates against FORMATS, so the functions must take exactly
        the declared options, with the declared defaults."""
        mod = self.module
        # One reader per adapter; one writer per format (NativeFormat.writer, `write` by default).
        checks = [(READ, mod.read, [f for f in mod.FORMATS if f.reads])]
        for writer in dict.fromkeys(f.writer for f in mod.FORMATS if f.writes):
            assert hasattr(mod, writer), f"{mod.__name__} declares writer {writer!r} but has no such function"
            checks.append((WRITE, getattr(mod, writer), [f for f in mod.FORMATS if f.writes and f.writer == writer]))
        for side, fn, formats in checks:
            declared = {}
            for fmt in formats:
                declared.update(fmt.options_for(side))
            params = {n: p for n, p in inspect.signature(fn).parameters.items()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _HUB_KEYWORDS}
            assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()), \
                f"{mod.__name__}.{fn.__name__} takes **options: declare them on FORMATS instead"
            assert set(params) == set(declared), (side, fn.__name__, sorted(params), sorted(declared))
            for name, p in params.items():
                assert p.default == declared[name].default, (side, name, p.default, declared[name].default)

    def test_imports_only_the_sdk_from_the_hub_and_no_framework_at_module_level(self):
        mod = self.module
        fw = mod.FRAMEWORK_MODULE
        for path in self._package_files():
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
            for node in ast.walk(tree):
                names: list[str] = []
                line = getattr(node, "lineno", "?")
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for n in names:
                    if n == "hubfmt" or (n.startswith("hubfmt.") and not n.startswith(mod.__name__)):
                        assert n == "hubfmt.sdk", f"{path}:{line} imports {n}; adapters import only hubfmt.sdk"
            for node in tree.body:        # module level: the framework only inside functions
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    assert not any(n == fw or n.startswith(fw + ".") for n in names), \
                        f"{path}:{node.lineno} imports {fw} at module level"

    def test_init_only_reexports(self):
        mod = self.module
        if os.path.basename(mod.__file__) != "__init__.py":
            return
        tree = ast.parse(open(mod.__file__, encoding="utf-8").read())
        for node in tree.body:
            ok: bool = isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
                # `if TYPE_CHECKING:` naming what lazy_exports imports on first use
                isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                and not node.orelse and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body))
            assert ok, f"{mod.__file__}:{getattr(node, 'lineno', '?')}: __init__.py holds logic; move it to a module"

    def test_sniff_is_cheap_and_never_raises(self, tmp_path):
        mod = self.module
        (tmp_path / "empty").write_bytes(b"")
        (tmp_path / "junk").write_bytes(os.urandom(4096))
        (tmp_path / "dir").mkdir()
        for p in ("empty", "junk", "dir", "missing"):
            assert mod.sniff(str(tmp_path / p)) is None, p

    def test_written_file_reads_back_and_is_sniffed(self, tmp_path):
        mod = self.module
        src = self.sample()
        out = str(tmp_path / self.output_name)
        report = mod.write(src, out, **self.write_options(src))
        assert report.tensors_out == len(src)
        fmt = mod.sniff(out)
        assert fmt in {f.name for f in mod.FORMATS}
        assert registry.detect_input(out)[0] == self.adapter_name
        back = mod.read(out)
        assert sorted(back) == sorted(src)
        for name in src:
            assert np.array_equal(back.array(name), src.array(name)), name

    def test_an_existing_output_is_kept(self, tmp_path):
        out = str(tmp_path / self.output_name)
        self.module.write(self.sample(), out, **self.write_options(self.sample()))
        before = sorted(os.listdir(tmp_path))
        try:
            self.module.write(self.sample(), out, **self.write_options(self.sample()))
        except HubfmtError as e:
            assert "exists" in str(e)
        else:
            raise AssertionError("an existing output was replaced without overwrite=True")
        assert sorted(os.listdir(tmp_path)) == before

    def test_a_failing_tensor_leaves_no_output(self, tmp_path):
        src = self.sample()
        name = next(iter(src))
        t = src[name].tensor

        def boom():
            raise FormatError("source vanished", "src")
        src.entries[name].tensor = LazyTensor(t.shape, t.dtype, boom)
        out = str(tmp_path / self.output_name)
        try:
            self.module.write(src, out, **self.write_options(self.sample()))
        except FormatError:
            pass
        else:
            raise AssertionError("a tensor that failed to load did not fail the write")
        assert os.listdir(tmp_path) == [], os.listdir(tmp_path)

    def test_damaged_input_is_a_format_error_naming_the_file(self, tmp_path):
        out = tmp_path / self.output_name
        self.module.write(self.sample(), str(out), **self.write_options(self.sample()))
        files = [out] if out.is_file() else sorted(p for p in tmp_path.rglob("*") if p.is_file())
        for f in files:
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])        # truncated
        try:
            ckpt = self.module.read(str(out))
            for name in ckpt:
                ckpt.array(name)
        except FormatError as e:
            assert e.path, "the error names no file"
        else:
            raise AssertionError("a truncated file read without a FormatError")

    def test_importing_the_adapter_imports_no_framework(self):
        mod = self.module
        code = (f"import sys, importlib; importlib.import_module({mod.__name__!r}); "
                f"print(any(m == {mod.FRAMEWORK_MODULE!r} or m.startswith({mod.FRAMEWORK_MODULE + '.'!r}) "
                f"for m in sys.modules))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "False", f"importing {mod.__name__} imported {mod.FRAMEWORK_MODULE}"


__all__ = ["AdapterContract"]
