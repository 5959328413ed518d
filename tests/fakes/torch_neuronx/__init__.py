"""Test double of torch-neuronx (see tests/fakes/README.md): the real signatures, CPU TorchScript inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

#: Every call, for assertions: (function name, keyword arguments).
calls: list[tuple[str, dict[str, Any]]] = []


def trace(
    func: Any, example_inputs: Any, *_: Any, compiler_args: Any = None, cpu_backend: bool = False, **kw: Any
) -> Any:
    calls.append(("trace", {"compiler_args": compiler_args, "cpu_backend": cpu_backend, **kw}))
    return torch.jit.trace(func, example_inputs)


def dynamic_batch(traced: Any) -> Any:
    calls.append(("dynamic_batch", {}))
    return traced


@contextlib.contextmanager
def neuron_cores_context(start_nc: int = -1, nc_count: int = -1) -> Iterator[None]:
    calls.append(("neuron_cores_context", {"start_nc": start_nc, "nc_count": nc_count}))
    yield


@contextlib.contextmanager
def multicore_context() -> Iterator[None]:
    calls.append(("multicore_context", {}))
    yield


def set_neuron_cores(trace: Any, start_nc: int = -1, nc_count: int = -1) -> None:
    calls.append(("set_neuron_cores", {"start_nc": start_nc, "nc_count": nc_count}))


def set_multicore(trace: Any) -> None:
    calls.append(("set_multicore", {}))
