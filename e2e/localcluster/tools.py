"""Locate the pinned control-plane binaries, building them on first use.

The build itself is ``build-tools.sh`` (a cache keyed by version outside the repository); this module
only runs it and turns its ``NAME=dir`` lines into paths.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build-tools.sh")


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every binary the local cluster runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    #: SeaweedFS: the local cluster's S3-compatible server (``localcluster.s3``).
    weed: Path

    @property
    def bin_dirs(self) -> list[Path]:
        return sorted({p.parent for p in (self.etcd, self.kubectl, self.kwok, self.helm)})


def ensure_tools(components: tuple[str, ...] = ()) -> Tools:
    """Build what is missing (progress goes to stderr) and return the binary paths."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *components],
        check=True,
        stdout=subprocess.PIPE,
        stderr=None,  # inherited fd 2 (under pytest `sys.stderr` may have no file descriptor)
        text=True,
        env=os.environ.copy(),
    ).stdout
    dirs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    k8s, etcd, kwok, helm, weed = (Path(dirs[k]) for k in ("K8S", "ETCD", "KWOK", "HELM", "WEED"))
    return Tools(
        etcd=etcd / "etcd",
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        kwok=kwok / "kwok",
        helm=helm / "helm",
        weed=weed / "weed",
    )
