"""The NeuronDeployment reconciler's load-aware steps: reading the serving pods' metrics, autoscaling, canary gates.

Sits beside ``reconcile`` (which calls it) on the same layer: it observes through ``kube``, decides with the pure
``resources.autoscale`` and ``resources.canary``, and hands back what to write. What it remembers between passes
(the last metric sample per pod, the autoscaler's recommendations, a canary step's baselines) lives in
``LoadState``, in the operator's memory only: a restarted operator reads afresh, never scales down before a full
stabilization window, and measures the current canary step again from its restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from neuron_operator import metrics
from neuron_operator.api import NeuronDeployment, Reason
from neuron_operator.api.deployment import Autoscaling, BeyondCapacity, CanaryGates
from neuron_operator.kube import Forbidden, Kube, MetricsUnavailable
from neuron_operator.resources import autoscale, canary, loadmetrics
from neuron_operator.resources.pods import serving_failure, serving_pod_problem
from neuron_operator.resources.status import Event
from neuron_runtime.contract import METRICS_PATH

log = logging.getLogger(__name__)

#: Seconds one pod's /metrics may take through the apiserver proxy before it counts as unreadable.
SCRAPE_TIMEOUT: Final = 3.0
#: Pods read at once per pass (the apiserver proxies each request).
SCRAPE_CONCURRENCY: Final = 16
#: How often a pass re-runs while a canary steps (its pause and readiness are judged at this resolution).
CANARY_RESYNC: Final = 2.0

Key = tuple[str, str]


@dataclass
class CanaryBaseline:
    """A step's first measurement (per pod), and the latest verdict with when it was read."""

    template_hash: str
    step: int
    samples: dict[str, loadmetrics.PodSample]
    taken_at: float
    read_at: float = 0.0
    verdict: canary.Verdict | None = None


@dataclass
class LoadState:
    """Per-NeuronDeployment memory of the load-aware steps (forgotten when the object is deleted)."""

    scalers: dict[Key, autoscale.ScalerMemory] = field(default_factory=dict)
    baselines: dict[Key, CanaryBaseline] = field(default_factory=dict)

    def forget(self, key: Key) -> None:
        self.scalers.pop(key, None)
        self.baselines.pop(key, None)


def _ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


async def scrape(
    kube: Kube, namespace: str, pods: list[dict[str, Any]], port: int, now: float
) -> tuple[dict[str, loadmetrics.PodSample], list[str]]:
    """Samples of every ready pod that answers, and the names of those that did not (each logged once per pass)."""
    ready = sorted((p for p in pods if _ready(p)), key=lambda p: p["metadata"]["name"])
    gate = asyncio.Semaphore(SCRAPE_CONCURRENCY)

    async def one(pod: str) -> loadmetrics.PodSample | str:
        async with gate:
            try:
                # One deadline for the whole read: httpx's timeout is per operation, and a pod trickling a byte a
                # second would hold the pass (and a connection of the shared pool) for ever.
                text = await asyncio.wait_for(
                    kube.pod_metrics(
                        pod, namespace, port, limit=loadmetrics.MAX_METRICS_BYTES, deadline=SCRAPE_TIMEOUT
                    ),
                    timeout=SCRAPE_TIMEOUT,
                )
                return loadmetrics.parse_metrics(text, now)
            except TimeoutError:
                return f"pod {namespace}/{pod}:{port}{METRICS_PATH} took longer than {SCRAPE_TIMEOUT:g}s"
            except (MetricsUnavailable, loadmetrics.MetricsError, Forbidden) as exc:
                return f"{exc}"  # Forbidden: the scaling RBAC set is missing; logged, the pod is unread

    names = [p["metadata"]["name"] for p in ready]
    results = await asyncio.gather(*(one(n) for n in names))
    samples: dict[str, loadmetrics.PodSample] = {}
    unreadable: list[str] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, str):
            unreadable.append(name)
            log.info("metrics of pod %s/%s not read: %s", namespace, name, result)
        else:
            samples[name] = result
    metrics.observe_scrapes(len(samples), len(unreadable))
    return samples, unreadable


# ------------------------------------------------------------------------------------------ autoscaling


