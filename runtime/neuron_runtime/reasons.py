"""The ``reason`` values the runtime writes into its one-line JSON termination message.

A compile Job's pod and a serving pod that refuses to serve end with ``{"status": "Failed", "reason": ...}``; the
operator copies the reason into the NeuronModel's / NeuronDeployment's conditions, so its vocabulary
(``neuron_operator.api.reasons.Reason``) includes every value here (a test ties the two).
"""

from __future__ import annotations

from enum import Enum


class CompileFailure(str, Enum):
    """Why ``neuron-runtime compile`` failed (one per exit code)."""

    BAD_REQUEST = "BadRequest"  # the compile request did not parse
    NEURON_MISSING = "NeuronMissing"  # the image lacks the target's Neuron framework package
    UNSUPPORTED_ARCHITECTURE = "UnsupportedArchitecture"  # e.g. an inf1 graph above the 2 GB limit
    SOURCE_FAILED = "SourceFailed"  # the model or weights could not be fetched, or the sha256 did not match
    TRACE_FAILED = "TraceFailed"  # tracing/compiling the model raised
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"  # S3 refused the credentials or the operation (source or storage)
    STORAGE_NOT_FOUND = "StorageNotFound"  # the artifact bucket does not exist
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # the S3 endpoint did not answer (retried by the Job's backoff)
    INTERNAL_ERROR = "InternalError"  # anything else


class ServeRefusal(str, Enum):
    """Why ``neuron-runtime serve`` refused to serve, or stopped (the pod restarts)."""

    INVALID_SETTINGS = "InvalidSettings"
    ARTIFACT_INVALID = "ArtifactInvalid"
    INCOMPATIBLE_RUNTIME = "IncompatibleRuntime"
    PARITY_FAILED = "ParityFailed"
    INVALID_PLACEMENT = "InvalidPlacement"
    WORKER_CRASH_LOOP = "WorkerCrashLoop"  # worker processes died more often than `worker_restarts` allows
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"  # S3 refused the credentials when downloading the artifact
    STORAGE_NOT_FOUND = "StorageNotFound"  # the artifact's objects are not in the bucket (deleted, other endpoint)
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # the S3 endpoint did not answer
