"""Units of work a worker runs on its graphs, in a form that crosses a process boundary cheaply.

A job carries numpy arrays, not torch tensors: pickling a torch tensor costs ~90 us (it goes through the storage
serialiser) against a few us for a numpy array, and a worker process exchanges one job and one result per batch.
`torch.from_numpy` / `.numpy()` are zero-copy, so thread workers pay nothing for the detour. bfloat16 (no numpy
dtype) travels as its int16 bit pattern.

`BatchJob` is a whole batch that fits one traced call: concatenate, pad to the chosen traced batch size, run that
size's graph, split per request, crop (all on the worker, off the event loop). `GraphJob` is one call on an
already shaped chunk (dynamic-batch chunks, warm-up, parity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import torch

from neuron_runtime.batching import collate
from neuron_runtime.tensors import flatten_outputs

Graphs = dict[tuple[int | None, int], torch.jit.ScriptModule]
"""Loaded graphs of one model copy, by (bucket size or None without buckets, traced batch size)."""

# npt.NDArray, not np.ndarray[...]: this alias is evaluated at import, and ndarray is subscriptable only from numpy
# 1.22, newer than the numpy neuron-cc pins in the inf1 image (aws-neuron/aws-neuron-sdk#762).
Wire = tuple[npt.NDArray[Any], bool]  # (array, is_bfloat16)


def to_wire(tensor: torch.Tensor) -> Wire:
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy(), True
    return tensor.numpy(), False


def from_wire(wire: Wire) -> torch.Tensor:
    array, bf16 = wire
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bf16 else tensor


def tensors_to_wire(tensors: Sequence[torch.Tensor]) -> list[Wire]:
    return [to_wire(t) for t in tensors]


def tensors_from_wire(wires: Sequence[Wire]) -> list[torch.Tensor]:
    return [from_wire(w) for w in wires]


@dataclass(frozen=True)
class GraphJob:
    """Run the graph of one bucket and batch size on tensors already at that batch size."""

    bucket: int | None
    inputs: list[Wire]
    batch_size: int | None = None  # None: the inputs' rows (dim 0)

    def __call__(self, graphs: Graphs) -> list[Wire]:
        size = self.batch_size if self.batch_size is not None else int(self.inputs[0][0].shape[0])
        outputs = flatten_outputs(graphs[(self.bucket, size)](*tensors_from_wire(self.inputs)))
        return tensors_to_wire(outputs)


@dataclass(frozen=True)
class BatchJob:
    """Run a batch of requests (total rows <= `size`, a traced batch size) in one call of that size's graph; one
    output list per request."""

    bucket: int | None
    requests: list[list[Wire]]
    rows: list[int]
    lengths: list[int | None]
    size: int
    axes: list[int | None]

    @classmethod
    def of(cls, batch: Sequence[collate.Prepared], size: int, axes: Sequence[int | None]) -> BatchJob:
        return cls(
            bucket=batch[0].bucket,
            requests=[tensors_to_wire(p.tensors) for p in batch],
            rows=[p.rows for p in batch],
            lengths=[p.length for p in batch],
            size=size,
            axes=list(axes),
        )

    def __call__(self, graphs: Graphs) -> list[list[Wire]]:
        joined = collate.concat([tensors_from_wire(r) for r in self.requests])
        padded = [collate.pad_rows(t, self.size) for t in joined]
        outputs = flatten_outputs(graphs[(self.bucket, self.size)](*padded))
        total = sum(self.rows)
        per_request = collate.split([o[:total] for o in outputs], self.rows)
        return [
            tensors_to_wire(collate.crop(out, self.axes, length))
            for out, length in zip(per_request, self.lengths, strict=True)
        ]
