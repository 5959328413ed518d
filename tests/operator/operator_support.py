"""Helpers for operator scenarios on the real local control plane (used by conftest and the tests).

``operator`` runs ``neuron-operator run`` as a subprocess (the real CLI, leader election on) configured to
run compile Jobs on the kind node that runs pods for real (label ``neuron.dev/local-exec``), from the runtime
image built on this machine; ``store`` gives a test namespace its artifact PersistentVolumeClaim (a hostPath
PersistentVolume in the cluster's shared directory, mounted at the same path in every kind node and bound by
the real PV controller).

Neuron-target compile Jobs in these scenarios only ever find their artifact in storage (seeded with the
runtime's compile path and the Neuron test doubles), and a cache hit imports neither torch nor a Neuron SDK,
so they run the same cpu runtime image: no image with a Neuron SDK exists on this machine.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.kind import EXEC_LABEL, KindCluster
from localcluster.storage import hostpath_claim
from localcluster.wait import until
from neuron_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
EXEC_NODE_SELECTOR = {EXEC_LABEL: "true"}
EXEC_NODE_TOLERATIONS = [{"key": EXEC_LABEL, "operator": "Exists"}]
ARTIFACT_PVC = "neuron-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The project's images in the session cluster (set by the ``operator`` fixtures from ``cluster.images``).
IMAGES: dict[str, str] = {}


def operator_settings(**overrides: Any) -> OperatorSettings:
    """The settings the scenario operator runs with (tests compute cache keys from the same object)."""
    images = (
        {
            "runtime_image": IMAGES["runtime"],
            # SIMULATED Neuron SDK (local testing only): Neuron-target compile Jobs and serving pods run it.
            "neuronx_runtime_image": IMAGES.get("neuron-sim") or IMAGES["runtime"],
            "neuron_runtime_image": IMAGES.get("neuron-sim") or IMAGES["runtime"],
        }
        if IMAGES
        else {}
    )
    base: dict[str, Any] = {
        **images,
        "compile_node_selector": EXEC_NODE_SELECTOR,
        "compile_tolerations": EXEC_NODE_TOLERATIONS,
        "compile_cpu": "500m",
        "compile_memory": "2Gi",
        "resync_seconds": 2.0,
        "backoff_base_seconds": 0.5,
        "backoff_max_seconds": 5.0,
        "artifact_pvc": ARTIFACT_PVC,
    }
    return OperatorSettings(**(base | overrides))


def settings_env(settings: OperatorSettings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:  # unset (an optional setting): "null" would not parse
            continue
        env[f"NEURON_OPERATOR_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    settings: OperatorSettings

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^(neuron_operator_\w+)(\{[^}]*\})? ([0-9.e+]+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    def writes(self) -> dict[str, float]:
        """Reconcile writes by verb and kind; the leader-election Lease heartbeat is not a reconcile write."""
        return {
            k: v
            for k, v in self.metrics().items()
            if k.startswith("neuron_operator_api_writes_total") and 'kind="Lease"' not in k
        }

    def passes(self, kind: str) -> float:
        return self.metrics().get(f'neuron_operator_reconcile_passes_total{{kind="{kind}"}}', 0.0)


def start_operator(
    cluster: KindCluster, log: Path, settings: OperatorSettings, identity: str, kubeconfig: Path | None = None
) -> Operator:
    """Run ``neuron-operator run`` (as cluster-admin unless ``kubeconfig`` names another identity)."""
    metrics_port = free_port()
    env = {
        **cluster.env(),
        **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}),
        **settings_env(settings),
        "NEURON_OPERATOR_METRICS_PORT": str(metrics_port),
        "NEURON_OPERATOR_HEALTH_PORT": str(free_port()),
        "POD_NAME": identity,
        "PYTHONUNBUFFERED": "1",
    }
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron_operator.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    op = Operator(proc, metrics_port, log, settings)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return bool(op.metrics() is not None)

    until(up, timeout=60, what="the operator's metrics endpoint")
    return op


@dataclass
class Store:
    namespace: str
    path: Path  # the artifact PersistentVolume's directory on this machine


def create_store(cluster: KindCluster, namespace: str, path: Path) -> Store:
    """Bind the artifact PVC of ``namespace`` to a hostPath PersistentVolume at ``path`` (which must exist).

    ``path`` must be under ``cluster.shared_dir`` (the same path in every kind node). It is made writable for
    everyone: compile Jobs run as uid 65532, the tests as root.
    """
    path.chmod(0o777)
    objs = hostpath_claim(namespace, ARTIFACT_PVC, path)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    until(
        lambda: (
            cluster.kubectl("get", "pvc", ARTIFACT_PVC, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
            == "Bound"
        ),
        what="the artifact PVC to bind",
    )
    return Store(namespace, path)


def mlp_model(name: str, target: str = "cpu") -> dict[str, Any]:
    """A tiny MLP NeuronModel (compiles in seconds on cpu; Neuron targets need the test doubles)."""
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "python": {
                    "factory": "neuron_runtime.zoo:tiny_mlp",
                    "args": {"in_features": 16, "hidden": 32, "out_features": 4},
                }
            },
            "inputs": [{"name": "x", "shape": [1, 16], "dtype": "float32"}],
            "batchSize": 1,
            "dynamicBatch": True,  # serve batches larger than the traced one (the default maxBatchSize is 8)
            "target": target,
            "modelFamily": "other",
        },
    }
