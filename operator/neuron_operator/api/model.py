"""NeuronModel: a PyTorch model to compile ahead of time for one NeuronCore generation (or CPU).

The spec is what the compile Job needs and maps 1:1 onto the runtime's
``neuron_runtime.config.CompileRequest`` (the mapping lives in ``neuron_operator.resources``; this module
never imports the runtime):

=====================================  ====================================================
NeuronModel.spec                       CompileRequest
=====================================  ====================================================
source.torchscript {uri, sha256}       source {kind: torchscript, uri, sha256}
source.python {factory, args,          source {kind: python, factory, args, weights_uri,
weightsUri, weightsSha256}             weights_sha256}
inputs[] {name, shape, dtype}          inputs[] {name, shape, dtype}
batchSize                              batch_size
batchSizes                             batch_sizes
buckets {input, axis, sizes}           buckets {input, axis, sizes}
target                                 target
dynamicBatch                           dynamic_batch
compiler {args, autoCast,              compiler {args, auto_cast, auto_cast_type, opt_level}
autoCastType, optLevel}
=====================================  ====================================================

``compiler.image`` becomes ``CompileRequest.runtime_image``. ``compiler.resources``, ``nodeSelector``,
``tolerations``, ``timeoutSeconds``, ``modelFamily`` and ``storage`` shape the compile Job and the
architecture-fit rules; they are not part of the request itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, Strict, model_validator

from neuron_operator.api.common import (
    CONDITIONS_EXTRA,
    DNS1123_SUBDOMAIN,
    IMAGE_PATTERN,
    S3_ENDPOINT_PATTERN,
    S3_URI_MESSAGE,
    SHA256_PATTERN,
    SOURCE_SCHEME_CEL,
    TOLERATIONS_FIELD_DOC,
    URI_PATTERN,
    Bool,
    CamelModel,
    Condition,
    ConditionStatus,
    ConditionType,
    Failure,
    Float,
    FreeForm,
    Int,
    ObjectMeta,
    ResourceRequirements,
    Str,
    StringMap,
    Toleration,
    cel,
    check_source_scheme,
    s3_source_rule,
    s3_uri_cel,
    s3_uri_problem,
    source_scheme_message,
    validations,
)
from neuron_operator.api.reasons import MODEL_STALLED, MODEL_VOCABULARY, conditions_doc
from neuron_operator.catalogue import NeuronCoreVersion, Target

KIND: Final = "NeuronModel"
PLURAL: Final = "neuronmodels"

MAX_INPUTS: Final = 16
MAX_RANK: Final = 8
MAX_DIM: Final = 1 << 20
MAX_BATCH_SIZE: Final = 1024
MAX_BATCH_SIZES: Final = 8
MAX_BUCKETS: Final = 32
MAX_COMPILER_ARGS: Final = 32
#: Compiler flags that have their own field; passing them in ``compiler.args`` would contradict it and fork the
#: cache key. ``--fast-math`` (and its older alias ``--fp32-cast``, which overrides it) is neuron-cc's casting switch,
#: set from autoCast/autoCastType for inf1 (aws-neuron-sdk compiler/neuron-cc/command-line-reference.rst).
#: Same tuple as ``neuron_runtime.config.RESERVED_COMPILER_FLAGS`` (a test keeps them equal).
RESERVED_COMPILER_FLAGS: Final = ("--target", "--auto-cast", "--optlevel", "-O", "--fast-math", "--fp32-cast")
#: What neuron-cc (inf1) can cast FP32 to: its ``--fast-math`` has BF16 and FP16 casts only.
INF1_AUTO_CAST_TYPES: Final = ("bf16", "fp16")
#: neuron-cc has no optimisation-level flag: inf1 models keep optLevel at its default.
INF1_OPT_LEVEL: Final = 2
PYTHON_FACTORY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
INPUT_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Relative path inside a volume: segments may not start with a dot, so ``.`` and ``..`` are impossible.
RELATIVE_PATH_PATTERN: Final = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"


class DType(StrEnum):
    """Element type of an example input tensor (the torch dtype of the same name)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT64 = "int64"
    INT32 = "int32"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"