@dataclass(frozen=True)
class Scaled:
    """The autoscaler's outcome of one pass."""

    replicas: int  # spec.replicas to run (written back when it differs)
    status: dict[str, Any]  # status.autoscaling, lastScale as before
    limited: tuple[bool, Reason, str]  # condition ScalingLimited
    scale: Event | None  # the ScaledUp/ScaledDown Event when replicas != spec.replicas
    last_scale: dict[str, Any] | None  # status.autoscaling.lastScale once that write succeeded
    requeue: float  # seconds until the next reading


async def _capacity(
    kube: Kube,
    memory: autoscale.ScalerMemory,
    spec: Autoscaling,
    wanted: int,
    current: int,
    t: float,
    pods: list[dict[str, Any]],
    pod_spec: dict[str, Any],
    cores: int,
    instance_types: list[str],
) -> tuple[int, tuple[bool, Reason, str] | None]:
    """(replicas after beyondCapacity, ScalingLimited from capacity or None): nodes and pods are listed for a
    scale-out at once, and at most every CAPACITY_RECHECK seconds while replicas wait for NeuronCores."""
    if not autoscale.needs_capacity_check(wanted, pods, cores):
        memory.capacity_read, memory.capacity = None, None
        return wanted, None
    fresh = wanted > current or memory.capacity_read is None
    if not fresh and memory.capacity_read is not None and t - memory.capacity_read < autoscale.CAPACITY_RECHECK:
        return wanted, memory.capacity
    memory.capacity_read, memory.capacity = t, None
    try:
        nodes, every_pod = await kube.list("Node"), await kube.list("Pod")
    except Forbidden as exc:
        log.warning("cannot read nodes or pods for NeuronCore capacity (%s): scaling without it", exc)
        return wanted, None
    found = autoscale.placement(wanted, cores, pods, pod_spec, nodes, every_pod)
    if found.missing == 0:
        return wanted, None
    memory.capacity = (True, Reason.INSUFFICIENT_NEURON_CORES, found.message(instance_types))
    if spec.beyond_capacity is BeyondCapacity.CAP:
        wanted = min(wanted, found.capped(spec))
        memory.capacity = (
            True,
            Reason.INSUFFICIENT_NEURON_CORES,
            f"capped at {wanted} (beyondCapacity Cap): {found.message(instance_types)}",
        )
    return wanted, memory.capacity


async def autoscale_pass(
    kube: Kube,
    state: LoadState,
    dep: NeuronDeployment,
    body: dict[str, Any],
    pods: list[dict[str, Any]],
    pod_spec: dict[str, Any],
    cores: int,
    instance_types: list[str],
    now: datetime,
    read: Callable[[], Any],
) -> Scaled:
    """Read the load when due, decide, check where the wanted replicas fit; ``read()`` returns this pass's samples."""
    spec: Autoscaling = dep.spec.autoscaling  # type: ignore[assignment]  # the caller checked it is set
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    t = now.timestamp()
    memory = state.scalers.get(key)
    if memory is None:
        memory = state.scalers[key] = autoscale.ScalerMemory(created=t)
    current = dep.spec.replicas
    target = autoscale.target_per_replica(
        spec, dep.spec.placement.workers, dep.spec.batching.max_batch_size, dep.spec.placement.cores_per_replica
    )
    prev = (body.get("status") or {}).get("autoscaling") or {}
    wanted = autoscale.clamp(current, spec)
    if memory.due(t, spec.interval_seconds):
        samples, unreadable = await read()
        memory.reading = autoscale.read_load(memory, spec.metric, samples, unreadable)
        memory.last_read = t
        memory.decision = autoscale.decide(spec, memory, t, current, memory.reading, target)
        wanted = memory.decision.desired
        memory.limited = None
        if memory.decision.limited_by_max:
            memory.limited = (
                True,
                Reason.MAX_REPLICAS,
                f"the load asks for more than maxReplicas {spec.max_replicas}: {memory.decision.message}",
            )
        wanted, capacity = await _capacity(
            kube, memory, spec, wanted, current, t, pods, pod_spec, cores, instance_types
        )
        memory.limited = capacity or memory.limited
    limited = memory.limited or (False, Reason.WITHIN_LIMITS, "")
    decision = memory.decision
    scale = last_scale = None
    if wanted != current:
        reason = Reason.SCALED_UP if wanted > current else Reason.SCALED_DOWN
        why = decision.message if decision is not None else "outside [minReplicas, maxReplicas]"
        if limited[0] and limited[1] is Reason.INSUFFICIENT_NEURON_CORES:
            why += f"; {limited[2]}"
        message = f"{current} -> {wanted} replicas: {why}"
        scale = Event("Normal", reason, message)
        last_scale = {
            "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "from": current,
            "to": wanted,
            "reason": reason.value,
            "message": message[:1024],
        }
    reading = memory.reading
    status = {
        "metric": spec.metric.value,
        "target": round(target, 4),
        "currentLoad": round(reading.per_replica, 2) if reading and reading.per_replica is not None else None,
        "reportingPods": reading.reporting if reading else 0,
        "desiredReplicas": wanted,
        "panic": bool(decision and decision.panic),
        "lastScale": prev.get("lastScale"),
        "summary": autoscale.summary(reading, target),
    }
    requeue = max(0.5, spec.interval_seconds - (t - (memory.last_read or t)))
    return Scaled(wanted, {k: v for k, v in status.items() if v is not None}, limited, scale, last_scale, requeue)


