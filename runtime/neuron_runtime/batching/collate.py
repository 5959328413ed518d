"""Pure tensor shaping for the batcher: bucket choice, padding, concatenation, chunking and splitting.

No asyncio, no clocks, no model: everything here is a function of tensors and a `Signature` (what the artifact
was traced for), so it is tested exhaustively on its own. The concurrency lives in `batching.queue`.

Conventions:
- dim 0 is the batch (rows); a request of shape [k, ...] carries k rows.
- bucketed inputs are zero-padded on `bucket_axis` up to the smallest traced size that fits; outputs whose axis
  follows the bucket are cropped back to the request's length.
- a batch is padded (dim 0) only up to the smallest traced batch size that holds it (`choose_batch_size`);
- a chunk short of the traced batch size is padded by repeating its first row (not zeros: an all-zero attention
  mask would make a padded row all-masked, i.e. NaN, work the graph does for nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuron_runtime.errors import BadRequest


class RequestError(BadRequest):
    """The request does not fit the model's signature; the message names the input and the reason (HTTP 400)."""


@dataclass(frozen=True)
class InputSig:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]  # non-batch dims, as traced (bucket axis: the largest bucket)
    bucketed: bool


@dataclass(frozen=True)
class Signature:
    """What the artifact accepts: inputs (in call order), traced batch sizes, buckets on one axis."""

    inputs: tuple[InputSig, ...]
    batch_size: int  # the largest traced batch size (dynamic-batch chunks use it)
    bucket_sizes: tuple[int, ...] = ()
    bucket_axis: int | None = None  # axis in the full (batched) shape, >= 1
    batch_sizes: tuple[int, ...] = ()  # every traced batch size, ascending; () means just batch_size

    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def traced_batch_sizes(self) -> tuple[int, ...]:
        """Every traced batch size, ascending (the last is `batch_size`)."""
        return self.batch_sizes or (self.batch_size,)


@dataclass(frozen=True)
class Prepared:
    """A request checked against the signature and padded to its bucket: ready to queue."""

    tensors: tuple[torch.Tensor, ...]
    rows: int
    bucket: int | None
    length: int | None  # the request's own length on the bucket axis (for cropping outputs)

    @property
    def key(self) -> tuple[int | None, tuple[tuple[int, ...], ...]]:
        """Requests with equal keys can share a batch (same bucket, same non-batch shapes)."""
        return self.bucket, tuple(tuple(t.shape[1:]) for t in self.tensors)


def choose_bucket(length: int, sizes: Sequence[int]) -> int | None:
    """Smallest bucket size >= length, or None when the request is longer than every bucket."""
    for size in sizes:
        if size >= length:
            return size
    return None


def choose_batch_size(rows: int, sizes: Sequence[int]) -> int:
    """Smallest traced batch size (of the ascending `sizes`) that holds `rows`, else the largest (the batch is
    then cut into chunks of the largest size: dynamic batch)."""
    if not sizes:
        raise ValueError("no traced batch sizes")
    for size in sizes:
        if size >= rows:
            return size
    return sizes[-1]


