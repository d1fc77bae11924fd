"""A concurrent.futures.Executor over Ray tasks, so convert_many runs on a Ray cluster.

    executor = RayExecutor("auto")           # the cluster `ray start` made on this machine
    executor = RayExecutor("ray://head:10001")
    executor = RayExecutor("local", num_cpus=2)   # a cluster of this process's own, stopped on shutdown

Each submit is one Ray task (1 CPU) with Ray's own retries off: convert_many's loop retries, so
a failure is counted and reported the same way on every executor. A worker that dies makes
its task raise (WorkerCrashedError), which that loop retries. Every node needs hubfmt (and
access to the paths: shared storage); functions travel by reference, not by value. ray is
imported when the executor is made, never by the rest of the hub.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading


def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class RayExecutor(cf.Executor):
    """`address`: "local" (start a cluster in this process), "auto" (the running one on this
    machine), or a Ray address; None: ray.init's default (RAY_ADDRESS, else local). An already
    initialised Ray is used as it is. `capacity` is the cluster's CPU count: how many tasks
    convert_many keeps in flight."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, runtime_env: dict | None = None,
                 **init_options):
        import ray

        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            opts = {"include_dashboard": False, "logging_level": logging.WARNING, **init_options}
            if runtime_env:
                opts["runtime_env"] = runtime_env
            if address == "local" or address is None and num_cpus is not None:
                ray.init(num_cpus=num_cpus, **opts)
            else:
                ray.init(address=address, **opts)
            self._owns = True
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_call)
        self.capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._refs: dict[cf.Future, object] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        ref = self._remote.remote(fn, *args, **kwargs)
        fut = ref.future()
        with self._lock:
            self._refs[fut] = ref
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: cf.Future) -> None:
        with self._lock:
            self._refs.pop(fut, None)

    def cancel_all(self) -> None:
        """Stop every task still running or queued (their workers are killed: force)."""
        with self._lock:
            refs = list(self._refs.values())
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:     # noqa: BLE001 - finished meanwhile
                pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            self.cancel_all()
        if wait:
            with self._lock:
                futs = list(self._refs)
            cf.wait(futs)
        if self._owns:
            self._ray.shutdown()
            self._owns = False
