"""Volumes of exec-node pods: materialised as host directories, bind-mounted by ``launch.py``.

Every pod has ``<state>/pods/<ns>_<name>_<uid>/volumes/<volume>/``. ``emptyDir`` is that directory;
``configMap``/``secret``/``downwardAPI``/``projected`` are files written there once at pod start (with
``items``, ``defaultMode``/``mode``; mounted read-only, as kubelet does), the service-account token of a
projected volume comes from the TokenRequest API bound to the pod and is rewritten at 80 % of its lifetime;
``persistentVolumeClaim`` is the path of a bound hostPath/local PV, otherwise one directory per claim under
``<state>/pvc/`` that outlives pods (the scheduler still wants the claim Bound: pre-bind it to any PV);
``hostPath`` is the host path itself. ``render_*`` are pure; ``prepare`` does the fetching through a
``Fetcher``.
"""

# ruff: noqa: ASYNC240 - small local files and mkdirs; not worth a thread hop each
from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from localcluster.execnode.env import EnvError, expand, field_ref, resource_field_ref

Obj = Mapping[str, Any]
Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)
READ_ONLY_KINDS = ("configMap", "secret", "downwardAPI", "projected")
SUPPORTED = ("emptyDir", "hostPath", "persistentVolumeClaim", *READ_ONLY_KINDS)


class VolumeError(RuntimeError):
    """A volume cannot be set up yet (missing object, forbidden, unsupported type)."""


