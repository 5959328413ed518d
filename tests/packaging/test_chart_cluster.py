"""The chart against the local kind cluster (session fixture ``cluster``): the rendered objects pass
server-side validation, ``helm install`` creates them, the ServiceAccount gets exactly the access the RBAC
rules grant (cluster-wide or per namespace), and ``helm uninstall`` removes them.

These installs use ``replicas=0`` and check objects and access, not pods; ``test_images_on_kind`` installs the
chart with the operator image built on this machine and runs it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chartkit import CHART, helm_template_text, run_helm

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crds(cluster: Any) -> None:
    """The chart's CRDs, applied as the README tells users to before an upgrade."""
    if (CHART / "crds").is_dir():
        cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))


@pytest.fixture
def other_namespace(cluster: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _can(cluster: Any, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--as", sa]
    args += [f"--subresource={subresource}"] if subresource else []
    args += ["-n", namespace] if namespace else []
    proc = cluster.kubectl(*args, check=False)
    return proc.stdout.strip() == "yes"


def _install(cluster: Any, helm: Path, release: str, namespace: str, *sets: str) -> str:
    return run_helm(
        helm,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "replicas=0",
        *(arg for s in sets for arg in ("--set", s)),
        env=cluster.env(),
    )


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("which", ["default", "custom"])
def test_rendered_chart_passes_server_dry_run(
    cluster: Any, helm: Path, namespace: str, other_namespace: str, which: str
) -> None:
    values: dict[str, Any] | None = None
    if which == "custom":
        # Everything optional except the ServiceMonitor, whose CRD (prometheus-operator) is not installed.
        values = {
            "replicas": 2,
            "watchNamespaces": [namespace, other_namespace],
            "artifacts": {"pvc": {"create": True}},
            "argocd": {"healthChecks": True},
            "priorityClassName": "system-cluster-critical",
        }
    text = helm_template_text(helm, values, release=f"dry-{which}", namespace=namespace)
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "created (server dry run)" in proc.stdout


@pytest.mark.usefixtures("crds")
def test_install_cluster_wide_then_uninstall(cluster: Any, helm: Path, namespace: str, other_namespace: str) -> None:
    release = f"op-{namespace}"
    out = _install(cluster, helm, release, namespace)
    assert "kubectl get nm,nd -A" in out, "NOTES.txt is shown"
    fullname = f"{release}-neuron-operator"
    try:
        objects = json.loads(
            cluster.kubectl(
                "get",
                "deployment,serviceaccount,service,role,rolebinding",
                "-n",
                namespace,
                "-l",
                f"app.kubernetes.io/instance={release}",
                "-o",
                "json",
            ).stdout
        )["items"]
        assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
            [
                ("Deployment", fullname),
                ("ServiceAccount", fullname),
                ("Service", f"{fullname}-metrics"),
                ("Role", f"{fullname}-leader-election"),
                ("RoleBinding", f"{fullname}-leader-election"),
            ]
        )
        cluster.kubectl("get", "clusterrole", fullname)
        cluster.kubectl("get", "clusterrolebinding", fullname)

        sa = f"system:serviceaccount:{namespace}:{fullname}"
        for ns in (namespace, other_namespace):
            assert _can(cluster, sa, "list", "neuronmodels.neuron.dev", ns)
            assert _can(cluster, sa, "patch", "neurondeployments.neuron.dev/status", ns)
            assert _can(cluster, sa, "create", "jobs.batch", ns)
            assert not _can(cluster, sa, "get", "secrets", ns)
            assert not _can(cluster, sa, "delete", "neuronmodels.neuron.dev", ns)
            assert not _can(cluster, sa, "patch", "neuronmodels.neuron.dev", ns)  # only its status
        # kopf's cluster scanning is off: the operator needs no access to CRDs or namespaces.
        assert not _can(cluster, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
        assert _can(cluster, sa, "update", "leases.coordination.k8s.io", namespace)
        assert not _can(cluster, sa, "update", "leases.coordination.k8s.io", other_namespace)
    finally:
        run_helm(helm, "uninstall", release, "--namespace", namespace, env=cluster.env())
    assert cluster.kubectl("get", "clusterrole", fullname, check=False).returncode != 0
    left = cluster.kubectl(
        "get",
        "deployment,serviceaccount,role",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "name",
    ).stdout.strip()
    assert left == ""


@pytest.mark.usefixtures("crds")
def test_install_watching_one_namespace(cluster: Any, helm: Path, namespace: str, other_namespace: str) -> None:
    release = f"ns-{namespace}"
    fullname = f"{release}-neuron-operator"
    _install(cluster, helm, release, namespace, f"watchNamespaces={{{other_namespace}}}")
    try:
        assert cluster.kubectl("get", "clusterrole", fullname, check=False).returncode != 0, (
            "no cluster-wide workload rules when watching namespaces"
        )
        cluster.kubectl("get", "role", fullname, "-n", other_namespace)
        sa = f"system:serviceaccount:{namespace}:{fullname}"
        assert _can(cluster, sa, "list", "neuronmodels.neuron.dev", other_namespace)
        assert not _can(cluster, sa, "list", "neuronmodels.neuron.dev", namespace)
        assert not _can(cluster, sa, "list", "neuronmodels.neuron.dev", "default")
        assert not _can(cluster, sa, "list", "customresourcedefinitions.apiextensions.k8s.io", None)
    finally:
        run_helm(helm, "uninstall", release, "--namespace", namespace, env=cluster.env())
    assert cluster.kubectl("get", "role", fullname, "-n", other_namespace, check=False).returncode != 0
