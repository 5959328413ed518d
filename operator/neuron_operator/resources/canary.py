"""Canary rollouts without a service mesh: a second Deployment with the new pod template behind the same Service.

Pure (no I/O). The reconciler calls ``plan`` once per pass with what it observed (the stable and canary
Deployments, the previous ``status.canary``, the gates' verdict over the current step, a canary pod the runtime
refused) and applies what it returns. The state lives in ``status.canary`` (phase, step, when the step began,
the hash of the canary's template), so an operator restart resumes the same step; only the metric baselines of a
step live in memory (a restart starts measuring the step again).

Traffic follows replicas: the Service balances connections over every ready pod of both Deployments, so a step of
weight w runs ceil(N x w / 100) canary replicas (at least 1) beside max(1, N - canary) stable ones, and serves
canary / (canary + stable) of the connections. Exact weights need a mesh or Gateway API; this is the granularity
that needs nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from neuron_operator.api.deployment import CanaryGates, CanaryStep, Rollout
from neuron_operator.api.reasons import Reason
from neuron_operator.resources import loadmetrics, names
from neuron_operator.subset import is_subset

#: Label that tells the canary's pods from the stable ones (the stable pods do not carry it).
TRACK_LABEL: Final = "neuron.dev/track"
CANARY_TRACK: Final = "canary"
SUFFIX: Final = "-canary"
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def canary_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def template_hash(template: dict[str, Any]) -> str:
    """A stable identity of a pod template (the canary's, as the operator builds it)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def split(replicas: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas for a step of ``weight`` percent of ``replicas``."""
    if replicas <= 0:
        return 0, 0
    canary = max(1, math.ceil(replicas * weight / 100))
    return canary, max(1, replicas - canary)


def is_canary_pod(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(TRACK_LABEL) == CANARY_TRACK


def canary_manifest(desired: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The canary Deployment: the desired Deployment under another name, its pods labelled as the canary track."""
    out = copy.deepcopy(desired)
    meta = out["metadata"]
    meta["name"] = canary_name(meta["name"])
    meta["labels"] = {**meta.get("labels", {}), TRACK_LABEL: CANARY_TRACK}
    spec = out["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": {**spec["selector"]["matchLabels"], TRACK_LABEL: CANARY_TRACK}}
    tmeta = spec["template"]["metadata"]
    tmeta["labels"] = {**tmeta.get("labels", {}), TRACK_LABEL: CANARY_TRACK}
    return out


def stable_manifest(desired: dict[str, Any], existing: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The stable Deployment as it runs (its template and artifact annotations kept), at ``replicas``."""
    out = copy.deepcopy(desired)
    out["spec"]["replicas"] = replicas
    out["spec"]["template"] = copy.deepcopy(existing["spec"]["template"])
    ours = {names.ANNOTATION_CACHE_KEY}
    old = existing["metadata"].get("annotations") or {}
    annotations = {k: v for k, v in (out["metadata"].get("annotations") or {}).items() if k not in ours}
    annotations |= {k: v for k, v in old.items() if k in ours}
    out["metadata"]["annotations"] = annotations
    return out


# ------------------------------------------------------------------------------------------------ gates


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: not enough canary requests yet
    message: str
    measurement: dict[str, Any]


def _ratio(errors: float, requests: float) -> float:
    return errors / requests if requests else 0.0


def judge(gates: CanaryGates, canary: loadmetrics.Window, stable: loadmetrics.Window) -> Verdict:
    """The gates over one step: canary error ratio and p99 against the stable pods' over the same window."""
    cp99 = loadmetrics.quantile(0.99, canary.buckets)
    sp99 = loadmetrics.quantile(0.99, stable.buckets)
    measurement = {
        "canaryRequests": int(canary.requests),
        "canaryErrors": int(canary.errors),
        "stableRequests": int(stable.requests),
        "stableErrors": int(stable.errors),
        "canaryP99Ms": round(cp99 * 1000, 3) if cp99 is not None else None,
        "stableP99Ms": round(sp99 * 1000, 3) if sp99 is not None else None,
    }
    measurement = {k: v for k, v in measurement.items() if v is not None}
    cerr, serr = _ratio(canary.errors, canary.requests), _ratio(stable.errors, stable.requests)
    errors = (
        f"error ratio {cerr:.4f} ({int(canary.errors)}/{int(canary.requests)}) vs stable {serr:.4f} "
        f"({int(stable.errors)}/{int(stable.requests)})"
    )
    if canary.requests < gates.min_requests:
        return Verdict(
            None, f"waiting for {gates.min_requests - int(canary.requests)} more canary request(s)", measurement
        )
    if cerr - serr > gates.max_error_ratio:
        return Verdict(
            False,
            f"canary {errors}: exceeds the stable pods' by more than maxErrorRatio {gates.max_error_ratio:g}",
            measurement,
        )
    latency = "p99 not comparable (no stable requests)"
    if cp99 is not None and sp99 is not None and sp99 > 0:
        ratio = cp99 / sp99
        latency = f"p99 {cp99 * 1000:.1f} ms vs stable {sp99 * 1000:.1f} ms (x{ratio:.2f})"
        if ratio > gates.max_latency_ratio and cp99 * 1000 > gates.latency_floor_ms:
            return Verdict(
                False, f"canary {latency}: above maxLatencyRatio {gates.max_latency_ratio:g} ({errors})", measurement
            )
    return Verdict(True, f"gates hold: {errors}; {latency}", measurement)


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw for one pass of a canary."""

    replicas: int  # N: spec.replicas (0 when suspended)
    stable: dict[str, Any]  # the running stable Deployment
    canary: dict[str, Any] | None  # the canary Deployment, if any
    desired: dict[str, Any]  # the Deployment built from the spec
    previous: dict[str, Any] | None  # status.canary
    verdict: Verdict | None  # gates over the current step (None: not judged in this pass)
    refused: str | None  # a canary pod cannot serve (runtime refusal, crash loop): its message
    now: datetime


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any] | None  # status.canary to write
    stable: dict[str, Any]  # manifest for the stable Deployment
    canary: dict[str, Any] | None  # manifest for the canary Deployment (None: delete it)
    events: tuple[tuple[str, Reason, str], ...]  # (type, reason, message)
    aborted: str | None  # Stalled CanaryAborted with this message
    progressing: str | None  # Reconciling CanaryProgressing with this message
    step_started: bool = False  # a step began in this pass: measure from now


def _ready(deployment: dict[str, Any] | None, replicas: int) -> bool:
    if deployment is None:
        return replicas == 0
    st = deployment.get("status") or {}
    current = int(st.get("observedGeneration", 0)) >= int(deployment["metadata"].get("generation", 1))
    return (
        current
        and int(st.get("readyReplicas", 0)) >= replicas
        and int(st.get("updatedReplicas", 0)) >= replicas
        and int(st.get("replicas", 0)) == replicas
    )


def _summary(phase: str, step: int, steps: int, traffic: int) -> str:
    if phase == "Progressing":
        return f"step {min(step + 1, steps)}/{steps} {traffic}%"
    return phase


def _ready_count(deployment: dict[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas", 0))


@dataclass(frozen=True)
class _Step:
    """What status.canary says about the step in progress."""

    phase: str
    thash: str
    step: int
    steps: int
    weight: int
    entered: str | None  # when the step was entered (its deadline counts from here)
    started: str | None  # when every canary replica was first ready in it (its pause counts from here)
    measurement: dict[str, Any] | None

    def status(self, counts: tuple[int, int], ready: tuple[int, int], message: str) -> dict[str, Any]:
        canary, stable = counts
        traffic = round(100 * ready[0] / (ready[0] + ready[1])) if ready[0] + ready[1] else 0
        out = {
            "phase": self.phase,
            "templateHash": self.thash,
            "step": self.step,
            "steps": self.steps,
            "weight": self.weight,
            "canaryReplicas": canary,
            "stableReplicas": stable,
            "trafficPercent": traffic,
            "stepEnteredAt": self.entered,
            "stepStartedAt": self.started,
            "measurement": self.measurement,
            "message": message[:1024],
            "summary": _summary(self.phase, self.step, self.steps, traffic),
        }
        return {k: v for k, v in out.items() if v is not None}


def _parse(stamp: str, now: datetime) -> datetime:
    return datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=now.tzinfo)


def _aborted(
    cur: _Step, obs: Observed, ready: tuple[int, int], events: list[tuple[str, Reason, str]], message: str
) -> Plan:
    """The canary at zero, the stable Deployment back to every replica on its own template, Stalled with
    ``message`` (its Warning Event is Stalled's: one per abort)."""
    aborted = replace(cur, phase="Aborted", entered=None, started=None)
    return Plan(
        status=aborted.status((0, obs.replicas), (0, ready[1]), message),
        stable=stable_manifest(obs.desired, obs.stable, obs.replicas),
        canary=canary_manifest(obs.desired, 0),
        events=tuple(events),
        aborted=message,
        progressing=None,
    )


def plan(rollout: Rollout, obs: Observed) -> Plan:
    """One pass of a canary of ``obs.desired``'s template over the stable Deployment ``obs.stable``."""
    steps = rollout.steps or []
    gates = rollout.gates or CanaryGates()
    thash = template_hash(obs.desired["spec"]["template"])
    prev = obs.previous if obs.previous and obs.previous.get("templateHash") == thash else None
    n = obs.replicas
    now_text = obs.now.strftime(TIME_FORMAT)
    events: list[tuple[str, Reason, str]] = []
    if prev is None:
        events.append(("Normal", Reason.CANARY_STARTED, f"canary of template {thash} started: {len(steps)} step(s)"))
    cur = _restored(prev, thash, len(steps), now_text)
    ready = (_ready_count(obs.canary), _ready_count(obs.stable))
    if cur.phase == "Aborted":
        return _aborted(cur, obs, ready, events, str(prev["message"]) if prev else "")
    if cur.phase in ("Promoting", "Promoted"):
        return _promotion(cur, obs, ready, events)
    cur = replace(cur, weight=steps[cur.step].weight)
    if n == 0:  # suspended: both tracks at zero, the step waits for the replicas (its deadline does not run)
        return _suspended(cur, obs, events)
    return _stepping(cur, obs, steps, gates, ready, events, now_text)


def _restored(prev: dict[str, Any] | None, thash: str, steps: int, now_text: str) -> _Step:
    """The step status.canary records for this template (``prev``); the first step, entered now, for none."""
    if not prev:
        return _Step(
            phase="Progressing",
            thash=thash,
            step=0,
            steps=steps,
            weight=0,
            entered=now_text,
            started=None,
            measurement=None,
        )
    return _Step(
        phase=prev["phase"],
        thash=thash,
        step=int(prev["step"]),
        steps=steps,
        weight=int(prev.get("weight", 0)),
        entered=prev.get("stepEnteredAt") or now_text,
        started=prev.get("stepStartedAt"),
        measurement=prev.get("measurement"),
    )


def _promotion(cur: _Step, obs: Observed, ready: tuple[int, int], events: list[tuple[str, Reason, str]]) -> Plan:
    """Promoting: the stable Deployment takes the new template (its own rolling update, with the spec's budget); the
    canary serves beside it until every stable replica runs the new template, then goes (Promoted)."""
    n = obs.replicas
    done = _ready(obs.stable, n) and _is_template(obs.stable, obs.desired)
    canary_replicas = int(((obs.canary or {}).get("spec") or {}).get("replicas", 0)) if not done else 0
    message = (
        "promoted: every replica runs the new template"
        if done
        else "promoting: the stable Deployment takes the new template"
    )
    final = replace(
        cur, phase="Promoted" if done else "Promoting", step=cur.steps, weight=100, entered=None, started=None
    )
    return Plan(
        status=final.status((canary_replicas, n), ready, message),
        stable=obs.desired,
        canary=None if done else canary_manifest(obs.desired, canary_replicas),
        events=tuple(events),
        aborted=None,
        progressing=None if done else message,
    )


def _suspended(cur: _Step, obs: Observed, events: list[tuple[str, Reason, str]]) -> Plan:
    """No replicas (spec.suspend): both tracks at zero; the step waits for the replicas (its deadline does not run)."""
    waiting = replace(cur, entered=None, started=None)
    return Plan(
        status=waiting.status((0, 0), (0, 0), "suspended: the canary resumes with the replicas"),
        stable=stable_manifest(obs.desired, obs.stable, 0),
        canary=canary_manifest(obs.desired, 0),
        events=tuple(events),
        aborted=None,
        progressing=None,
    )


def _abort_step(
    cur: _Step, obs: Observed, ready: tuple[int, int], events: list[tuple[str, Reason, str]], why: str
) -> Plan:
    """The step ``cur`` aborted for ``why``. The Warning Event is Stalled's (CanaryAborted, this message): one per
    abort."""
    message = f"canary aborted at step {cur.step + 1}/{cur.steps} (weight {cur.weight}%): {why}"
    return _aborted(cur, obs, ready, events, message)


def _stepping(
    cur: _Step,
    obs: Observed,
    steps: list[CanaryStep],
    gates: CanaryGates,
    ready: tuple[int, int],
    events: list[tuple[str, Reason, str]],
    now_text: str,
) -> Plan:
    """A step in progress: started once the canary is ready, judged, advanced, promoted, held for its pause, or
    aborted (a refused canary pod, a failed gate, no verdict by its deadline)."""
    if obs.refused is not None:
        return _abort_step(cur, obs, ready, events, obs.refused)
    pause = steps[cur.step].pause_seconds
    canary_n = split(obs.replicas, cur.weight)[0]
    step_started = False
    if cur.started is None:
        cur, step_started, message = _start(cur, obs, canary_n, now_text)
    else:
        judged = _judged(cur, _parse(cur.started, obs.now), obs, steps, ready, events, now_text)
        if isinstance(judged, Plan):
            return judged
        cur, message = judged
    waited = (obs.now - _parse(cur.entered or now_text, obs.now)).total_seconds()
    if waited > pause + gates.progress_deadline_seconds:
        deadline = gates.progress_deadline_seconds
        why = f"no verdict {deadline}s after the step's pause ({pause}s) could have ended: {message}"
        return _abort_step(cur, obs, ready, events, why)
    canary_n, stable_n = split(obs.replicas, cur.weight)
    return Plan(
        status=cur.status((canary_n, stable_n), ready, message),
        stable=stable_manifest(obs.desired, obs.stable, stable_n),
        canary=canary_manifest(obs.desired, canary_n),
        events=tuple(events),
        aborted=None,
        progressing=f"canary step {cur.step + 1}/{cur.steps} ({cur.weight}% of replicas): {message}",
        step_started=step_started,
    )


def _start(cur: _Step, obs: Observed, canary_n: int, now_text: str) -> tuple[_Step, bool, str]:
    """A step not started yet starts (now, measuring afresh) once its ``canary_n`` canary replicas run the desired
    template and are ready. Returns the step, whether it started, and the message."""
    canary_ready = obs.canary is not None and _ready(obs.canary, canary_n) and _is_template(obs.canary, obs.desired)
    if canary_ready:
        cur = replace(cur, started=now_text, measurement=None)
        return cur, True, f"step {cur.step + 1} started: measuring the canary"
    return cur, False, f"waiting for {canary_n} canary replica(s) to be ready"


def _judged(
    cur: _Step,
    started_at: datetime,
    obs: Observed,
    steps: list[CanaryStep],
    ready: tuple[int, int],
    events: list[tuple[str, Reason, str]],
    now_text: str,
) -> Plan | tuple[_Step, str]:
    """A step started at ``started_at`` under the gates' verdict: aborted (a failed gate) or promoted (the last
    step passed), as a Plan; else the step (the next one once this one passed and held for its pause) and the
    message.

    Once started, a step keeps its start when the replica counts change (an autoscaler): the gates measure what the
    canary serves."""
    pause = steps[cur.step].pause_seconds
    verdict = obs.verdict
    message = "measuring the canary"
    if verdict is not None:
        cur = replace(cur, measurement=verdict.measurement)
        message = verdict.message
        if verdict.passed is False:
            return _abort_step(cur, obs, ready, events, verdict.message)
    elapsed = (obs.now - started_at).total_seconds()
    if verdict is not None and verdict.passed and elapsed >= pause:
        events.append(
            ("Normal", Reason.CANARY_STEP_PASSED, f"step {cur.step + 1}/{len(steps)} ({cur.weight}%) passed: {message}")
        )
        if cur.step + 1 == len(steps):
            return _promote(cur, obs, ready, events, message)
        weight = steps[cur.step + 1].weight
        cur = replace(cur, step=cur.step + 1, weight=weight, entered=now_text, started=None)
        canary_n = split(obs.replicas, weight)[0]
        message = f"step {cur.step + 1} of {len(steps)}: scaling the canary to {canary_n} replica(s)"
    elif elapsed < pause:
        until = (started_at + timedelta(seconds=pause)).strftime(TIME_FORMAT)
        message = f"{message}; the step holds until {until}"
    return cur, message


def _promote(
    cur: _Step, obs: Observed, ready: tuple[int, int], events: list[tuple[str, Reason, str]], message: str
) -> Plan:
    """Every step passed: the stable Deployment takes the new template, the canary keeps its replicas meanwhile."""
    events.append(("Normal", Reason.CANARY_PROMOTED, f"every step passed: promoting template {cur.thash} ({message})"))
    canary_n = split(obs.replicas, cur.weight)[0]
    promoting = replace(cur, phase="Promoting", step=cur.steps, weight=100, entered=None, started=None)
    return Plan(
        status=promoting.status((canary_n, obs.replicas), ready, "promoting"),
        stable=obs.desired,
        canary=canary_manifest(obs.desired, canary_n),
        events=tuple(events),
        aborted=None,
        progressing="promoting: the stable Deployment takes the new template",
    )


def _is_template(deployment: dict[str, Any], desired: dict[str, Any]) -> bool:
    return is_subset(desired["spec"]["template"], deployment["spec"].get("template") or {})
