"""The one mapping from the API's types to the runtime's settings (``neuron_runtime.config``).

A NeuronModel's spec becomes the runtime's ``CompileRequest``; a NeuronDeployment's placement, batching, validation
and server become the runtime's ``ServeSettings``. Each pair of types has a ``FieldMap``: the API fields copied to
runtime fields (enums as their values, nested API types through their own map), the API fields that do not reach
the runtime (and why), and the runtime fields the API does not set (and where their value comes from).
``tests/operator/test_runtime_mapping.py`` requires every field of both sides to be in exactly one of those, so a
field added to the API (or to the runtime) without a decision fails the suite instead of silently never reaching the
pod; it also round-trips values through the env vars the pods read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel

from neuron_operator.api import deployment as api_dep
from neuron_operator.api import model as api_model
from neuron_runtime import config as rt

_R = TypeVar("_R", bound=BaseModel)


@dataclass(frozen=True)
class FieldMap(Generic[_R]):
    """How one API type maps onto one runtime type."""

    api: type[BaseModel]
    runtime: type[_R]
    #: API field -> runtime field, copied (an enum as its value, a nested API type through its own map).
    fields: Mapping[str, str]
    #: API fields that do not reach the runtime type, with where they go instead.
    api_only: Mapping[str, str] = field(default_factory=dict)
    #: Runtime fields this map does not set, with where their value comes from.
    runtime_only: Mapping[str, str] = field(default_factory=dict)

    def convert(self, obj: BaseModel, **overrides: Any) -> _R:
        """The runtime object of ``obj`` (API None = the runtime's default); ``overrides`` replace mapped values
        (e.g. a source URI as the compile pod sees it) or set ``runtime_only`` fields."""
        assert isinstance(obj, self.api), f"{type(obj).__name__} is not a {self.api.__name__}"
        data = {rt_name: _plain(getattr(obj, name)) for name, rt_name in self.fields.items()}
        data = {k: v for k, v in data.items() if v is not None}
        unknown = set(overrides) - set(self.fields.values()) - set(self.runtime_only)
        assert not unknown, f"overrides of fields {self.runtime.__name__} does not map: {unknown}"
        return self.runtime.model_validate({**data, **overrides})


def _plain(value: Any) -> Any:
    """An API value as the runtime takes it."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return MAPS[type(value)].convert(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


# ------------------------------------------------------------------------------------------ compile

_SOURCE_KIND: Final = {"kind": "the discriminator of the runtime's source union (fixed per type)"}
TORCHSCRIPT: Final = FieldMap(
    api_model.TorchScriptSource, rt.TorchScriptSource, _same("uri", "sha256"), runtime_only=_SOURCE_KIND
)
PYTHON: Final = FieldMap(
    api_model.PythonSource,
    rt.PythonSource,
    _same("factory", "args", "weights_uri", "weights_sha256"),
    runtime_only=_SOURCE_KIND,
)
TENSOR: Final = FieldMap(api_model.TensorSpec, rt.TensorSpec, _same("name", "shape", "dtype"))
BUCKETS: Final = FieldMap(api_model.Buckets, rt.Buckets, _same("input", "axis", "sizes"))
COMPILER: Final = FieldMap(
    api_model.CompilerSpec,
    rt.CompilerOptions,
    _same("args", "auto_cast", "auto_cast_type", "opt_level"),
    api_only={
        "image": "the compile Job's image, and CompileRequest.runtime_image (part of the cache key)",
        "resources": "the compile container's resources",
        "node_selector": "the compile pod's nodeSelector",
        "tolerations": "the compile pod's tolerations",
        "timeout_seconds": "the compile Job's activeDeadlineSeconds",
        "service_account_name": "the compile pod's service account",
    },
)
MODEL: Final = FieldMap(
    api_model.NeuronModelSpec,
    rt.CompileRequest,
    _same("inputs", "batch_size", "batch_sizes", "buckets", "target", "dynamic_batch", "compiler"),
    api_only={
        "source": "one of source.torchscript / source.python, mapped by TORCHSCRIPT or PYTHON (pvc:// URIs as the "
        "compile pod mounts them)",
        "model_family": "the operator's architecture fit check (resources.fit); not a compile input",
        "storage": "where the artifact is stored (the compile Job's --output-root); not part of what it is",
        "s3": "how the compile Job reaches S3 (env vars, credentials); not part of what the artifact is",
    },
    runtime_only={
        "source": "spec.source.torchscript or spec.source.python",
        "runtime_image": "spec.compiler.image, else the operator's image for the target",
    },
)

# ------------------------------------------------------------------------------------------ serving

PLACEMENT: Final = FieldMap(api_dep.Placement, rt.Placement, _same("workers", "cores_per_worker", "mode"))
BATCHING: Final = FieldMap(
    api_dep.Batching,
    rt.Batching,
    _same("max_batch_size", "max_delay_ms", "max_queue", "timeout_ms", "idle_dispatch", "preferred_batch_sizes"),
)
PARITY: Final = FieldMap(api_dep.Validation, rt.Parity, {"parity": "enabled", "atol": "atol", "rtol": "rtol"})

#: NeuronDeployment spec fields and the ServeSettings they become (through the maps above); the rest of the spec is
#: the pods' Kubernetes side.
SERVE_FROM_SPEC: Final[Mapping[str, str]] = {
    "placement": "placement",
    "batching": "batching",
    "validation": "parity",
}
SERVER_FIELDS: Final[Mapping[str, str]] = _same("port", "grpc_port")
SPEC_NOT_SERVED: Final[Mapping[str, str]] = {
    "model_ref": "resolved to the NeuronModel's artifact (model_name, artifact_dir/artifact_uri, expected_sha256)",
    "replicas": "the Deployment's replicas",
    "autoscaling": "the operator's autoscaler (writes spec.replicas)",
    "instance_types": "node affinity of the pods",
    "resources": "the runtime container's resources",
    "rollout": "the Deployment's update strategy, or the canary",
    "image": "the runtime container's image",
    "scheduler_name": "the pods' schedulerName",
    "suspend": "the Deployment's replicas (0)",
    "pod": "the pod template (labels, annotations, node selector, tolerations, affinity, service account)",
    "server": "port and grpc_port (SERVER_FIELDS)",
}
#: ServeSettings fields the NeuronDeployment spec does not set, and where their value comes from.
SERVE_NOT_FROM_SPEC: Final[Mapping[str, str]] = {
    "model_name": "the NeuronModel's name",
    "artifact_dir": "where the pod mounts (or downloads) the artifact",
    "artifact_uri": "the NeuronModel status' S3 artifact (unset for a volume)",
    "s3": "the NeuronModel's S3 connection",
    "expected_sha256": "the NeuronModel status' artifact digest",
    "shutdown_delay_s": "the operator's pod lifecycle (resources.serving.SHUTDOWN_DELAY_SECONDS)",
    "drain_timeout_s": "the operator's pod lifecycle (resources.serving.DRAIN_SECONDS)",
    "host": "runtime default: every interface of the pod",
    "log_level": "runtime default (INFO)",
    "max_request_bytes": "runtime default (64 MiB); not in v1alpha1",
    "warmup_runs": "runtime default (2); not in v1alpha1",
    "termination_log": "runtime default: kubelet's DEFAULT_TERMINATION_LOG",
    "read_timeout_s": "runtime default (15 s); not in v1alpha1",
    "idle_timeout_s": "runtime default (30 s); not in v1alpha1",
    "max_json_bytes": "runtime default (8 MiB); not in v1alpha1",
    "worker_restarts": "runtime default (3); not in v1alpha1",
    "worker_restart_window_s": "runtime default (300 s); not in v1alpha1",
    "pin_cpu_threads": "runtime default (pinned on cpu)",
    "worker_backend": "runtime default (auto)",
}

MAPS: Final[Mapping[type[BaseModel], FieldMap[Any]]] = {
    m.api: m for m in (TORCHSCRIPT, PYTHON, TENSOR, BUCKETS, COMPILER, MODEL, PLACEMENT, BATCHING, PARITY)
}


def serve_settings(spec: api_dep.NeuronDeploymentSpec, **artifact: Any) -> rt.ServeSettings:
    """The runtime's ServeSettings of a NeuronDeployment ``spec``; ``artifact`` sets the ``SERVE_NOT_FROM_SPEC``
    fields (the artifact and the pod lifecycle)."""
    unknown = set(artifact) - set(SERVE_NOT_FROM_SPEC)
    assert not unknown, f"not ServeSettings fields the spec leaves open: {unknown}"
    from_spec: dict[str, Any] = {rt_name: _plain(getattr(spec, name)) for name, rt_name in SERVE_FROM_SPEC.items()} | {
        rt_name: getattr(spec.server, name) for name, rt_name in SERVER_FIELDS.items()
    }
    return rt.ServeSettings(**from_spec, **artifact)


def compile_request(
    spec: api_model.NeuronModelSpec, source_uri: Mapping[str, str], runtime_image: str
) -> rt.CompileRequest:
    """The runtime's CompileRequest of a NeuronModel ``spec``; ``source_uri`` maps a source URI to what the compile
    pod reads (pvc:// claims are mounted as files), ``runtime_image`` is the compile image (part of the cache key)."""
    source: rt.TorchScriptSource | rt.PythonSource
    if spec.source.torchscript is not None:
        ts = spec.source.torchscript
        source = TORCHSCRIPT.convert(ts, uri=source_uri.get(ts.uri, ts.uri))
    else:
        py = spec.source.python
        assert py is not None  # the API guarantees exactly one source
        weights = source_uri.get(py.weights_uri, py.weights_uri) if py.weights_uri else None
        source = PYTHON.convert(py, weights_uri=weights)
    return MODEL.convert(spec, source=source, runtime_image=runtime_image)
