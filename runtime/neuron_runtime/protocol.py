"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) request decoding and response encoding.

Pure functions over bytes: no HTTP framework, no model. Handles JSON tensors (nested or flat `data`) and the
binary tensor extension (raw little-endian bytes after the JSON header, whose length is given by the
`Inference-Header-Content-Length` header). Binary vs JSON is decided by that header alone, never by
Content-Type (tritonclient sends no Content-Type; see docs/batching-and-inference-api.md §2.4).

Every malformed request raises `ProtocolError` with a message naming the field; the server answers it with 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from neuron_runtime.errors import BadRequest
from neuron_runtime.tensors import ITEM_SIZES, NUMPY_DTYPES, OIP_DATATYPES, TORCH_DTYPES

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPE_OF_DATATYPE = {v: k for k, v in OIP_DATATYPES.items()}
MAX_ELEMENTS = 1 << 28


class ProtocolError(BadRequest):
    """The request is not a valid v2 inference request for this model (HTTP 400)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str
    inputs: dict[str, torch.Tensor]
    outputs: list[RequestedOutput] | None  # None: all outputs
    binary_output: bool  # request-level `binary_data_output`
    timeout_s: float | None  # Triton's `timeout` parameter (microseconds on the wire)


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def decode_request(body: bytes, header_length: str | None, input_dtypes: Mapping[str, str]) -> InferRequest:
    """Parse an infer request. `input_dtypes` maps each model input to its dtype name (`float32`, ...).

    Steps: split the body into the JSON header and the binary data (`_split_body`), parse the header
    (`_parse_header`), decode every input (`_decode_inputs`: JSON `data` or the binary extension), then the
    requested outputs (`_decode_outputs`) and the timeout (`_decode_timeout`)."""
    header, binary = _split_body(body, header_length)
    doc = _parse_header(header)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    params = _dict(doc.get("parameters") or {}, "'parameters'")
    inputs = _decode_inputs(doc.get("inputs"), binary, header_length is not None, input_dtypes)
    outputs = _decode_outputs(doc)
    timeout_s = _decode_timeout(params)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)),
        timeout_s=timeout_s,
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Cut the body into (JSON header, binary data) at `Inference-Header-Content-Length`; all JSON without it."""
    if header_length is None:
        return body, b""
    try:
        json_length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < json_length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH}={json_length} is outside the body of {len(body)} bytes")
    return body[:json_length], body[json_length:]


def _parse_header(header: bytes) -> dict[str, Any]:
    """The JSON header as an object."""
    try:
        return _dict(orjson.loads(header), "the request body")
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None


def _decode_inputs(
    raw_inputs: Any, binary: bytes, has_header_length: bool, input_dtypes: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Decode `inputs`, in order: each from its JSON `data` or from its slice of the binary data (which the
    inputs must claim entirely)."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    inputs: dict[str, torch.Tensor] = {}
    offset = 0
    view = memoryview(binary)
    for i, raw in enumerate(raw_inputs):
        entry = _dict(raw, f"inputs[{i}]")
        name, dtype, shape = _input_spec(entry, i, inputs, input_dtypes)
        where = f"input {name!r}"
        entry_params = _dict(entry.get("parameters") or {}, f"{where}.parameters")
        if "binary_data_size" in entry_params:
            size = _binary_size(entry_params["binary_data_size"], where, dtype, shape, has_header_length, view, offset)
            inputs[name] = _from_bytes(view[offset : offset + size], dtype, shape)
            offset += size
        else:
            if "data" not in entry:
                raise ProtocolError(f"{where} has neither 'data' nor parameters.binary_data_size")
            inputs[name] = _from_json(entry["data"], dtype, shape, where)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return inputs


def _input_spec(
    entry: dict[str, Any], i: int, seen: Mapping[str, torch.Tensor], input_dtypes: Mapping[str, str]
) -> tuple[str, str, list[int]]:
    """Check an input entry's name, shape and datatype against the model; returns (name, dtype name, shape)."""
    name = entry.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"inputs[{i}].name must be a string")
    where = f"input {name!r}"
    if name not in input_dtypes:
        raise ProtocolError(f"unknown input {name!r}; the model takes {sorted(input_dtypes)}")
    if name in seen:
        raise ProtocolError(f"{where} is given twice")
    shape = _shape(entry.get("shape"), where)
    datatype = entry.get("datatype")
    expected = OIP_DATATYPES[input_dtypes[name]]
    if datatype != expected:
        raise ProtocolError(f"{where}: datatype {datatype!r} does not match the model's {expected!r}")
    return name, input_dtypes[name], shape


