"""The Neuron path for real on the kind cluster's SIMULATED Neuron node.

The kind worker is labelled inf2.xlarge; its simulated device plugin hands out 2 NeuronCores (sets
NEURON_RT_VISIBLE_CORES, mounts /dev/neuronN). Neuron-target compile Jobs and serving pods run the SIMULATED
Neuron runtime image (the cpu runtime image + the simulated Neuron SDK of ``e2e/neuron-sdk-sim``): the compile
Job really traces with ``torch_neuronx.trace(cpu_backend=True)`` on the control plane (no device, so calling the
graph there would raise), and the serving pod really places its graphs with the placement API on the cores the
device plugin allocated, runs the parity gate, and answers OIP v2. Failures of the serving gates reach the
NeuronDeployment as Stalled with their reason and numbers, while the previous replica keeps serving.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from operator_support import IMAGES, Operator, Store, mlp_model
from test_scenarios import apply, condition, get, wait_condition

from localcluster.kind import SIMULATED_NEURON_LABEL, KindCluster
from localcluster.wait import until

SIMULATED_NODE = {
    "nodeSelector": {SIMULATED_NEURON_LABEL: "true"},  # the kind worker (kwok's inf2 nodes run no containers)
    "tolerations": [{"key": SIMULATED_NEURON_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}


def inf2_model(name: str) -> dict[str, Any]:
    model = mlp_model(name, "inf2")
    model["spec"]["compiler"] = {"autoCast": "matmult", "autoCastType": "bf16"}
    return model


def neuron_deployment(name: str, model: str, cores: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelRef": {"name": model},
            "replicas": 1,
            "placement": {"workers": 1, "coresPerWorker": cores},
            "instanceTypes": ["inf2.xlarge"],
            "batching": {"maxBatchSize": 4, "maxDelayMs": 2},
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
            "pod": copy.deepcopy(SIMULATED_NODE),
            **spec,
        },
    }


def ready_pods(cluster: KindCluster, namespace: str, deployment: str) -> list[dict[str, Any]]:
    pods = get(cluster, namespace, "pods", "-l", f"neuron.dev/deployment={deployment}")["items"]
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def pod_get(cluster: KindCluster, pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    return cluster.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:8080/proxy{path}"
    ).stdout


def infer(cluster: KindCluster, pod: dict[str, Any], model: str, value: float = 0.5) -> dict[str, Any]:
    meta = pod["metadata"]
    body = {"id": "neuron", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [value] * 16}]}
    return cluster.post_raw(
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:8080/proxy/v2/models/{model}/infer", body
    )


def core_counts(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("neuron_runtime_neuroncore_executions_total{"):
            counts[line.split('neuroncore="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return counts


def test_inf2_compiles_without_a_device_and_serves_on_two_simulated_neuroncores(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    apply(cluster, namespace, inf2_model("mlp-inf2"))
    model = wait_condition(cluster, namespace, "nm", "mlp-inf2", "Ready", timeout=300)
    assert model["status"]["artifact"]["neuronCoreVersion"] == "v2"
    job = get(cluster, namespace, "jobs")["items"][0]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["neuron-sim"]
    log = cluster.kubectl("logs", "-n", namespace, f"job/{job['metadata']['name']}").stdout
    # A real trace in the simulated Neuron image (cpu_backend; calling the graph there would have raised).
    assert "traced batch 1" in log, log
    # The result line (stdout) and the progress lines (stderr) interleave in any order in the log.
    result = json.loads(next(line for line in log.splitlines() if line.startswith("{")))
    assert result["maxAbsError"] is None  # not measured in the Job: the parity gate measures it on the device
    assert result["compilerVersion"].endswith("+neuronsim")

    apply(cluster, namespace, neuron_deployment("serve", "mlp-inf2", cores=2))
    nd = wait_condition(cluster, namespace, "nd", "serve", "Ready", timeout=300)
    assert nd["status"]["coresPerReplica"] == 2
    (pod,) = ready_pods(cluster, namespace, "serve")
    assert pod["spec"]["nodeName"] == cluster.neuron_node
    assert pod["spec"]["containers"][0]["resources"]["limits"]["aws.amazon.com/neuroncore"] == "2"
    for value in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        answer = infer(cluster, pod, "mlp-inf2", value)
        assert answer["outputs"][0]["shape"] == [1, 4]
    parity = json.loads(pod_get(cluster, pod, "/v2/models/mlp-inf2/parity"))
    assert parity["passed"]
    assert parity["precision"] == "bf16"
    assert parity["workers"] == 2
    assert 0 < parity["max_abs_error"] <= parity["atol"] + parity["rtol"] * 100
    counts = core_counts(pod_get(cluster, pod, "/metrics"))
    # Both allocated cores ran calls: one model copy per core, one call per core at a time.
    assert len(counts) == 2, counts
    assert all(n > 0 for n in counts.values()), counts


def test_parity_and_sdk_gate_failures_stall_while_the_old_replica_serves(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    apply(cluster, namespace, inf2_model("mlp-gate"))
    wait_condition(cluster, namespace, "nm", "mlp-gate", "Ready", timeout=300)
    # One core per replica and a surge: the new pod gets the node's other core while the old one serves.
    rollout = {"maxSurge": 1, "maxUnavailable": 0}
    nd = neuron_deployment("gate", "mlp-gate", cores=1, rollout=rollout)
    apply(cluster, namespace, nd)
    wait_condition(cluster, namespace, "nd", "gate", "Ready", timeout=300)
    (old,) = ready_pods(cluster, namespace, "gate")

    # A tolerance tighter than bf16 rounding: the new pod's parity gate fails on the device.
    strict = copy.deepcopy(nd)
    strict["spec"]["validation"] = {"atol": 1e-9, "rtol": 0}
    apply(cluster, namespace, strict)
    stalled = wait_condition(cluster, namespace, "nd", "gate", "Stalled", timeout=300)
    cond = condition(stalled, "Stalled")
    assert cond["reason"] == "ParityFailed", cond
    assert "max abs error" in cond["message"]
    assert "atol 1e-09" in cond["message"]
    assert stalled["status"]["lastFailure"]["reason"] == "ParityFailed"
    assert stalled["status"]["lastFailure"]["exitCode"] == 6
    assert condition(stalled, "Ready")["status"] == "False"
    # The old replica still answers.
    assert [p["metadata"]["name"] for p in ready_pods(cluster, namespace, "gate")] == [old["metadata"]["name"]]
    assert infer(cluster, old, "mlp-gate")["outputs"][0]["shape"] == [1, 4]

    # Back to the default tolerance: the rollout completes and the failure is no longer Stalled.
    apply(cluster, namespace, nd)
    wait_condition(cluster, namespace, "nd", "gate", "Ready", timeout=300)

    # An image with an older (simulated) Neuron SDK than the one that compiled the artifact: the SDK gate.
    old_sdk = copy.deepcopy(nd)
    old_sdk["spec"]["image"] = IMAGES["neuron-sim-old-sdk"]
    apply(cluster, namespace, old_sdk)
    stalled = wait_condition(cluster, namespace, "nd", "gate", "Stalled", timeout=300)
    cond = condition(stalled, "Stalled")
    assert cond["reason"] == "IncompatibleRuntime", cond
    assert "newer than this image" in cond["message"]
    until(
        lambda: len(ready_pods(cluster, namespace, "gate")) == 1,
        timeout=60,
        what="the previous replica to keep serving",
    )
