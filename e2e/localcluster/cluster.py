"""Start and stop the local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok with the simulated fleet, and the local exec node — all as plain processes on loopback.

One implementation serves ``make cluster-up``/``cluster-down`` (state in ``.cluster/``) and the pytest
session fixture (state in a temporary directory), so the tests exercise exactly what developers run.

Every process is started in its own session with its pid recorded under ``<state>/pids``; ``down``
reads those files (so it works from a different process than ``up``), stops each process group with
SIGTERM then SIGKILL, waits for the ports to be free and removes the state directory.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig

from localcluster.execnode.network import cidr_available
from localcluster.fleet import DEFAULT_FLEET, NodeGroup, fleet_manifests
from localcluster.pki import PKI, CertPair
from localcluster.tools import Tools, ensure_tools
from localcluster.wait import until

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # ClusterIP of the `kubernetes` Service (first address of SERVICE_CIDR)
KWOK_POD_CIDR = "10.240.0.1/16"  # fake pod IPs handed out by kwok (never routed)
EXEC_NODE_NAME = "local-exec"
#: Name under which the Neuron Helm chart runs its second scheduler (with the Neuron scheduler extension).
NEURON_SCHEDULER_NAME = "my-scheduler"
# Start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "execnode")


class ComponentDiedError(RuntimeError):
    """A control-plane process exited while we waited for it (fatal: no point in waiting longer)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_pod_cidr(prefix: str = "10.241") -> str:
    """The first ``<prefix>.N.0/24`` no exec node on this host holds (clusters side by side never collide)."""
    return next(c for c in (f"{prefix}.{i}.0/24" for i in range(256)) if cidr_available(c))


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ClusterConfig:
    """What to start. Ports default to free ones, chosen at ``up`` and persisted in the state."""

    state_dir: Path
    fleet: tuple[NodeGroup, ...] = DEFAULT_FLEET
    exec_node: bool = True
    #: NeuronCores the exec node advertises (and hands out through NEURON_RT_VISIBLE_CORES).
    exec_node_cores: int = 4
    #: Real, routed pod network of the exec node (one network namespace per pod on a bridge).
    exec_pod_cidr: str = "10.241.0.0/24"
    ports: dict[str, int] = field(default_factory=dict)


