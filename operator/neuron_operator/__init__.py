"""neuron-operator: compile PyTorch models for AWS NeuronCores and serve them on Kubernetes."""

import sys

__version__ = "0.1.0"

#: The operator needs Python 3.11+ (enum.StrEnum, datetime.UTC, ...). The package's requires-python is lower
#: only because the same wheel carries the runtime (neuron_runtime), which also runs on the Python 3.10 of the
#: inf1 image (torch-neuron supports torch 1.13 on Python <= 3.10 only).
MIN_PYTHON = (3, 11)

if sys.version_info < MIN_PYTHON:  # pragma: no cover - exercised on Python 3.10 by tests/runtime/test_runtime_py310.py
    raise ImportError(
        f"neuron_operator needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}, but this is Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}; only the runtime (neuron_runtime, the `neuron-runtime` "
        "command) supports Python 3.10, for the inf1 image (torch-neuron). Run the operator on Python 3.11+"
    )
