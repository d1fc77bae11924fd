"""Running a batch: plan, submit to an executor, retry, record in the ledger, report.

The driver (this module) plans the tasks, hands them to any concurrent.futures.Executor (a
process pool of its own by default; hubfmt.batch.ray_executor.RayExecutor, Dask's client
executor ...), keeps at most `capacity` tasks in flight, retries a failed task up to `retries`
times (a worker that died counts as a failure of every task it took down; a process pool of our
own is recreated), writes the index of a sharded output once all its shards are published, and
writes the ledger after each item. Workers write outputs (atomically); the driver writes
nothing else.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from hubfmt import registry
from hubfmt.batch import worker
from hubfmt.batch.items import Item, load_manifest
from hubfmt.batch.ledger import DEFAULT_NAME, Ledger, source_files
from hubfmt.errors import HubfmtError
from hubfmt.io import hubfile
from hubfmt.report import Event, Report, end_to_end, human_bytes, stage

SCHEMA = "hubfmt-batch-report/1"


@dataclass
class ItemResult:
    src: str
    dst: str
    status: str = "pending"          # done, skipped, failed
    attempts: int = 0
    error: str = ""
    files: list[str] = field(default_factory=list)
    bytes_out: int = 0
    source_bytes: int = 0
    tasks: int = 1                   # shards converted as separate tasks (1: the item alone)
    seconds: float = 0.0             # worker time, summed over its tasks
    report: dict | None = None

    def to_json(self) -> dict:
        return {"src": self.src, "dst": self.dst, "status": self.status, "attempts": self.attempts,
                "error": self.error or None, "files": self.files, "bytes_out": self.bytes_out,
                "source_bytes": self.source_bytes, "tasks": self.tasks, "worker_seconds": round(self.seconds, 3),
                "report": self.report}


@dataclass
class BatchReport:
    items: list[ItemResult]
    seconds: float = 0.0
    executor: str = ""
    ledger: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.items if r.status == status)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.items if r.status == "failed"]

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.items if r.status == "done")

    def summary(self) -> dict:
        return {"items": len(self.items), "done": self.count("done"), "skipped": self.count("skipped"),
                "failed": self.count("failed"), "bytes_out": self.bytes_out, "seconds": round(self.seconds, 3),
                "bytes_per_second": round(self.bytes_out / self.seconds) if self.seconds > 0 else None,
                "executor": self.executor, "ledger": self.ledger}

    def to_json(self) -> dict:
        from hubfmt.version import __version__

        return {"schema": SCHEMA, "hubfmt_version": __version__, "summary": self.summary(),
                "items": [r.to_json() for r in self.items]}

    def to_text(self) -> str:
        s = self.summary()
        rate = f"{s['bytes_per_second'] / 2**20:,.1f} MiB/s" if s["bytes_per_second"] is not None else "-"
        lines = ["", f"{'done':>6} {'skipped':>8} {'failed':>7} {'bytes':>12} {'seconds':>8} {'rate':>13}",
                 f"{s['done']:>6} {s['skipped']:>8} {s['failed']:>7} {human_bytes(s['bytes_out']):>12} "
                 f"{s['seconds']:>8.2f} {rate:>13}"]
        for r in self.failed:
            lines.append(f"failed after {r.attempts} attempt(s): {r.src} -> {r.dst}: {r.error}")
        return "\n".join(lines)


@dataclass
class _Task:
    item: int                     # index into the items
    fn: Callable[[dict], dict]    # worker.run_item or worker.run_shard
    payload: dict
    weight: int                   # source bytes it stands for (progress)
    attempts: int = 0


@dataclass
class _Sharded:
    """The driver's part of a sharded item: what the index needs once every shard is in."""
    meta: dict
    weight_map: dict[str, str]
    shard_files: list[str]
    left: int
    read_report: Report
    src_name: str
    names: list[str]
    source_names: dict[str, str]
    events: list[dict] = field(default_factory=list)
    prints: dict[str, dict] = field(default_factory=dict)
    bytes: int = 0


def _as_items(items) -> list[Item]:
    if isinstance(items, (str, os.PathLike)):
        return load_manifest(items)
    out = []
    for it in items:
        if isinstance(it, Item):
            out.append(it)
        elif isinstance(it, dict):
            from hubfmt.batch.items import item_from_row
            out.append(item_from_row(it, os.getcwd(), "item"))
        else:
            raise TypeError(f"an item is an Item or a dict, not {type(it).__name__}")
    from hubfmt.batch.items import check_distinct
    check_distinct(out)
    return out


