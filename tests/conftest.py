"""Shared fixtures. ``cluster`` creates the local kind cluster once per test session.

The cluster is the one ``make cluster-up`` creates (``localcluster.kind``: kind nodes from images built on
this machine, the simulated Neuron device plugin, kwok's simulated fleet), under its own name and state
directory, so it never collides with a developer's ``.cluster`` or a running demo. Set
``NEURON_TEST_USE_EXISTING_CLUSTER=1`` and ``KUBECONFIG`` to run the cluster tests against another
cluster (EKS, another kind) instead, or ``NEURON_TEST_KIND_STATE=<state dir>`` to reuse a running local kind
cluster (e.g. ``.cluster`` after ``make cluster-up``) without creating or deleting one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client

from localcluster.__main__ import cluster_for
from localcluster.kind import ExistingCluster, KindCluster, KindConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster | ExistingCluster]:
    if os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1":
        yield ExistingCluster(Path(os.environ["KUBECONFIG"]))
        return
    if state := os.environ.get("NEURON_TEST_KIND_STATE"):
        reused = cluster_for(Path(state), "")
        assert reused.exists(), f"no kind cluster state in {state}"
        assert reused.alive(), f"the kind cluster of {state} is not running"
        reused.ensure_images()
        yield reused
        return
    local = KindCluster(
        KindConfig(name=f"neuron-t-{uuid.uuid4().hex[:6]}", state_dir=tmp_path_factory.mktemp("cluster") / "state")
    )
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def kube(cluster: KindCluster | ExistingCluster) -> Client:
    """A lightkube client authenticated as cluster-admin."""
    return cluster.client


@pytest.fixture
def namespace(cluster: KindCluster | ExistingCluster) -> Iterator[str]:
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
