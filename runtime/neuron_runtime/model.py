"""A served model: a verified artifact, its worker pool and its batcher, behind one small async contract.

`ServedModel.run(inputs, timeout_s)` checks and pads a request (`collate.prepare`), queues it in the `Batcher`, and
returns that request's outputs once its batch ran, raising only `errors.InferenceError`s; `admit()` refuses before
any decoding. Executing a batch (`_execute`) cuts it into chunks of the traced batch
size and runs every chunk on the least-loaded worker; the tensor work of a one-chunk batch (concatenate, pad,
run, split, crop) happens on the worker thread, so the event loop only parses and answers HTTP.

The front ends (`server` for REST, `grpc_server`) depend only on this module's public surface.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from neuron_runtime import artifact, compat, neuron, parity, placement
from neuron_runtime.batching import collate
from neuron_runtime.batching.queue import Batcher, DispatchInfo, QueueFull
from neuron_runtime.config import Batching, Parity, ServeSettings
from neuron_runtime.errors import (
    DeadlineExceeded,
    InferenceError,
    ModelError,
    RequestFailed,
    Unavailable,
    short_message,
)
from neuron_runtime.jobs import BatchJob, GraphJob, tensors_from_wire, tensors_to_wire
from neuron_runtime.metrics import Metrics
from neuron_runtime.tensors import torch_dtype
from neuron_runtime.workers import AnyWorker, ProcessWorker, WorkerPool, describe_exit

log = logging.getLogger(__name__)

Outputs = list[torch.Tensor]
Result = Outputs | BaseException


@dataclass(frozen=True)
class Supervision:
    """How dead worker processes are replaced: `restarts` deaths are tolerated within `window_s`; one more and the
    model is `failed` (the server exits so that Kubernetes restarts the pod)."""

    restarts: int = 3
    window_s: float = 300.0
    warmup_runs: int = 2


class ConfigurationError(ValueError):
    """Settings that contradict the artifact (e.g. a batch size it cannot run)."""


def signature_of(manifest: artifact.Manifest) -> collate.Signature:
    bucketed = set(manifest.bucketed_inputs)
    sizes = tuple(int(s) for s in (manifest.buckets or {}).get("sizes", []))  # type: ignore[attr-defined]
    inputs = []
    for spec in manifest.inputs:
        shape = list(spec.shape[1:])
        if spec.name in bucketed and manifest.bucket_axis is not None:
            shape[manifest.bucket_axis - 1] = sizes[-1]
        inputs.append(collate.InputSig(spec.name, torch_dtype(spec.dtype), tuple(shape), spec.name in bucketed))
    return collate.Signature(
        inputs=tuple(inputs),
        batch_size=manifest.batch_size,
        bucket_sizes=sizes,
        bucket_axis=manifest.bucket_axis,
        batch_sizes=tuple(manifest.batch_sizes),
    )


class ServedModel:
    def __init__(
        self,
        name: str,
        manifest: artifact.Manifest,
        digest: str,
        pool: WorkerPool,
        batching: Batching,
        metrics: Metrics,
        supervision: Supervision | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batching.max_batch_size > manifest.batch_size and not manifest.dynamic_batch:
            raise ConfigurationError(
                f"batching.max_batch_size={batching.max_batch_size} exceeds the traced batch size "
                f"{manifest.batch_size} and the artifact was compiled without dynamicBatch "
                "(recompile with dynamicBatch: true, or lower maxBatchSize)"
            )
        self.name = name
        self.manifest = manifest
        self.digest = digest
        self.signature = signature_of(manifest)
        self.output_axes = [o.bucket_axis for o in manifest.outputs]
        self.pool = pool
        self.metrics = metrics
        self.parity: parity.ParityReport | None = None
        self.supervision = supervision or Supervision()
        self._clock = clock
        self._deaths: collections.deque[float] = collections.deque()
        self._dead: asyncio.Queue[AnyWorker] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        #: set (with the reason) when workers die faster than `supervision` allows: the server must exit.
        self.failure: str | None = None
        self.failed = asyncio.Event()
        pool.set_busy_observer(lambda index, seconds: metrics.worker_busy.labels(str(index)).inc(seconds))
        if manifest.target != "cpu":
            pool.set_lane_observer(self._observe_lane)
        if batching.idle_dispatch is None:
            # Idle dispatch pays off when a partial batch runs a smaller graph; with one traced size a lone request
            # would pay the whole graph and closed-loop clients fall out of step (bench: 30 req/s at 2 clients).
            several = len(self.signature.traced_batch_sizes()) > 1
            batching = batching.model_copy(update={"idle_dispatch": several})
        self.batching = batching
        self.batcher: Batcher[collate.Prepared, Outputs] = Batcher(
            self._execute,
            batching,
            max_in_flight=pool.capacity + 1,
            partial_in_flight=pool.capacity,
            on_dispatch=self._observe_dispatch,
        )

    @classmethod
    def load(cls, settings: ServeSettings, metrics: Metrics) -> ServedModel:
        """Verify the artifact (refusing any digest mismatch), plan placement and load every worker."""
        manifest, digest = artifact.verify(settings.artifact_dir, settings.expected_sha256)
        compiled = compat.Versions(manifest.torch_version, manifest.neuron_package_version, manifest.compiler_version)
        serving = compat.serving_versions(neuron.installed_versions(manifest.target))  # type: ignore[arg-type]
        compat.require_compatible(manifest.target, compiled, serving)
        cores = placement.visible_cores(manifest.target)
        slots = placement.plan(settings.placement, cores)
        backend = settings.worker_backend
        if backend == "auto":
            backend = "process" if manifest.target == "cpu" and settings.placement.mode == "pinned" else "thread"
        if backend == "process" and settings.placement.mode == "multicore":
            raise ConfigurationError("placement.mode=multicore shares one model copy: it needs worker_backend=thread")
        pool = WorkerPool.load(settings.artifact_dir, manifest, slots, settings.pin_cpu_threads, backend)
        if manifest.target == "cpu" and settings.pin_cpu_threads and hasattr(os, "sched_setaffinity"):
            host = pool.host_cores(set(os.sched_getaffinity(0)))
            if host:
                os.sched_setaffinity(0, host)  # this (the event loop's) thread only
                log.info("event loop on CPUs %s", sorted(host))
        supervision = Supervision(settings.worker_restarts, settings.worker_restart_window_s, settings.warmup_runs)
        return cls(settings.model_name, manifest, digest, pool, settings.batching, metrics, supervision)

    def start(self) -> None:
        self.batcher.start()
        self._dead = asyncio.Queue()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="worker-supervisor")
        self.pool.watch(asyncio.get_running_loop(), self._dead.put_nowait)

    @property
    def healthy(self) -> bool:
        """Every worker is alive (none being replaced) and the model has not failed: what readiness reports."""
        return self.failure is None and self.pool.all_alive

    # -- worker supervision -----------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Replace each dead worker process on the same cores (load, warm), one at a time; give up (`failed`) when
        more than `restarts` deaths happen within `window_s`."""
        assert self._dead is not None
        while True:
            dead = await self._dead.get()
            index = str(dead.slot.index)
            exit_text = describe_exit(dead.process.exitcode) if isinstance(dead, ProcessWorker) else "thread"
            self.metrics.worker_deaths.labels(index).inc()
            now = self._clock()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > self.supervision.window_s:
                self._deaths.popleft()
            if len(self._deaths) > self.supervision.restarts:
                self._fail(
                    f"{len(self._deaths)} worker deaths within {self.supervision.window_s:.0f} s (limit "
                    f"{self.supervision.restarts}); the last: worker {index} {exit_text}"
                )
                return
            log.warning("replacing worker %s (%s) on cores %s", index, exit_text, dead.slot.cores)
            started = time.perf_counter()
            try:
                new = await asyncio.to_thread(self.pool.spawn, dead.slot)
                await self._warm(new)
            except Exception as exc:
                self._fail(f"worker {index} died ({exit_text}) and its replacement failed: {short_message(exc)}")
                return
            self.pool.replace(dead, new)
            if isinstance(new, ProcessWorker):
                new.watch(asyncio.get_running_loop(), self._dead.put_nowait)
            self.metrics.worker_restarts.labels(index).inc()
            log.warning("worker %s replaced and warm in %.2f s", index, time.perf_counter() - started)
            self.batcher.poke()

    def _fail(self, reason: str) -> None:
        log.error("giving up: %s", reason)
        self.failure = reason
        self.failed.set()

    async def _warm(self, worker: AnyWorker) -> None:
        for graph in self.manifest.graphs:
            example = self._example(graph.bucket, graph.batch_size)
            job = GraphJob(graph.bucket, tensors_to_wire(example), graph.batch_size)
            for _ in range(self.supervision.warmup_runs):
                for lane in range(worker.capacity):
                    await worker.submit_to_lane(lane, job)

    async def check_parity(self, settings: Parity, directory: Path) -> parity.ParityReport | None:
        """Run every graph on the stored reference inputs on every model copy; raise `ParityFailed` beyond tolerance."""
        if not settings.enabled:
            return None
        atol, rtol, precision = parity.tolerance(self.manifest, settings.atol, settings.rtol)
        references = parity.load_references(directory, self.manifest)
        tally = parity.new_tally()
        copies = self.pool.copies()
        cases = 0
        for graph in self.manifest.graphs:
            inputs, expected = references[(graph.bucket, graph.batch_size)]
            cases = len(inputs)
            for case, (case_inputs, case_expected) in enumerate(zip(inputs, expected, strict=True)):
                job = GraphJob(graph.bucket, tensors_to_wire(case_inputs), graph.batch_size)
                results = await asyncio.gather(*(w.submit_to_lane(lane, job) for w, lane in copies))
                for (worker, lane), (wires, _busy) in zip(copies, results, strict=True):
                    where = f"graph {graph.file} case {case} worker {worker.slot.index} lane {lane}"
                    parity.compare(tally, where, tensors_from_wire(wires), case_expected, atol, rtol)
        result = parity.report(tally, atol, rtol, precision, len(self.manifest.graphs), cases, len(copies))
        self.parity = result
        self.metrics.parity_max_abs_error.set(result.max_abs_error)
        if not result.passed:
            raise parity.ParityFailed(result)
        log.info("%s", result.summary())
        # One line on stdout that the operator reads from the pod's log into the NeuronDeployment's status.
        print(result.log_line(), flush=True)
        return result

    async def warmup(self, runs: int) -> None:
        """Run every graph (each bucket at each batch size) `runs` times on every worker before the model reports
        ready."""
        for graph in self.manifest.graphs:
            example = self._example(graph.bucket, graph.batch_size)
            for _ in range(runs):
                await self.pool.run_on_each(GraphJob(graph.bucket, tensors_to_wire(example), graph.batch_size))

    def _example(self, bucket: int | None, batch_size: int | None = None) -> list[torch.Tensor]:
        """Ones at `batch_size` rows (default: the largest traced size), bucket axis at `bucket`."""
        tensors = []
        for sig in self.signature.inputs:
            shape = [batch_size or self.signature.batch_size, *sig.shape]
            if sig.bucketed and bucket is not None and self.signature.bucket_axis is not None:
                shape[self.signature.bucket_axis] = bucket
            tensors.append(torch.ones(shape, dtype=sig.dtype))
        return tensors

    def prepare(self, inputs: dict[str, torch.Tensor]) -> collate.Prepared:
        return collate.prepare(self.signature, inputs, max_rows=self.batching.max_batch_size)

    def submit(self, prepared: collate.Prepared) -> asyncio.Future[Outputs]:
        """Queue a prepared request; raises `QueueFull` / `ShuttingDown` at once, else the future of its outputs.

        Cancelling the future (e.g. `asyncio.wait_for` timing out) takes the request out of the queue.
        """
        future = self.batcher.submit(prepared.key, prepared, prepared.rows)
        self.metrics.queue_depth.set(self.batcher.queued_rows)
        return future

    async def infer(self, prepared: collate.Prepared) -> Outputs:
        return await self.submit(prepared)

    def admit(self) -> None:
        """Cheap checks before a request's body is decoded: raise `Overloaded` when the queue is full and
        `Unavailable` when no worker is alive, so refusing costs almost nothing under overload."""
        if self.pool.live_capacity == 0:
            raise Unavailable(f"model {self.name!r} has no live worker (replacing it)")
        if self.batcher.queued_rows >= self.batching.max_queue:
            self.metrics.rejections.labels("queue_full").inc()
            raise QueueFull(self.batcher.queued_rows, self.batching.max_queue)

    async def run(self, inputs: dict[str, torch.Tensor], timeout_s: float | None = None) -> Outputs:
        """One request, any front end: check and pad, queue, wait for its batch (or `timeout_s`, default the
        batching timeout). Raises only `errors.InferenceError` subclasses; outputs in the manifest's order."""
        prepared = self.prepare(inputs)
        try:
            future = self.submit(prepared)
        except QueueFull:  # admit() let it in, but its rows do not fit the rows left
            self.metrics.rejections.labels("queue_full").inc()
            raise
        timeout = timeout_s if timeout_s is not None else self.batching.timeout_ms / 1000.0
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            self.metrics.rejections.labels("timeout").inc()
            raise DeadlineExceeded(f"request timed out after {timeout * 1000:.0f} ms") from None

    async def drain(self) -> None:
        """Refuse new requests, dispatch everything queued now, and wait for running batches."""
        await self.batcher.close()

    def shutdown(self) -> None:
        self.pool.shutdown()

    # -- batch execution ----------------------------------------------------------------------------------------
    def _observe_lane(self, lane: placement.WorkerSlot, seconds: float) -> None:
        if lane.nc_count == 1 and not lane.shared_model:
            core = str(lane.cores[0])
            self.metrics.neuroncore_executions.labels(core).inc()
            self.metrics.neuroncore_busy.labels(core).inc(seconds)

    def _observe_dispatch(self, info: DispatchInfo) -> None:
        m = self.metrics
        for wait in info.waits:
            m.queue_wait.observe(wait)
        size = collate.choose_batch_size(info.rows, self.signature.traced_batch_sizes())
        executed = -(-info.rows // size) * size
        m.batch_rows.observe(info.rows)
        m.rows_executed.inc(executed)
        m.rows_padded.inc(executed - info.rows)
        m.padding_ratio.observe((executed - info.rows) / executed)
        m.queue_depth.set(self.batcher.queued_rows)

    async def _execute(self, batch: Sequence[collate.Prepared]) -> list[Result]:
        """Run a batch; each request gets its outputs or its own error.

        A worker that dies under the batch fails it with `WorkerLost` (503: retry). When the graph raises, the
        batch is re-run in halves (bisection, at most 2n-2 more calls for n requests) so the requests that make it
        raise get `RequestFailed` (400) and their batch-mates are served. When every part fails, a known-good
        input (the warm-up example) decides: the graph runs it, so these requests are at fault (400); it fails
        too, so the model is (`ModelError`, 500).

        Steps: the whole batch (`_run`); on a graph error, bisection (`_bisect`), the known-good probe when
        nothing was served (`_probe`), then each graph error turned into its request's answer (`_blame`)."""
        try:
            return list(await self._run(batch))
        except InferenceError as exc:
            return [exc] * len(batch)
        except Exception as exc:
            first = exc
        self.metrics.isolations.inc()
        results: list[Result | None] = [None] * len(batch)
        await _bisect(self._run, batch, results, range(len(batch)), first)
        failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, InferenceError)]
        served = any(not isinstance(r, BaseException) for r in results)
        model_ok = served or (failed and await self._probe(batch[0].bucket))
        final = _blame(results, bool(model_ok))
        log.warning(
            "batch of %d failed; isolated %d failing request(s) (%s)",
            len(batch),
            len(failed),
            "the model runs a known-good input" if model_ok else "the model fails on a known-good input too",
        )
        return final

    async def _probe(self, bucket: int | None) -> bool:
        """Does the graph run the warm-up example (a known-good input)?"""
        try:
            await self.pool.run(GraphJob(bucket, tensors_to_wire(self._example(bucket))))
        except Exception:
            return False
        return True

    async def _run(self, batch: Sequence[collate.Prepared]) -> list[Outputs]:
        """Pad to the smallest traced batch size that fits (batch-size buckets), or run chunks of the largest."""
        size = collate.choose_batch_size(sum(p.rows for p in batch), self.signature.traced_batch_sizes())
        bucket = batch[0].bucket
        rows = [p.rows for p in batch]
        axes = self.output_axes
        if sum(rows) <= size:
            wires = await self.pool.run(BatchJob.of(batch, size, axes))
            return [tensors_from_wire(w) for w in wires]
        # Larger than one traced batch (dynamicBatch): chunks run in parallel on the least-loaded workers.
        joined = collate.concat([p.tensors for p in batch])
        chunks = collate.chunk(joined, size)
        outputs = await asyncio.gather(
            *(self.pool.run(GraphJob(bucket, tensors_to_wire(c), size)) for c, _real in chunks)
        )
        outputs = [tensors_from_wire(o) for o in outputs]
        merged = collate.unchunk(outputs, [real for _c, real in chunks])
        return [collate.crop(out, axes, p.length) for out, p in zip(collate.split(merged, rows), batch, strict=True)]


