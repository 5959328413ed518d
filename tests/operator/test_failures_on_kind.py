"""Every failure reaches status, on the real control plane: the reason, the real message, a Warning Event, within
a bounded time; and the status of a NeuronDeployment keeps describing what serves while its model recompiles.

Each scenario prints ``FAILURE_TO_STALLED reason=<Reason> seconds=<s>`` (from the apply to the Stalled
condition, as seen by polling) so the figures can be quoted.
"""

from __future__ import annotations

import json
import time
from typing import Any

from operator_support import ARTIFACT_PVC, Operator, Store, create_store
from test_scenarios import apply, condition, cpu_model, events, exec_deployment, get, wait_condition

from localcluster.kind import KindCluster
from localcluster.wait import until


def stalled_with(
    cluster: KindCluster, namespace: str, kind: str, name: str, reason: str, timeout: float = 180
) -> dict[str, Any]:
    """Wait for Stalled=True with ``reason``; print the time it took."""
    start = time.monotonic()

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, kind, name)
        c = condition(obj, "Stalled")
        return obj if c and c["status"] == "True" and c["reason"] == reason else None

    obj = until(probe, timeout=timeout, interval=0.5, what=f"{kind}/{name} Stalled={reason}")
    print(f"FAILURE_TO_STALLED reason={reason} seconds={time.monotonic() - start:.1f}")
    assert reason in events(cluster, namespace, name), "a Warning Event names the reason"
    return obj


def test_a_missing_artifact_claim_is_stalled_then_recovers_by_itself(
    cluster: KindCluster, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, cpu_model("noclaim"))
    obj = stalled_with(cluster, namespace, "nm", "noclaim", "ArtifactClaimMissing")
    message = condition(obj, "Stalled")["message"]
    assert message.startswith(f"PersistentVolumeClaim {ARTIFACT_PVC} ")  # the head of the message, not its tail
    assert "create it" in message
    assert get(cluster, namespace, "jobs")["items"] == []  # no Job left waiting in Pending
    path = cluster.shared_dir / f"{namespace}-late-artifacts"
    path.mkdir()
    create_store(cluster, namespace, path)
    wait_condition(cluster, namespace, "nm", "noclaim", "Ready", timeout=240)


