"""Pod networking of the local exec node: one network namespace per pod, a veth into a host bridge.

Layout for ``--pod-cidr=10.241.0.0/24``: bridge ``lcxb<tag>`` holds the first host address (10.241.0.1,
also the node's InternalIP and the in-cluster apiserver address); each pod gets the next free address on
``eth0`` inside netns ``lcx-<tag>-<uid8>``; its host end is ``lcx<tag>p<n>``. ``<tag>`` is a short hash of
the CIDR, so clusters with different CIDRs coexist. There is no default route and no NAT: pods reach the
bridge subnet (host, other pods) and nothing else. A TCP forwarder on ``<bridge-ip>:443`` relays to the
apiserver on loopback.

``names``/``Ipam`` are pure; ``HostNetwork`` runs ``ip`` (root needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("execnode.network")
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Names:
    """Interface and namespace names derived from the pod CIDR (Linux names: at most 15 characters)."""

    cidr: str
    tag: str

    @property
    def bridge(self) -> str:
        return f"lcxb{self.tag}"

    @property
    def netns_prefix(self) -> str:
        return f"lcx-{self.tag}-"

    @property
    def veth_prefix(self) -> str:
        return f"lcx{self.tag}p"

    def netns(self, pod_uid: str) -> str:
        return f"{self.netns_prefix}{pod_uid.replace('-', '')[:12]}"

    def veth(self, ip: str) -> str:
        offset = int(ipaddress.ip_address(ip)) - int(ipaddress.ip_network(self.cidr).network_address)
        return f"{self.veth_prefix}{offset:x}"


def names(cidr: str) -> Names:
    net = ipaddress.ip_network(cidr)  # raises ValueError naming the CIDR
    if net.version != 4:
        raise ValueError(f"pod-cidr {cidr!r}: only IPv4 is supported")
    if net.prefixlen > 29 or net.prefixlen < 16:
        raise ValueError(f"pod-cidr {cidr!r}: prefix length must be between /16 and /29")
    return Names(str(net), hashlib.sha1(str(net).encode()).hexdigest()[:6])


def bridge_ip(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


class Ipam:
    """Pod addresses in a CIDR: the first host address is the bridge; lowest free address first."""

    def __init__(self, cidr: str, allocations: Mapping[str, str] | None = None) -> None:
        self.network = ipaddress.ip_network(cidr)
        hosts = list(self.network.hosts())
        self.gateway = str(hosts[0])
        self._pool = [str(h) for h in hosts[1:]]
        self._by_key: dict[str, str] = {}
        for key, ip in (allocations or {}).items():
            if ip in self._pool and ip not in self._by_key.values():
                self._by_key[key] = ip

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def allocate(self, key: str) -> str:
        if key in self._by_key:
            return self._by_key[key]
        used = set(self._by_key.values())
        for ip in self._pool:
            if ip not in used:
                self._by_key[key] = ip
                return ip
        raise RuntimeError(f"pod-cidr {self.network} is exhausted ({len(self._pool)} addresses in use)")

    def release(self, key: str) -> None:
        self._by_key.pop(key, None)

    def get(self, key: str) -> str | None:
        return self._by_key.get(key)

    def allocations(self) -> dict[str, str]:
        return dict(self._by_key)

    def to_json(self) -> str:
        return json.dumps(self._by_key, sort_keys=True)

    @classmethod
    def from_json(cls, cidr: str, text: str) -> Ipam:
        return cls(cidr, json.loads(text))


# ------------------------------------------------------------------------------------------- host side
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class HostNetwork:
    """The bridge and per-pod namespaces on this host (blocking calls; run them in a thread)."""

    def __init__(self, cidr: str) -> None:
        self.names = names(cidr)
        self.cidr = self.names.cidr
        self.gateway = bridge_ip(cidr)
        self.prefixlen = ipaddress.ip_network(cidr).prefixlen

    def ensure_bridge(self) -> None:
        br = self.names.bridge
        if _ip("link", "show", br, check=False).returncode != 0:
            _ip("link", "add", br, "type", "bridge")
        _ip("addr", "replace", f"{self.gateway}/{self.prefixlen}", "dev", br)
        _ip("link", "set", br, "up")

    def netns_path(self, pod_uid: str) -> Path:
        return NETNS_DIR / self.names.netns(pod_uid)

    def add_pod(self, pod_uid: str, ip: str) -> Path:
        """Create (or recreate) the pod's namespace with ``eth0`` = ``ip`` on the bridge."""
        ns, veth = self.names.netns(pod_uid), self.names.veth(ip)
        self.remove_pod(pod_uid, ip)
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.names.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{self.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return NETNS_DIR / ns

    def remove_pod(self, pod_uid: str, ip: str | None) -> None:
        """Kill whatever still runs in the pod's namespace, then delete it and its veth."""
        import os
        import signal

        ns = self.names.netns(pod_uid)
        if (NETNS_DIR / ns).exists():
            for pid in self.netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "delete", ns, check=False)
        if ip:
            _ip("link", "del", self.names.veth(ip), check=False)

    def netns_pids(self, ns: str) -> list[int]:
        out = _ip("netns", "pids", ns, check=False).stdout
        return [int(p) for p in out.split()]

    def cleanup(self) -> list[str]:
        """Kill every process in our namespaces; delete them, the veths and the bridge. Returns what went."""
        import os
        import signal

        removed: list[str] = []
        if NETNS_DIR.exists():
            for path in NETNS_DIR.iterdir():
                if not path.name.startswith(self.names.netns_prefix):
                    continue
                for pid in self.netns_pids(path.name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _ip("netns", "delete", path.name, check=False)
                removed.append(f"netns {path.name}")
        out = _ip("-j", "link", "show", check=False).stdout or "[]"
        for link in json.loads(out):
            name = link.get("ifname", "")
            if name.startswith(self.names.veth_prefix) or name == self.names.bridge:
                _ip("link", "del", name, check=False)
                removed.append(f"link {name}")
        return removed


LOCK_DIR = Path("/run/localcluster-execnode")


class CidrInUse(RuntimeError):
    """Another live exec node owns this pod CIDR (same bridge and namespace names)."""


class CidrLock:
    """An flock on ``/run/localcluster-execnode/<tag>.lock`` held by the agent for its lifetime, so a second
    exec node (or a ``cleanup`` of another cluster) with the same CIDR cannot destroy a live one's network."""

    def __init__(self, cidr: str, state_dir: Path) -> None:
        self.path = LOCK_DIR / f"{names(cidr).tag}.lock"
        self.cidr, self.state_dir = cidr, str(state_dir.resolve())
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import os

        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CidrInUse(f"pod-cidr {self.cidr} is in use by another exec node ({holder or 'unknown'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} state-dir={self.state_dir}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cidr_available(cidr: str) -> bool:
    """Whether no live exec node holds ``cidr`` on this host (for callers picking a CIDR, e.g. test sessions)."""
    lock = CidrLock(cidr, Path("/nonexistent"))
    try:
        lock.acquire()
    except CidrInUse:
        return False
    lock.path.unlink(missing_ok=True)  # we held it, so nobody else uses this file
    lock.release()
    return True


def other_exec_bridges(mine: str) -> list[str]:
    """Bridges of other exec nodes on this host (so cleanup leaves shared things alone while they run)."""
    out = _ip("-j", "link", "show", "type", "bridge", check=False).stdout or "[]"
    return [
        link["ifname"]
        for link in json.loads(out)
        if link.get("ifname", "").startswith("lcxb") and link["ifname"] != mine
    ]


# ------------------------------------------------------------------------------------------- forwarder
class Forwarder:
    """TCP relay ``listen_host:listen_port`` → ``target_host:target_port`` (in-cluster apiserver address)."""

    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
        self.listen = (listen_host, listen_port)
        self.target = (target_host, target_port)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, *self.listen, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.warning("forwarder: cannot reach %s:%s: %s", *self.target, exc)
            writer.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    if w.can_write_eof():
                        w.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            for w in (writer, up_w):
                w.close()
