"""`pip install hubfmt` alone reads and writes every native format (#15): a fresh venv with the
wheel and its declared dependencies only (no framework), built once per run as a user would."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import venv

import pytest

from conftest import REPO

FRAMEWORKS = ("torch", "tensorflow", "keras", "mxnet", "mindspore", "oneflow", "transformers", "safetensors", "jax",
              "flax", "onnx", "onnxruntime")

_ROUND_TRIPS = textwrap.dedent("""
    import importlib.util, os, sys
    import numpy as np
    import hubfmt
    from hubfmt.cli.demo import example_checkpoint

    present = [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None]
    assert not present, f"frameworks installed: {present}"
    out = sys.argv[1]
    src = example_checkpoint(half=True)
    hub = os.path.join(out, "m.safetensors")
    hubfmt.write(src, hub)
    # every native format this install writes, and back to the hub (a .keras archive needs a
    # Keras model's config, an .onnx file a model to write into: their own tests cover them)
    targets = [("m.pth", None), ("m.ckpt", None), ("m.params", None), ("m.index", None), ("m.weights.h5", None),
               ("m.oneflow", None), ("m.msgpack", None), ("m_hf", "hf"), ("m_pt.safetensors", "torch-safetensors")]
    for name, to in targets:
        native = os.path.join(out, name)
        hubfmt.convert(hub, native, dst_framework=to)
        back = hubfmt.read(native)
        for n in back:
            if n not in src:            # MindSpore stores scalar non-tensor content as parameters
                assert n in src.extra, (name, n)
                continue
            want = src.array(n)
            got = back.array(n)
            assert got.shape == want.shape and np.allclose(got.astype(np.float64), want.astype(np.float64)), (name, n)
        assert len([n for n in back if n in src]) >= len(src) - 1, (name, list(back))   # all but num_batches_tracked
        print("ok", name, len(back))
""")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    root = tmp_path_factory.mktemp("bare")
    wheels = root / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("hubfmt-*.whl")
    env_dir = root / "v"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return py, root


def test_a_bare_install_converts_every_native_format_both_ways(bare_python):
    py, root = bare_python
    work = root / "work"
    work.mkdir()
    r = subprocess.run([str(py), "-c", _ROUND_TRIPS, str(work), ",".join(FRAMEWORKS)], capture_output=True,
                       text=True, timeout=600, cwd=str(root))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("ok ")]
    assert len(done) == 9, r.stdout


def test_a_bare_install_has_the_command_and_lists_every_format(bare_python):
    py, _ = bare_python
    r = subprocess.run([str(py.parent / "hubfmt"), "formats"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for fmt in ("torch-zip", "hf", "tf-checkpoint", "keras-weights-h5", "mxnet-params", "mindspore-ckpt", "oneflow"):
        assert fmt in r.stdout, fmt
