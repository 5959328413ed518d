"""Storage for the local cluster: a PersistentVolumeClaim pre-bound to a hostPath PersistentVolume.

There is no dynamic provisioner in the local kind cluster (kind's local-path provisioner is not built here)
and a hostPath volume lives on one node, so every user of an artifact claim (tests, the demo, the operator
benchmark) binds it to a directory under the cluster's ``shared_dir``: a directory of this machine mounted
at the same absolute path in every kind node, so compile Jobs and serving pods on any node, and the tests on
the host, see the same files. kwok nodes run nothing and only need the claim to be Bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hostpath_claim(namespace: str, claim: str, path: Path, *, size: str = "10Gi") -> list[dict[str, Any]]:
    """A ReadWriteMany PV at ``path`` reserved for ``namespace/claim``, and that claim (apply both)."""
    pv_name = f"{claim}-{namespace}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": size}},
            },
        },
    ]
