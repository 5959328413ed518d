"""The zoo's `poisoned_mlp`, the "bad new model version" of the canary-rollout tests, checked with the runtime itself.

It must be a drop-in for the tests' MLP NeuronModel (`tiny_mlp` 16 → 32 → 32 → 4, input x float32 [B, 16]) that

- answers exactly like `tiny_mlp` on every row whose first feature is not the poison (7.0), eager and traced;
- raises RuntimeError inside the traced graph (an out-of-range gather index), for the poisoned rows only, and
  traces without a TracerWarning;
- passes the serving pod's parity gate (its stored reference inputs never hold the poison), so the pod gets ready;
- served with dynamic batching, costs the poisoned requests a 400 ("the model failed on this request's values")
  while their batch-mates get 200 with the right outputs, and `neuron_runtime_requests_total{code="400"}` counts
  exactly the poisoned requests.

Each batch is made deterministic: the requests of one wave are sent together and leave as one full batch
(`max_batch_size` 4, an unreachable `max_delay_ms` and no idle dispatch), so the isolation count is exact too.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import httpx
import pytest
import torch
from runtime_cases import running_server

from neuron_runtime import parity, zoo
from neuron_runtime.compile import CompileResult, compile_artifact
from neuron_runtime.config import CompileRequest

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

# The tests' MLP NeuronModel (tests/operator/operator_support.py::mlp_model), poisoned.
ARGS = {"in_features": 16, "hidden": 32, "out_features": 4}
POISON = 7.0
MODEL = "poisoned"
URL = f"/v2/models/{MODEL}/infer"


def compile_request(batch_size: int) -> CompileRequest:
    return CompileRequest.model_validate(
        {
            "source": {"kind": "python", "factory": "neuron_runtime.zoo:poisoned_mlp", "args": ARGS},
            "inputs": [{"name": "x", "shape": [batch_size, 16], "dtype": "float32"}],
            "batch_size": batch_size,
            "dynamic_batch": True,
            "target": "cpu",
        }
    )


def rows(n: int, seed: int) -> torch.Tensor:
    """`n` rows of normal inputs (first features well away from the poison)."""
    return torch.randn((n, 16), generator=torch.Generator().manual_seed(seed)).clamp(-3.0, 3.0)


def test_it_answers_like_tiny_mlp_and_fails_only_on_poisoned_rows() -> None:
    model = zoo.poisoned_mlp(**ARGS)
    reference = zoo.tiny_mlp(**ARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TracerWarning (a value baked into the graph) included
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's own deprecation notice
        traced = torch.jit.trace(model, (rows(1, 0),), check_trace=False)  # type: ignore[no-untyped-call]
    x = rows(6, 1)
    x[:, 1] = POISON  # the poison anywhere but in the first feature is a normal value
    x[2, 0] = POISON + 1e-3
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x), expected)
        assert torch.equal(traced(x), expected)  # traced at batch 1, run at 6: nothing was baked in
        for row in range(6):
            poisoned = x.clone()
            poisoned[row, 0] = POISON
            for run in (model, traced):
                with pytest.raises(RuntimeError, match="index 1 is out of bounds"):
                    run(poisoned)


@pytest.mark.parametrize(
    ("poison", "error", "reason"),
    [
        (float("nan"), ValueError, "must be finite"),
        (1e39, ValueError, "must be finite in float32"),
        (1.0, ValueError, "warm-up"),
        ("7", TypeError, "expected a number"),
        (True, TypeError, "expected a number"),
    ],
)
def test_a_poison_that_could_not_work_is_refused_naming_the_argument(poison: Any, error: type, reason: str) -> None:
    with pytest.raises(error, match=f"^poison: .*{reason}"):
        zoo.poisoned_mlp(poison=poison)


def test_an_integer_poison_from_json_args_is_a_float() -> None:
    model = zoo.poisoned_mlp(poison=7, **ARGS)
    x = rows(2, 3)
    x[1, 0] = 7.0
    with pytest.raises(RuntimeError, match="out of bounds"):
        model(x)


@pytest.fixture(scope="module", params=[1, 4], ids=["traced-batch-1-like-the-operator-spec", "traced-batch-4"])
def poisoned_artifact(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CompileResult:
    """Compiled by the runtime's compile path (`compile_artifact`, target cpu), traced at batch size 1 (the
    NeuronModel of the rollout tests: batchSize 1, dynamicBatch) or 4 (a whole batch in one graph call)."""
    return compile_artifact(compile_request(request.param), tmp_path_factory.mktemp("poisoned"))


def test_the_parity_references_never_hold_the_poison(poisoned_artifact: CompileResult) -> None:
    references = parity.load_references(poisoned_artifact.directory, poisoned_artifact.manifest)
    assert references
    for inputs, _expected in references.values():
        assert len(inputs) == 3  # the example inputs and the seeded random ones
        for case in inputs:
            (x,) = case
            assert not bool((x == POISON).any()), x


def requests_by_code(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith('neuron_runtime_requests_total{code="'):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def infer_body(row: torch.Tensor) -> dict[str, Any]:
    """A one-row OIP v2 request."""
    return {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": row.tolist()}]}


@pytest.mark.timeout(120)  # traces a model, then serves it with worker processes
async def test_poisoned_requests_get_400_and_their_batch_mates_are_served(poisoned_artifact: CompileResult) -> None:
    # Each wave is one full batch of 4: True marks a poisoned request.
    waves = [
        [False, True, False, False],
        [True, False, False, True],  # poisoned first row: a half bisected from it is padded with copies of it
        [False, False, False, False],
        [True, True, True, True],  # every part fails; the known-good probe still passes, so 400, not 500
    ]
    batching = {"max_batch_size": 4, "max_delay_ms": 600_000, "idle_dispatch": False}
    with running_server(poisoned_artifact, model_name=MODEL, batching=batching) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            report = (await client.get(f"/v2/models/{MODEL}/parity")).json()
            assert report["checked"] is True
            assert report["passed"] is True, report
            assert report["elements_outside"] == 0
            assert (await client.get(f"/v2/models/{MODEL}/ready")).json()["ready"] is True
            answered = []
            for number, wave in enumerate(waves):
                x = rows(len(wave), 100 + number)
                for row, poisoned in enumerate(wave):
                    if poisoned:
                        x[row, 0] = POISON
                responses = await asyncio.gather(*(client.post(URL, json=infer_body(row)) for row in x))
                answered.append((wave, x, responses))
            metrics = (await client.get("/metrics")).text

    eager = zoo.tiny_mlp(**ARGS)  # what the poisoned model answers on every other row
    for wave, x, responses in answered:
        assert [r.status_code for r in responses] == [400 if p else 200 for p in wave], [r.text for r in responses]
        with torch.no_grad():
            expected = eager(x)
        for row, (poisoned, response) in enumerate(zip(wave, responses, strict=True)):
            if poisoned:
                error = response.json()["error"]
                assert error.startswith("the model failed on this request's values:"), error
                assert "index 1 is out of bounds" in error, error
            else:
                out = response.json()["outputs"]
                assert len(out) == 1
                assert out[0]["shape"] == [1, 4]
                got = torch.tensor(out[0]["data"]).reshape(1, 4)
                torch.testing.assert_close(got, expected[row : row + 1], rtol=1e-5, atol=1e-5)
    poisoned_total = sum(p for wave in waves for p in wave)
    assert requests_by_code(metrics) == {"200": 16 - poisoned_total, "400": poisoned_total}
    assert sample(metrics, "neuron_runtime_batch_isolations_total") == 3  # the waves with a poisoned request
