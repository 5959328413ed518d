"""Typed configuration shared by the operator and the runtime: compile requests and serving settings.

This is the contract between `neuron_operator` (which builds compile Jobs and serving Deployments) and the runtime
in the pod. It must never import torch: the operator image does not have it. Everything here is plain pydantic,
validated eagerly so that a bad spec fails with an error naming the field, before any pod is started.

- `CompileRequest` describes one compilation; `cache_key()` is the content address of its artifact.
- `ServeSettings` is read by `neuron-runtime serve` from `NEURON_RUNTIME_*` env vars (nested with `__`);
  `to_env()` is what the operator writes onto the Deployment, and reproduces the settings exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from neuron_runtime.contract import DEFAULT_TERMINATION_LOG, ENV_NESTED_DELIMITER, ENV_PREFIX, S3_ENV_PREFIX

ARTIFACT_FORMAT_VERSION = 3
"""Bumped whenever the artifact layout or the manifest schema changes (3: one graph per batch size as well)."""

CACHE_KEY_VERSION = 2
"""Prefix of every cache key. It stays put while this runtime still reads the artifacts older runtimes wrote
(format 2 manifests are read as single-batch-size artifacts), so existing artifacts keep their key; bump it when
a request must compile anew."""

MANIFEST_NAME = "manifest.json"


Target = Literal["inf1", "inf2", "trn1", "trn2", "cpu"]
DType = Literal["float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]

NEURON_CORE_VERSIONS: dict[str, str | None] = {"inf1": "v1", "inf2": "v2", "trn1": "v2", "trn2": "v3", "cpu": None}
"""NeuronCore generation each target compiles for (`None` = plain CPU TorchScript)."""

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not _SHA256_RE.match(value):
        raise ValueError("must be 64 lowercase hex characters (a sha256 digest)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Placement(_Strict):
    """How model copies map onto the cores this pod can see (`NEURON_RT_VISIBLE_CORES`).

    `pinned`: `workers` copies, each on `cores_per_worker` consecutive visible cores.
    `multicore`: one copy replicated over all visible cores (`torch_neuronx.multicore_context`), one executor per core;
    `workers` and `cores_per_worker` are then ignored.
    """

    workers: int = Field(1, ge=1, le=128)
    cores_per_worker: int = Field(1, ge=1, le=128)
    mode: Literal["pinned", "multicore"] = "pinned"


class Batching(_Strict):
    """Server-side dynamic batching (per model, per input-shape bucket).

    A batch is dispatched when it holds `max_batch_size` rows (or exactly a preferred size), when its oldest request has
    waited `max_delay_ms`, or (`idle_dispatch`) at once when a worker is idle. `max_queue` bounds the queued *rows* (a
    request of shape [k, ...] is k rows); beyond it requests get 429. `timeout_ms` is the per-request deadline (504
    after it).
    """

    max_batch_size: int = Field(8, ge=1)
    max_delay_ms: float = Field(5.0, ge=0.0)
    max_queue: int = Field(256, ge=1)
    timeout_ms: int = Field(30000, ge=1)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    idle_dispatch: bool | None = Field(
        None,
        description="send a partial batch at once when a worker is idle instead of waiting max_delay_ms for it to "
        "fill (requests that arrive while every worker is busy still batch up); unset: on when the artifact has "
        "several traced batch sizes (a partial batch runs a smaller graph), off with one (a lone request would pay "
        "the whole graph, and closed-loop clients fall out of step: 30 req/s at 2 clients on the bs 8 MLP with it, "
        "mean batch 1.0)",
    )

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _preferred_sorted(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("every preferred batch size must be >= 1")
        return sorted(set(value))

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Batching:
        too_big = [v for v in self.preferred_batch_sizes if v > self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}")
        if self.max_queue < self.max_batch_size:
            raise ValueError(f"max_queue {self.max_queue} must be >= max_batch_size {self.max_batch_size}")
        return self


class Parity(_Strict):
    """The serving pod's parity gate: every graph vs the eager reference outputs, on the device, before ready.

    An element passes when |got - expected| <= atol + rtol * |expected|. `None` takes the default for the
    precision the artifact computes in (its auto-cast setting; see `neuron_runtime.parity.DEFAULT_TOLERANCES`).
    """

    enabled: bool = True
    atol: float | None = Field(None, ge=0.0, le=1e6)
    rtol: float | None = Field(None, ge=0.0, le=1e6)


class TensorSpec(_Strict):
    """One model input; `shape[0]` is the batch dimension (the traced batch size is `CompileRequest.batch_size`)."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][\w.\-]*$")
    shape: list[int] = Field(min_length=1)
    dtype: DType

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"every dimension must be >= 1, got {value}")
        return value


