"""Issue #12 D1: a worker process that dies (OOM kill, segfault in a graph) is no black hole.

Its in-flight requests fail at once with 503 naming the death, the server reports not ready while a replacement is
started on the same cores and warmed, then serves again; deaths beyond `worker_restarts` end the process with a
`WorkerCrashLoop` termination message. The worker is frozen with SIGSTOP before it is killed, so requests are
provably in flight on it when it dies (no timing luck), and the replacement is held behind a gate so the not-ready
window is observed, not raced.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_cases import running_server
from test_runtime_lifecycle import BODY, start_server, wait_for_port

from neuron_runtime import workers
from neuron_runtime.compile import CompileResult

URL = "/v2/models/mlp/infer"


async def eventually(predicate: Any, what: str, limit_s: float = 60.0) -> None:
    """Wait for a condition (checked on every loop turn, bounded); never a fixed sleep."""
    deadline = time.monotonic() + limit_s
    while not await _value(predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.01)


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def gauge(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def worker_processes() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("worker-")]


@pytest.mark.slow
async def test_a_killed_worker_fails_its_requests_with_503_goes_not_ready_and_recovers(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawning, release = threading.Event(), threading.Event()
    original = workers.ProcessWorker

    class GatedReplacement(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            spawning.set()
            if not release.wait(timeout=60):
                raise TimeoutError("test gate never opened")
            super().__init__(*args, **kwargs)

    batching = {"max_batch_size": 4, "max_delay_ms": 1}
    with running_server(mlp_artifact, model_name="mlp", worker_backend="process", batching=batching) as s:
        monkeypatch.setattr(workers, "ProcessWorker", GatedReplacement)  # only replacements: the pool is loaded
        [victim] = worker_processes()
        statuses: collections.Counter[int] = collections.Counter()
        errors: list[str] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:

            async def client_loop() -> None:
                while not stop.is_set():
                    response = await client.post(URL, json=BODY)
                    statuses[response.status_code] += 1
                    if response.status_code != 200:
                        errors.append(response.json()["error"])

            assert (await client.post(URL, json=BODY)).status_code == 200
            os.kill(victim.pid, signal.SIGSTOP)  # frozen: what is sent now stays in flight on it
            loops = [asyncio.ensure_future(client_loop()) for _ in range(4)]
            await eventually(
                lambda: gauge(client, "neuron_runtime_requests_in_flight"), "requests in flight on the frozen worker"
            )

            async def four_in_flight() -> bool:
                return await gauge(client, "neuron_runtime_requests_in_flight") >= 4

            await eventually(four_in_flight, "4 requests in flight on the frozen worker")
            os.kill(victim.pid, signal.SIGKILL)
            await eventually(lambda: statuses[503] >= 4, "the in-flight requests answered 503")
            assert any("worker 0 died (killed by SIGKILL)" in e for e in errors), errors
            await eventually(spawning.is_set, "the supervisor starting a replacement")
            ready = await client.get("/v2/health/ready")
            assert ready.status_code == 503, ready.text
            assert (await client.get("/v2/models/mlp/ready")).status_code == 503
            # No live worker: new requests are refused at once (503), never queued into a black hole.
            refused = statuses[503]
            await eventually(lambda: statuses[503] >= refused + 20, "new requests refused with 503 at once")
            assert any("no live worker" in e for e in errors), errors[-3:]
            assert statuses[500] == 0

            release.set()

            async def ready_again() -> bool:
                return (await client.get("/v2/health/ready")).status_code == 200

            await eventually(ready_again, "ready again after the replacement")
            served = statuses[200]
            await eventually(lambda: statuses[200] >= served + 20, "serving again")
            stop.set()
            await asyncio.gather(*loops)
            deaths = await gauge(client, 'neuron_runtime_worker_deaths_total{worker="0"}')
            restarts = await gauge(client, 'neuron_runtime_worker_restarts_total{worker="0"}')
        [replacement] = worker_processes()
    assert replacement.pid != victim.pid
    assert set(statuses) <= {200, 503}, statuses
    assert (deaths, restarts) == (1.0, 1.0)


def children(pid: int) -> list[int]:
    """Child processes of `pid`, forked by any of its threads (a replacement is forked from a worker thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


@pytest.mark.timeout(120)  # worker processes (each importing torch) killed until the crash-loop limit
@pytest.mark.slow
def test_workers_dying_faster_than_allowed_end_the_process_with_a_termination_message(
    mlp_artifact: CompileResult, tmp_path: Path
) -> None:
    log_path = tmp_path / "termination-log"
    proc, lines = start_server(
        mlp_artifact.directory,
        NEURON_RUNTIME_WORKER_BACKEND="process",
        NEURON_RUNTIME_WORKER_RESTARTS="1",
        NEURON_RUNTIME_TERMINATION_LOG=str(log_path),
        NEURON_RUNTIME_GRPC_PORT="0",
    )
    try:
        port = wait_for_port(lines, 60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "never ready"
            killed: set[int] = set()
            for death in range(2):
                deadline = time.monotonic() + 60
                while not (pids := [p for p in children(proc.pid) if p not in killed]) or (
                    death and client.get("/v2/health/ready").status_code != 200
                ):
                    assert time.monotonic() < deadline, f"no live worker to kill (death {death})"
                os.kill(pids[0], signal.SIGKILL)
                killed.add(pids[0])
        assert proc.wait(timeout=60) == 8
        message = json.loads(log_path.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert message["reason"] == "WorkerCrashLoop"
    assert "2 worker deaths within 300 s (limit 1)" in message["message"], message
    assert "killed by SIGKILL" in message["message"]
