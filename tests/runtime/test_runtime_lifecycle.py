"""`neuron-runtime serve` as a real process: SIGTERM → not ready → drain in-flight requests → exit 0, and
refusal to serve an artifact whose digest does not match the pinned one."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from neuron_runtime.compile import CompileResult

BODY = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


def start_server(artifact_dir: Path, **env: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    settings = {
        "NEURON_RUNTIME_MODEL_NAME": "mlp",
        "NEURON_RUNTIME_ARTIFACT_DIR": str(artifact_dir),
        "NEURON_RUNTIME_HOST": "127.0.0.1",
        "NEURON_RUNTIME_PORT": "0",
        "NEURON_RUNTIME_GRPC_PORT": "0",
        "NEURON_RUNTIME_PIN_CPU_THREADS": "false",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron_runtime.cli", "serve"],
        env={**os.environ, **settings},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_port(lines: queue.Queue[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith("listening on "):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError(f"server did not report its port; output: {''.join(seen)}")


async def until(predicate, limit_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)  # a `neuron-runtime serve` process through a SIGTERM drain
@pytest.mark.slow
async def test_sigterm_drains_in_flight_requests_and_exits_0(mlp_artifact: CompileResult) -> None:
    proc, lines = start_server(
        mlp_artifact.directory,
        NEURON_RUNTIME_EXPECTED_SHA256=mlp_artifact.digest,
        NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE="4",
        NEURON_RUNTIME_BATCHING__MAX_DELAY_MS="600000",  # queued requests only leave through the drain
        NEURON_RUNTIME_BATCHING__IDLE_DISPATCH="false",
        NEURON_RUNTIME_SHUTDOWN_DELAY_S="1",
    )
    try:
        port = wait_for_port(lines, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            async def ready_is(value: bool) -> bool:
                try:
                    return (await client.get("/v2/health/ready")).status_code == (200 if value else 503)
                except httpx.TransportError:
                    return False

            await until(lambda: ready_is(True), 60, "ready")
            in_flight = [asyncio.ensure_future(client.post("/v2/models/mlp/infer", json=BODY)) for _ in range(3)]

            async def queued_three() -> bool:
                text = (await client.get("/metrics")).text
                return "neuron_runtime_queue_depth_rows 3.0" in text

            await until(queued_three, 30, "3 queued rows")
            proc.send_signal(signal.SIGTERM)
            await until(lambda: ready_is(False), 30, "not ready after SIGTERM")
            responses = await asyncio.gather(*in_flight)
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(r.json()["outputs"][0]["shape"] == [1, 3] for r in responses)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(
    120
)  # a `neuron-runtime serve` process (torch import, load, warm-up) through its whole shutdown delay and drain
@pytest.mark.slow
async def test_after_sigterm_it_keeps_serving_and_closes_kept_alive_connections(mlp_artifact: CompileResult) -> None:
    """A client holding a kept-alive connection to a pod being replaced is served during the shutdown delay, and
    told `Connection: close`, so its next request opens a connection that the Service sends to a ready pod (a
    503 there was a lost request in every surge rollout measured on the kind cluster)."""
    proc, lines = start_server(
        mlp_artifact.directory,
        NEURON_RUNTIME_EXPECTED_SHA256=mlp_artifact.digest,
        NEURON_RUNTIME_SHUTDOWN_DELAY_S="30",
    )
    try:
        port = wait_for_port(lines, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            async def ready_is(value: bool) -> bool:
                try:
                    return (await client.get("/v2/health/ready")).status_code == (200 if value else 503)
                except httpx.TransportError:
                    return False

            await until(lambda: ready_is(True), 60, "ready")
            before = await client.post("/v2/models/mlp/infer", json=BODY)
            assert before.status_code == 200
            assert before.headers.get("connection", "").lower() != "close"
            proc.send_signal(signal.SIGTERM)
            await until(lambda: ready_is(False), 30, "not ready after SIGTERM")
            during = await client.post("/v2/models/mlp/infer", json=BODY)
        assert during.status_code == 200, during.text
        assert during.headers["connection"].lower() == "close"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(120)  # a `neuron-runtime serve` process (torch import) that refuses
@pytest.mark.slow
def test_serve_refuses_a_digest_mismatch(mlp_artifact: CompileResult) -> None:
    proc, lines = start_server(mlp_artifact.directory, NEURON_RUNTIME_EXPECTED_SHA256="0" * 64)
    try:
        assert proc.wait(timeout=60) == 3
        output = ""
        while not lines.empty():
            output += lines.get()
        assert "artifact digest mismatch" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_rejects_invalid_settings() -> None:
    from neuron_runtime.cli import main

    env_backup = dict(os.environ)
    try:
        os.environ["NEURON_RUNTIME_MODEL_NAME"] = "m"
        os.environ["NEURON_RUNTIME_ARTIFACT_DIR"] = "/nonexistent"
        os.environ["NEURON_RUNTIME_BATCHING__MAX_BATCH_SIZE"] = "0"
        assert main(["serve"]) == 2
    finally:
        os.environ.clear()
        os.environ.update(env_backup)


def test_config_file_sits_under_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_runtime.server import load_settings

    config = tmp_path / "serve.yaml"
    config.write_text("model_name: from-file\nartifact_dir: /a\nbatching:\n  max_batch_size: 4\n  max_delay_ms: 2\n")
    monkeypatch.setenv("NEURON_RUNTIME_BATCHING__MAX_DELAY_MS", "7")
    settings = load_settings(config)
    assert settings.model_name == "from-file"
    assert (settings.batching.max_batch_size, settings.batching.max_delay_ms) == (4, 7.0)
