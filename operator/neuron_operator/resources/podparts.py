"""Pod pieces every runtime pod shares, defined once: the compile Job, the artifact GC Job and the serving Deployment.

Each runs ``neuron-runtime`` as uid 65532 (unless the operator's settings run serving as root) on a read-only root
filesystem with no capability and the runtime's default seccomp profile, with a scratch emptyDir as HOME and TMPDIR.
The builders (``compile``, ``retention``, ``serving``) take these pieces and add what is theirs.
"""

from __future__ import annotations

from typing import Any, Final

from neuron_operator.api.common import Toleration
from neuron_operator.settings import NON_ROOT_IDENTITY, RUNTIME_UID, OperatorSettings

#: Writable scratch (an emptyDir; the root filesystem is read-only), handed to Python through HOME and TMPDIR.
SCRATCH_VOLUME: Final = "scratch"
SCRATCH_MOUNT: Final = "/scratch"
#: The artifact volume's name in every runtime pod (a claim, or the emptyDir an S3 artifact is downloaded into).
ARTIFACT_VOLUME: Final = "artifacts"


def scratch_volume() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}


def scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT}


def scratch_env() -> list[dict[str, Any]]:
    return [{"name": "HOME", "value": SCRATCH_MOUNT}, {"name": "TMPDIR", "value": SCRATCH_MOUNT}]


def container_security(run_as_non_root: bool | None = None) -> dict[str, Any]:
    """The restricted container securityContext (Pod Security Standards "restricted"); ``run_as_non_root`` is
    repeated on the container only where the pod's identity may be root (serving)."""
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if run_as_non_root is not None:
        security = {**security, "runAsNonRoot": run_as_non_root}
    return security


def pod_security(identity: dict[str, Any]) -> dict[str, Any]:
    """The pod securityContext: ``identity`` (runAsNonRoot/runAsUser/runAsGroup), the runtime's fsGroup (so it can
    write the artifact volume) and the default seccomp profile."""
    return {**identity, "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}}


def http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    """An HTTP GET probe of ``path`` on the named ``port`` (2 s per try)."""
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def tolerations(items: list[Toleration] | None) -> list[dict[str, Any]]:
    """The API's tolerations as manifest dicts."""
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in items or []]


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
    volumes: list[dict[str, Any]] = [scratch_volume()]
    mounts: list[dict[str, Any]] = [scratch_mount()]
    if claim is not None:
        volumes.insert(0, {"name": ARTIFACT_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
        mounts.insert(0, {"name": ARTIFACT_VOLUME, "mountPath": settings.artifact_mount_path})
    for volume, mount in extra_volumes:
        volumes.append(volume)
        mounts.append(mount)
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(dict(NON_ROOT_IDENTITY)),
        "containers": [
            {
                **container,
                "imagePullPolicy": settings.image_pull_policy,
                "env": [*scratch_env(), *(container.get("env") or [])],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": mounts,
                "securityContext": container_security(),
            }
        ],
        "volumes": volumes,
    }
