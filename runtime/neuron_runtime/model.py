"""A served model: a verified artifact, its worker pool and its batcher, behind one small async contract.

`ServedModel.infer(inputs)` checks and pads a request (`collate.prepare`), queues it in the `Batcher`, and returns
that request's outputs once its batch ran. Executing a batch (`_execute`) cuts it into chunks of the traced batch
size and runs every chunk on the least-loaded worker; the tensor work of a one-chunk batch (concatenate, pad,
run, split, crop) happens on the worker thread, so the event loop only parses and answers HTTP.

The HTTP layer (`server`) depends only on this module's public surface.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from neuron_runtime import artifact, compat, neuron, parity, placement
from neuron_runtime.batching import collate
from neuron_runtime.batching.queue import Batcher, DispatchInfo
from neuron_runtime.config import Batching, Parity, ServeSettings
from neuron_runtime.jobs import BatchJob, GraphJob, tensors_from_wire, tensors_to_wire
from neuron_runtime.metrics import Metrics
from neuron_runtime.tensors import torch_dtype
from neuron_runtime.workers import WorkerPool

log = logging.getLogger(__name__)

Outputs = list[torch.Tensor]


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
        self.batching = batching
        self.metrics = metrics
        self.parity: parity.ParityReport | None = None
        pool.set_busy_observer(lambda index, seconds: metrics.worker_busy.labels(str(index)).inc(seconds))
        if manifest.target != "cpu":
            pool.set_lane_observer(self._observe_lane)
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
        return cls(settings.model_name, manifest, digest, pool, settings.batching, metrics)

    def start(self) -> None:
        self.batcher.start()

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
            inputs, expected = references[graph.bucket]
            cases = len(inputs)
            for case, (case_inputs, case_expected) in enumerate(zip(inputs, expected, strict=True)):
                job = GraphJob(graph.bucket, tensors_to_wire(case_inputs))
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
        print(f"{parity.LOG_PREFIX} {json.dumps(result.as_dict(), sort_keys=True)}", flush=True)
        return result

    async def warmup(self, runs: int) -> None:
        """Run every bucket's graph `runs` times on every worker before the model reports ready."""
        for bucket in self.manifest.graphs:
            example = self._example(bucket.bucket)
            for _ in range(runs):
                await self.pool.run_on_each(GraphJob(bucket.bucket, tensors_to_wire(example)))

    def _example(self, bucket: int | None) -> list[torch.Tensor]:
        tensors = []
        for sig in self.signature.inputs:
            shape = [self.signature.batch_size, *sig.shape]
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
        size = self.signature.batch_size
        executed = -(-info.rows // size) * size
        m.batch_rows.observe(info.rows)
        m.rows_executed.inc(executed)
        m.rows_padded.inc(executed - info.rows)
        m.padding_ratio.observe((executed - info.rows) / executed)
        m.queue_depth.set(self.batcher.queued_rows)

    async def _execute(self, batch: Sequence[collate.Prepared]) -> list[Outputs]:
        size = self.signature.batch_size
        bucket = batch[0].bucket
        rows = [p.rows for p in batch]
        axes = self.output_axes
        if sum(rows) <= size:
            wires = await self.pool.run(BatchJob.of(batch, size, axes))
            return [tensors_from_wire(w) for w in wires]
        # Larger than one traced batch (dynamicBatch): chunks run in parallel on the least-loaded workers.
        joined = collate.concat([p.tensors for p in batch])
        chunks = collate.chunk(joined, size)
        outputs = await asyncio.gather(*(self.pool.run(GraphJob(bucket, tensors_to_wire(c))) for c, _real in chunks))
        outputs = [tensors_from_wire(o) for o in outputs]
        merged = collate.unchunk(outputs, [real for _c, real in chunks])
        return [collate.crop(out, axes, p.length) for out, p in zip(collate.split(merged, rows), batch, strict=True)]
