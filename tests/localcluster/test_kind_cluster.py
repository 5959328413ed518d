"""The local kind cluster is a real Kubernetes: pinned versions on real kubelets and containerd, structural
CRDs, the project's images running as real containers with DNS and ClusterIP routing across nodes and
``kubectl logs``, the simulated Neuron device plugin allocating NeuronCores through the kubelet's
device-plugin API, and the real scheduler counting ``aws.amazon.com/neuroncore`` against kwok's simulated
fleet."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from localcluster.fleet import DEFAULT_FLEET, fleet_manifests, total_neuron_cores
from localcluster.kind import EXEC_LABEL, SIMULATED_NEURON_LABEL, KindCluster
from localcluster.wait import until
from neuron_operator.catalogue import NEURON_DEVICE_RESOURCE, NEURONCORE_RESOURCE, instance_type

pytestmark = pytest.mark.skipif(
    os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1",
    reason="checks the project's own local cluster",
)

K8S_VERSION = "v1.34.4"
NEURON_TOLERATION = {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}
SIMULATED_TOLERATION = {"key": SIMULATED_NEURON_LABEL, "operator": "Exists", "effect": "NoSchedule"}
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


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


def python_pod(
    cluster: KindCluster, name: str, script: str, *, node: dict[str, str], limits: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod that really runs ``python -c script`` in the project's operator image, restricted like ours."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node,
            "tolerations": [NEURON_TOLERATION, SIMULATED_TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": cluster.images["operator"],
                    "command": ["python", "-c", script],
                    "securityContext": RESTRICTED,
                    "resources": {"limits": {"cpu": "200m", "memory": "128Mi", **(limits or {})}},
                }
            ],
        },
    }


def get(cluster: KindCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: KindCluster, namespace: str, *objs: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objs)}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(body))


def wait_insufficient_cores(cluster: KindCluster, namespace: str, pod_name: str) -> None:
    """Wait for the scheduler's verdict on ``pod_name``: FailedScheduling for lack of NeuronCores."""

    def insufficient() -> bool:
        events = get(cluster, "-n", namespace, "events", "--field-selector", f"involvedObject.name={pod_name}")
        return any(
            e["reason"] == "FailedScheduling" and f"Insufficient {NEURONCORE_RESOURCE}" in e["message"]
            for e in events["items"]
        )

    until(insufficient, what=f"FailedScheduling: Insufficient neuroncore for {pod_name}")


def phase(cluster: KindCluster, namespace: str, name: str) -> str:
    return str(get(cluster, "-n", namespace, "pod", name)["status"].get("phase", ""))


