"""OIP v2 codec: JSON and binary tensors in, responses out, and a clear ProtocolError for every malformation."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import torch

from neuron_runtime.protocol import InferRequest, ProtocolError, RequestedOutput, decode_request, encode_response

DTYPES = {"x": "float32", "ids": "int64", "u8": "uint8"}


def body(inputs: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_json_tensors_nested_or_flat() -> None:
    req = decode_request(
        body(
            [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                {"name": "ids", "shape": [2, 1], "datatype": "INT64", "data": [7, 8]},
            ],
            id="r1",
        ),
        None,
        DTYPES,
    )
    assert req.id == "r1"
    assert req.inputs["x"].dtype == torch.float32
    assert req.inputs["x"].tolist() == [[1, 2], [3, 4]]
    assert req.inputs["ids"].dtype == torch.int64
    assert req.inputs["ids"].tolist() == [[7], [8]]


def test_binary_tensors_follow_the_json_header() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    header = body([{"name": "x", "shape": [3, 2], "datatype": "FP32", "parameters": {"binary_data_size": 24}}])
    req = decode_request(header + x.tobytes(), str(len(header)), DTYPES)
    assert req.inputs["x"].numpy().tolist() == x.tolist()
    assert req.id == ""


def test_bf16_binary() -> None:
    t = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    raw = t.view(torch.int16).numpy().tobytes()
    header = body([{"name": "x", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}}])
    req = decode_request(header + raw, str(len(header)), {"x": "bfloat16"})
    assert torch.equal(req.inputs["x"], t)


X = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("raw", "header", "fragment"),
    [
        (b"\x00\xff garbage", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (body([]), None, "non-empty list"),
        (json.dumps({"id": 5, "inputs": [X]}).encode(), None, "'id' must be a string"),
        (body([{**X, "name": "y"}]), None, "unknown input 'y'"),
        (body([X, X]), None, "given twice"),
        (body([{**X, "datatype": "FP64"}]), None, "datatype 'FP64' does not match the model's 'FP32'"),
        (body([{**X, "shape": "1x2"}]), None, "list of integers"),
        (body([{**X, "shape": [1, -2]}]), None, "negative dimension"),
        (body([{**X, "shape": [1 << 20, 1 << 20]}]), None, "too large"),
        # D4: a zero-size tensor with a huge other dimension used to reach torch (500).
        (body([{**X, "shape": [0, 100_000_000_000], "data": []}]), None, "has a zero dimension"),
        (body([{**X, "shape": [1, 0], "data": []}]), None, "has a zero dimension"),
        # D5: integers outside the datatype's range used to wrap silently (INT64 2**63 -> -2**63, UINT8 300 -> 44);
        # orjson parses integers beyond 64 bits as floats, refused for an integer datatype.
        (
            body([{"name": "ids", "shape": [1], "datatype": "INT64", "data": [2**63]}]),
            None,
            "outside the range of INT64",
        ),
        (
            body([{"name": "ids", "shape": [2], "datatype": "INT64", "data": [0, -(2**63) - 1]}]),
            None,
            "not a valid INT64 tensor",
        ),
        (body([{"name": "u8", "shape": [1], "datatype": "UINT8", "data": [300]}]), None, "value 300 is outside"),
        (body([{"name": "u8", "shape": [1], "datatype": "UINT8", "data": [-1]}]), None, "value -1 is outside"),
        # D9: a finite number too large for FP32 would become inf.
        (body([{**X, "data": [1.0, 1e39]}]), None, "too large for FP32"),
        (body([{**X, "data": [1.0, 2.0, 3.0]}]), None, "has 3 elements but shape [1, 2] needs 2"),
        (body([{**X, "data": ["a", "b"]}]), None, "not a valid FP32 tensor"),
        (body([{**X, "data": [[1.0], [2.0, 3.0]]}]), None, "not a valid FP32 tensor"),
        (body([{**X, "data": None}]), None, "'data' must be a list"),
        (body([{"name": "x", "shape": [1, 2], "datatype": "FP32"}]), None, "neither 'data' nor"),
        (body([{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1.5]}]), None, "floating-point values"),
        (body([X]), "abc", "must be an integer"),
        (body([X]), "99999", "outside the body"),
        (body([{**X, "parameters": {"binary_data_size": 8}}]), None, "has no Inference-Header-Content-Length"),
        (body([X], outputs="all"), None, "'outputs' must be a list"),
        (body([X], parameters={"timeout": "soon"}), None, "parameters.timeout"),
    ],
)
def test_malformed_requests_raise_protocol_errors(raw: bytes, header: str | None, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode_request(raw, header, DTYPES)


def test_binary_size_mismatches() -> None:
    header = body([{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}])
    with pytest.raises(ProtocolError, match="does not match shape"):
        decode_request(header + b"\x00" * 4, str(len(header)), DTYPES)
    header = body([{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}])
    with pytest.raises(ProtocolError, match="runs past the end"):
        decode_request(header + b"\x00" * 4, str(len(header)), DTYPES)
    with pytest.raises(ProtocolError, match="4 bytes of binary data are not claimed"):
        decode_request(header + b"\x00" * 12, str(len(header)), DTYPES)


def request(**kwargs: object) -> InferRequest:
    base: dict[str, object] = {"id": "q", "inputs": {}, "outputs": None, "binary_output": False, "timeout_s": None}
    base.update(kwargs)
    return InferRequest(**base)  # type: ignore[arg-type]


def test_encode_json_and_binary_outputs() -> None:
    out = torch.tensor([[0.5, 1.5]])
    payload, header_length = encode_response("m", request(), ["output0"], [out])
    assert header_length is None
    assert orjson.loads(payload) == {
        "model_name": "m",
        "id": "q",
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}],
    }
    payload, header_length = encode_response("m", request(binary_output=True), ["output0"], [out])
    assert header_length is not None
    doc = orjson.loads(payload[:header_length])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(payload[header_length:], dtype=np.float32).tolist() == [0.5, 1.5]
    wanted = [RequestedOutput("nope", False)]
    with pytest.raises(ProtocolError, match="unknown output 'nope'"):
        encode_response("m", request(outputs=wanted), ["output0"], [out])
