"""Converting many checkpoints, or one sharded checkpoint shard by shard, in parallel.

    convert_many(items, executor=..., jobs=N, retries=2, ledger=PATH) -> BatchReport

Items come from a manifest (JSONL/CSV, `load_manifest`) or a source tree mirrored into a
destination tree (`mirror_tree`). Any concurrent.futures.Executor runs the tasks: a local
process pool by default, `RayExecutor` (hubfmt.batch.ray_executor, imports ray when made) on a
Ray cluster. The ledger (hubfmt.batch.ledger) makes a rerun skip what is done and current.
"""
from hubfmt.batch.engine import BatchReport, ItemResult, convert_many, default_ledger
from hubfmt.batch.items import Item, load_manifest, mirror_tree

__all__ = ["convert_many", "BatchReport", "ItemResult", "Item", "load_manifest", "mirror_tree", "default_ledger"]
