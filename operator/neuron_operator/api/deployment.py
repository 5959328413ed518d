"""NeuronDeployment: serve a compiled NeuronModel on NeuronCores, with in-pod core placement and dynamic
batching.

``spec.placement`` and ``spec.batching`` map 1:1 onto the runtime's ``neuron_runtime.config.Placement``
{workers, cores_per_worker, mode} and ``Batching`` {max_batch_size, max_delay_ms, max_queue, timeout_ms,
preferred_batch_sizes} (the mapping lives in ``neuron_operator.resources``). A replica is one pod holding
``workers x coresPerWorker`` NeuronCores; ``spec.replicas`` is exposed through the scale subresource.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, ConfigDict, Field, Strict, WithJsonSchema, model_validator

from neuron_operator.api.common import (
    CONDITIONS_EXTRA,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    IMAGE_PATTERN,
    SHA256_PATTERN,
    TOLERATIONS_FIELD_DOC,
    Affinity,
    Bool,
    CamelModel,
    Condition,
    Failure,
    Float,
    Int,
    IntOrPercent,
    ObjectMeta,
    ResourceRequirements,
    Str,
    StringMap,
    Toleration,
    cel,
    validations,
)
from neuron_operator.api.reasons import DEPLOYMENT_STALLED, DEPLOYMENT_VOCABULARY, conditions_doc
from neuron_operator.catalogue import INSTANCE_TYPES

KIND: Final = "NeuronDeployment"
PLURAL: Final = "neurondeployments"

#: The most NeuronCores one node offers (inf1.24xlarge, trn2.48xlarge at LNC=2): a replica is one pod.
MAX_CORES_PER_REPLICA: Final = max(t.neuron_cores for t in INSTANCE_TYPES.values())
MAX_BATCH: Final = 1024
RESERVED_LABEL_PREFIX: Final = "neuron.dev/"
DNS1035_LABEL: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class PlacementMode(StrEnum):
    """How a worker uses its NeuronCores."""

    #: ``workers`` copies of the model, each on ``coresPerWorker`` consecutive visible cores.
    PINNED = "pinned"
    #: One copy replicated over all the replica's cores (torch_neuronx.multicore_context), one executor per
    #: core; workers and coresPerWorker then only size the replica (workers x coresPerWorker cores).
    MULTICORE = "multicore"


def _known_instance_type(name: str) -> str:
    if name not in INSTANCE_TYPES:
        raise ValueError(f"unknown instance type {name!r}; known: {', '.join(sorted(INSTANCE_TYPES))}")
    return name


InstanceTypeName = Annotated[
    str,
    Strict(),
    AfterValidator(_known_instance_type),
    WithJsonSchema({"type": "string", "enum": sorted(INSTANCE_TYPES)}),
]


class ModelReference(CamelModel):
    """A NeuronModel in the same namespace."""

    name: Str = Field(
        min_length=1, max_length=63, pattern=DNS1123_LABEL, description="Name of the NeuronModel to serve."
    )


class Placement(CamelModel):
    """Worker processes per replica and NeuronCores per worker (maps to the runtime's Placement)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.workers * self.coresPerWorker >= 1 && self.workers * self.coresPerWorker <= "
                f"{MAX_CORES_PER_REPLICA}",
                f"spec.placement: workers x coresPerWorker must be between 1 and {MAX_CORES_PER_REPLICA} "
                "(the most NeuronCores on one node)",
            )
        )
    )

    workers: Int = Field(
        default=1, ge=1, le=MAX_CORES_PER_REPLICA, description="Model-serving processes in each replica."
    )
    cores_per_worker: Int = Field(
        default=1,
        ge=1,
        le=MAX_CORES_PER_REPLICA,
        description=(
            "NeuronCores owned by each worker; a replica requests workers x coresPerWorker "
            "aws.amazon.com/neuroncore (for cpu models: CPU workers, no NeuronCores)."
        ),
    )
    mode: PlacementMode = Field(
        default=PlacementMode.PINNED,
        description=(
            "pinned: workers copies of the model, each on coresPerWorker consecutive cores of the replica; "
            "multicore: one copy replicated over all the replica's cores (workers x coresPerWorker), one "
            "executor per core (torch_neuronx.multicore_context)."
        ),
    )

    @property
    def cores_per_replica(self) -> int:
        return self.workers * self.cores_per_worker

    @model_validator(mode="after")
    def _cores(self) -> Placement:
        if not 1 <= self.cores_per_replica <= MAX_CORES_PER_REPLICA:
            raise ValueError(
                f"spec.placement: workers x coresPerWorker must be between 1 and {MAX_CORES_PER_REPLICA} "
                "(the most NeuronCores on one node)"
            )
        return self