class LocalCluster:
    """Handle on a local cluster living in ``config.state_dir``."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.state = config.state_dir.resolve()
        self.pids = self.state / "pids"
        self.logs = self.state / "logs"
        self._tools: Tools | None = None

    # ---------------------------------------------------------------- paths and metadata
    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @functools.cached_property
    def client(self) -> Client:
        """A lightkube client authenticated with the admin kubeconfig."""
        return Client(KubeConfig.from_file(str(self.kubeconfig)), field_manager="neuron-tests")

    @property
    def tools(self) -> Tools:
        if self._tools is None:
            self._tools = ensure_tools()
        return self._tools

    def _meta_path(self) -> Path:
        return self.state / "cluster.json"

    def load(self) -> LocalCluster:
        """Re-read ports and settings saved by ``up`` (for ``down``/``status`` from another process)."""
        meta = json.loads(self._meta_path().read_text())
        self.config.ports = meta["ports"]
        self.config.exec_pod_cidr = meta["exec_pod_cidr"]
        return self

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.config.ports['apiserver']}"

    # ---------------------------------------------------------------- lifecycle
    def up(self) -> LocalCluster:
        """Start everything and wait until the cluster is usable; ``down`` undoes a partial start."""
        t0 = time.monotonic()
        if self._meta_path().exists():
            raise RuntimeError(f"a cluster already lives in {self.state}; run `down` first")
        tools = self.tools
        self.state.mkdir(parents=True, exist_ok=True)
        for d in (self.pids, self.logs):
            d.mkdir(exist_ok=True)
        ports = self.config.ports
        for name in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok"):
            ports.setdefault(name, free_port())
        self._meta_path().write_text(
            json.dumps({"ports": ports, "exec_pod_cidr": self.config.exec_pod_cidr, "pid": os.getpid()})
        )
        try:
            pki = self._make_pki()
            self._start_etcd(tools)
            self._start_apiserver(tools, pki)
            self._start_controllers(tools)
            self._start_kwok(tools)
            self._create_fleet()
            if self.config.exec_node:
                self._start_exec_node()
            self._wait_usable()
        except BaseException:
            self._dump_logs()
            self.down()
            raise
        self._log(f"cluster ready in {time.monotonic() - t0:.1f}s; KUBECONFIG={self.kubeconfig}")
        return self

    def down(self) -> None:
        """Stop every recorded process (reverse order), clean the exec node, free ports, remove state."""
        if not self.state.exists():
            return
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            self.load()
        for name in reversed(COMPONENTS):
            self._stop(name)
        if self.config.exec_node:
            self._cleanup_exec_node()
        ports = [p for p in self.config.ports.values() if p]
        until(lambda: all(port_is_free(p) for p in ports), timeout=30, what=f"ports {ports} to be free")
        subprocess.run(["rm", "-rf", str(self.state)], check=True)

    def status(self) -> dict[str, Any]:
        """Which recorded processes are alive."""
        out: dict[str, Any] = {}
        for name in COMPONENTS:
            pid = self._pid(name)
            out[name] = {"pid": pid, "alive": pid is not None and _alive(pid)}
        return out

    # ---------------------------------------------------------------- helpers for callers
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster."""
        proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            [str(self.tools.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster (kubectl/helm on PATH)."""
        path = os.pathsep.join([*(str(d) for d in self.tools.bin_dirs), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    # ---------------------------------------------------------------- internals
    def _log(self, msg: str) -> None:
        print(f"[localcluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def _make_pki(self) -> dict[str, CertPair]:
        pki = PKI(self.state / "pki")
        self._pki = pki
        bridge_ip = str(next(ipaddress.ip_network(self.config.exec_pod_cidr).hosts()))
        certs = {
            "apiserver": pki.issue(
                "apiserver",
                "kube-apiserver",
                server_ips=("127.0.0.1", SERVICE_IP, bridge_ip),
                server_dns=(
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ),
            ),
            "admin": pki.issue("admin", "kubernetes-admin", orgs=("system:masters",)),
            "kcm": pki.issue("kcm", "system:kube-controller-manager"),
            "scheduler": pki.issue("scheduler", "system:kube-scheduler"),
            "kwok": pki.issue("kwok", "kwok-controller", orgs=("system:masters",)),
            "execnode": pki.issue("execnode", f"system:node:{EXEC_NODE_NAME}", orgs=("system:nodes",)),
        }
        for user, pair in certs.items():
            if user == "apiserver":
                continue
            path = self.kubeconfig if user == "admin" else self.state / f"{user}.kubeconfig"
            path.write_text(self._kubeconfig_text(user, pair))
            path.chmod(0o600)
        return certs

    def _kubeconfig_text(self, user: str, pair: CertPair) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": self.server, "certificate-authority": str(self._pki.ca.cert)},
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
                    }
                ],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            },
            indent=2,
        )

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` can signal the whole tree
            env=env,
            cwd=self.state,
        )
        log.close()
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        self._log(f"started {name} (pid {proc.pid})")
        return proc

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.pids / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _stop(self, name: str, grace: float = 10.0) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            try:
                until(lambda: not _alive(pid), timeout=grace, interval=0.05, what=f"{name} to exit")
            except AssertionError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                until(lambda: not _alive(pid), timeout=10, interval=0.05, what=f"{name} to die")
        # The process group may hold children that outlived the leader (e.g. pods of the exec node).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def _dump_logs(self, lines: int = 30) -> None:
        """Print the end of every component log (a failed start removes the state directory)."""
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            self._log(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))

    def _check_alive(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None or not _alive(pid):
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise ComponentDiedError(f"{name} exited during start-up; last log lines:\n{tail}")

    def _wait_https(self, name: str, url: str, timeout: float = 90, *, verify: bool = True) -> None:
        ctx = ssl.create_default_context(cafile=str(self._pki.ca.cert))
        admin = self.state / "pki" / "admin"
        ctx.load_cert_chain(f"{admin}.crt", f"{admin}.key")
        if not verify:  # kcm and the scheduler serve self-signed certificates
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE

        def ok() -> bool:
            self._check_alive(name)
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        until(ok, timeout=timeout, interval=0.1, what=f"{name} at {url}", fatal=(ComponentDiedError,))

    def _start_etcd(self, tools: Tools) -> None:
        p = self.config.ports
        client, peer = f"http://127.0.0.1:{p['etcd']}", f"http://127.0.0.1:{p['etcd_peer']}"
        self._start(
            "etcd",
            [
                str(tools.etcd),
                "--name=local",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                "--unsafe-no-fsync",  # test data: durability is not worth the fsync latency
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            self._check_alive("etcd")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        until(healthy, timeout=60, interval=0.1, what="etcd /health", fatal=(ComponentDiedError,))

    def _start_apiserver(self, tools: Tools, pki: dict[str, CertPair]) -> None:
        p, d = self.config.ports, self.state / "pki"
        self._start(
            "kube-apiserver",
            [
                str(tools.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={pki['apiserver'].cert}",
                f"--tls-private-key-file={pki['apiserver'].key}",
                f"--client-ca-file={d / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # Default admission plugins stay on (ServiceAccount included: pods get real tokens);
                # NodeRestriction keeps the exec node's identity honest, as on a real cluster.
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # The `kubernetes` Endpoints would carry 127.0.0.1, which Endpoints validation rejects;
                # pods on the exec node reach the apiserver through its forwarder instead.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_https("kube-apiserver", f"{self.server}/readyz", timeout=120)

    def _start_controllers(self, tools: Tools) -> None:
        p, d = self.config.ports, self.state / "pki"
        kcm_kc, sched_kc = self.state / "kcm.kubeconfig", self.state / "scheduler.kubeconfig"
        # One kube-scheduler, two profiles: pods that name the Neuron scheduler (as the operator does for
        # 1 < cores < node cores) are scheduled too. The Neuron scheduler *extender* (contiguous core
        # ranges) is a closed-source image and is not simulated: the profile is a plain scheduler.
        sched_config = self.state / "scheduler-config.json"
        sched_config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(sched_kc), "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                    "profiles": [{"schedulerName": "default-scheduler"}, {"schedulerName": NEURON_SCHEDULER_NAME}],
                }
            )
        )
        self._start(
            "kube-controller-manager",
            [
                str(tools.kube_controller_manager),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['kcm']}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--leader-elect=false",
                "--use-service-account-credentials=true",  # one identity per controller, as in production
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Job/Deployment controllers react immediately; the defaults add seconds of latency.
                "--concurrent-deployment-syncs=10",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        self._start(
            "kube-scheduler",
            [
                str(tools.kube_scheduler),
                f"--config={sched_config}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--v=1",
            ],
        )
        self._wait_https("kube-controller-manager", f"https://127.0.0.1:{p['kcm']}/healthz", verify=False)
        self._wait_https("kube-scheduler", f"https://127.0.0.1:{p['scheduler']}/healthz", verify=False)

    def _start_kwok(self, tools: Tools) -> None:
        self._start(
            "kwok",
            [
                str(tools.kwok),
                f"--kubeconfig={self.state / 'kwok.kubeconfig'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=10.240.0.1",
                f"--server-address=127.0.0.1:{self.config.ports['kwok']}",
            ],
        )

    def _create_fleet(self) -> None:
        manifests = fleet_manifests(self.config.fleet)
        if not manifests:
            return
        # `create` (not apply): the apiserver keeps a Node's status only on creation.
        self.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
        self._log(f"created {len(manifests)} simulated nodes")

    def _start_exec_node(self) -> None:
        self._start(
            "execnode",
            [
                sys.executable,
                "-m",
                "localcluster.execnode",
                "run",
                f"--kubeconfig={self.state / 'execnode.kubeconfig'}",
                f"--node-name={EXEC_NODE_NAME}",
                f"--state-dir={self.state / 'execnode'}",
                f"--cores={self.config.exec_node_cores}",
                f"--pod-cidr={self.config.exec_pod_cidr}",
                f"--apiserver-port={self.config.ports['apiserver']}",
            ],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
            },
        )

    def _cleanup_exec_node(self) -> None:
        """Remove network namespaces, bridge and mounts even if the exec node died without cleaning."""
        subprocess.run(
            [
                sys.executable,
                "-m",
                "localcluster.execnode",
                "cleanup",
                f"--state-dir={self.state / 'execnode'}",
                f"--pod-cidr={self.config.exec_pod_cidr}",
            ],
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )

    def _wait_usable(self) -> None:
        names = [m["metadata"]["name"] for m in fleet_manifests(self.config.fleet)]
        if self.config.exec_node:
            names.append(EXEC_NODE_NAME)

        def nodes_ready() -> bool:
            out = self.kubectl("get", "nodes", "-o", "json").stdout
            ready = {
                n["metadata"]["name"]
                for n in json.loads(out)["items"]
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            }
            if self.config.exec_node:
                self._check_alive("execnode")
            return set(names) <= ready

        until(nodes_ready, timeout=120, interval=0.3, what=f"nodes {names} to be Ready", fatal=(ComponentDiedError,))

        def schedulable() -> bool:
            # The node-lifecycle controller removes the initial not-ready taint once it sees Ready.
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            return not any(
                t["key"].startswith("node.kubernetes.io/") for n in nodes for t in n["spec"].get("taints", [])
            )

        until(schedulable, timeout=120, interval=0.3, what="the node-lifecycle controller to untaint the nodes")
        # Pods need the default ServiceAccount (created by the controller-manager) before admission.
        until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            timeout=60,
            what="the default ServiceAccount",
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ExistingCluster:
    """The same interface as ``LocalCluster`` over a cluster someone else runs (kind, EKS, ...).

    Selected by ``NEURON_TEST_USE_EXISTING_CLUSTER=1`` with ``KUBECONFIG`` pointing at it; kubectl and helm
    come from PATH. Nothing is started or stopped.
    """

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig.resolve()

    @functools.cached_property
    def client(self) -> Client:
        """A lightkube client authenticated with the admin kubeconfig."""
        return Client(KubeConfig.from_file(str(self.kubeconfig)), field_manager="neuron-tests")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
