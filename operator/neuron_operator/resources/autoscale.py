"""The autoscaler's decisions: from the load the serving pods report to a replica count, and where it fits.

Pure (no I/O): the reconciler reads the pods' metrics (``kube.pod_metrics`` + ``loadmetrics.parse_metrics``),
keeps a ``ScalerMemory`` per NeuronDeployment, and calls ``decide`` once per ``spec.autoscaling.intervalSeconds``;
``placement`` says how many more replicas the free NeuronCores hold before a scale-out.

The rules, in the spirit of Knative's KPA and the HPA's behaviour:
- recommendation = ceil(total load / target per replica), clamped to [minReplicas, maxReplicas]; ready pods whose
  metrics could not be read count as at target for a scale-down and as idle for a scale-up (the HPA's rule);
- scale up to the lowest recommendation of the last ``scaleUpStabilizationSeconds`` (0: the latest), down to the
  highest of the last ``scaleDownStabilizationSeconds``; a fresh memory (operator start) counts the current
  replicas as a recommendation at that moment, so a restart never scales down before a full window;
- panic: load per reporting replica >= panicThreshold x target scales up to the recommendation at once and blocks
  every scale-down until ``panicWindowSeconds`` after the last such reading.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Final

from neuron_operator.api.deployment import Autoscaling, LoadMetric, TargetPer
from neuron_operator.api.reasons import Reason
from neuron_operator.resources import loadmetrics
from neuron_operator.resources.capacity import free_cores

#: Readings kept per NeuronDeployment beyond the longest window (bounded memory under any interval).
MAX_RECOMMENDATIONS: Final = 4096
#: Seconds between two cluster-wide reads of nodes and pods for one NeuronDeployment whose replicas wait for
#: NeuronCores (a new scale-out reads at once).
CAPACITY_RECHECK: Final = 30.0


def target_per_replica(spec: Autoscaling, workers: int, max_batch_size: int, cores: int) -> float:
    """``spec.target`` per replica; its default fills one batch per worker (Concurrency) or one batch (QueuedRows)."""
    if spec.target is None:
        return float(workers * max_batch_size) if spec.metric is LoadMetric.CONCURRENCY else float(max_batch_size)
    if spec.per is TargetPer.NEURON_CORE:
        return spec.target * max(cores, workers, 1)
    return spec.target


@dataclass
class ScalerMemory:
    """What one NeuronDeployment's autoscaler remembers between readings (in the operator's memory only)."""

    created: float
    samples: dict[str, loadmetrics.PodSample] = field(default_factory=dict)
    recommendations: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_RECOMMENDATIONS)
    )
    panic_until: float | None = None
    #: (created, the replicas running then): a recommendation of the scale-down window only.
    seed: tuple[float, int] | None = None
    last_read: float | None = None
    reading: Reading | None = None
    decision: Decision | None = None
    #: ScalingLimited as found at the last reading: (status, reason, message).
    limited: tuple[bool, Reason, str] | None = None
    #: When nodes and pods were last listed for capacity, and what they said (re-read at most every
    #: CAPACITY_RECHECK seconds while replicas wait for NeuronCores).
    capacity_read: float | None = None
    capacity: tuple[bool, Reason, str] | None = None

    def due(self, now: float, interval: float) -> bool:
        return self.last_read is None or now - self.last_read >= interval


@dataclass(frozen=True)
class Reading:
    """The load of one reading: summed over the ready pods whose metrics could be read."""

    total: float
    reporting: int
    unreadable: tuple[str, ...] = ()

    @property
    def per_replica(self) -> float | None:
        return self.total / self.reporting if self.reporting else None


def read_load(
    memory: ScalerMemory, metric: LoadMetric, samples: dict[str, loadmetrics.PodSample], unreadable: list[str]
) -> Reading:
    """Turn this reading's samples into load, remembering them for the next interval (pods gone are forgotten)."""
    total = 0.0
    for pod, sample in samples.items():
        if metric is LoadMetric.CONCURRENCY:
            # Little's law counts requests when they finish: requests stuck in the pod (a long queue, a slow graph)
            # would read as no load, so the pod has at least what is in it now.
            total += max(loadmetrics.concurrency(memory.samples.get(pod), sample), sample.in_flight)
        else:
            total += max(sample.queued_rows, 0.0)
    memory.samples = dict(samples)
    return Reading(total=total, reporting=len(samples), unreadable=tuple(sorted(unreadable)))


@dataclass(frozen=True)
class Decision:
    desired: int
    recommendation: int  # ceil(load / target), clamped
    panic: bool
    limited_by_max: bool
    message: str

    def reason(self, current: int) -> Reason | None:
        if self.desired > current:
            return Reason.SCALED_UP
        if self.desired < current:
            return Reason.SCALED_DOWN
        return None


def _ceil(load: float, target: float) -> int:
    return math.ceil(load / target - 1e-9) if load > 0 else 0


def clamp(n: int, spec: Autoscaling) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, n))


