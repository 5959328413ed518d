"""A serving runtime that refuses its artifact (parity gate, SDK gate, ...) reaches the NeuronDeployment's status.

`neuron_operator.resources.pods` reads the runtime's JSON termination message from kubelet's container status
(`state.terminated` / `lastState.terminated`) of pods on the current pod template; `deployment_status` turns it
into Stalled with the runtime's reason and numbers. The reason vocabulary is tied three ways: what the runtime
writes, what the operator recognises, and what the CRD description lists.
"""

from __future__ import annotations

import json
import re
from typing import Any

from test_status import Passes, cond, ndep, observed, serving

from neuron_operator.api.deployment import DEPLOYMENT_CONDITIONS_DOC
from neuron_operator.resources.pods import (
    SERVING_FAILURE_REASONS,
    is_current,
    parity_status,
    ready_current_pods,
    serving_failure,
)
from neuron_operator.resources.status import Event
from neuron_runtime.contract import PARITY_LOG_PREFIX

CONTAINER = {"name": "runtime", "image": "local/neuron-runtime:1", "env": [{"name": "A", "value": "1"}]}
PARITY_MESSAGE = {
    "status": "Failed",
    "reason": "ParityFailed",
    "message": "parity FAILED: max abs error 0.731, max rel error 2.1 (atol 0.001, rtol 0.001, fp32); ...",
    "maxAbsError": 0.731,
    "atol": 0.001,
    "rtol": 0.001,
}


def pod(
    name: str,
    *,
    container: dict[str, Any] = CONTAINER,
    last: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "runtime", "state": state or {"waiting": {"reason": "CrashLoopBackOff"}}}
    if last is not None:
        status["lastState"] = {"terminated": last}
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"containers": [container]}, "status": {"containerStatuses": [status]}}


def terminated(message: dict[str, Any] | str, code: int = 6, at: str = "2026-11-28T10:00:00Z") -> dict[str, Any]:
    text = message if isinstance(message, str) else json.dumps(message)
    return {"exitCode": code, "reason": "Error", "message": text + "\n", "finishedAt": at}


def test_a_current_pod_that_failed_parity_is_reported_with_its_numbers() -> None:
    failure = serving_failure([pod("p1", last=terminated(PARITY_MESSAGE))], CONTAINER)
    assert failure is not None
    assert (failure.reason, failure.exit_code, failure.pod) == ("ParityFailed", 6, "p1")
    assert "max abs error 0.731" in failure.message


def test_a_passing_storage_refusal_is_forgotten_once_the_container_is_ready() -> None:
    """A serving pod that could not reach S3 once (exit 10) and then came up keeps that lastState: while it is not
    ready the refusal explains it, once it is ready it no longer does."""
    refusal = terminated({"status": "Failed", "reason": "StorageUnavailable", "message": "endpoint down"}, code=10)
    running = {"running": {"startedAt": "2026-11-28T10:01:00Z"}}
    starting = pod("p", last=refusal, state=running)
    failure = serving_failure([starting], CONTAINER)
    assert failure is not None
    assert failure.reason == "StorageUnavailable"
    ready = pod("p", last=refusal, state=running)
    ready["status"]["containerStatuses"][0]["ready"] = True
    assert serving_failure([ready], CONTAINER) is None


