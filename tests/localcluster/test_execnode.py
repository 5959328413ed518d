"""The local exec node against the real control plane: pods bound to ``local-exec`` run as host processes
with their own network namespace, volumes, env, NeuronCores, probes and status, and disappear cleanly."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, codecs
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, PersistentVolume, Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from localcluster.execnode.network import bridge_ip, names
from localcluster.wait import WaitTimeout, until

pytestmark = pytest.mark.skipif(
    os.environ.get("NEURON_TEST_USE_EXISTING_CLUSTER") == "1" or os.environ.get("NEURON_TEST_EXEC_NODE") == "0",
    reason="needs the project's local exec node",
)

NODE = "local-exec"
OPT_IN = {
    "tolerations": [{"key": "neuron.dev/local-exec", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"neuron.dev/local-exec": "true"},
}
PY = "python"  # resolved through the pod's PATH: the project's environment
SERVER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["POD_NAME"].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""
POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


# ------------------------------------------------------------------ helpers
def create(kube: Client, namespace: str, *objs: dict[str, Any]) -> None:
    for obj in objs:
        kube.create(codecs.from_dict({**obj, "metadata": {**obj["metadata"], "namespace": namespace}}))


def exec_pod(name: str, script: str, *, restart: str = "Never", grace: int = 2, **spec: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "ignored", "command": [PY, "-c", script], **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {
            **OPT_IN,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
            **spec,
        },
    }


def get_pod(kube: Client, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.get(Pod, name, namespace=ns).to_dict())


def terminated(kube: Client, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        pod = get_pod(kube, ns, name)
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            return pod
        return None

    return _until_pod(kube, ns, name, done, timeout, "finish")


def running(kube: Client, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def up() -> dict[str, Any] | None:
        pod = get_pod(kube, ns, name)
        return pod if pod["status"].get("phase") == "Running" and pod["status"].get("podIP") else None

    return _until_pod(kube, ns, name, up, timeout, "run")


def _until_pod(kube: Client, ns: str, name: str, probe: Any, timeout: float, what: str) -> dict[str, Any]:
    try:
        return dict(until(probe, timeout=timeout, what=f"pod {ns}/{name} to {what}"))
    except WaitTimeout as exc:
        status = json.dumps(get_pod(kube, ns, name).get("status"), indent=1)
        raise WaitTimeout(f"{exc}\nstatus: {status}") from None


def condition(pod: dict[str, Any], ctype: str) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions", []) if c["type"] == ctype), None)


def http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


def gone(kube: Client, ns: str, name: str) -> bool:
    try:
        kube.get(Pod, name, namespace=ns)
    except ApiError as exc:
        return exc.status.code == 404
    return False


# ------------------------------------------------------------------ tests
def test_node_is_registered_like_a_kubelet(kube: Client) -> None:
    node = kube.get(Node, NODE).to_dict()
    labels = node["metadata"]["labels"]
    assert labels["neuron.dev/local-exec"] == "true"
    assert labels["node.kubernetes.io/instance-type"] == "local.exec"
    assert {"key": "neuron.dev/local-exec", "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    st = node["status"]
    assert st["allocatable"]["aws.amazon.com/neuroncore"] == "4"
    assert st["allocatable"]["aws.amazon.com/neuron"] == "2"
    assert st["allocatable"]["pods"] == "32"
    assert {"type": "InternalIP", "address": bridge_ip(node["spec"]["podCIDR"])} in st["addresses"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])


def test_exit_code_and_termination_message(kube: Client, namespace: str) -> None:
    script = "import sys; open('/dev/termination-log', 'w').write('bad news'); sys.exit(3)"
    create(kube, namespace, exec_pod("fail", script))
    pod = terminated(kube, namespace, "fail")
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "bad news")
    cidr = kube.get(Node, NODE).spec.podCIDR
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(cidr)
    assert pod["status"]["hostIP"] == bridge_ip(cidr)


def test_missing_command_is_a_start_error(kube: Client, namespace: str) -> None:
    create(kube, namespace, exec_pod("nocmd", "", container={"command": ["no-such-binary-xyz", "--flag"]}))
    term = terminated(kube, namespace, "nocmd")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (127, "StartError")
    assert "no-such-binary-xyz" in term["message"]


def test_env_from_configmap_field_refs_and_expansion(kube: Client, namespace: str) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}
    script = (
        "import os; e = os.environ; open('/dev/termination-log', 'w').write("
        "' '.join([e['GREETING'], e['ME'], e['NS'], e['IP'], e['COMBINED'], e['FROM_ENVFROM'], os.getcwd()]))"
    )
    env = [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "COMBINED", "value": "$(GREETING)-$(ME)"},
    ]
    container = {
        "env": env,
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "FROM_ENVFROM_"}],
        "workingDir": "/work-dir",
        "volumeMounts": [{"name": "scratch", "mountPath": "/work-dir"}],
    }
    # FROM_ENVFROM is built from the prefixed key through $(VAR) expansion.
    container["env"].append({"name": "FROM_ENVFROM", "value": "$(FROM_ENVFROM_greeting)"})
    create(
        kube,
        namespace,
        cm,
        exec_pod("env", script, container=container, volumes=[{"name": "scratch", "emptyDir": {}}]),
    )
    pod = terminated(kube, namespace, "env")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, term
    assert term["message"].split() == [
        "hello",
        "env",
        namespace,
        pod["status"]["podIP"],
        "hello-env",
        "hello",
        "/work-dir",
    ]
    assert pod["status"]["phase"] == "Succeeded"


def test_two_pods_listen_on_the_same_port(kube: Client, namespace: str) -> None:
    for name in ("web-a", "web-b"):
        create(kube, namespace, exec_pod(name, SERVER, restart="Always", container={"env": [POD_NAME_ENV]}))
    ips = {name: running(kube, namespace, name)["status"]["podIP"] for name in ("web-a", "web-b")}
    assert ips["web-a"] != ips["web-b"]
    for name, ip in ips.items():
        assert until(lambda ip=ip: http(f"http://{ip}:8080/"), timeout=20, what=f"{name} to answer") == name


def test_readiness_probe_gates_ready(kube: Client, namespace: str, tmp_path: Path) -> None:
    flag_dir = tmp_path / "flags"
    flag_dir.mkdir()
    probe = {"exec": {"command": ["cat", "/flags/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    container = {
        "readinessProbe": probe,
        "volumeMounts": [{"name": "flags", "mountPath": "/flags", "readOnly": True}],
    }
    volumes = [{"name": "flags", "hostPath": {"path": str(flag_dir), "type": "Directory"}}]
    create(
        kube,
        namespace,
        exec_pod("gated", "import time; time.sleep(600)", container=container, volumes=volumes),
    )
    pod = running(kube, namespace, "gated")
    assert condition(pod, "Ready") == "False"  # the flag does not exist yet, so the probe cannot have passed
    (flag_dir / "ready").write_text("yes")
    until(lambda: condition(get_pod(kube, namespace, "gated"), "Ready") == "True", timeout=20, what="Ready=True")
    (flag_dir / "ready").unlink()
    until(
        lambda: condition(get_pod(kube, namespace, "gated"), "Ready") == "False",
        timeout=20,
        what="Ready=False",
    )


def test_deployment_and_service_endpoints(kube: Client, namespace: str) -> None:
    template = exec_pod(
        "x",
        SERVER,
        restart="Always",
        labels={"app": "web"},
        container={
            "env": [POD_NAME_ENV],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        },
    )
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": template["spec"]},
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    create(kube, namespace, deploy, svc)
    until(
        lambda: (kube.get(Deployment, "web", namespace=namespace).status.availableReplicas or 0) == 2,
        timeout=45,
        what="2 available replicas",
    )
    pod_ips = {p.status.podIP for p in kube.list(Pod, namespace=namespace, labels={"app": "web"})}

    def endpoint_ips() -> set[str] | None:
        ips = {
            addr
            for s in kube.list(EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": "web"})
            for e in s.endpoints or []
            if e.conditions and e.conditions.ready
            for addr in e.addresses
        }
        return ips if ips == pod_ips else None

    ips = until(endpoint_ips, timeout=30, what=f"EndpointSlice with {pod_ips}")
    answers = {http(f"http://{ip}:8080/") for ip in ips}
    assert len(answers) == 2


def test_neuroncores_are_contiguous_and_disjoint(kube: Client, namespace: str, cluster: Any) -> None:
    script = "import os, time; print('cores=' + os.environ['NEURON_RT_VISIBLE_CORES'], flush=True); time.sleep(600)"
    limits = {"resources": {"limits": {"aws.amazon.com/neuroncore": "2"}}}
    for name in ("nc-a", "nc-b"):
        create(kube, namespace, exec_pod(name, script, container=limits))
    cores = {}
    for name in ("nc-a", "nc-b"):
        pod = running(kube, namespace, name)
        log = Path(cluster.state) / "execnode" / "pods" / f"{namespace}_{name}_{pod['metadata']['uid']}" / "c.log"
        line = until(lambda log=log: log.exists() and log.read_text().strip(), timeout=20, what=f"{log}")
        cores[name] = line.removeprefix("cores=")
    assert sorted(cores.values()) == ["0-1", "2-3"], cores
    # All 4 cores are taken: a third pod cannot be scheduled.
    create(kube, namespace, exec_pod("nc-c", script, container=limits))
    until(
        lambda: condition(get_pod(kube, namespace, "nc-c"), "PodScheduled") == "False",
        timeout=20,
        what="nc-c unschedulable",
    )
    kube.delete(Pod, "nc-a", namespace=namespace)
    pod = running(kube, namespace, "nc-c", timeout=40)  # the freed range goes to the waiting pod
    log = Path(cluster.state) / "execnode" / "pods" / f"{namespace}_nc-c_{pod['metadata']['uid']}" / "c.log"
    assert (
        until(lambda: log.exists() and log.read_text().strip(), timeout=20, what=f"{log}") == f"cores={cores['nc-a']}"
    )


def test_in_cluster_api_access_with_projected_token(kube: Client, namespace: str, cluster: Any) -> None:
    rb = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "default-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
    }
    script = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
ns = open(f"{sa}/namespace").read()
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/api/v1/namespaces/{ns}/pods/{os.environ['HOSTNAME']}"
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
pod = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
open("/dev/termination-log", "w").write(pod["metadata"]["uid"])
"""
    create(kube, namespace, rb)
    until(
        lambda: (
            cluster.kubectl(
                "auth",
                "can-i",
                "get",
                "pods",
                "-n",
                namespace,
                f"--as=system:serviceaccount:{namespace}:default",
                check=False,
            ).stdout.strip()
            == "yes"
        ),
        timeout=10,
        what="the RoleBinding",
    )
    create(kube, namespace, exec_pod("api", script))
    pod = terminated(kube, namespace, "api")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, term
    assert term["message"] == pod["metadata"]["uid"]


