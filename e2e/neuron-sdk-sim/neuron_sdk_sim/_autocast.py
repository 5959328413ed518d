"""Auto-cast of the simulated Neuron compilers: lower-precision arithmetic recorded into the compiled graph.

While the simulator traces a model, this ``TorchFunctionMode`` intercepts torch functions and rounds their fp32
tensor operands (and results) through the auto-cast type, so the compiled graph contains the casts and a parity
check against the eager model measures a realistic error. Outputs keep their fp32 dtype ("returns the original
output dtype"). How each type is simulated:

- ``bf16`` / ``fp16``: operands rounded to the type, computed in fp32 (the NeuronCore matrix engine accumulates in
  fp32), result rounded to the type, then held in fp32. Faithful to the rounding, not to the speed.
- ``tf32``: operands rounded to 10 mantissa bits (round half to even on the mantissa; exponent range and
  subnormals as fp32), result kept in fp32. An approximation of TensorFloat-32.
- ``fp8_e4m3``: operands saturated to +-448 and rounded through ``torch.float8_e4m3fn``, computed and kept in
  fp32. An approximation (no fp8 scaling is simulated).

Scope: ``matmult`` casts matrix-multiplication-engine operators only (linear, matmul/mm/bmm/addmm/baddbmm,
einsum, tensordot, convolutions, bilinear, scaled-dot-product attention); ``all`` casts every fp32 operator except
in-place ones, conversions and metadata queries. neuronx-cc decides per HLO operator; this is per torch function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

Rounder = Callable[[torch.Tensor], torch.Tensor]

_MATMULT: set[Any] = {
    F.linear,
    F.bilinear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.scaled_dot_product_attention,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.addbmm,
    torch.einsum,
    torch.tensordot,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.Tensor.mm,
    torch.Tensor.bmm,
}

#: Never cast (conversions, metadata, storage access): by function name.
_NEVER = {
    "__get__",
    "__set__",
    "__setitem__",
    "__repr__",
    "__format__",
    "__len__",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "to",
    "type",
    "type_as",
    "float",
    "double",
    "half",
    "bfloat16",
    "size",
    "dim",
    "numel",
    "stride",
    "element_size",
    "is_floating_point",
    "is_contiguous",
    "data_ptr",
    "tolist",
    "item",
    "numpy",
    "detach",
}

_TF32_STEPS = 2048.0  # frexp mantissas are in [0.5, 1): 11 significant bits = implicit bit + tf32's 10


def _round_through(dtype: torch.dtype) -> Rounder:
    def rounder(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).to(torch.float32)

    return rounder


def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    mantissa, exponent = torch.frexp(t)
    return torch.ldexp(torch.round(mantissa * _TF32_STEPS) / _TF32_STEPS, exponent)


def _round_fp8(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(torch.float32)


def rounders(cast_type: str) -> tuple[Rounder, Rounder | None]:
    """(operand rounding, result rounding or None) for an auto-cast type."""
    if cast_type == "bf16":
        return _round_through(torch.bfloat16), _round_through(torch.bfloat16)
    if cast_type == "fp16":
        return _round_through(torch.float16), _round_through(torch.float16)
    if cast_type == "tf32":
        return _round_tf32, None
    if cast_type == "fp8_e4m3":
        return _round_fp8, None
    raise ValueError(f"unknown auto-cast type {cast_type!r}")


def _is_fp32(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def _map(value: Any, fn: Rounder) -> Any:
    if _is_fp32(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        mapped = [_map(v, fn) for v in value]
        return type(value)(mapped) if isinstance(value, list) else tuple(mapped)
    return value


def _in_place(func: Any, kwargs: dict[str, Any]) -> bool:
    name = getattr(func, "__name__", "")
    return "out" in kwargs or (name.endswith("_") and not name.startswith("__")) or name.startswith("__i")


class AutoCastMode(TorchFunctionMode):
    """Round fp32 operands/results of the operators in ``scope`` ("matmult" | "all") through ``cast_type``."""

    def __init__(self, scope: str, cast_type: str) -> None:
        super().__init__()
        if scope not in ("matmult", "all"):
            raise ValueError(f"unknown auto-cast scope {scope!r}")
        self.scope = scope
        self.operand, self.result = rounders(cast_type)

    def _applies(self, func: Any, kwargs: dict[str, Any]) -> bool:
        if self.scope == "matmult":
            return func in _MATMULT
        return getattr(func, "__name__", "") not in _NEVER and not _in_place(func, kwargs)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self._applies(func, kwargs) or not any(_is_fp32(a) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        try:
            out = func(*_map(list(args), self.operand), **{k: _map(v, self.operand) for k, v in kwargs.items()})
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return func(*args, **kwargs)  # an operator without a rounded variant stays fp32
        return _map(out, self.result) if self.result is not None else out
