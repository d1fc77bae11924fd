"""What runs in a worker process (or a Ray task): one item, or one shard of a sharded item.
Plain functions over plain data (dicts of strings and numbers), so any executor can ship them."""
from __future__ import annotations

import os
import time

from hubfmt.batch.items import Item
from hubfmt.batch.ledger import file_print, fingerprint, source_files


def run_item(task: dict) -> dict:
    """Convert one item with hubfmt.convert (its output is atomic: whole or absent)."""
    from hubfmt.pipeline import convert

    t0 = time.monotonic()
    item = Item.from_json(task["item"])
    from hubfmt import registry
    registry.detect_input(item.src, item.from_)     # a missing or unknown source: bad input, said as convert says it
    source_print = fingerprint(item.src)             # before converting: a source changed meanwhile is redone
    report = convert(item.src, item.dst, src_framework=item.from_, dst_framework=item.to,
                     overwrite=task.get("overwrite", False), show_progress=False,
                     read_options=item.read_options, write_options=item.write_options, rules=item.rules,
                     template=item.template, template_framework=item.template_from,
                     allow_missing=item.allow_missing, allow_unexpected=item.allow_unexpected)
    # Writers that do not list their files: the files a reader of the output would open.
    files = list(report.files) or source_files(item.dst)
    return {"report": report.to_json(), "files": files, "bytes": report.bytes_out,
            "source_files": source_print, "seconds": time.monotonic() - t0, "pid": os.getpid()}


def run_shard(task: dict) -> dict:
    """Write shard `task["index"]` of a sharded hub output: the tensors of one source shard."""
    from hubfmt.io import hubfile
    from hubfmt.pipeline import read

    t0 = time.monotonic()
    item = Item.from_json(task["item"])
    ckpt = read(item.src, framework=task["src_adapter"], **item.read_options)
    names, out_dtypes, _, report = hubfile.plan(ckpt, bool(item.write_options.get("keep_dtype", False)), item.dst)
    group = task["names"]
    nbytes = hubfile.write_shard(ckpt, task["shard_path"], group, out_dtypes, overwrite=task.get("overwrite", False))
    # This task reads the source shard: it takes the shard's print for the ledger too.
    spans = {ckpt.entries[n].tensor.span.path for n in group}   # type: ignore[union-attr]
    prints = [file_print(p) for p in sorted(spans)]
    mine = set(group)
    events = [e.to_json() for e in report.events if e.name in mine]
    return {"files": [task["shard_path"]], "bytes": nbytes, "events": events, "source_files": prints,
            "seconds": time.monotonic() - t0, "pid": os.getpid()}
