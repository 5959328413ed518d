"""The OIP v2 server end to end: tritonclient and kserve clients (JSON and binary tensors), health bodies,
malformed requests (4xx, never 500, other clients unaffected), overload (429, nothing accepted is lost),
deadlines (504) and a failing batch (only its own requests fail)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from runtime_cases import BERT_ARGS, MLP_ARGS, ServerThread, running_server

from neuron_runtime import zoo
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import CompileRequest
from neuron_runtime.workers import Worker

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


async def until(predicate: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    """Poll `predicate` until true; fail naming `what` after `limit_s` seconds."""
    deadline = time.monotonic() + limit_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module", params=["process", "thread"])
def mlp_server(mlp_artifact: CompileResult, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """The MLP served by each worker backend."""
    with running_server(
        mlp_artifact, model_name="mlp", worker_backend=request.param, batching={"max_batch_size": 4, "max_delay_ms": 2}
    ) as s:
        yield s


def eager_mlp(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return zoo.tiny_mlp(**MLP_ARGS)(torch.from_numpy(x)).numpy()


def test_health_and_metadata_are_json(mlp_server: ServerThread) -> None:
    with httpx.Client(base_url=mlp_server.url) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
        server = client.get("/v2").json()
        assert server["name"] == "neuron-runtime"
        assert "binary_tensor_data" in server["extensions"]
        meta = client.get("/v2/models/mlp").json()
        assert meta["platform"] == "pytorch_torchscript"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
        assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}]
        assert client.get("/v2/models/mlp/versions/1").status_code == 200
        missing = client.get("/v2/models/other")
        assert missing.status_code == 404
        assert "unknown model 'other'" in missing.json()["error"]
        assert client.get("/v2/models/mlp/versions/7/ready").status_code == 404
        assert client.get("/nope").json() == {"error": "404: Not Found"}
        metrics = client.get("/metrics").text
        for name in [
            "neuron_runtime_request_duration_seconds",
            "neuron_runtime_queue_wait_seconds",
            "neuron_runtime_batch_size_rows",
            "neuron_runtime_batch_padding_ratio",
            "neuron_runtime_worker_busy_seconds_total",
            "neuron_runtime_queue_depth_rows",
            "neuron_runtime_rejections_total",
        ]:
            assert name in metrics


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infer(mlp_server: ServerThread, binary: bool) -> None:
    client = triton.InferenceServerClient(url=mlp_server.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("output0", binary_data=binary)]
    result = client.infer("mlp", [inp], request_id="abc", outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("output0"), eager_mlp(x), rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "abc"
    # default tritonclient call: no outputs listed -> binary outputs requested
    result = client.infer("mlp", [inp])
    np.testing.assert_allclose(result.as_numpy("output0"), eager_mlp(x), rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == ""
    client.close()


def test_tritonclient_rows_beyond_the_traced_batch_are_split(mlp_server: ServerThread) -> None:
    client = triton.InferenceServerClient(url=mlp_server.url.removeprefix("http://"))
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    inp = triton.InferInput("x", [4, 8], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("mlp", [inp]).as_numpy("output0"), eager_mlp(x), rtol=1e-5, atol=1e-5)
    too_many = triton.InferInput("x", [5, 8], "FP32")
    too_many.set_data_from_numpy(np.zeros((5, 8), np.float32))
    with pytest.raises(triton.InferenceServerException, match="at most 4"):
        client.infer("mlp", [too_many])
    client.close()


@pytest.mark.parametrize("binary", [False, True])
async def test_kserve_client(mlp_server: ServerThread, binary: bool) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    assert await client.is_server_live(mlp_server.url)
    assert await client.is_server_ready(mlp_server.url)
    assert await client.is_model_ready(mlp_server.url, "mlp")
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    inp = InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    response = await client.infer(mlp_server.url, InferRequest("mlp", [inp], request_id="k1"), model_name="mlp")
    assert response.id == "k1"
    np.testing.assert_allclose(response.outputs[0].as_numpy(), eager_mlp(x), rtol=1e-5, atol=1e-5)
    await client.close()


def test_bucketed_model_over_tritonclient(bert_artifact: CompileResult) -> None:
    eager = zoo.bert_like(**BERT_ARGS)
    with running_server(bert_artifact, model_name="bert", batching={"max_batch_size": 4, "max_delay_ms": 1}) as s:
        client = triton.InferenceServerClient(url=s.url.removeprefix("http://"))
        for length in (3, 8, 11, 16):
            ids = np.arange(1, length + 1, dtype=np.int64).reshape(1, length) % 50
            mask = np.ones_like(ids)
            inputs = [
                triton.InferInput("input_ids", [1, length], "INT64"),
                triton.InferInput("attention_mask", [1, length], "INT64"),
            ]
            inputs[0].set_data_from_numpy(ids)
            inputs[1].set_data_from_numpy(mask)
            got = client.infer("bert", inputs).as_numpy("output0")
            with torch.inference_mode():
                want = eager(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        client.close()


GOOD = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
BAD_REQUESTS: list[tuple[str, dict[str, str], bytes, int, str]] = [
    (
        "wrong shape",
        {},
        b'{"inputs":[{"name":"x","shape":[1,7],"datatype":"FP32","data":[1,2,3,4,5,6,7]}]}',
        400,
        "axis 1 must be 8",
    ),
    (
        "wrong dtype",
        {},
        b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"INT32","data":[1,2,3,4,5,6,7,8]}]}',
        400,
        "does not match the model's 'FP32'",
    ),
    (
        "wrong name",
        {},
        b'{"inputs":[{"name":"y","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}',
        400,
        "unknown input 'y'",
    ),
    ("missing inputs", {}, b'{"id":"x"}', 400, "'inputs' must be a non-empty list"),
    ("missing data", {}, b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32"}]}', 400, "neither 'data'"),
    ("garbage bytes", {}, bytes(range(256)), 400, "not valid JSON"),
    ("garbage binary", {"Inference-Header-Content-Length": "10"}, b"\x00" * 64, 400, "not valid JSON"),
    ("bad header length", {"Inference-Header-Content-Length": "-3"}, b"{}", 400, "outside the body"),
    ("huge body", {}, b"[" + b"1," * 40_000 + b"1]", 413, "too large"),
]


@pytest.mark.parametrize(
    ("label", "headers", "raw", "status", "fragment"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
async def test_malformed_requests_get_4xx_and_others_are_unaffected(
    mlp_artifact: CompileResult, label: str, headers: dict[str, str], raw: bytes, status: int, fragment: str
) -> None:
    with running_server(
        mlp_artifact, model_name="mlp", max_request_bytes=64 * 1024, batching={"max_batch_size": 4, "max_delay_ms": 1}
    ) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            bad = client.post("/v2/models/mlp/infer", content=raw, headers=headers)
            goods = [client.post("/v2/models/mlp/infer", json=GOOD) for _ in range(4)]
            responses = await asyncio.gather(bad, *goods)
        assert responses[0].status_code == status, responses[0].text
        assert fragment in responses[0].json()["error"]
        assert [r.status_code for r in responses[1:]] == [200] * 4


def gate_workers(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every batch on its worker thread until the returned event is set (start-up checks pass through)."""
    gate = threading.Event()
    original = Worker.run

    def gated(self: Worker, job: Any, lane: int | None = None) -> Any:
        if lane is not None:  # the parity gate and warm-up, before the server is ready: not held
            return original(self, job, lane)
        if not gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        return original(self, job, lane)

    monkeypatch.setattr(Worker, "run", gated)
    return gate


