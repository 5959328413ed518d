"""The operator's domain metrics, on prometheus_client's default registry (served by ``neuron-operator run``).

One process-wide ``OperatorMetrics`` (``METRICS``), registered once on ``REGISTRY`` at import: several
operators in one process (tests) share it, so tests read deltas, or build their own ``OperatorMetrics``
on a fresh ``CollectorRegistry``. The work queue reports pass durations and errors and is asked for its
depth at scrape time; the reconcilers call ``observe_compile`` and ``set_rollout_state``/``forget``.
(API writes and reconcile passes are exported by ``cli._OperatorCollector``.)

| metric | type | labels |
|---|---|---|
| ``neuron_operator_reconcile_duration_seconds`` | histogram | kind |
| ``neuron_operator_reconcile_errors_total`` | counter | kind, reason (ApiError reason or exception type) |
| ``neuron_operator_workqueue_depth`` | gauge | kind (objects triggered, pass not yet started) |
| ``neuron_operator_workqueue_running`` | gauge | kind (passes running now) |
| ``neuron_operator_workqueue_workers`` | gauge | kind (objects with a worker: one per object) |
| ``neuron_operator_compile_duration_seconds`` | histogram | — (compile Jobs that finished) |
| ``neuron_operator_compiles_total`` | counter | outcome (Compiled, CacheHit, or the failure reason) |
| ``neuron_operator_rollout_state`` | gauge | namespace, name, state (one-hot) |
| ``neuron_operator_artifact_gc_expired`` | gauge | storage (pvc, s3), mode (dry_run, delete): expired in the last run |
| ``neuron_operator_artifact_gc_deleted_bytes_total`` | counter | storage (pvc, s3) |
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from neuron_runtime.contract import METRICS_PATH

RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COMPILE_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)

#: Rollout states of a NeuronDeployment, exported one-hot (a state not listed here is added for its object).
ROLLOUT_STATES: Final = ("Pending", "RollingOut", "CanaryProgressing", "Scaling", "Ready", "Stalled", "Suspended")
#: Compile outcomes that are not failures (any other outcome is a failure reason).
COMPILE_SUCCESSES: Final = ("Compiled", "CacheHit")


class QueueStats(Protocol):
    """What a work queue tells at scrape time, per kind."""

    def depth(self) -> Mapping[str, int]: ...

    def running(self) -> Mapping[str, int]: ...

    def worker_count(self) -> Mapping[str, int]: ...


def error_reason(exc: BaseException) -> str:
    """Label value for a failed pass: a Kubernetes API error's reason (Conflict, NotFound, ...), else the
    exception's type name. (Duck-typed: lightkube's ApiError carries ``status.reason``.)"""
    status = getattr(exc, "status", None)
    reason = getattr(status, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return type(exc).__name__


class OperatorMetrics(Collector):
    """Every domain metric of one operator process; a Collector (register it on a registry)."""

    def __init__(self) -> None:
        self.reconcile_duration = Histogram(
            "neuron_operator_reconcile_duration_seconds",
            "Duration of reconcile passes by kind (failed passes included)",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=None,
        )
        self.reconcile_errors = Counter(
            "neuron_operator_reconcile_errors",
            "Failed reconcile passes by kind and reason (Kubernetes API error reason, else exception type)",
            ["kind", "reason"],
            registry=None,
        )
        self.compile_duration = Histogram(
            "neuron_operator_compile_duration_seconds",
            "Duration of finished compile Jobs (start to completion or failure)",
            buckets=COMPILE_BUCKETS,
            registry=None,
        )
        self.compiles = Counter(
            "neuron_operator_compiles",
            "Compile outcomes: Compiled, CacheHit, or the failure reason",
            ["outcome"],
            registry=None,
        )
        self.gc_expired = Gauge(
            "neuron_operator_artifact_gc_expired",
            "Artifacts the last artifact GC run found expired (unreferenced for the minimum age), by storage kind "
            "and mode (dry_run: reported only; delete: deleted)",
            ["storage", "mode"],
            registry=None,
        )
        self.gc_deleted_bytes = Counter(
            "neuron_operator_artifact_gc_deleted_bytes",
            "Bytes of expired artifacts (and leftovers of interrupted writes) the artifact GC deleted, by storage kind",
            ["storage"],
            registry=None,
        )
        self.pod_metric_reads = Counter(
            "neuron_operator_pod_metric_reads",
            f"Serving pods' {METRICS_PATH} read for autoscaling and canary gates, by outcome (ok, unreadable)",
            ["outcome"],
            registry=None,
        )
        self.scale_events = Counter(
            "neuron_operator_autoscaler_scale_events",
            "Changes of spec.replicas by the autoscaler, by direction (ScaledUp, ScaledDown)",
            ["direction"],
            registry=None,
        )
        self._lock = threading.Lock()  # the scrape runs in prometheus_client's HTTP thread
        self._rollout: dict[tuple[str, str], str] = {}
        self._queues: list[weakref.ref[QueueStats]] = []  # (work queues are dataclasses: unhashable)

    # ----------------------------------------------------------------------------------- recording

    def observe_reconcile(self, kind: str, seconds: float, error: BaseException | None = None) -> None:
        self.reconcile_duration.labels(kind).observe(seconds)
        if error is not None:
            self.reconcile_errors.labels(kind, error_reason(error)).inc()

    def observe_compile(self, outcome: str, seconds: float | None) -> None:
        self.compiles.labels(outcome).inc()
        if seconds is not None:
            self.compile_duration.observe(max(0.0, seconds))

    def set_rollout_state(self, namespace: str, name: str, state: str) -> None:
        with self._lock:
            self._rollout[(namespace, name)] = state

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._rollout.pop((namespace, name), None)

    def track_queue(self, queue: QueueStats) -> None:
        """Report ``queue``'s depth and workers at every scrape while it lives."""
        with self._lock:
            self._queues = [r for r in self._queues if r() is not None and r() is not queue]
            self._queues.append(weakref.ref(queue))

    # ------------------------------------------------------------------------------------ collecting

    def describe(self) -> Iterable[Metric]:
        yield from self._static()
        yield from self._gauges({}, [])

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            rollout = dict(self._rollout)
            queues = [q for q in (r() for r in self._queues) if q is not None]
        yield from self._static()
        yield from self._gauges(rollout, queues)

    def _static(self) -> Iterator[Metric]:
        for metric in (
            self.reconcile_duration,
            self.reconcile_errors,
            self.compile_duration,
            self.compiles,
            self.gc_expired,
            self.gc_deleted_bytes,
            self.pod_metric_reads,
            self.scale_events,
        ):
            yield from metric.collect()

    def _gauges(self, rollout: dict[tuple[str, str], str], queues: list[QueueStats]) -> Iterator[Metric]:
        families: list[tuple[Callable[[QueueStats], Mapping[str, int]], GaugeMetricFamily]] = [
            (
                lambda q: q.depth(),
                GaugeMetricFamily(
                    "neuron_operator_workqueue_depth",
                    "Objects triggered whose reconcile pass has not started yet, by kind",
                    labels=["kind"],
                ),
            ),
            (
                lambda q: q.running(),
                GaugeMetricFamily(
                    "neuron_operator_workqueue_running", "Reconcile passes running now, by kind", labels=["kind"]
                ),
            ),
            (
                lambda q: q.worker_count(),
                GaugeMetricFamily(
                    "neuron_operator_workqueue_workers",
                    "Objects with a work-queue worker (one per watched object), by kind",
                    labels=["kind"],
                ),
            ),
        ]
        for stat, family in families:
            totals: dict[str, int] = {}
            for queue in queues:
                for kind, n in stat(queue).items():
                    totals[kind] = totals.get(kind, 0) + n
            for kind, n in sorted(totals.items()):
                family.add_metric([kind], n)
            yield family
        states = GaugeMetricFamily(
            "neuron_operator_rollout_state",
            "Rollout state of each NeuronDeployment, one-hot: 1 for its current state, 0 for the others",
            labels=["namespace", "name", "state"],
        )
        for (namespace, name), current in sorted(rollout.items()):
            for state in ROLLOUT_STATES if current in ROLLOUT_STATES else (*ROLLOUT_STATES, current):
                states.add_metric([namespace, name, state], 1.0 if state == current else 0.0)
        yield states


