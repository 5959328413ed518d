"""The local control plane is a real Kubernetes: pinned versions, structural CRDs, the real scheduler
counting ``aws.amazon.com/neuroncore`` against the simulated fleet, real Deployments, clean teardown."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import ClusterConfig, LocalCluster, free_pod_cidr, port_is_free
from localcluster.fleet import DEFAULT_FLEET, NodeGroup, fleet_manifests, total_neuron_cores
from localcluster.wait import until
from neuron_operator.catalogue import NEURONCORE_RESOURCE, instance_type

pytestmark = pytest.mark.skipif(
    os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1",
    reason="checks the project's own local control plane",
)

K8S_VERSION = "v1.34.4"
NEURON_TOLERATION = {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, cores: int = 0, *, tolerate: bool = True, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {NEURONCORE_RESOURCE: str(cores)}} if cores else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "fill"}},
        "spec": {
            "containers": [{"name": "c", "image": "registry.invalid/none", "resources": resources}],
            "tolerations": [NEURON_TOLERATION] if tolerate else [],
            "terminationGracePeriodSeconds": 0,
            **spec,
        },
    }


def get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: LocalCluster, namespace: str, *objs: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))


def test_versions_are_the_pinned_ones(cluster: LocalCluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == K8S_VERSION
    assert versions["serverVersion"]["gitVersion"] == K8S_VERSION
    ctx = ssl.create_default_context(cafile=str(cluster.state / "pki" / "ca.crt"))
    with urllib.request.urlopen(f"{cluster.server}/version", context=ctx, timeout=5) as r:
        assert json.loads(r.read())["gitVersion"] == K8S_VERSION
    assert "etcd Version: 3.6" in os.popen(f"{cluster.tools.etcd} --version").read()


def test_structural_crd_prunes_unknown_fields(cluster: LocalCluster, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.prune.test"},
        "spec": {
            "group": "prune.test",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    until(
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in get(cluster, "crd", "widgets.prune.test")["status"].get("conditions", [])
        ),
        timeout=30,
        what="CRD Established",
    )
    widget = {
        "apiVersion": "prune.test/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 3, "colour": "blue"},
    }
    body = json.dumps(widget)
    # kubectl asks for strict field validation: the apiserver names the unknown field ...
    strict = until(
        lambda: (
            (r := cluster.kubectl("create", "-n", namespace, "-f", "-", input=body, check=False)).stderr
            and "not found" not in r.stderr.lower()
            and r
        ),
        timeout=30,
        what="the new resource to be served",
    )
    assert strict.returncode != 0
    assert 'unknown field "spec.colour"' in strict.stderr
    # ... and without it, the structural schema prunes the field on write.
    cluster.kubectl("create", "-n", namespace, "--validate=false", "-f", "-", input=body)
    stored = get(cluster, "-n", namespace, "widgets.prune.test", "w")
    assert stored["spec"] == {"size": 3}  # `colour` is not in the schema: a real apiserver prunes it


def test_fleet_is_listed_with_neuroncore_allocatable(cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")["items"]}
    for manifest in fleet_manifests():
        node = nodes[manifest["metadata"]["name"]]
        itype = instance_type(node["metadata"]["labels"]["node.kubernetes.io/instance-type"])
        alloc = node["status"]["allocatable"]
        assert int(alloc.get(NEURONCORE_RESOURCE, "0")) == itype.neuron_cores
        assert int(alloc.get("aws.amazon.com/neuron", "0")) == itype.devices
        assert int(alloc["cpu"]) == itype.vcpu
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        taints = [t["key"] for t in node["spec"].get("taints", [])]
        assert ("aws.amazon.com/neuron" in taints) == itype.is_neuron


def test_neuroncore_pod_binds_to_a_node_with_enough_cores(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, pod("two-cores", 2))
    node_name = until(lambda: get(cluster, "-n", namespace, "pod", "two-cores")["spec"].get("nodeName"), what="binding")
    node = get(cluster, "node", node_name)
    assert int(node["status"]["allocatable"][NEURONCORE_RESOURCE]) >= 2
    until(
        lambda: get(cluster, "-n", namespace, "pod", "two-cores")["status"].get("phase") == "Running",
        what="kwok to run the pod",
    )


def test_without_the_neuron_toleration_the_pod_stays_pending(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, pod("intolerant", 1, tolerate=False))

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get(cluster, "-n", namespace, "events", "--field-selector", "involvedObject.name=intolerant")
        return [e for e in events["items"] if e["reason"] == "FailedScheduling"]

    events = until(failed_scheduling, what="a FailedScheduling event")
    assert "untolerated taint" in events[0]["message"]
    assert "nodeName" not in get(cluster, "-n", namespace, "pod", "intolerant")["spec"]


def _neuron_pods(cluster: LocalCluster) -> list[dict[str, Any]]:
    pods = get(cluster, "pods", "-A")["items"]
    return [
        p
        for p in pods
        if any(NEURONCORE_RESOURCE in c.get("resources", {}).get("limits", {}) for c in p["spec"]["containers"])
        and p["status"].get("phase") not in ("Succeeded", "Failed")
    ]


def test_pods_exactly_fill_the_fleet_and_one_more_stays_pending(cluster: LocalCluster, namespace: str) -> None:
    # Other tests' namespaces are deleted asynchronously: start from an empty fleet.
    until(lambda: not _neuron_pods(cluster), timeout=120, what="no NeuronCore pods left from other tests")
    total = total_neuron_cores(DEFAULT_FLEET)
    assert total == 2 * 4 + 2 * 2 + 12 + 24 + 2 + 32  # the catalogue figures for the default fleet
    # One pod per Neuron node asking for all its cores, steered by hostname so the default scheduler's
    # spreading cannot strand cores; the scheduler still does the resource accounting.
    pods = []
    for manifest in fleet_manifests():
        cores = int(manifest["status"]["allocatable"].get(NEURONCORE_RESOURCE, "0"))
        if cores:
            name = manifest["metadata"]["name"]
            pods.append(pod(f"fill-{name}", cores, nodeSelector={"kubernetes.io/hostname": name}))
    assert sum(int(p["spec"]["containers"][0]["resources"]["limits"][NEURONCORE_RESOURCE]) for p in pods) == total
    apply(cluster, namespace, *pods)
    until(
        lambda: all(p["spec"].get("nodeName") for p in get(cluster, "-n", namespace, "pods")["items"]),
        timeout=60,
        what=f"all {len(pods)} filling pods to bind",
    )
    apply(cluster, namespace, pod("one-too-many", 1))

    def insufficient() -> bool:
        events = get(cluster, "-n", namespace, "events", "--field-selector", "involvedObject.name=one-too-many")
        return any(
            e["reason"] == "FailedScheduling" and f"Insufficient {NEURONCORE_RESOURCE}" in e["message"]
            for e in events["items"]
        )

    until(insufficient, what="FailedScheduling: Insufficient neuroncore")
    assert "nodeName" not in get(cluster, "-n", namespace, "pod", "one-too-many")["spec"]
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false")


def test_deployment_reaches_three_ready_replicas(cluster: LocalCluster, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "registry.invalid/web"}],
                    "nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"},
                },
            },
        },
    }
    apply(cluster, namespace, deployment)
    until(
        lambda: get(cluster, "-n", namespace, "deployment", "web").get("status", {}).get("readyReplicas") == 3,
        timeout=60,
        what="3 ready replicas",
    )


def test_teardown_leaves_no_process_behind(tmp_path: Path) -> None:
    """A second, small cluster (with an exec node running a pod) is started and torn down."""
    small = LocalCluster(
        ClusterConfig(
            state_dir=tmp_path / "state",
            fleet=(NodeGroup("inf2.xlarge", 1),),
            exec_pod_cidr=free_pod_cidr("10.244"),
        )
    ).up()
    pidfile = tmp_path / "pod.pid"
    sleeper = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "nodeSelector": {"neuron.dev/local-exec": "true"},
            "tolerations": [{"key": "neuron.dev/local-exec", "operator": "Exists"}],
            "containers": [
                {
                    "name": "c",
                    "image": "ignored",
                    "command": [
                        "python3",
                        "-c",
                        f"import os,time; open({str(pidfile)!r},'w').write(str(os.getpid())); time.sleep(600)",
                    ],
                    "volumeMounts": [{"name": "tmp", "mountPath": str(tmp_path)}],
                }
            ],
            "volumes": [{"name": "tmp", "hostPath": {"path": str(tmp_path)}}],
        },
    }
    try:
        small.kubectl("create", "-f", "-", input=json.dumps(sleeper))
        pod_pid = int(until(lambda: pidfile.exists() and pidfile.read_text(), timeout=60, what="the pod to start"))
        recorded = {name: s["pid"] for name, s in small.status().items()}
        assert all(s for s in recorded.values()), recorded
        ports = list(small.config.ports.values())
    finally:
        small.down()
    for name, pid in [*recorded.items(), ("pod", pod_pid)]:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3], (
            name
        )
    assert all(port_is_free(p) for p in ports)
    assert not (tmp_path / "state").exists()
