"""``make demo``: local cluster, the Helm chart, a real compile and real serving, one inference request.

1. starts the local control plane in ``.cluster/`` (or reuses a running one);
2. ``helm install``s ``charts/neuron-operator`` into ``neuron-demo``: the operator pod runs for real on the
   local exec node, with the chart's ServiceAccount and RBAC;
3. creates the artifact PersistentVolumeClaim (bound to a directory under ``.demo/``);
4. applies the cpu examples from ``examples/`` (a CNN built in code and its NeuronDeployment), pinning
   their pods to the exec node (kwok nodes cannot run processes) — nothing else is changed;
5. shows progress until both are Ready, sends an Open Inference Protocol v2 request through the
   Service (via the apiserver's service proxy) and prints the answer, then ``kubectl get nm,nd -o wide``.

``python e2e/demo.py down`` removes the cluster and the demo's artifacts.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster.cluster import ClusterConfig, LocalCluster, free_pod_cidr
from localcluster.storage import hostpath_claim
from localcluster.wait import until

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cluster"
ARTIFACTS = REPO / ".demo" / "artifacts"
NAMESPACE = "neuron-demo"
EXEC_SELECTOR = {"neuron.dev/local-exec": "true"}
EXEC_TOLERATIONS = [{"key": "neuron.dev/local-exec", "operator": "Exists"}]
MODEL_FILE = REPO / "examples" / "neuronmodel-small-cnn-cpu.yaml"
DEPLOYMENT_FILE = REPO / "examples" / "neurondeployment-small-cnn-cpu.yaml"


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def helm(cluster: LocalCluster, *args: str) -> str:
    proc = subprocess.run(
        [str(cluster.tools.helm), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def ensure_cluster() -> LocalCluster:
    cluster = LocalCluster(ClusterConfig(state_dir=STATE))
    if (STATE / "cluster.json").exists():
        cluster.load()
        if all(s["alive"] for s in cluster.status().values()):
            say(f"reusing the local cluster in {STATE}")
            return cluster
        cluster.down()
    say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok, exec node)")
    cluster.config.exec_pod_cidr = free_pod_cidr()
    return cluster.up()


def install_chart(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    values = {
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
    say("helm upgrade --install neuron-operator charts/neuron-operator (operator pod on the local exec node)")
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


def create_storage(cluster: LocalCluster) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    objs = hostpath_claim(NAMESPACE, "neuron-artifacts", ARTIFACTS)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def apply_examples(cluster: LocalCluster) -> tuple[str, str]:
    model = yaml.safe_load(MODEL_FILE.read_text())
    deployment = yaml.safe_load(DEPLOYMENT_FILE.read_text())
    # The only local change: the serving pods must run on the exec node (kwok nodes run no processes).
    deployment["spec"]["pod"] = {"nodeSelector": EXEC_SELECTOR, "tolerations": EXEC_TOLERATIONS}
    say(f"kubectl apply {MODEL_FILE.relative_to(REPO)} and {DEPLOYMENT_FILE.relative_to(REPO)}")
    for obj in (model, deployment):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
    return model["metadata"]["name"], deployment["metadata"]["name"]


def wait_ready(cluster: LocalCluster, model: str, deployment: str) -> None:
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


def infer(cluster: LocalCluster, deployment: str, model: str) -> dict[str, Any]:
    nd = json.loads(cluster.kubectl("get", "nd", deployment, "-n", NAMESPACE, "-o", "json").stdout)
    shape = [1, 3, 64, 64]
    body = {
        "id": "make-demo",
        "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [0.1] * (3 * 64 * 64)}],
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/{deployment}:http/proxy/v2/models/{model}/infer"
    say(f"POST {nd['status']['endpoint']}/infer (through the Service, via the apiserver proxy)")
    ctx = ssl.create_default_context(cafile=str(cluster.state / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(cluster.state / "pki" / "admin.crt"), str(cluster.state / "pki" / "admin.key"))
    req = urllib.request.Request(
        cluster.server + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
        return dict(json.loads(r.read()))


def up() -> int:
    t0 = time.monotonic()
    (REPO / ".demo").mkdir(exist_ok=True)
    cluster = ensure_cluster()
    install_chart(cluster)
    create_storage(cluster)
    model, deployment = apply_examples(cluster)
    wait_ready(cluster, model, deployment)
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
    LocalCluster(ClusterConfig(state_dir=STATE)).down()
    shutil.rmtree(REPO / ".demo", ignore_errors=True)
    say("demo removed")
    return 0


if __name__ == "__main__":
    sys.exit({"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]())
