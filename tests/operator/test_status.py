"""Status computation: conditions, transition Events and the merge patch, with an injected clock.

The key property is idempotence: recomputing the status of an unchanged world on the status the operator
just wrote yields no change (``status_changed`` is false) and no Event, so a no-op reconcile pass writes
nothing. ``apply_merge_patch`` plays the apiserver (RFC 7386 JSON merge patch on ``status``), so the tests
see exactly the object the next pass would read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuron_operator.resources.fit import Fit
from neuron_operator.resources.status import (
    DeploymentObservation,
    Event,
    ModelObservation,
    deployment_status,
    model_status,
    status_changed,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
KEY = "7bec2709d96b5fb84fa348453e88695d6be379aa764f60cea6e77b58278a439e"
SHA = "ab" * 32
FITS = Fit(True, "Fits", "encoder models are supported on inf2")
POOR = Fit(True, "PoorFit", "R-CNN models compile for inf1 with limitations")
UNSUPPORTED = Fit(False, "UnsupportedArchitecture", "decoder models are not supported on inf1")

Body = dict[str, Any]


@dataclass
class FakeClock:
    now: datetime = T0
    calls: int = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge(result.get(k), v)
    return result


def apply_merge_patch(body: Body, status_patch: dict[str, Any]) -> Body:
    """The object after ``PATCH .../status`` with ``{"status": status_patch}`` (merge patch)."""
    new = copy.deepcopy(body)
    new["status"] = merge(body.get("status") or {}, status_patch)
    return new


def model(generation: int = 1, status: dict[str, Any] | None = None) -> Body:
    body: Body = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": "bert", "namespace": "ml", "uid": "u1", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = status
    return body


def conditions(body: Body) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in body["status"]["conditions"]}


def cond(body: Body, type_: str) -> tuple[str, str]:
    c = conditions(body)[type_]
    return c["status"], c["reason"]


ARTIFACT = {
    "uri": f"pvc://neuron-artifacts/{KEY}",
    "sha256": SHA,
    "shortDigest": SHA[:12],
    "neuronCoreVersion": "v2",
    "batchSize": 2,
    "buckets": {"axis": 1, "sizes": [32, 64, 128]},
}
FAILURE = {"reason": "CompileFailed", "message": "neuronx-cc: error", "exitCode": 1, "time": "2025-03-01T12:05:00Z"}

COMPILING = ModelObservation(fit=FITS, cache_key=KEY, compiling=f"compile-{KEY[:20]}")
SUCCEEDED = ModelObservation(fit=FITS, cache_key=KEY, artifact=ARTIFACT)
FAILED = ModelObservation(fit=FITS, cache_key=KEY, failure=FAILURE)


@dataclass
class Passes:
    """Drives model_status/deployment_status pass after pass, writing each patch like the apiserver."""

    body: Body
    clock: FakeClock = field(default_factory=FakeClock)
    kind: str = "model"
    last_patch: dict[str, Any] = field(default_factory=dict)

    def run(self, obs: Any) -> list[Event]:
        fn = model_status if self.kind == "model" else deployment_status
        patch, events = fn(self.body, obs, self.clock)
        self.last_patch = patch
        if status_changed(self.body, patch):
            self.body = apply_merge_patch(self.body, patch)
        return events

    def assert_noop(self, obs: Any) -> None:
        """Recomputing with the same observation changes nothing and records no Event."""
        fn = model_status if self.kind == "model" else deployment_status
        before = copy.deepcopy(self.body)
        self.clock.advance(30)
        patch, events = fn(self.body, obs, self.clock)
        assert events == []
        assert not status_changed(self.body, patch), patch
        assert apply_merge_patch(self.body, patch) == before


# ------------------------------------------------------------------------------------------ NeuronModel


def test_compiling_is_reconciling() -> None:
    p = Passes(model())
    events = p.run(COMPILING)
    assert cond(p.body, "Reconciling") == ("True", "Compiling")
    assert cond(p.body, "Ready") == ("False", "Compiling")
    assert cond(p.body, "Stalled") == ("False", "Compiling")
    assert cond(p.body, "ArtifactReady") == ("False", "Compiling")
    assert cond(p.body, "ArchitectureFit") == ("True", "Fits")
    assert p.body["status"]["phase"] == "Compiling"
    assert p.body["status"]["cacheKey"] == KEY
    assert p.body["status"]["observedGeneration"] == 1
    assert f"compile-{KEY[:20]}" in conditions(p.body)["Reconciling"]["message"]
    assert events == [Event("Normal", "Compiling", f"compile Job compile-{KEY[:20]} is running")]
    p.assert_noop(COMPILING)


def test_success_is_ready_with_one_normal_event() -> None:
    p = Passes(model())
    p.run(COMPILING)
    p.clock.advance(60)
    events = p.run(SUCCEEDED)
    assert cond(p.body, "Ready") == ("True", "Compiled")
    assert cond(p.body, "ArtifactReady") == ("True", "Compiled")
    assert cond(p.body, "Reconciling") == ("False", "Reconciled")
    assert cond(p.body, "Stalled") == ("False", "Reconciled")
    assert p.body["status"]["artifact"] == ARTIFACT
    assert p.body["status"]["phase"] == "Ready"
    assert events == [Event("Normal", "Compiled", f"artifact {SHA[:12]} at {ARTIFACT['uri']}")]
    p.assert_noop(SUCCEEDED)


def test_cache_hit_reason_is_kept() -> None:
    p = Passes(model())
    events = p.run(ModelObservation(fit=FITS, cache_key=KEY, artifact=ARTIFACT, artifact_reason="CacheHit"))
    assert cond(p.body, "Ready") == ("True", "CacheHit")
    assert [e.reason for e in events] == ["CacheHit"]


def test_failure_is_stalled_with_last_failure_and_one_warning() -> None:
    p = Passes(model())
    p.run(COMPILING)
    p.clock.advance(60)
    events = p.run(FAILED)
    assert cond(p.body, "Stalled") == ("True", "CompileFailed")
    assert cond(p.body, "Ready") == ("False", "CompileFailed")
    assert cond(p.body, "Reconciling") == ("False", "CompileFailed")
    assert cond(p.body, "ArtifactReady") == ("False", "CompileFailed")
    assert p.body["status"]["lastFailure"] == FAILURE
    assert p.body["status"]["phase"] == "Failed"
    assert events == [Event("Warning", "CompileFailed", "neuronx-cc: error")]
    p.assert_noop(FAILED)


def test_unsupported_architecture_stalls_without_a_cache_key() -> None:
    p = Passes(model())
    events = p.run(ModelObservation(fit=UNSUPPORTED))
    assert cond(p.body, "ArchitectureFit") == ("False", "UnsupportedArchitecture")
    assert cond(p.body, "Stalled") == ("True", "UnsupportedArchitecture")
    assert "cacheKey" not in p.body["status"]
    # One Warning for the fit, one for the stall: both explain why nothing happens.
    assert [e.type for e in events] == ["Warning", "Warning"]
    p.assert_noop(ModelObservation(fit=UNSUPPORTED))


def test_poor_fit_warns_once_and_still_compiles() -> None:
    p = Passes(model())
    obs = ModelObservation(fit=POOR, cache_key=KEY, compiling="compile-x")
    events = p.run(obs)
    assert cond(p.body, "ArchitectureFit") == ("True", "PoorFit")
    assert Event("Warning", "PoorFit", POOR.message) in events
    assert cond(p.body, "Reconciling") == ("True", "Compiling")
    p.assert_noop(obs)


def test_invalid_spec_is_stalled() -> None:
    p = Passes(model())
    obs = ModelObservation(fit=FITS, invalid=("InvalidSpec", "spec.batchSize: must be >= 1"))
    events = p.run(obs)
    assert cond(p.body, "Stalled") == ("True", "InvalidSpec")
    assert events == [Event("Warning", "InvalidSpec", "spec.batchSize: must be >= 1")]
    p.assert_noop(obs)


@pytest.mark.parametrize("obs", [COMPILING, SUCCEEDED, FAILED, ModelObservation(fit=UNSUPPORTED)])
def test_recomputing_the_written_status_is_a_noop(obs: ModelObservation) -> None:
    p = Passes(model())
    p.run(obs)
    p.assert_noop(obs)
    p.assert_noop(obs)


def test_last_transition_time_moves_only_on_a_flip() -> None:
    p = Passes(model())
    p.run(COMPILING)
    t0 = stamp(p.clock.now)
    assert {c["lastTransitionTime"] for c in conditions(p.body).values()} == {t0}

    p.clock.advance(45)
    p.run(COMPILING)  # nothing flipped
    assert {c["lastTransitionTime"] for c in conditions(p.body).values()} == {t0}

    p.clock.advance(45)
    t2 = stamp(p.clock.now)
    p.run(SUCCEEDED)
    times = {t: c["lastTransitionTime"] for t, c in conditions(p.body).items()}
    assert times == {
        "ArchitectureFit": t0,  # True all along
        "Stalled": t0,  # False all along (reason changed, status did not)
        "Ready": t2,
        "ArtifactReady": t2,
        "Reconciling": t2,
    }
    assert conditions(p.body)["Stalled"]["reason"] == "Reconciled"


def test_clock_is_read_only_for_transitions() -> None:
    p = Passes(model())
    p.run(COMPILING)
    p.clock.calls = 0
    p.run(COMPILING)
    assert p.clock.calls == 0


def test_observed_generation_follows_the_spec() -> None:
    p = Passes(model(generation=1))
    p.run(SUCCEEDED)
    p.body["metadata"]["generation"] = 2
    p.clock.advance(10)
    events = p.run(COMPILING)
    assert p.body["status"]["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in conditions(p.body).values())
    assert cond(p.body, "Ready") == ("False", "Compiling")
    assert [e.reason for e in events] == ["Compiling"]


def test_removed_keys_become_none_in_the_merge_patch() -> None:
    p = Passes(model())
    p.run(FAILED)
    p.body["metadata"]["generation"] = 2  # the user edited the spec; the new compile succeeds
    p.run(SUCCEEDED)
    assert p.last_patch["lastFailure"] is None
    assert "lastFailure" not in p.body["status"]
    # Keys the status never had are not sent.
    assert set(p.last_patch) == {"observedGeneration", "cacheKey", "artifact", "conditions", "phase", "lastFailure"}
    # And an artifact that disappears is removed too.
    p.body["metadata"]["generation"] = 3
    p.run(ModelObservation(fit=UNSUPPORTED))
    assert p.last_patch["artifact"] is None
    assert p.last_patch["cacheKey"] is None
    assert "artifact" not in p.body["status"]
    assert "cacheKey" not in p.body["status"]


def test_last_failure_stays_visible_while_a_retry_compiles() -> None:
    p = Passes(model())
    p.run(FAILED)
    p.body["metadata"]["generation"] = 2
    p.run(COMPILING)
    assert p.body["status"]["lastFailure"] == FAILURE
    p.run(SUCCEEDED)
    assert "lastFailure" not in p.body["status"]


def test_nested_keys_that_disappear_are_removed() -> None:
    """A new artifact without buckets (or a failure without an exit code) must not inherit the old ones."""
    p = Passes(model())
    p.run(SUCCEEDED)
    p.body["metadata"]["generation"] = 2
    unbucketed = {k: v for k, v in ARTIFACT.items() if k != "buckets"} | {"sha256": "cd" * 32}
    obs = ModelObservation(fit=FITS, cache_key=KEY[::-1], artifact=unbucketed)
    p.run(obs)
    assert p.body["status"]["artifact"] == unbucketed
    p.assert_noop(obs)

    p.body["metadata"]["generation"] = 3
    p.run(FAILED)
    timeout = {"reason": "CompileTimeout", "message": "deadline", "time": "2025-03-01T13:00:00Z"}
    obs = ModelObservation(fit=FITS, cache_key=KEY, failure=timeout)
    p.run(obs)
    assert p.body["status"]["lastFailure"] == timeout
    p.assert_noop(obs)


MODEL_OBSERVATIONS = [
    COMPILING,
    SUCCEEDED,
    FAILED,
    ModelObservation(fit=FITS, cache_key=KEY, compiling=None),
    ModelObservation(fit=FITS, cache_key=KEY, artifact=ARTIFACT, artifact_reason="CacheHit"),
    ModelObservation(fit=POOR, cache_key=KEY, compiling="compile-x"),
    ModelObservation(fit=UNSUPPORTED),
    ModelObservation(fit=FITS, invalid=("InvalidSpec", "spec.storage.uri: not implemented")),
    ModelObservation(fit=FITS, cache_key=KEY, blocked=("ArtifactClaimMissing", "PersistentVolumeClaim x is missing")),
    ModelObservation(
        fit=FITS, cache_key=KEY, compiling="compile-x", blocked=("Unschedulable", "0/2 nodes: Insufficient cpu")
    ),
]


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.sampled_from(range(len(MODEL_OBSERVATIONS))), st.booleans()), min_size=1, max_size=8)
)
def test_any_sequence_of_passes_is_idempotent_and_moves_times_only_on_flips(
    steps: list[tuple[int, bool]],
) -> None:
    p = Passes(model())
    for i, (index, bump_generation) in enumerate(steps):
        if bump_generation:
            p.body["metadata"]["generation"] += 1
        p.clock.advance(10 + i)
        before = (
            {t: (c["status"], c["lastTransitionTime"]) for t, c in conditions(p.body).items()}
            if (p.body.get("status"))
            else {}
        )
        events = p.run(MODEL_OBSERVATIONS[index])
        after = conditions(p.body)
        for type_, (status, time) in before.items():
            moved = after[type_]["lastTransitionTime"] != time
            assert moved == (after[type_]["status"] != status), type_
        # Every Event reports a condition that flipped in this pass, a new Stalled reason (another problem while
        # stalled), a new ArchitectureFit verdict, or an artifact change.
        flipped = {t: c for t, c in after.items() if before.get(t, (None, None))[0] != c["status"]}
        for event in events:
            assert (
                any(c["reason"] == event.reason for c in flipped.values())
                or after["ArchitectureFit"]["reason"] == event.reason
                or (after["Stalled"]["status"] == "True" and after["Stalled"]["reason"] == event.reason)
                or event.reason == "ArtifactChanged"
            ), (event, flipped)
        p.assert_noop(MODEL_OBSERVATIONS[index])


# ------------------------------------------------------------------------------------- NeuronDeployment


def ndep(generation: int = 1) -> Body:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "bert-serve", "namespace": "ml", "uid": "u2", "generation": generation},
        "spec": {},
    }


def observed(
    *,
    replicas: int,
    ready: int,
    updated: int,
    available: int,
    gen: int = 2,
    observed_gen: int = 2,
    max_unavailable: int | str = 1,
    **extra: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": observed_gen,
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "availableReplicas": available,
        **extra,
    }
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": max_unavailable}}
    return {"metadata": {"name": "bert-serve", "generation": gen}, "spec": {"strategy": strategy}, "status": status}


SERVED = {"name": "bert", "sha256": SHA, "cacheKey": KEY}


def serving(deployment: dict[str, Any] | None, want: int = 3, **kw: Any) -> DeploymentObservation:
    return DeploymentObservation(
        model=SERVED,
        cores=12,
        deployment=deployment,
        desired_replicas=want,
        endpoint="http://bert-serve.ml.svc:8080/v2/models/bert",
        selector="neuron.dev/deployment=bert-serve",
        **kw,
    )


ROLLED_OUT = serving(observed(replicas=3, ready=3, updated=3, available=3))
ROLLING = serving(observed(replicas=3, ready=2, updated=1, available=2), rolling_to_new_artifact=True)
DEADLINE = serving(
    observed(
        replicas=3,
        ready=1,
        updated=1,
        available=1,
        conditions=[
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "bert-serve-5d4f" has timed out progressing.',
            },
        ],
    )
)
SUSPENDED = serving(observed(replicas=0, ready=0, updated=0, available=0), want=0, suspended=True)
MODEL_NOT_READY = DeploymentObservation(
    blocked=("ModelNotReady", "NeuronModel bert has no ready artifact for its current spec", False),
    desired_replicas=3,
    selector="neuron.dev/deployment=bert-serve",
)
INCOMPATIBLE = DeploymentObservation(
    blocked=("IncompatibleArtifact", "the artifact is for NeuronCore-v2; none of spec.instanceTypes ...", True),
    cores=2,
    desired_replicas=3,
    selector="neuron.dev/deployment=bert-serve",
)


def test_rolled_out_is_ready_and_available() -> None:
    p = Passes(ndep(), kind="deployment")
    events = p.run(ROLLED_OUT)
    s = p.body["status"]
    assert cond(p.body, "Ready") == ("True", "ReplicasReady")
    assert cond(p.body, "Reconciling") == ("False", "Reconciled")
    assert cond(p.body, "Stalled") == ("False", "Reconciled")
    assert cond(p.body, "Available") == ("True", "ReplicasReady")
    assert cond(p.body, "ArtifactReady") == ("True", "Compiled")
    assert cond(p.body, "Schedulable") == ("True", "Fits")
    assert (s["replicas"], s["readyReplicas"], s["readySummary"], s["coresPerReplica"]) == (3, 3, "3/3", 12)
    assert s["model"] == SERVED
    assert s["endpoint"] == "http://bert-serve.ml.svc:8080/v2/models/bert"
    assert s["selector"] == "neuron.dev/deployment=bert-serve"
    assert events == [Event("Normal", "ReplicasReady", "3/3 replicas ready on the current artifact")]
    p.assert_noop(ROLLED_OUT)


def test_updated_below_desired_is_rolling_out() -> None:
    p = Passes(ndep(), kind="deployment")
    events = p.run(ROLLING)
    assert cond(p.body, "Reconciling") == ("True", "RollingOut")
    assert cond(p.body, "Ready") == ("False", "RollingOut")
    assert cond(p.body, "Stalled") == ("False", "RollingOut")
    # maxUnavailable 1 of 3: two available replicas keep the deployment Available.
    assert cond(p.body, "Available") == ("True", "ReplicasReady")
    assert [e.reason for e in events] == ["RollingOut"]
    p.assert_noop(ROLLING)
    # updated < desired alone (without a new artifact) is a rollout too.
    p2 = Passes(ndep(), kind="deployment")
    p2.run(serving(observed(replicas=3, ready=3, updated=2, available=3)))
    assert cond(p2.body, "Reconciling") == ("True", "RollingOut")


def test_more_pods_than_wanted_is_scaling() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(serving(observed(replicas=4, ready=4, updated=4, available=4)))
    assert cond(p.body, "Reconciling") == ("True", "Scaling")


def test_stale_observed_generation_is_not_rolled_out() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(serving(observed(replicas=3, ready=3, updated=3, available=3, gen=3, observed_gen=2)))
    assert cond(p.body, "Ready")[0] == "False"
    assert cond(p.body, "Reconciling")[0] == "True"


def test_progress_deadline_exceeded_is_stalled() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(ROLLING)
    p.clock.advance(900)
    events = p.run(DEADLINE)
    assert cond(p.body, "Stalled") == ("True", "ProgressDeadlineExceeded")
    assert cond(p.body, "Reconciling") == ("False", "ProgressDeadlineExceeded")
    assert cond(p.body, "Ready") == ("False", "ProgressDeadlineExceeded")
    assert "timed out progressing" in conditions(p.body)["Stalled"]["message"]
    assert events == [Event("Warning", "ProgressDeadlineExceeded", conditions(p.body)["Stalled"]["message"])]
    p.assert_noop(DEADLINE)


def test_suspend_is_not_ready_with_reason_suspended() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(ROLLED_OUT)
    p.clock.advance(5)
    events = p.run(SUSPENDED)
    assert cond(p.body, "Ready") == ("False", "Suspended")
    assert cond(p.body, "Stalled") == ("False", "Suspended")
    assert cond(p.body, "Reconciling") == ("False", "Suspended")  # already at zero
    assert cond(p.body, "Available") == ("False", "Suspended")
    assert p.body["status"]["readySummary"] == "0/0"
    assert events == []  # Ready going False is not an Event-worthy flip; nothing is stalled
    p.assert_noop(SUSPENDED)


def test_suspend_while_pods_remain_is_scaling() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(serving(observed(replicas=2, ready=2, updated=2, available=2), want=0, suspended=True))
    assert cond(p.body, "Ready") == ("False", "Suspended")
    assert cond(p.body, "Reconciling") == ("True", "Scaling")


def test_model_not_ready_blocks_without_stalling() -> None:
    p = Passes(ndep(), kind="deployment")
    events = p.run(MODEL_NOT_READY)
    assert cond(p.body, "Stalled") == ("False", "ModelNotReady")
    assert cond(p.body, "Reconciling") == ("True", "ModelNotReady")
    assert cond(p.body, "Ready") == ("False", "ModelNotReady")
    assert cond(p.body, "ArtifactReady") == ("False", "ModelNotReady")
    assert [e.type for e in events] == ["Normal"]
    p.assert_noop(MODEL_NOT_READY)


def test_incompatible_artifact_is_stalled() -> None:
    p = Passes(ndep(), kind="deployment")
    events = p.run(INCOMPATIBLE)
    assert cond(p.body, "Stalled") == ("True", "IncompatibleArtifact")
    assert cond(p.body, "Reconciling") == ("False", "IncompatibleArtifact")
    assert cond(p.body, "Schedulable") == ("False", "IncompatibleArtifact")
    assert cond(p.body, "ArtifactReady") == ("True", "Compiled")
    assert events == [Event("Warning", "IncompatibleArtifact", INCOMPATIBLE.blocked[1])]  # type: ignore[index]
    p.assert_noop(INCOMPATIBLE)


def test_blocking_removes_serving_fields() -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(ROLLED_OUT)
    p.body["metadata"]["generation"] = 2
    p.run(MODEL_NOT_READY)
    for key in ("model", "endpoint", "coresPerReplica"):
        assert p.last_patch[key] is None
        assert key not in p.body["status"]


DEPLOYMENT_OBSERVATIONS = [ROLLED_OUT, ROLLING, DEADLINE, SUSPENDED, MODEL_NOT_READY, INCOMPATIBLE]


@pytest.mark.parametrize("first", range(len(DEPLOYMENT_OBSERVATIONS)))
@pytest.mark.parametrize("second", range(len(DEPLOYMENT_OBSERVATIONS)))
def test_deployment_transitions_are_idempotent(first: int, second: int) -> None:
    p = Passes(ndep(), kind="deployment")
    p.run(DEPLOYMENT_OBSERVATIONS[first])
    p.assert_noop(DEPLOYMENT_OBSERVATIONS[first])
    p.clock.advance(60)
    p.run(DEPLOYMENT_OBSERVATIONS[second])
    p.assert_noop(DEPLOYMENT_OBSERVATIONS[second])
