"""A real S3-compatible server for the local cluster: SeaweedFS ``weed server`` as a process of this machine.

``weed`` is built from Go modules by ``build-tools.sh`` (component ``weed``). One ``weed server`` process runs
a master, a volume server, a filer and the S3 gateway; it is run like kwok (own session, pid file, log file
in a state directory; SIGTERM, then SIGKILL). Authentication is enforced: the S3 gateway gets an identity
file with two identities whose keys are random per server and kept in the state directory (mode 0600):

- ``admin``: Admin, Read, Write, List, Tagging (creates buckets, reads and writes objects);
- ``reader``: Read, List only (writes are refused with ``AccessDenied``).

Requests with an unknown access key are refused (``InvalidAccessKeyId``), with a wrong secret too
(``SignatureDoesNotMatch``), and anonymous ones (``AccessDenied``). Buckets are never created implicitly
(``-s3.autoCreateBucket=false``, as on AWS).

Where it listens: the kind cluster's server binds the gateway address of the kind Docker network (the host's
address on the bridge the kind nodes are attached to). That one address serves both sides: this machine
(tests, boto3) reaches it as a local address, and pods reach it through their node (the ptp CNI masquerades
pod traffic to the node's address on the kind network). A standalone server (tests of S3 client code that need
no cluster) binds loopback.

Readiness is a real write: ``weed`` answers ListBuckets a few seconds after start but holds writes until its
filer has joined the master and, after a restart, until the master's warm-up (3 heartbeat pulses, 15 s) is
over; ``wait_ready`` creates a probe bucket, writes, deletes. Measured on the 2-core dev machine: ready 13-14 s
after a fresh start, 15-19 s after a restart; a SIGTERM stop takes under 1 s; about 150-210 MiB resident and
0.3 % of a core when idle.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import secrets
import signal
import socket
import string
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localcluster.wait import until

LOOPBACK = "127.0.0.1"
#: S3 needs a region for SigV4; SeaweedFS accepts any.
REGION = "us-east-1"
STATE_FILE = "s3.json"
IDENTITIES_FILE = "s3-identities.json"
PID_FILE = "weed.pid"
LOG_FILE = "weed.log"
DATA_DIR = "weed-data"
#: Written, read and deleted by ``wait_ready`` (a new bucket: it needs a volume allocation, the last thing to
#: work after a start).
PROBE_BUCKET = "localcluster-ready-probe"
#: SeaweedFS's master stops writing to a volume at this size. Volumes are not preallocated (files grow as
#: written); small volumes keep an idle server's disk use near zero.
VOLUME_SIZE_LIMIT_MB = 64
#: The longest path a Unix socket may have (sun_path is 108 bytes with the NUL).
_MAX_SOCKET_PATH = 107


class S3Unavailable(RuntimeError):
    """This cluster has no S3 endpoint (tests that need one skip with this message)."""


class S3ServerError(RuntimeError):
    """``weed`` failed to start, exited, or did not become ready."""


@dataclass(frozen=True)
class S3Credentials:
    """One identity's access key pair."""

    name: str
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls, name: str) -> S3Credentials:
        alphabet = string.ascii_uppercase + string.digits
        return cls(
            name=name,
            access_key="".join(secrets.choice(alphabet) for _ in range(20)),
            secret_key=secrets.token_urlsafe(30),
        )


@dataclass(frozen=True)
class S3Ports:
    """Every TCP port ``weed server`` listens on (HTTP and gRPC of each component; nothing else is enabled)."""

    s3: int
    master: int
    volume: int
    filer: int
    s3_grpc: int
    master_grpc: int
    volume_grpc: int
    filer_grpc: int

    def all(self) -> tuple[int, ...]:
        return tuple(asdict(self).values())

    @classmethod
    def free(cls, host: str = LOOPBACK) -> S3Ports:
        """Ports the kernel reports free on ``host`` right now (for tests; a small race with other binders)."""
        sockets = []
        try:
            for _ in range(8):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
                sockets.append(s)
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()


