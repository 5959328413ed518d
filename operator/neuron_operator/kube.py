"""The one module that talks to the Kubernetes API.

Everything is plain dicts (lightkube generic resources), so builders' output goes in unchanged.
``apply`` is server-side apply under one field manager, preceded by a comparison with the observed
object: when every field we manage already has the value we want, nothing is sent. Every write is
counted per verb and kind (``writes``), which tests use to prove that a no-op reconcile writes nothing
and the metrics endpoint exports.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, cast

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType

from neuron_operator.subset import first_difference, is_subset
from neuron_runtime.contract import METRICS_PATH

FIELD_MANAGER: Final = "neuron-operator"
#: Pod-proxy reads (serving pods' /metrics) in flight at once, over every NeuronDeployment.
PROXY_READS: Final = 32
log = logging.getLogger(__name__)

# Every kind the operator reads or writes, as dict-based generic resources.
_KINDS: Final[dict[str, Any]] = {
    "NeuronModel": create_namespaced_resource("neuron.dev", "v1alpha1", "NeuronModel", "neuronmodels"),
    "NeuronDeployment": create_namespaced_resource("neuron.dev", "v1alpha1", "NeuronDeployment", "neurondeployments"),
    "Job": create_namespaced_resource("batch", "v1", "Job", "jobs"),
    "Deployment": create_namespaced_resource("apps", "v1", "Deployment", "deployments"),
    "Service": create_namespaced_resource("", "v1", "Service", "services"),
    "Pod": create_namespaced_resource("", "v1", "Pod", "pods"),
    "Event": create_namespaced_resource("", "v1", "Event", "events"),
    "PodDisruptionBudget": create_namespaced_resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    "Lease": create_namespaced_resource("coordination.k8s.io", "v1", "Lease", "leases"),
    "PersistentVolumeClaim": create_namespaced_resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    "Node": create_global_resource("", "v1", "Node", "nodes"),
}


_GLOBAL: Final = frozenset({"Node"})


def resource(kind: str) -> Any:
    return _KINDS[kind]


class Rejected(Exception):
    """The apiserver refused an object as invalid (400 BadRequest, 422 Invalid): retrying cannot help."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(f"{kind} {name} rejected by the apiserver: {message}")
        self.kind, self.name, self.message = kind, name, message


class Forbidden(Exception):
    """RBAC does not allow the request (403)."""


class MetricsUnavailable(Exception):
    """A pod's /metrics could not be read (not listening yet, gone, too large, timed out)."""


#: Bytes of a failed pod-proxy answer read to tell an RBAC refusal from the pod's (or the proxy's) own answer.
_ERROR_BODY_BYTES: Final = 4096


