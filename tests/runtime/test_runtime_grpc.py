"""The OIP v2 gRPC endpoint (`neuron_runtime.grpc_server`) end to end, with tritonclient.grpc unmodified: health and
metadata, inference with raw and with typed tensor contents (every datatype), malformed requests (INVALID_ARGUMENT
naming the input and the reason; the server keeps serving), NOT_FOUND, UNAVAILABLE, RESOURCE_EXHAUSTED from the real
queue, DEADLINE_EXCEEDED, Triton-only RPCs (UNIMPLEMENTED), uvloop, and the generated code being current.

The server runs on the test's event loop over an in-process `ServedModel` (thread workers), so tests reach into the
queue and the lifecycle state directly instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from runtime_cases import BERT_ARGS, MLP_ARGS

from neuron_runtime import zoo
from neuron_runtime._proto import grpc_predict_v2_pb2 as pb
from neuron_runtime._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import CompileRequest, ServeSettings
from neuron_runtime.grpc_server import start_grpc_server
from neuron_runtime.lifecycle import ServerState
from neuron_runtime.metrics import Metrics
from neuron_runtime.model import ServedModel
from neuron_runtime.workers import Worker

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def _import_tritonclient_grpc() -> tuple[ModuleType, ModuleType, ModuleType]:
    """tritonclient.grpc, its asyncio client and its generated service module, with tritonclient's generated messages
    in a protobuf descriptor pool of their own.

    tritonclient.grpc and kserve (which test_runtime_server imports) each register `inference.ServerLiveRequest` and
    the rest in protobuf's default pool, from their own copies of the proto: whichever is imported second fails
    ("duplicate symbol"). tritonclient's code is unchanged; only the pool its generated modules register in is not the
    default one while they import. (The runtime's own generated code always uses a private pool: see
    `neuron_runtime._proto`.)
    """
    if "tritonclient.grpc" not in sys.modules:
        from google.protobuf import descriptor_pool

        default = descriptor_pool.Default
        private = descriptor_pool.DescriptorPool()
        descriptor_pool.Default = lambda: private
        try:
            importlib.import_module("tritonclient.grpc")
        finally:
            descriptor_pool.Default = default
    import tritonclient.grpc as client
    from tritonclient.grpc import aio, service_pb2

    return client, aio, service_pb2


triton, triton_aio, triton_service = _import_tritonclient_grpc()


# -- models -----------------------------------------------------------------------------------------------------------
class Mixed(torch.nn.Module):
    """One input of every datatype the runtime serves; outputs FP32, BF16 and UINT8."""

    def forward(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        bf: torch.Tensor,
        i64: torch.Tensor,
        i32: torch.Tensor,
        i8: torch.Tensor,
        u8: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        total = x + h.float() + bf.float() + i64.float() + i32.float() + i8.float() + u8.float()
        return total * mask.float(), bf * 2, u8


MIXED_INPUTS = {
    "x": "float32",
    "h": "float16",
    "bf": "bfloat16",
    "i64": "int64",
    "i32": "int32",
    "i8": "int8",
    "u8": "uint8",
    "mask": "bool",
}
DATATYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "BF16",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}


@pytest.fixture(scope="module")
def mixed_artifact(tmp_path_factory: pytest.TempPathFactory) -> CompileResult:
    directory = tmp_path_factory.mktemp("mixed")
    path = directory / "mixed.pt"
    torch.jit.save(torch.jit.script(Mixed()), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    request = CompileRequest.model_validate(
        {
            "source": {"kind": "torchscript", "uri": path.as_uri(), "sha256": digest},
            "inputs": [{"name": n, "shape": [2, 4], "dtype": d} for n, d in MIXED_INPUTS.items()],
            "batch_size": 2,
            "target": "cpu",
        }
    )
    return compile_artifact(request, directory / "artifacts")


def mixed_values(rows: int = 1) -> dict[str, torch.Tensor]:
    """Deterministic inputs for `Mixed`, every value inside its datatype's range."""
    rng = np.random.default_rng(rows)
    shape = (rows, 4)
    return {
        "x": torch.from_numpy(rng.standard_normal(shape).astype(np.float32)),
        "h": torch.from_numpy(rng.standard_normal(shape).astype(np.float16)),
        "bf": torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(torch.bfloat16),
        "i64": torch.from_numpy(rng.integers(-(2**40), 2**40, shape)),
        "i32": torch.from_numpy(rng.integers(-(2**20), 2**20, shape).astype(np.int32)),
        "i8": torch.from_numpy(rng.integers(-128, 128, shape).astype(np.int8)),
        "u8": torch.from_numpy(rng.integers(0, 256, shape).astype(np.uint8)),
        "mask": torch.from_numpy(rng.integers(0, 2, shape).astype(bool)),
    }


