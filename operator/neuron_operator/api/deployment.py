"""NeuronDeployment: serve a compiled NeuronModel on NeuronCores, with in-pod core placement and dynamic
batching.

``spec.placement`` and ``spec.batching`` map 1:1 onto the runtime's ``neuron_runtime.config.Placement``
{workers, cores_per_worker, mode} and ``Batching`` {max_batch_size, max_delay_ms, max_queue, timeout_ms,
preferred_batch_sizes} (the mapping lives in ``neuron_operator.resources``). A replica is one pod holding
``workers x coresPerWorker`` NeuronCores; ``spec.replicas`` is exposed through the scale subresource.
"""

from __future__ import annotations

import itertools
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
from neuron_runtime.contract import METRIC_REQUEST_DURATION

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


class RolloutStrategy(StrEnum):
    """How a new pod template (new artifact, new settings) replaces the serving one."""

    #: The runtime Deployment's rolling update, with the budget of maxSurge/maxUnavailable.
    ROLLING_UPDATE = "RollingUpdate"
    #: A second Deployment with the new template behind the same Service, grown step by step while gates read
    #: from the runtime metrics of both hold; promoted after the last step, aborted at the first failed gate.
    CANARY = "Canary"


MAX_CANARY_STEPS: Final = 10


class CanaryStep(CamelModel):
    """One step of a canary: the share of replicas that run the new template, and how long to hold it."""

    weight: Int = Field(
        ge=1,
        le=99,
        description=(
            "Percentage of the replicas that run the new template in this step: canary replicas = "
            "ceil(replicas x weight / 100), at least 1, and the stable Deployment keeps the rest (at least 1). "
            "Traffic follows replicas (the Service balances connections over every ready pod), so the share served "
            "is canary / (canary + stable) pods, reported in status.canary.trafficPercent."
        ),
    )
    pause_seconds: Int = Field(
        default=60,
        ge=0,
        le=86400,
        description=(
            "How long the step holds once every canary replica is ready; the gates are judged over this window and "
            "the step passes only when it is over and the gates hold."
        ),
    )


class CanaryGates(CamelModel):
    """Checks on the canary pods against the stable pods, from the runtime's own metrics (requests by status code,
    the request-duration histogram), measured per step from its first reading once the canary replicas are ready (and
    again from the first reading after an operator restart)."""

    max_error_ratio: Float = Field(
        default=0.01,
        ge=0,
        le=1,
        description=(
            "Most the canary's error ratio (responses >= 400 other than 429, over all its responses in the step) may "
            "exceed the stable pods' error ratio over the same window."
        ),
    )
    max_latency_ratio: Float = Field(
        default=1.5,
        ge=1,
        le=1000,
        description=(
            "Most the canary's p99 request latency may be, as a multiple of the stable pods' p99 over the same "
            f"window (from {METRIC_REQUEST_DURATION} buckets)."
        ),
    )
    latency_floor_ms: Float = Field(
        default=10.0,
        ge=0,
        le=3600000,
        description=(
            "A canary p99 at or under this many milliseconds passes the latency gate whatever the ratio: the runtime's "
            "latency buckets are 0.5, 1, 2, 5 and 10 ms apart at that scale, too coarse for a ratio to mean anything."
        ),
    )
    progress_deadline_seconds: Int = Field(
        default=1800,
        ge=30,
        le=86400,
        description=(
            "A step without a verdict this long after its pause could have ended aborts the canary: its replicas "
            "never became ready (no capacity), its metrics could not be read, or too few requests reached it."
        ),
    )
    min_requests: Int = Field(
        default=50,
        ge=1,
        le=1000000,
        description=(
            "Requests the canary must have answered in a step before its gates are judged; a step waits for them "
            "(status.canary.message says so) and aborts as soon as they fail."
        ),
    )


