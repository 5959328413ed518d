"""Serving-pod start on the local kind cluster with a ~100 MB artifact: S3 (cold and warm) against a volume.

`python -m benchmarks.s3_pods [--state-dir .cluster] [--runs 3]` needs a running local cluster (`make cluster-up`;
its S3 server included). It compiles `neuron_runtime.zoo:heavy_mlp` (~96 MB fp32, target `cpu`) on this machine,
publishes it to the cluster's S3 server and copies it into a hostPath PersistentVolume, then applies the serving
Deployment the operator's own builder makes (`resources.serving.build_deployment`: the same pod template, probes,
volumes and environment as a NeuronDeployment's) and measures, `--runs` times each:

- **cold**: Deployment applied → pod Ready, artifact on S3 (an empty emptyDir: download + verify + load + parity +
  warm-up); every run is a new pod;
- **warm**: the runtime container of a Ready S3 pod is stopped (SIGTERM to its PID 1, exit 0 after the drain) and
  restarted by the kubelet → Ready again; the emptyDir keeps the verified copy, so nothing is downloaded;
- **volume**: Deployment applied → pod Ready, artifact on the PVC (the baseline without S3).

No operator runs: the pods are what it would create. Figures come with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.s3 import ARTIFACTS, heavy_request
from neuron_operator.api import NeuronDeployment, NeuronModel
from neuron_operator.resources.compile import S3Access
from neuron_operator.resources.fit import PlacementPlan
from neuron_operator.resources.serving import ServedArtifact, build_deployment, download_volume_limit
from neuron_operator.settings import OperatorSettings
from neuron_runtime import objectstore
from neuron_runtime.compile import compile_artifact
from neuron_runtime.config import S3Connection

REPO = Path(__file__).resolve().parent.parent


def _deployment_body(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "neuron.dev/v1alpha1",
        "kind": "NeuronDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1},
        "spec": {
            "modelRef": {"name": "heavy"},
            "replicas": 1,
            "placement": {"workers": 1, "coresPerWorker": 1},
            "batching": {"maxBatchSize": 1, "maxDelayMs": 2},
            "pod": {
                "nodeSelector": {"neuron.dev/local-exec": "true"},
                "tolerations": [{"key": "neuron.dev/local-exec", "operator": "Exists"}],
            },
        },
    }


def _ready_pod(cluster: Any, namespace: str, name: str, after: float, restarts: int | None = None) -> float:
    """Seconds from `after` (monotonic) until a pod of `name` is Ready (with more than `restarts` restarts)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        pods = json.loads(
            cluster.kubectl("get", "pods", "-n", namespace, "-l", f"neuron.dev/deployment={name}", "-o", "json").stdout
        )["items"]
        for pod in pods:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            ready = bool(statuses) and all(s.get("ready") for s in statuses)
            restarted = restarts is None or sum(s.get("restartCount", 0) for s in statuses) > restarts
            if ready and restarted and not pod["metadata"].get("deletionTimestamp"):
                return time.monotonic() - after
        time.sleep(0.2)  # polling the apiserver (a benchmark, not a test)
    raise TimeoutError(f"no ready pod of {name} in 600 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_pods", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".cluster")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    from localcluster.__main__ import cluster_for
    from localcluster.storage import hostpath_claim

    cluster = cluster_for(args.state_dir, "")
    if not cluster.exists() or not cluster.alive():
        print(f"no running local cluster in {args.state_dir} (make cluster-up)", file=sys.stderr)
        return 2
    s3 = cluster.ensure_s3()
    settings = OperatorSettings(runtime_image=cluster.images["runtime"], image_pull_policy="Never")
    built = compile_artifact(heavy_request(), ARTIFACTS)
    size = built.manifest.size_bytes
    key = built.manifest.cache_key
    namespace = f"bench-s3-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    load_before = os.getloadavg()
    errors: list[str] = []
    cold: list[float] = []
    warm: list[float] = []
    volume: list[float] = []
    shared = cluster.shared_dir / namespace
    try:
        bucket = "bench-pods"
        s3.create_bucket(bucket)
        keys = {"AWS_ACCESS_KEY_ID": s3.admin.access_key, "AWS_SECRET_ACCESS_KEY": s3.admin.secret_key}
        os.environ.update(keys)
        connection = S3Connection(endpoint_url=s3.cluster_endpoint_url, region="us-east-1", force_path_style=True)
        root = objectstore.S3Location(bucket, "artifacts")
        objectstore.publish_artifact(objectstore.client(connection), built.directory, root, lambda _m: None)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-keys", "namespace": namespace},
            "stringData": keys,
        }
        shared.mkdir(parents=True)
        shutil.copytree(built.directory, shared / key)
        shared.chmod(0o777)
        objs = [secret, *hostpath_claim(namespace, "artifacts", shared)]
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        model = NeuronModel.model_validate(
            {
                "apiVersion": "neuron.dev/v1alpha1",
                "kind": "NeuronModel",
                "metadata": {"name": "heavy", "namespace": namespace},
                "spec": {
                    "source": {"python": {"factory": "neuron_runtime.zoo:heavy_mlp"}},
                    "inputs": [{"name": "x", "shape": [1, 1024], "dtype": "float32"}],
                    "batchSize": 1,
                    "target": "cpu",
                },
            }
        )
        assert model.spec.target.value == "cpu"
        s3_art = ServedArtifact(
            model_name="heavy",
            cache_key=key,
            sha256=built.digest,
            target="cpu",
            claim=None,
            directory=f"{settings.artifact_mount_path}/{key}",
            s3_uri=root.child(key).uri,
            s3=S3Access(connection, "s3-keys"),
            size_bytes=size,
        )
        pvc_art = ServedArtifact(
            "heavy", key, built.digest, "cpu", "artifacts", f"{settings.artifact_mount_path}/{key}"
        )
        plan = PlacementPlan(0, (), None)
        print(
            f"artifact {size / 1e6:.1f} MB (graphs); download volume sizeLimit {download_volume_limit(size)}",
            flush=True,
        )
        for i in range(args.runs):
            for label, art, out in (("s3", s3_art, cold), ("pvc", pvc_art, volume)):
                name = f"{label}-{i}"
                dep = build_deployment(
                    NeuronDeployment.model_validate(_deployment_body(name, namespace)), art, plan, settings
                )
                dep["metadata"].pop("ownerReferences")
                started = time.monotonic()
                cluster.kubectl("apply", "-f", "-", input=json.dumps(dep))
                try:
                    out.append(_ready_pod(cluster, namespace, name, started))
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
                    continue
                if label == "s3":
                    pod = json.loads(
                        cluster.kubectl(
                            "get", "pods", "-n", namespace, "-l", f"neuron.dev/deployment={name}", "-o", "json"
                        ).stdout
                    )["items"][0]
                    restarts = sum(s.get("restartCount", 0) for s in pod["status"]["containerStatuses"])
                    started = time.monotonic()
                    cluster.kubectl(
                        "exec",
                        "-n",
                        namespace,
                        pod["metadata"]["name"],
                        "-c",
                        "runtime",
                        "--",
                        "python",
                        "-c",
                        "import os, signal; os.kill(1, signal.SIGTERM)",
                    )
                    try:
                        warm.append(_ready_pod(cluster, namespace, name, started, restarts))
                    except Exception as exc:
                        errors.append(f"{name} warm: {exc}")
                cluster.kubectl("delete", "deployment", "-n", namespace, name, "--wait=true", timeout=180)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", f"artifacts-{namespace}", "--wait=false", check=False)
        shutil.rmtree(shared, ignore_errors=True)

    def stats(v: list[float]) -> str:
        if not v:
            return "no successful run"
        return f"median {statistics.median(v):.1f} s (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})"

    print(f"pod start, S3 cold (new pod: download + verify + load + parity + warm-up): {stats(cold)}")
    print(f"pod start, S3 warm (container restart, the emptyDir copy verifies): {stats(warm)}")
    print(f"pod start, volume (PVC, no download): {stats(volume)}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
