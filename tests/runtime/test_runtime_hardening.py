"""Issue #12 D3/D7/D10: slow, stalled, abandoned and malformed clients, and overload, cost little and hold nothing.

- a body that never finishes gets 408 after `read_timeout_s`; during SIGTERM it cannot hold the process past
  `drain_timeout_s` (+ the 2 s cleanup), and half-open connections (headers never finished) do not either;
- a connection with no request in progress is closed after `idle_timeout_s`;
- a full queue is answered 429 before the body is read or decoded (a garbage body gets 429, not 400);
- JSON above `max_json_bytes` is refused from its Content-Length (413) while the binary extension may be larger;
- aiohttp's own parser errors answer `{"error": ...}`; a client abandoning its body is logged at DEBUG, not ERROR.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time

import httpx
import orjson
import pytest
from runtime_cases import running_server
from test_runtime_lifecycle import BODY, start_server, wait_for_port
from test_runtime_server import gate_workers
from test_runtime_supervision import eventually, gauge

from neuron_runtime.compile import CompileResult

URL = "/v2/models/mlp/infer"


async def open_partial(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


def held_body_headers(length: int = 100_000) -> bytes:
    return (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode() + b'{"inputs": ['


@pytest.mark.timeout(120)  # a `neuron-runtime serve` process through its drain deadline
@pytest.mark.slow
async def test_sigterm_exits_within_the_drain_although_a_body_is_held_open(mlp_artifact: CompileResult) -> None:
    drain_s = 2.0
    proc, lines = start_server(
        mlp_artifact.directory,
        NEURON_RUNTIME_READ_TIMEOUT_S="600",  # the body timeout would not save us: the drain bound must
        NEURON_RUNTIME_DRAIN_TIMEOUT_S=str(drain_s),
        NEURON_RUNTIME_GRPC_PORT="0",
    )
    try:
        port = wait_for_port(lines, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def ready() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready, "ready")
            held = await open_partial(port, held_body_headers())
            half_open = [await open_partial(port, b"POST /v2 HTTP/1.1\r\nHost: x\r\n") for _ in range(200)]

            async def one_in_flight() -> bool:
                return await gauge(client, "neuron_runtime_requests_in_flight") == 1

            await eventually(one_in_flight, "the held request counted in flight")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
            elapsed = time.monotonic() - started
        for _reader, writer in [held, *half_open]:
            writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    # drain bound + aiohttp's cleanup bound (2 s) + process exit; it was 121.7 s before (60 s drain + 60 s cleanup).
    assert elapsed < drain_s + 2.0 + 3.0, f"SIGTERM took {elapsed:.1f} s with a held body (drain {drain_s} s)"


@pytest.mark.timeout(120)  # a `neuron-runtime serve` process and its read timeout
async def test_a_stalled_body_gets_408_and_others_are_served(mlp_artifact: CompileResult) -> None:
    with running_server(mlp_artifact, model_name="mlp", read_timeout_s=0.5) as s:
        reader, writer = await open_partial(s.port, held_body_headers())
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            assert (await client.post(URL, json=BODY)).status_code == 200
            answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            assert await gauge(client, "neuron_runtime_requests_in_flight") == 0
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert "did not arrive within 0.5 s" in orjson.loads(payload)["error"]


async def test_connections_without_a_request_are_closed_after_the_idle_timeout(mlp_artifact: CompileResult) -> None:
    with running_server(mlp_artifact, model_name="mlp", idle_timeout_s=0.5) as s:
        partial = [await open_partial(s.port, b"POST /v2 HTTP/1.1\r\nHost: x\r\n") for _ in range(50)]
        idle = [await open_partial(s.port, b"") for _ in range(50)]
        for reader, writer in partial + idle:
            assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server, nothing answered
            writer.close()


async def test_a_full_queue_answers_429_before_reading_the_body(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = gate_workers(monkeypatch)
    batching = {"max_batch_size": 1, "max_delay_ms": 0, "max_queue": 2}
    with running_server(mlp_artifact, model_name="mlp", warmup_runs=0, worker_backend="thread", batching=batching) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            # One batch held on the worker, one waiting for it (pipelining), then two queued rows: the queue is full.
            held = []
            for k in range(1, 5):
                held.append(asyncio.ensure_future(client.post(URL, json=BODY)))

                async def entered(k: int = k) -> bool:
                    in_flight = await gauge(client, "neuron_runtime_requests_in_flight")
                    queued = await gauge(client, "neuron_runtime_queue_depth_rows")
                    return in_flight == k and queued == max(0, k - 2)

                await eventually(entered, f"request {k} held or queued")
            garbage = await client.post(URL, content=b"\x00 not json at all")
            gate.set()
            codes = [r.status_code for r in await asyncio.gather(*held)]
    assert garbage.status_code == 429, garbage.text  # decoding it would have given 400
    assert garbage.headers["Retry-After"] == "1"
    assert "queue full" in garbage.json()["error"]
    assert codes == [200, 200, 200, 200]


async def test_json_over_its_limit_is_refused_from_its_length_binary_may_be_larger(
    mlp_artifact: CompileResult,
) -> None:
    with running_server(mlp_artifact, model_name="mlp", max_json_bytes=2048, max_request_bytes=1 << 20) as s:
        big = {"inputs": [{"name": "x", "shape": [64, 8], "datatype": "FP32", "data": [0.25] * 512}]}
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            refused = await client.post(URL, content=json.dumps(big).encode())
            header = orjson.dumps(
                {
                    "inputs": [
                        {"name": "x", "shape": [4, 8], "datatype": "FP32", "parameters": {"binary_data_size": 128}}
                    ],
                    "parameters": {"binary_data_output": False},
                }
            )
            binary = await client.post(
                URL,
                content=header + b"\x00" * 128 + b"",
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
    assert refused.status_code == 413, refused.text
    assert "too large" in refused.json()["error"]
    assert binary.status_code in (200, 400), binary.text  # not 413: the limit for binary bodies is larger
    assert binary.status_code != 413


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nBad Header\r\n\r\n",
    ],
    ids=["bad-request-line", "url-too-long", "bad-header"],
)
async def test_unparseable_requests_get_json_errors(mlp_artifact: CompileResult, raw: bytes) -> None:
    with running_server(mlp_artifact, model_name="mlp") as s:
        reader, writer = await open_partial(s.port, raw)
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1][:1] == b"4", answer[:200]
    assert b"application/json" in head.lower(), head
    assert orjson.loads(payload)["error"].startswith("malformed HTTP request")


async def test_an_abandoned_body_is_logged_at_debug_not_error(
    mlp_artifact: CompileResult, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_server(mlp_artifact, model_name="mlp") as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            _reader, writer = await open_partial(s.port, held_body_headers())

            async def one_in_flight() -> bool:
                return await gauge(client, "neuron_runtime_requests_in_flight") == 1

            await eventually(one_in_flight, "the request in flight")
            writer.close()

            async def abandoned() -> bool:
                return await gauge(client, 'neuron_runtime_rejections_total{reason="abandoned"}') == 1

            await eventually(abandoned, "the abandoned body counted")
            assert (await client.post(URL, json=BODY)).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("abandoned" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
