"""`neuron-runtime serve`'s Open Inference Protocol v2 gRPC endpoint (KServe v2, Triton's GRPCInferenceService).

A `grpc.aio` server on the serving process's event loop, next to the REST server (`server`) and sharing its model,
batcher and lifecycle (`lifecycle.ServerState`): one queue, one drain, one set of metrics, whichever protocol a
request came in on. Clients of the KServe v2 / Triton proto (tritonclient.grpc, tested) talk to it unmodified.

RPCs (the proto is KServe's OIP v2, `_proto/grpc_predict_v2.proto`):

- `ServerLive` (always live), `ServerReady` / `ModelReady` (warm, not draining, every worker alive), `ServerMetadata`,
  `ModelMetadata` (the REST metadata: -1 for the batch dimension and the bucketed axis; platform
  `pytorch_torchscript`; version "1").
- `ModelInfer`: inputs as `raw_input_contents` (what tritonclient sends; little-endian, BF16 as 2-byte values) or as
  the typed `contents` fields (FP32/FP16/BF16 in `fp32_contents`, INT64 in `int64_contents`, INT32 and INT8 in
  `int_contents`, UINT8 in `uint_contents`, BOOL in `bool_contents`; values the datatype cannot hold are refused, not
  wrapped). Outputs always travel in `raw_output_contents`. The request's gRPC deadline bounds its wait for its batch
  (answered DEADLINE_EXCEEDED a little before it expires, so the client gets the server's reason); so does Triton's
  `timeout` parameter (int64 microseconds), like the REST one; with neither, the batching `timeout_ms` applies.
- Everything else tritonclient knows (ModelStreamInfer, ModelConfig, ModelStatistics, Repository*, *SharedMemory*,
  TraceSetting, LogSettings) is Triton's, not in the OIP v2 proto: no handler is registered for those methods, so
  gRPC itself answers UNIMPLEMENTED ("Method not found!").

Errors carry a short message naming the input and the reason; the status codes are those of `errors` (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while not ready or draining, DEADLINE_EXCEEDED, INTERNAL) plus
NOT_FOUND for another model name or a version other than "" / "1" (REST's 404). Overload is refused before the
tensors are decoded (`ServedModel.admit`), so refusing costs little.

Lifecycle: `start_grpc_server` binds and starts the server (port 0: an ephemeral port, returned). At shutdown, after
the drain (`ServerState.accepting` false, `model.drain()`, the in-flight count, which includes gRPC requests, at
zero), call `await server.stop(grace)`: it refuses new calls at once (GOAWAY: clients reconnect elsewhere), gives
running ones `grace` seconds, then cancels them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import grpc
import numpy as np
import torch

from neuron_runtime import __version__
from neuron_runtime._proto import grpc_predict_v2_pb2 as pb
from neuron_runtime._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from neuron_runtime.errors import BadRequest, InferenceError, ModelError, Unavailable, short_message
from neuron_runtime.lifecycle import ServerState
from neuron_runtime.metrics import Metrics
from neuron_runtime.model import ServedModel
from neuron_runtime.protocol import MAX_ELEMENTS, ProtocolError, check_values
from neuron_runtime.tensors import ITEM_SIZES, NUMPY_DTYPES, OIP_DATATYPES, TORCH_DTYPES, dtype_name

log = logging.getLogger("neuron_runtime.grpc_server")

SERVER_NAME = "neuron-runtime"
MODEL_VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch_torchscript"
# The server gives up on a request a little before its gRPC deadline, so that its DEADLINE_EXCEEDED (with the reason)
# reaches the client before the client's own timer ends the call with a bare "Deadline Exceeded": the deadline
# travels rounded *up* to three significant digits (a 30 s deadline arrives as up to 30.1 s), hence the slack, and
# the answer needs a moment to travel, hence the margin (at most a tenth of the deadline).
DEADLINE_SLACK = 0.02
DEADLINE_MARGIN_S = 0.005

# The typed `contents` field of each datatype; FP16 and BF16 values travel as fp32 (checked to fit).
CONTENTS_FIELD = {
    "float32": "fp32_contents",
    "float16": "fp32_contents",
    "bfloat16": "fp32_contents",
    "int64": "int64_contents",
    "int32": "int_contents",
    "int8": "int_contents",
    "uint8": "uint_contents",
    "bool": "bool_contents",
}
# The wire type of each typed field, as numpy reads it before the range check.
FIELD_DTYPES: dict[str, np.dtype[Any]] = {
    "fp32_contents": np.dtype(np.float32),
    "int64_contents": np.dtype(np.int64),
    "int_contents": np.dtype(np.int32),
    "uint_contents": np.dtype(np.uint32),
    "bool_contents": np.dtype(np.bool_),
}


class NotFound(InferenceError):
    """Another model or version than the one served (REST answers 404)."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class _Servicer:
    """The six OIP v2 RPCs over one `ServedModel` (registered with the generated `add_..._to_server`)."""

    def __init__(self, model: ServedModel, state: ServerState, metrics: Metrics) -> None:
        self.model = model
        self.state = state
        self.metrics = metrics
        self.input_dtypes = {spec.name: spec.dtype for spec in model.manifest.inputs}
        self.output_names = [spec.name for spec in model.manifest.outputs]
        self.metadata = _model_metadata(model)

    # -- health and metadata ------------------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.state.ready and self.model.healthy

    def _check_model(self, name: str, version: str) -> None:
        if name != self.model.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version not in ("", MODEL_VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; it has {MODEL_VERSION!r}")

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        try:
            self._check_model(request.name, request.version)
        except NotFound as exc:
            await _abort(context, exc)
        return pb.ModelReadyResponse(ready=self._ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        try:
            self._check_model(request.name, request.version)
        except NotFound as exc:
            await _abort(context, exc)
        response = pb.ModelMetadataResponse()
        response.CopyFrom(self.metadata)
        return response

    # -- inference ----------------------------------------------------------------------------------------------------
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()

        def count(code: str) -> None:
            # Before the answer leaves (abort sends it at once): whoever sees the answer sees it counted.
            self.metrics.grpc_requests.labels(code).inc()
            self.metrics.request_latency.observe(time.perf_counter() - started)

        try:
            response = await self._infer(request, context)
        except InferenceError as exc:
            count(exc.grpc_code)
            await _abort(context, exc)
        except Exception as exc:  # a bug, not the request's fault: logged, answered INTERNAL without a traceback
            log.exception("gRPC ModelInfer failed")
            count("INTERNAL")
            await _abort(context, ModelError(f"inference failed: {short_message(exc)}"))
        except BaseException:  # cancelled: the client went away or its deadline passed
            count("CANCELLED")
            raise
        count("OK")
        return response

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        model = self.model
        self._check_model(request.model_name, request.model_version)
        try:
            self.state.admit(model.name)
        except Unavailable:
            if not self.state.accepting:
                self.metrics.rejections.labels("shutting_down").inc()
            raise
        model.admit()  # queue full / no live worker: refused before any decoding
        with self.state.track():
            self.metrics.in_flight.inc()
            try:
                try:
                    inputs = decode_inputs(request, self.input_dtypes)
                    wanted = requested_outputs(request, self.output_names)
                    timeout = request_timeout(request, context)
                except BadRequest:
                    self.metrics.rejections.labels("bad_request").inc()
                    raise
                outputs = await model.run(inputs, timeout)
                return encode_response(model.name, request.id, self.output_names, outputs, wanted)
            finally:
                self.metrics.in_flight.dec()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: InferenceError) -> NoReturn:
    """End the call with the error's status code and its one-line message (never returns)."""
    await context.abort(grpc.StatusCode[error.grpc_code], short_message(str(error)))


def _model_metadata(model: ServedModel) -> pb.ModelMetadataResponse:
    """What REST's `GET /v2/models/{m}` says, minus its `parameters` (the gRPC message has none)."""
    manifest = model.manifest
    sig = model.signature
    response = pb.ModelMetadataResponse(name=model.name, versions=[MODEL_VERSION], platform=PLATFORM)
    for spec, isig in zip(manifest.inputs, sig.inputs, strict=True):
        shape = [-1, *isig.shape]
        if isig.bucketed and sig.bucket_axis is not None:
            shape[sig.bucket_axis] = -1
        response.inputs.add(name=spec.name, datatype=OIP_DATATYPES[spec.dtype], shape=shape)
    for out in manifest.outputs:
        response.outputs.add(name=out.name, datatype=OIP_DATATYPES[out.dtype], shape=[-1, *out.shape[1:]])
    return response


# -- request decoding (pure: every malformed request raises `ProtocolError` naming the field) --------------------------
def decode_inputs(request: pb.ModelInferRequest, input_dtypes: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The request's input tensors, checked against the model's input names and datatypes."""
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs "
            "(one raw entry per input, in the same order)"
        )
    inputs: dict[str, torch.Tensor] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        where = f"input {name!r}"
        if name not in input_dtypes:
            raise ProtocolError(f"unknown input {name!r}; the model takes {sorted(input_dtypes)}")
        if name in inputs:
            raise ProtocolError(f"{where} is given twice")
        dtype = input_dtypes[name]
        expected = OIP_DATATYPES[dtype]
        if tensor.datatype == "BYTES":
            raise ProtocolError(f"{where}: datatype 'BYTES' is not supported (the model takes {expected!r})")
        if tensor.datatype != expected:
            raise ProtocolError(f"{where}: datatype {tensor.datatype!r} does not match the model's {expected!r}")
        shape = _shape(list(tensor.shape), where)
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"{where} has typed contents but the request uses raw_input_contents")
            inputs[name] = _from_raw(raw[index], dtype, shape, f"{where} (raw_input_contents[{index}])")
        else:
            inputs[name] = _from_contents(tensor.contents, dtype, shape, where)
    return inputs


def _shape(shape: list[int], where: str) -> list[int]:
    """The REST rules (`protocol`): every dimension >= 1, at most `MAX_ELEMENTS` elements in all."""
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape {shape} has a negative dimension")
    if any(d == 0 for d in shape):
        raise ProtocolError(f"{where}: shape {shape} has a zero dimension (every dimension must be >= 1)")
    if any(d > MAX_ELEMENTS for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise ProtocolError(f"{where}: shape {shape} is too large (at most {MAX_ELEMENTS} elements)")
    return shape


def _from_raw(data: bytes, dtype: str, shape: list[int], where: str) -> torch.Tensor:
    count = math.prod(shape)
    size = count * ITEM_SIZES[dtype]
    if len(data) != size:
        raise ProtocolError(
            f"{where} has {len(data)} bytes but shape {shape} of {OIP_DATATYPES[dtype]} needs {size} bytes"
        )
    if dtype == "bool" and data and int(np.frombuffer(data, dtype=np.uint8).max()) > 1:
        raise ProtocolError(f"{where}: BOOL values must be bytes 0 or 1")
    # One copy into memory torch owns (the request's bytes are immutable); BF16 has no numpy type: via torch.
    return torch.frombuffer(bytearray(data), dtype=TORCH_DTYPES[dtype]).reshape(shape)


def _from_contents(contents: pb.InferTensorContents, dtype: str, shape: list[int], where: str) -> torch.Tensor:
    field = CONTENTS_FIELD[dtype]
    given = [descriptor.name for descriptor, _value in contents.ListFields()]
    if not given:
        raise ProtocolError(f"{where} has no data: neither raw_input_contents nor contents.{field}")
    if given != [field]:
        raise ProtocolError(
            f"{where}: {OIP_DATATYPES[dtype]} data goes in contents.{field}, got contents.{', contents.'.join(given)}"
        )
    values: Sequence[Any] = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"{where}: contents.{field} has {len(values)} values but shape {shape} needs {count}")
    array = np.fromiter(values, dtype=FIELD_DTYPES[field], count=count)
    check_values(array, dtype, where)  # INT8 300, UINT8 256, FP16 1e5: refused, never wrapped or made inf
    if dtype == "bfloat16":
        return torch.from_numpy(array).to(torch.bfloat16).reshape(shape)
    return torch.from_numpy(array.astype(NUMPY_DTYPES[dtype], copy=False)).reshape(shape)


def requested_outputs(request: pb.ModelInferRequest, names: Sequence[str]) -> list[str] | None:
    """The outputs asked for, in the request's order (None: every output, in the model's order)."""
    if not request.outputs:
        return None
    wanted: list[str] = []
    for output in request.outputs:
        if output.name not in names:
            raise ProtocolError(f"unknown output {output.name!r}; the model returns {list(names)}")
        if output.name in wanted:
            raise ProtocolError(f"output {output.name!r} is requested twice")
        wanted.append(output.name)
    return wanted


def request_timeout(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """Seconds the request may wait for its batch: the gRPC deadline (less a slack) and Triton's `timeout`
    parameter (microseconds), whichever is shorter; None (the batching default) when it has neither."""
    limits: list[float] = []
    remaining: float | None = context.time_remaining()
    if remaining is not None:
        limits.append(max(remaining * (1 - DEADLINE_SLACK) - min(DEADLINE_MARGIN_S, remaining / 10), 0.0))
    if "timeout" in request.parameters:
        parameter = request.parameters["timeout"]
        if parameter.WhichOneof("parameter_choice") != "int64_param" or parameter.int64_param < 0:
            raise ProtocolError("parameters.timeout must be a non-negative int64_param (microseconds)")
        if parameter.int64_param:
            limits.append(parameter.int64_param / 1e6)
    return min(limits) if limits else None


# -- response encoding -------------------------------------------------------------------------------------------------
def encode_response(
    model_name: str,
    request_id: str,
    names: Sequence[str],
    tensors: Sequence[torch.Tensor],
    wanted: Sequence[str] | None,
) -> pb.ModelInferResponse:
    """Every (or every requested) output as name/datatype/shape plus its bytes in `raw_output_contents`."""
    by_name = dict(zip(names, tensors, strict=True))
    response = pb.ModelInferResponse(model_name=model_name, model_version=MODEL_VERSION, id=request_id)
    for name in wanted if wanted is not None else names:
        tensor = by_name[name].detach().cpu().contiguous()
        response.outputs.add(name=name, datatype=OIP_DATATYPES[dtype_name(tensor.dtype)], shape=list(tensor.shape))
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        response.raw_output_contents.append(tensor.numpy().tobytes())
    return response


# -- the server --------------------------------------------------------------------------------------------------------
async def start_grpc_server(
    model: ServedModel,
    state: ServerState,
    metrics: Metrics,
    host: str,
    port: int,
    max_message_bytes: int,
) -> tuple[grpc.aio.Server, int]:
    """Bind `host:port` (0: any free port) and start serving; returns the server and the bound port.

    Must run on the serving event loop. `max_message_bytes` bounds a request message (RESOURCE_EXHAUSTED beyond it);
    responses are not bounded here. The port is not shared (SO_REUSEPORT off): a second server on it fails to start.
    Stop it with `await server.stop(grace)` after the drain (see the module docstring).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(model, state, metrics), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises when the address cannot be bound
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("gRPC (OIP v2) listening on %s:%d", host, bound)
    return server, bound
