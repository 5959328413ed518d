"""``helm upgrade`` of the chart rolls with 1 and 2 operator replicas, on the local kind cluster.

The chart installed with the operator image built on this machine (as ``test_images_on_kind``), scoped to a
fresh namespace, then upgraded with a value that changes the pod template. The rollout must finish: a new pod
is Ready as a standby (``/readyz`` needs no Lease), then an old pod gets SIGTERM and releases the Lease, and a
new pod takes it. Afterwards every pod is new and Ready, none restarted, and exactly one holds the Lease: the
Lease says so and so do the pods' own ``neuron_operator_leader`` gauges (read through the apiserver's pod
proxy). Prints ``HELM_UPGRADE_ROLLOUT_SECONDS_<replicas>=...``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, run_helm

from localcluster.kind import EXEC_LABEL, KindCluster
from localcluster.wait import until

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1", reason="installs the images built on this machine"
    ),
]
EXEC = {EXEC_LABEL: "true"}
EXEC_TOLERATIONS = [{"key": EXEC_LABEL, "operator": "Exists"}]
ROLLOUT_TIMEOUT = 300


def _image(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag}


def _pods(cluster: KindCluster, namespace: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=neuron-operator,app.kubernetes.io/instance={release}"
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def _holder(cluster: KindCluster, namespace: str) -> str | None:
    leases = json.loads(cluster.kubectl("get", "leases", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(leases) <= 1, [lease["metadata"]["name"] for lease in leases]
    return (leases[0]["spec"].get("holderIdentity") or None) if leases else None


def _leader_gauge(cluster: KindCluster, namespace: str, pod: str, port: int) -> float:
    """The pod's own ``neuron_operator_leader`` gauge, read through the apiserver's pod proxy."""
    text = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics").stdout
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("neuron_operator_leader{")]
    assert len(values) == 1, values
    return values[0]


def _dump(cluster: KindCluster, namespace: str) -> None:
    """What happened, for a failed rollout: pods, events, and each operator pod's log."""
    print(cluster.kubectl("get", "pods,leases", "-n", namespace, "-o", "wide", check=False).stdout)
    print(cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout[-6000:])
    for pod in json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]:
        name = pod["metadata"]["name"]
        print(f"--- {name}\n" + cluster.kubectl("logs", "-n", namespace, name, "--tail=60", check=False).stdout)


def _helm(helm: Path, cluster: KindCluster, verb: str, release: str, namespace: str, values: Path) -> None:
    run_helm(helm, verb, release, str(CHART), "--namespace", namespace, "--values", str(values), env=cluster.env())


@pytest.mark.timeout(900)
@pytest.mark.parametrize("replicas", [1, 2])
def test_helm_upgrade_rolls(cluster: KindCluster, helm: Path, tmp_path: Path, replicas: int) -> None:
    namespace = f"upgrade-{replicas}-{uuid.uuid4().hex[:6]}"
    release = f"upg{replicas}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    values: dict[str, Any] = {
        "replicas": replicas,
        "image": _image(cluster.images["operator"]),
        "runtimeImages": {"cpu": _image(cluster.images["runtime"])},
        "watchNamespaces": [namespace],  # scoped: it must not fight other operators on the cluster
        "nodeSelector": EXEC,
        "tolerations": EXEC_TOLERATIONS,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    deployment = f"deployment/{release}-neuron-operator"
    metrics_port = 8080
    try:
        _helm(helm, cluster, "install", release, namespace, values_file)
        cluster.kubectl("rollout", "status", "-n", namespace, deployment, f"--timeout={ROLLOUT_TIMEOUT}s", timeout=400)
        old = {p["metadata"]["name"] for p in _pods(cluster, namespace, release)}
        assert len(old) == replicas
        assert all(_ready(p) for p in _pods(cluster, namespace, release)), "a standby is Ready without the Lease"
        until(lambda: _holder(cluster, namespace) in old, timeout=120, what="an installed pod to hold the Lease")

        values["podAnnotations"] = {"neuron.dev/upgrade-test": "2"}  # a new pod template
        values_file.write_text(yaml.safe_dump(values))
        t0 = time.monotonic()
        _helm(helm, cluster, "upgrade", release, namespace, values_file)
        cluster.kubectl("rollout", "status", "-n", namespace, deployment, f"--timeout={ROLLOUT_TIMEOUT}s", timeout=400)
        rollout = time.monotonic() - t0
        print(f"HELM_UPGRADE_ROLLOUT_SECONDS_{replicas}={rollout:.1f}")

        pods = _pods(cluster, namespace, release)  # rollout status returned: the old pods are gone
        assert len(pods) == replicas
        names = {p["metadata"]["name"] for p in pods}
        assert not names & old, "every pod is new"
        assert all(_ready(p) for p in pods)
        for pod in pods:
            assert all(c["restartCount"] == 0 for c in pod["status"]["containerStatuses"]), "no liveness kill"
        holder = until(
            lambda: h if (h := _holder(cluster, namespace)) in names else None,
            timeout=60,
            what="a new pod to hold the Lease",
        )
        expected = {name: (1.0 if name == holder else 0.0) for name in names}
        until(
            lambda: {name: _leader_gauge(cluster, namespace, name, metrics_port) for name in names} == expected,
            timeout=30,
            what=f"the pods' leader gauges to be {expected} (exactly one pod leads)",
        )
    except BaseException:
        _dump(cluster, namespace)
        raise
    finally:
        run_helm(helm, "uninstall", release, "--namespace", namespace, "--wait", env=cluster.env())
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