class Fetcher(Protocol):
    async def configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def pvc(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def pv(self, name: str) -> dict[str, Any] | None: ...
    async def token(
        self, namespace: str, service_account: str, pod: Obj, audience: str | None, expiration: int
    ) -> tuple[str, float]: ...


# ------------------------------------------------------------------------------------------- pure rendering
def _items(data: Mapping[str, bytes], items: list[Obj] | None, mode: int, where: str) -> Files:
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out: Files = {}
    for it in items:
        if it["key"] not in data:
            raise VolumeError(f"{where}: key {it['key']!r} not found")
        out[it["path"]] = (data[it["key"]], it.get("mode", mode))
    return out


def configmap_data(cm: Obj) -> dict[str, bytes]:
    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return data


def secret_data(secret: Obj) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def render_configmap(cm: Obj | None, src: Obj, default_mode: int, where: str) -> Files:
    if cm is None:
        if src.get("optional"):
            return {}
        raise VolumeError(f"{where}: configmap {src.get('name')!r} not found")
    return _items(configmap_data(cm), src.get("items"), default_mode, where)


def render_secret(secret: Obj | None, src: Obj, default_mode: int, where: str, name_key: str = "secretName") -> Files:
    if secret is None:
        if src.get("optional"):
            return {}
        raise VolumeError(f"{where}: secret {src.get(name_key)!r} not found")
    return _items(secret_data(secret), src.get("items"), default_mode, where)


def render_downward(pod: Obj, src: Obj, default_mode: int, node_allocatable: Mapping[str, str], where: str) -> Files:
    out: Files = {}
    containers = {c["name"]: c for c in pod.get("spec", {}).get("containers") or []}
    for it in src.get("items") or []:
        try:
            if "fieldRef" in it:
                value = field_ref(pod, it["fieldRef"]["fieldPath"], allow_maps=True)
            elif "resourceFieldRef" in it:
                ref = it["resourceFieldRef"]
                value = resource_field_ref(containers.get(ref.get("containerName", ""), {}), ref, node_allocatable)
            else:
                raise VolumeError(f"{where}: item {it.get('path')!r} needs fieldRef or resourceFieldRef")
        except EnvError as exc:
            raise VolumeError(f"{where}: {exc}") from exc
        out[it["path"]] = (value.encode(), it.get("mode", default_mode))
    return out


def write_files(root: Path, files: Files) -> None:
    """Write ``files`` under ``root`` atomically (temp file + rename): readers never see partial content."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in files.items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise VolumeError(f"volume item path {rel!r} must be relative without '..'")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- prepare
@dataclass
class TokenFile:
    """A projected service-account token to refresh: where it lives and when to rewrite it."""

    path: Path
    audience: str | None
    expiration: int
    mode: int
    refresh_at: float = 0.0


@dataclass
class PodVolumes:
    sources: dict[str, Path] = field(default_factory=dict)  # volume name -> host path
    kinds: dict[str, str] = field(default_factory=dict)
    tokens: list[TokenFile] = field(default_factory=list)


def volume_kind(vol: Obj) -> str:
    kinds = [k for k in vol if k != "name"]
    if len(kinds) != 1:
        raise VolumeError(f"volumes[{vol.get('name')}]: exactly one volume source expected, got {kinds}")
    if kinds[0] not in SUPPORTED:
        raise VolumeError(f"volumes[{vol['name']}]: {kinds[0]} volumes are not supported on the local exec node")
    return kinds[0]


async def prepare(
    pod: Obj, pod_dir: Path, pvc_root: Path, fetch: Fetcher, node_allocatable: Mapping[str, str]
) -> PodVolumes:
    """Create every volume of ``pod`` on the host; raise ``VolumeError`` if one cannot be made (yet)."""
    ns = pod["metadata"]["namespace"]
    sa = pod.get("spec", {}).get("serviceAccountName") or "default"
    out = PodVolumes()
    for vol in pod.get("spec", {}).get("volumes") or []:
        name, kind = vol["name"], volume_kind(vol)
        src = vol[kind] or {}
        where = f"volumes[{name}].{kind}"
        target = pod_dir / "volumes" / name
        out.kinds[name] = kind
        mode = int(src.get("defaultMode", 0o644))
        if kind == "emptyDir":
            target.mkdir(parents=True, exist_ok=True)
        elif kind == "hostPath":
            path = Path(src["path"])
            htype = src.get("type", "")
            if htype == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif htype == "FileOrCreate":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(exist_ok=True)
            elif not path.exists() and htype:
                raise VolumeError(f"{where}: {path} does not exist (type {htype})")
            elif not path.exists():
                path.mkdir(parents=True, exist_ok=True)  # kubelet: an unset type creates nothing, runc creates a dir
            target = path
        elif kind == "persistentVolumeClaim":
            claim = src.get("claimName", "")
            pvc = await fetch.pvc(ns, claim)
            if pvc is None:
                raise VolumeError(f"{where}: persistentvolumeclaim {claim!r} not found")
            pv = await fetch.pv(pvc["spec"]["volumeName"]) if (pvc.get("spec") or {}).get("volumeName") else None
            pv_spec = (pv or {}).get("spec") or {}
            local = pv_spec.get("hostPath") or pv_spec.get("local")
            # A hostPath/local PV lives on this host; any other kind gets one directory per claim.
            target = Path(local["path"]) if local else pvc_root / f"{ns}_{claim}_{pvc['metadata']['uid']}"
            target.mkdir(parents=True, exist_ok=True)
        elif kind == "configMap":
            cm = await fetch.configmap(ns, src.get("name", ""))
            write_files(target, render_configmap(cm, src, mode, where))
        elif kind == "secret":
            secret = await fetch.secret(ns, src.get("secretName", ""))
            write_files(target, render_secret(secret, src, mode, where))
        elif kind == "downwardAPI":
            write_files(target, render_downward(pod, src, mode, node_allocatable, where))
        elif kind == "projected":
            files: Files = {}
            for i, ps in enumerate(src.get("sources") or []):
                pwhere = f"{where}.sources[{i}]"
                if "serviceAccountToken" in ps:
                    t = ps["serviceAccountToken"]
                    tf = TokenFile(target / t["path"], t.get("audience"), int(t.get("expirationSeconds", 3600)), mode)
                    await refresh_token(tf, pod, sa, fetch)
                    out.tokens.append(tf)
                elif "configMap" in ps:
                    cm = await fetch.configmap(ns, ps["configMap"].get("name", ""))
                    files |= render_configmap(cm, ps["configMap"], mode, pwhere)
                elif "secret" in ps:
                    secret = await fetch.secret(ns, ps["secret"].get("name", ""))
                    files |= render_secret(secret, ps["secret"], mode, pwhere, name_key="name")
                elif "downwardAPI" in ps:
                    files |= render_downward(pod, ps["downwardAPI"], mode, node_allocatable, pwhere)
                else:
                    raise VolumeError(f"{pwhere}: {sorted(ps)} is not supported on the local exec node")
            write_files(target, files)
        out.sources[name] = target
    return out


async def refresh_token(tf: TokenFile, pod: Obj, sa: str, fetch: Fetcher) -> None:
    token, expires_at = await fetch.token(pod["metadata"]["namespace"], sa, pod, tf.audience, tf.expiration)
    write_files(tf.path.parent, {tf.path.name: (token.encode(), tf.mode)})
    now = time.time()
    tf.refresh_at = now + 0.8 * max(expires_at - now, 60)


def mounts_for(
    container: Obj, volumes: PodVolumes, env: Mapping[str, str], termination_file: Path
) -> list[dict[str, Any]]:
    """Bind mounts for one container: its ``volumeMounts`` plus the termination-message file."""
    mounts: list[dict[str, Any]] = []
    cname = container.get("name")
    for vm in container.get("volumeMounts") or []:
        name = vm["name"]
        if name not in volumes.sources:
            raise VolumeError(f"containers[{cname}].volumeMounts[{name}]: no volume named {name!r}")
        src = volumes.sources[name]
        sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise VolumeError(
                    f"containers[{cname}].volumeMounts[{name}].subPath {sub!r}: must be relative without '..'"
                )
            src = src / sub
            if not src.exists():
                src.mkdir(parents=True)
        read_only = bool(vm.get("readOnly")) or volumes.kinds.get(name) in READ_ONLY_KINDS
        mounts.append({"source": str(src), "target": vm["mountPath"], "readOnly": read_only})
    tpath = container.get("terminationMessagePath") or "/dev/termination-log"
    mounts.append({"source": str(termination_file), "target": tpath, "readOnly": False})
    return mounts
