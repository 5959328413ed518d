"""``torch_neuronx`` of the simulated Neuron SDK (inf2 / trn1 / trn2, NeuronCore-v2): trace, dynamic batching,
NeuronCore placement. The installed ``torch_neuronx`` package re-exports these, shaped by the SDK release.

Sources (SDK = aws-neuron/aws-neuron-sdk):
- ``trace``, ``dynamic_batch``, ``move_trace_to_device``:
  SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-trace.rst.
- Placement APIs: SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-core-placement.rst
  (documented there as ``torch_neuronx.experimental.*``, the only form before SDK 2.25) and
  SDK:release-notes/prev/2.25.0/nx-pytorch.rst (GA at top level from 2.25; the ``experimental`` names keep working
  and warn "In a future version torch_neuronx.experimental.<func> will be removed.  Call torch_neuronx.<func>
  instead.").
- Tracing without a device: aws-neuron/aws-neuron-sdk#910 and #902 (the PJRT error below, for torch 2.x without
  ``cpu_backend``), huggingface/optimum-neuron#961 (``NEURON_PLATFORM_TARGET_OVERRIDE``).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from neuron_sdk_sim import _compiler, _device, _install_info, _runtime, _state

TARGET_OVERRIDE_ENV = "NEURON_PLATFORM_TARGET_OVERRIDE"
#: torch_neuronx.trace without a Neuron device and without cpu_backend=True (aws-neuron/aws-neuron-sdk#910).
NO_DEVICE_TRACE_ERROR = (
    "Bad StatusOr access: INVALID_ARGUMENT: PJRT_Client_Create: error condition nullptr != "
    "(args)->client->Error(): Init: error condition !(num_devices > 0): "
)
#: The platform the simulator compiles for on a (simulated) device when nothing names a target.
DEFAULT_DEVICE_TARGET = "trn1"
_KEYWORDS = (
    "input_output_aliases",
    "compiler_workdir",
    "compiler_args",
    "partitioner_config",
    "inline_weights_to_neff",
    "cpu_backend",
)


def trace(
    func: Any,
    example_inputs: Any,
    *_: Any,
    input_output_aliases: dict[Any, Any] = {},  # noqa: B006 - the documented signature
    compiler_workdir: str | os.PathLike[str] | None = None,
    compiler_args: str | list[str] | None = None,
    partitioner_config: Any = None,
    inline_weights_to_neff: bool = True,
    cpu_backend: bool = False,
) -> torch.jit.ScriptModule:
    """Simulated ``torch_neuronx.trace``: a ScriptModule with one fused simulated-Neuron op (see ``_runtime``).

    Like the real one it needs a Neuron device unless ``cpu_backend=True``, which needs a target
    (``--target`` in ``compiler_args``, else ``NEURON_PLATFORM_TARGET_OVERRIDE``); it validates the neuronx-cc
    flags it understands and computes in the auto-cast type. Positional arguments after ``example_inputs`` are
    mapped onto the keywords in documented order with a warning ("Using args for kwargs is no longer supported
    starting from release 2.15.0 ... a warning will be raised, but torch_neuronx.trace() will attempt to infer
    the keyword arguments"; the real inference rule is not documented).
    """
    options: dict[str, Any] = {
        "input_output_aliases": input_output_aliases,
        "compiler_workdir": compiler_workdir,
        "compiler_args": compiler_args,
        "partitioner_config": partitioner_config,
        "inline_weights_to_neff": inline_weights_to_neff,
        "cpu_backend": cpu_backend,
    }
    if _:
        if len(_) > len(_KEYWORDS):
            raise TypeError(f"trace() takes at most {2 + len(_KEYWORDS)} positional arguments")
        warnings.warn(
            "Using args for kwargs is no longer supported: pass torch_neuronx.trace() options as keyword "
            "arguments (simulated Neuron SDK: positional arguments mapped in documented order)",
            UserWarning,
            stacklevel=2,
        )
        options.update(zip(_KEYWORDS, _, strict=False))
    install = _install_info.active()
    sdk = install["sdk"]
    if options["partitioner_config"] is not None:
        raise NotImplementedError("the simulated Neuron SDK does not simulate the graph partitioner")
    if options["input_output_aliases"]:
        raise NotImplementedError("the simulated Neuron SDK does not simulate input_output_aliases")
    args = _compiler.parse_neuronx_cc(options["compiler_args"], default_auto_cast=install["auto_cast_default"])
    present = _device.device_present()
    cpu = bool(options["cpu_backend"])
    override = os.environ.get(TARGET_OVERRIDE_ENV) or None
    if override is not None and override not in _compiler.NEURONX_TARGETS:
        raise RuntimeError(
            f"{TARGET_OVERRIDE_ENV}={override!r} is not a Neuron platform target (one of "
            f"{', '.join(_compiler.NEURONX_TARGETS)}; simulated Neuron SDK)"
        )
    if not present and not cpu:
        raise RuntimeError(
            f"{NO_DEVICE_TRACE_ERROR}(simulated Neuron SDK: no {_device.DEVICE_PATTERN} device in {_device.dev_dir()}; "
            "to compile without a Neuron device use cpu_backend=True with compiler_args=['--target', <target>] "
            f"or {TARGET_OVERRIDE_ENV}=<target>)"
        )
    target = args.target or override
    if target is None:
        if cpu:
            raise RuntimeError(
                "torch_neuronx.trace(cpu_backend=True) needs a target: pass compiler_args=['--target', "
                f"'inf2'|'trn1'|'trn1n'|'trn2'] or set {TARGET_OVERRIDE_ENV} (simulated Neuron SDK)"
            )
        target = DEFAULT_DEVICE_TARGET
    cast = None if args.auto_cast == "none" else (args.auto_cast, args.auto_cast_type)
    details = {
        "sdk": sdk,
        "compiler_args": options["compiler_args"],
        "neuronx_cc": args.summary(),
        "target": target,
        "cpu_backend": cpu,
        TARGET_OVERRIDE_ENV: override,
        "device_present": present,
        "compiler_workdir": None if options["compiler_workdir"] is None else str(options["compiler_workdir"]),
        "inline_weights_to_neff": options["inline_weights_to_neff"],
    }
    meta = {"sdk": sdk, "target": target, **args.summary(), "compiler_args": list(args.tokens), "cpu_backend": cpu}
    module = _runtime.compile_module("torch_neuronx", func, example_inputs, cast=cast, meta=meta)
    if options["compiler_workdir"] is not None:
        workdir = Path(options["compiler_workdir"])
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "simulated-neuronx-cc.json").write_text(json.dumps(details, default=repr, indent=2) + "\n")
    if present and not cpu and _device.runtime_usable():  # "initialized after tracing": loaded to a core
        _runtime.place_loaded(module)
    _state.record("torch_neuronx.trace", details)
    return module


def dynamic_batch(neuron_script: Any) -> Any:
    """Simulated ``torch_neuronx.dynamic_batch``: in place, any dim-0 size, split/padded to the traced batch."""
    if _runtime.set_dynamic_batch(neuron_script) == 0:
        raise ValueError("dynamic_batch expects a module compiled by torch_neuronx.trace (no Neuron graph in it)")
    _state.record("torch_neuronx.dynamic_batch", {})
    return neuron_script


@contextmanager
def neuron_cores_context(start_nc: int = -1, nc_count: int = -1) -> Iterator[None]:
    """Models loaded with ``torch.jit.load`` inside go to visible cores ``start_nc .. start_nc+nc_count-1``."""
    _state.record("torch_neuronx.neuron_cores_context", {"start_nc": start_nc, "nc_count": nc_count})
    with _runtime.placement_context(_runtime._Spec("cores", start_nc, nc_count)):
        yield


@contextmanager
def multicore_context() -> Iterator[None]:
    """Models loaded with ``torch.jit.load`` inside go to all visible cores (round-robin executions)."""
    _state.record("torch_neuronx.multicore_context", {})
    with _runtime.placement_context(_runtime._Spec("multicore")):
        yield


def set_neuron_cores(trace: torch.jit.ScriptModule, start_nc: int = -1, nc_count: int = -1) -> None:
    """Move a loaded model to visible cores ``start_nc .. start_nc+nc_count-1`` (a non-Neuron module: no-op)."""
    _state.record("torch_neuronx.set_neuron_cores", {"start_nc": start_nc, "nc_count": nc_count})
    if _runtime.is_compiled(trace):
        _runtime.place(trace, _runtime._Spec("cores", start_nc, nc_count))


def set_multicore(trace: torch.jit.ScriptModule) -> None:
    """Move a loaded model to all visible cores (a non-Neuron module: no-op)."""
    _state.record("torch_neuronx.set_multicore", {})
    if _runtime.is_compiled(trace):
        _runtime.place(trace, _runtime._Spec("multicore"))


def move_trace_to_device(trace: torch.jit.ScriptModule, device_id: int) -> None:
    """Move a traced model to one NeuronCore (``device_id`` relative to the visible cores)."""
    _state.record("torch_neuronx.move_trace_to_device", {"device_id": device_id})
    if _runtime.is_compiled(trace):
        _runtime.place(trace, _runtime._Spec("cores", device_id, 1))


PLACEMENT: dict[str, Callable[..., Any]] = {
    "neuron_cores_context": neuron_cores_context,
    "multicore_context": multicore_context,
    "set_neuron_cores": set_neuron_cores,
    "set_multicore": set_multicore,
}


def experimental_placement(deprecated: bool) -> dict[str, Callable[..., Any]]:
    """The ``torch_neuronx.experimental`` placement functions; from SDK 2.25 they warn (DeprecationWarning)."""
    if not deprecated:
        return dict(PLACEMENT)

    def warn(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(
                f"In a future version torch_neuronx.experimental.{name} will be removed.  "
                f"Call torch_neuronx.{name} instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            return func(*args, **kwargs)

        return wrapper

    return {name: warn(name, func) for name, func in PLACEMENT.items()}
