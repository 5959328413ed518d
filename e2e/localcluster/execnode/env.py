"""Container environment, exactly as kubelet computes it — as pure functions (no I/O, no cluster).

The exec node (``localcluster.execnode``) resolves ConfigMaps/Secrets first and hands them in as plain dicts,
so everything here is unit-testable: ``$(VAR)`` expansion (kubelet's ``third_party/forked/golang/expansion``
rules), ``env``/``envFrom`` with every ``valueFrom`` source, the ``KUBERNETES_*`` service variables, the
downward API (``fieldRef``/``resourceFieldRef``) and Kubernetes quantities.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

Obj = Mapping[str, Any]


class EnvError(ValueError):
    """A reference that cannot be resolved (kubelet reports it as CreateContainerConfigError)."""


# ------------------------------------------------------------------------------------------- $(VAR)
def expand(text: str, lookup: Callable[[str], str | None] | Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` like kubelet: ``$$`` → ``$``; unknown or unterminated references stay as written."""
    get = lookup.get if isinstance(lookup, Mapping) else lookup
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unterminated: kept verbatim
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            value = get(name) if name else None
            out.append(value if value is not None else text[i : end + 1])
            i = end + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


# ------------------------------------------------------------------------------------------- quantities
_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QTY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$")


def parse_quantity(q: str | int | float) -> Fraction:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2e3``) as an exact fraction."""
    if isinstance(q, (int, float)):
        return Fraction(q)
    m = _QTY.match(q.strip())
    if not m:
        raise EnvError(f"invalid quantity {q!r}")
    number, exp, suffix = m.groups()
    value = Fraction(number)
    if exp:
        return value * Fraction(10) ** int(exp[1:])
    return value * _SUFFIX[suffix or ""]


# ------------------------------------------------------------------------------------------- downward API
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def _format_map(m: Mapping[str, str]) -> str:
    """``metadata.labels`` / ``metadata.annotations`` in a downwardAPI file: ``key="value"`` lines, sorted."""
    return "\n".join(f'{k}="{_go_quote_inner(v)}"' for k, v in sorted(m.items()))


def _go_quote_inner(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def field_ref(pod: Obj, path: str, *, allow_maps: bool = False) -> str:
    """Value of a ``fieldRef.fieldPath`` for ``pod`` (env vars: no whole label/annotation maps)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = _SUBSCRIPT.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta.get("name"),
        "metadata.namespace": lambda: meta.get("namespace"),
        "metadata.uid": lambda: meta.get("uid"),
        "spec.nodeName": lambda: spec.get("nodeName"),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName"),
        "status.podIP": lambda: status.get("podIP"),
        "status.hostIP": lambda: status.get("hostIP"),
        "status.podIPs": lambda: ",".join(p["ip"] for p in status.get("podIPs") or []),
        "status.hostIPs": lambda: ",".join(p["ip"] for p in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path]() or "")
    if allow_maps and path in ("metadata.labels", "metadata.annotations"):
        return _format_map(meta.get(path.split(".")[1]) or {})
    raise EnvError(f"fieldRef.fieldPath {path!r} is not supported")


