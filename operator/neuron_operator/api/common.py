"""Building blocks shared by both custom resources: the camelCase base model, strict scalars, quantities,
conditions, a small ObjectMeta, scheduling types and failure records.

The pydantic models in ``neuron_operator.api`` are the single source of truth for the CRDs: ``crdgen`` turns
their JSON schema into structural OpenAPI, so every constraint here has to be expressible there too. That is
why scalars are *strict* (the apiserver never coerces ``"3"`` into ``3``), why cross-field rules are written
twice, once as CEL in ``x-kubernetes-validations`` (enforced at admission) and once as a pydantic validator
(enforced when the operator parses an object), and why the two are tested against each other on a real
apiserver (``tests/api``).

Nothing here does I/O or imports Kubernetes clients.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from neuron_runtime.config import S3_ENDPOINT_PATTERN as RUNTIME_S3_ENDPOINT_PATTERN

GROUP: Final = "neuron.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

#: A non-negative Kubernetes resource.Quantity: the OpenAPI pattern of k8s.io/apimachinery/pkg/api/resource
#: without the sign (negative CPU or memory is never meaningful here).
QUANTITY_PATTERN: Final = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: DNS-1123 label: names of Kubernetes objects this API refers to (PVCs, NeuronModels, ServiceAccounts).
DNS1123_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: DNS-1123 subdomain (ServiceAccount, PriorityClass and scheduler names).
DNS1123_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Hex SHA-256 digest (64 lowercase hex characters, no ``sha256:`` prefix).
SHA256_PATTERN: Final = r"^[a-f0-9]{64}$"
#: The shape of a URI (scheme://rest); which schemes are supported is a separate rule with its own message.
URI_PATTERN: Final = r"^[a-z][a-z0-9+.-]*://[^\s]+$"
#: The schemes the compile Job can fetch a model or weights from (``neuron_runtime.sources`` + pvc mounts).
SOURCE_SCHEMES: Final = ("file", "http", "https", "pvc", "s3")
SOURCE_SCHEME_CEL: Final = "^(" + "|".join(SOURCE_SCHEMES) + ")://"
#: ``s3://bucket`` or ``s3://bucket/key``: a general purpose bucket name (3-63 lowercase letters, digits, '.' and '-',
#: beginning and ending with a letter or digit), then an optional key.
S3_URI_PATTERN: Final = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
#: An S3-compatible endpoint: the runtime's own rule (``S3Connection.endpoint_url``), no user:password@.
S3_ENDPOINT_PATTERN: Final = RUNTIME_S3_ENDPOINT_PATTERN
S3_URI_MESSAGE: Final = (
    "must be s3://<bucket>/<key> with a valid bucket name (3-63 characters: lowercase letters, digits, '.' and '-', "
    "beginning and ending with a letter or digit) and no '..', '.' or empty path segment"
)


def s3_uri_cel(attr: str) -> str:
    """CEL: ``self.<attr>``, when an s3:// URI, names a valid bucket and a key the runtime accepts
    (``neuron_runtime.objectstore.S3Location.parse``)."""
    value = f"self.{attr}"
    return (
        f"!{value}.startsWith('s3://') || ({value}.matches('{S3_URI_PATTERN}') && !{value}.contains('..') && "
        f"!{value}.substring(5).contains('//') && !{value}.contains('/./') && !{value}.endsWith('/.'))"
    )


def s3_uri_problem(uri: str) -> bool:
    """The Python twin of ``s3_uri_cel``: True when an s3:// URI is refused."""
    rest = uri[len("s3://") :]
    return not re.match(S3_URI_PATTERN, uri) or ".." in uri or "//" in rest or "/./" in uri or uri.endswith("/.")


def source_scheme_message(field: str) -> str:
    """The admission message for a source URI whose scheme is not implemented."""
    return (
        f"{field}: supported schemes are file://, http://, https://, pvc://<claim>/<path> and s3://<bucket>/<key> "
        "(gs://, hf:// and oci:// sources are not implemented)"
    )


def s3_source_rule(field: str, attr: str) -> dict[str, str]:
    """CEL: an s3:// source names a valid bucket and a key."""
    value = f"self.{attr}"
    rule = s3_uri_cel(attr)
    return cel(
        f"!has({value}) || ({rule}) && !{value}.matches('^s3://[^/]*/?$')",
        f"{field}: {S3_URI_MESSAGE}",
        fieldPath=f".{attr}",
    )


def check_source_scheme(uri: str | None, field: str) -> None:
    if uri is None:
        return
    if uri.split("://", 1)[0] not in SOURCE_SCHEMES:
        raise ValueError(source_scheme_message(field))
    if uri.startswith("s3://") and (s3_uri_problem(uri) or re.match(r"^s3://[^/]*/?$", uri)):  # a source needs a key
        raise ValueError(f"{field}: {S3_URI_MESSAGE}")


