"""Dtype names and tensor conversions shared by compile, the model loader and the OIP codec.

Three vocabularies meet here: the manifest's dtype names (`float32`, ...), torch dtypes, and the Open Inference
Protocol datatypes (`FP32`, ...). numpy has no bfloat16, so BF16 tensors travel as raw bytes through torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
OIP_DATATYPES: dict[str, str] = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "BF16",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
ITEM_SIZES: dict[str, int] = {name: torch.empty((), dtype=dt).element_size() for name, dt in TORCH_DTYPES.items()}


def torch_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"output dtype {dtype} is not supported by the runtime") from None


def load_script(path: Path) -> torch.jit.ScriptModule:
    """`torch.jit.load` onto the CPU (Neuron graphs move to their NeuronCores inside it), typed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript; Neuron still uses it
        module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return module


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """A model's output (tensor, or tuple/list of tensors) as a flat list of tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        flat: list[torch.Tensor] = []
        for item in value:
            flat.extend(flatten_outputs(item))
        return flat
    raise TypeError(f"model output of type {type(value).__name__} is not a tensor or a tuple of tensors")