class ModelFamily(StrEnum):
    """Architecture family; drives the ArchitectureFit rules (what compiles and runs well on NeuronCores)."""

    ENCODER = "encoder"
    DECODER = "decoder"
    SEQ2SEQ = "seq2seq"
    CNN = "cnn"
    RCNN = "rcnn"
    LSTM = "lstm"
    VIT = "vit"
    DIFFUSION = "diffusion"
    OTHER = "other"


class AutoCast(StrEnum):
    """neuronx-cc ``--auto-cast``: which operations may run in a lower precision."""

    NONE = "none"
    MATMULT = "matmult"
    ALL = "all"


class AutoCastType(StrEnum):
    """neuronx-cc ``--auto-cast-type``: the lower precision auto-cast uses."""

    BF16 = "bf16"
    FP16 = "fp16"
    TF32 = "tf32"
    FP8_E4M3 = "fp8_e4m3"


class ModelPhase(StrEnum):
    """Summary of the conditions for printer columns; never used for decisions."""

    PENDING = "Pending"
    COMPILING = "Compiling"
    READY = "Ready"
    FAILED = "Failed"


# --------------------------------------------------------------------------------------------------
# spec.source
# --------------------------------------------------------------------------------------------------


class TorchScriptSource(CamelModel):
    """A model already saved with ``torch.jit.save`` (scripted or traced on CPU)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"self.uri.matches('{SOURCE_SCHEME_CEL}')",
                source_scheme_message("spec.source.torchscript.uri"),
                fieldPath=".uri",
            ),
            s3_source_rule("spec.source.torchscript.uri", "uri"),
        )
    )

    uri: Str = Field(
        max_length=2048,
        pattern=URI_PATTERN,
        description=(
            "Where the TorchScript file is: https://, http://, file:// (inside the compile image), "
            "pvc://<claim>/<path> (a PersistentVolumeClaim in the model's namespace, mounted read-only) or "
            "s3://<bucket>/<key> (read with the identity and endpoint of spec.s3)."
        ),
    )
    sha256: Str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description=(
            "Expected SHA-256 of the file (64 hex characters); the compile fails with SourceFailed otherwise."
        ),
    )

    @model_validator(mode="after")
    def _scheme(self) -> TorchScriptSource:
        check_source_scheme(self.uri, "spec.source.torchscript.uri")
        return self


class PythonSource(CamelModel):
    """A model built by calling a Python function available in the runtime image."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.weightsSha256) || has(self.weightsUri)",
                "spec.source.python.weightsSha256 requires spec.source.python.weightsUri",
                fieldPath=".weightsSha256",
            ),
            cel(
                f"!has(self.weightsUri) || self.weightsUri.matches('{SOURCE_SCHEME_CEL}')",
                source_scheme_message("spec.source.python.weightsUri"),
                fieldPath=".weightsUri",
            ),
            s3_source_rule("spec.source.python.weightsUri", "weightsUri"),
        )
    )

    factory: Str = Field(
        max_length=256,
        pattern=PYTHON_FACTORY_PATTERN,
        description=(
            'Import path "package.module:function" of a function returning a torch.nn.Module, e.g. '
            "neuron_runtime.zoo:bert_like."
        ),
    )
    args: FreeForm | None = Field(
        default=None,
        description=(
            "Keyword arguments passed to the factory, as a JSON object (free-form: they are the "
            "arguments of a "
            'user function), e.g. {"vocab_size": 1000, "hidden": 64, "layers": 2}.'
        ),
    )
    weights_uri: Str | None = Field(
        default=None,
        max_length=2048,
        pattern=URI_PATTERN,
        description=("Optional state_dict to load into the built module (same URI schemes as torchscript.uri)."),
    )
    weights_sha256: Str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Expected SHA-256 of the weights file; requires weightsUri.",
    )

    @model_validator(mode="after")
    def _weights_digest_needs_uri(self) -> PythonSource:
        if self.weights_sha256 is not None and self.weights_uri is None:
            raise ValueError("spec.source.python.weightsSha256 requires spec.source.python.weightsUri")
        check_source_scheme(self.weights_uri, "spec.source.python.weightsUri")
        return self