def test_a_pod_is_current_despite_the_defaults_the_apiserver_adds() -> None:
    """Found on the kind cluster: the apiserver adds `fieldRef.apiVersion: v1` to every downward-API env var."""
    desired = {**CONTAINER, "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}
    stored = {
        **CONTAINER,
        "env": [{"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
    }
    assert is_current(pod("p", container=stored), desired)
    extra = {**stored, "env": [*stored["env"], {"name": "EXTRA", "value": "1"}]}
    assert not is_current(pod("p", container=extra), desired)  # an added variable is a different template


def test_pods_of_an_older_template_garbage_and_other_reasons_are_ignored() -> None:
    old = {**CONTAINER, "env": [{"name": "A", "value": "0"}]}
    pods = [
        pod("old", container=old, last=terminated(PARITY_MESSAGE)),  # a tolerance change replaces it
        pod("deleting", last=terminated(PARITY_MESSAGE), deleting=True),
        pod("oom", last={"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-28T10:00:00Z"}),
        pod("garbage", last=terminated("not json {")),
        pod("other", last=terminated({"status": "Failed", "reason": "Whatever", "message": "x"})),
        pod("running", state={"running": {"startedAt": "2026-11-28T10:00:00Z"}}),
    ]
    assert serving_failure(pods, CONTAINER) is None
    assert not is_current(pods[0], CONTAINER)
    assert is_current(pods[1], CONTAINER)


def test_the_latest_failure_wins_deterministically() -> None:
    early = terminated({**PARITY_MESSAGE}, at="2026-11-28T10:00:00Z")
    late = terminated(
        {"status": "Failed", "reason": "IncompatibleRuntime", "message": "compiled by neuronx-cc 2.21"},
        code=7,
        at="2026-11-28T10:05:00Z",
    )
    failure = serving_failure([pod("b", last=early), pod("a", state={"terminated": late})], CONTAINER)
    assert failure is not None
    assert (failure.reason, failure.pod) == ("IncompatibleRuntime", "a")


def test_stalled_with_the_runtime_reason_while_the_old_replicas_serve_and_the_pass_is_idempotent() -> None:
    failure = serving_failure([pod("bert-serve-new", last=terminated(PARITY_MESSAGE))], CONTAINER)
    obs = serving(observed(replicas=4, ready=3, updated=1, available=3), serving_failure=failure)
    p = Passes(ndep(), kind="deployment")
    events = p.run(obs)
    assert cond(p.body, "Stalled") == ("True", "ParityFailed")
    assert cond(p.body, "Ready") == ("False", "ParityFailed")
    assert cond(p.body, "Reconciling") == ("False", "ParityFailed")
    assert cond(p.body, "Available") == ("True", "ReplicasReady")
    stalled = next(c for c in p.body["status"]["conditions"] if c["type"] == "Stalled")
    assert "max abs error 0.731" in stalled["message"]
    assert "3 replica(s) of the previous spec" in stalled["message"]
    last = p.body["status"]["lastFailure"]
    assert (last["reason"], last["exitCode"], last["time"]) == ("ParityFailed", 6, "2026-11-28T10:00:00Z")
    assert events == [Event("Warning", "ParityFailed", stalled["message"])]
    p.assert_noop(obs)


def test_reason_vocabulary_is_one_list_runtime_operator_and_crd() -> None:
    import inspect

    from neuron_runtime import server
    from neuron_runtime.contract import ServeRefusal

    # serve_main refuses with InvalidSettings (the settings, artifact_uri) or the refusal of an exception in its table.
    named = {ServeRefusal[m] for m in re.findall(r"ServeRefusal\.(\w+)", inspect.getsource(server))}
    assert named == {refusal for _, refusal in server._REFUSALS} | {ServeRefusal.INVALID_SETTINGS}
    written = {refusal.value for refusal in named}
    assert written == set(SERVING_FAILURE_REASONS) == {r.value for r in ServeRefusal}
    listed = DEPLOYMENT_CONDITIONS_DOC.split("Stalled reasons (Stalled=True): ", 1)[1]
    assert all(reason in listed for reason in SERVING_FAILURE_REASONS)


REPORT = {
    "passed": True,
    "atol": 0.05,
    "rtol": 0.05,
    "precision": "bf16",
    "graphs": 1,
    "cases": 3,
    "workers": 2,
    "max_abs_error": 0.0123,
    "max_rel_error": 0.04,
    "elements_outside": 0,
    "worst": "graph model-b1.pt case 2 worker 0 lane 1 output 0: max abs error 0.0123, 0 element(s) outside",
}


def ready_pod(name: str, template: str = "abc123") -> dict[str, Any]:
    p = pod(name, state={"running": {"startedAt": "2026-11-28T10:00:00Z"}})
    p["metadata"]["labels"] = {"pod-template-hash": template}
    p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return p


def test_the_operator_reads_the_parity_line_the_runtime_prints() -> None:
    from neuron_runtime.parity import ParityReport

    report = ParityReport(
        passed=True,
        atol=0.05,
        rtol=0.01,
        precision="fp32",
        graphs=2,
        cases=4,
        workers=3,
        max_abs_error=0.002,
        max_rel_error=0.0005,
        elements_outside=0,
        worst="graph b4, output 0",
    )
    status = parity_status(report.log_line(), ready_pod("p1"))
    assert status is not None
    assert (status["maxAbsError"], status["maxRelError"], status["atol"], status["rtol"]) == (0.002, 0.0005, 0.05, 0.01)
    assert (status["precision"], status["cases"], status["modelCopies"], status["passed"]) == ("fp32", 4, 3, True)


def test_a_passing_parity_line_becomes_status_parity_and_garbage_does_not() -> None:
    line = f"{PARITY_LOG_PREFIX} {json.dumps(REPORT)}"
    assert parity_status(line, ready_pod("p1")) == {
        "podTemplateHash": "abc123",
        "pod": "p1",
        "passed": True,
        "maxAbsError": 0.0123,
        "maxRelError": 0.04,
        "atol": 0.05,
        "rtol": 0.05,
        "precision": "bf16",
        "cases": 3,
        "modelCopies": 2,
    }
    assert parity_status(f"{PARITY_LOG_PREFIX} {{not json", ready_pod("p1")) is None
    assert parity_status(f"{PARITY_LOG_PREFIX} {json.dumps({**REPORT, 'passed': False})}", ready_pod("p1")) is None
    assert parity_status(f"{PARITY_LOG_PREFIX} {json.dumps({'passed': True})}", ready_pod("p1")) is None


def test_only_ready_current_pods_report_parity() -> None:
    old = {**CONTAINER, "image": "local/neuron-runtime:0"}
    unready = ready_pod("a")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    pods = [ready_pod("c"), ready_pod("b"), unready, {**ready_pod("d"), "spec": {"containers": [old]}}]
    assert [p["metadata"]["name"] for p in ready_current_pods(pods, CONTAINER)] == ["b", "c"]


class LogKube:
    """Only what `_observe_parity` uses: one log read, counted."""

    def __init__(self, line: str | None) -> None:
        self.line = line
        self.reads: list[str] = []

    async def log_line(self, pod: str, namespace: str, container: str, prefix: str) -> str | None:
        assert (container, prefix) == ("runtime", PARITY_LOG_PREFIX)
        self.reads.append(pod)
        return self.line


async def test_parity_is_read_once_per_pod_template() -> None:
    from neuron_operator.reconcile import Context, _observe_parity
    from neuron_operator.settings import OperatorSettings

    kube = LogKube(f"{PARITY_LOG_PREFIX} {json.dumps(REPORT)}")
    ctx = Context(kube=kube, settings=OperatorSettings())  # type: ignore[arg-type]
    body = ndep()
    first = await _observe_parity(ctx, "ml", [ready_pod("p1")], body)
    assert first is not None
    assert first["maxAbsError"] == 0.0123
    body["status"] = {"parity": first}
    assert await _observe_parity(ctx, "ml", [ready_pod("p2")], body) == first  # same template: no read
    assert kube.reads == ["p1"]
    second = await _observe_parity(ctx, "ml", [ready_pod("p3", template="def456")], body)  # a new template
    assert second is not None
    assert second["podTemplateHash"] == "def456"
    assert kube.reads == ["p1", "p3"]
    assert await _observe_parity(ctx, "ml", [], body) == first  # no ready pod: keep what was measured


def test_status_parity_is_written_and_recomputing_it_is_a_noop() -> None:
    measured = parity_status(f"{PARITY_LOG_PREFIX} {json.dumps(REPORT)}", ready_pod("p1"))
    obs = serving(observed(replicas=3, ready=3, updated=3, available=3), parity=measured)
    p = Passes(ndep(), kind="deployment")
    p.run(obs)
    assert p.body["status"]["parity"] == measured
    p.assert_noop(obs)


def test_the_documented_parity_defaults_are_the_runtimes() -> None:
    from neuron_operator.api.deployment import Validation
    from neuron_runtime.parity import DEFAULT_TOLERANCES

    described = Validation.model_fields["atol"].description or ""
    documented = {"cpu": "cpu 1e-4", "fp32": "none 1e-3", "tf32": "tf32 and fp16 1e-2", "bf16": "bf16 5e-2"}
    documented |= {"fp16": "tf32 and fp16 1e-2", "fp8_e4m3": "fp8_e4m3 0.25"}
    assert set(documented) == set(DEFAULT_TOLERANCES)
    for precision, fragment in documented.items():
        assert fragment in described, fragment
        value = float(fragment.rsplit(" ", 1)[1])
        assert DEFAULT_TOLERANCES[precision] == (value, value), precision


def test_the_runtimes_reason_outlives_the_progress_deadline() -> None:
    """A pod that keeps failing parity also exceeds the progress deadline: the reason stays ParityFailed."""
    failure = serving_failure([pod("bert-serve-new", last=terminated(PARITY_MESSAGE))], CONTAINER)
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
    obs = serving(observed(replicas=4, ready=3, updated=1, available=3, conditions=[deadline]), serving_failure=failure)
    p = Passes(ndep(), kind="deployment")
    p.run(obs)
    assert cond(p.body, "Stalled") == ("True", "ParityFailed")
