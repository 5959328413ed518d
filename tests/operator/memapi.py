"""An in-memory Kubernetes apiserver under a REAL lightkube ``AsyncClient``, for fast tests of the decision core.

``MemApi.client()`` is lightkube's own ``AsyncClient`` whose HTTP transport is this module: every call the
operator's ``kube.Kube`` makes goes through lightkube's real request building (documented signatures only, a
wrong keyword fails as it would in production), over HTTP requests this apiserver answers, and back through
lightkube's real decoding (generic resources, i.e. dicts) and error handling (``ApiError`` from a ``Status``
response). What the apiserver does, as the real one does it:

- objects get ``uid``, ``creationTimestamp``, ``resourceVersion`` (bumped on every change, not on a no-op
  write) and, for kinds that have it, ``metadata.generation`` (bumped when anything but metadata and status
  changes); ``managedFields`` names the managers;
- 404 NotFound, 409 AlreadyExists (create), 409 Conflict (update with a stale ``resourceVersion``),
  422 Invalid (update without ``resourceVersion``; a custom resource that fails its CRD schema), 400 BadRequest
  (name or namespace in the body differing from the URL, a log request for a container that has not started);
- the status subresource changes only ``status``; the main resource never changes ``status``; ``create``
  drops ``status``;
- server-side apply (``fieldManager`` required, ``force``): maps merge, lists are replaced, and a field the same
  manager applied before but left out now is removed (field ownership per manager; without ``force`` a field
  another applier owns with another value is a 409 Conflict);
- merge patch (RFC 7386); strategic merge patch only on built-in kinds (415 on custom resources, as for real);
- custom resources follow their generated CRD (``crds/``): unknown fields are pruned, defaults are set, and the
  OpenAPI rules are checked (type, enum, bounds, lengths, pattern, required, date-time, list-map key
  uniqueness); CEL rules (``x-kubernetes-validations``) are not evaluated;
- built-in kinds get the defaults the operator must tolerate: quantities in canonical form (``2`` -> ``"2"``,
  ``"1024Mi"`` -> ``"1Gi"``), ``fieldRef.apiVersion``, container and pod defaults, a Service's cluster IP;
- lists by label selector, in one namespace or all (``*``); items of built-in kinds carry no apiVersion/kind;
- ``generateName``; pod logs (``set_log``), 404 for a missing pod, 400 for a container without a log yet;
- the pod proxy, GET ``/api/v1/namespaces/{ns}/pods/{name}[:{port}]/proxy/{path}`` (``set_metrics``: what the pod
  answers on ``/metrics`` of a port): 404 NotFound for a missing pod, 400 BadRequest ``address not allowed`` for a
  pod without a (global unicast) IP in ``status.podIPs`` (or ``podIP``), 503 ServiceUnavailable ``error trying to
  reach service: dial tcp <ip>:<port>: connect: connection refused`` when nothing listens on the port, else the
  pod's answer (200 ``text/plain; version=0.0.4``; 404 for another path); no port: the first container port.

Every write request is journaled (``Write``: verb, kind, name, subresource, response code), so a test asserts
"a no-op pass writes nothing" on what reached the apiserver; ``requests`` records every request (reads too) and
``log_reads`` the pod log reads that found the pod and container. ``inject``
makes matching requests fail with a given ``Status`` (e.g. a 422 on applying a Deployment).

The test (or a simulated controller: Job, Deployment, kubelet) changes the world with ``seed``, ``edit``,
``set_status``, ``delete``, ``set_log`` and ``set_metrics``, which bypass HTTP and the journal.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx2
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User

SERVER = "https://memapi.test"
CRDS = Path(__file__).resolve().parents[2] / "crds"
Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True
    status: bool = True  # has a status subresource
    generation: bool = True  # the apiserver maintains metadata.generation
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: tuple[Kind, ...] = (
    Kind("NeuronModel", "neuron.dev", "v1alpha1", "neuronmodels", custom=True),
    Kind("NeuronDeployment", "neuron.dev", "v1alpha1", "neurondeployments", custom=True),
    Kind("Job", "batch", "v1", "jobs"),
    Kind("Deployment", "apps", "v1", "deployments"),
    Kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets"),
    Kind("Service", "", "v1", "services", generation=False),
    Kind("Pod", "", "v1", "pods", generation=False),
    Kind("Event", "", "v1", "events", status=False, generation=False),
    Kind("Lease", "coordination.k8s.io", "v1", "leases", status=False, generation=False),
    Kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", generation=False),
    Kind("Node", "", "v1", "nodes", namespaced=False, generation=False),
)
BY_NAME = {k.kind: k for k in KINDS}
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}


@dataclass(frozen=True)
class Write:
    """One write request that reached the apiserver (whatever its outcome)."""

    verb: str  # create | update | apply | patch | delete
    kind: str
    namespace: str | None
    name: str
    subresource: str | None = None
    code: int = 200

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.kind}/{self.name}{sub} -> {self.code}"


@dataclass
class Injection:
    verb: str  # get | list | create | update | apply | patch | delete | log | proxy
    kind: str
    name: str | None
    subresource: str | None
    code: int
    reason: str
    message: str
    times: int


class StatusError(Exception):
    """Answered as a ``Status`` response (lightkube turns it into ``ApiError``)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def response(self) -> httpx2.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }
        return httpx2.Response(self.code, json=body)