class ModelSource(CamelModel):
    """Where the PyTorch model comes from: exactly one of torchscript or python."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.torchscript) != has(self.python)",
                "spec.source: set exactly one of spec.source.torchscript or spec.source.python",
            )
        )
    )

    torchscript: TorchScriptSource | None = Field(default=None, description="A saved TorchScript module.")
    python: PythonSource | None = Field(default=None, description="A Python factory function and its arguments.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.torchscript is None) == (self.python is None):
            raise ValueError("spec.source: set exactly one of spec.source.torchscript or spec.source.python")
        return self


# --------------------------------------------------------------------------------------------------
# spec.inputs, spec.buckets
# --------------------------------------------------------------------------------------------------

Dim = Annotated[int, Strict(), Field(ge=1, le=MAX_DIM)]


class TensorSpec(CamelModel):
    """One example input of the traced model, in the order of the model's forward() arguments."""

    name: Str = Field(
        max_length=63,
        pattern=INPUT_NAME_PATTERN,
        description="Name of the forward() argument (an identifier), e.g. input_ids; unique within inputs.",
    )
    shape: list[Dim] = Field(
        min_length=1,
        max_length=MAX_RANK,
        description=(
            "Full shape of the example tensor. Dimension 0 is the batch dimension and must equal batchSize; "
            "with buckets, shape[axis] is the largest bucket size."
        ),
    )
    dtype: DType = Field(
        default=DType.FLOAT32,
        description="Element type: float32, float16, bfloat16, int64, int32, int8, uint8 or bool.",
    )


