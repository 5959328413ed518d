"""The compile side of a NeuronModel: the runtime's compile request, its cache key, the compile Job, and
the reading of a finished Job back into an artifact or a failure.

The cache key is ``neuron_runtime.config.CompileRequest.cache_key()`` of exactly the request the Job
receives, so the operator and ``neuron-runtime compile`` always agree on where the artifact lives.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from neuron_operator.api import NeuronModel, Reason
from neuron_operator.api.reasons import COMPILE_FAILURES
from neuron_operator.resources import names
from neuron_operator.resources.podstate import PodProblem, clip, pod_problem, waits_for_mount
from neuron_operator.settings import OperatorSettings
from neuron_runtime.config import (
    Buckets as RuntimeBuckets,
)
from neuron_runtime.config import (
    CompileRequest,
    CompilerOptions,
    PythonSource,
    S3Connection,
    TorchScriptSource,
)
from neuron_runtime.config import (
    TensorSpec as RuntimeTensor,
)

COMPILE_REQUEST_ENV: Final = "NEURON_RUNTIME_COMPILE_REQUEST"
COMPILE_CONTAINER: Final = "compile"
SOURCES_MOUNT: Final = "/var/lib/neuron/sources"
#: Writable scratch (an emptyDir; the root filesystem is read-only), handed to Python through TMPDIR.
SCRATCH_MOUNT: Final = "/scratch"
#: `neuron-runtime compile` exit codes that retrying cannot fix (bad request, unreadable or mismatching
#: source, Neuron SDK missing from the image, S3 access denied or bucket missing): the Job fails at once instead
#: of burning its backoff. (10, an unreachable S3 endpoint, is retried.)
PERMANENT_EXIT_CODES: Final = (2, 3, 5, 9)


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
    """The runtime's compile request for ``model`` (1:1 field mapping, documented in ``api.model``)."""
    spec = model.spec
    source: TorchScriptSource | PythonSource
    if spec.source.torchscript is not None:
        ts = spec.source.torchscript
        source = TorchScriptSource(uri=_source_claims(ts.uri)[1], sha256=ts.sha256)
    else:
        py = spec.source.python
        assert py is not None  # the API guarantees exactly one source
        source = PythonSource(
            factory=py.factory,
            args=dict(py.args or {}),
            weights_uri=_source_claims(py.weights_uri)[1] if py.weights_uri else None,
            weights_sha256=py.weights_sha256,
        )
    return CompileRequest(
        source=source,
        inputs=[RuntimeTensor(name=t.name, shape=list(t.shape), dtype=t.dtype.value) for t in spec.inputs],
        batch_size=spec.batch_size,
        batch_sizes=list(spec.batch_sizes or []),
        buckets=(
            RuntimeBuckets(input=spec.buckets.input, axis=spec.buckets.axis, sizes=list(spec.buckets.sizes))
            if spec.buckets
            else None
        ),
        target=spec.target.value,
        dynamic_batch=spec.dynamic_batch,
        compiler=CompilerOptions(
            args=list(spec.compiler.args),
            auto_cast=spec.compiler.auto_cast.value,
            auto_cast_type=spec.compiler.auto_cast_type.value,
            opt_level=spec.compiler.opt_level,
        ),
        runtime_image=compile_image(model, settings),
    )


def _source_uris(model: NeuronModel) -> list[str]:
    if model.spec.source.torchscript is not None:
        return [model.spec.source.torchscript.uri]
    if model.spec.source.python is not None and model.spec.source.python.weights_uri:
        return [model.spec.source.python.weights_uri]
    return []


def source_claim_names(model: NeuronModel) -> list[str]:
    return sorted({c for c in (_source_claims(u)[0] for u in _source_uris(model)) if c})