def decide(
    spec: Autoscaling, memory: ScalerMemory, now: float, current: int, reading: Reading, target: float
) -> Decision:
    """The replicas to run after this reading (``current`` = spec.replicas now)."""
    if memory.seed is None:  # a fresh memory: the running count stands for the time before it (scale-down only)
        memory.seed = (memory.created, current)
    if reading.reporting == 0:
        desired = clamp(current, spec)
        if desired == current:
            why = "no ready pod reported its load: replicas held"
        else:
            bound = "minReplicas" if desired > current else "maxReplicas"
            why = f"no ready pod reported its load: replicas brought to {bound} {desired}"
        return Decision(desired, desired, False, False, why)
    raw = _ceil(reading.total, target)
    if raw < current and reading.unreadable:
        # The HPA's rule: ready pods that did not answer are at target for a scale-down (an overloaded pod is the
        # one whose reading times out), at zero for a scale-up.
        raw = min(current, _ceil(reading.total + len(reading.unreadable) * target, target))
    rec = clamp(raw, spec)
    per = reading.total / reading.reporting
    if per >= spec.panic_threshold * target:
        memory.panic_until = now + spec.panic_window_seconds
    panic = memory.panic_until is not None and now <= memory.panic_until
    memory.recommendations.append((now, rec))
    horizon = now - max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    while memory.recommendations and memory.recommendations[0][0] < horizon:
        memory.recommendations.popleft()
    load = f"load {reading.total:.1f} over {reading.reporting} ready pod(s) ({per:.2f} per replica, target {target:g})"
    if panic:
        desired = max(current, rec)
        rule = f"panic mode (>= {spec.panic_threshold:g} x target per replica): no stabilization, no scale-down"
    elif rec > current:
        window = [r for t, r in memory.recommendations if t >= now - spec.scale_up_stabilization_seconds]
        desired = max(current, min(window))
        rule = f"lowest recommendation of the last {spec.scale_up_stabilization_seconds}s"
    elif rec < current:
        since = now - spec.scale_down_stabilization_seconds
        window = [r for t, r in (memory.seed, *memory.recommendations) if t >= since]
        desired = min(current, max(window))
        rule = f"highest recommendation of the last {spec.scale_down_stabilization_seconds}s"
    else:
        desired, rule = current, "at the recommendation"
    desired = clamp(desired, spec)
    message = f"{load}: recommends {rec}, {rule}"
    return Decision(desired, rec, panic, raw > spec.max_replicas, message)


# ------------------------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class Placement:
    """Where replicas of ``cores`` NeuronCores can go now."""

    wanted: int  # replicas the autoscaler wants
    placed: int  # pods of this NeuronDeployment already bound to a node
    fits: int  # more replicas the free NeuronCores hold
    free: dict[str, int]  # free NeuronCores per eligible node
    cores: int

    @property
    def missing(self) -> int:
        return max(0, self.wanted - self.placed - self.fits)

    def capped(self, spec: Autoscaling) -> int:
        """Cap: only what runs now or fits, never below minReplicas."""
        return max(spec.min_replicas, min(self.wanted, self.placed + self.fits))

    def message(self, instance_types: list[str]) -> str:
        free = ", ".join(f"{node}: {n}" for node, n in sorted(self.free.items())) or "no eligible node"
        return (
            f"{self.wanted} replica(s) of {self.cores} NeuronCores wanted, {self.placed} placed and {self.fits} more "
            f"fit the free NeuronCores: {self.missing} replica(s) cannot be placed, {self.missing * self.cores} "
            f"NeuronCores missing on instance types {', '.join(instance_types) or '(any)'} (free per eligible node: "
            f"{free})"
        )


def placed_pods(pods: list[dict[str, Any]]) -> int:
    """Pods bound to a node and not finished: they hold their NeuronCores (a terminating pod too, until it is gone,
    so a pod being replaced never reads as a replica that does not fit)."""
    return sum(
        1
        for p in pods
        if (p.get("spec") or {}).get("nodeName") and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def placement(
    wanted: int,
    cores: int,
    own_pods: list[dict[str, Any]],
    pod_spec: dict[str, Any],
    nodes: list[dict[str, Any]],
    all_pods: list[dict[str, Any]],
) -> Placement:
    free = free_cores(nodes, all_pods, pod_spec)
    fits = sum(max(n, 0) // cores for n in free.values()) if cores > 0 else wanted
    return Placement(wanted=wanted, placed=placed_pods(own_pods), fits=fits, free=free, cores=cores)


def needs_capacity_check(wanted: int, own_pods: list[dict[str, Any]], cores: int) -> bool:
    """Read nodes and pods only when replicas of NeuronCores are wanted beyond those placed (a scale-out)."""
    return cores > 0 and wanted > placed_pods(own_pods)


def summary(reading: Reading | None, target: float) -> str:
    if reading is None or reading.per_replica is None:
        return f"-/{target:g}"
    return f"{reading.per_replica:.1f}/{target:g}"
