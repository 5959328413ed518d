"""End-to-end suite for ANY cluster that already runs the operator (the local kind cluster, EKS, ...).

Run it with `KUBECONFIG=... NEURON_E2E_NAMESPACE=<ns with the neuron-artifacts PVC> .venv/bin/python -m pytest
e2e/suite`; `make test` runs it against the chart installed on the local kind cluster
(`tests/packaging/test_images_on_kind.py`). It applies the cpu example model and deployment, waits for Ready,
and sends an OIP v2 request through the Service via the apiserver's service proxy (`kubectl create --raw`).
`NEURON_E2E_POD_NODE_SELECTOR` (JSON) pins the serving pods, for clusters with nodes that run no containers
(the local cluster's kwok nodes); nothing else of the examples is changed.

The S3 example (`examples/neuronmodel-small-cnn-s3.yaml`) runs when `NEURON_E2E_S3_BUCKET` names an existing bucket:
its artifacts go to `s3://<bucket>/<NEURON_E2E_S3_PREFIX or e2e>`. With `NEURON_E2E_S3_ENDPOINT` (an S3-compatible
store) and `NEURON_E2E_S3_ACCESS_KEY` / `NEURON_E2E_S3_SECRET_KEY`, the suite creates the `s3-keys` Secret the
example names; without an endpoint, `spec.s3` is removed and the pods use their own identity (EKS Pod Identity or
IRSA on the namespace's ServiceAccounts, or the chart's `artifacts.s3` defaults).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("NEURON_E2E_NAMESPACE", "")
NODE_SELECTOR: dict[str, str] = json.loads(os.environ.get("NEURON_E2E_POD_NODE_SELECTOR") or "{}")
S3_BUCKET = os.environ.get("NEURON_E2E_S3_BUCKET", "")
S3_ENDPOINT = os.environ.get("NEURON_E2E_S3_ENDPOINT", "")
pytestmark = pytest.mark.skipif(not NAMESPACE, reason="set NEURON_E2E_NAMESPACE (and KUBECONFIG) to run")


def kubectl(*args: str, input: str | None = None) -> str:
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, check=True).stdout


def ready(kind: str, name: str) -> bool:
    obj = json.loads(kubectl("get", "-n", NAMESPACE, kind, name, "-o", "json"))
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def wait(kind: str, name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not ready(kind, name):
        assert time.monotonic() < deadline, f"{kind}/{name} not Ready after {timeout}s"
        time.sleep(2)  # polling another system's state; there is no event to gate on from here


def test_cpu_example_compiles_serves_and_answers() -> None:
    kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "neuronmodel-small-cnn-cpu.yaml"))
    deployment = yaml.safe_load((REPO / "examples" / "neurondeployment-small-cnn-cpu.yaml").read_text())
    if NODE_SELECTOR:
        deployment["spec"].setdefault("pod", {})["nodeSelector"] = NODE_SELECTOR
    kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(deployment))
    wait("nm", "small-cnn-cpu")
    wait("nd", "small-cnn-cpu")
    body: dict[str, Any] = {
        "id": "e2e",
        "inputs": [{"name": "x", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.1] * (3 * 64 * 64)}],
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/small-cnn-cpu:http/proxy/v2/models/small-cnn-cpu/infer"
    answer = json.loads(kubectl("create", "--raw", path, "-f", "-", input=json.dumps(body)))
    assert answer["id"] == "e2e"
    assert answer["outputs"][0]["shape"] == [1, 10]


@pytest.mark.skipif(not S3_BUCKET, reason="set NEURON_E2E_S3_BUCKET (an existing bucket) to run the S3 example")
def test_s3_example_compiles_to_the_bucket_serves_after_verifying_and_answers() -> None:
    model = yaml.safe_load((REPO / "examples" / "neuronmodel-small-cnn-s3.yaml").read_text())
    model["spec"]["storage"]["uri"] = f"s3://{S3_BUCKET}/{os.environ.get('NEURON_E2E_S3_PREFIX', 'e2e')}"
    if S3_ENDPOINT:
        model["spec"]["s3"]["endpoint"] = S3_ENDPOINT
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": model["spec"]["s3"]["credentialsSecretRef"]["name"]},
            "stringData": {
                "AWS_ACCESS_KEY_ID": os.environ["NEURON_E2E_S3_ACCESS_KEY"],
                "AWS_SECRET_ACCESS_KEY": os.environ["NEURON_E2E_S3_SECRET_KEY"],
            },
        }
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(secret))
    else:
        del model["spec"]["s3"]
    deployment = yaml.safe_load((REPO / "examples" / "neurondeployment-small-cnn-s3.yaml").read_text())
    if NODE_SELECTOR:
        deployment["spec"].setdefault("pod", {})["nodeSelector"] = NODE_SELECTOR
    for obj in (model, deployment):
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
    wait("nm", "small-cnn-s3")
    wait("nd", "small-cnn-s3")
    status = json.loads(kubectl("get", "-n", NAMESPACE, "nm", "small-cnn-s3", "-o", "json"))["status"]
    assert status["artifact"]["uri"] == f"{model['spec']['storage']['uri']}/{status['cacheKey']}"
    pods = json.loads(kubectl("get", "-n", NAMESPACE, "pods", "-l", "neuron.dev/deployment=small-cnn-s3", "-o", "json"))
    logs = kubectl("logs", "-n", NAMESPACE, pods["items"][0]["metadata"]["name"], "-c", "runtime")
    assert f"verified {status['artifact']['uri']}" in logs or "verifies; not downloading" in logs
    body: dict[str, Any] = {
        "id": "e2e-s3",
        "inputs": [{"name": "x", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.1] * (3 * 64 * 64)}],
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/small-cnn-s3:http/proxy/v2/models/small-cnn-s3/infer"
    answer = json.loads(kubectl("create", "--raw", path, "-f", "-", input=json.dumps(body)))
    assert answer["id"] == "e2e-s3"
    assert answer["outputs"][0]["shape"] == [1, 10]
