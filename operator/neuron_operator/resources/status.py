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

from neuron_operator.api import Condition, ConditionType, Reason
from neuron_operator.api.model import model_phase
from neuron_operator.api.reasons import DEPLOYMENT_VOCABULARY, INFEASIBLE, MODEL_VOCABULARY, Vocabulary, allowed
from neuron_operator.conditions import get_condition, set_condition
from neuron_operator.resources.capacity import RolloutPlan
from neuron_operator.resources.fit import Fit
from neuron_operator.resources.pods import ServingFailure
from neuron_operator.resources.podstate import PodProblem

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
    vocabulary: Vocabulary
    conditions: list[Condition] = field(init=False)

    def __post_init__(self) -> None:
        self.conditions = list(self.previous)

    def set(self, type_: str, status: bool, reason: Reason, message: str) -> None:
        if not allowed(self.vocabulary, type_, reason):
            # A programming error: the CRD description (generated from the vocabulary) would not list it.
            raise ValueError(f"reason {reason!r} is not in the vocabulary of condition {type_}")
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

    def stalled_event(self) -> Event | None:
        """A Warning when Stalled becomes True, or stays True with another reason (a new problem)."""
        new = get_condition(self.conditions, C.STALLED)
        old = get_condition(self.previous, C.STALLED)
        if new is None or new.status != "True":
            return None
        if old is None or old.status != "True" or old.reason != new.reason:
            return Event("Warning", new.reason, new.message)
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
    invalid: tuple[Reason, str] | None = None  # (reason, message): cannot even compute a key
    artifact: dict[str, Any] | None = None  # status.artifact when the artifact is ready
    artifact_reason: Reason = Reason.COMPILED  # Compiled | CacheHit
    compiling: str | None = None  # the compile Job's name, while it runs
    blocked: tuple[Reason, str] | None = None  # the compile cannot start (claim missing, pod cannot start)
    failure: dict[str, Any] | None = None  # status.lastFailure of this attempt


def model_status(body: dict[str, Any], obs: ModelObservation, clock: Clock) -> tuple[dict[str, Any], list[Event]]:
    prev = body.get("status") or {}
    gen = body["metadata"].get("generation")
    b = StatusBuilder(previous_conditions(body), gen, clock, MODEL_VOCABULARY)
    b.set(C.ARCHITECTURE_FIT, obs.fit.ok, obs.fit.reason, obs.fit.message)
    status: dict[str, Any] = {"observedGeneration": gen, "cacheKey": obs.cache_key}
    if _set_model_state(b, obs):
        status["artifact"] = obs.artifact
    if (last := _model_last_failure(prev, obs)) is not None:
        status["lastFailure"] = last
    status["conditions"] = b.dump()
    status["phase"] = model_phase(b.conditions).value
    return _with_removals(prev, status), _model_events(b, obs, prev)


def _set_model_stopped(b: StatusBuilder, reason: Reason, message: str, reconciling: str) -> None:
    """ArtifactReady, Reconciling, Stalled and Ready of a model stopped by ``reason`` (``reconciling``: what it
    waits for)."""
    b.set(C.ARTIFACT_READY, False, reason, message)
    b.set(C.RECONCILING, False, reason, reconciling)
    b.set(C.STALLED, True, reason, message)
    b.set(C.READY, False, reason, message)


def _set_model_state(b: StatusBuilder, obs: ModelObservation) -> bool:
    """ArtifactReady, Reconciling, Stalled and Ready for where the model stands. True when its artifact is ready
    (status.artifact is then the observed one)."""
    if obs.invalid or not obs.fit.ok:
        reason, message = obs.invalid or (obs.fit.reason, obs.fit.message)
        _set_model_stopped(b, reason, message, "nothing to do until the spec changes")
        return False
    if obs.artifact is not None:
        msg = f"artifact {obs.artifact['shortDigest']} at {obs.artifact['uri']}"
        b.set(C.ARTIFACT_READY, True, obs.artifact_reason, msg)
        b.set(C.RECONCILING, False, Reason.RECONCILED, "the artifact is current")
        b.set(C.STALLED, False, Reason.RECONCILED, "")
        b.set(C.READY, True, obs.artifact_reason, msg)
        return True
    if obs.failure is not None:
        _set_model_stopped(b, Reason(obs.failure["reason"]), obs.failure["message"], "edit the spec to retry")
        return False
    if obs.blocked is not None:
        # Not a compile failure: the operator retries by itself once the cause is gone (claim created, pod placed).
        reason, message = obs.blocked
        _set_model_stopped(b, reason, message, "waiting for the cause to be fixed; retried automatically")
        return False
    what = f"compile Job {obs.compiling} is running" if obs.compiling else "waiting for a compile Job"
    b.set(C.ARTIFACT_READY, False, Reason.COMPILING, what)
    b.set(C.RECONCILING, True, Reason.COMPILING, what)
    b.set(C.STALLED, False, Reason.COMPILING, "")
    b.set(C.READY, False, Reason.COMPILING, what)
    return False