async def metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_overload_gets_429_and_no_accepted_request_is_lost(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = gate_workers(monkeypatch)
    n = 40
    with running_server(
        mlp_artifact,
        model_name="mlp",
        warmup_runs=0,
        worker_backend="thread",  # the gate holds worker threads
        batching={"max_batch_size": 4, "max_delay_ms": 1, "max_queue": 8},
    ) as s:
        limits = httpx.Limits(max_connections=n + 4)
        async with httpx.AsyncClient(base_url=s.url, timeout=30, limits=limits) as client:
            tasks = [asyncio.ensure_future(client.post("/v2/models/mlp/infer", json=GOOD)) for _ in range(n)]

            async def all_answered_or_held() -> bool:
                rejected = sum(1 for t in tasks if t.done() and t.result().status_code == 429)
                held = await metric(client, "neuron_runtime_requests_in_flight")
                return rejected > 0 and rejected + held == n

            await until(all_answered_or_held, 30, "every request to be rejected or held by the gate")
            gate.set()
            responses = await asyncio.gather(*tasks)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}
    assert 0 < codes.count(429) < n
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 429)
    assert all(r.json()["outputs"][0]["shape"] == [1, 3] for r in responses if r.status_code == 200)


async def test_deadline_gives_504(mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_workers(monkeypatch)
    with running_server(
        mlp_artifact, model_name="mlp", warmup_runs=0, worker_backend="thread", batching={"max_delay_ms": 1}
    ) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            body = {**GOOD, "parameters": {"timeout": 50_000}}
            response = await client.post("/v2/models/mlp/infer", json=body)
            gate.set()
            assert response.status_code == 504
            assert "timed out after 50 ms" in response.json()["error"]
            assert (await client.post("/v2/models/mlp/infer", json=GOOD)).status_code == 200


class Picky(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < -1000.0).any()):
            raise RuntimeError("poisoned row")
        return x * 2.0


