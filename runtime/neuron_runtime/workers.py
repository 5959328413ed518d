"""Executors that run traced graphs, one per worker slot; jobs go to the least-loaded one.

Two backends, chosen by `ServeSettings.worker_backend`:

- `process` (default on `cpu`): one forked process per slot, pinned to the slot's CPUs, fed numpy jobs over a
  pipe. Measured reason: a TorchScript call does not run free of the GIL (the interpreter takes it back around
  ops), so a worker *thread* next to a busy event loop slows down badly: the tiny MLP's 0.6 ms batch-8 graph took
  12 ms with the default 5 ms switch interval and 1.5 ms at 0.2 ms while another thread ran Python. A process
  has its own GIL; the cost is pickling numpy arrays (a few us) and a pipe round trip per batch.
- `thread` (Neuron targets, `multicore`): threads in the server process. Needed where the placement APIs load one
  model copy for several cores (`multicore_context`) and where a NeuronCore must stay owned by this process.
  Each thread pins itself (`sched_setaffinity` on a thread id affects that thread) and sets its own intra-op
  thread count (`torch.set_num_threads` is per calling thread with OpenMP).

NeuronCores per worker (`coresPerWorker = N` on a Neuron target): a traced graph runs on one NeuronCore, and a
NeuronCore executes one call at a time. `neuron_cores_context(start_nc, nc_count=N)` would replicate the model on N
cores behind one module, but its cores are only all busy when N calls are in flight at once, which a
one-thread worker never has. So a worker gets N *lanes*: one copy per core, each loaded with
`neuron_cores_context(start_nc + i, 1)`, and N threads, so it runs up to N calls concurrently, one per core, and
the per-core execution counts (`neuron_runtime_neuroncore_executions_total`) are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch

from neuron_runtime import neuron
from neuron_runtime.artifact import Manifest
from neuron_runtime.config import Target
from neuron_runtime.errors import Unavailable
from neuron_runtime.jobs import Graphs
from neuron_runtime.placement import WorkerSlot
from neuron_runtime.tensors import load_script

log = logging.getLogger(__name__)

X = TypeVar("X")
Job = Callable[[Graphs], Any]
Backend = Literal["thread", "process"]
PROCESS_START_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
    """A worker could not start."""


class WorkerLost(Unavailable):
    """The worker running this job died (OOM kill, segfault in a graph): the job did not complete (HTTP 503)."""


def describe_exit(code: int | None) -> str:
    """`exit code 3`, `killed by SIGKILL`: how a worker process ended, for messages and logs."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def load_graphs(directory: Path, manifest: Manifest, slot: WorkerSlot) -> Graphs:
    """Load every graph (each bucket at each batch size) for one slot (placed on its NeuronCores on Neuron targets)."""
    target: Target = manifest.target  # type: ignore[assignment]
    graphs: Graphs = {}
    for graph in manifest.graphs:
        with neuron.placement_context(target, slot.start_nc, slot.nc_count, multicore=slot.shared_model):
            graphs[(graph.bucket, graph.batch_size)] = load_script(directory / graph.file).eval()
    return graphs


def lane_slots(slot: WorkerSlot, target: str) -> list[WorkerSlot]:
    """The one-core slots a worker's lanes load onto: one per NeuronCore of a pinned Neuron slot, else the slot."""
    if target == "cpu" or slot.shared_model or slot.nc_count == 1:
        return [slot]
    return [
        WorkerSlot(slot.index, slot.start_nc + i, 1, (slot.cores[i],), shared_model=False) for i in range(slot.nc_count)
    ]


def _setup_current_thread(slot: WorkerSlot, target: str, pin: bool) -> None:
    threading.current_thread().name = f"worker-{slot.index}"
    if target == "cpu":
        if pin and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, slot.cores)
        torch.set_num_threads(slot.nc_count)
    else:
        torch.set_num_threads(1)


def _timed(job: Job, graphs: Graphs) -> tuple[Any, float]:
    started = time.perf_counter()
    with torch.inference_mode():
        result = job(graphs)
    return result, time.perf_counter() - started