def test_compile_pods_that_cannot_start_or_are_oom_killed(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    huge = cpu_model("huge")
    huge["spec"]["compiler"] = {"resources": {"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}}
    apply(cluster, namespace, huge)
    obj = stalled_with(cluster, namespace, "nm", "huge", "Unschedulable")
    assert "Insufficient cpu" in condition(obj, "Stalled")["message"]
    assert condition(obj, "Reconciling")["status"] == "False"

    pull = cpu_model("pull", classes=11)
    pull["spec"]["compiler"] = {"image": "local/neuron-runtime-does-not-exist:0"}
    apply(cluster, namespace, pull)
    obj = stalled_with(cluster, namespace, "nm", "pull", "ImagePullFailed")
    assert "local/neuron-runtime-does-not-exist:0" in condition(obj, "Stalled")["message"]

    oom = cpu_model("oom", classes=12)
    oom["spec"]["compiler"] = {
        "resources": {"requests": {"cpu": "100m", "memory": "48Mi"}, "limits": {"memory": "48Mi"}}
    }
    apply(cluster, namespace, oom)
    obj = stalled_with(cluster, namespace, "nm", "oom", "OOMKilled", timeout=300)
    assert obj["status"]["lastFailure"]["reason"] == "OOMKilled"
    assert "memory limit" in condition(obj, "Stalled")["message"]


def test_serving_failures_reach_the_neurondeployment(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    apply(cluster, namespace, cpu_model("cnn"))
    wait_condition(cluster, namespace, "nm", "cnn", "Ready", timeout=240)

    # The apiserver rejects the child Deployment (an invalid annotation key): its message reaches status.
    rejected = exec_deployment("rejected", "cnn")
    rejected["spec"]["pod"]["annotations"] = {"not a valid key!": "x"}
    apply(cluster, namespace, rejected)
    obj = stalled_with(cluster, namespace, "nd", "rejected", "ApplyRejected")
    assert "Deployment rejected rejected by the apiserver" in condition(obj, "Stalled")["message"]
    assert "Invalid value" in condition(obj, "Stalled")["message"]

    # Pods that no node can take: the scheduler's message.
    pending = exec_deployment("pending", "cnn")
    pending["spec"]["pod"]["nodeSelector"] = {"neuron.dev/no-such-node": "true"}
    apply(cluster, namespace, pending)
    obj = stalled_with(cluster, namespace, "nd", "pending", "Unschedulable")
    assert "node affinity/selector" in condition(obj, "Stalled")["message"]
    assert condition(obj, "Schedulable")["status"] == "False"
    assert condition(obj, "Available") is not None
    assert condition(obj, "Available")["status"] == "False"
    assert obj["status"]["availableReplicas"] == 0

    # The fix is a spec edit; the NeuronDeployment recovers by itself.
    apply(cluster, namespace, exec_deployment("rejected", "cnn"))  # kubectl apply drops the key it set
    wait_condition(cluster, namespace, "nd", "rejected", "Ready", timeout=240)


def test_model_failed_or_missing_is_stalled_and_recovers_when_the_model_is_ready(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    apply(cluster, namespace, exec_deployment("waits", "later"))
    obj = stalled_with(cluster, namespace, "nd", "waits", "ModelNotFound")
    assert condition(obj, "Reconciling")["status"] == "False"  # Argo CD: Degraded, not Progressing

    broken = cpu_model("later")
    broken["spec"]["source"] = {"python": {"factory": "neuron_runtime.zoo:no_such_factory"}}
    apply(cluster, namespace, broken)
    wait_condition(cluster, namespace, "nm", "later", "Stalled", timeout=240)
    obj = stalled_with(cluster, namespace, "nd", "waits", "ModelFailed")
    assert "NeuronModel later is Stalled" in condition(obj, "Stalled")["message"]

    apply(cluster, namespace, cpu_model("later"))  # fixed in Git
    wait_condition(cluster, namespace, "nd", "waits", "Ready", timeout=300)


def test_status_keeps_describing_the_serving_replicas_while_the_model_recompiles(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    apply(cluster, namespace, cpu_model("cnn"))
    nd = exec_deployment("serve", "cnn")
    apply(cluster, namespace, nd)
    ready = wait_condition(cluster, namespace, "nd", "serve", "Ready", timeout=300)
    served = ready["status"]["model"]
    assert ready["status"]["rollout"]["strategy"] == "Surge"  # cpu replicas surge by default

    apply(cluster, namespace, cpu_model("cnn", classes=7))  # a new artifact: a compile Job runs first

    def recompiling() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "nd", "serve")
        c = condition(obj, "Reconciling")
        return obj if c and c["status"] == "True" and c["reason"] == "ModelNotReady" else None

    obj = until(recompiling, timeout=120, interval=0.2, what="the NeuronDeployment to wait for the new artifact")
    status = obj["status"]
    assert (status["replicas"], status["availableReplicas"], status["readySummary"]) == (1, 1, "1/1")
    assert status["model"] == served  # the artifact that still serves
    assert status["selector"] == "neuron.dev/deployment=serve"
    assert status["endpoint"].startswith("http://serve.")
    assert condition(obj, "Available")["status"] == "True"
    assert "1 replica(s) of the previous spec keep serving" in condition(obj, "Reconciling")["message"]
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/neuron.dev/v1alpha1/namespaces/{namespace}/neurondeployments/serve/scale"
        ).stdout
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"], scale["status"]["selector"]) == (
        1,
        1,
        "neuron.dev/deployment=serve",
    )

    rolled = until(
        lambda: (
            o
            if (o := get(cluster, namespace, "nd", "serve"))["status"].get("model", {}).get("sha256")
            != served["sha256"]
            and (condition(o, "Ready") or {}).get("status") == "True"
            else None
        ),
        timeout=300,
        interval=0.5,
        what="the rollout to the new artifact",
    )
    assert "ArtifactChanged" in events(cluster, namespace, "serve")
    assert rolled["status"]["readySummary"] == "1/1"