def test_deletion_runs_prestop_then_sigterm(kube: Client, namespace: str, tmp_path: Path) -> None:
    script = """
import os, signal, sys, time
def bye(*_):
    open("/out/sigterm", "w").write(str(os.path.exists("/out/prestop")))
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
open("/out/started", "w").write("1")
time.sleep(600)
"""
    container = {
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo 1 > /out/prestop"]}}},
    }
    volumes = [{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]
    create(kube, namespace, exec_pod("sig", script, grace=20, container=container, volumes=volumes))
    running(kube, namespace, "sig")
    until((tmp_path / "started").exists, timeout=20, what="the handler to be installed")
    t0 = time.monotonic()
    kube.delete(Pod, "sig", namespace=namespace)
    until(lambda: gone(kube, namespace, "sig"), timeout=20, what="the pod to disappear")
    assert time.monotonic() - t0 < 15  # it exited on SIGTERM, not after the 20 s grace period
    assert (tmp_path / "sigterm").read_text() == "True"  # preStop ran before SIGTERM


def test_job_pods_complete(kube: Client, namespace: str) -> None:
    template = exec_pod("x", "print('done')", restart="Never")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}},
    }
    create(kube, namespace, job)
    until(
        lambda: (kube.get(Job, "once", namespace=namespace).status.succeeded or 0) == 1,
        timeout=30,
        what="Job succeeded",
    )


