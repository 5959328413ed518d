"""The F4 scenarios against the real local control plane with the operator running as a subprocess.

Compile Jobs really run in containers of the runtime image on the kind node labelled
``neuron.dev/local-exec`` (``cpu`` target: ``torch.jit.trace``); runtime pods of cpu models really serve
there; pods of Neuron models are placed by the real scheduler on the simulated kwok
fleet. Neuron artifacts are produced by the runtime's real compile path with the SIMULATED Neuron SDK
(``e2e/neuron-sdk-sim``, installed into a temporary directory) and then found by the operator's compile Job as a
storage cache hit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from operator_support import EXEC_NODE_SELECTOR, EXEC_NODE_TOLERATIONS, Operator, Store, mlp_model

from localcluster.kind import KindCluster
from localcluster.wait import until
from neuron_operator.api import NeuronModel
from neuron_operator.catalogue import INSTANCE_TYPE_LABEL
from neuron_operator.resources.compile import compile_request
from neuron_sim import shared_sim, sim_env

REPO = Path(__file__).resolve().parents[2]
#: The simulated Neuron SDK release the seeded Neuron artifacts are compiled with (installed once per session).
NEURON_SIM_SDK = "2.31.1"


def get(cluster: KindCluster, namespace: str, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", "-n", namespace, *args, "-o", "json").stdout)


def apply(cluster: KindCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def wait_condition(
    cluster: KindCluster,
    namespace: str,
    kind: str,
    name: str,
    type_: str,
    status: str = "True",
    timeout: float = 180,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, kind, name)
        c = condition(obj, type_)
        gen_ok = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        return obj if c and c["status"] == status and gen_ok else None

    return until(probe, timeout=timeout, interval=0.5, what=f"{kind}/{name} {type_}={status}")


def cpu_model(name: str, classes: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"python": {"factory": "neuron_runtime.zoo:small_cnn", "args": {"classes": classes}}},
            "inputs": [{"name": "x", "shape": [2, 3, 32, 32], "dtype": "float32"}],
            "batchSize": 2,
            "dynamicBatch": True,
            "target": "cpu",
            "modelFamily": "cnn",
        },
    }


def exec_deployment(name: str, model: str) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelRef": {"name": model},
            "replicas": 1,
            "placement": {"workers": 1, "coresPerWorker": 1},
            "batching": {"maxBatchSize": 4, "maxDelayMs": 2},
            "pod": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
        },
    }


def seed_neuron_artifact(store: Store, operator: Operator, manifest: dict[str, Any]) -> str:
    """Compile ``manifest`` with the real runtime compile path and the simulated Neuron SDK into the store."""
    body = copy.deepcopy(manifest)
    body["metadata"] |= {"namespace": store.namespace, "uid": "seed", "generation": 1}
    request = compile_request(NeuronModel.model_validate(body), operator.settings)
    env = sim_env(shared_sim(NEURON_SIM_SDK))
    env.pop("NEURON_PLATFORM_TARGET_OVERRIDE", None)  # the runtime sets it for the CPU-backend compile
    subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_runtime.cli",
            "compile",
            "--request-json",
            request.model_dump_json(),
            "--output-root",
            str(store.path),
            "--termination-log",
            str(store.path / "seed-result.json"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    result = json.loads((store.path / "seed-result.json").read_text())
    assert result["status"] == "Succeeded", result
    return request.cache_key()


def events(cluster: KindCluster, namespace: str, name: str) -> list[str]:
    items = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def jobs(cluster: KindCluster, namespace: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in get(cluster, namespace, "jobs")["items"])


def infer(cluster: KindCluster, pod: dict[str, Any], model: str) -> dict[str, Any]:
    """One OIP v2 request to ``pod`` through the apiserver's pod proxy (pod IPs are not routed to the host)."""
    body = {
        "id": "scenario",
        "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * (3 * 32 * 32)}],
    }
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:8080/proxy/v2/models/{model}/infer"
    return cluster.post_raw(path, body)


