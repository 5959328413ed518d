"""The contract between the operator and the runtime: every name, code and format both sides must agree on.

The operator builds pods that run ``neuron-runtime`` and reads back what the runtime reports; the two are released
together but run in different images, so a name spelled twice drifts. Everything they share is defined here, once:

- the environment variables the operator sets (``COMPILE_REQUEST_ENV``, ``GC_KEEP_ENV``, ``TERMINATION_LOG_ENV``,
  the ``ENV_PREFIX`` of ``config.ServeSettings`` and ``config.S3Connection``);
- the failure reasons (``CompileFailure``, ``ServeRefusal``: the operator's condition vocabulary includes every one)
  and the exit code of each (``exit_code``), which the compile Job's ``podFailurePolicy`` is built from
  (``permanent_compile_exit_codes``);
- the one-line JSON termination message (``TerminationMessage`` and its kinds ``Failure``, ``CompileResult``,
  ``GcResult``): the runtime writes it with ``line()``, the operator reads it with ``parse()``;
- what the operator's probes and metrics reader call: the health paths and the metric families;
- the prefix of the parity line the runtime prints when its parity gate passed.

The serving and compile settings themselves are ``neuron_runtime.config`` (``ServeSettings``, ``CompileRequest``).
A test (``tests/test_contract.py``) fails when one of these literals appears anywhere else in ``operator/`` or
``runtime/``. This module imports only pydantic: the operator image has no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# ------------------------------------------------------------------------------------------ environment

#: Prefix of every ``ServeSettings`` variable; nested fields join with ``ENV_NESTED_DELIMITER``.
ENV_PREFIX = "NEURON_RUNTIME_"
ENV_NESTED_DELIMITER = "__"
#: ``S3Connection``'s variables (``NEURON_RUNTIME_S3__ENDPOINT_URL``, ...), the same for compile, gc and serve.
S3_ENV_PREFIX = f"{ENV_PREFIX}S3{ENV_NESTED_DELIMITER}"
#: The compile Job's ``CompileRequest``, as JSON.
COMPILE_REQUEST_ENV = f"{ENV_PREFIX}COMPILE_REQUEST"
#: The GC Job's keep list (a JSON list of cache keys); a long list continues in ``<name>_1``, ``<name>_2``, ...
GC_KEEP_ENV = f"{ENV_PREFIX}GC_KEEP"
#: Where the termination message goes when not ``DEFAULT_TERMINATION_LOG`` (tests; a pod uses the default).
TERMINATION_LOG_ENV = f"{ENV_PREFIX}TERMINATION_LOG"
#: Kubelet's default ``terminationMessagePath``.
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

# ------------------------------------------------------------------------------------------ HTTP and metrics

#: OIP v2 health endpoints (the serving pod's startup/readiness and liveness probes).
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
#: Prometheus text exposition (the operator's autoscaler and canary gates read it through the pod proxy).
METRICS_PATH = "/metrics"
#: The metric families the operator reads (``neuron_operator.resources.loadmetrics``).
METRIC_REQUESTS = "neuron_runtime_requests_total"  # counter, label code = HTTP status
METRIC_GRPC_REQUESTS = "neuron_runtime_grpc_requests_total"  # counter, label code = gRPC status name
METRIC_REQUEST_DURATION = "neuron_runtime_request_duration_seconds"  # histogram
METRIC_IN_FLIGHT = "neuron_runtime_requests_in_flight"  # gauge
METRIC_QUEUED_ROWS = "neuron_runtime_queue_depth_rows"  # gauge

#: ``neuron-runtime serve`` prints ``<prefix> <json report>`` on stdout when its parity gate passed; the operator
#: reads it from the pod's log into ``status.parity``.
PARITY_LOG_PREFIX = "NEURON_RUNTIME_PARITY"

# ------------------------------------------------------------------------------------------ reasons and exit codes

EXIT_OK = 0


class CompileFailure(str, Enum):
    """Why ``neuron-runtime compile`` (or ``gc``) failed; ``exit_code`` is the process's exit status."""

    BAD_REQUEST = "BadRequest"  # the compile request did not parse
    NEURON_MISSING = "NeuronMissing"  # the image lacks the target's Neuron framework package
    UNSUPPORTED_ARCHITECTURE = "UnsupportedArchitecture"  # e.g. an inf1 graph above the 2 GB limit
    SOURCE_FAILED = "SourceFailed"  # the model or weights could not be fetched, or the sha256 did not match
    TRACE_FAILED = "TraceFailed"  # tracing/compiling the model raised
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"  # S3 refused the credentials or the operation (source or storage)
    STORAGE_NOT_FOUND = "StorageNotFound"  # the artifact bucket does not exist
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # the S3 endpoint did not answer (retried by the Job's backoff)
    INTERNAL_ERROR = "InternalError"  # anything else

    @property
    def exit_code(self) -> int:
        return _COMPILE_EXIT_CODES[self]

    @property
    def permanent(self) -> bool:
        """Retrying cannot fix it: the compile Job fails at once instead of burning its backoff."""
        return self in _PERMANENT_COMPILE_FAILURES