def test_crash_loop_restarts_with_backoff(kube: Client, namespace: str) -> None:
    create(kube, namespace, exec_pod("crash", "import sys; sys.exit(1)", restart="Always"))

    def backing_off() -> dict[str, Any] | None:
        st = get_pod(kube, namespace, "crash")["status"].get("containerStatuses", [{}])[0]
        return st if st.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" else None

    st = until(backing_off, timeout=20, what="CrashLoopBackOff")  # the first restart is immediate, then back-off
    assert st["lastState"]["terminated"]["exitCode"] == 1
    assert st["restartCount"] == 1
    assert get_pod(kube, namespace, "crash")["status"]["phase"] == "Running"


# ------------------------------------------------------------------ agent lifecycle (a second exec node)
@pytest.fixture
def second_node(cluster: Any, kube: Client, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Another exec node (admin credentials, its own CIDR) whose process the test may kill."""
    cidr, name = "10.244.7.0/24", "local-exec-2"
    state = tmp_path / "execnode2"
    port = json.loads((Path(cluster.state) / "cluster.json").read_text())["ports"]["apiserver"]
    argv = [sys.executable, "-m", "localcluster.execnode"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "e2e")}
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [
            *argv,
            "run",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--node-name={name}",
            f"--state-dir={state}",
            "--cores=2",
            f"--pod-cidr={cidr}",
            f"--apiserver-port={port}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = {
        "proc": proc,
        "name": name,
        "cidr": cidr,
        "state": state,
        "argv": argv,
        "env": env,
        "log": tmp_path / "agent.log",
    }
    try:
        until(
            lambda: (
                proc.poll() is None
                and any(c.type == "Ready" and c.status == "True" for c in kube.get(Node, name).status.conditions or [])
            ),
            timeout=30,
            what=f"node {name} Ready",
        )
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run([*argv, "cleanup", f"--state-dir={state}", f"--pod-cidr={cidr}"], env=env, check=False)
        log.close()
        kube.delete(Node, name)


def netns_pids(cidr: str) -> list[int]:
    prefix = names(cidr).netns_prefix
    nsdir = Path("/run/netns")
    pids: list[int] = []
    for ns in nsdir.iterdir() if nsdir.exists() else []:
        if ns.name.startswith(prefix):
            out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False).stdout
            pids += [int(p) for p in out.split()]
    return pids


def alive(pid: int) -> bool:
    """Running (zombies count as dead: our PID 1 may be slow to reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def _sleeper(node: str) -> dict[str, Any]:
    # A process with a child: both must go.
    pod = exec_pod("sleeper", "import subprocess; subprocess.run(['sleep', '600'])", grace=30)
    pod["spec"] |= {"nodeName": node}
    return pod


def test_agent_sigterm_stops_its_pods(kube: Client, namespace: str, second_node: dict[str, Any]) -> None:
    create(kube, namespace, _sleeper(second_node["name"]))
    running(kube, namespace, "sleeper")
    pids = until(
        lambda: len(netns_pids(second_node["cidr"])) >= 2 and netns_pids(second_node["cidr"]),
        timeout=20,
        what="the pod's processes",
    )
    os.kill(second_node["proc"].pid, signal.SIGTERM)
    assert second_node["proc"].wait(timeout=20) == 0
    until(lambda: not any(alive(p) for p in pids), timeout=5, what=f"processes {pids} to be gone")
    assert not link_exists(names(second_node["cidr"]).bridge)


def test_cleanup_after_sigkill_leaves_nothing(kube: Client, namespace: str, second_node: dict[str, Any]) -> None:
    create(kube, namespace, _sleeper(second_node["name"]))
    running(kube, namespace, "sleeper")
    pids = until(
        lambda: len(netns_pids(second_node["cidr"])) >= 2 and netns_pids(second_node["cidr"]),
        timeout=20,
        what="the pod's processes",
    )
    os.killpg(second_node["proc"].pid, signal.SIGKILL)
    second_node["proc"].wait()
    subprocess.run(
        [
            *second_node["argv"],
            "cleanup",
            f"--state-dir={second_node['state']}",
            f"--pod-cidr={second_node['cidr']}",
        ],
        env=second_node["env"],
        check=True,
    )
    until(lambda: not any(alive(p) for p in pids), timeout=5, what=f"processes {pids} to be gone")
    n = names(second_node["cidr"])
    assert not link_exists(n.bridge)
    assert not [p for p in Path("/run/netns").iterdir() if p.name.startswith(n.netns_prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    assert n.veth_prefix not in links


def test_init_containers_and_volumes(kube: Client, namespace: str) -> None:
    objs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "files"},
            "data": {"a.txt": "A", "b.txt": "B"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "stringData": {"pw": "hunter2"},
        },
        # The scheduler only places pods whose claims are bound: pre-bind the claim to a PV. Its source is
        # not local, so the exec node mounts one directory per claim.
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
                "volumeName": f"pv-{namespace}",
            },
        },
    ]
    kube.create(
        codecs.from_dict(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pv-{namespace}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "csi": {"driver": "fake.example.com", "volumeHandle": "x"},
                    "claimRef": {"namespace": namespace, "name": "data"},
                },
            }
        )
    )
    check = """
import os
def read(p): return open(p).read()
out = [read("/shared/init"), read("/cfg/renamed"), read("/single.txt"), read("/secret/pw"), read("/meta/labels"),
       str(os.path.exists("/cfg/b.txt"))]
try:
    open("/cfg/new", "w")
    out.append("writable")
except OSError:
    out.append("read-only")
open("/data/counter", "a").write("x")
out.append(read("/data/counter"))
open("/dev/termination-log", "w").write("|".join(out))
"""
    pod = exec_pod(
        "vols",
        check,
        labels={"app": "vols"},
        container={
            "volumeMounts": [
                {"name": "shared", "mountPath": "/shared"},
                {"name": "cfg", "mountPath": "/cfg"},
                {"name": "whole", "mountPath": "/single.txt", "subPath": "b.txt"},
                {"name": "secret", "mountPath": "/secret"},
                {"name": "meta", "mountPath": "/meta"},
                {"name": "data", "mountPath": "/data"},
            ]
        },
    )
    pod["spec"]["initContainers"] = [
        {
            "name": "init",
            "image": "ignored",
            "command": ["sh", "-c", "echo -n first > /shared/init"],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }
    ]
    pod["spec"]["volumes"] = [
        {"name": "shared", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "files", "items": [{"key": "a.txt", "path": "renamed"}]}},
        {"name": "whole", "configMap": {"name": "files"}},
        {"name": "secret", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {
            "name": "meta",
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
    ]
    try:
        _check_volumes(kube, namespace, objs, pod)
    finally:
        kube.delete(PersistentVolume, f"pv-{namespace}")


def _check_volumes(kube: Client, namespace: str, objs: list[dict[str, Any]], pod: dict[str, Any]) -> None:
    create(kube, namespace, *objs, pod)
    done = terminated(kube, namespace, "vols")
    assert done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0, term
    assert term["message"].split("|") == [
        "first",
        "A",
        "B",
        "hunter2",
        'app="vols"',
        "False",
        "read-only",
        "x",
    ]
    # The claim's directory outlives the pod: a second pod sees the first one's write.
    pod2 = exec_pod(
        "vols2",
        "open('/dev/termination-log', 'w').write(open('/data/counter').read())",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    )
    create(kube, namespace, pod2)
    assert (
        terminated(kube, namespace, "vols2")["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "x"
    )


def test_liveness_failure_restarts_the_container(kube: Client, namespace: str) -> None:
    probe = {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2}  # nothing listens there
    create(
        kube,
        namespace,
        exec_pod(
            "unhealthy",
            "import time; time.sleep(600)",
            restart="Always",
            grace=1,
            container={"livenessProbe": probe},
        ),
    )

    def restarted() -> dict[str, Any] | None:
        st = (get_pod(kube, namespace, "unhealthy")["status"].get("containerStatuses") or [{}])[0]
        return st if st.get("restartCount", 0) >= 1 else None

    st = until(restarted, timeout=30, what="a liveness restart")
    assert st["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
