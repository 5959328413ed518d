"""`python -m benchmarks.operator`: how fast the operator reacts, and how much it writes.

Creates a local kind cluster (its own name and state directory), runs the operator as a subprocess,
one compiled cpu NeuronModel, then applies N NeuronDeployments (placed on the simulated inf2-free CPU fleet,
so no process runs) and measures for each the time from `kubectl apply` returning to the runtime Deployment
existing, and from there to `Ready=True` on the NeuronDeployment. It then idles through resync passes and
reports the API writes per reconcile pass (expected: 0 once converged). Prints a table; bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

from localcluster.kind import EXEC_LABEL, KindCluster, KindConfig  # noqa: E402
from localcluster.storage import hostpath_claim  # noqa: E402
from localcluster.wait import until  # noqa: E402

EXEC = {EXEC_LABEL: "true"}
EXEC_TOL = [{"key": EXEC_LABEL, "operator": "Exists"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line.startswith("neuron_operator_") and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


def writes(port: int) -> float:
    return sum(v for k, v in metrics(port).items() if "api_writes_total" in k and 'kind="Lease"' not in k)


def passes(port: int) -> float:
    return sum(v for k, v in metrics(port).items() if "reconcile_passes_total" in k)


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=2, help="replicas per NeuronDeployment (kwok pods)")
    parser.add_argument(
        "--state-dir", type=Path, help="reuse a running local kind cluster (e.g. .cluster) instead of creating one"
    )
    parser.add_argument("--runtime-image", help="runtime image already in the nodes (default: the cluster's own)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="neuron-opbench-", dir="/var/tmp"))
    if args.state_dir:
        from localcluster.__main__ import cluster_for

        cluster = cluster_for(args.state_dir, "")  # no image re-import: pass --runtime-image of a loaded one
    else:
        cluster = KindCluster(KindConfig(name=f"neuron-bench-{os.getpid()}", state_dir=tmp / "state")).up()
    namespace = f"opbench-{os.getpid()}"
    cluster.kubectl("create", "namespace", namespace)
    op = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        for crd in ("neuronmodels.neuron.dev", "neurondeployments.neuron.dev"):
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
        art = cluster.shared_dir / f"{namespace}-artifacts"
        art.mkdir()
        art.chmod(0o777)  # compile Jobs run as uid 65532
        storage = hostpath_claim(namespace, "neuron-artifacts", art)
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": storage}))
        mport = free_port()
        env = {
            **cluster.env(),
            "NEURON_OPERATOR_COMPILE_NODE_SELECTOR": json.dumps(EXEC),
            "NEURON_OPERATOR_COMPILE_TOLERATIONS": json.dumps(EXEC_TOL),
            "NEURON_OPERATOR_RUNTIME_IMAGE": args.runtime_image or cluster.images["runtime"],
            "NEURON_OPERATOR_COMPILE_CPU": "500m",
            "NEURON_OPERATOR_COMPILE_MEMORY": "2Gi",
            "NEURON_OPERATOR_RESYNC_SECONDS": "2",
            "NEURON_OPERATOR_METRICS_PORT": str(mport),
            "NEURON_OPERATOR_HEALTH_PORT": str(free_port()),
            "NEURON_OPERATOR_NAMESPACES": json.dumps([namespace]),
            "NEURON_OPERATOR_LEADER_ELECTION_LEASE": namespace,
            "NEURON_OPERATOR_LOG_LEVEL": "INFO",
        }
        log = (tmp / "operator.log").open("wb")
        op = subprocess.Popen([sys.executable, "-m", "neuron_operator.cli", "run"], env=env, stdout=log, stderr=log)
        until(lambda: metrics(mport) is not None, timeout=60, what="operator metrics")
        model = {
            "apiVersion": "neuron.dev/v1alpha1",
            "kind": "NeuronModel",
            "metadata": {"name": "mlp", "namespace": namespace},
            "spec": {
                "source": {"python": {"factory": "neuron_runtime.zoo:tiny_mlp"}},
                "inputs": [{"name": "x", "shape": [4, 256], "dtype": "float32"}],
                "batchSize": 4,
                "dynamicBatch": True,
                "target": "cpu",
            },
        }
        t0 = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(model))

        def ready(kind: str, name: str) -> bool:
            obj = json.loads(cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)
            return any(
                c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", [])
            )

        until(lambda: ready("nm", "mlp"), timeout=300, interval=0.05, what="the model")
        compile_s = time.monotonic() - t0
        to_deployment, to_ready = [], []
        for i in range(args.deployments):
            nd = {
                "apiVersion": "neuron.dev/v1alpha1",
                "kind": "NeuronDeployment",
                "metadata": {"name": f"nd-{i}", "namespace": namespace},
                "spec": {
                    "modelRef": {"name": "mlp"},
                    "replicas": args.replicas,
                    "pod": {"nodeSelector": {"node.kubernetes.io/instance-type": "m5.xlarge"}},
                },
            }
            cluster.kubectl("apply", "-f", "-", input=json.dumps(nd))
            start = time.monotonic()
            until(
                lambda i=i: (
                    cluster.kubectl("get", "-n", namespace, "deployment", f"nd-{i}", check=False).returncode == 0
                ),
                timeout=60,
                interval=0.01,
                what="the Deployment",
            )
            to_deployment.append(time.monotonic() - start)
            until(lambda i=i: ready("nd", f"nd-{i}"), timeout=60, interval=0.02, what="Ready")
            to_ready.append(time.monotonic() - start)
        log.flush()
        lines0, t_idle = _lines(tmp / "operator.log"), time.monotonic()
        w0, p0 = writes(mport), passes(mport)
        until(
            lambda: passes(mport) >= p0 + 3 * (args.deployments + 1),
            timeout=max(60, args.deployments),
            what="three resyncs of everything",
        )
        idle_writes, idle_passes = writes(mport) - w0, passes(mport) - p0
        idle_seconds = time.monotonic() - t_idle
        idle_lines = _lines(tmp / "operator.log") - lines0
        ms = lambda xs: f"p50 {statistics.median(xs) * 1000:7.1f} ms  max {max(xs) * 1000:7.1f} ms"  # noqa: E731
        print(f"compile (cpu tiny MLP, Job on the kind node) apply -> NeuronModel Ready: {compile_s:.1f} s")
        print(f"apply NeuronDeployment -> Deployment exists   ({args.deployments} runs): {ms(to_deployment)}")
        print(f"apply NeuronDeployment -> Ready (kwok pods)    ({args.deployments} runs): {ms(to_ready)}")
        print(
            f"idle resync: {idle_passes:.0f} reconcile passes, {idle_writes:.0f} API writes "
            f"({idle_writes / max(idle_passes, 1):.2f} writes/pass)"
        )
        print(
            f"operator log at INFO, idle with {args.deployments + 1} objects: {idle_lines} lines in "
            f"{idle_seconds:.1f} s ({idle_lines / idle_seconds:.2f} lines/s); "
            f"whole run: {_lines(tmp / 'operator.log')} lines"
        )
        totals = {k.split("{")[1].rstrip("}"): v for k, v in metrics(mport).items() if "api_writes_total" in k}
        print("all writes so far by verb/kind:", json.dumps(totals, sort_keys=True))
        return 0
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=20)
        if args.state_dir:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        else:
            cluster.down()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
