"""The Argo CD health checks shipped in the chart (charts/neuron-operator/argocd/health.lua), run on sample
NeuronModel / NeuronDeployment objects with Lua 5.1 (Argo CD's gopher-lua speaks 5.1).

Needs the `lupa` package (PyPI, bundles Lua 5.1); without it these tests skip. The expected mapping is the
one in the chart README ("Argo CD").
"""

from __future__ import annotations

from typing import Any

import pytest
from chartkit import CHART

lua51 = pytest.importorskip("lupa.lua51", reason="lupa (Lua for Python) is not installed")

# One script serves both kinds (they share the condition conventions).
SCRIPTS = {"NeuronModel": CHART / "argocd" / "health.lua", "NeuronDeployment": CHART / "argocd" / "health.lua"}


def cond(type_: str, status: str, reason: str = "Reason", generation: int | None = 3, message: str = "") -> dict:
    c: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def obj(kind: str, conditions: list[dict] | None, observed: int | None = 3, generation: int = 3) -> dict:
    o: dict[str, Any] = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "m", "namespace": "ns", "generation": generation},
    }
    if conditions is not None:
        o["status"] = {"conditions": conditions}
        if observed is not None:
            o["status"]["observedGeneration"] = observed
    return o


def health(kind: str, o: dict) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(o, recursive=True)
    # Argo CD runs the script as a chunk with `obj` set and reads the table it returns.
    result = runtime.execute(SCRIPTS[kind].read_text())
    return result["status"], result["message"]


BOTH = pytest.mark.parametrize("kind", sorted(SCRIPTS))


@BOTH
def test_ready_is_healthy(kind: str) -> None:
    o = obj(kind, [cond("Ready", "True", "Compiled"), cond("Reconciling", "False"), cond("Stalled", "False")])
    assert health(kind, o) == ("Healthy", "Compiled")


@BOTH
def test_stalled_is_degraded_with_reason_and_message(kind: str) -> None:
    o = obj(
        kind,
        [
            cond("Ready", "False", "CompileFailed"),
            cond("Stalled", "True", "CompileFailed", message="neuronx-cc exited 70"),
        ],
    )
    assert health(kind, o) == ("Degraded", "CompileFailed: neuronx-cc exited 70")


@BOTH
def test_reconciling_is_progressing(kind: str) -> None:
    o = obj(
        kind, [cond("Ready", "False", "Pending"), cond("Reconciling", "True", "Compiling"), cond("Stalled", "False")]
    )
    assert health(kind, o) == ("Progressing", "Compiling")


@BOTH
def test_ready_and_still_reconciling_is_progressing(kind: str) -> None:
    o = obj(kind, [cond("Ready", "True", "ReplicasReady"), cond("Reconciling", "True", "Scaling")])
    assert health(kind, o)[0] == "Progressing"


@BOTH
@pytest.mark.parametrize(
    "o_factory",
    [
        # the operator has not written status yet
        lambda kind: obj(kind, None),
        lambda kind: obj(kind, []),
        # the spec changed (generation 4) but the status is from generation 3
        lambda kind: obj(kind, [cond("Ready", "True")], observed=3, generation=4),
        # no observedGeneration at all: nothing says the status is about this spec
        lambda kind: obj(kind, [cond("Ready", "True", generation=None)], observed=None),
        # status caught up but the Ready condition is stale
        lambda kind: obj(kind, [cond("Ready", "True", generation=3)], observed=4, generation=4),
    ],
    ids=["no-status", "no-conditions", "stale-status", "no-observed-generation", "stale-ready"],
)
def test_not_yet_observed_is_progressing_never_healthy(kind: str, o_factory: Any) -> None:
    status, message = health(kind, o_factory(kind))
    assert status == "Progressing"
    assert "Waiting for the operator" in message


@BOTH
def test_stale_stalled_does_not_degrade(kind: str) -> None:
    """A Stalled=True from an older generation says nothing about the new spec."""
    o = obj(
        kind,
        [cond("Stalled", "True", "InvalidSpec", generation=3), cond("Ready", "False", generation=3)],
        observed=4,
        generation=4,
    )
    assert health(kind, o)[0] == "Progressing"


