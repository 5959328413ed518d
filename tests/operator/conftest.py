"""Fixtures for operator scenarios on the real local control plane.

``operator`` runs ``neuron-operator run`` as a subprocess (the real CLI, leader election on) configured to
run compile Jobs on the local exec node; ``store`` gives a test namespace its artifact PersistentVolumeClaim
(a hostPath PersistentVolume on this machine, bound by the real PV controller).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_support import ARTIFACT_PVC, REPO, Operator, Store, operator_settings, start_operator

from localcluster.cluster import LocalCluster
from localcluster.wait import until


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    until(
        lambda: cluster.kubectl("get", "crd", "neuronmodels.neuron.dev", check=False).returncode == 0,
        what="the CRDs",
    )
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
def store(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Store]:
    """The default artifact PVC in ``namespace``, bound to a hostPath PV at ``tmp_path/artifacts``."""
    path = tmp_path / "artifacts"
    path.mkdir()
    pv_name = f"artifacts-{namespace}"
    objs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": ARTIFACT_PVC},
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": ARTIFACT_PVC, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    until(
        lambda: (
            cluster.kubectl("get", "pvc", ARTIFACT_PVC, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
            == "Bound"
        ),
        what="the artifact PVC to bind",
    )
    yield Store(namespace, path)
    cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
    shutil.rmtree(path, ignore_errors=True)
