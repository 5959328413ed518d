"""The only module that imports the AWS Neuron PyTorch packages (`torch_neuronx` for inf2/trn1/trn2, `torch_neuron`
for inf1).

They are not on PyPI (only the Neuron pip repository has them), so the CPU image and CI never have them. Everything
else in the runtime goes through the functions here, which import lazily and turn a missing package into one clear
`NeuronPackageMissing` error. Placement on NeuronCores (`neuron_cores_context`, `multicore_context`) also lives here.

Compiling without a Neuron device uses the documented CPU-backend path: `cpu_backend=True`, `--target <target>` and
`NEURON_PLATFORM_TARGET_OVERRIDE=<target>` (huggingface/optimum-neuron#961).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from neuron_runtime.config import CompilerOptions, Target

if TYPE_CHECKING:
    import torch

PACKAGE_FOR_TARGET: dict[str, tuple[str, str]] = {
    # target -> (import name, distribution name)
    "inf1": ("torch_neuron", "torch-neuron"),
    "inf2": ("torch_neuronx", "torch-neuronx"),
    "trn1": ("torch_neuronx", "torch-neuronx"),
    "trn2": ("torch_neuronx", "torch-neuronx"),
}
COMPILER_FOR_TARGET = {"inf1": "neuron-cc", "inf2": "neuronx-cc", "trn1": "neuronx-cc", "trn2": "neuronx-cc"}


class NeuronPackageMissing(RuntimeError):
    """The Neuron PyTorch package a target needs is not installed in this image."""


def is_neuron_target(target: str) -> bool:
    return target in PACKAGE_FOR_TARGET


def require(target: str) -> ModuleType:
    """Import the Neuron package for `target`, or fail with an actionable message."""
    module_name, dist = PACKAGE_FOR_TARGET[target]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise NeuronPackageMissing(
            f"target {target} needs {dist}, which is not installed in this image; "
            f"use the Neuron runtime image or target cpu ({exc})"
        ) from exc


def device_present() -> bool:
    """Whether this host exposes a Neuron device (`/dev/neuronN`)."""
    return any(Path("/dev").glob("neuron[0-9]*"))


INF1_FAST_MATH: dict[tuple[str, str], str] = {
    # (auto_cast, auto_cast_type) -> neuron-cc `--fast-math` value. Source: SDK:compiler/neuron-cc/
    # command-line-reference.rst (aws-neuron/aws-neuron-sdk), `--fast-math` "Casting options":
    #   fp32-cast-all          all FP32 operators to BF16 (neuron-cc's default, as part of `all`)
    #   fp32-cast-all-fp16     all FP32 operators to FP16
    #   fp32-cast-matmult-bf16 only Matmult-engine operators (matmult-based transpose included) to BF16
    #   fp32-cast-matmult-fp16 only Matmult-engine operators (matmult-based transpose included) to FP16
    # (`fp32-cast-matmult`, BF16 operators with FP16 transposes, has no (auto_cast, type) pair and is not used.)
    # `none` is "fp32-cast-matmult-bf16 no-fast-relayout": Inferentia's Matmult engine computes in FP16/BF16
    # only, so on inf1 even autoCast none multiplies in BF16 (SDK:archive/appnotes/neuron-cc/mixed-precision.rst).
    # neuron-cc has no TF32/FP8 casts and no --target, --auto-cast* or --optlevel flags: config.CompileRequest
    # rejects those options for inf1 (INF1_AUTO_CAST_TYPES, opt_level 2 only).
    ("none", "bf16"): "none",
    ("none", "fp16"): "none",
    ("matmult", "bf16"): "fp32-cast-matmult-bf16",
    ("matmult", "fp16"): "fp32-cast-matmult-fp16",
    ("all", "bf16"): "fp32-cast-all",
    ("all", "fp16"): "fp32-cast-all-fp16",
}


def compiler_args(target: Target, options: CompilerOptions) -> list[str]:
    """Compiler flags for `target`; auto-cast is always explicit (its default changed in SDK 2.27)."""
    if target == "inf1":
        # neuron-cc's casting switch is --fast-math (its default, `all`, casts everything to BF16).
        key = (options.auto_cast, options.auto_cast_type)
        if key not in INF1_FAST_MATH:  # CompileRequest validation rejects this first; a direct call lands here
            raise ValueError(f"inf1 (neuron-cc) cannot auto-cast to {options.auto_cast_type}: only bf16 or fp16")
        return ["--fast-math", INF1_FAST_MATH[key], *options.args]
    args = ["--target", target, "--auto-cast", options.auto_cast]
    if options.auto_cast != "none":
        args += ["--auto-cast-type", options.auto_cast_type]
    return [*args, f"--optlevel={options.opt_level}", *options.args]


INF1_MAX_MODEL_BYTES = 2**31 - 1
"""The largest model inf1 can compile: torch-neuron hands neuron-cc the graph with its weights as one protobuf
message (a TensorFlow GraphDef), and protobuf cannot parse a message over 2 GB (INT32_MAX bytes); neuron-cc then
fails with "DecodeError: Error parsing message with type 'tensorflow.GraphDef'"
(SDK:frameworks/torch/torch-neuron/troubleshooting-guide.rst, "2GB protobuf limit related issues", in
aws-neuron/aws-neuron-sdk). That guide's way round it, `torch_neuron.trace(..., separate_weights=True)` with a newer
neuron-cc, is not in the trace API reference (SDK:frameworks/torch/torch-neuron/api-compilation-python-api.rst) and
this runtime does not pass it."""


class UnsupportedArchitecture(ValueError):
    """The model cannot be compiled for the requested target at all (e.g. over inf1's 2 GB limit)."""


class _ByteCounter:
    """A write-only file object that counts bytes: sizes a serialization without holding it in memory."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def check_inf1_model_size(model: torch.nn.Module) -> int:
    """Serialized size of `model` in bytes; `UnsupportedArchitecture` when it exceeds `INF1_MAX_MODEL_BYTES`.

    Measured as torch would write the model: `torch.jit.save` for TorchScript (scripted or traced) modules,
    `torch.save(model.state_dict())` for eager ones. The weights dominate both, and they are what torch-neuron
    embeds in the GraphDef, so this is a close lower bound of the message neuron-cc must parse. Call it before
    tracing for inf1: a 2 GB model otherwise spends the whole trace before neuron-cc fails.
    """
    import warnings

    import torch

    counter = _ByteCounter()
    if isinstance(model, torch.jit.ScriptModule):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript; 1.13 does not
            torch.jit.save(model, counter)
    else:
        torch.save(model.state_dict(), counter)  # type: ignore[arg-type]
    limit = INF1_MAX_MODEL_BYTES
    if counter.size > limit:
        raise UnsupportedArchitecture(
            f"the model serializes to {counter.size} bytes ({counter.size / 1024**3:.2f} GiB), over inf1's limit "
            f"of {limit} bytes: torch-neuron passes the graph and its weights to neuron-cc as one protobuf message, "
            "which cannot exceed 2 GB (Neuron SDK torch-neuron troubleshooting guide, '2GB protobuf limit'); "
            "use target inf2 or trn1"
        )
    return counter.size


def trace(
    target: Target,
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    options: CompilerOptions,
    dynamic_batch: bool,
) -> torch.jit.ScriptModule:
    """Trace `model` for a Neuron target; uses the CPU backend + target override when no device is present."""
    package = require(target)
    args = compiler_args(target, options)
    inputs = tuple(example_inputs)
    if target == "inf1":
        return package.trace(model, inputs, compiler_args=args, dynamic_batch_size=dynamic_batch)  # type: ignore[no-any-return]
    kwargs: dict[str, Any] = {"compiler_args": args}
    if not device_present():
        os.environ["NEURON_PLATFORM_TARGET_OVERRIDE"] = target
        if "cpu_backend" in inspect.signature(package.trace).parameters:
            kwargs["cpu_backend"] = True
    traced = package.trace(model, inputs, **kwargs)
    if dynamic_batch:
        traced = package.dynamic_batch(traced)
    return traced  # type: ignore[no-any-return]


def versions(target: Target) -> dict[str, str | None]:
    """Versions of the Neuron framework package and compiler for the manifest (None when absent)."""
    if not is_neuron_target(target):
        return {"neuronPackageVersion": None, "compilerVersion": None}
    return {
        "neuronPackageVersion": _dist_version(PACKAGE_FOR_TARGET[target][1]),
        "compilerVersion": _dist_version(COMPILER_FOR_TARGET[target]),
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


MIN_PLACEMENT_SDK = "2.25"
"""From this Neuron SDK the placement APIs are top-level `torch_neuronx.*`; before, only under `experimental`."""


def placement_api(package: ModuleType, name: str) -> Any:
    """`torch_neuronx.<name>`, else `torch_neuronx.experimental.<name>` (SDK < 2.25 has only the latter).

    The API reference (SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/
    api-torch-neuronx-core-placement.rst) documents the top-level names, promoted from `experimental` in 2.25
    (SDK:release-notes/prev/2.25.0/nx-pytorch.rst); the core-placement programming guide still shows the
    `experimental` form, which is the only one images pinned to an older SDK have.
    """
    found = getattr(package, name, None)
    if found is not None:
        return found
    try:
        experimental = importlib.import_module(f"{package.__name__}.experimental")
    except ImportError:
        experimental = None
    found = getattr(experimental, name, None) if experimental is not None else None
    if found is None:
        raise NeuronPackageMissing(
            f"{package.__name__} has neither {name} nor experimental.{name}: this Neuron SDK has no NeuronCore "
            "placement API (torch-neuronx from Neuron SDK 2.x with experimental placement, or >= "
            f"{MIN_PLACEMENT_SDK}, is required)"
        )
    return found


@contextlib.contextmanager
def placement_context(target: Target, start_nc: int, nc_count: int, multicore: bool) -> Iterator[None]:
    """Context around `torch.jit.load` placing the loaded model on NeuronCores (relative to the visible cores).

    `neuron_cores_context` is not thread-safe: callers load one model at a time. On `cpu` this does nothing
    (CPU placement is thread pinning, see `workers`).
    """
    if not is_neuron_target(target):
        yield
        return
    package = require(target)
    if target == "inf1":
        # torch_neuron places each loaded model on the next NeuronCore group; nothing to select.
        yield
        return
    if multicore:
        manager = placement_api(package, "multicore_context")()
    else:
        manager = placement_api(package, "neuron_cores_context")(start_nc=start_nc, nc_count=nc_count)
    with manager:
        yield


def installed_versions(target: Target) -> dict[str, str | None]:
    """What this image has for `target`: torch, the Neuron framework package and its compiler (None when absent)."""
    found = versions(target)
    found["torchVersion"] = _dist_version("torch")
    return found