async def test_a_poisoned_request_fails_alone_and_its_seven_batch_mates_are_served(tmp_path: Path) -> None:
    """Issue #12 D2: one request whose values make the graph raise, in a full batch of 8: the batch is bisected,
    the 7 well-formed requests get their answers, the offender a 400 with the graph's one-line error (no
    TorchScript code, no traceback)."""
    scripted = torch.jit.script(Picky())
    path = tmp_path / "picky.pt"
    torch.jit.save(scripted, str(path))
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    request = CompileRequest.model_validate(
        {
            "source": {"kind": "torchscript", "uri": path.as_uri(), "sha256": digest},
            "inputs": [{"name": "x", "shape": [8, 2], "dtype": "float32"}],
            "batch_size": 8,
            "target": "cpu",
        }
    )
    artifact = compile_artifact(request, tmp_path / "artifacts")
    # A long delay and no idle dispatch: the 8 requests leave together, as one full batch.
    batching = {"max_batch_size": 8, "max_delay_ms": 600_000, "idle_dispatch": False}
    with running_server(artifact, model_name="picky", batching=batching) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:

            def body(value: float) -> dict[str, Any]:
                return {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [value, value]}]}

            url = "/v2/models/picky/infer"
            values = [1.0, 2.0, 3.0, -5000.0, 5.0, 6.0, 7.0, 8.0]
            responses = await asyncio.gather(*(client.post(url, json=body(v)) for v in values))
            metrics = (await client.get("/metrics")).text
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 200, 400, 200, 200, 200, 200], [r.text for r in responses]
    for value, response in zip(values, responses, strict=True):
        if value > 0:
            assert response.json()["outputs"][0]["data"] == [2 * value, 2 * value]
    error = responses[3].json()["error"]
    assert "poisoned row" in error
    assert error.startswith("the model failed on this request's values:"), error
    assert "\n" not in error
    for leak in ("def forward", "Traceback", "serialized code"):
        assert leak not in error, error
    assert "neuron_runtime_batch_isolations_total 1.0" in metrics


@pytest.mark.parametrize(
    "placement",
    [{"workers": 2}, {"mode": "multicore"}],
    ids=["two-pinned-processes", "multicore-threads"],
)
def test_placements_spread_batches_over_every_worker(
    mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch, placement: dict[str, Any]
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", f"{cpus[0]},{cpus[1]}")
    with running_server(mlp_artifact, model_name="mlp", placement=placement, batching={"max_delay_ms": 1}) as s:
        client = httpx.Client(base_url=s.url, timeout=30)
        x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
        for _ in range(4):
            body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
            response = client.post("/v2/models/mlp/infer", json=body)
            np.testing.assert_allclose(response.json()["outputs"][0]["data"], eager_mlp(x).ravel(), rtol=1e-5)
        busy = [
            float(line.split()[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("neuron_runtime_worker_busy_seconds_total{")
        ]
        client.close()
    assert len(busy) == 2
    assert all(b > 0 for b in busy)


def test_infeasible_placement_is_refused(mlp_artifact: CompileResult, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_runtime.placement import PlacementError

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", str(min(os.sched_getaffinity(0))))
    with (
        pytest.raises(PlacementError, match=r"2 workers x 1 cores = 2 cores, but only 1 are visible"),
        running_server(mlp_artifact, placement={"workers": 2}),
    ):
        pass


@pytest.mark.parametrize(
    ("batch_sizes", "setting", "expected"),
    [
        (None, None, False),  # one traced size: a lone request would pay the whole graph
        ([1, 2], None, True),  # several: a partial batch runs a smaller graph
        (None, True, True),
        ([1, 2], False, False),
    ],
)
def test_idle_dispatch_unset_follows_the_artifact_s_batch_sizes(
    tmp_path: Path, batch_sizes: list[int] | None, setting: bool | None, expected: bool
) -> None:
    from runtime_cases import mlp_request

    from neuron_runtime.config import ServeSettings
    from neuron_runtime.metrics import Metrics
    from neuron_runtime.model import ServedModel

    overrides: dict[str, Any] = {"batch_size": 2, "inputs": [{"name": "x", "shape": [2, 8], "dtype": "float32"}]}
    if batch_sizes:
        overrides["batch_sizes"] = batch_sizes
    artifact = compile_artifact(mlp_request(**overrides), tmp_path)
    batching: dict[str, Any] = {"max_batch_size": 2}
    if setting is not None:
        batching["idle_dispatch"] = setting
    settings = ServeSettings(
        model_name="mlp", artifact_dir=artifact.directory, worker_backend="thread", batching=batching
    )
    model = ServedModel.load(settings, Metrics())
    try:
        assert model.batching.idle_dispatch is expected
    finally:
        model.shutdown()