class Buckets(_Strict):
    """Shape buckets along one non-batch axis (e.g. sequence length): one traced graph per size."""

    input: str | None = None
    axis: int = Field(ge=1)
    sizes: list[int] = Field(min_length=1)

    @field_validator("sizes")
    @classmethod
    def _ascending_unique(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("bucket sizes must be >= 1")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"bucket sizes must be ascending and unique, got {value}")
        return value


class TorchScriptSource(_Strict):
    kind: Literal["torchscript"] = "torchscript"
    uri: str = Field(min_length=1)
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str | None) -> str | None:
        return _check_sha256(value)


class PythonSource(_Strict):
    kind: Literal["python"] = "python"
    factory: str = Field(description="`pkg.module:function` returning a torch.nn.Module")
    args: dict[str, Any] = Field(default_factory=dict)
    weights_uri: str | None = None
    weights_sha256: str | None = None

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str) -> str:
        if not _FACTORY_RE.match(value):
            raise ValueError(f"must look like 'pkg.module:function', got {value!r}")
        return value

    @field_validator("weights_sha256")
    @classmethod
    def _check_weights_sha256(cls, value: str | None) -> str | None:
        return _check_sha256(value)


Source = Annotated[TorchScriptSource | PythonSource, Field(discriminator="kind")]


RESERVED_COMPILER_FLAGS = ("--target", "--auto-cast", "--optlevel", "-O", "--fast-math", "--fp32-cast")
"""Prefixes of compiler flags that `args` may not carry: the runtime sets them from `target`, `auto_cast`,
`auto_cast_type` and `opt_level` (neuronx-cc), or from `auto_cast` + `auto_cast_type` (neuron-cc `--fast-math`, and
its older alias `--fp32-cast`, which overrides `--fast-math`'s casting: SDK:compiler/neuron-cc/
command-line-reference.rst). A second copy would contradict those fields, or fork the cache key for one artifact.
The operator's CRD rejects the same list (`neuron_operator.api.model.RESERVED_COMPILER_FLAGS`; a test keeps them equal).
"""

INF1_AUTO_CAST_TYPES = ("bf16", "fp16")
"""What neuron-cc (inf1) can cast FP32 to: its `--fast-math` has BF16 and FP16 casts only, no TF32 or FP8."""

INF1_OPT_LEVEL = 2
"""neuron-cc has no optimisation-level flag (SDK:compiler/neuron-cc/command-line-reference.rst lists none): inf1
requests must leave `opt_level` at its default, so that no two inf1 cache keys name the same artifact."""


class CompilerOptions(_Strict):
    """Neuron compiler options. `auto_cast` is always passed explicitly (its default changed in SDK 2.27)."""

    args: list[str] = Field(default_factory=list)
    auto_cast: Literal["none", "matmult", "all"] = "none"
    auto_cast_type: Literal["bf16", "fp16", "tf32", "fp8_e4m3"] = "bf16"
    opt_level: Literal[1, 2, 3] = 2

    @field_validator("args")
    @classmethod
    def _no_reserved_flags(cls, value: list[str]) -> list[str]:
        reserved = [arg for arg in value if arg.startswith(RESERVED_COMPILER_FLAGS)]
        if reserved:
            raise ValueError(
                f"{reserved} may not be passed in compiler args ({', '.join(RESERVED_COMPILER_FLAGS)} are reserved): "
                "use target, auto_cast, auto_cast_type and opt_level"
            )
        return value