def test_suspended_deployment() -> None:
    o = obj(
        "NeuronDeployment",
        [cond("Ready", "False", "Suspended"), cond("Reconciling", "False"), cond("Stalled", "False")],
    )
    assert health("NeuronDeployment", o) == ("Suspended", "Suspended")
    # a NeuronModel has no suspend: the same conditions only mean "not ready yet"
    assert health("NeuronModel", {**o, "kind": "NeuronModel"})[0] == "Progressing"


@BOTH
def test_ready_false_is_progressing_with_its_reason(kind: str) -> None:
    o = obj(kind, [cond("Ready", "False", "ModelNotReady", message="model m is compiling")])
    assert health(kind, o) == ("Progressing", "ModelNotReady: model m is compiling")


# --------------------------------------------------------------------------------------------------
# canary rollouts and autoscaling (NeuronDeployment): the conditions the operator writes in each state
# --------------------------------------------------------------------------------------------------

CANARY_STEP = "canary step 1/3 (25% of pods): measuring the canary; step holds 80s more; 4 ready, 4 available, 4 pods"
CANARY_ABORT = (
    "canary aborted at step 2/3 (weight 50%): canary error ratio 0.0800 (8/100) vs stable 0.0000 (0/300): exceeds "
    "the stable pods' by more than maxErrorRatio 0.01 (4 replica(s) of the previous spec keep serving)"
)


def test_canary_progressing_is_progressing_with_its_message() -> None:
    o = obj(
        "NeuronDeployment",
        [
            cond("Ready", "False", "CanaryProgressing", message=CANARY_STEP),
            cond("Reconciling", "True", "CanaryProgressing", message=CANARY_STEP),
            cond("Stalled", "False", "CanaryProgressing"),
            cond("Available", "True", "ReplicasReady", message="4 of 4 replicas available"),
        ],
    )
    assert health("NeuronDeployment", o) == ("Progressing", f"CanaryProgressing: {CANARY_STEP}")


def test_canary_aborted_is_degraded_with_its_message() -> None:
    """The stable pods still serve (Available=True), but the change did not go out: Degraded until the spec changes."""
    o = obj(
        "NeuronDeployment",
        [
            cond("Ready", "False", "CanaryAborted", message=CANARY_ABORT),
            cond("Reconciling", "False", "CanaryAborted"),
            cond("Stalled", "True", "CanaryAborted", message=CANARY_ABORT),
            cond("Available", "True", "ReplicasReady", message="4 of 4 replicas available"),
        ],
    )
    assert health("NeuronDeployment", o) == ("Degraded", f"CanaryAborted: {CANARY_ABORT}")


def test_canary_promoted_is_healthy() -> None:
    o = obj(
        "NeuronDeployment",
        [
            cond("Ready", "True", "ReplicasReady", message="4/4 replicas ready on the current artifact"),
            cond("Reconciling", "False", "Reconciled"),
            cond("Stalled", "False", "Reconciled"),
        ],
    )
    o["status"]["canary"] = {"phase": "Promoted", "step": 3, "steps": 3, "summary": "Promoted"}
    assert health("NeuronDeployment", o) == ("Healthy", "ReplicasReady: 4/4 replicas ready on the current artifact")


@pytest.mark.parametrize("reason", ["MaxReplicas", "InsufficientNeuronCores"])
def test_scaling_limited_does_not_change_health(reason: str) -> None:
    """ScalingLimited=True says the autoscaler wants more than it may have; the replicas it has serve: Healthy. The
    script must not read ScalingLimited at all: the same object without it gets exactly the same verdict."""
    base = [
        cond("Ready", "True", "ReplicasReady", message="4/4 replicas ready on the current artifact"),
        cond("Reconciling", "False", "Reconciled"),
        cond("Stalled", "False", "Reconciled"),
    ]
    limited = cond("ScalingLimited", "True", reason, message="the load asks for more than maxReplicas 4: 6 wanted")
    with_limit = health("NeuronDeployment", obj("NeuronDeployment", [*base, limited]))
    assert with_limit == ("Healthy", "ReplicasReady: 4/4 replicas ready on the current artifact")
    assert with_limit == health("NeuronDeployment", obj("NeuronDeployment", base))
    # not even when it is the only condition that could say anything: no verdict comes from it
    alone = health("NeuronDeployment", obj("NeuronDeployment", [limited]))
    assert alone == health("NeuronDeployment", obj("NeuronDeployment", []))
    assert "ScalingLimited" not in SCRIPTS["NeuronDeployment"].read_text()