def _resource_ref(k: Kind) -> str:
    return f"{k.plural}.{k.group}" if k.group else k.plural


def not_found(k: Kind, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{_resource_ref(k)} "{name}" not found', {"name": name, "kind": k.plural})


def invalid(k: Kind, name: str, causes: list[str]) -> StatusError:
    return StatusError(
        422, "Invalid", f'{k.kind}.{k.group or "core"} "{name}" is invalid: {"; ".join(causes)}', {"name": name}
    )


# ------------------------------------------------------------------------------------------ JSON helpers


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


Path_ = tuple[str, ...]


def leaf_paths(value: Any, prefix: Path_ = ()) -> set[Path_]:
    """Fields set by an applied configuration: map keys recursively, lists and scalars as atomic leaves."""
    if isinstance(value, dict) and value:
        out: set[Path_] = set()
        for k, v in value.items():
            out |= leaf_paths(v, (*prefix, k))
        return out
    return {prefix}


def _get_path(obj: Any, path: Path_) -> Any:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return _MISSING
        obj = obj[p]
    return obj


def _remove_path(obj: Obj, path: Path_) -> None:
    parents = [obj]
    for p in path[:-1]:
        nxt = parents[-1].get(p)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for depth in range(len(parents) - 1, 0, -1):  # an emptied map disappears with its last field
        if not parents[depth]:
            parents[depth - 1].pop(path[depth - 1], None)


def _apply_merge(target: Any, applied: Any) -> Any:
    if isinstance(applied, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for k, v in applied.items():
            out[k] = _apply_merge(target.get(k), v)
        return out
    return copy.deepcopy(applied)


class _Missing:
    pass


_MISSING = _Missing()


# ------------------------------------------------------------------------------------- built-in defaults

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


def canonical_quantity(value: Any) -> Any:
    """The apiserver's canonical form of a quantity (``2`` -> ``"2"``, ``"0.5"`` -> ``"500m"``, ``"1024Mi"`` ->
    ``"1Gi"``); anything that is not a quantity is returned unchanged (the real apiserver would refuse it)."""
    if isinstance(value, bool):
        return value
    m = _QUANTITY.match(str(value))
    if not m:
        return value
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        return value
    suffix = m.group(2) or ""
    if suffix in _BINARY and suffix:
        amount = number * (Decimal(1024) ** _BINARY.index(suffix))
        if amount == amount.to_integral_value():
            for i in range(len(_BINARY) - 1, -1, -1):
                unit = Decimal(1024) ** i
                if amount % unit == 0:
                    return f"{int(amount / unit)}{_BINARY[i]}"
    exponents = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
    amount = number * (Decimal(10) ** exponents.get(suffix, 0))
    if suffix in _BINARY[1:]:
        amount = number * (Decimal(1024) ** _BINARY.index(suffix))
    for e in sorted(_DECIMAL, reverse=True):
        scaled = amount / (Decimal(10) ** e)
        if scaled == scaled.to_integral_value() and (scaled != 0 or e == 0):
            return f"{int(scaled)}{_DECIMAL[e]}"
    return f"{int((amount * Decimal(10) ** 9).to_integral_value())}n"


def _default_resources(res: Any) -> None:
    if not isinstance(res, dict):
        return
    for part in ("requests", "limits"):
        if isinstance(res.get(part), dict):
            res[part] = {k: canonical_quantity(v) for k, v in res[part].items()}


def _default_container(c: Obj) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("imagePullPolicy", "IfNotPresent")
    c.setdefault("resources", {})
    _default_resources(c["resources"])
    for env in c.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _default_pod_spec(spec: Obj, restart: str) -> None:
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for c in spec.get("containers") or []:
        _default_container(c)


def builtin_defaults(kind: str, obj: Obj) -> None:
    """What the real apiserver adds to the built-in kinds the operator writes (a subset)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Deployment":
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("replicas", 1)
        spec.setdefault(
            "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
        )
        _default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}), "Always")
    elif kind == "Job":
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        _default_pod_spec(spec.setdefault("template", {}).setdefault("spec", {}), "Never")
    elif kind == "Pod":
        _default_pod_spec(spec, "Always")
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("ipFamilies", ["IPv4"])
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")


# ------------------------------------------------------------------------------------------ CRD schema


@dataclass
class Schema:
    """Structural-schema pruning, defaulting and validation (the OpenAPI subset the generated CRDs use)."""

    root: Obj

    def prune(self, s: Obj, value: Any) -> Any:
        if isinstance(value, dict) and s.get("type") == "object" and not s.get("x-kubernetes-preserve-unknown-fields"):
            props = s.get("properties")
            extra = s.get("additionalProperties")
            out: Obj = {}
            for k, v in value.items():
                sub = (props or {}).get(k, extra if isinstance(extra, dict) else {})
                if v is None and not sub.get("nullable"):
                    continue  # a null in a non-nullable field is pruned
                if props is not None and k in props:
                    out[k] = self.prune(props[k], v)
                elif isinstance(extra, dict):
                    out[k] = self.prune(extra, v)
            return out  # (an object schema with neither properties nor additionalProperties keeps nothing)
        if isinstance(value, list) and isinstance(s.get("items"), dict):
            return [self.prune(s["items"], v) for v in value]
        return value

    def default(self, s: Obj, value: Any) -> Any:
        if isinstance(value, dict):
            for k, ps in (s.get("properties") or {}).items():
                if k not in value and "default" in ps:
                    value[k] = copy.deepcopy(ps["default"])
                if k in value:
                    value[k] = self.default(ps, value[k])
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            return [self.default(s["items"], v) for v in value]
        return value

    def validate(self, s: Obj, value: Any, path: str, errors: list[str]) -> None:
        t = s.get("type")
        if s.get("x-kubernetes-int-or-string"):
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                errors.append(f"{path}: Invalid value: {value!r}: must be an integer or a string")
            return
        ok = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
        }
        if t in ok and not ok[t](value):
            errors.append(f"{path}: Invalid value: {json.dumps(value)}: {path} in body must be of type {t}")
            return
        if "enum" in s and value not in s["enum"]:
            errors.append(f"{path}: Unsupported value: {json.dumps(value)}: supported values: {s['enum']}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in s and value < s["minimum"]:
                errors.append(f"{path}: Invalid value: {value}: {path} in body should be >= {s['minimum']}")
            if "maximum" in s and value > s["maximum"]:
                errors.append(f"{path}: Invalid value: {value}: {path} in body should be <= {s['maximum']}")
        if isinstance(value, str):
            if "maxLength" in s and len(value) > s["maxLength"]:
                errors.append(f"{path}: Too long: may not be longer than {s['maxLength']}")
            if "minLength" in s and len(value) < s["minLength"]:
                errors.append(f"{path}: Invalid value: {value!r}: {path} in body should be at least {s['minLength']}")
            if "pattern" in s and not re.search(s["pattern"], value):
                errors.append(f"{path}: Invalid value: {value!r}: {path} in body should match '{s['pattern']}'")
            if s.get("format") == "date-time":
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    errors.append(f"{path}: Invalid value: {value!r}: {path} in body must be of type date-time")
        if isinstance(value, list):
            if "maxItems" in s and len(value) > s["maxItems"]:
                errors.append(f"{path}: Too many: {len(value)}: must have at most {s['maxItems']} items")
            if "minItems" in s and len(value) < s["minItems"]:
                errors.append(
                    f"{path}: Invalid value: {len(value)}: {path} in body should have at least {s['minItems']} items"
                )
            keys = s.get("x-kubernetes-list-map-keys")
            if s.get("x-kubernetes-list-type") == "map" and keys:
                seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
                if len(set(seen)) != len(seen):
                    errors.append(f"{path}: Duplicate value: keys {keys} must be unique")
            if s.get("x-kubernetes-list-type") == "set" and len({json.dumps(v, sort_keys=True) for v in value}) != len(
                value
            ):
                errors.append(f"{path}: Duplicate value")
            if isinstance(s.get("items"), dict):
                for i, v in enumerate(value):
                    self.validate(s["items"], v, f"{path}[{i}]", errors)
        if isinstance(value, dict):
            for r in s.get("required") or []:
                if r not in value:
                    errors.append(f"{path}.{r}: Required value")
            props = s.get("properties") or {}
            for k, v in value.items():
                if k in props:
                    self.validate(props[k], v, f"{path}.{k}", errors)
                elif isinstance(s.get("additionalProperties"), dict):
                    self.validate(s["additionalProperties"], v, f"{path}.{k}", errors)

    def admit(self, part: str, value: Any) -> tuple[Any, list[str]]:
        """``spec`` or ``status`` as stored: pruned, defaulted, and the validation errors."""
        s = self.root["properties"].get(part)
        if s is None:
            return value, []
        value = self.default(s, self.prune(s, value))
        errors: list[str] = []
        self.validate(s, value, part, errors)
        return value, errors


def load_schemas(crds: Path = CRDS) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for f in sorted(crds.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        out[crd["spec"]["names"]["kind"]] = Schema(version["schema"]["openAPIV3Schema"])
    return out


@functools.cache
def schemas() -> dict[str, Schema]:
    return load_schemas()


# ------------------------------------------------------------------------------------------ label selectors


def _selector_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur.strip())
    return terms


def matches(selector: str, labels: dict[str, str]) -> bool:
    for term in _selector_terms(selector):
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


#: Field selectors the apiserver supports per kind (besides metadata.name and metadata.namespace).
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "Event": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "Pod": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase"),
    "Node": ("spec.unschedulable",),
    "Job": ("status.successful",),
}


def _field_terms(k: Kind, selector: str) -> list[tuple[Path_, str]]:
    """``a.b=v,c==w`` -> [(("a", "b"), "v"), ...]; an unsupported field label is a 400, as for real."""
    terms = []
    for term in _selector_terms(selector):
        if "!=" in term:
            raise StatusError(500, "InternalError", f"memapi does not implement != field selectors ({term})")
        label, _, value = term.partition("==") if "==" in term else term.partition("=")
        label = label.strip()
        if label not in ("metadata.name", "metadata.namespace", *FIELD_LABELS.get(k.kind, ())):
            raise StatusError(
                400,
                "BadRequest",
                f'Unable to find "{k.api_version}, Resource={k.plural}" that match label selector "", '
                f'field selector "{selector}": field label not supported: {label}',
            )
        if k.kind == "Event" and label == "source":
            label = "source.component"
        terms.append((tuple(label.split(".")), value.strip()))
    return terms


# ------------------------------------------------------------------------------------------ the apiserver


def _decode(content: bytes) -> Any:
    """A request body: JSON, or YAML (an apply patch may be either)."""
    try:
        return json.loads(content)
    except ValueError:
        return yaml.safe_load(content)


def _body_name(content: bytes) -> str:
    try:
        return str(_decode(content)["metadata"].get("name") or "")
    except (TypeError, KeyError, AttributeError, ValueError, yaml.YAMLError):
        return ""


_POD_PROXY = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<id>[^/]+)/proxy(?P<path>/.*)?")


def _global_unicast(ip: str) -> bool:
    """Go's ``net.IP.IsGlobalUnicast`` (private ranges included): what the apiserver requires to proxy to a pod."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    broadcast = addr == ipaddress.IPv4Address("255.255.255.255")
    return not (addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local or broadcast)


def _fixed_clock() -> datetime:
    return datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class MemApi:
    """The in-memory apiserver; ``client()`` is a real lightkube ``AsyncClient`` talking to it."""

    clock: Callable[[], datetime] = _fixed_clock
    default_namespace: str = "default"
    objects: dict[tuple[str, str | None, str], Obj] = field(default_factory=dict)
    journal: list[Write] = field(default_factory=list)
    log_reads: list[tuple[str, str, str | None]] = field(default_factory=list)  # (namespace, pod, container)
    #: every request, reads included: (verb, kind, namespace ('*' = all), name or None, subresource)
    requests: list[tuple[str, str, str | None, str | None, str | None]] = field(default_factory=list)
    logs: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    #: (namespace, pod, port) -> what the pod answers on GET /metrics of that port (through the pod proxy)
    metrics: dict[tuple[str, str, int], str] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)
    version: int = 0
    #: (kind, namespace, name) -> manager -> fields it applied (server-side apply ownership)
    applied_fields: dict[tuple[str, str | None, str], dict[str, set[Path_]]] = field(default_factory=dict)
    _uids: int = 0
    _names: int = 0

    # ------------------------------------------------------------------ test and controller side (no HTTP)

    def client(self, field_manager: str | None = None) -> AsyncClient:
        config = KubeConfig.from_one(
            # insecure: no certificate store to load (0.5 s per client); the transport never opens a connection
            cluster=Cluster(server=SERVER, insecure=True),
            user=User(token="memapi"),
            namespace=self.default_namespace,
        )
        return AsyncClient(
            config, field_manager=field_manager, trust_env=False, transport=httpx2.MockTransport(self.handle)
        )

    def seed(self, obj: Obj, *, validate: bool = True) -> Obj:
        """Create ``obj`` as a user would (status included, as a controller or a restore would have left it).
        ``validate=False`` stores a custom resource its CRD now refuses (an object from before a schema change)."""
        k = BY_NAME[obj["kind"]]
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        if k.namespaced:
            meta.setdefault("namespace", self.default_namespace)
        key = (k.kind, meta.get("namespace") if k.namespaced else None, meta["name"])
        assert key not in self.objects, f"seed: {key} exists"
        status = stored.pop("status", None)
        self._admit_new(k, stored, "test", "Update", validate=validate)
        if status is not None:
            stored["status"] = self._admit_status(k, meta["name"], status) if validate else status
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def read(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        k = BY_NAME[kind]
        obj = self.objects.get((kind, (namespace or self.default_namespace) if k.namespaced else None, name))
        return copy.deepcopy(obj) if obj is not None else None

    def must(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        obj = self.read(kind, name, namespace)
        assert obj is not None, f"{kind} {namespace}/{name} does not exist"
        return obj

    def all(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every ``kind`` object (in ``namespace``, or everywhere), by namespace and name."""
        found = [o for (kd, ns, _), o in self.objects.items() if kd == kind and namespace in (None, ns)]
        return [
            copy.deepcopy(o)
            for o in sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        ]

    def edit(self, kind: str, name: str, namespace: str | None, mutate: Callable[[Obj], None]) -> Obj:
        """A user's edit (``kubectl edit``): ``mutate`` changes the object in place; status changes are ignored,
        ``generation`` moves when anything but metadata changed."""
        key = self._key(BY_NAME[kind], name, namespace)
        current = self.objects[key]
        new = copy.deepcopy(current)
        mutate(new)
        k = BY_NAME[kind]
        if k.status:
            new["status"] = copy.deepcopy(current.get("status"))
            if new["status"] is None:
                del new["status"]
        self._store_update(k, key, current, new, "test", "Update")
        return copy.deepcopy(self.objects[key])

    def set_status(self, kind: str, name: str, namespace: str | None, status: Obj) -> Obj:
        """A controller's status write (the Job controller, the Deployment controller, kubelet): replaces status."""
        k = BY_NAME[kind]
        key = self._key(k, name, namespace)
        current = self.objects[key]
        new = copy.deepcopy(current)
        new["status"] = copy.deepcopy(status)
        if new != current:
            self._bump(new)
        self.objects[key] = new
        return copy.deepcopy(new)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        key = self._key(BY_NAME[kind], name, namespace)
        del self.objects[key]
        self.applied_fields.pop(key, None)

    def set_log(self, namespace: str, pod: str, container: str, lines: list[str]) -> None:
        self.logs[(namespace, pod, container)] = list(lines)

    def set_metrics(self, namespace: str, pod: str, port: int, text: str | None) -> None:
        """What the pod answers on ``GET /metrics`` of ``port`` through the pod proxy; None: nothing listens."""
        if text is None:
            self.metrics.pop((namespace, pod, port), None)
        else:
            self.metrics[(namespace, pod, port)] = text

    def inject(
        self,
        verb: str,
        kind: str,
        *,
        code: int,
        reason: str,
        message: str,
        name: str | None = None,
        subresource: str | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` matching requests fail with this Status instead of being served."""
        self.injections.append(Injection(verb, kind, name, subresource, code, reason, message, times))

    def mark(self) -> int:
        return len(self.journal)

    def writes_since(self, mark: int) -> list[str]:
        return [str(w) for w in self.journal[mark:]]

    def reads_of(self, kind: str) -> list[tuple[str, str | None, str | None]]:
        """The get, list and log requests for ``kind``: (verb, namespace, name)."""
        return [(v, ns, n) for v, k, ns, n, _ in self.requests if k == kind and v in ("get", "list", "log")]

    # ------------------------------------------------------------------ storage

    def _key(self, k: Kind, name: str, namespace: str | None) -> tuple[str, str | None, str]:
        return (k.kind, (namespace or self.default_namespace) if k.namespaced else None, name)

    def _now(self) -> str:
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _bump(self, obj: Obj) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def _managed(self, obj: Obj, manager: str, operation: str, api_version: str) -> None:
        entries = [
            e
            for e in obj["metadata"].get("managedFields") or []
            if (e.get("manager"), e.get("operation")) != (manager, operation)
        ]
        entries.append(
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "time": self._now(),
                "fieldsType": "FieldsV1",
            }
        )
        obj["metadata"]["managedFields"] = entries

    def _admit_spec(self, k: Kind, obj: Obj, validate: bool) -> None:
        """CRD pruning, defaulting and validation of everything but metadata and status; built-in defaults."""
        if k.custom:
            schema = schemas()[k.kind]
            errors: list[str] = []
            for part in [p for p in list(obj) if p not in ("apiVersion", "kind", "metadata", "status")]:
                if part not in schema.root.get("properties", {}):
                    del obj[part]  # pruned
                    continue
                obj[part], errs = schema.admit(part, obj[part])
                errors += errs
            for r in schema.root.get("required") or []:
                if r not in obj:
                    errors.append(f"{r}: Required value")
            if errors and validate:
                raise invalid(k, obj["metadata"].get("name", ""), errors)
        else:
            builtin_defaults(k.kind, obj)

    def _admit_status(self, k: Kind, name: str, status: Any) -> Any:
        if not k.custom:
            return status
        value, errors = schemas()[k.kind].admit("status", status)
        if errors:
            raise invalid(k, name, errors)
        return value

    def _admit_new(self, k: Kind, obj: Obj, manager: str, operation: str, *, validate: bool = True) -> None:
        meta = obj["metadata"]
        if obj.get("apiVersion") != k.api_version or obj.get("kind") != k.kind:
            raise StatusError(
                400,
                "BadRequest",
                f"the object is a {obj.get('apiVersion')} {obj.get('kind')}, not a {k.api_version} {k.kind}",
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(k, "", ["metadata.name: Required value: name or generateName is required"])
            self._names += 1
            meta["name"] = f"{meta['generateName']}{self._names:05x}"
        self._admit_spec(k, obj, validate)
        self._uids += 1
        meta["uid"] = str(uuid.UUID(int=self._uids, version=4))
        meta["creationTimestamp"] = self._now()
        if k.generation:
            meta["generation"] = 1
        meta.pop("resourceVersion", None)
        self._managed(obj, manager, operation, k.api_version)
        self._bump(obj)

    def _store_update(
        self, k: Kind, key: tuple[str, str | None, str], current: Obj, new: Obj, manager: str, operation: str
    ) -> bool:
        """Store ``new`` in place of ``current`` (identity fields kept); -> whether anything changed."""
        meta = new["metadata"]
        for f in ("uid", "creationTimestamp", "generation", "resourceVersion", "managedFields"):
            if f in current["metadata"]:
                meta[f] = copy.deepcopy(current["metadata"][f])
        meta["name"], meta["namespace"] = current["metadata"]["name"], current["metadata"].get("namespace")
        if meta["namespace"] is None:
            del meta["namespace"]
        self._admit_spec(k, new, True)
        if new == current:
            return False
        if k.generation and {p: v for p, v in new.items() if p not in ("metadata", "status")} != {
            p: v for p, v in current.items() if p not in ("metadata", "status")
        }:
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        self._managed(new, manager, operation, k.api_version)
        self._bump(new)
        self.objects[key] = new
        return True

    # ------------------------------------------------------------------ HTTP

    def _route(self, request: httpx2.Request) -> tuple[Kind, str | None, str | None, str | None]:
        """-> (kind, namespace ('*' = all), name, subresource)"""
        parts = [unquote(p) for p in request.url.path.strip("/").split("/")]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = "*"
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, version, rest[0]) not in BY_PATH:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        k = BY_PATH[(group, version, rest[0])]
        if not k.namespaced:
            namespace = None
        elif namespace == "*" and len(rest) > 1:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (sub is not None and sub not in ("status", "log")) or len(rest) > 3:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if (sub == "status" and not k.status) or (sub == "log" and k.kind != "Pod"):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return k, namespace, name, sub

    def _injected(self, verb: str, k: Kind, name: str | None, sub: str | None) -> None:
        for inj in self.injections:
            if (
                inj.times > 0
                and (inj.verb, inj.kind, inj.subresource) == (verb, k.kind, sub)
                and inj.name in (None, name)
            ):
                inj.times -= 1
                raise StatusError(inj.code, inj.reason, inj.message, {"name": name or "", "kind": k.plural})

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        verb = "?"
        k: Kind | None = None
        name: str | None = None
        sub: str | None = None
        namespace: str | None = None
        try:
            if proxy := _POD_PROXY.fullmatch(request.url.path):
                verb = "proxy"
                return self._proxy(request.method, unquote(proxy["ns"]), unquote(proxy["id"]), proxy["path"] or "/")
            k, namespace, name, sub = self._route(request)
            method, params = request.method, request.url.params
            if params.get("dryRun"):
                raise StatusError(500, "InternalError", "memapi does not implement dryRun")
            if method == "GET":
                verb = "log" if sub == "log" else ("get" if name else "list")
            elif method == "POST" and name is None:
                verb = "create"
            elif method == "PUT" and name:
                verb = "update"
            elif method == "PATCH" and name:
                verb = "apply" if request.headers.get("content-type") == "application/apply-patch+yaml" else "patch"
            elif method == "DELETE" and name:
                verb = "delete"
            else:
                raise StatusError(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")
            self.requests.append((verb, k.kind, namespace, name, sub))
            self._injected(verb, k, name, sub)
            if verb == "list":
                return self._list(k, namespace, params.get("labelSelector"), params.get("fieldSelector"))
            if verb == "log":
                assert name is not None
                assert namespace is not None
                return self._log(namespace, name, params.get("container"))
            if namespace == "*":
                raise StatusError(404, "NotFound", "the server could not find the requested resource")
            if verb == "get":
                assert name is not None
                obj = self.objects.get(self._key(k, name, namespace))
                if obj is None:
                    raise not_found(k, name)
                return httpx2.Response(200, json=obj)
            body = _decode(request.content) if request.content else None
            content_type = request.headers.get("content-type", "")
            code, result = self._write(verb, k, namespace, name, sub, body, params, content_type)
        except StatusError as exc:
            if verb in ("create", "update", "apply", "patch", "delete") and k is not None:
                self.journal.append(Write(verb, k.kind, namespace, name or _body_name(request.content), sub, exc.code))
            return exc.response()
        assert k is not None
        self.journal.append(Write(verb, k.kind, namespace, result["metadata"]["name"], sub, code))
        return httpx2.Response(code, json=result)

    def _list(self, k: Kind, namespace: str | None, labels: str | None, fields: str | None) -> httpx2.Response:
        field_terms = _field_terms(k, fields) if fields else []
        items = []
        for (kind, ns, _), obj in sorted(self.objects.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            if kind != k.kind or (namespace not in ("*", None) and ns != namespace):
                continue
            if labels and not matches(labels, obj["metadata"].get("labels") or {}):
                continue
            if any(
                (str(v) if (v := _get_path(obj, path)) is not _MISSING else "") != value for path, value in field_terms
            ):
                continue
            item = copy.deepcopy(obj)
            if not k.custom:  # the apiserver omits them from the items of built-in lists
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
        body = {
            "apiVersion": k.api_version,
            "kind": f"{k.kind}List",
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }
        return httpx2.Response(200, json=body)

    def _log(self, namespace: str, pod_name: str, container: str | None) -> httpx2.Response:
        pod = self.objects.get(("Pod", namespace, pod_name))
        if pod is None:
            raise not_found(BY_NAME["Pod"], pod_name)
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if container is None:
            if len(names) != 1:
                raise StatusError(
                    400, "BadRequest", f"a container name must be specified for pod {pod_name}, choose one of: {names}"
                )
            container = names[0]
        if container not in names:
            raise StatusError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
        self.log_reads.append((namespace, pod_name, container))
        lines = self.logs.get((namespace, pod_name, container))
        if lines is None:
            raise StatusError(
                400, "BadRequest", f'container "{container}" in pod "{pod_name}" is waiting to start: ContainerCreating'
            )
        text = "".join(line + "\n" for line in lines)
        return httpx2.Response(200, text=text, headers={"Content-Type": "text/plain"})

    def _proxy(self, method: str, namespace: str, ident: str, path: str) -> httpx2.Response:
        """The pod proxy (``pods/proxy``): the apiserver dials the pod's IP and relays the answer."""
        # ident: "name", "name:port" or "scheme:name:port" (the apiserver's SplitSchemeNamePort)
        parts = ident.split(":")
        scheme = name = port = ""
        if len(parts) == 1:
            name = ident
        elif len(parts) == 2:
            name, port = parts
        elif len(parts) == 3:
            scheme, name, port = parts
        if not name or scheme not in ("", "http", "https"):
            raise StatusError(400, "BadRequest", f"invalid pod request {ident!r}")
        pod_kind = BY_NAME["Pod"]
        self.requests.append(("proxy", "Pod", namespace, name, "proxy"))
        self._injected("proxy", pod_kind, name, "proxy")
        if method != "GET":
            raise StatusError(500, "InternalError", f"memapi does not implement {method} through the pod proxy")
        pod = self.objects.get(("Pod", namespace, name))
        if pod is None:
            raise not_found(pod_kind, name)
        if not port:  # the first port a container declares
            declared = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            port = str(declared[0]["containerPort"]) if declared else ""
        status = pod.get("status") or {}
        ips = [str(p.get("ip") or "") for p in status.get("podIPs") or []] or [str(status.get("podIP") or "")]
        if not _global_unicast(ips[0]):
            raise StatusError(400, "BadRequest", "address not allowed")
        port = port or ("443" if scheme == "https" else "80")
        host = f"[{ips[0]}]:{port}" if ":" in ips[0] else f"{ips[0]}:{port}"
        text = self.metrics.get((namespace, name, int(port))) if port.isdigit() else None
        if text is None:
            raise StatusError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp {host}: connect: connection refused",
            )
        if path != "/metrics":  # what the runtime's web server answers for any other path
            return httpx2.Response(404, text="404: Not Found", headers={"Content-Type": "text/plain; charset=utf-8"})
        return httpx2.Response(200, content=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4"})

    def _write(
        self,
        verb: str,
        k: Kind,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        body: Any,
        params: Any,
        content_type: str,
    ) -> tuple[int, Obj]:
        manager = params.get("fieldManager") or "memapi-client"
        if verb == "delete":
            assert name is not None
            key = self._key(k, name, namespace)
            if key not in self.objects:
                raise not_found(k, name)
            gone = self.objects.pop(key)
            self.applied_fields.pop(key, None)
            return 200, gone
        if not isinstance(body, dict):
            raise StatusError(400, "BadRequest", "the body of the request was in an unknown format")
        meta: Obj = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
        if verb in ("create", "update", "apply"):
            if k.namespaced and meta.get("namespace") not in (None, namespace):
                raise StatusError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            if (name is not None and meta.get("name") not in (None, name)) or (
                verb in ("update", "apply") and not meta.get("name")
            ):
                raise StatusError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if verb == "create":
            if sub is not None:
                raise StatusError(405, "MethodNotAllowed", "create on a subresource")
            obj = copy.deepcopy(body)
            obj["metadata"] = dict(meta)
            if k.namespaced:
                obj["metadata"]["namespace"] = namespace
            self._admit_new(k, obj, manager, "Update")
            key = self._key(k, obj["metadata"]["name"], namespace)
            if key in self.objects:
                raise StatusError(
                    409,
                    "AlreadyExists",
                    f'{_resource_ref(k)} "{key[2]}" already exists',
                    {"name": key[2], "group": k.group, "kind": k.plural},
                )
            if k.status:
                obj.pop("status", None)
            self.objects[key] = obj
            return 201, obj
        assert name is not None
        key = self._key(k, name, namespace)
        current = self.objects.get(key)
        if verb == "apply":
            if body.get("apiVersion") != k.api_version or body.get("kind") != k.kind:
                raise StatusError(400, "BadRequest", f"apply: apiVersion/kind must be {k.api_version} {k.kind}")
            if sub is not None:
                raise StatusError(500, "InternalError", "memapi does not implement apply on a subresource")
            if current is None:
                obj = copy.deepcopy(body)
                obj["metadata"] = {**meta, "namespace": namespace} if k.namespaced else dict(meta)
                if k.status:
                    obj.pop("status", None)
                self._admit_new(k, obj, manager, "Apply")
                self.objects[key] = obj
                self.applied_fields[key] = {manager: leaf_paths(self._owned_part(body))}
                return 201, obj
            rv = meta.get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise StatusError(409, "Conflict", f'Operation cannot be fulfilled on {_resource_ref(k)} "{name}"')
            return 200, self._apply(k, key, current, body, manager, params.get("force") == "true")
        if current is None:
            raise not_found(k, name)
        if verb == "update":
            rv = meta.get("resourceVersion")
            if not rv:
                raise invalid(
                    k, name, ["metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"]
                )
            if rv != current["metadata"]["resourceVersion"]:
                raise StatusError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {_resource_ref(k)} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "group": k.group, "kind": k.plural},
                )
            if sub == "status":
                return 200, self._write_status(k, key, current, body.get("status"), manager)
            new = copy.deepcopy(body)
            if k.status:
                new["status"] = copy.deepcopy(current.get("status"))
                if new["status"] is None:
                    del new["status"]
            self._store_update(k, key, current, new, manager, "Update")
            return 200, self.objects[key]
        # patch
        if content_type == "application/strategic-merge-patch+json" and k.custom:
            raise StatusError(
                415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources"
            )
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise StatusError(500, "InternalError", f"memapi does not implement {content_type}")
        merged = merge_patch(current, body)  # (a strategic merge patch is treated as a merge patch)
        if sub == "status":
            return 200, self._write_status(k, key, current, merged.get("status"), manager)
        if k.status:
            merged["status"] = copy.deepcopy(current.get("status"))
            if merged["status"] is None:
                del merged["status"]
        self._store_update(k, key, current, merged, manager, "Update")
        return 200, self.objects[key]

    def _owned_part(self, body: Obj) -> Obj:
        """The fields of an applied configuration that its manager owns (identity fields excluded)."""
        out = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "status")}
        meta = {
            k: v for k, v in (body.get("metadata") or {}).items() if k in ("labels", "annotations", "ownerReferences")
        }
        if meta:
            out["metadata"] = meta
        else:
            out.pop("metadata", None)
        return out

    def _apply(
        self, k: Kind, key: tuple[str, str | None, str], current: Obj, body: Obj, manager: str, force: bool
    ) -> Obj:
        owned = self._owned_part(body)
        paths = leaf_paths(owned)
        managers = self.applied_fields.setdefault(key, {})
        if not force:
            conflicts = [
                f"{m}: .{'.'.join(p)}"
                for m, theirs in managers.items()
                if m != manager
                for p in paths & theirs
                if _get_path(current, p) != _get_path(owned, p)
            ]
            if conflicts:
                raise StatusError(
                    409, "Conflict", f"Apply failed with {len(conflicts)} conflicts: conflicts with {conflicts}"
                )
        new = _apply_merge(copy.deepcopy(current), owned)
        for gone in managers.get(manager, set()) - paths:
            if not any(gone == p[: len(gone)] for p in paths) and not any(
                gone in theirs for m, theirs in managers.items() if m != manager
            ):
                _remove_path(new, gone)
        for m in list(managers):
            if m != manager and force:
                managers[m] -= paths
        managers[manager] = paths
        if k.status:
            new["status"] = copy.deepcopy(current.get("status"))
            if new["status"] is None:
                del new["status"]
        self._store_update(k, key, current, new, manager, "Apply")
        return self.objects[key]

    def _write_status(self, k: Kind, key: tuple[str, str | None, str], current: Obj, status: Any, manager: str) -> Obj:
        new = copy.deepcopy(current)
        admitted = self._admit_status(k, key[2], status if status is not None else {})
        if admitted:
            new["status"] = admitted
        else:
            new.pop("status", None)
        if new != current:
            self._managed(new, manager, "Update", k.api_version)
            self._bump(new)
            self.objects[key] = new
        return self.objects[key]
