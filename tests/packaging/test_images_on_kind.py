"""The project's images, as a user deploys them, on the local kind cluster (real kubelet, real containerd).

``helm install`` of ``charts/neuron-operator`` with the operator and runtime images built on this machine from
the ``Dockerfile``: the operator pod runs as uid 65532 on a read-only root filesystem with every capability
dropped and reconciles; then the e2e suite (``e2e/suite``, the same code a user runs against any cluster)
compiles the cpu example in a compile Job of the runtime image and gets an OIP v2 answer through the Service.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, REPO, run_helm

from localcluster.kind import EXEC_LABEL, KindCluster
from localcluster.storage import hostpath_claim
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


def _image(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag}


def _operator_pod(cluster: KindCluster, namespace: str) -> dict[str, Any]:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=neuron-operator", "-o", "json"
        ).stdout
    )["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in live]
    return dict(live[0])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


@pytest.fixture(scope="module")
def installed(cluster: KindCluster, helm: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    namespace = "images-e2e"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    artifacts = cluster.shared_dir / "images-e2e-artifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)
    claim = hostpath_claim(namespace, "neuron-artifacts", artifacts)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": claim}))
    values = {
        "image": _image(cluster.images["operator"]),
        "runtimeImages": {"cpu": _image(cluster.images["runtime"])},
        "watchNamespaces": [namespace],
        "nodeSelector": EXEC,
        "tolerations": EXEC_TOLERATIONS,
        "resyncSeconds": 30,
        # 500m: the S3 example's compile runs while the cpu example serves, on the kind node's 2 CPUs.
        "compile": {
            "nodeSelector": EXEC,
            "tolerations": EXEC_TOLERATIONS,
            "resources": {"cpu": "500m", "memory": "2Gi"},
        },
    }
    values_file = tmp_path_factory.mktemp("images-e2e") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    run_helm(
        helm,
        "install",
        "neuron-operator",
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        str(values_file),
        env=cluster.env(),
    )
    until(lambda: _ready(_operator_pod(cluster, namespace)), timeout=180, what="the operator pod to be Ready")
    return namespace


def test_operator_runs_from_its_image_as_nonroot_on_a_read_only_root(cluster: KindCluster, installed: str) -> None:
    pod = _operator_pod(cluster, installed)
    container = pod["spec"]["containers"][0]
    assert container["image"] == cluster.images["operator"]
    assert pod["spec"]["nodeName"] == cluster.control_plane_node
    name = pod["metadata"]["name"]
    probe = (
        "import os, pathlib\n"
        "print('uid', os.getuid(), 'gid', os.getgid())\n"
        "try:\n    pathlib.Path('/x').write_text('x')\nexcept OSError as e:\n    print('rootfs', e.strerror)\n"
        "print('caps', [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])\n"
    )
    out = cluster.kubectl("exec", "-n", installed, name, "--", "python", "-c", probe).stdout
    assert "uid 65532 gid 65532" in out
    assert "rootfs Read-only file system" in out  # enforced by containerd, not just declared
    assert "caps 0000000000000000" in out
    assert cluster.kubectl("logs", "-n", installed, name).stdout.strip()  # `kubectl logs` works on a real node


def test_the_e2e_suite_passes_against_the_installed_chart(cluster: KindCluster, installed: str) -> None:
    s3 = cluster.ensure_s3()
    bucket = f"e2e-{installed[-8:]}"
    s3.create_bucket(bucket)
    env = {
        **cluster.env(),
        "NEURON_E2E_NAMESPACE": installed,
        "NEURON_E2E_POD_NODE_SELECTOR": json.dumps(EXEC),
        # The S3 example, against the local cluster's real S3 server.
        "NEURON_E2E_S3_BUCKET": bucket,
        "NEURON_E2E_S3_ENDPOINT": s3.cluster_endpoint_url,
        "NEURON_E2E_S3_ACCESS_KEY": s3.admin.access_key,
        "NEURON_E2E_S3_SECRET_KEY": s3.admin.secret_key,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "e2e" / "suite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix="e2e/")["KeyCount"] >= 3  # manifest, graph, references
    # The compiles ran in the runtime image as Jobs (one per storage: the claim and the bucket); their container logs
    # are there for `kubectl logs`.
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", installed, "-o", "json").stdout)["items"]
    assert len(jobs) == 2
    job = jobs[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == cluster.images["runtime"]
    logs = cluster.kubectl("logs", "-n", installed, f"job/{job['metadata']['name']}").stdout
    assert logs.strip(), "the compile Job's container wrote no log"
