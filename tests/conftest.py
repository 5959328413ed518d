"""Shared fixtures. ``cluster`` starts the real local control plane once per test session.

The control plane is the one ``make cluster-up`` runs (``localcluster``), in a temporary state directory
with its own ports and pod network, so it never collides with a developer's ``.cluster``. Set
``NEURON_TEST_USE_EXISTING_CLUSTER=1`` and ``KUBECONFIG`` to run the cluster tests against another
cluster (kind, EKS) instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client

from localcluster.cluster import ClusterConfig, ExistingCluster, LocalCluster, free_pod_cidr

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | ExistingCluster]:
    if os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1":
        yield ExistingCluster(Path(os.environ["KUBECONFIG"]))
        return
    local = LocalCluster(
        ClusterConfig(
            state_dir=tmp_path_factory.mktemp("cluster") / "state",
            # A CIDR no other exec node on this host holds (parallel sessions must not collide).
            exec_pod_cidr=free_pod_cidr("10.242"),
            # Opt-out for machines where network namespaces are unavailable (not root); CI runs with it.
            exec_node=os.environ.get("NEURON_TEST_EXEC_NODE", "1") != "0",
        )
    )
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster | ExistingCluster) -> Client:
    """A lightkube client authenticated as cluster-admin."""
    return cluster.client


@pytest.fixture
def namespace(cluster: LocalCluster | ExistingCluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the cluster fixture carry the `cluster` marker, so `-m "not cluster"` is the fast suite.
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