#: The process-wide instance, on the default registry.
METRICS: Final = OperatorMetrics()
with contextlib.suppress(ValueError):  # already registered (a re-imported module): keep the first
    REGISTRY.register(METRICS)


def observe_compile(outcome: str, seconds: float | None) -> None:
    """Count a compile outcome (``Compiled``, ``CacheHit`` or the failure reason, e.g. ``CompileFailed``);
    ``seconds`` = the compile Job's duration when one ran (None for a cache hit)."""
    METRICS.observe_compile(outcome, seconds)


def set_rollout_state(namespace: str, name: str, state: str) -> None:
    """The NeuronDeployment's rollout state (one of ``ROLLOUT_STATES``, or another word, exported as given)."""
    METRICS.set_rollout_state(namespace, name, state)


def observe_gc(storage: str, mode: str, expired: int, deleted_bytes: int) -> None:
    """An artifact GC run over all storages of kind ``storage`` (pvc, s3) in ``mode`` (dry_run, delete) found
    ``expired`` artifacts and deleted ``deleted_bytes``."""
    METRICS.gc_expired.labels(storage, mode).set(expired)
    if deleted_bytes > 0:
        METRICS.gc_deleted_bytes.labels(storage).inc(deleted_bytes)


def forget(namespace: str, name: str) -> None:
    """The NeuronDeployment is gone: stop exporting its rollout state."""
    METRICS.forget(namespace, name)


def observe_scrapes(ok: int, unreadable: int) -> None:
    """One pass read ``ok`` pods' /metrics and could not read ``unreadable`` of them."""
    if ok:
        METRICS.pod_metric_reads.labels("ok").inc(ok)
    if unreadable:
        METRICS.pod_metric_reads.labels("unreadable").inc(unreadable)


def observe_scale(namespace: str, name: str, direction: str) -> None:
    """The autoscaler changed spec.replicas of ``namespace/name`` (``ScaledUp`` or ``ScaledDown``)."""
    del namespace, name  # per-object detail is in status.autoscaling and the Event; the counter stays low-cardinality
    METRICS.scale_events.labels(direction).inc()
