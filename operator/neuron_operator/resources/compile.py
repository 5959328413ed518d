"""The compile side of a NeuronModel: the runtime's compile request, its cache key, the compile Job, and
the reading of a finished Job back into an artifact or a failure.

The cache key is ``neuron_runtime.config.CompileRequest.cache_key()`` of exactly the request the Job
receives, so the operator and ``neuron-runtime compile`` always agree on where the artifact lives.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from neuron_operator.api import NeuronModel, Reason
from neuron_operator.api.reasons import COMPILE_FAILURES
from neuron_operator.resources import names, runtime_settings
from neuron_operator.resources.podparts import runtime_task_pod, tolerations
from neuron_operator.resources.podstate import (
    PodProblem,
    clip,
    job_condition,
    pod_problem,
    terminated_state,
    waits_for_mount,
)
from neuron_operator.settings import OperatorSettings
from neuron_runtime.config import CompileRequest, S3Connection
from neuron_runtime.contract import COMPILE_REQUEST_ENV, CompileResult, Failure, permanent_compile_exit_codes

COMPILE_CONTAINER: Final = "compile"
SOURCES_MOUNT: Final = "/var/lib/neuron/sources"


@dataclass(frozen=True)
class ArtifactLocation:
    """Where a model's artifacts live: a PVC and a directory inside it, or an S3 prefix (``s3_root``)."""

    claim: str | None
    subdir: str  # relative, "" = the volume root
    s3_root: str | None = None  # s3://bucket[/prefix], no trailing slash

    @property
    def is_s3(self) -> bool:
        return self.s3_root is not None

    def root(self, mount_path: str) -> str:
        """What the compile Job gets as --output-root."""
        if self.s3_root is not None:
            return self.s3_root
        return posixpath.join(mount_path, self.subdir) if self.subdir else mount_path

    def artifact_dir(self, mount_path: str, cache_key: str) -> str:
        return posixpath.join(self.root(mount_path), cache_key)

    def uri(self, cache_key: str) -> str:
        """``status.artifact.uri``: pvc://<claim>/<path>/<key> or s3://<bucket>/<prefix>/<key>."""
        if self.s3_root is not None:
            return f"{self.s3_root}/{cache_key}"
        return f"pvc://{self.claim}/{self.subdir + '/' if self.subdir else ''}{cache_key}"


def artifact_location(model: NeuronModel, settings: OperatorSettings) -> ArtifactLocation:
    storage = model.spec.storage
    if storage is None:
        if settings.artifact_uri:
            return ArtifactLocation(None, "", settings.artifact_uri.rstrip("/"))
        return ArtifactLocation(settings.artifact_pvc, "")
    if storage.pvc is None:
        assert storage.uri is not None  # the API guarantees exactly one
        return ArtifactLocation(None, "", storage.uri.rstrip("/"))
    return ArtifactLocation(storage.pvc.claim_name, storage.pvc.path or "")


@dataclass(frozen=True)
class S3Access:
    """How a model's pods reach S3: the runtime's connection settings and the credentials Secret, if any."""

    connection: S3Connection
    secret: str | None

    def env(self) -> list[dict[str, Any]]:
        """Container env: ``NEURON_RUNTIME_S3__*`` and, with a Secret, the AWS key variables from it (never the
        values: the kubelet resolves them)."""
        env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(self.connection.to_env().items())]
        if self.secret is not None:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": self.secret, "key": key}}})
            token: dict[str, Any] = {"name": self.secret, "key": "AWS_SESSION_TOKEN", "optional": True}
            env.append({"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": token}})
        return env


def s3_access(model: NeuronModel, settings: OperatorSettings) -> S3Access:
    """spec.s3 as a whole when set, else the operator's S3 settings."""
    spec = model.spec.s3
    if spec is not None:
        return S3Access(
            S3Connection(endpoint_url=spec.endpoint, region=spec.region, force_path_style=spec.force_path_style),
            spec.credentials_secret_ref.name if spec.credentials_secret_ref else None,
        )
    return S3Access(
        S3Connection(
            endpoint_url=settings.s3_endpoint, region=settings.s3_region, force_path_style=settings.s3_force_path_style
        ),
        settings.s3_credentials_secret,
    )


def uses_s3(model: NeuronModel, settings: OperatorSettings) -> bool:
    """Whether the compile Job touches S3 (storage or a source)."""
    return artifact_location(model, settings).is_s3 or any(u.startswith("s3://") for u in _source_uris(model))