def test_compile_serve_rollout_revert_drift_and_noop(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    """The whole cpu path, then a model change (rolling update), a Git revert (cache hit, no new Job),
    drift repair, a no-op resync that writes nothing, and garbage collection."""
    apply(cluster, namespace, cpu_model("cnn"))
    model = wait_condition(cluster, namespace, "nm", "cnn", "Ready")
    artifact = model["status"]["artifact"]
    key1 = model["status"]["cacheKey"]
    # The sha256 in status is the real digest of the manifest the compile Job wrote.
    manifest = store.path / key1 / "manifest.json"
    assert artifact["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert artifact["uri"] == f"pvc://neuron-artifacts/{key1}"
    assert {"Compiling", "Compiled"} <= set(events(cluster, namespace, "cnn"))
    assert jobs(cluster, namespace) == [f"compile-{key1[:20]}"]

    apply(cluster, namespace, exec_deployment("cnn", "cnn"))
    nd = wait_condition(cluster, namespace, "nd", "cnn", "Ready")
    assert nd["status"]["model"] == {"name": "cnn", "sha256": artifact["sha256"], "cacheKey": key1}
    assert nd["status"]["selector"] == "neuron.dev/deployment=cnn"
    pod = get(cluster, namespace, "pods", "-l", "neuron.dev/deployment=cnn")["items"][0]
    answer = infer(cluster, pod, "cnn")
    assert answer["id"] == "scenario"
    assert answer["outputs"][0]["shape"] == [1, 10]
    assert "ReplicasReady" in events(cluster, namespace, "cnn")

    # A pass with nothing to change writes nothing: wait for two resync passes of each kind. The operator
    # watches every namespace, so first let other tests' namespaces finish terminating (their objects'
    # reconciles would write, or try to).
    until(
        lambda: (
            not [
                n
                for n in json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
                if n["status"].get("phase") == "Terminating"
            ]
        ),
        timeout=120,
        what="no namespace left terminating",
    )
    before_writes = operator.writes()
    passes = {k: operator.passes(k) for k in ("NeuronModel", "NeuronDeployment")}
    until(
        lambda: all(operator.passes(k) >= passes[k] + 2 for k in passes),
        timeout=30,
        what="two resync passes per kind",
    )
    assert operator.writes() == before_writes

    # Drift: a hand-edited replica count is restored; a deleted Deployment is recreated.
    cluster.kubectl("scale", "-n", namespace, "deployment/cnn", "--replicas=3")
    until(
        lambda: get(cluster, namespace, "deployment", "cnn")["spec"]["replicas"] == 1,
        what="replicas restored",
    )
    uid = get(cluster, namespace, "deployment", "cnn")["metadata"]["uid"]
    cluster.kubectl("delete", "-n", namespace, "deployment/cnn", "--wait=false")
    until(
        lambda: (
            (d := cluster.kubectl("get", "-n", namespace, "deployment", "cnn", "-o", "json", check=False))
            and d.returncode == 0
            and json.loads(d.stdout)["metadata"]["uid"] != uid
        ),
        what="the Deployment to be recreated",
    )

    # Model change: a new key, a new Job, a rolling update of the runtime to the new artifact.
    changed = cpu_model("cnn", classes=12)
    apply(cluster, namespace, changed)
    model2 = wait_condition(cluster, namespace, "nm", "cnn", "Ready")
    key2 = model2["status"]["cacheKey"]
    assert key2 != key1
    assert len(jobs(cluster, namespace)) == 2
    reconciling = until(
        lambda: (c := condition(get(cluster, namespace, "nd", "cnn"), "Reconciling")) and c["status"] == "True" and c,
        timeout=60,
        what="the NeuronDeployment to report the rollout",
    )
    assert reconciling["reason"] in ("RollingOut", "ReplicasUnavailable", "Scaling")
    nd2 = until(
        lambda: (
            (o := get(cluster, namespace, "nd", "cnn"))["status"].get("model", {}).get("cacheKey") == key2
            and condition(o, "Ready")["status"] == "True"
            and o
        ),
        timeout=180,
        what="the rollout to the new artifact",
    )
    new_sha = nd2["status"]["model"]["sha256"]
    pods = get(cluster, namespace, "pods", "-l", "neuron.dev/deployment=cnn")["items"]
    current = [
        p
        for p in pods
        if p["metadata"]["annotations"].get("neuron.dev/artifact-sha256") == new_sha
        and not p["metadata"].get("deletionTimestamp")
    ]
    assert len(current) == 1
    assert infer(cluster, current[0], "cnn")["outputs"][0]["shape"] == [1, 12]
    assert nd2["status"]["updatedReplicas"] == 1

    # Git revert: back to the first spec is a cache hit on the existing Job; no new Job.
    apply(cluster, namespace, cpu_model("cnn", classes=10))
    until(
        lambda: (
            (o := get(cluster, namespace, "nm", "cnn"))["status"].get("cacheKey") == key1
            and condition(o, "Ready")["status"] == "True"
        ),
        timeout=60,
        what="the reverted model to be Ready",
    )
    assert len(jobs(cluster, namespace)) == 2
    wait_condition(cluster, namespace, "nd", "cnn", "Ready")
    assert get(cluster, namespace, "nd", "cnn")["status"]["model"]["cacheKey"] == key1

    # Delete: the children are garbage-collected.
    cluster.kubectl("delete", "-n", namespace, "nd/cnn", "nm/cnn")
    until(
        lambda: not get(cluster, namespace, "deployments,services,poddisruptionbudgets,jobs")["items"],
        timeout=60,
        what="garbage collection of every child",
    )


def test_identical_models_share_one_compile_job(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    for i in range(5):
        apply(cluster, namespace, cpu_model(f"twin-{i}"))
    keys = set()
    for i in range(5):
        keys.add(wait_condition(cluster, namespace, "nm", f"twin-{i}", "Ready")["status"]["cacheKey"])
    assert len(keys) == 1
    assert jobs(cluster, namespace) == [f"compile-{keys.pop()[:20]}"]


def _nodes_of(cluster: KindCluster, namespace: str, selector: str) -> set[str]:
    pods = get(cluster, namespace, "pods", "-l", selector)["items"]
    types = set()
    for p in pods:
        node = json.loads(cluster.kubectl("get", "node", p["spec"]["nodeName"], "-o", "json").stdout)
        types.add(node["metadata"]["labels"][INSTANCE_TYPE_LABEL])
    return types


def test_neuron_placement_on_the_simulated_fleet(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    inf2 = mlp_model("mlp-inf2", "inf2")
    key = seed_neuron_artifact(store, operator, inf2)
    apply(cluster, namespace, inf2)
    model = wait_condition(cluster, namespace, "nm", "mlp-inf2", "Ready")
    assert model["status"]["cacheKey"] == key
    assert model["status"]["artifact"]["neuronCoreVersion"] == "v2"
    assert condition(model, "ArtifactReady")["reason"] == "CacheHit"  # the Job found it in storage

    big = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "big"},
        "spec": {
            "modelRef": {"name": "mlp-inf2"},
            "replicas": 3,
            "placement": {"workers": 6, "coresPerWorker": 2},
        },
    }
    apply(cluster, namespace, big)
    nd = wait_condition(cluster, namespace, "nd", "big", "Ready", timeout=120)
    assert nd["status"]["coresPerReplica"] == 12
    dep = get(cluster, namespace, "deployment", "big")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["aws.amazon.com/neuroncore"] == "12"
    assert dep["spec"]["template"]["spec"]["schedulerName"] == "my-scheduler"  # 1 < 12 < node cores
    # Not trn1.32xlarge: the Neuron scheduler extension refuses 6 devices there (1, 4, 8 or 16 only).
    assert _nodes_of(cluster, namespace, "neuron.dev/deployment=big") <= {"inf2.24xlarge", "inf2.48xlarge"}

    # An inf1 (NeuronCore-v1) artifact never lands on inf2: asking for inf2 only is Stalled with no pods ...
    inf1 = mlp_model("mlp-inf1", "inf1")
    seed_neuron_artifact(store, operator, inf1)
    apply(cluster, namespace, inf1)
    wait_condition(cluster, namespace, "nm", "mlp-inf1", "Ready")
    wrong = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "wrong"},
        "spec": {"modelRef": {"name": "mlp-inf1"}, "instanceTypes": ["inf2.xlarge", "inf2.48xlarge"]},
    }
    apply(cluster, namespace, wrong)
    stalled = wait_condition(cluster, namespace, "nd", "wrong", "Stalled")
    assert condition(stalled, "Stalled")["reason"] == "IncompatibleArtifact"
    assert cluster.kubectl("get", "-n", namespace, "deployment", "wrong", check=False).returncode != 0
    # ... and without a list it goes to inf1 nodes only.
    right = {
        **wrong,
        "metadata": {"name": "right"},
        "spec": {"modelRef": {"name": "mlp-inf1"}, "replicas": 2},
    }
    apply(cluster, namespace, right)
    wait_condition(cluster, namespace, "nd", "right", "Ready", timeout=120)
    assert _nodes_of(cluster, namespace, "neuron.dev/deployment=right") == {"inf1.xlarge"}

    # Infeasible: 40 cores per replica fit no v2 instance type.
    huge = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "huge"},
        "spec": {"modelRef": {"name": "mlp-inf2"}, "placement": {"workers": 20, "coresPerWorker": 2}},
    }
    apply(cluster, namespace, huge)
    stalled = wait_condition(cluster, namespace, "nd", "huge", "Stalled")
    assert condition(stalled, "Stalled")["reason"] == "InsufficientNeuronCores"
    assert "spec.placement" in condition(stalled, "Stalled")["message"]
    assert cluster.kubectl("get", "-n", namespace, "deployment", "huge", check=False).returncode != 0
    assert "InsufficientNeuronCores" in events(cluster, namespace, "huge")

    # Infeasible too: 4 cores (2 devices) on trn1.32xlarge, a size the Neuron scheduler extension refuses.
    torus = {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": "torus"},
        "spec": {
            "modelRef": {"name": "mlp-inf2"},
            "instanceTypes": ["trn1.32xlarge"],
            "placement": {"workers": 2, "coresPerWorker": 2},
        },
    }
    apply(cluster, namespace, torus)
    stalled = wait_condition(cluster, namespace, "nd", "torus", "Stalled")
    assert condition(stalled, "Stalled")["reason"] == "UnsupportedTopology"
    assert "1, 4, 8 or 16 devices" in condition(stalled, "Stalled")["message"]
    assert cluster.kubectl("get", "-n", namespace, "deployment", "torus", check=False).returncode != 0


