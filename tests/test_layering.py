"""The hub's layers, as the README's Layout section draws them: dependencies point one way, and
no module imports another that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

HUB = REPO / "hubfmt"
# package -> the hub packages it may import (base modules errors, report, version are open to all)
ALLOWED = {
    "format": {"format"},
    "codecs": {"format", "codecs"},
    "io": {"format", "codecs", "io"},
    "alignment": {"format", "io", "alignment"},
    "batch": {"format", "codecs", "io", "alignment", "batch", "pipeline", "registry"},
    "cli": {"format", "codecs", "io", "alignment", "batch", "cli", "pipeline", "registry"},
}
BASE = {"errors", "report", "version"}


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(p) for p in HUB.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Hub modules `path` imports (`from pkg import submodule` counts as the submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("hubfmt"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES
            out |= subs
            if len(subs) < len(node.names):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hubfmt"))
    return out & MODULES


def test_dependencies_point_one_way():
    bad = []
    for path in HUB.rglob("*.py"):
        parts = path.relative_to(HUB).parts
        if len(parts) < 2 or parts[0] not in ALLOWED:
            continue
        for target in _imports(path):
            tparts = target.split(".")[1:]
            top = tparts[0] if tparts else ""
            if top not in ALLOWED[parts[0]] and top not in BASE:
                bad.append(f"{path.relative_to(REPO)} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {_module(p): _imports(p) for p in HUB.rglob("*.py")}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


ADAPTERS = sorted(p for p in (REPO / "adapters").iterdir() if (p / "__init__.py").exists())
JOBS = {"__init__.py", "formats.py", "reader.py", "writer.py", "names.py", "memory.py"}


def test_adapters_import_no_other_adapter_and_only_the_sdk_from_the_hub():
    bad = []
    for pkg in ADAPTERS:
        for path in pkg.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 2:
                    bad.append(f"{path.relative_to(REPO)}: relative import beyond its package")
                    continue
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for m in mods:
                    other = m.startswith("hubfmt.adapters") and not m.startswith(f"hubfmt.adapters.{pkg.name}")
                    hub = m.startswith("hubfmt") and not m.startswith("hubfmt.adapters") and m not in (
                        "hubfmt.sdk", "hubfmt.errors")
                    if other or hub:
                        bad.append(f"{path.relative_to(REPO)} imports {m}")
    assert not bad, "\n".join(bad)


def test_every_adapter_has_the_same_modules_for_the_same_jobs():
    assert {p.name for p in ADAPTERS} >= {"torch", "tensorflow", "keras", "mxnet", "mindspore", "oneflow"}
    for pkg in ADAPTERS:
        missing = JOBS - {p.name for p in pkg.glob("*.py")}
        assert not missing, f"{pkg.name} lacks {sorted(missing)}"


_IMPORTED = """
import sys
from hubfmt import registry
{setup}
print(sorted(m for m in sys.modules if m.startswith("hubfmt.adapters.") and m.count(".") == 3))
"""


def _adapter_modules_after(setup: str) -> set[str]:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _IMPORTED.format(setup=setup)], capture_output=True, text=True, check=True)
    return set(ast.literal_eval(r.stdout.strip()))


def test_asking_what_adapters_handle_imports_no_reader_or_writer():
    """Every command asks every adapter what it reads and writes (--to NAME, output suffixes);
    that imports formats.py, not the readers, writers and framework glue (#18: 0.1 s a run)."""
    loaded = _adapter_modules_after(
        "for a in registry.available():\n"
        "    m = registry.adapter(a); m.NAME, m.FRAMEWORK, m.FORMATS\n"
        "registry.select('mxnet'); registry.detect_output('out-0000.params'); registry.detect_output('x', 'tensorflow')")
    heavy = {m for m in loaded if m.rsplit(".", 1)[1] in ("reader", "writer", "memory", "hf")}
    assert not heavy, sorted(heavy)
    assert "hubfmt.adapters.mxnet.formats" in loaded and "hubfmt.adapters.keras.formats" in loaded


def test_an_adapters_functions_load_on_first_use():
    loaded = _adapter_modules_after(
        "from hubfmt.adapters import mxnet, torch\n"
        "assert mxnet.write.__module__ == 'hubfmt.adapters.mxnet.writer'\n"
        "assert torch.write_hf.__name__ == 'write_directory'\n"
        "from hubfmt.adapters.keras import read\n"
        "assert read.__module__ == 'hubfmt.adapters.keras.reader'\n"
        "assert mxnet.ndlist.__name__ == 'hubfmt.adapters.mxnet.ndlist'\n"      # a submodule, as before
        "try:\n    mxnet.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')")
    assert {"hubfmt.adapters.mxnet.writer", "hubfmt.adapters.torch.hf", "hubfmt.adapters.keras.reader"} <= loaded
    assert "hubfmt.adapters.mxnet.reader" not in loaded
