"""The exec node's agent: registers the Node, keeps it Ready (Lease + status heartbeats), watches the pods
bound to it and runs one ``PodWorker`` per pod. Also owns the shared host state: bridge, API forwarder,
IPAM and the NeuronCore allocator (both persisted under the state dir, so allocations survive a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import (
    ConfigMap,
    Node,
    NodeStatus,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
    ServiceAccountToken,
)
from lightkube.types import PatchType

from localcluster.execnode import env as envmod
from localcluster.execnode.cores import NEURON_DEVICE, NEURONCORE, CoreAllocator, devices_for
from localcluster.execnode.network import (
    CidrInUse,
    CidrLock,
    Forwarder,
    HostNetwork,
    Ipam,
    other_exec_bridges,
)
from localcluster.execnode.pods import PodWorker

log = logging.getLogger("execnode")
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
STATUS_EVERY = 60.0
MAX_PODS = 32
LABEL = "neuron.dev/local-exec"


@dataclass
class Config:
    kubeconfig: Path
    node_name: str
    state_dir: Path
    cores: int
    pod_cidr: str
    apiserver_port: int
    backoff_base: float = 10.0
    stop_grace: float = 5.0  # most we wait for pods on agent shutdown (the launcher gives us 10 s)


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_ki() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def kill_recorded(state_dir: Path) -> int:
    """SIGKILL the process groups of containers recorded under ``state_dir`` (a previous agent's pods)."""
    n = 0
    for pidfile in (state_dir / "pods").glob("*/containers/*/pid"):
        with contextlib.suppress(ValueError, OSError):
            pgid = int(pidfile.read_text())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                n += 1
            pidfile.unlink()
    return n


def remove_created_paths(state_dir: Path, cidr_bridge: str) -> None:
    """Mount points the launcher had to create on the host (e.g. /dev/termination-log): removed when empty,
    unless another exec node still runs on this host (it may use the same paths)."""
    record = state_dir / "created-paths"
    if not record.exists() or other_exec_bridges(cidr_bridge):
        return
    paths = sorted(set(record.read_text().split("\n")) - {""}, key=lambda p: -p.count("/"))
    for p in paths:
        with contextlib.suppress(OSError):
            path = Path(p)
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only if empty
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
    record.unlink(missing_ok=True)


class ApiFetcher:
    """Objects pods refer to, read with the node's identity (the Node authorizer allows exactly those)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def _get(self, res: Any, ns: str | None, name: str) -> dict[str, Any] | None:
        for attempt in range(8):
            try:
                obj = await (self.client.get(res, name, namespace=ns) if ns else self.client.get(res, name))
                return dict(obj.to_dict())
            except ApiError as exc:
                if exc.status.code == 404:
                    return None
                # 403: the Node authorizer learns pod->object edges from a watch; give it a moment.
                if exc.status.code != 403 or attempt == 7:
                    raise
            await asyncio.sleep(0.1 * (attempt + 1))
        return None

    async def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(ConfigMap, namespace, name)

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(Secret, namespace, name)

    async def pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(PersistentVolumeClaim, namespace, name)

    async def pv(self, name: str) -> dict[str, Any] | None:
        return await self._get(PersistentVolume, None, name)

    async def token(
        self,
        namespace: str,
        service_account: str,
        pod: Mapping[str, Any],
        audience: str | None,
        expiration: int,
    ) -> tuple[str, float]:
        body = ServiceAccountToken.from_dict(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {},
                "spec": {
                    "audiences": [audience] if audience else [],
                    "expirationSeconds": expiration,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                },
            }
        )
        for attempt in range(8):
            try:
                res = (await self.client.create(body, service_account, namespace=namespace)).to_dict()
                break
            except ApiError as exc:
                if exc.status.code != 403 or attempt == 7:
                    raise
            await asyncio.sleep(0.1 * (attempt + 1))
        st = res["status"]
        expires = st["expirationTimestamp"]
        if isinstance(expires, str):
            expires = dt.datetime.fromisoformat(expires.replace("Z", "+00:00"))
        return st["token"], expires.timestamp()


class Agent:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.node_name = cfg.node_name
        self.state_dir = cfg.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pods").mkdir(exist_ok=True)
        self.created_paths = self.state_dir / "created-paths"
        self.net = HostNetwork(cfg.pod_cidr)
        self.host_ip = self.net.gateway
        ipam_file, cores_file = self.state_dir / "ipam.json", self.state_dir / "cores.json"
        self.ipam = Ipam.from_json(cfg.pod_cidr, ipam_file.read_text()) if ipam_file.exists() else Ipam(cfg.pod_cidr)
        self.cores = (
            CoreAllocator.from_json(cores_file.read_text(), cfg.cores)
            if cores_file.exists()
            else CoreAllocator(cfg.cores)
        )
        self.python = sys.executable
        self.backoff_base = cfg.backoff_base
        bindir = str(Path(sys.executable).parent)
        self.base_env = {
            "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
        }
        self.service_env = envmod.kubernetes_service_env(self.host_ip, 443)
        self.node_allocatable = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_ki()}Ki"}
        self.workers: dict[str, PodWorker] = {}
        self._deleting: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self.client = AsyncClient(
            KubeConfig.from_file(str(cfg.kubeconfig)), field_manager="execnode", timeout=httpx2.Timeout(15.0)
        )
        self.fetcher = ApiFetcher(self.client)
        self.forwarder = Forwarder(self.host_ip, 443, "127.0.0.1", cfg.apiserver_port)
        self.node_uid = ""

    def persist(self) -> None:
        for name, text in (("ipam.json", self.ipam.to_json()), ("cores.json", self.cores.to_json())):
            tmp = self.state_dir / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.state_dir / name)

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, uid: str) -> None:
        self.workers.pop(uid, None)

    # ------------------------------------------------------------------ node
    def _resources(self) -> dict[str, str]:
        return {
            "cpu": self.node_allocatable["cpu"],
            "memory": self.node_allocatable["memory"],
            "pods": str(MAX_PODS),
            NEURONCORE: str(self.cfg.cores),
            NEURON_DEVICE: str(devices_for(self.cfg.cores)),
        }

    def _node_status(self) -> dict[str, Any]:
        now = micro_now()[:19] + "Z"
        conds = [
            ("Ready", "True", "KubeletReady", "local exec node is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure (not measured)"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure (not measured)"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure (not measured)"),
        ]
        uname = os.uname()
        return {
            "capacity": self._resources(),
            "allocatable": self._resources(),
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": m,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self._node_since,
                }
                for t, s, r, m in conds
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v0.0.0-localexec",
                "kubeProxyVersion": "",
                "kernelVersion": uname.release,
                "osImage": "local exec node (host processes)",
                "containerRuntimeVersion": "execnode://0",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register(self) -> None:
        self._node_since = micro_now()[:19] + "Z"
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "local.exec",
            LABEL: "true",
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {
                "taints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
                "podCIDR": self.net.cidr,
            },
            "status": self._node_status(),
        }
        try:
            created = await self.client.create(Node.from_dict(node))
            self.node_uid = created.metadata.uid
            log.info("registered node %s", self.node_name)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            existing = await self.client.patch(
                Node, self.node_name, {"metadata": {"labels": labels}}, patch_type=PatchType.MERGE
            )
            self.node_uid = existing.metadata.uid
            log.info("node %s already registered; taking it over", self.node_name)
        await self.client.patch(
            NodeStatus, self.node_name, {"status": self._node_status()}, patch_type=PatchType.STRATEGIC
        )

    async def _heartbeat(self) -> None:
        last_status = asyncio.get_running_loop().time()
        while not self._stop.is_set():
            try:
                await self._renew_lease()
                if asyncio.get_running_loop().time() - last_status >= STATUS_EVERY:
                    await self.client.patch(
                        NodeStatus,
                        self.node_name,
                        {"status": self._node_status()},
                        patch_type=PatchType.STRATEGIC,
                    )
                    last_status = asyncio.get_running_loop().time()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), LEASE_RENEW)

    async def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_now(),
        }
        try:
            await self.client.patch(
                Lease, self.node_name, {"spec": spec}, namespace="kube-node-lease", patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid}
                    ],
                },
                "spec": spec,
            }
            await self.client.create(Lease.from_dict(lease))

    # ------------------------------------------------------------------ pods
    def _handle(self, event: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        worker = self.workers.get(uid)
        if event == "DELETED":
            if worker is not None:
                self._spawn(worker.killed())
            return
        if worker is not None:
            worker.update(pod)
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            if meta.get("deletionTimestamp") and uid not in self._deleting:
                self._deleting.add(uid)
                self._spawn(self._delete_now(meta["namespace"], meta["name"]))
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        worker.start()

    async def _delete_now(self, ns: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.client.delete(Pod, name, namespace=ns, grace_period=0)

    async def _resync(self, first: bool) -> str:
        listing = self.client.list(Pod, namespace=ALL_NS, fields={"spec.nodeName": self.node_name})
        pods = [p.to_dict() async for p in listing]
        rv = listing.resourceVersion
        live = {p["metadata"]["uid"] for p in pods}
        for uid, worker in list(self.workers.items()):
            if uid not in live:
                self._spawn(worker.killed())
        if first:  # allocations of pods that no longer exist (or finished) while we were away
            active = {
                p["metadata"]["uid"]
                for p in pods
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            }
            for key in list(self.ipam.allocations()):
                if key not in active:
                    self.ipam.release(key)
            for key in self.cores.keys():  # noqa: SIM118 - a list copy, we release while iterating
                if key.split("/")[0] not in active:
                    self.cores.release(key)
            self.persist()
        for p in pods:
            self._handle("MODIFIED", p)
        return rv

    async def _watch(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                rv = await self._resync(first)
                first = False
                async for event, obj in self.client.watch(
                    Pod,
                    namespace=ALL_NS,
                    fields={"spec.nodeName": self.node_name},
                    resource_version=rv,
                    server_timeout=300,
                ):
                    self._handle(event, obj.to_dict())
            except ApiError as exc:
                if exc.status.code == 410:
                    log.info("watch expired (410); re-listing")
                    continue
                log.warning("pod watch failed: %s", exc.status.message)
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod watch failed: %r", exc)
                await asyncio.sleep(1)

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        lock = CidrLock(self.cfg.pod_cidr, self.state_dir)
        lock.acquire()  # before touching the host: refuse to fight another exec node over the same CIDR
        leftovers = kill_recorded(self.state_dir)
        removed = await asyncio.to_thread(self.net.cleanup)
        if leftovers or removed:
            log.info("cleaned up after a previous run: %d process groups, %s", leftovers, removed)
        await asyncio.to_thread(self.net.ensure_bridge)
        await self.forwarder.start()
        await self.register()
        tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._watch())]
        log.info(
            "exec node %s ready: bridge %s (%s), %d NeuronCores",
            self.node_name,
            self.net.names.bridge,
            self.host_ip,
            self.cfg.cores,
        )
        await self._stop.wait()
        log.info("stopping: %d pods", len(self.workers))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(
                w.shutdown(min(self.cfg.stop_grace, float(w.pod["spec"].get("terminationGracePeriodSeconds", 30))))
                for w in list(self.workers.values())
            ),
            return_exceptions=True,
        )
        await self.forwarder.stop()
        kill_recorded(self.state_dir)
        await asyncio.to_thread(self.net.cleanup)
        lock.release()
        with contextlib.suppress(Exception):
            await self.client.close()
        log.info("stopped")


def cleanup(state_dir: Path, pod_cidr: str) -> list[str]:
    """Remove what ``run`` created on the host, even after a SIGKILL: processes, namespaces, veths, bridge."""
    net = HostNetwork(pod_cidr)
    n = kill_recorded(state_dir) if state_dir.exists() else 0
    lock = CidrLock(pod_cidr, state_dir)
    try:
        lock.acquire()
    except CidrInUse as exc:  # a live exec node of another cluster: its network is not ours to remove
        return [f"{n} process groups", f"nothing else: {exc}"]
    try:
        removed = net.cleanup()
        lock.path.unlink(missing_ok=True)
    finally:
        lock.release()
    if state_dir.exists():
        remove_created_paths(state_dir, net.names.bridge)
    return [f"{n} process groups", *removed]