class Buckets(CamelModel):
    """Extra compiled sizes for one non-batch dimension (e.g. sequence lengths); requests are padded up."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.sizes.isSorted()", "buckets.sizes must be in ascending order", fieldPath=".sizes")
        )
    )

    input: Str | None = Field(
        default=None,
        max_length=63,
        pattern=INPUT_NAME_PATTERN,
        description=(
            "Name of the input whose dimension is bucketed; omitted: every input (e.g. input_ids and "
            "attention_mask sharing the sequence length)."
        ),
    )
    axis: Int = Field(
        ge=1,
        le=MAX_RANK - 1,
        description="Dimension that varies (never 0, the batch dimension), e.g. 1 for the sequence length.",
    )
    sizes: list[Dim] = Field(
        min_length=1,
        max_length=MAX_BUCKETS,
        description=(
            "Sizes to compile, strictly ascending; the largest must equal shape[axis] of each bucketed "
            "input. "
            "One graph is traced per size."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _ascending(self) -> Buckets:
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError("buckets.sizes: duplicate value")
        if self.sizes != sorted(self.sizes):
            raise ValueError("buckets.sizes must be in ascending order")
        return self


# --------------------------------------------------------------------------------------------------
# spec.compiler, spec.storage
# --------------------------------------------------------------------------------------------------

CompilerArg = Annotated[str, Strict(), Field(min_length=1, max_length=256)]
_RESERVED_CEL = " || ".join(f"a.startsWith('{flag}')" for flag in RESERVED_COMPILER_FLAGS)
_RESERVED_MESSAGE: Final = (
    "spec.compiler.args must not contain --target, --auto-cast*, --optlevel, -O, --fast-math or --fp32-cast: use "
    "spec.target, spec.compiler.autoCast, spec.compiler.autoCastType and spec.compiler.optLevel"
)
_INF1_CAST_MESSAGE: Final = (
    "spec.compiler.autoCastType: target inf1 (neuron-cc --fast-math) casts FP32 to bf16 or fp16 only; "
    "tf32 and fp8_e4m3 need target inf2, trn1 or trn2"
)
_INF1_OPT_MESSAGE: Final = (
    f"spec.compiler.optLevel: target inf1 (neuron-cc) has no optimisation level; leave optLevel at {INF1_OPT_LEVEL}"
)


class CompilerSpec(CamelModel):
    """How the compile Job runs neuronx-cc (neuron-cc for inf1)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!has(self.args) || self.args.all(a, !({_RESERVED_CEL}))",
                _RESERVED_MESSAGE,
                fieldPath=".args",
            )
        )
    )

    args: list[CompilerArg] = Field(
        default_factory=list,
        max_length=MAX_COMPILER_ARGS,
        description="Extra compiler flags, e.g. --model-type=transformer; part of the artifact cache key.",
    )
    auto_cast: AutoCast = Field(
        default=AutoCast.NONE,
        description=(
            "--auto-cast: none (keep the model's precision; the Neuron SDK default since 2.27, passed "
            "explicitly so the artifact does not depend on the SDK version), matmult or all. For inf1 it "
            "sets neuron-cc's --fast-math: none, fp32-cast-matmult-{bf16,fp16} or fp32-cast-all(-fp16); "
            "Inferentia multiplies in bf16/fp16 even with none."
        ),
    )
    auto_cast_type: AutoCastType = Field(
        default=AutoCastType.BF16,
        description=(
            "--auto-cast-type used when autoCast is not none: bf16, fp16, tf32 or fp8_e4m3 (inf1: bf16 or fp16 only)."
        ),
    )
    opt_level: Int = Field(
        default=2,
        ge=1,
        le=3,
        description="--optlevel: 1, 2 (the compiler default) or 3. inf1 (neuron-cc has no such flag): 2 only.",
    )
    image: Str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description=(
            "Image of the compile Job (CompileRequest.runtime_image); default: the operator's runtime image "
            "for the target."
        ),
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory of the compile container (compilation needs no NeuronCore)."
    )
    node_selector: StringMap | None = Field(default=None, description="Node labels the compile Job's pod must match.")
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description=f"Compile Job: {TOLERATIONS_FIELD_DOC}"
    )
    timeout_seconds: Int | None = Field(
        default=None,
        ge=60,
        le=86400,
        description=(
            "Deadline of the compile Job (activeDeadlineSeconds); exceeding it sets CompileTimeout. Default: "
            "the operator's compileTimeoutSeconds setting (3600 unless configured)."
        ),
    )
    service_account_name: Str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description=(
            "ServiceAccount of the compile Job's pod (e.g. one with an IAM role through EKS Pod Identity or IRSA "
            "for s3:// sources and storage); default: the operator's compileServiceAccount setting, else the "
            "namespace's default ServiceAccount."
        ),
    )

    @model_validator(mode="after")
    def _no_reserved_flags(self) -> CompilerSpec:
        for arg in self.args:
            if arg.startswith(RESERVED_COMPILER_FLAGS):
                raise ValueError(_RESERVED_MESSAGE)
        return self


class PvcStorage(CamelModel):
    """A PersistentVolumeClaim in the NeuronModel's namespace."""

    claim_name: Str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the PersistentVolumeClaim.")
    path: Str | None = Field(
        default=None,
        max_length=1024,
        pattern=RELATIVE_PATH_PATTERN,
        description="Relative directory inside the volume (no . or .. segments); default: the volume root.",
    )


STORAGE_URI_MESSAGE: Final = f"spec.storage.uri: only s3:// object storage is supported; {S3_URI_MESSAGE}"


