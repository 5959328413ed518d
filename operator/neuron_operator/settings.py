"""Operator settings: everything an installation configures, from env (``NEURON_OPERATOR_*``) or flags.

The Helm chart sets these as environment variables on the operator Deployment; ``neuron-operator run``
flags override them. Builders receive the parsed ``OperatorSettings`` object, never the environment.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from neuron_operator import __version__
from neuron_runtime.config import S3_ENDPOINT_PATTERN

DEFAULT_IMAGE_REPOSITORY = "ghcr.io/neuron-dev"
#: uid and gid of the runtime images' unprivileged user (the Dockerfile's USER).
RUNTIME_UID: Final = 65532
#: The pod identity of every runtime pod (the compile and GC Jobs always; serving unless runtimeRunAsRoot).
NON_ROOT_IDENTITY: Final = MappingProxyType({"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID})


class OperatorSettings(BaseSettings):
    """Installation-wide configuration (one per operator process)."""

    model_config = SettingsConfigDict(env_prefix="NEURON_OPERATOR_", extra="ignore", frozen=True)

    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty = the whole cluster.")
    runtime_image: str = Field(
        default=f"{DEFAULT_IMAGE_REPOSITORY}/neuron-runtime:{__version__}",
        description="Image for compile Jobs and serving pods of `cpu` models (torch, no Neuron SDK).",
    )
    neuronx_runtime_image: str = Field(
        default=f"{DEFAULT_IMAGE_REPOSITORY}/neuron-runtime-neuronx:{__version__}",
        description="Image for inf2/trn1/trn2 models (torch-neuronx and the Neuron runtime).",
    )
    neuron_runtime_image: str = Field(
        default=f"{DEFAULT_IMAGE_REPOSITORY}/neuron-runtime-inf1:{__version__}",
        description="Image for inf1 models (torch-neuron, NeuronCore-v1).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    compile_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Default nodeSelector of compile Jobs (compilation needs CPU and memory, no NeuronCore).",
    )
    compile_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    compile_cpu: str = "2"
    compile_memory: str = "8Gi"
    compile_timeout_seconds: int = Field(default=3600, ge=60)
    compile_backoff_limit: int = Field(default=1, ge=0)
    #: Finished compile Jobs are kept this long (their result is already in the NeuronModel status).
    compile_job_ttl_seconds: int = Field(default=86400, ge=0)

    artifact_pvc: str = Field(
        default="neuron-artifacts",
        description="PersistentVolumeClaim holding artifacts when a NeuronModel names no storage.",
    )
    artifact_mount_path: str = "/var/lib/neuron/artifacts"
    artifact_uri: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description=(
            "s3://bucket/prefix holding artifacts when a NeuronModel names no storage (instead of artifactPvc): "
            "no per-namespace claim is needed, and identical models in different namespaces share one compile."
        ),
    )
    s3_endpoint: str | None = Field(
        default=None,
        pattern=S3_ENDPOINT_PATTERN,
        description="Default S3-compatible endpoint of models without spec.s3 (unset: AWS S3).",
    )
    s3_region: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$", description="Default AWS region.")
    s3_force_path_style: bool = Field(default=False, description="Default path-style addressing.")
    s3_credentials_secret: str | None = Field(
        default=None,
        description=(
            "Default credentials Secret (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), looked up in each model's "
            "namespace; unset: the pods' own identity (EKS Pod Identity / IRSA through their ServiceAccount)."
        ),
    )
    gc_enabled: bool = Field(
        default=False,
        description=(
            "Run the artifact garbage collector: every gcIntervalSeconds, one Job per artifact storage in use "
            "finds the artifacts no NeuronModel (or serving Deployment) has referenced for gcMinAgeSeconds."
        ),
    )
    gc_min_age_seconds: int = Field(
        default=604800,
        ge=3600,
        description="An unreferenced artifact expires this long after its last reference (a revert within it hits).",
    )
    gc_interval_seconds: int = Field(default=21600, ge=300, description="Seconds between two GC runs.")
    gc_delete: bool = Field(
        default=False, description="Delete expired artifacts; false: a dry run that reports them (Events, metric)."
    )
    gc_service_account: str | None = Field(
        default=None,
        description=(
            "ServiceAccount of GC Jobs (deleting needs s3:DeleteObject, which compile Jobs need not have); "
            "unset: the compile ServiceAccount (for S3: that of the owning model's compile Jobs)."
        ),
    )
    compile_service_account: str | None = Field(
        default=None,
        description="ServiceAccount of compile Jobs without spec.compiler.serviceAccountName (unset: default).",
    )
    runtime_service_account: str | None = Field(
        default=None,
        description="ServiceAccount of serving pods without spec.pod.serviceAccountName (unset: default).",
    )

    neuron_scheduler_name: str = Field(
        default="my-scheduler",
        description=(
            "schedulerName of the Neuron scheduler extension (the Neuron Helm chart's default); used for "
            "pods asking for more than one NeuronCore but fewer than a whole node."
        ),
    )
    use_neuron_scheduler: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: only when contiguity matters (1 < cores < node cores); never: default scheduler.",
    )
    runtime_run_as_root: bool = Field(
        default=False,
        description=(
            "Run serving pods as uid 0 instead of 65532. Only for nodes where a non-root container cannot "
            "open /dev/neuron*: device nodes keep the host's owner and mode unless the CRI runtime sets "
            "them from the pod's runAsUser/runAsGroup (containerd device_ownership_from_security_context; "
            "Bottlerocket settings.kubernetes.device-ownership-from-security-context)."
        ),
    )

    resync_seconds: float = Field(default=60.0, gt=0, description="Level-triggered re-reconcile period.")
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)

    leader_election: bool = True
    leader_election_namespace: str = "default"
    leader_election_lease: str = "neuron-operator"
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    health_port: int = 8081
    metrics_port: int = 8080

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the operator's own loggers (HTTP clients stay at WARNING above DEBUG)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: for people; json: one object per line, for log pipelines."
    )

    @field_validator(
        "artifact_uri",
        "s3_endpoint",
        "s3_region",
        "s3_credentials_secret",
        "compile_service_account",
        "runtime_service_account",
        "gc_service_account",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """The chart renders an unset optional value as "" (env vars cannot be absent conditionally there)."""
        return None if value == "" else value

    def runtime_identity(self) -> dict[str, Any]:
        """runAsNonRoot, runAsUser and runAsGroup of serving pods (pod securityContext)."""
        if self.runtime_run_as_root:
            return {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}
        return dict(NON_ROOT_IDENTITY)

    def image_for_target(self, target: str) -> str:
        if target == "cpu":
            return self.runtime_image
        if target == "inf1":
            return self.neuron_runtime_image
        return self.neuronx_runtime_image