def _is_status(body: str) -> bool:
    """Whether ``body`` is a Kubernetes ``Status`` object (what the apiserver itself answers with)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("kind") == "Status"


class Kube:
    """Async Kubernetes access for the operator; counts writes."""

    def __init__(self, client: AsyncClient, field_manager: str = FIELD_MANAGER) -> None:
        self.client = client
        self.field_manager = field_manager
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Pod-proxy reads at once, process-wide: they share lightkube's connection pool with every API call.
        self._proxy_slots = asyncio.Semaphore(PROXY_READS)

    def _count(self, verb: str, kind: str) -> None:
        self.writes[(verb, kind)] += 1

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            obj = await self.client.get(resource(kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return dict(obj)

    async def log_line(self, pod: str, namespace: str, container: str, prefix: str) -> str | None:
        """The first line of a container's log that starts with ``prefix`` (None: not there, or no log yet)."""
        try:
            async for line in self.client.log(pod, namespace=namespace, container=container, newlines=False):
                if line.startswith(prefix):
                    return line
        except ApiError as exc:
            if exc.status.code in (400, 404):  # the container has not started, or the pod is gone
                return None
            raise
        return None

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` (``namespace`` None: every namespace), filtered by labels and field selectors."""
        res = resource(kind)
        selectors: dict[str, Any] = {"labels": dict(labels or {}), "fields": dict(fields or {})}
        if kind in _GLOBAL:
            items = self.client.list(res, **selectors)
        else:
            items = self.client.list(res, namespace=namespace or "*", **selectors)
        try:
            return [dict(o) async for o in items]
        except ApiError as exc:
            if exc.status.code == 403:
                raise Forbidden(str(exc.status.message)) from exc
            raise

    async def apply(self, manifest: dict[str, Any], observed: dict[str, Any] | None = None) -> dict[str, Any]:
        """Server-side apply ``manifest`` unless ``observed`` already matches it (then no request)."""
        if observed is not None and is_subset(manifest, observed):
            return observed
        meta = manifest["metadata"]
        if observed is not None:
            log.info(
                "drift in %s %s/%s at %s: applying",
                manifest["kind"],
                meta.get("namespace"),
                meta["name"],
                first_difference(manifest, observed),
            )
        self._count("apply", manifest["kind"])
        try:
            result = await self.client.apply(
                resource(manifest["kind"])(manifest),
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=self.field_manager,
                force=True,  # we are the only rightful owner of these fields
            )
        except ApiError as exc:
            if exc.status.code in (400, 422):
                raise Rejected(manifest["kind"], meta["name"], str(exc.status.message or "")) from exc
            raise
        return dict(result)

    async def create(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; if it already exists return the existing object. -> (object, created)"""
        meta = manifest["metadata"]
        self._count("create", manifest["kind"])
        try:
            obj = await cast(Any, self.client).create(
                resource(manifest["kind"])(manifest), namespace=meta.get("namespace")
            )
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            existing = await self.get(manifest["kind"], meta["name"], meta.get("namespace"))
            if existing is None:  # deleted in between: let the caller retry
                raise
            return existing, False
        return dict(obj), True

    async def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON-merge-patch ``status`` (keys set to None are removed) on the status subresource."""
        self._count("patch-status", kind)
        result = await self.client.patch(
            resource(kind).Status,
            name,
            {"status": status},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=self.field_manager,
        )
        return dict(result)

    async def patch(self, kind: str, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON-merge-patch the main resource (the autoscaler's ``spec.replicas``, as an HPA writes the scale)."""
        self._count("patch", kind)
        try:
            result = await self.client.patch(
                resource(kind),
                name,
                body,
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=self.field_manager,
            )
        except ApiError as exc:
            if exc.status.code == 403:
                raise Forbidden(str(exc.status.message)) from exc
            if exc.status.code in (400, 422):
                raise Rejected(kind, name, str(exc.status.message or "")) from exc
            raise
        return dict(result)

    async def delete(self, kind: str, name: str, namespace: str) -> bool:
        """Delete (background propagation: a Deployment's pods go with it); False when it was already gone."""
        self._count("delete", kind)
        try:
            await self.client.delete(resource(kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            if exc.status.code == 403:
                raise Forbidden(str(exc.status.message)) from exc
            raise
        return True

    async def pod_metrics(self, pod: str, namespace: str, port: int, limit: int, deadline: float) -> str:
        """A pod's Prometheus text through the apiserver's pod proxy (``pods/proxy`` get), at most ``limit`` bytes.

        Through the apiserver so the same code works in the cluster and from outside it (no route to pod IPs
        needed). Raises ``MetricsUnavailable`` naming the pod when it does not answer.
        """
        # lightkube has no pods/proxy call: its own authenticated httpx client (base URL = the apiserver) sends it
        # (lightkube 1.x keeps it there; pyproject pins <2).
        try:
            http: httpx2.AsyncClient = self.client._client._client
        except AttributeError as exc:
            raise MetricsUnavailable(f"this lightkube keeps no HTTP client at _client._client: {exc}") from exc
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{METRICS_PATH}"
        where = f"{namespace}/{pod}:{port}{METRICS_PATH}"
        try:
            async with self._proxy_slots, http.stream("GET", path, timeout=deadline) as response:
                if response.status_code != 200:
                    head = b""
                    async for chunk in response.aiter_bytes():  # bounded: the body may come from the pod
                        head += chunk
                        if len(head) >= _ERROR_BODY_BYTES:
                            break
                    body = head[:_ERROR_BODY_BYTES].decode("utf-8", "replace")
                    # RBAC's refusal is the apiserver's own Status object; any other 403 comes from the proxy's
                    # destination check (e.g. "resolve_deny: denied destination" for a simulated pod's IP) or from
                    # the pod itself: the metrics are unavailable, the operator is not forbidden.
                    if response.status_code == 403 and _is_status(body):
                        raise Forbidden(f"pods/proxy of {namespace}/{pod}: {body[:300]}")
                    raise MetricsUnavailable(f"pod {where} answered {response.status_code}: {body[:200]}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise MetricsUnavailable(
                            f"pod {namespace}/{pod}:{port}{METRICS_PATH} is larger than {limit} bytes"
                        )
                    chunks.append(chunk)
        except httpx2.HTTPError as exc:
            raise MetricsUnavailable(
                f"pod {namespace}/{pod}:{port}{METRICS_PATH}: {type(exc).__name__}: {exc}"
            ) from exc
        return b"".join(chunks).decode("utf-8", "replace")

    async def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Update with optimistic locking (``metadata.resourceVersion`` must be set); 409 on conflict."""
        meta = manifest["metadata"]
        self._count("update", manifest["kind"])
        result = await self.client.replace(
            resource(manifest["kind"])(manifest),
            meta["name"],
            namespace=meta.get("namespace"),
            field_manager=self.field_manager,
        )
        return dict(result)

    async def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime) -> None:
        """Record a core/v1 Event about ``involved`` (shown by ``kubectl describe`` and ``get events``)."""
        meta = involved["metadata"]
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
        }
        self._count("create", "Event")
        await cast(Any, self.client).create(resource("Event")(manifest), namespace=meta["namespace"])