class StorageSpec(CamelModel):
    """Where compiled artifacts are stored, as <location>/<cacheKey>/: exactly one of pvc or uri."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.pvc) != has(self.uri)",
                "spec.storage: set exactly one of spec.storage.pvc or spec.storage.uri",
            ),
            cel(
                f"!has(self.uri) || (self.uri.startsWith('s3://') && ({s3_uri_cel('uri')}))",
                STORAGE_URI_MESSAGE,
                fieldPath=".uri",
            ),
        )
    )

    pvc: PvcStorage | None = Field(default=None, description="A PersistentVolumeClaim and a path inside it.")
    uri: Str | None = Field(
        default=None,
        max_length=2048,
        pattern=URI_PATTERN,
        description=(
            "Object storage: s3://<bucket>/<prefix>. The compile Job uploads the artifact (files first, manifest "
            "last) and serving pods download and verify it; reached with the identity and endpoint of spec.s3."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageSpec:
        if (self.pvc is None) == (self.uri is None):
            raise ValueError("spec.storage: set exactly one of spec.storage.pvc or spec.storage.uri")
        if self.uri is not None and (not self.uri.startswith("s3://") or s3_uri_problem(self.uri)):
            raise ValueError(STORAGE_URI_MESSAGE)
        return self


class SecretReference(CamelModel):
    """A Secret in the NeuronModel's namespace."""

    name: Str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the Secret.")


class S3Spec(CamelModel):
    """How the compile Job and the serving pods reach S3 for this model's s3:// URIs (source and storage).

    Credentials come from the AWS default chain: EKS Pod Identity or IRSA through the pods' ServiceAccount
    (spec.compiler.serviceAccountName, NeuronDeployment spec.pod.serviceAccountName), or the keys of
    credentialsSecretRef. They never appear in status, Events or logs.
    """

    endpoint: Str | None = Field(
        default=None,
        max_length=2048,
        pattern=S3_ENDPOINT_PATTERN,
        description="S3-compatible endpoint URL (http:// or https://); default: AWS S3 of the region.",
    )
    region: Str | None = Field(
        default=None, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$", description="AWS region, e.g. us-east-1."
    )
    force_path_style: Bool = Field(
        default=False,
        description="Path-style addressing (endpoint/bucket/key), which most S3-compatible stores need.",
    )
    credentials_secret_ref: SecretReference | None = Field(
        default=None,
        description=(
            "A Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN), "
            "passed to the pods as environment variables; default: the pods' own identity."
        ),
    )


# --------------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------------

_BUCKETED = "(has(self.buckets.input) && i.name != self.buckets.input)"
_BATCH_SIZES_LARGEST_MESSAGE: Final = "spec.batchSizes: the largest size must equal spec.batchSize"

BatchSize = Annotated[int, Strict(), Field(ge=1, le=MAX_BATCH_SIZE)]