BatchSize = Annotated[int, Strict(), Field(ge=1, le=MAX_BATCH)]


class Batching(CamelModel):
    """Server-side dynamic batching in each worker (maps to the runtime's Batching)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.preferredBatchSizes) || self.preferredBatchSizes.all(b, b <= self.maxBatchSize)",
                "spec.batching.preferredBatchSizes must all be <= spec.batching.maxBatchSize",
                fieldPath=".preferredBatchSizes",
            ),
            cel(
                "!has(self.preferredBatchSizes) || self.preferredBatchSizes.isSorted()",
                "spec.batching.preferredBatchSizes must be in ascending order",
                fieldPath=".preferredBatchSizes",
            ),
            cel(
                "self.maxQueue >= self.maxBatchSize",
                "spec.batching.maxQueue must be >= spec.batching.maxBatchSize (the queue holds a full batch)",
                fieldPath=".maxQueue",
            ),
            cel(
                "self.timeoutMs > self.maxDelayMs",
                "spec.batching.timeoutMs must be greater than spec.batching.maxDelayMs",
                fieldPath=".timeoutMs",
            ),
        )
    )

    max_batch_size: BatchSize = Field(
        default=8,
        description=(
            "Most rows merged into one model call (1 disables batching); a batch is sent when full, when "
            "its oldest request has waited maxDelayMs, or at once while a worker is idle (idleDispatch). Rows "
            "beyond the compiled batchSize need dynamicBatch."
        ),
    )
    max_delay_ms: Int = Field(
        default=5, ge=0, le=60000, description="Longest a request waits for a batch to fill, in milliseconds."
    )
    max_queue: Int = Field(
        default=256,
        ge=1,
        le=100000,
        description="Rows (a request of shape [k, ...] is k rows) queued before requests get 429.",
    )
    timeout_ms: Int = Field(
        default=30000,
        ge=1,
        le=3600000,
        description="Deadline of a request from arrival to response, in milliseconds (504 after it).",
    )
    idle_dispatch: bool | None = Field(
        default=None,
        description=(
            "Send a partial batch at once while a worker is idle instead of waiting maxDelayMs for it to fill: "
            "low latency at low load; requests arriving while every worker is busy still batch up. Unset: on when "
            "the NeuronModel has batchSizes (a partial batch is padded only to the smallest graph that fits), off "
            "with a single batch size (a lone request would pay the whole graph)."
        ),
    )
    preferred_batch_sizes: list[BatchSize] | None = Field(
        default=None,
        max_length=16,
        description=(
            "Batch sizes to cut batches at (ascending, each <= maxBatchSize), e.g. the compiled bucket "
            "sizes; "
            "a partial batch is padded up to the next one."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _consistent(self) -> Batching:
        sizes = self.preferred_batch_sizes
        if sizes is not None:
            if len(set(sizes)) != len(sizes):
                raise ValueError("spec.batching.preferredBatchSizes: duplicate value")
            if any(b > self.max_batch_size for b in sizes):
                raise ValueError("spec.batching.preferredBatchSizes must all be <= spec.batching.maxBatchSize")
            if sizes != sorted(sizes):
                raise ValueError("spec.batching.preferredBatchSizes must be in ascending order")
        if self.max_queue < self.max_batch_size:
            raise ValueError(
                "spec.batching.maxQueue must be >= spec.batching.maxBatchSize (the queue holds a full batch)"
            )
        if self.timeout_ms <= self.max_delay_ms:
            raise ValueError("spec.batching.timeoutMs must be greater than spec.batching.maxDelayMs")
        return self


class ServerSpec(CamelModel):
    """The Open Inference Protocol v2 server in each replica."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.port != self.grpcPort",
                "spec.server.grpcPort must differ from spec.server.port",
                fieldPath=".grpcPort",
            ),
        )
    )

    port: Int = Field(default=8080, ge=1, le=65535, description="HTTP port of the OIP v2 REST API.")
    grpc_port: Int = Field(
        default=8001,
        ge=1,
        le=65535,
        description=(
            "Port of the OIP v2 gRPC API (KServe v2 / Triton GRPCInferenceService; the Service's port named grpc). "
            "Not served by inf1 images, whose Neuron compiler pins an older protobuf."
        ),
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSpec:
        if self.port == self.grpc_port:
            raise ValueError("spec.server.grpcPort must differ from spec.server.port")
        return self


def _is_zero(value: int | str) -> bool:
    return value in (0, "0%")


_ZERO_SURGE = "(type(self.maxSurge) == int ? self.maxSurge == 0 : self.maxSurge == '0%')"
_ZERO_UNAVAILABLE = "(type(self.maxUnavailable) == int ? self.maxUnavailable == 0 : self.maxUnavailable == '0%')"


class Rollout(CamelModel):
    """Rolling-update budget. Unset (the default): capacity-aware, chosen by the operator at each update.

    Default: surge by one replica (maxSurge 1, maxUnavailable 0: no request is lost) when some node a replica
    may run on has its NeuronCores free (cpu replicas always surge); otherwise replace pods in place
    (maxSurge 0, maxUnavailable 1: capacity drops by one replica during the update). status.rollout says
    which was chosen and why, and an Event (Surge or InPlace) is recorded. Setting either field uses the two
    as given (the unset one is 0).
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!(has(self.maxSurge) && {_ZERO_SURGE} && (!has(self.maxUnavailable) || {_ZERO_UNAVAILABLE}))"
                f" && !(has(self.maxUnavailable) && {_ZERO_UNAVAILABLE} && !has(self.maxSurge))",
                "spec.rollout: maxSurge and maxUnavailable must not both be zero",
            )
        )
    )

    max_surge: IntOrPercent | None = Field(
        default=None,
        description="Extra replicas (count or percentage) during an update; each needs free NeuronCores. "
        "Unset with maxUnavailable unset: capacity-aware (see spec.rollout).",
    )
    max_unavailable: IntOrPercent | None = Field(
        default=None,
        description="Replicas (count or percentage) that may be down during an update. "
        "Unset with maxSurge unset: capacity-aware (see spec.rollout).",
    )

    @model_validator(mode="after")
    def _progress(self) -> Rollout:
        if self.max_surge is None and self.max_unavailable is None:
            return self
        surge = 0 if self.max_surge is None else self.max_surge
        unavailable = 0 if self.max_unavailable is None else self.max_unavailable
        if _is_zero(surge) and _is_zero(unavailable):
            raise ValueError("spec.rollout: maxSurge and maxUnavailable must not both be zero")
        return self


class Validation(CamelModel):
    """The parity gate every serving pod runs before it becomes ready.

    Each graph runs on the reference inputs stored with the artifact (the example inputs and seeded random ones)
    on every model copy in the pod, and must match the eager model's outputs: |got - expected| <= atol +
    rtol * |expected| for every element. A pod that fails never becomes ready, and the NeuronDeployment shows
    Stalled with reason ParityFailed and the measured error while the old replicas keep serving.
    """

    parity: Bool = Field(default=True, description="Run the parity gate (default true).")
    atol: Float | None = Field(
        default=None,
        ge=0,
        le=1000000,
        description=(
            "Absolute tolerance. Default by the precision the graph computes in: cpu 1e-4; Neuron with autoCast "
            "none 1e-3 (inf1: as bf16, Inferentia multiplies in bf16); tf32 and fp16 1e-2; bf16 5e-2; "
            "fp8_e4m3 0.25."
        ),
    )
    rtol: Float | None = Field(default=None, ge=0, le=1000000, description="Relative tolerance; same defaults as atol.")


class PodOverrides(CamelModel):
    """Settings merged into the runtime pods the operator creates."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!has(self.labels) || !self.labels.exists(k, k.startsWith('{RESERVED_LABEL_PREFIX}'))",
                f"spec.pod.labels must not use the {RESERVED_LABEL_PREFIX} prefix (reserved for the operator)",
                fieldPath=".labels",
            )
        )
    )

    labels: StringMap | None = Field(default=None, description="Extra pod labels (not neuron.dev/*).")
    annotations: StringMap | None = Field(default=None, description="Extra pod annotations.")
    node_selector: StringMap | None = Field(
        default=None,
        description=("Extra node labels to match, on top of the instance-type affinity from spec.instanceTypes."),
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description=TOLERATIONS_FIELD_DOC)
    affinity: Affinity | None = Field(
        default=None,
        description="Extra affinity rules; node affinity is ANDed with the instance-type affinity.",
    )
    service_account_name: Str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "ServiceAccount of the pods (with S3 artifacts, one whose IAM role can read them: EKS Pod Identity or "
            "IRSA); default: the operator's runtimeServiceAccount setting, else the namespace's default."
        ),
    )

    @model_validator(mode="after")
    def _reserved_labels(self) -> PodOverrides:
        if self.labels and any(k.startswith(RESERVED_LABEL_PREFIX) for k in self.labels):
            raise ValueError(
                f"spec.pod.labels must not use the {RESERVED_LABEL_PREFIX} prefix (reserved for the operator)"
            )
        return self


