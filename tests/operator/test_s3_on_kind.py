"""S3 sources and artifact storage on the real local control plane, against the local cluster's real S3 server
(SeaweedFS `weed`, started by `localcluster` next to the kind cluster; pods reach it through the kind network).

Compile Jobs and serving pods are real containers of the runtime image; they talk to S3 through the same
boto3 code a user's S3 would see (`neuron_runtime.objectstore`), with keys from a Secret in the namespace. The
operator runs as a subprocess (the `operator` fixture) and never touches S3 itself.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from operator_support import EXEC_NODE_SELECTOR, EXEC_NODE_TOLERATIONS, Operator
from test_scenarios import apply, condition, events, exec_deployment, get, jobs, wait_condition

from localcluster.kind import KindCluster
from localcluster.wait import until

SECRET = "s3-keys"


class Bucket:
    """A bucket of the cluster's S3 server, for one test module."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.name = f"models-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(self.name)
        self.client = s3.client("admin")

    def spec(self, secret: str = SECRET) -> dict[str, Any]:
        """spec.s3 of a model whose pods use `secret`."""
        return {
            "endpoint": self.s3.cluster_endpoint_url,
            "region": "us-east-1",
            "forcePathStyle": True,
            "credentialsSecretRef": {"name": secret},
        }

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def bucket(cluster_s3: Any) -> Bucket:
    return Bucket(cluster_s3)


def secret(cluster: KindCluster, namespace: str, access_key: str, secret_key: str, name: str = SECRET) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
    }
    apply(cluster, namespace, body)


@pytest.fixture
def source(bucket: Bucket, tmp_path: Path) -> tuple[str, str]:
    """A TorchScript model uploaded to the bucket: (s3 URI, sha256)."""
    torch.manual_seed(0)
    model = torch.jit.trace(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval(), torch.zeros(2, 16))
    path = tmp_path / "model.pt"
    torch.jit.save(model, str(path))
    key = f"sources/{uuid.uuid4().hex[:8]}/model.pt"
    bucket.client.upload_file(str(path), bucket.name, key)
    return f"s3://{bucket.name}/{key}", hashlib.sha256(path.read_bytes()).hexdigest()


def s3_model(name: str, bucket: Bucket, source: tuple[str, str], prefix: str) -> dict[str, Any]:
    uri, sha = source
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"torchscript": {"uri": uri, "sha256": sha}},
            "inputs": [{"name": "x", "shape": [2, 16], "dtype": "float32"}],
            "batchSize": 2,
            "dynamicBatch": True,
            "target": "cpu",
            "storage": {"uri": f"s3://{bucket.name}/{prefix}"},
            "s3": bucket.spec(),
            "compiler": {"nodeSelector": EXEC_NODE_SELECTOR, "tolerations": EXEC_NODE_TOLERATIONS},
        },
    }