class NeuronModelSpec(CamelModel):
    """Desired state of a NeuronModel: a model, its example inputs and how to compile it."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.inputs.all(i, i.shape[0] == self.batchSize)",
                "spec.inputs[].shape[0] (the batch dimension) must equal spec.batchSize",
                fieldPath=".inputs",
            ),
            cel(
                "!has(self.batchSizes) || self.batchSizes.isSorted()",
                "spec.batchSizes must be in ascending order",
                fieldPath=".batchSizes",
            ),
            cel(
                "!has(self.batchSizes) || self.batchSizes.size() == 0 || "
                "self.batchSizes[self.batchSizes.size() - 1] == self.batchSize",
                _BATCH_SIZES_LARGEST_MESSAGE,
                fieldPath=".batchSizes",
            ),
            cel(
                "!has(self.buckets) || !has(self.buckets.input) || self.inputs.exists(i, i.name == self.buckets.input)",
                "spec.buckets.input must name one of spec.inputs",
                fieldPath=".buckets.input",
            ),
            cel(
                f"!has(self.buckets) || self.inputs.all(i, {_BUCKETED} || self.buckets.axis < i.shape.size())",
                "spec.buckets.axis must be a dimension of every bucketed input (less than its rank)",
                fieldPath=".buckets.axis",
            ),
            cel(
                f"!has(self.buckets) || self.inputs.all(i, {_BUCKETED} || self.buckets.axis >= "
                "i.shape.size() "
                "|| i.shape[self.buckets.axis] == self.buckets.sizes[self.buckets.sizes.size() - 1])",
                "spec.buckets.sizes: the largest size must equal shape[axis] of every bucketed input",
                fieldPath=".buckets.sizes",
            ),
            cel(
                "self.target != 'inf1' || !has(self.compiler) || !has(self.compiler.autoCastType) || "
                f"self.compiler.autoCastType in {list(INF1_AUTO_CAST_TYPES)}",
                _INF1_CAST_MESSAGE,
                fieldPath=".compiler.autoCastType",
            ),
            cel(
                "self.target != 'inf1' || !has(self.compiler) || !has(self.compiler.optLevel) || "
                f"self.compiler.optLevel == {INF1_OPT_LEVEL}",
                _INF1_OPT_MESSAGE,
                fieldPath=".compiler.optLevel",
            ),
        )
    )

    source: ModelSource = Field(description="Where the model comes from: exactly one of torchscript or python.")
    inputs: list[TensorSpec] = Field(
        min_length=1,
        max_length=MAX_INPUTS,
        description="Example inputs, in forward() argument order; names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    batch_size: Int = Field(
        default=1,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Batch size the model is compiled for (dimension 0 of every input).",
    )
    batch_sizes: list[BatchSize] | None = Field(
        default=None,
        max_length=MAX_BATCH_SIZES,
        description=(
            "Optional batch sizes to compile, one graph each (with every bucket), e.g. [1, 2, 4, 8]: the server "
            "pads a batch only up to the smallest compiled size that holds it, so a lightly loaded model runs "
            "small graphs instead of padding every request to batchSize (lower latency at low load). Strictly "
            "ascending, at most 8 sizes, and the largest must equal batchSize; omitted: batchSize only. Each "
            "size is another compilation (compile time and artifact size grow with the number of sizes)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    buckets: Buckets | None = Field(
        default=None,
        description="Optional extra sizes of one non-batch dimension; one graph is compiled per size.",
    )
    target: Target = Field(
        description=(
            "Compile target: inf1 (NeuronCore-v1, neuron-cc), inf2 or trn1 (NeuronCore-v2), trn2 "
            "(NeuronCore-v3) or cpu (TorchScript on CPU, for tests and CPU serving)."
        )
    )
    model_family: ModelFamily = Field(
        default=ModelFamily.OTHER,
        description=(
            "Architecture family used by the ArchitectureFit rules: encoder, decoder, seq2seq, cnn, "
            "rcnn, lstm, "
            "vit, diffusion or other."
        ),
    )
    dynamic_batch: Bool = Field(
        default=False,
        description=(
            "Accept any batch size at run time by splitting and padding dimension 0 into chunks of batchSize "
            "(torch_neuronx.dynamic_batch; inf1: torch_neuron.trace dynamic_batch_size)."
        ),
    )
    compiler: CompilerSpec = Field(
        default_factory=CompilerSpec,
        description="Compiler flags and the compile Job's pod settings.",
        json_schema_extra={"default": {}},
    )
    storage: StorageSpec | None = Field(
        default=None,
        description=(
            "Where artifacts are stored; default: the operator's artifact storage (setting artifactUri when set, "
            "else the PersistentVolumeClaim of setting artifactPvc, neuron-artifacts unless configured)."
        ),
    )
    s3: S3Spec | None = Field(
        default=None,
        description=(
            "How this model's compile Job and serving pods reach S3 (for every s3:// URI: source and storage); "
            "default: the operator's S3 settings, else AWS S3 with the pods' own identity."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> NeuronModelSpec:
        _check_inf1(self)
        _check_inputs(self)
        _check_batch_sizes(self)
        if self.buckets is not None:
            _check_buckets(self, self.buckets)
        return self


def _check_inf1(spec: NeuronModelSpec) -> None:
    """inf1 (neuron-cc) takes only its auto-cast types and its one optimization level."""
    if spec.target is Target.INF1:
        if spec.compiler.auto_cast_type.value not in INF1_AUTO_CAST_TYPES:
            raise ValueError(_INF1_CAST_MESSAGE)
        if spec.compiler.opt_level != INF1_OPT_LEVEL:
            raise ValueError(_INF1_OPT_MESSAGE)


def _check_inputs(spec: NeuronModelSpec) -> None:
    """Input names are unique and every input's batch dimension is spec.batchSize."""
    names = [i.name for i in spec.inputs]
    if len(set(names)) != len(names):
        raise ValueError("spec.inputs[].name: duplicate value")
    if any(i.shape[0] != spec.batch_size for i in spec.inputs):
        raise ValueError("spec.inputs[].shape[0] (the batch dimension) must equal spec.batchSize")