class NeuronDeploymentSpec(CamelModel):
    """Desired state of a NeuronDeployment."""

    model_ref: ModelReference = Field(description="The NeuronModel (same namespace) whose artifact is served.")
    replicas: Int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Number of serving pods; changed by kubectl scale and autoscalers.",
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="Workers per replica and NeuronCores per worker.",
        json_schema_extra={"default": {}},
    )
    instance_types: list[InstanceTypeName] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Allowed node.kubernetes.io/instance-type values; default: every type whose NeuronCore "
            "generation "
            "matches the artifact and that has enough cores for one replica."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    batching: Batching = Field(
        default_factory=Batching,
        description="Server-side dynamic batching.",
        json_schema_extra={"default": {}},
    )
    server: ServerSpec = Field(
        default_factory=ServerSpec,
        description="The inference server's ports.",
        json_schema_extra={"default": {}},
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="CPU and memory of the runtime container; NeuronCores are added from placement.",
    )
    rollout: Rollout = Field(
        default_factory=Rollout,
        description="Rolling-update budget.",
        json_schema_extra={"default": {}},
    )
    image: Str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Runtime image; default: the operator's runtime image for the artifact's target.",
    )
    scheduler_name: Str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "Scheduler of the pods, e.g. my-scheduler for the Neuron scheduler extension (needed when a "
            "replica "
            "takes more than one but fewer than all cores of a node)."
        ),
    )
    suspend: Bool = Field(
        default=False, description="Scale the runtime to zero pods while keeping the object and its status."
    )
    validation: Validation = Field(
        default_factory=Validation,
        description="The numerical parity gate each pod runs on the device before it becomes ready.",
        json_schema_extra={"default": {}},
    )
    pod: PodOverrides | None = Field(
        default=None,
        description=("Labels, annotations, node selector, tolerations, affinity and service account of the pods."),
    )

    @model_validator(mode="after")
    def _unique_instance_types(self) -> NeuronDeploymentSpec:
        types = self.instance_types
        if types is not None and len(set(types)) != len(types):
            raise ValueError("spec.instanceTypes: duplicate value")
        return self


