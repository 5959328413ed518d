"""Shared helpers for the runtime tests: tiny compile requests and an in-process server.

The server runs `neuron_runtime.server.serve` on its own event loop in a background thread, on 127.0.0.1 and a
free port, so blocking clients (tritonclient) and async clients (kserve, httpx) can both talk to it. Readiness
is signalled through `on_ready` and a `threading.Event`, never by sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from neuron_runtime.compile import CompileResult
from neuron_runtime.config import CompileRequest, ServeSettings

MLP_ARGS = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 1}
BERT_ARGS = {"vocab": 50, "d_model": 16, "heads": 2, "layers": 1, "max_len": 64, "labels": 2, "seed": 2}


def mlp_request(**overrides: Any) -> CompileRequest:
    data: dict[str, Any] = {
        "source": {"kind": "python", "factory": "neuron_runtime.zoo:tiny_mlp", "args": MLP_ARGS},
        "inputs": [{"name": "x", "shape": [4, 8], "dtype": "float32"}],
        "batch_size": 4,
        "target": "cpu",
    }
    data.update(overrides)
    return CompileRequest.model_validate(data)


def bert_request(**overrides: Any) -> CompileRequest:
    data: dict[str, Any] = {
        "source": {"kind": "python", "factory": "neuron_runtime.zoo:bert_like", "args": BERT_ARGS},
        "inputs": [
            {"name": "input_ids", "shape": [2, 16], "dtype": "int64"},
            {"name": "attention_mask", "shape": [2, 16], "dtype": "int64"},
        ],
        "batch_size": 2,
        "buckets": {"axis": 1, "sizes": [8, 16]},
        "target": "cpu",
        "dynamic_batch": True,
    }
    data.update(overrides)
    return CompileRequest.model_validate(data)


class ServerThread:
    """A running server in a background thread; `url` is its base URL."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.port = 0
        self.grpc_port = 0
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        from neuron_runtime.server import serve

        async def run() -> int:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            return await serve(self.settings, stop=self._stop, on_ready=self._on_ready, on_grpc=self._on_grpc)

        try:
            self.exit_code = asyncio.run(run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _on_grpc(self, port: int) -> None:
        self.grpc_port = port

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise TimeoutError("server did not become ready in 60 s")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


@contextmanager
def running_server(artifact: CompileResult, **overrides: Any) -> Iterator[ServerThread]:
    values: dict[str, Any] = {
        "model_name": "tiny",
        "host": "127.0.0.1",
        "port": 0,
        "grpc_port": 0,
        "pin_cpu_threads": False,
        "warmup_runs": 1,
    }
    values.update(overrides)
    settings = ServeSettings(artifact_dir=artifact.directory, **values)
    server = ServerThread(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()