class CompileRequest(_Strict):
    """Everything that determines a compiled artifact; `cache_key()` hashes all of it."""

    source: Source
    inputs: list[TensorSpec] = Field(min_length=1)
    batch_size: int = Field(ge=1, le=4096)
    batch_sizes: list[int] = Field(
        default_factory=list,
        description="batch sizes to trace (one graph each, with every bucket), ascending, the largest equal to "
        "batch_size; empty: batch_size only. Left out of the serialised request (and the cache key) when empty.",
    )
    buckets: Buckets | None = None
    target: Target
    dynamic_batch: bool = False
    compiler: CompilerOptions = Field(default_factory=CompilerOptions)
    runtime_image: str | None = None

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"every batch size must be >= 1, got {value}")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"batch sizes must be ascending and unique, got {value}")
        batch_size = info.data.get("batch_size")
        if value and batch_size is not None and value[-1] != batch_size:
            raise ValueError(f"the largest batch size {value[-1]} must equal batch_size={batch_size}")
        # [batch_size] alone is today's single graph: the same request, hence the same cache key.
        return [] if value == [batch_size] else value

    @model_serializer(mode="wrap")
    def _omit_default_batch_sizes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.batch_sizes:
            data.pop("batch_sizes", None)  # requests that do not use it keep their JSON, hence their cache key
        return data

    def traced_batch_sizes(self) -> list[int]:
        """Every batch size a graph is traced at, ascending (the largest is `batch_size`)."""
        return list(self.batch_sizes) or [self.batch_size]

    @model_validator(mode="after")
    def _consistent(self) -> CompileRequest:
        if self.target == "inf1":
            if self.compiler.auto_cast_type not in INF1_AUTO_CAST_TYPES:
                raise ValueError(
                    f"compiler.auto_cast_type {self.compiler.auto_cast_type!r} is not available for target inf1: "
                    "neuron-cc casts FP32 to bf16 or fp16 only; use target inf2, trn1 or trn2 for tf32 or fp8_e4m3"
                )
            if self.compiler.opt_level != INF1_OPT_LEVEL:
                raise ValueError(
                    f"compiler.opt_level {self.compiler.opt_level} is not available for target inf1: neuron-cc has "
                    f"no optimisation level; leave opt_level at {INF1_OPT_LEVEL}"
                )
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        for spec in self.inputs:
            if spec.shape[0] != self.batch_size:
                raise ValueError(
                    f"inputs[{spec.name}].shape[0]={spec.shape[0]} must equal batch_size={self.batch_size}"
                )
        if self.buckets is not None:
            targets = self.bucketed_inputs()
            if self.buckets.input is not None and self.buckets.input not in names:
                raise ValueError(f"buckets.input {self.buckets.input!r} is not one of the inputs {names}")
            for spec in self.inputs:
                if spec.name in targets and self.buckets.axis >= len(spec.shape):
                    raise ValueError(
                        f"buckets.axis={self.buckets.axis} is out of range for input {spec.name} "
                        f"of rank {len(spec.shape)}"
                    )
        return self

    def bucketed_inputs(self) -> set[str]:
        """Names of the inputs whose `buckets.axis` varies with the bucket (empty without buckets)."""
        if self.buckets is None:
            return set()
        if self.buckets.input is None:
            return {i.name for i in self.inputs}
        return {self.buckets.input}

    def canonical_json(self) -> str:
        """Canonical JSON of every field (sorted keys, no whitespace; `batch_sizes` only when set): the input of
        `cache_key`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def cache_key(self) -> str:
        payload = f"v{CACHE_KEY_VERSION}:{self.canonical_json()}"
        return hashlib.sha256(payload.encode()).hexdigest()


S3_ENDPOINT_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
"""An S3-compatible endpoint: http(s)://host[:port][/path]; no query, and no user:password@ (it would end up in
status and logs: credentials go in a Secret)."""


class S3Connection(_Strict):
    """How the runtime reaches S3 for `s3://` URIs (sources, artifact storage).

    No credentials here: boto3's default chain finds them (EKS Pod Identity, IRSA, `AWS_ACCESS_KEY_ID` /
    `AWS_SECRET_ACCESS_KEY` env vars from a Secret, an instance profile). Not part of the cache key: where an
    artifact is stored does not change what it is.
    """

    endpoint_url: str | None = Field(
        None, max_length=2048, pattern=S3_ENDPOINT_PATTERN, description="S3-compatible endpoint"
    )
    region: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    force_path_style: bool = Field(False, description="https://endpoint/bucket/key instead of bucket.endpoint")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Connection:
        """The connection from `NEURON_RUNTIME_S3__*` env vars (unset: AWS defaults)."""
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            value = environ.get(f"{S3_ENV_PREFIX}{name.upper()}")
            if value is not None and value != "":
                data[name] = value
        return cls.model_validate(data)

    def to_env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None and value is not False:
                out[f"{S3_ENV_PREFIX}{name.upper()}"] = _env_value(value)
        return out


def artifact_path(root: Path, cache_key: str) -> Path:
    """Where the artifact of `cache_key` lives under an artifact root."""
    return root / cache_key


class ServeSettings(BaseSettings):
    """Settings of `neuron-runtime serve`, from `NEURON_RUNTIME_*` env vars (nested fields with `__`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid", frozen=True
    )

    model_name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    artifact_dir: Path
    artifact_uri: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^s3://",
        description="s3://bucket/prefix/<cache key>: download the artifact into artifact_dir (verifying every "
        "sha256) before loading; unset: artifact_dir already holds it (a volume)",
    )
    s3: S3Connection = Field(default_factory=S3Connection, description="how to reach artifact_uri")
    expected_sha256: str | None = Field(
        None, description="sha256 of the artifact's manifest.json (the artifact digest the operator pins)"
    )
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    placement: Placement = Field(default_factory=Placement)
    batching: Batching = Field(default_factory=Batching)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    warmup_runs: int = Field(2, ge=0, le=100, description="runs of every bucket on every worker before ready")
    parity: Parity = Field(default_factory=Parity)
    termination_log: Path | None = Field(
        None,
        description=f"where a refusal to serve is written for kubelet; default {DEFAULT_TERMINATION_LOG} if present",
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0.0,
        description="after SIGTERM: keep serving this long (not ready; every answer closes its connection, so "
        "kept-alive clients reconnect through the Service) while endpoints drop the pod",
    )
    drain_timeout_s: float = Field(
        20.0,
        ge=0.0,
        description="after SIGTERM (and shutdown_delay_s): longest wait for in-flight requests; the operator keeps "
        "shutdown_delay_s + drain_timeout_s + 5 s below the pod's terminationGracePeriodSeconds",
    )
    grpc_port: int = Field(8001, ge=0, le=65535, description="OIP v2 gRPC (KServe v2 GRPCInferenceService) port")
    read_timeout_s: float = Field(
        15.0,
        gt=0.0,
        description="longest time a client may take to send a request's body once its headers arrived (a slow or "
        "stalled client gets 408 and does not hold the drain)",
    )
    idle_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="a connection with no request in progress (idle keep-alive, or headers still incomplete) is "
        "closed after this",
    )
    max_json_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="largest JSON request (tensor data in JSON); bigger tensors go as binary data "
        "(Inference-Header-Content-Length), up to max_request_bytes",
    )
    worker_restarts: int = Field(
        3,
        ge=0,
        le=100,
        description="worker deaths tolerated within worker_restart_window_s; one more ends the process with a "
        "termination message (reason WorkerCrashLoop) so Kubernetes restarts the pod",
    )
    worker_restart_window_s: float = Field(300.0, gt=0.0)
    pin_cpu_threads: bool = Field(True, description="cpu target: pin each worker to its cores")
    worker_backend: Literal["auto", "thread", "process"] = Field(
        "auto",
        description="auto: worker processes on cpu with pinned placement (no GIL sharing), threads otherwise",
    )

    @field_validator("expected_sha256")
    @classmethod
    def _check_expected_sha256(cls, value: str | None) -> str | None:
        return _check_sha256(value)

    def to_env(self) -> dict[str, str]:
        """The env vars that reproduce these settings exactly (what the operator puts on the Deployment)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            key = f"{ENV_PREFIX}{name.upper()}"
            if value is None or (name == "s3" and self.artifact_uri is None):  # no S3: no S3 variables
                continue
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    if subvalue is None:
                        continue
                    subkey = f"{key}{ENV_NESTED_DELIMITER}{sub.upper()}"
                    env[subkey] = _env_value(subvalue)
            else:
                env[key] = _env_value(value)
        return env


def _env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