def _model_last_failure(prev: dict[str, Any], obs: ModelObservation) -> dict[str, Any] | None:
    """status.lastFailure: this attempt's failure; the previous one while a new attempt runs or waits (a failure
    stays visible until the next success: it explains the last attempt)."""
    if obs.failure is not None:
        return obs.failure
    if obs.artifact is None and prev.get("lastFailure") and (obs.compiling or obs.blocked):
        last: dict[str, Any] = prev["lastFailure"]
        return last
    return None


def _model_events(b: StatusBuilder, obs: ModelObservation, prev: dict[str, Any]) -> list[Event]:
    """The Events of a model pass: a fit warning, Ready becoming True (else an artifact change), then the
    transitions of Stalled, Reconciling and ScalingLimited."""
    events: list[Event] = []
    old_fit = get_condition(b.previous, C.ARCHITECTURE_FIT)
    if obs.fit.warning and (old_fit is None or old_fit.reason != obs.fit.reason):
        events.append(Event("Warning", obs.fit.reason, obs.fit.message))
    if (c := b.flipped_to(C.READY, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    elif obs.artifact is not None and (old := prev.get("artifact")) and old.get("sha256") != obs.artifact["sha256"]:
        # Ready stays True but the artifact changed (e.g. a Git revert to inputs compiled before).
        events.append(
            Event(
                "Normal",
                Reason.ARTIFACT_CHANGED,
                f"artifact {obs.artifact['shortDigest']} (cache key {obs.cache_key}, {obs.artifact_reason}) "
                f"replaces {str(old.get('sha256', ''))[:12]}",
            )
        )
    return events + _transition_events(b)


def _transition_events(b: StatusBuilder) -> list[Event]:
    """The Events of Stalled (a new problem), Reconciling and ScalingLimited becoming True, in that order."""
    events: list[Event] = []
    if (e := b.stalled_event()) is not None:
        events.append(e)
    if (c := b.flipped_to(C.RECONCILING, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    if (c := b.flipped_to(C.SCALING_LIMITED, "True")) is not None:
        events.append(Event("Warning", c.reason, c.message))
    return events


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
    blocked: tuple[Reason, str, bool] | None = None  # (reason, message, stalled)
    model: dict[str, Any] | None = None  # status.model: the artifact the replicas run (the old one while blocked)
    cores: int | None = None
    deployment: dict[str, Any] | None = None  # the observed runtime Deployment (after apply; the old one if blocked)
    desired_replicas: int = 0
    suspended: bool = False
    endpoint: str | None = None
    selector: str | None = None
    rolling_to_new_artifact: bool = False
    serving_failure: ServingFailure | None = None  # a current pod's runtime refused to serve
    pod_problem: PodProblem | None = None  # a current pod cannot start or keeps crashing
    parity: dict[str, Any] | None = None  # status.parity, as measured by a pod of the current template
    artifact_reason: Reason = Reason.COMPILED  # the model's ArtifactReady reason (Compiled | CacheHit)
    rollout: RolloutPlan | None = None  # the update budget chosen in this pass (None: keep status.rollout)
    events: tuple[Event, ...] = ()  # Events decided by the reconciler (artifact change, rollout budget)
    autoscaling: dict[str, Any] | None = None  # status.autoscaling (None: spec.autoscaling unset)
    scaling_limited: tuple[bool, Reason, str] | None = None  # condition ScalingLimited (None: not autoscaled)
    canary: dict[str, Any] | None = None  # status.canary (None: no canary)
    canary_aborted: str | None = None  # the canary was aborted: Stalled CanaryAborted with this message
    canary_progressing: str | None = None  # a canary steps or promotes: Reconciling CanaryProgressing
    canary_deployment: dict[str, Any] | None = None  # the canary Deployment after apply (its pods count as replicas)
    requeue: float | None = None  # seconds until the next pass is due (autoscaler interval, canary step)


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    """A Deployment's maxSurge/maxUnavailable as a count (percentages as the Deployment controller rounds them)."""
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total
        return -(-scaled // 100) if round_up else scaled // 100
    return int(value or 0)


def _min_available(deployment: dict[str, Any] | None, want: int) -> int:
    rolling = (((deployment or {}).get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    down = _int_or_percent(rolling.get("maxUnavailable", 0), want, round_up=False)
    return max(1, want - down)


def deployment_status(
    body: dict[str, Any], obs: DeploymentObservation, clock: Clock
) -> tuple[dict[str, Any], list[Event]]:
    prev = body.get("status") or {}
    gen = body["metadata"].get("generation")
    b = StatusBuilder(previous_conditions(body), gen, clock, DEPLOYMENT_VOCABULARY)
    status: dict[str, Any] = {"observedGeneration": gen, "selector": obs.selector}
    n = _replica_counts(obs)
    status |= {
        "replicas": n.replicas,
        "readyReplicas": n.ready,
        "updatedReplicas": n.updated,
        "availableReplicas": n.available,
        "readySummary": f"{n.ready}/{n.want}",
        "coresPerReplica": obs.cores,
        "model": obs.model,
        "endpoint": obs.endpoint,
    }
    if obs.blocked is not None:
        _set_blocked(b, obs, obs.blocked, n)
    elif (last := _set_unblocked(b, obs, n, prev, clock)) is not None:
        status["lastFailure"] = last
    _set_available(b, obs, n)
    status |= _carried_decisions(obs, prev)
    _set_scaling_limited(b, obs)
    if "lastFailure" not in status and prev.get("lastFailure") and not is_ready(b):
        status["lastFailure"] = prev["lastFailure"]  # kept until the next success, as on NeuronModel
    status["conditions"] = b.dump()
    events: list[Event] = list(obs.events)
    if (c := b.flipped_to(C.READY, "True")) is not None:
        events.append(Event("Normal", c.reason, c.message))
    return _with_removals(prev, status), events + _transition_events(b)


@dataclass(frozen=True)
class _ReplicaCounts:
    """The replicas of the runtime Deployment and of the canary's, as status reports them."""

    replicas: int
    ready: int
    updated: int  # of the canary Deployment while a canary steps or promotes
    available: int
    want: int  # the desired replicas

    @property
    def serving(self) -> str:
        """What serves while the current spec does not (appended to a blocked or failed state's message)."""
        return (
            f"{self.available} replica(s) of the previous spec keep serving" if self.available else "no replica serves"
        )


def _replica_counts(obs: DeploymentObservation) -> _ReplicaCounts:
    """The counts of both Deployments' status: summed, but ``updated`` from one of them."""
    dstat = (obs.deployment or {}).get("status", {})
    cstat = (obs.canary_deployment or {}).get("status", {})
    return _ReplicaCounts(
        replicas=int(dstat.get("replicas", 0)) + int(cstat.get("replicas", 0)),
        ready=int(dstat.get("readyReplicas", 0)) + int(cstat.get("readyReplicas", 0)),
        updated=(
            int(dstat.get("updatedReplicas", 0))
            if obs.canary_progressing is None
            else int(cstat.get("updatedReplicas", 0))
        ),
        available=int(dstat.get("availableReplicas", 0)) + int(cstat.get("availableReplicas", 0)),
        want=obs.desired_replicas,
    )


def _set_blocked(
    b: StatusBuilder, obs: DeploymentObservation, blocked: tuple[Reason, str, bool], n: _ReplicaCounts
) -> None:
    """The conditions of a pass that could not converge the Deployment (model not ready, placement failed, ...)."""
    reason, message, stalled = blocked
    if obs.deployment is not None:
        message += f" ({n.serving})"
    b.set(C.READY, False, reason, message)
    b.set(C.STALLED, stalled, reason, message if stalled else "")
    b.set(C.RECONCILING, not stalled, reason, "" if stalled else message)
    if reason in (Reason.MODEL_NOT_FOUND, Reason.MODEL_NOT_READY, Reason.MODEL_FAILED):
        b.set(C.ARTIFACT_READY, False, reason, message)
    else:
        b.set(C.ARTIFACT_READY, True, obs.artifact_reason, "the model's artifact is ready")
        if reason in INFEASIBLE or reason is Reason.INVALID_SPEC:  # placement is what failed
            b.set(C.SCHEDULABLE, False, reason, message)


def _set_unblocked(
    b: StatusBuilder, obs: DeploymentObservation, n: _ReplicaCounts, prev: dict[str, Any], clock: Clock
) -> dict[str, Any] | None:
    """The conditions of a pass that converged the Deployment; returns the status.lastFailure it found, if any."""
    b.set(C.ARTIFACT_READY, True, obs.artifact_reason, "the model's artifact is ready")
    rolled_out = _rolled_out(obs, n)
    deadline = _progress_deadline((obs.deployment or {}).get("status", {}))
    problem = obs.pod_problem if not rolled_out else None
    if problem is not None and problem.reason is Reason.UNSCHEDULABLE:
        b.set(C.SCHEDULABLE, False, Reason.UNSCHEDULABLE, problem.message)
    else:
        b.set(
            C.SCHEDULABLE,
            True,
            Reason.FITS,
            f"{obs.cores or 0} NeuronCores per replica fit the allowed instance types",
        )
    return _set_serving_state(b, obs, n, rolled_out, problem, deadline, prev, clock)


def _progress_deadline(dstat: dict[str, Any]) -> dict[str, Any] | None:
    """The Deployment's Progressing condition when it says ProgressDeadlineExceeded."""
    return next(
        (
            c
            for c in dstat.get("conditions", [])
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        ),
        None,
    )


def _rolled_out(obs: DeploymentObservation, n: _ReplicaCounts) -> bool:
    """Whether the Deployment controller saw the current spec and every count is the desired one."""
    d = obs.deployment or {}
    dstat = d.get("status", {})
    current = int(dstat.get("observedGeneration", 0)) >= int(d.get("metadata", {}).get("generation", 1))
    return current and n.updated == n.want and n.available == n.want and n.replicas == n.want and n.ready == n.want


def _set_serving_state(
    b: StatusBuilder,
    obs: DeploymentObservation,
    n: _ReplicaCounts,
    rolled_out: bool,
    problem: PodProblem | None,
    deadline: dict[str, Any] | None,
    prev: dict[str, Any],
    clock: Clock,
) -> dict[str, Any] | None:
    """Ready, Reconciling and Stalled of a converged pass, the first state that applies winning; returns the
    status.lastFailure of a failed state (a refusing runtime, a pod that cannot start)."""
    last: dict[str, Any] | None = None
    if obs.suspended:
        _set_suspended(b, n, rolled_out)
    elif obs.canary_aborted is not None:
        _set_stalled(b, Reason.CANARY_ABORTED, f"{obs.canary_aborted} ({n.serving})")
    elif obs.canary_progressing is not None:
        msg = f"{obs.canary_progressing}; {n.ready} ready, {n.available} available, {n.replicas} pods"
        _set_progressing(b, Reason.CANARY_PROGRESSING, Reason.CANARY_PROGRESSING, msg)
    elif (failure := obs.serving_failure) is not None and not rolled_out:
        message = f"pod {failure.pod}: {failure.message} ({n.serving})"
        _set_stalled(b, failure.reason, message)
        last = _serving_failure_record(failure, message, prev, clock)
    elif problem is not None:
        message = f"{problem.message} ({n.serving})"
        _set_stalled(b, problem.reason, message)
        last = _pod_problem_record(problem, message, prev, clock)
    elif deadline is not None:  # after the runtime's own reason, which says why it never progressed
        _set_stalled(b, Reason.PROGRESS_DEADLINE_EXCEEDED, deadline.get("message", ""))
    elif rolled_out:
        b.set(C.READY, True, Reason.REPLICAS_READY, f"{n.ready}/{n.want} replicas ready on the current artifact")
        b.set(C.RECONCILING, False, Reason.RECONCILED, "")
        b.set(C.STALLED, False, Reason.RECONCILED, "")
    else:
        _set_rolling(b, obs, n)
    return last


def _set_suspended(b: StatusBuilder, n: _ReplicaCounts, rolled_out: bool) -> None:
    """spec.suspend: not Ready, Reconciling while pods are left."""
    b.set(C.READY, False, Reason.SUSPENDED, "spec.suspend is true: scaled to zero")
    b.set(
        C.RECONCILING,
        not rolled_out,
        Reason.SUSPENDED if rolled_out else Reason.SCALING,
        f"{n.replicas} pods left",
    )
    b.set(C.STALLED, False, Reason.SUSPENDED, "")


def _set_stalled(b: StatusBuilder, reason: Reason, message: str) -> None:
    """Not Ready, not Reconciling, Stalled with ``reason`` and ``message``."""
    b.set(C.READY, False, reason, message)
    b.set(C.RECONCILING, False, reason, "")
    b.set(C.STALLED, True, reason, message)


def _set_progressing(b: StatusBuilder, ready_reason: Reason, reason: Reason, message: str) -> None:
    """Not Ready (``ready_reason``), Reconciling with ``reason``, not Stalled."""
    b.set(C.READY, False, ready_reason, message)
    b.set(C.RECONCILING, True, reason, message)
    b.set(C.STALLED, False, reason, "")


def _set_rolling(b: StatusBuilder, obs: DeploymentObservation, n: _ReplicaCounts) -> None:
    """Pods of another template exist: a rollout. Only the count differs (a scale, new pods on the current
    template still starting): scaling."""
    reason = Reason.ROLLING_OUT if obs.rolling_to_new_artifact or n.updated < n.replicas else Reason.SCALING
    msg = f"{n.updated}/{n.want} updated, {n.ready} ready, {n.available} available, {n.replicas} pods"
    _set_progressing(b, reason if reason is Reason.ROLLING_OUT else Reason.REPLICAS_UNAVAILABLE, reason, msg)


def _serving_failure_record(
    failure: ServingFailure, message: str, prev: dict[str, Any], clock: Clock
) -> dict[str, Any]:
    """status.lastFailure of a runtime that refused to serve (its time: when the container ended, else kept)."""
    last = {"reason": failure.reason.value, "message": message, "exitCode": failure.exit_code}
    last["time"] = failure.finished_at or (prev.get("lastFailure") or {}).get("time") or _now(clock)
    return {k: v for k, v in last.items() if v is not None}


def _pod_problem_record(problem: PodProblem, message: str, prev: dict[str, Any], clock: Clock) -> dict[str, Any] | None:
    """status.lastFailure of a pod that cannot start or keeps crashing (None: unschedulable, not a failure); its
    time is kept while the reason stays the same."""
    if problem.reason is Reason.UNSCHEDULABLE:
        return None
    same = (prev.get("lastFailure") or {}).get("reason") == problem.reason.value
    last_time = (prev.get("lastFailure") or {}).get("time") if same else None
    return {
        "reason": problem.reason.value,
        "message": message,
        "time": last_time or _now(clock),
    }


def _set_available(b: StatusBuilder, obs: DeploymentObservation, n: _ReplicaCounts) -> None:
    """Available agrees with the numbers in every state: enough replicas available to serve, never at zero."""
    if n.want == 0:
        why = Reason.SUSPENDED if obs.suspended else Reason.SCALED_TO_ZERO
        b.set(C.AVAILABLE, False, why, f"{n.available} available; spec asks for 0 replicas")
    else:
        enough = n.available >= _min_available(obs.deployment, n.want)
        b.set(
            C.AVAILABLE,
            enough,
            Reason.REPLICAS_READY if enough else Reason.REPLICAS_UNAVAILABLE,
            f"{n.available} of {n.want} replicas available",
        )


def _carried_decisions(obs: DeploymentObservation, prev: dict[str, Any]) -> dict[str, Any]:
    """status.parity, rollout, autoscaling and canary: this pass's, or the previous ones where it decided none."""
    return {
        # While blocked (e.g. the model recompiles) the pods of the last template still describe what serves.
        "parity": obs.parity if obs.parity is not None or obs.blocked is None else prev.get("parity"),
        "rollout": obs.rollout.status() if obs.rollout is not None else prev.get("rollout"),
        # While blocked (nothing was decided) the last decisions stand; otherwise they are this pass's.
        "autoscaling": obs.autoscaling if obs.blocked is None else prev.get("autoscaling"),
        "canary": obs.canary if obs.blocked is None else prev.get("canary"),
    }


def _set_scaling_limited(b: StatusBuilder, obs: DeploymentObservation) -> None:
    """ScalingLimited when autoscaled; removed when not (kept as it was while blocked)."""
    if obs.scaling_limited is not None:
        limited, why, text = obs.scaling_limited
        b.set(C.SCALING_LIMITED, limited, why, text or "the wanted replicas are within maxReplicas and fit")
    elif obs.blocked is None:  # not autoscaled: the condition does not apply
        b.conditions = [c for c in b.conditions if c.type != C.SCALING_LIMITED]