def default_ledger(items: list[Item]) -> str:
    """DEST/.hubfmt-ledger.json, DEST the deepest directory holding every output."""
    dirs = [os.path.dirname(os.path.abspath(it.dst)) for it in items]
    return os.path.join(os.path.commonpath(dirs), DEFAULT_NAME)


def _shard_plan(it: Item, idx: int, overwrite: bool, weight: int) -> tuple[list[_Task], _Sharded] | None:
    """One task per source shard when the source is sharded safetensors (hub or Hugging Face index)
    and the output a hub file; None when the item is one task."""
    if it.template or it.rules or it.write_options.get("max_shard_size"):
        return None
    # Only a shard index (or a directory holding one) can be a shard set: the driver does not
    # open every checkpoint of a zoo to find out.
    if not (it.src.endswith(hubfile.INDEX_SUFFIX) or os.path.isdir(it.src)
            or (not os.path.exists(it.src) and os.path.exists(it.src + hubfile.INDEX_SUFFIX))):
        return None
    try:
        if registry.detect_output(it.dst, it.to).adapter != registry.HUB:
            return None
        src_name, src_fmt = registry.detect_input(it.src, it.from_)
        from hubfmt.pipeline import read
        ckpt = read(it.src, framework=src_name, **src_fmt.check_options(registry.READ, dict(it.read_options)))
        names, _, meta, _ = hubfile.plan(ckpt, bool(it.write_options.get("keep_dtype", False)), it.dst)
    except HubfmtError:
        return None          # the single task reports it
    groups: dict[str, list[str]] = {}
    for n in names:
        span = ckpt.entries[n].tensor.span
        if span is None or not span.path.endswith(".safetensors"):
            return None      # computed on reading, or a format of many files that is no shard set
        groups.setdefault(span.path, []).append(n)
    if len(groups) < 2:
        return None
    dst = os.path.abspath(it.dst)
    shard_files = [hubfile.shard_name(dst, i, len(groups)) for i in range(len(groups))]
    # Shards without their index are what an interrupted run of this item left (no reader takes
    # them without it): replaced. The index itself is replaced only as `overwrite` says.
    index_ow = overwrite
    overwrite = overwrite or not os.path.lexists(dst + hubfile.INDEX_SUFFIX)
    weight_map = {n: os.path.basename(shard_files[i]) for i, g in enumerate(groups.values()) for n in g}
    tasks = []
    for i, group in enumerate(groups.values()):
        tasks.append(_Task(idx, worker.run_shard, {"item": it.to_json(), "src_adapter": src_name, "names": group,
                                                   "shard_path": shard_files[i], "overwrite": overwrite,
                                                   "index_overwrite": index_ow},
                           weight // len(groups)))
    source_names = {n: ckpt[n].info.original_name for n in ckpt}
    return tasks, _Sharded(meta, weight_map, shard_files, len(tasks), ckpt.report, src_name, list(ckpt), source_names)


def _clean_temporaries(dst: str) -> None:
    """Remove what a worker that died while writing `dst` left: its temporaries (never an output)."""
    d, base = os.path.split(os.path.abspath(dst))
    stem = base
    for ext in (".safetensors.index.json", ".safetensors", ".weights.h5"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = os.path.splitext(base)[0] or base
    try:
        names = os.listdir(d)
    except OSError:
        return
    import shutil
    for name in names:
        rest = name[1 + len(stem):]
        if name.startswith("." + stem) and ".hubfmt-tmp-" in name and (not rest or rest[0] in ".-"):
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def _clean_after(task: _Task, todo: list[Item]) -> None:
    """After a task died: its temporaries. A shard's are its own file's only: the item's other
    shards may be being written by live workers (on Ray a crash takes down one task)."""
    shard = task.payload.get("shard_path")
    if shard is None:
        _clean_temporaries(todo[task.item].dst)
        return
    d, base = os.path.split(shard)
    for name in os.listdir(d):
        if name.startswith(f".{base}.hubfmt-tmp-"):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass


def _source_bytes(src: str) -> int:
    total = 0
    for p in source_files(src):
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total


def _own_pool(jobs: int) -> cf.ProcessPoolExecutor:
    # forkserver: workers do not inherit the driver's threads (the progress bar's, Ray's); the
    # server imports hubfmt's worker once, so each worker starts without importing it again.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hubfmt.batch.worker"])
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)


def _retryable(e: BaseException) -> bool:
    """Bad input (a HubfmtError: corrupt source, existing output, unmatched template) fails the
    same way every time; anything else (a dead worker, an OSError, a bug) may not."""
    return not isinstance(e, HubfmtError)


def convert_many(items, *, executor: cf.Executor | None = None, jobs: int | None = None, retries: int = 2,
                 ledger: str | os.PathLike | bool | None = None, overwrite: bool = False,
                 show_progress: bool | None = None, stream=None) -> BatchReport:
    """Convert many checkpoints in parallel; returns a BatchReport (never raises for one item).

    `items`: a manifest path (JSONL or CSV, see hubfmt.batch.items), or Items / dicts with the
    manifest's fields. `executor`: any concurrent.futures.Executor (default: a process pool of
    `jobs` workers, os.cpu_count() when None). `retries`: how many times a failed task is tried
    again. `ledger`: the ledger file (default DEST/.hubfmt-ledger.json; False: none): items it
    records as complete and current are skipped. `overwrite`: replace outputs the ledger does not
    know (outputs it knows are replaced when stale).

    >>> batch = hubfmt.convert_many("zoo.jsonl", jobs=2)          # doctest: +SKIP
    >>> print(batch.to_text()); batch.count("failed")             # doctest: +SKIP
    """
    t0 = time.monotonic()
    todo = _as_items(items)
    stream = stream or sys.stderr
    if ledger is None or ledger is True:
        ledger_path: str | None = default_ledger(todo)
    else:
        ledger_path = os.fspath(ledger) if ledger else None
    book = Ledger(ledger_path)
    results = [ItemResult(it.src, it.dst) for it in todo]
    tasks: list[_Task] = []
    sharded: dict[int, _Sharded] = {}
    for i, it in enumerate(todo):
        r = results[i]
        r.source_bytes = _source_bytes(it.src)
        os.makedirs(os.path.dirname(os.path.abspath(it.dst)), exist_ok=True)     # a mirrored tree's folders
        if book.is_current(it.src, it.dst, it.options()):
            r.status = "skipped"
            r.files = [os.path.join(book.base, o["path"]) for o in (book.entry(it.dst) or {})["outputs"]]
            continue
        # An output the ledger recorded is ours to replace; any other needs `overwrite`.
        ow = overwrite or book.entry(it.dst) is not None
        plan = _shard_plan(it, i, ow, r.source_bytes)
        if plan is not None:
            shard_tasks, sharded[i] = plan
            r.tasks = len(shard_tasks)
            tasks.extend(shard_tasks)
        else:
            # Absent now: whatever appears there later is this job's, e.g. published by an attempt
            # whose worker died before it could say so; its retry replaces it.
            fresh = not any(os.path.lexists(p) for p in [it.dst, *source_files(it.dst)])
            tasks.append(_Task(i, worker.run_item, {"item": it.to_json(), "overwrite": ow, "fresh": fresh},
                               r.source_bytes))
    own = executor is None
    jobs = jobs or os.cpu_count() or 1
    pool = executor or _own_pool(jobs)
    capacity = max(1, getattr(pool, "capacity", None) or (jobs if own or not hasattr(pool, "_max_workers")
                                                           else pool._max_workers))
    name = type(pool).__name__ + (f"({jobs})" if own else "")
    bar = _bar(stream, sum(t.weight for t in tasks), show_progress) if tasks else None
    pending = list(reversed(tasks))
    inflight: dict[cf.Future, _Task] = {}

    def fail(task: _Task, e: BaseException) -> None:
        r = results[task.item]
        if r.status == "failed":
            return
        _clean_after(task, todo)
        if task.attempts <= retries and _retryable(e):
            if task.payload.get("fresh"):
                task.payload["overwrite"] = True
            pending.append(task)
            return
        r.status = "failed"
        r.attempts = task.attempts
        r.error = str(e) or type(e).__name__
        if not isinstance(e, HubfmtError):
            r.error = f"{type(e).__name__}: {r.error}"
        # Its other shards need not run.
        pending[:] = [t for t in pending if t.item != task.item]

    def finished(task: _Task, out: dict) -> None:
        r, it = results[task.item], todo[task.item]
        if r.status == "failed":
            return
        r.seconds += out["seconds"]
        r.attempts = max(r.attempts, task.attempts)
        if task.item in sharded:
            s = sharded[task.item]
            s.events.extend(out["events"])
            s.bytes += out["bytes"]
            s.prints.update({p["path"]: p for p in out["source_files"]})
            s.left -= 1
            if s.left:
                return
            try:
                index = hubfile.write_index(os.path.abspath(it.dst), s.meta, s.weight_map, s.bytes,
                                            overwrite=task.payload["index_overwrite"])
            except (HubfmtError, OSError) as e:
                fail(_Task(task.item, task.fn, task.payload, 0, retries + 1), e)
                return
            r.report = _sharded_report(it, s, index).to_json()
            r.files, r.bytes_out = [*s.shard_files, index], s.bytes
            from hubfmt.batch.ledger import fingerprint
            source_print = fingerprint(it.src, s.prints)     # the index (and a config.json): read here
        else:
            r.report, r.files, r.bytes_out = out["report"], out["files"], out["bytes"]
            source_print = out["source_files"]
        r.status = "done"
        book.record(it.src, it.dst, it.options(), r.files, source_print)

    try:
        while pending or inflight:
            while pending and len(inflight) < capacity:
                task = pending.pop()
                task.attempts += 1
                try:
                    fut: cf.Future = pool.submit(task.fn, task.payload)
                except cf.BrokenExecutor as e:
                    if not own:
                        raise
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = _own_pool(jobs)
                    task.attempts -= 1
                    pending.append(task)
                    del e
                    continue
                inflight[fut] = task
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = inflight.pop(fut)
                try:
                    out = fut.result()
                except cf.BrokenExecutor as e:
                    broken = True
                    fail(task, e)
                except Exception as e:     # noqa: BLE001 - any failure of a task is reported, or retried
                    fail(task, e)
                else:
                    finished(task, out)
                if bar is not None and not any(t is task for t in pending):
                    bar.update(task.weight)
            if broken and own:
                # A worker died: the pool is unusable; what else it was running failed with it.
                for fut, task in list(inflight.items()):
                    try:
                        out = fut.result(timeout=5)
                    except Exception as e:     # noqa: BLE001
                        fail(task, e)
                    else:
                        finished(task, out)
                    del inflight[fut]
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _own_pool(jobs)
    except BaseException:
        # Interrupted (SIGINT/SIGTERM): stop the workers, remove their temporaries; the ledger
        # already holds every item that completed, so a rerun redoes only the rest.
        if own:
            _terminate(pool)
        else:
            for fut in inflight:
                fut.cancel()
            cancel_all = getattr(pool, "cancel_all", None)     # RayExecutor: stop its running tasks
            if cancel_all is not None:
                cancel_all()
        for task in inflight.values():
            _clean_after(task, todo)
        raise
    finally:
        if bar is not None:
            bar.close()
    if own:
        pool.shutdown(wait=True)
    return BatchReport(results, time.monotonic() - t0, name, ledger_path)


def _terminate(pool: cf.Executor) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.kill()
    for p in procs:
        p.join(timeout=5)


def _sharded_report(it: Item, s: _Sharded, index: str) -> Report:
    report = Report(source=f"{it.src} ({s.src_name})", destination=f"{it.dst} (hub)")
    report.extend(s.read_report, stage="read")
    report.stages.append(stage("read", None, len(s.names), os.path.basename(it.src)))
    for e in s.events:
        report.events.append(Event(e["action"], e["name"], e.get("detail", ""), "write", e.get("to", "")))
    report.stages.append(stage("write", len(s.names), len(s.weight_map), os.path.basename(it.dst), s.names))
    report.files = [*s.shard_files, index]
    report.tensors_in = len(s.names)
    report.tensors_out = len(s.weight_map)
    report.bytes_out = s.bytes
    report.mapping = end_to_end(report, s.names, s.source_names)
    return report


def _bar(stream, total: int, show: bool | None):
    if show is None:
        show = hasattr(stream, "isatty") and stream.isatty()
    if not show:
        return None
    from hubfmt.io.progress import _tqdm_bar

    return _tqdm_bar(stream, total=max(total, 1), unit="iB", unit_scale=True, unit_divisor=1024, desc="converting",
                     leave=True)