def pad_axis(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Zero-pad `tensor` on `axis` up to `size` (returned as is when already that long)."""
    have = tensor.shape[axis]
    if have == size:
        return tensor
    if have > size:
        raise ValueError(f"cannot pad axis {axis} of length {have} down to {size}")
    pad_shape = list(tensor.shape)
    pad_shape[axis] = size - have
    return torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=axis)


def prepare(signature: Signature, inputs: dict[str, torch.Tensor], max_rows: int | None = None) -> Prepared:
    """Check a decoded request against the signature and pad it to its bucket.

    Steps: the input names (`_check_names`), each input's dtype, rank and batch dimension (`_check_input`), the
    rows every input agrees on (`_agree_rows`), each non-batch dimension and the bucket-axis length
    (`_check_dims`), the per-request row limit, then padding to the bucket (`_pad_to_bucket`)."""
    _check_names(signature, inputs)
    rows: int | None = None
    length: int | None = None
    for sig in signature.inputs:
        tensor = inputs[sig.name]
        _check_input(sig, tensor)
        rows = _agree_rows(sig, tensor, rows)
        length = _check_dims(sig, tensor, signature.bucket_axis, length)
    assert rows is not None
    if max_rows is not None and rows > max_rows:
        raise RequestError(f"request has {rows} rows; this model accepts at most {max_rows} per request")
    tensors = tuple(inputs[sig.name] for sig in signature.inputs)
    bucket, tensors = _pad_to_bucket(signature, tensors, length)
    return Prepared(tensors=tensors, rows=rows, bucket=bucket, length=length)


def _check_names(signature: Signature, inputs: dict[str, torch.Tensor]) -> None:
    """Refuse unknown inputs, then missing ones."""
    expected = signature.input_names()
    missing = [n for n in expected if n not in inputs]
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; the model takes {expected}")
    if missing:
        raise RequestError(f"missing input(s) {missing}; the model takes {expected}")


def _check_input(sig: InputSig, tensor: torch.Tensor) -> None:
    """Refuse an input whose dtype or rank differs from the model's, or that has no rows."""
    if tensor.dtype != sig.dtype:
        raise RequestError(f"input {sig.name!r}: dtype {tensor.dtype} does not match the model's {sig.dtype}")
    if tensor.dim() != len(sig.shape) + 1:
        raise RequestError(
            f"input {sig.name!r}: shape {list(tensor.shape)} has rank {tensor.dim()}, "
            f"expected rank {len(sig.shape) + 1} ([batch, {', '.join(map(str, sig.shape))}])"
        )
    if tensor.shape[0] < 1:
        raise RequestError(f"input {sig.name!r}: the batch dimension must be >= 1")


def _agree_rows(sig: InputSig, tensor: torch.Tensor, rows: int | None) -> int:
    """The request's rows: this input's batch dimension, which must equal the earlier inputs' (`rows`)."""
    if rows is None:
        return tensor.shape[0]
    if tensor.shape[0] != rows:
        raise RequestError(
            f"input {sig.name!r}: batch dimension {tensor.shape[0]} differs from the other inputs' {rows}"
        )
    return rows


def _check_dims(sig: InputSig, tensor: torch.Tensor, axis: int | None, length: int | None) -> int | None:
    """Check the non-batch dimensions against the model's; returns the request's length on the bucket `axis`
    (which every bucketed input must share), `length` as is when this input is not bucketed."""
    for dim, (got, want) in enumerate(zip(tensor.shape[1:], sig.shape, strict=True), start=1):
        if sig.bucketed and dim == axis:
            if length is None:
                length = got
            elif got != length:
                raise RequestError(
                    f"input {sig.name!r}: length {got} on axis {dim} differs from the other inputs' {length}"
                )
            continue
        if got != want:
            raise RequestError(
                f"input {sig.name!r}: shape {list(tensor.shape)} does not match the model's "
                f"[batch, {', '.join(map(str, sig.shape))}] (axis {dim} must be {want})"
            )
    return length


def _pad_to_bucket(
    signature: Signature, tensors: tuple[torch.Tensor, ...], length: int | None
) -> tuple[int | None, tuple[torch.Tensor, ...]]:
    """Choose the bucket for `length` and zero-pad the bucketed inputs to it; (None, tensors) without buckets."""
    axis = signature.bucket_axis
    if axis is None or length is None:
        return None, tensors
    if length < 1:
        raise RequestError(f"inputs have length 0 on the bucket axis {axis}")
    bucket = choose_bucket(length, signature.bucket_sizes)
    if bucket is None:
        raise RequestError(
            f"length {length} on axis {axis} exceeds the largest traced bucket {signature.bucket_sizes[-1]}"
        )
    padded = tuple(
        pad_axis(t, axis, bucket) if sig.bucketed else t for t, sig in zip(tensors, signature.inputs, strict=True)
    )
    return bucket, padded


def concat(requests: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Stack requests row-wise, input by input (all must share the non-batch shapes)."""
    if not requests:
        raise ValueError("cannot concatenate an empty batch")
    n_inputs = len(requests[0])
    out = []
    for i in range(n_inputs):
        parts = [r[i] for r in requests]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"input {i}: requests with different non-batch shapes {sorted(shapes)} in one batch")
        out.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
    return out


def chunk(batch: Sequence[torch.Tensor], size: int) -> list[tuple[list[torch.Tensor], int]]:
    """Cut a batch into chunks of exactly `size` rows; returns (tensors, real rows) with the last chunk padded."""
    rows = batch[0].shape[0]
    chunks = []
    for start in range(0, rows, size):
        real = min(size, rows - start)
        pieces = [t[start : start + real] for t in batch]
        if real < size:
            pieces = [pad_rows(p, size) for p in pieces]
        chunks.append((pieces, real))
    return chunks


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad dim 0 up to `rows` by repeating the first row."""
    have = tensor.shape[0]
    if have >= rows:
        return tensor
    filler = tensor[:1].expand(rows - have, *tensor.shape[1:])
    return torch.cat([tensor, filler], dim=0)


def unchunk(outputs: Sequence[Sequence[torch.Tensor]], real_rows: Sequence[int]) -> list[torch.Tensor]:
    """Join per-chunk outputs back into one batch, dropping each chunk's padding rows."""
    if len(outputs) != len(real_rows):
        raise ValueError(f"{len(outputs)} chunk outputs for {len(real_rows)} chunks")
    n_outputs = len(outputs[0])
    joined = []
    for i in range(n_outputs):
        parts = [chunk_out[i][:real] for chunk_out, real in zip(outputs, real_rows, strict=True)]
        joined.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
    return joined


def split(outputs: Sequence[torch.Tensor], rows: Sequence[int]) -> list[list[torch.Tensor]]:
    """Cut batch outputs into per-request outputs of `rows[i]` rows each (in order)."""
    total = sum(rows)
    for i, out in enumerate(outputs):
        if out.dim() == 0 or out.shape[0] != total:
            raise ValueError(f"output {i} has {out.shape[0] if out.dim() else 0} rows, the batch had {total}")
    result: list[list[torch.Tensor]] = []
    start = 0
    for n in rows:
        result.append([out[start : start + n] for out in outputs])
        start += n
    return result


def crop(outputs: Sequence[torch.Tensor], axes: Sequence[int | None], length: int | None) -> list[torch.Tensor]:
    """Crop each output whose `axes[i]` follows the bucket back to the request's own `length`."""
    if length is None:
        return list(outputs)
    return [o if axis is None else o.narrow(axis, 0, length) for o, axis in zip(outputs, axes, strict=True)]
