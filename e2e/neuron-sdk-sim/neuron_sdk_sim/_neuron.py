"""``torch_neuron`` of the simulated Neuron SDK (Inf1, NeuronCore-v1, compiler neuron-cc).

Source: SDK:frameworks/torch/torch-neuron/api-compilation-python-api.rst (archived as
SDK:archive/torch-neuron/api-compilation-python-api.rst): ``torch_neuron.trace(model, example_inputs, **kwargs)``
with the documented keywords ``compiler_args``, ``compiler_timeout``, ``compiler_workdir``,
``subgraph_builder_function``, ``minimum_segment_size``, ``single_fusion_ratio_threshold``, ``fallback``,
``dynamic_batch_size``, ``optimizations`` ("All other keyword arguments will be forwarded directly to
torch.jit.trace"), plus ``separate_weights`` (SDK:release-notes/archive/torch-neuron.rst, 2.6.5.0). The real
implementation (torch_neuron/convert.py, seen in aws-neuron/aws-neuron-sdk#470) names more internal keywords
(``op_whitelist``, ``skip_compiler``, ...); those are not simulated and reach ``torch.jit.trace`` like any other.

Compilation works on any host ("Compilation can be done on any EC2 machine"); running needs a device. A neuron-cc
failure with ``fallback=True`` (the default) does what torch-neuron does when a subgraph fails to compile: it logs
"torch.neuron.trace failed on ...; falling back to native python function call" and the result runs on CPU
(aws-neuron/aws-neuron-sdk#420, #827: "No operator is placed on Neuron runtime; returning a CPU trace"). With
``fallback=False`` the failure is raised (``subprocess.SubprocessError``, "neuron-cc failed with the following
command line call", aws-neuron/aws-neuron-sdk#410). The whole model is one Neuron subgraph: the partitioning
keywords are recorded, not simulated.
"""

from __future__ import annotations

import enum
import logging
import subprocess
import warnings
from typing import Any

from neuron_sdk_sim import _compiler, _device, _install_info, _runtime, _state
from neuron_sdk_sim._runtime import _jit_trace

log = logging.getLogger("Neuron")

#: Documented keywords consumed by torch_neuron.trace itself; everything else goes to torch.jit.trace.
NEURON_KEYWORDS = (
    "compiler_args",
    "compiler_timeout",
    "compiler_workdir",
    "subgraph_builder_function",
    "minimum_segment_size",
    "single_fusion_ratio_threshold",
    "fallback",
    "dynamic_batch_size",
    "optimizations",
    "separate_weights",
)


class Optimization(enum.Enum):
    """Documented ``torch_neuron.Optimization`` passes (accepted and recorded; not simulated)."""

    FLOAT32_TO_FLOAT16 = "FLOAT32_TO_FLOAT16"


def trace(model: Any, example_inputs: Any, **kwargs: Any) -> Any:
    """Simulated ``torch_neuron.trace``: neuron-cc's ``--fast-math``/``--fp32-cast`` decide the casting."""
    install = _install_info.active()
    options = {name: kwargs.pop(name) for name in NEURON_KEYWORDS if name in kwargs}
    jit_kwargs = kwargs  # forwarded to torch.jit.trace, which rejects unknown keywords with a TypeError
    fallback = bool(options.get("fallback", True))
    dynamic = bool(options.get("dynamic_batch_size", False))
    details: dict[str, Any] = {
        "sdk": install["sdk"],
        **{k: v for k, v in options.items() if k in ("compiler_args", "fallback", "dynamic_batch_size")},
        "dynamic_batch_size": dynamic,
        "other_options": sorted(k for k in options if k not in ("compiler_args", "fallback", "dynamic_batch_size")),
        "jit_trace_kwargs": sorted(jit_kwargs),
        "device_present": _device.device_present(),
    }
    try:
        args = _compiler.parse_neuron_cc(options.get("compiler_args"))
    except _compiler.CompilerError as exc:
        command = "neuron-cc compile <graph_def.pb> --framework TENSORFLOW " + " ".join(
            _compiler._tokens(options.get("compiler_args"), "neuron-cc")
        )
        if not fallback:
            raise subprocess.SubprocessError(
                f"neuron-cc failed with the following command line call:\n{command}\n{exc}"
            ) from exc
        log.warning("torch.neuron.trace failed on _NeuronGraph$0; falling back to native python function call")
        log.warning("%s", exc)
        log.warning("No operator is placed on Neuron runtime; returning a CPU trace")
        _state.record("torch_neuron.trace", {**details, "fell_back_to_cpu": True, "error": str(exc)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript
            return _jit_trace(model, example_inputs, **{"check_trace": False, **jit_kwargs})
    meta = {"sdk": install["sdk"], "target": "inf1", **args.summary(), "compiler_args": list(args.tokens)}
    module = _runtime.compile_module(
        "torch_neuron",
        model,
        example_inputs,
        cast=(args.cast_scope, args.cast_type),
        meta=meta,
        dynamic_batch=dynamic,
        jit_kwargs=jit_kwargs,
    )
    if _device.runtime_usable():  # traced on an Inf1 host: the model is loaded to a NeuronCore
        _runtime.place_loaded(module)
    _state.record("torch_neuron.trace", {**details, "neuron_cc": args.summary(), "fell_back_to_cpu": False})
    return module