def storage_id(model: NeuronModel, settings: OperatorSettings) -> str:
    """Part of the compile Job name: "" for the operator's default claim, else "<claim>/<path>" of spec.storage.pvc,
    or "<s3 root>@<endpoint>" for S3 (a model with other storage must not read another storage's Job as its own)."""
    location = artifact_location(model, settings)
    if location.s3_root is not None:
        return f"{location.s3_root}@{s3_access(model, settings).connection.endpoint_url or ''}"
    pvc = model.spec.storage.pvc if model.spec.storage else None
    return f"{pvc.claim_name}/{pvc.path or ''}" if pvc is not None else ""


def compile_image(model: NeuronModel, settings: OperatorSettings) -> str:
    return model.spec.compiler.image or settings.image_for_target(model.spec.target.value)


def _source_claims(uri: str) -> tuple[str | None, str]:
    """``pvc://claim/path`` → (claim, file URI inside the compile pod); other URIs pass through."""
    if not uri.startswith("pvc://"):
        return None, uri
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, f"file://{posixpath.join(SOURCES_MOUNT, claim, path)}"


def compile_request(model: NeuronModel, settings: OperatorSettings) -> CompileRequest:
    """The runtime's compile request for ``model`` (``runtime_settings.compile_request``: every spec field is mapped
    or excluded with a reason, and a test holds the two types to that)."""
    uris = {uri: _source_claims(uri)[1] for uri in _source_uris(model)}
    return runtime_settings.compile_request(model.spec, uris, compile_image(model, settings))


def _source_uris(model: NeuronModel) -> list[str]:
    if model.spec.source.torchscript is not None:
        return [model.spec.source.torchscript.uri]
    if model.spec.source.python is not None and model.spec.source.python.weights_uri:
        return [model.spec.source.python.weights_uri]
    return []


def source_claim_names(model: NeuronModel) -> list[str]:
    return sorted({c for c in (_source_claims(u)[0] for u in _source_uris(model)) if c})


def _compile_resources(model: NeuronModel, settings: OperatorSettings) -> dict[str, Any]:
    """spec.compiler.resources, else the operator's compile defaults (memory limit = request)."""
    compiler = model.spec.compiler
    if compiler.resources:
        return compiler.resources.model_dump(by_alias=True, exclude_none=True)
    return {
        "requests": {"cpu": settings.compile_cpu, "memory": settings.compile_memory},
        "limits": {"memory": settings.compile_memory},
    }


def _source_volumes(model: NeuronModel) -> tuple[tuple[dict[str, Any], dict[str, Any]], ...]:
    """(volume, mount) of each claim a pvc:// source names, read-only under ``SOURCES_MOUNT/<claim>``."""
    return tuple(
        (
            {"name": f"source-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": f"source-{i}", "mountPath": posixpath.join(SOURCES_MOUNT, claim), "readOnly": True},
        )
        for i, claim in enumerate(source_claim_names(model))
    )


def _compile_pod(model: NeuronModel, request: CompileRequest, settings: OperatorSettings) -> dict[str, Any]:
    """The compile pod: ``neuron-runtime compile`` with the request in its env, on the compile nodes."""
    compiler = model.spec.compiler
    location = artifact_location(model, settings)
    s3_env = s3_access(model, settings).env() if uses_s3(model, settings) else []
    container = {
        "name": COMPILE_CONTAINER,
        "image": request.runtime_image,
        "command": ["neuron-runtime", "compile"],
        "args": ["--output-root", location.root(settings.artifact_mount_path)],
        "env": [{"name": COMPILE_REQUEST_ENV, "value": request.model_dump_json(exclude_none=True)}, *s3_env],
        "resources": _compile_resources(model, settings),
    }
    pod_spec = runtime_task_pod(container, location.claim, settings, extra_volumes=_source_volumes(model))
    if node_selector := dict(compiler.node_selector or settings.compile_node_selector):
        pod_spec["nodeSelector"] = node_selector
    if toleration_list := tolerations(compiler.tolerations) or list(settings.compile_tolerations):
        pod_spec["tolerations"] = toleration_list
    if service_account := compiler.service_account_name or settings.compile_service_account:
        pod_spec["serviceAccountName"] = service_account
    return pod_spec


