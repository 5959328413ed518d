"""Why a pod cannot start or keeps failing, read from its status and (for mounts) its Events. Pure.

Shared by compile Jobs and serving pods: the scheduler's message (``PodScheduled=False``, reason
``Unschedulable``), a container waiting on an image pull or a bad config, a crash loop with its last exit
(OOMKilled named as such), and a volume that cannot be mounted (kubelet's ``FailedMount`` Event: the pod
itself only says ``ContainerCreating``). Messages keep the head of long text (``clip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from neuron_operator.api import Reason

#: Longest message copied into a condition (the head is kept: it names the object and the cause).
MESSAGE_LIMIT: Final = 1024
_IMAGE_PULL: Final = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_START: Final = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreCreateHookError")


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The head of ``text``, at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split()) if "\n" in text else text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class PodProblem:
    reason: Reason
    message: str
    pod: str


def _container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == name), None)


def terminated_state(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    """``state.terminated`` of ``container`` in ``pod`` (a Job's finished task: exit code, termination message)."""
    status = _container(pod, container)
    term = ((status or {}).get("state") or {}).get("terminated")
    return dict(term) if term else None


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The Job's condition ``type_`` (Complete, Failed) when it is True, else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


#: A pod unschedulable for less than this is not a problem yet: during a surge the new pod may wait for the cores
#: of a pod that is terminating, and a cluster autoscaler needs a minute or so to add a node.
UNSCHEDULABLE_GRACE_SECONDS: Final = 60.0


def _unschedulable(pod: dict[str, Any], now: datetime | None) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            since = c.get("lastTransitionTime")
            if now is not None and since:
                waited = (now - datetime.fromisoformat(str(since).replace("Z", "+00:00"))).total_seconds()
                if waited < UNSCHEDULABLE_GRACE_SECONDS:
                    return None
            return str(c.get("message") or "the scheduler found no node for the pod")
    return None


def pod_problem(
    pod: dict[str, Any], container: str, events: list[dict[str, Any]] | None = None, now: datetime | None = None
) -> PodProblem | None:
    """The reason ``container`` of ``pod`` does not run, or None when nothing is wrong (yet).

    ``events`` are the pod's Events (only needed to explain a pod stuck in ContainerCreating). With ``now``, a pod
    unschedulable for less than ``UNSCHEDULABLE_GRACE_SECONDS`` is not reported yet.
    """
    name = pod["metadata"]["name"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    if (why := _unschedulable(pod, now)) is not None:
        return PodProblem(Reason.UNSCHEDULABLE, clip(f"pod {name}: {why}"), name)
    status = _container(pod, container)
    waiting = ((status or {}).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    detail = str(waiting.get("message") or reason or "")
    if reason in _IMAGE_PULL:
        image = (status or {}).get("image", "")
        return PodProblem(Reason.IMAGE_PULL_FAILED, clip(f"pod {name}: {reason} {image}: {detail}"), name)
    if reason in _START:
        return PodProblem(Reason.CONTAINER_START_FAILED, clip(f"pod {name}: {reason}: {detail}"), name)
    last = ((status or {}).get("lastState") or {}).get("terminated") or {}
    ended = ((status or {}).get("state") or {}).get("terminated") or {}
    running = bool(((status or {}).get("state") or {}).get("running"))
    # lastState is kept until the next termination: it explains a container that is not running now only.
    for term in (ended,) if running else (ended, last):
        if term.get("reason") == "OOMKilled":
            return PodProblem(
                Reason.OOM_KILLED,
                clip(f"pod {name}: container {container} was killed for exceeding its memory limit (OOMKilled)"),
                name,
            )
    if reason == "CrashLoopBackOff":
        exit_code = last.get("exitCode")
        message = str(last.get("message") or last.get("reason") or "").strip()
        return PodProblem(
            Reason.CRASH_LOOP_BACK_OFF,
            clip(f"pod {name}: container {container} keeps exiting (last exit code {exit_code}): {message}"),
            name,
        )
    if status is None or reason == "ContainerCreating":
        mounts = [e for e in events or [] if e.get("reason") == "FailedMount" and e.get("type") == "Warning"]
        if mounts:
            newest = max(mounts, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            return PodProblem(Reason.VOLUME_MOUNT_FAILED, clip(f"pod {name}: {newest.get('message', '')}"), name)
    return None


def waits_for_mount(pod: dict[str, Any], container: str) -> bool:
    """Scheduled but its container not created yet: only Events can say why (e.g. FailedMount)."""
    scheduled = any(
        c.get("type") == "PodScheduled" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
    status = _container(pod, container)
    waiting = ((status or {}).get("state") or {}).get("waiting") or {}
    return scheduled and (status is None or waiting.get("reason") == "ContainerCreating")