def raw_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.contiguous().numpy().tobytes()


def raw_request(values: dict[str, torch.Tensor], model: str = "mixed") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, tensor in values.items():
        request.inputs.add(name=name, datatype=DATATYPES[MIXED_INPUTS[name]], shape=list(tensor.shape))
        request.raw_input_contents.append(raw_bytes(tensor))
    return request


def typed_request(values: dict[str, torch.Tensor], model: str = "mixed") -> pb.ModelInferRequest:
    """The same tensors in the typed `contents` fields (what tritonclient never sends)."""
    field = {
        "float32": "fp32_contents",
        "float16": "fp32_contents",
        "bfloat16": "fp32_contents",
        "int64": "int64_contents",
        "int32": "int_contents",
        "int8": "int_contents",
        "uint8": "uint_contents",
        "bool": "bool_contents",
    }
    request = pb.ModelInferRequest(model_name=model)
    for name, tensor in values.items():
        dtype = MIXED_INPUTS[name]
        entry = request.inputs.add(name=name, datatype=DATATYPES[dtype], shape=list(tensor.shape))
        flat = tensor.float() if dtype in ("float16", "bfloat16") else tensor
        getattr(entry.contents, field[dtype]).extend(flat.flatten().tolist())
    return request


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, torch.Tensor]:
    dtypes = {"FP32": torch.float32, "BF16": torch.bfloat16, "UINT8": torch.uint8}
    return {
        out.name: torch.frombuffer(bytearray(raw), dtype=dtypes[out.datatype]).reshape(list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def eager_mlp(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return zoo.tiny_mlp(**MLP_ARGS)(torch.from_numpy(x)).numpy()


# -- serving ----------------------------------------------------------------------------------------------------------
@dataclass
class Served:
    model: ServedModel
    state: ServerState
    metrics: Metrics
    port: int
    client: Any  # tritonclient.grpc.aio.InferenceServerClient
    stub: pb_grpc.GRPCInferenceServiceStub  # the runtime's own generated stub, for requests tritonclient cannot send

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, code: str) -> float:
        return self.metrics.registry.get_sample_value("neuron_runtime_grpc_requests_total", {"code": code}) or 0.0


@asynccontextmanager
async def serving(
    artifact: CompileResult,
    name: str,
    *,
    ready: bool = True,
    max_message_bytes: int = 64 * 1024 * 1024,
    gate: asyncio.Event | None = None,
    **batching: Any,
) -> AsyncIterator[Served]:
    """The model on thread workers behind a gRPC server on this event loop, with a tritonclient and a raw stub.

    `gate` (from `gate_workers`) is opened on the way out, whatever happened, so that the drain can finish."""
    settings = ServeSettings(
        artifact_dir=artifact.directory,
        model_name=name,
        pin_cpu_threads=False,
        worker_backend="thread",
        warmup_runs=0,
        batching=batching or {"max_batch_size": 4, "max_delay_ms": 1},
    )
    metrics = Metrics()
    model = ServedModel.load(settings, metrics)
    model.start()
    state = ServerState(ready=ready)
    server, port = await start_grpc_server(model, state, metrics, "127.0.0.1", 0, max_message_bytes)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        yield Served(model, state, metrics, port, client, pb_grpc.GRPCInferenceServiceStub(channel))
    finally:
        if gate is not None:
            gate.set()
        await client.close()
        await channel.close()
        await server.stop(None)
        await model.drain()
        model.shutdown()


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a raw-stub call ends with (fails the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def gate_workers(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold every batch before it reaches its worker until the returned event is set."""
    gate = asyncio.Event()
    original = Worker.submit

    async def held(self: Worker, job: Any) -> tuple[Any, float]:
        await gate.wait()
        return await original(self, job)

    monkeypatch.setattr(Worker, "submit", held)
    return gate


# -- the generated code -----------------------------------------------------------------------------------------------
def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools")
    from neuron_runtime._proto import generate

    assert generate.stale() == [], "stale generated code: run python -m neuron_runtime._proto.generate"


def _messages(descriptor: Any) -> Iterator[Any]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested)


def test_the_proto_is_tritonclients_on_the_wire() -> None:
    """Every method path, message and field number of ours is what tritonclient's copy of the proto says."""
    ours, theirs = pb.DESCRIPTOR, triton_service.DESCRIPTOR
    service = ours.services_by_name["GRPCInferenceService"]
    their_service = theirs.services_by_name["GRPCInferenceService"]
    assert service.full_name == their_service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    for method in service.methods:
        their_method = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == their_method.input_type.full_name
        assert method.output_type.full_name == their_method.output_type.full_name
    checked = 0
    for top in ours.message_types_by_name.values():
        for message in _messages(top):
            their_message = theirs.pool.FindMessageTypeByName(message.full_name)
            for field in message.fields:
                their_field = their_message.fields_by_name[field.name]
                where = f"{message.full_name}.{field.name}"
                assert field.number == their_field.number, where
                assert field.type == their_field.type, where
                assert field.is_repeated == their_field.is_repeated, where
                if field.message_type is not None:
                    assert field.message_type.full_name == their_field.message_type.full_name, where
                checked += 1
    assert checked > 50


# -- health and metadata ----------------------------------------------------------------------------------------------
async def test_health_and_metadata(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp") as s:
        c = s.client
        assert await c.is_server_live()
        assert await c.is_server_ready()
        assert await c.is_model_ready("mlp")
        assert await c.is_model_ready("mlp", model_version="1")
        server = await c.get_server_metadata(as_json=True)
        assert server["name"] == "neuron-runtime"
        assert "binary_tensor_data" in server["extensions"]
        meta = await c.get_model_metadata("mlp")
        assert meta.name == "mlp"
        assert list(meta.versions) == ["1"]
        assert meta.platform == "pytorch_torchscript"
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 8])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output0", "FP32", [-1, 3])]
        assert (await c.get_model_metadata("mlp", model_version="1")).name == "mlp"
        for call, fragment in [
            (c.get_model_metadata("other"), "unknown model 'other'; this server serves 'mlp'"),
            (c.get_model_metadata("mlp", model_version="7"), "model 'mlp' has no version '7'"),
            (c.is_model_ready("other"), "unknown model 'other'"),
            (c.is_model_ready("mlp", model_version="2"), "has no version '2'"),
        ]:
            with pytest.raises(triton.InferenceServerException) as info:
                await call
            assert info.value.status() == "StatusCode.NOT_FOUND"
            assert fragment in info.value.message()


async def test_bucketed_model_metadata_and_typed_int64(bert_artifact: CompileResult) -> None:
    eager = zoo.bert_like(**BERT_ARGS)
    async with serving(bert_artifact, "bert") as s:
        meta = await s.client.get_model_metadata("bert")
        assert [list(t.shape) for t in meta.inputs] == [[-1, -1], [-1, -1]]
        ids = np.arange(1, 12, dtype=np.int64).reshape(1, 11) % 50
        mask = np.ones_like(ids)
        request = pb.ModelInferRequest(model_name="bert")
        for name, value in (("input_ids", ids), ("attention_mask", mask)):
            request.inputs.add(name=name, datatype="INT64", shape=[1, 11]).contents.int64_contents.extend(
                value.ravel().tolist()
            )
        got = decode_outputs(await s.stub.ModelInfer(request))["output0"]
        with torch.inference_mode():
            want = eager(torch.from_numpy(ids), torch.from_numpy(mask))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# -- inference --------------------------------------------------------------------------------------------------------
async def test_tritonclient_infer_equals_the_model_in_process(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp") as s:
        x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
        inp = triton_aio.InferInput("x", [3, 8], "FP32")
        inp.set_data_from_numpy(x)
        result = await s.client.infer(
            "mlp", [inp], request_id="abc", outputs=[triton_aio.InferRequestedOutput("output0")]
        )
        in_process = (await s.model.run({"x": torch.from_numpy(x)}))[0].numpy()
        np.testing.assert_array_equal(result.as_numpy("output0"), in_process)
        np.testing.assert_allclose(result.as_numpy("output0"), eager_mlp(x), rtol=1e-5, atol=1e-5)
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == ("mlp", "1", "abc")
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("output0", "FP32", [3, 3])]
        # every output by default, version "1" accepted, and the sync client (in a thread) too
        result = await s.client.infer("mlp", [inp], model_version="1")
        np.testing.assert_array_equal(result.as_numpy("output0"), in_process)

        def sync_infer() -> np.ndarray:
            with triton.InferenceServerClient(s.url) as client:
                sync_inp = triton.InferInput("x", [3, 8], "FP32")
                sync_inp.set_data_from_numpy(x)
                return client.infer("mlp", [sync_inp]).as_numpy("output0")

        np.testing.assert_array_equal(await asyncio.to_thread(sync_infer), in_process)
        assert s.count("OK") == 3


async def test_every_datatype_raw_and_typed(mixed_artifact: CompileResult) -> None:
    import ml_dtypes  # tritonclient's BF16 numpy type (one of its dependencies)

    async with serving(mixed_artifact, "mixed", max_batch_size=2, max_delay_ms=1) as s:
        values = mixed_values(rows=2)
        want = dict(zip(["output0", "output1", "output2"], await s.model.run(dict(values)), strict=True))
        raw = decode_outputs(await s.stub.ModelInfer(raw_request(values)))
        typed = decode_outputs(await s.stub.ModelInfer(typed_request(values)))
        for name, tensor in want.items():
            assert torch.equal(raw[name], tensor), name
            assert torch.equal(typed[name], tensor), name
        assert [raw[n].dtype for n in want] == [torch.float32, torch.bfloat16, torch.uint8]
        # tritonclient (raw contents; BF16 as ml_dtypes.bfloat16)
        inputs = []
        for name, tensor in values.items():
            inp = triton_aio.InferInput(name, list(tensor.shape), DATATYPES[MIXED_INPUTS[name]])
            array = tensor.float().numpy().astype(ml_dtypes.bfloat16) if name == "bf" else tensor.numpy()
            inp.set_data_from_numpy(array)
            inputs.append(inp)
        result = await s.client.infer("mixed", inputs)
        np.testing.assert_array_equal(result.as_numpy("output0"), want["output0"].numpy())
        np.testing.assert_array_equal(result.as_numpy("output1").astype(np.float32), want["output1"].float().numpy())
        np.testing.assert_array_equal(result.as_numpy("output2"), want["output2"].numpy())
        # a requested subset, in the requested order
        request = raw_request(values)
        request.outputs.add(name="output2")
        request.outputs.add(name="output0")
        response = await s.stub.ModelInfer(request)
        assert [o.name for o in response.outputs] == ["output2", "output0"]
        assert torch.equal(decode_outputs(response)["output2"], want["output2"])


def _set(request: pb.ModelInferRequest, input_name: str, **changes: Any) -> None:
    for entry in request.inputs:
        if entry.name == input_name:
            for key, value in changes.items():
                if key == "shape":
                    entry.ClearField("shape")
                    entry.shape.extend(value)
                else:
                    setattr(entry, key, value)


def _raw(request: pb.ModelInferRequest, name: str, data: bytes) -> None:
    index = [e.name for e in request.inputs].index(name)
    request.raw_input_contents[index] = data


def _contents(request: pb.ModelInferRequest, name: str, field: str, values: list[Any]) -> None:
    for entry in request.inputs:
        if entry.name == name:
            entry.ClearField("contents")
            getattr(entry.contents, field).extend(values)


def _drop_input(request: pb.ModelInferRequest, name: str) -> None:
    index = [e.name for e in request.inputs].index(name)
    del request.inputs[index]
    if request.raw_input_contents:
        del request.raw_input_contents[index]


def _duplicate_x(request: pb.ModelInferRequest) -> None:
    request.inputs.add().CopyFrom(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])


def _typed_x_in_raw(request: pb.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([0.0] * 4)


def _reshape_x(shape: list[int], size: int) -> Mutation:
    def change(request: pb.ModelInferRequest) -> None:
        _set(request, "x", shape=shape)
        _raw(request, "x", b"\0" * size)

    return change


def _timeout_as_string(request: pb.ModelInferRequest) -> None:
    request.parameters["timeout"].CopyFrom(pb.InferParameter(string_param="1s"))


Mutation = Callable[[pb.ModelInferRequest], None]
RAW, TYPED = False, True
BAD = [
    # (typed contents?, change to a good request, fragment of the message)
    pytest.param(RAW, _reshape_x([1, 5], 20), "input 'x': shape [1, 5] does not match", id="wrong shape"),
    pytest.param(RAW, _reshape_x([4], 16), "input 'x': shape [4] has rank 1", id="wrong rank"),
    pytest.param(RAW, _reshape_x([0, 4], 0), "input 'x': shape [0, 4] has a zero dimension", id="zero dimension"),
    pytest.param(
        RAW, lambda r: _set(r, "x", shape=[-1, 4]), "input 'x': shape [-1, 4] has a negative", id="negative dimension"
    ),
    pytest.param(RAW, lambda r: _set(r, "x", shape=[1 << 20, 1 << 20]), "is too large (at most", id="too large"),
    pytest.param(
        RAW, lambda r: _set(r, "x", datatype="INT32"), "input 'x': datatype 'INT32' does not match", id="datatype"
    ),
    pytest.param(
        RAW, lambda r: _set(r, "x", datatype="BYTES"), "input 'x': datatype 'BYTES' is not supported", id="BYTES"
    ),
    pytest.param(RAW, lambda r: _set(r, "x", name="y"), "unknown input 'y'", id="unknown input"),
    pytest.param(RAW, _duplicate_x, "input 'x' is given twice", id="given twice"),
    pytest.param(RAW, lambda r: _drop_input(r, "mask"), "missing input(s) ['mask']", id="missing input"),
    pytest.param(
        RAW, lambda r: _raw(r, "x", b"\0" * 12), "input 'x' (raw_input_contents[0]) has 12 bytes but", id="raw size"
    ),
    pytest.param(
        RAW,
        lambda r: r.raw_input_contents.pop(),
        "raw_input_contents has 7 entries but the request has 8 inputs",
        id="raw count",
    ),
    pytest.param(
        RAW, _typed_x_in_raw, "input 'x' has typed contents but the request uses raw_input_contents", id="raw+typed"
    ),
    pytest.param(RAW, lambda r: _raw(r, "mask", b"\2\0\0\0"), "input 'mask' (raw_input_contents[7]): BOOL", id="BOOL"),
    pytest.param(
        TYPED,
        lambda r: _contents(r, "i8", "int_contents", [1, 2, 300, 4]),
        "input 'i8': value 300 is outside the range of INT8",
        id="INT8 range",
    ),
    pytest.param(
        TYPED,
        lambda r: _contents(r, "u8", "uint_contents", [256, 0, 0, 0]),
        "input 'u8': value 256 is outside the range of UINT8",
        id="UINT8 range",
    ),
    pytest.param(
        TYPED,
        lambda r: _contents(r, "h", "fp32_contents", [1e5, 0, 0, 0]),
        "input 'h': value 100000 is too large for FP16",
        id="FP16 range",
    ),
    pytest.param(
        TYPED,
        lambda r: _contents(r, "x", "int64_contents", [1, 2, 3, 4]),
        "input 'x': FP32 data goes in contents.fp32_contents, got contents.int64_contents",
        id="typed field",
    ),
    pytest.param(
        TYPED,
        lambda r: _contents(r, "x", "fp32_contents", [1.0, 2.0]),
        "input 'x': contents.fp32_contents has 2 values but shape [1, 4] needs 4",
        id="typed count",
    ),
    pytest.param(TYPED, lambda r: r.inputs[0].ClearField("contents"), "input 'x' has no data", id="no data"),
    pytest.param(TYPED, lambda r: r.ClearField("inputs"), "the request has no inputs", id="no inputs"),
    pytest.param(RAW, lambda r: r.outputs.add(name="nope"), "unknown output 'nope'", id="unknown output"),
    pytest.param(RAW, _timeout_as_string, "parameters.timeout must be", id="timeout parameter"),
]


@pytest.mark.parametrize(("typed", "change", "fragment"), BAD)
async def test_malformed_requests_are_invalid_argument_and_others_are_served(
    mixed_artifact: CompileResult, typed: bool, change: Mutation, fragment: str
) -> None:
    async with serving(mixed_artifact, "mixed", max_batch_size=2, max_delay_ms=1) as s:
        values = mixed_values()
        request = typed_request(values) if typed else raw_request(values)
        change(request)
        error = await rpc_error(s.stub.ModelInfer(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert fragment in error.details()
        assert "Traceback" not in error.details()
        good = await s.stub.ModelInfer(typed_request(values) if typed else raw_request(values))
        assert len(good.raw_output_contents) == 3
        assert (s.count("INVALID_ARGUMENT"), s.count("OK")) == (1, 1)


async def test_tritonclient_sees_the_reason(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp") as s:
        cases = [
            ("x", [1, 7], "FP32", np.zeros((1, 7), np.float32), "axis 1 must be 8"),
            ("x", [1, 8], "INT32", np.zeros((1, 8), np.int32), "datatype 'INT32' does not match the model's 'FP32'"),
            ("y", [1, 8], "FP32", np.zeros((1, 8), np.float32), "unknown input 'y'"),
            ("x", [0, 8], "FP32", np.zeros((0, 8), np.float32), "shape [0, 8] has a zero dimension"),
        ]
        for name, shape, datatype, data, fragment in cases:
            inp = triton_aio.InferInput(name, shape, datatype)
            inp.set_data_from_numpy(data)
            with pytest.raises(triton.InferenceServerException) as info:
                await s.client.infer("mlp", [inp])
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert fragment in info.value.message()
        inp = triton_aio.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 8), np.float32))
        for model, version, fragment in [("other", "", "unknown model 'other'"), ("mlp", "3", "no version '3'")]:
            with pytest.raises(triton.InferenceServerException) as info:
                await s.client.infer(model, [inp], model_version=version)
            assert info.value.status() == "StatusCode.NOT_FOUND"
            assert fragment in info.value.message()
        assert s.count("INVALID_ARGUMENT") == 4
        assert s.count("NOT_FOUND") == 2


async def test_request_larger_than_the_limit_is_refused(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp", max_message_bytes=1024) as s:
        inp = triton_aio.InferInput("x", [4, 8], "FP32")
        inp.set_data_from_numpy(np.zeros((4, 8), np.float32))
        assert (await s.client.infer("mlp", [inp])).as_numpy("output0").shape == (4, 3)
        big = triton_aio.InferInput("x", [64, 8], "FP32")
        big.set_data_from_numpy(np.zeros((64, 8), np.float32))
        with pytest.raises(triton.InferenceServerException) as info:
            await s.client.infer("mlp", [big])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


# -- refusals ---------------------------------------------------------------------------------------------------------
async def test_not_ready_and_draining_are_unavailable(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp", ready=False) as s:
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
        request.raw_input_contents.append(b"\0" * 32)
        assert await s.client.is_server_live()
        assert not await s.client.is_server_ready()
        assert not await s.client.is_model_ready("mlp")
        error = await rpc_error(s.stub.ModelInfer(request))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "model 'mlp' is not ready yet" in error.details()
        s.state.ready = True
        assert await s.client.is_model_ready("mlp")
        assert len((await s.stub.ModelInfer(request)).raw_output_contents) == 1
        # SIGTERM: not ready, then not accepting (the drain)
        s.state.ready, s.state.stopping, s.state.accepting = False, True, False
        assert not await s.client.is_server_ready()
        error = await rpc_error(s.stub.ModelInfer(request))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in error.details()
        assert s.count("UNAVAILABLE") == 2
        assert s.metrics.registry.get_sample_value("neuron_runtime_rejections_total", {"reason": "shutting_down"}) == 1


async def test_full_queue_is_resource_exhausted(mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_workers(monkeypatch)
    # One row per batch, one queued row at most: with one worker, two batches are in flight (one running, one
    # waiting for the worker) and the third request is the whole queue.
    async with serving(mlp_artifact, "mlp", gate=gate, max_batch_size=1, max_queue=1, max_delay_ms=0) as s:
        x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
        held = []
        for _ in range(3):
            held.append(s.model.submit(s.model.prepare({"x": torch.from_numpy(x)})))
            await s.model.batcher.wait_idle()  # the dispatcher has taken what it can
        assert (s.model.batcher.batches_in_flight, s.model.batcher.queued_rows) == (2, 1)
        inp = triton_aio.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(triton.InferenceServerException) as info:
            await s.client.infer("mlp", [inp])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "queue full: 1 rows queued, limit 1" in info.value.message()
        assert s.count("RESOURCE_EXHAUSTED") == 1
        gate.set()
        outputs = await asyncio.gather(*held)
        assert all(out[0].shape == (1, 3) for out in outputs)  # nothing accepted was lost
        np.testing.assert_allclose((await s.client.infer("mlp", [inp])).as_numpy("output0"), outputs[0][0].numpy())


async def test_deadline_shorter_than_the_batch_is_deadline_exceeded(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = gate_workers(monkeypatch)
    async with serving(mlp_artifact, "mlp", gate=gate) as s:
        inp = triton_aio.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 8), np.float32))
        with pytest.raises(triton.InferenceServerException) as info:
            await s.client.infer("mlp", [inp], client_timeout=0.3)  # its batch is held on the worker
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        gate.set()
        result = await s.client.infer("mlp", [inp], client_timeout=30)
        assert result.as_numpy("output0").shape == (1, 3)


async def test_timeout_parameter_is_deadline_exceeded_with_the_reason(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = gate_workers(monkeypatch)
    async with serving(mlp_artifact, "mlp", gate=gate) as s:
        inp = triton_aio.InferInput("x", [1, 8], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 8), np.float32))
        with pytest.raises(triton.InferenceServerException) as info:
            await s.client.infer("mlp", [inp], timeout=100_000)  # Triton's `timeout` parameter, microseconds
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "request timed out after 100 ms" in info.value.message()
        assert s.count("DEADLINE_EXCEEDED") == 1
        assert s.model.batcher.queued_rows == 0
        gate.set()
        assert (await s.client.infer("mlp", [inp])).as_numpy("output0").shape == (1, 3)


async def test_triton_only_rpcs_are_unimplemented(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp") as s:
        for call in (
            s.client.get_model_config("mlp"),
            s.client.get_inference_statistics("mlp"),
            s.client.get_model_repository_index(),
            s.client.get_log_settings(),
        ):
            with pytest.raises(triton.InferenceServerException) as info:
                await call
            assert info.value.status() == "StatusCode.UNIMPLEMENTED"


async def test_the_port_is_not_shared(mlp_artifact: CompileResult) -> None:
    async with serving(mlp_artifact, "mlp") as s:
        with pytest.raises(OSError, match=r"cannot listen for gRPC on 127\.0\.0\.1"):
            await start_grpc_server(s.model, s.state, s.metrics, "127.0.0.1", s.port, 1024)


# -- uvloop -----------------------------------------------------------------------------------------------------------
def test_under_uvloop(mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve_main` runs the server under uvloop when it is installed: grpc.aio works there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        gate = gate_workers(monkeypatch)
        gate.set()
        async with serving(mlp_artifact, "mlp", gate=gate) as s:
            assert await s.client.is_model_ready("mlp")
            x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
            inp = triton_aio.InferInput("x", [4, 8], "FP32")
            inp.set_data_from_numpy(x)
            got = (await s.client.infer("mlp", [inp])).as_numpy("output0")
            np.testing.assert_allclose(got, eager_mlp(x), rtol=1e-5, atol=1e-5)
            bad = triton_aio.InferInput("x", [4, 7], "FP32")
            bad.set_data_from_numpy(np.zeros((4, 7), np.float32))
            with pytest.raises(triton.InferenceServerException, match="axis 1 must be 8"):
                await s.client.infer("mlp", [bad])
            gate.clear()  # batches held on the worker from now on
            one = triton_aio.InferInput("x", [1, 8], "FP32")
            one.set_data_from_numpy(x[:1])
            with pytest.raises(triton.InferenceServerException) as info:
                await s.client.infer("mlp", [one], client_timeout=0.2)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    uvloop.run(scenario())


@pytest.mark.timeout(60)  # imports the KServe and Triton clients
def test_coexists_with_kserve_and_tritonclient() -> None:
    """kserve, tritonclient.grpc and the runtime each define `inference.ModelInferRequest`: all three import in one
    process (the runtime's and, here, tritonclient's in descriptor pools of their own)."""
    kserve_pb2 = pytest.importorskip("kserve.protocol.grpc.grpc_predict_v2_pb2")
    names = {m.DESCRIPTOR.full_name for m in (kserve_pb2.ModelInferRequest, pb.ModelInferRequest)}
    assert names == {triton_service.ModelInferRequest.DESCRIPTOR.full_name}
    pools = {id(pb.DESCRIPTOR.pool), id(triton_service.DESCRIPTOR.pool), id(kserve_pb2.DESCRIPTOR.pool)}
    assert len(pools) == 3