class ServedModel(CamelModel):
    """The artifact the replicas currently serve."""

    name: Str = Field(max_length=63, description="Name of the NeuronModel.")
    sha256: Str | None = Field(default=None, pattern=SHA256_PATTERN, description="SHA-256 of the served artifact.")
    cache_key: Str | None = Field(default=None, max_length=256, description="Cache key of the served artifact.")


class ParityStatus(CamelModel):
    """What a serving pod measured in its parity gate (read from its log when it passed)."""

    pod_template_hash: Str = Field(max_length=63, description="pod-template-hash of the pods this describes.")
    pod: Str = Field(max_length=253, description="The pod that reported it.")
    passed: Bool = Field(description="Whether every element was within the tolerance (always true here).")
    max_abs_error: Float = Field(ge=0, description="Largest |got - expected| over every graph, case and model copy.")
    max_rel_error: Float = Field(ge=0, description="Largest |got - expected| / |expected|.")
    atol: Float = Field(ge=0, description="Absolute tolerance applied.")
    rtol: Float = Field(ge=0, description="Relative tolerance applied.")
    precision: Str = Field(max_length=32, description="Precision the graphs compute in (cpu, fp32, bf16, ...).")
    cases: Int = Field(ge=0, description="Reference cases per graph.")
    model_copies: Int = Field(ge=0, description="Model copies checked (one per worker lane, i.e. per core).")