async def _bisect(
    run: Callable[[Sequence[collate.Prepared]], Awaitable[list[Outputs]]],
    batch: Sequence[collate.Prepared],
    results: list[Result | None],
    indices: Sequence[int],
    known_failure: Exception | None,
) -> None:
    """Fill `results[i]` for the requests `indices` of `batch`: run them together (unless `known_failure` says
    they already failed so), and on a graph error split them in halves, down to the single requests that fail."""
    if known_failure is None:
        try:
            outputs = await run([batch[i] for i in indices])
        except InferenceError as exc:
            for i in indices:
                results[i] = exc
            return
        except Exception as exc:
            known_failure = exc
        else:
            for i, out in zip(indices, outputs, strict=True):
                results[i] = out
            return
    if len(indices) == 1:
        results[indices[0]] = known_failure
        return
    mid = len(indices) // 2
    await asyncio.gather(
        _bisect(run, batch, results, indices[:mid], None), _bisect(run, batch, results, indices[mid:], None)
    )


def _blame(results: Sequence[Result | None], model_ok: bool) -> list[Result]:
    """Each request's answer after bisection: outputs and `InferenceError`s as they are; a graph error becomes
    `RequestFailed` (the request's values are at fault) when `model_ok`, else `ModelError`."""
    final: list[Result] = []
    for result in results:
        assert result is not None
        if isinstance(result, Exception) and not isinstance(result, InferenceError):
            message = short_message(result)
            if model_ok:
                final.append(RequestFailed(f"the model failed on this request's values: {message}"))
            else:
                final.append(ModelError(f"the model failed: {message}"))
        else:
            final.append(result)
    return final