class ServeRefusal(str, Enum):
    """Why ``neuron-runtime serve`` refused to serve, or stopped (the pod restarts); ``exit_code`` as above."""

    INVALID_SETTINGS = "InvalidSettings"
    ARTIFACT_INVALID = "ArtifactInvalid"
    INCOMPATIBLE_RUNTIME = "IncompatibleRuntime"
    PARITY_FAILED = "ParityFailed"
    INVALID_PLACEMENT = "InvalidPlacement"
    WORKER_CRASH_LOOP = "WorkerCrashLoop"  # worker processes died more often than `worker_restarts` allows
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"  # S3 refused the credentials when downloading the artifact
    STORAGE_NOT_FOUND = "StorageNotFound"  # the artifact's objects are not in the bucket (deleted, other endpoint)
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # the S3 endpoint did not answer

    @property
    def exit_code(self) -> int:
        return _SERVE_EXIT_CODES[self]


_COMPILE_EXIT_CODES: Mapping[CompileFailure, int] = {
    CompileFailure.INTERNAL_ERROR: 1,
    CompileFailure.BAD_REQUEST: 2,
    CompileFailure.SOURCE_FAILED: 3,
    CompileFailure.TRACE_FAILED: 4,
    CompileFailure.NEURON_MISSING: 5,
    CompileFailure.UNSUPPORTED_ARCHITECTURE: 8,
    CompileFailure.STORAGE_ACCESS_DENIED: 9,
    CompileFailure.STORAGE_NOT_FOUND: 9,
    CompileFailure.STORAGE_UNAVAILABLE: 10,
}
_PERMANENT_COMPILE_FAILURES = frozenset(
    {
        CompileFailure.BAD_REQUEST,
        CompileFailure.SOURCE_FAILED,
        CompileFailure.NEURON_MISSING,
        CompileFailure.UNSUPPORTED_ARCHITECTURE,
        CompileFailure.STORAGE_ACCESS_DENIED,
        CompileFailure.STORAGE_NOT_FOUND,
    }
)
_SERVE_EXIT_CODES: Mapping[ServeRefusal, int] = {
    ServeRefusal.INVALID_SETTINGS: 2,
    ServeRefusal.INVALID_PLACEMENT: 2,
    ServeRefusal.ARTIFACT_INVALID: 3,
    ServeRefusal.STORAGE_NOT_FOUND: 3,  # like any artifact serve cannot use
    ServeRefusal.PARITY_FAILED: 6,
    ServeRefusal.INCOMPATIBLE_RUNTIME: 7,
    ServeRefusal.WORKER_CRASH_LOOP: 8,
    ServeRefusal.STORAGE_ACCESS_DENIED: 9,
    ServeRefusal.STORAGE_UNAVAILABLE: 10,
}


def permanent_compile_exit_codes() -> tuple[int, ...]:
    """Exit codes of ``neuron-runtime compile`` that retrying cannot fix (the compile Job's ``podFailurePolicy``
    fails the Job on them). No retryable failure shares a code with a permanent one (``tests/test_contract.py``)."""
    return tuple(sorted({f.exit_code for f in CompileFailure if f.permanent}))


# ------------------------------------------------------------------------------------------ termination message

#: Kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096

_M = TypeVar("_M", bound="TerminationMessage")


