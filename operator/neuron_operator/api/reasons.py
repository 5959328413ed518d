"""The one reason vocabulary: every ``reason`` the operator writes, and which condition of which kind may carry it.

``Reason`` is the only source of reason strings in the operator (the runtime's termination-message reasons,
``neuron_runtime.contract``, are members too). ``MODEL_VOCABULARY`` and ``DEPLOYMENT_VOCABULARY`` say, per
condition type, which reasons it can have; the CRD descriptions of ``status.conditions`` are generated from
them (``conditions_doc``), and the status builder refuses a reason its kind's vocabulary does not list for
that condition. A test drives every observation the reconcilers can make and checks that the reasons
produced are exactly the documented ones (produced ⊆ documented ⊆ produced).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from neuron_operator.api.common import ConditionType as C
from neuron_runtime.contract import CompileFailure, ServeRefusal


class Reason(StrEnum):
    """Machine-readable ``reason`` values (CamelCase) of conditions, failures and Events."""

    # shared
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    # architecture fit (NeuronModel)
    FITS = "Fits"
    POOR_FIT = "PoorFit"
    UNSUPPORTED_ARCHITECTURE = "UnsupportedArchitecture"
    # compiling (NeuronModel)
    COMPILING = "Compiling"
    COMPILED = "Compiled"
    CACHE_HIT = "CacheHit"
    ARTIFACT_CLAIM_MISSING = "ArtifactClaimMissing"
    SOURCE_CLAIM_MISSING = "SourceClaimMissing"
    COMPILE_FAILED = "CompileFailed"
    COMPILE_TIMEOUT = "CompileTimeout"
    NO_RESULT = "NoResult"
    OOM_KILLED = "OOMKilled"
    # a pod that cannot start (compile pods and serving pods)
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_START_FAILED = "ContainerStartFailed"
    VOLUME_MOUNT_FAILED = "VolumeMountFailed"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    # the runtime's compile failures (termination message of a compile Job)
    BAD_REQUEST = CompileFailure.BAD_REQUEST.value
    NEURON_MISSING = CompileFailure.NEURON_MISSING.value
    SOURCE_FAILED = CompileFailure.SOURCE_FAILED.value
    TRACE_FAILED = CompileFailure.TRACE_FAILED.value
    INTERNAL_ERROR = CompileFailure.INTERNAL_ERROR.value
    # S3 (compile Jobs and serving pods alike)
    STORAGE_ACCESS_DENIED = CompileFailure.STORAGE_ACCESS_DENIED.value
    STORAGE_NOT_FOUND = CompileFailure.STORAGE_NOT_FOUND.value
    STORAGE_UNAVAILABLE = CompileFailure.STORAGE_UNAVAILABLE.value
    # NeuronDeployment
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_NOT_READY = "ModelNotReady"
    MODEL_FAILED = "ModelFailed"
    INCOMPATIBLE_ARTIFACT = "IncompatibleArtifact"
    INSUFFICIENT_NEURON_CORES = "InsufficientNeuronCores"
    #: The Neuron scheduler extension refuses the replica's size on every allowed instance type large
    #: enough (trn1.32xlarge/trn1n.32xlarge take only 1, 4, 8 or 16 devices per pod).
    UNSUPPORTED_TOPOLOGY = "UnsupportedTopology"
    UNKNOWN_INSTANCE_TYPE = "UnknownInstanceType"
    APPLY_REJECTED = "ApplyRejected"
    ROLLING_OUT = "RollingOut"
    SCALING = "Scaling"
    SUSPENDED = "Suspended"
    SCALED_TO_ZERO = "ScaledToZero"
    REPLICAS_READY = "ReplicasReady"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    # canary rollouts (spec.rollout.strategy Canary)
    CANARY_PROGRESSING = "CanaryProgressing"
    CANARY_ABORTED = "CanaryAborted"
    # autoscaling (condition ScalingLimited)
    WITHIN_LIMITS = "WithinLimits"
    MAX_REPLICAS = "MaxReplicas"
    # the runtime's refusals to serve (termination message of a serving pod)
    INVALID_SETTINGS = ServeRefusal.INVALID_SETTINGS.value
    ARTIFACT_INVALID = ServeRefusal.ARTIFACT_INVALID.value
    INCOMPATIBLE_RUNTIME = ServeRefusal.INCOMPATIBLE_RUNTIME.value
    PARITY_FAILED = ServeRefusal.PARITY_FAILED.value
    INVALID_PLACEMENT = ServeRefusal.INVALID_PLACEMENT.value
    WORKER_CRASH_LOOP = ServeRefusal.WORKER_CRASH_LOOP.value
    # Events only (never a condition reason)
    ARTIFACT_CHANGED = "ArtifactChanged"
    SURGE = "Surge"
    IN_PLACE = "InPlace"
    ARTIFACTS_EXPIRED = "ArtifactsExpired"  # an artifact GC dry run found expired artifacts
    ARTIFACTS_COLLECTED = "ArtifactsCollected"  # an artifact GC run deleted expired artifacts
    ARTIFACT_GC_FAILED = "ArtifactGCFailed"  # an artifact GC Job failed
    SCALED_UP = "ScaledUp"  # the autoscaler raised spec.replicas
    SCALED_DOWN = "ScaledDown"  # the autoscaler lowered spec.replicas
    CANARY_STARTED = "CanaryStarted"  # a new template started as a canary
    CANARY_STEP_PASSED = "CanaryStepPassed"  # a canary step's gates held for its pause
    CANARY_PROMOTED = "CanaryPromoted"  # every step passed: the stable Deployment takes the new template
    CANARY_REVERTED = "CanaryReverted"  # the spec went back to the stable template during a canary


R = Reason
#: A compile pod that cannot start, or a compile that failed: the NeuronModel is Stalled with one of these.
COMPILE_POD_PROBLEMS: Final = (
    R.UNSCHEDULABLE,
    R.IMAGE_PULL_FAILED,
    R.CONTAINER_START_FAILED,
    R.VOLUME_MOUNT_FAILED,
)
COMPILE_FAILURES: Final = (
    R.COMPILE_FAILED,
    R.COMPILE_TIMEOUT,
    R.NO_RESULT,
    R.OOM_KILLED,
    R.BAD_REQUEST,
    R.NEURON_MISSING,
    R.SOURCE_FAILED,
    R.TRACE_FAILED,
    R.INTERNAL_ERROR,
    R.STORAGE_ACCESS_DENIED,
    R.STORAGE_NOT_FOUND,
    R.STORAGE_UNAVAILABLE,
    R.UNSUPPORTED_ARCHITECTURE,
)
#: Reasons that stop a NeuronModel until something changes.
MODEL_STALLED: Final = (
    R.INVALID_SPEC,
    R.UNSUPPORTED_ARCHITECTURE,
    R.ARTIFACT_CLAIM_MISSING,
    R.SOURCE_CLAIM_MISSING,
    *COMPILE_POD_PROBLEMS,
    *(r for r in COMPILE_FAILURES if r is not R.UNSUPPORTED_ARCHITECTURE),
)
#: The serving runtime's refusals (the pod restarts and never becomes ready).
SERVE_REFUSALS: Final = tuple(R(r.value) for r in ServeRefusal)
#: Serving pods that cannot start or keep crashing.
SERVING_POD_PROBLEMS: Final = (
    R.UNSCHEDULABLE,
    R.IMAGE_PULL_FAILED,
    R.CONTAINER_START_FAILED,
    R.VOLUME_MOUNT_FAILED,
    R.CRASH_LOOP_BACK_OFF,
    R.OOM_KILLED,
)
#: Placement that no allowed instance type can hold.
INFEASIBLE: Final = (
    R.INCOMPATIBLE_ARTIFACT,
    R.INSUFFICIENT_NEURON_CORES,
    R.UNSUPPORTED_TOPOLOGY,
    R.UNKNOWN_INSTANCE_TYPE,
)
DEPLOYMENT_STALLED: Final = (
    R.INVALID_SPEC,
    R.MODEL_NOT_FOUND,
    R.MODEL_FAILED,
    *INFEASIBLE,
    R.APPLY_REJECTED,
    R.PROGRESS_DEADLINE_EXCEEDED,
    *SERVING_POD_PROBLEMS,
    *SERVE_REFUSALS,
    R.CANARY_ABORTED,
)

#: One entry per condition type: (what it means, reasons it can carry), in the order the docs list them.
Vocabulary = dict[str, tuple[str, tuple[Reason, ...]]]

MODEL_VOCABULARY: Final[Vocabulary] = {
    C.READY: (
        "True once an artifact matching the spec is available",
        (R.COMPILED, R.CACHE_HIT, R.COMPILING, *MODEL_STALLED),
    ),
    C.RECONCILING: (
        "True while a compile Job for the latest generation runs or waits to start",
        (R.COMPILING, R.RECONCILED, *MODEL_STALLED),
    ),
    C.STALLED: (
        "True when progress needs a change: a spec edit, a missing claim created, a compile pod able to start",
        (R.RECONCILED, R.COMPILING, *MODEL_STALLED),
    ),
    C.ARTIFACT_READY: (
        "a compiled artifact matching the spec exists",
        (R.COMPILED, R.CACHE_HIT, R.COMPILING, *MODEL_STALLED),
    ),
    C.ARCHITECTURE_FIT: (
        "modelFamily and target suit NeuronCores",
        (R.FITS, R.POOR_FIT, R.UNSUPPORTED_ARCHITECTURE),
    ),
}

DEPLOYMENT_VOCABULARY: Final[Vocabulary] = {
    C.READY: (
        "True when every replica is ready on the current spec and artifact",
        (
            R.REPLICAS_READY,
            R.REPLICAS_UNAVAILABLE,
            R.ROLLING_OUT,
            R.CANARY_PROGRESSING,
            R.MODEL_NOT_READY,
            R.SUSPENDED,
            *DEPLOYMENT_STALLED,
        ),
    ),
    C.RECONCILING: (
        "True while the operator works towards the spec: a rollout, a canary, a scale, a model compiling",
        (
            R.ROLLING_OUT,
            R.CANARY_PROGRESSING,
            R.SCALING,
            R.MODEL_NOT_READY,
            R.RECONCILED,
            R.SUSPENDED,
            *DEPLOYMENT_STALLED,
        ),
    ),
    C.STALLED: (
        "True when progress needs a change (spec, model, image, capacity); Argo CD shows Degraded",
        (
            R.RECONCILED,
            R.ROLLING_OUT,
            R.CANARY_PROGRESSING,
            R.SCALING,
            R.MODEL_NOT_READY,
            R.SUSPENDED,
            *DEPLOYMENT_STALLED,
        ),
    ),
    C.ARTIFACT_READY: (
        "the referenced NeuronModel has an artifact for its current spec",
        (R.COMPILED, R.CACHE_HIT, R.MODEL_NOT_FOUND, R.MODEL_NOT_READY, R.MODEL_FAILED),
    ),
    C.SCHEDULABLE: (
        "some allowed instance type holds one replica, and the scheduler placed the pods",
        (R.FITS, R.INVALID_SPEC, *INFEASIBLE, R.UNSCHEDULABLE),
    ),
    C.AVAILABLE: (
        "at least max(1, replicas - maxUnavailable) replicas are available; False when scaled to zero",
        (R.REPLICAS_READY, R.REPLICAS_UNAVAILABLE, R.SUSPENDED, R.SCALED_TO_ZERO),
    ),
    C.SCALING_LIMITED: (
        "spec.autoscaling only: True when the autoscaler wants more replicas than maxReplicas or than the free "
        "NeuronCores hold (the message names the missing cores per instance type)",
        (R.WITHIN_LIMITS, R.MAX_REPLICAS, R.INSUFFICIENT_NEURON_CORES),
    ),
}


def conditions_doc(vocabulary: Vocabulary, stalled: tuple[Reason, ...]) -> str:
    """The description of ``status.conditions``, generated from the vocabulary.

    ``stalled`` (the reasons that make Stalled True) is listed once; a type that can carry all of them says
    "any Stalled reason" instead of repeating the list (Stalled itself: True with one of them, else False).
    """
    parts = []
    for type_, (meaning, reasons) in vocabulary.items():
        own = list(dict.fromkeys(r.value for r in reasons))
        if set(stalled) <= set(reasons):
            own = [r for r in own if r not in {s.value for s in stalled}] + ["any Stalled reason"]
        parts.append(f"{type_} ({meaning}; reasons {', '.join(own)})")
    stalled_list = ", ".join(dict.fromkeys(r.value for r in stalled))
    return (
        "Current state, one entry per type (Kubernetes conditions). Types: "
        + "; ".join(parts)
        + f". Stalled reasons (Stalled=True): {stalled_list}."
    )


def allowed(vocabulary: Vocabulary, type_: str, reason: str) -> bool:
    entry = vocabulary.get(type_)
    return entry is not None and reason in {r.value for r in entry[1]}
