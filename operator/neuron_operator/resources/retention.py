"""The artifact garbage collector's decisions (pure): which storages are in use, which cache keys each must keep,
the GC Job of each, and the reading of a finished GC Job.

A storage location is where compile Jobs write artifacts: a claim and a directory in it (namespaced: a
PersistentVolumeClaim belongs to one namespace), or an S3 root at an endpoint (shared: identical models in
different namespaces share one artifact there). The locations in use are those of every NeuronModel (its spec's,
and the one its ``status.artifact`` names), and the operator's default claim in every namespace that has models.

What a location keeps is deliberately generous (an artifact kept too long costs storage; one deleted too early
costs a recompile and, for a serving pod starting meanwhile, an outage): a claim keeps every cache key referenced
in its namespace, an S3 root every cache key referenced anywhere. Referenced means the key of a NeuronModel's
spec (its compile may be running), its ``status.cacheKey`` and ``status.artifact`` (what it had), and the cache-key
annotation of the Deployments the operator owns (a Deployment still serving the previous artifact while its model
recompiles must keep it).

The GC Job runs ``neuron-runtime gc`` (``neuron_runtime.retention``) from the cpu runtime image, in the namespace
of the claim, or for S3 in the namespace of the first model (by namespace, then name) using that root, with that
model's S3 access. Its ServiceAccount is ``gc_service_account`` when set (deleting needs s3:DeleteObject, which
compile Jobs need not have), else the compile one (for S3: that model's). Its name hashes the location and the
interval slot, so an operator restart within a slot finds the slot's Job instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import ValidationError

from neuron_operator.api import NeuronModel
from neuron_operator.resources import names
from neuron_operator.resources.compile import S3Access, artifact_location, compile_request, s3_access
from neuron_operator.resources.podparts import runtime_task_pod
from neuron_operator.resources.podstate import clip, job_condition, terminated_state
from neuron_operator.settings import OperatorSettings
from neuron_runtime.contract import GC_KEEP_ENV, Failure, GcResult

COMPONENT: Final = "artifact-gc"
GC_CONTAINER: Final = "gc"
#: Set on a finished GC Job once its result was reported (Event, metrics): it is reported once.
ANNOTATION_REPORTED: Final = "neuron.dev/gc-reported"
ANNOTATION_LOCATION: Final = "neuron.dev/gc-location"
LABEL_STORAGE: Final = "neuron.dev/gc-storage"
LABEL_MODE: Final = "neuron.dev/gc-mode"
LABEL_SLOT: Final = "neuron.dev/gc-slot"
#: Cache keys per keep-list env var: one environment string may not exceed 128 KiB (Linux MAX_ARG_STRLEN); a key
#: takes 67 bytes in the JSON list.
KEYS_PER_ENV: Final = 1500
#: A GC run lists and deletes; it never needs this long unless the storage hangs.
MAX_RUN_SECONDS: Final = 3600
_CACHE_KEY = re.compile(r"^[0-9a-f]{64}$")

StorageKind = Literal["pvc", "s3"]


@dataclass(frozen=True)
class GcLocation:
    """One artifact storage in use and what it must keep."""

    storage: StorageKind
    namespace: str  # where its GC Job runs
    root: str  # --root: the claim's directory under the mount path, or the s3:// root
    claim: str | None = None
    subdir: str = ""
    endpoint: str | None = None  # S3 only
    access: S3Access | None = None  # S3 only: the owning model's
    service_account: str | None = None
    keep: frozenset[str] = field(default_factory=frozenset)

    @property
    def id(self) -> str:
        """Identity of the storage (what the Job name hashes)."""
        if self.storage == "s3":
            return f"s3:{self.root}@{self.endpoint or ''}"
        return f"pvc:{self.namespace}/{self.claim}/{self.subdir}"


@dataclass
class _S3Use:
    root: str
    endpoint: str | None
    #: (namespace, model name, access, service account) of the models whose spec stores here.
    owners: list[tuple[str, str, S3Access, str | None]] = field(default_factory=list)


def _status_location(status: dict[str, Any]) -> tuple[str, str, str | None, str] | None:
    """The location ``status.artifact.uri`` names: ("pvc", "<claim>/<subdir>", None, key) or ("s3", root, endpoint,
    key); None when there is none or it is not one the operator writes."""
    artifact = status.get("artifact") or {}
    uri = str(artifact.get("uri") or "")
    head, _, key = uri.rpartition("/")
    if not _CACHE_KEY.match(key):
        return None
    if uri.startswith("pvc://"):
        return "pvc", head.removeprefix("pvc://"), None, key
    if uri.startswith("s3://"):
        return "s3", head, artifact.get("endpoint") or None, key
    return None


def referenced_keys(model_body: dict[str, Any], settings: OperatorSettings) -> set[str]:
    """Every cache key a NeuronModel references: its spec's, ``status.cacheKey`` and ``status.artifact``'s."""
    keys: set[str] = set()
    status = model_body.get("status") or {}
    if _CACHE_KEY.match(str(status.get("cacheKey") or "")):
        keys.add(status["cacheKey"])
    if (found := _status_location(status)) is not None:
        keys.add(found[3])
    with contextlib.suppress(ValueError):  # an invalid spec (a pydantic ValidationError too) has no key of its own
        keys.add(compile_request(NeuronModel.model_validate(model_body), settings).cache_key())
    return keys


def gc_locations(
    models: list[dict[str, Any]], deployments: list[dict[str, Any]], settings: OperatorSettings
) -> list[GcLocation]:
    """The storage locations in use by ``models`` (every NeuronModel in scope) and what each keeps; ``deployments``
    are the Deployments the operator owns. Sorted by id."""
    by_namespace: dict[str, set[str]] = {}
    pvcs: dict[tuple[str, str, str], None] = {}  # (namespace, claim, subdir), ordered
    s3: dict[tuple[str, str | None], _S3Use] = {}
    for body in sorted(models, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"])):
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        by_namespace.setdefault(namespace, set()).update(referenced_keys(body, settings))
        if settings.artifact_uri is None:
            pvcs[(namespace, settings.artifact_pvc, "")] = None
        found = _status_location(body.get("status") or {})
        if found is not None and found[0] == "pvc":
            claim, _, subdir = found[1].partition("/")
            pvcs[(namespace, claim, subdir)] = None
        elif found is not None:
            s3.setdefault((found[1], found[2]), _S3Use(found[1], found[2]))
        try:
            model = NeuronModel.model_validate(body)
        except ValidationError:
            continue
        location = artifact_location(model, settings)
        if location.s3_root is None:
            assert location.claim is not None
            pvcs[(namespace, location.claim, location.subdir.strip("/"))] = None
            continue
        access = s3_access(model, settings)
        use = s3.setdefault((location.s3_root, access.connection.endpoint_url), _S3Use(location.s3_root, None))
        use.endpoint = access.connection.endpoint_url
        account = model.spec.compiler.service_account_name or settings.compile_service_account
        use.owners.append((namespace, name, access, account))
    for dep in deployments:
        key = str(((dep.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_CACHE_KEY) or "")
        if _CACHE_KEY.match(key):
            by_namespace.setdefault(dep["metadata"]["namespace"], set()).add(key)
    everywhere = frozenset().union(*by_namespace.values()) if by_namespace else frozenset()
    locations = [
        GcLocation(
            storage="pvc",
            namespace=namespace,
            root=posixpath.join(settings.artifact_mount_path, subdir) if subdir else settings.artifact_mount_path,
            claim=claim,
            subdir=subdir,
            service_account=settings.gc_service_account or settings.compile_service_account,
            keep=frozenset(by_namespace.get(namespace, set())),
        )
        for namespace, claim, subdir in pvcs
    ]
    for use in s3.values():
        if not use.owners:  # only a status names it: no model says how to reach it
            continue
        namespace, _name, access, account = use.owners[0]
        locations.append(
            GcLocation(
                storage="s3",
                namespace=namespace,
                root=use.root,
                endpoint=use.endpoint,
                access=access,
                service_account=settings.gc_service_account or account,
                keep=everywhere,
            )
        )
    return sorted(locations, key=lambda loc: loc.id)


def interval_slot(now: datetime, interval_seconds: int) -> int:
    """The number of the GC interval ``now`` falls in (slots start at the epoch)."""
    return int(now.timestamp()) // interval_seconds


def gc_job_name(location: GcLocation, slot: int) -> str:
    return f"artifact-gc-{hashlib.sha256(location.id.encode()).hexdigest()[:10]}-{slot}"


def gc_mode(settings: OperatorSettings) -> str:
    return "delete" if settings.gc_delete else "dry_run"


def keep_env(keep: frozenset[str]) -> list[dict[str, Any]]:
    """The keep list as env vars: NEURON_RUNTIME_GC_KEEP, then NEURON_RUNTIME_GC_KEEP_1, _2, ... when long."""
    keys = sorted(keep)
    chunks = [keys[i : i + KEYS_PER_ENV] for i in range(0, len(keys), KEYS_PER_ENV)] or [[]]
    return [
        {"name": GC_KEEP_ENV if i == 0 else f"{GC_KEEP_ENV}_{i}", "value": json.dumps(chunk, separators=(",", ":"))}
        for i, chunk in enumerate(chunks)
    ]


def build_gc_job(location: GcLocation, settings: OperatorSettings, slot: int) -> dict[str, Any]:
    """The GC Job of ``location`` for the interval ``slot``."""
    mode = gc_mode(settings)
    labels = {
        **names.common_labels(COMPONENT),
        LABEL_STORAGE: location.storage,
        LABEL_MODE: mode,
        LABEL_SLOT: str(slot),
    }
    args = ["--root", location.root, "--min-age-seconds", str(settings.gc_min_age_seconds)]
    if settings.gc_delete:
        args.append("--delete")
    container = {
        "name": GC_CONTAINER,
        "image": settings.runtime_image,
        "command": ["neuron-runtime", "gc"],
        "args": args,
        "env": [*keep_env(location.keep), *(location.access.env() if location.access is not None else [])],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    }
    pod_spec = runtime_task_pod(container, location.claim, settings)
    if settings.compile_node_selector:
        pod_spec["nodeSelector"] = dict(settings.compile_node_selector)
    if settings.compile_tolerations:
        pod_spec["tolerations"] = list(settings.compile_tolerations)
    if location.service_account:
        pod_spec["serviceAccountName"] = location.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": gc_job_name(location, slot),
            "namespace": location.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_LOCATION: location.id},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": min(MAX_RUN_SECONDS, settings.gc_interval_seconds),
            # Kept over the next run, so a result is read even across an operator restart.
            "ttlSecondsAfterFinished": 2 * settings.gc_interval_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class GcOutcome:
    """What a finished GC Job says: its result (the runtime's termination message) or why it failed."""

    succeeded: bool
    storage: str
    mode: str
    result: GcResult | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def expired(self) -> int:
        return self.result.expired_count if self.result is not None else 0

    @property
    def deleted_bytes(self) -> int:
        return self.result.deleted_bytes if self.result is not None else 0


def _failure(failed: dict[str, Any], last: dict[str, Any] | None) -> tuple[str, str]:
    """Why a failed GC Job failed: its deadline, the runtime's reason, the kernel's OOM kill, or its message."""
    if failed.get("reason") == "DeadlineExceeded":
        return "DeadlineExceeded", str(failed.get("message") or "the GC Job exceeded its deadline")
    told = Failure.parse(last.get("message")) if last else None
    if told is not None:
        return told.reason, told.message
    if last is not None and last.get("reason") == "OOMKilled":
        return "OOMKilled", "the GC container was killed for exceeding its memory limit"
    reason = str(failed.get("reason") or "Failed")
    return reason, str((last or {}).get("message") or failed.get("message") or reason)


def gc_outcome(job: dict[str, Any], pods: list[dict[str, Any]]) -> GcOutcome | None:
    """Read a GC Job and its pods; None while it has not finished."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    storage, mode = str(labels.get(LABEL_STORAGE, "")), str(labels.get(LABEL_MODE, ""))
    complete, failed = job_condition(job, "Complete"), job_condition(job, "Failed")
    if complete is None and failed is None:
        return None
    terms = sorted(
        (t for t in (terminated_state(p, GC_CONTAINER) for p in pods) if t is not None),
        key=lambda t: t.get("finishedAt") or "",
    )
    last = terms[-1] if terms else None
    if complete is not None:
        result = GcResult.parse(last.get("message")) if last else None
        if result is not None:
            return GcOutcome(True, storage, mode, result=result)
        return GcOutcome(False, storage, mode, reason="NoResult", message="the GC Job left no result")
    assert failed is not None
    reason, message = _failure(failed, last)
    return GcOutcome(False, storage, mode, reason=reason, message=clip(message))


def outcome_message(job: dict[str, Any], outcome: GcOutcome, keys_listed: int = 5) -> str:
    """The Event message: counts, bytes, the first keys (oldest first)."""
    where = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_LOCATION, "")
    if not outcome.succeeded:
        return f"artifact GC of {where} failed ({outcome.reason}): {outcome.message}"
    result = outcome.result
    assert result is not None  # a succeeded outcome always has its result
    keys = [str(e.get("cacheKey", ""))[:16] for e in result.expired[:keys_listed]]
    more = outcome.expired - len(keys)
    listed = (": " + ", ".join(keys) + (f" and {more} more" if more > 0 else "")) if keys else ""
    size = result.freed_or_reclaimable_bytes
    kept = f"{result.kept} referenced, {result.retained} unreferenced within the minimum age"
    if result.dry_run:
        return (
            f"dry run over {where}: {outcome.expired} artifacts expired ({_mb(size)} reclaimable), {kept}; "
            f"set artifacts.gc.delete to delete them{listed}"
        )
    return f"deleted {outcome.expired} expired artifacts from {where} ({_mb(size)} freed), {kept}{listed}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
