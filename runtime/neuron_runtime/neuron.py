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


def compiler_args(target: Target, options: CompilerOptions) -> list[str]:
    """Compiler flags for `target`; auto-cast is always explicit (its default changed in SDK 2.27)."""
    if target == "inf1":
        # neuron-cc has no --target/--auto-cast; its casting switch is --fast-math.
        fast_math = {"none": "none", "matmult": "fp32-cast-matmult", "all": "fp32-cast-all"}[options.auto_cast]
        return ["--fast-math", fast_math, *options.args]
    args = ["--target", target, "--auto-cast", options.auto_cast]
    if options.auto_cast != "none":
        args += ["--auto-cast-type", options.auto_cast_type]
    return [*args, f"--optlevel={options.opt_level}", *options.args]


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
    manager = package.multicore_context() if multicore else package.neuron_cores_context(start_nc, nc_count)
    with manager:
        yield