@pytest.fixture
def other_namespace(cluster: KindCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _ready_pod(cluster: KindCluster, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pods = get(cluster, namespace, "pods", "-l", f"neuron.dev/deployment={name}")["items"]
        ready = [p for p in pods if condition(p, "Ready") and condition(p, "Ready")["status"] == "True"]  # type: ignore[index]
        return ready[0] if ready else None

    return until(probe, timeout=240, interval=1, what=f"a ready pod of {name}")


def _infer(cluster: KindCluster, pod: dict[str, Any], model: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:8080/proxy/v2/models/{model}/infer"
    return cluster.post_raw(path, body)


def test_s3_model_compiles_once_serves_after_verifying_and_is_shared_across_namespaces(
    cluster: KindCluster,
    operator: Operator,
    cluster_s3: Any,
    bucket: Bucket,
    source: tuple[str, str],
    namespace: str,
    other_namespace: str,
) -> None:
    prefix = f"artifacts-{uuid.uuid4().hex[:6]}"
    secret(cluster, namespace, cluster_s3.admin.access_key, cluster_s3.admin.secret_key)
    apply(cluster, namespace, s3_model("linear", bucket, source, prefix))
    model = wait_condition(cluster, namespace, "nm", "linear", "Ready", timeout=300)
    key = model["status"]["cacheKey"]
    assert condition(model, "Ready")["reason"] == "Compiled"  # type: ignore[index]
    assert model["status"]["artifact"]["uri"] == f"s3://{bucket.name}/{prefix}/{key}"
    assert model["status"]["artifact"]["endpoint"] == cluster_s3.cluster_endpoint_url
    published = bucket.keys(f"{prefix}/{key}/")
    assert f"{prefix}/{key}/manifest.json" in published
    assert len(published) >= 3  # manifest, a graph, its reference data
    # No PersistentVolumeClaim anywhere in the namespace: S3 needs none.
    assert get(cluster, namespace, "pvc")["items"] == []

    started = time.monotonic()
    dep = exec_deployment("linear", "linear")
    apply(cluster, namespace, dep)
    wait_condition(cluster, namespace, "nd", "linear", "Ready", timeout=300)
    pod = _ready_pod(cluster, namespace, "linear")
    cold_start = time.monotonic() - started
    answer = _infer(cluster, pod, "linear")
    assert answer["outputs"][0]["shape"] == [1, 8]
    log = cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"], "-c", "runtime").stdout
    assert f"downloaded and verified s3://{bucket.name}/{prefix}/{key}" in log
    assert cluster_s3.admin.secret_key not in log
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "artifacts")
    assert "emptyDir" in volume
    print(f"S3 serving pod: NeuronDeployment applied -> pod ready in {cold_start:.1f}s")

    # The same model in another namespace that shares the bucket: a cache hit, no compile Job there.
    reader = cluster_s3.reader or cluster_s3.admin  # an existing cluster's endpoint may come without read-only keys
    secret(cluster, other_namespace, reader.access_key, reader.secret_key)
    apply(cluster, other_namespace, s3_model("linear-twin", bucket, source, prefix))
    twin = wait_condition(cluster, other_namespace, "nm", "linear-twin", "Ready", timeout=120)
    assert condition(twin, "Ready")["reason"] == "CacheHit"  # type: ignore[index]
    assert twin["status"]["artifact"]["sha256"] == model["status"]["artifact"]["sha256"]
    assert jobs(cluster, other_namespace) == []
    # ... and it serves from the shared artifact with its own, read-only keys.
    apply(cluster, other_namespace, exec_deployment("linear-twin", "linear-twin"))
    wait_condition(cluster, other_namespace, "nd", "linear-twin", "Ready", timeout=300)
    assert _infer(cluster, _ready_pod(cluster, other_namespace, "linear-twin"), "linear-twin")["outputs"]

    # A corrupted object in the bucket: the next pod refuses to serve, and says why in the status.
    graph = next(k for k in published if k.rsplit("/", 1)[-1].startswith("model-"))
    meta = bucket.client.head_object(Bucket=bucket.name, Key=graph)["Metadata"]
    bucket.client.put_object(Bucket=bucket.name, Key=graph, Body=b"\0" * 128, Metadata=meta)
    cluster.kubectl("delete", "pod", "-n", namespace, pod["metadata"]["name"], "--wait=false")
    stalled = wait_condition(cluster, namespace, "nd", "linear", "Stalled", timeout=240)
    reason = condition(stalled, "Stalled")
    assert reason is not None
    assert reason["reason"] == "ArtifactInvalid", reason
    assert f"sha256 mismatch for s3://{bucket.name}/{graph}" in reason["message"]


def test_wrong_credentials_stall_the_model_and_the_deployment_with_a_clear_reason(
    cluster: KindCluster,
    operator: Operator,
    cluster_s3: Any,
    bucket: Bucket,
    source: tuple[str, str],
    namespace: str,
) -> None:
    prefix = f"artifacts-{uuid.uuid4().hex[:6]}"
    wrong = "not-the-secret-" + uuid.uuid4().hex
    secret(cluster, namespace, cluster_s3.admin.access_key, wrong)
    apply(cluster, namespace, s3_model("denied", bucket, source, prefix))
    model = wait_condition(cluster, namespace, "nm", "denied", "Stalled", timeout=300)
    stalled = condition(model, "Stalled")
    assert stalled is not None
    assert stalled["reason"] == "StorageAccessDenied", stalled
    assert "SignatureDoesNotMatch" in stalled["message"] or "AccessDenied" in stalled["message"]
    assert wrong not in json.dumps(model)
    assert all(wrong not in e for e in events(cluster, namespace, "denied"))
    # One attempt only: an access refusal is permanent (exit 9 is in the Job's podFailurePolicy FailJob rule).
    job = get(cluster, namespace, "jobs")["items"][0]
    assert job["status"].get("failed") == 1

    # Fixing the Secret, removing the failed Job and editing the spec compiles (the documented retry); rotating the
    # keys wrongly later stalls the serving pods.
    secret(cluster, namespace, cluster_s3.admin.access_key, cluster_s3.admin.secret_key)
    cluster.kubectl("delete", "job", "-n", namespace, job["metadata"]["name"])
    fixed = s3_model("denied", bucket, source, prefix)
    fixed["spec"]["compiler"]["timeoutSeconds"] = 1800
    apply(cluster, namespace, fixed)
    wait_condition(cluster, namespace, "nm", "denied", "Ready", timeout=300)
    secret(cluster, namespace, cluster_s3.admin.access_key, wrong)
    apply(cluster, namespace, exec_deployment("denied", "denied"))
    dep = wait_condition(cluster, namespace, "nd", "denied", "Stalled", timeout=240)
    refused = condition(dep, "Stalled")
    assert refused is not None
    assert refused["reason"] == "StorageAccessDenied", refused
    assert wrong not in json.dumps(dep)