def test_versions_are_the_pinned_ones(cluster: KindCluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == K8S_VERSION
    assert versions["serverVersion"]["gitVersion"] == K8S_VERSION
    real = [n for n in get(cluster, "nodes")["items"] if n["metadata"]["name"].startswith(cluster.name)]
    assert {n["metadata"]["name"] for n in real} == {cluster.control_plane_node, cluster.neuron_node}
    for node in real:  # real kubelets and containerd, not kwok
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == K8S_VERSION
        assert info["containerRuntimeVersion"].startswith("containerd://2.4"), info


def test_the_neuron_worker_looks_like_an_eks_neuron_node(cluster: KindCluster) -> None:
    node = get(cluster, "node", cluster.neuron_node)
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "inf2.xlarge"
    assert labels[SIMULATED_NEURON_LABEL] == "true"
    taints = {t["key"]: t["effect"] for t in node["spec"].get("taints", [])}
    assert taints == {"aws.amazon.com/neuron": "NoSchedule", SIMULATED_NEURON_LABEL: "NoSchedule"}
    alloc = node["status"]["allocatable"]
    t = instance_type("inf2.xlarge")
    # Advertised by the simulated device plugin over the kubelet's device-plugin API, not patched in.
    assert alloc[NEURONCORE_RESOURCE] == str(t.neuron_cores)
    assert alloc[NEURON_DEVICE_RESOURCE] == str(t.devices)


def test_device_plugin_allocates_contiguous_cores_to_a_real_container(cluster: KindCluster, namespace: str) -> None:
    script = (
        "import os, stat; "
        "print('VISIBLE', os.environ.get('NEURON_RT_VISIBLE_CORES')); "
        "print('SIMULATED', os.environ.get('NEURON_SIMULATED_DEVICE_PLUGIN')); "
        "print('DEVICES', sorted(d for d in os.listdir('/dev') if d.startswith('neuron'))); "
        "print('CHAR', stat.S_ISCHR(os.stat('/dev/neuron0').st_mode)); "
        "print('UID', os.getuid())"
    )
    apply(
        cluster,
        namespace,
        python_pod(
            cluster,
            "two-cores",
            script,
            node={SIMULATED_NEURON_LABEL: "true"},
            limits={NEURONCORE_RESOURCE: "2"},
        ),
    )
    until(lambda: phase(cluster, namespace, "two-cores") == "Succeeded", timeout=90, what="the pod to run")
    logs = cluster.kubectl("logs", "-n", namespace, "two-cores").stdout.splitlines()
    assert "VISIBLE 0,1" in logs  # both cores of the inf2.xlarge's only device, set by the plugin's Allocate
    assert "SIMULATED 1" in logs
    assert "DEVICES ['neuron0']" in logs
    assert "CHAR True" in logs
    assert "UID 65532" in logs  # the image's non-root user


def test_the_device_plugin_re_registers_after_a_kubelet_restart(cluster: KindCluster, namespace: str) -> None:
    """A kubelet restart re-creates kubelet.sock and forgets every plugin: ours must register again by itself."""
    selector = "app.kubernetes.io/name=neuron-device-plugin-simulated"
    (plugin,) = get(cluster, "-n", "kube-system", "pods", "-l", selector)["items"]
    restarts = plugin["status"]["containerStatuses"][0]["restartCount"]
    cluster.docker("exec", cluster.neuron_node, "systemctl", "restart", "kubelet")  # returns once restarted
    script = "import os; print('VISIBLE', os.environ.get('NEURON_RT_VISIBLE_CORES'))"
    attempts: list[str] = []

    def a_pod_gets_two_cores() -> bool:
        # Until the plugin has registered with the new kubelet, the kubelet rejects the pod at admission
        # (phase Failed); each such attempt is replaced by a new pod.
        name = f"after-{len(attempts)}"
        attempts.append(name)
        node, limits = {SIMULATED_NEURON_LABEL: "true"}, {NEURONCORE_RESOURCE: "2"}
        apply(cluster, namespace, python_pod(cluster, name, script, node=node, limits=limits))
        until(lambda: phase(cluster, namespace, name) in ("Succeeded", "Failed"), timeout=90, what=f"{name} to end")
        return phase(cluster, namespace, name) == "Succeeded"

    until(a_pod_gets_two_cores, timeout=180, interval=1.0, what="a 2-NeuronCore pod to run after the restart")
    assert "VISIBLE 0,1" in cluster.kubectl("logs", "-n", namespace, attempts[-1]).stdout
    # The same plugin container, not restarted: it noticed the new kubelet socket and registered again.
    now = get(cluster, "-n", "kube-system", "pod", plugin["metadata"]["name"])
    assert now["status"]["containerStatuses"][0]["restartCount"] == restarts


def test_a_third_neuroncore_is_not_there(cluster: KindCluster, namespace: str) -> None:
    bad = python_pod(
        cluster, "three", "print(1)", node={SIMULATED_NEURON_LABEL: "true"}, limits={NEURONCORE_RESOURCE: "3"}
    )
    apply(cluster, namespace, bad)

    wait_insufficient_cores(cluster, namespace, "three")


def test_dns_and_cluster_ip_across_nodes(cluster: KindCluster, namespace: str) -> None:
    """A server on the control plane, a client on the Neuron worker, through the Service's DNS name."""
    server = python_pod(
        cluster,
        "web",
        "import http.server as h; h.ThreadingHTTPServer(('', 8000), h.SimpleHTTPRequestHandler).serve_forever()",
        node={EXEC_LABEL: "true"},
    )
    server["spec"]["containers"][0]["workingDir"] = "/opt/venv"
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8000}, "periodSeconds": 1}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    apply(cluster, namespace, server, service)
    until(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in get(cluster, "-n", namespace, "pod", "web")["status"].get("conditions", [])
        ),
        timeout=90,
        what="the server pod to be Ready",
    )
    client = python_pod(
        cluster,
        "client",
        "import urllib.request as u; "
        f"print('STATUS', u.urlopen('http://web.{namespace}.svc.cluster.local/', timeout=20).status)",
        node={SIMULATED_NEURON_LABEL: "true"},
    )
    apply(cluster, namespace, client)
    until(
        lambda: phase(cluster, namespace, "client") in ("Succeeded", "Failed"), timeout=90, what="the client to finish"
    )
    logs = cluster.kubectl("logs", "-n", namespace, "client").stdout
    assert phase(cluster, namespace, "client") == "Succeeded", logs
    assert "STATUS 200" in logs
    nodes = {get(cluster, "-n", namespace, "pod", p)["spec"]["nodeName"] for p in ("web", "client")}
    assert nodes == {cluster.control_plane_node, cluster.neuron_node}


