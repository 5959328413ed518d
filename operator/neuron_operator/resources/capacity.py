"""Capacity-aware rollouts: surge when a node could hold one more replica, else replace in place. Pure.

A surge rollout (maxSurge 1, maxUnavailable 0) starts each new pod before an old one stops, so no request is
lost, but it needs room for one extra replica. For Neuron replicas that room is NeuronCores: the operator
reads the nodes a replica may run on (nodeSelector, required node affinity, taints the pod tolerates,
schedulable and Ready) and the NeuronCores requested by the pods already bound to them. If one node has
``cores`` free, the update surges; otherwise it replaces pods in place (maxSurge 0, maxUnavailable 1) and says
so, because a surge pod would wait Pending forever. ``cpu`` replicas need no NeuronCore and always surge.
An explicit ``spec.rollout`` is used as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from neuron_operator.api import Rollout
from neuron_operator.subset import quantity_value

NEURONCORE: Final = "aws.amazon.com/neuroncore"
SURGE: Final = "Surge"
IN_PLACE: Final = "InPlace"
CUSTOM: Final = "Custom"


@dataclass(frozen=True)
class RolloutPlan:
    strategy: str  # Surge | InPlace | Custom
    max_surge: int | str
    max_unavailable: int | str
    message: str

    def status(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "maxSurge": self.max_surge,
            "maxUnavailable": self.max_unavailable,
            "message": self.message,
        }


def explicit_plan(rollout: Rollout) -> RolloutPlan | None:
    """The user's spec.rollout, when set (an unset field of the two is 0)."""
    if rollout.max_surge is None and rollout.max_unavailable is None:
        return None
    surge = rollout.max_surge if rollout.max_surge is not None else 0
    unavailable = rollout.max_unavailable if rollout.max_unavailable is not None else 0
    return RolloutPlan(CUSTOM, surge, unavailable, f"spec.rollout: maxSurge {surge}, maxUnavailable {unavailable}")


def _matches_expression(labels: dict[str, str], expr: dict[str, Any]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False  # Gt/Lt are not produced by our builders; unknown operators never match (conservative)


def _selected(node: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if required:
        fields = {"metadata.name": node["metadata"]["name"]}
        return any(
            all(_matches_expression(labels, e) for e in term.get("matchExpressions") or [])
            and all(_matches_expression(fields, e) for e in term.get("matchFields") or [])
            for term in required
        )
    return True


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def eligible(node: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    """Whether the scheduler could place a pod of ``pod_spec`` on ``node`` (resources aside)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )
    if not ready or not _selected(node, pod_spec):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(
        _tolerates(tolerations, taint)
        for taint in (node.get("spec") or {}).get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def _container_request(container: dict[str, Any], resource: str) -> float:
    res = container.get("resources") or {}
    amount = quantity_value((res.get("requests") or {}).get(resource, (res.get("limits") or {}).get(resource)))
    return float(amount) if amount is not None else 0.0


def _requested(pod: dict[str, Any], resource: str) -> float:
    """What the scheduler charges a pod: max(sum of containers and sidecars, the largest plain init container)."""
    spec = pod.get("spec") or {}
    inits = spec.get("initContainers") or []
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    running = sum(_container_request(c, resource) for c in [*(spec.get("containers") or []), *sidecars])
    plain = [_container_request(c, resource) for c in inits if c.get("restartPolicy") != "Always"]
    return max([running, *plain])


def free_cores(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], pod_spec: dict[str, Any]) -> dict[str, int]:
    """Free NeuronCores on every node a pod of ``pod_spec`` could run on (allocatable - bound requests)."""
    used: dict[str, float] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0.0) + _requested(pod, NEURONCORE)
    free: dict[str, int] = {}
    for node in nodes:
        if not eligible(node, pod_spec):
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        total = float(quantity_value(allocatable.get(NEURONCORE, 0)) or 0)
        free[node["metadata"]["name"]] = int(total - used.get(node["metadata"]["name"], 0.0))
    return free


def plan_rollout(
    cores: int,
    pod_spec: dict[str, Any],
    nodes: list[dict[str, Any]] | None,
    pods: list[dict[str, Any]] | None,
    unknown_because: str = "",
) -> RolloutPlan:
    """The default rollout for replicas of ``cores`` NeuronCores (0: a cpu replica)."""
    if cores == 0:
        return RolloutPlan(SURGE, 1, 0, "cpu replicas need no NeuronCore: one extra replica during an update")
    if nodes is None or pods is None:
        return RolloutPlan(
            IN_PLACE,
            0,
            1,
            f"node capacity is unknown ({unknown_because}): replacing pods in place, one replica down at a time",
        )
    free = free_cores(nodes, pods, pod_spec)
    if not free:
        return RolloutPlan(
            IN_PLACE, 0, 1, "no node can run a replica now: replacing pods in place, one replica down at a time"
        )
    best = max(sorted(free), key=lambda n: free[n])
    if free[best] >= cores:
        return RolloutPlan(
            SURGE, 1, 0, f"node {best} has {free[best]} free NeuronCores (a replica needs {cores}): surge by one"
        )
    return RolloutPlan(
        IN_PLACE,
        0,
        1,
        f"no eligible node has {cores} free NeuronCores (most: {free[best]} on {best}): replacing pods in place, "
        "one replica down at a time; add capacity or set spec.rollout",
    )
