"""neuron_sdk_sim: a SIMULATED AWS Neuron PyTorch SDK (torch-neuronx, torch-neuron) for local testing.

It is never shipped in a release image. ``python -m neuron_sdk_sim install --sdk {2.24.0|2.31.1} --dest DIR``
writes ``torch_neuronx``, ``torch_neuron``, a copy of this package and dist-info for torch-neuronx, neuronx-cc,
torch-neuron and neuron-cc into DIR (see ``README.md`` beside this package for what is faithful, what is
approximated, and the sources). This module imports no torch; the simulated runtime lives in ``_runtime``.

Public API:

- ``install(dest, sdk)`` / ``SDKS``: install a simulated SDK release.
- ``calls``: every call into the simulated SDK, ``(name, details)``; also appended as JSON lines to
  ``$NEURON_SIM_CALLS_FILE`` when set.
- ``core_executions()``: executions per NeuronCore, keyed by absolute core id; ``reset()`` clears calls, counts,
  placements and the hook; ``set_execution_hook(fn)``: ``fn(core)`` runs while a core executes.
- ``device_present()`` / ``visible_cores()``: the simulated device (``$NEURON_SIM_DEV_DIR``, default ``/dev``,
  ``neuron[0-9]*`` entries) and ``$NEURON_RT_VISIBLE_CORES``.
- ``placement(module)``: absolute cores of each simulated Neuron graph in a module (``()``: not placed).
"""

from __future__ import annotations

from typing import Any

from neuron_sdk_sim._device import (
    DEV_DIR_ENV,
    SIMULATED_PLUGIN_ENV,
    VISIBLE_CORES_ENV,
    NoNeuronCore,
    device_present,
    parse_visible_cores,
    visible_cores,
)
from neuron_sdk_sim._install import install
from neuron_sdk_sim._state import CALLS_FILE_ENV, calls, core_executions, reset, set_execution_hook
from neuron_sdk_sim._versions import SDKS

__all__ = [
    "CALLS_FILE_ENV",
    "DEV_DIR_ENV",
    "SDKS",
    "SIMULATED_PLUGIN_ENV",
    "VISIBLE_CORES_ENV",
    "NoNeuronCore",
    "calls",
    "core_executions",
    "device_present",
    "install",
    "parse_visible_cores",
    "placement",
    "reset",
    "set_execution_hook",
    "visible_cores",
]


def placement(module: Any) -> list[tuple[int, ...]]:
    """Absolute NeuronCores of each simulated Neuron graph in ``module``; ``()`` for one not placed yet."""
    from neuron_sdk_sim import _runtime

    return _runtime.placement_of(module)
