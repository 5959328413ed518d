"""Executors that run traced graphs: one thread per worker slot, dispatch to the least-loaded one.

Threads, not processes: torch releases the GIL inside graph execution (CPU kernels and Neuron `nrt_execute`
alike), so one Python process keeps every core busy without copying tensors between processes, and one artifact
load can be shared (`multicore`). Each thread is set up once: on `cpu` it pins itself to its slot's CPUs
(`sched_setaffinity` on a thread id affects that thread only) and sets its own intra-op thread count
(`torch.set_num_threads` is per calling thread with OpenMP); on Neuron the graph was placed on the slot's
NeuronCores at load time (`neuron.placement_context`) and the thread needs no intra-op threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from neuron_runtime import neuron
from neuron_runtime.artifact import Manifest
from neuron_runtime.config import Target
from neuron_runtime.placement import WorkerSlot
from neuron_runtime.tensors import load_script

log = logging.getLogger(__name__)

Graphs = dict[int | None, torch.jit.ScriptModule]
"""Loaded graphs of one model copy, by bucket size (None without buckets)."""

X = TypeVar("X")


def load_graphs(directory: Path, manifest: Manifest, slot: WorkerSlot) -> Graphs:
    """Load every bucket's graph for one slot (placed on its NeuronCores on Neuron targets)."""
    target: Target = manifest.target  # type: ignore[assignment]
    graphs: Graphs = {}
    for graph in manifest.graphs:
        with neuron.placement_context(target, slot.start_nc, slot.nc_count, multicore=slot.shared_model):
            graphs[graph.bucket] = load_script(directory / graph.file).eval()
    return graphs


@dataclass
class Worker:
    slot: WorkerSlot
    graphs: Graphs
    executor: ThreadPoolExecutor
    in_flight: int = 0
    busy_seconds: float = 0.0
    executions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, job: Callable[[Graphs], X]) -> tuple[X, float]:
        """Run `job` on this worker's thread (called there); returns its result and the busy time."""
        started = time.perf_counter()
        with torch.inference_mode():
            result = job(self.graphs)
        busy = time.perf_counter() - started
        with self._lock:
            self.busy_seconds += busy
            self.executions += 1
        return result, busy


def _thread_setup(slot: WorkerSlot, target: Target, pin: bool) -> None:
    threading.current_thread().name = f"worker-{slot.index}"
    if target == "cpu":
        if pin and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, slot.cores)
        torch.set_num_threads(slot.nc_count)
    else:
        torch.set_num_threads(1)


class WorkerPool:
    """The model copies of one artifact and their threads; `run` goes to the worker with the fewest jobs."""

    def __init__(self, workers: Sequence[Worker], on_busy: Callable[[int, float], None] | None = None) -> None:
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self._on_busy = on_busy
        self._next = 0

    @classmethod
    def load(cls, directory: Path, manifest: Manifest, slots: Sequence[WorkerSlot], pin_cpu: bool) -> WorkerPool:
        target: Target = manifest.target  # type: ignore[assignment]
        workers: list[Worker] = []
        shared: Graphs | None = None
        for slot in slots:
            if slot.shared_model:
                shared = shared if shared is not None else load_graphs(directory, manifest, slot)
                graphs = shared
            else:
                graphs = load_graphs(directory, manifest, slot)
            executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"worker-{slot.index}",
                initializer=_thread_setup,
                initargs=(slot, target, pin_cpu),
            )
            workers.append(Worker(slot=slot, graphs=graphs, executor=executor))
            log.info(
                "worker %d: cores %s (start_nc=%d, nc_count=%d)", slot.index, slot.cores, slot.start_nc, slot.nc_count
            )
        return cls(workers)

    def host_cores(self, allowed: set[int]) -> set[int]:
        """CPUs no worker is pinned to: where the event loop (HTTP, JSON, batching) should run on `cpu`.

        This mirrors a Neuron host, where graphs run on NeuronCores and the host CPUs do the serving work; on a
        plain CPU it keeps the event loop from stealing cycles from (and fighting for the GIL with) a worker
        on the same core. Empty when the workers use every allowed CPU.
        """
        used = {core for worker in self.workers for core in worker.slot.cores}
        return allowed - used

    def least_loaded(self) -> Worker:
        """The worker with the fewest queued jobs; ties rotate so idle workers share the load evenly."""
        n = len(self.workers)
        best = self.workers[self._next % n]
        for offset in range(n):
            worker = self.workers[(self._next + offset) % n]
            if worker.in_flight < best.in_flight:
                best = worker
        self._next = (best.slot.index + 1) % n
        return best

    async def run(self, job: Callable[[Graphs], X]) -> X:
        worker = self.least_loaded()
        worker.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            result, busy = await loop.run_in_executor(worker.executor, worker.run, job)
        finally:
            worker.in_flight -= 1
        if self._on_busy is not None:
            self._on_busy(worker.slot.index, busy)
        return result

    def set_busy_observer(self, on_busy: Callable[[int, float], None]) -> None:
        self._on_busy = on_busy

    async def run_on_each(self, job: Callable[[Graphs], X]) -> list[X]:
        """Run `job` once on every worker (warm-up), all concurrently."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(w.executor, w.run, job) for w in self.workers))
        return [r for r, _busy in results]

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.executor.shutdown(wait=True, cancel_futures=True)
