"""``make demo``: a local kind cluster, the Helm chart, a real compile and real serving, one inference request.

1. creates the local kind cluster ``neuron-dev`` (state in ``.cluster/``; or reuses a running one): every
   image is built on this machine (``e2e/kind/``), the operator and runtime images from the ``Dockerfile``;
2. ``helm install``s ``charts/neuron-operator`` into ``neuron-demo`` with those images: the operator runs as a
   real container (uid 65532, read-only root filesystem) with the chart's ServiceAccount and RBAC;
3. creates the artifact PersistentVolumeClaim (a hostPath volume in the cluster's shared directory);
4. applies the cpu examples from ``examples/`` (a CNN built in code and its NeuronDeployment), pinning
   their pods to the kind node that runs pods (kwok's simulated nodes cannot run containers) — nothing
   else is changed;
5. shows progress until both are Ready, shows the compile Job's ``kubectl logs`` and the serving pod's image
   and uid, sends an Open Inference Protocol v2 request through the Service (via the apiserver's service
   proxy) and prints the answer, then ``kubectl get nm,nd -o wide``.

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
from localcluster.kind import EXEC_LABEL, KindCluster
from localcluster.storage import hostpath_claim
from localcluster.wait import until

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cluster"
NAMESPACE = "neuron-demo"
EXEC_SELECTOR = {EXEC_LABEL: "true"}
EXEC_TOLERATIONS = [{"key": EXEC_LABEL, "operator": "Exists"}]
MODEL_FILE = REPO / "examples" / "neuronmodel-small-cnn-cpu.yaml"
DEPLOYMENT_FILE = REPO / "examples" / "neurondeployment-small-cnn-cpu.yaml"


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
        "runtimeImages": {"cpu": split_image(cluster.images["runtime"])},
        "nodeSelector": EXEC_SELECTOR,
        "tolerations": EXEC_TOLERATIONS,
        "resyncSeconds": 30,
        "compile": {
            "nodeSelector": EXEC_SELECTOR,
            "tolerations": EXEC_TOLERATIONS,
            "resources": {"cpu": "1", "memory": "2Gi"},
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


def wait_ready(cluster: KindCluster, model: str, deployment: str) -> None:
    last = ""
    start = time.monotonic()

    def ready() -> bool:
        nonlocal last
        table = cluster.kubectl("get", "nm,nd", "-n", NAMESPACE).stdout
        if table != last:
            print(f"--- {time.monotonic() - start:5.1f}s\n{table}", flush=True)
            last = table
        objs = json.loads(cluster.kubectl("get", "nm,nd", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        return (
            all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (o.get("status") or {}).get("conditions", [])
                )
                for o in objs
                if o["metadata"]["name"] in (model, deployment)
            )
            and len(objs) >= 2
        )

    until(ready, timeout=600, interval=1.0, what="the model and the deployment to be Ready")


def infer(cluster: KindCluster, deployment: str, model: str) -> dict[str, Any]:
    nd = json.loads(cluster.kubectl("get", "nd", deployment, "-n", NAMESPACE, "-o", "json").stdout)
    shape = [1, 3, 64, 64]
    body = {
        "id": "make-demo",
        "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [0.1] * (3 * 64 * 64)}],
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/{deployment}:http/proxy/v2/models/{model}/infer"
    say(f"POST {nd['status']['endpoint']}/infer (through the Service, via the apiserver proxy)")
    return cluster.post_raw(path, body)


def show_workloads(cluster: KindCluster, deployment: str) -> None:
    """What ran: the compile Job's log, and the serving pod's image, node and user."""
    say("kubectl logs job/compile-... (the compile Job's container log)")
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    for job in jobs:
        name = job["metadata"]["name"]
        print(cluster.kubectl("logs", "-n", NAMESPACE, f"job/{name}", "--tail=15", check=False).stdout, flush=True)
    for what, selector in (
        ("operator", "app.kubernetes.io/name=neuron-operator"),
        ("serving", f"neuron.dev/deployment={deployment}"),
    ):
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
    wait_ready(cluster, model, deployment)
    show_workloads(cluster, deployment)
    answer = infer(cluster, deployment, model)
    out = answer["outputs"][0]
    say(f"inference result: id={answer['id']} model={answer['model_name']} output {out['name']} shape={out['shape']}")
    print("logits:", [round(v, 3) for v in out["data"]], flush=True)
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
