"""Status computed from observations: the conditions, fields and transition Events of both kinds.

Pure functions of (the object, what the reconciler observed, the time). ``lastTransitionTime`` moves
only when a condition's status flips (``conditions.set_condition``), so recomputing the status of an
unchanged world yields exactly the stored status and the reconciler writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from neuron_operator.api import Condition, ConditionType
from neuron_operator.api.model import model_phase
from neuron_operator.conditions import get_condition, set_condition
from neuron_operator.resources.fit import Fit
from neuron_operator.resources.pods import ServingFailure

Clock = Callable[[], datetime]
C = ConditionType


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusBuilder:
    """Accumulates conditions on top of the previous ones; reports the flips as Events."""

    previous: list[Condition]
    generation: int | None
    clock: Clock
    conditions: list[Condition] = field(init=False)

    def __post_init__(self) -> None:
        self.conditions = list(self.previous)

    def set(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions,
            type_,
            status,
            reason,
            message,
            clock=self.clock,
            observed_generation=self.generation,
        )

    def flipped_to(self, type_: str, status: str) -> Condition | None:
        """The new condition if ``type_`` now has ``status`` and did not before."""
        new = get_condition(self.conditions, type_)
        old = get_condition(self.previous, type_)
        if new is not None and new.status == status and (old is None or old.status != status):
            return new
        return None

    def dump(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions]


def _now(clock: Clock) -> str:
    return clock().strftime("%Y-%m-%dT%H:%M:%SZ")


def is_ready(b: StatusBuilder) -> bool:
    c = get_condition(b.conditions, C.READY)
    return c is not None and c.status == "True"


def previous_conditions(body: dict[str, Any]) -> list[Condition]:
    return [Condition.model_validate(c) for c in (body.get("status") or {}).get("conditions") or []]


# ------------------------------------------------------------------------------------------ NeuronModel


@dataclass(frozen=True)
class ModelObservation:
    """What the model reconciler found. Exactly one of the "state" fields describes where things stand."""

    fit: Fit
    cache_key: str | None = None
    invalid: tuple[str, str] | None = None  # (reason, message): cannot even compute a key
    artifact: dict[str, Any] | None = None  # status.artifact when the artifact is ready
    artifact_reason: str = "Compiled"  # Compiled | CacheHit
    compiling: str | None = None  # the compile Job's name, while it runs
    failure: dict[str, Any] | None = None  # status.lastFailure of this attempt


def model_status(body: dict[str, Any], obs: ModelObservation, clock: Clock) -> tuple[dict[str, Any], list[Event]]:
    prev = body.get("status") or {}
    gen = body["metadata"].get("generation")
    b = StatusBuilder(previous_conditions(body), gen, clock)
    events: list[Event] = []
    b.set(C.ARCHITECTURE_FIT, obs.fit.ok, obs.fit.reason, obs.fit.message)
    status: dict[str, Any] = {"observedGeneration": gen, "cacheKey": obs.cache_key}
    if obs.invalid or not obs.fit.ok:
        reason, message = obs.invalid or (obs.fit.reason, obs.fit.message)
        b.set(C.ARTIFACT_READY, False, reason, message)
        b.set(C.RECONCILING, False, reason, "nothing to do until the spec changes")
        b.set(C.STALLED, True, reason, message)
        b.set(C.READY, False, reason, message)
    elif obs.artifact is not None:
        msg = f"artifact {obs.artifact['shortDigest']} at {obs.artifact['uri']}"
        b.set(C.ARTIFACT_READY, True, obs.artifact_reason, msg)
        b.set(C.RECONCILING, False, "Reconciled", "the artifact is current")
        b.set(C.STALLED, False, "Reconciled", "")
        b.set(C.READY, True, obs.artifact_reason, msg)
        status["artifact"] = obs.artifact
    elif obs.failure is not None:
        reason, message = obs.failure["reason"], obs.failure["message"]
        b.set(C.ARTIFACT_READY, False, reason, message)
        b.set(C.RECONCILING, False, reason, "edit the spec to retry")
        b.set(C.STALLED, True, reason, message)
        b.set(C.READY, False, reason, message)
    else:
        what = f"compile Job {obs.compiling} is running" if obs.compiling else "waiting for a compile Job"
        b.set(C.ARTIFACT_READY, False, "Compiling", what)
        b.set(C.RECONCILING, True, "Compiling", what)
        b.set(C.STALLED, False, "Compiling", "")
        b.set(C.READY, False, "Compiling", what)
    # A failure stays visible until the next success (it explains the last attempt).
    if obs.failure is not None:
        status["lastFailure"] = obs.failure
    elif obs.artifact is None and prev.get("lastFailure") and obs.compiling:
        status["lastFailure"] = prev["lastFailure"]
    status["conditions"] = b.dump()
    status["phase"] = model_phase(b.conditions).value

    old_fit = get_condition(b.previous, C.ARCHITECTURE_FIT)
    if obs.fit.warning and (old_fit is None or old_fit.reason != obs.fit.reason):
        events.append(Event("Warning", obs.fit.reason, obs.fit.message))
    if (c := b.flipped_to(C.READY, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    if (c := b.flipped_to(C.STALLED, "True")) is not None:
        events.append(Event("Warning", c.reason, c.message))
    if (c := b.flipped_to(C.RECONCILING, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    return _with_removals(prev, status), events


def _with_removals(prev: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``prev`` into ``new``: stale keys are set to None (deleted).

    Recursive, because a JSON merge patch merges objects key by key: a key missing from a new
    ``artifact`` or ``lastFailure`` would otherwise survive from the old one.
    """
    patch: dict[str, Any] = {}
    for k, v in new.items():
        if v is None:
            continue
        old = prev.get(k)
        patch[k] = _with_removals(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    for k in prev:
        if k not in patch:
            patch[k] = None
    return patch


def status_changed(body: dict[str, Any], patch: dict[str, Any]) -> bool:
    prev = body.get("status") or {}
    return any(prev.get(k) != v for k, v in patch.items())


# ------------------------------------------------------------------------------------- NeuronDeployment


@dataclass(frozen=True)
class DeploymentObservation:
    blocked: tuple[str, str, bool] | None = None  # (reason, message, stalled)
    model: dict[str, Any] | None = None  # status.model
    cores: int | None = None
    deployment: dict[str, Any] | None = None  # the observed runtime Deployment (after apply)
    desired_replicas: int = 0
    suspended: bool = False
    endpoint: str | None = None
    selector: str | None = None
    rolling_to_new_artifact: bool = False
    serving_failure: ServingFailure | None = None  # a current pod's runtime refused to serve
    parity: dict[str, Any] | None = None  # status.parity, as measured by a pod of the current template


def deployment_status(
    body: dict[str, Any], obs: DeploymentObservation, clock: Clock
) -> tuple[dict[str, Any], list[Event]]:
    prev = body.get("status") or {}
    gen = body["metadata"].get("generation")
    b = StatusBuilder(previous_conditions(body), gen, clock)
    status: dict[str, Any] = {"observedGeneration": gen, "selector": obs.selector}
    dstat = (obs.deployment or {}).get("status", {})
    replicas = int(dstat.get("replicas", 0))
    ready = int(dstat.get("readyReplicas", 0))
    updated = int(dstat.get("updatedReplicas", 0))
    available = int(dstat.get("availableReplicas", 0))
    want = obs.desired_replicas
    status |= {
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "readySummary": f"{ready}/{want}",
        "coresPerReplica": obs.cores,
        "model": obs.model,
        "endpoint": obs.endpoint,
    }
    if obs.blocked is not None:
        reason, message, stalled = obs.blocked
        b.set(C.READY, False, reason, message)
        b.set(C.STALLED, stalled, reason, message if stalled else "")
        b.set(C.RECONCILING, not stalled, reason, "" if stalled else message)
        if reason in ("ModelNotFound", "ModelNotReady"):
            b.set(C.ARTIFACT_READY, False, reason, message)
        else:
            b.set(C.ARTIFACT_READY, True, "Compiled", "the model's artifact is ready")
            b.set(C.SCHEDULABLE, not stalled, reason, message)
    else:
        b.set(C.ARTIFACT_READY, True, "Compiled", "the model's artifact is ready")
        b.set(
            C.SCHEDULABLE,
            True,
            "Fits",
            f"{obs.cores or 0} NeuronCores per replica fit the allowed instance types",
        )
        d = obs.deployment or {}
        current = int(dstat.get("observedGeneration", 0)) >= int(d.get("metadata", {}).get("generation", 1))
        deadline = next(
            (
                c
                for c in dstat.get("conditions", [])
                if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            ),
            None,
        )
        rolled_out = current and updated == want and available == want and replicas == want and ready == want
        if obs.suspended:
            b.set(C.READY, False, "Suspended", "spec.suspend is true: scaled to zero")
            b.set(C.RECONCILING, not rolled_out, "Scaling", f"{replicas} pods left")
            b.set(C.STALLED, False, "Suspended", "")
        elif (failure := obs.serving_failure) is not None and not rolled_out:
            message = f"pod {failure.pod}: {failure.message}"
            if available:
                message += f" ({available} replica(s) of the previous spec keep serving)"
            b.set(C.READY, False, failure.reason, message)
            b.set(C.RECONCILING, False, failure.reason, "")
            b.set(C.STALLED, True, failure.reason, message)
            last = {"reason": failure.reason, "message": message, "exitCode": failure.exit_code}
            last["time"] = failure.finished_at or (prev.get("lastFailure") or {}).get("time") or _now(clock)
            status["lastFailure"] = {k: v for k, v in last.items() if v is not None}
        elif deadline is not None:  # after the runtime's own reason, which says why it never progressed
            b.set(C.READY, False, "ProgressDeadlineExceeded", deadline.get("message", ""))
            b.set(C.RECONCILING, False, "ProgressDeadlineExceeded", "")
            b.set(C.STALLED, True, "ProgressDeadlineExceeded", deadline.get("message", ""))
        elif rolled_out:
            b.set(C.READY, True, "ReplicasReady", f"{ready}/{want} replicas ready on the current artifact")
            b.set(C.RECONCILING, False, "Reconciled", "")
            b.set(C.STALLED, False, "Reconciled", "")
        else:
            reason = "RollingOut" if obs.rolling_to_new_artifact or updated < want else "Scaling"
            msg = f"{updated}/{want} updated, {ready} ready, {available} available, {replicas} pods"
            b.set(C.READY, False, "ReplicasUnavailable", msg)
            b.set(C.RECONCILING, True, reason, msg)
            b.set(C.STALLED, False, reason, "")
        min_available = 0 if want == 0 else want - 1
        b.set(
            C.AVAILABLE,
            available >= min_available and (want == 0 or available > 0),
            "ReplicasReady" if available else "ReplicasUnavailable",
            f"{available} available",
        )
    # While blocked (e.g. the model recompiles) the pods of the last template still describe what serves.
    status["parity"] = obs.parity if obs.parity is not None or obs.blocked is None else prev.get("parity")
    if "lastFailure" not in status and prev.get("lastFailure") and not is_ready(b):
        status["lastFailure"] = prev["lastFailure"]  # kept until the next success, as on NeuronModel
    status["conditions"] = b.dump()
    events: list[Event] = []
    if (c := b.flipped_to(C.READY, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    if (c := b.flipped_to(C.STALLED, "True")) is not None:
        events.append(Event("Warning", c.reason, c.message))
    if (c := b.flipped_to(C.RECONCILING, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    return _with_removals(prev, status), events