def resource_field_ref(container: Obj, ref: Obj, node_allocatable: Mapping[str, str]) -> str:
    """Value of a ``resourceFieldRef`` (kubelet: rounds up; unset limits fall back to node allocatable)."""
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"resourceFieldRef.resource {resource!r} is not supported")
    res = container.get("resources") or {}
    raw = (res.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (res.get("limits") or {}).get(name)  # the API defaults requests to limits
        if raw is None:
            raw = "0"
    if raw is None:
        raw = node_allocatable.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise EnvError(f"resourceFieldRef.divisor {ref.get('divisor')!r} must be positive")
    value = math.ceil(parse_quantity(raw) / divisor)
    if name == "cpu" and kind == "limits":
        value = max(value, 1)  # kubelet never reports less than one core for a cpu limit
    return str(value)


# ------------------------------------------------------------------------------------------- env assembly
def kubernetes_service_env(host: str, port: int) -> dict[str, str]:
    """The ``KUBERNETES_*`` variables kubelet injects for the ``default/kubernetes`` Service."""
    url = f"tcp://{host}:{port}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        f"KUBERNETES_PORT_{port}_TCP": url,
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def _decode_secret(secret: Obj) -> dict[str, str]:
    import base64

    out = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def _configmap_data(cm: Obj) -> dict[str, str]:
    return dict(cm.get("data") or {})


def container_env(
    pod: Obj,
    container: Obj,
    *,
    configmaps: Mapping[str, Obj | None],
    secrets: Mapping[str, Obj | None],
    base: Mapping[str, str] = (),  # type: ignore[assignment]
    service_env: Mapping[str, str] = (),  # type: ignore[assignment]
    node_allocatable: Mapping[str, str] = (),  # type: ignore[assignment]
) -> dict[str, str]:
    """The full environment of ``container``: ``base`` < service vars < ``envFrom`` < ``env``.

    ``configmaps``/``secrets`` map names to the fetched objects (``None`` = does not exist); see
    ``referenced_objects`` for what to fetch. Raises ``EnvError`` naming the field for a missing,
    non-optional reference.
    """
    cname = container.get("name", "?")
    env: dict[str, str] = dict(base)
    env.update(service_env)
    expandable: dict[str, str] = dict(service_env)  # what $(VAR) may refer to (kubelet: service vars + env)

    for i, src in enumerate(container.get("envFrom") or []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref, objs, kind, decode = src["configMapRef"], configmaps, "configMap", _configmap_data
        elif "secretRef" in src:
            ref, objs, kind, decode = src["secretRef"], secrets, "secret", _decode_secret
        else:
            raise EnvError(f"containers[{cname}].envFrom[{i}]: needs configMapRef or secretRef")
        obj = objs.get(ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                continue
            raise EnvError(f"containers[{cname}].envFrom[{i}]: {kind} {ref.get('name')!r} not found")
        for k, v in decode(obj).items():
            env[prefix + k] = v
            expandable[prefix + k] = v

    for var in container.get("env") or []:
        name = var["name"]
        where = f"containers[{cname}].env[{name}]"
        if "valueFrom" not in var:
            value = expand(var.get("value", ""), expandable)
        else:
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                value = field_ref(pod, vf["fieldRef"].get("fieldPath", ""))
            elif "resourceFieldRef" in vf:
                value = resource_field_ref(container, vf["resourceFieldRef"], node_allocatable)
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                is_cm = "configMapKeyRef" in vf
                ref = vf["configMapKeyRef"] if is_cm else vf["secretKeyRef"]
                obj = (configmaps if is_cm else secrets).get(ref.get("name", ""))
                data = None if obj is None else (_configmap_data(obj) if is_cm else _decode_secret(obj))
                kind = "configMap" if is_cm else "secret"
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    missing = (
                        f"{kind} {ref.get('name')!r}"
                        if data is None
                        else f"key {ref.get('key')!r} in {kind} {ref.get('name')!r}"
                    )
                    raise EnvError(f"{where}: {missing} not found")
                value = data[ref["key"]]
            else:
                raise EnvError(f"{where}: unsupported valueFrom {sorted(vf)}")
        env[name] = value
        expandable[name] = value
    return env


def referenced_objects(pod: Obj) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's containers' env/envFrom refer to."""
    cms: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec", {})
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                cms.add(src["configMapRef"].get("name", ""))
            if "secretRef" in src:
                secrets.add(src["secretRef"].get("name", ""))
        for var in c.get("env") or []:
            vf = var.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                cms.add(vf["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in vf:
                secrets.add(vf["secretKeyRef"].get("name", ""))
    return cms, secrets


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded (images are ignored, so a command is required)."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        raise EnvError(
            f"containers[{container.get('name')}].command: required on the local exec node (images are not run)"
        )
    return [expand(a, env) for a in argv]
