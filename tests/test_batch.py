"""hubfmt.convert_many and `hubfmt convert-many` (#19): a generated zoo in every format plus sharded
checkpoints, converted in parallel (a local process pool, a real local Ray cluster), compared
tensor for tensor with converting each item alone; a worker SIGKILLed mid-write; a driver
interrupted and rerun from its ledger; failures counted in the exit status."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import CLEAN_ENV, run_cli
from hubfmt.batch import Item, convert_many, load_manifest, mirror_tree
from hubfmt.batch.ledger import DEFAULT_NAME, Ledger
from hubfmt.cli.demo import example_checkpoint
from hubfmt.format.checkpoint import Checkpoint, TensorInfo
from hubfmt.format.tensor import LazyTensor
from hubfmt.io import hubfile
from hubfmt.pipeline import convert, read, write

FORMATS = [("hub", ".safetensors"), ("torch", ".pth"), ("mindspore", ".ckpt"), ("mxnet", ".params"),
           ("tensorflow", ".index"), ("tensorflow", ".weights.h5"), ("oneflow", ".oneflow")]


def _native(ckpt: Checkpoint, path: str, fw: str, tmp: str) -> None:
    hub = os.path.join(tmp, f".staging-{os.path.basename(path)}.safetensors")
    write(ckpt, hub)
    if fw == "hub":
        os.rename(hub, path)
        return
    convert(hub, path, dst_framework=fw, show_progress=False)
    os.unlink(hub)


def make_zoo(root: str, n: int = 21) -> list[str]:
    """n small checkpoints cycling through every format, a sharded hub file (3 shards) and a
    sharded Hugging Face directory; returns the source paths."""
    os.makedirs(root)
    srcs = []
    for i in range(n):
        fw, ext = FORMATS[i % len(FORMATS)]
        sub = os.path.join(root, f"family{i % 3}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"m{i}{ext}")
        _native(example_checkpoint(seed=i), path, fw, root)
        srcs.append(path)
    big = os.path.join(root, "sharded", "big.safetensors")
    os.makedirs(os.path.dirname(big))
    write(example_checkpoint(seed=99), big, max_shard_size=150)
    assert len(hubfile.shards(big)[0]) >= 3
    srcs.append(big + hubfile.INDEX_SUFFIX)
    hf = os.path.join(root, "hf-model")
    convert(big, hf, dst_framework="hf", write_options={"max_shard_size": 150}, show_progress=False)
    assert len([f for f in os.listdir(hf) if f.endswith(".safetensors")]) >= 3
    srcs.append(hf)
    return srcs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("zoo") / "src")
    return root, make_zoo(root)


def assert_same_tensors(a: str, b: str) -> None:
    ca, cb = read(a), read(b)
    assert list(ca) == list(cb), (a, b)
    for name in ca:
        x, y = ca.array(name), cb.array(name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (a, b, name)


def alone(items: list[Item], where: str) -> dict[str, str]:
    """Each item converted by itself with hubfmt.convert: dst -> that output."""
    out = {}
    for k, it in enumerate(items):
        d = os.path.join(where, str(k))
        os.makedirs(d)
        single = os.path.join(d, os.path.basename(it.dst))
        convert(it.src, single, dst_framework=it.to, write_options=it.write_options, show_progress=False)
        out[it.dst] = single
    return out


def no_temporaries(root: str) -> None:
    left = [os.path.join(r, f) for r, ds, fs in os.walk(root) for f in fs + ds if ".hubfmt-tmp-" in f]
    assert not left, left


def test_manifest_on_a_process_pool_matches_each_item_alone_and_reruns_from_the_ledger(zoo, tmp_path):
    root, srcs = zoo
    targets = ["hub", "torch", "mindspore", "mxnet", "tensorflow", "keras-h5", "oneflow"]
    suffix = {"hub": ".safetensors", "torch": ".pth", "mindspore": ".ckpt", "mxnet": ".params",
              "tensorflow": ".index", "keras-h5": ".weights.h5", "oneflow": ".oneflow"}
    manifest = tmp_path / "zoo.jsonl"
    lines = []
    for k, src in enumerate(srcs):
        to = "hub" if k >= len(srcs) - 2 else targets[(k + 1) % len(targets)]   # sharded sources -> hub
        # The suffix picks the format; `to` named for a few (a framework name covers its formats).
        row = {"src": os.path.relpath(src, tmp_path), "dst": f"out/o{k}{suffix[to]}"}
        lines.append(json.dumps(row | ({"to": "tensorflow"} if to == "tensorflow" else {})))
    manifest.write_text("# the zoo\n" + "\n".join(lines) + "\n")
    items = load_manifest(manifest)
    batch = convert_many(items, jobs=2)
    assert batch.count("done") == len(srcs) and not batch.failed, batch.to_text()
    singles = alone(items, str(tmp_path / "alone"))
    for it in items:
        assert_same_tensors(it.dst, singles[it.dst])
    # The sharded sources went shard by shard: one output shard per source shard, the index last.
    for it, r in zip(items[-2:], batch.items[-2:], strict=True):
        assert r.tasks >= 3 and len(r.files) == r.tasks + 1 and r.files[-1].endswith(hubfile.INDEX_SUFFIX)
        index = json.loads(open(r.files[-1]).read())
        assert set(index["weight_map"]) == set(read(it.dst)) and hubfile.is_hub_file(r.files[-1])
    ledger = tmp_path / "out" / DEFAULT_NAME
    assert ledger.exists()
    no_temporaries(str(tmp_path / "out"))

    again = convert_many(load_manifest(manifest), jobs=2)
    assert again.count("skipped") == len(srcs) and again.count("done") == 0
    # A touched source is still current (same CRC-32C); a changed one is redone, alone.
    os.utime(srcs[1])
    changed = srcs[0]
    write(example_checkpoint(seed=1234), str(tmp_path / "new.safetensors"))
    os.replace(tmp_path / "new.safetensors", changed)
    third = convert_many(load_manifest(manifest), jobs=2)
    assert [r.src for r in third.items if r.status == "done"] == [items[0].src]
    assert third.count("skipped") == len(srcs) - 1
    assert_same_tensors(items[0].dst, changed)


def test_ray_local_cluster_converts_the_zoo_like_each_item_alone(zoo, tmp_path):
    from hubfmt.batch.ray_executor import RayExecutor

    root, srcs = zoo
    out = tmp_path / "hub-zoo"
    items = mirror_tree(root, out, "hub")
    assert len(items) == len(srcs) >= 23
    executor = RayExecutor("local", num_cpus=2)
    try:
        assert executor.capacity == 2
        batch = convert_many(items, executor=executor)
    finally:
        executor.shutdown()
    import ray
    assert not ray.is_initialized()
    assert batch.count("done") == len(items) and not batch.failed, batch.to_text()
    assert batch.executor == "RayExecutor"
    singles = alone(items, str(tmp_path / "alone"))
    for it in items:
        assert_same_tensors(it.dst, singles[it.dst])
    assert sum(r.tasks for r in batch.items) > len(items)     # the sharded ones: a task per shard
    no_temporaries(str(out))


def _big_hub(path: str, tensors: int = 48, mib: int = 4) -> None:
    ckpt = Checkpoint()
    for i in range(tensors):
        ckpt.add(f"layer{i}.weight", LazyTensor.from_array(np.full((mib << 18,), i, np.float32)),
                 TensorInfo(kind="linear"))
    write(ckpt, path)


def _writer_of(tmp_prefix: str, dirpath: str) -> int | None:
    """The pid of the process that has a temporary of `tmp_prefix` open in `dirpath`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                name = os.path.basename(target)
                if os.path.dirname(target) == dirpath and name.startswith(tmp_prefix) and ".hubfmt-tmp-" in name:
                    return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("sharded", [False, True], ids=["one-task", "a-shard-task"])