class AnyWorker(Protocol):
    slot: WorkerSlot
    in_flight: int

    @property
    def capacity(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    async def submit(self, job: Job) -> tuple[Any, float]: ...

    async def submit_to_lane(self, lane: int, job: Job) -> tuple[Any, float]: ...

    def close(self) -> None: ...


@dataclass
class Worker:
    """A thread worker: one executor thread per lane, each lane a (possibly shared) model copy on its cores."""

    slot: WorkerSlot
    lanes: list[Graphs]
    executor: ThreadPoolExecutor
    lane_slots: list[WorkerSlot] = field(default_factory=list)
    in_flight: int = 0
    busy_seconds: float = 0.0
    executions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _free: queue.SimpleQueue[int] = field(default_factory=queue.SimpleQueue)
    _on_lane: Callable[[WorkerSlot, float], None] | None = None

    def __post_init__(self) -> None:
        if not self.lane_slots:
            self.lane_slots = [self.slot] * len(self.lanes)
        for lane in range(len(self.lanes)):
            self._free.put(lane)

    @property
    def capacity(self) -> int:
        return len(self.lanes)

    @property
    def alive(self) -> bool:
        """A thread worker cannot die on its own: a crash in a graph takes the whole process (kubelet restarts)."""
        return True

    def run(self, job: Job, lane: int | None = None) -> tuple[Any, float]:
        """Run `job` on a free lane (or the given one) on this worker's thread; returns its result and busy time."""
        chosen = self._free.get() if lane is None else lane
        try:
            result, busy = _timed(job, self.lanes[chosen])
        finally:
            if lane is None:
                self._free.put(chosen)
        with self._lock:
            self.busy_seconds += busy
            self.executions += 1
        if self._on_lane is not None:
            self._on_lane(self.lane_slots[chosen], busy)
        return result, busy

    async def submit(self, job: Job) -> tuple[Any, float]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, job)

    async def submit_to_lane(self, lane: int, job: Job) -> tuple[Any, float]:
        """Run on one specific lane (warm-up and the parity gate, before any traffic)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, job, lane)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _process_main(
    conn: multiprocessing.connection.Connection, directory: Path, manifest: Manifest, slot: WorkerSlot, pin: bool
) -> None:
    """Body of a worker process: set up, load, then answer (id, job) messages until an empty one."""
    try:
        _setup_current_thread(slot, manifest.target, pin)
        if manifest.target != "cpu":
            # A NeuronCore belongs to one process: this one sees exactly its slot's cores.
            os.environ["NEURON_RT_VISIBLE_CORES"] = ",".join(map(str, slot.cores))
            slot = WorkerSlot(slot.index, 0, slot.nc_count, slot.cores, shared_model=False)
        graphs = load_graphs(directory, manifest, slot)
    except BaseException as exc:
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    conn.send_bytes(pickle.dumps(("ready", None)))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        if not data:
            return
        job_id, job = pickle.loads(data)
        try:
            result, busy = _timed(job, graphs)
            reply = pickle.dumps((job_id, True, result, busy), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            reply = pickle.dumps((job_id, False, f"{type(exc).__name__}: {exc}", 0.0))
        conn.send_bytes(reply)


class ProcessWorker:
    """A worker process: jobs go down a pipe; a reader thread resolves the futures as results come back.

    When the process dies (OOM kill, a segfault in a graph), the reader sees the pipe close at once: every job in
    flight fails with `WorkerLost`, later submits fail immediately, and `on_exit` (set by the pool) is called on
    the event loop so the supervisor can replace the worker. A job is never left waiting on a dead process: the
    pending table and the alive flag change under one lock.
    """

    _ids = itertools.count()

    def __init__(self, slot: WorkerSlot, directory: Path, manifest: Manifest, pin: bool) -> None:
        self.slot = slot
        self.in_flight = 0
        self._alive = False
        self._closing = False
        self.on_exit: Callable[[ProcessWorker], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        context = multiprocessing.get_context("fork")  # forked before any graph runs: no OpenMP state to inherit
        self._conn, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_process_main, args=(child, directory, manifest, slot, pin), name=f"worker-{slot.index}", daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(PROCESS_START_TIMEOUT_S):
            self.process.kill()
            raise WorkerError(f"worker {slot.index} did not load the model in {PROCESS_START_TIMEOUT_S:.0f} s")
        status, detail = pickle.loads(self._conn.recv_bytes())
        if status != "ready":
            self.process.join()
            raise WorkerError(f"worker {slot.index} failed to load the model: {detail}")
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[tuple[Any, float]]]] = {}
        self._lock = threading.Lock()
        self._alive = True
        self._reader = threading.Thread(target=self._read, name=f"worker-{slot.index}-reader", daemon=True)
        self._reader.start()

    @property
    def capacity(self) -> int:
        return 1

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[ProcessWorker], None]) -> None:
        """Call `on_exit(self)` on `loop` when the process dies unexpectedly (at once if it is already dead)."""
        with self._lock:
            self._loop, self.on_exit = loop, on_exit
            dead = not self._alive and not self._closing
        if dead:
            loop.call_soon_threadsafe(on_exit, self)

    def _lost(self) -> WorkerLost:
        self.process.join(timeout=5)
        return WorkerLost(
            f"worker {self.slot.index} died ({describe_exit(self.process.exitcode)}) while running this request; "
            "retry (the worker is being replaced)"
        )

    async def submit_to_lane(self, lane: int, job: Job) -> tuple[Any, float]:
        return await self.submit(job)

    async def submit(self, job: Job) -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, float]] = loop.create_future()
        job_id = next(self._ids)
        with self._lock:
            if not self._alive:
                raise WorkerLost(f"worker {self.slot.index} is not running (being replaced); retry")
            self._pending[job_id] = (loop, future)
        payload = pickle.dumps((job_id, job), protocol=pickle.HIGHEST_PROTOCOL)
        # If the process died between the check and the send, the reader fails the pending futures (ours too).
        with contextlib.suppress(OSError):
            self._conn.send_bytes(payload)
        return await future

    def _read(self) -> None:
        while True:
            try:
                data = self._conn.recv_bytes()
            except (EOFError, OSError):
                break
            job_id, ok, payload, busy = pickle.loads(data)
            with self._lock:
                loop, future = self._pending.pop(job_id)
            if ok:
                loop.call_soon_threadsafe(_resolve, future, (payload, busy), None)
            else:
                loop.call_soon_threadsafe(_resolve, future, None, GraphFailed(payload))
        with self._lock:
            self._alive = False
            pending, self._pending = self._pending, {}
            closing, watcher, on_exit = self._closing, self._loop, self.on_exit
        error = self._lost() if pending or not closing else None
        for loop, future in pending.values():
            loop.call_soon_threadsafe(_resolve, future, None, error)
        if not closing:
            log.error(
                "worker %d (pid %s) died: %s", self.slot.index, self.process.pid, describe_exit(self.process.exitcode)
            )
            if watcher is not None and on_exit is not None:
                watcher.call_soon_threadsafe(on_exit, self)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        with contextlib.suppress(OSError):
            self._conn.send_bytes(b"")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()
        self._reader.join(timeout=30)


class GraphFailed(RuntimeError):
    """The graph raised on a job (the message is the worker's `Type: message`, traceback included)."""


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerPool:
    """The model copies of one artifact; `run` goes to the worker with the fewest jobs in flight."""

    def __init__(
        self,
        workers: Sequence[AnyWorker],
        on_busy: Callable[[int, float], None] | None = None,
        spawn: Callable[[WorkerSlot], AnyWorker] | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self._on_busy = on_busy
        self._next = 0
        self._spawn = spawn

    @property
    def live_capacity(self) -> int:
        """Calls the live workers can run at once (0: every worker is dead or being replaced)."""
        return sum(w.capacity for w in self.workers if w.alive)

    @property
    def all_alive(self) -> bool:
        return all(w.alive for w in self.workers)

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[ProcessWorker], None]) -> None:
        """Have every worker process report its unexpected death to `on_exit` on `loop`."""
        for worker in self.workers:
            if isinstance(worker, ProcessWorker):
                worker.watch(loop, on_exit)

    def spawn(self, slot: WorkerSlot) -> AnyWorker:
        """Start a new worker on `slot` (blocking: it loads the model); only pools of worker processes can."""
        if self._spawn is None:
            raise WorkerError("this pool cannot start workers (thread workers die only with the process)")
        return self._spawn(slot)

    def replace(self, old: AnyWorker, new: AnyWorker) -> None:
        """Put `new` in place of the dead `old` (same slot: same cores) and release the old one's resources."""
        index = self.workers.index(old)
        self.workers[index] = new
        with contextlib.suppress(Exception):
            old.close()

    @classmethod
    def load(
        cls, directory: Path, manifest: Manifest, slots: Sequence[WorkerSlot], pin_cpu: bool, backend: Backend
    ) -> WorkerPool:
        workers: list[AnyWorker] = []
        shared: Graphs | None = None
        try:
            for slot in slots:
                if backend == "process":
                    workers.append(ProcessWorker(slot, directory, manifest, pin_cpu))
                else:
                    lanes: list[Graphs] = []
                    singles = lane_slots(slot, manifest.target)
                    for single in singles:
                        if single.shared_model:
                            shared = shared if shared is not None else load_graphs(directory, manifest, single)
                            lanes.append(shared)
                        else:
                            lanes.append(load_graphs(directory, manifest, single))
                    executor = ThreadPoolExecutor(
                        max_workers=len(lanes),
                        thread_name_prefix=f"worker-{slot.index}",
                        initializer=_setup_current_thread,
                        initargs=(slot, manifest.target, pin_cpu),
                    )
                    workers.append(Worker(slot=slot, lanes=lanes, executor=executor, lane_slots=singles))
                log.info(
                    "%s worker %d: cores %s (start_nc=%d, nc_count=%d)",
                    backend,
                    slot.index,
                    slot.cores,
                    slot.start_nc,
                    slot.nc_count,
                )
        except BaseException:
            for worker in workers:
                worker.close()
            raise
        if backend == "process":
            return cls(workers, spawn=lambda slot: ProcessWorker(slot, directory, manifest, pin_cpu))
        return cls(workers)

    def host_cores(self, allowed: set[int]) -> set[int]:
        """CPUs no worker is pinned to: where the event loop (HTTP, JSON, batching) should run on `cpu`.

        This mirrors a Neuron host, where graphs run on NeuronCores and the host CPUs do the serving work; on a
        plain CPU it keeps the event loop from stealing cycles from a worker on the same core. Empty when the
        workers use every allowed CPU.
        """
        used = {core for worker in self.workers for core in worker.slot.cores}
        return allowed - used

    @property
    def capacity(self) -> int:
        """Calls the pool can run at once (one per lane)."""
        return sum(w.capacity for w in self.workers)

    def set_lane_observer(self, on_lane: Callable[[WorkerSlot, float], None]) -> None:
        """Called after every call on a thread worker's lane with that lane's slot (its cores) and busy time."""
        for worker in self.workers:
            if isinstance(worker, Worker):
                worker._on_lane = on_lane

    def least_loaded(self) -> AnyWorker:
        """The live worker with the lowest load (jobs in flight per lane); ties rotate so idle workers share evenly.

        Raises `WorkerLost` when no worker is alive (every one is being replaced)."""
        n = len(self.workers)
        best: AnyWorker | None = None
        for offset in range(n):
            worker = self.workers[(self._next + offset) % n]
            if not worker.alive:
                continue
            if best is None or worker.in_flight * best.capacity < best.in_flight * worker.capacity:
                best = worker
        if best is None:
            raise WorkerLost("no worker is running (every worker is being replaced); retry")
        self._next = (self.workers.index(best) + 1) % n
        return best

    async def run(self, job: Job) -> Any:
        worker = self.least_loaded()
        worker.in_flight += 1
        try:
            result, busy = await worker.submit(job)
        finally:
            worker.in_flight -= 1
        if self._on_busy is not None:
            self._on_busy(worker.slot.index, busy)
        return result

    def set_busy_observer(self, on_busy: Callable[[int, float], None]) -> None:
        self._on_busy = on_busy

    async def run_on_each(self, job: Job) -> list[Any]:
        """Run `job` once on every lane of every worker (warm-up, parity gate), all concurrently."""
        results = await asyncio.gather(
            *(w.submit_to_lane(lane, job) for w in self.workers for lane in range(w.capacity))
        )
        return [r for r, _busy in results]

    def copies(self) -> list[tuple[AnyWorker, int]]:
        """Every (worker, lane): each is one model copy on its own cores."""
        return [(w, lane) for w in self.workers for lane in range(w.capacity)]

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.close()
