"""What the serving pods say about themselves: a runtime that refused to serve, read from its termination message.

`neuron-runtime serve` ends with a one-line JSON termination message when it refuses an artifact (the SDK
compatibility gate, the parity gate, an artifact or placement it cannot use); kubelet keeps it in the container's
`state.terminated` / `lastState.terminated`. Only pods of the *current* pod template count (same image and runtime
environment as the Deployment the operator just applied), so a failure that a spec change fixed is not reported
again while the failing pod is being replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from neuron_operator.api import Reason
from neuron_operator.api.reasons import SERVE_REFUSALS
from neuron_operator.resources.podstate import PodProblem, pod_problem, waits_for_mount
from neuron_operator.subset import is_subset
from neuron_runtime.contract import PARITY_LOG_PREFIX, Failure

#: Termination reasons of `neuron-runtime serve` that need a change (image, tolerance, spec) to progress.
SERVING_FAILURE_REASONS: Final = tuple(r.value for r in SERVE_REFUSALS)


@dataclass(frozen=True)
class ServingFailure:
    reason: Reason
    message: str
    exit_code: int | None
    finished_at: str | None
    pod: str


def _runtime_container(spec: dict[str, Any], container_name: str) -> dict[str, Any] | None:
    return next((c for c in spec.get("containers") or [] if c.get("name") == container_name), None)


def is_current(pod: dict[str, Any], desired_container: dict[str, Any]) -> bool:
    """Whether `pod` runs the desired runtime container (same image and environment; the apiserver adds defaults
    such as `fieldRef.apiVersion`, so the environment is compared as `is_subset`, like `Kube.apply` does)."""
    actual = _runtime_container(pod.get("spec") or {}, desired_container["name"])
    return (
        actual is not None
        and actual.get("image") == desired_container.get("image")
        and is_subset(desired_container.get("env") or [], actual.get("env") or [])
    )


def _parse(terminated: dict[str, Any]) -> Failure | None:
    """The runtime's refusal in a terminated container's message (None: another exit, or not a serving refusal)."""
    failure = Failure.parse(terminated.get("message"))
    return failure if failure is not None and failure.reason in SERVING_FAILURE_REASONS else None


TEMPLATE_HASH_LABEL: Final = "pod-template-hash"


def ready_current_pods(pods: list[dict[str, Any]], desired_container: dict[str, Any]) -> list[dict[str, Any]]:
    """Ready, not terminating pods of the current template, by name (deterministic)."""
    ready = [
        p
        for p in pods
        if not p.get("metadata", {}).get("deletionTimestamp")
        and is_current(p, desired_container)
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]
    return sorted(ready, key=lambda p: p["metadata"]["name"])


def parity_status(line: str, pod: dict[str, Any]) -> dict[str, Any] | None:
    """`status.parity` from the runtime's parity line (None when the line is not a passing report)."""
    try:
        report = json.loads(line.removeprefix(PARITY_LOG_PREFIX))
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("passed") is not True:
        return None
    try:
        return {
            "podTemplateHash": (pod["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL, ""),
            "pod": pod["metadata"]["name"],
            "passed": True,
            "maxAbsError": float(report["max_abs_error"]),
            "maxRelError": float(report["max_rel_error"]),
            "atol": float(report["atol"]),
            "rtol": float(report["rtol"]),
            "precision": str(report["precision"]),
            "cases": int(report["cases"]),
            "modelCopies": int(report["workers"]),
        }
    except (KeyError, TypeError, ValueError):
        return None


def serving_failure(pods: list[dict[str, Any]], desired_container: dict[str, Any]) -> ServingFailure | None:
    """The most recent refusal by a current pod's runtime, or None (sorted by time, then pod name: deterministic)."""
    found: list[ServingFailure] = []
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp") or not is_current(pod, desired_container):
            continue
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != desired_container["name"]:
                continue
            # lastState explains a container that is not ready now only: one that refused once for a passing reason
            # (StorageUnavailable) and then came up keeps that lastState until its next termination.
            states = (
                (status.get("state") or {},)
                if status.get("ready")
                else (status.get("state") or {}, status.get("lastState") or {})
            )
            for state in states:
                terminated = state.get("terminated")
                if not terminated or (parsed := _parse(terminated)) is None:
                    continue
                found.append(
                    ServingFailure(
                        reason=Reason(parsed.reason),
                        message=parsed.message,
                        exit_code=terminated.get("exitCode"),
                        finished_at=terminated.get("finishedAt"),
                        pod=pod["metadata"]["name"],
                    )
                )
                break
    if not found:
        return None
    return max(found, key=lambda f: (f.finished_at or "", f.pod))


def current_pods(pods: list[dict[str, Any]], desired_container: dict[str, Any]) -> list[dict[str, Any]]:
    """Not terminating pods of the current template, by name."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp") and is_current(p, desired_container)]
    return sorted(live, key=lambda p: p["metadata"]["name"])


def pods_waiting_for_mount(pods: list[dict[str, Any]], desired_container: dict[str, Any]) -> list[str]:
    """Current pods whose container is not created yet (their Events say why)."""
    name = desired_container["name"]
    return [p["metadata"]["name"] for p in current_pods(pods, desired_container) if waits_for_mount(p, name)]


def serving_pod_problem(
    pods: list[dict[str, Any]],
    desired_container: dict[str, Any],
    events: dict[str, list[dict[str, Any]]],
    now: datetime | None = None,
) -> PodProblem | None:
    """The first current pod (by name) that cannot start or keeps crashing, with the reason."""
    for pod in current_pods(pods, desired_container):
        found = pod_problem(pod, desired_container["name"], events.get(pod["metadata"]["name"]), now)
        if found is not None:
            return found
    return None
