"""`neuron-runtime serve`: the Open Inference Protocol v2 REST server (aiohttp) and its lifecycle.

OIP v2 gRPC (`grpc_server`) listens on `grpc_port` next to it, on the same model, queue, drain and metrics.
Endpoints: `/v2/health/live`, `/v2/health/ready`, `/v2`, `/v2/models/{m}[/versions/{v}]`, `.../ready`,
`.../infer`, and `/metrics` (Prometheus). Health answers carry JSON bodies (the kserve client parses them);
every error is `{"error": "..."}` with a 4xx status for anything the client did wrong (never 500), 429 +
`Retry-After` when the queue is full, 504 after the request's deadline, 503 while warming up or draining.

Lifecycle: verify the artifact → SDK compatibility gate (`compat`) → load → listen (live, not ready) → parity
gate: every graph on the stored reference inputs on every model copy (`parity`) → warm every bucket on every
worker → ready. A refused artifact ends the process with a JSON termination message (`reason`
`IncompatibleRuntime`, `ParityFailed`, `ArtifactInvalid`, `InvalidPlacement`, `InvalidSettings`) that the
operator turns into the NeuronDeployment's `Stalled` condition. `/v2/models/{m}/parity` reports the measured
parity (a runtime extension of OIP v2).
Loading happens before the socket opens, so give the pod a startupProbe sized to the model's load time.
SIGTERM/SIGINT → not ready → (optional `shutdown_delay_s` while endpoints drop the pod) → refuse new requests →
drain in-flight ones → exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web, web_protocol, web_request, web_server
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from neuron_runtime import __version__, contract, objectstore
from neuron_runtime.artifact import ArtifactError
from neuron_runtime.batching.queue import QueueFull
from neuron_runtime.cli import termination_log_path, write_termination_message
from neuron_runtime.compat import IncompatibleRuntime
from neuron_runtime.config import ServeSettings
from neuron_runtime.contract import ServeRefusal
from neuron_runtime.errors import InferenceError, PayloadTooLarge, RequestTimeout, Unavailable
from neuron_runtime.lifecycle import ServerState
from neuron_runtime.metrics import Metrics
from neuron_runtime.model import ConfigurationError, ServedModel
from neuron_runtime.parity import ParityFailed
from neuron_runtime.placement import PlacementError
from neuron_runtime.protocol import HEADER_LENGTH, decode_request, encode_response, error_body
from neuron_runtime.tensors import OIP_DATATYPES

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("neuron_runtime.server")

MODEL_VERSION = "1"
SWITCH_INTERVAL_S = 0.0002
JSON = "application/json"


#: JSON bodies above this are decoded on a worker thread, so one big request does not stall every other one.
DECODE_OFF_LOOP_BYTES = 256 * 1024
#: after the drain, how long aiohttp may wait for handlers still running before it closes their connections.
CLEANUP_TIMEOUT_S = 2.0


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type=JSON, headers=headers)


def _inference_error(exc: InferenceError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return _error(exc.http_status, str(exc), headers)


class _JsonErrorsRequestHandler(web_protocol.RequestHandler):
    """aiohttp's own answers to requests it cannot parse (bad request line, headers too long, ...) as
    `{"error": ...}` like every other error, logged at DEBUG (a client's mistake is not the server's error)."""

    def handle_error(
        self,
        request: web_request.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.debug("unparseable request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        text = message or (str(exc) if exc is not None else HTTPStatus(status).phrase)
        response = web.Response(status=status, body=error_body(f"malformed HTTP request: {text}"), content_type=JSON)
        response.force_close()
        return response


class _JsonErrorsServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorsRequestHandler(self, loop=self._loop, **self._kwargs)


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused early when its declared length is over `limit` (413), cut off at `limit` while
    streaming (chunked bodies), and abandoned with 408 when it takes longer than `timeout_s` to arrive."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body too large: {request.content_length} bytes, the limit is {limit}")
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body too large: over the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:  # not the builtin before Python 3.11
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405, 413 body too large) as `{"error": ...}`; never an HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason
        if exc.status == 413:
            message = f"request body too large: {exc.text}"
        return _error(exc.status, message)


class Routes:
    """The REST handlers of one served model: health, metadata, parity, inference and metrics."""

    def __init__(self, model: ServedModel, settings: ServeSettings, metrics: Metrics, state: ServerState) -> None:
        """Handlers on `model`, sharing `metrics` and the lifecycle `state` with the gRPC endpoint."""
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.name = model.name
        self.input_dtypes = {spec.name: spec.dtype for spec in model.manifest.inputs}
        self.output_names = [o.name for o in model.manifest.outputs]
        self.timeout_default_s = settings.batching.timeout_ms / 1000.0

    @web.middleware
    async def close_when_stopping(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """After SIGTERM, answer with `Connection: close`: a kept-alive client's next request then opens a new
        connection, which the Service sends to a ready pod (the endpoints no longer list this one)."""
        response = await handler(request)
        if self.state.stopping:
            response.force_close()
        return response

    def check_model(self, request: web.Request) -> web.Response | None:
        """A 404 when the path names another model or version than this one, else None."""
        name = self.name
        if request.match_info["model"] != name:
            return _error(404, f"unknown model {request.match_info['model']!r}; this server serves {name!r}")
        version = request.match_info.get("version")
        if version is not None and version != MODEL_VERSION:
            return _error(404, f"model {name!r} has no version {version!r}; it has {MODEL_VERSION!r}")
        return None

    def is_ready(self) -> bool:
        """Warm, not stopping, and every worker healthy."""
        return self.state.ready and self.model.healthy

    async def live(self, _request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return _json(200, {"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        """Readiness: 200 once warm, 503 while warming up, draining or short of healthy workers."""
        ok = self.is_ready()
        return _json(200 if ok else 503, {"ready": ok})

    async def server_metadata(self, _request: web.Request) -> web.Response:
        """OIP v2 server metadata."""
        return _json(200, {"name": "neuron-runtime", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        """OIP v2 model metadata: the tensors (-1 for the batch and bucketed axes) and the artifact's parameters."""
        if (bad := self.check_model(request)) is not None:
            return bad
        model = self.model
        manifest = model.manifest
        sig = model.signature
        inputs = []
        for spec, isig in zip(manifest.inputs, sig.inputs, strict=True):
            shape = [-1, *isig.shape]
            if isig.bucketed and sig.bucket_axis is not None:
                shape[sig.bucket_axis] = -1
            inputs.append({"name": spec.name, "datatype": OIP_DATATYPES[spec.dtype], "shape": shape})
        outputs = [
            {"name": o.name, "datatype": OIP_DATATYPES[o.dtype], "shape": [-1, *o.shape[1:]]} for o in manifest.outputs
        ]
        return _json(
            200,
            {
                "name": self.name,
                "versions": [MODEL_VERSION],
                "platform": "pytorch_torchscript",
                "inputs": inputs,
                "outputs": outputs,
                "parameters": {
                    "target": manifest.target,
                    "artifact_sha256": model.digest,
                    "traced_batch_size": manifest.batch_size,
                    "buckets": list(sig.bucket_sizes),
                    "max_batch_size": self.settings.batching.max_batch_size,
                },
            },
        )

    async def model_parity(self, request: web.Request) -> web.Response:
        """The parity gate's measured report (a runtime extension of OIP v2)."""
        if (bad := self.check_model(request)) is not None:
            return bad
        report = self.model.parity
        return _json(200, {"name": self.name, "checked": report is not None, **(report.as_dict() if report else {})})

    async def model_ready(self, request: web.Request) -> web.Response:
        """OIP v2 model readiness (the server's readiness: it serves one model)."""
        if (bad := self.check_model(request)) is not None:
            return bad
        ok = self.is_ready()
        return _json(200 if ok else 503, {"name": self.name, "ready": ok})

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """OIP v2 inference, admitted by the lifecycle, tracked for the drain and counted in the metrics."""
        if (bad := self.check_model(request)) is not None:
            return bad
        state, metrics = self.state, self.metrics
        try:
            state.admit(self.name)
        except Unavailable as exc:
            metrics.rejections.labels("shutting_down" if not state.accepting else "not_ready").inc()
            return _inference_error(exc)
        started = time.perf_counter()
        with state.track():
            metrics.in_flight.inc()
            try:
                response = await self._infer(request)
            except InferenceError as exc:
                if 400 <= exc.http_status < 500 and not isinstance(exc, QueueFull):  # 429s count as queue_full
                    metrics.rejections.labels("bad_request").inc()
                response = _inference_error(exc)
            except (aiohttp.ClientPayloadError, ConnectionError) as exc:
                # The client went away mid-body: nobody to answer; not the server's error.
                log.debug("client abandoned its request: %s", exc)
                metrics.rejections.labels("abandoned").inc()
                response = _error(400, "the request body was abandoned")
            finally:
                metrics.in_flight.dec()
        metrics.request_latency.observe(time.perf_counter() - started)
        metrics.requests.labels(str(response.status)).inc()
        return response

    async def _infer(self, request: web.Request) -> web.Response:
        """Read, decode and run one admitted request; raises `InferenceError` for an answer other than 200."""
        model, settings = self.model, self.settings
        # Refuse before reading or decoding anything when the queue is full or no worker runs: under overload a
        # 429 then costs almost nothing, so the requests that are accepted keep the workers busy.
        model.admit()
        header_length = request.headers.get(HEADER_LENGTH)
        limit = (
            min(settings.max_json_bytes, settings.max_request_bytes)
            if header_length is None
            else settings.max_request_bytes
        )
        body = await _read_body(request, limit, settings.read_timeout_s)
        if len(body) > DECODE_OFF_LOOP_BYTES:
            decoded = await asyncio.to_thread(decode_request, body, header_length, self.input_dtypes)
        else:
            decoded = decode_request(body, header_length, self.input_dtypes)
        timeout = decoded.timeout_s if decoded.timeout_s is not None else self.timeout_default_s
        outputs = await model.run(decoded.inputs, timeout)
        payload, response_header_length = encode_response(self.name, decoded, self.output_names, outputs)
        if response_header_length is None:
            return web.Response(body=payload, content_type=JSON)
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(response_header_length)},
        )

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        """Prometheus text exposition, with the queue depth sampled now."""
        self.metrics.queue_depth.set(self.model.batcher.queued_rows)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})