def _check_batch_sizes(spec: NeuronModelSpec) -> None:
    """spec.batchSizes, when given: unique, ascending, the largest being spec.batchSize."""
    sizes = spec.batch_sizes
    if sizes:
        if len(set(sizes)) != len(sizes):
            raise ValueError("spec.batchSizes: duplicate value")
        if sizes != sorted(sizes):
            raise ValueError("spec.batchSizes must be in ascending order")
        if sizes[-1] != spec.batch_size:
            raise ValueError(_BATCH_SIZES_LARGEST_MESSAGE)


def _check_buckets(spec: NeuronModelSpec, b: Buckets) -> None:
    """spec.buckets names an input (or every one), and its axis and largest size fit every bucketed input."""
    if b.input is not None and b.input not in [i.name for i in spec.inputs]:
        raise ValueError("spec.buckets.input must name one of spec.inputs")
    bucketed = [i for i in spec.inputs if b.input is None or i.name == b.input]
    if any(b.axis >= len(i.shape) for i in bucketed):
        raise ValueError("spec.buckets.axis must be a dimension of every bucketed input (less than its rank)")
    if any(i.shape[b.axis] != b.sizes[-1] for i in bucketed):
        raise ValueError("spec.buckets.sizes: the largest size must equal shape[axis] of every bucketed input")


# --------------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------------


class ArtifactStatus(CamelModel):
    """The compiled artifact currently matching the spec."""

    uri: Str = Field(
        max_length=2048,
        description="Where the artifact is stored: pvc://<claim>/<path>/<cacheKey> or s3://<bucket>/<prefix>/<cacheKey>.",
    )
    endpoint: Str | None = Field(
        default=None, max_length=2048, description="The S3 endpoint of an s3:// uri (absent: AWS S3)."
    )
    sha256: Str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the artifact archive.")
    short_digest: Str | None = Field(
        default=None,
        max_length=12,
        description="First 12 hex characters of sha256, for the Artifact printer column.",
    )
    neuron_core_version: NeuronCoreVersion | None = Field(
        default=None,
        description="NeuronCore generation the artifact runs on (v1, v2 or v3); absent for cpu artifacts.",
    )
    compiler_version: Str | None = Field(
        default=None, max_length=128, description="neuronx-cc (or neuron-cc) version that compiled it."
    )
    torch_version: Str | None = Field(
        default=None, max_length=128, description="torch / torch-neuronx version used for tracing."
    )
    inputs: list[TensorSpec] | None = Field(
        default=None,
        max_length=MAX_INPUTS,
        description="Input signature the artifact was traced with.",
    )
    batch_size: Int | None = Field(default=None, ge=1, description="Compiled batch size.")
    batch_sizes: list[Int] | None = Field(
        default=None,
        max_length=MAX_BATCH_SIZES,
        description="Every compiled batch size, ascending (the last is batchSize), when spec.batchSizes is set.",
    )
    buckets: Buckets | None = Field(default=None, description="Compiled bucket sizes, if any.")
    size_bytes: Int | None = Field(default=None, ge=0, description="Size of the artifact's graphs in bytes.")
    total_bytes: Int | None = Field(
        default=None,
        ge=0,
        description="Size of every file of the artifact (graphs, reference data, manifest): what a serving pod "
        "downloads from S3 (its download volume is sized from it).",
    )
    compiled_at: datetime | None = Field(default=None, description="When compilation finished.")
    compile_seconds: Float | None = Field(default=None, ge=0, description="Wall-clock compile time in seconds.")