def test_a_worker_killed_mid_write_leaves_no_partial_output_and_the_retry_completes(tmp_path, sharded):
    """SIGKILL of the worker process that has the big item's temporary open: the pool breaks, is
    recreated, the item (or that shard) is retried; nothing partial is left, the output is whole.
    Sharded: a 3-shard hub source to a hub file, the killed task one shard."""
    src = tmp_path / "src"
    src.mkdir()
    if sharded:
        _big_hub(str(tmp_path / "whole.safetensors"))
        write(read(str(tmp_path / "whole.safetensors")), str(src / "big.safetensors"), max_shard_size=64 << 20)
        assert len(hubfile.shards(str(src / "big.safetensors"))[0]) == 3
    else:
        _big_hub(str(src / "big.safetensors"))
    for i in range(3):
        write(example_checkpoint(seed=i), str(src / f"small{i}.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []
    seen_partial: list[str] = []
    over = threading.Event()

    def killer():
        while not over.is_set() and not killed:
            pid = _writer_of(".big", str(out))     # the worker writing big's (or a shard's) temporary
            if pid is not None:
                seen_partial.extend(f for f in os.listdir(out) if f.startswith(".big") and ".hubfmt-tmp-" in f)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.002)
    watcher = threading.Thread(target=killer)
    watcher.start()
    try:
        batch = convert_many(mirror_tree(src, out, "hub" if sharded else "torch"), jobs=2)
    finally:
        over.set()
        watcher.join()
    assert killed and seen_partial, "the big item finished before it could be killed"
    big = next(r for r in batch.items if os.path.basename(r.dst).startswith("big"))
    assert batch.count("done") == 4 and not batch.failed, batch.to_text()
    assert big.attempts == 2
    no_temporaries(str(out))
    if sharded:
        assert big.tasks == 3 and len(big.files) == 4 and os.path.exists(str(out / "big.safetensors.index.json"))
        assert_same_tensors(str(out / "big.safetensors"), str(tmp_path / "whole.safetensors"))
    else:
        assert_same_tensors(str(out / "big.pt"), str(src / "big.safetensors"))


def test_an_interrupted_job_reruns_only_its_unfinished_items(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(4):
        write(example_checkpoint(seed=i), str(src / f"a{i}.safetensors"))
        lines.append({"src": f"src/a{i}.safetensors", "dst": f"out/a{i}.ckpt"})
    _big_hub(str(src / "z.safetensors"), tensors=64)
    lines.append({"src": "src/z.safetensors", "dst": "out/z.ckpt"})
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("src,dst\n" + "".join(f"{d['src']},{d['dst']}\n" for d in lines))
    cmd = [sys.executable, "-m", "hubfmt", "convert-many", str(manifest), "--jobs", "1", "-q"]
    proc = subprocess.Popen(cmd, env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:    # the four small ones done, the big one being written
        if any(f.startswith(".z.ckpt.hubfmt-tmp-") for f in os.listdir(out)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not (out / "z.ckpt").exists()
    no_temporaries(str(out))
    book = Ledger(str(out / DEFAULT_NAME))
    assert sorted(book.entries) == [f"a{i}.ckpt" for i in range(4)]

    rerun = run_cli("convert-many", manifest, "--report", tmp_path / "r.json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "hubfmt-batch-report/1"
    assert [i["status"] for i in report["items"]] == ["skipped"] * 4 + ["done"]
    assert report["summary"] | {"seconds": 0, "bytes_per_second": 0} == report["summary"] | {
        "done": 1, "skipped": 4, "failed": 0, "seconds": 0, "bytes_per_second": 0}
    done = report["items"][-1]["report"]
    assert done["schema"] == "hubfmt-report/1" and done["tensors_out"] == 64
    assert_same_tensors(str(out / "z.ckpt"), str(src / "z.safetensors"))


def test_failed_items_are_counted_in_the_exit_status_and_usage_errors_are_2(tmp_path):
    write(example_checkpoint(), str(tmp_path / "good.safetensors"))
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"src": "good.safetensors", "dst": "o/good.pth"}) + "\n"
        + json.dumps({"src": "bad.pth", "dst": "o/bad.safetensors", "from": "torch"}) + "\n"
        + json.dumps({"src": "missing.pth", "dst": "o/missing.safetensors"}) + "\n")
    r = run_cli("convert-many", tmp_path / "m.jsonl", "--report", tmp_path / "r.json")
    assert r.returncode == 1
    assert "2 of 3 item(s) failed" in r.stderr
    items = json.loads((tmp_path / "r.json").read_text())["items"]
    assert [i["status"] for i in items] == ["done", "failed", "failed"]
    assert items[1]["attempts"] == 1 and "bad.pth" in items[1]["error"]      # bad input: not retried
    assert "no such file" in items[2]["error"]
    assert not (tmp_path / "o" / "bad.safetensors").exists()
    no_temporaries(str(tmp_path / "o"))
    # Usage: a directory needs DEST and --to; a manifest takes no --to; an unknown field is named.
    assert run_cli("convert-many", tmp_path).returncode == 2
    assert run_cli("convert-many", tmp_path / "m.jsonl", "--to", "torch").returncode == 2
    (tmp_path / "typo.jsonl").write_text(json.dumps({"src": "a", "dts": "b"}) + "\n")
    r = run_cli("convert-many", tmp_path / "typo.jsonl")
    assert r.returncode == 2 and "dts" in r.stderr


def _lost(payload):
    raise ConnectionError("the node running this task went away")


@pytest.mark.parametrize("losses, status, attempts", [(2, "done", 3), (3, "failed", 3)])
def test_a_task_that_fails_for_another_reason_than_bad_input_is_retried(tmp_path, losses, status, attempts):
    """An executor whose first `losses` tasks fail (as a lost node would): tried 1 + retries times."""
    from concurrent.futures import ThreadPoolExecutor

    write(example_checkpoint(), str(tmp_path / "a.safetensors"))
    it = Item(src=str(tmp_path / "a.safetensors"), dst=str(tmp_path / "o" / "a.pth"))

    class Lossy(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, /, *args, **kwargs):
            self.submitted += 1
            return super().submit(_lost if self.submitted <= losses else fn, *args, **kwargs)

    with Lossy(1) as ex:
        batch = convert_many([it], executor=ex, retries=2)
    (r,) = batch.items
    assert (r.status, r.attempts) == (status, attempts), r
    assert os.path.exists(it.dst) == (status == "done")
    if status == "failed":
        assert "ConnectionError: the node running this task went away" in r.error
        assert batch.count("failed") == 1 and "failed after 3 attempt(s)" in batch.to_text()


def test_a_mirrored_tree_keeps_same_named_sources_apart_and_shows_one_progress_bar(tmp_path):
    import io

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, fw in (("model.safetensors", "hub"), ("model.pth", "torch"), ("sub/other.ckpt", "mindspore")):
        _native(example_checkpoint(seed=len(name)), str(src / name), fw, str(tmp_path))
    (src / "notes.txt").write_text("not a checkpoint")
    items = mirror_tree(src, tmp_path / "out", "hub")
    assert sorted(os.path.relpath(it.dst, tmp_path / "out") for it in items) == [
        "model.pth.safetensors", "model.safetensors.safetensors", os.path.join("sub", "other.safetensors")]
    stream = io.StringIO()
    batch = convert_many(items, jobs=1, show_progress=True, stream=stream)
    assert batch.count("done") == 3
    assert "converting: 100%" in stream.getvalue().replace("\r", "\n")
    for it in items:
        assert_same_tensors(it.dst, it.src)


def test_shards_an_interrupted_run_left_without_their_index_are_redone(tmp_path):
    src = tmp_path / "big.safetensors"
    write(example_checkpoint(seed=5), str(src), max_shard_size=150)
    it = Item(src=str(src) + hubfile.INDEX_SUFFIX, dst=str(tmp_path / "out" / "big.safetensors"))
    first = convert_many([it], jobs=1)
    (r,) = first.items
    assert r.status == "done" and r.tasks >= 3
    # As if the driver died before the index: shards published, no index, no ledger.
    os.unlink(r.files[-1])
    os.unlink(tmp_path / "out" / DEFAULT_NAME)
    again = convert_many([it], jobs=1)
    assert again.items[0].status == "done", again.to_text()
    assert_same_tensors(it.dst, str(src))
    # A complete output the ledger does not know is someone's: kept, the item fails.
    os.unlink(tmp_path / "out" / DEFAULT_NAME)
    third = convert_many([it], jobs=1)
    assert third.items[0].status == "failed" and "exists" in third.items[0].error