def _binary_size(
    size: Any, where: str, dtype: str, shape: list[int], has_header_length: bool, view: memoryview, offset: int
) -> int:
    """Check an input's `binary_data_size` (binary tensor extension): a non-negative integer, within the binary
    data left at `offset`, and exactly the bytes of `shape` in `dtype`."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{where}: parameters.binary_data_size must be a non-negative integer")
    if not has_header_length:
        raise ProtocolError(f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header")
    if offset + size > len(view):
        raise ProtocolError(
            f"{where}: binary_data_size={size} runs past the end of the binary data ({len(view)} bytes)"
        )
    count = math.prod(shape)
    if size != count * ITEM_SIZES[dtype]:
        raise ProtocolError(
            f"{where}: binary_data_size={size} does not match shape {shape} of {OIP_DATATYPES[dtype]} "
            f"({count * ITEM_SIZES[dtype]} bytes)"
        )
    return size


def _decode_outputs(doc: dict[str, Any]) -> list[RequestedOutput] | None:
    """The requested `outputs` (None when absent: all outputs), each with its `binary_data` flag."""
    if "outputs" not in doc:
        return None
    raw_outputs = doc["outputs"]
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    outputs = []
    for i, raw in enumerate(raw_outputs):
        entry = _dict(raw, f"outputs[{i}]")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"outputs[{i}].name must be a string")
        out_params = _dict(entry.get("parameters") or {}, f"outputs[{i}].parameters")
        outputs.append(RequestedOutput(name, bool(out_params.get("binary_data", False))))
    return outputs


def _decode_timeout(params: dict[str, Any]) -> float | None:
    """Triton's `timeout` parameter (microseconds) in seconds; None when absent or 0."""
    if "timeout" not in params:
        return None
    timeout = params["timeout"]
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise ProtocolError("parameters.timeout must be a non-negative integer (microseconds)")
    return timeout / 1e6 if timeout else None


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise ProtocolError(f"{where}: shape {value} has a negative dimension")
    if any(d == 0 for d in value):
        raise ProtocolError(f"{where}: shape {value} has a zero dimension (every dimension must be >= 1)")
    if any(d > MAX_ELEMENTS for d in value) or math.prod(value) > MAX_ELEMENTS:
        raise ProtocolError(f"{where}: shape {value} is too large (at most {MAX_ELEMENTS} elements)")
    return value


def check_values(source: np.ndarray[Any, Any], dtype: str, where: str) -> None:
    """Refuse values the model's datatype cannot hold, before any conversion could wrap or overflow them.

    Integers outside the datatype's range (INT64 2**63, UINT8 300) and finite numbers too large for a
    floating-point datatype (FP32 1e39 would become inf) raise `ProtocolError`; `source` is the array as the client
    sent it (e.g. numpy's int64/uint64/float64 from JSON, or gRPC's wider typed contents)."""
    if source.size == 0:
        return
    kind = source.dtype.kind
    if dtype in ("int64", "int32", "int8", "uint8") and kind in "iu":
        info = np.iinfo(NUMPY_DTYPES[dtype])
        low, high = source.min(), source.max()
        if int(low) < info.min or int(high) > info.max:
            bad = int(low) if int(low) < info.min else int(high)
            raise ProtocolError(
                f"{where}: value {bad} is outside the range of {OIP_DATATYPES[dtype]} [{info.min}, {info.max}]"
            )
    elif dtype in ("float32", "float16", "bfloat16") and kind == "f":
        limit = float(torch.finfo(TORCH_DTYPES[dtype]).max)
        finite = source[np.isfinite(source)]
        if finite.size and float(np.abs(finite).max()) > limit:
            raise ProtocolError(
                f"{where}: value {float(np.abs(finite).max()):g} is too large for {OIP_DATATYPES[dtype]} "
                f"(largest finite value {limit:g})"
            )


def _from_bytes(data: memoryview, dtype: str, shape: list[int]) -> torch.Tensor:
    if dtype == "bfloat16":
        return (
            torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(shape)
            if data.nbytes
            else (torch.empty(shape, dtype=torch.bfloat16))
        )
    array = np.frombuffer(data, dtype=NUMPY_DTYPES[dtype]).reshape(shape).copy()
    return torch.from_numpy(array)


def _from_json(data: Any, dtype: str, shape: list[int], where: str) -> torch.Tensor:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be a list")
    np_dtype = NUMPY_DTYPES.get(dtype, np.dtype("<f4"))  # bfloat16 goes through float32
    try:
        array = np.asarray(data)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ValueError("non-numeric or ragged data")
        if np_dtype.kind in "biu" and array.dtype.kind == "f":
            raise ValueError(f"floating-point values for an integer datatype {OIP_DATATYPES[dtype]}")
        if np_dtype.kind == "b" and array.dtype.kind != "b":
            raise ValueError("BOOL data must be true/false")
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"{where}: 'data' is not a valid {OIP_DATATYPES[dtype]} tensor ({exc})") from None
    check_values(array, dtype, where)
    array = array.astype(np_dtype, copy=False)
    if array.size != math.prod(shape):
        raise ProtocolError(f"{where}: 'data' has {array.size} elements but shape {shape} needs {math.prod(shape)}")
    tensor = torch.from_numpy(array.reshape(shape))
    return tensor.to(TORCH_DTYPES[dtype]) if dtype == "bfloat16" else tensor


def encode_response(
    model_name: str,
    request: InferRequest,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    model_version: str | None = None,
) -> tuple[bytes, int | None]:
    """Build the response body; returns (body, JSON header length when binary data follows, else None)."""
    selected: list[tuple[str, torch.Tensor, bool]] = []
    if request.outputs is None:
        selected = [(n, t, request.binary_output) for n, t in zip(names, tensors, strict=True)]
    else:
        by_name = dict(zip(names, tensors, strict=True))
        for wanted in request.outputs:
            if wanted.name not in by_name:
                raise ProtocolError(f"unknown output {wanted.name!r}; the model returns {list(names)}")
            selected.append((wanted.name, by_name[wanted.name], wanted.binary or request.binary_output))
    doc_outputs = []
    blobs: list[bytes] = []
    for name, tensor, binary in selected:
        dtype = _dtype_name(tensor.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": OIP_DATATYPES[dtype], "shape": list(tensor.shape)}
        if binary:
            raw = _to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _to_numpy(tensor).ravel()
        doc_outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "id": request.id, "outputs": doc_outputs}
    if model_version is not None:
        doc["model_version"] = model_version
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"output dtype {dtype} has no v2 datatype")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


def _to_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().tobytes()
    return tensor.numpy().tobytes()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