def test_structural_crd_prunes_unknown_fields(cluster: KindCluster, namespace: str) -> None:
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


def test_fleet_is_listed_with_neuroncore_allocatable(cluster: KindCluster) -> None:
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


def test_neuroncore_pod_binds_to_a_node_with_enough_cores(cluster: KindCluster, namespace: str) -> None:
    apply(cluster, namespace, pod("two-cores", 2))
    node_name = until(lambda: get(cluster, "-n", namespace, "pod", "two-cores")["spec"].get("nodeName"), what="binding")
    node = get(cluster, "node", node_name)
    assert int(node["status"]["allocatable"][NEURONCORE_RESOURCE]) >= 2
    assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"  # the real worker needs a toleration
    until(
        lambda: get(cluster, "-n", namespace, "pod", "two-cores")["status"].get("phase") == "Running",
        what="kwok to run the pod",
    )


def test_without_the_neuron_toleration_the_pod_stays_pending(cluster: KindCluster, namespace: str) -> None:
    apply(cluster, namespace, pod("intolerant", 1, tolerate=False))

    def failed_scheduling() -> list[dict[str, Any]]:
        events = get(cluster, "-n", namespace, "events", "--field-selector", "involvedObject.name=intolerant")
        return [e for e in events["items"] if e["reason"] == "FailedScheduling"]

    events = until(failed_scheduling, what="a FailedScheduling event")
    assert "untolerated taint" in events[0]["message"]
    assert "nodeName" not in get(cluster, "-n", namespace, "pod", "intolerant")["spec"]


def _neuron_pods(cluster: KindCluster) -> list[dict[str, Any]]:
    pods = get(cluster, "pods", "-A")["items"]
    return [
        p
        for p in pods
        if any(NEURONCORE_RESOURCE in c.get("resources", {}).get("limits", {}) for c in p["spec"]["containers"])
        and p["status"].get("phase") not in ("Succeeded", "Failed")
    ]


def test_pods_exactly_fill_the_fleet_and_one_more_stays_pending(cluster: KindCluster, namespace: str) -> None:
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

    wait_insufficient_cores(cluster, namespace, "one-too-many")
    assert "nodeName" not in get(cluster, "-n", namespace, "pod", "one-too-many")["spec"]
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false")


def test_deployment_reaches_three_ready_replicas(cluster: KindCluster, namespace: str) -> None:
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