def test_architecture_fit_and_missing_model(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    decoder = mlp_model("gpt-inf1", "inf1")
    decoder["spec"]["modelFamily"] = "decoder"
    apply(cluster, namespace, decoder)
    model = wait_condition(cluster, namespace, "nm", "gpt-inf1", "Stalled")
    assert condition(model, "ArchitectureFit")["status"] == "False"
    assert "UnsupportedArchitecture" in events(cluster, namespace, "gpt-inf1")
    assert jobs(cluster, namespace) == []  # nothing is compiled for an unsupported architecture

    apply(cluster, namespace, exec_deployment("orphan", "does-not-exist"))
    nd = wait_condition(cluster, namespace, "nd", "orphan", "Ready", status="False")
    assert condition(nd, "Ready")["reason"] == "ModelNotFound"
    assert cluster.kubectl("get", "-n", namespace, "deployment", "orphan", check=False).returncode != 0


def test_batching_beyond_a_static_artifact_is_refused(
    cluster: KindCluster, operator: Operator, store: Store, namespace: str
) -> None:
    model = cpu_model("static")
    model["spec"]["dynamicBatch"] = False  # traced at batch 2 and nothing else
    apply(cluster, namespace, model)
    wait_condition(cluster, namespace, "nm", "static", "Ready")
    nd = exec_deployment("static", "static")  # maxBatchSize 4 > 2
    apply(cluster, namespace, nd)
    stalled = wait_condition(cluster, namespace, "nd", "static", "Stalled")
    assert condition(stalled, "Stalled")["reason"] == "InvalidSpec"
    assert "spec.batching.maxBatchSize" in condition(stalled, "Stalled")["message"]
    assert cluster.kubectl("get", "-n", namespace, "deployment", "static", check=False).returncode != 0