# ------------------------------------------------------------------------------------------------ canary


def canary_refusal(pods: list[dict[str, Any]], container: dict[str, Any], now: datetime) -> str | None:
    """Why a canary pod cannot serve (the runtime refused it, or it keeps crashing), or None."""
    failure = serving_failure(pods, container)
    if failure is not None:
        return f"pod {failure.pod}: {failure.reason.value}: {failure.message}"
    problem = serving_pod_problem(pods, container, {}, now)
    if problem is not None and problem.reason is not Reason.UNSCHEDULABLE:
        return f"{problem.reason.value}: {problem.message}"
    return None


def canary_reading_due(state: LoadState, key: Key, previous: dict[str, Any] | None, thash: str, t: float) -> bool:
    """Whether this pass reads the pods for the canary's gates (a step runs; at most every CANARY_RESYNC seconds)."""
    if not previous or previous.get("templateHash") != thash or previous.get("phase") != "Progressing":
        state.baselines.pop(key, None)
        return False
    if not previous.get("stepStartedAt"):
        return False
    base = state.baselines.get(key)
    fresh = base is None or (base.template_hash, base.step) != (thash, int(previous.get("step", 0)))
    return fresh or t - base.read_at >= CANARY_RESYNC  # type: ignore[union-attr]  # fresh covers None


def _created(pod: dict[str, Any]) -> float:
    stamp = pod["metadata"].get("creationTimestamp")
    if not stamp:
        return 0.0
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def canary_verdict(
    state: LoadState,
    key: Key,
    dep: NeuronDeployment,
    previous: dict[str, Any],
    thash: str,
    samples: dict[str, loadmetrics.PodSample],
    pods: list[dict[str, Any]],
    t: float,
) -> canary.Verdict:
    """The gates over the current step, from baselines taken at the step's first measurement.

    A pod absent from that measurement counts from zero when it was created after it (all it served is in the
    step), else from its first sample now (a pod that could not be read then: its past is not the step's).
    """
    step = int(previous.get("step", 0))
    base = state.baselines.get(key)
    if base is None or (base.template_hash, base.step) != (thash, step):
        base = state.baselines[key] = CanaryBaseline(thash, step, dict(samples), taken_at=t)
    by_name = {p["metadata"]["name"]: p for p in pods}
    windows_c: list[loadmetrics.Window] = []
    windows_s: list[loadmetrics.Window] = []
    for pod, sample in samples.items():
        before = base.samples.get(pod)
        if before is None:
            born = _created(by_name[pod]) if pod in by_name else 0.0
            before = sample
            if born >= base.taken_at:
                before = loadmetrics.PodSample(
                    at=sample.at,
                    requests={},
                    duration_sum=0.0,
                    duration_count=0.0,
                    buckets=tuple((le, 0.0) for le, _ in sample.buckets),
                    in_flight=0.0,
                    queued_rows=0.0,
                )
            base.samples[pod] = before
        track = canary.is_canary_pod(by_name[pod]) if pod in by_name else False
        (windows_c if track else windows_s).append(loadmetrics.window(before, sample))
    base.read_at = t
    base.verdict = canary.judge(
        dep.spec.rollout.gates or CanaryGates(), loadmetrics.merge(windows_c), loadmetrics.merge(windows_s)
    )
    return base.verdict


def last_verdict(state: LoadState, key: Key) -> canary.Verdict | None:
    base = state.baselines.get(key)
    return base.verdict if base is not None else None