class TerminationMessage(BaseModel):
    """The one-line JSON a runtime command writes where kubelet reads it (``terminationMessagePath``), and prints.

    The operator reads the last line of a container's ``state.terminated.message`` back with ``parse()`` of the kind
    it expects; fields it does not know (a newer runtime) are ignored, a missing or malformed field makes ``parse``
    return None (the operator then reports that the container left no usable result).
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    status: Literal["Succeeded", "Failed"]

    def line(self) -> str:
        """The message as one JSON line below ``TERMINATION_MESSAGE_LIMIT`` bytes (``_shorten`` makes it fit)."""
        message: TerminationMessage = self
        while True:
            text = json.dumps(message._json(), sort_keys=True, separators=(",", ":"))
            excess = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 1
            shorter = message._shorten(excess) if excess > 0 else None
            if shorter is None:
                return text
            message = shorter

    def _json(self) -> dict[str, Any]:
        return {"status": self.status, **self.model_dump(mode="json", by_alias=True, exclude_unset=True)}

    def _shorten(self, excess: int) -> TerminationMessage | None:
        """A copy at least ``excess`` bytes shorter, or None when nothing more can go."""
        return None

    @classmethod
    def parse(cls: type[_M], text: str | None) -> _M | None:
        """The message in the last line of ``text`` (a container's termination message), or None."""
        lines = (text or "").strip().splitlines()
        if not lines:
            return None
        try:
            return cls.model_validate_json(lines[-1])
        except ValidationError:
            return None


class Failure(TerminationMessage):
    """A command that failed: its reason (a ``CompileFailure`` or ``ServeRefusal`` value) and a message for
    people. A parity refusal adds the measured error and the tolerance."""

    status: Literal["Failed"] = "Failed"
    reason: str = Field(min_length=1)
    message: str = ""
    max_abs_error: float | str | None = Field(None, alias="maxAbsError")  # "inf"/"nan" in words (JSON has neither)
    atol: float | None = None
    rtol: float | None = None

    def _shorten(self, excess: int) -> TerminationMessage | None:
        if not self.message or self.message == "…":
            return None
        # JSON escapes non-ASCII text: drop characters in proportion to their escaped size (``line`` loops until the
        # line fits, so an uneven message converges too).
        per_char = len(json.dumps(self.message)) / len(self.message)
        drop = max(1, -(-int(excess + 16) // max(1, int(per_char))))
        return self.model_copy(update={"message": self.message[: max(0, len(self.message) - drop)] + "…"})


class CompileResult(TerminationMessage):
    """A compile that succeeded (or found its artifact already there: ``cached``)."""

    status: Literal["Succeeded"] = "Succeeded"
    cache_key: str = Field(alias="cacheKey", pattern=r"^[0-9a-f]{64}$")
    uri: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int | None = Field(None, alias="sizeBytes", ge=0)  # the graphs
    total_bytes: int | None = Field(None, alias="totalBytes", ge=0)  # every file, the manifest included
    compile_seconds: float | None = Field(None, alias="compileSeconds", ge=0)
    neuron_core_version: str | None = Field(None, alias="neuronCoreVersion")
    compiler_version: str | None = Field(None, alias="compilerVersion")
    torch_version: str | None = Field(None, alias="torchVersion")
    cached: bool = False
    max_abs_error: float | None = Field(None, alias="maxAbsError")


class GcResult(TerminationMessage):
    """What a GC run found and freed; ``expired`` lists the first artifacts (oldest first), ``expiredCount`` all."""

    status: Literal["Succeeded"] = "Succeeded"
    dry_run: bool = Field(alias="dryRun")
    root: str
    kept: int = Field(ge=0)
    retained: int = Field(ge=0)
    first_seen: int = Field(0, alias="firstSeen", ge=0)
    skipped: int = Field(0, ge=0)
    expired: list[dict[str, Any]] = Field(default_factory=list)
    expired_count: int = Field(alias="expiredCount", ge=0)
    leftovers: int = Field(0, ge=0)
    deleted_bytes: int = Field(0, alias="deletedBytes", ge=0)
    freed_or_reclaimable_bytes: int = Field(0, alias="freedOrReclaimableBytes", ge=0)

    #: Each listed artifact is about 150 bytes; the count is always complete.
    _EXPIRED_ENTRY_BYTES: ClassVar[int] = 150

    def _shorten(self, excess: int) -> TerminationMessage | None:
        if not self.expired:
            return None
        drop = max(1, -(-excess // self._EXPIRED_ENTRY_BYTES))
        return self.model_copy(update={"expired": self.expired[: max(0, len(self.expired) - drop)]})
