"""The local cluster: a kind cluster built entirely on this machine, plus kwok's simulated fleet.

One implementation serves ``make cluster-up``/``cluster-down`` (state in ``.cluster/``), ``make demo`` and
the pytest session fixture, so the tests exercise exactly what developers run.

What it is made of (every piece built here, nothing pulled from a registry; see ``e2e/kind/``):

- a private Docker engine (``e2e/kind/docker-engine.sh``) and a kind node image assembled from Debian
  packages and Go modules (``e2e/kind/node-image.sh``);
- two kind nodes: the control plane, which also runs ordinary pods (label ``neuron.dev/local-exec``:
  compile Jobs and cpu serving pods run there, as real containers from the project's images), and a
  worker labelled and tainted like an EKS ``inf2.xlarge`` Neuron node, whose NeuronCores are advertised by
  the project's **simulated** Neuron device plugin (``e2e/kind/neuron-device-plugin-sim``) through the
  kubelet device-plugin API;
- a second scheduler ``my-scheduler`` (the name the Neuron Helm chart gives its scheduler; the closed-source
  Neuron scheduler extension itself is not simulated);
- kwok on this machine, attaching the simulated EC2 fleet (inf1/inf2/trn1/CPU instance types, from the
  operator's catalogue) to the same apiserver, so large scheduling scenarios stay cheap: kwok nodes run no
  containers.

Artifacts: ``shared_dir`` is a directory of this machine mounted at the same absolute path in every kind
node, so a hostPath PersistentVolume under it is readable and writable from pods on any node and from the
tests on the host (``localcluster.storage.hostpath_claim``).

Object storage: ``s3`` is a real S3-compatible server (SeaweedFS ``weed``, ``localcluster.s3``) running on this
machine, bound to the kind network's gateway address, so this machine and every pod reach it at the same
``s3.endpoint_url``; its random admin and read-only keys are in ``<state>/s3/s3.json`` (0600).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from lightkube import Client, KubeConfig

from localcluster.fleet import DEFAULT_FLEET, NodeGroup, fleet_manifests
from localcluster.s3 import S3Credentials, S3Endpoint, S3Ports, S3Server, S3Unavailable, kind_network_gateway
from localcluster.tools import Tools, ensure_tools
from localcluster.wait import until
from neuron_operator.catalogue import (
    INSTANCE_TYPE_LABEL,
    NEURON_DEVICE_RESOURCE,
    NEURON_TAINT_KEY,
    NEURONCORE_RESOURCE,
    instance_type,
)

KIND_DIR = Path(__file__).resolve().parent.parent / "kind"
KWOK_POD_CIDR = "10.240.0.1/16"  # fake pod IPs handed out by kwok (never routed)
#: Label of the node that runs ordinary pods for real (the kind control plane); kwok nodes run nothing.
EXEC_LABEL = "neuron.dev/local-exec"
#: Label of kind workers whose NeuronCores the simulated device plugin advertises.
SIMULATED_NEURON_LABEL = "neuron.dev/simulated-neuron-device"
#: Name under which the Neuron Helm chart runs its second scheduler (with the Neuron scheduler extension).
NEURON_SCHEDULER_NAME = "my-scheduler"
SHARED_DIR_NAME = "shared"
CACHE = Path(os.environ.get("NEURON_OPERATOR_CACHE", Path.home() / ".cache" / "neuron-operator"))
#: `docker save` archives of the images loaded into kind nodes, one per image id, mounted read-only at the
#: same path in every node: `ctr import` reads them from disk (streaming 4 GB through `docker exec` stdin,
#: as `kind load` does, took twice as long) and a warm cluster creation does not save them again.
IMAGE_ARCHIVES = CACHE / "image-archives"


#: Progress of child processes goes to our file descriptor 2 (never `sys.stderr`, which pytest may replace).
STDERR_FD = 2


class BuildError(RuntimeError):
    """A build script failed; its output went to stderr."""


def _run_script(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a build script (progress to our stderr) and return its stdout."""
    proc = subprocess.run(
        # stderr is inherited (fd 2), not `sys.stderr`: under pytest that object may have no file descriptor.
        argv,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env=env or os.environ.copy(),
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed with exit code {proc.returncode}")
    return proc.stdout


def _key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def run_kubectl(
    binary: str, kubeconfig: Path, args: tuple[str, ...], *, input: str | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``kubectl --kubeconfig ... args``; raises CalledProcessError (with stderr) when ``check`` and it fails."""
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked below
        [binary, "--kubeconfig", str(kubeconfig), *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


class _Kubectl(Protocol):
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


def post_raw(cluster: _Kubectl, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON to an apiserver path through the cluster's kubectl; the JSON answer."""
    out = cluster.kubectl("create", "--raw", path, "-f", "-", input=json.dumps(body)).stdout
    return dict(json.loads(out))


def docker_env() -> dict[str, str]:
    """Start the project's private Docker engine if needed; the environment that reaches it."""
    out = _run_script(["bash", str(KIND_DIR / "docker-engine.sh"), "start"])
    env = os.environ.copy()
    for line in out.splitlines():
        if line.startswith("export DOCKER_HOST="):
            env["DOCKER_HOST"] = line.split("=", 1)[1]
        elif line.startswith("export PATH="):
            env["PATH"] = line.split("=", 1)[1].replace("$PATH", env.get("PATH", ""))
    return env


@dataclass(frozen=True)
class KindAssets:
    """Everything a kind cluster of this project needs, built (or found in the caches) on this machine."""

    kind: Path
    node_image: str
    operator_image: str
    runtime_image: str
    device_plugin_image: str
    tools: Tools
    #: SIMULATED Neuron runtime images (cpu runtime + the simulated Neuron SDK; local testing only).
    neuron_sim_image: str = ""
    neuron_sim_old_sdk_image: str = ""


#: A public kind node image (e.g. ``kindest/node:v1.34.x``) for machines that reach a registry; unset here,
#: where the node image is assembled from Debian packages and Go modules.
PUBLIC_NODE_IMAGE_ENV = "NEURON_KIND_NODE_IMAGE"


def public_node_image() -> str | None:
    return os.environ.get(PUBLIC_NODE_IMAGE_ENV) or None


def ensure_assets(env: dict[str, str]) -> KindAssets:
    """Build what is missing: Go binaries, the node image, the project's images, the device plugin image."""
    tools = ensure_tools()
    if public_node_image():
        kind_tools = _key_values(_run_script(["bash", str(KIND_DIR / "build-kind-tools.sh"), "kind"], env))
        node_image = str(public_node_image())
    else:
        kind_tools = _key_values(_run_script(["bash", str(KIND_DIR / "build-kind-tools.sh")], env))
        node_image = _run_script(["bash", str(KIND_DIR / "node-image.sh")], env).strip().splitlines()[-1]
    images = _key_values(_run_script(["bash", str(KIND_DIR / "build-images.sh")], env))
    plugin = (
        _run_script(["bash", str(KIND_DIR / "neuron-device-plugin-sim" / "build.sh")], env).strip().splitlines()[-1]
    )
    return KindAssets(
        kind=Path(kind_tools["KIND"]) / "kind",
        node_image=node_image,
        operator_image=images["OPERATOR_IMAGE"],
        runtime_image=images["RUNTIME_IMAGE"],
        device_plugin_image=plugin,
        tools=tools,
        neuron_sim_image=images["NEURON_SIM_IMAGE"],
        neuron_sim_old_sdk_image=images["NEURON_SIM_OLD_SDK_IMAGE"],
    )


@dataclass
class KindConfig:
    """What to create."""

    name: str
    state_dir: Path
    fleet: tuple[NodeGroup, ...] = DEFAULT_FLEET
    #: Instance type of the kind worker with the simulated Neuron device plugin.
    neuron_instance_type: str = "inf2.xlarge"
    #: Ports of the S3 server (``localcluster.s3.DEV_PORTS`` for the dev cluster); None: free ones at ``up``.
    s3_ports: S3Ports | None = None


class KindCluster:
    """Handle on a kind cluster whose state (kubeconfig, kwok pid, logs, shared dir) is in ``state_dir``."""

    def __init__(self, config: KindConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = config.state_dir.resolve()
        self.logs = self.state / "logs"
        self._env: dict[str, str] | None = None
        self._assets: KindAssets | None = None
        self._s3: S3Server | None = None

    # ---------------------------------------------------------------- paths and metadata
    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def shared_dir(self) -> Path:
        """Mounted at the same path in every kind node: hostPath volumes under it work on any node."""
        return self.state / SHARED_DIR_NAME

    @functools.cached_property
    def client(self) -> Client:
        """A lightkube client authenticated with the admin kubeconfig."""
        return Client(KubeConfig.from_file(str(self.kubeconfig)), field_manager="neuron-tests")

    @property
    def s3_dir(self) -> Path:
        return self.state / "s3"

    @property
    def s3(self) -> S3Server:
        """The cluster's S3 server (endpoint, keys), found from its state (S3Unavailable when it has none)."""
        if self._s3 is None:
            if not S3Server.exists_in(self.s3_dir):
                raise S3Unavailable(
                    f"no S3 server in {self.s3_dir} (a cluster created before S3 was part of it): "
                    "`python -m localcluster up` adds one"
                )
            self._s3 = S3Server.load(self.s3_dir)
        return self._s3

    @property
    def docker_env(self) -> dict[str, str]:
        if self._env is None:
            self._env = docker_env()
        return self._env

    @property
    def assets(self) -> KindAssets:
        if self._assets is None:
            self._assets = ensure_assets(self.docker_env)
        return self._assets

    @property
    def tools(self) -> Tools:
        return self.assets.tools

    @property
    def images(self) -> dict[str, str]:
        """The images loaded into the nodes: ``operator``, ``runtime`` and the SIMULATED Neuron runtimes
        ``neuron-sim`` (simulated Neuron SDK 2.31.1) and ``neuron-sim-old-sdk`` (2.24.0)."""
        a = self.assets
        return {
            "operator": a.operator_image,
            "runtime": a.runtime_image,
            "neuron-sim": a.neuron_sim_image,
            "neuron-sim-old-sdk": a.neuron_sim_old_sdk_image,
        }

    @property
    def control_plane_node(self) -> str:
        return f"{self.name}-control-plane"

    @property
    def neuron_node(self) -> str:
        return f"{self.name}-worker"

    def _meta_path(self) -> Path:
        return self.state / "cluster.json"

    def exists(self) -> bool:
        return self._meta_path().exists()

    # ---------------------------------------------------------------- lifecycle
    def up(self) -> KindCluster:
        """Create the cluster and wait until it is usable; ``down`` undoes a partial start."""
        t0 = time.monotonic()
        if self.exists():
            raise RuntimeError(f"a cluster already lives in {self.state}; run `down` first")
        assets = self.assets  # builds before anything is created: a failed build leaves nothing behind
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.shared_dir.mkdir(exist_ok=True)
        self._meta_path().write_text(json.dumps({"name": self.name, "created_by_pid": os.getpid()}))
        try:
            self._create(assets)
            self._start_s3(assets.tools.weed)  # ready meanwhile (~13 s): waited for after the nodes
            self._configure_nodes()
            self._load_images(assets)
            self._deploy_addons(assets)
            self._start_kwok()
            self._create_fleet()
            self._wait_usable()
            self._wait_s3()
        except BaseException:
            self._dump_diagnostics()
            self.down()
            raise
        self._log(f"kind cluster {self.name} ready in {time.monotonic() - t0:.1f}s; KUBECONFIG={self.kubeconfig}")
        return self

    def down(self) -> None:
        """Stop kwok and the S3 server, delete the kind cluster, remove the state (the Docker engine keeps running)."""
        self._stop_kwok()
        self._stop_s3()
        subprocess.run(
            [str(self._kind_binary()), "delete", "cluster", "--name", self.name],
            env=self.docker_env,
            check=False,
            capture_output=True,
        )
        if self.state.exists():
            shutil.rmtree(self.state, ignore_errors=True)

    def ensure_s3(self) -> S3Server:
        """The cluster's S3 server, ready: started again if it does not run (same keys, ports and data), or
        created for a cluster that predates it."""
        if S3Server.exists_in(self.s3_dir):
            server = self.s3
            server.start()  # a no-op when it runs
        else:
            server = self._start_s3(ensure_tools(("weed",)).weed)
        server.wait_ready()
        return server

    def ensure_images(self) -> None:
        """Load the current project images into a running cluster (after a rebuild; a no-op when present)."""
        self._load_images(self.assets)

    def alive(self) -> bool:
        """The kind nodes answer and kwok runs."""
        proc = subprocess.run(
            [str(self._kind_binary()), "get", "nodes", "--name", self.name],
            env=self.docker_env,
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.returncode == 0 and self.control_plane_node in proc.stdout and self._kwok_alive()

    def status(self) -> dict[str, Any]:
        nodes = self.kubectl("get", "nodes", "-o", "json", check=False)
        ready = []
        if nodes.returncode == 0:
            ready = [
                n["metadata"]["name"]
                for n in json.loads(nodes.stdout)["items"]
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            ]
        s3: dict[str, Any]
        try:
            s3 = self.s3.describe()
        except S3Unavailable as exc:
            s3 = {"error": str(exc)}
        return {"name": self.name, "kwok": self._kwok_alive(), "readyNodes": ready, "s3": s3}

    # ---------------------------------------------------------------- helpers for callers
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster."""
        return run_kubectl(str(self.tools.kubectl), self.kubeconfig, args, input=input, check=check, timeout=timeout)

    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster (kubectl/helm on PATH)."""
        path = os.pathsep.join([*(str(d) for d in self.tools.bin_dirs), self.docker_env.get("PATH", "")])
        return {**self.docker_env, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def post_raw(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to an apiserver path (e.g. a service or pod proxy) and return the JSON answer."""
        return post_raw(self, path, body)

    def docker(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args], env=self.docker_env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def _log(self, msg: str) -> None:
        print(f"[kind {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def _kind_binary(self) -> Path:
        if self._assets is not None:
            return self._assets.kind
        out = _run_script(["bash", str(KIND_DIR / "build-kind-tools.sh"), "kind"], self.docker_env)
        return Path(_key_values(out)["KIND"]) / "kind"

    # ---------------------------------------------------------------- creation steps
    def _kind_config(self) -> dict[str, Any]:
        shared = [
            {"hostPath": str(self.shared_dir), "containerPath": str(self.shared_dir)},
            {"hostPath": str(IMAGE_ARCHIVES), "containerPath": str(IMAGE_ARCHIVES), "readOnly": True},
        ]
        t = instance_type(self.config.neuron_instance_type)
        neuron_labels = {
            INSTANCE_TYPE_LABEL: t.name,
            "beta.kubernetes.io/instance-type": t.name,
            "neuron.amazonaws.com/neuron-device": "true",
            SIMULATED_NEURON_LABEL: "true",
        }
        return {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            # kindnetd cannot be built from Go modules: ptp + host-local CNI baked into the local node image
            # (a public node image keeps kind's default CNI).
            "networking": {"disableDefaultCNI": public_node_image() is None},
            "nodes": [
                {"role": "control-plane", "labels": {EXEC_LABEL: "true"}, "extraMounts": shared},
                {"role": "worker", "labels": neuron_labels, "extraMounts": shared},
            ],
        }

    def _create(self, assets: KindAssets) -> None:
        IMAGE_ARCHIVES.mkdir(parents=True, exist_ok=True)
        config = self.state / "kind-config.yaml"
        config.write_text(yaml.safe_dump(self._kind_config(), sort_keys=False))
        self._log(f"kind create cluster {self.name} (image {assets.node_image})")
        proc = subprocess.run(
            [
                str(assets.kind),
                "create",
                "cluster",
                "--name",
                self.name,
                "--image",
                assets.node_image,
                "--config",
                str(config),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            env=self.docker_env,
            stdout=STDERR_FD,
            stderr=STDERR_FD,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"kind create cluster {self.name} failed (exit {proc.returncode})")
        if public_node_image() is None:  # per-node pod subnets and routes for the baked ptp CNI
            _run_script(
                ["bash", str(KIND_DIR / "post-create.sh"), self.name, "--kubeconfig", str(self.kubeconfig)],
                self.env(),
            )

    def _configure_nodes(self) -> None:
        # The control plane doubles as the node where ordinary pods really run (one node fewer to feed on
        # 2 cores); the worker is tainted like an EKS Neuron node.
        self.kubectl("taint", "nodes", self.control_plane_node, "node-role.kubernetes.io/control-plane:NoSchedule-")
        self.kubectl("taint", "nodes", self.neuron_node, f"{NEURON_TAINT_KEY}=true:NoSchedule", "--overwrite")
        # Not on real EKS nodes: keeps the simulated fleet's scheduling scenarios (pods that tolerate the
        # Neuron taint) on kwok nodes; pods meant for the simulated device plugin tolerate this too.
        self.kubectl("taint", "nodes", self.neuron_node, f"{SIMULATED_NEURON_LABEL}=true:NoSchedule", "--overwrite")

    def _load_images(self, assets: KindAssets) -> None:
        runtimes = (assets.runtime_image, assets.neuron_sim_image, assets.neuron_sim_old_sdk_image)
        loads: list[tuple[tuple[str, ...], list[str]]] = [
            # The runtime images (4.3 GB: PyPI's torch is a CUDA build) share every layer but the simulated SDK's,
            # so they travel in one archive and each node writes the big layers once. The control plane runs
            # compile Jobs and cpu serving pods; the simulated Neuron worker runs Neuron serving pods.
            (runtimes, [self.control_plane_node, self.neuron_node]),
            ((assets.operator_image,), [self.control_plane_node, self.neuron_node]),
            ((assets.device_plugin_image,), [self.neuron_node]),
        ]
        IMAGE_ARCHIVES.mkdir(parents=True, exist_ok=True)
        # Archives of images no longer built are dropped first (they are several GB each; the disk is shared).
        for stale in set(IMAGE_ARCHIVES.glob("*.tar")) - {self._archive_path(i) for i, _nodes in loads}:
            if not _in_use(stale):
                stale.unlink(missing_ok=True)
        archives = [self._archive(images) for images, _nodes in loads]
        jobs = [
            (images, node, archive) for (images, nodes), archive in zip(loads, archives, strict=True) for node in nodes
        ]
        # One import per node at a time (containerd serialises them anyway), nodes in parallel.
        by_node: dict[str, list[tuple[tuple[str, ...], Path]]] = {}
        for images, node, archive in jobs:
            by_node.setdefault(node, []).append((images, archive))
        errors: list[BaseException] = []

        def import_all(node: str) -> None:
            try:
                for images, archive in by_node[node]:
                    self._import(node, images, archive)
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=import_all, args=(node,), name=f"import-{node}") for node in by_node]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _import(self, node: str, images: tuple[str, ...], archive: Path) -> None:
        present = set(self.docker("exec", node, "ctr", "--namespace=k8s.io", "images", "ls", "-q").stdout.split())
        if all(image in present or f"docker.io/{image}" in present for image in images):
            return
        t = time.monotonic()
        proc = self.docker(
            "exec", node, "ctr", "--namespace=k8s.io", "images", "import", "--all-platforms", "--digests",
            "--snapshotter=overlayfs", str(archive), check=False, timeout=1800,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BuildError(f"importing {', '.join(images)} into {node} failed: {proc.stderr[-2000:]}")
        self._log(f"imported {', '.join(images)} into {node} in {time.monotonic() - t:.1f}s")

    def _archive_path(self, images: tuple[str, ...]) -> Path:
        ids = [self.docker("image", "inspect", "--format", "{{.Id}}", i).stdout.strip() for i in images]
        name = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:24] if len(ids) > 1 else ids[0][7:31]
        return IMAGE_ARCHIVES / f"{name}.tar"

    def _archive(self, images: tuple[str, ...]) -> Path:
        """``docker save`` of ``images`` (one archive, shared layers once) under IMAGE_ARCHIVES, named by their
        image ids (reused while the ids hold)."""
        archive = self._archive_path(images)
        if not archive.exists():
            t = time.monotonic()
            tmp = archive.with_suffix(f".tmp{os.getpid()}")
            self.docker("save", "--output", str(tmp), *images, timeout=1800)
            tmp.rename(archive)
            size = archive.stat().st_size / 1e9
            self._log(f"saved {', '.join(images)} ({size:.2f} GB) in {time.monotonic() - t:.1f}s")
        archive.touch()
        return archive

    def _deploy_addons(self, assets: KindAssets) -> None:
        plugin = (KIND_DIR / "manifests" / "neuron-device-plugin-sim.yaml").read_text()
        self.kubectl("apply", "-f", "-", input=plugin.replace("IMAGE_PLACEHOLDER", assets.device_plugin_image))
        # The kube-scheduler image the node already holds: the one of the cluster's own version.
        version = json.loads(self.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        scheduler = (KIND_DIR / "manifests" / "my-scheduler.yaml").read_text()
        self.kubectl("apply", "-f", "-", input=scheduler.replace("KUBE_VERSION_PLACEHOLDER", version))

    def _start_kwok(self) -> None:
        log = (self.logs / "kwok.log").open("ab")
        proc = subprocess.Popen(
            [
                str(self.tools.kwok),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=10.240.0.1",
                "--server-address=127.0.0.1:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        (self.state / "kwok.pid").write_text(str(proc.pid))

    def _kwok_pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((self.state / "kwok.pid").read_text())
        return None

    def _kwok_alive(self) -> bool:
        pid = self._kwok_pid()
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def _stop_kwok(self) -> None:
        pid = self._kwok_pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._kwok_alive():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if not self._kwok_alive():
                break
        (self.state / "kwok.pid").unlink(missing_ok=True)

    def _start_s3(self, weed: Path) -> S3Server:
        """Start the S3 server on the kind network's gateway (reachable from this machine and from pods)."""
        host = kind_network_gateway(self.docker_env)
        server = S3Server(self.s3_dir, weed, host=host, ports=self.config.s3_ports or S3Ports.free(host))
        server.start()
        self._s3 = server
        return server

    def _wait_s3(self) -> None:
        t = time.monotonic()
        self.s3.wait_ready()
        waited = time.monotonic() - t
        self._log(f"S3 (SeaweedFS) at {self.s3.endpoint_url} ready (waited {waited:.1f}s); keys: {self.s3.state_file}")

    def _stop_s3(self) -> None:
        if not S3Server.exists_in(self.s3_dir):
            return
        try:
            self.s3.stop()
        except Exception as exc:  # never keeps the cluster from being deleted
            self._log(f"stopping the S3 server failed: {exc!r}")

    def _create_fleet(self) -> None:
        manifests = fleet_manifests(self.config.fleet)
        if manifests:
            # `create` (not apply): the apiserver keeps a Node's status only on creation.
            self.kubectl(
                "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
            )
            self._log(f"created {len(manifests)} simulated (kwok) nodes")

    def _wait_usable(self) -> None:
        names = [m["metadata"]["name"] for m in fleet_manifests(self.config.fleet)]
        names += [self.control_plane_node, self.neuron_node]

        def nodes_ready() -> bool:
            if not self._kwok_alive():
                raise RuntimeError(f"kwok exited; see {self.logs / 'kwok.log'}")
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ready = {
                n["metadata"]["name"]
                for n in nodes
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            }
            return set(names) <= ready

        until(nodes_ready, timeout=180, interval=0.5, what=f"nodes {names} to be Ready", fatal=(RuntimeError,))
        t = instance_type(self.config.neuron_instance_type)

        def neuron_capacity() -> bool:
            node = json.loads(self.kubectl("get", "node", self.neuron_node, "-o", "json").stdout)
            alloc = node["status"].get("allocatable", {})
            return alloc.get(NEURONCORE_RESOURCE) == str(t.neuron_cores) and alloc.get(NEURON_DEVICE_RESOURCE) == str(
                t.devices
            )

        until(neuron_capacity, timeout=120, interval=0.5, what="the simulated device plugin's NeuronCores")
        for ns, deploy in (("kube-system", "coredns"), ("kube-system", NEURON_SCHEDULER_NAME)):
            self.kubectl("rollout", "status", "-n", ns, f"deployment/{deploy}", "--timeout=180s", timeout=200)

        def scheduler_leads() -> str:
            # my-scheduler schedules only once it holds its Lease (a missing RBAC rule shows up here).
            lease = ("lease", NEURON_SCHEDULER_NAME, "-n", "kube-system", "-o", "jsonpath={.spec.holderIdentity}")
            return self.kubectl("get", *lease, check=False).stdout.strip()

        until(scheduler_leads, timeout=120, what=f"{NEURON_SCHEDULER_NAME} to hold its leader Lease")
        until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            timeout=60,
            what="the default ServiceAccount",
        )

    def _dump_diagnostics(self) -> None:
        with contextlib.suppress(Exception):
            print(self.kubectl("get", "pods,nodes", "-A", "-o", "wide", check=False).stdout, file=sys.stderr)
        with contextlib.suppress(Exception):
            print((self.logs / "kwok.log").read_text()[-3000:], file=sys.stderr)
        with contextlib.suppress(Exception):
            print(self.s3.log_tail(), file=sys.stderr)


def _in_use(archive: Path, recent: float = 3600.0) -> bool:
    """Another cluster may be importing ``archive`` right now: keep archives touched within the hour."""
    try:
        return time.time() - archive.stat().st_mtime < recent
    except FileNotFoundError:
        return False


S3_ENDPOINT_ENV = "NEURON_TEST_S3_ENDPOINT"
S3_ACCESS_KEY_ENV = "NEURON_TEST_S3_ACCESS_KEY"
S3_SECRET_KEY_ENV = "NEURON_TEST_S3_SECRET_KEY"


class ExistingCluster:
    """The same interface as ``KindCluster`` over a cluster someone else runs (EKS, another kind, ...).

    Selected by ``NEURON_TEST_USE_EXISTING_CLUSTER=1`` with ``KUBECONFIG`` pointing at it; kubectl and helm
    come from PATH. Nothing is started or stopped.

    S3: ``NEURON_TEST_S3_ENDPOINT`` (an URL that both the tests and the cluster's pods reach),
    ``NEURON_TEST_S3_ACCESS_KEY`` and ``NEURON_TEST_S3_SECRET_KEY`` (keys that may create buckets and write)
    give ``s3``; without them ``s3`` raises S3Unavailable and the S3 tests are skipped.
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
        return run_kubectl("kubectl", self.kubeconfig, args, input=input, check=check, timeout=timeout)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def post_raw(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_raw(self, path, body)

    @property
    def s3(self) -> S3Endpoint:
        """The S3 endpoint given by the environment (S3Unavailable when it is not)."""
        names = (S3_ENDPOINT_ENV, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV)
        endpoint, access, secret = (os.environ.get(n, "") for n in names)
        if not (endpoint and access and secret):
            raise S3Unavailable(f"S3 tests are skipped on an existing cluster unless {', '.join(names)} are set")
        return S3Endpoint(endpoint, S3Credentials("admin", access, secret))