MODEL_CONDITIONS_DOC: Final = conditions_doc(MODEL_VOCABULARY, MODEL_STALLED)


class NeuronModelStatus(CamelModel):
    """Observed state of a NeuronModel, written by the operator only."""

    observed_generation: Int | None = Field(default=None, ge=0, description="metadata.generation the status describes.")
    conditions: list[Condition] | None = Field(
        default=None, max_length=16, description=MODEL_CONDITIONS_DOC, json_schema_extra=CONDITIONS_EXTRA
    )
    phase: ModelPhase | None = Field(
        default=None,
        description="Pending, Compiling, Ready or Failed: a summary of the conditions for kubectl get.",
    )
    cache_key: Str | None = Field(
        default=None,
        max_length=256,
        description=(
            "Content address of the artifact: a digest of the source, inputs, batch size, buckets, target, "
            "compiler settings and runtime versions. Equal keys share one artifact."
        ),
    )
    artifact: ArtifactStatus | None = Field(default=None, description="The compiled artifact, once available.")
    last_failure: Failure | None = Field(default=None, description="The most recent compile failure.")


class NeuronModel(CamelModel):
    """A PyTorch model compiled ahead of time for a NeuronCore generation; the artifact is cached by content."""

    KIND: ClassVar[str] = KIND
    PLURAL: ClassVar[str] = PLURAL

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.metadata.name.size() <= 63",
                "metadata.name must be at most 63 characters (it is used in label values)",
            )
        )
    )

    api_version: Literal["neuron.dev/v1alpha1"] = Field(
        default="neuron.dev/v1alpha1", description="neuron.dev/v1alpha1"
    )
    kind: Literal["NeuronModel"] = Field(default="NeuronModel", description="NeuronModel")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: NeuronModelSpec = Field(description="Desired state: the model and how to compile it.")
    status: NeuronModelStatus | None = Field(default=None, description="Observed state, written by the operator.")

    @model_validator(mode="after")
    def _name(self) -> NeuronModel:
        if self.metadata.name is not None and len(self.metadata.name) > 63:
            raise ValueError("metadata.name must be at most 63 characters (it is used in label values)")
        return self


def model_phase(conditions: Sequence[Condition] | None) -> ModelPhase:
    """The printer-column summary of a NeuronModel's conditions (never used for decisions).

    Ready=True → Ready; Stalled=True → Failed; Reconciling=True → Compiling; otherwise Pending.
    """
    status = {c.type: c.status for c in conditions or ()}
    if status.get(ConditionType.READY) == ConditionStatus.TRUE:
        return ModelPhase.READY
    if status.get(ConditionType.STALLED) == ConditionStatus.TRUE:
        return ModelPhase.FAILED
    if status.get(ConditionType.RECONCILING) == ConditionStatus.TRUE:
        return ModelPhase.COMPILING
    return ModelPhase.PENDING


def parse_model(obj: dict[str, Any]) -> NeuronModel:
    """Parse a NeuronModel manifest (as the apiserver returns it); ``ValidationError`` names the field."""
    return NeuronModel.model_validate(obj)
