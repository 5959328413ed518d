"""One reason vocabulary: the reasons the status code produces are exactly the documented ones.

``neuron_operator.api.reasons`` lists, per kind and condition type, the reasons a condition may carry; the CRD
descriptions are generated from those lists and the status builder refuses any other reason (produced ⊆
documented, at every pass of every test). Here every documented (type, reason) is produced by a status pass over
observations built by the real producers where they exist (job_outcome, pod_problem, plan_placement, the
runtime's termination reasons) — documented ⊆ produced —, every Reason member has a producer in the operator's
code, and the CRD files on disk say exactly what the vocabulary says.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_status import FITS, KEY, POOR, SHA, UNSUPPORTED, FakeClock, model, ndep

from neuron_operator.api import Reason
from neuron_operator.api.reasons import (
    COMPILE_FAILURES,
    DEPLOYMENT_STALLED,
    DEPLOYMENT_VOCABULARY,
    MODEL_STALLED,
    MODEL_VOCABULARY,
    Vocabulary,
    conditions_doc,
)
from neuron_operator.catalogue import NeuronCoreVersion
from neuron_operator.resources import status as status_module
from neuron_operator.resources.compile import job_outcome
from neuron_operator.resources.fit import Infeasible, plan_placement
from neuron_operator.resources.pods import ServingFailure
from neuron_operator.resources.podstate import pod_problem
from neuron_operator.resources.status import DeploymentObservation, ModelObservation, deployment_status, model_status
from neuron_operator.settings import OperatorSettings
from neuron_runtime.contract import CompileFailure, ServeRefusal

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "neuron_operator"
ARTIFACT = {"uri": "pvc://a/k", "sha256": SHA, "shortDigest": SHA[:12]}


@pytest.fixture
def produced(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """Every (condition type, reason) a StatusBuilder sets while the test runs."""
    seen: set[tuple[str, str]] = set()
    original = status_module.StatusBuilder.set

    def recording(self: Any, type_: str, status: bool, reason: Reason, message: str) -> None:
        seen.add((type_, str(reason)))
        original(self, type_, status, reason, message)

    monkeypatch.setattr(status_module.StatusBuilder, "set", recording)
    return seen


def documented(vocabulary: Vocabulary) -> set[tuple[str, str]]:
    return {(t, r.value) for t, (_, reasons) in vocabulary.items() for r in reasons}


# --------------------------------------------------------------------------- observations from real producers


def _job(failed: dict[str, Any] | None = None, complete: bool = False) -> dict[str, Any]:
    conditions = []
    if failed is not None:
        conditions.append({"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z", **failed})
    if complete:
        conditions.append({"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"})
    return {"status": {"conditions": conditions}}


def _compile_pod(terminated: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "compile-x-abcde"},
        "status": {"containerStatuses": [{"name": "compile", "state": {"terminated": terminated}}]},
    }


def compile_failures() -> list[dict[str, Any]]:
    """status.lastFailure of every way job_outcome reads a failed compile Job."""
    outcomes = []
    for reason in CompileFailure:  # the runtime's own termination message
        message = json.dumps({"status": "Failed", "reason": reason.value, "message": "boom"})
        pod = _compile_pod({"exitCode": 3, "message": message, "finishedAt": "2026-01-01T00:00:00Z"})
        outcomes.append(job_outcome(_job({"reason": "BackoffLimitExceeded"}), [pod]))
    oom = _compile_pod({"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-01-01T00:00:00Z"})
    outcomes.append(job_outcome(_job({"reason": "BackoffLimitExceeded"}), [oom]))
    outcomes.append(job_outcome(_job({"reason": "DeadlineExceeded", "message": "too long"}), []))
    outcomes.append(job_outcome(_job(complete=True), []))  # no result: NoResult
    crash = _compile_pod({"exitCode": 139, "reason": "Error", "message": "Segmentation fault"})
    outcomes.append(job_outcome(_job({"reason": "BackoffLimitExceeded"}), [crash]))
    return [{"reason": o.reason.value, "message": o.message or ""} for o in outcomes if o.reason is not None]


def _pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": status}


def _waiting(reason: str) -> dict[str, Any]:
    return {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": reason, "message": "m"}}}]}


POD_PROBLEMS = [
    pod_problem(
        _pod(
            {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2"}]}
        ),
        "c",
    ),
    pod_problem(_pod(_waiting("ImagePullBackOff")), "c"),
    pod_problem(_pod(_waiting("CreateContainerConfigError")), "c"),
    pod_problem(
        _pod({"conditions": [{"type": "PodScheduled", "status": "True"}], **_waiting("ContainerCreating")}),
        "c",
        [{"reason": "FailedMount", "type": "Warning", "message": "MountVolume.SetUp failed"}],
    ),
    pod_problem(
        _pod(
            {
                "containerStatuses": [
                    {
                        "name": "c",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    }
                ]
            }
        ),
        "c",
    ),
    pod_problem(
        _pod(
            {
                "containerStatuses": [
                    {
                        "name": "c",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ]
            }
        ),
        "c",
    ),
]


def infeasible() -> list[Infeasible]:
    settings = OperatorSettings()
    plans = [
        plan_placement(NeuronCoreVersion.V2, 1, ["not-a-type"], None, settings),
        plan_placement(NeuronCoreVersion.V1, 1, ["inf2.xlarge"], None, settings),
        plan_placement(NeuronCoreVersion.V2, 999, ["inf2.xlarge"], None, settings),
        plan_placement(NeuronCoreVersion.V2, 3, ["trn1.32xlarge"], None, settings),
    ]
    return [p for p in plans if isinstance(p, Infeasible)]


# ------------------------------------------------------------------------------------------------- tests


def test_every_documented_model_reason_is_produced(produced: set[tuple[str, str]]) -> None:
    observations = [
        ModelObservation(fit=FITS, cache_key=KEY, compiling="compile-x"),
        ModelObservation(fit=POOR, cache_key=KEY, artifact=ARTIFACT, artifact_reason=Reason.COMPILED),
        ModelObservation(fit=FITS, cache_key=KEY, artifact=ARTIFACT, artifact_reason=Reason.CACHE_HIT),
        ModelObservation(fit=UNSUPPORTED),
        ModelObservation(fit=FITS, invalid=(Reason.INVALID_SPEC, "spec.batchSize: must be >= 1")),
        ModelObservation(fit=FITS, cache_key=KEY, blocked=(Reason.ARTIFACT_CLAIM_MISSING, "no claim")),
        ModelObservation(fit=FITS, cache_key=KEY, blocked=(Reason.SOURCE_CLAIM_MISSING, "no claim")),
        *(ModelObservation(fit=FITS, cache_key=KEY, failure=f) for f in compile_failures()),
        *(
            ModelObservation(fit=FITS, cache_key=KEY, compiling="compile-x", blocked=(p.reason, p.message))
            for p in POD_PROBLEMS
            if p is not None and p.reason is not Reason.CRASH_LOOP_BACK_OFF and p.reason is not Reason.OOM_KILLED
        ),
    ]
    for obs in observations:
        for start in (model(), model(status={"conditions": []})):
            model_status(start, obs, FakeClock())
    assert produced == documented(MODEL_VOCABULARY)


def _deployment(replicas: int, available: int, max_unavailable: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": max_unavailable}}},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": available,
            "updatedReplicas": replicas,
            "availableReplicas": available,
        },
    }


def test_every_documented_deployment_reason_is_produced(produced: set[tuple[str, str]]) -> None:
    served = {"model": {"name": "m", "sha256": SHA, "cacheKey": KEY}, "cores": 1, "selector": "s"}
    ok = _deployment(3, 3)
    observations = [
        DeploymentObservation(deployment=ok, desired_replicas=3, **served),
        DeploymentObservation(deployment=ok, desired_replicas=3, artifact_reason=Reason.CACHE_HIT, **served),
        DeploymentObservation(deployment=_deployment(3, 1), desired_replicas=3, rolling_to_new_artifact=True, **served),
        DeploymentObservation(deployment=_deployment(4, 4), desired_replicas=3, **served),
        DeploymentObservation(deployment=_deployment(0, 0), desired_replicas=0, suspended=True, **served),
        DeploymentObservation(deployment=_deployment(2, 2), desired_replicas=0, suspended=True, **served),
        DeploymentObservation(deployment=_deployment(0, 0), desired_replicas=0, **served),
        DeploymentObservation(
            deployment={
                **_deployment(3, 2),
                "status": {
                    **_deployment(3, 2)["status"],
                    "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "m"}],
                },
            },
            desired_replicas=3,
            **served,
        ),
        *(
            DeploymentObservation(
                deployment=_deployment(3, 2),
                desired_replicas=3,
                serving_failure=ServingFailure(Reason(r.value), "m", 6, None, "p"),
                **served,
            )
            for r in ServeRefusal
        ),
        *(
            DeploymentObservation(deployment=_deployment(3, 2), desired_replicas=3, pod_problem=p, **served)
            for p in POD_PROBLEMS
        ),
        DeploymentObservation(blocked=(Reason.MODEL_NOT_FOUND, "m", True), desired_replicas=1),
        DeploymentObservation(blocked=(Reason.MODEL_FAILED, "m", True), deployment=ok, desired_replicas=3),
        DeploymentObservation(blocked=(Reason.MODEL_NOT_READY, "m", False), deployment=ok, desired_replicas=3),
        DeploymentObservation(blocked=(Reason.INVALID_SPEC, "m", True), desired_replicas=1),
        DeploymentObservation(blocked=(Reason.APPLY_REJECTED, "m", True), desired_replicas=1),
        *(DeploymentObservation(blocked=(i.reason, i.message, True), desired_replicas=1) for i in infeasible()),
        # canary rollouts (the reasons the reconciler passes from resources.canary's plan)
        DeploymentObservation(deployment=ok, desired_replicas=3, canary_progressing="step 1/2", **served),
        DeploymentObservation(deployment=ok, desired_replicas=3, canary_aborted="gate failed", **served),
        # the autoscaler's ScalingLimited (tests/operator/test_autoscale.py drives each from loadaware)
        *(
            DeploymentObservation(deployment=ok, desired_replicas=3, scaling_limited=(limited, r, "m"), **served)
            for limited, r in (
                (False, Reason.WITHIN_LIMITS),
                (True, Reason.MAX_REPLICAS),
                (True, Reason.INSUFFICIENT_NEURON_CORES),
            )
        ),
    ]
    for obs in observations:
        deployment_status(ndep(), obs, FakeClock())
    assert produced == documented(DEPLOYMENT_VOCABULARY)


def test_the_observations_above_come_from_real_producers() -> None:
    """Each compile failure reason, pod problem and infeasible placement is produced by its real function."""
    assert {f["reason"] for f in compile_failures()} == {r.value for r in COMPILE_FAILURES}
    assert None not in POD_PROBLEMS
    assert {i.reason for i in infeasible()} == {
        Reason.UNKNOWN_INSTANCE_TYPE,
        Reason.INCOMPATIBLE_ARTIFACT,
        Reason.INSUFFICIENT_NEURON_CORES,
        Reason.UNSUPPORTED_TOPOLOGY,
    }


def _referenced_members() -> set[str]:
    """Reason.X attributes referenced anywhere in the operator outside the vocabulary module itself."""
    names: set[str] = set()
    for path in OPERATOR.rglob("*.py"):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason":
                names.add(node.attr)
    return names


def test_every_reason_has_a_producer() -> None:
    """A Reason that no code path can write is vocabulary drift (documented, never produced)."""
    from_runtime = {r.value for r in CompileFailure} | {r.value for r in ServeRefusal}
    referenced = _referenced_members()  # once: it parses every module of the operator
    unproduced = {
        r.name
        for r in Reason
        if r.name not in referenced
        and r.value not in from_runtime
        # Surge / InPlace Events are written as Reason(plan.strategy) by the reconciler.
        and r not in (Reason.SURGE, Reason.IN_PLACE)
    }
    assert unproduced == set()


@pytest.mark.parametrize(
    ("crd", "vocabulary", "stalled"),
    [
        ("neuron.dev_neuronmodels.yaml", MODEL_VOCABULARY, MODEL_STALLED),
        ("neuron.dev_neurondeployments.yaml", DEPLOYMENT_VOCABULARY, DEPLOYMENT_STALLED),
    ],
)
def test_the_crd_describes_exactly_the_vocabulary(
    crd: str, vocabulary: Vocabulary, stalled: tuple[Reason, ...]
) -> None:
    schema = yaml.safe_load((REPO / "crds" / crd).read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    description = schema["properties"]["status"]["properties"]["conditions"]["description"]
    assert " ".join(description.split()) == conditions_doc(vocabulary, stalled)
    listed = {w.strip(".,;()") for w in description.split()}
    members = {r.value for r in Reason}
    assert {w for w in listed if w in members} == {r.value for _, rs in vocabulary.values() for r in rs}


def test_an_undocumented_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the vocabulary of condition ArtifactReady"):
        model_status(
            model(), ModelObservation(fit=FITS, cache_key=KEY, blocked=(Reason.MODEL_FAILED, "x")), FakeClock()
        )
