"""Simulated Neuron devices and the simulated runtime's view of the visible NeuronCores (no torch import here).

A device is present when ``$NEURON_SIM_DEV_DIR`` (default ``/dev``) has at least one ``neuron[0-9]*`` entry:
the kind cluster's simulated device plugin mounts ``/dev/neuronN`` into pods and sets
``NEURON_RT_VISIBLE_CORES`` (and ``NEURON_SIMULATED_DEVICE_PLUGIN=1``). The real runtime treats an unset
``NEURON_RT_VISIBLE_CORES`` as "all cores of the instance"; the simulated runtime cannot count an instance's
cores, so it requires the variable (the simulated device plugin always sets it).

Error texts, and where they come from:

- ``RUNTIME_INIT_ERROR``: aws-neuron/aws-neuron-samples#44 ("RuntimeError: Neuron runtime cannot be
  initialized; cannot determine the number of available NeuronCores"), raised when placing/loading a model
  without a usable device (the placement APIs document ``RuntimeError`` "If the Neuron runtime cannot be
  initialized", SDK:frameworks/torch/torch-neuronx/api-reference-guide/inference/api-torch-neuronx-core-placement.rst).
- ``EXECUTION_ERROR``: the first sentences reported in aws-neuron/aws-neuron-sdk#835 ("The PyTorch Neuron Runtime
  could not be initialized. Neuron Driver issues are logged ...") for calling a traced model without a working
  device. The rest of the real message was not found: the simulator's text is an approximation with that prefix.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

DEV_DIR_ENV = "NEURON_SIM_DEV_DIR"
VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"
SIMULATED_PLUGIN_ENV = "NEURON_SIMULATED_DEVICE_PLUGIN"
DEVICE_PATTERN = "neuron[0-9]*"

RUNTIME_INIT_ERROR = "Neuron runtime cannot be initialized; cannot determine the number of available NeuronCores"
EXECUTION_ERROR = (
    "The PyTorch Neuron Runtime could not be initialized. Neuron Driver issues are logged to your system logs."
)


class NoNeuronCore(RuntimeError):
    """The simulated Neuron runtime finds no usable NeuronCore (no device, or no visible cores)."""


def dev_dir() -> Path:
    return Path(os.environ.get(DEV_DIR_ENV) or "/dev")


def devices() -> list[str]:
    """Names of the simulated Neuron devices (``neuron[0-9]*`` entries of the device directory)."""
    try:
        names = os.listdir(dev_dir())
    except OSError:
        return []
    return sorted(name for name in names if fnmatch.fnmatchcase(name, DEVICE_PATTERN))


def device_present() -> bool:
    return bool(devices())


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_visible_cores(spec: str) -> list[int]:
    """``NEURON_RT_VISIBLE_CORES`` syntax: comma-separated core ids and inclusive ranges ("0-3", "2,3", "0,2-3")."""
    cores: list[int] = []
    for part in spec.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(f"invalid {VISIBLE_CORES_ENV}={spec!r}: {part!r} is not a core id or a range a-b")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"invalid {VISIBLE_CORES_ENV}={spec!r}: range {part!r} is empty")
        cores.extend(range(first, last + 1))
    if len(set(cores)) != len(cores):
        raise ValueError(f"invalid {VISIBLE_CORES_ENV}={spec!r}: a core is listed twice")
    return sorted(cores)


def _why_unusable() -> str | None:
    if not device_present():
        return (
            f"no {DEVICE_PATTERN} device in {dev_dir()} (${DEV_DIR_ENV}); a Neuron-compiled model only runs on a "
            "Neuron instance, or in a pod given /dev/neuronN by the (simulated) Neuron device plugin"
        )
    spec = os.environ.get(VISIBLE_CORES_ENV)
    if not spec:
        return (
            f"{VISIBLE_CORES_ENV} is not set: the simulated runtime cannot count the NeuronCores of a device "
            "(the simulated device plugin sets it for every container it allocates cores to)"
        )
    try:
        parse_visible_cores(spec)
    except ValueError as exc:
        return str(exc)
    return None


def visible_cores(error: str = RUNTIME_INIT_ERROR) -> list[int]:
    """Absolute ids of the NeuronCores visible to this process, or ``NoNeuronCore`` with ``error`` as prefix."""
    why = _why_unusable()
    if why is not None:
        raise NoNeuronCore(f"{error} (simulated Neuron SDK: {why})")
    return parse_visible_cores(os.environ[VISIBLE_CORES_ENV])


def runtime_usable() -> bool:
    return _why_unusable() is None
