"""Test double of torch-neuron for inf1 (see tests/fakes/README.md): the real signature, CPU TorchScript inside."""

from __future__ import annotations

from typing import Any

import torch

calls: list[tuple[str, dict[str, Any]]] = []


def trace(
    func: Any, example_inputs: Any, *_: Any, compiler_args: Any = None, dynamic_batch_size: bool = False, **kw: Any
) -> Any:
    calls.append(("trace", {"compiler_args": compiler_args, "dynamic_batch_size": dynamic_batch_size, **kw}))
    return torch.jit.trace(func, example_inputs)