class Rollout(CamelModel):
    """How updates roll out: the rolling-update budget, or a gated canary (strategy Canary).

    Budget unset (the default): capacity-aware, chosen by the operator at each update.

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
            ),
            cel(
                "self.strategy != 'Canary' || (has(self.steps) && size(self.steps) >= 1)",
                "spec.rollout.steps: strategy Canary needs at least one step",
                fieldPath=".steps",
            ),
            cel(
                "self.strategy == 'Canary' || (!has(self.steps) && !has(self.gates))",
                "spec.rollout.steps and spec.rollout.gates apply only to strategy Canary",
                fieldPath=".strategy",
            ),
            cel(
                "!has(self.steps) || size(self.steps) < 2 || "
                "[1, 2, 3, 4, 5, 6, 7, 8, 9].all(i, i >= size(self.steps) || "
                "self.steps[i].weight > self.steps[i - 1].weight)",
                "spec.rollout.steps: weights must increase from step to step",
                fieldPath=".steps",
            ),
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
    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.ROLLING_UPDATE,
        description=(
            "RollingUpdate: the runtime Deployment's rolling update. Canary: the new template first runs as a second "
            "Deployment (<name>-canary) behind the same Service, grown through spec.rollout.steps while "
            "spec.rollout.gates hold; after the last step the stable Deployment is updated (with the budget above) "
            "and the canary removed. A failed gate, or a canary pod refused by the runtime (parity, artifact), "
            "aborts: the canary is scaled to zero, the stable pods keep serving, and the NeuronDeployment is Stalled "
            "with reason CanaryAborted until the spec changes. Reverting the spec while a canary steps removes it."
        ),
    )
    steps: list[CanaryStep] | None = Field(
        default=None,
        max_length=MAX_CANARY_STEPS,
        description="Canary steps, in order of increasing weight (strategy Canary).",
    )
    gates: CanaryGates | None = Field(
        default=None,
        description="What every canary step must hold; defaults apply when unset (strategy Canary).",
    )

    @model_validator(mode="after")
    def _progress(self) -> Rollout:
        if self.strategy is RolloutStrategy.CANARY and not self.steps:
            raise ValueError("spec.rollout.steps: strategy Canary needs at least one step")
        if self.strategy is not RolloutStrategy.CANARY and (self.steps is not None or self.gates is not None):
            raise ValueError("spec.rollout.steps and spec.rollout.gates apply only to strategy Canary")
        weights = [step.weight for step in self.steps or []]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError("spec.rollout.steps: weights must increase from step to step")
        if self.max_surge is None and self.max_unavailable is None:
            return self
        surge = 0 if self.max_surge is None else self.max_surge
        unavailable = 0 if self.max_unavailable is None else self.max_unavailable
        if _is_zero(surge) and _is_zero(unavailable):
            raise ValueError("spec.rollout: maxSurge and maxUnavailable must not both be zero")
        return self


class LoadMetric(StrEnum):
    """The load signal the autoscaler scales on, read from every ready serving pod's /metrics."""

    #: Requests in the pod at once (queued, batching or running), averaged over the last interval: the rise of
    #: neuron_runtime_request_duration_seconds_sum over the interval (Little's law), and at least
    #: neuron_runtime_requests_in_flight now (requests that have not finished count too).
    CONCURRENCY = "Concurrency"
    #: Rows waiting in the batch queue now (neuron_runtime_queue_depth_rows).
    QUEUED_ROWS = "QueuedRows"


class TargetPer(StrEnum):
    """What ``target`` is per."""

    REPLICA = "Replica"
    #: Per NeuronCore of a replica (workers x coresPerWorker; a cpu replica counts its workers).
    NEURON_CORE = "NeuronCore"


class BeyondCapacity(StrEnum):
    """What the autoscaler does with replicas no node has free NeuronCores for now."""

    #: Create them anyway: they stay Pending until Karpenter or the Cluster Autoscaler adds nodes (EKS).
    PROVISION = "Provision"
    #: Create only the replicas that fit the free NeuronCores now (a fixed fleet).
    CAP = "Cap"


class Autoscaling(CamelModel):
    """Load-driven replicas, decided by the operator from the serving pods' own metrics (no extra components).

    Every intervalSeconds the operator reads /metrics of each ready pod (through the apiserver's pod proxy), sums
    the load signal and wants ceil(total / target) replicas, between minReplicas and maxReplicas. A scale-up needs
    every recommendation of the last scaleUpStabilizationSeconds to agree, a scale-down every one of the last
    scaleDownStabilizationSeconds; a burst of panicThreshold x target per pod that answered scales up at once and blocks
    scale-downs for panicWindowSeconds. The operator owns spec.replicas while this is set: it writes the decision
    there (as a HorizontalPodAutoscaler writes the scale subresource), so kubectl scale, the scale subresource and
    status agree; leave spec.replicas out of Git (or ignore its difference) and do not also point an HPA at it.
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "spec.autoscaling.maxReplicas must be >= spec.autoscaling.minReplicas",
                fieldPath=".maxReplicas",
            ),
        )
    )

    min_replicas: Int = Field(default=1, ge=1, le=1000, description="Fewest replicas (at least 1).")
    max_replicas: Int = Field(ge=1, le=1000, description="Most replicas.")
    metric: LoadMetric = Field(
        default=LoadMetric.CONCURRENCY,
        description=(
            "Concurrency: requests in a pod at once, averaged over the interval; QueuedRows: rows waiting in the "
            "batch queue."
        ),
    )
    target: Float | None = Field(
        default=None,
        gt=0,
        le=1000000,
        description=(
            "Load each replica (or NeuronCore, see per) should carry. Default: workers x "
            "spec.batching.maxBatchSize requests per replica for Concurrency (enough to fill a batch in every worker), "
            "spec.batching.maxBatchSize rows for QueuedRows."
        ),
    )
    per: TargetPer = Field(default=TargetPer.REPLICA, description="Whether target is per replica or per NeuronCore.")
    interval_seconds: Int = Field(default=5, ge=1, le=300, description="Seconds between two readings and decisions.")
    scale_up_stabilization_seconds: Int = Field(
        default=0,
        ge=0,
        le=3600,
        description="A scale-up takes the lowest recommendation of this window (0: the latest one).",
    )
    scale_down_stabilization_seconds: Int = Field(
        default=300,
        ge=0,
        le=3600,
        description="A scale-down takes the highest recommendation of this window (also after an operator restart).",
    )
    panic_threshold: Float = Field(
        default=2.0,
        ge=1,
        le=1000,
        description=(
            "Load per pod that answered, as a multiple of target, that starts panic mode: scale up to the "
            "recommendation at once (no stabilization) and never down while it lasts."
        ),
    )
    panic_window_seconds: Int = Field(
        default=60, ge=0, le=3600, description="How long panic mode lasts after the last reading above the threshold."
    )
    beyond_capacity: BeyondCapacity = Field(
        default=BeyondCapacity.PROVISION,
        description=(
            "Replicas that no node has free NeuronCores for now: Provision creates them (Pending until Karpenter or "
            "the Cluster Autoscaler adds a node), Cap creates only those that fit. Either way the ScalingLimited "
            "condition says how many NeuronCores are missing on which instance types."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("spec.autoscaling.maxReplicas must be >= spec.autoscaling.minReplicas")
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
        description=(
            "Number of serving pods; changed by kubectl scale and autoscalers. With spec.autoscaling the operator "
            "writes it."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Scale spec.replicas on the load the serving pods report, NeuronCore-aware.",
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


class ScaleDecision(CamelModel):
    """The autoscaler's last change of spec.replicas."""

    time: Str = Field(max_length=64, description="When (RFC 3339).")
    from_replicas: Int = Field(ge=0, alias="from", description="spec.replicas before.")
    to_replicas: Int = Field(ge=0, alias="to", description="spec.replicas after.")
    reason: Literal["ScaledUp", "ScaledDown"] = Field(description="ScaledUp or ScaledDown (also the Event's reason).")
    message: Str = Field(default="", max_length=1024, description="The load, target and rule that decided it.")


