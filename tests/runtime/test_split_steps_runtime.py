"""The runtime functions split into named steps (ruff's complexity limits): the branches each step now owns, with
their exact error texts: OIP v2 request decoding (binary extension, outputs, timeout), `collate.prepare`'s bucket
step, batch isolation (`ServedModel._execute`: bisection and blame) and the traced-vs-eager check of a compile."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neuron_runtime.batching import collate
from neuron_runtime.compile import TraceError, _max_traced_error
from neuron_runtime.errors import InferenceError, ModelError, RequestFailed, Unavailable
from neuron_runtime.model import ServedModel
from neuron_runtime.protocol import ProtocolError, RequestedOutput, decode_request

DTYPES = {"x": "float32", "ids": "int64", "u8": "uint8"}
X = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}


def body(inputs: list[object], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def binary_x(size: object) -> dict[str, object]:
    return {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": size}}


# -- protocol.decode_request ---------------------------------------------------------------------------------------


def test_json_and_binary_inputs_mix_and_binary_ones_take_their_slices_in_order() -> None:
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    u8 = np.array([1, 2, 255], dtype=np.uint8)
    header = body(
        [
            binary_x(8),
            {"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, 8]},
            {"name": "u8", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}},
        ],
        id="mixed",
        parameters={"binary_data_output": True},
    )
    req = decode_request(header + x.tobytes() + u8.tobytes(), str(len(header)), DTYPES)
    assert req.id == "mixed"
    assert list(req.inputs) == ["x", "ids", "u8"]
    assert req.inputs["x"].tolist() == [[1.5, -2.0]]
    assert req.inputs["ids"].tolist() == [7, 8]
    assert req.inputs["u8"].dtype == torch.uint8
    assert req.inputs["u8"].tolist() == [1, 2, 255]
    assert req.binary_output is True
    assert req.outputs is None
    assert req.timeout_s is None


@pytest.mark.parametrize(
    ("raw", "binary", "message"),
    [
        (
            body([binary_x(4)]),
            b"\x00" * 4,
            "input 'x': binary_data_size=4 does not match shape [1, 2] of FP32 (8 bytes)",
        ),
        (
            body([binary_x(8)]),
            b"\x00" * 4,
            "input 'x': binary_data_size=8 runs past the end of the binary data (4 bytes)",
        ),
        (body([binary_x(8)]), b"\x00" * 12, "4 bytes of binary data are not claimed by any input"),
        (body([X]), b"\x00", "1 bytes of binary data are not claimed by any input"),
        (body([binary_x(-1)]), b"", "input 'x': parameters.binary_data_size must be a non-negative integer"),
        (body([binary_x(True)]), b"", "input 'x': parameters.binary_data_size must be a non-negative integer"),
        (body([binary_x("8")]), b"", "input 'x': parameters.binary_data_size must be a non-negative integer"),
    ],
)
def test_binary_extension_errors_name_the_input_exactly(raw: bytes, binary: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{re.escape(message)}$"):
        decode_request(raw + binary, str(len(raw)), DTYPES)


@pytest.mark.parametrize(
    ("raw", "header", "message"),
    [
        (
            body([binary_x(8)]),
            None,
            "input 'x' has binary_data_size but the request has no Inference-Header-Content-Length header",
        ),
        (body([5]), None, "inputs[0] must be a JSON object"),
        (body([{**X, "name": 5}]), None, "inputs[0].name must be a string"),
        (body([{**X, "parameters": [1]}]), None, "input 'x'.parameters must be a JSON object"),
        (body([X], parameters=[1]), None, "'parameters' must be a JSON object"),
        (body([X], outputs=[5]), None, "outputs[0] must be a JSON object"),
        (body([X], outputs=[{"name": 5}]), None, "outputs[0].name must be a string"),
        (body([X], outputs=[{"name": "o", "parameters": [1]}]), None, "outputs[0].parameters must be a JSON object"),
        (
            body([X], parameters={"timeout": True}),
            None,
            "parameters.timeout must be a non-negative integer (microseconds)",
        ),
        (
            body([X], parameters={"timeout": -1}),
            None,
            "parameters.timeout must be a non-negative integer (microseconds)",
        ),
        (body([X]), "0", f"Inference-Header-Content-Length=0 is outside the body of {len(body([X]))} bytes"),
        (body([X]), "1.5", "Inference-Header-Content-Length must be an integer, got '1.5'"),
    ],
)
def test_request_level_errors_keep_their_texts(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{re.escape(message)}$"):
        decode_request(raw, header, DTYPES)


def test_requested_outputs_and_the_timeout_are_decoded() -> None:
    outputs = [{"name": "a"}, {"name": "b", "parameters": {"binary_data": True}}]
    req = decode_request(body([X], outputs=outputs, parameters={"timeout": 1_500_000}), None, DTYPES)
    assert req.outputs == [RequestedOutput("a", False), RequestedOutput("b", True)]
    assert req.timeout_s == 1.5
    assert req.binary_output is False
    assert decode_request(body([X], outputs=[]), None, DTYPES).outputs == []
    assert decode_request(body([X], parameters={"timeout": 0}), None, DTYPES).timeout_s is None


# -- collate.prepare: the bucket step ------------------------------------------------------------------------------

SIG = collate.Signature(
    inputs=(
        collate.InputSig("a", torch.float32, (4,), True),
        collate.InputSig("b", torch.float32, (4, 2), True),
    ),
    batch_size=2,
    bucket_sizes=(2, 4),
    bucket_axis=1,
)


def test_prepare_pads_every_bucketed_input_to_the_smallest_bucket_that_fits() -> None:
    a = torch.ones(2, 3)
    b = torch.ones(2, 3, 2)
    prepared = collate.prepare(SIG, {"a": a, "b": b})
    assert (prepared.rows, prepared.bucket, prepared.length) == (2, 4, 3)
    assert [list(t.shape) for t in prepared.tensors] == [[2, 4], [2, 4, 2]]
    assert prepared.tensors[0][:, 3].tolist() == [0.0, 0.0]
    assert prepared.tensors[1][:, :3].tolist() == b.tolist()


def test_prepare_refuses_a_zero_length_and_a_wrong_fixed_dimension() -> None:
    with pytest.raises(collate.RequestError, match=r"^inputs have length 0 on the bucket axis 1$"):
        collate.prepare(SIG, {"a": torch.ones(1, 0), "b": torch.ones(1, 0, 2)})
    with pytest.raises(
        collate.RequestError,
        match=re.escape("input 'b': shape [1, 3, 5] does not match the model's [batch, 4, 2] (axis 2 must be 2)"),
    ):
        collate.prepare(SIG, {"a": torch.ones(1, 3), "b": torch.ones(1, 3, 5)})


def test_prepare_without_buckets_returns_the_tensors_as_given() -> None:
    sig = collate.Signature(inputs=(collate.InputSig("a", torch.float32, (4,), False),), batch_size=2)
    a = torch.ones(3, 4)
    prepared = collate.prepare(sig, {"a": a})
    assert (prepared.rows, prepared.bucket, prepared.length) == (3, None, None)
    assert prepared.tensors[0] is a


# -- ServedModel._execute: bisection and blame ---------------------------------------------------------------------


class FakeModel:
    """What `_execute` uses of a ServedModel: `_run` (raising on poisoned requests), `_probe`, the isolation count."""

    def __init__(self, poisoned: set[int], probe_ok: bool, lost: frozenset[int] = frozenset()) -> None:
        self.poisoned = poisoned
        self.lost = lost
        self.probe_ok = probe_ok
        self.calls: list[list[int]] = []
        self.probes = 0
        self.isolations = 0
        self.metrics = SimpleNamespace(isolations=SimpleNamespace(inc=self._count))

    def _count(self) -> None:
        self.isolations += 1

    async def _run(self, batch: Sequence[collate.Prepared]) -> list[list[torch.Tensor]]:
        ids = [int(p.tensors[0].item()) for p in batch]
        self.calls.append(ids)
        if len(ids) < 4 and self.lost & set(ids):
            raise Unavailable("worker lost")
        if self.poisoned & set(ids):
            raise RuntimeError(f"poisoned {sorted(self.poisoned & set(ids))}")
        return [[torch.tensor([float(i)])] for i in ids]

    async def _probe(self, bucket: int | None) -> bool:
        self.probes += 1
        return self.probe_ok


def requests(n: int) -> list[collate.Prepared]:
    return [collate.Prepared(tensors=(torch.tensor([float(i)]),), rows=1, bucket=None, length=None) for i in range(n)]


async def test_one_poisoned_request_is_bisected_out_and_its_batch_mates_are_served() -> None:
    model = FakeModel(poisoned={2}, probe_ok=True)
    results = await ServedModel._execute(model, requests(4))  # type: ignore[arg-type]
    assert model.calls == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]
    assert model.isolations == 1
    assert model.probes == 0  # some were served: the model runs
    assert [r[0].item() for i, r in enumerate(results) if i != 2] == [0.0, 1.0, 3.0]  # type: ignore[index]
    assert isinstance(results[2], RequestFailed)
    assert str(results[2]) == "the model failed on this request's values: RuntimeError: poisoned [2]"


async def test_every_request_failing_is_blamed_on_the_requests_when_the_probe_passes() -> None:
    model = FakeModel(poisoned={0, 1}, probe_ok=True)
    results = await ServedModel._execute(model, requests(2))  # type: ignore[arg-type]
    assert model.probes == 1
    assert [type(r) for r in results] == [RequestFailed, RequestFailed]


async def test_every_request_failing_is_a_model_error_when_the_probe_fails_too() -> None:
    model = FakeModel(poisoned={0, 1}, probe_ok=False)
    results = await ServedModel._execute(model, requests(2))  # type: ignore[arg-type]
    assert model.probes == 1
    assert [type(r) for r in results] == [ModelError, ModelError]
    assert [str(r) for r in results] == [
        "the model failed: RuntimeError: poisoned [0]",
        "the model failed: RuntimeError: poisoned [1]",
    ]


async def test_an_inference_error_during_bisection_is_the_answer_of_that_part() -> None:
    model = FakeModel(poisoned={0}, probe_ok=True, lost=frozenset({3}))
    results = await ServedModel._execute(model, requests(4))  # type: ignore[arg-type]
    assert isinstance(results[0], RequestFailed)
    assert results[1][0].item() == 1.0  # type: ignore[index]
    assert isinstance(results[2], Unavailable)
    assert results[2] is results[3]  # the [2, 3] part's own error, as raised
    assert str(results[3]) == "worker lost"


async def test_an_inference_error_of_the_whole_batch_fails_every_request_without_isolation() -> None:
    model = FakeModel(poisoned=set(), probe_ok=True, lost=frozenset({0}))
    batch = requests(2)
    results = await ServedModel._execute(model, batch)  # type: ignore[arg-type]
    assert model.calls == [[0, 1]]
    assert model.isolations == 0
    assert all(isinstance(r, InferenceError) and str(r) == "worker lost" for r in results)


# -- compile: traced vs eager outputs ------------------------------------------------------------------------------


def test_the_traced_error_is_the_largest_difference_and_empty_outputs_are_skipped() -> None:
    expected = [[torch.tensor([1.0, 2.0]), torch.empty(0)], [torch.tensor([0.0, 0.0]), torch.empty(0)]]
    got = [[torch.tensor([1.0, 2.25]), torch.empty(0)], [torch.tensor([0.0, -0.5]), torch.empty(0)]]
    assert _max_traced_error(got, expected, "batch 2", 0.0) == 0.5
    assert _max_traced_error(got, expected, "batch 2", 0.75) == 0.75
    assert _max_traced_error([[torch.empty(0)]], [[torch.empty(0)]], "batch 2", None) is None


@pytest.mark.parametrize(
    "got",
    [[[torch.zeros(2), torch.zeros(1)]], [[torch.zeros(3)]]],
    ids=["another-count", "another-shape"],
)
def test_traced_outputs_of_other_shapes_are_a_trace_error(got: list[list[torch.Tensor]]) -> None:
    message = "traced graph for batch 2, bucket 8 returns different output shapes than the eager model"
    with pytest.raises(TraceError, match=f"^{re.escape(message)}$"):
        _max_traced_error(got, [[torch.zeros(2)]], "batch 2, bucket 8", 0.0)