def _pod_failure_policy() -> dict[str, Any]:
    """Fail the Job at once on an exit code retrying cannot fix (``contract.CompileFailure.permanent``: bad request,
    unreadable or mismatching source, Neuron SDK missing, an architecture the target cannot take, S3 access denied or
    bucket missing) instead of burning its backoff; an unreachable S3 endpoint or a trace failure is retried."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": COMPILE_CONTAINER,
                    "operator": "In",
                    "values": list(permanent_compile_exit_codes()),
                },
            },
            # Evictions and node loss are not the compiler's fault: retry without counting.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def build_compile_job(model: NeuronModel, settings: OperatorSettings) -> dict[str, Any]:
    """The compile Job for ``model`` (its name depends only on the cache key and the storage)."""
    request = compile_request(model, settings)
    key = request.cache_key()
    compiler = model.spec.compiler
    labels = {
        **names.common_labels("compile"),
        names.LABEL_CACHE_KEY: names.cache_key_label(key),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.compile_job_name(key, storage_id(model, settings)),
            "namespace": model.metadata.namespace,
            "labels": labels,
            "annotations": {
                names.ANNOTATION_CACHE_KEY: key,
                names.ANNOTATION_MODEL: model.metadata.name or "",
            },
            # Not a controller reference: models with identical inputs share this Job.
            "ownerReferences": [names.owner_reference(model, controller=False)],
        },
        "spec": {
            "backoffLimit": settings.compile_backoff_limit,
            "activeDeadlineSeconds": compiler.timeout_seconds or settings.compile_timeout_seconds,
            "ttlSecondsAfterFinished": settings.compile_job_ttl_seconds,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": {"labels": labels}, "spec": _compile_pod(model, request, settings)},
        },
    }


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class CompileOutcome:
    """What a compile Job says about itself: still running, succeeded with a result, or failed."""

    state: str  # "Running" | "Succeeded" | "Failed"
    result: CompileResult | None = None  # the runtime's termination message
    reason: Reason | None = None
    message: str | None = None
    exit_code: int | None = None
    finished_at: datetime | None = None


def runtime_reason(value: object) -> Reason:
    """The runtime's termination-message reason as a vocabulary member (an unknown one reads CompileFailed)."""
    try:
        reason = Reason(str(value))
    except ValueError:
        return Reason.COMPILE_FAILED
    return reason if reason in COMPILE_FAILURES else Reason.COMPILE_FAILED


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    return terminated_state(pod, COMPILE_CONTAINER)


def _failure(failed: dict[str, Any], last: dict[str, Any] | None) -> tuple[Reason, str]:
    """Why a failed compile Job failed: its deadline, the runtime's reason, the kernel's OOM kill, or its message."""
    job_reason = failed.get("reason") or "Failed"
    if job_reason == "DeadlineExceeded":
        return Reason.COMPILE_TIMEOUT, failed.get("message") or "compile exceeded its timeout"
    told = Failure.parse(last.get("message")) if last else None
    if told is not None:
        reason = runtime_reason(told.reason)
        if reason is Reason.COMPILE_FAILED and told.reason != Reason.COMPILE_FAILED.value:
            return reason, f"{told.reason}: {told.message}"
        return reason, told.message
    if last is not None and last.get("reason") == "OOMKilled":
        return (
            Reason.OOM_KILLED,
            "the compile container was killed for exceeding its memory limit (OOMKilled): raise the compile memory",
        )
    return Reason.COMPILE_FAILED, (last.get("message") if last else None) or failed.get("message") or job_reason


def job_outcome(job: dict[str, Any], pods: list[dict[str, Any]]) -> CompileOutcome:
    """Read a compile Job and its pods (newest last wins) into an outcome."""
    finished = sorted(
        (p for p in pods if _terminated(p) is not None),
        key=lambda p: (_terminated(p) or {}).get("finishedAt") or "",
    )
    last = _terminated(finished[-1]) if finished else None
    exit_code = last.get("exitCode") if last else None
    complete = job_condition(job, "Complete")
    if complete is not None:
        result = CompileResult.parse(last.get("message")) if last else None
        if result is None:
            return CompileOutcome(
                "Failed",
                reason=Reason.NO_RESULT,
                message="the compile Job succeeded but left no result in its termination message",
                exit_code=exit_code,
                finished_at=_time(complete.get("lastTransitionTime")),
            )
        return CompileOutcome("Succeeded", result=result, finished_at=_time(complete.get("lastTransitionTime")))
    failed = job_condition(job, "Failed")
    if failed is not None:
        reason, message = _failure(failed, last)
        return CompileOutcome(
            "Failed",
            reason=reason,
            message=clip(message),
            exit_code=exit_code,
            finished_at=_time(failed.get("lastTransitionTime")),
        )
    return CompileOutcome("Running")


def running_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The compile Job's newest pod that has not finished (by creation time, then name)."""
    live = [p for p in pods if _terminated(p) is None and not p.get("metadata", {}).get("deletionTimestamp")]
    if not live:
        return None
    return max(live, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))


def needs_events(pod: dict[str, Any]) -> bool:
    return waits_for_mount(pod, COMPILE_CONTAINER)


def compile_pod_problem(
    pod: dict[str, Any], events: list[dict[str, Any]] | None = None, now: datetime | None = None
) -> PodProblem | None:
    """Why the running compile pod cannot start (unschedulable past a grace, image, config, mount), or None."""
    return pod_problem(pod, COMPILE_CONTAINER, events, now)