def runtime_task_pod(
    container: dict[str, Any],
    claim: str | None,
    settings: OperatorSettings,
    *,
    extra_volumes: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = (),
) -> dict[str, Any]:
    """The pod spec of a one-shot runtime task (the compile Job, the artifact GC Job): ``container`` (name, image,
    command, args, env, resources) run as uid 65532 on a read-only root with no capability, a scratch emptyDir as
    HOME and TMPDIR, and the artifact claim (when not None) at ``settings.artifact_mount_path``; ``extra_volumes``
    are (volume, mount) pairs."""
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_MOUNT}]
    if claim is not None:
        volumes.insert(0, {"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}})
        mounts.insert(0, {"name": "artifacts", "mountPath": settings.artifact_mount_path})
    for volume, mount in extra_volumes:
        volumes.append(volume)
        mounts.append(mount)
    scratch_env = [{"name": "HOME", "value": SCRATCH_MOUNT}, {"name": "TMPDIR", "value": SCRATCH_MOUNT}]
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                **container,
                "imagePullPolicy": settings.image_pull_policy,
                "env": [*scratch_env, *(container.get("env") or [])],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": volumes,
    }


def build_compile_job(body: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """The compile Job for the NeuronModel ``body`` (its name depends only on the cache key)."""
    model = NeuronModel.model_validate(body)
    request = compile_request(model, settings)
    key = request.cache_key()
    location = artifact_location(model, settings)
    compiler = model.spec.compiler
    labels = {
        **names.common_labels("compile"),
        names.LABEL_CACHE_KEY: names.cache_key_label(key),
    }
    resources = (
        compiler.resources.model_dump(by_alias=True, exclude_none=True)
        if compiler.resources
        else {
            "requests": {"cpu": settings.compile_cpu, "memory": settings.compile_memory},
            "limits": {"memory": settings.compile_memory},
        }
    )
    s3_env = s3_access(model, settings).env() if uses_s3(model, settings) else []
    sources = tuple(
        (
            {"name": f"source-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": f"source-{i}", "mountPath": posixpath.join(SOURCES_MOUNT, claim), "readOnly": True},
        )
        for i, claim in enumerate(source_claim_names(model))
    )
    node_selector = dict(compiler.node_selector or settings.compile_node_selector)
    tolerations = (
        [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in compiler.tolerations]
        if compiler.tolerations
        else list(settings.compile_tolerations)
    )
    container = {
        "name": COMPILE_CONTAINER,
        "image": request.runtime_image,
        "command": ["neuron-runtime", "compile"],
        "args": ["--output-root", location.root(settings.artifact_mount_path)],
        "env": [{"name": COMPILE_REQUEST_ENV, "value": request.model_dump_json(exclude_none=True)}, *s3_env],
        "resources": resources,
    }
    pod_spec = runtime_task_pod(container, location.claim, settings, extra_volumes=sources)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if service_account := compiler.service_account_name or settings.compile_service_account:
        pod_spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.compile_job_name(key, storage_id(model, settings)),
            "namespace": body["metadata"]["namespace"],
            "labels": labels,
            "annotations": {
                names.ANNOTATION_CACHE_KEY: key,
                names.ANNOTATION_MODEL: model.metadata.name or "",
            },
            # Not a controller reference: models with identical inputs share this Job.
            "ownerReferences": [names.owner_reference(body, controller=False)],
        },
        "spec": {
            "backoffLimit": settings.compile_backoff_limit,
            "activeDeadlineSeconds": compiler.timeout_seconds or settings.compile_timeout_seconds,
            "ttlSecondsAfterFinished": settings.compile_job_ttl_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": COMPILE_CONTAINER,
                            "operator": "In",
                            "values": list(PERMANENT_EXIT_CODES),
                        },
                    },
                    # Evictions and node loss are not the compiler's fault: retry without counting.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class CompileOutcome:
    """What a compile Job says about itself: still running, succeeded with a result, or failed."""

    state: str  # "Running" | "Succeeded" | "Failed"
    result: dict[str, Any] | None = None  # the runtime's termination message, parsed
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


def _condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in job.get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("name") == COMPILE_CONTAINER:
            term = cs.get("state", {}).get("terminated")
            return dict(term) if term else None
    return None


def _parse_message(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        parsed = json.loads(text.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def job_outcome(job: dict[str, Any], pods: list[dict[str, Any]]) -> CompileOutcome:
    """Read a compile Job and its pods (newest last wins) into an outcome."""
    finished = sorted(
        (p for p in pods if _terminated(p) is not None),
        key=lambda p: (_terminated(p) or {}).get("finishedAt") or "",
    )
    last = _terminated(finished[-1]) if finished else None
    parsed = _parse_message(last.get("message")) if last else None
    complete = _condition(job, "Complete")
    if complete is not None:
        if parsed is None or parsed.get("status") != "Succeeded":
            return CompileOutcome(
                "Failed",
                reason=Reason.NO_RESULT,
                message="the compile Job succeeded but left no result in its termination message",
                exit_code=last.get("exitCode") if last else None,
                finished_at=_time(complete.get("lastTransitionTime")),
            )
        return CompileOutcome("Succeeded", result=parsed, finished_at=_time(complete.get("lastTransitionTime")))
    failed = _condition(job, "Failed")
    if failed is not None:
        job_reason = failed.get("reason") or "Failed"
        if job_reason == "DeadlineExceeded":
            reason, message = Reason.COMPILE_TIMEOUT, failed.get("message") or "compile exceeded its timeout"
        elif parsed is not None:
            reason, message = runtime_reason(parsed.get("reason")), str(parsed.get("message") or "")
            if reason is Reason.COMPILE_FAILED and parsed.get("reason") not in (None, "CompileFailed"):
                message = f"{parsed.get('reason')}: {message}"
        elif last is not None and last.get("reason") == "OOMKilled":
            reason = Reason.OOM_KILLED
            message = (
                "the compile container was killed for exceeding its memory limit (OOMKilled): raise the compile memory"
            )
        else:
            reason = Reason.COMPILE_FAILED
            message = (last.get("message") if last else None) or failed.get("message") or job_reason
        return CompileOutcome(
            "Failed",
            reason=reason,
            message=clip(message),
            exit_code=last.get("exitCode") if last else None,
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