class AutoscalingStatus(CamelModel):
    """What the autoscaler read and decided in its latest reading."""

    metric: LoadMetric = Field(description="The load signal.")
    target: Float = Field(ge=0, description="Target load per replica (per NeuronCore target x cores).")
    current_load: Float | None = Field(
        default=None, ge=0, description="Load per reporting replica in the latest reading (None: no pod reported)."
    )
    reporting_pods: Int = Field(default=0, ge=0, description="Ready pods whose metrics were read.")
    desired_replicas: Int = Field(ge=0, description="Replicas the autoscaler wants now (after its limits).")
    panic: Bool = Field(default=False, description="Whether panic mode is on.")
    last_scale: ScaleDecision | None = Field(default=None, description="The last change of spec.replicas.")
    summary: Str = Field(default="", max_length=64, description="Load/target per replica, for kubectl get.")


class CanaryMeasurement(CamelModel):
    """The gates' inputs over the current step (from the step's start)."""

    canary_requests: Int = Field(ge=0, description="Responses of the canary pods.")
    canary_errors: Int = Field(ge=0, description="Of which errors (>= 400 other than 429).")
    stable_requests: Int = Field(ge=0, description="Responses of the stable pods.")
    stable_errors: Int = Field(ge=0, description="Of which errors.")
    canary_p99_ms: Float | None = Field(default=None, ge=0, description="p99 latency of the canary, in ms.")
    stable_p99_ms: Float | None = Field(default=None, ge=0, description="p99 latency of the stable pods, in ms.")


class CanaryStatus(CamelModel):
    """Where the canary of the latest pod template stands."""

    phase: Literal["Progressing", "Promoting", "Promoted", "Aborted"] = Field(
        description=(
            "Progressing (stepping), Promoting (the stable Deployment takes the new template), Promoted (done), "
            "Aborted (a gate failed or a canary pod was refused; the stable pods serve)."
        )
    )
    template_hash: Str = Field(max_length=64, description="Hash of the canary's pod template.")
    step: Int = Field(ge=0, description="Index of the current step (0-based; = number of steps once all passed).")
    steps: Int = Field(ge=0, description="Number of steps.")
    weight: Int = Field(default=0, ge=0, le=100, description="The current step's weight.")
    canary_replicas: Int = Field(default=0, ge=0, description="Replicas of the canary Deployment.")
    stable_replicas: Int = Field(default=0, ge=0, description="Replicas of the stable Deployment.")
    traffic_percent: Int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Ready canary pods / all ready pods: the share of new connections the Service sends the canary (a "
            "kept-alive connection stays on its pod)."
        ),
    )
    step_entered_at: Str | None = Field(
        default=None, max_length=64, description="When the step was entered (its progress deadline counts from here)."
    )
    step_started_at: Str | None = Field(
        default=None,
        max_length=64,
        description="When every canary replica of the step was first ready (its pause counts from here; RFC 3339).",
    )
    measurement: CanaryMeasurement | None = Field(default=None, description="The gates' inputs in this step.")
    message: Str = Field(default="", max_length=1024, description="What the canary waits for, or why it stopped.")
    summary: Str = Field(default="", max_length=64, description="Short form for kubectl get.")


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
    autoscaling: AutoscalingStatus | None = Field(default=None, description="The autoscaler's reading and decision.")
    canary: CanaryStatus | None = Field(default=None, description="The canary rollout (strategy Canary).")


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