DEPLOYMENT_CONDITIONS_DOC: Final = conditions_doc(DEPLOYMENT_VOCABULARY, DEPLOYMENT_STALLED)


class RolloutStatus(CamelModel):
    """The rolling-update budget the operator chose for the latest update, and why."""

    strategy: Literal["Surge", "InPlace", "Custom"] = Field(
        description="Surge (one extra replica, none down), InPlace (one down, none extra) or Custom (spec.rollout)."
    )
    max_surge: IntOrPercent = Field(description="maxSurge of the runtime Deployment.")
    max_unavailable: IntOrPercent = Field(description="maxUnavailable of the runtime Deployment.")
    message: Str = Field(default="", max_length=1024, description="Why: the free NeuronCores found, or spec.rollout.")


class NeuronDeploymentStatus(CamelModel):
    """Observed state of a NeuronDeployment, written by the operator only."""

    observed_generation: Int | None = Field(default=None, ge=0, description="metadata.generation the status describes.")
    conditions: list[Condition] | None = Field(
        default=None, max_length=16, description=DEPLOYMENT_CONDITIONS_DOC, json_schema_extra=CONDITIONS_EXTRA
    )
    replicas: Int | None = Field(default=None, ge=0, description="Pods that exist (scale subresource).")
    ready_replicas: Int | None = Field(default=None, ge=0, description="Pods passing their readiness probe.")
    updated_replicas: Int | None = Field(default=None, ge=0, description="Pods running the current spec.")
    available_replicas: Int | None = Field(default=None, ge=0, description="Pods ready for at least minReadySeconds.")
    ready_summary: Str | None = Field(
        default=None,
        max_length=32,
        description='readyReplicas/spec.replicas as text, e.g. "2/3", for the Ready printer column.',
    )
    selector: Str | None = Field(
        default=None,
        max_length=1024,
        description="Label selector of the pods, as a string (scale subresource).",
    )
    cores_per_replica: Int | None = Field(
        default=None, ge=0, description="NeuronCores each replica requests (workers x coresPerWorker)."
    )
    model: ServedModel | None = Field(default=None, description="The artifact being served.")
    endpoint: Str | None = Field(
        default=None,
        max_length=1024,
        description="In-cluster URL of the OIP v2 API, e.g. http://<name>.<namespace>.svc:8080.",
    )
    last_failure: Failure | None = Field(default=None, description="The most recent serving failure.")
    parity: ParityStatus | None = Field(
        default=None, description="The parity gate as measured by a serving pod of the current pod template."
    )
    rollout: RolloutStatus | None = Field(default=None, description="The update budget in use and why.")


class NeuronDeployment(CamelModel):
    """Serves a compiled NeuronModel: replicas x workers x cores, with dynamic batching."""

    KIND: ClassVar[str] = KIND
    PLURAL: ClassVar[str] = PLURAL

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS1035_LABEL}')",
                "metadata.name must be a DNS-1035 label (lowercase letter first, at most 63 characters): "
                "it names the Service",
            )
        )
    )

    api_version: Literal["neuron.dev/v1alpha1"] = Field(
        default="neuron.dev/v1alpha1", description="neuron.dev/v1alpha1"
    )
    kind: Literal["NeuronDeployment"] = Field(default="NeuronDeployment", description="NeuronDeployment")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: NeuronDeploymentSpec = Field(description="Desired state: which model, how many replicas, how served.")
    status: NeuronDeploymentStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @model_validator(mode="after")
    def _name(self) -> NeuronDeployment:
        name = self.metadata.name
        if name is not None and (len(name) > 63 or not re.fullmatch(DNS1035_LABEL[1:-1], name)):
            raise ValueError(
                "metadata.name must be a DNS-1035 label (lowercase letter first, at most 63 characters): "
                "it names the Service"
            )
        return self


def parse_deployment(obj: dict[str, Any]) -> NeuronDeployment:
    """Parse a NeuronDeployment manifest (as the apiserver returns it); ``ValidationError`` names the field."""
    return NeuronDeployment.model_validate(obj)