#: The dev cluster's ports (``make cluster-up``, ``make demo``): a fixed endpoint to configure clients with.
#: Below the ephemeral range (32768-60999), so outgoing connections never take them.
DEV_PORTS = S3Ports(
    s3=23333,
    master=23334,
    volume=23335,
    filer=23336,
    s3_grpc=23337,
    master_grpc=23338,
    volume_grpc=23339,
    filer_grpc=23340,
)


class S3Endpoint:
    """An S3 endpoint and its keys, from wherever it runs (``S3Server`` here, or one someone else runs).

    ``endpoint_url`` is for this machine, ``cluster_endpoint_url`` for pods (the same URL for the local cluster's
    server). ``reader`` is None when the endpoint was given without read-only keys.
    """

    def __init__(
        self,
        endpoint_url: str,
        admin: S3Credentials,
        reader: S3Credentials | None = None,
        *,
        cluster_endpoint_url: str | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.cluster_endpoint_url = cluster_endpoint_url or endpoint_url
        self.admin = admin
        self.reader = reader

    @property
    def access_key(self) -> str:
        """The admin identity's access key."""
        return self.admin.access_key

    @property
    def secret_key(self) -> str:
        """The admin identity's secret key."""
        return self.admin.secret_key

    def client(
        self,
        identity: str | S3Credentials = "admin",
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        attempts: int = 3,
    ) -> Any:
        """A boto3 S3 client (path-style addressing, SigV4) authenticated as ``identity`` (``admin``, ``reader``
        or explicit credentials)."""
        import boto3  # not imported at module level: `localcluster` works without boto3 (the cluster itself)
        from botocore.config import Config

        creds = self._credentials(identity)
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
            ),
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` as admin; a bucket this server already has is fine."""
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def describe(self) -> dict[str, Any]:
        """For ``localcluster status``: endpoints and access keys (never the secret keys)."""
        return {
            "endpoint": self.endpoint_url,
            "clusterEndpoint": self.cluster_endpoint_url,
            "region": REGION,
            "accessKeys": {c.name: c.access_key for c in (self.admin, self.reader) if c is not None},
        }

    def _credentials(self, identity: str | S3Credentials) -> S3Credentials:
        if isinstance(identity, S3Credentials):
            return identity
        creds = {"admin": self.admin, "reader": self.reader}.get(identity)
        if creds is None:
            raise S3Unavailable(f"no {identity!r} credentials for {self.endpoint_url}")
        return creds


class S3Server(S3Endpoint):
    """``weed server`` with its S3 gateway, state (data, keys, pid, log) in ``state_dir``.

    ``S3Server(state_dir, binary, host=..., ports=...)`` describes a new server (random keys; free ports on
    ``host`` unless given); ``start`` writes its state file and launches it. ``S3Server.load(state_dir)`` finds a
    server again (same keys, ports and data), e.g. from another process; ``start`` on a stopped one restarts
    it on its data.
    """

    def __init__(
        self,
        state_dir: Path,
        binary: Path,
        *,
        host: str = LOOPBACK,
        ports: S3Ports | None = None,
        admin: S3Credentials | None = None,
        reader: S3Credentials | None = None,
    ) -> None:
        self.state = state_dir.resolve()
        self.binary = Path(binary)
        self.host = host
        self.ports = ports or S3Ports.free(host)
        url = f"http://{_url_host(host)}:{self.ports.s3}"
        super().__init__(url, admin or S3Credentials.generate("admin"), reader or S3Credentials.generate("reader"))
        self._proc: subprocess.Popen[bytes] | None = None  # when this object started it

    # ------------------------------------------------------------------ state
    @property
    def data_dir(self) -> Path:
        return self.state / DATA_DIR

    @property
    def log_path(self) -> Path:
        return self.state / LOG_FILE

    @property
    def state_file(self) -> Path:
        """Endpoint, ports and keys (mode 0600)."""
        return self.state / STATE_FILE

    @classmethod
    def exists_in(cls, state_dir: Path) -> bool:
        return (state_dir / STATE_FILE).exists()

    @classmethod
    def load(cls, state_dir: Path) -> S3Server:
        """The server whose state ``start`` wrote in ``state_dir`` (FileNotFoundError when there is none)."""
        saved = json.loads((state_dir / STATE_FILE).read_text())
        return cls(
            state_dir,
            Path(saved["binary"]),
            host=saved["host"],
            ports=S3Ports(**saved["ports"]),
            admin=S3Credentials(**saved["identities"]["admin"]),
            reader=S3Credentials(**saved["identities"]["reader"]),
        )

    def _save(self) -> None:
        assert self.reader is not None
        self.state.mkdir(parents=True, exist_ok=True)
        state = {
            "endpoint": self.endpoint_url,
            "clusterEndpoint": self.cluster_endpoint_url,
            "region": REGION,
            "host": self.host,
            "ports": asdict(self.ports),
            "binary": str(self.binary),
            "identities": {c.name: asdict(c) for c in (self.admin, self.reader)},
        }
        _write_private(self.state_file, json.dumps(state, indent=2))
        identities = [
            {
                "name": c.name,
                "credentials": [{"accessKey": c.access_key, "secretKey": c.secret_key}],
                "actions": actions,
            }
            for c, actions in (
                (self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                (self.reader, ["Read", "List"]),
            )
        ]
        # No "anonymous" identity: unsigned requests are refused.
        _write_private(self.state / IDENTITIES_FILE, json.dumps({"identities": identities}, indent=2))

    # ------------------------------------------------------------------ process
    def argv(self) -> list[str]:
        p = self.ports
        argv = [
            str(self.binary),
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",  # only this address (no extra loopback listeners)
            f"-dir={self.data_dir}",
            # Single-master mode: no quorum, no election wait on restart, and a clean SIGTERM takes < 1 s.
            "-master.peers=none",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            "-master.telemetry=false",  # on by default: reports to telemetry.seaweedfs.com
            "-volume.max=0",  # as many volumes as the free disk holds at the size limit (none preallocated)
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            "-volume.preStopSeconds=0",  # default 10 s of waiting on SIGTERM
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0",  # on by default (8181, 9101); not used here
            "-s3.port.lance=0",
            "-s3.iam=false",  # no IAM API on the S3 port: the identities file is the only source of users
            f"-s3.config={self.state / IDENTITIES_FILE}",
            "-s3.autoCreateBucket=false",
        ]
        # weed's default sockets are /tmp/seaweedfs-{filer,s3}-<port>.sock; keep ours in the state dir if they fit.
        for component, port in (("filer", p.filer), ("s3", p.s3)):
            sock = self.state / f"{component}-{port}.sock"
            if len(str(sock)) <= _MAX_SOCKET_PATH:
                argv.append(f"-{component}.localSocket={sock}")
        return argv

    def busy_ports(self) -> list[int]:
        """Our ports that cannot be bound now (S3ServerError when ``host`` is not an address of this machine)."""
        return [port for port in self.ports.all() if not _port_free(self.host, port)]

    def start(self, port_wait: float = 10.0, *, die_with_parent: bool = False) -> None:
        """Launch ``weed server`` (returns at once; ``wait_ready`` waits). A no-op when it already runs.

        ``die_with_parent``: the kernel sends weed SIGTERM when this process dies, even by SIGKILL (a test session's
        own server must not outlive a killed pytest; the cluster's server must outlive ``localcluster up``).

        Ports still held for a moment by the connections of a server that just stopped are waited for (at most
        ``port_wait`` seconds); ports another process listens on are an error."""
        if self.alive():
            return
        deadline = time.monotonic() + port_wait
        while (busy := self.busy_ports()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if busy:
            raise S3ServerError(
                f"cannot start the S3 server on {self.host}: ports {busy} are in use "
                f"(another local cluster's S3 server? `ss -tanp | grep -E ':({'|'.join(map(str, busy))})\\b'`)"
            )
        self._save()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv())}\n".encode())
            log.flush()
            self._proc = proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state,  # weed reads master.toml/security.toml from its cwd first: none there
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509 (no threads touched)
            )
        (self.state / PID_FILE).write_text(str(proc.pid))

    def pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.state / PID_FILE).read_text())
        return None

    def alive(self) -> bool:
        """Our ``weed`` process runs (the pid file's process, not a zombie, with our data dir on its command line)."""
        pid = self.pid()
        if pid is None:
            return False
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our own child: its exit status says it all
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return False
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
        # Right after exec the kernel shows an empty command line for a moment (seen here): still starting.
        return raw == b"" or f"-dir={self.data_dir}".encode() in raw.split(b"\0")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to weed's process group, SIGKILL after ``grace`` seconds; the data stays."""
        pid = self.pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.alive():
                self._reap(pid)
                time.sleep(0.05)
        if self.alive():
            raise S3ServerError(f"weed (pid {pid}) survived SIGKILL")
        (self.state / PID_FILE).unlink(missing_ok=True)

    def _reap(self, pid: int) -> None:
        """Collect the exit status of the process this object (or process) started, else it stays a zombie."""
        if self._proc is not None and self._proc.pid == pid:
            self._proc.poll()
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the server accepts writes; fails at once (with its log's tail) if ``weed`` exits."""

        def probe() -> bool:
            if not self.alive():
                status = f" with status {self._proc.poll()}" if self._proc is not None else ""
                raise S3ServerError(f"weed exited{status}; the end of {self.log_path}:\n{self.log_tail()}")
            return self._ready_probe()

        until(
            probe,
            timeout=timeout,
            interval=0.5,
            what=f"S3 at {self.endpoint_url} to accept writes (log: {self.log_path})",
            fatal=(S3ServerError,),
        )

    def _ready_probe(self) -> bool:
        from botocore.exceptions import ClientError

        # Short per-request timeouts and no client retries: `until` retries, within its deadline.
        s3 = self.client(connect_timeout=2, read_timeout=10, attempts=1)
        s3.list_buckets()
        try:
            s3.create_bucket(Bucket=PROBE_BUCKET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        s3.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
        for obj in s3.list_objects_v2(Bucket=PROBE_BUCKET).get("Contents", []):
            s3.delete_object(Bucket=PROBE_BUCKET, Key=obj["Key"])
        s3.delete_bucket(Bucket=PROBE_BUCKET)
        return True

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss_bytes(self) -> int | None:
        """Resident memory of the weed process (None when it does not run)."""
        pid = self.pid()
        with contextlib.suppress(FileNotFoundError, TypeError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alive": self.alive(), "keys": str(self.state_file), "log": str(self.log_path)}


def kind_network_gateway(docker_env: dict[str, str]) -> str:
    """The host's IPv4 address on the kind Docker network: reachable from this machine and from every pod."""
    network = docker_env.get("KIND_EXPERIMENTAL_DOCKER_NETWORK") or "kind"
    out = subprocess.run(
        ["docker", "network", "inspect", network, "--format", "{{json .IPAM.Config}}"],
        env=docker_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for config in json.loads(out) or []:
        subnet = ipaddress.ip_network(config.get("Subnet", "::/128"), strict=False)
        if subnet.version != 4:
            continue
        if config.get("Gateway"):
            return str(config["Gateway"])
        return str(next(subnet.hosts()))  # Docker's default gateway: the subnet's first address
    raise S3ServerError(f"docker network {network} has no IPv4 subnet: {out.strip()}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as weed: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise S3ServerError(f"{host} is not an address of this machine (the kind network changed?)") from exc
            return False
    return True


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