#: Container image reference (loose: registry/repo[:tag][@digest]); the kubelet does the strict check.
IMAGE_PATTERN: Final = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$"

# Strict scalars: the apiserver accepts exactly these JSON types, so pydantic must not coerce either
# (a lax ``int`` would accept ``True`` and ``"3"``, which admission rejects).
Int = Annotated[int, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
#: A number as the apiserver takes one: an int or a float, never a string or a bool (pydantic's lax mode converts
#: "8" and true, which the apiserver refuses).
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]

#: A Kubernetes quantity: an integer or a string such as ``500m``, ``2Gi``, ``1.5``.
Quantity = Annotated[
    Annotated[int, Strict(), Field(ge=0)] | Annotated[str, Strict(), Field(pattern=QUANTITY_PATTERN, max_length=64)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

#: An absolute count or a percentage (rolling-update budgets), like ``IntOrString`` in apps/v1.
IntOrPercent = Annotated[
    Annotated[int, Strict(), Field(ge=0, le=1000)]
    | Annotated[str, Strict(), Field(pattern=r"^(100|[1-9]?[0-9])%$", max_length=4)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,
            "maximum": 1000,
            "pattern": r"^(100|[1-9]?[0-9])%$",
            "maxLength": 4,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

#: Free-form JSON object (kept verbatim by the apiserver). Used only where the content is defined elsewhere:
#: keyword arguments of a user's model factory, and core/v1 affinity terms (see ``Affinity``).
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``message`` must name the offending field."""
    return {"rule": rule, "message": message, **extra}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules; ``crdgen`` copies them into the CRD verbatim."""
    return {"x-kubernetes-validations": list(rules)}


class CamelModel(BaseModel):
    """Base of every API type: camelCase on the wire, snake_case in Python, unknown fields rejected.

    ``extra="forbid"`` mirrors ``kubectl``'s strict field validation, so pydantic and the apiserver agree on
    typos; ``model_dump(by_alias=True, exclude_none=True, mode="json")`` gives the manifest form.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=False,
    )

    def to_manifest(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, no nulls, JSON-compatible values."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    """Status of a condition, as in metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """Condition types used by NeuronModel and NeuronDeployment (see each kind's ``status.conditions``)."""

    #: Summary: the object does what its spec asks (artifact compiled / all replicas serving it).
    READY = "Ready"
    #: The operator is acting on the latest spec (compile Job running, rollout in progress).
    RECONCILING = "Reconciling"
    #: Progress stopped and will not resume without a change (invalid spec, compile failure, no capacity).
    STALLED = "Stalled"
    #: A compiled artifact matching the current spec exists in the cache.
    ARTIFACT_READY = "ArtifactReady"
    #: The model family, target and placement fit NeuronCore constraints.
    ARCHITECTURE_FIT = "ArchitectureFit"
    #: Some allowed instance type can hold one replica (cores, memory, core generation).
    SCHEDULABLE = "Schedulable"
    #: The autoscaler wants more replicas than it may create or than the free NeuronCores hold.
    SCALING_LIMITED = "ScalingLimited"
    #: At least ``replicas - maxUnavailable`` replicas are ready.
    AVAILABLE = "Available"


#: Kubernetes condition reason pattern (metav1.Condition).
REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
#: Kubernetes condition type pattern (metav1.Condition), without the optional DNS prefix length check.
CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)


class Condition(CamelModel):
    """One observation of the object's state, following the Kubernetes metav1.Condition convention."""

    model_config = ConfigDict(frozen=True)

    type: Str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description=(
            "Type of condition in CamelCase: Ready, Reconciling, Stalled, ArtifactReady, ArchitectureFit, "
            "Schedulable, Available. See the kind's status.conditions for which types it uses."
        ),
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: Str = Field(
        min_length=1,
        max_length=1024,
        pattern=REASON_PATTERN,
        description="Machine-readable CamelCase reason for the last transition, e.g. CompileFailed.",
    )
    message: Str = Field(
        default="",
        max_length=32768,
        description="Human-readable details about the last transition; may be empty.",
    )
    last_transition_time: datetime = Field(
        description="When the status last changed (not when the reason or message last changed).",
    )
    observed_generation: Int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation of the object the condition was computed from.",
    )


CONDITIONS_EXTRA: Final[dict[str, Any]] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class Failure(CamelModel):
    """The most recent failure, kept after the conditions move on so that it can still be diagnosed."""

    reason: Str = Field(
        max_length=1024,
        pattern=REASON_PATTERN,
        description="CamelCase reason: the Stalled reason it came from (see status.conditions).",
    )
    message: Str = Field(
        default="",
        max_length=32768,
        description="Human-readable details, the head of the failing component's own message.",
    )
    exit_code: Int | None = Field(
        default=None,
        ge=-255,
        le=255,
        description="Exit code of the failed container, when a container failed.",
    )
    time: datetime = Field(description="When the failure was observed.")


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta the operator reads; everything else is ignored (never rejected)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str | None = Field(default=None, description="Name of the object, unique within its namespace.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    generate_name: str | None = Field(default=None, description="Prefix for a server-generated name.")
    uid: str | None = Field(default=None, description="Server-assigned unique id.")
    resource_version: str | None = Field(default=None, description="Opaque version for optimistic locking.")
    generation: int | None = Field(default=None, description="Sequence number of the desired state (spec).")
    labels: dict[str, str] | None = Field(default=None, description="Labels of the object.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations of the object.")
    creation_timestamp: datetime | None = Field(default=None, description="When the object was created.")


# --------------------------------------------------------------------------------------------------
# Scheduling and resources
# --------------------------------------------------------------------------------------------------


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Which taint effect a toleration matches."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(CamelModel):
    """A core/v1 Toleration (typed, so admission catches typos instead of the Deployment controller)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "tolerations[].value must be empty when operator is Exists",
                fieldPath=".value",
            ),
            cel(
                "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
                "tolerations[].key may be empty only when operator is Exists (tolerate every taint)",
                fieldPath=".key",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerations[].tolerationSeconds requires effect NoExecute",
                fieldPath=".tolerationSeconds",
            ),
        )
    )

    key: Str | None = Field(
        default=None,
        max_length=316,
        description=("Taint key to tolerate, e.g. aws.amazon.com/neuron; empty with operator Exists matches all."),
    )
    operator: TolerationOperator | None = Field(
        default=None, description="Exists or Equal (the Kubernetes default when omitted is Equal)."
    )
    value: Str | None = Field(default=None, max_length=63, description="Taint value to match with Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: Int | None = Field(
        default=None,
        ge=0,
        description="With NoExecute: how long the pod stays bound after the taint appears.",
    )

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == TolerationOperator.EXISTS and self.value:
            raise ValueError("tolerations[].value must be empty when operator is Exists")
        if self.key is None and self.operator != TolerationOperator.EXISTS:
            raise ValueError("tolerations[].key may be empty only when operator is Exists (tolerate every taint)")
        if self.toleration_seconds is not None and self.effect != TaintEffect.NO_EXECUTE:
            raise ValueError("tolerations[].tolerationSeconds requires effect NoExecute")
        return self


TOLERATIONS_FIELD_DOC: Final = "Tolerations added to the pod (the aws.amazon.com/neuron taint is tolerated already)."


class ResourceList(CamelModel):
    """Amounts of CPU, memory and ephemeral storage. NeuronCores are not listed: the operator derives them."""

    cpu: Quantity | None = Field(default=None, description="CPU, in cores or millicores (e.g. 2, 500m).")
    memory: Quantity | None = Field(default=None, description="Memory, in bytes or with a suffix (e.g. 4Gi).")
    ephemeral_storage: Quantity | None = Field(
        default=None,
        alias="ephemeral-storage",
        description="Local ephemeral storage (e.g. 10Gi), as in core/v1 resource names.",
    )


class ResourceRequirements(CamelModel):
    """Requests and limits of a container (a subset of core/v1 ResourceRequirements)."""

    requests: ResourceList | None = Field(
        default=None, description="Minimum resources the scheduler reserves for the container."
    )
    limits: ResourceList | None = Field(default=None, description="Maximum resources the container may use.")


def _affinity_part(what: str) -> Any:
    return Field(
        default=None,
        description=(
            f"core/v1 {what}, passed to the pod unchanged and validated by the apiserver when the operator "
            "creates the Deployment (a failure there is reported in the Stalled condition)."
        ),
    )


class Affinity(CamelModel):
    """Pod affinity rules, merged with the node affinity the operator derives from spec.instanceTypes.

    The three parts are free-form on purpose: typing them would copy several hundred lines of the core/v1
    schema (label selectors, topology terms, weights) into this CRD, where they would drift from the
    apiserver's own definition. Their top-level keys are checked here; their content is checked by the
    apiserver when the operator writes the Deployment.
    """

    node_affinity: FreeForm | None = _affinity_part("NodeAffinity")
    pod_affinity: FreeForm | None = _affinity_part("PodAffinity")
    pod_anti_affinity: FreeForm | None = _affinity_part("PodAntiAffinity")


StringMap = Annotated[dict[Str, Annotated[str, Strict(), Field(max_length=4096)]], Field(max_length=64)]
