"""``make demo``: a kind cluster, the Helm chart, real compiles and real serving (cpu, and inf2 on simulated Neuron).

1. creates the local kind cluster ``neuron-dev`` (state in ``.cluster/``; or reuses a running one): every
   image is built on this machine (``e2e/kind/``), the operator and runtime images from the ``Dockerfile``;
2. ``helm install``s ``charts/neuron-operator`` into ``neuron-demo`` with those images: the operator runs as a
   real container (uid 65532, read-only root filesystem) with the chart's ServiceAccount and RBAC;
3. creates the artifact PersistentVolumeClaim (a hostPath volume in the cluster's shared directory);
4. applies the cpu examples from ``examples/`` (a CNN built in code and its NeuronDeployment), pinning
   their pods to the kind node that runs pods (kwok's simulated nodes cannot run containers) — nothing
   else is changed;
5. applies the same CNN with ``target: inf2`` and a NeuronDeployment of 2 NeuronCores per replica
   (``examples/neuronmodel-small-cnn-inf2.yaml``, ``examples/neurondeployment-small-cnn-inf2.yaml``). It runs on
   SIMULATED Neuron hardware: the kind worker labelled inf2.xlarge whose simulated device plugin hands out 2
   NeuronCores, and a runtime image with a SIMULATED Neuron SDK (``e2e/neuron-sdk-sim``: the documented
   torch-neuronx API, executing on the CPU). Local changes: the compile Job's resources fit this machine, and
   the serving pods select and tolerate the simulated node (kwok's inf2 nodes run no containers);
6. applies the CNN with its artifacts on S3 (``examples/neuronmodel-small-cnn-s3.yaml``,
   ``examples/neurondeployment-small-cnn-s3.yaml``) against the local cluster's real S3 server (SeaweedFS ``weed``,
   built from Go modules, started by ``localcluster``). Local changes: spec.s3.endpoint is that server, and the
   demo creates its bucket and the ``s3-keys`` Secret with the server's keys;
7. shows progress until all are Ready, shows the compile Jobs' ``kubectl logs`` and the serving pods' image
   and uid, sends Open Inference Protocol v2 requests through the Services (via the apiserver's service
   proxy) and prints the answers and the per-NeuronCore call counts from the inf2 pod's ``/metrics``, then
   ``kubectl get nm,nd -o wide``.

``python e2e/demo.py down`` deletes the cluster and the demo's artifacts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster.__main__ import DEFAULT_NAME, cluster_for
from localcluster.kind import EXEC_LABEL, SIMULATED_NEURON_LABEL, KindCluster
from localcluster.storage import hostpath_claim
from localcluster.wait import until

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cluster"
NAMESPACE = "neuron-demo"
EXEC_SELECTOR = {EXEC_LABEL: "true"}
EXEC_TOLERATIONS = [{"key": EXEC_LABEL, "operator": "Exists"}]
MODEL_FILE = REPO / "examples" / "neuronmodel-small-cnn-cpu.yaml"
DEPLOYMENT_FILE = REPO / "examples" / "neurondeployment-small-cnn-cpu.yaml"
INF2_MODEL_FILE = REPO / "examples" / "neuronmodel-small-cnn-inf2.yaml"
INF2_DEPLOYMENT_FILE = REPO / "examples" / "neurondeployment-small-cnn-inf2.yaml"
S3_MODEL_FILE = REPO / "examples" / "neuronmodel-small-cnn-s3.yaml"
S3_DEPLOYMENT_FILE = REPO / "examples" / "neurondeployment-small-cnn-s3.yaml"
SIMULATED_TOLERATION = {"key": SIMULATED_NEURON_LABEL, "operator": "Exists", "effect": "NoSchedule"}


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def helm(cluster: KindCluster, *args: str) -> str:
    proc = subprocess.run(
        [str(cluster.tools.helm), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def ensure_cluster() -> KindCluster:
    cluster = cluster_for(STATE, DEFAULT_NAME)
    if cluster.exists():
        if cluster.alive():
            say(f"reusing the kind cluster {cluster.name} (state in {STATE})")
            cluster.ensure_images()
            return cluster
        cluster.down()
    say(
        "creating the kind cluster (images built on this machine: node, operator, runtime, simulated Neuron "
        "device plugin; the first run builds them, see the README for times)"
    )
    return cluster.up()


def split_image(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag}


def install_chart(cluster: KindCluster) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    values = {
        "image": split_image(cluster.images["operator"]),
        "runtimeImages": {
            "cpu": split_image(cluster.images["runtime"]),
            # SIMULATED Neuron SDK (local testing only): the real chart value takes the Neuron runtime image.
            "neuronx": split_image(cluster.images["neuron-sim"]),
        },
        "nodeSelector": EXEC_SELECTOR,
        "tolerations": EXEC_TOLERATIONS,
        "resyncSeconds": 30,
        "compile": {
            "nodeSelector": EXEC_SELECTOR,
            "tolerations": EXEC_TOLERATIONS,
            # Two compiles and the serving pods share the kind node's 2 CPUs (about 1 is left after the control plane):
            # a 1-CPU request would leave a compile Pending behind a serving pod.
            "resources": {"cpu": "500m", "memory": "2Gi"},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    values_file = REPO / ".demo" / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    say(f"helm upgrade --install neuron-operator charts/neuron-operator (image {cluster.images['operator']})")
    helm(
        cluster,
        "upgrade",
        "--install",
        "neuron-operator",
        str(REPO / "charts" / "neuron-operator"),
        "--namespace",
        NAMESPACE,
        "--values",
        str(values_file),
    )
    until(
        lambda: (
            json.loads(
                cluster.kubectl(
                    "get", "deployment", "-n", NAMESPACE, "-l", "app.kubernetes.io/name=neuron-operator", "-o", "json"
                ).stdout
            )["items"][0]
            .get("status", {})
            .get("availableReplicas")
        ),
        timeout=120,
        what="the operator pod to be available",
    )


def create_storage(cluster: KindCluster) -> None:
    artifacts = cluster.shared_dir / "demo-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    artifacts.chmod(0o777)  # compile Jobs run as uid 65532
    objs = hostpath_claim(NAMESPACE, "neuron-artifacts", artifacts)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def apply_examples(cluster: KindCluster) -> tuple[str, str]:
    model = yaml.safe_load(MODEL_FILE.read_text())
    deployment = yaml.safe_load(DEPLOYMENT_FILE.read_text())
    # The only local change: the serving pods must run on the kind node (kwok nodes run no containers).
    deployment["spec"]["pod"] = {"nodeSelector": EXEC_SELECTOR, "tolerations": EXEC_TOLERATIONS}
    say(f"kubectl apply {MODEL_FILE.relative_to(REPO)} and {DEPLOYMENT_FILE.relative_to(REPO)}")
    for obj in (model, deployment):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
    return model["metadata"]["name"], deployment["metadata"]["name"]


def apply_inf2_examples(cluster: KindCluster) -> tuple[str, str]:
    model = yaml.safe_load(INF2_MODEL_FILE.read_text())
    deployment = yaml.safe_load(INF2_DEPLOYMENT_FILE.read_text())
    # Local changes: a compile Job this 2-CPU machine can hold, and serving pods that tolerate the SIMULATED
    # Neuron node's own taint (the operator adds the aws.amazon.com/neuron toleration itself).
    model["spec"]["compiler"]["resources"] = {"requests": {"cpu": "500m", "memory": "2Gi"}}
    deployment["spec"]["pod"] = {
        "nodeSelector": {SIMULATED_NEURON_LABEL: "true"},  # the kind worker, not a kwok node (no containers)
        "tolerations": [SIMULATED_TOLERATION],
    }
    deployment["spec"]["resources"]["requests"]["cpu"] = "250m"
    say(
        f"kubectl apply {INF2_MODEL_FILE.relative_to(REPO)} and {INF2_DEPLOYMENT_FILE.relative_to(REPO)} "
        "(SIMULATED Neuron node and SDK)"
    )
    for obj in (model, deployment):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
    return model["metadata"]["name"], deployment["metadata"]["name"]


def apply_s3_examples(cluster: KindCluster) -> tuple[str, str]:
    model = yaml.safe_load(S3_MODEL_FILE.read_text())
    deployment = yaml.safe_load(S3_DEPLOYMENT_FILE.read_text())
    s3 = cluster.ensure_s3()
    bucket = model["spec"]["storage"]["uri"].removeprefix("s3://").split("/", 1)[0]
    s3.create_bucket(bucket)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": model["spec"]["s3"]["credentialsSecretRef"]["name"]},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.admin.access_key, "AWS_SECRET_ACCESS_KEY": s3.admin.secret_key},
    }
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(secret))
    # Local changes: the local S3 server's endpoint, and pods on the kind node that runs containers.
    model["spec"]["s3"]["endpoint"] = s3.cluster_endpoint_url
    deployment["spec"]["pod"] = {"nodeSelector": EXEC_SELECTOR, "tolerations": EXEC_TOLERATIONS}
    say(
        f"kubectl apply {S3_MODEL_FILE.relative_to(REPO)} and {S3_DEPLOYMENT_FILE.relative_to(REPO)} (artifacts in "
        f"s3://{bucket} on the local S3 server {s3.cluster_endpoint_url}, a real SeaweedFS)"
    )
    for obj in (model, deployment):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
    return model["metadata"]["name"], deployment["metadata"]["name"]


def wait_ready(cluster: KindCluster, names: tuple[str, ...]) -> None:
    last = ""
    start = time.monotonic()

    def ready() -> bool:
        nonlocal last
        table = cluster.kubectl("get", "nm,nd", "-n", NAMESPACE).stdout
        if table != last:
            print(f"--- {time.monotonic() - start:5.1f}s\n{table}", flush=True)
            last = table
        objs = json.loads(cluster.kubectl("get", "nm,nd", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        return all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in (o.get("status") or {}).get("conditions", []))
            for o in objs
            if o["metadata"]["name"] in names
        ) and len(objs) >= len(names)

    until(ready, timeout=600, interval=1.0, what="the model and the deployment to be Ready")


def infer(cluster: KindCluster, deployment: str, model: str, request_id: str = "make-demo") -> dict[str, Any]:
    nd = json.loads(cluster.kubectl("get", "nd", deployment, "-n", NAMESPACE, "-o", "json").stdout)
    shape = [1, 3, 64, 64]
    body = {
        "id": request_id,
        "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [0.1] * (3 * 64 * 64)}],
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/{deployment}:http/proxy/v2/models/{model}/infer"
    say(f"POST {nd['status']['endpoint']}/infer (through the Service, via the apiserver proxy)")
    return cluster.post_raw(path, body)


def core_counts(cluster: KindCluster, deployment: str) -> dict[str, float]:
    """Per-NeuronCore call counts from the serving pod's /metrics (via the apiserver's pod proxy)."""
    selector = f"neuron.dev/deployment={deployment}"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout)["items"]
    pod = next(p for p in pods if not p["metadata"].get("deletionTimestamp"))
    name = pod["metadata"]["name"]
    text = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}:8080/proxy/metrics").stdout
    counts = {}
    for line in text.splitlines():
        if line.startswith("neuron_runtime_neuroncore_executions_total{"):
            core = line.split('neuroncore="', 1)[1].split('"', 1)[0]
            counts[core] = float(line.rsplit(" ", 1)[1])
    visible = cluster.kubectl(
        "exec", "-n", NAMESPACE, name, "--", "printenv", "NEURON_RT_VISIBLE_CORES", check=False
    ).stdout.strip()
    say(f"pod {name} on node {pod['spec']['nodeName']}: NEURON_RT_VISIBLE_CORES={visible} (simulated device plugin)")
    return counts


def show_workloads(cluster: KindCluster, deployment: str, jobs: bool = True) -> None:
    """What ran: the compile Jobs' logs, and the serving pod's image, node and user."""
    if jobs:
        say("kubectl logs job/compile-... (the compile Jobs' container logs)")
    job_list = json.loads(cluster.kubectl("get", "jobs", "-n", NAMESPACE, "-o", "json").stdout)["items"] if jobs else []
    for job in job_list:
        name = job["metadata"]["name"]
        print(cluster.kubectl("logs", "-n", NAMESPACE, f"job/{name}", "--tail=15", check=False).stdout, flush=True)
    selectors = [("operator", "app.kubernetes.io/name=neuron-operator")] if jobs else []
    for what, selector in (*selectors, ("serving", f"neuron.dev/deployment={deployment}")):
        pods = json.loads(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout)["items"]
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            name = pod["metadata"]["name"]
            ident = cluster.kubectl(
                "exec",
                "-n",
                NAMESPACE,
                name,
                "--",
                "python",
                "-c",
                "import os; print(f'uid={os.getuid()} gid={os.getgid()}', end='')",
                check=False,
            ).stdout
            image = pod["spec"]["containers"][0]["image"]
            say(f"{what} pod {name}: image {image} on node {pod['spec']['nodeName']}, running as {ident}")


def up() -> int:
    t0 = time.monotonic()
    (REPO / ".demo").mkdir(exist_ok=True)
    cluster = ensure_cluster()
    install_chart(cluster)
    create_storage(cluster)
    model, deployment = apply_examples(cluster)
    inf2_model, inf2_deployment = apply_inf2_examples(cluster)
    s3_model, s3_deployment = apply_s3_examples(cluster)
    wait_ready(cluster, (model, deployment, inf2_model, inf2_deployment, s3_model, s3_deployment))
    show_workloads(cluster, deployment)
    show_workloads(cluster, inf2_deployment, jobs=False)
    answer = infer(cluster, deployment, model)
    out = answer["outputs"][0]
    say(f"inference result: id={answer['id']} model={answer['model_name']} output {out['name']} shape={out['shape']}")
    print("logits:", [round(v, 3) for v in out["data"]], flush=True)
    for i in range(8):
        answer = infer(cluster, inf2_deployment, inf2_model, request_id=f"make-demo-inf2-{i}")
    out = answer["outputs"][0]
    say(
        f"inference result (target inf2, SIMULATED Neuron SDK on the SIMULATED inf2.xlarge node): id={answer['id']} "
        f"model={answer['model_name']} output {out['name']} shape={out['shape']}"
    )
    print("logits:", [round(v, 3) for v in out["data"]], flush=True)
    answer = infer(cluster, s3_deployment, s3_model, request_id="make-demo-s3")
    artifact = json.loads(cluster.kubectl("get", "nm", s3_model, "-n", NAMESPACE, "-o", "json").stdout)["status"]
    say(
        f"inference result (artifact downloaded from {artifact['artifact']['uri']} and verified): id={answer['id']} "
        f"shape={answer['outputs'][0]['shape']}"
    )
    counts = core_counts(cluster, inf2_deployment)
    say(f"calls per NeuronCore (neuron_runtime_neuroncore_executions_total, with warm-up and parity): {counts}")
    say("kubectl get nm,nd -o wide")
    print(cluster.kubectl("get", "nm,nd", "-n", NAMESPACE, "-o", "wide").stdout)
    say(
        f"demo finished in {time.monotonic() - t0:.0f}s; export KUBECONFIG={cluster.kubeconfig}; "
        "`make demo-down` to stop"
    )
    return 0


def down() -> int:
    cluster_for(STATE, DEFAULT_NAME).down()
    shutil.rmtree(REPO / ".demo", ignore_errors=True)
    say("demo removed")
    return 0


if __name__ == "__main__":
    sys.exit({"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]())
