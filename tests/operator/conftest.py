"""Fixtures for operator scenarios on the real local control plane.

``operator`` runs ``neuron-operator run`` as a subprocess (the real CLI, leader election on) configured to
run compile Jobs on the kind node that runs pods for real; ``store`` gives a test namespace its artifact
PersistentVolumeClaim (a hostPath PersistentVolume in the cluster's shared directory, bound by the real PV
controller). See ``operator_support``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from operator_support import (
    ARTIFACT_PVC,
    IMAGES,
    REPO,
    Operator,
    Store,
    create_store,
    operator_settings,
    start_operator,
)

from localcluster.kind import KindCluster


@pytest.fixture(scope="session")
def crds(cluster: KindCluster) -> None:
    IMAGES.update(cluster.images)
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    for crd in ("neuronmodels.neuron.dev", "neurondeployments.neuron.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


# Module scope: an operator watching every namespace must not outlive the scenarios that want it (the RBAC
# test runs its own operators, alone).
@pytest.fixture(scope="module")
def operator(cluster: KindCluster, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    settings = operator_settings(leader_election_lease=f"neuron-operator-{uuid.uuid4().hex[:6]}")
    op = start_operator(cluster, log, settings, "scenario-operator")
    yield op
    op.proc.terminate()
    try:
        op.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        op.proc.kill()
    if os.environ.get("NEURON_TEST_SHOW_OPERATOR_LOG"):
        print(log.read_text()[-20000:])


@pytest.fixture
def store(cluster: KindCluster, namespace: str) -> Iterator[Store]:
    """The default artifact PVC in ``namespace``, bound to a hostPath PV in the cluster's shared directory."""
    path = cluster.shared_dir / f"{namespace}-artifacts"
    path.mkdir()
    yield create_store(cluster, namespace, path)
    cluster.kubectl("delete", "pv", f"{ARTIFACT_PVC}-{namespace}", "--wait=false", check=False)
    shutil.rmtree(path, ignore_errors=True)