def build_app(model: ServedModel, settings: ServeSettings, metrics: Metrics, state: ServerState) -> web.Application:
    """The aiohttp application: the `Routes` of `model` on the OIP v2 paths, behind the JSON-error middlewares."""
    routes = Routes(model, settings, metrics, state)
    app = web.Application(
        client_max_size=settings.max_request_bytes, middlewares=[routes.close_when_stopping, _errors_as_json]
    )
    table = [
        web.get(contract.LIVE_PATH, routes.live),
        web.get(contract.READY_PATH, routes.ready),
        web.get("/v2", routes.server_metadata),
        web.get(contract.METRICS_PATH, routes.metrics_handler),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [
            web.get(prefix, routes.model_metadata),
            web.get(prefix + "/ready", routes.model_ready),
            web.get(prefix + "/parity", routes.model_parity),
            web.post(prefix + "/infer", routes.infer),
        ]
    app.add_routes(table)
    return app


def load_settings(config: Path | None) -> ServeSettings:
    """Settings from env vars, with an optional YAML/JSON file underneath (env vars win, nested keys merge)."""
    if config is None:
        return ServeSettings()
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{config} must hold a mapping of settings")

    class _FileUnderEnv(ServeSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return env_settings, init_settings

    return ServeSettings.model_validate(_FileUnderEnv(**data).model_dump())


async def serve(
    settings: ServeSettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    on_grpc: Callable[[int], None] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT (or `stop`), then drain; returns the exit code.

    `on_ready(port)` is called once the model is warm and ready (embedding and tests); `on_grpc(port)` once the
    gRPC endpoint listens.
    """
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    metrics = Metrics()
    # Workers need the GIL only briefly around each graph call; with the default 5 ms switch interval they can
    # wait that long behind a busy event loop at every batch boundary (a convoy), leaving their core idle.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    model = ServedModel.load(settings, metrics)
    state = ServerState()
    runner, port = await _listen(build_app(model, settings, metrics, state), settings)
    model.start()
    grpc_server: grpc.aio.Server | None = None
    started = time.perf_counter()
    try:
        grpc_listening = await _start_grpc(model, state, metrics, settings)
        if grpc_listening is not None:
            grpc_server, grpc_port = grpc_listening
            if on_grpc is not None:
                on_grpc(grpc_port)
        await model.check_parity(settings.parity, settings.artifact_dir)
        await model.warmup(settings.warmup_runs)
    except BaseException:
        await _close(model, runner, grpc_server, grace_s=0)
        raise
    state.ready = True
    log.info(
        "model %s ready: %d worker(s), %d graph(s), warm-up %.2fs",
        model.name,
        len(model.pool.workers),
        len(model.manifest.graphs),
        time.perf_counter() - started,
    )
    if on_ready is not None:
        on_ready(port)
    await _until_stopped(stop, model)
    await _drain(model, state, settings)
    await _close(model, runner, grpc_server, grace_s=CLEANUP_TIMEOUT_S)
    log.info("stopped")
    if model.failure is not None:
        raise WorkerCrashLoop(model.failure)
    return 0


def _stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM and SIGINT (where the loop supports signal handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _listen(app: web.Application, settings: ServeSettings) -> tuple[web.AppRunner, int]:
    """Open the REST listener (live, not ready yet); returns its runner and the bound port."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout_s,
        shutdown_timeout=CLEANUP_TIMEOUT_S,
    )
    await runner.setup()
    assert runner.server is not None
    runner.server.__class__ = _JsonErrorsServer  # aiohttp builds its Server in setup(); this adds JSON parse errors
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    port = _bound_port(runner, settings.port)
    log.info("listening on %s:%d (live, warming up)", settings.host, port)
    print(f"listening on {settings.host}:{port}", flush=True)
    return runner, port


async def _start_grpc(
    model: ServedModel, state: ServerState, metrics: Metrics, settings: ServeSettings
) -> tuple[grpc.aio.Server, int] | None:
    """Start the OIP v2 gRPC endpoint; returns it and its bound port, or None in an image without grpcio."""
    try:
        from neuron_runtime.grpc_server import start_grpc_server
    except ImportError as exc:  # the inf1 image has no grpcio (see pyproject's `grpc` extra)
        log.warning("OIP v2 gRPC is off: %s (the image lacks the `grpc` extra); serving REST only", exc)
        return None
    grpc_server, grpc_port = await start_grpc_server(
        model, state, metrics, settings.host, settings.grpc_port, settings.max_request_bytes
    )
    print(f"grpc listening on {settings.host}:{grpc_port}", flush=True)
    return grpc_server, grpc_port


async def _until_stopped(stop: asyncio.Event, model: ServedModel) -> None:
    """Wait for `stop` (a signal) or for the workers' supervision to give up (`model.failed`)."""
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(model.failed.wait())
    await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()


async def _drain(model: ServedModel, state: ServerState, settings: ServeSettings) -> None:
    """Not ready → optional `shutdown_delay_s` → refuse new requests → finish in-flight ones, within one deadline."""
    if model.failure is not None:
        log.error("stopping: %s", model.failure)
    log.info("stopping: not ready; draining %d in-flight request(s)", state.in_flight)
    state.stopping = True
    state.ready = False
    if settings.shutdown_delay_s:
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
            await asyncio.wait_for(asyncio.Event().wait(), settings.shutdown_delay_s)
    state.accepting = False
    if state.in_flight == 0:
        state.drained.set()
    try:
        # One deadline for the whole drain: a client holding its body open cannot stretch it.
        await asyncio.wait_for(_finish_in_flight(model, state), settings.drain_timeout_s)
    except asyncio.TimeoutError:  # not the builtin before Python 3.11
        log.warning("drain timed out with %d request(s) in flight", state.in_flight)


async def _finish_in_flight(model: ServedModel, state: ServerState) -> None:
    """Flush the queues at once (no more waiting for the delay), let running batches finish, then the handlers
    write their responses."""
    await model.drain()
    await state.drained.wait()


async def _close(
    model: ServedModel, runner: web.AppRunner, grpc_server: grpc.aio.Server | None, *, grace_s: float
) -> None:
    """Stop the gRPC endpoint (`grace_s` for its running calls), the workers, then the REST listener."""
    if grpc_server is not None:
        await grpc_server.stop(grace_s)
    model.shutdown()
    await runner.cleanup()


class WorkerCrashLoop(RuntimeError):
    """Workers died faster than the supervision allows: the process exits so that Kubernetes restarts the pod."""


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return default


#: The exceptions that refuse to serve, and the refusal each stands for (first match wins: subclasses first).
_REFUSALS: tuple[tuple[type[Exception], ServeRefusal], ...] = (
    (ArtifactError, ServeRefusal.ARTIFACT_INVALID),
    (IncompatibleRuntime, ServeRefusal.INCOMPATIBLE_RUNTIME),
    (ParityFailed, ServeRefusal.PARITY_FAILED),
    (PlacementError, ServeRefusal.INVALID_PLACEMENT),
    (ConfigurationError, ServeRefusal.INVALID_PLACEMENT),
    (WorkerCrashLoop, ServeRefusal.WORKER_CRASH_LOOP),
    # Downloading the artifact (`artifact_uri`): a missing artifact exits like any artifact serve cannot use.
    (objectstore.AccessDenied, ServeRefusal.STORAGE_ACCESS_DENIED),
    (objectstore.ObjectNotFound, ServeRefusal.STORAGE_NOT_FOUND),
    (objectstore.StorageError, ServeRefusal.STORAGE_UNAVAILABLE),
)
_REFUSABLE = tuple(kind for kind, _ in _REFUSALS)


def serve_main(config: Path | None) -> int:
    """Run `serve`; a refusal exits non-zero with a JSON termination message `{status, reason, message, ...}`."""
    log_path = termination_log_path(None)
    try:
        settings = load_settings(config)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"invalid serve settings: {exc}", file=sys.stderr)
        return fail(log_path, ServeRefusal.INVALID_SETTINGS, f"invalid serve settings: {exc}")
    if settings.termination_log is not None:
        log_path = settings.termination_log
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    if settings.artifact_uri is not None:
        try:
            fetch_artifact(settings)
        except _REFUSABLE as exc:
            return fail(log_path, *_refusal(exc))
        except ValueError as exc:  # an artifact_uri that is not a valid s3://bucket/key
            return fail(log_path, ServeRefusal.INVALID_SETTINGS, f"artifact_uri: {exc}")
    try:
        code = _run(serve(settings))
    except _REFUSABLE as exc:
        return fail(log_path, *_refusal(exc))
    # Served and drained: the workers are stopped and every answer written. Skip the interpreter's teardown
    # (torch's, and the sockets of clients that never finished a request), which took 2-5 s more and eats into the
    # pod's grace period. Flush what was logged first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where installed, else on asyncio's default event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _refusal(exc: Exception) -> tuple[ServeRefusal, str, dict[str, Any]]:
    """The refusal an exception of `_REFUSABLE` stands for, its message, and the termination message's extra fields."""
    refusal = next(refusal for kind, refusal in _REFUSALS if isinstance(exc, kind))
    extra: dict[str, Any] = {}
    if isinstance(exc, ParityFailed):
        report = exc.report
        extra = {"maxAbsError": _finite(report.max_abs_error), "atol": report.atol, "rtol": report.rtol}
    return refusal, str(exc), extra


def fail(log_path: Path | None, refusal: ServeRefusal, message: str, extra: Mapping[str, Any] | None = None) -> int:
    """Log the refusal, write its termination message (to `log_path` and stdout); returns its exit code."""
    log.error("refusing to serve (%s): %s", refusal.value, message)
    failure = contract.Failure(reason=refusal.value, message=message, **(extra or {}))
    write_termination_message(log_path, failure)
    return refusal.exit_code


def fetch_artifact(settings: ServeSettings) -> None:
    """Download `settings.artifact_uri` into `settings.artifact_dir`, verifying every file against the pinned digest
    (a copy that already verifies, e.g. after a container restart on the same emptyDir, is kept)."""
    assert settings.artifact_uri is not None
    prefix = objectstore.S3Location.parse(settings.artifact_uri)
    objectstore.fetch_artifact(
        objectstore.client(settings.s3),
        prefix,
        settings.artifact_dir,
        settings.expected_sha256,
        lambda message: log.info("%s", message),
    )


def _finite(value: float) -> float | str:
    """JSON has no inf/NaN: say it in words."""
    return value if math.isfinite(value) else str(value)
